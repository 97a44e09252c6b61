/* pith_client_send_batch: a run of messages to several shards, one wake-up check per shard.
 * Shards here poll for 1 us only, so that they sleep between batches: a record left without
 * its wake-up would wait until the test's TEST_WAIT_FOR gives up. */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "util.h"

#define SEC (1000ull * MS)

enum { T_SEQ = 1 };

/* Sequence checks per receiving actor: seen[i] counts what actor i got, and wrong[i] what came
 * out of order or damaged. Actor i's init takes i as arg. */
#define ACTORS 4
static _Atomic uint64_t seen[ACTORS], wrong[ACTORS];
static _Atomic uint64_t big_seen;

static int seq_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    *(uintptr_t *)state = (uintptr_t)arg;
    return 0;
}

/* Payload: the sequence number first, then (for the large ones) a fill of its low byte
 * (test_seq_payload). */
static int seq_check(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    unsigned i = (unsigned)*(uintptr_t *)state;
    bool big;
    int r = test_seq_payload(msg, T_SEQ, atomic_load(&seen[i]), &big);
    if (r != 0)
        atomic_fetch_add(&wrong[i], 1);
    if (r < 0)
        return 0;
    if (big)
        atomic_fetch_add(&big_seen, 1);
    atomic_fetch_add(&seen[i], 1);
    return 0;
}

static const pith_actor_type_t seq_type = {
    .name = "batch.seq", .behaviour = seq_check, .init = seq_init, .state_size = sizeof(uintptr_t)};

static void reset(void)
{
    for (unsigned i = 0; i < ACTORS; i++) {
        atomic_store(&seen[i], 0);
        atomic_store(&wrong[i], 0);
    }
    atomic_store(&big_seen, 0);
}

static pith_config_t sleepy_config(int shards)
{
    pith_config_t cfg = test_config(shards);
    cfg.poll_ns = 1000;
    cfg.lane_slots = 16; /* a batch outgrows a lane: it must wait for room in its middle */
    return cfg;
}

#define BIG 1000 /* more than a lane of 16 slots carries in place: it travels by pointer */

Test(client_batch, batches_reach_every_shard_in_order_and_wake_them, .timeout = 120)
{
    pith_config_t cfg = sleepy_config(2);
    test_start(&cfg);
    reset();
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_ref_t a[ACTORS];
    for (unsigned i = 0; i < ACTORS; i++)
        cr_assert_eq(pith_client_spawn(c, i % 2, &seq_type, (void *)(uintptr_t)i, 5 * SEC, &a[i]),
                     0);
    static unsigned char bufs[64][BIG];
    pith_client_msg_t m[64];
    uint64_t next[ACTORS] = {0};
    uint64_t big = 0;
    const unsigned rounds = (unsigned)scaled(400);
    for (unsigned r = 0; r < rounds; r++) {
        /* Batch sizes 1..64, destinations in a pattern that changes with the round. */
        unsigned n = 1 + (r * 7) % 64;
        for (unsigned k = 0; k < n; k++) {
            unsigned i = (k * (r % 3 + 1) + r) % ACTORS;
            uint64_t v = next[i]++;
            memcpy(bufs[k], &v, sizeof(v));
            uint32_t len = sizeof(v);
            if ((k + r) % 17 == 0) {
                memset(bufs[k] + sizeof(v), (unsigned char)v, BIG - sizeof(v));
                len = BIG;
                big++;
            }
            m[k] = (pith_client_msg_t){.to = a[i], .type = T_SEQ, .len = len, .data = bufs[k]};
        }
        cr_assert_eq(pith_client_send_batch(c, m, n, 10 * SEC), (int)n, "round %u", r);
        /* Nothing else wakes the shards: the batch's own wake-ups must. Every other round the
         * next batch goes out at once, on top of what the shards are still taking in. */
        if (r % 2 == 0)
            for (unsigned i = 0; i < ACTORS; i++)
                TEST_WAIT_FOR(atomic_load(&seen[i]) == next[i]);
    }
    for (unsigned i = 0; i < ACTORS; i++) {
        TEST_WAIT_FOR(atomic_load(&seen[i]) == next[i]);
        cr_assert_eq(atomic_load(&wrong[i]), 0u, "actor %u: out of order or damaged", i);
    }
    cr_assert_eq(atomic_load(&big_seen), big);
    pith_client_stats_t st;
    cr_assert_eq(pith_client_stats(c, &st), 0);
    uint64_t total = 0;
    for (unsigned i = 0; i < ACTORS; i++)
        total += next[i];
    cr_assert_eq(st.sent, total + ACTORS, "the spawns and every message");
    pith_client_close(c);
    test_stop(NULL);
}

/* Client to client: the other client's inbox gets the batch in order. */
Test(client_batch, a_batch_to_another_client_arrives_in_order, .timeout = 60)
{
    pith_config_t cfg = sleepy_config(2);
    test_start(&cfg);
    pith_client_t *c = pith_client_open(NULL);
    pith_client_t *d = pith_client_open(NULL);
    cr_assert_not_null(c);
    cr_assert_not_null(d);
    uint64_t v[32];
    pith_client_msg_t m[32];
    for (unsigned k = 0; k < 32; k++) {
        v[k] = k;
        m[k] = (pith_client_msg_t){
            .to = pith_client_ref(d), .type = T_SEQ, .len = sizeof(v[k]), .data = &v[k]};
    }
    cr_assert_eq(pith_client_send_batch(c, m, 32, 5 * SEC), 32);
    for (unsigned k = 0; k < 32; k++) {
        pith_msg_t got;
        cr_assert_eq(pith_client_receive(d, &got, 5 * SEC), 0, "message %u", k);
        cr_assert_eq(got.from, pith_client_ref(c));
        cr_assert_eq(got.len, sizeof(uint64_t));
        uint64_t x;
        memcpy(&x, got.data, sizeof(x));
        cr_assert_eq(x, (uint64_t)k);
    }
    pith_msg_t none;
    cr_assert_eq(pith_client_receive(d, &none, 0), -EAGAIN);
    pith_client_close(d);
    pith_client_close(c);
    test_stop(NULL);
}

/* A bad message ends the batch where it stands: what came before it is sent (and woken), the
 * rest is not, and the return says how many went. */
Test(client_batch, a_batch_stops_at_its_first_bad_message_and_says_how_many_went, .timeout = 60)
{
    pith_config_t cfg = sleepy_config(2);
    test_start(&cfg);
    reset();
    pith_client_t *c = pith_client_open(NULL);
    pith_client_t *gone = pith_client_open(NULL);
    cr_assert_not_null(c);
    cr_assert_not_null(gone);
    pith_ref_t gone_ref = pith_client_ref(gone);
    pith_client_close(gone);
    pith_ref_t a[2];
    for (unsigned i = 0; i < 2; i++)
        cr_assert_eq(pith_client_spawn(c, i, &seq_type, (void *)(uintptr_t)i, 5 * SEC, &a[i]), 0);

    cr_assert_eq(pith_client_send_batch(c, NULL, 0, 0), 0);
    cr_assert_eq(pith_client_send_batch(c, NULL, 3, 0), -EINVAL);
    cr_assert_eq(pith_client_send_batch(NULL, NULL, 0, 0), -EINVAL);

    uint64_t v[8] = {0, 0, 1, 1, 2, 2, 3, 3};
    pith_client_msg_t m[8];
    for (unsigned k = 0; k < 8; k++)
        m[k] = (pith_client_msg_t){.to = a[k % 2], .type = T_SEQ, .len = 8, .data = &v[k]};
    /* The bad one first: nothing goes, its error comes back. */
    pith_client_msg_t first_bad = m[0];
    first_bad.type = PITH_MSG_RESERVED;
    cr_assert_eq(pith_client_send_batch(c, &first_bad, 1, 0), -EINVAL);

    struct {
        pith_client_msg_t bad;
        unsigned at;
    } cases[] = {
        {{.to = a[0], .type = PITH_MSG_RESERVED, .len = 8, .data = &v[0]}, 4},
        {{.to = a[1], .type = T_SEQ, .len = 8, .data = NULL}, 3},
        {{.to = PITH_REF_NONE, .type = T_SEQ, .len = 8, .data = &v[0]}, 5},
        {{.to = gone_ref, .type = T_SEQ, .len = 8, .data = &v[0]}, 2},
    };
    uint64_t expect[2] = {0, 0};
    for (unsigned t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
        unsigned at = cases[t].at;
        int want_err = t == 3 ? -ESRCH : -EINVAL;
        cr_assert_eq(pith_client_send_batch(c, &cases[t].bad, 1, 5 * SEC), want_err, "case %u", t);
        pith_client_msg_t run[8];
        for (unsigned k = 0; k < 8; k++) {
            run[k] = m[k];
            v[k] = expect[k % 2] + k / 2; /* each actor's sequence goes on */
        }
        run[at] = cases[t].bad;
        cr_assert_eq(pith_client_send_batch(c, run, 8, 5 * SEC), (int)at, "case %u", t);
        /* The first `at` went: at/2 + at%2 to actor 0, at/2 to actor 1. */
        expect[0] += (at + 1) / 2;
        expect[1] += at / 2;
        for (unsigned i = 0; i < 2; i++)
            TEST_WAIT_FOR(atomic_load(&seen[i]) == expect[i]);
    }
    /* Nothing after the bad ones arrived: the next in each sequence is the next to come. */
    cr_assert_eq(pith_client_send(c, a[0], T_SEQ, &expect[0], 8, 5 * SEC), 0);
    cr_assert_eq(pith_client_send(c, a[1], T_SEQ, &expect[1], 8, 5 * SEC), 0);
    for (unsigned i = 0; i < 2; i++) {
        TEST_WAIT_FOR(atomic_load(&seen[i]) == expect[i] + 1);
        cr_assert_eq(atomic_load(&wrong[i]), 0u, "actor %u", i);
    }
    pith_client_close(c);
    test_stop(NULL);
}

/* ---- a full lane with timeout 0: the batch ends early, and what it sent is not stranded ---- */

static _Atomic int gate;

static int gated(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    while (atomic_load(&gate) == 0)
        sched_yield();
    return 0;
}

static const pith_actor_type_t gated_type = {.name = "batch.gated", .behaviour = gated};

/* A timed wait, not an event: the batch is to find the lane full and wait in its middle, and
 * nothing another thread can read says that a producer waits (a client's counters are its own
 * thread's). The lane of 16 slots fills within microseconds of the call, so 100 ms is ample;
 * were it ever too short, the pushed_back assertion would fail rather than pass wrongly. */
static void *open_gate_later(void *arg)
{
    (void)arg;
    struct timespec t = {0, 100 * 1000 * 1000};
    nanosleep(&t, NULL);
    atomic_store(&gate, 1);
    return NULL;
}

Test(client_batch, a_full_lane_ends_a_batch_early_and_what_went_still_arrives, .timeout = 60)
{
    pith_config_t cfg = sleepy_config(1);
    cfg.stall_ns = 0;
    test_start(&cfg);
    reset();
    atomic_store(&gate, 0);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_ref_t g, a;
    cr_assert_eq(pith_client_spawn(c, 0, &gated_type, NULL, 5 * SEC, &g), 0);
    cr_assert_eq(pith_client_spawn(c, 0, &seq_type, (void *)(uintptr_t)0, 5 * SEC, &a), 0);
    /* The shard is held in the gated actor's turn; the lane behind it fills. */
    cr_assert_eq(pith_client_send(c, g, T_SEQ, NULL, 0, 5 * SEC), 0);
    uint64_t v[64];
    pith_client_msg_t m[64];
    for (unsigned k = 0; k < 64; k++) {
        v[k] = k;
        m[k] = (pith_client_msg_t){.to = a, .type = T_SEQ, .len = 8, .data = &v[k]};
    }
    int sent = pith_client_send_batch(c, m, 64, 0);
    cr_assert_gt(sent, 0, "some room was left in the lane");
    cr_assert_lt(sent, 64, "a lane of 16 slots holds fewer than 64 records");
    pith_client_stats_t st;
    cr_assert_eq(pith_client_stats(c, &st), 0);
    cr_assert_eq(st.pushed_back, 1u, "the one that found the lane full");
    /* With no room and no wait, the next batch sends nothing. */
    cr_assert_eq(pith_client_send_batch(c, &m[sent], 1, 0), -EAGAIN);
    cr_assert_eq(pith_client_send_batch(c, &m[sent], 1, 1 * MS), -ETIMEDOUT);
    /* Let the shard go, and give it time to fall asleep again: the records that went must have
     * been published with their wake-up, so they arrive without any further send. */
    atomic_store(&gate, 1);
    TEST_WAIT_FOR(atomic_load(&seen[0]) == (uint64_t)sent);
    cr_assert_eq(pith_client_send_batch(c, &m[sent], 64 - (unsigned)sent, 5 * SEC), 64 - sent);
    TEST_WAIT_FOR(atomic_load(&seen[0]) == 64u);
    /* Held again, and let go by another thread in a while: a batch with time to wait fills the
     * lane, waits in its middle, and goes on where it stopped. */
    atomic_store(&gate, 0);
    cr_assert_eq(pith_client_send(c, g, T_SEQ, NULL, 0, 5 * SEC), 0);
    for (unsigned k = 0; k < 64; k++)
        v[k] = 64 + k;
    cr_assert_eq(pith_client_stats(c, &st), 0);
    uint64_t before = st.pushed_back;
    pthread_t opener;
    cr_assert_eq(pthread_create(&opener, NULL, open_gate_later, NULL), 0);
    cr_assert_eq(pith_client_send_batch(c, m, 64, 10 * SEC), 64);
    pthread_join(opener, NULL);
    cr_assert_eq(pith_client_stats(c, &st), 0);
    cr_assert_gt(st.pushed_back, before, "the batch found the lane full and waited");
    TEST_WAIT_FOR(atomic_load(&seen[0]) == 128u);
    cr_assert_eq(atomic_load(&wrong[0]), 0u);
    pith_client_close(c);
    test_stop(NULL);
}

static void *try_batch_here(void *arg)
{
    pith_client_t *c = arg;
    pith_client_msg_t m = {.to = pith_client_ref(c), .type = T_SEQ};
    return (void *)(intptr_t)pith_client_send_batch(c, &m, 1, 0);
}

Test(client_batch, a_batch_from_a_shard_is_edeadlk, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    void *r = NULL;
    cr_assert_eq(pith_client_call(c, 0, try_batch_here, c, 5 * SEC, &r), 0);
    cr_assert_eq((int)(intptr_t)r, -EDEADLK);
    pith_client_close(c);
    test_stop(NULL);
}
