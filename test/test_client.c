/* Clients (pith/client.h): a thread outside the engine with a ref, an inbox, and blocking ask,
 * spawn and call; its lifetime across thread exits and engine stops. */
#include <pthread.h>
#include <inttypes.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SEC (1000ull * MS)

enum { T_DATA = 1, T_ECHO = 2, T_TELL = 3, T_SLOW = 4, T_QUIET = 5 };

static _Atomic uint64_t delivered;

/* Counts T_DATA; answers T_ECHO with the same bytes; T_TELL: sends "hi" to the sender. */
static int echo(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    switch (msg->type) {
    case T_DATA:
        atomic_fetch_add(&delivered, 1);
        return 0;
    case T_ECHO:
        return pith_reply(msg, T_ECHO, msg->data, msg->len);
    case T_TELL:
        return pith_send(msg->from, T_TELL, "hi", 2);
    default:
        return 0;
    }
}

static const pith_actor_type_t echo_type = {.name = "client.echo", .behaviour = echo};

static int failing_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    (void)state;
    (void)arg;
    return -EPERM;
}

static const pith_actor_type_t failing_type = {
    .name = "client.failing", .behaviour = echo, .init = failing_init};

static void *shard_of_call(void *arg)
{
    return (void *)((uintptr_t)arg + (uintptr_t)pith_shard_id());
}

Test(client, main_spawns_asks_and_receives_without_semaphores, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c, "pith_client_open: errno %d", errno);
    pith_ref_t me = pith_client_ref(c);
    cr_assert_eq(pith_ref_shard(me), PITH_CLIENT_SHARD);

    pith_ref_t a = PITH_REF_NONE;
    cr_assert_eq(pith_client_spawn(c, 1, &echo_type, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_ref_shard(a), 1u);

    pith_msg_t reply;
    cr_assert_eq(pith_client_ask(c, a, T_ECHO, "ping", 4, 5 * SEC, &reply), 0);
    cr_assert_eq(reply.type, (uint32_t)T_ECHO);
    cr_assert_eq(reply.len, 4u);
    cr_assert_eq(memcmp(reply.data, "ping", 4), 0);
    cr_assert_eq(reply.from, a, "the reply comes from the actor");

    /* The actor sends to the client's ref; the client receives it. */
    cr_assert_eq(pith_client_send(c, a, T_TELL, NULL, 0, 0), 0);
    pith_msg_t m;
    cr_assert_eq(pith_client_receive(c, &m, 5 * SEC), 0);
    cr_assert_eq(m.type, (uint32_t)T_TELL);
    cr_assert_eq(m.from, a);
    cr_assert_eq(m.len, 2u);
    cr_assert_eq(memcmp(m.data, "hi", 2), 0);

    void *r = NULL;
    cr_assert_eq(pith_client_call(c, 1, shard_of_call, (void *)(uintptr_t)40, 5 * SEC, &r), 0);
    cr_assert_eq((uintptr_t)r, 41u, "the call ran on shard 1");

    pith_client_stats_t st;
    cr_assert_eq(pith_client_stats(c, &st), 0);
    cr_assert_eq(st.sent, 4u, "spawn, ask, send and call went through the lanes");
    cr_assert_eq(st.late, 0u);
    pith_client_close(c);
    test_stop(NULL);
}

Test(client, receive_returns_eagain_at_once_and_etimedout_after_waiting, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_msg_t m;
    cr_assert_eq(pith_client_receive(c, &m, 0), -EAGAIN);
    cr_assert_eq(pith_client_receive(c, &m, 5 * MS), -ETIMEDOUT);
    cr_assert_eq(pith_client_receive(NULL, &m, 0), -EINVAL);
    cr_assert_eq(pith_client_receive(c, NULL, 0), -EINVAL);
    pith_client_close(c);
    test_stop(NULL);
}

Test(client, spawn_returns_init_error_and_bad_arguments_are_einval, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_ref_t a = 1;
    cr_assert_eq(pith_client_spawn(c, 0, &failing_type, NULL, 5 * SEC, &a), -EPERM);
    cr_assert_eq(a, PITH_REF_NONE);
    cr_assert_eq(pith_client_spawn(c, 2, &echo_type, NULL, 5 * SEC, &a), -EINVAL);
    cr_assert_eq(pith_client_spawn(c, 0, &echo_type, NULL, 0, &a), -EINVAL);
    cr_assert_eq(pith_client_call(c, 0, NULL, NULL, SEC, NULL), -EINVAL);
    cr_assert_eq(pith_client_send(c, PITH_REF_NONE, T_DATA, NULL, 0, 0), -EINVAL);
    cr_assert_eq(pith_client_send(c, a, PITH_MSG_DOWN, NULL, 0, 0), -EINVAL,
                 "a reserved tag is refused");
    pith_client_config_t bad;
    pith_client_config_init(&bad);
    bad.inbox_max = 1u << 20;
    errno = 0;
    cr_assert_null(pith_client_open(&bad));
    cr_assert_eq(errno, EINVAL);
    pith_client_close(c);
    test_stop(NULL);
}

Test(client, an_ask_of_a_stopped_actor_fails_with_esrch_before_its_timeout, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 1, &echo_type, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_stop(a), 0);
    test_sync_shard(1);
    pith_msg_t reply;
    /* With a 60 s timeout, only the undelivered notice can end this within the test's time. */
    cr_assert_eq(pith_client_ask(c, a, T_ECHO, "x", 1, 60 * SEC, &reply), -ESRCH);
    pith_client_stats_t st;
    pith_client_stats(c, &st);
    cr_assert_eq(st.undelivered, 1u);
    pith_client_close(c);
    test_stop(NULL);
}

/* ---- a shard that finds a client's inbox full ---- */

static struct {
    pith_ref_t client;
    unsigned n;
    _Atomic uint64_t accepted, refused;
} flood;

static void flood_client(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < flood.n; i++) {
        int rc = pith_send(flood.client, T_DATA, &i, sizeof(i));
        if (rc == 0)
            atomic_fetch_add(&flood.accepted, 1);
        else if (rc == -EAGAIN)
            atomic_fetch_add(&flood.refused, 1);
    }
}

Test(client, a_full_inbox_refuses_the_shard_with_eagain_and_keeps_order, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    ccfg.inbox_max = 16;
    pith_client_t *c = pith_client_open(&ccfg);
    cr_assert_not_null(c);
    memset(&flood, 0, sizeof(flood));
    flood.client = pith_client_ref(c);
    flood.n = 100;
    cr_assert_eq(pith_submit(0, flood_client, NULL), 0);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&flood.accepted), 16u, "the inbox took its bound");
    cr_assert_eq(atomic_load(&flood.refused), 84u, "every other send was refused at once");
    for (unsigned i = 0; i < 16; i++) {
        pith_msg_t m;
        cr_assert_eq(pith_client_receive(c, &m, 0), 0);
        unsigned v;
        memcpy(&v, m.data, sizeof(v));
        cr_assert_eq(v, i, "in the order sent");
    }
    pith_msg_t m;
    cr_assert_eq(pith_client_receive(c, &m, 0), -EAGAIN);
    pith_client_close(c);
    test_stop(NULL);
}

/* A notice that finds the client's inbox full is folded into a count: one summary carries it. */
Test(client, notices_past_a_full_inbox_come_back_as_one_exact_summary, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    ccfg.inbox_max = 4;
    pith_client_t *c = pith_client_open(&ccfg);
    cr_assert_not_null(c);
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 0, &echo_type, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_stop(a), 0);
    test_sync_shard(0);
    /* 20 messages for a stopped actor: each comes back undelivered (-ESRCH). */
    for (unsigned i = 0; i < 20; i++)
        cr_assert_eq(pith_client_send(c, a, T_DATA, &i, sizeof(i), 5 * SEC), 0);
    /* Waits through the thread's own client, so that c reads nothing of its inbox before. */
    pith_core_stats_t cst;
    TEST_WAIT_FOR(pith_core_stats(0, &cst) == 0 && cst.undelivered == 20);
    uint64_t notices = 0, summaries = 0, total = 0;
    pith_msg_t m;
    while (pith_client_receive(c, &m, 0) == 0) {
        cr_assert_eq(m.type, PITH_MSG_UNDELIVERED);
        cr_assert_eq(m.len, sizeof(pith_undelivered_t));
        const pith_undelivered_t *u = m.data;
        if (u->count == 1 && u->to == a) {
            cr_assert_eq(u->reason, -ESRCH);
            cr_assert_eq(u->type, (uint32_t)T_DATA);
            notices++;
        } else {
            cr_assert_eq(u->to, PITH_REF_NONE);
            cr_assert_eq(u->reason, -ENOBUFS);
            summaries++;
        }
        total += u->count;
    }
    cr_assert_eq(notices, 4u,
                 "the inbox held its bound of notices: %lu notices, %lu summaries, %lu in all",
                 (unsigned long)notices, (unsigned long)summaries, (unsigned long)total);
    cr_assert_eq(summaries, 1u);
    cr_assert_eq(total, 20u, "every undelivered message is accounted for");
    pith_client_close(c);
    test_stop(NULL);
}

/* ---- messages between clients, large payloads, buffers ---- */

Test(client, clients_send_to_each_other_and_large_payloads_travel_whole, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_client_t *a = pith_client_open(NULL), *b = pith_client_open(NULL);
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    cr_assert_eq(pith_client_send(a, pith_client_ref(b), T_DATA, "ab", 2, 5 * SEC), 0);
    pith_msg_t m;
    cr_assert_eq(pith_client_receive(b, &m, 5 * SEC), 0);
    cr_assert_eq(m.from, pith_client_ref(a));
    cr_assert_eq(memcmp(m.data, "ab", 2), 0);

    /* Larger than a lane takes: by pointer, whole. */
    size_t big = 1u << 20;
    char *buf = malloc(big);
    cr_assert_not_null(buf);
    for (size_t i = 0; i < big; i++)
        buf[i] = (char)(i * 7);
    cr_assert_eq(pith_client_send(a, pith_client_ref(b), T_DATA, buf, (uint32_t)big, 5 * SEC), 0);
    cr_assert_eq(pith_client_receive(b, &m, 5 * SEC), 0);
    cr_assert_eq(m.len, big);
    cr_assert_eq(memcmp(m.data, buf, big), 0);
    free(buf);

    void *data;
    pith_buf_t *pb = pith_buf_new(64, &data);
    cr_assert_not_null(pb);
    memset(data, 0x5a, 64);
    cr_assert_eq(pith_client_send_buf(a, pith_client_ref(b), T_DATA, pb, 5 * SEC), 0);
    pith_buf_release(pb);
    cr_assert_eq(pith_client_receive(b, &m, 5 * SEC), 0);
    cr_assert_eq(m.len, 64u);
    cr_assert_not_null(m.buf);
    cr_assert_eq(((const unsigned char *)m.data)[63], 0x5a);

    pith_ref_t gone = pith_client_ref(a);
    pith_client_close(a);
    /* A closed client's ref is stale at once. */
    cr_assert_eq(pith_client_send(b, gone, T_DATA, "x", 1, 0), -ESRCH);
    pith_client_close(b);
    test_stop(NULL);
}

/* ---- threads that exit, engines that stop ---- */

/* Sends 1000 messages from the thread's own client, waiting for room, and exits. */
static void *thread_sends_and_exits(void *arg)
{
    pith_ref_t a = *(pith_ref_t *)arg;
    pith_client_t *c = pith_client_self();
    if (c == NULL)
        return (void *)(intptr_t)-errno;
    for (unsigned i = 0; i < 1000; i++) {
        int rc = pith_client_send(c, a, T_DATA, &i, sizeof(i), 10 * SEC);
        if (rc != 0)
            return (void *)(intptr_t)rc;
    }
    return NULL;
}

Test(client, threads_that_exit_without_closing_lose_no_message_and_leak_nothing, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    atomic_store(&delivered, 0);
    pith_client_t *c = pith_client_self();
    cr_assert_not_null(c);
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 1, &echo_type, NULL, 5 * SEC, &a), 0);
    for (int round = 0; round < 8; round++) {
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, thread_sends_and_exits, &a), 0);
        void *rc;
        pthread_join(t, &rc);
        cr_assert_null(rc, "a send failed: %d", (int)(intptr_t)rc);
    }
    TEST_WAIT_FOR(atomic_load(&delivered) >= 8000);
    cr_assert_eq(atomic_load(&delivered), 8000u);
    test_stop(NULL);
}

static struct {
    pith_client_t *c;
    pith_ref_t full;
    _Atomic int receive_rc, send_rc;
    _Atomic uint64_t sent;
    _Atomic int ready;
} blocked;

static void *blocked_receiver(void *arg)
{
    (void)arg;
    pith_msg_t m;
    atomic_fetch_add(&blocked.ready, 1);
    atomic_store(&blocked.receive_rc, pith_client_receive(blocked.c, &m, PITH_FOREVER));
    return NULL;
}

static void *blocked_sender(void *arg)
{
    (void)arg;
    pith_client_t *c = pith_client_self();
    if (c == NULL)
        return NULL;
    atomic_fetch_add(&blocked.ready, 1);
    int rc = 0;
    for (unsigned i = 0; rc == 0; i++) {
        rc = pith_client_send(c, blocked.full, T_DATA, &i, sizeof(i), PITH_FOREVER);
        if (rc == 0)
            atomic_fetch_add(&blocked.sent, 1);
    }
    atomic_store(&blocked.send_rc, rc);
    return NULL;
}

/* Holds its shard until the blocked receiver has been told of the stop. */
static int holder(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    while (atomic_load(&blocked.receive_rc) == 0)
        sched_yield();
    return 0;
}

static const pith_actor_type_t holder_type = {
    .name = "client.holder", .behaviour = holder, .mailbox_max = 4};

Test(client, stop_returns_eshutdown_to_clients_blocked_in_receive_and_in_send, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.lane_slots = 16;
    cfg.drain_ns = 50 * MS;
    cfg.stall_ns = 0;
    test_start(&cfg);
    memset(&blocked, 0, sizeof(blocked));
    blocked.c = pith_client_open(NULL);
    cr_assert_not_null(blocked.c);
    cr_assert_eq(pith_client_spawn(blocked.c, 1, &holder_type, NULL, 5 * SEC, &blocked.full), 0);
    pthread_t r, s;
    cr_assert_eq(pthread_create(&r, NULL, blocked_receiver, NULL), 0);
    cr_assert_eq(pthread_create(&s, NULL, blocked_sender, NULL), 0);
    /* The first message holds shard 1; then the sender's lane of 16 slots fills. */
    while (atomic_load(&blocked.ready) < 2 || atomic_load(&blocked.sent) < 16)
        sched_yield();
    cr_assert_eq(pith_engine_stop(), 0);
    pthread_join(r, NULL);
    pthread_join(s, NULL);
    cr_assert_eq(atomic_load(&blocked.receive_rc), -ESHUTDOWN);
    cr_assert_eq(atomic_load(&blocked.send_rc), -ESHUTDOWN);
    pith_msg_t m;
    cr_assert_eq(pith_client_receive(blocked.c, &m, 0), -ESHUTDOWN, "after the stop");
    pith_client_close(blocked.c); /* after the stop: frees the handle */
    test_assert_no_leaks();
}

Test(client, the_thread_client_follows_the_engine_and_an_opened_one_does_not, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_t *own = pith_client_self();
    pith_client_t *opened = pith_client_open(NULL);
    cr_assert_not_null(own);
    cr_assert_not_null(opened);
    pith_ref_t first = pith_client_ref(own);
    test_stop(NULL);
    cr_assert_null(pith_client_self());
    cr_assert_eq(errno, ESHUTDOWN);
    test_start(&cfg);
    pith_client_t *again = pith_client_self();
    cr_assert_eq(again, own, "one client per thread");
    cr_assert_neq(pith_client_ref(again), first, "with a ref of the new engine");
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(again, 0, &echo_type, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_client_spawn(opened, 0, &echo_type, NULL, 5 * SEC, &a), -ESHUTDOWN,
                 "a client opened in the last engine belongs to it");
    pith_client_close(opened);
    test_stop(NULL);
}

static struct {
    int receive_rc, open_errno, self_errno;
} on_shard;

static void *client_calls_here(void *arg)
{
    (void)arg;
    pith_msg_t m;
    on_shard.receive_rc = pith_client_receive(NULL, &m, 0);
    errno = 0;
    on_shard.open_errno = pith_client_open(NULL) == NULL ? errno : 0;
    errno = 0;
    on_shard.self_errno = pith_client_self() == NULL ? errno : 0;
    return NULL;
}

Test(client, client_calls_from_a_shard_are_edeadlk, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    cr_assert_eq(pith_call_wait(0, client_calls_here, NULL, NULL), 0);
    cr_assert_eq(on_shard.receive_rc, -EDEADLK);
    cr_assert_eq(on_shard.open_errno, EDEADLK);
    cr_assert_eq(on_shard.self_errno, EDEADLK);
    test_stop(NULL);
}

/* ---- a client's messages to an actor: in order, whether they wait or run at once ---- */

static struct {
    uint64_t next_from_client, next_from_actor;
    _Atomic uint64_t got, out_of_order;
    pith_ref_t client;
} ord;

static int ordered(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type != T_DATA || msg->len != sizeof(uint64_t))
        return 0;
    uint64_t v;
    memcpy(&v, msg->data, sizeof(v));
    uint64_t *next = msg->from == ord.client ? &ord.next_from_client : &ord.next_from_actor;
    if (v != *next)
        atomic_fetch_add(&ord.out_of_order, 1);
    *next = v + 1;
    atomic_fetch_add(&ord.got, 1);
    return 0;
}

static const pith_actor_type_t ordered_type = {
    .name = "client.ordered", .behaviour = ordered, .mailbox_max = 64};

static struct {
    pith_ref_t target;
    uint64_t sent, total;
} other;

/* Another sender on the target's shard, a burst per turn: the mailbox fills and empties, so
 * the client's messages find the actor idle at times and busy at others. */
static int other_sender(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    for (unsigned i = 0; i < 16 && other.sent < other.total; i++) {
        if (pith_send(other.target, T_DATA, &other.sent, sizeof(other.sent)) != 0)
            break;
        other.sent++;
    }
    return other.sent < other.total ? pith_send(pith_self(self), T_QUIET, NULL, 0) : 0;
}

static const pith_actor_type_t other_type = {.name = "client.other", .behaviour = other_sender};

Test(client, a_clients_messages_arrive_in_order_whether_the_actor_is_idle_or_busy, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    memset(&ord, 0, sizeof(ord));
    memset(&other, 0, sizeof(other));
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    ord.client = pith_client_ref(c);
    const uint64_t n = scaled(200000);
    other.total = n;
    pith_ref_t o;
    cr_assert_eq(pith_client_spawn(c, 1, &ordered_type, NULL, 5 * SEC, &other.target), 0);
    cr_assert_eq(pith_client_spawn(c, 1, &other_type, NULL, 5 * SEC, &o), 0);
    cr_assert_eq(pith_client_send(c, o, T_QUIET, NULL, 0, 5 * SEC), 0);
    for (uint64_t i = 0; i < n; i++)
        cr_assert_eq(pith_client_send(c, other.target, T_DATA, &i, sizeof(i), 10 * SEC), 0);
    TEST_WAIT_FOR(atomic_load(&ord.got) == 2 * n);
    cr_assert_eq(atomic_load(&ord.out_of_order), 0u);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&ordered_type, &st), 0);
    cr_assert_eq(st.messages, 2 * n);
    cr_assert_leq(st.mailbox_max, 64u);
    pith_client_close(c);
    test_stop(NULL);
}

Test(client, a_message_for_an_idle_actor_never_enters_its_mailbox, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 0, &echo_type, NULL, 5 * SEC, &a), 0);
    atomic_store(&delivered, 0);
    for (uint64_t i = 0; i < 100; i++) {
        cr_assert_eq(pith_client_send(c, a, T_DATA, &i, sizeof(i), 5 * SEC), 0);
        /* Through the same lane: the message was handled when the call returns. */
        cr_assert_eq(pith_client_call(c, 0, shard_of_call, NULL, 5 * SEC, NULL), 0);
    }
    cr_assert_eq(atomic_load(&delivered), 100u);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&echo_type, &st), 0);
    cr_assert_eq(st.messages, 100u);
    cr_assert_eq(st.mailbox_max, 0u, "run where it lay in the lane, never queued");
    pith_client_close(c);
    test_stop(NULL);
}

/* ---- a lane across the 32-bit wrap of its positions ---- */

static struct {
    uint64_t next;
    _Atomic uint64_t got, wrong;
} wrap;

static int wrap_counter(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    uint64_t v;
    memcpy(&v, msg->data, sizeof(v));
    if (v != wrap.next)
        atomic_fetch_add(&wrap.wrong, 1);
    wrap.next = v + 1;
    atomic_fetch_add(&wrap.got, 1);
    return 0;
}

static const pith_actor_type_t wrap_type = {.name = "client.wrap", .behaviour = wrap_counter};

/* Half-lane messages and small ones in turn for three laps: the lane's last slot falls inside
 * padding each time, so nothing but the consumer writes it. Then, in the fourth lap, one-slot
 * records, a send and a call through the same lane in turn: the shard looks at the next slot
 * before the client writes it, at the wrap too (lanes start four laps before it, which puts
 * the wrap on that last slot). */
Test(client, a_lane_crosses_the_wrap_of_its_positions_and_loses_nothing, .timeout = 120)
{
    pith_config_t cfg = test_config(1);
    cfg.lane_slots = 16;
    test_start(&cfg);
    /* Each round a new client, so a new lane four laps before its wrap; the shard's look at
     * the wrap's slot before the client writes it is likely, not certain, in one round. */
    for (int round = 0; round < 10; round++) {
        memset(&wrap, 0, sizeof(wrap));
        pith_client_t *c = pith_client_open(NULL);
        cr_assert_not_null(c);
        pith_ref_t a;
        cr_assert_eq(pith_client_spawn(c, 0, &wrap_type, NULL, 5 * SEC, &a), 0);
        char big[16 / 2 * 64 - 32]; /* the most a lane of 16 slots carries in place */
        memset(big, 0, sizeof(big));
        uint64_t i = 0;
        /* Lap 1: the spawn, big, small, padding; laps 2 and 3: big, small, padding; lap 4:
         * big. */
        for (; i < 7; i++) {
            memcpy(big, &i, sizeof(i));
            uint32_t len = (i & 1) ? (uint32_t)sizeof(i) : (uint32_t)sizeof(big);
            cr_assert_eq(pith_client_send(c, a, T_DATA, big, len, 10 * SEC), 0);
        }
        /* One more: a send, not a call, then falls on lap 4's last slot, the wrap. */
        cr_assert_eq(pith_client_send(c, a, T_DATA, &i, sizeof(i), 10 * SEC), 0);
        for (i++; i < 40; i++) {
            cr_assert_eq(pith_client_send(c, a, T_DATA, &i, sizeof(i), 10 * SEC), 0);
            cr_assert_eq(pith_client_call(c, 0, shard_of_call, NULL, 10 * SEC, NULL), 0);
        }
        cr_assert_eq(pith_client_call(c, 0, shard_of_call, NULL, 10 * SEC, NULL), 0);
        cr_assert_eq(atomic_load(&wrap.got), i, "round %d: %" PRIu64 " of %" PRIu64 " arrived",
                     round, atomic_load(&wrap.got), i);
        cr_assert_eq(atomic_load(&wrap.wrong), 0u, "a message was lost or out of order");
        cr_assert_eq(pith_stop(a), 0);
        pith_client_close(c);
    }
    test_stop(NULL);
}

static struct {
    pith_client_t *c;
    _Atomic int rc, waiting;
} spinner;

static void *spinning_receiver(void *arg)
{
    (void)arg;
    pith_msg_t m;
    atomic_store(&spinner.waiting, 1);
    atomic_store(&spinner.rc, pith_client_receive(spinner.c, &m, PITH_FOREVER));
    return NULL;
}

Test(client, a_client_polling_forever_does_not_hold_up_the_stop, .timeout = 60)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    ccfg.spin_ns = PITH_FOREVER; /* it never sleeps: it polls until something comes */
    memset(&spinner, 0, sizeof(spinner));
    spinner.c = pith_client_open(&ccfg);
    cr_assert_not_null(spinner.c);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, spinning_receiver, NULL), 0);
    while (!atomic_load(&spinner.waiting))
        sched_yield();
    /* Without the stop looking into the spin, this stop waits for the spinner forever. */
    cr_assert_eq(pith_engine_stop(), 0);
    pthread_join(t, NULL);
    cr_assert_eq(atomic_load(&spinner.rc), -ESHUTDOWN);
    pith_client_close(spinner.c);
    test_assert_no_leaks();
}

/* ---- answers that must not wait behind a full inbox ---- */

static struct {
    pith_ref_t client;
    uint64_t accepted;
} fill;

/* From a task on the client's shard: its inbox from here is full when this returns. */
static void fill_inbox(void *arg)
{
    (void)arg;
    uint64_t i = 0;
    while (pith_send(fill.client, T_DATA, &i, sizeof(i)) == 0)
        fill.accepted++, i++;
}

Test(client, an_ask_that_comes_back_undelivered_ends_at_once_with_a_full_inbox, .timeout = 60)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    ccfg.inbox_max = 4;
    pith_client_t *c = pith_client_open(&ccfg);
    cr_assert_not_null(c);
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 0, &echo_type, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_stop(a), 0);
    test_sync_shard(0);
    memset(&fill, 0, sizeof(fill));
    fill.client = pith_client_ref(c);
    cr_assert_eq(pith_submit(0, fill_inbox, NULL), 0);
    test_sync_shard(0);
    cr_assert_eq(fill.accepted, 4u);
    /* The ask sets the 4 aside, then its notice must come past the full inbox. */
    cr_assert_eq(pith_submit(0, fill_inbox, NULL), 0);
    test_sync_shard(0);
    pith_msg_t reply;
    cr_assert_eq(pith_client_ask(c, a, T_ECHO, "x", 1, 30 * SEC, &reply), -ESRCH,
                 "the notice of the undelivered request did not end the ask");
    pith_client_close(c);
    test_stop(NULL);
}

static struct {
    pith_ref_t client;
    _Atomic int ok, bad;
} big_reply;

#define BIG_REPLY (64u * 1024)

static int ask_the_client(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type == T_TELL)
        return pith_ask(big_reply.client, T_ECHO, NULL, 0, 30 * SEC, NULL, NULL, NULL);
    if (msg->req != 0 && msg->type == T_ECHO) {
        const unsigned char *d = msg->data;
        if (msg->len == BIG_REPLY && d[0] == 0x11 && d[BIG_REPLY - 1] == 0x11)
            atomic_store(&big_reply.ok, 1);
        else
            atomic_store(&big_reply.bad, 1);
    }
    return 0;
}

static const pith_actor_type_t asker_of_clients = {.name = "client.asker",
                                                   .behaviour = ask_the_client};

Test(client, a_client_replies_to_an_actors_ask_with_more_than_a_lane_holds, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_client_t *c = pith_client_self();
    cr_assert_not_null(c);
    memset(&big_reply, 0, sizeof(big_reply));
    big_reply.client = pith_client_ref(c);
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 1, &asker_of_clients, NULL, 5 * SEC, &a), 0);
    cr_assert_eq(pith_client_send(c, a, T_TELL, NULL, 0, 5 * SEC), 0);
    pith_msg_t req;
    cr_assert_eq(pith_client_receive(c, &req, 5 * SEC), 0);
    cr_assert_neq(req.req, 0u, "the actor's ask");
    char *big = malloc(BIG_REPLY);
    cr_assert_not_null(big);
    memset(big, 0x11, BIG_REPLY);
    cr_assert_eq(pith_reply(&req, T_ECHO, big, BIG_REPLY), 0);
    free(big);
    TEST_WAIT_FOR(atomic_load(&big_reply.ok) || atomic_load(&big_reply.bad));
    cr_assert(atomic_load(&big_reply.ok), "the reply came whole");
    test_stop(NULL);
}

/* ---- an actor spawned too late is stopped, even when the lane was full then ---- */

static _Atomic int late_gate;
static uint64_t sink_seen;

/* The first message waits for gate 1, the others for gate 2: shard 1 is held twice. */
static int gated_sink(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    int want = sink_seen++ == 0 ? 1 : 2;
    while (atomic_load(&late_gate) < want)
        sched_yield();
    return 0;
}

static const pith_actor_type_t gated_sink_type = {
    .name = "client.gated_sink", .behaviour = gated_sink, .mailbox_max = 4};
static const pith_actor_type_t late_type = {.name = "client.late", .behaviour = echo};

Test(client, actors_spawned_after_their_spawn_gave_up_are_stopped_even_past_a_full_lane,
     .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.lane_slots = 16;
    cfg.stall_ns = 0;
    test_start(&cfg);
    atomic_store(&late_gate, 0);
    sink_seen = 0;
    pith_client_t *c = pith_client_open(NULL);
    cr_assert_not_null(c);
    pith_ref_t sink;
    cr_assert_eq(pith_client_spawn(c, 1, &gated_sink_type, NULL, 5 * SEC, &sink), 0);
    /* The first message holds shard 1; the spawns behind it time out. */
    uint64_t i = 0;
    cr_assert_eq(pith_client_send(c, sink, T_DATA, &i, sizeof(i), 5 * SEC), 0);
    pith_ref_t r;
    for (int k = 0; k < 4; k++)
        cr_assert_eq(pith_client_spawn(c, 1, &late_type, NULL, 10 * MS, &r), -ETIMEDOUT);
    atomic_store(&late_gate, 1);
    pith_actor_type_stats_t st;
    TEST_WAIT_FOR(pith_actor_type_stats(&late_type, &st) == 0 && st.spawned == 4);
    /* Shard 1 held again, and the client's lane to it full, when the late answers are read. */
    cr_assert_eq(pith_client_send(c, sink, T_DATA, &i, sizeof(i), 5 * SEC), 0);
    while (pith_client_send(c, sink, T_DATA, &i, sizeof(i), 0) == 0)
        i++;
    pith_msg_t m;
    cr_assert_eq(pith_client_receive(c, &m, 0), -EAGAIN, "the 4 late answers are not messages");
    pith_client_stats_t cst;
    pith_client_stats(c, &cst);
    cr_assert_eq(cst.late, 4u);
    atomic_store(&late_gate, 2);
    pith_client_close(c); /* asks again for the stops the full lane refused */
    TEST_WAIT_FOR(pith_actor_type_stats(&late_type, &st) == 0 && st.live == 0);
    cr_assert_eq(st.stopped, 4u);
    test_stop(NULL);
}

/* ---- a client's reply that cannot reach the asking client comes back to the replier ---- */

static struct {
    pith_client_t *a;
    pith_ref_t b;
    _Atomic int ask_rc, asking;
} rr;

static void *ask_b(void *arg)
{
    (void)arg;
    pith_msg_t reply;
    atomic_store(&rr.asking, 1);
    atomic_store(&rr.ask_rc, pith_client_ask(rr.a, rr.b, T_ECHO, "q", 1, 3 * SEC, &reply));
    return NULL;
}

Test(client, a_reply_to_a_client_with_a_full_inbox_comes_back_to_the_replier, .timeout = 60)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    ccfg.inbox_max = 4;
    memset(&rr, 0, sizeof(rr));
    rr.a = pith_client_open(&ccfg);
    cr_assert_not_null(rr.a);
    pith_client_t *b = pith_client_self();
    cr_assert_not_null(b);
    rr.b = pith_client_ref(b);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, ask_b, NULL), 0);
    pith_msg_t req;
    cr_assert_eq(pith_client_receive(b, &req, 10 * SEC), 0);
    cr_assert_neq(req.req, 0u);
    /* A sets aside what comes while it waits, up to 4; past that its inbox stays full. */
    memset(&fill, 0, sizeof(fill));
    fill.client = pith_client_ref(rr.a);
    uint64_t before;
    do {
        before = fill.accepted;
        cr_assert_eq(pith_submit(0, fill_inbox, NULL), 0);
        test_sync_shard(0);
    } while (fill.accepted < 8 || fill.accepted != before);
    cr_assert_eq(pith_reply(&req, T_ECHO, "r", 1), 0, "the lane took the reply");
    pith_msg_t m;
    cr_assert_eq(pith_client_receive(b, &m, 10 * SEC), 0, "the replier heard nothing");
    cr_assert_eq(m.type, PITH_MSG_UNDELIVERED);
    const pith_undelivered_t *u = m.data;
    cr_assert_eq(u->reason, -EAGAIN);
    cr_assert_eq(u->req, req.req);
    pthread_join(t, NULL);
    cr_assert_eq(atomic_load(&rr.ask_rc), -ETIMEDOUT);
    pith_client_close(rr.a);
    test_stop(NULL);
}

/* ---- idle lanes cost a shard nothing, and come back with their next record ---- */

#define IDLE_CLIENTS 500

Test(client, idle_clients_lanes_leave_the_shards_list_and_come_back, .timeout = 120)
{
    pith_config_t cfg = test_config(1);
    cfg.lane_slots = 16;
    cfg.poll_ns = 10 * MS * 1000; /* the shard keeps draining while the test looks */
    test_start(&cfg);
    pith_client_t *own = pith_client_self();
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(own, 0, &echo_type, NULL, 5 * SEC, &a), 0);
    atomic_store(&delivered, 0);
    static pith_client_t *cs[IDLE_CLIENTS];
    uint64_t i = 0;
    for (unsigned k = 0; k < IDLE_CLIENTS; k++) {
        cs[k] = pith_client_open(NULL);
        cr_assert_not_null(cs[k]);
        cr_assert_eq(pith_client_send(cs[k], a, T_DATA, &i, sizeof(i), 5 * SEC), 0);
    }
    TEST_WAIT_FOR(atomic_load(&delivered) == IDLE_CLIENTS);
    pith_shard_stats_t st;
    TEST_WAIT_FOR(pith_shard_stats(0, &st) == 0 && st.lanes_dormant >= IDLE_CLIENTS);
    cr_assert_leq(st.lanes, 2u, "only the lanes still in use are looked at: %u", st.lanes);
    /* Each comes back with its next message. */
    for (unsigned k = 0; k < IDLE_CLIENTS; k++)
        cr_assert_eq(pith_client_send(cs[k], a, T_DATA, &i, sizeof(i), 5 * SEC), 0);
    TEST_WAIT_FOR(atomic_load(&delivered) == 2 * IDLE_CLIENTS);
    TEST_WAIT_FOR(pith_shard_stats(0, &st) == 0 && st.lanes_dormant >= IDLE_CLIENTS);
    /* Closed while dormant: handed back and freed. */
    for (unsigned k = 0; k < IDLE_CLIENTS; k++)
        pith_client_close(cs[k]);
    TEST_WAIT_FOR(pith_shard_stats(0, &st) == 0 && st.lanes_dormant + st.lanes <= 2);
    test_stop(NULL);
}

/* Handles T_DATA after spinning for the ns its payload's second word asks, checking that the
 * first words come in order. */
static _Atomic uint64_t slow_next, slow_bad;

static int slow_in_order(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    uint64_t w[2];
    if (msg->type != T_DATA || msg->len != sizeof(w))
        return 0;
    memcpy(w, msg->data, sizeof(w));
    for (uint64_t until = pith_now_ns() + w[1]; pith_now_ns() < until;)
        ;
    if (w[0] != atomic_load(&slow_next))
        atomic_fetch_add(&slow_bad, 1);
    atomic_store(&slow_next, w[0] + 1);
    return 0;
}

static const pith_actor_type_t slow_order_type = {.name = "client.slow_in_order",
                                                  .behaviour = slow_in_order};

Test(client, a_spinning_sender_waits_out_a_full_lane_by_polling_or_sleeping_and_loses_nothing,
     .timeout = 120)
{
    pith_config_t cfg = test_config(1);
    cfg.lane_slots = 16; /* a few records fill it */
    test_start(&cfg);
    atomic_store(&slow_next, 0);
    atomic_store(&slow_bad, 0);
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    /* First a spin longer than the actor's turns (room comes while polling), then a spin far
     * shorter than them (the sender ends up asleep and is woken). */
    const uint64_t spins[2] = {5 * MS, 10 * 1000};
    const uint64_t work[2] = {2000, 300 * 1000};
    const uint64_t counts[2] = {scaled(20000), 200};
    uint64_t seq = 0;
    pith_ref_t a;
    for (int round = 0; round < 2; round++) {
        ccfg.spin_ns = spins[round];
        pith_client_t *c = pith_client_open(&ccfg);
        cr_assert_not_null(c);
        if (round == 0)
            cr_assert_eq(pith_client_spawn(c, 0, &slow_order_type, NULL, 5 * SEC, &a), 0);
        for (uint64_t i = 0; i < counts[round]; i++, seq++) {
            uint64_t w[2] = {seq, work[round]};
            cr_assert_eq(pith_client_send(c, a, T_DATA, w, sizeof(w), 30 * SEC), 0);
        }
        pith_client_stats_t st;
        cr_assert_eq(pith_client_stats(c, &st), 0);
        cr_assert_gt(st.pushed_back, 0, "round %d: the lane never filled", round);
        cr_assert_geq(st.sent, counts[round]); /* and the spawn */
        TEST_WAIT_FOR(atomic_load(&slow_next) == seq);
        pith_client_close(c);
    }
    cr_assert_eq(atomic_load(&slow_bad), 0u);
    test_stop(NULL);
}
