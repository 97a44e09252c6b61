/* Per-shard memory: the cost of a pith_malloc/pith_free pair against glibc's malloc and
 * mimalloc on the same shard thread, blocks freed by another shard against blocks freed by
 * their own, and the page faults of a steady allocation pattern in the warm and hot profiles.
 * Also the harness every allocator row uses, raw baselines included (bench_raw.c), so that all
 * of them run the same loop on shard 0's thread. Only the public API. */
#include <errno.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench.h"
#include "machine.h"

/* Pairs timed together for one sample: two clock reads per thousand pairs stay out of the
 * figure, and each sample is still short enough to show outliers. */
#define PAIRS_PER_SAMPLE 1000u
/* Samples per task: a few milliseconds on a shard, far under the stall threshold (20 ms). */
#define SAMPLES_PER_TASK 64u
/* Samples dropped before recording, the same share as the other rows drop. */
#define WARMUP_DIV 20

/* The page-fault pattern: FAULT_BLOCKS blocks of 64 B, 128 B, ... 4 KiB in turn (about 23 MB
 * asked for), each written in full as a program would, then all freed in allocation order. */
#define FAULT_BLOCKS 20000u
#define FAULT_SIZES  7u

/* Remote free: blocks travel in chunks of CHUNK_BLOCKS; at most CREDITS chunks are in flight:
 * four mesh batches of the default 64 messages, so that both shards work at once instead of
 * taking turns with one batch. */
#define CHUNK_BLOCKS 256u
#define CREDITS      256u
/* Long enough that no shard sleeps during the remote free rows: they measure the allocator and
 * the mesh, not wake-ups (as the mesh throughput rows). */
#define BUSY_POLL_NS (10ull * 1000000000ull)

static int need_two_shards(const bench_env_t *env, char *why, size_t whylen)
{
    if (env->shards >= 2)
        return 0;
    snprintf(why, whylen, "needs --shards >= 2 (have %u)", env->shards);
    return BENCH_SKIP;
}

/* hot_initial: cfg.mem.hot_initial, so that the hot profile's extent is made (prefaulted and
 * locked) at start rather than by the first hot allocation. */
static int start_engine(const bench_env_t *env, uint64_t poll_ns, size_t hot_initial, char *why,
                        size_t whylen)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    cfg.mem.hot_initial = hot_initial;
    if (poll_ns)
        cfg.poll_ns = poll_ns;
    return bench_engine_start(&cfg, why, whylen) != 0 ? BENCH_FAIL : 0;
}

static int shard_cpu(unsigned shard)
{
    pith_shard_stats_t st;
    return pith_shard_stats(shard, &st) == 0 ? st.cpu : -1;
}

/* ---- pith's allocator, as the rows below call it ---- */

static void *warm_alloc(size_t size)
{
    return pith_malloc_ex(size, 0, PITH_MEM_WARM, 0);
}

static void *hot_alloc(size_t size)
{
    return pith_malloc_ex(size, 0, PITH_MEM_HOT, 0);
}

BENCH_ALLOC_LOOPS(pith, pith_malloc, pith_free)

static const bench_allocator_t pith_allocator = {
    .label = "pith_malloc/pith_free (warm profile, no owner)",
    .alloc = pith_malloc,
    .free = pith_free,
    .pairs = pith_pairs,
    .burst = pith_burst,
};

static const bench_allocator_t warm_allocator = {
    .label = "pith_malloc_ex(size, 0, PITH_MEM_WARM, 0)/pith_free",
    .alloc = warm_alloc,
    .free = pith_free,
};

static const bench_allocator_t hot_allocator = {
    .label = "pith_malloc_ex(size, 0, PITH_MEM_HOT, 0)/pith_free",
    .alloc = hot_alloc,
    .free = pith_free,
};

/* ---- alloc/free pairs on shard 0 ---- */

struct pairs_job {
    const bench_allocator_t *a;
    bool burst;
    bool record;
    unsigned todo; /* samples in this task */
    samples_t *s;
    int err;
};

static void *burst_slots[PAIRS_PER_SAMPLE];

static void *pairs_task(void *arg)
{
    struct pairs_job *j = arg;
    for (unsigned i = 0; i < j->todo; i++) {
        uint64_t t0 = bench_clock_ns();
        bool ok =
            j->burst ? j->a->burst(burst_slots, PAIRS_PER_SAMPLE) : j->a->pairs(PAIRS_PER_SAMPLE);
        uint64_t t1 = bench_clock_ns();
        if (!ok) {
            j->err = -ENOMEM;
            break;
        }
        if (j->record)
            samples_add(j->s, (int64_t)(t1 - t0));
    }
    return NULL;
}

/* Runs `total` samples in tasks of SAMPLES_PER_TASK on shard 0. */
static int pairs_phase(struct pairs_job *j, uint64_t total)
{
    for (uint64_t done = 0; done < total && j->err == 0; done += j->todo) {
        j->todo = (unsigned)(total - done < SAMPLES_PER_TASK ? total - done : SAMPLES_PER_TASK);
        int rc = pith_call_wait(0, pairs_task, j, NULL);
        if (rc != 0)
            return rc;
    }
    return j->err;
}

int bench_alloc_pairs(const bench_env_t *env, const bench_allocator_t *a, bool burst, uint64_t n,
                      result_t *r, char *why, size_t whylen)
{
    uint64_t nsamples = n / PAIRS_PER_SAMPLE ? n / PAIRS_PER_SAMPLE : 1;
    samples_t s;
    if (samples_init(&s, nsamples) != 0) {
        snprintf(why, whylen, "out of memory for %llu samples", (unsigned long long)nsamples);
        return BENCH_FAIL;
    }
    int rc = start_engine(env, 0, 0, why, whylen);
    if (rc != 0) {
        samples_free(&s);
        return rc;
    }
    int cpu = shard_cpu(0);
    struct pairs_job j = {.a = a, .burst = burst, .s = &s};
    rc = pairs_phase(&j, nsamples / WARMUP_DIV);
    if (rc == 0) {
        j.record = true;
        rc = pairs_phase(&j, nsamples);
    }
    bench_engine_stop(r->name);
    if (rc != 0) {
        snprintf(why, whylen, "%s: %s", a->label,
                 rc == -ENOMEM ? "an allocation failed" : pith_strerror(rc));
        samples_free(&s);
        return BENCH_FAIL;
    }
    samples_sort(&s);
    result_set_pcts(r, &s);
    /* A sample is the time of PAIRS_PER_SAMPLE pairs: the row is in ns per pair. */
    r->p50 /= PAIRS_PER_SAMPLE;
    r->p99 /= PAIRS_PER_SAMPLE;
    r->p999 /= PAIRS_PER_SAMPLE;
    r->value = r->p50;
    bench_note("%s: %s, %u B, %s; %llu samples of %u pairs (each sample = their time / %u) on "
               "shard 0 (CPU %d) of %u shards",
               r->name, a->label, BENCH_ALLOC_SIZE,
               burst ? "bursts: 1000 allocations, then their frees in allocation order"
                     : "each block freed at once (LIFO)",
               (unsigned long long)nsamples, PAIRS_PER_SAMPLE, PAIRS_PER_SAMPLE, cpu, env->shards);
    samples_free(&s);
    return 0;
}

int bench_mem_alloc_free(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return bench_alloc_pairs(env, &pith_allocator, false, n, r, why, whylen);
}

int bench_mem_alloc_free_burst(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen)
{
    return bench_alloc_pairs(env, &pith_allocator, true, n, r, why, whylen);
}

/* ---- page faults of a steady pattern on shard 0 ---- */

/* A pass runs as tasks of FAULT_SLICE blocks (allocations, then frees), each well under the
 * stall threshold; the shard thread's fault counters are read before the first and after the
 * last, so whatever the shard does between the tasks counts too. */
#define FAULT_SLICE 1000u

struct faults_job {
    const bench_allocator_t *a;
    unsigned from, to; /* slice of fault_slots */
    unsigned got;      /* blocks allocated this pass */
    bool free;         /* free the slice rather than allocate it */
    struct rusage ru;
    int err;
};

static void *fault_slots[FAULT_BLOCKS];

static void *faults_task(void *arg)
{
    struct faults_job *j = arg;
    if (j->free) {
        for (unsigned i = j->from; i < j->to && i < j->got; i++)
            j->a->free(fault_slots[i]);
        return NULL;
    }
    for (unsigned i = j->from; i < j->to && j->err == 0; i++) {
        size_t size = (size_t)64 << (i % FAULT_SIZES);
        void *p = j->a->alloc(size);
        if (p == NULL) {
            j->err = -ENOMEM;
            break;
        }
        memset(p, (int)(i & 0xff), size);
        fault_slots[i] = p;
        j->got = i + 1;
    }
    return NULL;
}

static void *rusage_task(void *arg)
{
    struct faults_job *j = arg;
    getrusage(RUSAGE_THREAD, &j->ru);
    return NULL;
}

/* One pass; *minflt and *majflt get the shard thread's faults over it. */
static int faults_pass(struct faults_job *j, long *minflt, long *majflt)
{
    int rc = pith_call_wait(0, rusage_task, j, NULL);
    struct rusage r0 = j->ru;
    j->got = 0;
    for (int free = 0; free < 2 && rc == 0; free++) {
        j->free = free;
        for (unsigned i = 0; i < FAULT_BLOCKS && rc == 0; i += FAULT_SLICE) {
            j->from = i;
            j->to = i + FAULT_SLICE;
            rc = pith_call_wait(0, faults_task, j, NULL);
            if (rc == 0 && j->err)
                break; /* stop allocating; the free half still frees what was got */
        }
    }
    if (rc == 0)
        rc = pith_call_wait(0, rusage_task, j, NULL);
    *minflt = j->ru.ru_minflt - r0.ru_minflt;
    *majflt = j->ru.ru_majflt - r0.ru_majflt;
    return rc ? rc : j->err;
}

int bench_alloc_faults(const bench_env_t *env, const bench_allocator_t *a, uint64_t n, result_t *r,
                       char *why, size_t whylen)
{
    samples_t s;
    if (samples_init(&s, n) != 0) {
        snprintf(why, whylen, "out of memory for %llu samples", (unsigned long long)n);
        return BENCH_FAIL;
    }
    bool hot = a == &hot_allocator;
    int rc = start_engine(env, 0, hot ? (size_t)32 << 20 : 0, why, whylen);
    if (rc != 0) {
        samples_free(&s);
        return rc;
    }
    int cpu = shard_cpu(0);
    struct faults_job j = {.a = a};
    long warm_min = 0, warm_maj = 0, total = 0, maj = 0, most = 0;
    rc = faults_pass(&j, &warm_min, &warm_maj);
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        long minflt, majflt;
        rc = faults_pass(&j, &minflt, &majflt);
        samples_add(&s, minflt);
        total += minflt;
        maj += majflt;
        if (minflt > most)
            most = minflt;
    }
    machine_mem_t mm;
    int mrc = machine_mem_collect(0, &mm);
    bench_engine_stop(r->name);
    if (rc != 0) {
        snprintf(why, whylen, "%s: %s", a->label,
                 rc == -ENOMEM ? "an allocation failed" : pith_strerror(rc));
        samples_free(&s);
        return BENCH_FAIL;
    }
    samples_sort(&s);
    result_set_pcts(r, &s);
    r->value = (double)most;
    bench_note("%s: %s on shard 0 (CPU %d) of %u shards; each pass allocates %u blocks of "
               "64 B..4 KiB in turn, writes them in full, frees them in allocation order; minor "
               "faults of the shard thread: warm-up pass %ld, then %llu passes %ld in all, %ld "
               "at most (the value); major faults %ld%s",
               r->name, a->label, cpu, env->shards, FAULT_BLOCKS, warm_min, (unsigned long long)n,
               total, most, warm_maj + maj,
               hot ? "; the hot extent was made at start (cfg.mem.hot_initial = 32 MiB)" : "");
    if (mrc == 0) {
        char line[512];
        machine_mem_format(&mm, line, sizeof(line));
        bench_note("%s: shard 0 memory after the run: %s", r->name, line);
    }
    samples_free(&s);
    return 0;
}

int bench_mem_warm_page_faults(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen)
{
    return bench_alloc_faults(env, &warm_allocator, n, r, why, whylen);
}

int bench_mem_hot_page_faults(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen)
{
    return bench_alloc_faults(env, &hot_allocator, n, r, why, whylen);
}

/* ---- blocks allocated on shard 0 (A), freed on shard 1 (B) or back on A ----
 * A allocates a chunk (an array of CHUNK_BLOCKS block pointers, itself a pith block) and its
 * blocks, and submits it to B. In the remote row B frees the blocks and the chunk and returns a
 * credit to A; in the local row B sends the chunk back and A frees it. Both rows thus make the
 * same two hops per chunk and differ only in which shard frees; each returning credit or chunk
 * lets A send one more, so at most CREDITS chunks are ever out. */

struct xfree {
    uint64_t chunks; /* to send in this phase */
    bool remote;
    sem_t finished;
    int err;
    /* A's side, written on shard 0 only. */
    _Alignas(64) uint64_t sent;
    uint64_t returned;
    uint64_t t_start, t_end;
};

struct chunk {
    struct xfree *x;
    void *blk[CHUNK_BLOCKS];
};

static void xfree_fail(struct xfree *x, int err)
{
    if (x->err == 0) {
        x->err = err;
        sem_post(&x->finished);
    }
}

static void b_free_fn(void *arg);
static void b_return_fn(void *arg);

/* On A: one more chunk out, if the phase has any left. */
static void a_send(struct xfree *x)
{
    if (x->sent == x->chunks || x->err)
        return;
    struct chunk *c = pith_malloc(sizeof(*c));
    if (c == NULL) {
        xfree_fail(x, -ENOMEM);
        return;
    }
    c->x = x;
    for (unsigned i = 0; i < CHUNK_BLOCKS; i++) {
        c->blk[i] = pith_malloc(BENCH_ALLOC_SIZE);
        if (c->blk[i] == NULL) {
            for (unsigned k = 0; k < i; k++)
                pith_free(c->blk[k]);
            pith_free(c);
            xfree_fail(x, -ENOMEM);
            return;
        }
    }
    int rc = pith_submit(1, x->remote ? b_free_fn : b_return_fn, c);
    if (rc != 0) {
        xfree_fail(x, rc);
        return;
    }
    x->sent++;
}

/* On A: a credit or a chunk came back. */
static void a_returned(struct xfree *x)
{
    if (++x->returned == x->chunks) {
        x->t_end = pith_now_ns();
        sem_post(&x->finished);
        return;
    }
    a_send(x);
}

static void a_credit_fn(void *arg)
{
    a_returned(arg);
}

static void a_free_fn(void *arg)
{
    struct chunk *c = arg;
    struct xfree *x = c->x;
    for (unsigned i = 0; i < CHUNK_BLOCKS; i++)
        pith_free(c->blk[i]);
    pith_free(c);
    a_returned(x);
}

static void b_free_fn(void *arg)
{
    struct chunk *c = arg;
    struct xfree *x = c->x;
    for (unsigned i = 0; i < CHUNK_BLOCKS; i++)
        pith_free(c->blk[i]);
    pith_free(c);
    int rc = pith_submit(0, a_credit_fn, x);
    if (rc != 0)
        xfree_fail(x, rc); /* racy with A, but any one error is enough to end the row */
}

static void b_return_fn(void *arg)
{
    struct chunk *c = arg;
    int rc = pith_submit(0, a_free_fn, c);
    if (rc != 0)
        xfree_fail(c->x, rc);
}

static void a_kick_fn(void *arg)
{
    struct xfree *x = arg;
    x->t_start = pith_now_ns();
    for (unsigned i = 0; i < CREDITS; i++)
        a_send(x);
}

static int xfree_phase(const bench_env_t *env, struct xfree *x, uint64_t chunks)
{
    x->chunks = chunks;
    x->sent = x->returned = 0;
    x->err = 0;
    int rc = pith_submit(0, a_kick_fn, x);
    if (rc == 0)
        rc = bench_wait(env, &x->finished);
    return rc ? rc : x->err;
}

static int run_xfree(const bench_env_t *env, bool remote, uint64_t n, result_t *r, char *why,
                     size_t whylen)
{
    int rc = need_two_shards(env, why, whylen);
    if (rc)
        return rc;
    static struct xfree x; /* static: keeps A's line aligned off the stack */
    memset(&x, 0, sizeof(x));
    x.remote = remote;
    sem_init(&x.finished, 0, 0);
    uint64_t chunks = (n + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
    uint64_t warm = chunks / WARMUP_DIV > 2 * CREDITS ? chunks / WARMUP_DIV : 2 * CREDITS;
    rc = start_engine(env, BUSY_POLL_NS, 0, why, whylen);
    if (rc != 0) {
        sem_destroy(&x.finished);
        return rc;
    }
    int cpus[2] = {shard_cpu(0), shard_cpu(1)};
    /* The warm-up also grows the mesh's batch pool to what this traffic needs: the batches
     * come from the shard heap too, and would otherwise show as growth. */
    pith_mem_stats_t m0 = {0}, m1 = {0}, m2 = {0};
    pith_mem_stats(0, &m0);
    rc = xfree_phase(env, &x, warm);
    pith_mem_stats(0, &m1);
    bench_stats_t before[2] = {bench_stats(0), bench_stats(1)};
    if (rc == 0)
        rc = xfree_phase(env, &x, chunks);
    bench_stats_t d0 = bench_stats_delta(bench_stats(0), before[0]);
    bench_stats_t d1 = bench_stats_delta(bench_stats(1), before[1]);
    pith_mem_stats(0, &m2);
    bench_engine_stop(r->name);
    if (rc != 0) {
        snprintf(why, whylen, "%s after %llu of %llu chunks returned",
                 rc == -ETIMEDOUT ? "timed out" : pith_strerror(rc), (unsigned long long)x.returned,
                 (unsigned long long)x.chunks);
        sem_destroy(&x.finished);
        return BENCH_FAIL;
    }
    double secs = (double)(x.t_end - x.t_start) / 1e9;
    uint64_t blocks = chunks * CHUNK_BLOCKS;
    r->value = (double)blocks / secs / 1e6;
    bench_note("%s: %llu blocks of %u B in %.3f s, allocated on shard 0 (CPU %d), freed on shard "
               "%d (CPU %d) of %u shards; chunks of %u blocks, at most %u chunks in flight; %s",
               r->name, (unsigned long long)blocks, BENCH_ALLOC_SIZE, secs, cpus[0], remote ? 1 : 0,
               cpus[remote ? 1 : 0], env->shards, CHUNK_BLOCKS, CREDITS,
               remote ? "shard 1 frees each chunk and returns a credit"
                      : "shard 1 sends each chunk back and shard 0 frees it");
    bench_note("%s: sleeps shard0=%llu shard1=%llu, msgs per batch shard0=%.1f shard1=%.1f, "
               "backpressure %llu",
               r->name, (unsigned long long)d0.sleeps, (unsigned long long)d1.sleeps,
               d0.batches_out ? (double)d0.msgs_out / (double)d0.batches_out : 0.0,
               d1.batches_out ? (double)d1.msgs_out / (double)d1.batches_out : 0.0,
               (unsigned long long)(d0.backpressure + d1.backpressure));
    /* No growth of A's memory: after the measured phase its in_use is back where it was after
     * the warm-up, and its resident memory has not grown. */
    bench_note("%s: shard 0 memory: in_use %zu -> %zu B (%s), resident %zu -> %zu KiB; before the "
               "warm-up in_use %zu B, resident %zu KiB; remote frees %llu",
               r->name, m1.in_use, m2.in_use,
               m2.in_use == m1.in_use ? "back to its value" : "DIFFERS", m1.committed >> 10,
               m2.committed >> 10, m0.in_use, m0.committed >> 10,
               (unsigned long long)(m2.remote_frees - m1.remote_frees));
    sem_destroy(&x.finished);
    return 0;
}

int bench_mem_local_free(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return run_xfree(env, false, n, r, why, whylen);
}

int bench_mem_remote_free(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return run_xfree(env, true, n, r, why, whylen);
}
