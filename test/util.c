/* Helpers shared by the engine tests (see util.h), and the hook that stretches every test's
 * timeout under sanitizers and valgrind. */
#include "util.h"

#include <stdlib.h>
#include <string.h>

#ifndef PITH_TEST_SHIM
#include <criterion/hooks.h>
#include <criterion/internal/ordered-set.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define TEST_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif

#ifdef TEST_ASAN
#include <sanitizer/lsan_interface.h>
#endif

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
#define TEST_ON_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#else
#define TEST_ON_VALGRIND() 0
#endif

bool test_on_valgrind(void)
{
    return TEST_ON_VALGRIND();
}

unsigned test_scale(void)
{
    const char *env = getenv("PITH_TEST_SCALE");
    if (env != NULL && *env != '\0') {
        unsigned long v = strtoul(env, NULL, 10);
        if (v >= 1)
            return (unsigned)v;
    }
    if (TEST_ON_VALGRIND())
        return 200;
#if defined(TEST_TSAN)
    return 20;
#elif defined(TEST_ASAN)
    return 4;
#else
    return 1;
#endif
}

uint64_t scaled(uint64_t n)
{
    uint64_t v = n / test_scale();
    return v ? v : 1;
}

double test_timeout_multiplier(void)
{
    const char *env = getenv("PITH_TEST_TIMEOUT_MULT");
    if (env != NULL && *env != '\0') {
        double v = strtod(env, NULL);
        if (v > 0)
            return v;
    }
    if (TEST_ON_VALGRIND())
        return 10;
#if defined(TEST_TSAN)
    return 10;
#elif defined(TEST_ASAN)
    return 4;
#else
    return 1;
#endif
}

#ifndef PITH_TEST_SHIM
/* Criterion 2.4 ignores a global --timeout, so each test carries its own (sized for a plain
 * build) and this hook, run in the runner before any test is spawned, stretches them. */
ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    double mult = test_timeout_multiplier();
    struct criterion_suite_set *suite;
    FOREACH_SET(suite, set->suites)
    {
        struct criterion_test *test;
        FOREACH_SET(test, suite->tests)
        {
            if (test->data->timeout > 0)
                test->data->timeout *= mult;
        }
    }
}
#endif

pith_config_t test_config(int shards)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = shards;
    return cfg;
}

void test_start(const pith_config_t *cfg)
{
    int rc = pith_engine_start(cfg);
    cr_assert_eq(rc, 0, "pith_engine_start: %d (%s): %s", rc, pith_strerror(rc), pith_last_error());
    if (cfg != NULL && cfg->shards > 0)
        cr_assert_eq(pith_shard_count(), (unsigned)cfg->shards);
    else
        cr_assert_geq(pith_shard_count(), 1u);
    /* A round trip to every shard, so that a test starts with every loop running whatever
     * pith_engine_start does (stop.stop_right_after_start_runs_the_queued_tasks tests that). */
    for (unsigned i = 0; i < pith_shard_count(); i++)
        test_sync_shard(i);
}

void test_assert_no_leaks(void)
{
#ifdef TEST_ASAN
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0,
                 "LeakSanitizer found leaks after the engine stopped (report on stderr)");
#endif
#if __has_include(<valgrind/valgrind.h>)
    if (TEST_ON_VALGRIND()) {
        unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;
        VALGRIND_DO_LEAK_CHECK;
        VALGRIND_COUNT_LEAKS(leaked, dubious, reachable, suppressed);
        (void)dubious;
        (void)reachable;
        (void)suppressed;
        cr_assert_eq(leaked, 0, "valgrind: %lu bytes definitely lost", leaked);
        cr_assert_eq(VALGRIND_COUNT_ERRORS, 0, "valgrind reported errors (see its log)");
    }
#endif
}

void test_stop(pith_stop_report_t *report)
{
    int rc = pith_engine_stop();
    cr_assert_eq(rc, 0, "pith_engine_stop: %d (%s)", rc, pith_strerror(rc));
    cr_assert_eq(pith_shard_count(), 0u);
    if (report != NULL) {
        rc = pith_engine_stop_report(report);
        cr_assert_eq(rc, 0, "pith_engine_stop_report: %d", rc);
    }
    test_assert_no_leaks();
}

static void *sync_fn(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)pith_shard_id();
}

void test_sync_shard(unsigned shard)
{
    void *res = NULL;
    int rc = pith_call_wait(shard, sync_fn, NULL, &res);
    cr_assert_eq(rc, 0, "pith_call_wait(%u): %d (%s)", shard, rc, pith_strerror(rc));
    cr_assert_eq((intptr_t)res, (intptr_t)shard, "a call to shard %u ran on shard %ld", shard,
                 (long)(intptr_t)res);
}

void test_sync_all(void)
{
    for (unsigned i = 0; i < pith_shard_count(); i++)
        test_sync_shard(i);
}

uint64_t test_wait_deadline(void)
{
    return pith_now_ns() + (uint64_t)(20e9 * test_timeout_multiplier());
}

void test_stats(pith_shard_stats_t *out, unsigned shards)
{
    for (unsigned i = 0; i < shards; i++)
        test_sync_shard(i);
    for (unsigned i = 0; i < shards; i++) {
        memset(&out[i], 0xa5, sizeof out[i]);
        int rc = pith_shard_stats(i, &out[i]);
        cr_assert_eq(rc, 0, "pith_shard_stats(%u): %d", i, rc);
        cr_assert_eq(out[i].shard, i);
    }
}

static struct pingpong {
    unsigned a, b;
    uint64_t rounds;
    uint64_t done; /* touched on shard a only */
    uint64_t wrong_shard;
    test_error_t err;
    sem_t finished;
} pp;

static void pp_on_a(void *arg);

static void pp_on_b(void *arg)
{
    (void)arg;
    if (pith_shard_id() != (int)pp.b)
        TEST_NOTE(&pp.err, TEST_ERR_WRONG_SHARD);
    int rc = pith_submit(pp.a, pp_on_a, NULL);
    if (rc != 0) {
        TEST_NOTE(&pp.err, rc);
        sem_post(&pp.finished);
    }
}

static void pp_send(void)
{
    int rc = pith_submit(pp.b, pp_on_b, NULL);
    if (rc != 0) {
        TEST_NOTE(&pp.err, rc);
        sem_post(&pp.finished);
    }
}

static void pp_on_a(void *arg)
{
    (void)arg;
    if (pith_shard_id() != (int)pp.a)
        TEST_NOTE(&pp.err, TEST_ERR_WRONG_SHARD);
    if (++pp.done == pp.rounds)
        sem_post(&pp.finished);
    else
        pp_send();
}

static void pp_kick(void *arg)
{
    (void)arg;
    pp_send();
}

void test_pingpong(unsigned a, unsigned b, uint64_t rounds)
{
    memset(&pp, 0, sizeof pp);
    pp.a = a;
    pp.b = b;
    pp.rounds = rounds;
    cr_assert_eq(sem_init(&pp.finished, 0, 0), 0);
    int rc = pith_submit(a, pp_kick, NULL);
    cr_assert_eq(rc, 0, "pith_submit: %d", rc);
    while (sem_wait(&pp.finished) != 0)
        cr_assert_eq(errno, EINTR);
    test_assert_no_error(&pp.err);
    test_sync_shard(a);
    cr_assert_eq(pp.done, rounds);
    sem_destroy(&pp.finished);
}

int test_seq_payload(const pith_msg_t *msg, uint32_t type, uint64_t want, bool *big)
{
    uint64_t v;
    *big = false;
    if (msg->type != type || msg->len < sizeof(v))
        return -1;
    memcpy(&v, msg->data, sizeof(v));
    int bad = v != want;
    const unsigned char *b = msg->data;
    for (uint32_t k = sizeof(v); k < msg->len; k++)
        if (b[k] != (unsigned char)v) {
            bad = 1;
            break;
        }
    *big = msg->len > sizeof(v);
    return bad;
}
