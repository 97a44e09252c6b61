/* Savina's chameneos (chameneos-redux): a mall and 100 creatures whose colours cycle red,
 * yellow, blue by index. Each creature asks the mall to meet; the mall pairs two waiting ones and
 * sends each the other's ref and colour; each takes the complement of the two colours and counts
 * the meeting. After n meetings the mall answers every request with stop, and each creature
 * reports its meetings and how often it met itself. The harness is savina.c. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "savina.h"

/* Savina's number of creatures. */
#define CREATURES 100u

enum { RED, YELLOW, BLUE, FADED };

/* The colour two creatures of colours a and b both take when they meet: the same when they
 * match, else the third (Savina's table for red, yellow and blue). */
static uint32_t complement(uint32_t a, uint32_t b)
{
    return a == b ? a : 3 - a - b;
}

/* A request to meet (creature to mall), and a partner (mall to creature): a colour and a ref. */
struct meet {
    uint32_t colour;
    uint32_t pad;
    pith_ref_t ref;
};

/* What a creature reports at the end. */
struct tally {
    uint64_t meetings, met_self;
};

struct creature {
    _Alignas(64) uint32_t colour;
    uint64_t meetings, met_self;
};

struct mall {
    _Alignas(64) uint64_t left; /* meetings still to hold in this run */
    bool waiting;               /* first holds a creature waiting for a partner */
    struct meet first;
    unsigned reported; /* creatures that reported their tallies */
    uint64_t meetings, met_self;
};

struct chameneos {
    uint64_t n;
    pith_ref_t mall_ref;
    pith_ref_t refs[CREATURES];
    struct creature cr[CREATURES];
    struct mall mall;
};

static struct chameneos ch;

static int meet_send(pith_ref_t to, uint32_t type, uint32_t colour, pith_ref_t ref)
{
    struct meet m = {.colour = colour, .ref = ref};
    return pith_send(to, type, &m, sizeof(m));
}

static int creature_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct creature *c = *(struct creature **)state;
    pith_ref_t me = pith_self(self);
    sv_bump();
    int rc = 0;
    switch (msg->type) {
    case SV_START:
        rc = meet_send(ch.mall_ref, SV_MEET, c->colour, me);
        break;
    case SV_MATE: {
        struct meet other;
        if (msg->len != sizeof(other) || c->colour == FADED) {
            sv_failf(-EPROTO, "a creature got a partner of %u bytes, faded %d", msg->len,
                     c->colour == FADED);
            return 0;
        }
        memcpy(&other, msg->data, sizeof(other));
        c->colour = complement(c->colour, other.colour);
        c->meetings++;
        c->met_self += other.ref == me;
        rc = meet_send(ch.mall_ref, SV_MEET, c->colour, me);
        break;
    }
    case SV_STOP: {
        struct tally t = {.meetings = c->meetings, .met_self = c->met_self};
        c->colour = FADED;
        rc = pith_send(ch.mall_ref, SV_COUNT, &t, sizeof(t));
        break;
    }
    default:
        sv_failf(-EPROTO, "a creature got tag %u", msg->type);
        return 0;
    }
    if (rc != 0)
        sv_failf(rc, "a creature's send to the mall");
    return 0;
}

static void mall_count(struct mall *m, const pith_msg_t *msg)
{
    struct tally t;
    if (msg->len != sizeof(t)) {
        sv_failf(-EPROTO, "a tally of %u bytes", msg->len);
        return;
    }
    memcpy(&t, msg->data, sizeof(t));
    m->meetings += t.meetings;
    m->met_self += t.met_self;
    if (++m->reported < CREATURES)
        return;
    /* Savina's check: every meeting counted by both creatures, none with itself. */
    if (m->meetings != 2 * ch.n || m->met_self != 0)
        sv_failf(-EPROTO,
                 "the creatures counted %llu meetings (must be %llu) and %llu with themselves "
                 "(must be 0)",
                 (unsigned long long)m->meetings, (unsigned long long)(2 * ch.n),
                 (unsigned long long)m->met_self);
    else
        sv_part_done();
}

static int mall_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct mall *m = *(struct mall **)state;
    sv_bump();
    if (msg->type == SV_COUNT) {
        mall_count(m, msg);
        return 0;
    }
    struct meet req;
    if (msg->type != SV_MEET || msg->len != sizeof(req)) {
        sv_failf(-EPROTO, "the mall got tag %u of %u bytes", msg->type, msg->len);
        return 0;
    }
    memcpy(&req, msg->data, sizeof(req));
    if (req.ref != msg->from || req.colour == FADED) {
        sv_failf(-EPROTO, "a request to meet from another ref, or faded");
        return 0;
    }
    int rc = 0;
    if (m->left == 0) {
        rc = pith_send(req.ref, SV_STOP, NULL, 0);
    } else if (!m->waiting) {
        m->first = req;
        m->waiting = true;
    } else {
        m->left--;
        m->waiting = false;
        rc = meet_send(req.ref, SV_MATE, m->first.colour, m->first.ref);
        if (rc == 0)
            rc = meet_send(m->first.ref, SV_MATE, req.colour, req.ref);
    }
    if (rc != 0)
        sv_failf(rc, "the mall's answer");
    return 0;
}

static const pith_actor_type_t creature_type = {
    .name = "savina.chameneo",
    .behaviour = creature_behaviour,
    .state_size = sizeof(void *),
    .init = sv_init_ptr,
};

static const pith_actor_type_t mall_type = {
    .name = "savina.mall",
    .behaviour = mall_behaviour,
    .state_size = sizeof(void *),
    .init = sv_init_ptr,
};

/* On each shard, a task starts that shard's creatures (i % shards == shard). */
static void start_fn(void *arg)
{
    unsigned s = (unsigned)((uintptr_t)arg - 1);
    for (unsigned i = s; i < CREATURES; i += sv.nshards) {
        int rc = pith_send(ch.refs[i], SV_START, NULL, 0);
        if (rc != 0) {
            sv_failf(rc, "starting creature %u", i);
            return;
        }
    }
}

static void *start_arg(unsigned shard)
{
    return shard < CREATURES ? (void *)(uintptr_t)(shard + 1) : NULL;
}

static int ch_kick(void *ctx)
{
    (void)ctx;
    for (unsigned i = 0; i < CREATURES; i++)
        ch.cr[i] = (struct creature){.colour = i % 3};
    ch.mall = (struct mall){.left = ch.n};
    return sv_fanout(start_fn, start_arg);
}

static int ch_check(void *ctx, char *why, size_t whylen)
{
    (void)ctx;
    for (unsigned i = 0; i < CREATURES; i++)
        if (ch.cr[i].colour != FADED) {
            snprintf(why, whylen, "creature %u did not fade", i);
            return -EPROTO;
        }
    return 0;
}

int bench_savina_chameneos(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen)
{
    int rc = sv_start(env, env->shards >= 2, why, whylen);
    if (rc != 0)
        return rc;
    memset(&ch, 0, sizeof(ch));
    ch.n = n;
    rc = sv_spawn_on(0, &mall_type, &ch.mall, &ch.mall_ref);
    for (unsigned i = 0; i < CREATURES && rc == 0; i++)
        rc = sv_spawn_on(i % env->shards, &creature_type, &ch.cr[i], &ch.refs[i]);
    struct sv_times t = {0};
    /* Creatures: a start, 2n partners, a stop each; the mall: 2n requests that meet, the last
     * request of each creature (answered with stop), and a tally each. */
    struct sv_row row = {
        .kick = ch_kick, .check = ch_check, .parts = 1, .msgs = 4 * n + 4 * (uint64_t)CREATURES};
    if (rc == 0)
        sv_measure(env, &row, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[512];
    sv_where(where, sizeof(where));
    bench_engine_stop(r->name);
    uint64_t least = UINT64_MAX, most = 0, at_mall = 0;
    for (unsigned i = 0; i < CREATURES; i++) {
        least = ch.cr[i].meetings < least ? ch.cr[i].meetings : least;
        most = ch.cr[i].meetings > most ? ch.cr[i].meetings : most;
        at_mall += i % env->shards == 0 ? ch.cr[i].meetings : 0;
    }
    char what[96];
    snprintf(what, sizeof(what), "%llu of %llu meetings held, %u tallies",
             (unsigned long long)(n - ch.mall.left), (unsigned long long)n, ch.mall.reported);
    rc = sv_result(&t, r, why, whylen, what);
    if (rc == 0) {
        char loc[1024];
        snprintf(loc, sizeof(loc), "the mall on shard 0, creature i on shard i %% %u%s; %s",
                 env->shards,
                 env->shards < 2 ? " (one shard: no crossing)"
                 : sv.busy       ? ", busy-polling"
                                 : ", default poll",
                 where);
        sv_note_common(env, r, &t, n, 200000, loc);
        bench_note("%s: %u creatures (colour i %% 3), %llu meetings through one mall, each "
                   "partner's ref and colour sent to both, %llu messages a run; every run checked "
                   "as Savina does (meetings counted %llu, met themselves 0): %.0f ns a meeting "
                   "(median run); in the last run, meetings per creature %llu to %llu, and of "
                   "the %llu counted, %llu by the creatures on the mall's shard (the mall pairs "
                   "requests as they come, and theirs come back without crossing)",
                   r->name, CREATURES, (unsigned long long)n, (unsigned long long)row.msgs,
                   (unsigned long long)(2 * n), r->value * 1e6 / (double)n,
                   (unsigned long long)least, (unsigned long long)most, (unsigned long long)(2 * n),
                   (unsigned long long)at_mall);
    }
    sv_end();
    return rc;
}
