/* What pith-bench's benchmark files share: the row signature, the run's environment, and small
 * helpers for notes, engine start/stop, pinning and waiting. Private to perf/. */
#ifndef PITH_PERF_BENCH_H
#define PITH_PERF_BENCH_H

#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/pith.h>

#include "report.h"

/* What every row may read about this run. */
typedef struct bench_env {
    bool quick;
    unsigned shards; /* cfg.shards for every engine a row starts */
    /* CPUs for the two-thread raw baselines: where shards 0 and 1 ran in the probe start, so a
     * baseline and its engine figure use the same pair of CPUs. */
    int cpu_a, cpu_b;
    double wait_s; /* how long a row waits for the engine before it gives up */
} bench_env_t;

/* Outcome of a row function besides 0 (done): */
#define BENCH_SKIP 1    /* cannot run in this configuration; `why` says why */
#define BENCH_FAIL (-1) /* tried and failed; `why` says how */

/* A row: measures with n iterations (its quick or full count) and fills r->value, and the
 * percentiles where it has samples. r->name and r->baseline are set by the caller. */
typedef int (*bench_fn_t)(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);

/* How far the running row is, for the progress line (bench.c): done of total, in whatever unit
 * the row counts (messages, round trips, firings). A watcher thread reads it a few times a second
 * while progress is shown; bench.c zeroes it before each row. Alone on its cache line, so that
 * the watcher's reads take away no line that a row works on. */
typedef struct bench_progress {
    _Alignas(64) _Atomic uint64_t done;
    _Atomic uint64_t total;
} bench_progress_t;
extern bench_progress_t bench_progress_now;

/* A measured loop calls bench_progress when (i & BENCH_PROGRESS_MASK) == 0, outside its timed
 * section: one relaxed store pair every 16384 iterations. Loops of slow iterations (a firing a
 * millisecond, an fdatasync) may call it every time. */
#define BENCH_PROGRESS_MASK ((UINT64_C(1) << 14) - 1)

static inline void bench_progress(uint64_t done, uint64_t total)
{
    /* Relaxed: a figure to show a person; the watcher orders nothing by it, and a stale or torn
     * pair (done of the previous total) only shows a wrong % for 250 ms, which it clamps. */
    atomic_store_explicit(&bench_progress_now.total, total, memory_order_relaxed);
    atomic_store_explicit(&bench_progress_now.done, done, memory_order_relaxed);
}

/* Prints "note: ..." on stderr, clearing the progress line first. */
void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* pith_engine_start(cfg); on failure fills why with the error and pith_last_error(). */
int bench_engine_start(const pith_config_t *cfg, char *why, size_t whylen);

/* pith_engine_stop(); notes a failure, or work the stop had to release, under the row's name. */
void bench_engine_stop(const char *row);

/* Pins the calling thread to cpu (no-op for cpu < 0). Returns 0 or a negative errno. */
int bench_pin_self(int cpu);

/* sem_wait with EINTR retried and env->wait_s as deadline. Returns 0 or -ETIMEDOUT. */
int bench_wait(const bench_env_t *env, sem_t *sem);

/* CLOCK_MONOTONIC in ns, read directly, for the raw baselines (no engine code on their path). */
uint64_t bench_clock_ns(void);

/* What bench_wait_progress looks at every 100 ms: the run's failure (non-zero ends the wait with
 * it; `done`: sem was posted) and, through *progress, a count that moves while the run advances. */
typedef int (*bench_wait_check_t)(void *ctx, bool done, uint64_t *progress);
/* As bench_wait, watching the run: returns check's failure (or 0 once sem is posted),
 * -ETIMEDOUT, or -EDEADLK when the progress count stood still for 5 s. */
int bench_wait_progress(const bench_env_t *env, sem_t *sem, bench_wait_check_t check, void *ctx);
/* The words for bench_wait_progress's own errors, else pith_strerror. */
const char *bench_wait_strerror(int rc);

/* Delta of the counters that rows quote in notes, between two pith_shard_stats snapshots. */
typedef struct bench_stats {
    uint64_t loops, sleeps, msgs_out, batches_out, ring_full, backpressure, wakes_sent;
    uint64_t timers_pending;
} bench_stats_t;

/* Snapshot of shard `shard`'s counters; zeroes on error. */
bench_stats_t bench_stats(unsigned shard);
bench_stats_t bench_stats_delta(bench_stats_t after, bench_stats_t before);

/* --- the memory rows: bench_mem.c drives an allocator on shard 0; bench_raw.c and bench_mem.c
 * each define the allocators they measure with BENCH_ALLOC_LOOPS, so every timed loop has the
 * same shape and only the calls differ. --- */

/* The block size of the alloc/free rows and of the remote free rows. */
#define BENCH_ALLOC_SIZE 64u

/* Keeps p alive as far as the compiler knows: an allocation it cannot see used could otherwise
 * be paired with its free and both dropped. Costs no instruction. */
static inline void bench_escape(void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}

typedef struct bench_allocator {
    const char *label; /* as the notes name it */
    void *(*alloc)(size_t size);
    void (*free)(void *p);
    /* k pairs of an allocation of BENCH_ALLOC_SIZE bytes and its free (LIFO: the next
     * allocation gets the block just freed). false when an allocation failed. */
    bool (*pairs)(unsigned k);
    /* k allocations into v[0..k), then their frees in allocation order. false when an
     * allocation failed (what was allocated is freed). */
    bool (*burst)(void **v, unsigned k);
} bench_allocator_t;

/* Defines static pfx##_pairs and pfx##_burst calling alloc_call and free_call directly. */
#define BENCH_ALLOC_LOOPS(pfx, alloc_call, free_call)                                              \
    static bool pfx##_pairs(unsigned k)                                                            \
    {                                                                                              \
        for (unsigned i = 0; i < k; i++) {                                                         \
            void *p = alloc_call(BENCH_ALLOC_SIZE);                                                \
            if (p == NULL)                                                                         \
                return false;                                                                      \
            bench_escape(p);                                                                       \
            free_call(p);                                                                          \
        }                                                                                          \
        return true;                                                                               \
    }                                                                                              \
    static bool pfx##_burst(void **v, unsigned k)                                                  \
    {                                                                                              \
        unsigned got = 0;                                                                          \
        while (got < k && (v[got] = alloc_call(BENCH_ALLOC_SIZE)) != NULL)                         \
            bench_escape(v[got++]);                                                                \
        for (unsigned i = 0; i < got; i++)                                                         \
            free_call(v[i]);                                                                       \
        return got == k;                                                                           \
    }

/* Times a->pairs (or a->burst) on shard 0: n pairs in samples of 1000, the first twentieth
 * dropped; fills r with ns per pair (value = p50). */
int bench_alloc_pairs(const bench_env_t *env, const bench_allocator_t *a, bool burst, uint64_t n,
                      result_t *r, char *why, size_t whylen);
/* Minor page faults on shard 0's thread over the allocation pattern of the page-fault rows,
 * one warm-up pass then n measured passes; value = the most faults of a measured pass. */
int bench_alloc_faults(const bench_env_t *env, const bench_allocator_t *a, uint64_t n, result_t *r,
                       char *why, size_t whylen);

/* bench_raw.c */
int bench_raw_c2c_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_raw_wake_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_raw_spsc_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_raw_nanosleep_jitter(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen);
int bench_raw_malloc_free(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
int bench_raw_mi_malloc_free(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen);
int bench_raw_malloc_free_burst(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                size_t whylen);
int bench_raw_malloc_page_faults(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                 size_t whylen);
/* bench_mem.c */
int bench_mem_alloc_free(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_mem_alloc_free_burst(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen);
int bench_mem_local_free(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_mem_remote_free(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
int bench_mem_warm_page_faults(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen);
int bench_mem_hot_page_faults(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen);
/* bench_mesh.c */
int bench_mesh_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_mesh_throughput_batch1(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                 size_t whylen);
int bench_mesh_throughput(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
int bench_mesh_wake_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
/* bench_actor.c */
int bench_raw_local_task(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_actor_local_send(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen);
int bench_actor_local_send_sla(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen);
int bench_actor_remote_send(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen);
int bench_raw_local_oneshot(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen);
int bench_actor_spawn(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_raw_pread_4k(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_file_read_4k(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_raw_pread_4k_kops(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen);
int bench_file_read_4k_qd32(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen);
int bench_actor_bytes(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
/* bench_journal.c: a fresh directory in $PITH_BENCH_DIR or /var/tmp (made, removed, its path,
 * its file system's name), and the floor: n writes of len bytes each followed by fdatasync. */
int bench_jdir_make(char *why, size_t whylen);
void bench_jdir_drop(void);
const char *bench_jdir(void);
const char *bench_jdir_fs(void);
int bench_jraw_sync(uint64_t n, uint32_t len, samples_t *s, uint64_t *total_ns);
/* bench_persist.c: event-sourced virtual actors (pith/persist.h). */
int bench_persist_event(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_persist_events(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_vactor_activate_persisted(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                    size_t whylen);
/* bench_journal.c */
int bench_raw_fdatasync(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_journal_persist(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
int bench_raw_fsync_each(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_journal_events(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_journal_replay(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_raw_crc32c_bytewise(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen);
int bench_journal_crc32c(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_actor_ask_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_actor_remote_ask_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen);
/* bench_vactor.c */
int bench_vactor_call(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_vactor_remote_call(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen);
int bench_vactor_activate(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
int bench_vactor_bytes(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_vactor_sweep(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
/* bench_vmove.c */
int bench_vactor_migrate(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_vactor_pingpong(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
/* bench_savina.c */
int bench_savina_pingpong(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
int bench_savina_counting(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
int bench_savina_threadring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen);
/* bench_savina_fj.c */
int bench_savina_fjthroughput(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen);
int bench_savina_fjcreation(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen);
int bench_savina_fjthroughput_main(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                   size_t whylen);
/* bench_savina_chameneos.c, bench_savina_big.c */
int bench_savina_chameneos(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen);
int bench_savina_big(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
/* bench_ingress.c */
int bench_raw_ingress_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen);
int bench_raw_slotseq_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen);
int bench_raw_slotseq_wake_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                size_t whylen);
int bench_ck_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_ingress_send(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_ingress_vsend(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_ingress_vsend_batch(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen);
int bench_ingress_send_batch(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen);
int bench_ingress_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_ingress_fanout(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
/* bench_timer.c */
int bench_timer_jitter(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
/* bench_net.c */
int bench_raw_epoll_echo_rps(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen);
int bench_raw_epoll_echo_cpu(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen);
int bench_net_echo_rps(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_net_echo_cpu(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_net_echo_2shards_rps(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen);
/* bench_obs.c */
int bench_raw_smaps_read(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);
int bench_obs_metrics_text(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen);
int bench_obs_metrics_get(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
/* bench_market.c */
int bench_raw_book_update(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                          size_t whylen);
int bench_raw_book_update_spsc(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen);
int bench_market_book_update(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen);
/* bench_idle.c */
int bench_idle_cpu(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen);

/* Period of the timer jitter rows, engine and raw alike. */
#define BENCH_TIMER_PERIOD_NS 1000000ull
/* Firings dropped at the start of both timer rows before recording. */
#define BENCH_TIMER_WARMUP 10u

#endif
