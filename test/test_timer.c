/* Per-shard timers: deadline order, never early, cancel, periodic timers, errors off the shard,
 * and a shard holding a million pending timers. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define US (1000ull)

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void shuffle(unsigned *v, unsigned n, uint64_t seed)
{
    for (unsigned i = n - 1; i > 0; i--) {
        unsigned j = (unsigned)(xorshift(&seed) % (i + 1));
        unsigned t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* Ordering: timers armed in one task on shard 0, each stamped with pith_now_ns() just before and
 * just after pith_timer_add, so the deadline the engine chose lies in [lo + delay, hi + delay]. */
#define ORDER_N 1000

static struct {
    unsigned n;
    uint64_t delay[ORDER_N];
    uint64_t lo[ORDER_N], hi[ORDER_N];
    pith_timer_id_t id[ORDER_N];
    unsigned order[ORDER_N]; /* timer index by firing position; shard 0 only */
    uint64_t at[ORDER_N];    /* pith_now_ns() in the callback, by firing position */
    unsigned fired;
    unsigned wrong_shard;
    sem_t done;
} to;

static void to_fire(void *arg)
{
    if (pith_shard_id() != 0)
        to.wrong_shard++;
    if (to.fired < to.n) {
        to.order[to.fired] = (unsigned)(uintptr_t)arg;
        to.at[to.fired] = pith_now_ns();
    }
    if (++to.fired == to.n)
        sem_post(&to.done);
}

static void *to_arm(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < to.n; i++) {
        to.lo[i] = pith_now_ns();
        int rc = pith_timer_add(to.delay[i], 0, to_fire, (void *)(uintptr_t)i, &to.id[i]);
        to.hi[i] = pith_now_ns();
        if (rc != 0)
            return (void *)(intptr_t)rc;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void assert_ids_distinct(const pith_timer_id_t *ids, size_t n)
{
    pith_timer_id_t *copy = malloc(n * sizeof *copy);
    cr_assert_not_null(copy);
    memcpy(copy, ids, n * sizeof *copy);
    qsort(copy, n, sizeof *copy, cmp_u64);
    cr_assert_neq(copy[0], 0, "0 is never a valid timer id");
    for (size_t i = 1; i < n; i++)
        cr_assert_neq(copy[i], copy[i - 1], "timer id %" PRIu64 " given twice", copy[i]);
    free(copy);
}

/* Arms to.delay[] on shard 0, waits for every callback, and checks the firing order. */
static void run_order(void)
{
    cr_assert_eq(sem_init(&to.done, 0, 0), 0);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    void *res = (void *)1;
    cr_assert_eq(pith_call_wait(0, to_arm, NULL, &res), 0);
    cr_assert_null(res, "pith_timer_add: %ld", (long)(intptr_t)res);
    sem_wait(&to.done);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_eq(to.fired, to.n, "%u callbacks for %u one-shot timers", to.fired, to.n);
    cr_assert_eq(to.wrong_shard, 0);
    cr_assert_eq(st[0].timers_fired, to.n);
    cr_assert_eq(st[0].timers_pending, 0);
    cr_assert_eq(st[1].timers_fired, 0);
    assert_ids_distinct(to.id, to.n);

    bool *seen = calloc(to.n, sizeof *seen);
    cr_assert_not_null(seen);
    for (unsigned p = 0; p < to.n; p++) {
        unsigned i = to.order[p];
        cr_assert_lt(i, to.n);
        cr_assert_not(seen[i], "timer %u fired twice", i);
        seen[i] = true;
        cr_assert_geq(to.at[p], to.lo[i] + to.delay[i],
                      "timer %u fired %" PRIu64 " ns before its deadline", i,
                      to.lo[i] + to.delay[i] - to.at[p]);
        if (p > 0) {
            unsigned a = to.order[p - 1];
            cr_assert_leq(to.lo[a] + to.delay[a], to.hi[i] + to.delay[i],
                          "timer %u (delay %" PRIu64 ") fired after timer %u (delay %" PRIu64
                          ") whose deadline is later",
                          i, to.delay[i], a, to.delay[a]);
        }
        /* Timers with one delay armed one after the other have non-decreasing deadlines: equal
         * or not, they must fire in arming order. */
        for (unsigned j = 0; j < p; j++) {
            unsigned e = to.order[j];
            if (to.delay[e] == to.delay[i])
                cr_assert_lt(
                    e, i, "timers %u and %u share delay %" PRIu64 " but fired out of arming order",
                    e, i, to.delay[i]);
        }
    }
    free(seen);
    test_stop(NULL);
}

Test(timer, increasing_delays_fire_in_deadline_order, .timeout = 60)
{
    to.n = ORDER_N;
    for (unsigned i = 0; i < to.n; i++)
        to.delay[i] = 1 * MS + i * 4 * US;
    run_order();
}

Test(timer, decreasing_delays_fire_in_deadline_order, .timeout = 60)
{
    to.n = ORDER_N;
    for (unsigned i = 0; i < to.n; i++)
        to.delay[i] = 5 * MS - i * 4 * US;
    run_order();
}

Test(timer, shuffled_delays_fire_in_deadline_order, .timeout = 60)
{
    unsigned perm[ORDER_N];
    to.n = ORDER_N;
    for (unsigned i = 0; i < to.n; i++)
        perm[i] = i;
    shuffle(perm, to.n, 0x9e3779b97f4a7c15ull);
    /* 250 distinct delays between 1 and 5 ms, each used by 4 timers. */
    for (unsigned i = 0; i < to.n; i++)
        to.delay[i] = 1 * MS + (perm[i] % 250) * 16 * US;
    run_order();
}

Test(timer, equal_delays_fire_in_arming_order, .timeout = 60)
{
    to.n = 200;
    for (unsigned i = 0; i < to.n; i++)
        to.delay[i] = 2 * MS;
    run_order();
}

Test(timer, zero_delay_timers_fire, .timeout = 60)
{
    to.n = 100;
    for (unsigned i = 0; i < to.n; i++)
        to.delay[i] = i % 2 ? 0 : 1;
    run_order();
}

/* Cancel. */
static struct {
    pith_timer_id_t x, y;
    atomic_uint x_fired, y_fired;
    atomic_int rc_first, rc_second, rc_zero, rc_fired;
    sem_t done;
} tc;

static void tc_x(void *arg)
{
    (void)arg;
    atomic_fetch_add(&tc.x_fired, 1);
}

static void tc_y(void *arg)
{
    (void)arg;
    atomic_fetch_add(&tc.y_fired, 1);
}

static void tc_sentinel(void *arg)
{
    (void)arg;
    atomic_store(&tc.rc_fired, pith_timer_cancel(tc.y));
    sem_post(&tc.done);
}

static void *tc_arm(void *arg)
{
    (void)arg;
    int rc;
    if ((rc = pith_timer_add(2 * MS, 0, tc_x, NULL, &tc.x)) != 0 ||
        (rc = pith_timer_add(1 * MS, 0, tc_y, NULL, &tc.y)) != 0 ||
        (rc = pith_timer_add(10 * MS, 0, tc_sentinel, NULL, NULL)) != 0)
        return (void *)(intptr_t)rc;
    atomic_store(&tc.rc_first, pith_timer_cancel(tc.x));
    atomic_store(&tc.rc_second, pith_timer_cancel(tc.x));
    atomic_store(&tc.rc_zero, pith_timer_cancel(0));
    return NULL;
}

Test(timer, cancelled_timer_never_fires_and_cancel_is_once, .timeout = 30)
{
    cr_assert_eq(sem_init(&tc.done, 0, 0), 0);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    void *res = (void *)1;
    cr_assert_eq(pith_call_wait(0, tc_arm, NULL, &res), 0);
    cr_assert_null(res, "pith_timer_add: %ld", (long)(intptr_t)res);
    sem_wait(&tc.done);
    cr_assert_eq(atomic_load(&tc.rc_first), 0, "first cancel of a pending timer");
    cr_assert_eq(atomic_load(&tc.rc_second), -ENOENT, "second cancel of the same timer");
    cr_assert_eq(atomic_load(&tc.rc_zero), -ENOENT, "cancel of id 0");
    cr_assert_eq(atomic_load(&tc.rc_fired), -ENOENT, "cancel of a one-shot that fired");
    cr_assert_eq(atomic_load(&tc.x_fired), 0, "the cancelled timer fired");
    cr_assert_eq(atomic_load(&tc.y_fired), 1);
    cr_assert_neq(tc.x, tc.y);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.released_timers, 0);
}

static void never(void *arg)
{
    (void)arg;
}

static void *arm_hour(void *arg)
{
    pith_timer_id_t *id = arg;
    return (void *)(intptr_t)pith_timer_add(3600000 * MS, 0, never, NULL, id);
}

static void *cancel_id(void *arg)
{
    return (void *)(intptr_t)pith_timer_cancel(*(pith_timer_id_t *)arg);
}

Test(timer, a_shard_cannot_cancel_another_shards_timer, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_timer_id_t id = 0;
    void *res = (void *)1;
    cr_assert_eq(pith_call_wait(1, arm_hour, &id, &res), 0);
    cr_assert_null(res);
    cr_assert_neq(id, 0);
    cr_assert_eq(pith_call_wait(0, cancel_id, &id, &res), 0);
    cr_assert_eq((intptr_t)res, -ENOENT, "shard 0 cancelled shard 1's timer: %ld",
                 (long)(intptr_t)res);
    cr_assert_eq(pith_call_wait(1, cancel_id, &id, &res), 0);
    cr_assert_eq((intptr_t)res, 0, "the owner's cancel: %ld", (long)(intptr_t)res);
    cr_assert_eq(pith_call_wait(1, cancel_id, &id, &res), 0);
    cr_assert_eq((intptr_t)res, -ENOENT);
    test_stop(NULL);
}

/* Periodic. */
#define PERIODIC_K 5

static struct {
    pith_timer_id_t id;
    uint64_t lo, delay, period;
    uint64_t at[PERIODIC_K + 8];
    unsigned count; /* shard 1 only */
    atomic_int rc_self_cancel, rc_sentinel, rc_after;
    sem_t done;
} tp;

static void tp_sentinel(void *arg)
{
    (void)arg;
    atomic_store(&tp.rc_after, pith_timer_cancel(tp.id));
    sem_post(&tp.done);
}

static void tp_tick(void *arg)
{
    (void)arg;
    if (tp.count < PERIODIC_K + 8)
        tp.at[tp.count] = pith_now_ns();
    if (++tp.count == PERIODIC_K) {
        atomic_store(&tp.rc_self_cancel, pith_timer_cancel(tp.id));
        /* Five more periods: a timer that kept running would fire meanwhile. */
        atomic_store(&tp.rc_sentinel, pith_timer_add(5 * tp.period, 0, tp_sentinel, NULL, NULL));
    }
}

static void *tp_arm(void *arg)
{
    (void)arg;
    tp.lo = pith_now_ns();
    return (void *)(intptr_t)pith_timer_add(tp.delay, tp.period, tp_tick, NULL, &tp.id);
}

Test(timer, periodic_timer_repeats_until_it_cancels_itself, .timeout = 30)
{
    cr_assert_eq(sem_init(&tp.done, 0, 0), 0);
    tp.delay = 1 * MS;
    tp.period = 2 * MS;
    atomic_store(&tp.rc_self_cancel, 1);
    atomic_store(&tp.rc_sentinel, 1);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    void *res = (void *)1;
    cr_assert_eq(pith_call_wait(1, tp_arm, NULL, &res), 0);
    cr_assert_null(res, "pith_timer_add: %ld", (long)(intptr_t)res);
    sem_wait(&tp.done);
    test_sync_shard(1);
    cr_assert_eq(atomic_load(&tp.rc_self_cancel), 0, "a periodic timer cancelling itself");
    cr_assert_eq(atomic_load(&tp.rc_sentinel), 0);
    cr_assert_eq(atomic_load(&tp.rc_after), -ENOENT);
    cr_assert_eq(tp.count, PERIODIC_K, "the periodic timer fired %u times, cancelled after %u",
                 tp.count, PERIODIC_K);
    for (unsigned j = 0; j < PERIODIC_K; j++)
        cr_assert_geq(tp.at[j], tp.lo + tp.delay + j * tp.period,
                      "firing %u came %" PRIu64 " ns early", j,
                      tp.lo + tp.delay + j * tp.period - tp.at[j]);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_eq(st[1].timers_fired, PERIODIC_K + 1);
    cr_assert_eq(st[1].timers_pending, 0);
    test_stop(NULL);
}

/* Errors. */
static void *add_null_fn(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)pith_timer_add(1 * MS, 0, NULL, NULL, NULL);
}

Test(timer, timers_off_a_shard_are_eperm_and_null_fn_is_einval, .timeout = 30)
{
    pith_timer_id_t id = 0;
    cr_assert_eq(pith_timer_add(1 * MS, 0, never, NULL, &id), -EPERM, "no engine");
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    cr_assert_eq(pith_timer_add(1 * MS, 0, never, NULL, &id), -EPERM);
    cr_assert_eq(pith_timer_cancel(1), -EPERM);
    void *res = NULL;
    cr_assert_eq(pith_call_wait(0, add_null_fn, NULL, &res), 0);
    cr_assert_eq((intptr_t)res, -EINVAL);
    test_stop(NULL);
}

/* Timers fire on the shard that armed them. */
static struct {
    atomic_uint fired[2], wrong[2];
    sem_t done;
} ts;

static void ts_fire(void *arg)
{
    unsigned owner = (unsigned)(uintptr_t)arg;
    if (pith_shard_id() != (int)owner)
        atomic_fetch_add(&ts.wrong[owner], 1);
    atomic_fetch_add(&ts.fired[owner], 1);
    sem_post(&ts.done);
}

static void *ts_arm(void *arg)
{
    (void)arg;
    uintptr_t me = (uintptr_t)pith_shard_id();
    for (unsigned i = 0; i < 10; i++) {
        int rc = pith_timer_add((i + 1) * 100 * US, 0, ts_fire, (void *)me, NULL);
        if (rc != 0)
            return (void *)(intptr_t)rc;
    }
    return NULL;
}

Test(timer, timers_fire_on_the_shard_that_armed_them, .timeout = 30)
{
    cr_assert_eq(sem_init(&ts.done, 0, 0), 0);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    for (unsigned s = 0; s < 2; s++) {
        void *res = (void *)1;
        cr_assert_eq(pith_call_wait(s, ts_arm, NULL, &res), 0);
        cr_assert_null(res);
    }
    for (unsigned i = 0; i < 20; i++)
        sem_wait(&ts.done);
    for (unsigned s = 0; s < 2; s++) {
        cr_assert_eq(atomic_load(&ts.fired[s]), 10);
        cr_assert_eq(atomic_load(&ts.wrong[s]), 0, "shard %u's timers fired elsewhere", s);
    }
    test_stop(NULL);
}

/* Many pending timers on one shard. */
#define MANY_CHUNK 10000u

static struct {
    unsigned n, next;
    pith_timer_id_t *ids;
    unsigned *perm;
    uint64_t seed;
    unsigned cancel_failed;
    int first_cancel_rc;
} tm;

static void *tm_arm_chunk(void *arg)
{
    (void)arg;
    unsigned end = tm.next + MANY_CHUNK < tm.n ? tm.next + MANY_CHUNK : tm.n;
    for (; tm.next < end; tm.next++) {
        uint64_t delay = 1000000 * MS + xorshift(&tm.seed) % (1000000 * MS);
        int rc = pith_timer_add(delay, 0, never, NULL, &tm.ids[tm.next]);
        if (rc != 0)
            return (void *)(intptr_t)rc;
    }
    return NULL;
}

static void *tm_cancel_chunk(void *arg)
{
    (void)arg;
    unsigned end = tm.next + MANY_CHUNK < tm.n ? tm.next + MANY_CHUNK : tm.n;
    for (; tm.next < end; tm.next++) {
        int rc = pith_timer_cancel(tm.ids[tm.perm[tm.next]]);
        if (rc != 0 && tm.cancel_failed++ == 0)
            tm.first_cancel_rc = rc;
    }
    return NULL;
}

Test(timer, a_million_pending_timers_arm_and_cancel, .timeout = 120)
{
    memset(&tm, 0, sizeof tm);
    tm.n = (unsigned)scaled(1000000);
    tm.seed = 88172645463325252ull;
    tm.ids = calloc(tm.n, sizeof *tm.ids);
    tm.perm = malloc(tm.n * sizeof *tm.perm);
    cr_assert_not_null(tm.ids);
    cr_assert_not_null(tm.perm);
    for (unsigned i = 0; i < tm.n; i++)
        tm.perm[i] = i;
    shuffle(tm.perm, tm.n, 12345);

    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    while (tm.next < tm.n) {
        void *res = (void *)1;
        cr_assert_eq(pith_call_wait(0, tm_arm_chunk, NULL, &res), 0);
        cr_assert_null(res, "pith_timer_add number %u: %ld", tm.next, (long)(intptr_t)res);
    }
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_eq(st[0].timers_pending, tm.n);
    assert_ids_distinct(tm.ids, tm.n);

    tm.next = 0;
    while (tm.next < tm.n)
        cr_assert_eq(pith_call_wait(0, tm_cancel_chunk, NULL, NULL), 0);
    cr_assert_eq(tm.cancel_failed, 0, "%u of %u cancels failed, the first with %d",
                 tm.cancel_failed, tm.n, tm.first_cancel_rc);
    test_stats(st, 2);
    cr_assert_eq(st[0].timers_pending, 0);
    cr_assert_eq(st[0].timers_fired, 0);

    void *res = NULL;
    cr_assert_eq(pith_call_wait(0, cancel_id, &tm.ids[tm.n / 2], &res), 0);
    cr_assert_eq((intptr_t)res, -ENOENT, "cancel of a cancelled timer: %ld", (long)(intptr_t)res);
    pith_stop_report_t rep;
    free(tm.ids);
    free(tm.perm);
    test_stop(&rep);
    cr_assert_eq(rep.released_timers, 0);
}
