/* Helpers shared by the virtual-actor suites (test_vactor_*.c): finding a key of a given
 * directory shard, and senders that race idle deactivation. Public API only. */
#ifndef PITH_TEST_VTEST_H
#define PITH_TEST_VTEST_H

#include "util.h"

/* A ref of t to the key prefix<i>, for the first i whose directory shard (in the running engine)
 * is dir; asserts there is one among the first 100,000. */
pith_vref_t test_vkey_on(const pith_vtype_t *t, const char *prefix, unsigned dir);

/* Senders on one schedule: round k's burst starts at test_flick_t0 + k * TEST_FLICK_SLOT plus 0
 * to 8 ms (the same for all senders, from k) plus up to own_ns of each sender's own. The quiet
 * between bursts then falls on both sides of an idle time of a few milliseconds: bursts meet
 * the activation idle, gone, or going. Each message is seq_type with the payload
 * (sender << 32 | its number), numbered without gaps in the order accepted. */
#define TEST_FLICK_SLOT (10 * MS)
extern uint64_t test_flick_t0;

struct test_flick {
    const pith_vref_t *v;
    uint32_t seq_type;
    uint32_t off_type; /* 0: none; else the outside sender sends it after every 9th round */
    uint64_t own_ns;
    uint32_t sender, rounds, burst, round;
    uint32_t seq; /* accepted so far: the next one's number */
    _Atomic int done;
    test_error_t *err;
};

/* On a shard (pith_submit it there): a burst, then a shard timer for the next round's. */
void test_flick_fn(void *arg);
/* On a thread outside the engine (pthread_create it): the same through the thread's client. */
void *test_flick_outside(void *arg);

#endif
