/* Virtual actors reached through a sender's location cache (pith/vactor.h): a key whose
 * directory is one shard and whose activation lives on another, sent to from a third. The
 * cache must send straight to the activation's shard once it knows where it lives, and keep
 * each sender's order whatever the activation does meanwhile: idle deactivation, moves,
 * another key taking its slot. Also the activation latency the engine samples.
 * Shards record into globals (atomics); only the test thread asserts. */
#include <stdio.h>
#include <string.h>

#include "vtest.h"

#define SEC     (1000ull * MS)
#define SENDERS 4

enum { SEQ = 1, HOP, GET, HOPTO, WHERE };

static _Atomic uint32_t next_seq[SENDERS];
static _Atomic uint64_t seen, bad;
static _Atomic uint32_t hop_every; /* SEQ messages between moves (0: none) */
static _Atomic uint32_t hops;
/* WHERE messages handled on each shard (of 4 at most), and HOPTO's answers. */
static _Atomic uint32_t where_on[4];
static _Atomic int hopto_rc;
static test_error_t err;

struct cstate {
    uint64_t n;
};

static int c_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct cstate *st = state;
    if (msg->type == SEQ && msg->len == sizeof(uint64_t)) {
        uint64_t v;
        memcpy(&v, msg->data, sizeof(v));
        uint32_t who = (uint32_t)(v >> 32), seq = (uint32_t)v;
        if (who >= SENDERS || seq != atomic_load(&next_seq[who]))
            atomic_fetch_add(&bad, 1);
        atomic_store(&next_seq[who], seq + 1);
        atomic_fetch_add(&seen, 1);
        st->n++;
        uint32_t every = atomic_load(&hop_every);
        if (every != 0 && st->n % every == 0) {
            /* Round the shards: 1, 0, 2, 1, ... */
            unsigned to = ((unsigned)pith_shard_id() + 2) % pith_shard_count();
            int rc = pith_vactor_migrate(self, to);
            if (rc == 0)
                atomic_fetch_add(&hops, 1);
            else if (rc != -EALREADY)
                TEST_NOTE(&err, rc);
        }
    } else if (msg->type == HOPTO && msg->len == sizeof(unsigned)) {
        unsigned to;
        memcpy(&to, msg->data, sizeof(to));
        atomic_store(&hopto_rc, pith_vactor_migrate(self, to));
    } else if (msg->type == WHERE) {
        atomic_fetch_add(&where_on[pith_shard_id()], 1);
    } else if (msg->type == GET) {
        unsigned sh = (unsigned)pith_shard_id();
        (void)pith_reply(msg, GET, &sh, sizeof(sh));
    }
    return 0;
}

static const pith_actor_type_t c_actor = {
    .name = "cache.actor",
    .behaviour = c_behaviour,
    .state_size = sizeof(struct cstate),
    .mailbox_max = 1u << 20, /* a flood is not what these tests look at */
};

/* Keys starting with 'h' live on shard 1; others on their directory shard. */
static unsigned c_place(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    (void)sender;
    return len > 0 && ((const char *)key)[0] == 'h' && shards > 1 ? 1u : UINT32_MAX;
}

static const pith_vtype_t c_type = {
    .name = "cache.placed",
    .actor = &c_actor,
    .placement = PITH_PLACE_FN,
    .place = c_place,
};
/* The same, idle after 4 ms: activations come and go under the senders. */
static const pith_vtype_t c_idle = {
    .name = "cache.idle",
    .actor = &c_actor,
    .placement = PITH_PLACE_FN,
    .place = c_place,
    .idle_ns = 4 * MS,
};
static const pith_vtype_t c_hash = {.name = "cache.hash", .actor = &c_actor};

static void start(int shards)
{
    cr_assert_eq(pith_vtype_register(&c_type), 0);
    cr_assert_eq(pith_vtype_register(&c_idle), 0);
    cr_assert_eq(pith_vtype_register(&c_hash), 0);
    for (int i = 0; i < SENDERS; i++)
        atomic_store(&next_seq[i], 0);
    atomic_store(&seen, 0);
    atomic_store(&bad, 0);
    atomic_store(&hop_every, 0);
    atomic_store(&hops, 0);
    pith_config_t cfg = test_config(shards);
    test_start(&cfg);
}

/* ---- a sender: a task that sends its numbered messages in bursts, then again ---- */

struct sender {
    pith_vref_t to;
    uint32_t id, total, sent;
    uint32_t burst;
    uint32_t window; /* sent and not yet seen, at most (0: no limit) */
    _Atomic int done;
};

static struct sender senders[SENDERS];

static void send_task(void *arg)
{
    struct sender *s = arg;
    for (uint32_t i = 0; i < s->burst && s->sent < s->total; i++) {
        if (s->window != 0 && s->sent - atomic_load(&next_seq[s->id]) >= s->window)
            break; /* the activation's backlog stays small: moves carry little */
        uint64_t v = (uint64_t)s->id << 32 | s->sent;
        int rc = pith_vsend(&s->to, SEQ, &v, sizeof(v));
        if (rc == -EAGAIN)
            break; /* held messages at their bound: the next burst tries again */
        if (rc != 0) {
            TEST_NOTE(&err, rc);
            atomic_store(&s->done, 1);
            return;
        }
        s->sent++;
    }
    if (s->sent == s->total) {
        atomic_store(&s->done, 1);
        return;
    }
    int rc = pith_submit((unsigned)pith_shard_id(), send_task, s);
    if (rc != 0) {
        TEST_NOTE(&err, rc);
        atomic_store(&s->done, 1);
    }
}

static void submit(unsigned shard, struct sender *s)
{
    int rc;
    while ((rc = pith_submit(shard, send_task, s)) == -EAGAIN)
        test_sync_shard(shard);
    cr_assert_eq(rc, 0, "pith_submit: %d", rc);
}

static void run_senders_w(const pith_vref_t *to, const unsigned *shards, unsigned n, uint32_t each,
                          uint32_t burst, uint32_t window)
{
    for (unsigned i = 0; i < n; i++)
        senders[i] =
            (struct sender){.to = *to, .id = i, .total = each, .burst = burst, .window = window};
    for (unsigned i = 0; i < n; i++)
        submit(shards[i], &senders[i]);
    for (unsigned i = 0; i < n; i++)
        TEST_WAIT_FOR(atomic_load(&senders[i].done));
    test_assert_no_error(&err);
    TEST_WAIT_FOR(atomic_load(&seen) == (uint64_t)n * each);
    cr_assert_eq(atomic_load(&bad), 0, "%llu messages out of order",
                 (unsigned long long)atomic_load(&bad));
}

static void run_senders(const pith_vref_t *to, const unsigned *shards, unsigned n, uint32_t each,
                        uint32_t burst)
{
    run_senders_w(to, shards, n, each, burst, 0);
}

static pith_vtype_stats_t stats(const pith_vtype_t *t)
{
    pith_vtype_stats_t s;
    cr_assert_eq(pith_vtype_stats(t, &s), 0);
    return s;
}

static unsigned where(const pith_vref_t *v)
{
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), v, GET, NULL, 0, 10 * SEC, &reply);
    cr_assert_eq(rc, 0, "ask: %d (%s)", rc, pith_strerror(rc));
    unsigned sh;
    memcpy(&sh, reply.data, sizeof(sh));
    return sh;
}

/* Directory 0, activation on 1, sender on 2: after the first few messages, the sender's cache
 * sends straight to shard 1. */
Test(vactor_cache, a_third_shard_sends_straight_to_the_activation_once_it_knows, .timeout = 60)
{
    start(3);
    pith_vref_t v = test_vkey_on(&c_type, "h", 0);
    cr_assert_eq(where(&v), 1);
    unsigned from[] = {2};
    uint32_t each = (uint32_t)scaled(20000);
    run_senders(&v, from, 1, each, 64);
    pith_vtype_stats_t s = stats(&c_type);
    cr_log_info("cache: %llu cached, %llu forwarded, %llu stale of %u\n",
                (unsigned long long)s.cached, (unsigned long long)s.forwards,
                (unsigned long long)s.stale, each);
    cr_assert_gt(s.cached, each / 2, "%llu of %u sent straight to the host",
                 (unsigned long long)s.cached, each);
    cr_assert_eq(s.stale, 0);
    cr_assert_eq(s.cached + s.forwards, (uint64_t)each + 1, "each message once: the ask too");
    /* Per shard: the sender's cache sent them, the directory forwarded the rest, the host
     * holds the one activation. */
    pith_vtype_stats_t sh[3];
    for (unsigned i = 0; i < 3; i++)
        cr_assert_eq(pith_vtype_shard_stats(&c_type, i, &sh[i]), 0);
    cr_assert_eq(sh[2].cached, s.cached);
    cr_assert_eq(sh[0].forwards, s.forwards);
    cr_assert_eq(sh[1].live, 1);
    cr_assert_eq(sh[0].live + sh[2].live, 0);
    cr_assert_eq(sh[0].remote, 1, "placed off its directory once");
    pith_vtype_stats_t none;
    cr_assert_eq(pith_vtype_shard_stats(&c_type, 3, &none), -EINVAL);
    cr_assert_eq(pith_vtype_shard_stats(&c_type, UINT32_MAX, &none), -EINVAL);
    test_stop(NULL);
}

/* A key on its own directory shard: the cache learns that and keeps routing, nothing held. */
Test(vactor_cache, a_key_on_its_directory_shard_is_not_cached, .timeout = 60)
{
    start(2);
    /* Before any actor was made: a running engine has counted nothing (not -ESHUTDOWN). */
    pith_vtype_stats_t s0;
    cr_assert_eq(pith_vtype_stats(&c_hash, &s0), 0);
    cr_assert_eq(s0.messages + s0.activations + s0.live, 0);
    cr_assert_eq(pith_vtype_shard_stats(&c_hash, 1, &s0), 0);
    cr_assert_eq(pith_vtype_shard_stats(&c_hash, 2, &s0), -EINVAL);
    pith_vref_t v = test_vkey_on(&c_hash, "k", 0);
    unsigned from[] = {1};
    uint32_t each = (uint32_t)scaled(20000);
    run_senders(&v, from, 1, each, 64);
    pith_vtype_stats_t s = stats(&c_hash);
    cr_assert_eq(s.cached, 0);
    cr_assert_eq(s.forwards, 0);
    cr_assert_eq(where(&v), 0);
    test_stop(NULL);
}

/* Senders on every shard while the activation moves round the shards 32 times: the
 * caches go stale again and again; nothing is lost and each sender's order holds. */
Test(vactor_cache, moves_under_cached_senders_keep_order_and_lose_nothing, .timeout = 120)
{
    start(3);
    pith_vref_t v = test_vkey_on(&c_type, "h", 0);
    cr_assert_eq(where(&v), 1);
    unsigned from[] = {0, 1, 2, 2};
    uint32_t each = (uint32_t)scaled(40000);
    atomic_store(&hop_every, each * 4 / 32 > 0 ? each * 4 / 32 : 1); /* 32 moves, any scale */
    run_senders_w(&v, from, 4, each, 32, 64);
    pith_vtype_stats_t s = stats(&c_type);
    cr_log_info("moves: %u hops, %llu cached, %llu stale, %llu forwards, %llu returned, %llu "
                "direct\n",
                atomic_load(&hops), (unsigned long long)s.cached, (unsigned long long)s.stale,
                (unsigned long long)s.forwards, (unsigned long long)s.returned,
                (unsigned long long)s.direct);
    cr_assert_geq(atomic_load(&hops), 10);
    /* At full size the caches must have been in use (under valgrind's scale a move comes every
     * few messages, and they may never settle). */
    if (test_scale() == 1)
        cr_assert_gt(s.cached, 0);
    cr_assert_eq(s.migrate_failed, 0);
    test_assert_no_error(&err);
    test_stop(NULL);
}

/* Activations that go after 4 ms idle, under senders that pause between bursts (a task each,
 * resubmitted, so the pauses are the loops' own): cached activations end under the cache. */
Test(vactor_cache, idle_ends_under_cached_senders_keep_order_and_lose_nothing, .timeout = 120)
{
    start(3);
    pith_vref_t v = test_vkey_on(&c_idle, "h", 0);
    unsigned from[] = {0, 2};
    uint32_t each = (uint32_t)scaled(20000);
    run_senders(&v, from, 2, each, 8);
    /* A burst, a pause past the idle time, again: each pause ends the activation. */
    for (int round = 0; round < 5; round++) {
        uint64_t t = pith_now_ns();
        while (pith_now_ns() - t < 12 * MS)
            test_sync_all();
        uint64_t before = atomic_load(&seen);
        for (unsigned i = 0; i < 2; i++) {
            senders[i].total += (uint32_t)scaled(2000);
            atomic_store(&senders[i].done, 0);
            submit(from[i], &senders[i]);
        }
        for (unsigned i = 0; i < 2; i++)
            TEST_WAIT_FOR(atomic_load(&senders[i].done));
        TEST_WAIT_FOR(atomic_load(&seen) == before + 2 * scaled(2000));
    }
    test_assert_no_error(&err);
    cr_assert_eq(atomic_load(&bad), 0);
    pith_vtype_stats_t s = stats(&c_idle);
    cr_log_info("idle: %llu activations, %llu idle ends, %llu cached, %llu stale\n",
                (unsigned long long)s.activations,
                (unsigned long long)s.deactivations[PITH_VDEACT_IDLE], (unsigned long long)s.cached,
                (unsigned long long)s.stale);
    cr_assert_geq(s.deactivations[PITH_VDEACT_IDLE], 3);
    test_stop(NULL);
}

/* Two keys in one slot of shard 2's cache: the second one's traffic makes the first give way
 * (a probe), and both keep their order. */
Test(vactor_cache, a_slot_taken_by_another_key_gives_way_in_order, .timeout = 60)
{
    start(3);
    /* Two keys of directory 0, both on shard 1, whose hashes share a slot: (hash >> 32) % 1024. */
    pith_vref_t a = test_vkey_on(&c_type, "h", 0), b;
    unsigned i = 0;
    for (;; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "hx%u", i);
        cr_assert_eq(pith_vref(&c_type, key, (size_t)kl, &b), 0);
        if (pith_vref_shard(&b) == 0 && ((b.hash >> 32) & 1023) == ((a.hash >> 32) & 1023))
            break;
        cr_assert_lt(i, 10000000u);
    }
    unsigned from[] = {2};
    uint32_t each = (uint32_t)scaled(5000);
    run_senders(&a, from, 1, each, 64);
    uint64_t cached_a = stats(&c_type).cached;
    cr_assert_gt(cached_a, 0);
    /* Now b from the same sender id (its own sequence): a's slot gives way to it. */
    atomic_store(&next_seq[0], 0);
    atomic_store(&seen, 0);
    run_senders(&b, from, 1, each, 64);
    /* And a again: it takes the slot back the same way. */
    atomic_store(&next_seq[0], 0);
    atomic_store(&seen, 0);
    run_senders(&a, from, 1, each, 64);
    pith_vtype_stats_t s = stats(&c_type);
    cr_assert_gt(s.cached, cached_a + each / 2, "b and a again went straight too: %llu",
                 (unsigned long long)s.cached);
    test_stop(NULL);
}

/* The sampled activation latency: first message to first behaviour call, here and remote. */
Test(vactor_cache, activation_latency_is_sampled_to_the_first_behaviour_call, .timeout = 60)
{
    start(2);
    for (int i = 0; i < 64; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "%s%d", i % 2 ? "h" : "k", i);
        pith_vref_t v;
        cr_assert_eq(pith_vref(&c_type, key, (size_t)kl, &v), 0);
        (void)where(&v); /* one at a time: each timed one ends before the next begins */
    }
    pith_vtype_stats_t s = stats(&c_type);
    cr_assert_geq(s.first_samples, 4, "one in 16 timed: %llu", (unsigned long long)s.first_samples);
    cr_assert_gt(s.first_p50_ns, 0);
    cr_assert_geq(s.first_max_ns, s.first_p50_ns / 2);
    cr_assert_geq(s.first_p99_ns, s.first_p50_ns);
    test_stop(NULL);
}

/* A move asked in a turn with more mail behind it: the turn ends there, and every message after
 * the one that asked is handled on the new shard. */
static pith_vref_t batch_to;

static void batch_task(void *arg)
{
    (void)arg;
    unsigned to = 1;
    int rc = pith_vsend(&batch_to, HOPTO, &to, sizeof(to));
    for (int i = 0; i < 50 && rc == 0; i++)
        rc = pith_vsend(&batch_to, WHERE, NULL, 0);
    if (rc != 0)
        TEST_NOTE(&err, rc);
}

Test(vactor_cache, a_move_asked_mid_turn_takes_the_rest_of_the_turn_along, .timeout = 60)
{
    start(2);
    batch_to = test_vkey_on(&c_hash, "b", 0);
    cr_assert_eq(where(&batch_to), 0);
    for (int i = 0; i < 4; i++)
        atomic_store(&where_on[i], 0);
    atomic_store(&hopto_rc, 1);
    /* One task on shard 0 puts HOPTO and 50 WHEREs in the mailbox before the turn runs. */
    int rc;
    while ((rc = pith_submit(0, batch_task, NULL)) == -EAGAIN)
        test_sync_shard(0);
    cr_assert_eq(rc, 0);
    TEST_WAIT_FOR(atomic_load(&where_on[0]) + atomic_load(&where_on[1]) == 50);
    test_assert_no_error(&err);
    cr_assert_eq(atomic_load(&hopto_rc), 0);
    cr_assert_eq(atomic_load(&where_on[0]), 0, "%u handled on shard 0 after the move was asked",
                 atomic_load(&where_on[0]));
    cr_assert_eq(where(&batch_to), 1);
    test_stop(NULL);
}
