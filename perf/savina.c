/* The Savina rows' harness (savina.h): engine start, completion and failure, progress for hang
 * detection, the runs timed on the driving thread, the check of each run, and where the work
 * went. The rows themselves are in bench_savina*.c. Only the public API. */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "savina.h"

/* Long enough that no shard sleeps during a row that crosses shards: the figures are messaging,
 * not wake-ups (as the mesh and actor rows). The one-shard row keeps the default poll, so that
 * the idle shard sleeps rather than spin on a CPU the rest of the machine then lacks; so do all
 * rows when there are more shards than CPUs, where a spinning shard would hold the CPU that the
 * shard it waits for needs (the thread ring then took tens of seconds a run on 2 CPUs). The
 * main thread, which times the runs, has no CPU of its own while the shards busy-poll on all
 * of them: the end of a run reaches it as a wake-up that the scheduler gives a CPU to. */
#define BUSY_POLL_NS (10ull * 1000000000ull)
/* Measured runs after the warm-up run; the value is their median. */
#define RUNS_FULL  5u
#define RUNS_QUICK 3u

struct sv_run sv;

static bool claim_why(void)
{
    int zero = 0;
    return atomic_compare_exchange_strong(&sv.why_claimed, &zero, 1);
}

void sv_fail(int err)
{
    int zero = 0;
    if (atomic_compare_exchange_strong(&sv.err, &zero, err))
        sem_post(&sv.finished);
}

void sv_failf(int err, const char *fmt, ...)
{
    if (claim_why()) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(sv.why, sizeof(sv.why), fmt, ap);
        va_end(ap);
        /* Pairs with the acquire in sv_result: the words are complete before anyone reads
         * them, even a reader that saw sv.err first. */
        atomic_store_explicit(&sv.why_ready, 1, memory_order_release);
    }
    sv_fail(err);
}

void sv_part_done(void)
{
    if (atomic_fetch_sub_explicit(&sv.left, 1, memory_order_acq_rel) == 1) {
        sv.t_end = pith_now_ns();
        sem_post(&sv.finished);
    }
}

static uint64_t progress(void)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < sv.nshards; i++)
        sum += atomic_load_explicit(&sv.sh[i].msgs, memory_order_relaxed);
    return sum;
}

static int check_progress(void *ctx, bool done, uint64_t *prog)
{
    (void)ctx;
    (void)done;
    *prog = progress();
    return atomic_load(&sv.err);
}

int sv_start(const bench_env_t *env, bool cross, char *why, size_t whylen)
{
    memset(&sv, 0, sizeof(sv));
    sv.nshards = env->shards;
    cpu_set_t set;
    sv.busy = cross && env->shards >= 2 && sched_getaffinity(0, sizeof(set), &set) == 0 &&
              env->shards <= (unsigned)CPU_COUNT(&set);
    sv.sh = aligned_alloc(64, env->shards * sizeof(*sv.sh));
    if (sv.sh == NULL) {
        snprintf(why, whylen, "out of memory for %u shards' counters", env->shards);
        return BENCH_FAIL;
    }
    memset(sv.sh, 0, env->shards * sizeof(*sv.sh));
    sem_init(&sv.finished, 0, 0);
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    if (sv.busy)
        cfg.poll_ns = BUSY_POLL_NS;
    if (bench_engine_start(&cfg, why, whylen) != 0) {
        sem_destroy(&sv.finished);
        free(sv.sh);
        sv.sh = NULL;
        return BENCH_FAIL;
    }
    return 0;
}

void sv_end(void)
{
    sem_destroy(&sv.finished);
    free(sv.sh);
    sv.sh = NULL;
}

void sv_where(char *buf, size_t len)
{
    size_t off = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        if (off < len) {                                                                           \
            int k_ = snprintf(buf + off, len - off, __VA_ARGS__);                                  \
            off = k_ < 0 ? len : off + (size_t)k_;                                                 \
        }                                                                                          \
    } while (0)
    PUT("%u shard%s on CPU%s ", sv.nshards, sv.nshards == 1 ? "" : "s", sv.nshards == 1 ? "" : "s");
    for (unsigned i = 0; i < sv.nshards; i++) {
        if (i == 8) {
            PUT(",...");
            break;
        }
        pith_shard_stats_t st;
        PUT("%s%d", i ? "," : "", pith_shard_stats(i, &st) == 0 ? st.cpu : -1);
    }
    if (sv.runs > 0) {
        PUT("; a run (mean of %u), per shard:", sv.runs);
        for (unsigned i = 0; i < sv.nshards; i++) {
            if (i == 8) {
                PUT(" ...");
                break;
            }
            const struct sv_shard *s = &sv.sh[i];
            PUT("%s shard %u %llu actor%s, %llu msgs handled, %llu sent to other shards",
                i ? ";" : "", i, (unsigned long long)atomic_load(&s->actors),
                atomic_load(&s->actors) == 1 ? "" : "s",
                (unsigned long long)(atomic_load(&s->msgs) / sv.runs),
                (unsigned long long)((s->out1 - s->out0) / sv.runs));
        }
    }
#undef PUT
}

/* The volatile keeps the compiler from folding the computation. */
static volatile double sv_theta = 37.2;

int sv_compute(void)
{
    double s = sin(sv_theta);
    return s * s > 0.0 ? 0 : -EDOM;
}

struct spawn_req {
    const pith_actor_type_t *type;
    void *arg;
    pith_ref_t ref;
    int err;
};

static void *spawn_task(void *arg)
{
    struct spawn_req *s = arg;
    s->err = pith_spawn(s->type, s->arg, &s->ref);
    if (s->err == 0) {
        _Atomic uint64_t *p = &sv.sh[pith_shard_id()].actors;
        atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    }
    return NULL;
}

int sv_spawn_on(unsigned shard, const pith_actor_type_t *type, void *arg, pith_ref_t *ref)
{
    struct spawn_req s = {.type = type, .arg = arg};
    int rc = pith_call_wait(shard, spawn_task, &s, NULL);
    if (rc == 0)
        rc = s.err;
    *ref = s.ref;
    return rc;
}

void sv_type_stats(const pith_actor_type_t *type, uint64_t messages, uint64_t stopped,
                   pith_actor_type_stats_t *ts)
{
    uint64_t deadline = bench_clock_ns() + 1000000000ull;
    while (pith_actor_type_stats(type, ts) == 0 &&
           (ts->messages < messages || ts->stopped < stopped) && bench_clock_ns() < deadline) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

int sv_init_ptr(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    *(void **)state = arg;
    return 0;
}

void sv_started(void)
{
    sv.t_start = pith_now_ns();
}

static struct {
    pith_fn_t fn;
    void *(*arg)(unsigned shard);
} fan;

static void fanout_fn(void *unused)
{
    (void)unused;
    sv_started();
    for (unsigned s = 0; s < sv.nshards; s++) {
        void *arg = fan.arg(s);
        if (arg == NULL)
            continue;
        int rc = pith_submit(s, fan.fn, arg);
        if (rc != 0) {
            sv_failf(rc, "the start could not reach shard %u", s);
            return;
        }
    }
}

int sv_fanout(pith_fn_t fn, void *(*arg)(unsigned shard))
{
    fan.fn = fn;
    fan.arg = arg;
    return pith_submit(0, fanout_fn, NULL);
}

static void msgs_out(bool end)
{
    for (unsigned i = 0; i < sv.nshards; i++) {
        pith_shard_stats_t st;
        uint64_t v = pith_shard_stats(i, &st) == 0 ? st.msgs_out : 0;
        if (end)
            sv.sh[i].out1 = v;
        else
            sv.sh[i].out0 = v;
    }
}

static void sort(double *v, unsigned n)
{
    for (unsigned i = 1; i < n; i++) /* insertion sort: a handful */
        for (unsigned j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double x = v[j];
            v[j] = v[j - 1];
            v[j - 1] = x;
        }
}

/* The check after a run: the messages handled, then the row's own. */
static int check_run(const struct sv_row *row, uint64_t handled)
{
    if (row->msgs != 0 && handled != row->msgs) {
        if (claim_why()) {
            snprintf(sv.why, sizeof(sv.why), "the run handled %llu messages, not %llu",
                     (unsigned long long)handled, (unsigned long long)row->msgs);
            atomic_store_explicit(&sv.why_ready, 1, memory_order_release);
        }
        return -EPROTO;
    }
    if (row->check == NULL)
        return 0;
    char why[sizeof(sv.why)] = "";
    int rc = row->check(row->ctx, why, sizeof(why));
    if (rc != 0 && claim_why()) {
        snprintf(sv.why, sizeof(sv.why), "%s", why[0] ? why : "the row's check failed");
        atomic_store_explicit(&sv.why_ready, 1, memory_order_release);
    }
    return rc;
}

void sv_measure(const bench_env_t *env, const struct sv_row *row, struct sv_times *t)
{
    t->runs = env->quick ? RUNS_QUICK : RUNS_FULL;
    double ms[RUNS_FULL], shard_ms[RUNS_FULL];
    t->rc = 0;
    sv.runs = 0;
    msgs_out(false);
    for (unsigned i = 0; i <= t->runs; i++) {
        atomic_store(&sv.err, 0);
        atomic_store(&sv.left, row->parts);
        sv.t_start = sv.t_end = 0;
        uint64_t before = progress();
        uint64_t t0 = bench_clock_ns();
        int rc = row->kick(row->ctx);
        if (rc == 0)
            rc = bench_wait_progress(env, &sv.finished, check_progress, NULL);
        uint64_t t1 = bench_clock_ns();
        /* The run's end happens after every message it handled (each run's last message
         * follows from all the others), and sem_post/sem_wait order it before this thread's
         * reads: the counts and the row's record are complete here. */
        if (rc == 0)
            rc = check_run(row, progress() - before);
        if (rc != 0) {
            t->rc = rc;
            t->failed_run = i;
            return;
        }
        sv.runs++;
        if (i > 0) {
            ms[i - 1] = (double)(t1 - t0) / 1e6;
            shard_ms[i - 1] = (double)(sv.t_end - sv.t_start) / 1e6;
        }
    }
    msgs_out(true);
    sort(ms, t->runs);
    sort(shard_ms, t->runs);
    t->min = ms[0];
    t->max = ms[t->runs - 1];
    t->med = ms[t->runs / 2]; /* runs is odd */
    t->shard_min = shard_ms[0];
    t->shard_max = shard_ms[t->runs - 1];
    t->shard_med = shard_ms[t->runs / 2];
}

int sv_result(const struct sv_times *t, result_t *r, char *why, size_t whylen, const char *what)
{
    if (t->rc != 0) {
        const char *words =
            atomic_load_explicit(&sv.why_ready, memory_order_acquire) ? sv.why : NULL;
        if (t->failed_run == SV_SETUP)
            snprintf(why, whylen, "spawning the actors: %s", bench_wait_strerror(t->rc));
        else
            snprintf(why, whylen, "%s run %u: %s%s%s (progress %llu; %s)",
                     t->failed_run ? "measured" : "warm-up", t->failed_run,
                     bench_wait_strerror(t->rc), words ? ": " : "", words ? words : "",
                     (unsigned long long)progress(), what);
        return BENCH_FAIL;
    }
    r->value = r->p50 = t->med;
    r->samples = t->runs;
    return 0;
}

int sv_total_check(const char *what, uint64_t got, uint64_t want, char *why, size_t whylen)
{
    if (got == want)
        return 0;
    snprintf(why, whylen, "%s over all runs: %llu, not %llu", what, (unsigned long long)got,
             (unsigned long long)want);
    return BENCH_FAIL;
}

void sv_note_common(const bench_env_t *env, const result_t *r, const struct sv_times *t, uint64_t n,
                    uint64_t n_savina, const char *where)
{
    char size[96] = "Savina's default size";
    if (n != n_savina)
        snprintf(size, sizeof(size), "%s size (%llu; Savina's default %llu)",
                 env->quick ? "quick: a tenth of the" : "not the default", (unsigned long long)n,
                 (unsigned long long)n_savina);
    bench_note("%s: %s; median of %u runs after a warm-up run (min %.2f, max %.2f ms), each timed "
               "on the main thread from just before it starts the run to when it sees the end, "
               "as Savina's and CAF's harnesses time an iteration (on the shards, from the run's "
               "first task to its last part: median %.2f, min %.2f, max %.2f ms); %s; no "
               "baseline: nothing in this run does the same work without the actor layer",
               r->name, size, t->runs, t->min, t->max, t->shard_med, t->shard_min, t->shard_max,
               where);
}
