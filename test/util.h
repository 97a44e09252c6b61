/* Helpers shared by the engine tests: how much work a stress test does, engine start and stop
 * with a leak check, and a ping-pong between two shards. Public API only; nothing here sleeps. */
#ifndef PITH_TEST_UTIL_H
#define PITH_TEST_UTIL_H

#include <errno.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <criterion/criterion.h>

#include <pith/pith.h>

#define MS (1000ull * 1000ull)

/* The divisor applied to stress sizes: 1 in a plain build, larger under sanitizers and valgrind;
 * $PITH_TEST_SCALE (a positive integer) overrides it. */
unsigned test_scale(void);

/* n / test_scale(), at least 1. */
uint64_t scaled(uint64_t n);

/* True when the test runs under valgrind. */
bool test_on_valgrind(void);

/* What each test's timeout is multiplied by: 1 in a plain build, more under sanitizers and
 * valgrind; $PITH_TEST_TIMEOUT_MULT overrides it. */
double test_timeout_multiplier(void);

/* A config with the defaults and `shards` shards. */
pith_config_t test_config(int shards);

/* Starts the engine with cfg, asserts that it started with the shards asked for, and makes one
 * round trip to each shard. */
void test_start(const pith_config_t *cfg);

/* Stops the engine, asserts the stop succeeded and that the process leaks nothing (LeakSanitizer
 * under ASan, memcheck under valgrind). *report (if not NULL) receives the stop report. */
void test_stop(pith_stop_report_t *report);

/* Asserts that no memory is leaked now (a no-op without ASan or valgrind). */
void test_assert_no_leaks(void);

/* A pith_call_wait round trip to `shard` that runs nothing useful: orders everything that shard
 * did before it ahead of what the caller does next. */
void test_sync_shard(unsigned shard);

/* A round trip to every shard of the running engine: each loop moves on at least once. */
void test_sync_all(void);

/* When a TEST_WAIT_FOR gives up: 20 s from now, stretched as the timeouts are under sanitizers
 * and valgrind. */
uint64_t test_wait_deadline(void);

/* Waits for what the shards do asynchronously (an actor's turn, a delivery across shards, a
 * timer) to show in `cond`, without sleeping: nothing signals the test thread, so it makes
 * round trips to every shard (test_sync_all), which also order the shards' writes before its
 * next look. Bounded in wall time by test_wait_deadline; fails the test if cond never holds. */
#define TEST_WAIT_FOR(cond) TEST_WAIT_WITH(test_sync_all(), cond)

/* As TEST_WAIT_FOR, with round trips to `shard` only: for a wait while another shard is held
 * busy on purpose (a round trip to that one would not come back until it is let go). */
#define TEST_WAIT_FOR_ON(shard, cond) TEST_WAIT_WITH(test_sync_shard(shard), cond)

/* cond is evaluated once a round, and the wait ends on the round that saw it hold: looking
 * again for the assertion could catch a state that has moved on since (a value that holds only
 * for a while, or two looks at the engine that straddle a change). */
#define TEST_WAIT_WITH(sync, cond)                                                                 \
    do {                                                                                           \
        uint64_t deadline_ = test_wait_deadline();                                                 \
        bool held_;                                                                                \
        while (!(held_ = (cond)) && pith_now_ns() < deadline_)                                     \
            sync;                                                                                  \
        cr_assert(held_, "timed out waiting for %s", #cond);                                       \
    } while (0)

/* Runs `rounds` round trips a -> b -> a (a task on a submits to b, whose task submits back) and
 * blocks on a semaphore until the last one is back on a. Asserts no submit failed. */
void test_pingpong(unsigned a, unsigned b, uint64_t rounds);

/* A numbered payload as the batch tests send it: the number first (8 bytes), then, in a large
 * one, a fill of the number's low byte. -1: msg is not of `type` or too short to hold a number;
 * 1: its number is not `want`, or its fill is damaged; 0: as expected. *big: it has a fill. */
int test_seq_payload(const pith_msg_t *msg, uint32_t type, uint64_t want, bool *big);

/* Fills *out for every shard of the running engine (after a sync round trip to each) and
 * asserts the calls succeeded. */
void test_stats(pith_shard_stats_t *out, unsigned shards);

/* The first non-zero error seen by a task, so that a task never asserts on a shard thread. */
typedef struct test_error {
    atomic_int code;
    atomic_int line;
} test_error_t;

static inline void test_error_note(test_error_t *e, int code, int line)
{
    int zero = 0;
    if (atomic_compare_exchange_strong(&e->code, &zero, code))
        atomic_store(&e->line, line);
}

#define TEST_NOTE(e, code) test_error_note((e), (code), __LINE__)

/* Noted by a task that found itself on a shard other than the one it was sent to. */
#define TEST_ERR_WRONG_SHARD (-100000)

#define test_assert_no_error(e)                                                                    \
    cr_assert_eq(atomic_load(&(e)->code), 0, "a task saw error %d (%s) at line %d",                \
                 atomic_load(&(e)->code), pith_strerror(atomic_load(&(e)->code)),                  \
                 atomic_load(&(e)->line))

#endif
