/* A hostile review of virtual actors off their directory shard (pith/vactor.h): each test here
 * drives one interleaving or input that breaks a guarantee the header makes. Shards record
 * into globals (atomics); only the test thread asserts. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "vtest.h"

#define SEC (1000ull * MS)

enum { SET = 1, GET, HOPTO, PING, SEQ };

struct hst {
    uint64_t n;
    uint64_t handoff; /* written by on_deactivate(PITH_VDEACT_MIGRATED) */
};

struct hreply {
    uint64_t n;
    int32_t shard;
};

static _Atomic uint64_t pings, seqs, handled_on[4];
static _Atomic uint64_t term_calls, term_42;
static _Atomic int hop_rc = 1;
static _Atomic uint64_t seen_handoff = UINT64_MAX;
static _Atomic uint64_t later_ref; /* the last activation whose on_activate said LATER */
static _Atomic uint64_t act_ref;   /* the last activation that began */
static pith_vref_t target;         /* G1's on_deactivate(CAP) sends PING here */
static _Atomic int send_from_g1;

static int h_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct hst *st = state;
    uint64_t v = 0;
    if (msg->len >= sizeof(v))
        memcpy(&v, msg->data, sizeof(v));
    int sh = pith_shard_id();
    if (sh >= 0 && sh < 4)
        atomic_fetch_add(&handled_on[sh], 1);
    switch (msg->type) {
    case SET:
        st->n = v;
        (void)pith_reply(msg, SET, NULL, 0);
        break;
    case GET: {
        struct hreply r = {.n = st->n, .shard = sh};
        (void)pith_reply(msg, GET, &r, sizeof(r));
        break;
    }
    case HOPTO:
        atomic_store(&hop_rc, pith_vactor_migrate(self, (unsigned)v));
        (void)pith_reply(msg, HOPTO, NULL, 0);
        break;
    case PING:
        atomic_fetch_add(&pings, 1);
        break;
    case SEQ:
        atomic_fetch_add(&seqs, 1);
        break;
    default:
        break;
    }
    return 0;
}

static void h_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)reason;
    struct hst *st = state;
    /* Any terminate may ask for its owner tag (to free blocks it charged to itself). */
    (void)pith_actor_owner(self);
    atomic_fetch_add(&term_calls, 1);
    if (st->n == 42)
        atomic_fetch_add(&term_42, 1);
}

static const pith_actor_type_t h_actor = {
    .name = "hostile.actor",
    .behaviour = h_behaviour,
    .terminate = h_terminate,
    .state_size = sizeof(struct hst),
    .mailbox_max = 1u << 16,
};

/* A small mailbox that refuses when full (the default policy). */
static const pith_actor_type_t small_actor = {
    .name = "hostile.small",
    .behaviour = h_behaviour,
    .state_size = sizeof(struct hst),
    .mailbox_max = 4,
};

static int on_act(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    (void)state;
    (void)reason;
    atomic_store(&act_ref, pith_self(self));
    /* Keys starting with 'L' finish later (never, unless the test says so). */
    if (len > 0 && ((const char *)key)[0] == 'L') {
        atomic_store(&later_ref, pith_self(self));
        return PITH_VACT_LATER;
    }
    return 0;
}

static void on_deact(pith_actor_t *self, void *state, int reason)
{
    struct hst *st = state;
    uint32_t len = 0;
    const char *key = pith_vactor_key(self, &len);
    if (reason == PITH_VDEACT_MIGRATED)
        st->handoff = 7; /* what the next activation should find */
    if (reason == PITH_VDEACT_CAP && atomic_load(&send_from_g1) && key != NULL && len >= 2 &&
        key[0] == 'g' && key[1] == '1')
        (void)pith_vsend(&target, PING, NULL, 0);
}

static int on_act_handoff(pith_actor_t *self, void *state, const void *key, uint32_t len,
                          int reason)
{
    struct hst *st = state;
    if (reason == PITH_VACT_MIGRATED)
        atomic_store(&seen_handoff, st->handoff);
    return on_act(self, state, key, len, reason);
}

/* ---- placements ---- */

/* Keys starting with 'h' or 'L' on shard 1, others on their directory shard. */
static unsigned place_one(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    (void)sender;
    char c = len > 0 ? ((const char *)key)[0] : 0;
    return (c == 'h' || c == 'L') && shards > 1 ? 1u : UINT32_MAX;
}

/* Shard 1 the first time, shard 2 the second, then the directory shard. */
static _Atomic unsigned place_calls;
static unsigned place_seq(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    (void)key;
    (void)len;
    (void)sender;
    unsigned n = atomic_fetch_add(&place_calls, 1);
    return n == 0 ? 1u : n == 1 && shards > 2 ? 2u : UINT32_MAX;
}

static const pith_vtype_t t_cap = {
    .name = "hostile.cap",
    .actor = &h_actor,
    .on_activate = on_act,
    .on_deactivate = on_deact,
    .max_per_shard = 2,
};
static const pith_vtype_t t_cap1 = {
    .name = "hostile.cap1",
    .actor = &h_actor,
    .on_activate = on_act,
    .max_per_shard = 1,
};
static const pith_vtype_t t_handoff = {
    .name = "hostile.handoff",
    .actor = &h_actor,
    .on_activate = on_act_handoff,
    .on_deactivate = on_deact,
};
static const pith_vtype_t t_lane_hash = {
    .name = "hostile.lane.hash",
    .actor = &small_actor,
    .on_activate = on_act,
};
static const pith_vtype_t t_lane_remote = {
    .name = "hostile.lane.remote",
    .actor = &small_actor,
    .on_activate = on_act,
    .placement = PITH_PLACE_FN,
    .place = place_one,
};
static const pith_vtype_t t_seq = {
    .name = "hostile.seq",
    .actor = &h_actor,
    .on_activate = on_act,
    .placement = PITH_PLACE_FN,
    .place = place_seq,
};

static void start(int shards, unsigned budget)
{
    cr_assert_eq(pith_vtype_register(&t_cap), 0);
    cr_assert_eq(pith_vtype_register(&t_cap1), 0);
    cr_assert_eq(pith_vtype_register(&t_handoff), 0);
    cr_assert_eq(pith_vtype_register(&t_lane_hash), 0);
    cr_assert_eq(pith_vtype_register(&t_lane_remote), 0);
    cr_assert_eq(pith_vtype_register(&t_seq), 0);
    pith_config_t cfg = test_config(shards);
    if (budget != 0)
        cfg.budget = budget;
    test_start(&cfg);
}

static void ask(const pith_vref_t *v, uint32_t type, uint64_t x, pith_msg_t *reply)
{
    int rc = pith_client_vask(pith_client_self(), v, type, &x, sizeof(x), 20 * SEC, reply);
    cr_assert_eq(rc, 0, "ask %u: %d (%s)", type, rc, pith_strerror(rc));
}

static struct hreply get(const pith_vref_t *v)
{
    pith_msg_t reply;
    ask(v, GET, 0, &reply);
    struct hreply r;
    cr_assert_eq(reply.len, sizeof(r));
    memcpy(&r, reply.data, sizeof(r));
    return r;
}

static pith_vactor_info_t info(const pith_vref_t *v)
{
    pith_vactor_info_t in;
    cr_assert_eq(pith_vactor_info(v, 10 * SEC, &in), 0);
    return in;
}

/* One look at the directory: two info() calls in one condition could pair an old "active on
 * shard 1" with the in-between "not active" (whose shard reads 0). */
static bool active_on(const pith_vref_t *v, unsigned shard)
{
    pith_vactor_info_t in = info(v);
    return in.active && in.shard == shard;
}

static pith_vtype_stats_t stats(const pith_vtype_t *t)
{
    pith_vtype_stats_t s;
    cr_assert_eq(pith_vtype_stats(t, &s), 0);
    return s;
}

/* ---- 1. a moved state that lands on its directory shard at the cap ----
 *
 * land() (core/vactor.c) activates the moved state on the directory shard; activate() makes
 * room by evicting the coldest idle activation, whose on_deactivate sends to the moving key:
 * that send activates the key afresh (init's state) in the room a second eviction made, and
 * activate() hands that fresh activation back to land(), which frees the moved state as if it
 * had been copied. The state is gone: not in the activation, not given to terminate, not
 * counted in migrate_failed. */
Test(vactor_hostile, a_state_moved_into_its_directory_shard_at_the_cap_survives, .timeout = 60)
{
    start(2, 0);
    pith_vref_t k = test_vkey_on(&t_cap, "k", 0);
    pith_vref_t g1 = test_vkey_on(&t_cap, "g1x", 0), g2 = test_vkey_on(&t_cap, "g2x", 0);
    target = k;
    pith_msg_t reply;
    ask(&k, SET, 42, &reply);
    ask(&k, HOPTO, 1, &reply);
    cr_assert_eq(atomic_load(&hop_rc), 0);
    TEST_WAIT_FOR(active_on(&k, 1));
    cr_assert_eq(get(&k).n, 42, "the first move keeps the state");
    /* Shard 0 at its cap of 2: g1 the colder. */
    (void)get(&g1);
    (void)get(&g2);
    atomic_store(&send_from_g1, 1);
    atomic_store(&hop_rc, 1);
    ask(&k, HOPTO, 0, &reply); /* back to its directory shard, which is full */
    cr_assert_eq(atomic_load(&hop_rc), 0);
    TEST_WAIT_FOR(active_on(&k, 0));
    TEST_WAIT_FOR(atomic_load(&pings) == 1);
    struct hreply r = get(&k);
    pith_vtype_stats_t s = stats(&t_cap);
    cr_log_info("after the move back: n %llu on shard %d; migrate_failed %llu, terminates of the "
                "moved state %llu\n",
                (unsigned long long)r.n, r.shard, (unsigned long long)s.migrate_failed,
                (unsigned long long)atomic_load(&term_42));
    /* Either the state arrived, or the move is said to have failed and terminate saw it. */
    cr_assert(r.n == 42 || (s.migrate_failed == 1 && atomic_load(&term_42) == 1),
              "the moved state (n = 42) vanished: the activation has n = %llu, migrate_failed "
              "%llu, terminate never saw it",
              (unsigned long long)r.n, (unsigned long long)s.migrate_failed);
    test_stop(NULL);
}

/* ---- 2. an orphaned state's terminate ----
 *
 * A move that cannot land gives the state to the actor type's terminate with a self that
 * names no actor (orphan_end): its actor record points at a static type_rec whose type is
 * NULL, so pith_actor_owner(self) (self->a->rec->type->mem_budget) dereferences NULL. */
struct later_fin {
    pith_ref_t ref;
    _Atomic int rc;
};

static void finish_task(void *arg)
{
    struct later_fin *f = arg;
    atomic_store(&f->rc, pith_vactor_activated(f->ref, 0));
}

Test(vactor_hostile, a_move_that_cannot_land_gives_terminate_a_usable_self, .timeout = 60)
{
    start(2, 0);
    /* Shard 1 at its cap of 1 with a busy activation (finishing later). */
    pith_vref_t b = test_vkey_on(&t_cap1, "Lb", 1);
    cr_assert_eq(pith_client_vsend(pith_client_self(), &b, PING, NULL, 0, 10 * SEC), 0);
    TEST_WAIT_FOR(atomic_load(&later_ref) != 0);
    pith_vref_t a = test_vkey_on(&t_cap1, "a", 0);
    pith_msg_t reply;
    ask(&a, SET, 42, &reply);
    ask(&a, HOPTO, 1, &reply);
    cr_assert_eq(atomic_load(&hop_rc), 0);
    TEST_WAIT_FOR(stats(&t_cap1).migrate_failed == 1);
    cr_assert_eq(atomic_load(&term_42), 1, "terminate ran on the state that could not land");
    struct later_fin f = {.ref = (pith_ref_t)atomic_load(&later_ref), .rc = 1};
    cr_assert_eq(pith_submit(1, finish_task, &f), 0);
    TEST_WAIT_FOR(atomic_load(&f.rc) != 1);
    test_stop(NULL);
}

/* ---- 3. what on_deactivate(PITH_VDEACT_MIGRATED) writes ----
 *
 * pith_vactor_migrate: "on_deactivate runs here with PITH_VDEACT_MIGRATED, the state is copied
 * byte for byte, and on_activate runs there". migrate_task copies the state before it ends
 * the activation (core_end_now runs on_deactivate), so whatever on_deactivate writes to the
 * state to hand it over (a handle let go, a flag) never reaches the next activation. */
Test(vactor_hostile, what_on_deactivate_writes_to_a_moving_state_moves_with_it, .timeout = 60)
{
    start(2, 0);
    pith_vref_t k = test_vkey_on(&t_handoff, "k", 0);
    pith_msg_t reply;
    ask(&k, SET, 1, &reply);
    ask(&k, HOPTO, 1, &reply);
    cr_assert_eq(atomic_load(&hop_rc), 0);
    TEST_WAIT_FOR(atomic_load(&seen_handoff) != UINT64_MAX);
    cr_assert_eq(atomic_load(&seen_handoff), 7,
                 "on_activate(MIGRATED) found handoff %llu: on_deactivate's write was lost",
                 (unsigned long long)atomic_load(&seen_handoff));
    test_stop(NULL);
}

/* ---- 4. a client pushed back, or refused ----
 *
 * pith_client_vsend: a full mailbox pushes the client back while the activation lives on its
 * directory shard (vdeliver parks the lane record); for one on another shard the forward is
 * refused once the mailbox is full, and the client gets a notice. Ten sends to an activation
 * that finishes later (its mailbox holds 4). */
static void lane_case(const pith_vtype_t *t, const char *prefix, unsigned host)
{
    atomic_store(&later_ref, 0);
    atomic_store(&seqs, 0);
    pith_vref_t k = test_vkey_on(t, prefix, 0);
    /* A client of its own: a parked record holds up its lane, not this thread's syncs. */
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    for (uint64_t i = 0; i < 10; i++) {
        int rc = pith_client_vsend(c, &k, SEQ, &i, sizeof(i), 10 * SEC);
        cr_assert_eq(rc, 0, "pith_client_vsend: %d", rc);
    }
    TEST_WAIT_FOR(atomic_load(&later_ref) != 0);
    for (int i = 0; i < 4; i++)
        test_sync_all(); /* whatever was forwarded has arrived */
    struct later_fin f = {.ref = (pith_ref_t)atomic_load(&later_ref), .rc = 1};
    cr_assert_eq(pith_ref_shard(f.ref), host);
    cr_assert_eq(pith_submit(host, finish_task, &f), 0);
    TEST_WAIT_FOR(atomic_load(&f.rc) != 1);
    cr_assert_eq(atomic_load(&f.rc), 0);
    TEST_WAIT_FOR(atomic_load(&seqs) >= 4);
    for (int i = 0; i < 20 && atomic_load(&seqs) < 10; i++)
        test_sync_all();
    /* What was refused came back to the client, each counted (pith_undelivered_t). */
    uint64_t refused = 0;
    pith_msg_t in;
    while (pith_client_receive(c, &in, 0) == 0) {
        if (in.type == PITH_MSG_UNDELIVERED && in.len == sizeof(pith_undelivered_t)) {
            pith_undelivered_t u;
            memcpy(&u, in.data, sizeof(u));
            refused += u.count;
        }
    }
    cr_log_info("%s: %llu of 10 client messages delivered, %llu refused with a notice\n", t->name,
                (unsigned long long)atomic_load(&seqs), (unsigned long long)refused);
    pith_client_close(c);
    /* On its directory shard the client is pushed back and all arrive; elsewhere a full
     * mailbox refuses as any send from another shard (pith_client_vsend says so): nothing is
     * lost without a notice either way. */
    if (host == 0)
        cr_assert_eq(atomic_load(&seqs), 10, "%s: %llu of 10 delivered", t->name,
                     (unsigned long long)atomic_load(&seqs));
    cr_assert_eq(atomic_load(&seqs) + refused, 10, "%s: %llu delivered + %llu refused of 10",
                 t->name, (unsigned long long)atomic_load(&seqs), (unsigned long long)refused);
}

Test(vactor_hostile, a_full_mailbox_pushes_a_client_back_here_and_refuses_with_a_notice_elsewhere,
     .timeout = 60)
{
    start(2, 0);
    lane_case(&t_lane_hash, "Lh", 0);   /* on its directory shard: parked, all 10 arrive */
    lane_case(&t_lane_remote, "Lr", 1); /* on shard 1: 6 refused */
    test_stop(NULL);
}

/* ---- 5. a host's own cache, flushed late ----
 *
 * Directory 0, activation A1 on shard 1, sender: a task of shard 1 (the host itself). Its
 * eighth message asks where the key lives (CMARK through the directory to shard 1, which
 * answers CECHO to itself through its local queue); the next ones wait in the slot. Right
 * behind the CMARK the directory stops A1 (a pith_stop from a task there), so shard 1 says
 * GONE; the directory drains (MARK, ECHO) while CECHO still waits in shard 1's local queue
 * behind other tasks (a budget of one task per loop, and tasks that keep the queue long).
 * Then CECHO names A1: the slot flushes its messages with dfwd_task, which finds A1 gone and,
 * the sender being this shard, gives them back to the directory (give_back, ret_task) after
 * the ECHO. The first re-activates the key (A2, shard 2); the second finds A2's entry
 * R_ACTIVE and takes itself for a lost GONE: drain, ECHO, the entry dropped while A2 lives;
 * the rest activate the key again (A3, shard 0). Two live activations of one key. */
static _Atomic int fill_on;
static _Atomic uint64_t fills;
static pith_vref_t seq_key;
static test_error_t err5;

static void spin_us(unsigned us)
{
    uint64_t t = pith_now_ns();
    while (pith_now_ns() - t < us * 1000ull)
        ;
}

static void filler(void *arg)
{
    (void)arg;
    atomic_fetch_add(&fills, 1);
    if (!atomic_load(&fill_on))
        return;
    spin_us(100);
    int rc = pith_submit((unsigned)pith_shard_id(), filler, NULL);
    if (rc != 0)
        TEST_NOTE(&err5, rc);
}

static void seed_fillers(void *arg)
{
    unsigned n = (unsigned)(uintptr_t)arg;
    for (unsigned i = 0; i < n; i++) {
        int rc = pith_submit((unsigned)pith_shard_id(), filler, NULL);
        if (rc != 0)
            TEST_NOTE(&err5, rc);
    }
}

static void stop_on_dir(void *arg)
{
    (void)arg;
    int rc = pith_stop((pith_ref_t)atomic_load(&act_ref));
    if (rc != 0)
        TEST_NOTE(&err5, rc);
}

static void host_sender(void *arg)
{
    (void)arg;
    for (uint64_t i = 0; i < 12; i++) {
        int rc = pith_vsend(&seq_key, SEQ, &i, sizeof(i));
        if (rc != 0)
            TEST_NOTE(&err5, rc);
    }
    /* Behind the CMARK on the ring to the directory. */
    int rc = pith_submit(0, stop_on_dir, NULL);
    if (rc != 0)
        TEST_NOTE(&err5, rc);
}

Test(vactor_hostile, a_host_s_cache_answered_late_makes_no_second_activation, .timeout = 60)
{
    start(3, 1);
    seq_key = test_vkey_on(&t_seq, "s", 0);
    (void)get(&seq_key); /* A1 on shard 1 */
    cr_assert_eq(atomic_load(&place_calls), 1);
    cr_assert_eq(pith_ref_shard((pith_ref_t)atomic_load(&act_ref)), 1);
    TEST_WAIT_FOR(info(&seq_key).ref == (pith_ref_t)atomic_load(&act_ref));
    atomic_store(&fill_on, 1);
    /* 500 tasks of 100 us each ahead of anything shard 1 queues for itself: 50 ms. */
    cr_assert_eq(pith_submit(1, seed_fillers, (void *)(uintptr_t)500), 0);
    TEST_WAIT_FOR_ON(0, atomic_load(&fills) >= 500);
    cr_assert_eq(pith_submit(1, host_sender, NULL), 0);
    /* Wait for the flushed messages to find a home, then let shard 1 go. */
    uint64_t t = pith_now_ns();
    while (pith_now_ns() - t < 2 * SEC && atomic_load(&place_calls) < 3)
        test_sync_shard(0);
    atomic_store(&fill_on, 0);
    for (int i = 0; i < 4; i++)
        test_sync_all();
    test_assert_no_error(&err5);
    pith_vtype_stats_t s = stats(&t_seq);
    cr_log_info("placements %u, live %llu, SEQs handled %llu (on 0: %llu, 1: %llu, 2: %llu), "
                "cached %llu, stale %llu, returned %llu\n",
                atomic_load(&place_calls), (unsigned long long)s.live,
                (unsigned long long)atomic_load(&seqs), (unsigned long long)handled_on[0],
                (unsigned long long)handled_on[1], (unsigned long long)handled_on[2],
                (unsigned long long)s.cached, (unsigned long long)s.stale,
                (unsigned long long)s.returned);
    cr_assert_leq(s.live, 1, "%llu live activations of one key", (unsigned long long)s.live);
    test_stop(NULL);
}
