/* Savina's big: 120 actors, each pinging actors it picks at random (itself included, as in
 * Savina) and sending the next ping when the pong comes back, n pings each, one outstanding;
 * each then tells a sink it is done. The targets come from Savina's own generator seeded with
 * the actor's index, so what every actor answers in a run is known beforehand and checked. The
 * harness is savina.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "savina.h"

/* Savina's number of actors (W). */
#define BIG_ACTORS 120u

struct big_actor {
    _Alignas(64) uint32_t id;
    uint32_t rng;      /* Savina's PseudoRandom, seeded with the index */
    uint32_t expect;   /* the actor the outstanding ping went to */
    uint64_t sent;     /* pings sent in this run */
    uint64_t pongs;    /* pongs that came back */
    uint64_t answered; /* pings this actor answered */
};

struct big_sink {
    _Alignas(64) unsigned done;
    uint64_t pongs; /* the sum the actors reported */
};

struct big {
    uint64_t n;
    pith_ref_t refs[BIG_ACTORS], sink_ref;
    struct big_actor a[BIG_ACTORS];
    struct big_sink sink;
    uint64_t expected[BIG_ACTORS]; /* pings each actor answers in a run */
};

static struct big bg;

/* Savina's PseudoRandom.nextInt(max): a 16-bit linear congruential generator. */
static uint32_t next_target(uint32_t *rng)
{
    *rng = (*rng * 1309u + 13849u) & 65535u;
    return *rng % BIG_ACTORS;
}

static int send_ping(struct big_actor *a)
{
    a->expect = next_target(&a->rng);
    a->sent++;
    return pith_send(bg.refs[a->expect], SV_PING, &a->id, sizeof(a->id));
}

static int big_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct big_actor *a = *(struct big_actor **)state;
    sv_bump();
    int rc = 0;
    uint32_t peer;
    if (msg->type == SV_START) {
        rc = send_ping(a);
    } else if ((msg->type == SV_PING || msg->type == SV_PONG) && msg->len == sizeof(peer)) {
        memcpy(&peer, msg->data, sizeof(peer));
        if (peer >= BIG_ACTORS) {
            sv_failf(-EPROTO, "actor %u got a message from actor %u", a->id, peer);
            return 0;
        }
        if (msg->type == SV_PING) {
            a->answered++;
            rc = pith_send(bg.refs[peer], SV_PONG, &a->id, sizeof(a->id));
        } else if (peer != a->expect) {
            /* Savina's check: the pong comes from the actor pinged. */
            sv_failf(-EPROTO, "actor %u expected a pong from %u, not %u", a->id, a->expect, peer);
            return 0;
        } else if (++a->pongs < bg.n) {
            rc = send_ping(a);
        } else {
            rc = pith_send(bg.sink_ref, SV_DONE, &a->pongs, sizeof(a->pongs));
        }
    } else {
        sv_failf(-EPROTO, "actor %u got tag %u of %u bytes", a->id, msg->type, msg->len);
        return 0;
    }
    if (rc != 0)
        sv_failf(rc, "actor %u's send", a->id);
    return 0;
}

static int sink_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct big_sink *k = *(struct big_sink **)state;
    sv_bump();
    uint64_t pongs;
    if (msg->type != SV_DONE || msg->len != sizeof(pongs)) {
        sv_failf(-EPROTO, "the sink got tag %u of %u bytes", msg->type, msg->len);
        return 0;
    }
    memcpy(&pongs, msg->data, sizeof(pongs));
    k->pongs += pongs;
    if (++k->done < BIG_ACTORS)
        return 0;
    if (k->pongs != BIG_ACTORS * bg.n)
        sv_failf(-EPROTO, "the actors reported %llu pongs, not %llu", (unsigned long long)k->pongs,
                 (unsigned long long)(BIG_ACTORS * bg.n));
    else
        sv_part_done();
    return 0;
}

static const pith_actor_type_t big_type = {
    .name = "savina.big",
    .behaviour = big_behaviour,
    .state_size = sizeof(void *),
    .init = sv_init_ptr,
};

static const pith_actor_type_t sink_type = {
    .name = "savina.bigsink",
    .behaviour = sink_behaviour,
    .state_size = sizeof(void *),
    .init = sv_init_ptr,
};

/* On each shard, a task starts that shard's actors (i % shards == shard), as Savina's main
 * sends each actor its first message. */
static void start_fn(void *arg)
{
    unsigned s = (unsigned)((uintptr_t)arg - 1);
    for (unsigned i = s; i < BIG_ACTORS; i += sv.nshards) {
        int rc = pith_send(bg.refs[i], SV_START, NULL, 0);
        if (rc != 0) {
            sv_failf(rc, "starting actor %u", i);
            return;
        }
    }
}

static void *start_arg(unsigned shard)
{
    return shard < BIG_ACTORS ? (void *)(uintptr_t)(shard + 1) : NULL;
}

static int big_kick(void *ctx)
{
    (void)ctx;
    for (uint32_t i = 0; i < BIG_ACTORS; i++)
        bg.a[i] = (struct big_actor){.id = i, .rng = i};
    bg.sink = (struct big_sink){0};
    return sv_fanout(start_fn, start_arg);
}

static int big_check(void *ctx, char *why, size_t whylen)
{
    (void)ctx;
    for (unsigned i = 0; i < BIG_ACTORS; i++) {
        const struct big_actor *a = &bg.a[i];
        if (a->sent != bg.n || a->pongs != bg.n || a->answered != bg.expected[i]) {
            snprintf(why, whylen,
                     "actor %u sent %llu pings, got %llu pongs, answered %llu "
                     "(not %llu, %llu, %llu)",
                     i, (unsigned long long)a->sent, (unsigned long long)a->pongs,
                     (unsigned long long)a->answered, (unsigned long long)bg.n,
                     (unsigned long long)bg.n, (unsigned long long)bg.expected[i]);
            return -EPROTO;
        }
    }
    return 0;
}

int bench_savina_big(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    int rc = sv_start(env, env->shards >= 2, why, whylen);
    if (rc != 0)
        return rc;
    memset(&bg, 0, sizeof(bg));
    bg.n = n;
    /* Each actor's targets, as its generator will draw them in every run. */
    for (uint32_t i = 0; i < BIG_ACTORS; i++) {
        uint32_t rng = i;
        for (uint64_t k = 0; k < n; k++)
            bg.expected[next_target(&rng)]++;
    }
    uint64_t least = UINT64_MAX, most = 0;
    for (unsigned i = 0; i < BIG_ACTORS; i++) {
        least = bg.expected[i] < least ? bg.expected[i] : least;
        most = bg.expected[i] > most ? bg.expected[i] : most;
    }
    rc = sv_spawn_on(0, &sink_type, &bg.sink, &bg.sink_ref);
    for (unsigned i = 0; i < BIG_ACTORS && rc == 0; i++)
        rc = sv_spawn_on(i % env->shards, &big_type, &bg.a[i], &bg.refs[i]);
    struct sv_times t = {0};
    /* A start, n pongs and the pings it answers for every actor; a done each for the sink. */
    struct sv_row row = {.kick = big_kick,
                         .check = big_check,
                         .parts = 1,
                         .msgs = 2 * (uint64_t)BIG_ACTORS * n + 2 * BIG_ACTORS};
    if (rc == 0)
        sv_measure(env, &row, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[512];
    sv_where(where, sizeof(where));
    bench_engine_stop(r->name);
    char what[64];
    snprintf(what, sizeof(what), "%u of %u actors done", bg.sink.done, BIG_ACTORS);
    rc = sv_result(&t, r, why, whylen, what);
    if (rc == 0) {
        char loc[1024];
        snprintf(loc, sizeof(loc), "the sink on shard 0, actor i on shard i %% %u%s; %s",
                 env->shards,
                 env->shards < 2 ? " (one shard: no crossing)"
                 : sv.busy       ? ", busy-polling"
                                 : ", default poll",
                 where);
        sv_note_common(env, r, &t, n, 20000, loc);
        bench_note("%s: %u actors x %llu pings of a 4-byte index, each answered by a pong, one "
                   "outstanding per actor, %llu messages a run; every run checked: the sink got "
                   "%u dones and %llu pongs, each pong from the actor pinged, each actor answered "
                   "the pings its generator predicts (%llu to %llu): %.0f ns a ping-pong (median "
                   "run)",
                   r->name, BIG_ACTORS, (unsigned long long)n, (unsigned long long)row.msgs,
                   BIG_ACTORS, (unsigned long long)(BIG_ACTORS * n), (unsigned long long)least,
                   (unsigned long long)most, r->value * 1e6 / ((double)BIG_ACTORS * (double)n));
    }
    sv_end();
    return rc;
}
