/* Wake-ups and threads outside the engine: a ping-pong between shards that sleep at once (a lost
 * wake-up hangs it), submission from plain threads, and pith_call / pith_call_wait. */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include "util.h"

Test(wake, pingpong_between_sleeping_shards_never_loses_a_wakeup, .timeout = 120)
{
    /* 2M round trips took 87 s on the 2-CPU development machine; 1M keeps the suite near a
     * minute. */
    const uint64_t rounds = scaled(1000000);
    pith_config_t cfg = test_config(2);
    cfg.poll_ns = 0;
    test_start(&cfg);
    uint64_t t0 = pith_now_ns();
    test_pingpong(0, 1, rounds);
    uint64_t took = pith_now_ns() - t0;
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    uint64_t sleeps = st[0].sleeps + st[1].sleeps;
    uint64_t wakes = st[0].wakes_sent + st[1].wakes_sent;
    cr_log_info("%" PRIu64 " round trips in %.2f s, %" PRIu64 " sleeps, %" PRIu64 " wakes sent",
                rounds, (double)took / 1e9, sleeps, wakes);
    cr_assert_geq(sleeps, rounds / 2,
                  "the shards slept %" PRIu64 " times in %" PRIu64 " round trips with poll_ns = 0",
                  sleeps, rounds);
    cr_assert_geq(wakes, rounds / 2, "%" PRIu64 " wake-ups sent in %" PRIu64 " round trips", wakes,
                  rounds);
    cr_assert_eq(st[0].wake_failures + st[1].wake_failures, 0, "the kernel refused wake-ups");
    test_stop(NULL);
}

/* A ping-pong on each of two pairs of shards at once, on 2 CPUs: the pairs preempt each other, so
 * sleeps and wake-ups interleave with descheduling. */
static struct {
    uint64_t rounds;
    uint64_t done[4]; /* done[i] touched on shard i only */
    test_error_t err;
    sem_t finished;
} pp2;

static void pp2_hop(void *arg)
{
    uintptr_t pair = (uintptr_t)arg;
    unsigned me = (unsigned)pith_shard_id();
    if (me / 2 != pair) {
        TEST_NOTE(&pp2.err, TEST_ERR_WRONG_SHARD);
        sem_post(&pp2.finished);
        return;
    }
    if (++pp2.done[me] == pp2.rounds) {
        sem_post(&pp2.finished);
        return;
    }
    int rc = pith_submit(me ^ 1u, pp2_hop, arg);
    if (rc != 0) {
        TEST_NOTE(&pp2.err, rc);
        sem_post(&pp2.finished);
    }
}

Test(wake, two_pingpongs_on_oversubscribed_sleeping_shards, .timeout = 120)
{
    memset(&pp2, 0, sizeof pp2);
    pp2.rounds = scaled(200000);
    cr_assert_eq(sem_init(&pp2.finished, 0, 0), 0);
    pith_config_t cfg = test_config(4);
    cfg.poll_ns = 0;
    test_start(&cfg);
    cr_assert_eq(pith_submit(0, pp2_hop, (void *)(uintptr_t)0), 0);
    cr_assert_eq(pith_submit(2, pp2_hop, (void *)(uintptr_t)1), 0);
    /* Each pair stops when the shard that started it reaches `rounds`: two posts. */
    sem_wait(&pp2.finished);
    sem_wait(&pp2.finished);
    test_assert_no_error(&pp2.err);
    for (unsigned i = 0; i < 4; i += 2)
        test_sync_shard(i);
    cr_assert_eq(pp2.done[0], pp2.rounds);
    cr_assert_eq(pp2.done[2], pp2.rounds);
    test_stop(NULL);
}

/* Calls from outside into shards that sleep between calls: each wakes a sleeping shard through
 * its eventfd. */
static void *echo_plus_shard(void *arg)
{
    return (void *)((uintptr_t)arg * 8 + (uintptr_t)pith_shard_id());
}

Test(wake, call_wait_wakes_sleeping_shards, .timeout = 120)
{
    const uint64_t calls = scaled(100000);
    pith_config_t cfg = test_config(2);
    cfg.poll_ns = 0;
    test_start(&cfg);
    for (uint64_t i = 0; i < calls; i++) {
        unsigned shard = (unsigned)(i & 1);
        void *res = NULL;
        int rc = pith_call_wait(shard, echo_plus_shard, (void *)(uintptr_t)i, &res);
        cr_assert_eq(rc, 0, "call %" PRIu64 ": %d", i, rc);
        cr_assert_eq((uintptr_t)res, (uintptr_t)(i * 8 + shard));
    }
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_geq(st[0].external_in + st[1].external_in, calls);
    cr_assert_geq(st[0].sleeps + st[1].sleeps, calls / 4,
                  "the shards slept %" PRIu64 " times between %" PRIu64 " calls",
                  st[0].sleeps + st[1].sleeps, calls);
    test_stop(NULL);
}

/* Plain threads submitting to every shard. */
#define EXT_THREADS 4
#define EXT_SHARDS  2

static struct {
    uint64_t per_thread;
    uint64_t count[EXT_SHARDS]; /* count[i] touched on shard i only */
    uint64_t misdelivered[EXT_SHARDS];
    atomic_uint_fast64_t eagain;
    atomic_int submit_err;
} ext;

static void ext_count(void *arg)
{
    unsigned meant = (unsigned)(uintptr_t)arg;
    int me = pith_shard_id();
    if (me < 0 || me >= EXT_SHARDS)
        return;
    ext.count[me]++;
    if ((unsigned)me != meant)
        ext.misdelivered[me]++;
}

static void *ext_thread(void *arg)
{
    unsigned first = (unsigned)(uintptr_t)arg;
    for (uint64_t i = 0; i < ext.per_thread; i++) {
        unsigned shard = (unsigned)((first + i) % EXT_SHARDS);
        int rc;
        while ((rc = pith_submit(shard, ext_count, (void *)(uintptr_t)shard)) == -EAGAIN) {
            atomic_fetch_add(&ext.eagain, 1);
            sched_yield();
        }
        if (rc != 0) {
            atomic_store(&ext.submit_err, rc);
            break;
        }
    }
    return NULL;
}

struct ext_snapshot {
    uint64_t count, misdelivered;
};

static void *ext_read(void *arg)
{
    struct ext_snapshot *out = arg;
    int me = pith_shard_id();
    out->count = ext.count[me];
    out->misdelivered = ext.misdelivered[me];
    return NULL;
}

Test(external, plain_threads_submit_to_every_shard_without_loss, .timeout = 120)
{
    memset(&ext, 0, sizeof ext);
    ext.per_thread = scaled(100000);
    const uint64_t total = ext.per_thread * EXT_THREADS;
    pith_config_t cfg = test_config(EXT_SHARDS);
    test_start(&cfg);
    pthread_t th[EXT_THREADS];
    for (unsigned t = 0; t < EXT_THREADS; t++)
        cr_assert_eq(pthread_create(&th[t], NULL, ext_thread, (void *)(uintptr_t)t), 0);
    for (unsigned t = 0; t < EXT_THREADS; t++)
        pthread_join(th[t], NULL);
    cr_assert_eq(atomic_load(&ext.submit_err), 0, "pith_submit from a thread: %d",
                 atomic_load(&ext.submit_err));

    /* Every submission was accepted; each call below is a round trip through the same inbox, so
     * the loop ends once the shards have run them all. */
    struct ext_snapshot snap[EXT_SHARDS];
    uint64_t seen = 0, polls = 0;
    do {
        seen = 0;
        for (unsigned s = 0; s < EXT_SHARDS; s++) {
            cr_assert_eq(pith_call_wait(s, ext_read, &snap[s], NULL), 0);
            seen += snap[s].count;
        }
        polls++;
        cr_assert_leq(seen, total, "more tasks ran (%" PRIu64 ") than were submitted", seen);
    } while (seen < total);
    for (unsigned s = 0; s < EXT_SHARDS; s++) {
        cr_assert_eq(snap[s].count, total / EXT_SHARDS, "shard %u ran %" PRIu64, s, snap[s].count);
        cr_assert_eq(snap[s].misdelivered, 0);
    }
    pith_shard_stats_t st[EXT_SHARDS];
    test_stats(st, EXT_SHARDS);
    for (unsigned s = 0; s < EXT_SHARDS; s++)
        cr_assert_geq(st[s].external_in, total / EXT_SHARDS);
    cr_log_info("%" PRIu64 " external tasks, %" PRIu64 " -EAGAIN, %" PRIu64 " polls", total,
                (uint64_t)atomic_load(&ext.eagain), polls);
    test_stop(NULL);
}

/* pith_call and pith_call_wait. */

Test(call, call_wait_returns_the_result, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    for (unsigned s = 0; s < 2; s++) {
        void *res = NULL;
        cr_assert_eq(pith_call_wait(s, echo_plus_shard, (void *)(uintptr_t)5, &res), 0);
        cr_assert_eq((uintptr_t)res, 5u * 8 + s);
        cr_assert_eq(pith_call_wait(s, echo_plus_shard, (void *)(uintptr_t)5, NULL), 0,
                     "result may be NULL");
    }
    test_stop(NULL);
}

static void ignore_done(void *result, void *ctx)
{
    (void)result;
    (void)ctx;
}

Test(call, call_from_outside_is_eperm, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    cr_assert_eq(pith_call(1, echo_plus_shard, NULL, ignore_done, NULL), -EPERM);
    test_stop(NULL);
}

static struct {
    atomic_int call_wait_rc, call_null_done_rc, call_rc;
    atomic_int fn_shard, done_shard;
    atomic_uintptr_t done_result, done_ctx;
    sem_t done;
} cs;

static void *cs_fn(void *arg)
{
    atomic_store(&cs.fn_shard, pith_shard_id());
    return (void *)((uintptr_t)arg + 1000);
}

static void cs_done(void *result, void *ctx)
{
    atomic_store(&cs.done_shard, pith_shard_id());
    atomic_store(&cs.done_result, (uintptr_t)result);
    atomic_store(&cs.done_ctx, (uintptr_t)ctx);
    sem_post(&cs.done);
}

static void cs_start(void *arg)
{
    (void)arg;
    atomic_store(&cs.call_wait_rc, pith_call_wait(1, cs_fn, NULL, NULL));
    atomic_store(&cs.call_null_done_rc, pith_call(1, cs_fn, NULL, NULL, NULL));
    int rc = pith_call(1, cs_fn, (void *)(uintptr_t)42, cs_done, &cs);
    atomic_store(&cs.call_rc, rc);
    if (rc != 0)
        sem_post(&cs.done);
}

Test(call, call_runs_on_the_target_and_done_on_the_caller, .timeout = 30)
{
    cr_assert_eq(sem_init(&cs.done, 0, 0), 0);
    atomic_store(&cs.fn_shard, -2);
    atomic_store(&cs.done_shard, -2);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    cr_assert_eq(pith_submit(0, cs_start, NULL), 0);
    sem_wait(&cs.done);
    cr_assert_eq(atomic_load(&cs.call_wait_rc), -EDEADLK, "pith_call_wait from a shard");
    cr_assert_eq(atomic_load(&cs.call_null_done_rc), -EINVAL, "pith_call with done NULL");
    cr_assert_eq(atomic_load(&cs.call_rc), 0);
    cr_assert_eq(atomic_load(&cs.fn_shard), 1, "fn ran on shard %d", atomic_load(&cs.fn_shard));
    cr_assert_eq(atomic_load(&cs.done_shard), 0, "done ran on shard %d",
                 atomic_load(&cs.done_shard));
    cr_assert_eq(atomic_load(&cs.done_result), (uintptr_t)1042);
    cr_assert_eq(atomic_load(&cs.done_ctx), (uintptr_t)&cs);
    test_stop(NULL);
}

/* pith_call to the caller's own shard still delivers fn then done, both on that shard. */
static void cs_start_self(void *arg)
{
    (void)arg;
    int rc = pith_call(0, cs_fn, (void *)(uintptr_t)7, cs_done, NULL);
    atomic_store(&cs.call_rc, rc);
    if (rc != 0)
        sem_post(&cs.done);
}

Test(call, call_to_own_shard_runs_fn_then_done_there, .timeout = 30)
{
    cr_assert_eq(sem_init(&cs.done, 0, 0), 0);
    atomic_store(&cs.fn_shard, -2);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    cr_assert_eq(pith_submit(0, cs_start_self, NULL), 0);
    sem_wait(&cs.done);
    cr_assert_eq(atomic_load(&cs.call_rc), 0);
    cr_assert_eq(atomic_load(&cs.fn_shard), 0);
    cr_assert_eq(atomic_load(&cs.done_shard), 0);
    cr_assert_eq(atomic_load(&cs.done_result), (uintptr_t)1007);
    cr_assert_eq(atomic_load(&cs.done_ctx), (uintptr_t)0);
    test_stop(NULL);
}
