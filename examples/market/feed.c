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

/* Ticks decoded and not yet handed over: at most FEED_BATCH, sent together. */
#define FEED_BATCH 16
struct pending {
    unsigned n;
    struct tick t[FEED_BATCH];
    uint64_t due[FEED_BATCH]; /* as mkt_now(): the tick holds it masked (TICK_DUE_MASK) */
    size_t off[FEED_BATCH];   /* where its message lies in the day */
    uint16_t locate[FEED_BATCH];
    pith_client_vmsg_t v[FEED_BATCH];
};

/* Hands the pending ticks over in one pith_client_vsend_batch (one look at whether the shard
 * sleeps for all of them, not one each); counts them as handed over now. On an error,
 * r->err_offset is where the first one not sent lies. */
static int flush(pith_client_t *c, struct pending *q, struct feed_result *r)
{
    if (q->n == 0)
        return 0;
    /* A batch stops at the first message it could not send, and says only how many went: the
     * rest again, for that one's error. */
    unsigned sent = 0;
    int err = 0;
    while (sent < q->n) {
        int k = pith_client_vsend_batch(c, q->v + sent, q->n - sent, PITH_FOREVER);
        if (k < 0) {
            err = k;
            break;
        }
        sent += (unsigned)k;
    }
    uint64_t now = mkt_now();
    for (unsigned i = 0; i < sent; i++) {
        lat_add(&r->late, now > q->due[i] ? now - q->due[i] : 0);
        r->book_msgs++;
        r->fed[q->locate[i]]++;
    }
    if (sent > 0 && r->start_ns == UINT64_MAX)
        r->start_ns = now;
    if (sent > 0)
        r->end_ns = now;
    if (err)
        r->err_offset = q->off[sent];
    q->n = 0;
    return err;
}

int feed_run(pith_client_t *c, const struct feed_config *cfg, struct feed_result *r)
{
    pith_vref_t *refs = calloc(MKT_MAX_LOCATE + 1, sizeof *refs);
    bool *made = calloc(MKT_MAX_LOCATE + 1, sizeof *made);
    struct pending *q = calloc(1, sizeof *q);
    if (refs == NULL || made == NULL || q == NULL) {
        free(refs);
        free(made);
        free(q);
        r->err = -ENOMEM;
        return r->err;
    }
    pith_client_stats_t before;
    pith_client_stats(c, &before);
    double period = cfg->rate > 0 ? 1e9 / (double)cfg->rate : 0;
    uint64_t start = mkt_now() + 1000000; /* the first tick is due 1 ms from now */
    r->start_ns = UINT64_MAX;
    uint64_t next_progress = mkt_now() + 1000000000;
    uint64_t decoded = 0; /* book messages decoded: the next one's place in the schedule */
    size_t at = 0;
    int err = 0, serr = 0; /* decoding's, sending's */
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
            due = start + (uint64_t)((double)decoded * period);
            if (now < due) {
                /* Not due yet: what is due goes now, not after this one's wait. */
                if ((serr = flush(c, q, r)) != 0)
                    break;
                while (now < due)
                    now = mkt_now();
            }
        }
        /* Ticks that are due together (as fast as possible, or behind the schedule) go in one
         * batch, as a feed handler passes on what one packet carried. */
        unsigned i = q->n++;
        to_tick(&m, due, &q->t[i]);
        q->due[i] = due;
        q->off[i] = at;
        q->locate[i] = m.locate;
        q->v[i] = (pith_client_vmsg_t){
            .to = &refs[m.locate], .type = MT_TICK, .len = TICK_LEN, .data = &q->t[i]};
        decoded++;
        at += used;
        if (q->n == FEED_BATCH && (serr = flush(c, q, r)) != 0)
            break;
        if (cfg->progress != NULL && (decoded & 1023) == 0 && now >= next_progress) {
            cfg->progress(r);
            next_progress = now + 1000000000;
        }
    }
    /* What was decoded before a bad message still goes, as it would have one by one. */
    if (serr == 0)
        serr = flush(c, q, r);
    pith_client_stats_t after;
    pith_client_stats(c, &after);
    r->pushed_back = after.pushed_back - before.pushed_back;
    r->err = serr != 0 ? serr : err;
    if (serr == 0)
        r->err_offset = at; /* else flush said where */
    free(refs);
    free(made);
    free(q);
    return r->err;
}
