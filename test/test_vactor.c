/* Virtual actors (pith/vactor.h): activation on the first message and exactly once under a
 * storm of first messages from every shard and from outside threads, per-sender order across
 * activations, idle deactivation and pith_vactor_deactivate, on_activate failing and the retry,
 * keys that share a hash, the key limit and the API's errors, the cap per shard, activations
 * alive at engine stop, and many activations coming and going.
 * Behaviours report in globals (atomics) read by the test thread; nothing asserts on a shard. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

enum { ADD = 1, GET = 2, SEQ = 3, OFF = 4, HOT = 5 };

struct counter {
    uint64_t n;
};

static _Atomic uint64_t activated, deactivated[PITH_VDEACT_REASONS], seq_bad, seq_seen, prewarmed;
static _Atomic int fail_next; /* on_activate fails this many more times */

static int counter_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct counter *c = state;
    uint64_t v = 0;
    if (msg->len >= sizeof(v))
        memcpy(&v, msg->data, sizeof(v));
    switch (msg->type) {
    case ADD:
        c->n += v;
        break;
    case GET:
        (void)pith_reply(msg, GET, &c->n, sizeof(c->n));
        break;
    case OFF:
        (void)pith_vactor_deactivate(self);
        break;
    case HOT:
        if (pith_vactor_set_profile(self, PITH_MEM_HOT) != 0)
            c->n = UINT64_MAX; /* the test sees it */
        break;
    default:
        break;
    }
    return 0;
}

static int on_act(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    (void)state;
    uint32_t klen = 0;
    const void *k = pith_vactor_key(self, &klen);
    if ((reason != PITH_VACT_MESSAGE && reason != PITH_VACT_PREWARM) || k == NULL || klen != len ||
        memcmp(k, key, len) != 0)
        return -EPROTO; /* the tests see it as a failed activation */
    if (reason == PITH_VACT_PREWARM)
        atomic_fetch_add(&prewarmed, 1);
    int f = atomic_load(&fail_next);
    while (f > 0) {
        if (atomic_compare_exchange_weak(&fail_next, &f, f - 1))
            return -EIO;
    }
    atomic_fetch_add(&activated, 1);
    return 0;
}

static void on_deact(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)state;
    if (reason > 0 && reason < PITH_VDEACT_REASONS)
        atomic_fetch_add(&deactivated[reason], 1);
}

static const pith_actor_type_t counter_actor = {
    .name = "counter",
    .behaviour = counter_behaviour,
    .state_size = sizeof(struct counter),
};

static const pith_vtype_t counter_type = {
    .name = "counter",
    .actor = &counter_actor,
    .on_activate = on_act,
    .on_deactivate = on_deact,
};

/* The same actor, deactivated after 20 ms without a message. */
static const pith_vtype_t quick_type = {
    .name = "quick",
    .actor = &counter_actor,
    .idle_ns = 20 * MS,
    .on_activate = on_act,
    .on_deactivate = on_deact,
};

static pith_vref_t vref_of(const pith_vtype_t *t, const char *key)
{
    pith_vref_t v;
    int rc = pith_vref(t, key, strlen(key), &v);
    cr_assert_eq(rc, 0, "pith_vref(%s): %d", key, rc);
    return v;
}

static uint64_t ask_u64(const pith_vref_t *v)
{
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), v, GET, NULL, 0, 5000 * MS, &reply);
    cr_assert_eq(rc, 0, "pith_client_vask: %d (%s)", rc, pith_strerror(rc));
    cr_assert_eq(reply.len, sizeof(uint64_t));
    uint64_t n;
    memcpy(&n, reply.data, sizeof(n));
    return n;
}

static void start(int shards)
{
    cr_assert_eq(pith_vtype_register(&counter_type), 0);
    cr_assert_eq(pith_vtype_register(&quick_type), 0);
    pith_config_t cfg = test_config(shards);
    test_start(&cfg);
}

static pith_vtype_stats_t stats_of(const pith_vtype_t *t)
{
    pith_vtype_stats_t st;
    cr_assert_eq(pith_vtype_stats(t, &st), 0);
    return st;
}

Test(vactor, first_message_activates_once_and_state_lives_on, .timeout = 30)
{
    start(2);
    pith_vref_t v = vref_of(&counter_type, "AAPL");
    uint64_t one = 1;
    for (int i = 0; i < 10; i++)
        cr_assert_eq(pith_vsend(&v, ADD, &one, sizeof(one)), 0);
    cr_assert_eq(ask_u64(&v), 10);
    pith_vactor_info_t info;
    cr_assert_eq(pith_vactor_info(&v, 5000 * MS, &info), 0);
    cr_assert(info.active);
    cr_assert_eq(info.shard, info.dir_shard);
    cr_assert_eq(pith_ref_shard(info.ref), info.shard);
    pith_vtype_stats_t st = stats_of(&counter_type);
    cr_assert_eq(st.activations, 1);
    cr_assert_eq(st.live, 1);
    cr_assert_eq(atomic_load(&activated), 1);
    cr_assert_geq(st.activate_samples, 1);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&deactivated[PITH_VDEACT_SHUTDOWN]), 1);
}

/* ---- a storm of first messages ---- */

#define STORM_KEYS 64

struct storm {
    unsigned rounds;
    test_error_t err;
    _Atomic uint64_t sent[STORM_KEYS]; /* sends accepted, per key */
};

static void *storm_fn(void *arg)
{
    struct storm *s = arg;
    uint64_t one = 1;
    for (unsigned r = 0; r < s->rounds; r++) {
        for (unsigned k = 0; k < STORM_KEYS; k++) {
            char key[16];
            snprintf(key, sizeof(key), "k%u", k);
            pith_vref_t v;
            int rc = pith_vref(&counter_type, key, strlen(key), &v);
            if (rc == 0)
                rc = pith_vsend(&v, ADD, &one, sizeof(one));
            if (rc == 0)
                atomic_fetch_add(&s->sent[k], 1);
            else if (rc != -EAGAIN) /* the mesh pushing back: that send did not happen */
                TEST_NOTE(&s->err, rc);
        }
    }
    return NULL;
}

static void *outside_storm(void *arg)
{
    struct storm *s = arg;
    uint64_t one = 1;
    for (unsigned r = 0; r < s->rounds; r++) {
        for (unsigned k = 0; k < STORM_KEYS; k++) {
            char key[16];
            snprintf(key, sizeof(key), "k%u", k);
            pith_vref_t v;
            int rc = pith_vref(&counter_type, key, strlen(key), &v);
            if (rc == 0)
                rc =
                    pith_client_vsend(pith_client_self(), &v, ADD, &one, sizeof(one), PITH_FOREVER);
            if (rc == 0)
                atomic_fetch_add(&s->sent[k], 1);
            else
                TEST_NOTE(&s->err, rc);
        }
    }
    return NULL;
}

Test(vactor, a_storm_of_first_messages_makes_one_activation_per_key, .timeout = 60)
{
    start(3); /* more shards than CPUs on small machines: interleavings vary more */
    struct storm s = {.rounds = 20};
    pthread_t outside[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&outside[i], NULL, outside_storm, &s), 0);
    for (unsigned sh = 0; sh < 3; sh++)
        cr_assert_eq(pith_call_wait(sh, storm_fn, &s, NULL), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(outside[i], NULL);
    test_assert_no_error(&s.err);
    uint64_t total = 0;
    for (unsigned k = 0; k < STORM_KEYS; k++) {
        char key[16];
        snprintf(key, sizeof(key), "k%u", k);
        pith_vref_t v = vref_of(&counter_type, key);
        /* The shards' sends cross the mesh, the ask a lane: it may overtake the last ones. */
        uint64_t sent = atomic_load(&s.sent[k]), n = 0;
        TEST_WAIT_WITH(n = ask_u64(&v), n >= sent);
        cr_assert_eq(n, sent, "key %s counted %llu of %llu", key, (unsigned long long)n,
                     (unsigned long long)sent);
        total += n;
    }
    cr_assert_geq(total, 2u * 20 * STORM_KEYS, "the outside threads' sends all count");
    cr_assert_eq(stats_of(&counter_type).activations, STORM_KEYS);
    cr_assert_eq(atomic_load(&activated), STORM_KEYS);
    test_stop(NULL);
}

/* ---- order across activations ---- */

/* A sequence per sender: the payload is (sender << 32 | seq). */
static _Atomic uint32_t next_seq[8];

static int seq_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    uint64_t v;
    memcpy(&v, msg->data, sizeof(v));
    uint32_t sender = (uint32_t)(v >> 32), seq = (uint32_t)v;
    if (sender < 8) {
        if (atomic_load(&next_seq[sender]) != seq)
            atomic_fetch_add(&seq_bad, 1);
        atomic_store(&next_seq[sender], seq + 1);
    }
    atomic_fetch_add(&seq_seen, 1);
    if (seq % 7 == 3)
        (void)pith_vactor_deactivate(self); /* many activations, messages waiting in each */
    return 0;
}

/* Two messages a turn: a deactivation asked for in one turn finds messages still waiting. */
static const pith_actor_type_t seq_actor = {
    .name = "seq", .behaviour = seq_behaviour, .turn_msgs = 2};
static const pith_vtype_t seq_type = {
    .name = "seq",
    .actor = &seq_actor,
    .on_activate = on_act,
    .on_deactivate = on_deact,
};

struct seq_sender {
    uint32_t id, n;
    test_error_t *err;
};

static void *seq_send_fn(void *arg)
{
    struct seq_sender *q = arg;
    pith_vref_t v;
    int rc = pith_vref(&seq_type, "book", 4, &v);
    for (uint32_t i = 0; i < q->n && rc == 0; i++) {
        uint64_t x = (uint64_t)q->id << 32 | i;
        rc = pith_vsend(&v, SEQ, &x, sizeof(x));
        if (rc == -EAGAIN)
            break; /* the mesh's bound: the test sends few enough not to meet it */
    }
    if (rc != 0)
        TEST_NOTE(q->err, rc);
    return NULL;
}

static void *seq_outside_fn(void *arg)
{
    struct seq_sender *q = arg;
    pith_vref_t v;
    int rc = pith_vref(&seq_type, "book", 4, &v);
    for (uint32_t i = 0; i < q->n && rc == 0; i++) {
        uint64_t x = (uint64_t)q->id << 32 | i;
        rc = pith_client_vsend(pith_client_self(), &v, SEQ, &x, sizeof(x), PITH_FOREVER);
    }
    if (rc != 0)
        TEST_NOTE(q->err, rc);
    return NULL;
}

Test(vactor, each_senders_order_holds_across_activations, .timeout = 60)
{
    cr_assert_eq(pith_vtype_register(&seq_type), 0);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    test_error_t err = {0};
    uint32_t per = (uint32_t)scaled(500) < 50 ? 50 : (uint32_t)scaled(500);
    struct seq_sender snd[4] = {{0, per, &err}, {1, per, &err}, {2, per, &err}, {3, per, &err}};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, seq_outside_fn, &snd[3]), 0);
    for (unsigned r = 0; r < 3; r++)
        cr_assert_eq(pith_call_wait(r % 2, seq_send_fn, &snd[r], NULL), 0);
    pthread_join(t, NULL);
    test_assert_no_error(&err);
    TEST_WAIT_FOR(atomic_load(&seq_seen) == 4u * per);
    cr_assert_eq(atomic_load(&seq_bad), 0, "%llu messages out of order",
                 (unsigned long long)atomic_load(&seq_bad));
    pith_vtype_stats_t st = stats_of(&seq_type);
    cr_assert_gt(st.activations, 10, "only %llu activations", (unsigned long long)st.activations);
    cr_assert_eq(st.deactivations[PITH_VDEACT_SELF] + st.live, st.activations);
    test_stop(NULL);
}

/* ---- idleness ---- */

Test(vactor, an_idle_activation_goes_and_the_next_message_brings_a_new_one, .timeout = 30)
{
    start(2);
    pith_vref_t v = vref_of(&quick_type, "idle");
    uint64_t five = 5;
    cr_assert_eq(pith_vsend(&v, ADD, &five, sizeof(five)), 0);
    cr_assert_eq(ask_u64(&v), 5);
    uint64_t t0 = pith_now_ns();
    TEST_WAIT_FOR(stats_of(&quick_type).live == 0);
    uint64_t took = pith_now_ns() - t0;
    cr_assert_geq(took, 10 * MS, "gone after %llu ns (idle time 20 ms)", (unsigned long long)took);
    cr_assert_eq(atomic_load(&deactivated[PITH_VDEACT_IDLE]), 1);
    cr_assert_eq(ask_u64(&v), 0, "a new activation starts from fresh state");
    cr_assert_eq(stats_of(&quick_type).activations, 2);
    test_stop(NULL);
}

Test(vactor, a_busy_activation_is_not_idle, .timeout = 30)
{
    start(1);
    pith_vref_t v = vref_of(&quick_type, "busy");
    uint64_t one = 1;
    uint64_t end = pith_now_ns() + 200 * MS;
    uint64_t sent = 0;
    while (pith_now_ns() < end) {
        cr_assert_eq(
            pith_client_vsend(pith_client_self(), &v, ADD, &one, sizeof(one), PITH_FOREVER), 0);
        sent++;
    }
    cr_assert_eq(ask_u64(&v), sent, "one activation took every message");
    cr_assert_eq(stats_of(&quick_type).activations, 1);
    test_stop(NULL);
}

/* ---- activation failure ---- */

Test(vactor, a_failed_activation_fails_its_ask_and_the_next_message_retries, .timeout = 30)
{
    start(2);
    pith_vref_t v = vref_of(&counter_type, "flaky");
    atomic_store(&fail_next, 1);
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), &v, GET, NULL, 0, 5000 * MS, &reply);
    cr_assert_eq(rc, -EIO, "the ask fails with on_activate's error, got %d", rc);
    cr_assert_eq(ask_u64(&v), 0);
    pith_vtype_stats_t st = stats_of(&counter_type);
    cr_assert_eq(st.activate_failed, 1);
    cr_assert_eq(st.activations, 1);
    cr_assert_eq(atomic_load(&deactivated[PITH_VDEACT_ENDED]), 0,
                 "on_deactivate does not run for an activation that never began");
    test_stop(NULL);
}

/* ---- keys ---- */

Test(vactor, keys_with_one_hash_are_two_actors, .timeout = 30)
{
    start(2);
    pith_vref_t a = vref_of(&counter_type, "alpha"), b = vref_of(&counter_type, "beta");
    b.hash = a.hash; /* a forced collision: the directory compares keys as bytes */
    uint64_t x = 3, y = 4;
    cr_assert_eq(pith_vsend(&a, ADD, &x, sizeof(x)), 0);
    cr_assert_eq(pith_vsend(&b, ADD, &y, sizeof(y)), 0);
    cr_assert_eq(ask_u64(&a), 3);
    cr_assert_eq(ask_u64(&b), 4);
    pith_vtype_stats_t st = stats_of(&counter_type);
    cr_assert_eq(st.activations, 2);
    cr_assert_gt(st.collisions, 0);
    /* One key of two types: two actors. */
    pith_vref_t q = vref_of(&quick_type, "alpha");
    cr_assert_eq(ask_u64(&q), 0);
    test_stop(NULL);
}

Test(vactor, keys_up_to_the_limit_and_the_api_errors, .timeout = 30)
{
    start(2);
    unsigned char key[PITH_VKEY_MAX + 1];
    memset(key, 0xAB, sizeof(key));
    pith_vref_t v;
    cr_assert_eq(pith_vref(&counter_type, key, PITH_VKEY_MAX, &v), 0);
    uint64_t two = 2;
    cr_assert_eq(pith_vsend(&v, ADD, &two, sizeof(two)), 0);
    cr_assert_eq(ask_u64(&v), 2);
    cr_assert_eq(pith_vref(&counter_type, key, PITH_VKEY_MAX + 1, &v), -EINVAL);
    cr_assert_eq(pith_vref(&counter_type, NULL, 1, &v), -EINVAL);
    cr_assert_eq(pith_vref(&counter_type, "", 0, &v), 0, "the empty key is a key");
    static const pith_vtype_t unregistered = {.name = "nobody", .actor = &counter_actor};
    cr_assert_eq(pith_vref(&unregistered, "x", 1, &v), -ENOENT);
    cr_assert_eq(pith_vtype_register(&counter_type), 0, "registering again is a no-op");
    static const pith_vtype_t same_name = {.name = "counter", .actor = &counter_actor};
    cr_assert_eq(pith_vtype_register(&same_name), -EEXIST);
    static const pith_vtype_t odd_place = {
        .name = "odd-place", .actor = &counter_actor, .placement = (pith_placement_t)99};
    cr_assert_eq(pith_vtype_register(&odd_place), -EINVAL);
    static const pith_vtype_t no_fn = {
        .name = "no-fn", .actor = &counter_actor, .placement = PITH_PLACE_FN};
    cr_assert_eq(pith_vtype_register(&no_fn), -EINVAL, "PITH_PLACE_FN needs place()");
    static const pith_vtype_t no_actor = {.name = "none"};
    cr_assert_eq(pith_vtype_register(&no_actor), -EINVAL);
    static const pith_vtype_t no_name = {.actor = &counter_actor};
    cr_assert_eq(pith_vtype_register(&no_name), -EINVAL);
    pith_vref_t forged = vref_of(&counter_type, "f");
    forged.tid = 60;
    cr_assert_eq(pith_vsend(&forged, ADD, &two, sizeof(two)), -EINVAL);
    cr_assert_eq(pith_vsend(NULL, ADD, &two, sizeof(two)), -EINVAL);
    pith_vref_t ok = vref_of(&counter_type, "ok");
    cr_assert_eq(pith_vsend(&ok, PITH_MSG_RESERVED, NULL, 0), -EINVAL);
    cr_assert_eq(pith_vsend(&ok, ADD, NULL, 8), -EINVAL);
    cr_assert_eq(pith_vask(&ok, GET, NULL, 0, MS, NULL, NULL, NULL), -EPERM,
                 "pith_vask is for shards");
    cr_assert_eq(pith_vactor_deactivate(NULL), -EINVAL);
    cr_assert_null(pith_vactor_key(NULL, NULL));
    test_stop(NULL);
}

/* ---- the cap per shard ---- */

static const pith_vtype_t capped_type = {
    .name = "capped",
    .actor = &counter_actor,
    .max_per_shard = 2,
    .on_activate = on_act,
    .on_deactivate = on_deact,
};

Test(vactor, a_shard_at_its_cap_lets_the_least_recently_used_go, .timeout = 30)
{
    cr_assert_eq(pith_vtype_register(&capped_type), 0);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_vref_t a = vref_of(&capped_type, "a"), b = vref_of(&capped_type, "b"),
                c = vref_of(&capped_type, "c");
    uint64_t one = 1;
    cr_assert_eq(pith_vsend(&a, ADD, &one, sizeof(one)), 0);
    cr_assert_eq(ask_u64(&b), 0);
    cr_assert_eq(ask_u64(&a), 1); /* a used after b: b is the least recently used */
    cr_assert_eq(ask_u64(&c), 0);
    pith_vtype_stats_t st = stats_of(&capped_type);
    cr_assert_eq(st.live, 2);
    cr_assert_eq(st.deactivations[PITH_VDEACT_CAP], 1);
    cr_assert_eq(ask_u64(&a), 1, "a stayed");
    test_stop(NULL);
}

/* ---- many come and go ---- */

static void *many_fn(void *arg)
{
    uint64_t *n = arg;
    uint64_t one = 1;
    for (uint64_t i = 0; i < *n; i++) {
        char key[24];
        int kl = snprintf(key, sizeof(key), "m%llu", (unsigned long long)i);
        pith_vref_t v;
        if (pith_vref(&counter_type, key, (size_t)kl, &v) != 0 ||
            pith_vsend(&v, ADD, &one, sizeof(one)) != 0 || pith_vsend(&v, OFF, NULL, 0) != 0) {
            *n = i;
            break;
        }
    }
    return NULL;
}

Test(vactor, many_activations_come_and_go_and_their_memory_with_them, .timeout = 120)
{
    start(1);
    pith_vref_t warm = vref_of(&counter_type, "warm");
    cr_assert_eq(ask_u64(&warm), 0);
    pith_mem_stats_t before, after;
    test_sync_all();
    cr_assert_eq(pith_mem_stats(0, &before), 0);
    uint64_t want = scaled(100000), n = want;
    cr_assert_eq(pith_call_wait(0, many_fn, &n, NULL), 0);
    cr_assert_eq(n, want, "sent to %llu keys of %llu", (unsigned long long)n,
                 (unsigned long long)want);
    TEST_WAIT_FOR(stats_of(&counter_type).live == 1);
    pith_vtype_stats_t st = stats_of(&counter_type);
    cr_assert_eq(st.activations, want + 1);
    cr_assert_eq(st.deactivations[PITH_VDEACT_SELF], want);
    /* The actor table gives its emptied chunks back 10 ms after they emptied. */
    TEST_WAIT_FOR(pith_mem_stats(0, &after) == 0 && after.in_use <= before.in_use + (64u << 10));
    test_stop(NULL);
}

/* ---- pre-warming ---- */

Test(vactor, prewarm_activates_ahead_and_counts_used_and_wasted, .timeout = 30)
{
    start(2);
    pith_vref_t a = vref_of(&counter_type, "warm-a"), q = vref_of(&quick_type, "warm-q");
    cr_assert_eq(pith_vactor_prewarm(&a), 0);
    cr_assert_eq(pith_vactor_prewarm(&q), 0);
    TEST_WAIT_FOR(atomic_load(&prewarmed) == 2);
    cr_assert_eq(pith_vactor_prewarm(&a), 0, "pre-warming an active key does nothing");
    cr_assert_eq(ask_u64(&a), 0);
    pith_vtype_stats_t st = stats_of(&counter_type);
    cr_assert_eq(st.activations, 1);
    cr_assert_eq(st.prewarms, 1);
    cr_assert_eq(st.prewarm_used, 1);
    /* The quick one idles out without a message: wasted. */
    TEST_WAIT_FOR(stats_of(&quick_type).prewarm_wasted == 1);
    cr_assert_eq(stats_of(&quick_type).prewarm_used, 0);
    test_stop(NULL);
}

static uint32_t two_related(const void *key, uint32_t len, pith_vref_t *out, uint32_t max)
{
    uint32_t n = 0;
    for (char c = 'a'; c <= 'b' && n < max; c++) {
        char k[64];
        if (len + 2 > sizeof(k))
            break;
        memcpy(k, key, len);
        k[len] = '-';
        k[len + 1] = c;
        if (pith_vref(&counter_type, k, len + 2, &out[n]) == 0)
            n++;
    }
    return n;
}

static const pith_vtype_t book_type = {
    .name = "book",
    .actor = &counter_actor,
    .on_activate = on_act,
    .related = two_related,
};

Test(vactor, a_message_prewarms_the_related_keys, .timeout = 30)
{
    cr_assert_eq(pith_vtype_register(&book_type), 0);
    start(2);
    pith_vref_t b = vref_of(&book_type, "AAPL");
    uint64_t one = 1;
    cr_assert_eq(pith_vsend(&b, ADD, &one, sizeof(one)), 0);
    TEST_WAIT_FOR(stats_of(&counter_type).live == 2);
    pith_vtype_stats_t st = stats_of(&counter_type);
    cr_assert_eq(st.prewarms, 2);
    pith_vref_t ra = vref_of(&counter_type, "AAPL-a");
    cr_assert_eq(ask_u64(&ra), 0);
    cr_assert_eq(stats_of(&counter_type).prewarm_used, 1);
    cr_assert_eq(stats_of(&book_type).prewarms, 0, "the message's own activation is not one");
    test_stop(NULL);
}

/* ---- listing ---- */

Test(vactor, listing_pages_through_every_live_activation, .timeout = 60)
{
    start(2);
    enum { N = 1000 };
    static bool seen[N];
    uint64_t one = 1;
    for (unsigned i = 0; i < N; i++) {
        char key[16];
        snprintf(key, sizeof(key), "L%u", i);
        pith_vref_t v = vref_of(&counter_type, key);
        cr_assert_eq(
            pith_client_vsend(pith_client_self(), &v, ADD, &one, sizeof(one), PITH_FOREVER), 0);
    }
    TEST_WAIT_FOR(stats_of(&counter_type).live == N);
    unsigned found = 0, calls = 0;
    for (unsigned sh = 0; sh < 2; sh++) {
        uint64_t cursor = 0;
        do {
            pith_vref_t page[37];
            int n = pith_vactor_list(&counter_type, sh, &cursor, page, 37);
            cr_assert_geq(n, 0, "pith_vactor_list: %d", n);
            cr_assert_leq(n, 37);
            calls++;
            for (int j = 0; j < n; j++) {
                unsigned i;
                cr_assert_eq(page[j].type, &counter_type);
                cr_assert_eq(sscanf((const char *)page[j].key, "L%u", &i), 1);
                cr_assert_lt(i, N);
                if (!seen[i]) {
                    seen[i] = true;
                    found++;
                }
                /* A listed ref is a ref: it reaches the same activation. */
                if (j == 0)
                    cr_assert_eq(ask_u64(&page[j]), 1);
            }
        } while (cursor != 0 && calls < 10000);
    }
    cr_assert_eq(found, N, "listed %u of %u", found, N);
    pith_vref_t none;
    uint64_t cur = 0;
    cr_assert_eq(pith_vactor_list(&counter_type, 2, &cur, &none, 1), -EINVAL);
    test_stop(NULL);
}

/* ---- memory pressure ---- */

struct big {
    char bytes[256 << 10];
};

static const pith_actor_type_t big_actor = {
    .name = "big",
    .behaviour = counter_behaviour,
    .state_size = sizeof(struct big),
};

static const pith_vtype_t big_type = {
    .name = "big",
    .actor = &big_actor,
    .flags = PITH_VTYPE_SHED,
    .on_deactivate = on_deact,
};

Test(vactor, memory_pressure_lets_idle_activations_go_before_allocations_fail, .timeout = 60)
{
    cr_assert_eq(pith_vtype_register(&big_type), 0);
    pith_config_t cfg = test_config(1);
    cfg.mem.cap = 64u << 20;
    test_start(&cfg);
    unsigned n = 1000; /* 250 MiB of states against a cap of 64 MiB */
    for (unsigned i = 0; i < n; i++) {
        char key[16];
        snprintf(key, sizeof(key), "B%u", i);
        pith_vref_t v = vref_of(&big_type, key);
        pith_msg_t reply;
        int rc = pith_client_vask(pith_client_self(), &v, GET, NULL, 0, 5000 * MS, &reply);
        cr_assert_eq(rc, 0, "key %u: %d (%s)", i, rc, pith_strerror(rc));
    }
    pith_vtype_stats_t st = stats_of(&big_type);
    cr_assert_eq(st.activations, n);
    cr_assert_gt(st.deactivations[PITH_VDEACT_PRESSURE], 0);
    cr_assert_eq(st.activate_failed, 0);
    cr_assert_lt(st.live * sizeof(struct big), cfg.mem.cap);
    pith_mem_stats_t ms;
    cr_assert_eq(pith_mem_stats(0, &ms), 0);
    cr_assert_eq(ms.cap_refusals, 0, "%llu allocations refused",
                 (unsigned long long)ms.cap_refusals);
    test_stop(NULL);
}

/* ---- stateless workers ---- */

static _Atomic uint64_t work_done;
static _Atomic pith_ref_t workers_seen[8];

static int work_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    pith_ref_t me = pith_self(self);
    for (int i = 0; i < 8; i++) {
        pith_ref_t none = PITH_REF_NONE;
        if (atomic_load(&workers_seen[i]) == me ||
            atomic_compare_exchange_strong(&workers_seen[i], &none, me))
            break;
    }
    atomic_fetch_add(&work_done, 1);
    return 0;
}

static const pith_actor_type_t work_actor = {.name = "work", .behaviour = work_behaviour};
static const pith_vtype_t pool_type = {
    .name = "pool", .actor = &work_actor, .workers = 4, .idle_ns = 20 * MS};

static void *send_work(void *arg)
{
    int *rc = arg;
    pith_vref_t v;
    *rc = pith_vref(&pool_type, "any", 3, &v);
    for (int i = 0; i < 100 && *rc == 0; i++)
        *rc = pith_vsend(&v, ADD, NULL, 0);
    return NULL;
}

Test(vactor, stateless_workers_share_messages_in_a_pool_per_shard, .timeout = 30)
{
    cr_assert_eq(pith_vtype_register(&pool_type), 0);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    int rc = 1;
    cr_assert_eq(pith_call_wait(1, send_work, &rc, NULL), 0);
    cr_assert_eq(rc, 0, "pith_vsend to a worker type: %d", rc);
    TEST_WAIT_FOR(atomic_load(&work_done) == 100);
    unsigned n = 0;
    for (int i = 0; i < 8; i++) {
        pith_ref_t r = atomic_load(&workers_seen[i]);
        if (r != PITH_REF_NONE) {
            n++;
            cr_assert_eq(pith_ref_shard(r), 1, "a worker on the sender's shard");
        }
    }
    cr_assert_eq(n, 4, "%u workers took the messages (a pool of 4)", n);
    pith_vtype_stats_t st = stats_of(&pool_type);
    cr_assert_eq(st.activations, 4);
    pith_vref_t v = vref_of(&pool_type, "any");
    pith_vactor_info_t info;
    cr_assert_eq(pith_vactor_info(&v, MS * 1000, &info), -EINVAL, "workers have no entry");
    TEST_WAIT_FOR(stats_of(&pool_type).live == 0);
    cr_assert_eq(stats_of(&pool_type).deactivations[PITH_VDEACT_IDLE], 4);
    /* From outside: the key's directory shard takes it. */
    cr_assert_eq(pith_client_vsend(pith_client_self(), &v, ADD, NULL, 0, PITH_FOREVER), 0);
    TEST_WAIT_FOR(atomic_load(&work_done) == 101);
    cr_assert_eq(pith_vactor_prewarm(&v), 0);
    TEST_WAIT_FOR(stats_of(&pool_type).live >= 1);
    test_stop(NULL);
}

/* ---- activations that finish later ---- */

static _Atomic pith_ref_t loading;

static int later_act(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    (void)state;
    (void)key;
    (void)len;
    (void)reason;
    atomic_store(&loading, pith_self(self));
    return PITH_VACT_LATER;
}

static const pith_vtype_t later_type = {
    .name = "later", .actor = &counter_actor, .on_activate = later_act};

struct finish {
    pith_ref_t ref;
    int err, rc;
};

static void *finish_fn(void *arg)
{
    struct finish *f = arg;
    f->rc = pith_vactor_activated(f->ref, f->err);
    return NULL;
}

static void finish_activation(int err)
{
    TEST_WAIT_FOR(atomic_load(&loading) != PITH_REF_NONE);
    pith_ref_t ref = atomic_exchange(&loading, PITH_REF_NONE);
    struct finish f = {ref, err, 12345};
    cr_assert_eq(pith_call_wait(pith_ref_shard(ref), finish_fn, &f, NULL), 0);
    cr_assert_eq(f.rc, 0, "pith_vactor_activated: %d", f.rc);
    f.rc = 12345;
    cr_assert_eq(pith_call_wait(pith_ref_shard(ref), finish_fn, &f, NULL), 0);
    cr_assert_eq(f.rc, -EINVAL, "a second pith_vactor_activated: %d", f.rc);
}

struct asker {
    const pith_vref_t *v;
    int rc;
    uint64_t n;
};

static void *ask_thread(void *arg)
{
    struct asker *q = arg;
    pith_msg_t reply;
    q->rc = pith_client_vask(pith_client_self(), q->v, GET, NULL, 0, 10000 * MS, &reply);
    if (q->rc == 0)
        memcpy(&q->n, reply.data, sizeof(q->n));
    return NULL;
}

Test(vactor, an_activation_finishes_later_and_what_waited_follows_in_order, .timeout = 60)
{
    cr_assert_eq(pith_vtype_register(&later_type), 0);
    start(2);
    pith_vref_t v = vref_of(&later_type, "loads");
    uint64_t one = 1;
    for (int i = 0; i < 10; i++)
        cr_assert_eq(
            pith_client_vsend(pith_client_self(), &v, ADD, &one, sizeof(one), PITH_FOREVER), 0);
    /* The ask comes from another thread (another sender): its order after the adds holds only
     * once the adds are at the directory, waiting for the activation. */
    TEST_WAIT_FOR(stats_of(&later_type).messages == 10);
    struct asker q = {&v, 12345, 0};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, ask_thread, &q), 0);
    TEST_WAIT_FOR(stats_of(&later_type).messages == 11);
    TEST_WAIT_FOR(atomic_load(&loading) != PITH_REF_NONE);
    pith_vtype_stats_t st = stats_of(&later_type);
    cr_assert_eq(st.live, 1);
    cr_assert_eq(st.activations, 0, "not begun until it is finished");
    finish_activation(0);
    pthread_join(t, NULL);
    cr_assert_eq(q.rc, 0);
    cr_assert_eq(q.n, 10, "the ask came after the ten adds, and saw them: %llu",
                 (unsigned long long)q.n);
    cr_assert_eq(stats_of(&later_type).activations, 1);

    /* A load that fails: what waited fails with its error; the next message tries again. */
    pith_vref_t w = vref_of(&later_type, "fails");
    struct asker f = {&w, 12345, 0};
    cr_assert_eq(pthread_create(&t, NULL, ask_thread, &f), 0);
    finish_activation(-EIO);
    pthread_join(t, NULL);
    cr_assert_eq(f.rc, -EIO, "the waiting ask ends with the load's error, got %d", f.rc);
    cr_assert_eq(stats_of(&later_type).activate_failed, 1);
    struct asker g = {&w, 12345, 0};
    cr_assert_eq(pthread_create(&t, NULL, ask_thread, &g), 0);
    finish_activation(0);
    pthread_join(t, NULL);
    cr_assert_eq(g.rc, 0);
    cr_assert_eq(stats_of(&later_type).activations, 2);
    test_stop(NULL);
}

/* ---- a profile per activation ---- */

Test(vactor, one_activation_moves_to_hot_memory_with_its_state, .timeout = 30)
{
    start(1);
    pith_vref_t v = vref_of(&counter_type, "hot-key"), w = vref_of(&counter_type, "cold-key");
    uint64_t seven = 7, one = 1;
    cr_assert_eq(pith_vsend(&v, ADD, &seven, sizeof(seven)), 0);
    cr_assert_eq(pith_vsend(&w, ADD, &one, sizeof(one)), 0);
    pith_mem_stats_t before;
    test_sync_all();
    cr_assert_eq(pith_mem_stats(0, &before), 0);
    cr_assert_eq(pith_vsend(&v, HOT, NULL, 0), 0);
    TEST_WAIT_FOR(stats_of(&counter_type).profile_moves == 1);
    cr_assert_eq(ask_u64(&v), 7, "the state moved with it");
    cr_assert_eq(ask_u64(&w), 1, "the other activation is untouched");
    cr_assert_eq(pith_vsend(&v, ADD, &one, sizeof(one)), 0);
    cr_assert_eq(ask_u64(&v), 8, "it goes on from the new place");
    pith_mem_stats_t after;
    cr_assert_eq(pith_mem_stats(0, &after), 0);
    cr_assert_gt(after.profile_reserved[PITH_MEM_HOT], before.profile_reserved[PITH_MEM_HOT],
                 "a hot extent was made for it");
    pith_vactor_info_t info;
    cr_assert_eq(pith_vactor_info(&v, 1000 * MS, &info), 0);
    cr_assert(info.active);
    cr_assert_eq(stats_of(&counter_type).profile_failed, 0);
    test_stop(NULL);
}

/* ---- what an ending activation sends to its own key is bounded ---- */

static _Atomic uint64_t flood_ok, flood_full, flood_seen;
static const pith_vtype_t flood_type;

static int flood_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    if (msg->type == OFF)
        (void)pith_vactor_deactivate(self);
    else if (msg->type == ADD)
        atomic_fetch_add(&flood_seen, 1);
    return 0;
}

/* Sends 5,000 messages to its own key as it goes: they wait for the next activation, up to
 * the shard's bound, and the rest are refused at once. */
static void flood_deact(pith_actor_t *self, void *state, int reason)
{
    (void)state;
    uint32_t len = 0;
    const void *key = pith_vactor_key(self, &len);
    pith_vref_t me;
    if (reason != PITH_VDEACT_SELF || key == NULL || pith_vref(&flood_type, key, len, &me) != 0)
        return;
    for (int i = 0; i < 5000; i++) {
        int rc = pith_vsend(&me, ADD, NULL, 0);
        atomic_fetch_add(rc == 0 ? &flood_ok : &flood_full, 1);
    }
}

static const pith_actor_type_t flood_actor = {.name = "flood", .behaviour = flood_behaviour};
static const pith_vtype_t flood_type = {
    .name = "flood", .actor = &flood_actor, .on_deactivate = flood_deact};

Test(vactor, what_an_ending_activation_sends_to_its_key_is_bounded, .timeout = 30)
{
    cr_assert_eq(pith_vtype_register(&flood_type), 0);
    start(1);
    pith_vref_t v = vref_of(&flood_type, "f");
    cr_assert_eq(pith_vsend(&v, OFF, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&flood_ok) + atomic_load(&flood_full) == 5000);
    cr_assert_eq(atomic_load(&flood_ok), 4096, "held: %llu",
                 (unsigned long long)atomic_load(&flood_ok));
    cr_assert_eq(atomic_load(&flood_full), 5000 - 4096);
    TEST_WAIT_FOR(atomic_load(&flood_seen) == 4096);
    cr_assert_eq(stats_of(&flood_type).activations, 2, "the held ones made one activation");
    test_stop(NULL);
}

/* ---- a client's small messages ride their lane whole ---- */

enum { LANE_SEQ = 40, LANE_SELF = 41 };

static _Atomic uint64_t lane_next, lane_bad, lane_got, lane_self;

/* LANE_SEQ carries a sequence number, then bytes that follow from it; from 100 on, every tenth
 * sends the activation a LANE_SELF, a turn of its own between the client's messages. */
static int lane_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    if (msg->type == LANE_SELF) {
        atomic_fetch_add(&lane_self, 1);
        return 0;
    }
    uint64_t v;
    if (msg->type != LANE_SEQ || msg->len < sizeof(v))
        return 0;
    memcpy(&v, msg->data, sizeof(v));
    if (v != atomic_load(&lane_next))
        atomic_fetch_add(&lane_bad, 1);
    const unsigned char *b = msg->data;
    for (uint32_t i = sizeof(v); i < msg->len; i++)
        if (b[i] != (unsigned char)(v + i))
            atomic_fetch_add(&lane_bad, 1);
    atomic_store(&lane_next, v + 1);
    atomic_fetch_add(&lane_got, 1);
    if (v >= 100 && v % 10 == 0 && pith_send(pith_self(self), LANE_SELF, NULL, 0) != 0)
        atomic_fetch_add(&lane_bad, 1);
    return 0;
}

static void lane_activated(void *arg)
{
    (void)pith_vactor_activated((pith_ref_t)(uintptr_t)arg, 0);
}

/* Key "later" finishes its activation 50 ms on: its messages meanwhile wait in its mailbox. */
static int lane_activate(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    (void)state;
    (void)reason;
    if (len != 5 || memcmp(key, "later", 5) != 0)
        return 0;
    pith_ref_t ref = pith_self(self);
    return pith_timer_add(50 * MS, 0, lane_activated, (void *)(uintptr_t)ref, NULL) == 0
               ? PITH_VACT_LATER
               : -ENOMEM;
}

static const pith_actor_type_t lane_actor = {.name = "vactor.lane", .behaviour = lane_behaviour};
static const pith_vtype_t lane_vtype = {
    .name = "vactor.lane", .actor = &lane_actor, .on_activate = lane_activate};

static void *lane_barrier(void *arg)
{
    return arg;
}

static void lane_send(pith_client_t *c, const pith_vref_t *v, uint64_t seq, uint32_t len)
{
    unsigned char buf[1024];
    memcpy(buf, &seq, sizeof(seq));
    for (uint32_t i = sizeof(seq); i < len; i++)
        buf[i] = (unsigned char)(seq + i);
    cr_assert_eq(pith_client_vsend(c, v, LANE_SEQ, buf, len, 10 * 1000 * MS), 0);
}

/* An idle activation runs a client's message where it lies in the lane: never queued. One that
 * is not idle (its activation finishes later) gets it in its mailbox, behind what was there.
 * Messages too large for half a lane travel by pointer. Through all three, one client's
 * messages arrive in order, whole. */
Test(vactor, a_clients_small_messages_ride_the_lane_whole_and_keep_their_order, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.lane_slots = 16; /* records of up to 512 bytes, head included */
    test_start(&cfg);
    cr_assert_eq(pith_vtype_register(&lane_vtype), 0);
    atomic_store(&lane_next, 0);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_vref_t v;
    cr_assert_eq(pith_vref(&lane_vtype, "lane", 4, &v), 0);
    unsigned dir = pith_vref_shard(&v);
    uint64_t seq = 0;
    /* The first message activates the key (and waits in its mailbox for that). */
    lane_send(c, &v, seq++, 16);
    cr_assert_eq(pith_client_call(c, dir, lane_barrier, NULL, 5000 * MS, NULL), 0);
    /* Then one at a time, each followed by a call through the same lane: the activation is
     * idle whenever a message comes, so each runs as its lane record does, with no turn of its
     * own queued (a queued turn is a task the shard runs besides its lane records). */
    pith_shard_stats_t before, after;
    cr_assert_eq(pith_shard_stats(dir, &before), 0);
    for (int i = 0; i < 100; i++) {
        lane_send(c, &v, seq++, 16);
        cr_assert_eq(pith_client_call(c, dir, lane_barrier, NULL, 5000 * MS, NULL), 0);
    }
    cr_assert_eq(pith_shard_stats(dir, &after), 0);
    uint64_t turns =
        (after.tasks_run - before.tasks_run) - (after.external_in - before.external_in);
    cr_assert_lt(turns, 20u, "%" PRIu64 " tasks besides the lane's records for 100 messages",
                 turns);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(pith_vtype_actor(&lane_vtype), &st), 0);
    cr_assert_eq(st.mailbox_max, 1u, "only the first message, during its activation, waited");
    /* Then in bursts, small and large in turn. */
    const uint64_t n = scaled(20000);
    for (uint64_t i = 0; i < n; i++)
        lane_send(c, &v, seq++, i % 7 == 3 ? 900 : 8 + (uint32_t)(i % 64));
    TEST_WAIT_FOR(atomic_load(&lane_got) == seq);
    cr_assert_eq(atomic_load(&lane_bad), 0u);
    cr_assert_eq(atomic_load(&lane_next), seq);
    /* An activation that finishes later is not idle: what comes meanwhile waits in its
     * mailbox, small and large alike, and is handled in order once it is done. */
    pith_vref_t later;
    cr_assert_eq(pith_vref(&lane_vtype, "later", 5, &later), 0);
    for (int i = 0; i < 200; i++)
        lane_send(c, &later, seq++, i % 5 == 2 ? 700 : 24);
    TEST_WAIT_FOR(atomic_load(&lane_got) == seq);
    cr_assert_eq(atomic_load(&lane_bad), 0u);
    TEST_WAIT_FOR(atomic_load(&lane_self) == (seq + 9) / 10 - 10);
    cr_assert_eq(pith_actor_type_stats(pith_vtype_actor(&lane_vtype), &st), 0);
    cr_assert_geq(st.mailbox_max, 100u, "what came during the activation did not wait for it");
    pith_client_close(c);
    test_stop(NULL);
}
