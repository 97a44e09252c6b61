/* Virtual actors (pith/vactor.h) used as a hostile application would: asks from behaviours and
 * tasks (and ones whose activation fails), buffers on every path, a four-message rejecting mailbox
 * under a client's flood, hooks that send to themselves or others, stop themselves or fail,
 * engine stops with activations and messages in flight, idle deactivation racing senders, the cap
 * with nothing idle, and pith_vactor_info and pith_vtype_stats from awkward places.
 * Shards record into globals (atomics); only the test thread asserts. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "vtest.h"

#define SEC (1000ull * MS)
/* Longer than any wait here: an ask with this timeout that ended, ended early. */
#define LONG_ASK (600 * SEC)

enum { ADD = 1, GET, OFF, FAIL, BUF, SEQ, HOLD, FROM, REFILL, START };

#define SENDERS 4
#define SLOTS   4
#define BUF_LEN 64

/* ---- what the shards record ---- */

/* Deactivation reasons are below this (PITH_VDEACT_*). */
#define REASONS 8

static _Atomic uint64_t acts, deacts[REASONS], adds_seen, adds_msgs;
static _Atomic uint64_t bufs_ok, bufs_bad;
static _Atomic uint64_t last_from;
static _Atomic int hold;      /* HOLD messages go on sending themselves while set */
static test_error_t self_err; /* the first error of a behaviour's send to itself */

/* Per-sender order: the payload of SEQ is (sender << 32 | seq). */
static _Atomic uint32_t next_seq[SENDERS];
static _Atomic uint64_t seq_seen[SENDERS], seq_bad;
/* Senders whose sequence has no gaps (each number was accepted): the rest only increase. */
static _Atomic unsigned seq_strict;

/* Notices of messages sent by tasks (pith_on_undelivered), by the shard that sent them. */
static _Atomic uint64_t notices[SENDERS], notice_eagain, notice_eio, notice_ecanceled;
static _Atomic int notice_other; /* a reason none of the above */

static void on_undelivered(const pith_undelivered_t *u, void *ctx)
{
    (void)ctx;
    int sh = pith_shard_id();
    if (sh >= 0 && sh < SENDERS)
        atomic_fetch_add(&notices[sh], u->count);
    if (u->reason == -EAGAIN)
        atomic_fetch_add(&notice_eagain, u->count);
    else if (u->reason == -EIO)
        atomic_fetch_add(&notice_eio, u->count);
    else if (u->reason == -ECANCELED)
        atomic_fetch_add(&notice_ecanceled, u->count);
    else
        atomic_store(&notice_other, u->reason);
}

/* ---- one actor for most types ---- */

struct vstate {
    uint64_t n;
    pith_vref_t me;   /* this activation's virtual ref (set by on_activate) */
    pith_buf_t *kept; /* a buffer kept past its message, released by terminate */
};

static void seq_check(uint64_t v)
{
    uint32_t sender = (uint32_t)(v >> 32), seq = (uint32_t)v;
    if (sender >= SENDERS) {
        atomic_fetch_add(&seq_bad, 1);
        return;
    }
    uint32_t want = atomic_load(&next_seq[sender]);
    bool strict = (atomic_load(&seq_strict) >> sender) & 1u;
    if (seq < want || (strict && seq != want))
        atomic_fetch_add(&seq_bad, 1);
    atomic_store(&next_seq[sender], seq + 1);
    atomic_fetch_add(&seq_seen[sender], 1);
}

static void buf_check(struct vstate *st, const pith_msg_t *msg)
{
    const unsigned char *p = msg->data;
    bool ok = msg->buf != NULL && msg->data == pith_buf_data(msg->buf) && msg->len == BUF_LEN &&
              pith_buf_len(msg->buf) == BUF_LEN;
    for (uint32_t i = 0; ok && i < BUF_LEN; i++)
        ok = p[i] == (unsigned char)(i * 3 + p[0]);
    atomic_fetch_add(ok ? &bufs_ok : &bufs_bad, 1);
    if (ok && p[0] % 4 == 0) {
        /* Keep one now and then past the message: terminate lets it go. */
        pith_buf_release(st->kept);
        st->kept = pith_buf_ref(msg->buf);
    }
}

static int edge_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct vstate *st = state;
    uint64_t v = 0, one = 1;
    if (msg->buf == NULL && msg->len >= sizeof(v))
        memcpy(&v, msg->data, sizeof(v));
    int rc;
    switch (msg->type) {
    case ADD:
        st->n += v;
        atomic_fetch_add(&adds_seen, v);
        atomic_fetch_add(&adds_msgs, 1);
        break;
    case GET:
        (void)pith_reply(msg, GET, &st->n, sizeof(st->n));
        break;
    case OFF:
        (void)pith_vactor_deactivate(self);
        break;
    case FAIL:
        if (msg->req != 0)
            (void)pith_reply(msg, GET, &st->n, sizeof(st->n));
        return -EIO;
    case BUF:
        buf_check(st, msg);
        break;
    case SEQ:
        seq_check(v);
        break;
    case HOLD:
        if (atomic_load(&hold) && (rc = pith_vsend(&st->me, HOLD, NULL, 0)) != 0)
            TEST_NOTE(&self_err, rc);
        break;
    case FROM:
        atomic_store(&last_from, msg->from);
        break;
    case REFILL:
        /* Deactivates, then sends itself two more: four wait when the deactivation comes. */
        (void)pith_vactor_deactivate(self);
        for (int i = 0; i < 2; i++)
            if ((rc = pith_vsend(&st->me, ADD, &one, sizeof(one))) != 0)
                TEST_NOTE(&self_err, rc);
        break;
    default:
        break;
    }
    return 0;
}

static void edge_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)reason;
    struct vstate *st = state;
    pith_buf_release(st->kept);
    st->kept = NULL;
}

static const pith_actor_type_t edge_actor = {
    .name = "edge",
    .behaviour = edge_behaviour,
    .terminate = edge_terminate,
    .state_size = sizeof(struct vstate),
};

/* Four messages at most, refused past that, one a turn: full most of the time. */
static const pith_actor_type_t narrow_actor = {
    .name = "narrow",
    .behaviour = edge_behaviour,
    .terminate = edge_terminate,
    .state_size = sizeof(struct vstate),
    .mailbox_max = 4,
    .overflow = PITH_OVERFLOW_REJECT,
    .turn_msgs = 1,
};

/* What every on_activate does first: note its own virtual ref. */
static int activated_as(const pith_vtype_t *t, void *state, const void *key, uint32_t len)
{
    struct vstate *st = state;
    int rc = pith_vref(t, key, len, &st->me);
    if (rc == 0)
        atomic_fetch_add(&acts, 1);
    return rc;
}

static void on_deact_count(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)state;
    if (reason > 0 && reason < REASONS)
        atomic_fetch_add(&deacts[reason], 1);
}

static uint64_t deacts_total(void)
{
    uint64_t n = 0;
    for (int i = 1; i < REASONS; i++)
        n += atomic_load(&deacts[i]);
    return n;
}

/* Declares name_type and defines name_act, its on_activate: activated_as, then body_ (with
 * self, state, key and len in scope; it may return an error). */
#define VTYPE_ACT(name_, body_)                                                                    \
    static const pith_vtype_t name_##_type;                                                        \
    static int name_##_act(pith_actor_t *self, void *state, const void *key, uint32_t len,         \
                           int reason)                                                             \
    {                                                                                              \
        (void)self;                                                                                \
        (void)reason;                                                                              \
        int rc_ = activated_as(&name_##_type, state, key, len);                                    \
        if (rc_ != 0)                                                                              \
            return rc_;                                                                            \
        body_;                                                                                     \
        return 0;                                                                                  \
    }

VTYPE_ACT(edge, (void)0)
static const pith_vtype_t edge_type = {
    .name = "edge",
    .actor = &edge_actor,
    .on_activate = edge_act,
    .on_deactivate = on_deact_count,
};

/* ---- helpers ---- */

static pith_vref_t vref_of(const pith_vtype_t *t, const char *key)
{
    pith_vref_t v;
    int rc = pith_vref(t, key, strlen(key), &v);
    cr_assert_eq(rc, 0, "pith_vref(%s): %d", key, rc);
    return v;
}

/* The nth key "<prefix><i>" of t whose directory shard is `shard` (pith_vactor_info says,
 * without activating anything). */
static pith_vref_t key_on(const pith_vtype_t *t, unsigned shard, const char *prefix, unsigned nth)
{
    for (unsigned i = 0; i < 1000; i++) {
        char key[48];
        snprintf(key, sizeof(key), "%s%u", prefix, i);
        pith_vref_t v = vref_of(t, key);
        pith_vactor_info_t info;
        int rc = pith_vactor_info(&v, 5 * SEC, &info);
        cr_assert_eq(rc, 0, "pith_vactor_info: %d (%s)", rc, pith_strerror(rc));
        if (info.dir_shard == shard && nth-- == 0)
            return v;
    }
    cr_assert_fail("no key %s* of %s lands on shard %u", prefix, t->name, shard);
    return vref_of(t, prefix);
}

static int client_ask(const pith_vref_t *v, uint32_t type, uint64_t *out)
{
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), v, type, NULL, 0, 20 * SEC, &reply);
    if (rc == 0 && out != NULL) {
        cr_assert_eq(reply.len, sizeof(*out));
        memcpy(out, reply.data, sizeof(*out));
    }
    return rc;
}

static uint64_t ask_n(const pith_vref_t *v)
{
    uint64_t n = 0;
    int rc = client_ask(v, GET, &n);
    cr_assert_eq(rc, 0, "pith_client_vask: %d (%s)", rc, pith_strerror(rc));
    return n;
}

static void vsend_ok(const pith_vref_t *v, uint32_t type, uint64_t x)
{
    int rc = pith_client_vsend(pith_client_self(), v, type, &x, sizeof(x), PITH_FOREVER);
    cr_assert_eq(rc, 0, "pith_client_vsend: %d (%s)", rc, pith_strerror(rc));
}

static pith_vtype_stats_t stats_of(const pith_vtype_t *t)
{
    pith_vtype_stats_t st;
    cr_assert_eq(pith_vtype_stats(t, &st), 0);
    return st;
}

static void register_all(void);

static void start(int shards)
{
    register_all();
    pith_on_undelivered(on_undelivered, NULL);
    pith_config_t cfg = test_config(shards);
    test_start(&cfg);
}

/* A buffer of BUF_LEN bytes, its pattern starting at `first`. */
static pith_buf_t *buf_make(unsigned char first)
{
    void *d;
    pith_buf_t *b = pith_buf_new(BUF_LEN, &d);
    if (b == NULL)
        return NULL;
    unsigned char *p = d;
    for (uint32_t i = 0; i < BUF_LEN; i++)
        p[i] = (unsigned char)(i * 3 + first);
    return b;
}

/* ---- asks from a behaviour (cb NULL: the reply comes as a message) ---- */

struct ask_start {
    uint32_t slot;
    pith_vref_t v;
};

static _Atomic uint64_t ask_val[SLOTS];
static _Atomic int ask_rc[SLOTS], ask_err[SLOTS], ask_done[SLOTS], ask_stray;

struct asker {
    uint64_t req[SLOTS];
};

static int asker_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct asker *s = state;
    if (msg->type == START && msg->len == sizeof(struct ask_start)) {
        struct ask_start q;
        memcpy(&q, msg->data, sizeof(q));
        uint64_t req = 0;
        int rc = pith_vask(&q.v, GET, NULL, 0, LONG_ASK, NULL, NULL, &req);
        s->req[q.slot] = req;
        atomic_store(&ask_rc[q.slot], rc);
        if (rc != 0)
            atomic_store(&ask_done[q.slot], 1);
        return 0;
    }
    for (uint32_t i = 0; i < SLOTS; i++) {
        if (msg->req == 0 || s->req[i] != msg->req)
            continue;
        if (msg->type == GET && msg->len == sizeof(uint64_t)) {
            uint64_t n;
            memcpy(&n, msg->data, sizeof(n));
            atomic_store(&ask_val[i], n);
        } else if (msg->type == PITH_MSG_UNDELIVERED && msg->len == sizeof(pith_undelivered_t)) {
            pith_undelivered_t u;
            memcpy(&u, msg->data, sizeof(u));
            atomic_store(&ask_err[i], u.reason);
        } else if (msg->type == PITH_MSG_TIMEOUT) {
            atomic_store(&ask_err[i], -ETIMEDOUT);
        } else {
            atomic_store(&ask_err[i], -EPROTO);
        }
        atomic_fetch_add(&ask_done[i], 1);
        return 0;
    }
    atomic_fetch_add(&ask_stray, 1);
    return 0;
}

static const pith_actor_type_t asker_actor = {
    .name = "asker", .behaviour = asker_behaviour, .state_size = sizeof(struct asker)};

static pith_ref_t asker_on(unsigned shard)
{
    pith_ref_t r = PITH_REF_NONE;
    int rc = pith_client_spawn(pith_client_self(), shard, &asker_actor, NULL, 5 * SEC, &r);
    cr_assert_eq(rc, 0, "pith_client_spawn: %d", rc);
    return r;
}

static void asker_start(pith_ref_t asker, uint32_t slot, const pith_vref_t *v)
{
    struct ask_start q = {.slot = slot, .v = *v};
    int rc = pith_client_send(pith_client_self(), asker, START, &q, sizeof(q), PITH_FOREVER);
    cr_assert_eq(rc, 0, "pith_client_send: %d", rc);
}

/* ---- asks from a task (with a callback) ---- */

struct cb_slot {
    _Atomic int done; /* times the callback ran: once at most */
    _Atomic int err;
    _Atomic uint64_t val;
};

static struct cb_slot cbs[SLOTS];

static void ask_cb(const pith_msg_t *reply, int err, void *ctx)
{
    struct cb_slot *s = ctx;
    if (reply != NULL && reply->len == sizeof(uint64_t)) {
        uint64_t n;
        memcpy(&n, reply->data, sizeof(n));
        atomic_store(&s->val, n);
    }
    atomic_store(&s->err, err);
    atomic_fetch_add(&s->done, 1);
}

struct task_asks {
    unsigned n;
    pith_vref_t v[SLOTS];
    int rc[SLOTS];
};

static void *task_asks_fn(void *arg)
{
    struct task_asks *q = arg;
    for (unsigned i = 0; i < q->n; i++)
        q->rc[i] = pith_vask(&q->v[i], GET, NULL, 0, LONG_ASK, ask_cb, &cbs[i], NULL);
    return NULL;
}

Test(vactor_edge, vask_from_a_behaviour_without_a_callback_gets_the_reply_as_a_message,
     .timeout = 60)
{
    start(2);
    pith_vref_t k0 = key_on(&edge_type, 0, "a", 0), k1 = key_on(&edge_type, 1, "a", 0);
    vsend_ok(&k0, ADD, 7);
    vsend_ok(&k1, ADD, 9);
    cr_assert_eq(ask_n(&k0), 7);
    cr_assert_eq(ask_n(&k1), 9);
    pith_ref_t asker = asker_on(0);
    asker_start(asker, 0, &k0); /* its own shard */
    asker_start(asker, 1, &k1); /* the other */
    TEST_WAIT_FOR(atomic_load(&ask_done[0]) && atomic_load(&ask_done[1]));
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(atomic_load(&ask_rc[i]), 0, "pith_vask %d: %d", i, atomic_load(&ask_rc[i]));
        cr_assert_eq(atomic_load(&ask_err[i]), 0, "ask %d ended with %d", i,
                     atomic_load(&ask_err[i]));
        cr_assert_eq(atomic_load(&ask_done[i]), 1);
    }
    cr_assert_eq(atomic_load(&ask_val[0]), 7);
    cr_assert_eq(atomic_load(&ask_val[1]), 9);
    cr_assert_eq(atomic_load(&ask_stray), 0, "a message with a req nobody asked for");
    test_stop(NULL);
}

Test(vactor_edge, vask_with_a_callback_from_a_task_reaches_keys_on_both_shards, .timeout = 60)
{
    start(2);
    struct task_asks q = {.n = 2};
    q.v[0] = key_on(&edge_type, 0, "b", 0);
    q.v[1] = key_on(&edge_type, 1, "b", 0);
    vsend_ok(&q.v[0], ADD, 3);
    vsend_ok(&q.v[1], ADD, 4);
    cr_assert_eq(ask_n(&q.v[0]), 3);
    cr_assert_eq(ask_n(&q.v[1]), 4);
    for (unsigned sh = 0; sh < 2; sh++) {
        memset(cbs, 0, sizeof(cbs));
        cr_assert_eq(pith_call_wait(sh, task_asks_fn, &q, NULL), 0);
        cr_assert_eq(q.rc[0], 0, "from shard %u: %d", sh, q.rc[0]);
        cr_assert_eq(q.rc[1], 0, "from shard %u: %d", sh, q.rc[1]);
        TEST_WAIT_FOR(atomic_load(&cbs[0].done) && atomic_load(&cbs[1].done));
        test_sync_all();
        for (int i = 0; i < 2; i++) {
            cr_assert_eq(atomic_load(&cbs[i].done), 1, "callback ran %d times",
                         atomic_load(&cbs[i].done));
            cr_assert_eq(atomic_load(&cbs[i].err), 0);
        }
        cr_assert_eq(atomic_load(&cbs[0].val), 3);
        cr_assert_eq(atomic_load(&cbs[1].val), 4);
    }
    test_stop(NULL);
}

/* ---- activation failing under an ask ---- */

static _Atomic uint64_t broken_tries;
static _Atomic int broken_err = -EIO; /* on_activate's answer; 0: it succeeds */

static const pith_vtype_t broken_type;

static int broken_act(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    (void)self;
    (void)reason;
    atomic_fetch_add(&broken_tries, 1);
    int err = atomic_load(&broken_err);
    return err != 0 ? err : activated_as(&broken_type, state, key, len);
}

static const pith_vtype_t broken_type = {
    .name = "broken",
    .actor = &edge_actor,
    .on_activate = broken_act,
    .on_deactivate = on_deact_count,
};

struct task_sends {
    const pith_vref_t *v;
    int rc_send, rc_ask, rc_buf;
};

static void *task_sends_fn(void *arg)
{
    struct task_sends *q = arg;
    uint64_t one = 1;
    q->rc_send = pith_vsend(q->v, ADD, &one, sizeof(one));
    q->rc_ask = pith_vask(q->v, GET, NULL, 0, LONG_ASK, ask_cb, &cbs[pith_shard_id()], NULL);
    pith_buf_t *b = buf_make(1);
    q->rc_buf = b != NULL ? pith_vsend_buf(q->v, BUF, b) : -ENOMEM;
    pith_buf_release(b); /* ours, whatever became of the send */
    return NULL;
}

Test(vactor_edge, a_vask_whose_activation_fails_ends_at_once_with_its_error, .timeout = 60)
{
    start(2);
    pith_vref_t b0 = key_on(&broken_type, 0, "x", 0), b1 = key_on(&broken_type, 1, "x", 0);
    /* From a task of the directory shard: the errors of activating, at once. */
    struct task_sends here = {.v = &b0};
    cr_assert_eq(pith_call_wait(0, task_sends_fn, &here, NULL), 0);
    cr_assert_eq(here.rc_send, -EIO, "vsend: %d", here.rc_send);
    cr_assert_eq(here.rc_ask, -EIO, "vask: %d", here.rc_ask);
    cr_assert_eq(here.rc_buf, -EIO, "vsend_buf: %d", here.rc_buf);
    /* From the other shard: accepted, then the callback and the notices carry -EIO, long before
     * the ask's timeout. */
    struct task_sends there = {.v = &b0};
    cr_assert_eq(pith_call_wait(1, task_sends_fn, &there, NULL), 0);
    cr_assert_eq(there.rc_send, 0);
    cr_assert_eq(there.rc_ask, 0);
    cr_assert_eq(there.rc_buf, 0);
    TEST_WAIT_FOR(atomic_load(&cbs[1].done) == 1 && atomic_load(&notices[1]) == 2);
    cr_assert_eq(atomic_load(&cbs[1].err), -EIO, "callback: %d", atomic_load(&cbs[1].err));
    cr_assert_eq(atomic_load(&cbs[0].done), 0, "no callback for an ask that returned an error");
    cr_assert_eq(atomic_load(&notice_eio), 2, "the send and the buffer come back with -EIO");
    /* From a behaviour (cb NULL), same shard and across. */
    pith_ref_t asker = asker_on(0);
    asker_start(asker, 0, &b0);
    asker_start(asker, 1, &b1);
    TEST_WAIT_FOR(atomic_load(&ask_done[0]) && atomic_load(&ask_done[1]));
    cr_assert_eq(atomic_load(&ask_rc[0]), -EIO, "same shard: %d", atomic_load(&ask_rc[0]));
    cr_assert_eq(atomic_load(&ask_rc[1]), 0);
    cr_assert_eq(atomic_load(&ask_err[1]), -EIO, "across: the ask ends with %d",
                 atomic_load(&ask_err[1]));
    cr_assert_eq(atomic_load(&ask_stray), 0);
    /* From a client. */
    uint64_t n;
    cr_assert_eq(client_ask(&b0, GET, &n), -EIO);
    cr_assert_eq(client_ask(&b1, GET, &n), -EIO);
    pith_vtype_stats_t st = stats_of(&broken_type);
    cr_assert_eq(st.activations, 0);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(st.activate_failed, atomic_load(&broken_tries));
    cr_assert_eq(atomic_load(&broken_tries), 3 + 3 + 2 + 2, "one try per message");
    cr_assert_eq(deacts_total(), 0, "on_deactivate never runs for one that never began");
    test_stop(NULL);
}

/* ---- buffers on every path ---- */

VTYPE_ACT(narrow, (void)0)
static const pith_vtype_t narrow_type = {
    .name = "narrow",
    .actor = &narrow_actor,
    .on_activate = narrow_act,
    .on_deactivate = on_deact_count,
};

struct buf_task {
    pith_vref_t v[2];
    unsigned n;
    uint64_t accepted, refused;
    test_error_t *err;
};

static void *buf_task_fn(void *arg)
{
    struct buf_task *q = arg;
    for (unsigned i = 0; i < q->n; i++) {
        for (int k = 0; k < 2; k++) {
            pith_buf_t *b = buf_make((unsigned char)i);
            if (b == NULL) {
                TEST_NOTE(q->err, -ENOMEM);
                return NULL;
            }
            int rc = pith_vsend_buf(&q->v[k], BUF, b);
            if (rc == 0)
                q->accepted++;
            else if (rc == -EAGAIN)
                q->refused++;
            else
                TEST_NOTE(q->err, rc);
            pith_buf_release(b);
        }
    }
    return NULL;
}

/* On narrow's directory shard: OFF, then three buffers wait behind it when it deactivates (one
 * message a turn), and go to the next activation; a fourth finds the mailbox full. */
struct buf_off {
    const pith_vref_t *v;
    int rc[5];
};

static void *buf_off_fn(void *arg)
{
    struct buf_off *q = arg;
    q->rc[0] = pith_vsend(q->v, OFF, NULL, 0);
    for (int i = 1; i < 5; i++) {
        pith_buf_t *b = buf_make((unsigned char)(100 + i));
        q->rc[i] = b != NULL ? pith_vsend_buf(q->v, BUF, b) : -ENOMEM;
        pith_buf_release(b);
    }
    return NULL;
}

Test(vactor_edge, vsend_buf_on_every_path_hands_each_buffer_over_once, .timeout = 60)
{
    start(2);
    test_error_t err = {0};
    struct buf_task q = {.n = (unsigned)scaled(200) < 20 ? 20 : (unsigned)scaled(200), .err = &err};
    q.v[0] = key_on(&edge_type, 0, "buf", 0);
    q.v[1] = key_on(&edge_type, 1, "buf", 0);
    /* From a task of each shard: one key here, one across. */
    cr_assert_eq(pith_call_wait(0, buf_task_fn, &q, NULL), 0);
    cr_assert_eq(pith_call_wait(1, buf_task_fn, &q, NULL), 0);
    test_assert_no_error(&err);
    /* From this thread, through its own client, without waiting. */
    uint64_t outside = 0;
    for (unsigned i = 0; i < q.n; i++) {
        pith_buf_t *b = buf_make((unsigned char)i);
        cr_assert_not_null(b);
        int rc = pith_vsend_buf(&q.v[i % 2], BUF, b);
        cr_assert(rc == 0 || rc == -EAGAIN, "pith_vsend_buf from outside: %d", rc);
        outside += rc == 0;
        pith_buf_release(b);
        if (rc == -EAGAIN)
            test_sync_all(); /* the lane drains */
    }
    cr_assert_gt(outside, 0);
    uint64_t want = q.accepted + outside;
    TEST_WAIT_FOR(atomic_load(&bufs_ok) + atomic_load(&bufs_bad) >= want);
    cr_assert_eq(atomic_load(&bufs_bad), 0, "%llu buffers arrived wrong",
                 (unsigned long long)atomic_load(&bufs_bad));
    cr_assert_eq(atomic_load(&bufs_ok), want);
    cr_assert_eq(atomic_load(&notice_other), 0);

    /* Refused and failed paths: the caller keeps its reference, the message's goes once. */
    pith_buf_t *b = buf_make(9);
    cr_assert_eq(pith_vsend_buf(&q.v[0], BUF, NULL), -EINVAL);
    pith_vref_t forged = q.v[0];
    forged.tid = 0;
    cr_assert_eq(pith_vsend_buf(&forged, BUF, b), -EINVAL);
    cr_assert_eq(pith_vsend_buf(&q.v[0], PITH_MSG_RESERVED, b), -EINVAL);
    pith_buf_release(b);
    struct task_sends fails = {0};
    pith_vref_t b0 = key_on(&broken_type, 0, "bb", 0), b1 = key_on(&broken_type, 1, "bb", 0);
    fails.v = &b0;
    cr_assert_eq(pith_call_wait(0, task_sends_fn, &fails, NULL), 0);
    cr_assert_eq(fails.rc_buf, -EIO);
    fails.v = &b1;
    cr_assert_eq(pith_call_wait(0, task_sends_fn, &fails, NULL), 0);
    cr_assert_eq(fails.rc_buf, 0);
    TEST_WAIT_FOR(atomic_load(&notice_eio) == 2);

    /* Buffers waiting in a mailbox when its activation deactivates move to the next one. */
    pith_vref_t nv = key_on(&narrow_type, 0, "nb", 0);
    struct buf_off off = {.v = &nv};
    uint64_t before = atomic_load(&bufs_ok);
    cr_assert_eq(pith_call_wait(0, buf_off_fn, &off, NULL), 0);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(off.rc[i], 0, "send %d: %d", i, off.rc[i]);
    cr_assert_eq(off.rc[4], -EAGAIN, "a fifth finds four waiting: %d", off.rc[4]);
    cr_assert_eq(ask_n(&nv), 0);
    cr_assert_eq(atomic_load(&bufs_ok), before + 3, "the three waiting buffers all arrived");
    cr_assert_eq(atomic_load(&deacts[PITH_VDEACT_SELF]), 1);
    /* Buffers kept past their message by live activations go with them at the stop. */
    test_stop(NULL);
}

/* ---- a rejecting mailbox of four ---- */

struct seq_task {
    const pith_vref_t *v;
    unsigned shard;
    uint32_t sender, total, next;
    uint64_t accepted, refused;
    _Atomic int done;
    test_error_t *err;
};

static void seq_task_fn(void *arg)
{
    struct seq_task *q = arg;
    for (unsigned i = 0; i < 8 && q->next < q->total; i++, q->next++) {
        uint64_t x = (uint64_t)q->sender << 32 | q->next;
        int rc = pith_vsend(q->v, SEQ, &x, sizeof(x));
        if (rc == 0)
            q->accepted++;
        else if (rc == -EAGAIN)
            q->refused++;
        else
            TEST_NOTE(q->err, rc);
    }
    if (q->next < q->total) {
        /* Again after whatever else waits: the client's records, the activation's turns. */
        int rc = pith_submit(q->shard, seq_task_fn, q);
        if (rc == 0)
            return;
        TEST_NOTE(q->err, rc);
    }
    atomic_store(&q->done, 1);
}

Test(vactor_edge, a_full_rejecting_mailbox_pushes_a_client_back_and_loses_none_of_its_messages,
     .timeout = 120)
{
    start(2);
    atomic_store(&seq_strict, 1u); /* sender 0, the client: every message, in order */
    pith_vref_t v = key_on(&narrow_type, 0, "n", 0);
    test_error_t err = {0};
    uint32_t per = (uint32_t)scaled(300) < 30 ? 30 : (uint32_t)scaled(300);
    struct seq_task tasks[2] = {
        {.v = &v, .shard = 0, .sender = 1, .total = per, .err = &err},
        {.v = &v, .shard = 1, .sender = 2, .total = per, .err = &err},
    };
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pith_submit(tasks[i].shard, seq_task_fn, &tasks[i]), 0);
    const uint32_t n = 1000;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t x = i; /* sender 0 */
        int rc = pith_client_vsend(pith_client_self(), &v, SEQ, &x, sizeof(x), PITH_FOREVER);
        cr_assert_eq(rc, 0, "message %u: %d (%s)", i, rc, pith_strerror(rc));
    }
    TEST_WAIT_FOR(atomic_load(&seq_seen[0]) == n && atomic_load(&tasks[0].done) &&
                  atomic_load(&tasks[1].done) &&
                  atomic_load(&seq_seen[1]) + atomic_load(&notices[0]) == tasks[0].accepted &&
                  atomic_load(&seq_seen[2]) + atomic_load(&notices[1]) == tasks[1].accepted);
    test_assert_no_error(&err);
    cr_assert_eq(atomic_load(&seq_bad), 0, "%llu messages out of order",
                 (unsigned long long)atomic_load(&seq_bad));
    /* The directory shard's task was refused at once, never told later. */
    cr_assert_eq(atomic_load(&notices[0]), 0);
    cr_assert_eq(atomic_load(&notice_eagain), atomic_load(&notices[1]));
    cr_assert_eq(atomic_load(&notice_other), 0);
    pith_client_stats_t cst;
    cr_assert_eq(pith_client_stats(pith_client_self(), &cst), 0);
    cr_assert_eq(cst.undelivered, 0);
    pith_msg_t m = {0};
    cr_assert_eq(pith_client_receive(pith_client_self(), &m, 0), -EAGAIN,
                 "nothing came back to the client (got tag %#x)", m.type);
    cr_log_info("narrow: tasks refused %llu and %llu at once, %llu told later\n",
                (unsigned long long)tasks[0].refused, (unsigned long long)tasks[1].refused,
                (unsigned long long)atomic_load(&notices[1]));
    test_stop(NULL);
}

/* ---- hooks that send, stop, or fail ---- */

static _Atomic int hook_rc[4];
static _Atomic int hook_ran[4];

static void note_hook(int i, int rc)
{
    atomic_store(&hook_rc[i], rc);
    atomic_fetch_add(&hook_ran[i], 1);
}

/* on_deactivate sends ADD 1 to its own key, once, unless the engine is stopping. */
static void selfie_deact(pith_actor_t *self, void *state, int reason)
{
    on_deact_count(self, state, reason);
    struct vstate *st = state;
    uint64_t one = 1;
    if (reason != PITH_VDEACT_SHUTDOWN && atomic_load(&hook_ran[0]) == 0)
        note_hook(0, pith_vsend(&st->me, ADD, &one, sizeof(one)));
}

VTYPE_ACT(selfie, (void)0)
static const pith_vtype_t selfie_type = {
    .name = "selfie",
    .actor = &edge_actor,
    .on_activate = selfie_act,
    .on_deactivate = selfie_deact,
};

VTYPE_ACT(selfie_idle, (void)0)
static const pith_vtype_t selfie_idle_type = {
    .name = "selfie.idle",
    .actor = &edge_actor,
    .idle_ns = 20 * MS,
    .on_activate = selfie_idle_act,
    .on_deactivate = selfie_deact,
};

Test(vactor_edge, on_deactivate_sending_to_its_own_key_reaches_the_next_activation, .timeout = 60)
{
    start(2);
    pith_vref_t v = vref_of(&selfie_type, "me");
    vsend_ok(&v, ADD, 1);
    vsend_ok(&v, OFF, 0);
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_SELF]) == 1);
    cr_assert_eq(atomic_load(&hook_ran[0]), 1);
    cr_assert_eq(atomic_load(&hook_rc[0]), 0, "on_deactivate's pith_vsend: %d",
                 atomic_load(&hook_rc[0]));
    /* The send was accepted on the directory shard before this ask left: it is ahead of it. */
    uint64_t n = ask_n(&v);
    cr_assert_eq(atomic_load(&adds_msgs), 2,
                 "on_deactivate's message to itself was accepted (0) and never delivered: "
                 "%llu of 2 ADDs seen",
                 (unsigned long long)atomic_load(&adds_msgs));
    cr_assert_eq(n, 1, "the next activation holds the ADD");
    test_stop(NULL);
}

Test(vactor_edge, on_deactivate_for_idleness_sending_to_its_own_key_reaches_the_next_activation,
     .timeout = 60)
{
    start(2);
    pith_vref_t v = vref_of(&selfie_idle_type, "me");
    vsend_ok(&v, ADD, 1);
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_IDLE]) >= 1);
    cr_assert_eq(atomic_load(&hook_rc[0]), 0, "on_deactivate's pith_vsend: %d",
                 atomic_load(&hook_rc[0]));
    (void)ask_n(&v);
    cr_assert_eq(atomic_load(&adds_msgs), 2,
                 "on_deactivate's message to itself was accepted (0) and never delivered: "
                 "%llu of 2 ADDs seen",
                 (unsigned long long)atomic_load(&adds_msgs));
    test_stop(NULL);
}

/* on_deactivate sends to two other virtual actors, one of each shard. */
static pith_vref_t relay_to[2];

static void relay_deact(pith_actor_t *self, void *state, int reason)
{
    on_deact_count(self, state, reason);
    uint64_t one = 1;
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++)
        rc = pith_vsend(&relay_to[i], ADD, &one, sizeof(one));
    note_hook(reason == PITH_VDEACT_SHUTDOWN ? 2 : 1, rc);
}

VTYPE_ACT(relay, (void)0)
static const pith_vtype_t relay_type = {
    .name = "relay",
    .actor = &edge_actor,
    .on_activate = relay_act,
    .on_deactivate = relay_deact,
};

Test(vactor_edge, on_deactivate_sending_to_other_virtual_actors_delivers_until_the_stop,
     .timeout = 60)
{
    start(2);
    relay_to[0] = key_on(&edge_type, 0, "r", 0);
    relay_to[1] = key_on(&edge_type, 1, "r", 0);
    pith_vref_t a = vref_of(&relay_type, "a"), b = vref_of(&relay_type, "b");
    vsend_ok(&a, OFF, 0);
    TEST_WAIT_FOR(atomic_load(&hook_ran[1]) == 1);
    cr_assert_eq(atomic_load(&hook_rc[1]), 0, "on_deactivate's sends: %d",
                 atomic_load(&hook_rc[1]));
    for (int i = 0; i < 2; i++) {
        uint64_t n = 0;
        TEST_WAIT_WITH(n = ask_n(&relay_to[i]), n >= 1);
        cr_assert_eq(n, 1);
    }
    /* One left alive: at the stop its sends are refused, not lost half-way. */
    cr_assert_eq(ask_n(&b), 0);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&hook_ran[2]), 1);
    cr_assert_eq(atomic_load(&hook_rc[2]), -ESHUTDOWN, "at the stop: %d", atomic_load(&hook_rc[2]));
}

/* on_activate sends ADD 100 to itself. */
VTYPE_ACT(greeter, {
    struct vstate *st = state;
    uint64_t hundred = 100;
    note_hook(0, pith_vsend(&st->me, ADD, &hundred, sizeof(hundred)));
})
static const pith_vtype_t greeter_type = {
    .name = "greeter",
    .actor = &edge_actor,
    .on_activate = greeter_act,
    .on_deactivate = on_deact_count,
};

Test(vactor_edge, on_activate_sending_to_itself_is_handled_before_the_first_message, .timeout = 60)
{
    start(2);
    pith_vref_t v = vref_of(&greeter_type, "hi");
    cr_assert_eq(ask_n(&v), 100);
    cr_assert_eq(atomic_load(&hook_rc[0]), 0);
    vsend_ok(&v, OFF, 0);
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_SELF]) == 1);
    cr_assert_eq(ask_n(&v), 100, "a new activation greets itself again, from fresh state");
    cr_assert_eq(atomic_load(&hook_ran[0]), 2);
    cr_assert_eq(stats_of(&greeter_type).activations, 2);
    test_stop(NULL);
}

/* on_activate stops itself while quit is set. */
static _Atomic int quit = 1;
VTYPE_ACT(quitter, {
    if (atomic_load(&quit))
        note_hook(0, pith_stop(pith_self(self)));
})
static const pith_vtype_t quitter_type = {
    .name = "quitter",
    .actor = &edge_actor,
    .on_activate = quitter_act,
    .on_deactivate = on_deact_count,
};

Test(vactor_edge, on_activate_that_stops_itself_fails_the_activation_and_the_next_one_retries,
     .timeout = 60)
{
    start(2);
    pith_vref_t v = vref_of(&quitter_type, "q");
    uint64_t n = 0;
    int rc = client_ask(&v, GET, &n);
    cr_assert_eq(rc, -ECANCELED, "the ask fails with %d", rc);
    cr_assert_eq(atomic_load(&hook_rc[0]), 0, "pith_stop of itself: %d", atomic_load(&hook_rc[0]));
    pith_vtype_stats_t st = stats_of(&quitter_type);
    cr_assert_eq(st.activate_failed, 1);
    cr_assert_eq(st.activations, 0);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(deacts_total(), 0, "no on_deactivate for an activation that never began");
    atomic_store(&quit, 0);
    cr_assert_eq(ask_n(&v), 0);
    cr_assert_eq(stats_of(&quitter_type).activations, 1);
    test_stop(NULL);
}

Test(vactor_edge, a_failed_behaviour_ends_the_activation_and_the_next_message_starts_afresh,
     .timeout = 60)
{
    start(2);
    pith_vref_t v = vref_of(&edge_type, "fails");
    vsend_ok(&v, ADD, 5);
    uint64_t n = 0;
    /* FAIL replies, then fails: the reply is out before the activation ends. */
    cr_assert_eq(client_ask(&v, FAIL, &n), 0);
    cr_assert_eq(n, 5);
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_ENDED]) == 1);
    cr_assert_eq(ask_n(&v), 0, "fresh state");
    pith_vtype_stats_t st = stats_of(&edge_type);
    cr_assert_eq(st.activations, 2);
    cr_assert_eq(st.deactivations[PITH_VDEACT_ENDED], 1);
    cr_assert_eq(st.live, 1);
    test_stop(NULL);
}

static void *fail_then_adds_fn(void *arg)
{
    const pith_vref_t *v = arg;
    uint64_t one = 1;
    int rc = pith_vsend(v, FAIL, NULL, 0);
    for (int i = 0; i < 3 && rc == 0; i++)
        rc = pith_vsend(v, ADD, &one, sizeof(one));
    return (void *)(intptr_t)rc;
}

Test(vactor_edge, messages_waiting_behind_a_failure_are_delivered_or_reported, .timeout = 60)
{
    start(2);
    pith_vref_t v = key_on(&edge_type, 0, "f", 0);
    void *res = NULL;
    cr_assert_eq(pith_call_wait(0, fail_then_adds_fn, &v, &res), 0);
    cr_assert_eq((int)(intptr_t)res, 0);
    TEST_WAIT_FOR(atomic_load(&adds_msgs) + atomic_load(&notice_ecanceled) == 3);
    uint64_t n = ask_n(&v);
    cr_assert_eq(n, atomic_load(&adds_msgs), "what was delivered went to the new activation");
    cr_assert_eq(atomic_load(&notice_other), 0);
    cr_log_info("behind a failure: %llu delivered, %llu reported -ECANCELED\n",
                (unsigned long long)atomic_load(&adds_msgs),
                (unsigned long long)atomic_load(&notice_ecanceled));
    test_stop(NULL);
}

/* ---- engine stop with activations and messages in flight ---- */

VTYPE_ACT(flash, (void)0)
static const pith_vtype_t flash_type = {
    .name = "flash",
    .actor = &edge_actor,
    .idle_ns = 2 * MS,
    .on_activate = flash_act,
    .on_deactivate = on_deact_count,
};

struct spray {
    const pith_vtype_t *t;
    const char *prefix;
    unsigned n;
    test_error_t *err;
};

/* One message to each of n keys, every third a buffer: most are across. */
static void spray_fn(void *arg)
{
    struct spray *q = arg;
    uint64_t one = 1;
    for (unsigned i = 0; i < q->n; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "%s%u.%d", q->prefix, i, pith_shard_id());
        pith_vref_t v;
        int rc = pith_vref(q->t, key, (size_t)kl, &v);
        if (rc == 0 && i % 3 == 0) {
            pith_buf_t *b = buf_make((unsigned char)i);
            rc = b != NULL ? pith_vsend_buf(&v, BUF, b) : -ENOMEM;
            pith_buf_release(b);
        } else if (rc == 0) {
            rc = pith_vsend(&v, ADD, &one, sizeof(one));
        }
        if (rc == -ESHUTDOWN)
            return;
        if (rc != 0 && rc != -EAGAIN)
            TEST_NOTE(q->err, rc);
    }
}

static void *spray_call(void *arg)
{
    spray_fn(arg);
    return NULL;
}

Test(vactor_edge, the_engine_stops_with_many_activations_and_a_short_idle_sweep_armed,
     .timeout = 60)
{
    start(2);
    test_error_t err = {0};
    struct spray q = {.t = &flash_type, .prefix = "s", .n = (unsigned)scaled(400), .err = &err};
    cr_assert_eq(pith_call_wait(0, spray_call, &q, NULL), 0);
    cr_assert_eq(pith_call_wait(1, spray_call, &q, NULL), 0);
    test_assert_no_error(&err);
    test_stop(NULL); /* some are idle, some going, some coming; the stop's leak check */
    cr_assert_gt(atomic_load(&acts), 0);
    cr_assert_eq(atomic_load(&acts), deacts_total(), "every activation that began ended");
}

struct flood {
    unsigned n;
    uint64_t sent, last_rc;
    test_error_t *err;
};

static void *flood_thread(void *arg)
{
    struct flood *f = arg;
    pith_client_t *c = pith_client_open(NULL);
    if (c == NULL) {
        f->last_rc = (uint64_t)(int64_t)-errno; /* the stop came first: -ESHUTDOWN */
        if (errno != ESHUTDOWN)
            TEST_NOTE(f->err, -errno);
        return NULL;
    }
    for (unsigned i = 0; i < f->n; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "o%u", i % 512);
        pith_vref_t v;
        uint64_t one = 1;
        int rc = pith_vref(&flash_type, key, (size_t)kl, &v);
        if (rc == 0)
            rc = pith_client_vsend(c, &v, ADD, &one, sizeof(one), 0);
        f->last_rc = (uint64_t)(int64_t)rc;
        if (rc == 0)
            f->sent++;
        else if (rc == -ESHUTDOWN)
            break;
        else if (rc != -EAGAIN)
            TEST_NOTE(f->err, rc);
    }
    pith_client_close(c);
    return NULL;
}

Test(vactor_edge, the_engine_stops_with_messages_in_flight_to_keys_not_yet_activated, .timeout = 60)
{
    start(3);
    test_error_t err = {0};
    struct flood f = {.n = 1u << 22, .err = &err};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, flood_thread, &f), 0);
    struct spray q[3];
    for (unsigned sh = 0; sh < 3; sh++) {
        q[sh] = (struct spray){
            .t = &flash_type, .prefix = "m", .n = (unsigned)scaled(600), .err = &err};
        cr_assert_eq(pith_submit(sh, spray_fn, &q[sh]), 0);
    }
    /* No wait: the stop finds the sprays running, queued, or crossing the mesh. */
    cr_assert_eq(pith_engine_stop(), 0);
    pthread_join(t, NULL);
    test_assert_no_leaks();
    test_assert_no_error(&err);
    cr_assert_eq((int64_t)f.last_rc, -ESHUTDOWN, "the client's sends end with -ESHUTDOWN");
    cr_assert_eq(atomic_load(&acts), deacts_total(), "every activation that began ended");
}

Test(vactor_edge, a_vref_outlives_its_engine_and_works_with_the_next_one, .timeout = 60)
{
    start(2);
    pith_vref_t v = vref_of(&edge_type, "phoenix");
    vsend_ok(&v, ADD, 3);
    cr_assert_eq(ask_n(&v), 3);
    test_stop(NULL);
    cr_assert_eq(pith_vsend(&v, ADD, NULL, 0), -ESHUTDOWN);
    pith_config_t cfg = test_config(3);
    test_start(&cfg);
    cr_assert_eq(ask_n(&v), 0, "a new engine, a new activation");
    vsend_ok(&v, ADD, 2);
    cr_assert_eq(ask_n(&v), 2);
    pith_vactor_info_t info;
    cr_assert_eq(pith_vactor_info(&v, 5 * SEC, &info), 0);
    cr_assert(info.active);
    cr_assert_lt(info.dir_shard, 3u);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&acts), 2);
    cr_assert_eq(atomic_load(&deacts[PITH_VDEACT_SHUTDOWN]), 2);
}

/* ---- idle deactivation racing senders ---- */

VTYPE_ACT(flicker, (void)0)
static const pith_vtype_t flicker_type = {
    .name = "flicker",
    .actor = &edge_actor,
    .idle_ns = 1 * MS, /* swept every ms: gone 4 to 5 ms after its last message */
    .on_activate = flicker_act,
    .on_deactivate = on_deact_count,
};

Test(vactor_edge, idle_deactivation_racing_three_senders_counts_each_message_once_in_order,
     .timeout = 120)
{
    start(2);
    atomic_store(&seq_strict, 7u);
    pith_vref_t v = vref_of(&flicker_type, "flick");
    test_error_t err = {0};
    uint32_t rounds = (uint32_t)scaled(120) < 12 ? 12 : (uint32_t)scaled(120);
    struct test_flick f[3];
    for (uint32_t i = 0; i < 3; i++)
        f[i] = (struct test_flick){.v = &v,
                                   .seq_type = SEQ,
                                   .off_type = OFF,
                                   .own_ns = 200 * 1000,
                                   .sender = i,
                                   .rounds = rounds,
                                   .burst = 16,
                                   .err = &err};
    test_flick_t0 = pith_now_ns() + 5 * MS;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, test_flick_outside, &f[2]), 0);
    cr_assert_eq(pith_submit(0, test_flick_fn, &f[0]), 0);
    cr_assert_eq(pith_submit(1, test_flick_fn, &f[1]), 0);
    pthread_join(t, NULL);
    TEST_WAIT_FOR(atomic_load(&f[0].done) && atomic_load(&f[1].done));
    test_assert_no_error(&err);
    TEST_WAIT_FOR(atomic_load(&seq_seen[0]) + atomic_load(&seq_seen[1]) +
                      atomic_load(&seq_seen[2]) >=
                  (uint64_t)f[0].seq + f[1].seq + f[2].seq);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(atomic_load(&seq_seen[i]), f[i].seq, "sender %d: %llu seen of %u sent", i,
                     (unsigned long long)atomic_load(&seq_seen[i]), f[i].seq);
    cr_assert_eq(atomic_load(&seq_bad), 0, "%llu out of order",
                 (unsigned long long)atomic_load(&seq_bad));
    cr_assert_eq(atomic_load(&notices[0]) + atomic_load(&notices[1]), 0,
                 "nothing came back undelivered");
    TEST_WAIT_FOR(stats_of(&flicker_type).live == 0);
    pith_vtype_stats_t st = stats_of(&flicker_type);
    cr_assert_eq(st.activations, atomic_load(&acts));
    cr_assert_eq(atomic_load(&acts), deacts_total());
    cr_assert_geq(st.deactivations[PITH_VDEACT_SELF], 1, "the OFFs deactivated");
    cr_log_info("flicker: %llu activations, %llu idle, %llu self\n",
                (unsigned long long)st.activations,
                (unsigned long long)st.deactivations[PITH_VDEACT_IDLE],
                (unsigned long long)st.deactivations[PITH_VDEACT_SELF]);
    test_stop(NULL);
}

/* ---- the cap, with every activation busy ---- */

VTYPE_ACT(busycap, (void)0)
static const pith_vtype_t busycap_type = {
    .name = "busycap",
    .actor = &edge_actor,
    .max_per_shard = 2,
    .on_activate = busycap_act,
    .on_deactivate = on_deact_count,
};

Test(vactor_edge, the_cap_with_every_activation_busy_refuses_here_and_reports_elsewhere,
     .timeout = 60)
{
    start(2);
    pith_vref_t a = key_on(&busycap_type, 0, "c", 0), b = key_on(&busycap_type, 0, "c", 1),
                c = key_on(&busycap_type, 0, "c", 2);
    /* a and b send themselves HOLD for as long as hold is set: never idle. */
    atomic_store(&hold, 1);
    vsend_ok(&a, HOLD, 0);
    vsend_ok(&b, HOLD, 0);
    TEST_WAIT_FOR(stats_of(&busycap_type).live == 2);
    /* On the directory shard: refused at once. */
    struct task_sends here = {.v = &c};
    cr_assert_eq(pith_call_wait(0, task_sends_fn, &here, NULL), 0);
    cr_assert_eq(here.rc_send, -EAGAIN, "vsend: %d", here.rc_send);
    cr_assert_eq(here.rc_ask, -EAGAIN, "vask: %d", here.rc_ask);
    cr_assert_eq(here.rc_buf, -EAGAIN, "vsend_buf: %d", here.rc_buf);
    /* From the other shard: accepted, then told. */
    struct task_sends there = {.v = &c};
    cr_assert_eq(pith_call_wait(1, task_sends_fn, &there, NULL), 0);
    cr_assert_eq(there.rc_send, 0);
    cr_assert_eq(there.rc_ask, 0);
    cr_assert_eq(there.rc_buf, 0);
    TEST_WAIT_FOR(atomic_load(&cbs[1].done) == 1 && atomic_load(&notices[1]) == 2);
    cr_assert_eq(atomic_load(&cbs[1].err), -EAGAIN);
    cr_assert_eq(atomic_load(&notice_eagain), 2);
    /* From a behaviour across, and from a client. */
    pith_ref_t asker = asker_on(1);
    asker_start(asker, 0, &c);
    TEST_WAIT_FOR(atomic_load(&ask_done[0]));
    cr_assert_eq(atomic_load(&ask_rc[0]), 0);
    cr_assert_eq(atomic_load(&ask_err[0]), -EAGAIN);
    uint64_t n;
    cr_assert_eq(client_ask(&c, GET, &n), -EAGAIN);
    vsend_ok(&c, ADD, 1);
    pith_msg_t m;
    cr_assert_eq(pith_client_receive(pith_client_self(), &m, 20 * SEC), 0);
    cr_assert_eq(m.type, PITH_MSG_UNDELIVERED);
    pith_undelivered_t u;
    memcpy(&u, m.data, sizeof(u));
    cr_assert_eq(u.reason, -EAGAIN);
    cr_assert_eq(u.type, ADD);
    pith_vtype_stats_t st = stats_of(&busycap_type);
    cr_assert_eq(st.refused, 3 + 3 + 1 + 2, "refused %llu", (unsigned long long)st.refused);
    cr_assert_eq(st.live, 2);
    test_assert_no_error(&self_err);
    /* Let them go idle: then c makes room by deactivating the least recently used. */
    atomic_store(&hold, 0);
    int rc = -EAGAIN;
    TEST_WAIT_WITH(rc = client_ask(&c, GET, &n), rc != -EAGAIN);
    cr_assert_eq(rc, 0);
    cr_assert_eq(stats_of(&busycap_type).deactivations[PITH_VDEACT_CAP], 1);
    test_stop(NULL);
}

/* Two activations idle at the cap; x's on_deactivate sends to b, the key whose message is making
 * room, so that the eviction for b runs user code that wants b. */
static pith_vref_t dbl_b;
static _Atomic uint64_t dbl_b_acts;

static void dbl_deact(pith_actor_t *self, void *state, int reason)
{
    on_deact_count(self, state, reason);
    struct vstate *st = state;
    uint64_t one = 1;
    if (st->me.len == 1 && st->me.key[0] == 'x' && reason == PITH_VDEACT_CAP)
        note_hook(0, pith_vsend(&dbl_b, ADD, &one, sizeof(one)));
}

VTYPE_ACT(dbl, {
    if (len == 1 && ((const char *)key)[0] == 'b')
        atomic_fetch_add(&dbl_b_acts, 1);
})
static const pith_vtype_t dbl_type = {
    .name = "dbl",
    .actor = &edge_actor,
    .max_per_shard = 2,
    .on_activate = dbl_act,
    .on_deactivate = dbl_deact,
};

Test(vactor_edge, an_eviction_whose_on_deactivate_sends_to_the_new_key_activates_it_once,
     .timeout = 60)
{
    start(1);
    pith_vref_t x = vref_of(&dbl_type, "x"), y = vref_of(&dbl_type, "y");
    dbl_b = vref_of(&dbl_type, "b");
    cr_assert_eq(ask_n(&x), 0);
    cr_assert_eq(ask_n(&y), 0); /* x is now the least recently used */
    vsend_ok(&dbl_b, ADD, 10);
    uint64_t n = ask_n(&dbl_b);
    cr_assert_eq(atomic_load(&hook_ran[0]), 1);
    cr_assert_eq(atomic_load(&hook_rc[0]), 0, "x's send to b: %d", atomic_load(&hook_rc[0]));
    pith_vtype_stats_t st = stats_of(&dbl_type);
    cr_assert_eq(atomic_load(&dbl_b_acts), 1, "b activated %llu times (live %llu, cap 2)",
                 (unsigned long long)atomic_load(&dbl_b_acts), (unsigned long long)st.live);
    cr_assert_eq(n, 11, "b holds both ADDs: %llu", (unsigned long long)n);
    cr_assert_leq(st.live, 2, "the cap holds");
    test_stop(NULL);
}

/* ---- a deactivation moves a full mailbox whole ---- */

/* on_activate sends itself ADD 0 (counted as a message, not in the sum). */
VTYPE_ACT(tight, {
    struct vstate *st = state;
    uint64_t zero = 0;
    note_hook(0, pith_vsend(&st->me, ADD, &zero, sizeof(zero)));
})
static const pith_vtype_t tight_type = {
    .name = "tight",
    .actor = &narrow_actor,
    .on_activate = tight_act,
    .on_deactivate = on_deact_count,
};

static void *refill_fn(void *arg)
{
    const pith_vref_t *v = arg;
    uint64_t one = 1;
    /* Activates (its ADD 0 first), then REFILL and two ADDs: four waiting, the bound. */
    int rc = pith_vsend(v, REFILL, NULL, 0);
    for (int i = 0; i < 2 && rc == 0; i++)
        rc = pith_vsend(v, ADD, &one, sizeof(one));
    return (void *)(intptr_t)rc;
}

Test(vactor_edge, a_deactivation_moves_a_full_mailbox_whole_to_the_next_activation, .timeout = 60)
{
    start(1);
    pith_vref_t v = vref_of(&tight_type, "t");
    void *res = NULL;
    cr_assert_eq(pith_call_wait(0, refill_fn, &v, &res), 0);
    cr_assert_eq((int)(intptr_t)res, 0);
    /* REFILL deactivates and sends itself two more: four wait when the deactivation comes;
     * the next activation sends itself one before they are moved in. */
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_SELF]) == 1);
    test_assert_no_error(&self_err);
    (void)ask_n(&v);
    cr_assert_eq(atomic_load(&adds_seen), 4,
                 "%llu of the 4 ADDs that waited reached the next activation",
                 (unsigned long long)atomic_load(&adds_seen));
    test_stop(NULL);
}

/* ---- actor types at the edges: no state, and an init that fails or sends ---- */

/* No state at all: the key is all an activation has. GET answers with it. */
static int keyecho_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    uint32_t len = 0;
    const void *key = pith_vactor_key(self, &len);
    if (msg->type == GET)
        (void)pith_reply(msg, GET, key, key != NULL ? len : 0);
    else if (msg->type == OFF)
        (void)pith_vactor_deactivate(self);
    return 0;
}

static const pith_actor_type_t keyecho_actor = {.name = "keyecho", .behaviour = keyecho_behaviour};
static const pith_vtype_t keyecho_type = {
    .name = "keyecho",
    .actor = &keyecho_actor,
    .on_deactivate = on_deact_count,
};

Test(vactor_edge, an_actor_without_state_has_its_key_the_longest_and_the_empty_one, .timeout = 60)
{
    start(2);
    unsigned char key[PITH_VKEY_MAX];
    for (unsigned i = 0; i < sizeof(key); i++)
        key[i] = (unsigned char)(255 - i);
    pith_vref_t longest, empty;
    cr_assert_eq(pith_vref(&keyecho_type, key, sizeof(key), &longest), 0);
    cr_assert_eq(pith_vref(&keyecho_type, NULL, 0, &empty), 0);
    for (int round = 0; round < 2; round++) {
        pith_msg_t reply;
        cr_assert_eq(pith_client_vask(pith_client_self(), &longest, GET, NULL, 0, 20 * SEC, &reply),
                     0);
        cr_assert_eq(reply.len, sizeof(key));
        cr_assert_eq(memcmp(reply.data, key, sizeof(key)), 0, "the key as the activation sees it");
        cr_assert_eq(pith_client_vask(pith_client_self(), &empty, GET, NULL, 0, 20 * SEC, &reply),
                     0);
        cr_assert_eq(reply.len, 0);
        vsend_ok(&longest, OFF, 0);
        vsend_ok(&empty, OFF, 0);
        TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_SELF]) == 2u * (round + 1u));
    }
    cr_assert_eq(stats_of(&keyecho_type).activations, 4);
    test_stop(NULL);
}

/* init fails while init_fail is set; else it sends ADD 1 to its own key. */
static _Atomic int init_fail;
static _Atomic uint64_t init_calls;
static const pith_vtype_t initer_type;

static int initer_init(pith_actor_t *self, void *state, void *arg)
{
    (void)state;
    atomic_fetch_add(&init_calls, 1);
    if (arg != NULL)
        return -EPROTO; /* a virtual actor's init gets NULL */
    int f = atomic_load(&init_fail);
    if (f != 0)
        return f;
    uint32_t len = 0;
    const void *key = pith_vactor_key(self, &len);
    pith_vref_t me;
    uint64_t one = 1;
    int rc = key != NULL ? pith_vref(&initer_type, key, len, &me) : -ENOENT;
    if (rc == 0)
        rc = pith_vsend(&me, ADD, &one, sizeof(one));
    note_hook(0, rc);
    return 0;
}

static const pith_actor_type_t initer_actor = {
    .name = "initer",
    .behaviour = edge_behaviour,
    .init = initer_init,
    .terminate = edge_terminate,
    .state_size = sizeof(struct vstate),
};

VTYPE_ACT(initer, (void)0)
static const pith_vtype_t initer_type = {
    .name = "initer",
    .actor = &initer_actor,
    .on_activate = initer_act,
    .on_deactivate = on_deact_count,
};

Test(vactor_edge, an_init_that_fails_fails_the_activation_and_one_that_sends_to_itself_is_heard,
     .timeout = 60)
{
    start(2);
    pith_vref_t v = vref_of(&initer_type, "init");
    atomic_store(&init_fail, -EIO);
    uint64_t n = 0;
    int rc = client_ask(&v, GET, &n);
    cr_assert_eq(rc, -EIO, "the ask fails with init's error, got %d", rc);
    pith_vtype_stats_t st = stats_of(&initer_type);
    cr_assert_eq(st.activate_failed, 1);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(atomic_load(&acts), 0, "on_activate does not run after init failed");
    atomic_store(&init_fail, 0);
    cr_assert_eq(ask_n(&v), 1, "init's message to itself came first");
    cr_assert_eq(atomic_load(&hook_rc[0]), 0, "init's pith_vsend to itself: %d",
                 atomic_load(&hook_rc[0]));
    cr_assert_eq(stats_of(&initer_type).activations, 1);
    test_stop(NULL);
}

/* An application's -ENOMEM from init or on_activate is its answer, as any other error: a
 * client's message that meets it comes back with it, once, instead of being tried again and
 * again while the client's lane to that shard waits behind it. */
Test(vactor_edge, an_activation_failing_with_enomem_fails_a_clients_ask_at_once, .timeout = 60)
{
    start(2);
    pith_vref_t v = vref_of(&initer_type, "oom"), b = vref_of(&broken_type, "oom");
    atomic_store(&init_fail, -ENOMEM);
    atomic_store(&broken_err, -ENOMEM);
    /* Two clients: a lane held up by the first must not hold up the second. */
    pith_client_t *c2 = pith_client_open(NULL);
    cr_assert_not_null(c2);
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), &v, GET, NULL, 0, 3 * SEC, &reply);
    uint64_t inits = atomic_load(&init_calls);
    int rc2 = pith_client_vask(c2, &b, GET, NULL, 0, 3 * SEC, &reply);
    uint64_t tries = atomic_load(&broken_tries);
    atomic_store(&init_fail, 0); /* a lane that retries gets through before the stop */
    atomic_store(&broken_err, 0);
    cr_assert(rc == -ENOMEM && rc2 == -ENOMEM,
              "init's -ENOMEM: the ask ended with %d (%s) after %llu inits; on_activate's: %d "
              "(%s) after %llu tries",
              rc, pith_strerror(rc), (unsigned long long)inits, rc2, pith_strerror(rc2),
              (unsigned long long)tries);
    cr_assert_eq(ask_n(&v), 1);
    pith_client_close(c2);
    test_stop(NULL);
}

/* ---- pith_vactor_info ---- */

struct info_call {
    const pith_vref_t *v;
    pith_vactor_info_t out;
    int rc;
};

static void *info_call_fn(void *arg)
{
    struct info_call *q = arg;
    q->rc = pith_vactor_info(q->v, 5 * SEC, &q->out);
    return NULL;
}

Test(vactor_edge, vactor_info_from_outside_the_directory_shard_and_the_wrong_shard, .timeout = 60)
{
    start(2);
    pith_vref_t v = key_on(&edge_type, 1, "i", 0);
    pith_vactor_info_t info;
    cr_assert_eq(pith_vactor_info(&v, 5 * SEC, &info), 0);
    cr_assert_eq(info.dir_shard, 1);
    cr_assert_not(info.active, "nothing activated by asking where");
    cr_assert_eq(stats_of(&edge_type).activations, 0);
    vsend_ok(&v, ADD, 1);
    cr_assert_eq(ask_n(&v), 1);
    cr_assert_eq(pith_vactor_info(&v, 5 * SEC, &info), 0);
    cr_assert(info.active);
    cr_assert_eq(info.shard, 1);
    cr_assert_eq(pith_ref_shard(info.ref), 1);
    cr_assert_eq(info.placement, PITH_PLACE_HASH);
    struct info_call right = {.v = &v}, wrong = {.v = &v};
    cr_assert_eq(pith_call_wait(1, info_call_fn, &right, NULL), 0);
    cr_assert_eq(right.rc, 0);
    cr_assert_eq(right.out.ref, info.ref);
    cr_assert_eq(pith_call_wait(0, info_call_fn, &wrong, NULL), 0);
    cr_assert_eq(wrong.rc, -EDEADLK, "from shard 0: %d", wrong.rc);
    cr_assert_eq(pith_vactor_info(&v, 5 * SEC, NULL), -EINVAL);
    cr_assert_eq(pith_vactor_info(NULL, 5 * SEC, &info), -EINVAL);
    pith_vref_t forged = v;
    forged.tid = 99;
    cr_assert_eq(pith_vactor_info(&forged, 5 * SEC, &info), -EINVAL);
    vsend_ok(&v, OFF, 0);
    TEST_WAIT_FOR(pith_vactor_info(&v, 5 * SEC, &info) == 0 && !info.active);
    test_stop(NULL);
    cr_assert_eq(pith_vactor_info(&v, 5 * SEC, &info), -ESHUTDOWN);
}

/* Holds a shard until released (bounded). */
static _Atomic int spin_release, spinning;

static void spin_task(void *arg)
{
    (void)arg;
    atomic_store(&spinning, 1);
    uint64_t end = pith_now_ns() + 60 * SEC;
    while (!atomic_load(&spin_release) && pith_now_ns() < end)
        ;
    atomic_store(&spinning, 0);
}

static pith_vactor_info_t probe_out;

struct probe {
    pith_vref_t v;
    int rc;
    _Atomic int returned, stop;
    bool written;
};

static void *probe_thread(void *arg)
{
    struct probe *p = arg;
    memset(&probe_out, 0xAB, sizeof(probe_out));
    p->rc = pith_vactor_info(&p->v, 5 * MS, &probe_out);
    atomic_store_explicit(&p->returned, 1, memory_order_release);
    /* No calls from here on: pith_vactor_info's frame stays as it was left, so a late write
     * lands in probe_out instead of crashing. */
    for (uint64_t i = 0; i < (UINT64_C(1) << 36); i++)
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            break;
    p->written = __atomic_load_n(&probe_out.dir_shard, __ATOMIC_RELAXED) != 0xABABABABu;
    return NULL;
}

Test(vactor_edge, vactor_info_that_times_out_leaves_its_caller_alone, .timeout = 60)
{
    start(2);
    struct probe p = {.v = key_on(&edge_type, 0, "p", 0)};
    cr_assert_eq(pith_submit(0, spin_task, NULL), 0);
    TEST_WAIT_FOR_ON(1, atomic_load(&spinning));
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, probe_thread, &p), 0);
    TEST_WAIT_FOR_ON(1, atomic_load_explicit(&p.returned, memory_order_acquire));
    atomic_store(&spin_release, 1);
    for (int i = 0; i < 8; i++)
        test_sync_all(); /* the shard runs what waited in the lanes, the probe's call too */
    atomic_store_explicit(&p.stop, 1, memory_order_release);
    pthread_join(t, NULL);
    cr_assert_eq(p.rc, -ETIMEDOUT, "the directory shard was held: %d", p.rc);
    cr_assert_not(p.written, "pith_vactor_info wrote *out (through a pointer into its own dead "
                             "stack frame) after it had returned -ETIMEDOUT");
    test_stop(NULL);
}

/* ---- pith_vtype_stats while the engine stops ---- */

struct stats_reader {
    _Atomic uint64_t reads;
    int last_rc;
};

static void *stats_reader_thread(void *arg)
{
    struct stats_reader *r = arg;
    pith_vtype_stats_t st;
    for (uint64_t i = 0; i < (UINT64_C(1) << 32); i++) {
        r->last_rc = pith_vtype_stats(&edge_type, &st);
        if (r->last_rc != 0)
            break;
        atomic_fetch_add(&r->reads, 1);
    }
    return NULL;
}

/* The stop frees each shard's counters: a reader must not be among them then (as
 * pith_actor_type_stats keeps readers out). A few rounds, two readers each: the window is short. */
Test(vactor_edge, vtype_stats_read_while_the_engine_stops, .timeout = 120)
{
    for (int round = 0; round < 4; round++) {
        start(4);
        for (unsigned sh = 0; sh < 4; sh++) {
            pith_vref_t v = key_on(&edge_type, sh, "st", 0);
            vsend_ok(&v, ADD, 1);
            cr_assert_eq(ask_n(&v), 1);
        }
        struct stats_reader r[2] = {0};
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            cr_assert_eq(pthread_create(&t[i], NULL, stats_reader_thread, &r[i]), 0);
        TEST_WAIT_FOR(atomic_load(&r[0].reads) >= 100 && atomic_load(&r[1].reads) >= 100);
        cr_assert_eq(pith_engine_stop(), 0);
        for (int i = 0; i < 2; i++) {
            pthread_join(t[i], NULL);
            cr_assert_eq(r[i].last_rc, -ESHUTDOWN);
        }
        test_assert_no_leaks();
    }
}

/* ---- the sender's ref ---- */

static void *from_task_fn(void *arg)
{
    return (void *)(intptr_t)pith_vsend(arg, FROM, NULL, 0);
}

Test(vactor_edge, a_vsend_from_outside_comes_from_the_threads_own_client, .timeout = 60)
{
    start(2);
    pith_vref_t v = key_on(&edge_type, 0, "from", 0);
    atomic_store(&last_from, 1);
    cr_assert_eq(pith_vsend(&v, FROM, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&last_from) != 1);
    cr_assert_eq(atomic_load(&last_from), pith_client_ref(pith_client_self()));
    void *res = NULL;
    for (unsigned sh = 0; sh < 2; sh++) {
        atomic_store(&last_from, 1);
        cr_assert_eq(pith_call_wait(sh, from_task_fn, &v, &res), 0);
        cr_assert_eq((int)(intptr_t)res, 0);
        TEST_WAIT_FOR(atomic_load(&last_from) != 1);
        cr_assert_eq(atomic_load(&last_from), PITH_REF_NONE, "a task's message comes from none");
    }
    test_stop(NULL);
}

static void register_all(void)
{
    static const pith_vtype_t *const all[] = {
        &edge_type,    &broken_type,  &narrow_type,  &selfie_type, &selfie_idle_type,
        &relay_type,   &greeter_type, &quitter_type, &flash_type,  &flicker_type,
        &busycap_type, &keyecho_type, &initer_type,  &dbl_type,    &tight_type,
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        cr_assert_eq(pith_vtype_register(all[i]), 0, "registering %s", all[i]->name);
}
