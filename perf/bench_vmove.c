/* Virtual actors that move (pith/vactor.h): what a migration of a 1 KiB state costs from the
 * call to the first hook on the new shard, and Savina's ping-pong between two virtual actors
 * placed on different shards, with locality rebalancing on, beside the same with it off and
 * with both on one shard, all in the same row. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define TIMEOUT_NS (30ull * 1000 * 1000 * 1000)

enum { HOP = 1, BALL = 2, START = 3 };

/* ---- vactor.migrate_ns ---- */

struct hop_state {
    uint64_t t0;   /* when pith_vactor_migrate was called, copied with the state */
    uint64_t hops; /* moves so far */
    pith_vref_t me;
    unsigned char pad[1024 - 16 - sizeof(pith_vref_t) > 0 ? 1024 - 16 - sizeof(pith_vref_t) : 8];
};
_Static_assert(sizeof(struct hop_state) >= 1024, "a 1 KiB state");

static struct {
    uint64_t want;
    samples_t *to_guest, *to_home; /* moves off the directory shard, and back to it */
    _Atomic int err;
    sem_t done;
} hrun;

static void hop_next(pith_actor_t *self, struct hop_state *st)
{
    unsigned to = (unsigned)pith_shard_id() == 0 ? 1u : 0u;
    st->t0 = bench_clock_ns();
    int rc = pith_vactor_migrate(self, to);
    if (rc != 0) {
        atomic_store(&hrun.err, rc);
        sem_post(&hrun.done);
    }
}

static int hop_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct hop_state *st = state;
    if (msg->type == START && msg->len == sizeof(st->me))
        memcpy(&st->me, msg->data, sizeof(st->me)); /* its own virtual ref, then hops */
    if (msg->type == HOP || msg->type == START)
        hop_next(self, st);
    return 0;
}

static int hop_activate(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    (void)self;
    (void)key;
    (void)len;
    struct hop_state *st = state;
    if (reason != PITH_VACT_MIGRATED)
        return 0;
    uint64_t took = bench_clock_ns() - st->t0;
    samples_add(pith_shard_id() == 0 ? hrun.to_home : hrun.to_guest, (int64_t)took);
    if (++st->hops >= hrun.want) {
        sem_post(&hrun.done);
        return 0;
    }
    /* The next move, from a message: on_activate is not yet at a message boundary. */
    int rc = pith_vsend(&st->me, HOP, NULL, 0);
    if (rc != 0) {
        atomic_store(&hrun.err, rc);
        sem_post(&hrun.done);
    }
    return 0;
}

static const pith_actor_type_t hop_actor = {
    .name = "bench-hop", .behaviour = hop_behaviour, .state_size = sizeof(struct hop_state)};
static const pith_vtype_t hop_type = {
    .name = "bench-vhop", .actor = &hop_actor, .on_activate = hop_activate};

/* A key whose directory shard is 0 (of the running engine). */
static int key_on0(const pith_vtype_t *t, const char *prefix, pith_vref_t *out)
{
    for (unsigned i = 0; i < 100000; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "%s%u", prefix, i);
        int rc = pith_vref(t, key, (size_t)kl, out);
        if (rc != 0)
            return rc;
        if (pith_vref_shard(out) == 0)
            return 0;
    }
    return -ENOENT;
}

int bench_vactor_migrate(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    if (env->shards < 2) {
        snprintf(why, whylen, "needs 2 shards");
        return BENCH_SKIP;
    }
    int err = pith_vtype_register(&hop_type);
    if (err) {
        snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(err));
        return BENCH_FAIL;
    }
    samples_t sg = {0}, sh = {0}, all = {0};
    if (samples_init(&sg, n) != 0 || samples_init(&sh, n) != 0 || samples_init(&all, 2 * n) != 0) {
        snprintf(why, whylen, "out of memory for samples");
        return BENCH_FAIL;
    }
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 2;
    cfg.poll_ns = 200000; /* as actor.remote_ask_rtt_ns: both shards busy-poll */
    if (bench_engine_start(&cfg, why, whylen) != 0)
        return BENCH_FAIL;
    hrun.to_guest = &sg;
    hrun.to_home = &sh;
    atomic_store(&hrun.err, 0);
    sem_init(&hrun.done, 0, 0);
    pith_vref_t v;
    const char *stage = "key";
    int rc = key_on0(&hop_type, "hop", &v);
    pith_client_t *c = NULL;
    if (rc == 0) {
        stage = "client";
        c = pith_client_self();
        rc = c == NULL ? -errno : 0;
    }
    /* Warm-up: n / 10 moves (at least 2), then the measured n. The first message activates it
     * on shard 0 (hash placement), and tells it its own ref. */
    uint64_t phases[2] = {n / 10 > 2 ? n / 10 : 2, n};
    for (int ph = 0; ph < 2 && rc == 0; ph++) {
        stage = ph == 0 ? "warm-up" : "measured";
        if (ph == 1) {
            sg.n = sh.n = 0;
        }
        hrun.want = (ph == 0 ? 0 : phases[0]) + phases[ph];
        rc = pith_client_vsend(c, &v, START, &v, sizeof(v), TIMEOUT_NS);
        if (rc == 0)
            rc = bench_wait(env, &hrun.done);
        if (rc == 0)
            rc = atomic_load(&hrun.err);
    }
    pith_vtype_stats_t vst = {0};
    (void)pith_vtype_stats(&hop_type, &vst);
    bench_engine_stop(r->name);
    sem_destroy(&hrun.done);
    if (rc != 0) {
        snprintf(why, whylen, "%s: %s", stage, bench_wait_strerror(rc));
        samples_free(&sg);
        samples_free(&sh);
        samples_free(&all);
        return BENCH_FAIL;
    }
    for (size_t i = 0; i < sg.n && i < sg.cap; i++)
        samples_add(&all, sg.v[i]);
    for (size_t i = 0; i < sh.n && i < sh.cap; i++)
        samples_add(&all, sh.v[i]);
    samples_sort(&all);
    samples_sort(&sg);
    samples_sort(&sh);
    result_set_pcts(r, &all);
    result_set_hist(r, &all, 1);
    r->value = r->p50;
    result_t rg = {0}, rh = {0};
    result_set_pcts(&rg, &sg);
    result_set_pcts(&rh, &sh);
    bench_note("%s: %llu moves of a virtual actor with a %zu B state between shard 0 (its "
               "directory) and shard 1, one at a time, 2 shards busy-polling; from "
               "pith_vactor_migrate in a behaviour to on_activate(PITH_VACT_MIGRATED) on the new "
               "shard: to shard 1 (state sent with the activation, one ring) p50 %.0f p99 %.0f "
               "ns, back to shard 0 (GONE, marker round trip, then the activation: three rings) "
               "p50 %.0f p99 %.0f ns; %llu migrations, %llu failed; baseline "
               "actor.remote_ask_rtt_ns (one round trip across shards)",
               r->name, (unsigned long long)(sg.n + sh.n), sizeof(struct hop_state), rg.p50, rg.p99,
               rh.p50, rh.p99, (unsigned long long)vst.migrations,
               (unsigned long long)vst.migrate_failed);
    samples_free(&sg);
    samples_free(&sh);
    samples_free(&all);
    return 0;
}

/* ---- vactor.pingpong_rebalanced_ms ---- */

struct pp_state {
    pith_vref_t peer;
    uint64_t left;
};

static struct {
    sem_t done;
    _Atomic int err;
} pprun;

static int pp_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct pp_state *st = state;
    if (msg->type == START && msg->len >= sizeof(st->peer)) {
        memcpy(&st->peer, msg->data, sizeof(st->peer));
        st->left = 0;
        if (msg->len < sizeof(st->peer) + sizeof(st->left)) {
            /* The pong side: it answers each ball; the game starts once it knows its peer. */
            (void)pith_reply(msg, START, NULL, 0);
            return 0;
        }
        memcpy(&st->left, (const char *)msg->data + sizeof(st->peer), sizeof(st->left));
    } else if (msg->type == BALL) {
        if (st->left > 0 && --st->left == 0) {
            sem_post(&pprun.done); /* the ping side's last ball came back */
            return 0;
        }
    } else {
        return 0;
    }
    int rc = pith_vsend(&st->peer, BALL, NULL, 0);
    if (rc != 0) {
        atomic_store(&pprun.err, rc);
        sem_post(&pprun.done);
    }
    return 0;
}

static const pith_actor_type_t pp_actor = {
    .name = "bench-pp", .behaviour = pp_behaviour, .state_size = sizeof(struct pp_state)};

/* "ping..." on shard 0; "pong..." on shard 1, or 0 for the one-shard phase. */
static unsigned pp_apart(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    (void)len;
    (void)sender;
    return ((const char *)key)[1] == 'o' && shards > 1 ? 1u : 0u;
}
static unsigned pp_together(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    (void)key;
    (void)len;
    (void)sender;
    (void)shards;
    return 0;
}

static const pith_vtype_t pp_off = {
    .name = "bench-pp-apart", .actor = &pp_actor, .placement = PITH_PLACE_FN, .place = pp_apart};
static const pith_vtype_t pp_on = {.name = "bench-pp-rebalanced",
                                   .actor = &pp_actor,
                                   .placement = PITH_PLACE_FN,
                                   .place = pp_apart,
                                   .flags = PITH_VTYPE_REBALANCE};
static const pith_vtype_t pp_one = {.name = "bench-pp-one-shard",
                                    .actor = &pp_actor,
                                    .placement = PITH_PLACE_FN,
                                    .place = pp_together};

/* One game of n round trips between fresh keys of t; *ms its wall time. */
static int pp_game(const bench_env_t *env, const pith_vtype_t *t, unsigned game, uint64_t n,
                   double *ms, pith_vactor_info_t *ping_at, pith_vactor_info_t *pong_at)
{
    pith_client_t *c = pith_client_self();
    if (c == NULL)
        return -errno;
    char k1[32], k2[32];
    int l1 = snprintf(k1, sizeof(k1), "ping%u", game),
        l2 = snprintf(k2, sizeof(k2), "pong%u", game);
    pith_vref_t ping, pong;
    int rc = pith_vref(t, k1, (size_t)l1, &ping);
    if (rc == 0)
        rc = pith_vref(t, k2, (size_t)l2, &pong);
    /* Both activated and told their peer first, then the clock runs for the game. */
    pith_msg_t reply;
    if (rc == 0)
        rc = pith_client_vask(c, &pong, START, &ping, sizeof(ping), TIMEOUT_NS, &reply);
    unsigned char start[sizeof(pith_vref_t) + sizeof(uint64_t)];
    memcpy(start, &pong, sizeof(pong));
    memcpy(start + sizeof(pong), &n, sizeof(n));
    atomic_store(&pprun.err, 0);
    uint64_t t0 = bench_clock_ns();
    if (rc == 0)
        rc = pith_client_vsend(c, &ping, START, start, sizeof(start), TIMEOUT_NS);
    if (rc == 0)
        rc = bench_wait(env, &pprun.done);
    *ms = (double)(bench_clock_ns() - t0) / 1e6;
    if (rc == 0)
        rc = atomic_load(&pprun.err);
    if (rc == 0)
        rc = pith_vactor_info(&ping, TIMEOUT_NS, ping_at);
    if (rc == 0)
        rc = pith_vactor_info(&pong, TIMEOUT_NS, pong_at);
    return rc;
}

int bench_vactor_pingpong(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    if (env->shards < 2) {
        snprintf(why, whylen, "needs 2 shards");
        return BENCH_SKIP;
    }
    const pith_vtype_t *types[3] = {&pp_off, &pp_on, &pp_one};
    for (int i = 0; i < 3; i++) {
        int err = pith_vtype_register(types[i]);
        if (err) {
            snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(err));
            return BENCH_FAIL;
        }
    }
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 2;
    cfg.poll_ns = 200000; /* as the other cross-shard rows: both shards busy-poll */
    if (bench_engine_start(&cfg, why, whylen) != 0)
        return BENCH_FAIL;
    sem_init(&pprun.done, 0, 0);
    /* Each kind twice, alternating (apart, rebalanced, one shard, then again), fresh keys
     * each game; the row's value is the rebalanced games' mean. */
    double ms[2][3] = {{0}};
    pith_vactor_info_t at[2][3][2];
    int rc = 0;
    const char *stage = "warm-up";
    double w;
    pith_vactor_info_t wi[2];
    for (int i = 0; i < 3 && rc == 0; i++)
        rc = pp_game(env, types[i], 100 + (unsigned)i, n / 10 > 1 ? n / 10 : 1, &w, &wi[0], &wi[1]);
    for (int round = 0; round < 2 && rc == 0; round++) {
        stage = "measured";
        for (int i = 0; i < 3 && rc == 0; i++)
            rc = pp_game(env, types[i], (unsigned)(round * 3 + i), n, &ms[round][i],
                         &at[round][i][0], &at[round][i][1]);
    }
    pith_vtype_stats_t st = {0};
    (void)pith_vtype_stats(&pp_on, &st);
    bench_engine_stop(r->name);
    sem_destroy(&pprun.done);
    if (rc != 0) {
        snprintf(why, whylen, "%s: %s", stage, bench_wait_strerror(rc));
        return BENCH_FAIL;
    }
    double apart = (ms[0][0] + ms[1][0]) / 2, on = (ms[0][1] + ms[1][1]) / 2,
           one = (ms[0][2] + ms[1][2]) / 2;
    r->value = on;
    bench_note("%s: Savina ping-pong, %llu round trips of pith_vsend between two virtual "
               "actors, 2 shards busy-polling, placed on shards 0 and 1 by PITH_PLACE_FN; games "
               "alternate, each kind twice, fresh keys each game: rebalancing off %.2f and %.2f "
               "ms, on %.2f and %.2f ms (the value: their mean), both on shard 0 %.2f and %.2f "
               "ms; on / off %.2fx, on / one shard %.2fx",
               r->name, (unsigned long long)n, ms[0][0], ms[1][0], ms[0][1], ms[1][1], ms[0][2],
               ms[1][2], on / apart, on / one);
    bench_note("%s: after the rebalanced games ping and pong lived on shards %u+%u and %u+%u "
               "(off: %u+%u); %llu rebalancing moves, %llu messages taken without the directory",
               r->name, at[0][1][0].shard, at[0][1][1].shard, at[1][1][0].shard, at[1][1][1].shard,
               at[1][0][0].shard, at[1][0][1].shard, (unsigned long long)st.rebalances,
               (unsigned long long)st.direct);
    return 0;
}
