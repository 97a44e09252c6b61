/* The feed handler (feed.h): decodes each message, keeps system events and the directory to
 * itself, and sends each book message as a 30-byte tick stamped with its due time. At a fixed
 * rate, message i is due at start + i / rate whether or not the engine kept up, so the stages'
 * latencies, measured from that time, include any queueing a slow stage causes (no coordinated
 * omission). A full lane makes the send wait: the feed slows, nothing is dropped. */
#include "feed.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "itch.h"

/* The tick for m, due at `due`. */
static void to_tick(const struct itch_msg *m, uint64_t due, struct tick *t)
{
    memset(t, 0, sizeof *t);
    char side = 'B';
    t->type = m->type;
    switch (m->type) {
    case 'A':
    case 'F':
        t->ref = m->add.ref;
        side = m->add.side;
        t->shares = m->add.shares;
        t->price = m->add.price;
        break;
    case 'E':
    case 'C':
        t->ref = m->executed.ref;
        t->shares = m->executed.shares;
        t->price = m->type == 'C' ? m->executed.price : 0;
        break;
    case 'X':
        t->ref = m->cancel.ref;
        t->shares = m->cancel.shares;
        break;
    case 'D':
        t->ref = m->del.ref;
        break;
    case 'U':
        t->ref = m->replace.ref;
        t->new_ref = m->replace.new_ref;
        t->shares = m->replace.shares;
        t->price = m->replace.price;
        break;
    case 'P':
        t->ref = m->trade.ref;
        side = m->trade.side;
        t->shares = m->trade.shares;
        t->price = m->trade.price;
        break;
    default:
        break;
    }
    tick_set(t, due, side);
}

int feed_run(pith_client_t *c, const struct feed_config *cfg, struct feed_result *r)
{
    pith_vref_t *refs = calloc(MKT_MAX_LOCATE + 1, sizeof *refs);
    bool *made = calloc(MKT_MAX_LOCATE + 1, sizeof *made);
    if (refs == NULL || made == NULL) {
        free(refs);
        free(made);
        r->err = -ENOMEM;
        return r->err;
    }
    pith_client_stats_t before;
    pith_client_stats(c, &before);
    double period = cfg->rate > 0 ? 1e9 / (double)cfg->rate : 0;
    uint64_t start = mkt_now() + 1000000; /* the first tick is due 1 ms from now */
    r->start_ns = UINT64_MAX;
    uint64_t next_progress = mkt_now() + 1000000000;
    size_t at = 0;
    int err = 0;
    while (at < cfg->len) {
        struct itch_msg m;
        size_t used;
        err = itch_decode(cfg->day + at, cfg->len - at, &m, &used);
        if (err == -ENOMSG) {
            at += used;
            r->other++;
            continue;
        }
        if (err != 0)
            break;
        if (!mkt_book_msg(m.type) || m.locate == 0 || m.locate > MKT_MAX_LOCATE) {
            at += used;
            r->other++;
            continue;
        }
        if (!made[m.locate]) {
            err = books_vref(m.locate, &refs[m.locate]);
            if (err != 0)
                break;
            made[m.locate] = true;
        }
        uint64_t now = mkt_now(), due = now;
        if (period > 0) {
            due = start + (uint64_t)((double)r->book_msgs * period);
            while (now < due)
                now = mkt_now();
        }
        struct tick t;
        to_tick(&m, due, &t);
        err = pith_client_vsend(c, &refs[m.locate], MT_TICK, &t, TICK_LEN, PITH_FOREVER);
        if (err != 0)
            break;
        lat_add(&r->late, now - due);
        if (r->start_ns == UINT64_MAX)
            r->start_ns = now;
        r->end_ns = now;
        r->book_msgs++;
        r->fed[m.locate]++;
        at += used;
        if (cfg->progress != NULL && (r->book_msgs & 1023) == 0 && now >= next_progress) {
            cfg->progress(r);
            next_progress = now + 1000000000;
        }
    }
    pith_client_stats_t after;
    pith_client_stats(c, &after);
    r->pushed_back = after.pushed_back - before.pushed_back;
    r->err = err;
    r->err_offset = at;
    free(refs);
    free(made);
    return err;
}
