/* The actor layer's supervision side (pith/actor.h): ask and reply (here and across shards, from
 * an actor and from a task with a callback, timeouts, late replies, errors), actor timers
 * (one-shot, periodic, cancel, ending with their actor), monitors, links (failures, normal
 * stops, trapped exits, kill), supervisors (the three strategies, restart counters, names kept
 * across restarts, escalation past the intensity), the registry, and an engine stopped in the
 * middle of all of that.
 * Actor code runs on shard threads and reports back in a log: nothing asserts on a shard
 * thread. Work meant for a shard runs there through pith_call_wait. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

/* ---- helpers ---- */

/* Sleeps ms milliseconds: only to give something that must NOT happen (a timer that was
 * cancelled, a reply that came too late) the time to show up if it wrongly did. */
static void settle_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static void *call_on(unsigned shard, pith_call_fn_t fn, void *arg)
{
    void *res = NULL;
    int rc = pith_call_wait(shard, fn, arg, &res);
    cr_assert_eq(rc, 0, "pith_call_wait(%u): %d (%s)", shard, rc, pith_strerror(rc));
    return res;
}

struct spawn_req {
    const pith_actor_type_t *type;
    void *arg;
    pith_ref_t ref;
    int rc;
};

static void *spawn_fn(void *p)
{
    struct spawn_req *q = p;
    q->rc = pith_spawn(q->type, q->arg, &q->ref);
    return NULL;
}

/* Spawns an actor of `type` on `shard` (from a task there) and asserts that it worked. */
static pith_ref_t spawn_at(unsigned shard, const pith_actor_type_t *type, void *arg)
{
    struct spawn_req q = {.type = type, .arg = arg, .ref = 12345};
    call_on(shard, spawn_fn, &q);
    cr_assert_eq(q.rc, 0, "pith_spawn(%s) on shard %u: %d (%s)", type->name, shard, q.rc,
                 pith_strerror(q.rc));
    cr_assert_neq(q.ref, PITH_REF_NONE);
    cr_assert_eq(pith_ref_shard(q.ref), shard);
    return q.ref;
}

struct send_req {
    pith_ref_t to;
    uint32_t type;
    const void *data;
    uint32_t len;
    int rc;
};

static void *send_fn(void *p)
{
    struct send_req *q = p;
    q->rc = pith_send(q->to, q->type, q->data, q->len);
    return NULL;
}

/* pith_send from a plain task on `shard`: its result. */
static int send_from(unsigned shard, pith_ref_t to, uint32_t type, const void *data, uint32_t len)
{
    struct send_req q = {.to = to, .type = type, .data = data, .len = len, .rc = 12345};
    call_on(shard, send_fn, &q);
    return q.rc;
}

/* Sends from a task on the receiver's own shard and asserts that the send worked. */
static void send_to(pith_ref_t to, uint32_t type, const void *data, uint32_t len)
{
    int rc = send_from(pith_ref_shard(to), to, type, data, len);
    cr_assert_eq(rc, 0, "pith_send(%#" PRIx64 ", %#x): %d (%s)", to, type, rc, pith_strerror(rc));
}

struct stop_req {
    pith_ref_t ref;
    bool kill;
    int rc;
};

static void *stop_fn(void *p)
{
    struct stop_req *q = p;
    q->rc = q->kill ? pith_kill(q->ref) : pith_stop(q->ref);
    return NULL;
}

/* pith_stop (or pith_kill) from a plain task on `shard`: its result. */
static int stop_from(unsigned shard, pith_ref_t ref, bool kill)
{
    struct stop_req q = {.ref = ref, .kill = kill, .rc = 12345};
    call_on(shard, stop_fn, &q);
    return q.rc;
}

static pith_actor_type_stats_t type_stats(const pith_actor_type_t *type)
{
    pith_actor_type_stats_t st;
    memset(&st, 0xa5, sizeof(st));
    int rc = pith_actor_type_stats(type, &st);
    cr_assert_eq(rc, 0, "pith_actor_type_stats(%s): %d (%s)", type->name, rc, pith_strerror(rc));
    return st;
}

static pith_core_stats_t core_stats(unsigned shard)
{
    pith_core_stats_t st;
    memset(&st, 0xa5, sizeof(st));
    int rc = pith_core_stats(shard, &st);
    cr_assert_eq(rc, 0, "pith_core_stats(%u): %d (%s)", shard, rc, pith_strerror(rc));
    return st;
}

static size_t mem_in_use(unsigned shard)
{
    pith_mem_stats_t st;
    int rc = pith_mem_stats((int)shard, &st);
    cr_assert_eq(rc, 0, "pith_mem_stats(%u): %d", shard, rc);
    return st.in_use;
}

static uint64_t timers_pending(unsigned shard)
{
    test_sync_shard(shard);
    pith_shard_stats_t st;
    int rc = pith_shard_stats(shard, &st);
    cr_assert_eq(rc, 0, "pith_shard_stats(%u): %d", shard, rc);
    return st.timers_pending;
}

static uint64_t payload_u64(const pith_msg_t *msg)
{
    uint64_t v = UINT64_MAX;
    if (msg->len == sizeof(v))
        memcpy(&v, msg->data, sizeof(v));
    return v;
}

/* ---- the log: what actors and callbacks saw, written on the shards, read by the test ---- */

enum {
    EV_MSG = 1, /* a message handled by an agent (its command's results in rc, rc2) */
    EV_TERM,    /* an agent's terminate: rc is the reason */
    EV_CB,      /* an ask's callback: self is the ask's tag, rc its err */
};

struct ev {
    int kind;
    int shard;       /* where it ran */
    pith_ref_t self; /* the agent; for EV_CB the tag the ask was given as ctx */
    uint32_t type;   /* the message's tag; for EV_CB the reply's, 0 without one */
    uint32_t len;
    pith_ref_t from;
    uint64_t req;
    uint64_t val; /* the payload as a u64, UINT64_MAX when it is not 8 bytes */
    int rc, rc2;
    bool null_reply; /* EV_CB: the callback got reply NULL */
    pith_down_t down;
    uint64_t at; /* pith_now_ns() when it ran */
};

#define EV_MAX 512

/* Entries are claimed with a fetch-add and published with `ready` (release); a reader only
 * looks at ready entries (acquire). One agent's entries are claimed in the order it ran. */
static struct {
    atomic_uint n;
    atomic_bool overflow;
    atomic_int ready[EV_MAX];
    struct ev e[EV_MAX];
} evlog;

static void ev_reset(void)
{
    memset(&evlog, 0, sizeof(evlog));
}

static void ev_put(const struct ev *src)
{
    unsigned i = atomic_fetch_add(&evlog.n, 1);
    if (i >= EV_MAX) {
        atomic_store(&evlog.overflow, true);
        return;
    }
    evlog.e[i] = *src;
    atomic_store_explicit(&evlog.ready[i], 1, memory_order_release);
}

static bool ev_match(unsigned i, int kind, pith_ref_t self, uint32_t type)
{
    if (!atomic_load_explicit(&evlog.ready[i], memory_order_acquire))
        return false;
    const struct ev *e = &evlog.e[i];
    return e->kind == kind && e->self == self && (type == 0 || e->type == type);
}

/* How many published entries match (type 0: any type). */
static unsigned ev_count(int kind, pith_ref_t self, uint32_t type)
{
    unsigned n = atomic_load(&evlog.n), c = 0;
    for (unsigned i = 0; i < n && i < EV_MAX; i++)
        c += ev_match(i, kind, self, type);
    return c;
}

/* The k-th (from 0) published entry that matches, NULL when there is none yet. */
static const struct ev *ev_nth(int kind, pith_ref_t self, uint32_t type, unsigned k)
{
    unsigned n = atomic_load(&evlog.n);
    for (unsigned i = 0; i < n && i < EV_MAX; i++)
        if (ev_match(i, kind, self, type) && k-- == 0)
            return &evlog.e[i];
    return NULL;
}

/* Waits (bounded, see TEST_WAIT_FOR) for the k-th matching entry and returns it. */
static const struct ev *ev_wait(int kind, pith_ref_t self, uint32_t type, unsigned k)
{
    const struct ev *e;
    TEST_WAIT_FOR((e = ev_nth(kind, self, type, k)) != NULL);
    return e;
}

#define ev_assert_no_overflow()                                                                    \
    cr_assert(!atomic_load(&evlog.overflow), "the event log overflowed (%u entries)",              \
              atomic_load(&evlog.n))

/* ---- the agent: an actor that runs the commands it is sent and logs everything ---- */

/* Commands (payload: struct cmd). */
#define C_PING    1  /* nothing: a marker */
#define C_ASK     2  /* pith_ask(ref, type, &val, 8, a, NULL, ...): rc, req */
#define C_MONITOR 3  /* pith_monitor(ref): rc; then, if type, pith_send(ref, type): rc2 */
#define C_LINK    4  /* pith_link(ref): rc; then as C_MONITOR */
#define C_TRAP    5  /* pith_trap_exits(val != 0) */
#define C_FAIL    6  /* the behaviour returns -EIO */
#define C_STOP    7  /* pith_stop(self): rc */
#define C_TIMER   8  /* pith_actor_timer(a, b, type, &val, 8): rc; the id is kept */
#define C_CANCEL  9  /* pith_actor_timer_cancel(the kept id): rc; val: ticks seen so far */
#define C_MONSELF 10 /* pith_monitor(self) and pith_link(self): rc, rc2 */
#define C_LATE    11 /* arm a 1 ms actor timer (T_LATE) that answers the kept Q_LATE: rc */
/* Requests (payload: a u64). */
#define Q_ANSWER 20 /* pith_reply at once with val + 1000: rc */
#define Q_IGNORE 21 /* no reply, ever */
#define Q_LATE   22 /* no reply until C_LATE: the req is kept */
#define Q_PLAIN  23 /* sent with pith_send: pith_reply(msg) is tried all the same: rc */
/* What agents get. */
#define R_ANSWER 30 /* a reply: val is the request's val + 1000 */
#define T_LATE   31 /* payload the req: pith_reply to it now (rc) */
#define T_ONE    32
#define T_TICK   33 /* counted in the agent's state */

struct cmd {
    pith_ref_t ref;
    uint64_t val;
    uint64_t a, b;
    uint32_t type;
    uint32_t pad;
};

struct agent_state {
    pith_timer_id_t tid;
    uint64_t ticks;
    uint64_t late_req; /* the last Q_LATE's req */
};

static int agent(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct agent_state *s = state;
    struct cmd c;
    memset(&c, 0, sizeof(c));
    if (msg->len == sizeof(c))
        memcpy(&c, msg->data, sizeof(c));
    struct ev e = {
        .kind = EV_MSG,
        .shard = pith_shard_id(),
        .self = pith_self(self),
        .type = msg->type,
        .len = msg->len,
        .from = msg->from,
        .req = msg->req,
        .val = payload_u64(msg),
        .at = pith_now_ns(),
    };
    if (msg->type == PITH_MSG_DOWN && msg->len == sizeof(pith_down_t))
        memcpy(&e.down, msg->data, sizeof(e.down));
    int ret = 0;
    uint64_t v;
    switch (msg->type) {
    case C_ASK:
        e.rc = pith_ask(c.ref, c.type, &c.val, sizeof(c.val), c.a, NULL, NULL, &e.req);
        break;
    case C_MONITOR:
    case C_LINK:
        e.rc = msg->type == C_MONITOR ? pith_monitor(self, c.ref) : pith_link(self, c.ref);
        if (c.type != 0)
            e.rc2 = pith_send(c.ref, c.type, &c.val, sizeof(c.val));
        break;
    case C_TRAP:
        pith_trap_exits(self, c.val != 0);
        break;
    case C_FAIL:
        ret = -EIO;
        break;
    case C_STOP:
        e.rc = pith_stop(pith_self(self));
        break;
    case C_TIMER:
        e.rc = pith_actor_timer(self, c.a, c.b, c.type, &c.val, sizeof(c.val), &s->tid);
        break;
    case C_CANCEL:
        e.rc = pith_actor_timer_cancel(self, s->tid);
        e.val = s->ticks;
        break;
    case C_MONSELF:
        e.rc = pith_monitor(self, pith_self(self));
        e.rc2 = pith_link(self, pith_self(self));
        break;
    case Q_ANSWER:
        v = e.val + 1000;
        e.rc = pith_reply(msg, R_ANSWER, &v, sizeof(v));
        break;
    case Q_LATE:
        s->late_req = msg->req;
        break;
    case C_LATE:
        e.val = s->late_req;
        e.rc = pith_actor_timer(self, MS, 0, T_LATE, &s->late_req, sizeof(s->late_req), NULL);
        break;
    case T_LATE: {
        /* Only req matters to pith_reply: the request itself is long gone. */
        pith_msg_t req = {.type = Q_LATE, .req = e.val};
        v = 2000;
        e.rc = pith_reply(&req, R_ANSWER, &v, sizeof(v));
        break;
    }
    case Q_PLAIN:
        v = 3000;
        e.rc = pith_reply(msg, R_ANSWER, &v, sizeof(v));
        break;
    case T_TICK:
        s->ticks++;
        break;
    default:
        break;
    }
    ev_put(&e);
    return ret;
}

static void agent_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)state;
    struct ev e = {
        .kind = EV_TERM,
        .shard = pith_shard_id(),
        .self = pith_self(self),
        .rc = reason,
        .at = pith_now_ns(),
    };
    ev_put(&e);
}

static const pith_actor_type_t agent_type = {
    .name = "agent",
    .behaviour = agent,
    .state_size = sizeof(struct agent_state),
    .terminate = agent_terminate,
};

/* Sends the agent a command from a task on its shard. */
static void cmd(pith_ref_t agent_ref, uint32_t what, struct cmd c)
{
    send_to(agent_ref, what, &c, sizeof(c));
}

/* Sends the agent a command and waits for it to be handled: the k-th entry of that command. */
static const struct ev *cmd_wait(pith_ref_t agent_ref, uint32_t what, struct cmd c, unsigned k)
{
    cmd(agent_ref, what, c);
    return ev_wait(EV_MSG, agent_ref, what, k);
}

/* The terminate entry of an agent, waited for; asserts it ran once, on the agent's shard. */
static const struct ev *term_wait(pith_ref_t agent_ref)
{
    const struct ev *t = ev_wait(EV_TERM, agent_ref, 0, 0);
    cr_assert_eq(t->shard, (int)pith_ref_shard(agent_ref), "terminate ran on shard %d", t->shard);
    cr_assert_eq(ev_count(EV_TERM, agent_ref, 0), 1, "terminate ran %u times",
                 ev_count(EV_TERM, agent_ref, 0));
    return t;
}

/* Whether an agent still runs: a ping reaches its behaviour. */
static void assert_alive(pith_ref_t agent_ref)
{
    unsigned k = ev_count(EV_MSG, agent_ref, C_PING);
    cmd_wait(agent_ref, C_PING, (struct cmd){0}, k);
    cr_assert_eq(ev_count(EV_TERM, agent_ref, 0), 0, "agent %#" PRIx64 " ended", agent_ref);
}

/* A stale ref: a send to it from its own shard fails with -ESRCH. */
static void assert_stale(pith_ref_t ref)
{
    int rc = send_from(pith_ref_shard(ref), ref, C_PING, NULL, 0);
    cr_assert_eq(rc, -ESRCH, "a send to the ended actor %#" PRIx64 " returned %d", ref, rc);
}

/* ---- asks with a callback, from plain tasks ---- */

struct cb_ask {
    pith_ref_t to;
    uint32_t type;
    uint64_t val;
    uint64_t timeout_ns;
    uint64_t tag; /* given as ctx; logged as the EV_CB entry's self */
    bool no_cb;
    int rc;
    uint64_t req;
};

static void ask_cb(const pith_msg_t *reply, int err, void *ctx)
{
    struct ev e = {
        .kind = EV_CB,
        .shard = pith_shard_id(),
        .self = (uint64_t)(uintptr_t)ctx,
        .rc = err,
        .null_reply = reply == NULL,
        .at = pith_now_ns(),
    };
    if (reply != NULL) {
        e.type = reply->type;
        e.len = reply->len;
        e.from = reply->from;
        e.req = reply->req;
        e.val = payload_u64(reply);
    }
    ev_put(&e);
}

static void *ask_cb_fn(void *p)
{
    struct cb_ask *q = p;
    q->req = 12345;
    q->rc = pith_ask(q->to, q->type, &q->val, sizeof(q->val), q->timeout_ns,
                     q->no_cb ? NULL : ask_cb, (void *)(uintptr_t)q->tag, &q->req);
    return NULL;
}

/* pith_ask from a plain task on `shard`; q gets rc and req. */
static void ask_from(unsigned shard, struct cb_ask *q)
{
    call_on(shard, ask_cb_fn, q);
}

/* ---- 1. ask from an actor, reply as a message ---- */

#define LONG_NS (60000 * MS) /* a timeout that must not pass during a test */

/* The asker asks `target` (Q_ANSWER, val) and gets its reply as a message. */
static void ask_and_check(pith_ref_t asker, pith_ref_t target, uint64_t val, unsigned k)
{
    const struct ev *asked = cmd_wait(
        asker, C_ASK, (struct cmd){.ref = target, .type = Q_ANSWER, .val = val, .a = LONG_NS}, k);
    cr_assert_eq(asked->rc, 0, "pith_ask: %d (%s)", asked->rc, pith_strerror(asked->rc));
    cr_assert_neq(asked->req, 0, "pith_ask gave request id 0");
    const struct ev *seen = ev_wait(EV_MSG, target, Q_ANSWER, 0);
    for (unsigned i = 1; seen->req != asked->req; i++)
        seen = ev_wait(EV_MSG, target, Q_ANSWER, i);
    cr_assert_eq(seen->from, asker, "the request came from %#" PRIx64 ", not the asker",
                 seen->from);
    cr_assert_eq(seen->val, val);
    cr_assert_eq(seen->rc, 0, "pith_reply: %d (%s)", seen->rc, pith_strerror(seen->rc));

    const struct ev *r = ev_wait(EV_MSG, asker, R_ANSWER, k);
    cr_assert_eq(r->req, asked->req, "the reply's req is %#" PRIx64 ", the ask's %#" PRIx64, r->req,
                 asked->req);
    cr_assert_eq(r->len, sizeof(uint64_t));
    cr_assert_eq(r->val, val + 1000, "the reply carries %" PRIu64, r->val);
    cr_assert_eq(r->from, target, "the reply came from %#" PRIx64, r->from);
    cr_assert_eq(r->shard, (int)pith_ref_shard(asker));
}

Test(actor_sup, ask_from_an_actor_gets_the_reply_as_a_message_here_and_across_shards, .timeout = 30)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t asker = spawn_at(0, &agent_type, NULL);
    pith_ref_t near = spawn_at(0, &agent_type, NULL);
    pith_ref_t far = spawn_at(1, &agent_type, NULL);
    pith_ref_t asker1 = spawn_at(1, &agent_type, NULL);

    ask_and_check(asker, near, 7, 0);
    pith_core_stats_t st = core_stats(0);
    cr_assert_eq(st.asks, 1, "asks %" PRIu64, st.asks);
    cr_assert_eq(st.replies, 1, "replies %" PRIu64, st.replies);
    cr_assert_eq(st.ask_timeouts, 0);
    cr_assert_eq(st.late_replies, 0);

    ask_and_check(asker, far, 8, 1);
    st = core_stats(0);
    cr_assert_eq(st.asks, 2, "asks %" PRIu64, st.asks);
    cr_assert_eq(st.replies, 2, "replies %" PRIu64, st.replies);
    cr_assert_eq(core_stats(1).replies, 0, "the replier's shard counted a reply");

    /* The other way round: the asker's shard counts. */
    ask_and_check(asker1, near, 9, 0);
    cr_assert_eq(core_stats(1).asks, 1);
    cr_assert_eq(core_stats(1).replies, 1);
    cr_assert_eq(core_stats(0).replies, 2);

    /* Request ids differ. */
    const struct ev *a0 = ev_nth(EV_MSG, asker, C_ASK, 0), *a1 = ev_nth(EV_MSG, asker, C_ASK, 1);
    cr_assert_neq(a0->req, a1->req);

    /* Exactly one reply per ask, nothing else. */
    test_sync_shard(0);
    test_sync_shard(1);
    cr_assert_eq(ev_count(EV_MSG, asker, R_ANSWER), 2);
    cr_assert_eq(ev_count(EV_MSG, asker, PITH_MSG_TIMEOUT), 0);
    cr_assert_eq(ev_count(EV_MSG, asker1, R_ANSWER), 1);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 2. ask with a callback from a plain task ---- */

Test(actor_sup, ask_with_a_callback_from_a_task_runs_it_on_the_asking_shard, .timeout = 30)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t far = spawn_at(0, &agent_type, NULL);
    pith_ref_t near = spawn_at(1, &agent_type, NULL);

    struct cb_ask q1 = {.to = far, .type = Q_ANSWER, .val = 11, .timeout_ns = LONG_NS, .tag = 1};
    ask_from(1, &q1);
    cr_assert_eq(q1.rc, 0, "pith_ask: %d (%s)", q1.rc, pith_strerror(q1.rc));
    cr_assert_neq(q1.req, 0);
    struct cb_ask q2 = {.to = near, .type = Q_ANSWER, .val = 12, .timeout_ns = LONG_NS, .tag = 2};
    ask_from(1, &q2);
    cr_assert_eq(q2.rc, 0, "pith_ask: %d (%s)", q2.rc, pith_strerror(q2.rc));
    cr_assert_neq(q2.req, q1.req);

    const struct ev *e1 = ev_wait(EV_CB, 1, 0, 0);
    cr_assert_eq(e1->rc, 0, "the callback got err %d", e1->rc);
    cr_assert(!e1->null_reply);
    cr_assert_eq(e1->shard, 1, "the callback ran on shard %d, not the asking shard", e1->shard);
    cr_assert_eq(e1->type, R_ANSWER);
    cr_assert_eq(e1->req, q1.req);
    cr_assert_eq(e1->val, 1011);
    cr_assert_eq(e1->from, far);
    /* A task has no ref: the target saw the request come from no actor. */
    cr_assert_eq(ev_wait(EV_MSG, far, Q_ANSWER, 0)->from, PITH_REF_NONE);

    const struct ev *e2 = ev_wait(EV_CB, 2, 0, 0);
    cr_assert_eq(e2->rc, 0, "the callback got err %d", e2->rc);
    cr_assert_eq(e2->shard, 1);
    cr_assert_eq(e2->req, q2.req);
    cr_assert_eq(e2->val, 1012);
    cr_assert_eq(e2->from, near);

    test_sync_shard(0);
    test_sync_shard(1);
    cr_assert_eq(ev_count(EV_CB, 1, 0), 1, "the first callback ran %u times",
                 ev_count(EV_CB, 1, 0));
    cr_assert_eq(ev_count(EV_CB, 2, 0), 1);
    pith_core_stats_t st = core_stats(1);
    cr_assert_eq(st.asks, 2);
    cr_assert_eq(st.replies, 2);
    cr_assert_eq(core_stats(0).asks, 0);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 3. timeouts and late replies ---- */

Test(actor_sup, ask_timeouts_and_late_replies, .timeout = 60)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t asker = spawn_at(0, &agent_type, NULL);
    pith_ref_t mute0 = spawn_at(0, &agent_type, NULL);
    pith_ref_t mute1 = spawn_at(1, &agent_type, NULL);
    pith_ref_t late0 = spawn_at(0, &agent_type, NULL);
    pith_ref_t late1 = spawn_at(1, &agent_type, NULL);

    /* An actor asks one that never replies: PITH_MSG_TIMEOUT with the request id. */
    const struct ev *asked = cmd_wait(
        asker, C_ASK, (struct cmd){.ref = mute1, .type = Q_IGNORE, .val = 1, .a = 10 * MS}, 0);
    cr_assert_eq(asked->rc, 0, "pith_ask: %d (%s)", asked->rc, pith_strerror(asked->rc));
    const struct ev *t = ev_wait(EV_MSG, asker, PITH_MSG_TIMEOUT, 0);
    cr_assert_eq(t->req, asked->req, "the timeout's req is %#" PRIx64 ", the ask's %#" PRIx64,
                 t->req, asked->req);
    cr_assert_eq(t->from, PITH_REF_NONE);
    cr_assert_eq(t->len, 0);
    cr_assert_geq(t->at - asked->at, 10 * MS, "the timeout came after %" PRIu64 " ns",
                  t->at - asked->at);
    cr_assert_eq(ev_wait(EV_MSG, mute1, Q_IGNORE, 0)->req, asked->req,
                 "the target did not see the request");
    cr_assert_eq(core_stats(0).ask_timeouts, 1);

    /* A task asks with a callback: cb(NULL, -ETIMEDOUT). */
    struct cb_ask q = {.to = mute0, .type = Q_IGNORE, .val = 2, .timeout_ns = 10 * MS, .tag = 3};
    ask_from(0, &q);
    cr_assert_eq(q.rc, 0, "pith_ask: %d (%s)", q.rc, pith_strerror(q.rc));
    const struct ev *c = ev_wait(EV_CB, 3, 0, 0);
    cr_assert_eq(c->rc, -ETIMEDOUT, "the callback got err %d", c->rc);
    cr_assert(c->null_reply, "a timeout came with a reply");
    cr_assert_eq(c->shard, 0);
    pith_core_stats_t st = core_stats(0);
    cr_assert_eq(st.ask_timeouts, 2, "ask_timeouts %" PRIu64, st.ask_timeouts);
    cr_assert_eq(st.replies, 0);

    /* Late replies, across shards to an actor and on one shard to a callback: the targets
     * reply (from an actor timer) only once the test has seen the timeouts; the replies are
     * counted and dropped. */
    asked = cmd_wait(asker, C_ASK,
                     (struct cmd){.ref = late1, .type = Q_LATE, .val = 3, .a = 10 * MS}, 1);
    cr_assert_eq(asked->rc, 0);
    struct cb_ask ql = {.to = late0, .type = Q_LATE, .val = 4, .timeout_ns = 10 * MS, .tag = 4};
    ask_from(0, &ql);
    cr_assert_eq(ql.rc, 0);
    t = ev_wait(EV_MSG, asker, PITH_MSG_TIMEOUT, 1);
    cr_assert_eq(t->req, asked->req);
    c = ev_wait(EV_CB, 4, 0, 0);
    cr_assert_eq(c->rc, -ETIMEDOUT);
    cr_assert_eq(ev_wait(EV_MSG, late1, Q_LATE, 0)->req, asked->req);
    cr_assert_eq(ev_wait(EV_MSG, late0, Q_LATE, 0)->req, ql.req);
    const struct ev *armed = cmd_wait(late1, C_LATE, (struct cmd){0}, 0);
    cr_assert_eq(armed->rc, 0, "pith_actor_timer: %d", armed->rc);
    armed = cmd_wait(late0, C_LATE, (struct cmd){0}, 0);
    cr_assert_eq(armed->rc, 0, "pith_actor_timer: %d", armed->rc);
    const struct ev *r1 = ev_wait(EV_MSG, late1, T_LATE, 0);
    cr_assert_eq(r1->val, asked->req, "the timer carried %#" PRIx64, r1->val);
    cr_assert_eq(r1->rc, 0, "the late pith_reply: %d (%s)", r1->rc, pith_strerror(r1->rc));
    const struct ev *r0 = ev_wait(EV_MSG, late0, T_LATE, 0);
    cr_assert_eq(r0->val, ql.req);
    cr_assert_eq(r0->rc, 0, "the late pith_reply: %d (%s)", r0->rc, pith_strerror(r0->rc));
    TEST_WAIT_FOR(core_stats(0).late_replies == 2);
    /* The late replies were dropped: nothing more reaches the askers. */
    test_sync_shard(0);
    cr_assert_eq(ev_count(EV_MSG, asker, R_ANSWER), 0, "a late reply reached the actor");
    cr_assert_eq(ev_count(EV_MSG, asker, PITH_MSG_TIMEOUT), 2);
    cr_assert_eq(ev_count(EV_CB, 4, 0), 1, "the callback ran again for a late reply");
    cr_assert_eq(ev_count(EV_CB, 3, 0), 1);
    st = core_stats(0);
    cr_assert_eq(st.asks, 4, "asks %" PRIu64, st.asks);
    cr_assert_eq(st.ask_timeouts, 4, "ask_timeouts %" PRIu64, st.ask_timeouts);
    cr_assert_eq(st.late_replies, 2);
    cr_assert_eq(st.replies, 0, "replies %" PRIu64, st.replies);
    cr_assert_eq(core_stats(1).late_replies, 0);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 4. errors ---- */

static void *reply_req0_fn(void *p)
{
    (void)p;
    pith_msg_t m = {.type = Q_ANSWER, .req = 0};
    uint64_t v = 1;
    return (void *)(intptr_t)pith_reply(&m, R_ANSWER, &v, sizeof(v));
}

Test(actor_sup, ask_and_reply_errors, .timeout = 30)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t target = spawn_at(1, &agent_type, NULL);
    pith_ref_t asker = spawn_at(0, &agent_type, NULL);
    pith_ref_t gone = spawn_at(0, &agent_type, NULL);
    cr_assert_eq(stop_from(0, gone, false), 0);

    /* Outside the engine. */
    uint64_t req = 12345, v = 1;
    int rc = pith_ask(target, Q_ANSWER, &v, sizeof(v), LONG_NS, ask_cb, NULL, &req);
    cr_assert_eq(rc, -EPERM, "pith_ask from outside: %d", rc);
    cr_assert_eq(req, 0, "a failed ask left req %" PRIu64, req);

    /* From a task: timeout 0, no callback, a bad ref, a stale ref on the shard. */
    struct cb_ask q = {.to = target, .type = Q_ANSWER, .timeout_ns = 0, .tag = 9};
    ask_from(0, &q);
    cr_assert_eq(q.rc, -EINVAL, "timeout 0: %d", q.rc);
    cr_assert_eq(q.req, 0);
    q = (struct cb_ask){.to = target, .type = Q_ANSWER, .timeout_ns = LONG_NS, .no_cb = true};
    ask_from(0, &q);
    cr_assert_eq(q.rc, -EINVAL, "no callback from a task: %d", q.rc);
    q = (struct cb_ask){.to = PITH_REF_NONE, .type = Q_ANSWER, .timeout_ns = LONG_NS, .tag = 9};
    ask_from(0, &q);
    cr_assert_eq(q.rc, -EINVAL, "PITH_REF_NONE: %d", q.rc);
    q = (struct cb_ask){.to = gone, .type = Q_ANSWER, .timeout_ns = LONG_NS, .tag = 9};
    ask_from(0, &q);
    cr_assert_eq(q.rc, -ESRCH, "a stale ref on the asking shard: %d", q.rc);

    /* From an actor: timeout 0. */
    const struct ev *e =
        cmd_wait(asker, C_ASK, (struct cmd){.ref = target, .type = Q_ANSWER, .a = 0}, 0);
    cr_assert_eq(e->rc, -EINVAL, "timeout 0 from an actor: %d", e->rc);
    cr_assert_eq(e->req, 0);

    /* Replies to what is not a request. */
    send_to(target, Q_PLAIN, &v, sizeof(v));
    e = ev_wait(EV_MSG, target, Q_PLAIN, 0);
    cr_assert_eq(e->req, 0);
    cr_assert_eq(e->rc, -EINVAL, "pith_reply to a plain message: %d", e->rc);
    cr_assert_eq((int)(intptr_t)call_on(0, reply_req0_fn, NULL), -EINVAL);
    pith_msg_t m0 = {.type = Q_ANSWER, .req = 0};
    cr_assert_eq(pith_reply(&m0, R_ANSWER, NULL, 0), -EINVAL);
    cr_assert_eq(pith_reply(NULL, R_ANSWER, NULL, 0), -EINVAL);

    /* Nothing was asked, nothing called back. */
    test_sync_shard(0);
    test_sync_shard(1);
    cr_assert_eq(core_stats(0).asks, 0);
    cr_assert_eq(core_stats(0).ask_timeouts, 0);
    cr_assert_eq(ev_count(EV_CB, 9, 0), 0);
    cr_assert_eq(ev_count(EV_CB, 0, 0), 0);
    cr_assert_eq(ev_count(EV_MSG, target, Q_ANSWER), 0, "a failed ask reached its target");
    cr_assert_eq(ev_count(EV_MSG, target, R_ANSWER), 0);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 5. actor timers ---- */

Test(actor_sup, actor_timers_one_shot_periodic_cancel_and_end_with_the_actor, .timeout = 60)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    test_sync_shard(1);
    size_t mem_before = mem_in_use(1);
    uint64_t pending_before = timers_pending(1);

    pith_ref_t t = spawn_at(1, &agent_type, NULL);

    /* One-shot: once, not before its delay, with its payload and no sender. */
    const struct ev *armed =
        cmd_wait(t, C_TIMER, (struct cmd){.a = 30 * MS, .type = T_ONE, .val = 77}, 0);
    cr_assert_eq(armed->rc, 0, "pith_actor_timer: %d (%s)", armed->rc, pith_strerror(armed->rc));
    const struct ev *one = ev_wait(EV_MSG, t, T_ONE, 0);
    cr_assert_geq(one->at - armed->at, 30 * MS, "a 30 ms timer fired after %" PRIu64 " ns",
                  one->at - armed->at);
    cr_assert_eq(one->val, 77);
    cr_assert_eq(one->from, PITH_REF_NONE);
    cr_assert_eq(one->req, 0);
    cr_assert_eq(one->shard, 1);

    /* Periodic: repeatedly until cancelled. */
    armed =
        cmd_wait(t, C_TIMER, (struct cmd){.a = 5 * MS, .b = 5 * MS, .type = T_TICK, .val = 5}, 1);
    cr_assert_eq(armed->rc, 0, "pith_actor_timer: %d (%s)", armed->rc, pith_strerror(armed->rc));
    TEST_WAIT_FOR(ev_count(EV_MSG, t, T_TICK) >= 3);
    const struct ev *cancel = cmd_wait(t, C_CANCEL, (struct cmd){0}, 0);
    cr_assert_eq(cancel->rc, 0, "pith_actor_timer_cancel: %d (%s)", cancel->rc,
                 pith_strerror(cancel->rc));
    uint64_t ticks_at_cancel = cancel->val;
    cr_assert_geq(ticks_at_cancel, 3);
    /* Ten periods: a timer still running would tick again meanwhile. */
    settle_ms(50);
    test_sync_shard(1);
    unsigned ticks = ev_count(EV_MSG, t, T_TICK);
    /* One tick may have been in the mailbox behind the cancel command already. */
    cr_assert_leq(ticks, ticks_at_cancel + 1, "%u ticks, %" PRIu64 " when cancelled", ticks,
                  ticks_at_cancel);
    const struct ev *again = cmd_wait(t, C_CANCEL, (struct cmd){0}, 1);
    cr_assert_eq(again->rc, -ENOENT, "cancelling twice: %d", again->rc);
    cr_assert_eq(ev_count(EV_MSG, t, T_ONE), 1, "the one-shot timer fired %u times",
                 ev_count(EV_MSG, t, T_ONE));
    cr_assert_eq(core_stats(1).timer_msgs, 1 + (uint64_t)ticks, "timer_msgs %" PRIu64 ", %u sent",
                 core_stats(1).timer_msgs, 1 + ticks);
    cr_assert_eq(timers_pending(1), pending_before);

    /* A periodic timer ends with its actor, stopped from outside it... */
    pith_ref_t t2 = spawn_at(1, &agent_type, NULL);
    armed = cmd_wait(t2, C_TIMER, (struct cmd){.a = 2 * MS, .b = 2 * MS, .type = T_TICK}, 0);
    cr_assert_eq(armed->rc, 0);
    TEST_WAIT_FOR(ev_count(EV_MSG, t2, T_TICK) >= 3);
    cr_assert_eq(stop_from(1, t2, false), 0);
    cr_assert_eq(term_wait(t2)->rc, PITH_EXIT_NORMAL);
    uint64_t msgs = core_stats(1).timer_msgs;
    cr_assert_eq(timers_pending(1), pending_before, "the stopped actor's timer is still pending");
    /* ...or by itself, with a periodic and a long one-shot timer pending. */
    pith_ref_t t3 = spawn_at(1, &agent_type, NULL);
    armed = cmd_wait(t3, C_TIMER, (struct cmd){.a = 2 * MS, .b = 2 * MS, .type = T_TICK}, 0);
    cr_assert_eq(armed->rc, 0);
    armed = cmd_wait(t3, C_TIMER, (struct cmd){.a = LONG_NS, .type = T_ONE}, 1);
    cr_assert_eq(armed->rc, 0);
    TEST_WAIT_FOR(ev_count(EV_MSG, t3, T_TICK) >= 3);
    cr_assert_eq(cmd_wait(t3, C_STOP, (struct cmd){0}, 0)->rc, 0);
    cr_assert_eq(term_wait(t3)->rc, PITH_EXIT_NORMAL);
    cr_assert_eq(timers_pending(1), pending_before);
    uint64_t msgs3 = core_stats(1).timer_msgs;
    cr_assert_gt(msgs3, msgs);
    /* Twenty periods: no timer of an ended actor sends anything. */
    settle_ms(40);
    test_sync_shard(1);
    cr_assert_eq(core_stats(1).timer_msgs, msgs3, "timers of ended actors still send");

    /* Everything the timers took is back once the actors are gone (the shard may keep its
     * emptied actor table a short while before it lets it go: wait, bounded). */
    cr_assert_eq(stop_from(1, t, false), 0);
    size_t mem_after;
    TEST_WAIT_FOR((mem_after = mem_in_use(1)) == mem_before);
    cr_assert_eq(mem_after, mem_before, "shard 1 holds %zu bytes, %zu before", mem_after,
                 mem_before);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 6. monitors ---- */

/* The watcher monitors target and then sends it `then` (0: nothing); the monitor is in place
 * before `then` arrives, since one sender's messages and requests to one shard keep their
 * order. */
static void monitor_cmd(pith_ref_t watcher, pith_ref_t target, uint32_t then)
{
    unsigned k = ev_count(EV_MSG, watcher, C_MONITOR);
    const struct ev *e = cmd_wait(watcher, C_MONITOR, (struct cmd){.ref = target, .type = then}, k);
    cr_assert_eq(e->rc, 0, "pith_monitor: %d (%s)", e->rc, pith_strerror(e->rc));
    cr_assert_eq(e->rc2, 0, "pith_send after pith_monitor: %d", e->rc2);
}

/* The watcher's k-th DOWN, checked against target and link. */
static pith_down_t down_wait(pith_ref_t watcher, pith_ref_t target, uint32_t link, unsigned k)
{
    const struct ev *d = ev_wait(EV_MSG, watcher, PITH_MSG_DOWN, k);
    cr_assert_eq(d->len, sizeof(pith_down_t));
    cr_assert_eq(d->down.ref, target, "DOWN names %#" PRIx64 ", not %#" PRIx64, d->down.ref,
                 target);
    cr_assert_eq(d->from, target, "DOWN came from %#" PRIx64, d->from);
    cr_assert_eq(d->down.link, link, "DOWN with link %u", d->down.link);
    cr_assert_eq(d->shard, (int)pith_ref_shard(watcher));
    return d->down;
}

static int monitor_and(pith_ref_t watcher, pith_ref_t target, uint32_t then, unsigned k)
{
    monitor_cmd(watcher, target, then);
    return down_wait(watcher, target, 0, k).reason;
}

Test(actor_sup, monitors_report_normal_failed_and_stale_targets, .timeout = 30)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t w = spawn_at(0, &agent_type, NULL);
    pith_ref_t a = spawn_at(0, &agent_type, NULL);
    pith_ref_t b = spawn_at(1, &agent_type, NULL);
    pith_ref_t fa = spawn_at(0, &agent_type, NULL);
    pith_ref_t fb = spawn_at(1, &agent_type, NULL);

    int reason = monitor_and(w, a, C_STOP, 0);
    cr_assert_eq(reason, PITH_EXIT_NORMAL, "same shard, normal stop: reason %d", reason);
    reason = monitor_and(w, b, C_STOP, 1);
    cr_assert_eq(reason, PITH_EXIT_NORMAL, "across shards, normal stop: reason %d", reason);
    reason = monitor_and(w, fa, C_FAIL, 2);
    cr_assert_eq(reason, -EIO, "same shard, failure: reason %d", reason);
    reason = monitor_and(w, fb, C_FAIL, 3);
    cr_assert_eq(reason, -EIO, "across shards, failure: reason %d", reason);
    cr_assert_eq(term_wait(fb)->rc, -EIO);
    /* Stale refs, here and across shards: DOWN at once with PITH_EXIT_NOPROC. */
    reason = monitor_and(w, a, 0, 4);
    cr_assert_eq(reason, PITH_EXIT_NOPROC, "stale ref on the same shard: reason %d", reason);
    reason = monitor_and(w, fb, 0, 5);
    cr_assert_eq(reason, PITH_EXIT_NOPROC, "stale ref across shards: reason %d", reason);

    /* Two watchers of one target, one on each shard: one DOWN each. */
    pith_ref_t w1 = spawn_at(1, &agent_type, NULL);
    pith_ref_t c = spawn_at(0, &agent_type, NULL);
    monitor_cmd(w1, c, C_PING);
    ev_wait(EV_MSG, c, C_PING, 0); /* w1's monitor reached c's shard before this */
    monitor_cmd(w, c, C_STOP);
    cr_assert_eq(down_wait(w, c, 0, 6).reason, PITH_EXIT_NORMAL);
    cr_assert_eq(down_wait(w1, c, 0, 0).reason, PITH_EXIT_NORMAL);

    /* An actor cannot watch itself. */
    const struct ev *e = cmd_wait(w, C_MONSELF, (struct cmd){0}, 0);
    cr_assert_eq(e->rc, -EINVAL, "pith_monitor(self): %d", e->rc);
    cr_assert_eq(e->rc2, -EINVAL, "pith_link(self): %d", e->rc2);

    test_sync_shard(0);
    test_sync_shard(1);
    cr_assert_eq(ev_count(EV_MSG, w, PITH_MSG_DOWN), 7);
    cr_assert_eq(ev_count(EV_MSG, w1, PITH_MSG_DOWN), 1);
    assert_alive(w);
    assert_alive(w1);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 7. links ---- */

/* a links to b, then sends b `then` (0: nothing), which arrives after the link is in place. */
static void link_and(pith_ref_t a, pith_ref_t b, uint32_t then)
{
    unsigned k = ev_count(EV_MSG, a, C_LINK);
    const struct ev *e = cmd_wait(a, C_LINK, (struct cmd){.ref = b, .type = then}, k);
    cr_assert_eq(e->rc, 0, "pith_link: %d (%s)", e->rc, pith_strerror(e->rc));
    cr_assert_eq(e->rc2, 0, "pith_send after pith_link: %d", e->rc2);
}

/* a links to b and waits until b has heard from a after that: both sides are in place. */
static void link_settled(pith_ref_t a, pith_ref_t b)
{
    unsigned k = ev_count(EV_MSG, b, C_PING);
    link_and(a, b, C_PING);
    ev_wait(EV_MSG, b, C_PING, k);
}

static void trap(pith_ref_t a, bool on)
{
    unsigned k = ev_count(EV_MSG, a, C_TRAP);
    cmd_wait(a, C_TRAP, (struct cmd){.val = on}, k);
}

Test(actor_sup, links_propagate_failures_but_not_normal_stops, .timeout = 30)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);

    /* On one shard: b fails, a ends with b's reason. */
    pith_ref_t a = spawn_at(0, &agent_type, NULL);
    pith_ref_t b = spawn_at(0, &agent_type, NULL);
    link_and(a, b, C_FAIL);
    cr_assert_eq(term_wait(b)->rc, -EIO);
    int reason = term_wait(a)->rc;
    cr_assert_eq(reason, -EIO, "linked on one shard: a ended with %d", reason);
    assert_stale(a);

    /* Across shards. */
    pith_ref_t a2 = spawn_at(0, &agent_type, NULL);
    pith_ref_t b2 = spawn_at(1, &agent_type, NULL);
    link_and(a2, b2, C_FAIL);
    cr_assert_eq(term_wait(b2)->rc, -EIO);
    reason = term_wait(a2)->rc;
    cr_assert_eq(reason, -EIO, "linked across shards: a ended with %d", reason);
    assert_stale(a2);

    /* Both ways: the side that linked fails, the other ends. */
    pith_ref_t a3 = spawn_at(0, &agent_type, NULL);
    pith_ref_t b3 = spawn_at(1, &agent_type, NULL);
    link_settled(a3, b3);
    cmd(a3, C_FAIL, (struct cmd){0});
    cr_assert_eq(term_wait(a3)->rc, -EIO);
    reason = term_wait(b3)->rc;
    cr_assert_eq(reason, -EIO, "the linked target ended with %d", reason);

    /* A normal stop ends nobody else: on one shard, across shards, either side. */
    pith_ref_t a4 = spawn_at(0, &agent_type, NULL);
    pith_ref_t b4 = spawn_at(0, &agent_type, NULL);
    link_and(a4, b4, C_STOP);
    cr_assert_eq(term_wait(b4)->rc, PITH_EXIT_NORMAL);
    pith_ref_t a5 = spawn_at(0, &agent_type, NULL);
    pith_ref_t b5 = spawn_at(1, &agent_type, NULL);
    link_and(a5, b5, C_STOP);
    cr_assert_eq(term_wait(b5)->rc, PITH_EXIT_NORMAL);
    pith_ref_t a6 = spawn_at(0, &agent_type, NULL);
    pith_ref_t b6 = spawn_at(1, &agent_type, NULL);
    link_settled(a6, b6);
    cmd(a6, C_STOP, (struct cmd){0});
    cr_assert_eq(term_wait(a6)->rc, PITH_EXIT_NORMAL);
    /* Whatever either shard had queued for them has run before the pings below. */
    test_sync_shard(1);
    test_sync_shard(0);
    test_sync_shard(1);
    assert_alive(a4);
    assert_alive(a5);
    assert_alive(b6);
    cr_assert_eq(ev_count(EV_MSG, a4, PITH_MSG_DOWN), 0, "a non-trapping actor got DOWN");
    cr_assert_eq(ev_count(EV_MSG, a5, PITH_MSG_DOWN), 0);
    cr_assert_eq(ev_count(EV_MSG, b6, PITH_MSG_DOWN), 0);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

Test(actor_sup, links_trap_exits_and_carry_kill, .timeout = 30)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);

    /* Trapping, on one shard: DOWN with link = 1, and a lives on. */
    pith_ref_t a = spawn_at(0, &agent_type, NULL);
    pith_ref_t b = spawn_at(0, &agent_type, NULL);
    trap(a, true);
    link_and(a, b, C_FAIL);
    pith_down_t d = down_wait(a, b, 1, 0);
    cr_assert_eq(d.reason, -EIO, "trapped exit with reason %d", d.reason);
    cr_assert_eq(term_wait(b)->rc, -EIO);

    /* Trapping, across shards. */
    pith_ref_t a2 = spawn_at(1, &agent_type, NULL);
    pith_ref_t b2 = spawn_at(0, &agent_type, NULL);
    trap(a2, true);
    link_and(a2, b2, C_FAIL);
    d = down_wait(a2, b2, 1, 0);
    cr_assert_eq(d.reason, -EIO, "trapped exit across shards with reason %d", d.reason);

    /* A normal stop of a linked actor sends a trapping actor nothing. */
    pith_ref_t b3 = spawn_at(0, &agent_type, NULL);
    link_and(a, b3, C_STOP);
    cr_assert_eq(term_wait(b3)->rc, PITH_EXIT_NORMAL);

    /* Killed, across shards and from outside the engine: the linked actor ends KILLED too. */
    pith_ref_t a4 = spawn_at(0, &agent_type, NULL);
    pith_ref_t b4 = spawn_at(1, &agent_type, NULL);
    link_settled(a4, b4);
    int rc = pith_kill(b4);
    cr_assert_eq(rc, 0, "pith_kill from outside: %d (%s)", rc, pith_strerror(rc));
    cr_assert_eq(term_wait(b4)->rc, PITH_EXIT_KILLED, "the killed actor ended with %d",
                 term_wait(b4)->rc);
    int reason = term_wait(a4)->rc;
    cr_assert_eq(reason, PITH_EXIT_KILLED, "linked to a killed actor, ended with %d", reason);

    /* Killed on one shard, from a task. */
    pith_ref_t a5 = spawn_at(0, &agent_type, NULL);
    pith_ref_t b5 = spawn_at(0, &agent_type, NULL);
    link_and(a5, b5, 0);
    cr_assert_eq(stop_from(0, b5, true), 0);
    cr_assert_eq(term_wait(b5)->rc, PITH_EXIT_KILLED);
    reason = term_wait(a5)->rc;
    cr_assert_eq(reason, PITH_EXIT_KILLED, "linked to a killed actor, ended with %d", reason);
    cr_assert_eq(stop_from(0, b5, true), -ESRCH, "killing a stale ref on its shard");

    /* A trapping actor hears of the kill instead. */
    pith_ref_t b6 = spawn_at(0, &agent_type, NULL);
    link_settled(a2, b6);
    cr_assert_eq(pith_kill(b6), 0);
    d = down_wait(a2, b6, 1, 1);
    cr_assert_eq(d.reason, PITH_EXIT_KILLED, "trapped kill with reason %d", d.reason);

    /* Trapping turned off again: a failure ends the actor. */
    trap(a, false);
    pith_ref_t b7 = spawn_at(0, &agent_type, NULL);
    link_and(a, b7, C_FAIL);
    reason = term_wait(a)->rc;
    cr_assert_eq(reason, -EIO, "after trap_exits(false) a ended with %d", reason);

    test_sync_shard(0);
    test_sync_shard(1);
    cr_assert_eq(ev_count(EV_MSG, a, PITH_MSG_DOWN), 1, "a got %u DOWNs",
                 ev_count(EV_MSG, a, PITH_MSG_DOWN));
    assert_alive(a2);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 8. supervisors ---- */

#define KIDS    3
#define K_INC   40 /* count one more */
#define K_GET   41 /* report the count */
#define K_CRASH 42 /* the behaviour returns -EIO */

/* What the children did, by child index (their init's arg). */
static struct {
    atomic_uint starts[KIDS];           /* inits run */
    atomic_uint_fast64_t self[KIDS];    /* the ref of the last start */
    atomic_uint_fast64_t counted[KIDS]; /* the count at the last K_GET */
    atomic_uint gets[KIDS];
    atomic_uint ends[KIDS];
    atomic_int reason[KIDS]; /* of the last end */
    atomic_uint wrong_shard;
    atomic_uint bad_state; /* inits that found a state that was not zeroed */
} kids;

struct kid_state {
    uint64_t count;
    unsigned idx;
};

static int kid_init(pith_actor_t *self, void *state, void *arg)
{
    struct kid_state *s = state;
    if (s->count != 0 || s->idx != 0)
        atomic_fetch_add(&kids.bad_state, 1);
    s->idx = (unsigned)(uintptr_t)arg;
    if (s->idx >= KIDS)
        return -EINVAL;
    atomic_store(&kids.self[s->idx], pith_self(self));
    atomic_fetch_add(&kids.starts[s->idx], 1);
    return 0;
}

static int kid(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct kid_state *s = state;
    switch (msg->type) {
    case K_INC:
        s->count++;
        return 0;
    case K_GET:
        atomic_store(&kids.counted[s->idx], s->count);
        atomic_fetch_add(&kids.gets[s->idx], 1);
        return 0;
    case K_CRASH:
        return -EIO;
    default:
        return 0;
    }
}

static void kid_terminate(pith_actor_t *self, void *state, int reason)
{
    struct kid_state *s = state;
    if ((unsigned)pith_shard_id() != pith_ref_shard(pith_self(self)))
        atomic_fetch_add(&kids.wrong_shard, 1);
    atomic_store(&kids.reason[s->idx], reason);
    atomic_fetch_add(&kids.ends[s->idx], 1);
}

static const pith_actor_type_t kid_type = {
    .name = "kid",
    .behaviour = kid,
    .state_size = sizeof(struct kid_state),
    .init = kid_init,
    .terminate = kid_terminate,
};

struct sup_req {
    const pith_supervisor_spec_t *spec;
    pith_ref_t ref;
    int rc;
};

static void *sup_spawn_fn(void *p)
{
    struct sup_req *q = p;
    q->rc = pith_supervisor_spawn(q->spec, &q->ref);
    return NULL;
}

static pith_ref_t sup_spawn_at(unsigned shard, const pith_supervisor_spec_t *spec)
{
    struct sup_req q = {.spec = spec, .ref = 12345};
    call_on(shard, sup_spawn_fn, &q);
    cr_assert_eq(q.rc, 0, "pith_supervisor_spawn: %d (%s)", q.rc, pith_strerror(q.rc));
    cr_assert_neq(q.ref, PITH_REF_NONE);
    cr_assert_eq(pith_ref_shard(q.ref), shard);
    return q.ref;
}

struct child_req {
    pith_ref_t sup;
    uint32_t i;
    pith_ref_t ref;
};

static void *sup_child_fn(void *p)
{
    struct child_req *q = p;
    q->ref = pith_supervisor_child(q->sup, q->i);
    return NULL;
}

/* pith_supervisor_child from a task on the supervisor's shard. */
static pith_ref_t sup_child(pith_ref_t sup, uint32_t i)
{
    struct child_req q = {.sup = sup, .i = i, .ref = 12345};
    call_on(pith_ref_shard(sup), sup_child_fn, &q);
    return q.ref;
}

/* A child's count, through K_GET. */
static uint64_t kid_count(pith_ref_t ref, unsigned i)
{
    unsigned g = atomic_load(&kids.gets[i]);
    send_to(ref, K_GET, NULL, 0);
    TEST_WAIT_FOR(atomic_load(&kids.gets[i]) == g + 1);
    return atomic_load(&kids.counted[i]);
}

struct reg_req {
    const char *name;
    pith_ref_t ref;
    int op; /* 0: register, 1: unregister, 2: whereis */
    int rc;
};

static void *reg_fn(void *p)
{
    struct reg_req *q = p;
    if (q->op == 0)
        q->rc = pith_register(q->name, q->ref);
    else if (q->op == 1)
        q->rc = pith_unregister(q->name);
    else
        q->ref = pith_whereis(q->name);
    return NULL;
}

static int register_from(unsigned shard, const char *name, pith_ref_t ref)
{
    struct reg_req q = {.name = name, .ref = ref, .op = 0, .rc = 12345};
    call_on(shard, reg_fn, &q);
    return q.rc;
}

static int unregister_from(unsigned shard, const char *name)
{
    struct reg_req q = {.name = name, .op = 1, .rc = 12345};
    call_on(shard, reg_fn, &q);
    return q.rc;
}

/* pith_whereis on `shard`: that shard's replica. */
static pith_ref_t whereis_on(unsigned shard, const char *name)
{
    struct reg_req q = {.name = name, .ref = 12345, .op = 2};
    call_on(shard, reg_fn, &q);
    return q.ref;
}

/* Waits (bounded) until both shards' replicas map name to ref. */
#define WAIT_NAME(name, ref)                                                                       \
    TEST_WAIT_FOR(whereis_on(0, (name)) == (ref) && whereis_on(1, (name)) == (ref))

/* Starts a supervisor of KIDS children on shard 0 (child `named` registered as `name`), counts
 * child i up to i + 1, crashes child 1, and checks which children the strategy restarted. */
static void strategy_run(pith_strategy_t strategy, const bool restarted[KIDS], unsigned named,
                         const char *name)
{
    memset(&kids, 0, sizeof(kids));
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_child_spec_t specs[KIDS];
    for (unsigned i = 0; i < KIDS; i++)
        specs[i] = (pith_child_spec_t){
            .type = &kid_type, .arg = (void *)(uintptr_t)i, .name = i == named ? name : NULL};
    pith_supervisor_spec_t spec = {.strategy = strategy, .children = specs, .nchildren = KIDS};
    pith_ref_t sup = sup_spawn_at(0, &spec);

    pith_ref_t old[KIDS];
    for (unsigned i = 0; i < KIDS; i++) {
        cr_assert_eq(atomic_load(&kids.starts[i]), 1, "child %u started %u times", i,
                     atomic_load(&kids.starts[i]));
        old[i] = sup_child(sup, i);
        cr_assert_neq(old[i], PITH_REF_NONE, "no ref for child %u", i);
        cr_assert_eq(old[i], atomic_load(&kids.self[i]),
                     "child %u: the supervisor's ref is not "
                     "the one its init saw",
                     i);
        cr_assert_eq(pith_ref_shard(old[i]), 0, "child %u runs on shard %u", i,
                     pith_ref_shard(old[i]));
        for (unsigned j = 0; j < i; j++)
            cr_assert_neq(old[i], old[j]);
    }
    cr_assert_eq(sup_child(sup, KIDS), PITH_REF_NONE);
    cr_assert_eq(sup_child(old[0], 0), PITH_REF_NONE, "a child is no supervisor");
    WAIT_NAME(name, old[named]);

    for (unsigned i = 0; i < KIDS; i++)
        for (unsigned k = 0; k <= i; k++)
            send_to(old[i], K_INC, NULL, 0);
    for (unsigned i = 0; i < KIDS; i++)
        cr_assert_eq(kid_count(old[i], i), i + 1);

    send_to(old[1], K_CRASH, NULL, 0);
    TEST_WAIT_FOR(atomic_load(&kids.starts[1]) == 2);
    /* The supervisor restarts in the one turn that handles the crash's DOWN. */
    test_sync_shard(0);

    uint64_t nrestarted = 0;
    pith_ref_t now[KIDS];
    for (unsigned i = 0; i < KIDS; i++) {
        unsigned starts = atomic_load(&kids.starts[i]);
        now[i] = sup_child(sup, i);
        cr_assert_neq(now[i], PITH_REF_NONE, "no ref for child %u after the crash", i);
        if (restarted[i]) {
            nrestarted++;
            cr_assert_eq(starts, 2, "child %u started %u times, should be restarted", i, starts);
            cr_assert_neq(now[i], old[i], "child %u kept its ref through a restart", i);
            cr_assert_eq(now[i], atomic_load(&kids.self[i]));
            assert_stale(old[i]);
            cr_assert_eq(kid_count(now[i], i), 0, "restarted child %u did not start afresh", i);
            cr_assert_eq(atomic_load(&kids.ends[i]), 1);
            int want = i == 1 ? -EIO : PITH_EXIT_NORMAL;
            cr_assert_eq(atomic_load(&kids.reason[i]), want, "child %u ended with %d", i,
                         atomic_load(&kids.reason[i]));
        } else {
            cr_assert_eq(starts, 1, "child %u started %u times, should be left alone", i, starts);
            cr_assert_eq(now[i], old[i]);
            cr_assert_eq(kid_count(now[i], i), i + 1, "child %u lost its state", i);
            cr_assert_eq(atomic_load(&kids.ends[i]), 0);
        }
    }
    pith_actor_type_stats_t st = type_stats(&kid_type);
    cr_assert_eq(st.restarts, nrestarted, "restarts %" PRIu64 ", %" PRIu64 " restarted",
                 st.restarts, nrestarted);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.spawned, KIDS + nrestarted);
    cr_assert_eq(st.live, KIDS);
    /* The name follows the restarted child. */
    WAIT_NAME(name, now[named]);
    /* And nothing restarts again on its own. */
    test_sync_shard(0);
    for (unsigned i = 0; i < KIDS; i++)
        cr_assert_eq(atomic_load(&kids.starts[i]), restarted[i] ? 2 : 1);
    cr_assert_eq(atomic_load(&kids.wrong_shard), 0);
    cr_assert_eq(atomic_load(&kids.bad_state), 0);

    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
    for (unsigned i = 0; i < KIDS; i++) {
        cr_assert_eq(atomic_load(&kids.ends[i]), restarted[i] ? 2 : 1);
        cr_assert_eq(atomic_load(&kids.reason[i]), PITH_EXIT_SHUTDOWN);
    }
}

Test(actor_sup, one_for_one_restarts_only_the_failed_child, .timeout = 30)
{
    static const bool restarted[KIDS] = {false, true, false};
    strategy_run(PITH_ONE_FOR_ONE, restarted, 1, "one-for-one.kid1");
}

Test(actor_sup, one_for_all_restarts_every_child, .timeout = 30)
{
    static const bool restarted[KIDS] = {true, true, true};
    strategy_run(PITH_ONE_FOR_ALL, restarted, 0, "one-for-all.kid0");
}

Test(actor_sup, rest_for_one_restarts_the_failed_child_and_those_after_it, .timeout = 30)
{
    static const bool restarted[KIDS] = {false, true, true};
    strategy_run(PITH_REST_FOR_ONE, restarted, 2, "rest-for-one.kid2");
}

/* ---- 9. intensity ---- */

Test(actor_sup, supervisor_escalates_past_its_intensity, .timeout = 30)
{
    ev_reset();
    memset(&kids, 0, sizeof(kids));
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_child_spec_t specs[KIDS];
    for (unsigned i = 0; i < KIDS; i++)
        specs[i] = (pith_child_spec_t){.type = &kid_type, .arg = (void *)(uintptr_t)i};
    pith_supervisor_spec_t spec = {.strategy = PITH_ONE_FOR_ONE,
                                   .intensity = 2,
                                   .period_ns = 600000 * MS,
                                   .children = specs,
                                   .nchildren = KIDS};
    pith_ref_t sup = sup_spawn_at(0, &spec);
    pith_ref_t w = spawn_at(0, &agent_type, NULL);
    monitor_cmd(w, sup, 0);

    pith_ref_t refs[KIDS + 2];
    refs[0] = sup_child(sup, 0);
    refs[1] = sup_child(sup, 1);
    refs[2] = sup_child(sup, 2);
    /* Two crashes: two restarts. */
    send_to(refs[0], K_CRASH, NULL, 0);
    TEST_WAIT_FOR(atomic_load(&kids.starts[0]) == 2);
    refs[3] = sup_child(sup, 0);
    cr_assert_neq(refs[3], refs[0]);
    send_to(refs[3], K_CRASH, NULL, 0);
    TEST_WAIT_FOR(atomic_load(&kids.starts[0]) == 3);
    refs[4] = sup_child(sup, 0);
    cr_assert_neq(refs[4], refs[3]);
    cr_assert_neq(refs[4], PITH_REF_NONE);
    cr_assert_eq(ev_count(EV_MSG, w, PITH_MSG_DOWN), 0, "the supervisor ended early");

    /* The third within the period: the supervisor gives up. */
    send_to(refs[4], K_CRASH, NULL, 0);
    pith_down_t d = down_wait(w, sup, 0, 0);
    cr_assert_eq(d.reason, PITH_EXIT_ESCALATED, "the supervisor ended with %d", d.reason);
    cr_assert_eq(atomic_load(&kids.starts[0]), 3, "child 0 started %u times",
                 atomic_load(&kids.starts[0]));
    cr_assert_eq(atomic_load(&kids.starts[1]), 1);
    cr_assert_eq(atomic_load(&kids.starts[2]), 1);
    cr_assert_eq(atomic_load(&kids.ends[0]), 3);
    cr_assert_eq(atomic_load(&kids.reason[0]), -EIO);
    for (unsigned i = 1; i < KIDS; i++) {
        cr_assert_eq(atomic_load(&kids.ends[i]), 1, "child %u ended %u times", i,
                     atomic_load(&kids.ends[i]));
        cr_assert_eq(atomic_load(&kids.reason[i]), PITH_EXIT_NORMAL, "child %u ended with %d", i,
                     atomic_load(&kids.reason[i]));
    }
    for (unsigned i = 0; i < KIDS + 2; i++)
        assert_stale(refs[i]);
    assert_stale(sup);
    cr_assert_eq(sup_child(sup, 1), PITH_REF_NONE);
    pith_actor_type_stats_t st = type_stats(&kid_type);
    cr_assert_eq(st.restarts, 2, "restarts %" PRIu64, st.restarts);
    cr_assert_eq(st.failed, 3);
    cr_assert_eq(st.live, 0);
    assert_alive(w);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 10. registry ---- */

Test(actor_sup, registry_replicates_last_wins_and_forgets_ended_actors, .timeout = 30)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t x = spawn_at(1, &agent_type, NULL);
    pith_ref_t y = spawn_at(0, &agent_type, NULL);
    const char *name = "registry.name";
    cr_assert_eq(whereis_on(0, name), PITH_REF_NONE);

    /* Registered on shard 0 for an actor on shard 1: every replica learns it. */
    int rc = register_from(0, name, x);
    cr_assert_eq(rc, 0, "pith_register: %d (%s)", rc, pith_strerror(rc));
    WAIT_NAME(name, x);
    /* Registered again, for another actor, from the other shard: the last wins everywhere. */
    rc = register_from(1, name, y);
    cr_assert_eq(rc, 0, "pith_register: %d (%s)", rc, pith_strerror(rc));
    WAIT_NAME(name, y);
    /* The actor that lost the name ends: the name stays with the winner. */
    cr_assert_eq(stop_from(1, x, false), 0);
    for (unsigned i = 0; i < 3; i++) {
        test_sync_shard(1);
        test_sync_shard(0);
    }
    cr_assert_eq(whereis_on(0, name), y);
    cr_assert_eq(whereis_on(1, name), y);
    /* The named actor ends: every replica forgets the name. */
    cr_assert_eq(stop_from(0, y, false), 0);
    WAIT_NAME(name, PITH_REF_NONE);

    /* An actor with two names, registered from outside the engine, loses both when it ends. */
    pith_ref_t z = spawn_at(1, &agent_type, NULL);
    cr_assert_eq(pith_register("registry.z1", z), 0);
    cr_assert_eq(pith_register("registry.z2", z), 0);
    WAIT_NAME("registry.z1", z);
    WAIT_NAME("registry.z2", z);
    cr_assert_eq(pith_whereis("registry.z1"), PITH_REF_NONE, "pith_whereis from outside");
    cr_assert_eq(stop_from(1, z, false), 0);
    WAIT_NAME("registry.z1", PITH_REF_NONE);
    WAIT_NAME("registry.z2", PITH_REF_NONE);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

Test(actor_sup, registry_unregister_and_bad_names, .timeout = 30)
{
    ev_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t a = spawn_at(1, &agent_type, NULL);

    cr_assert_eq(register_from(0, "registry.u", a), 0);
    WAIT_NAME("registry.u", a);
    int rc = unregister_from(1, "registry.u");
    cr_assert_eq(rc, 0, "pith_unregister: %d (%s)", rc, pith_strerror(rc));
    WAIT_NAME("registry.u", PITH_REF_NONE);
    assert_alive(a); /* unregistering touches the name only */
    /* Unregistering an unknown name is harmless. */
    cr_assert_eq(pith_unregister("registry.never"), 0);

    /* Names of PITH_NAME_MAX bytes are fine; one more is not. */
    char longest[PITH_NAME_MAX + 1], too_long[PITH_NAME_MAX + 2];
    memset(longest, 'n', PITH_NAME_MAX);
    longest[PITH_NAME_MAX] = '\0';
    memset(too_long, 'n', PITH_NAME_MAX + 1);
    too_long[PITH_NAME_MAX + 1] = '\0';
    cr_assert_eq(register_from(0, longest, a), 0);
    WAIT_NAME(longest, a);
    cr_assert_eq(register_from(0, too_long, a), -EINVAL);
    cr_assert_eq(pith_register(too_long, a), -EINVAL);
    cr_assert_eq(register_from(1, "", a), -EINVAL);
    cr_assert_eq(register_from(1, NULL, a), -EINVAL);
    cr_assert_eq(register_from(1, "registry.none", PITH_REF_NONE), -EINVAL);
    cr_assert_eq(unregister_from(0, ""), -EINVAL);
    cr_assert_eq(unregister_from(0, too_long), -EINVAL);
    cr_assert_eq(pith_unregister(NULL), -EINVAL);
    cr_assert_eq(whereis_on(0, ""), PITH_REF_NONE);
    cr_assert_eq(whereis_on(0, too_long), PITH_REF_NONE);
    cr_assert_eq(whereis_on(0, NULL), PITH_REF_NONE);
    /* The longest name is still there, and the too-long one (a prefix of it) never was. */
    for (unsigned i = 0; i < 3; i++) {
        test_sync_shard(0);
        test_sync_shard(1);
    }
    cr_assert_eq(whereis_on(0, longest), a);
    cr_assert_eq(whereis_on(1, longest), a);
    cr_assert_eq(stop_from(1, a, false), 0);
    WAIT_NAME(longest, PITH_REF_NONE);
    ev_assert_no_overflow();
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
    cr_assert_eq(pith_register("registry.after", a), -ESHUTDOWN);
    cr_assert_eq(pith_unregister("registry.after"), -ESHUTDOWN);
}

/* ---- 11. engine stop in the middle of it all ---- */

Test(actor_sup, engine_stop_with_asks_timers_monitors_links_and_a_supervisor_tree, .timeout = 60)
{
    ev_reset();
    memset(&kids, 0, sizeof(kids));
    pith_config_t cfg = test_config(2);
    cfg.drain_ns = 100 * MS; /* periodic timers keep sending: do not wait the default 1 s */
    test_start(&cfg);
    pith_ref_t ag[2][4];
    for (unsigned s = 0; s < 2; s++)
        for (unsigned i = 0; i < 4; i++)
            ag[s][i] = spawn_at(s, &agent_type, NULL);

    /* Asks that will not be answered before the stop: from actors and from tasks. */
    for (unsigned s = 0; s < 2; s++) {
        const struct ev *e = cmd_wait(
            ag[s][0], C_ASK, (struct cmd){.ref = ag[1 - s][1], .type = Q_IGNORE, .a = LONG_NS}, 0);
        cr_assert_eq(e->rc, 0);
        e = cmd_wait(ag[s][0], C_ASK, (struct cmd){.ref = ag[s][2], .type = Q_LATE, .a = LONG_NS},
                     1);
        cr_assert_eq(e->rc, 0);
        struct cb_ask q = {
            .to = ag[1 - s][1], .type = Q_IGNORE, .timeout_ns = LONG_NS, .tag = 100 + s};
        ask_from(s, &q);
        cr_assert_eq(q.rc, 0);
    }
    /* Live timers: periodic and a long one-shot. */
    for (unsigned s = 0; s < 2; s++) {
        cr_assert_eq(
            cmd_wait(ag[s][3], C_TIMER, (struct cmd){.a = MS, .b = MS, .type = T_TICK}, 0)->rc, 0);
        cr_assert_eq(cmd_wait(ag[s][3], C_TIMER, (struct cmd){.a = LONG_NS, .type = T_ONE}, 1)->rc,
                     0);
    }
    /* Monitors and links, on one shard and across. */
    monitor_cmd(ag[0][1], ag[1][3], 0);
    monitor_cmd(ag[0][1], ag[0][3], 0);
    monitor_cmd(ag[1][1], ag[0][3], 0);
    link_settled(ag[0][2], ag[1][2]);
    link_and(ag[1][0], ag[1][1], 0);
    trap(ag[0][0], true);
    link_settled(ag[0][0], ag[1][0]);
    /* A supervisor with its children on shard 1, one of them named, watched from shard 0. */
    pith_child_spec_t specs[KIDS];
    for (unsigned i = 0; i < KIDS; i++)
        specs[i] = (pith_child_spec_t){
            .type = &kid_type, .arg = (void *)(uintptr_t)i, .name = i == 1 ? "stop.kid" : NULL};
    pith_supervisor_spec_t spec = {
        .strategy = PITH_ONE_FOR_ALL, .children = specs, .nchildren = KIDS};
    pith_ref_t sup = sup_spawn_at(1, &spec);
    monitor_cmd(ag[0][1], sup, 0);
    cr_assert_eq(register_from(0, "stop.agent", ag[1][3]), 0);
    WAIT_NAME("stop.kid", sup_child(sup, 1));
    WAIT_NAME("stop.agent", ag[1][3]);
    TEST_WAIT_FOR(ev_count(EV_MSG, ag[0][3], T_TICK) >= 3 &&
                  ev_count(EV_MSG, ag[1][3], T_TICK) >= 3);

    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0, "%" PRIu64 " bytes still held at stop", rep.mem_in_use);
    for (unsigned s = 0; s < 2; s++)
        for (unsigned i = 0; i < 4; i++) {
            cr_assert_eq(ev_count(EV_TERM, ag[s][i], 0), 1, "agent %u of shard %u ended %u times",
                         i, s, ev_count(EV_TERM, ag[s][i], 0));
            const struct ev *t = ev_nth(EV_TERM, ag[s][i], 0, 0);
            cr_assert_eq(t->rc, PITH_EXIT_SHUTDOWN, "agent %u of shard %u ended with %d", i, s,
                         t->rc);
            cr_assert_eq(t->shard, (int)s);
        }
    for (unsigned i = 0; i < KIDS; i++) {
        cr_assert_eq(atomic_load(&kids.starts[i]), 1);
        cr_assert_eq(atomic_load(&kids.ends[i]), 1, "child %u ended %u times", i,
                     atomic_load(&kids.ends[i]));
        cr_assert_eq(atomic_load(&kids.reason[i]), PITH_EXIT_SHUTDOWN, "child %u ended with %d", i,
                     atomic_load(&kids.reason[i]));
    }
    cr_assert_eq(atomic_load(&kids.wrong_shard), 0);
    /* No ask was answered: a callback, if one ran at all, ran once and without a reply. */
    for (unsigned s = 0; s < 2; s++) {
        unsigned n = ev_count(EV_CB, 100 + s, 0);
        cr_assert_leq(n, 1);
        if (n == 1)
            cr_assert(ev_nth(EV_CB, 100 + s, 0, 0)->null_reply);
    }
    ev_assert_no_overflow();
}
