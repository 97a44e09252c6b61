/* Flow control that loses nothing: every queue is bounded, and every message is delivered or
 * its sender hears of it (pith/actor.h). Floods from clients, from other shards and within a
 * shard, under each overflow policy, balance exactly: delivered + reported = accepted. */
#include <inttypes.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "util.h"

#define SEC (1000ull * MS)

enum { F_DATA = 1, F_GO = 2, F_HOLD = 3 };

/* ---- a client feeding actors: the trading shape ---- */

static _Atomic uint64_t fed;

static int slow_counter(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type != F_DATA)
        return 0;
    atomic_fetch_add_explicit(&fed, 1, memory_order_relaxed);
    /* Slower than the feeder, so that mailboxes fill. */
    for (uint64_t t0 = pith_now_ns(); pith_now_ns() - t0 < 200;)
        ;
    return 0;
}

static const pith_actor_type_t feed_type = {.name = "flow.feed", .behaviour = slow_counter};

Test(flow, a_thread_feeding_100_actors_loses_nothing_and_hears_every_pushback, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    atomic_store(&fed, 0);
    pith_client_t *c = pith_client_self();
    cr_assert_not_null(c);
    pith_ref_t a[100];
    for (unsigned i = 0; i < 100; i++)
        cr_assert_eq(pith_client_spawn(c, i % 2, &feed_type, NULL, 5 * SEC, &a[i]), 0);
    const uint64_t n = scaled(1000000);
    /* Plain pith_send: a full lane says -EAGAIN and the message is not taken. */
    uint64_t accepted = 0, refused = 0;
    for (uint64_t i = 0; i < n; i++) {
        int rc = pith_send(a[i % 100], F_DATA, &i, sizeof(i));
        if (rc == 0)
            accepted++;
        else if (rc == -EAGAIN)
            refused++;
        else
            cr_assert_fail("pith_send: %d", rc);
    }
    /* Waiting for room: every one is taken. */
    for (uint64_t i = 0; i < n; i++)
        cr_assert_eq(pith_client_send(c, a[i % 100], F_DATA, &i, sizeof(i), 30 * SEC), 0);
    accepted += n;
    TEST_WAIT_FOR(atomic_load(&fed) >= accepted);
    cr_assert_eq(atomic_load(&fed), accepted, "delivered %" PRIu64 " of %" PRIu64 " accepted",
                 atomic_load(&fed), accepted);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&feed_type, &st), 0);
    cr_assert_eq(st.rejected, 0u, "no mailbox refused a client's message");
    cr_assert_eq(st.dropped, 0u);
    cr_assert_leq(st.mailbox_max, 4096u, "the default bound held");
    cr_log_info("%" PRIu64 " refused at once, deepest mailbox %" PRIu64, refused, st.mailbox_max);
    test_stop(NULL);
}

/* ---- the outside lanes are bounded and allocate nothing ---- */

static _Atomic int hold_gate, holding;
static _Atomic uint64_t ran;

static void hold(void *arg)
{
    (void)arg;
    atomic_store(&holding, 1);
    while (!atomic_load(&hold_gate))
        ;
}

static void count_run(void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran, 1);
}

Test(flow, outside_submits_are_bounded_by_the_lane_and_allocate_nothing, .timeout = 60)
{
    pith_config_t cfg = test_config(1);
    cfg.lane_slots = 256;
    cfg.stall_ns = 0;
    test_start(&cfg);
    atomic_store(&hold_gate, 0);
    atomic_store(&holding, 0);
    atomic_store(&ran, 0);
    pith_mem_stats_t before, after;
    cr_assert_eq(pith_mem_stats(PITH_MEM_OUTSIDE, &before), 0);
    cr_assert_eq(pith_submit(0, hold, NULL), 0);
    while (!atomic_load(&holding))
        sched_yield();
    uint64_t accepted = 0;
    int rc;
    for (uint64_t i = 0; i < 10000000 && (rc = pith_submit(0, count_run, NULL)) == 0; i++)
        accepted++;
    cr_assert_eq(rc, -EAGAIN, "a full lane pushes back");
    /* 256 slots, less the one still running and, at most, the one of the last call before,
     * which the shard may not have given back yet (it does so at the end of a drain). */
    cr_assert(accepted >= 254 && accepted <= 255, "%" PRIu64 " submits took a lane of 256",
              accepted);
    cr_assert_eq(pith_mem_stats(PITH_MEM_OUTSIDE, &after), 0);
    cr_assert_eq(after.allocs, before.allocs, "nothing was allocated per submit");
    atomic_store(&hold_gate, 1);
    TEST_WAIT_FOR(atomic_load(&ran) == accepted);
    test_stop(NULL);
}

Test(flow, small_sends_from_outside_allocate_nothing, .timeout = 60)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    atomic_store(&fed, 0);
    pith_client_t *c = pith_client_self();
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 0, &feed_type, NULL, 5 * SEC, &a), 0);
    pith_mem_stats_t before, after;
    cr_assert_eq(pith_mem_stats(PITH_MEM_OUTSIDE, &before), 0);
    uint64_t sent = 0;
    for (uint64_t i = 0; i < 10000; i++)
        sent += pith_client_send(c, a, F_DATA, &i, sizeof(i), 10 * SEC) == 0;
    cr_assert_eq(pith_mem_stats(PITH_MEM_OUTSIDE, &after), 0);
    cr_assert_eq(after.allocs, before.allocs, "an outside send allocated");
    TEST_WAIT_FOR(atomic_load(&fed) == sent);
    test_stop(NULL);
}

/* ---- floods between actors, under each policy ---- */

#define BOUND 16
#define BURST 64

static struct {
    uint64_t total;      /* messages to get accepted */
    pith_ref_t receiver; /* R */
    pith_ref_t sender;   /* S */
    _Atomic uint64_t accepted, sync_refused, delivered, noticed, notices, summaries;
    _Atomic uint64_t bad_notices, room_waits;
    _Atomic int32_t expect_reason;
    _Atomic int failed;
    _Atomic int gate_up, holding_sender; /* the folding test's two holds */
} fl;

static int receiver(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type != F_DATA)
        return 0;
    atomic_fetch_add(&fl.delivered, 1);
    for (uint64_t t0 = pith_now_ns(); pith_now_ns() - t0 < 1000;)
        ;
    return 0;
}

static const pith_actor_type_t recv_reject = {.name = "flow.reject",
                                              .behaviour = receiver,
                                              .mailbox_max = BOUND,
                                              .overflow = PITH_OVERFLOW_REJECT};
static const pith_actor_type_t recv_drop = {.name = "flow.drop",
                                            .behaviour = receiver,
                                            .mailbox_max = BOUND,
                                            .overflow = PITH_OVERFLOW_DROP_OLDEST};
static const pith_actor_type_t recv_mute = {.name = "flow.mute",
                                            .behaviour = receiver,
                                            .mailbox_max = BOUND,
                                            .overflow = PITH_OVERFLOW_MUTE_SENDER};

static void kick_sender(void *arg)
{
    (void)arg;
    atomic_fetch_add(&fl.room_waits, 1);
    /* The sender's own mailbox may be full of notices: then wait for it too. */
    int rc = pith_send(fl.sender, F_GO, NULL, 0);
    if (rc == -EAGAIN)
        rc = pith_when_room(fl.sender, kick_sender, NULL);
    if (rc != 0)
        atomic_store(&fl.failed, 1);
}

static void note_notice(const pith_undelivered_t *u)
{
    atomic_fetch_add(&fl.noticed, u->count);
    atomic_fetch_add(&fl.notices, 1);
    if (u->count > 1 || u->to == PITH_REF_NONE)
        atomic_fetch_add(&fl.summaries, 1);
    else if (u->to != fl.receiver || u->type != F_DATA ||
             u->reason != atomic_load(&fl.expect_reason))
        atomic_fetch_add(&fl.bad_notices, 1);
}

/* S: a burst per GO; a full mailbox or mesh (-EAGAIN) waits for room with pith_when_room. */
static int sender(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type == PITH_MSG_UNDELIVERED) {
        note_notice(msg->data);
        return 0;
    }
    if (msg->type != F_GO)
        return 0;
    uint64_t done = atomic_load(&fl.accepted);
    for (unsigned i = 0; i < BURST && done < fl.total; i++) {
        int rc = pith_send(fl.receiver, F_DATA, &done, sizeof(done));
        if (rc == -EAGAIN) {
            atomic_fetch_add(&fl.sync_refused, 1);
            atomic_store(&fl.accepted, done);
            return pith_when_room(fl.receiver, kick_sender, NULL);
        }
        if (rc != 0)
            return rc;
        done++;
    }
    atomic_store(&fl.accepted, done);
    if (done < fl.total) {
        int rc = pith_send(pith_self(self), F_GO, NULL, 0);
        return rc == -EAGAIN ? pith_when_room(pith_self(self), kick_sender, NULL) : rc;
    }
    return 0;
}

static const pith_actor_type_t sender_type = {.name = "flow.sender", .behaviour = sender};

struct flood_setup {
    const pith_actor_type_t *rtype;
    unsigned rshard, sshard;
    int err;
};

static void *flood_spawn(void *arg)
{
    struct flood_setup *f = arg;
    f->err = pith_spawn(f->rtype, NULL, &fl.receiver);
    return NULL;
}

static void *flood_spawn_sender(void *arg)
{
    struct flood_setup *f = arg;
    f->err = pith_spawn(&sender_type, NULL, &fl.sender);
    if (f->err == 0)
        f->err = pith_send(fl.sender, F_GO, NULL, 0);
    return NULL;
}

/* Runs a flood of `total` messages from S on sshard to R (rtype) on rshard and checks that it
 * balances: delivered + reported undelivered = accepted. */
static void flood_between_actors(const pith_actor_type_t *rtype, unsigned rshard, unsigned sshard,
                                 int32_t reason)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    memset(&fl, 0, sizeof(fl));
    fl.total = scaled(200000);
    atomic_store(&fl.expect_reason, reason);
    struct flood_setup f = {.rtype = rtype, .rshard = rshard, .sshard = sshard};
    cr_assert_eq(pith_call_wait(rshard, flood_spawn, &f, NULL), 0);
    cr_assert_eq(f.err, 0);
    cr_assert_eq(pith_call_wait(sshard, flood_spawn_sender, &f, NULL), 0);
    cr_assert_eq(f.err, 0);
    uint64_t deadline = test_wait_deadline();
    while (!(atomic_load(&fl.accepted) == fl.total &&
             atomic_load(&fl.delivered) + atomic_load(&fl.noticed) >= fl.total) &&
           pith_now_ns() < deadline)
        test_sync_all();
    cr_assert(atomic_load(&fl.accepted) == fl.total &&
                  atomic_load(&fl.delivered) + atomic_load(&fl.noticed) >= fl.total,
              "the flood stalled: %" PRIu64 " of %" PRIu64 " accepted, %" PRIu64
              " delivered, %" PRIu64 " reported, %" PRIu64 " refused at once, %" PRIu64
              " room waits",
              atomic_load(&fl.accepted), fl.total, atomic_load(&fl.delivered),
              atomic_load(&fl.noticed), atomic_load(&fl.sync_refused), atomic_load(&fl.room_waits));
    cr_assert_eq(atomic_load(&fl.failed), 0);
    cr_assert_eq(atomic_load(&fl.delivered) + atomic_load(&fl.noticed), fl.total,
                 "delivered %" PRIu64 " + reported %" PRIu64 " != accepted %" PRIu64,
                 atomic_load(&fl.delivered), atomic_load(&fl.noticed), fl.total);
    cr_assert_eq(atomic_load(&fl.bad_notices), 0, "a notice with the wrong fields");
    pith_actor_type_stats_t rs, ss;
    cr_assert_eq(pith_actor_type_stats(rtype, &rs), 0);
    cr_assert_eq(pith_actor_type_stats(&sender_type, &ss), 0);
    uint64_t cap = rtype->overflow == PITH_OVERFLOW_MUTE_SENDER ? 8 * BOUND : BOUND;
    cr_assert_leq(rs.mailbox_max, cap, "the receiver's mailbox stayed bounded");
    cr_assert_leq(ss.mailbox_max, 2 * 4096u, "notices stayed within twice the sender's bound");
    cr_log_info("%s, R on %u, S on %u: %" PRIu64 " delivered, %" PRIu64 " reported in %" PRIu64
                " notices (%" PRIu64 " summaries), %" PRIu64 " refused at once, %" PRIu64
                " room waits",
                rtype->name, rshard, sshard, atomic_load(&fl.delivered), atomic_load(&fl.noticed),
                atomic_load(&fl.notices), atomic_load(&fl.summaries), atomic_load(&fl.sync_refused),
                atomic_load(&fl.room_waits));
    test_stop(NULL);
}

Test(flow, reject_across_shards_balances_and_tells_the_sender, .timeout = 120)
{
    flood_between_actors(&recv_reject, 1, 0, -EAGAIN);
    cr_assert_gt(atomic_load(&fl.noticed), 0u, "the flood never filled the mailbox");
}

Test(flow, drop_oldest_across_shards_balances_and_tells_the_sender, .timeout = 120)
{
    flood_between_actors(&recv_drop, 1, 0, -ENOBUFS);
    cr_assert_gt(atomic_load(&fl.noticed), 0u, "the flood never filled the mailbox");
}

Test(flow, mute_sender_across_shards_balances, .timeout = 120)
{
    flood_between_actors(&recv_mute, 1, 0, -EAGAIN);
}

Test(flow, reject_within_a_shard_refuses_at_once_and_waits_for_room, .timeout = 120)
{
    flood_between_actors(&recv_reject, 0, 0, -EAGAIN);
    cr_assert_eq(atomic_load(&fl.noticed), 0u, "same shard: every refusal is synchronous");
    cr_assert_gt(atomic_load(&fl.sync_refused), 0u);
    cr_assert_gt(atomic_load(&fl.room_waits), 0u, "pith_when_room called the sender back");
}

Test(flow, drop_oldest_within_a_shard_balances_and_tells_the_sender, .timeout = 120)
{
    flood_between_actors(&recv_drop, 0, 0, -ENOBUFS);
    cr_assert_gt(atomic_load(&fl.noticed), 0u);
}

Test(flow, mute_sender_within_a_shard_balances, .timeout = 120)
{
    flood_between_actors(&recv_mute, 0, 0, -EAGAIN);
}

/* ---- a task's messages come back to the pith_on_undelivered handler ---- */

static _Atomic uint64_t handled;
static _Atomic int32_t handled_reason;
static _Atomic uint32_t handled_type;
static _Atomic int handled_shard;

static _Atomic int handled_bad_ctx;

static void on_undelivered(const pith_undelivered_t *u, void *ctx)
{
    if (ctx != &handled)
        atomic_store(&handled_bad_ctx, 1);
    atomic_fetch_add(&handled, u->count);
    atomic_store(&handled_reason, u->reason);
    atomic_store(&handled_type, u->type);
    atomic_store(&handled_shard, pith_shard_id());
}

static struct {
    pith_ref_t dead;
    int rc;
} tk;

static void *spawn_and_stop(void *arg)
{
    (void)arg;
    tk.rc = pith_spawn(&recv_reject, NULL, &tk.dead);
    if (tk.rc == 0)
        tk.rc = pith_stop(tk.dead);
    return NULL;
}

static void task_sends_to_the_dead(void *arg)
{
    (void)arg;
    for (uint32_t i = 0; i < 5; i++)
        if (pith_send(tk.dead, 77, &i, sizeof(i)) != 0)
            tk.rc = -1;
}

Test(flow, a_tasks_undelivered_messages_reach_the_handler_on_its_shard, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    atomic_store(&handled, 0);
    pith_on_undelivered(on_undelivered, &handled);
    cr_assert_eq(pith_call_wait(1, spawn_and_stop, NULL, NULL), 0);
    cr_assert_eq(tk.rc, 0);
    cr_assert_eq(pith_submit(0, task_sends_to_the_dead, NULL), 0);
    TEST_WAIT_FOR(atomic_load(&handled) == 5);
    cr_assert_eq(tk.rc, 0, "the sends were accepted");
    cr_assert_eq(atomic_load(&handled_bad_ctx), 0, "the handler got its context");
    cr_assert_eq(atomic_load(&handled_reason), -ESRCH);
    cr_assert_eq(atomic_load(&handled_type), 77u);
    cr_assert_eq(atomic_load(&handled_shard), 0, "on the shard whose task sent them");
    /* Without a handler they are counted. */
    pith_on_undelivered(NULL, NULL);
    cr_assert_eq(pith_submit(0, task_sends_to_the_dead, NULL), 0);
    pith_core_stats_t cst;
    TEST_WAIT_FOR(pith_core_stats(0, &cst) == 0 && cst.undelivered_unhandled == 5);
    cr_assert_eq(cst.undelivered_tasks, 10u);
    cr_assert_eq(atomic_load(&handled), 5u);
    test_stop(NULL);
}

/* ---- asks that are refused fail at once ---- */

static struct {
    pith_ref_t target;
    unsigned n;
    _Atomic uint64_t replies, refused, timeouts, other;
} ak;

static int replier(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    for (uint64_t t0 = pith_now_ns(); pith_now_ns() - t0 < 2000;)
        ;
    return msg->req != 0 ? pith_reply(msg, 1, NULL, 0) : 0;
}

static const pith_actor_type_t replier_type = {
    .name = "flow.replier", .behaviour = replier, .mailbox_max = 4};

static int asker(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type == F_GO) {
        for (unsigned i = 0; i < ak.n; i++) {
            int rc = pith_ask(ak.target, 1, NULL, 0, 60 * SEC, NULL, NULL, NULL);
            if (rc != 0)
                atomic_fetch_add(&ak.other, 1);
        }
    } else if (msg->type == PITH_MSG_UNDELIVERED) {
        const pith_undelivered_t *u = msg->data;
        if (msg->req != 0 && u->req == msg->req && u->reason == -EAGAIN)
            atomic_fetch_add(&ak.refused, 1);
        else
            atomic_fetch_add(&ak.other, 1);
    } else if (msg->type == PITH_MSG_TIMEOUT) {
        atomic_fetch_add(&ak.timeouts, 1);
    } else if (msg->req != 0) {
        atomic_fetch_add(&ak.replies, 1);
    }
    return 0;
}

static const pith_actor_type_t asker_type = {.name = "flow.asker", .behaviour = asker};

Test(flow, an_ask_refused_by_a_full_mailbox_fails_at_once_with_its_reason, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    memset(&ak, 0, sizeof(ak));
    ak.n = 200;
    pith_client_t *c = pith_client_self();
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 1, &replier_type, NULL, 5 * SEC, &ak.target), 0);
    cr_assert_eq(pith_client_spawn(c, 0, &asker_type, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_client_send(c, a, F_GO, NULL, 0, 5 * SEC), 0);
    /* With 60 s timeouts, only replies and refusals can end these asks within the test. */
    TEST_WAIT_FOR(atomic_load(&ak.replies) + atomic_load(&ak.refused) + atomic_load(&ak.other) >=
                  ak.n);
    cr_assert_eq(atomic_load(&ak.other), 0u);
    cr_assert_eq(atomic_load(&ak.timeouts), 0u);
    cr_assert_gt(atomic_load(&ak.refused), 0u, "the mailbox of 4 never refused a request");
    cr_assert_eq(atomic_load(&ak.replies) + atomic_load(&ak.refused), ak.n);
    test_stop(NULL);
}

/* ---- waiting for room ---- */

static _Atomic int fired;

static void room_fired(void *arg)
{
    atomic_store(&fired, (int)(intptr_t)arg);
}

static struct {
    pith_ref_t r;
    int first_refusal_at, when_rc, fired_inside;
} wr;

static void *fill_and_wait(void *arg)
{
    (void)arg;
    memset(&wr, 0, sizeof(wr));
    if (pith_spawn(&recv_reject, NULL, &wr.r) != 0)
        return NULL;
    wr.first_refusal_at = -1;
    for (int i = 0; i < 100; i++) {
        if (pith_send(wr.r, F_DATA, &i, sizeof(i)) == -EAGAIN) {
            wr.first_refusal_at = i;
            break;
        }
    }
    wr.when_rc = pith_when_room(wr.r, room_fired, (void *)(intptr_t)1);
    wr.fired_inside = atomic_load(&fired);
    return NULL;
}

Test(flow, when_room_calls_back_once_a_local_mailbox_drains, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    atomic_store(&fired, 0);
    atomic_store(&fl.delivered, 0);
    cr_assert_eq(pith_call_wait(0, fill_and_wait, NULL, NULL), 0);
    cr_assert_eq(wr.first_refusal_at, BOUND, "the bound refused the next send at once");
    cr_assert_eq(wr.when_rc, 0);
    cr_assert_eq(wr.fired_inside, 0, "not called back while the mailbox is full");
    TEST_WAIT_FOR(atomic_load(&fired) == 1);
    cr_assert_geq(atomic_load(&fl.delivered), BOUND / 2, "called back after the drain");
    test_stop(NULL);
}

static _Atomic int gate;

static int gated(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    while (!atomic_load(&gate))
        ;
    return 0;
}

static const pith_actor_type_t gated_type = {
    .name = "flow.gated", .behaviour = gated, .mailbox_max = 4};

static pith_ref_t gated_ref;

static void wait_for_gated(void *arg)
{
    (void)arg;
    if (pith_when_room(gated_ref, room_fired, (void *)(intptr_t)2) != 0)
        atomic_store(&fired, -1);
}

Test(flow, when_room_waits_for_an_actor_on_another_shard, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = 0;
    test_start(&cfg);
    atomic_store(&fired, 0);
    atomic_store(&gate, 0);
    pith_client_t *c = pith_client_self();
    cr_assert_eq(pith_client_spawn(c, 1, &gated_type, NULL, 5 * SEC, &gated_ref), 0);
    /* One message holds shard 1 in the behaviour, four fill the mailbox behind it. */
    for (int i = 0; i < 5; i++)
        cr_assert_eq(pith_client_send(c, gated_ref, F_DATA, &i, sizeof(i), 5 * SEC), 0);
    cr_assert_eq(pith_submit(0, wait_for_gated, NULL), 0);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&fired), 0, "called back before shard 1 could drain");
    atomic_store(&gate, 1);
    TEST_WAIT_FOR(atomic_load(&fired) != 0);
    cr_assert_eq(atomic_load(&fired), 2);
    test_stop(NULL);
}

static struct {
    uint64_t accepted;
    int last_rc, when_rc, fired_inside;
} sr;

static void flood_shard_1(void *arg)
{
    (void)arg;
    sr.accepted = 0;
    while ((sr.last_rc = pith_submit(1, count_run, NULL)) == 0)
        sr.accepted++;
    sr.when_rc = pith_when_shard_room(1, room_fired, (void *)(intptr_t)3);
    sr.fired_inside = atomic_load(&fired);
}

Test(flow, when_shard_room_calls_back_once_the_mesh_drains, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = 0;
    cfg.ring_batches = 4;
    cfg.backlog_batches = 4;
    test_start(&cfg);
    atomic_store(&fired, 0);
    atomic_store(&ran, 0);
    atomic_store(&holding, 0);
    atomic_store(&hold_gate, 0);
    cr_assert_eq(pith_submit(1, hold, NULL), 0);
    while (!atomic_load(&holding))
        sched_yield();
    cr_assert_eq(pith_submit(0, flood_shard_1, NULL), 0);
    test_sync_shard(0);
    cr_assert_eq(sr.last_rc, -EAGAIN);
    cr_assert_eq(sr.when_rc, 0);
    cr_assert_eq(sr.fired_inside, 0);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&fired), 0, "called back while shard 1 was held");
    atomic_store(&hold_gate, 1);
    TEST_WAIT_FOR(atomic_load(&fired) == 3);
    TEST_WAIT_FOR(atomic_load(&ran) == sr.accepted);
    test_stop(NULL);
}

/* ---- what an actor leaves in its mailbox when it ends comes back ---- */

static int stop_on_first(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    atomic_fetch_add(&fl.delivered, 1);
    return pith_stop(pith_self(self));
}

static const pith_actor_type_t stop_first_type = {.name = "flow.stop_first",
                                                  .behaviour = stop_on_first};

static int burst10(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type == PITH_MSG_UNDELIVERED) {
        const pith_undelivered_t *u = msg->data;
        if (u->reason == -ECANCELED && u->to == fl.receiver)
            atomic_fetch_add(&fl.noticed, u->count);
        else
            atomic_fetch_add(&fl.bad_notices, 1);
        return 0;
    }
    for (uint64_t i = 0; i < 10; i++)
        if (pith_send(fl.receiver, F_DATA, &i, sizeof(i)) != 0)
            atomic_store(&fl.failed, 1);
    return 0;
}

static const pith_actor_type_t burst_type = {.name = "flow.burst10", .behaviour = burst10};

Test(flow, messages_left_in_an_ending_actors_mailbox_come_back_ecanceled, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    memset(&fl, 0, sizeof(fl));
    pith_client_t *c = pith_client_self();
    pith_ref_t s;
    cr_assert_eq(pith_client_spawn(c, 1, &stop_first_type, NULL, 5 * SEC, &fl.receiver), 0);
    cr_assert_eq(pith_client_spawn(c, 0, &burst_type, NULL, 5 * SEC, &s), 0);
    cr_assert_eq(pith_client_send(c, s, F_GO, NULL, 0, 5 * SEC), 0);
    TEST_WAIT_FOR(atomic_load(&fl.delivered) + atomic_load(&fl.noticed) == 10);
    cr_assert_eq(atomic_load(&fl.failed), 0);
    cr_assert_eq(atomic_load(&fl.bad_notices), 0);
    cr_assert_eq(atomic_load(&fl.delivered), 1u);
    cr_assert_eq(atomic_load(&fl.noticed), 9u);
    test_stop(NULL);
}

/* ---- notices fold when the sender's own mailbox is full ---- */

static int fold_sender(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type == PITH_MSG_UNDELIVERED) {
        note_notice(msg->data);
        return 0;
    }
    if (msg->type == F_HOLD) {
        /* Holds this shard until shard 1 has made every notice and published them (two more
         * of its loop iterations: the one that made them ends by publishing its batches):
         * then they all come in one drain, past twice this mailbox's bound, whatever the
         * machine's speed. Shard 1 makes none before this hold begins (gate_shard_1). */
        atomic_store(&fl.holding_sender, 1);
        pith_core_stats_t cst;
        pith_shard_stats_t sst;
        uint64_t deadline = pith_now_ns() + 10 * SEC;
        while (pith_core_stats(1, &cst) == 0 && cst.undelivered < fl.total &&
               pith_now_ns() < deadline)
            ;
        uint64_t loops = pith_shard_stats(1, &sst) == 0 ? sst.loops : 0;
        while (pith_shard_stats(1, &sst) == 0 && sst.loops < loops + 2 && pith_now_ns() < deadline)
            ;
        return 0;
    }
    for (uint64_t i = 0; i < fl.total; i++)
        if (pith_send(fl.receiver, F_DATA, &i, sizeof(i)) != 0)
            atomic_store(&fl.failed, 1);
    /* A timer, not a send to itself: its turn then comes after this shard has published the
     * batch (a send to itself would run before, within the same run of local work). */
    return pith_actor_timer(self, 1000, 0, F_HOLD, NULL, 0, NULL);
}

static const pith_actor_type_t fold_type = {
    .name = "flow.fold", .behaviour = fold_sender, .mailbox_max = 4};

/* Holds shard 1 until the sender's hold has begun, so that no notice reaches shard 0 early, in
 * pieces small enough to be taken one by one (under TSan a timer of 1 us can be late enough). */
static void gate_shard_1(void *arg)
{
    (void)arg;
    atomic_store(&fl.gate_up, 1);
    uint64_t deadline = pith_now_ns() + 10 * SEC;
    while (!atomic_load(&fl.holding_sender) && pith_now_ns() < deadline)
        ;
}

Test(flow, notices_past_twice_the_senders_bound_fold_into_an_exact_summary, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    memset(&fl, 0, sizeof(fl));
    fl.total = 50;
    atomic_store(&fl.expect_reason, -ESRCH);
    pith_client_t *c = pith_client_self();
    pith_ref_t s;
    cr_assert_eq(pith_client_spawn(c, 1, &recv_reject, NULL, 5 * SEC, &fl.receiver), 0);
    cr_assert_eq(pith_stop(fl.receiver), 0);
    test_sync_shard(1);
    cr_assert_eq(pith_client_spawn(c, 0, &fold_type, NULL, 5 * SEC, &s), 0);
    cr_assert_eq(pith_submit(1, gate_shard_1, NULL), 0);
    TEST_WAIT_FOR(atomic_load(&fl.gate_up));
    cr_assert_eq(pith_client_send(c, s, F_GO, NULL, 0, 5 * SEC), 0);
    TEST_WAIT_FOR(atomic_load(&fl.noticed) >= fl.total);
    cr_assert_eq(atomic_load(&fl.noticed), fl.total, "every message accounted for once");
    cr_assert_eq(atomic_load(&fl.bad_notices), 0);
    cr_assert_geq(atomic_load(&fl.summaries), 1u, "notices past 2 x 4 were folded");
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&fold_type, &st), 0);
    cr_assert_leq(st.mailbox_max, 8u, "the sender's mailbox stayed within twice its bound");
    test_stop(NULL);
}

/* ---- tags the engine reserves cannot be forged ---- */

static struct {
    int send, buf, ask, timer;
    pith_ref_t self;
} rt;

static int forger(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    rt.send = pith_send(pith_self(self), PITH_MSG_DOWN, NULL, 0);
    rt.ask = pith_ask(pith_self(self), PITH_MSG_TIMEOUT, NULL, 0, SEC, NULL, NULL, NULL);
    rt.timer = pith_actor_timer(self, MS, 0, PITH_MSG_RESERVED + 0x10, NULL, 0, NULL);
    void *data;
    pith_buf_t *b = pith_buf_new(8, &data);
    rt.buf = b != NULL ? pith_send_buf(pith_self(self), PITH_MSG_UNDELIVERED, b) : -ENOMEM;
    pith_buf_release(b);
    return 0;
}

static const pith_actor_type_t forger_type = {.name = "flow.forger", .behaviour = forger};

Test(flow, reserved_tags_are_refused_with_einval, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    memset(&rt, 1, sizeof(rt));
    pith_client_t *c = pith_client_self();
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 0, &forger_type, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_client_send(c, a, 1, NULL, 0, 5 * SEC), 0);
    test_sync_shard(0);
    cr_assert_eq(rt.send, -EINVAL);
    cr_assert_eq(rt.ask, -EINVAL);
    cr_assert_eq(rt.timer, -EINVAL);
    cr_assert_eq(rt.buf, -EINVAL);
    cr_assert_eq(pith_send(a, PITH_MSG_DOWN, NULL, 0), -EINVAL, "from outside too");
    test_stop(NULL);
}

/* ---- room callbacks still waiting when the engine stops are released, not leaked ---- */

/* Holds its shard until the engine begins to stop, then 100 ms more: past the stop's drain. */
static void hold_past_the_drain(void *arg)
{
    (void)arg;
    atomic_store(&holding, 1);
    pith_timer_id_t id;
    while (pith_timer_add(SEC, 0, count_run, NULL, &id) == 0)
        pith_timer_cancel(id);
    for (uint64_t t0 = pith_now_ns(); pith_now_ns() - t0 < 100 * MS;)
        ;
}

static struct {
    pith_ref_t target;
    int when_rc;
} rs;

static int rs_spawn_rc;

static void *spawn_target(void *arg)
{
    (void)arg;
    rs_spawn_rc = pith_spawn(&recv_reject, NULL, &rs.target);
    return NULL;
}

static void flood_then_wait_for_room(void *arg)
{
    (void)arg;
    while (pith_submit(1, count_run, NULL) == 0)
        ;
    /* The mesh to shard 1 is full: the request waits on this shard for it to drain. */
    rs.when_rc = pith_when_room(rs.target, room_fired, (void *)(intptr_t)4);
}

Test(flow, room_callbacks_waiting_at_stop_are_released, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = 0;
    cfg.ring_batches = 4;
    cfg.backlog_batches = 4;
    cfg.drain_ns = 20 * MS;
    test_start(&cfg);
    atomic_store(&fired, 0);
    atomic_store(&holding, 0);
    cr_assert_eq(pith_call_wait(1, spawn_target, NULL, NULL), 0);
    cr_assert_eq(rs_spawn_rc, 0);
    cr_assert_eq(pith_submit(1, hold_past_the_drain, NULL), 0);
    while (!atomic_load(&holding))
        sched_yield();
    cr_assert_eq(pith_submit(0, flood_then_wait_for_room, NULL), 0);
    test_sync_shard(0);
    cr_assert_eq(rs.when_rc, 0);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(atomic_load(&fired), 0, "it never had room");
    cr_assert_geq(rep.released_tasks, 1u);
    cr_assert_eq(rep.mem_in_use, 0u, "%" PRIu64 " bytes of the shards' heaps were left held",
                 rep.mem_in_use);
}

/* ---- producers that go away with full lanes cannot get around the bound ---- */

/* Keeps its mailbox of one full with its own message: a client's records wait in their lanes. */
static int self_feeder(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    (void)pith_send(pith_self(self), F_GO, NULL, 0);
    return 0;
}

static const pith_actor_type_t self_feeder_type = {
    .name = "flow.self_feeder", .behaviour = self_feeder, .mailbox_max = 1, .turn_msgs = 1};

Test(flow, clients_that_close_with_full_lanes_push_back_new_ones, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    cfg.lane_slots = 16;
    cfg.stall_ns = 0;
    cfg.drain_ns = 10 * MS;
    test_start(&cfg);
    pith_client_t *own = pith_client_self();
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(own, 1, &self_feeder_type, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_client_send(own, a, F_GO, NULL, 0, 5 * SEC), 0);
    /* Each client fills a lane to shard 1 and closes: its records stay (they would still
     * run), its lane is left behind. */
    int refused_at = -1;
    for (int k = 0; k < 200 && refused_at < 0; k++) {
        pith_client_t *c = pith_client_open(NULL);
        cr_assert_not_null(c);
        uint64_t i = 0;
        int rc = pith_client_send(c, a, F_DATA, &i, sizeof(i), 0);
        if (rc == -EAGAIN)
            refused_at = k;
        else
            cr_assert_eq(rc, 0);
        while (rc == 0)
            rc = pith_client_send(c, a, F_DATA, &i, sizeof(i), 0);
        pith_client_close(c);
    }
    cr_assert_eq(refused_at, 64, "the first refusal came after %d lanes left behind (-1: none)",
                 refused_at);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_geq(rep.released_tasks, 64u * 15, "the stop released what the lanes held");
}
