/* Savina-style actor benchmarks (Imam & Sarkar, 2014) with the suite's default sizes: ping-pong,
 * counting, fork-join throughput, fork-join creation and the thread ring. Each row is the time of
 * the whole run in milliseconds, the median of a few runs after one warm-up run, with the actors
 * spread over every shard where the benchmark allows it. Savina has no same-run reference here,
 * so these rows have no baseline: they are figures to follow from one build to the next. Only
 * the public API. */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

/* Long enough that no shard sleeps during a row that crosses shards: the figures are messaging,
 * not wake-ups (as the mesh and actor rows). The one-shard row keeps the default poll, so that
 * the idle shard sleeps rather than spin on a CPU the rest of the machine then lacks; so do all
 * rows when there are more shards than CPUs, where a spinning shard would hold the CPU that the
 * shard it waits for needs (the thread ring then took tens of seconds a run on 2 CPUs). */
#define BUSY_POLL_NS (10ull * 1000000000ull)
/* Measured runs after the warm-up run; the value is their median. */
#define RUNS_FULL  5u
#define RUNS_QUICK 3u
/* Messages a sender sends one receiver before it yields (the default turn of an actor), and
 * actors a creator task spawns before it yields: both keep the shard's other work running and
 * each task far below the stall threshold. */
#define SEND_BURST   64u
#define CREATE_CHUNK 1000u
/* Savina's fixed sizes: actors of the fork-join throughput and of the thread ring. */
#define FJ_ACTORS   60u
#define RING_ACTORS 100u
/* The counting row's final ask: a safety net that never fires in a run that works. */
#define ASK_TIMEOUT_NS (60ull * 1000000000ull)
/* How often the waiting thread looks at progress, and how long progress may stand still before
 * the row gives up: a hang fails the row in seconds, not after env->wait_s. */

enum {
    SV_GO = 1,
    SV_PING = 2,
    SV_PONG = 3,
    SV_INC = 4,
    SV_CONTINUE = 5,
    SV_GET = 6,
    SV_COUNT = 7,
    SV_WORK = 8,
    SV_TOKEN = 9,
};

/* ---- what every row shares: completion, progress, waiting ---- */

struct sv_prog {
    _Alignas(64) _Atomic uint64_t v; /* messages handled on one shard; one line each */
};

struct sv_run {
    sem_t finished;
    _Atomic int err;       /* the first failure */
    _Atomic unsigned left; /* parts of the run (actors, shards) still to finish */
    uint64_t t_start;      /* when the run's first task began (on a shard) */
    uint64_t t_end;        /* when the last part finished */
    unsigned nshards;
    bool busy; /* the shards busy-poll */
    struct sv_prog *prog;
};

static struct sv_run sv;

static void sv_fail(int err)
{
    int zero = 0;
    if (atomic_compare_exchange_strong(&sv.err, &zero, err))
        sem_post(&sv.finished);
}

static void sv_part_done(void)
{
    if (atomic_fetch_sub_explicit(&sv.left, 1, memory_order_acq_rel) == 1) {
        sv.t_end = pith_now_ns();
        sem_post(&sv.finished);
    }
}

/* Single writer per line (its shard): a relaxed load and store, a plain add on x86. */
static void sv_bump(void)
{
    _Atomic uint64_t *p = &sv.prog[pith_shard_id()].v;
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static uint64_t sv_progress(void)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < sv.nshards; i++)
        sum += atomic_load_explicit(&sv.prog[i].v, memory_order_relaxed);
    return sum;
}

static int sv_check(void *ctx, bool done, uint64_t *progress)
{
    (void)ctx;
    (void)done;
    *progress = sv_progress();
    return atomic_load(&sv.err);
}

/* Waits for the run (bench_wait_progress). Returns 0, the run's failure, -ETIMEDOUT or -EDEADLK. */
static int sv_wait(const bench_env_t *env)
{
    return bench_wait_progress(env, &sv.finished, sv_check, NULL);
}

/* Starts the engine; `cross`: the row sends across shards, so they busy-poll when each can have
 * a CPU of its own. */
static int sv_start(const bench_env_t *env, bool cross, char *why, size_t whylen)
{
    memset(&sv, 0, sizeof(sv));
    sv.nshards = env->shards;
    cpu_set_t set;
    sv.busy = cross && env->shards >= 2 && sched_getaffinity(0, sizeof(set), &set) == 0 &&
              env->shards <= (unsigned)CPU_COUNT(&set);
    sv.prog = aligned_alloc(64, env->shards * sizeof(*sv.prog));
    if (sv.prog == NULL) {
        snprintf(why, whylen, "out of memory for %u progress lines", env->shards);
        return BENCH_FAIL;
    }
    memset(sv.prog, 0, env->shards * sizeof(*sv.prog));
    sem_init(&sv.finished, 0, 0);
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    if (sv.busy)
        cfg.poll_ns = BUSY_POLL_NS;
    if (bench_engine_start(&cfg, why, whylen) != 0) {
        sem_destroy(&sv.finished);
        free(sv.prog);
        return BENCH_FAIL;
    }
    return 0;
}

static void sv_end(void)
{
    sem_destroy(&sv.finished);
    free(sv.prog);
    sv.prog = NULL;
}

/* "2 shards on CPUs 0,1": where this engine's shards ran. Call while it runs. */
static void sv_where(char *buf, size_t len)
{
    int off = snprintf(buf, len, "%u shard%s on CPU%s ", sv.nshards, sv.nshards == 1 ? "" : "s",
                       sv.nshards == 1 ? "" : "s");
    for (unsigned i = 0; i < sv.nshards && off > 0 && (size_t)off < len; i++) {
        if (i == 8) {
            snprintf(buf + off, len - (size_t)off, ",...");
            break;
        }
        pith_shard_stats_t st;
        int cpu = pith_shard_stats(i, &st) == 0 ? st.cpu : -1;
        off += snprintf(buf + off, len - (size_t)off, "%s%d", i ? "," : "", cpu);
    }
}

/* Savina's actors "compute" on each message: the square of sin(37.2), checked so that it
 * cannot be dropped. The volatile keeps the compiler from folding it. */
static volatile double sv_theta = 37.2;

static int sv_compute(void)
{
    double s = sin(sv_theta);
    return s * s > 0.0 ? 0 : -EDOM;
}

struct sv_spawn {
    const pith_actor_type_t *type;
    void *arg;
    pith_ref_t ref;
    int err;
};

static void *sv_spawn_task(void *arg)
{
    struct sv_spawn *s = arg;
    s->err = pith_spawn(s->type, s->arg, &s->ref);
    return NULL;
}

/* Spawns an actor on `shard` from a task there. */
static int sv_spawn_on(unsigned shard, const pith_actor_type_t *type, void *arg, pith_ref_t *ref)
{
    struct sv_spawn s = {.type = type, .arg = arg};
    int rc = pith_call_wait(shard, sv_spawn_task, &s, NULL);
    if (rc == 0)
        rc = s.err;
    *ref = s.ref;
    return rc;
}

/* A type's counters once they show `messages` handled and `stopped` ended, or after a second:
 * a turn adds its messages, and an actor that stopped itself ends, only after its last behaviour
 * returns, which may be after that behaviour signalled the run's end. */
static void sv_type_stats(const pith_actor_type_t *type, uint64_t messages, uint64_t stopped,
                          pith_actor_type_stats_t *ts)
{
    uint64_t deadline = bench_clock_ns() + 1000000000ull;
    while (pith_actor_type_stats(type, ts) == 0 &&
           (ts->messages < messages || ts->stopped < stopped) && bench_clock_ns() < deadline) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

/* init for the types whose state is one pointer: the row's record. */
static int sv_init_ptr(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    *(void **)state = arg;
    return 0;
}

/* Starts one run, from the main thread: resets the row's record and submits the run's first
 * task, which sets sv.t_start. */
typedef int (*sv_kick_fn)(void *ctx);

/* The first task of a run with a start on several shards: on shard 0 it takes the start time and
 * submits fn(arg(s)) to every shard that has work (its own through the local queue, the others
 * through the mesh). The main thread, which has no CPU of its own while the shards busy-poll,
 * then stands between no two shards' starts (it once stood up to ~10 ms between them). */
struct sv_fanout {
    pith_fn_t fn;
    void *(*arg)(unsigned shard); /* NULL: no work there */
};

static struct sv_fanout sv_fan;

static void sv_fanout_fn(void *unused)
{
    (void)unused;
    sv.t_start = pith_now_ns();
    for (unsigned s = 0; s < sv.nshards; s++) {
        void *arg = sv_fan.arg(s);
        if (arg == NULL)
            continue;
        int rc = pith_submit(s, sv_fan.fn, arg);
        if (rc != 0) {
            sv_fail(rc);
            return;
        }
    }
}

/* sv_times.failed_run when the actors could not even be spawned. */
#define SV_SETUP (~0u)

struct sv_times {
    unsigned runs;
    double med, min, max; /* ms */
    int rc;
    unsigned failed_run; /* 0: the warm-up, SV_SETUP: before it */
};

/* One warm-up run, then `runs` measured ones. A run's time goes from the start of its first
 * task to the end of its last part, both taken on the shards. */
static void sv_measure(const bench_env_t *env, sv_kick_fn kick, void *ctx, unsigned parts,
                       struct sv_times *t)
{
    t->runs = env->quick ? RUNS_QUICK : RUNS_FULL;
    double ms[RUNS_FULL];
    t->rc = 0;
    for (unsigned i = 0; i <= t->runs; i++) {
        atomic_store(&sv.err, 0);
        atomic_store(&sv.left, parts);
        sv.t_start = sv.t_end = 0;
        int rc = kick(ctx);
        if (rc == 0)
            rc = sv_wait(env);
        if (rc != 0) {
            t->rc = rc;
            t->failed_run = i;
            return;
        }
        if (i > 0)
            ms[i - 1] = (double)(sv.t_end - sv.t_start) / 1e6;
    }
    for (unsigned i = 1; i < t->runs; i++) /* insertion sort: a handful */
        for (unsigned j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            double x = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = x;
        }
    t->min = ms[0];
    t->max = ms[t->runs - 1];
    t->med = ms[t->runs / 2]; /* runs is odd */
}

/* Fills the row from the runs, or why with the failure. */
static int sv_result(const struct sv_times *t, result_t *r, char *why, size_t whylen,
                     const char *what)
{
    if (t->rc != 0) {
        if (t->failed_run == SV_SETUP)
            snprintf(why, whylen, "spawning the actors: %s", bench_wait_strerror(t->rc));
        else
            snprintf(why, whylen, "%s run %u: %s (progress %llu; %s)",
                     t->failed_run ? "measured" : "warm-up", t->failed_run,
                     bench_wait_strerror(t->rc), (unsigned long long)sv_progress(), what);
        return BENCH_FAIL;
    }
    r->value = r->p50 = t->med;
    r->samples = t->runs;
    return 0;
}

static void sv_note_common(const bench_env_t *env, const result_t *r, const struct sv_times *t,
                           uint64_t n, uint64_t n_savina, const char *where)
{
    char size[96] = "Savina's default size";
    if (n != n_savina)
        snprintf(size, sizeof(size), "%s size (%llu; Savina's default %llu)",
                 env->quick ? "quick: a tenth of the" : "not the default", (unsigned long long)n,
                 (unsigned long long)n_savina);
    bench_note("%s: %s; median of %u runs after a warm-up run (min %.2f, max %.2f ms), each "
               "from the start of its first task to its end, both on the shards; %s; no baseline: "
               "nothing in this "
               "run does the same work without the actor layer",
               r->name, size, t->runs, t->min, t->max, where);
}

/* ---- ping-pong: two actors, n round trips of empty messages ---- */

struct pingpong {
    uint64_t n;
    pith_ref_t ping, pong;
    uint64_t count; /* the ping actor's */
};

static struct pingpong pp;

static int ping_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct pingpong *p = *(struct pingpong **)state;
    if (msg->type == SV_GO) {
        p->count = 0;
    } else if (msg->type == SV_PONG && msg->from == p->pong) {
        sv_bump();
        if (++p->count == p->n) {
            sv_part_done();
            return 0;
        }
    } else {
        sv_fail(-EPROTO);
        return 0;
    }
    int rc = pith_send(p->pong, SV_PING, NULL, 0);
    if (rc != 0)
        sv_fail(rc);
    return 0;
}

static int pong_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type != SV_PING) {
        sv_fail(-EPROTO);
        return 0;
    }
    int rc = pith_send(msg->from, SV_PONG, NULL, 0);
    if (rc != 0)
        sv_fail(rc);
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
};

static void go_fn(void *arg)
{
    sv.t_start = pith_now_ns();
    int rc = pith_send(*(pith_ref_t *)arg, SV_GO, NULL, 0);
    if (rc != 0)
        sv_fail(rc);
}

static int pp_kick(void *ctx)
{
    struct pingpong *p = ctx;
    return pith_submit(pith_ref_shard(p->ping), go_fn, &p->ping);
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
        rc = sv_spawn_on(pong_shard, &pong_type, NULL, &pp.pong);
    struct sv_times t = {0};
    if (rc == 0)
        sv_measure(env, pp_kick, &pp, 1, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[160];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t ts = {0};
    sv_type_stats(&ping_type, (uint64_t)(t.runs + 1) * (n + 1), 0, &ts);
    bench_engine_stop(r->name);
    char what[64];
    snprintf(what, sizeof(what), "%llu of %llu round trips in the run",
             (unsigned long long)pp.count, (unsigned long long)n);
    rc = sv_result(&t, r, why, whylen, what);
    if (rc == 0) {
        char loc[512];
        snprintf(loc, sizeof(loc), "ping on shard 0, pong on shard %u, of %s%s", pong_shard, where,
                 pong_shard
                     ? (sv.busy ? ", both busy-polling" : ", default poll (more shards than CPUs)")
                     : " (one shard: no crossing)");
        sv_note_common(env, r, &t, n, 40000, loc);
        bench_note("%s: %llu round trips of empty messages (pith_send both ways), one in flight: "
                   "%.0f ns a round trip (median run); ping handled %llu messages over all runs "
                   "(%s)",
                   r->name, (unsigned long long)n, r->value * 1e6 / (double)n,
                   (unsigned long long)ts.messages,
                   ts.messages == (uint64_t)(t.runs + 1) * (n + 1) ? "as expected" : "MISMATCH");
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
    if (msg->req != 0 && msg->req == c->req) {
        if (msg->type != SV_COUNT || msg->len != sizeof(c->got)) {
            sv_fail(msg->type == PITH_MSG_TIMEOUT ? -ETIMEDOUT : -EPROTO);
            return 0;
        }
        memcpy(&c->got, msg->data, sizeof(c->got));
        if (c->got != c->n)
            sv_fail(-EPROTO);
        else
            sv_part_done();
        return 0;
    }
    if (msg->type == SV_GO)
        c->sent = 0;
    else if (msg->type != SV_CONTINUE) {
        sv_fail(-EPROTO);
        return 0;
    }
    for (unsigned i = 0; i < SEND_BURST && c->sent < c->n; i++) {
        int rc = pith_send(c->counter, SV_INC, NULL, 0);
        if (rc == -EAGAIN) {
            c->eagain++;
            break;
        }
        if (rc != 0) {
            sv_fail(rc);
            return 0;
        }
        c->sent++;
    }
    int rc = c->sent < c->n
                 ? pith_send(pith_self(self), SV_CONTINUE, NULL, 0)
                 : pith_ask(c->counter, SV_GET, NULL, 0, ASK_TIMEOUT_NS, NULL, NULL, &c->req);
    if (rc != 0)
        sv_fail(rc);
    return 0;
}

static int cn_counter_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    uint64_t *count = state;
    if (msg->type == SV_INC) {
        ++*count;
        sv_bump();
        return 0;
    }
    if (msg->type != SV_GET || msg->req == 0) {
        sv_fail(-EPROTO);
        return 0;
    }
    int rc = pith_reply(msg, SV_COUNT, count, sizeof(*count));
    if (rc != 0)
        sv_fail(rc);
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
    if (rc == 0)
        sv_measure(env, cn_kick, &cn, 1, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[160];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t tc = {0};
    pith_actor_type_stats(&cn_counter_type, &tc);
    bench_engine_stop(r->name);
    char what[96];
    snprintf(what, sizeof(what), "%llu of %llu sent, count answered %llu",
             (unsigned long long)cn.sent, (unsigned long long)n, (unsigned long long)cn.got);
    rc = sv_result(&t, r, why, whylen, what);
    if (rc == 0) {
        char loc[512];
        snprintf(loc, sizeof(loc),
                 "producer and counter both on shard 0 of %s, as in Savina "
                 "(one producer, one counter: nothing to spread)",
                 where);
        sv_note_common(env, r, &t, n, 1000000, loc);
        bench_note("%s: %llu empty increments in bursts of %u, the producer yielding between "
                   "bursts (turns of 1 message), then one pith_ask for the count, checked: %.1f M "
                   "msgs/s (median run); sends refused with -EAGAIN %llu (over all runs), "
                   "counter's deepest mailbox %llu, rejected %llu",
                   r->name, (unsigned long long)n, SEND_BURST, (double)n / r->value / 1e3,
                   (unsigned long long)cn.eagain, (unsigned long long)tc.mailbox_max,
                   (unsigned long long)tc.rejected);
    }
    sv_end();
    return rc;
}

/* ---- fork-join throughput: FJ_ACTORS actors, n messages each ----
 * Actor i lives on shard i % shards. On each shard a sender task sends to that shard's actors,
 * SEND_BURST messages to each in turn, then submits itself behind their turns; each message
 * computes as Savina's do. A shard's part is done when all its actors have had n. */

struct fjt_shard {
    _Alignas(64) unsigned nactors;
    unsigned done; /* its actors that had all n in this run */
    uint64_t turns, eagain;
    pith_ref_t refs[FJ_ACTORS];
    uint64_t sent[FJ_ACTORS];
};

struct fjt {
    uint64_t n;
    struct fjt_shard *sh;
};

static struct fjt fj;

static int fjt_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    uint64_t *count = state;
    if (msg->type != SV_WORK) {
        sv_fail(-EPROTO);
        return 0;
    }
    int rc = sv_compute();
    if (rc != 0)
        sv_fail(rc);
    sv_bump();
    if (++*count == fj.n) {
        *count = 0; /* for the next run */
        struct fjt_shard *sh = &fj.sh[pith_shard_id()];
        if (++sh->done == sh->nactors)
            sv_part_done();
    }
    return 0;
}

static const pith_actor_type_t fjt_type = {
    .name = "savina.fjthroughput",
    .behaviour = fjt_behaviour,
    .state_size = sizeof(uint64_t),
};

static void fjt_send_fn(void *arg)
{
    struct fjt_shard *sh = arg;
    bool more = false;
    sh->turns++;
    for (unsigned j = 0; j < sh->nactors; j++) {
        for (unsigned b = 0; b < SEND_BURST && sh->sent[j] < fj.n; b++) {
            int rc = pith_send(sh->refs[j], SV_WORK, NULL, 0);
            if (rc == -EAGAIN) {
                sh->eagain++;
                break;
            }
            if (rc != 0) {
                sv_fail(rc);
                return;
            }
            sh->sent[j]++;
        }
        more |= sh->sent[j] < fj.n;
    }
    if (more) {
        int rc = pith_submit((unsigned)pith_shard_id(), fjt_send_fn, sh);
        if (rc != 0)
            sv_fail(rc);
    }
}

static void *fjt_arg(unsigned shard)
{
    return fj.sh[shard].nactors ? &fj.sh[shard] : NULL;
}

static int fjt_kick(void *ctx)
{
    (void)ctx;
    for (unsigned s = 0; s < sv.nshards; s++) {
        fj.sh[s].done = 0;
        memset(fj.sh[s].sent, 0, sizeof(fj.sh[s].sent));
    }
    sv_fan = (struct sv_fanout){.fn = fjt_send_fn, .arg = fjt_arg};
    return pith_submit(0, sv_fanout_fn, NULL);
}

/* The same run driven from the calling thread, as CAF's harness drives it from main: its own
 * client sends SEND_BURST to each actor in turn, waiting for room when a lane is full. */
static pith_client_t *fjt_client;
static uint64_t fjt_pushed;

static int fjt_kick_main(void *ctx)
{
    (void)ctx;
    for (unsigned s = 0; s < sv.nshards; s++)
        fj.sh[s].done = 0;
    sv.t_start = pith_now_ns();
    uint64_t sent[FJ_ACTORS] = {0};
    bool more = true;
    while (more) {
        more = false;
        for (unsigned i = 0; i < FJ_ACTORS; i++) {
            struct fjt_shard *sh = &fj.sh[i % sv.nshards];
            pith_ref_t to = sh->refs[i / sv.nshards];
            for (unsigned b = 0; b < SEND_BURST && sent[i] < fj.n; b++) {
                int rc = pith_client_send(fjt_client, to, SV_WORK, NULL, 0, 0);
                if (rc == -EAGAIN) {
                    fjt_pushed++;
                    rc = pith_client_send(fjt_client, to, SV_WORK, NULL, 0, 10000000000ull);
                }
                if (rc != 0)
                    return rc;
                sent[i]++;
            }
            more |= sent[i] < fj.n;
        }
    }
    return 0;
}

static int fjthroughput(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen,
                        bool from_main);

int bench_savina_fjthroughput(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen)
{
    return fjthroughput(env, n, r, why, whylen, false);
}

int bench_savina_fjthroughput_main(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                   size_t whylen)
{
    return fjthroughput(env, n, r, why, whylen, true);
}

static int fjthroughput(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen,
                        bool from_main)
{
    int rc = sv_start(env, env->shards >= 2, why, whylen);
    if (rc != 0)
        return rc;
    fj.n = n;
    fj.sh = aligned_alloc(64, env->shards * sizeof(*fj.sh));
    if (fj.sh == NULL) {
        bench_engine_stop(r->name);
        sv_end();
        snprintf(why, whylen, "out of memory for %u shards' records", env->shards);
        return BENCH_FAIL;
    }
    memset(fj.sh, 0, env->shards * sizeof(*fj.sh));
    unsigned parts = 0;
    for (unsigned i = 0; i < FJ_ACTORS && rc == 0; i++) {
        struct fjt_shard *sh = &fj.sh[i % env->shards];
        parts += sh->nactors == 0;
        rc = sv_spawn_on(i % env->shards, &fjt_type, NULL, &sh->refs[sh->nactors++]);
    }
    struct sv_times t = {0};
    fjt_pushed = 0;
    if (rc == 0 && from_main && (fjt_client = pith_client_open(NULL)) == NULL)
        rc = -errno;
    if (rc == 0)
        sv_measure(env, from_main ? fjt_kick_main : fjt_kick, NULL, parts, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    pith_client_close(fjt_client);
    fjt_client = NULL;
    char where[160];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t ts = {0};
    sv_type_stats(&fjt_type, (uint64_t)(t.runs + 1) * FJ_ACTORS * n, 0, &ts);
    bench_engine_stop(r->name);
    uint64_t turns = 0, eagain = 0;
    for (unsigned s = 0; s < env->shards; s++) {
        turns += fj.sh[s].turns;
        eagain += fj.sh[s].eagain;
    }
    free(fj.sh);
    fj.sh = NULL;
    rc = sv_result(&t, r, why, whylen, "messages handled, all shards");
    if (rc == 0) {
        char loc[512];
        snprintf(loc, sizeof(loc), "%u actors round-robin over %s (actor i on shard i %% %u), %s%s",
                 FJ_ACTORS, where, env->shards,
                 from_main ? "all fed from the main thread through its client (the run's time "
                             "from main's first send to the last actor's end)"
                           : "each shard's actors fed by a sender task on that shard (all "
                             "started by one task on shard 0)",
                 sv.busy ? ", busy-polling" : ", default poll");
        sv_note_common(env, r, &t, n, 10000, loc);
        uint64_t total = (uint64_t)FJ_ACTORS * n;
        bench_note("%s: %llu empty messages (%u actors x %llu), each handler computing sin(37.2)^2 "
                   "as Savina's does; senders send %u to each actor in turn, then yield: %.1f M "
                   "msgs/s (median run); sender turns %llu, sends refused with -EAGAIN %llu (over "
                   "all runs); messages handled %llu (%s)",
                   r->name, (unsigned long long)total, FJ_ACTORS, (unsigned long long)n, SEND_BURST,
                   (double)total / r->value / 1e3, (unsigned long long)turns,
                   (unsigned long long)eagain, (unsigned long long)ts.messages,
                   ts.messages == (uint64_t)(t.runs + 1) * total ? "as expected" : "MISMATCH");
        if (from_main)
            bench_note("%s: main's lanes were full %llu times (it then waited for room)", r->name,
                       (unsigned long long)fjt_pushed);
    }
    sv_end();
    return rc;
}

/* ---- fork-join creation: n actors, each spawned, sent one message, and ended ----
 * Actor i is created on shard i % shards by a creator task on that shard, CREATE_CHUNK at a time
 * (spawn, then one empty message); its handler computes as Savina's does and stops it. */

struct fjc_shard {
    _Alignas(64) uint64_t todo;
    uint64_t created, done, chunks;
};

struct fjc {
    struct fjc_shard *sh;
};

static struct fjc fc;

static int fjc_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    if (msg->type != SV_WORK) {
        sv_fail(-EPROTO);
        return 0;
    }
    int rc = sv_compute();
    if (rc == 0)
        rc = pith_stop(pith_self(self)); /* takes effect when this returns */
    if (rc != 0)
        sv_fail(rc);
    sv_bump();
    struct fjc_shard *sh = &fc.sh[pith_shard_id()];
    if (++sh->done == sh->todo)
        sv_part_done();
    return 0;
}

static const pith_actor_type_t fjc_type = {
    .name = "savina.fjcreation",
    .behaviour = fjc_behaviour,
};

static int keeper_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    sv_fail(-EPROTO); /* nobody sends it anything */
    return 0;
}

/* One idle actor on each shard through the runs, as in any application that has actors at all:
 * without it a shard's actor table empties at the end of each run and is given back a few ms
 * later (the timer that does it is then still pending at the engine's stop). */
static const pith_actor_type_t keeper_type = {
    .name = "savina.keeper",
    .behaviour = keeper_behaviour,
};

static void fjc_create_fn(void *arg)
{
    struct fjc_shard *sh = arg;
    sh->chunks++;
    for (unsigned i = 0; i < CREATE_CHUNK && sh->created < sh->todo; i++) {
        pith_ref_t ref;
        int rc = pith_spawn(&fjc_type, NULL, &ref);
        if (rc == 0)
            rc = pith_send(ref, SV_WORK, NULL, 0);
        if (rc != 0) {
            sv_fail(rc);
            return;
        }
        sh->created++;
    }
    if (sh->created < sh->todo) {
        int rc = pith_submit((unsigned)pith_shard_id(), fjc_create_fn, sh);
        if (rc != 0)
            sv_fail(rc);
    }
}

static void *fjc_arg(unsigned shard)
{
    return fc.sh[shard].todo ? &fc.sh[shard] : NULL;
}

static int fjc_kick(void *ctx)
{
    (void)ctx;
    for (unsigned s = 0; s < sv.nshards; s++)
        fc.sh[s].created = fc.sh[s].done = 0;
    sv_fan = (struct sv_fanout){.fn = fjc_create_fn, .arg = fjc_arg};
    return pith_submit(0, sv_fanout_fn, NULL);
}

int bench_savina_fjcreation(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen)
{
    int rc = sv_start(env, env->shards >= 2, why, whylen);
    if (rc != 0)
        return rc;
    fc.sh = aligned_alloc(64, env->shards * sizeof(*fc.sh));
    if (fc.sh == NULL) {
        bench_engine_stop(r->name);
        sv_end();
        snprintf(why, whylen, "out of memory for %u shards' records", env->shards);
        return BENCH_FAIL;
    }
    memset(fc.sh, 0, env->shards * sizeof(*fc.sh));
    unsigned parts = 0;
    for (unsigned s = 0; s < env->shards; s++) {
        fc.sh[s].todo = n / env->shards + (s < n % env->shards);
        parts += fc.sh[s].todo > 0;
    }
    rc = 0;
    for (unsigned s = 0; s < env->shards && rc == 0; s++) {
        pith_ref_t keeper;
        rc = sv_spawn_on(s, &keeper_type, NULL, &keeper);
    }
    struct sv_times t = {0};
    if (rc == 0)
        sv_measure(env, fjc_kick, NULL, parts, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[160];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t ts = {0};
    sv_type_stats(&fjc_type, (uint64_t)(t.runs + 1) * n, (uint64_t)(t.runs + 1) * n, &ts);
    bench_engine_stop(r->name);
    uint64_t chunks = 0;
    for (unsigned s = 0; s < env->shards; s++)
        chunks += fc.sh[s].chunks;
    free(fc.sh);
    fc.sh = NULL;
    rc = sv_result(&t, r, why, whylen, "actors ended, all shards");
    if (rc == 0) {
        char loc[512];
        snprintf(loc, sizeof(loc),
                 "actors round-robin over %s (actor i on shard i %% %u), each "
                 "shard's created by a task on that shard (all started by one task on shard 0), "
                 "one idle actor on each shard throughout%s",
                 where, env->shards, sv.busy ? ", busy-polling" : ", default poll");
        sv_note_common(env, r, &t, n, 40000, loc);
        uint64_t all = (uint64_t)(t.runs + 1) * n;
        bench_note("%s: per actor pith_spawn (no state, no init), one empty message, its handler "
                   "computes sin(37.2)^2 and stops it; creators spawn %u a task (%llu tasks over "
                   "all runs): %.0f ns an actor (median run); spawned %llu, stopped %llu, "
                   "messages %llu, live %llu (%s)",
                   r->name, CREATE_CHUNK, (unsigned long long)chunks, r->value * 1e6 / (double)n,
                   (unsigned long long)ts.spawned, (unsigned long long)ts.stopped,
                   (unsigned long long)ts.messages, (unsigned long long)ts.live,
                   ts.spawned == all && ts.stopped == all && ts.messages == all ? "as expected"
                                                                                : "MISMATCH");
    }
    sv_end();
    return rc;
}

/* ---- thread ring: RING_ACTORS actors in a ring, a token passed n hops ----
 * Actor i lives on shard i % shards and passes the token (hops left, 8 bytes) to actor i + 1;
 * the actor that gets it at 0 ends the run. */

struct ring {
    pith_ref_t refs[RING_ACTORS];
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
    if (msg->type != SV_TOKEN || msg->len != sizeof(hops)) {
        sv_fail(-EPROTO);
        return 0;
    }
    memcpy(&hops, msg->data, sizeof(hops));
    sv_bump();
    if (hops == 0) {
        sv_part_done();
        return 0;
    }
    hops--;
    uintptr_t i = *(uintptr_t *)state;
    int rc = pith_send(rg.refs[(i + 1) % RING_ACTORS], SV_TOKEN, &hops, sizeof(hops));
    if (rc != 0)
        sv_fail(rc);
    return 0;
}

static const pith_actor_type_t ring_type = {
    .name = "savina.threadring",
    .behaviour = ring_behaviour,
    .state_size = sizeof(uintptr_t),
    .init = ring_init,
};

static uint64_t ring_hops;

static void ring_go_fn(void *arg)
{
    (void)arg;
    sv.t_start = pith_now_ns();
    int rc = pith_send(rg.refs[0], SV_TOKEN, &ring_hops, sizeof(ring_hops));
    if (rc != 0)
        sv_fail(rc);
}

static int ring_kick(void *ctx)
{
    (void)ctx;
    return pith_submit(pith_ref_shard(rg.refs[0]), ring_go_fn, NULL);
}

int bench_savina_threadring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen)
{
    int rc = sv_start(env, env->shards >= 2, why, whylen);
    if (rc != 0)
        return rc;
    ring_hops = n;
    for (unsigned i = 0; i < RING_ACTORS && rc == 0; i++)
        rc = sv_spawn_on(i % env->shards, &ring_type, (void *)(uintptr_t)i, &rg.refs[i]);
    struct sv_times t = {0};
    if (rc == 0)
        sv_measure(env, ring_kick, NULL, 1, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[160];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t ts = {0};
    sv_type_stats(&ring_type, (uint64_t)(t.runs + 1) * (n + 1), 0, &ts);
    bench_engine_stop(r->name);
    rc = sv_result(&t, r, why, whylen, "token hops, all shards");
    if (rc == 0) {
        char loc[512];
        snprintf(loc, sizeof(loc), "%u actors round-robin over %s (actor i on shard i %% %u: %s)",
                 RING_ACTORS, where, env->shards,
                 env->shards < 2 ? "no crossing"
                 : sv.busy       ? "every hop crosses shards; busy-polling"
                                 : "every hop crosses shards; default poll");
        sv_note_common(env, r, &t, n, 100000, loc);
        bench_note("%s: one 8 B token, one hop in flight: %.0f ns a hop (median run); messages "
                   "handled %llu (%s)",
                   r->name, r->value * 1e6 / (double)n, (unsigned long long)ts.messages,
                   ts.messages == (uint64_t)(t.runs + 1) * (n + 1) ? "as expected" : "MISMATCH");
    }
    sv_end();
    return rc;
}
