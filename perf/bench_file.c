/* File rows: 4 KiB reads of a page-cached file at random page-aligned offsets, one at a time.
 * raw.pread_4k_ns: pread(2) on one pinned thread. file.read_4k_ns: pith_file_read on shard 0,
 * the next read issued from the previous one's callback; each sample is one read, from the call
 * to its callback. Both read the same file, which is written and read through once first. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define FILE_BYTES (64u << 20)
#define READ_BYTES 4096u
#define PAGES      (FILE_BYTES / READ_BYTES)
#define RATE_DEPTH 32u /* reads in flight in the throughput row */

struct fbench {
    int fd;
    char path[64];
    unsigned char *buf;
    uint64_t n, warmup, done, t0, issued, t_start, t_end;
    unsigned depth; /* reads in flight: 1 for the latency row */
    uint32_t rng;
    samples_t s;
    int err;
    sem_t finished;
};

static uint64_t next_off(struct fbench *b)
{
    b->rng = b->rng * 1664525u + 1013904223u; /* the same sequence for both rows */
    return (uint64_t)(b->rng >> 8) % PAGES * READ_BYTES;
}

/* What make_file made, if anything; safe to call twice. */
static void drop_file(struct fbench *b)
{
    if (b->fd >= 0)
        close(b->fd);
    b->fd = -1;
    free(b->buf);
    b->buf = NULL;
}

/* A 64 MiB file, filled and read once so that every page is in the page cache. */
static int make_file(struct fbench *b, char *why, size_t whylen)
{
    b->buf = NULL;
    snprintf(b->path, sizeof(b->path), "/tmp/pith-bench-file-XXXXXX");
    b->fd = mkstemp(b->path);
    if (b->fd < 0) {
        snprintf(why, whylen, "mkstemp in /tmp: %s", strerror(errno));
        return BENCH_FAIL;
    }
    unlink(b->path); /* gone with the descriptor */
    b->buf = aligned_alloc(4096, 1u << 20);
    if (b->buf == NULL) {
        snprintf(why, whylen, "no memory for the buffer");
        drop_file(b);
        return BENCH_FAIL;
    }
    for (size_t i = 0; i < (1u << 20); i++)
        b->buf[i] = (unsigned char)(i * 131u);
    for (uint64_t off = 0; off < FILE_BYTES; off += 1u << 20) {
        if (pwrite(b->fd, b->buf, 1u << 20, (off_t)off) != (ssize_t)(1u << 20)) {
            snprintf(why, whylen, "writing the file: %s", strerror(errno));
            drop_file(b);
            return BENCH_FAIL;
        }
    }
    for (uint64_t off = 0; off < FILE_BYTES; off += 1u << 20)
        (void)!pread(b->fd, b->buf, 1u << 20, (off_t)off);
    b->rng = 12345;
    return 0;
}

struct raw_run {
    struct fbench *b;
    uint64_t t_start, t_end; /* the measured reads, after the warm-up */
    bool rate;               /* the throughput row: no clock per read, 32 buffers in turn */
    int cpu, pin_err, rc;
    char why[160];
};

/* On its own thread, pinned where shard 0 runs, so the caller's affinity stays as it was. */
static void *raw_thread(void *arg)
{
    struct raw_run *x = arg;
    struct fbench *b = x->b;
    x->pin_err = bench_pin_self(x->cpu);
    for (uint64_t i = 0; i < b->warmup + b->n; i++) {
        uint64_t off = next_off(b);
        if (i == b->warmup)
            x->t_start = bench_clock_ns();
        uint64_t t0 = x->rate ? 0 : bench_clock_ns();
        unsigned char *dst = x->rate ? b->buf + (i % RATE_DEPTH) * READ_BYTES : b->buf;
        ssize_t got = pread(b->fd, dst, READ_BYTES, (off_t)off);
        if (got != READ_BYTES) {
            snprintf(x->why, sizeof(x->why), "pread gave %zd: %s", got,
                     got < 0 ? strerror(errno) : "short");
            x->rc = BENCH_FAIL;
            return NULL;
        }
        if (!x->rate && i >= b->warmup)
            samples_add(&b->s, (int64_t)(bench_clock_ns() - t0));
    }
    x->t_end = bench_clock_ns();
    return NULL;
}

static int run_raw(const bench_env_t *env, uint64_t n, bool rate, struct fbench *b,
                   struct raw_run *x, char *why, size_t whylen)
{
    memset(b, 0, sizeof(*b));
    if (make_file(b, why, whylen) != 0)
        return BENCH_FAIL;
    if (samples_init(&b->s, n) != 0) {
        snprintf(why, whylen, "no memory for samples");
        return BENCH_FAIL;
    }
    b->n = n;
    b->warmup = n / 20;
    *x = (struct raw_run){.b = b, .cpu = env->cpu_a, .rate = rate};
    pthread_t t;
    int rc = pthread_create(&t, NULL, raw_thread, x);
    if (rc != 0) {
        snprintf(why, whylen, "pthread_create: %s", strerror(rc));
        rc = BENCH_FAIL;
    } else {
        pthread_join(t, NULL);
        rc = x->rc;
        if (rc != 0)
            snprintf(why, whylen, "%s", x->why);
    }
    return rc;
}

int bench_raw_pread_4k(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    static struct fbench b;
    struct raw_run x;
    int rc = run_raw(env, n, false, &b, &x, why, whylen);
    if (rc == 0) {
        samples_sort(&b.s);
        result_set_pcts(r, &b.s);
        result_set_hist(r, &b.s, 1);
        r->value = r->p50;
        bench_note("%s: %llu reads of 4 KiB at random page-aligned offsets of a 64 MiB "
                   "page-cached file, pread(2) on one thread pinned to CPU %d%s",
                   r->name, (unsigned long long)n, env->cpu_a,
                   x.pin_err ? " (pinning failed)" : "");
    }
    samples_free(&b.s);
    drop_file(&b); /* the file and buffer of run_raw or run_reads, made or not */
    return rc;
}

int bench_raw_pread_4k_kops(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen)
{
    static struct fbench b;
    struct raw_run x;
    int rc = run_raw(env, n, true, &b, &x, why, whylen);
    if (rc == 0) {
        r->value = (double)n / ((double)(x.t_end - x.t_start) / 1e9) / 1e3;
        bench_note("%s: the same reads with pread(2), one at a time on CPU %d, into 32 "
                   "4 KiB buffers in turn as the ring row does; timed whole, no clock per read",
                   r->name, env->cpu_a);
    }
    samples_free(&b.s);
    drop_file(&b); /* the file and buffer of run_raw or run_reads, made or not */
    return rc;
}

static void read_done(int64_t res, void *ctx);

/* Issues the next read while reads remain; each is timed from its own call. */
static void read_next(struct fbench *b)
{
    pith_io_done_t done = {.fn = read_done, .ctx = b};
    if (b->issued == b->warmup + b->n)
        return;
    b->issued++;
    if (b->depth == 1)
        b->t0 = pith_now_ns();
    /* The deep row's reads land in 32 buffers of 4 KiB in turn, as its baseline's do. */
    unsigned char *dst = b->buf + (b->issued % b->depth) * READ_BYTES;
    int rc = pith_file_read(b->fd, dst, READ_BYTES, next_off(b), &done, NULL);
    if (rc != 0) {
        b->err = rc;
        sem_post(&b->finished);
    }
}

static void read_done(int64_t res, void *ctx)
{
    struct fbench *b = ctx;
    /* The deep row reads the clock only where its window starts and ends. */
    uint64_t next = b->done + 1;
    uint64_t t1 =
        b->depth == 1 || next == b->warmup || next == b->warmup + b->n ? pith_now_ns() : 0;
    if (b->err != 0)
        return;
    if (res != READ_BYTES) {
        b->err = res < 0 ? (int)res : -EIO;
        sem_post(&b->finished);
        return;
    }
    if (b->done++ >= b->warmup && b->depth == 1)
        samples_add(&b->s, (int64_t)(t1 - b->t0));
    if (b->done == b->warmup)
        b->t_start = t1;
    if (b->done == b->warmup + b->n) {
        b->t_end = t1;
        sem_post(&b->finished);
        return;
    }
    read_next(b);
}

static void read_start(void *arg)
{
    struct fbench *b = arg;
    for (unsigned i = 0; i < b->depth; i++)
        read_next(b);
}

static int run_reads(const bench_env_t *env, unsigned depth, uint64_t n, struct fbench *b,
                     char *why, size_t whylen)
{
    memset(b, 0, sizeof(*b));
    if (make_file(b, why, whylen) != 0)
        return BENCH_FAIL;
    if (samples_init(&b->s, depth == 1 ? n : 1) != 0) {
        snprintf(why, whylen, "no memory for samples");
        return BENCH_FAIL;
    }
    sem_init(&b->finished, 0, 0);
    b->n = n;
    b->warmup = n / 20;
    b->depth = depth;
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    cfg.poll_ns = 10ull * 1000000000ull; /* busy-poll: the row times the ring, not wake-ups */
    int rc = bench_engine_start(&cfg, why, whylen) != 0 ? BENCH_FAIL : 0;
    if (rc == 0) {
        rc = pith_submit(0, read_start, b);
        if (rc == 0)
            rc = bench_wait(env, &b->finished);
        if (rc == 0)
            rc = b->err;
        bench_engine_stop("file");
        if (rc != 0) {
            snprintf(why, whylen, "%s after %llu reads", pith_strerror(rc),
                     (unsigned long long)b->done);
            rc = BENCH_FAIL;
        }
    }
    sem_destroy(&b->finished);
    return rc;
}

int bench_file_read_4k(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    static struct fbench b;
    int rc = run_reads(env, 1, n, &b, why, whylen);
    if (rc == 0) {
        samples_sort(&b.s);
        result_set_pcts(r, &b.s);
        result_set_hist(r, &b.s, 1);
        r->value = r->p50;
        bench_note("%s: %llu reads of 4 KiB at the same offsets of the same file as the "
                   "baseline, one in flight, on shard 0 (CPU %d) of %u; each timed from "
                   "pith_file_read to its callback; the baseline is one pread(2) per read",
                   r->name, (unsigned long long)n, env->cpu_a, env->shards);
    }
    samples_free(&b.s);
    drop_file(&b); /* the file and buffer of run_raw or run_reads, made or not */
    return rc;
}

/* Reads per second with 32 in flight, beside one thread's pread(2) loop. */
int bench_file_read_4k_qd32(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen)
{
    static struct fbench b;
    int rc = run_reads(env, RATE_DEPTH, n, &b, why, whylen);
    if (rc == 0) {
        double secs = (double)(b.t_end - b.t_start) / 1e9;
        r->value = (double)n / secs / 1e3;
        bench_note("%s: %llu reads of 4 KiB (same file and offsets as raw.pread_4k_ns), 32 in "
                   "flight on shard 0 (CPU %d), in %.3f s; its baseline is one thread reading "
                   "with pread(2)",
                   r->name, (unsigned long long)n, env->cpu_a, secs);
    }
    samples_free(&b.s);
    drop_file(&b); /* the file and buffer of run_raw or run_reads, made or not */
    return rc;
}
