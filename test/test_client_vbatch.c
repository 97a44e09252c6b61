/* pith_client_vsend_batch: a run of messages to virtual actors on several shards, one wake-up
 * check per shard. As test_client_batch.c: shards poll for 1 us only, so that they sleep
 * between batches (a record left without its wake-up would wait until a TEST_WAIT_FOR gives
 * up), and lanes hold 16 slots, so that a batch outgrows its lane and waits in its middle. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "util.h"
#include "vtest.h"

#define SEC (1000ull * MS)

enum { T_SEQ = 1 };

/* Key i (its first bytes "a<i>-") checks its sequence: seen[i] counts what it got, wrong[i]
 * what came out of order or damaged, activations[i] how often it was activated. */
#define KEYS 4
static _Atomic uint64_t seen[KEYS], wrong[KEYS], activations[KEYS];
static _Atomic uint64_t big_seen;

static int seq_activate(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    (void)self;
    (void)reason;
    const char *k = key;
    if (len < 2 || k[0] != 'a' || k[1] < '0' || k[1] >= '0' + KEYS)
        return -EINVAL;
    unsigned i = (unsigned)(k[1] - '0');
    *(unsigned *)state = i;
    atomic_fetch_add(&activations[i], 1);
    return 0;
}

/* Payload: the sequence number first, then (for the large ones) a fill of its low byte
 * (test_seq_payload). */
static int seq_check(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    unsigned i = *(unsigned *)state;
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

static const pith_actor_type_t seq_actor = {
    .name = "vbatch.seq", .behaviour = seq_check, .state_size = sizeof(unsigned)};
/* Never idle: a key that gets messages is activated once, however slowly the test runs. */
static const pith_vtype_t seq_type = {.name = "vbatch.seq",
                                      .actor = &seq_actor,
                                      .on_activate = seq_activate,
                                      .idle_ns = PITH_VIDLE_NEVER};

/* Holds its shard in its turn until the gate opens. */
static _Atomic int gate;
static _Atomic uint64_t gated_seen;

static int gated(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    while (atomic_load(&gate) == 0)
        sched_yield();
    atomic_fetch_add(&gated_seen, 1);
    return 0;
}

static const pith_actor_type_t gated_actor = {.name = "vbatch.gated", .behaviour = gated};
static const pith_vtype_t gated_type = {.name = "vbatch.gated", .actor = &gated_actor};

static void reset(void)
{
    for (unsigned i = 0; i < KEYS; i++) {
        atomic_store(&seen[i], 0);
        atomic_store(&wrong[i], 0);
        atomic_store(&activations[i], 0);
    }
    atomic_store(&big_seen, 0);
}

static void start(int shards)
{
    cr_assert_eq(pith_vtype_register(&seq_type), 0);
    cr_assert_eq(pith_vtype_register(&gated_type), 0);
    pith_config_t cfg = test_config(shards);
    cfg.poll_ns = 1000;
    cfg.lane_slots = 16;
    cfg.stall_ns = 0; /* the gated actor holds its shard on purpose */
    test_start(&cfg);
    reset();
}

/* Key i's ref, on directory shard `shard`. */
static pith_vref_t key_on(unsigned i, unsigned shard)
{
    char prefix[8];
    snprintf(prefix, sizeof(prefix), "a%u-", i);
    return test_vkey_on(&seq_type, prefix, shard);
}

#define BIG 1000 /* more than a lane of 16 slots carries in place: it travels by pointer */

Test(client_vbatch, virtual_batches_reach_every_shard_in_order_and_wake_them, .timeout = 120)
{
    start(2);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_vref_t k[KEYS];
    for (unsigned i = 0; i < KEYS; i++)
        k[i] = key_on(i, i % 2);
    static unsigned char bufs[64][BIG];
    pith_client_vmsg_t m[64];
    uint64_t next[KEYS] = {0};
    uint64_t big = 0;
    const unsigned rounds = (unsigned)scaled(400);
    for (unsigned r = 0; r < rounds; r++) {
        /* Batch sizes 1..64, keys in a pattern that changes with the round. */
        unsigned n = 1 + (r * 7) % 64;
        for (unsigned j = 0; j < n; j++) {
            unsigned i = (j * (r % 3 + 1) + r) % KEYS;
            uint64_t v = next[i]++;
            memcpy(bufs[j], &v, sizeof(v));
            uint32_t len = sizeof(v);
            if ((j + r) % 17 == 0) {
                memset(bufs[j] + sizeof(v), (unsigned char)v, BIG - sizeof(v));
                len = BIG;
                big++;
            }
            m[j] = (pith_client_vmsg_t){.to = &k[i], .type = T_SEQ, .len = len, .data = bufs[j]};
        }
        cr_assert_eq(pith_client_vsend_batch(c, m, n, 10 * SEC), (int)n, "round %u", r);
        /* Nothing else wakes the shards: the batch's own wake-ups must. Every other round the
         * next batch goes out at once, on top of what the shards are still taking in. */
        if (r % 2 == 0)
            for (unsigned i = 0; i < KEYS; i++)
                TEST_WAIT_FOR(atomic_load(&seen[i]) == next[i]);
    }
    for (unsigned i = 0; i < KEYS; i++) {
        TEST_WAIT_FOR(atomic_load(&seen[i]) == next[i]);
        cr_assert_eq(atomic_load(&wrong[i]), 0u, "key %u: out of order or damaged", i);
        /* (With few rounds, under valgrind, a key may get nothing and stay inactive.) */
        cr_assert_eq(atomic_load(&activations[i]), next[i] > 0 ? 1u : 0u,
                     "key %u: one activation, not %llu", i,
                     (unsigned long long)atomic_load(&activations[i]));
    }
    cr_assert_eq(atomic_load(&big_seen), big);
    pith_client_stats_t st;
    cr_assert_eq(pith_client_stats(c, &st), 0);
    uint64_t total = 0;
    for (unsigned i = 0; i < KEYS; i++)
        total += next[i];
    cr_assert_eq(st.sent, total, "every message, counted once");
    pith_client_close(c);
    test_stop(NULL);
}

Test(client_vbatch, a_virtual_batch_stops_at_its_first_bad_message_and_says_how_many_went,
     .timeout = 60)
{
    start(2);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_vref_t k[2] = {key_on(0, 0), key_on(1, 1)};
    pith_vref_t unmade;
    memset(&unmade, 0, sizeof(unmade));

    cr_assert_eq(pith_client_vsend_batch(c, NULL, 0, 0), 0);
    cr_assert_eq(pith_client_vsend_batch(c, NULL, 3, 0), -EINVAL);
    cr_assert_eq(pith_client_vsend_batch(NULL, NULL, 0, 0), -EINVAL);

    uint64_t v[8];
    pith_client_vmsg_t m[8];
    for (unsigned j = 0; j < 8; j++)
        m[j] = (pith_client_vmsg_t){.to = &k[j % 2], .type = T_SEQ, .len = 8, .data = &v[j]};
    /* The bad one first: nothing goes, its error comes back. */
    pith_client_vmsg_t first_bad = m[0];
    first_bad.type = PITH_MSG_RESERVED;
    cr_assert_eq(pith_client_vsend_batch(c, &first_bad, 1, 0), -EINVAL);

    struct {
        pith_client_vmsg_t bad;
        unsigned at;
    } cases[] = {
        {{.to = &k[0], .type = PITH_MSG_RESERVED, .len = 8, .data = &v[0]}, 4},
        {{.to = &k[1], .type = T_SEQ, .len = 8, .data = NULL}, 3},
        {{.to = NULL, .type = T_SEQ, .len = 8, .data = &v[0]}, 5},
        {{.to = &unmade, .type = T_SEQ, .len = 8, .data = &v[0]}, 2},
        {{.to = &k[0], .type = T_SEQ, .len = PITH_MSG_MAX, .data = &v[0]}, 6},
    };
    uint64_t expect[2] = {0, 0};
    for (unsigned t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
        unsigned at = cases[t].at;
        pith_client_vmsg_t run[8];
        for (unsigned j = 0; j < 8; j++) {
            run[j] = m[j];
            v[j] = expect[j % 2] + j / 2; /* each key's sequence goes on */
        }
        run[at] = cases[t].bad;
        cr_assert_eq(pith_client_vsend_batch(c, run, 8, 5 * SEC), (int)at, "case %u", t);
        /* The first `at` went: at/2 + at%2 to key 0, at/2 to key 1. */
        expect[0] += (at + 1) / 2;
        expect[1] += at / 2;
        for (unsigned i = 0; i < 2; i++)
            TEST_WAIT_FOR(atomic_load(&seen[i]) == expect[i]);
    }
    /* Nothing after the bad ones arrived: the next in each sequence is the next to come. */
    for (unsigned i = 0; i < 2; i++) {
        cr_assert_eq(pith_client_vsend(c, &k[i], T_SEQ, &expect[i], 8, 5 * SEC), 0);
        TEST_WAIT_FOR(atomic_load(&seen[i]) == expect[i] + 1);
        cr_assert_eq(atomic_load(&wrong[i]), 0u, "key %u", i);
    }
    pith_client_close(c);
    test_stop(NULL);
}

/* ---- a full lane: the batch ends early with timeout 0, waits in its middle with one ---- */

/* A timed wait, not an event, as in test_client_batch.c: the lane of 16 slots fills within
 * microseconds of the call, so 100 ms is ample; were it ever too short, the pushed_back
 * assertion would fail rather than pass wrongly. */
static void *open_gate_later(void *arg)
{
    (void)arg;
    struct timespec t = {0, 100 * 1000 * 1000};
    nanosleep(&t, NULL);
    atomic_store(&gate, 1);
    return NULL;
}

Test(client_vbatch, a_full_lane_ends_a_virtual_batch_early_and_what_went_still_arrives,
     .timeout = 60)
{
    start(1);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_vref_t g, a = key_on(0, 0);
    cr_assert_eq(pith_vref(&gated_type, "g", 1, &g), 0);
    /* Both activated first, with the gate open: a message to an active, idle key runs where
     * it lies in the lane, so the gated one's holds the shard with its record still in the
     * lane. (Its first, which activates it, would leave the lane first.) */
    atomic_store(&gate, 1);
    atomic_store(&gated_seen, 0);
    uint64_t zero = 0;
    cr_assert_eq(pith_client_vsend(c, &g, T_SEQ, NULL, 0, 5 * SEC), 0);
    cr_assert_eq(pith_client_vsend(c, &a, T_SEQ, &zero, 8, 5 * SEC), 0);
    TEST_WAIT_FOR(atomic_load(&gated_seen) == 1 && atomic_load(&seen[0]) == 1);
    atomic_store(&seen[0], 0);
    pith_client_stats_t st0;
    cr_assert_eq(pith_client_stats(c, &st0), 0);
    /* The shard is held in the gated actor's turn; the lane behind it fills. */
    atomic_store(&gate, 0);
    cr_assert_eq(pith_client_vsend(c, &g, T_SEQ, NULL, 0, 5 * SEC), 0);
    uint64_t v[64];
    pith_client_vmsg_t m[64];
    for (unsigned j = 0; j < 64; j++) {
        v[j] = j;
        m[j] = (pith_client_vmsg_t){.to = &a, .type = T_SEQ, .len = 8, .data = &v[j]};
    }
    int sent = pith_client_vsend_batch(c, m, 64, 0);
    cr_assert_gt(sent, 0, "some room was left in the lane");
    cr_assert_lt(sent, 64, "a lane of 16 slots holds fewer than 64 records");
    pith_client_stats_t st;
    cr_assert_eq(pith_client_stats(c, &st), 0);
    cr_assert_eq(st.pushed_back, st0.pushed_back + 1, "the one that found the lane full");
    /* With no room and no wait, the next batch sends nothing. */
    cr_assert_eq(pith_client_vsend_batch(c, &m[sent], 1, 0), -EAGAIN);
    int rc1 = pith_client_vsend_batch(c, &m[sent], 1, 1 * MS);
    cr_assert_eq(rc1, -ETIMEDOUT, "got %d", rc1);
    /* Let the shard go: the records that went were published with their wake-up, so they
     * arrive without any further send. */
    atomic_store(&gate, 1);
    TEST_WAIT_FOR(atomic_load(&seen[0]) == (uint64_t)sent);
    cr_assert_eq(pith_client_vsend_batch(c, &m[sent], 64 - (unsigned)sent, 5 * SEC), 64 - sent);
    TEST_WAIT_FOR(atomic_load(&seen[0]) == 64u);
    /* Held again, and let go by another thread in a while: a batch with time to wait fills the
     * lane, waits in its middle, and goes on where it stopped. */
    atomic_store(&gate, 0);
    cr_assert_eq(pith_client_vsend(c, &g, T_SEQ, NULL, 0, 5 * SEC), 0);
    for (unsigned j = 0; j < 64; j++)
        v[j] = 64 + j;
    cr_assert_eq(pith_client_stats(c, &st), 0);
    uint64_t before = st.pushed_back;
    pthread_t opener;
    cr_assert_eq(pthread_create(&opener, NULL, open_gate_later, NULL), 0);
    cr_assert_eq(pith_client_vsend_batch(c, m, 64, 10 * SEC), 64);
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
    pith_vref_t v;
    if (pith_vref(&seq_type, "a0", 2, &v) != 0)
        return (void *)(intptr_t)-EINVAL;
    pith_client_vmsg_t m = {.to = &v, .type = T_SEQ};
    return (void *)(intptr_t)pith_client_vsend_batch(c, &m, 1, 0);
}

Test(client_vbatch, a_virtual_batch_from_a_shard_is_edeadlk, .timeout = 30)
{
    start(1);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    void *r = NULL;
    cr_assert_eq(pith_client_call(c, 0, try_batch_here, c, 5 * SEC, &r), 0);
    cr_assert_eq((int)(intptr_t)r, -EDEADLK);
    pith_client_close(c);
    test_stop(NULL);
}
