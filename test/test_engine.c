/* Engine lifecycle: start and stop, configuration errors, error codes, stats, the io_uring setup
 * fallback, and what pith_engine_stop does with work still in flight. */
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

static void *shard_id_fn(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)pith_shard_id();
}

static void noop_task(void *arg)
{
    (void)arg;
}

/* Starting and stopping. */

Test(engine, start_runs_each_shard_and_stop_tears_down, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    cr_assert_eq(pith_shard_count(), 0u);
    test_start(&cfg);
    cr_assert_eq(pith_shard_count(), 2u);
    cr_assert_eq(pith_shard_id(), -1, "the main thread is outside the engine");
    for (unsigned i = 0; i < 2; i++) {
        void *res = (void *)(intptr_t)-7;
        int rc = pith_call_wait(i, shard_id_fn, NULL, &res);
        cr_assert_eq(rc, 0);
        cr_assert_eq((intptr_t)res, (intptr_t)i, "a call to shard %u ran on shard %ld", i,
                     (long)(intptr_t)res);
    }
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert(rep.quiescent);
    cr_assert_eq(rep.released_tasks, 0);
    cr_assert_eq(rep.released_timers, 0);
}

Test(engine, stop_report_before_any_stop_is_enoent)
{
    pith_stop_report_t rep;
    cr_assert_eq(pith_engine_stop_report(&rep), -ENOENT);
}

Test(engine, null_config_starts_with_defaults, .timeout = 30)
{
    unsetenv("PITH_SHARDS");
    unsetenv("PITH_CPUS");
    test_start(NULL);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cr_assert_geq(pith_shard_count(), 1u);
    cr_assert_leq((long)pith_shard_count(), cpus, "one shard per core at most: %u shards, %ld CPUs",
                  pith_shard_count(), cpus);
    for (unsigned i = 0; i < pith_shard_count(); i++)
        test_sync_shard(i);
    test_stop(NULL);
}

Test(engine, engine_restarts_after_stop, .timeout = 60)
{
    for (int round = 0; round < 5; round++) {
        pith_config_t cfg = test_config(1 + round % 3);
        test_start(&cfg);
        for (unsigned i = 0; i < pith_shard_count(); i++)
            test_sync_shard(i);
        test_stop(NULL);
    }
}

Test(engine, start_twice_is_ealready_and_keeps_the_first_engine, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_config_t other = test_config(1);
    cr_assert_eq(pith_engine_start(&other), -EALREADY);
    cr_assert_eq(pith_engine_start(NULL), -EALREADY);
    cr_assert_eq(pith_shard_count(), 2u);
    test_sync_shard(0);
    test_sync_shard(1);
    test_stop(NULL);
}

Test(engine, now_ns_is_clock_monotonic)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    uint64_t now = pith_now_ns();
    uint64_t later = pith_now_ns();
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t lo = (uint64_t)a.tv_sec * 1000000000ull + (uint64_t)a.tv_nsec;
    uint64_t hi = (uint64_t)b.tv_sec * 1000000000ull + (uint64_t)b.tv_nsec;
    cr_assert_geq(now, lo);
    cr_assert_geq(later, now);
    cr_assert_leq(later, hi);
}

/* Configuration errors. */

static void assert_start_fails(const pith_config_t *cfg, int expected, const char *what)
{
    int rc = pith_engine_start(cfg);
    cr_assert_eq(rc, expected, "%s: pith_engine_start returned %d (%s), expected %d", what, rc,
                 pith_strerror(rc), expected);
    const char *msg = pith_last_error();
    cr_assert_not_null(msg, "%s: pith_last_error() is NULL", what);
    cr_assert_neq(msg[0], '\0', "%s: pith_last_error() is empty after a failed start", what);
    cr_assert_eq(pith_shard_count(), 0u, "%s: a failed start left %u shards", what,
                 pith_shard_count());
}

Test(config, last_error_is_empty_before_any_failure)
{
    const char *msg = pith_last_error();
    cr_assert_not_null(msg);
    cr_assert_str_eq(msg, "");
}

Test(config, zero_shards_is_einval_and_a_good_start_follows, .timeout = 30)
{
    pith_config_t cfg = test_config(0);
    assert_start_fails(&cfg, -EINVAL, "shards = 0");
    cfg = test_config(2);
    test_start(&cfg);
    test_sync_shard(1);
    test_stop(NULL);
}

Test(config, out_of_range_values_are_einval, .timeout = 30)
{
    for (int i = 0;; i++) {
        pith_config_t cfg = test_config(2);
        const char *what;
        switch (i) {
        case 0:
            cfg.shards = 4097;
            what = "shards = 4097";
            break;
        case 1:
            cfg.shards = -2;
            what = "shards = -2";
            break;
        case 2:
            cfg.batch_msgs = 0;
            what = "batch_msgs = 0";
            break;
        case 3:
            cfg.batch_msgs = 65537;
            what = "batch_msgs = 65537";
            break;
        case 4:
            cfg.ring_batches = 6;
            what = "ring_batches = 6 (not a power of two)";
            break;
        case 5:
            cfg.ring_batches = 2;
            what = "ring_batches = 2 (< 4)";
            break;
        case 6:
            cfg.backlog_batches = 0;
            what = "backlog_batches = 0";
            break;
        case 7:
            cfg.shards = 4096; /* the shard field of clients' refs */
            what = "shards = 4096";
            break;
        case 8:
            cfg.lane_slots = 8;
            what = "lane_slots = 8 (< 16)";
            break;
        case 9:
            cfg.lane_slots = 1000;
            what = "lane_slots = 1000 (not a power of two)";
            break;
        default:
            what = NULL;
            break;
        }
        if (what == NULL)
            break;
        assert_start_fails(&cfg, -EINVAL, what);
    }
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    test_stop(NULL);
}

Test(config, nonexistent_cpu_is_einval_and_named, .timeout = 30)
{
    static const unsigned cpus[] = {99999};
    pith_config_t cfg = test_config(1);
    cfg.cpus = cpus;
    cfg.ncpus = 1;
    assert_start_fails(&cfg, -EINVAL, "cpus = {99999}");
    cr_assert_not_null(strstr(pith_last_error(), "99999"),
                       "the message should name the CPU: \"%s\"", pith_last_error());
    cfg = test_config(1);
    test_start(&cfg);
    test_stop(NULL);
}

Test(config, env_pith_shards_zero_is_einval, .timeout = 30)
{
    unsetenv("PITH_CPUS");
    setenv("PITH_SHARDS", "0", 1);
    pith_config_t cfg = test_config(PITH_AUTO);
    assert_start_fails(&cfg, -EINVAL, "PITH_SHARDS=0");
    setenv("PITH_SHARDS", "two", 1);
    assert_start_fails(&cfg, -EINVAL, "PITH_SHARDS=two");
    unsetenv("PITH_SHARDS");
    test_start(&cfg);
    test_stop(NULL);
}

Test(config, env_pith_cpus_garbage_is_einval, .timeout = 30)
{
    unsetenv("PITH_SHARDS");
    pith_config_t cfg = test_config(PITH_AUTO);
    setenv("PITH_CPUS", "garbage", 1);
    assert_start_fails(&cfg, -EINVAL, "PITH_CPUS=garbage");
    setenv("PITH_CPUS", "0-", 1);
    assert_start_fails(&cfg, -EINVAL, "PITH_CPUS=0-");
    setenv("PITH_CPUS", "99999", 1);
    assert_start_fails(&cfg, -EINVAL, "PITH_CPUS=99999");
    cr_assert_not_null(strstr(pith_last_error(), "99999"),
                       "the message should name the CPU: \"%s\"", pith_last_error());
    unsetenv("PITH_CPUS");
    test_start(&cfg);
    test_stop(NULL);
}

Test(config, env_pith_shards_sets_the_auto_shard_count, .timeout = 30)
{
    unsetenv("PITH_CPUS");
    setenv("PITH_SHARDS", "3", 1);
    pith_config_t cfg = test_config(PITH_AUTO);
    int rc = pith_engine_start(&cfg);
    unsetenv("PITH_SHARDS");
    cr_assert_eq(rc, 0, "start: %d (%s): %s", rc, pith_strerror(rc), pith_last_error());
    cr_assert_eq(pith_shard_count(), 3u);
    test_sync_shard(2);
    test_stop(NULL);
}

Test(config, env_pith_cpus_picks_the_cpus_of_auto_shards, .timeout = 30)
{
    unsetenv("PITH_SHARDS");
    setenv("PITH_CPUS", "1", 1);
    pith_config_t cfg = test_config(PITH_AUTO);
    int rc = pith_engine_start(&cfg);
    unsetenv("PITH_CPUS");
    cr_assert_eq(rc, 0, "start: %d (%s): %s", rc, pith_strerror(rc), pith_last_error());
    cr_assert_eq(pith_shard_count(), 1u, "one shard per CPU of PITH_CPUS=1");
    pith_shard_stats_t st;
    test_stats(&st, 1);
    cr_assert_eq(st.cpu, 1);
    cr_assert(st.pinned);
    test_stop(NULL);
}

Test(config, explicit_values_override_the_environment, .timeout = 30)
{
    setenv("PITH_SHARDS", "0", 1);
    setenv("PITH_CPUS", "garbage", 1);
    static const unsigned cpus[] = {0};
    pith_config_t cfg = test_config(2);
    cfg.cpus = cpus;
    cfg.ncpus = 1;
    int rc = pith_engine_start(&cfg);
    unsetenv("PITH_SHARDS");
    unsetenv("PITH_CPUS");
    cr_assert_eq(rc, 0, "start: %d (%s): %s", rc, pith_strerror(rc), pith_last_error());
    cr_assert_eq(pith_shard_count(), 2u);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_eq(st[0].cpu, 0, "shard i runs on cpus[i %% ncpus]");
    cr_assert_eq(st[1].cpu, 0, "shard i runs on cpus[i %% ncpus]");
    test_stop(NULL);
}

/* Error codes of the submission API. */

Test(errors, submit_and_call_without_an_engine_are_eshutdown)
{
    cr_assert_eq(pith_shard_count(), 0u);
    cr_assert_eq(pith_submit(0, noop_task, NULL), -ESHUTDOWN);
    cr_assert_eq(pith_call_wait(0, shard_id_fn, NULL, NULL), -ESHUTDOWN);
    cr_assert_eq(pith_engine_stop(), -ESHUTDOWN);
    pith_shard_stats_t st;
    cr_assert_eq(pith_shard_stats(0, &st), -ESHUTDOWN);
}

Test(errors, bad_arguments_are_einval, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    cr_assert_eq(pith_submit(2, noop_task, NULL), -EINVAL, "shard out of range");
    cr_assert_eq(pith_submit(UINT32_MAX, noop_task, NULL), -EINVAL, "shard out of range");
    cr_assert_eq(pith_submit(0, NULL, NULL), -EINVAL, "fn NULL");
    cr_assert_eq(pith_call_wait(2, shard_id_fn, NULL, NULL), -EINVAL, "shard out of range");
    cr_assert_eq(pith_call_wait(0, NULL, NULL, NULL), -EINVAL, "fn NULL");
    pith_shard_stats_t st;
    cr_assert_eq(pith_shard_stats(2, &st), -EINVAL);
    cr_assert_eq(pith_shard_stats(0, NULL), -EINVAL);
    void *res = NULL;
    cr_assert_eq(pith_call_wait(1, shard_id_fn, NULL, &res), 0, "the engine still works");
    cr_assert_eq((intptr_t)res, 1);
    test_stop(NULL);
}

Test(errors, submit_after_stop_is_eshutdown, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    test_stop(NULL);
    cr_assert_eq(pith_submit(0, noop_task, NULL), -ESHUTDOWN);
    cr_assert_eq(pith_call_wait(1, shard_id_fn, NULL, NULL), -ESHUTDOWN);
    cr_assert_eq(pith_engine_stop(), -ESHUTDOWN);
    pith_shard_stats_t st;
    cr_assert_eq(pith_shard_stats(0, &st), -ESHUTDOWN);
}

Test(errors, strerror_names_every_code_distinctly)
{
    static const int codes[] = {EINVAL,    EALREADY, ENOMEM, EAGAIN,
                                ESHUTDOWN, EDEADLK,  EPERM,  ENOENT};
    const size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        const char *neg = pith_strerror(-codes[i]);
        const char *pos = pith_strerror(codes[i]);
        cr_assert_not_null(neg);
        cr_assert_not_null(pos);
        cr_assert_neq(neg[0], '\0', "pith_strerror(-%d) is empty", codes[i]);
        cr_assert_str_eq(neg, pos, "pith_strerror(-%d) and (%d) differ", codes[i], codes[i]);
        for (size_t j = 0; j < i; j++)
            cr_assert_str_neq(neg, pith_strerror(-codes[j]), "codes %d and %d share \"%s\"",
                              codes[i], codes[j], neg);
    }
    cr_assert_not_null(pith_strerror(0));
    cr_assert_not_null(pith_strerror(-123456));
    cr_assert_not_null(pith_strerror(123456));
}

/* Backpressure on a shard's own queue. */

#define LQ_MAX 1024u /* the smallest local_queue_max the engine accepts */

static struct {
    int rc[LQ_MAX + 1];
    unsigned ran; /* shard 0 only */
    sem_t submitted, all_ran;
} lq;

static void lq_count(void *arg)
{
    (void)arg;
    if (++lq.ran == LQ_MAX)
        sem_post(&lq.all_ran);
}

static void lq_flood(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i <= LQ_MAX; i++)
        lq.rc[i] = pith_submit(0, lq_count, NULL);
    sem_post(&lq.submitted);
}

Test(engine, local_queue_max_gives_eagain_to_self_submission, .timeout = 30)
{
    cr_assert_eq(sem_init(&lq.submitted, 0, 0), 0);
    cr_assert_eq(sem_init(&lq.all_ran, 0, 0), 0);
    pith_config_t cfg = test_config(1);
    cfg.local_queue_max = LQ_MAX;
    test_start(&cfg);
    cr_assert_eq(pith_submit(0, lq_flood, NULL), 0);
    sem_wait(&lq.submitted);
    for (unsigned i = 0; i < LQ_MAX; i++)
        cr_assert_eq(lq.rc[i], 0, "self-submission %u of %u returned %d", i, LQ_MAX, lq.rc[i]);
    cr_assert_eq(lq.rc[LQ_MAX], -EAGAIN, "self-submission %u with local_queue_max %u: %d",
                 LQ_MAX + 1, LQ_MAX, lq.rc[LQ_MAX]);
    sem_wait(&lq.all_ran);
    pith_shard_stats_t st;
    test_stats(&st, 1);
    cr_assert_eq(lq.ran, LQ_MAX);
    cr_assert_eq(st.backpressure, 1, "one -EAGAIN was returned on shard 0, stats say %" PRIu64,
                 st.backpressure);
    test_stop(NULL);
}

/* Stats. */

Test(stats, pingpong_is_counted_on_both_sides, .timeout = 60)
{
    const uint64_t k = scaled(100000);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    test_pingpong(0, 1, k);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    for (unsigned i = 0; i < 2; i++) {
        cr_assert_geq(st[i].msgs_out, k, "shard %u msgs_out %" PRIu64 " < %" PRIu64, i,
                      st[i].msgs_out, k);
        cr_assert_geq(st[i].msgs_in, k, "shard %u msgs_in %" PRIu64 " < %" PRIu64, i, st[i].msgs_in,
                      k);
        cr_assert_geq(st[i].tasks_run, k, "shard %u tasks_run %" PRIu64, i, st[i].tasks_run);
        cr_assert_geq(st[i].batches_out, 1);
        cr_assert_leq(st[i].batches_out, st[i].msgs_out);
        cr_assert_geq(st[i].batches_in, 1);
        cr_assert_leq(st[i].batches_in, st[i].msgs_in);
        cr_assert_geq(st[i].loops, 1);
        cr_assert_eq(st[i].backpressure, 0);
        cr_assert_eq(st[i].timers_fired, 0);
        cr_assert_eq(st[i].timers_pending, 0);
        cr_assert(st[i].pinned, "shard %u is not pinned", i);
        cr_assert_geq(st[i].cpu, 0);
    }
    cr_assert_geq(st[0].external_in, 1, "the kick and the sync calls came from outside");
    cr_assert_neq(st[0].cpu, st[1].cpu, "two shards on a 2-CPU machine share CPU %d", st[0].cpu);
    test_stop(NULL);
}

static void *sched_cpu_fn(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)sched_getcpu();
}

Test(stats, shards_run_on_the_cpus_asked_for, .timeout = 30)
{
    static const unsigned cpus[] = {1, 0};
    pith_config_t cfg = test_config(2);
    cfg.cpus = cpus;
    cfg.ncpus = 2;
    test_start(&cfg);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    for (unsigned i = 0; i < 2; i++) {
        cr_assert(st[i].pinned);
        cr_assert_eq(st[i].cpu, (int)cpus[i]);
        void *res = NULL;
        cr_assert_eq(pith_call_wait(i, sched_cpu_fn, NULL, &res), 0);
        cr_assert_eq((intptr_t)res, (intptr_t)cpus[i], "shard %u runs on CPU %ld, pinned to %u", i,
                     (long)(intptr_t)res, cpus[i]);
    }
    test_stop(NULL);
}

Test(stats, no_pin_flag_leaves_shards_unpinned, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    cfg.flags |= PITH_CFG_NO_PIN;
    test_start(&cfg);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    for (unsigned i = 0; i < 2; i++) {
        cr_assert_not(st[i].pinned);
        cr_assert_eq(st[i].cpu, -1);
    }
    test_stop(NULL);
}

/* io_uring setup flags and the fallback. */

Test(ring, default_ring_is_single_issuer_with_defer_taskrun, .timeout = 30)
{
    /* This machine's kernel (6.x) has both flags; a kernel older than 6.1 would fail here. */
    if (test_on_valgrind())
        cr_skip_test("under valgrind the engine sets up plain rings (io/ring.c)");
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    for (unsigned i = 0; i < 2; i++) {
        cr_assert(st[i].ring_flags & IORING_SETUP_DEFER_TASKRUN, "shard %u ring_flags %#x", i,
                  st[i].ring_flags);
        cr_assert(st[i].ring_flags & IORING_SETUP_SINGLE_ISSUER, "shard %u ring_flags %#x", i,
                  st[i].ring_flags);
        cr_assert_neq(st[i].ring_features, 0);
    }
    test_stop(NULL);
}

Test(ring, plain_ring_has_no_optional_flags_and_wakes_sleepers, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.flags |= PITH_CFG_RING_PLAIN;
    cfg.poll_ns = 0;
    test_start(&cfg);
    test_pingpong(0, 1, scaled(20000));
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    for (unsigned i = 0; i < 2; i++)
        cr_assert_eq(st[i].ring_flags & ~(uint32_t)IORING_SETUP_CQSIZE, 0,
                     "shard %u plain ring has flags %#x", i, st[i].ring_flags);
    cr_assert_geq(st[0].sleeps + st[1].sleeps, 1);
    test_stop(NULL);
}

Test(ring, coop_ring_has_no_defer_taskrun, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.flags |= PITH_CFG_RING_COOP;
    cfg.poll_ns = 0;
    test_start(&cfg);
    test_pingpong(0, 1, scaled(20000));
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    for (unsigned i = 0; i < 2; i++) {
        cr_assert_eq(st[i].ring_flags & IORING_SETUP_DEFER_TASKRUN, 0, "shard %u flags %#x", i,
                     st[i].ring_flags);
        cr_assert_eq(st[i].ring_flags & IORING_SETUP_SINGLE_ISSUER, 0, "shard %u flags %#x", i,
                     st[i].ring_flags);
    }
    test_stop(NULL);
}

/* Stopping with work in flight. */

static struct {
    unsigned shards;
    atomic_uint_fast64_t hops;
    atomic_uint refused; /* chains whose next submit met -ESHUTDOWN */
    atomic_bool started;
    test_error_t err;
    sem_t running;
} ch;

static void chain_hop(void *arg)
{
    uintptr_t left = (uintptr_t)arg;
    atomic_fetch_add_explicit(&ch.hops, 1, memory_order_relaxed);
    if (left == 0)
        return;
    unsigned next = ((unsigned)pith_shard_id() + 1) % ch.shards;
    int rc = pith_submit(next, chain_hop, (void *)(left - 1));
    if (rc != 0)
        TEST_NOTE(&ch.err, rc);
}

static void submit_from_outside(unsigned shard, pith_fn_t fn, void *arg)
{
    int rc;
    while ((rc = pith_submit(shard, fn, arg)) == -EAGAIN)
        sched_yield();
    cr_assert_eq(rc, 0, "pith_submit: %d (%s)", rc, pith_strerror(rc));
}

Test(stop, finite_work_in_flight_is_drained, .timeout = 120)
{
    const unsigned chains = 64;
    const uint64_t hops = scaled(20000);
    const uint64_t total = chains * (hops + 1);
    memset(&ch, 0, sizeof ch);
    ch.shards = 2;
    pith_config_t cfg = test_config(2);
    cfg.drain_ns = 10000 * MS;
    test_start(&cfg);
    for (unsigned c = 0; c < chains; c++)
        submit_from_outside(c % 2, chain_hop, (void *)(uintptr_t)hops);
    uint64_t before = atomic_load(&ch.hops);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_lt(before, total, "the work was not in flight when stop was called");
    test_assert_no_error(&ch.err);
    cr_assert_eq(atomic_load(&ch.hops), total, "hops run %" PRIu64 ", expected %" PRIu64,
                 (uint64_t)atomic_load(&ch.hops), total);
    cr_assert(rep.quiescent, "queues did not run empty before the drain deadline");
    cr_assert_eq(rep.released_tasks, 0, "%" PRIu64 " tasks released", rep.released_tasks);
    cr_assert_eq(rep.released_timers, 0);
}

static atomic_uint_fast64_t ran_count;

static void count_task(void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran_count, 1);
}

/* pith_engine_start returns once every shard runs its loop, and stop runs what was queued: a
 * stop that comes right after start, with tasks waiting in the inboxes, must run them all. */
Test(stop, stop_right_after_start_runs_the_queued_tasks, .timeout = 60)
{
    const unsigned rounds = 20, tasks = 64;
    pith_config_t cfg = test_config(2);
    cfg.drain_ns = 2000 * MS;
    for (unsigned r = 0; r < rounds; r++) {
        atomic_store(&ran_count, 0);
        int rc = pith_engine_start(&cfg);
        cr_assert_eq(rc, 0, "start: %d (%s)", rc, pith_strerror(rc));
        for (unsigned i = 0; i < tasks; i++)
            submit_from_outside(i % 2, count_task, NULL);
        pith_stop_report_t rep;
        test_stop(&rep);
        cr_assert_eq(atomic_load(&ran_count), tasks,
                     "round %u: %" PRIu64 " of %u queued tasks ran; report: quiescent %d, "
                     "released %" PRIu64 " after %" PRIu64 " ns",
                     r, (uint64_t)atomic_load(&ran_count), tasks, rep.quiescent, rep.released_tasks,
                     rep.drain_ns);
        cr_assert(rep.quiescent, "round %u", r);
        cr_assert_eq(rep.released_tasks, 0, "round %u", r);
    }
}

static void forever_hop(void *arg)
{
    atomic_fetch_add_explicit(&ch.hops, 1, memory_order_relaxed);
    if (!atomic_exchange(&ch.started, true))
        sem_post(&ch.running);
    unsigned next = ((unsigned)pith_shard_id() + 1) % ch.shards;
    int rc = pith_submit(next, forever_hop, arg);
    if (rc == -ESHUTDOWN)
        atomic_fetch_add(&ch.refused, 1);
    else if (rc != 0)
        TEST_NOTE(&ch.err, rc);
}

Test(stop, endless_work_is_released_at_the_drain_deadline, .timeout = 60)
{
    const unsigned chains = 4;
    memset(&ch, 0, sizeof ch);
    ch.shards = 2;
    cr_assert_eq(sem_init(&ch.running, 0, 0), 0);
    pith_config_t cfg = test_config(2);
    cfg.drain_ns = 50 * MS;
    test_start(&cfg);
    for (unsigned c = 0; c < chains; c++)
        submit_from_outside(c % 2, forever_hop, NULL);
    sem_wait(&ch.running);
    uint64_t t0 = pith_now_ns();
    pith_stop_report_t rep;
    test_stop(&rep);
    uint64_t took = pith_now_ns() - t0;
    test_assert_no_error(&ch.err);
    cr_assert_not(rep.quiescent, "endless work cannot be quiescent");
    cr_assert_geq(took, 50 * MS, "stop returned after %" PRIu64 " ns, before the drain deadline",
                  took);
    cr_assert_geq(rep.drain_ns, 50 * MS, "report.drain_ns %" PRIu64, rep.drain_ns);
    /* Each chain ends either with its last task released or with a refused submit. */
    cr_assert_eq(rep.released_tasks + atomic_load(&ch.refused), chains,
                 "released %" PRIu64 " + refused %u != %u chains", rep.released_tasks,
                 atomic_load(&ch.refused), chains);
}

static void never_fires(void *arg)
{
    atomic_fetch_add((atomic_uint_fast64_t *)arg, 1);
}

static struct {
    unsigned per_shard;
    atomic_uint_fast64_t fired;
} pt;

static void *arm_pending_timers(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < pt.per_shard; i++) {
        int rc = pith_timer_add(3600000 * MS + i, 0, never_fires, &pt.fired, NULL);
        if (rc != 0)
            return (void *)(intptr_t)rc;
    }
    return (void *)(intptr_t)pith_timer_add(3600000 * MS, 3600000 * MS, never_fires, &pt.fired,
                                            NULL);
}

Test(stop, pending_timers_are_released_and_counted, .timeout = 60)
{
    pt.per_shard = 1000;
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    for (unsigned i = 0; i < 2; i++) {
        void *res = (void *)(intptr_t)-1;
        cr_assert_eq(pith_call_wait(i, arm_pending_timers, NULL, &res), 0);
        cr_assert_eq((intptr_t)res, 0, "pith_timer_add on shard %u: %ld", i, (long)(intptr_t)res);
    }
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_eq(st[0].timers_pending, pt.per_shard + 1);
    cr_assert_eq(st[1].timers_pending, pt.per_shard + 1);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert(rep.quiescent, "pending timers are not queued work");
    cr_assert_eq(rep.released_tasks, 0);
    cr_assert_eq(rep.released_timers, 2 * (pt.per_shard + 1), "released_timers %" PRIu64,
                 rep.released_timers);
    cr_assert_eq(atomic_load(&pt.fired), 0);
}

static struct {
    atomic_int rc;
    sem_t done;
} sd;

static void stop_from_shard(void *arg)
{
    (void)arg;
    atomic_store(&sd.rc, pith_engine_stop());
    sem_post(&sd.done);
}

Test(stop, stop_from_a_shard_is_edeadlk, .timeout = 30)
{
    cr_assert_eq(sem_init(&sd.done, 0, 0), 0);
    atomic_store(&sd.rc, 1);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    cr_assert_eq(pith_submit(1, stop_from_shard, NULL), 0);
    sem_wait(&sd.done);
    cr_assert_eq(atomic_load(&sd.rc), -EDEADLK);
    cr_assert_eq(pith_shard_count(), 2u);
    test_sync_shard(0);
    test_sync_shard(1);
    test_stop(NULL);
}

/* While pith_engine_stop runs: a chain of tasks learns that the engine is stopping from
 * pith_timer_add (-ESHUTDOWN), a thread outside is then refused at once, and the chain ends with
 * a pith_call whose reply must still arrive. */
static struct {
    atomic_bool stopping_seen, outside_checked;
    atomic_int outside_submit_rc, outside_call_rc;
    atomic_uint call_done;
    atomic_int done_shard;
    atomic_uintptr_t done_result, done_ctx;
    test_error_t err;
    sem_t seen;
} ss;

static void ss_dummy_timer(void *arg)
{
    (void)arg;
}

static void *ss_call_fn(void *arg)
{
    return (void *)((uintptr_t)arg * 3 + (uintptr_t)pith_shard_id());
}

static void ss_done(void *result, void *ctx)
{
    atomic_store(&ss.done_shard, pith_shard_id());
    atomic_store(&ss.done_result, (uintptr_t)result);
    atomic_store(&ss.done_ctx, (uintptr_t)ctx);
    atomic_fetch_add(&ss.call_done, 1);
}

static void ss_hop(void *arg)
{
    (void)arg;
    unsigned other = (unsigned)pith_shard_id() ^ 1u;
    if (atomic_load(&ss.outside_checked)) {
        int rc = pith_call(other, ss_call_fn, (void *)(uintptr_t)14, ss_done, (void *)&ss);
        if (rc != 0)
            TEST_NOTE(&ss.err, rc);
        return;
    }
    pith_timer_id_t id = 0;
    int rc = pith_timer_add(3600000 * MS, 0, ss_dummy_timer, NULL, &id);
    if (rc == 0) {
        rc = pith_timer_cancel(id);
        if (rc != 0)
            TEST_NOTE(&ss.err, rc);
    } else if (rc == -ESHUTDOWN) {
        if (!atomic_exchange(&ss.stopping_seen, true))
            sem_post(&ss.seen);
    } else {
        TEST_NOTE(&ss.err, rc);
    }
    rc = pith_submit(other, ss_hop, NULL);
    if (rc != 0)
        TEST_NOTE(&ss.err, rc);
}

static void *ss_outside(void *arg)
{
    (void)arg;
    sem_wait(&ss.seen);
    atomic_store(&ss.outside_submit_rc, pith_submit(0, noop_task, NULL));
    atomic_store(&ss.outside_call_rc, pith_call_wait(1, shard_id_fn, NULL, NULL));
    atomic_store(&ss.outside_checked, true);
    return NULL;
}

Test(stop, stopping_refuses_outsiders_and_timers_but_runs_shard_work, .timeout = 60)
{
    cr_assert_eq(sem_init(&ss.seen, 0, 0), 0);
    atomic_store(&ss.outside_submit_rc, 1);
    atomic_store(&ss.outside_call_rc, 1);
    pith_config_t cfg = test_config(2);
    cfg.drain_ns = 10000 * MS;
    test_start(&cfg);
    pthread_t outsider;
    cr_assert_eq(pthread_create(&outsider, NULL, ss_outside, NULL), 0);
    cr_assert_eq(pith_submit(0, ss_hop, NULL), 0);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert(atomic_load(&ss.stopping_seen), "pith_timer_add never returned -ESHUTDOWN while "
                                              "the engine was stopping");
    pthread_join(outsider, NULL);
    test_assert_no_error(&ss.err);
    cr_assert_eq(atomic_load(&ss.outside_submit_rc), -ESHUTDOWN);
    cr_assert_eq(atomic_load(&ss.outside_call_rc), -ESHUTDOWN);
    cr_assert_eq(atomic_load(&ss.call_done), 1, "the reply of a pith_call made while stopping");
    int caller = atomic_load(&ss.done_shard);
    cr_assert(caller == 0 || caller == 1);
    cr_assert_eq(atomic_load(&ss.done_result), (uintptr_t)(14 * 3 + (caller ^ 1)));
    cr_assert_eq(atomic_load(&ss.done_ctx), (uintptr_t)&ss);
    cr_assert(rep.quiescent);
    cr_assert_eq(rep.released_tasks, 0);
}
