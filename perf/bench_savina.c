/* Savina actor benchmarks (Imam & Sarkar, 2014) with the suite's default sizes: ping-pong,
 * counting and the thread ring here; fork-join throughput and creation in bench_savina_fj.c,
 * chameneos and big in bench_savina_chameneos.c and bench_savina_big.c; the harness they share
 * in savina.c.
 * Each row is the time of the whole run in milliseconds, taken on the main thread that drives
 * it (as Savina's and CAF's harnesses time an iteration), the median of a few runs after one
 * warm-up run, with the actors spread over every shard where the benchmark allows it. Every run
 * checks its result (counts, values, the messages handled) and a wrong one fails the row; the
 * notes say how many actors and messages each shard had. Savina has no same-run reference here,
 * so these rows have no baseline: they are figures to follow from one build to the next. Only
 * the public API. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "savina.h"

/* Savina's fixed size: actors of the thread ring. */
#define RING_ACTORS 100u
/* The counting row's final ask: a safety net that never fires in a run that works. */
#define ASK_TIMEOUT_NS (60ull * 1000000000ull)

/* ---- ping-pong: two actors, n round trips of an int ----
 * As CAF's: ping sends the int 1, pong answers each ping with the int it got, and ping checks it
 * and sends the next, up to n; one round trip in flight. */

struct pingpong {
    uint64_t n;
    pith_ref_t ping, pong;
    uint64_t count;    /* ping's: its values that came back */
    uint64_t answered; /* pong's: pings it answered */
};

static struct pingpong pp;

static int ping_send(struct pingpong *p, int32_t v)
{
    int rc = pith_send(p->pong, SV_PING, &v, sizeof(v));
    if (rc != 0)
        sv_failf(rc, "ping's send of %d", (int)v);
    return 0;
}

static int ping_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct pingpong *p = *(struct pingpong **)state;
    sv_bump();
    if (msg->type == SV_GO)
        return ping_send(p, 1);
    int32_t v;
    if (msg->type != SV_PONG || msg->from != p->pong || msg->len != sizeof(v)) {
        sv_failf(-EPROTO, "ping got tag %u of %u bytes", msg->type, msg->len);
        return 0;
    }
    memcpy(&v, msg->data, sizeof(v));
    if ((uint64_t)v != p->count + 1) {
        sv_failf(-EPROTO, "pong answered %d to ping %llu", (int)v,
                 (unsigned long long)p->count + 1);
        return 0;
    }
    if (++p->count == p->n) {
        sv_part_done();
        return 0;
    }
    return ping_send(p, v + 1);
}

static int pong_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct pingpong *p = *(struct pingpong **)state;
    sv_bump();
    if (msg->type != SV_PING || msg->len != sizeof(int32_t)) {
        sv_failf(-EPROTO, "pong got tag %u of %u bytes", msg->type, msg->len);
        return 0;
    }
    p->answered++;
    int rc = pith_send(msg->from, SV_PONG, msg->data, msg->len);
    if (rc != 0)
        sv_failf(rc, "pong's answer");
    return 0;
}

static const pith_actor_type_t ping_type = {
    .name = "savina.ping",
    .behaviour = ping_behaviour,
    .state_size = sizeof(void *),
    .init = sv_init_ptr,
};

static const pith_actor_type_t pong_type = {
    .name = "savina.pong",
    .behaviour = pong_behaviour,
    .state_size = sizeof(void *),
    .init = sv_init_ptr,
};

/* A run's first task where it has one actor to start: *arg is its ref. */
static void go_fn(void *arg)
{
    sv_started();
    int rc = pith_send(*(pith_ref_t *)arg, SV_GO, NULL, 0);
    if (rc != 0)
        sv_failf(rc, "the start message");
}

static int pp_kick(void *ctx)
{
    struct pingpong *p = ctx;
    p->count = p->answered = 0;
    return pith_submit(pith_ref_shard(p->ping), go_fn, &p->ping);
}

static int pp_check(void *ctx, char *why, size_t whylen)
{
    struct pingpong *p = ctx;
    if (p->count == p->n && p->answered == p->n)
        return 0;
    snprintf(why, whylen, "ping got %llu values back, pong answered %llu, of %llu",
             (unsigned long long)p->count, (unsigned long long)p->answered,
             (unsigned long long)p->n);
    return -EPROTO;
}

int bench_savina_pingpong(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    unsigned pong_shard = env->shards >= 2 ? 1 : 0;
    int rc = sv_start(env, pong_shard != 0, why, whylen);
    if (rc != 0)
        return rc;
    memset(&pp, 0, sizeof(pp));
    pp.n = n;
    rc = sv_spawn_on(0, &ping_type, &pp, &pp.ping);
    if (rc == 0)
        rc = sv_spawn_on(pong_shard, &pong_type, &pp, &pp.pong);
    struct sv_times t = {0};
    /* ping: the start and n pongs; pong: n pings. */
    struct sv_row row = {
        .kick = pp_kick, .check = pp_check, .ctx = &pp, .parts = 1, .msgs = 2 * n + 1};
    if (rc == 0)
        sv_measure(env, &row, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[512];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t ts = {0};
    sv_type_stats(&pong_type, (uint64_t)(t.runs + 1) * n, 0, &ts);
    bench_engine_stop(r->name);
    char what[64];
    snprintf(what, sizeof(what), "%llu of %llu round trips in the run",
             (unsigned long long)pp.count, (unsigned long long)n);
    rc = sv_result(&t, r, why, whylen, what);
    if (rc == 0)
        rc = sv_total_check("pings pong handled", ts.messages, (uint64_t)(t.runs + 1) * n, why,
                            whylen);
    if (rc == 0) {
        char loc[1024];
        snprintf(loc, sizeof(loc), "ping on shard 0, pong on shard %u%s; %s", pong_shard,
                 pong_shard
                     ? (sv.busy ? ", both busy-polling" : ", default poll (more shards than CPUs)")
                     : " (one shard: no crossing)",
                 where);
        sv_note_common(env, r, &t, n, 40000, loc);
        bench_note("%s: %llu round trips of a 4-byte int (pith_send both ways), one in flight, "
                   "each value checked by ping; pong answered all %llu in every run: %.0f ns a "
                   "round trip (median run)",
                   r->name, (unsigned long long)n, (unsigned long long)n,
                   r->value * 1e6 / (double)n);
    }
    sv_end();
    return rc;
}

/* ---- counting: a producer sends n increments to a counter, then asks it for its count ---- */

struct counting {
    uint64_t n;
    pith_ref_t producer, counter;
    /* The producer's. */
    uint64_t sent, req, eagain;
    uint64_t got; /* the count the counter answered */
};

static struct counting cn;

static int cn_producer_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct counting *c = *(struct counting **)state;
    sv_bump();
    if (msg->req != 0 && msg->req == c->req) {
        if (msg->type != SV_COUNT || msg->len != sizeof(c->got)) {
            sv_failf(msg->type == PITH_MSG_TIMEOUT ? -ETIMEDOUT : -EPROTO,
                     "the count's answer: tag %u of %u bytes", msg->type, msg->len);
            return 0;
        }
        memcpy(&c->got, msg->data, sizeof(c->got));
        if (c->got != c->n)
            sv_failf(-EPROTO, "the counter counted %llu of %llu", (unsigned long long)c->got,
                     (unsigned long long)c->n);
        else
            sv_part_done();
        return 0;
    }
    if (msg->type == SV_GO)
        c->sent = 0;
    else if (msg->type != SV_CONTINUE) {
        sv_failf(-EPROTO, "the producer got tag %u", msg->type);
        return 0;
    }
    for (unsigned i = 0; i < SV_SEND_BURST && c->sent < c->n; i++) {
        int rc = pith_send(c->counter, SV_INC, NULL, 0);
        if (rc == -EAGAIN) {
            c->eagain++;
            break;
        }
        if (rc != 0) {
            sv_failf(rc, "increment %llu", (unsigned long long)c->sent);
            return 0;
        }
        c->sent++;
    }
    int rc = c->sent < c->n
                 ? pith_send(pith_self(self), SV_CONTINUE, NULL, 0)
                 : pith_ask(c->counter, SV_GET, NULL, 0, ASK_TIMEOUT_NS, NULL, NULL, &c->req);
    if (rc != 0)
        sv_failf(rc, "the producer's %s", c->sent < c->n ? "continue" : "ask");
    return 0;
}

static int cn_counter_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    uint64_t *count = state;
    sv_bump();
    if (msg->type == SV_INC) {
        ++*count;
        return 0;
    }
    if (msg->type != SV_GET || msg->req == 0) {
        sv_failf(-EPROTO, "the counter got tag %u", msg->type);
        return 0;
    }
    int rc = pith_reply(msg, SV_COUNT, count, sizeof(*count));
    if (rc != 0)
        sv_failf(rc, "the counter's reply");
    *count = 0; /* for the next run */
    return 0;
}

/* The producer yields by sending itself CONTINUE; with turns of one message that CONTINUE waits
 * behind the counter's turn instead of being handled in the producer's own turn. */
static const pith_actor_type_t cn_producer_type = {
    .name = "savina.producer",
    .behaviour = cn_producer_behaviour,
    .state_size = sizeof(void *),
    .init = sv_init_ptr,
    .turn_msgs = 1,
};

/* The defaults an application gets: a mailbox of 4096 that rejects, turns of 64. */
static const pith_actor_type_t cn_counter_type = {
    .name = "savina.counter",
    .behaviour = cn_counter_behaviour,
    .state_size = sizeof(uint64_t),
};

static int cn_kick(void *ctx)
{
    struct counting *c = ctx;
    c->got = 0;
    return pith_submit(pith_ref_shard(c->producer), go_fn, &c->producer);
}

int bench_savina_counting(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    int rc = sv_start(env, false, why, whylen);
    if (rc != 0)
        return rc;
    memset(&cn, 0, sizeof(cn));
    cn.n = n;
    rc = sv_spawn_on(0, &cn_counter_type, NULL, &cn.counter);
    if (rc == 0)
        rc = sv_spawn_on(0, &cn_producer_type, &cn, &cn.producer);
    struct sv_times t = {0};
    /* The producer's continues vary with the counter's pace: the count is the check. */
    struct sv_row row = {.kick = cn_kick, .ctx = &cn, .parts = 1};
    if (rc == 0)
        sv_measure(env, &row, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[512];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t tc = {0};
    sv_type_stats(&cn_counter_type, (uint64_t)(t.runs + 1) * (n + 1), 0, &tc);
    bench_engine_stop(r->name);
    char what[96];
    snprintf(what, sizeof(what), "%llu of %llu sent, count answered %llu",
             (unsigned long long)cn.sent, (unsigned long long)n, (unsigned long long)cn.got);
    rc = sv_result(&t, r, why, whylen, what);
    if (rc == 0)
        rc = sv_total_check("messages the counter handled", tc.messages,
                            (uint64_t)(t.runs + 1) * (n + 1), why, whylen);
    if (rc == 0) {
        char loc[1024];
        snprintf(loc, sizeof(loc),
                 "producer and counter both on shard 0, as in Savina (one producer, one counter: "
                 "nothing to spread); %s",
                 where);
        sv_note_common(env, r, &t, n, 1000000, loc);
        bench_note("%s: %llu empty increments in bursts of %u, the producer yielding between "
                   "bursts (turns of 1 message), then one pith_ask for the count, which must be "
                   "%llu: %.1f M msgs/s (median run); sends refused with -EAGAIN %llu (over all "
                   "runs), counter's deepest mailbox %llu, rejected %llu",
                   r->name, (unsigned long long)n, SV_SEND_BURST, (unsigned long long)n,
                   (double)n / r->value / 1e3, (unsigned long long)cn.eagain,
                   (unsigned long long)tc.mailbox_max, (unsigned long long)tc.rejected);
    }
    sv_end();
    return rc;
}

/* ---- thread ring: RING_ACTORS actors in a ring, a token passed n hops ----
 * Actor i lives on shard i % shards and passes the token (hops left, 8 bytes) to actor i + 1;
 * the actor that gets it at 0 ends the run, and must be actor n % RING_ACTORS. */

struct ring {
    pith_ref_t refs[RING_ACTORS];
    uint64_t hops;
    unsigned last; /* the actor that got the token at 0 */
};

static struct ring rg;

static int ring_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    *(uintptr_t *)state = (uintptr_t)arg;
    return 0;
}

static int ring_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    uint64_t hops;
    sv_bump();
    if (msg->type != SV_TOKEN || msg->len != sizeof(hops)) {
        sv_failf(-EPROTO, "a ring actor got tag %u of %u bytes", msg->type, msg->len);
        return 0;
    }
    memcpy(&hops, msg->data, sizeof(hops));
    uintptr_t i = *(uintptr_t *)state;
    if (hops == 0) {
        rg.last = (unsigned)i;
        sv_part_done();
        return 0;
    }
    hops--;
    int rc = pith_send(rg.refs[(i + 1) % RING_ACTORS], SV_TOKEN, &hops, sizeof(hops));
    if (rc != 0)
        sv_failf(rc, "the token's hop from actor %u", (unsigned)i);
    return 0;
}

static const pith_actor_type_t ring_type = {
    .name = "savina.threadring",
    .behaviour = ring_behaviour,
    .state_size = sizeof(uintptr_t),
    .init = ring_init,
};

static void ring_go_fn(void *arg)
{
    (void)arg;
    sv_started();
    int rc = pith_send(rg.refs[0], SV_TOKEN, &rg.hops, sizeof(rg.hops));
    if (rc != 0)
        sv_failf(rc, "the token's first send");
}

static int ring_kick(void *ctx)
{
    (void)ctx;
    rg.last = RING_ACTORS;
    return pith_submit(pith_ref_shard(rg.refs[0]), ring_go_fn, NULL);
}

static int ring_check(void *ctx, char *why, size_t whylen)
{
    (void)ctx;
    if (rg.last == rg.hops % RING_ACTORS)
        return 0;
    snprintf(why, whylen, "the token ended at actor %u, not %u", rg.last,
             (unsigned)(rg.hops % RING_ACTORS));
    return -EPROTO;
}

int bench_savina_threadring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen)
{
    int rc = sv_start(env, env->shards >= 2, why, whylen);
    if (rc != 0)
        return rc;
    memset(&rg, 0, sizeof(rg));
    rg.hops = n;
    for (unsigned i = 0; i < RING_ACTORS && rc == 0; i++)
        rc = sv_spawn_on(i % env->shards, &ring_type, (void *)(uintptr_t)i, &rg.refs[i]);
    struct sv_times t = {0};
    struct sv_row row = {.kick = ring_kick, .check = ring_check, .parts = 1, .msgs = n + 1};
    if (rc == 0)
        sv_measure(env, &row, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[512];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t ts = {0};
    sv_type_stats(&ring_type, (uint64_t)(t.runs + 1) * (n + 1), 0, &ts);
    bench_engine_stop(r->name);
    rc = sv_result(&t, r, why, whylen, "token hops, all shards");
    if (rc == 0)
        rc = sv_total_check("token hops", ts.messages, (uint64_t)(t.runs + 1) * (n + 1), why,
                            whylen);
    if (rc == 0) {
        char loc[1024];
        snprintf(loc, sizeof(loc), "%u actors round-robin (actor i on shard i %% %u: %s); %s",
                 RING_ACTORS, env->shards,
                 env->shards < 2 ? "no crossing"
                 : sv.busy       ? "every hop crosses shards, busy-polling"
                                 : "every hop crosses shards, default poll",
                 where);
        sv_note_common(env, r, &t, n, 100000, loc);
        bench_note("%s: one 8 B token, one hop in flight, ending at actor %u in every run: %.0f "
                   "ns a hop (median run)",
                   r->name, (unsigned)(n % RING_ACTORS), r->value * 1e6 / (double)n);
    }
    sv_end();
    return rc;
}
