/* The actor layer (pith/actor.h): spawn here and on another shard, refs and the `from` of a
 * message, per-pair FIFO order under backpressure, stale and invalid refs, the two mailbox
 * overflow policies, fairness between a flooded actor and the rest, become, stop (from the
 * behaviour, from another shard, from outside), failing behaviours and inits, the errors of the
 * API, a million actors coming and going, and live actors at engine stop.
 * Actor code runs on shard threads and reports back in structs: nothing asserts on a shard
 * thread. Work meant for a shard runs there through pith_call_wait. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "util.h"

/* ---- helpers ---- */

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
    cr_assert_eq(pith_ref_shard(q.ref), shard, "a ref of shard %u names shard %u", shard,
                 pith_ref_shard(q.ref));
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

/* The same with a 64-bit payload. */
static int send_u64_from(unsigned shard, pith_ref_t to, uint32_t type, uint64_t v)
{
    return send_from(shard, to, type, &v, sizeof(v));
}

struct stop_req {
    pith_ref_t ref;
    int rc;
};

static void *stop_fn(void *p)
{
    struct stop_req *q = p;
    q->rc = pith_stop(q->ref);
    return NULL;
}

/* pith_stop from a plain task on `shard`: its result. */
static int stop_from(unsigned shard, pith_ref_t ref)
{
    struct stop_req q = {.ref = ref, .rc = 12345};
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

static uint64_t dead_letters(unsigned shard)
{
    uint64_t n = 12345;
    int rc = pith_dead_letters(shard, &n);
    cr_assert_eq(rc, 0, "pith_dead_letters(%u): %d (%s)", shard, rc, pith_strerror(rc));
    return n;
}

static uint64_t payload_u64(const pith_msg_t *msg)
{
    uint64_t v = UINT64_MAX;
    if (msg->len == sizeof(v))
        memcpy(&v, msg->data, sizeof(v));
    return v;
}

/* ---- the probe: an actor that logs what it sees and obeys a few commands ---- */

#define P_PLAIN  1 /* log it */
#define P_STOP   2 /* pith_stop(self), log the result */
#define P_FAIL   3 /* return -EIO */
#define P_BECOME 4 /* switch to the other behaviour */

#define LOG_MAX 64

/* What probes did. Entries are claimed with a fetch-add; the test reads them after it saw the
 * count it waited for and synced with the shard. */
static struct probe_log {
    atomic_uint handled;
    struct {
        int behaviour; /* 1: probe_a, 2: probe_b */
        uint32_t type;
        uint64_t val;
        pith_ref_t self;
        int shard;
    } e[LOG_MAX];
    atomic_int stop_rc;
    atomic_uint terminated;
    atomic_int reason;
    atomic_int term_shard;
    atomic_uint_fast64_t term_self;
} plog;

/* Entries are written on shard threads; plog_seen reads them while probes may still run, so
 * both hold this lock (the other readers sync with the shard first). */
static pthread_mutex_t plog_lock = PTHREAD_MUTEX_INITIALIZER;

/* Whether a probe logged a message with payload v. */
static bool plog_seen(uint64_t v)
{
    bool seen = false;
    pthread_mutex_lock(&plog_lock);
    unsigned n = atomic_load(&plog.handled);
    for (unsigned i = 0; i < n && i < LOG_MAX; i++)
        if (plog.e[i].val == v)
            seen = true;
    pthread_mutex_unlock(&plog_lock);
    return seen;
}

static void probe_reset(void)
{
    memset(&plog, 0, sizeof(plog));
    atomic_store(&plog.stop_rc, 12345);
    atomic_store(&plog.reason, 12345);
    atomic_store(&plog.term_shard, -2);
}

static int probe_b(pith_actor_t *self, void *state, const pith_msg_t *msg);

static int probe_log_msg(int which, pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    uint64_t *count = state;
    ++*count; /* the state survives become */
    pthread_mutex_lock(&plog_lock);
    unsigned i = atomic_fetch_add(&plog.handled, 1);
    if (i < LOG_MAX) {
        plog.e[i].behaviour = which;
        plog.e[i].type = msg->type;
        plog.e[i].val = payload_u64(msg);
        plog.e[i].self = pith_self(self);
        plog.e[i].shard = pith_shard_id();
    }
    pthread_mutex_unlock(&plog_lock);
    return 0;
}

static int probe_a(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    probe_log_msg(1, self, state, msg);
    switch (msg->type) {
    case P_STOP:
        atomic_store(&plog.stop_rc, pith_stop(pith_self(self)));
        return 0;
    case P_FAIL:
        return -EIO;
    case P_BECOME:
        pith_become(self, probe_b);
        return 0;
    default:
        return 0;
    }
}

static int probe_b(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    probe_log_msg(2, self, state, msg);
    if (msg->type == P_BECOME)
        pith_become(self, probe_a);
    return 0;
}

static void probe_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)state;
    atomic_store(&plog.reason, reason);
    atomic_store(&plog.term_shard, pith_shard_id());
    atomic_store(&plog.term_self, pith_self(self));
    atomic_fetch_add(&plog.terminated, 1);
}

static const pith_actor_type_t probe_type = {
    .name = "probe",
    .behaviour = probe_a,
    .state_size = sizeof(uint64_t),
    .terminate = probe_terminate,
};

/* ---- 1. spawn, init, delivery and `from` ---- */

#define SP_MSGS 8

static struct {
    int init_calls; /* shard 0 only */
    void *init_arg;
    pith_ref_t init_self;
    int init_shard;
    bool state_zeroed, state_aligned;
    int calls_at_return; /* init_calls when pith_spawn returned */
    pith_ref_t spawned;
    int spawn_rc;
    pith_ref_t receiver;
    atomic_uint got;
    struct {
        uint32_t type, len;
        pith_ref_t from;
        char data[32];
        bool aligned;
        pith_ref_t self;
        int shard;
    } m[SP_MSGS];
    test_error_t err;
} sp;

struct rec_state {
    uint64_t w[5];
};

static int recorder_init(pith_actor_t *self, void *state, void *arg)
{
    const struct rec_state *s = state;
    sp.state_zeroed = true;
    for (size_t i = 0; i < 5; i++)
        if (s->w[i] != 0)
            sp.state_zeroed = false;
    sp.state_aligned = ((uintptr_t)state & 15) == 0;
    sp.init_arg = arg;
    sp.init_self = pith_self(self);
    sp.init_shard = pith_shard_id();
    sp.init_calls++;
    return 0;
}

static int recorder(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    unsigned i = atomic_load(&sp.got); /* one recorder: a single writer */
    if (i < SP_MSGS) {
        sp.m[i].type = msg->type;
        sp.m[i].len = msg->len;
        sp.m[i].from = msg->from;
        memcpy(sp.m[i].data, msg->data, msg->len < 32 ? msg->len : 32);
        sp.m[i].aligned = ((uintptr_t)msg->data & 15) == 0;
        sp.m[i].self = pith_self(self);
        sp.m[i].shard = pith_shard_id();
    }
    atomic_store(&sp.got, i + 1);
    return 0;
}

static const pith_actor_type_t recorder_type = {
    .name = "recorder",
    .behaviour = recorder,
    .state_size = sizeof(struct rec_state),
    .init = recorder_init,
};

/* Any message makes it send "from an actor" to sp.receiver. */
static int forwarder(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    static const char text[] = "from an actor";
    int rc = pith_send(sp.receiver, 42, text, sizeof(text));
    if (rc != 0)
        TEST_NOTE(&sp.err, rc);
    return 0;
}

static const pith_actor_type_t forwarder_type = {.name = "forwarder", .behaviour = forwarder};

static int sp_magic;

static void *sp_spawn_fn(void *arg)
{
    (void)arg;
    sp.spawn_rc = pith_spawn(&recorder_type, &sp_magic, &sp.spawned);
    sp.calls_at_return = sp.init_calls;
    return NULL;
}

Test(actor, spawn_runs_init_first_and_messages_carry_their_sender, .timeout = 30)
{
    memset(&sp, 0, sizeof(sp));
    pith_config_t cfg = test_config(2);
    test_start(&cfg);

    call_on(0, sp_spawn_fn, NULL);
    cr_assert_eq(sp.spawn_rc, 0, "pith_spawn: %d (%s)", sp.spawn_rc, pith_strerror(sp.spawn_rc));
    pith_ref_t ref = sp.spawned;
    cr_assert_neq(ref, PITH_REF_NONE);
    cr_assert_eq(pith_ref_shard(ref), 0);
    cr_assert_eq(sp.calls_at_return, 1, "init ran %d times before pith_spawn returned",
                 sp.calls_at_return);
    cr_assert_eq(sp.init_calls, 1);
    cr_assert_eq(sp.init_arg, &sp_magic, "init got arg %p, not %p", sp.init_arg, (void *)&sp_magic);
    cr_assert_eq(sp.init_self, ref, "pith_self in init is %#" PRIx64 ", the ref %#" PRIx64,
                 sp.init_self, ref);
    cr_assert_eq(sp.init_shard, 0);
    cr_assert(sp.state_zeroed, "the state was not zeroed");
    cr_assert(sp.state_aligned, "the state is not 16-byte aligned");

    /* From a plain task on the actor's shard: no sender. */
    static const char hello[] = "hello";
    cr_assert_eq(send_from(0, ref, 7, hello, sizeof(hello)), 0);
    TEST_WAIT_FOR(atomic_load(&sp.got) == 1);
    /* A message without data. */
    cr_assert_eq(send_from(0, ref, 8, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&sp.got) == 2);
    /* From a plain task on another shard: no sender either. */
    cr_assert_eq(send_from(1, ref, 9, hello, 3), 0);
    TEST_WAIT_FOR(atomic_load(&sp.got) == 3);

    /* From actors' behaviours, on this shard and on the other: the sender's ref. */
    sp.receiver = ref;
    pith_ref_t fwd0 = spawn_at(0, &forwarder_type, NULL);
    pith_ref_t fwd1 = spawn_at(1, &forwarder_type, NULL);
    cr_assert_neq(fwd0, ref);
    cr_assert_eq(send_from(0, fwd0, 1, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&sp.got) == 4);
    cr_assert_eq(send_from(0, fwd1, 1, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&sp.got) == 5);
    test_sync_shard(0);
    test_assert_no_error(&sp.err);
    cr_assert_eq(atomic_load(&sp.got), 5);

    cr_assert_eq(sp.m[0].type, 7);
    cr_assert_eq(sp.m[0].len, sizeof(hello));
    cr_assert_str_eq(sp.m[0].data, "hello");
    cr_assert_eq(sp.m[0].from, PITH_REF_NONE, "from a task: from %#" PRIx64, sp.m[0].from);
    cr_assert_eq(sp.m[1].type, 8);
    cr_assert_eq(sp.m[1].len, 0);
    cr_assert_eq(sp.m[1].from, PITH_REF_NONE);
    cr_assert_eq(sp.m[2].type, 9);
    cr_assert_eq(sp.m[2].len, 3);
    cr_assert_eq(memcmp(sp.m[2].data, "hel", 3), 0);
    cr_assert_eq(sp.m[2].from, PITH_REF_NONE, "from a task on shard 1: from %#" PRIx64,
                 sp.m[2].from);
    cr_assert_eq(sp.m[3].type, 42);
    cr_assert_str_eq(sp.m[3].data, "from an actor");
    cr_assert_eq(sp.m[3].from, fwd0,
                 "from an actor on the same shard: from %#" PRIx64 ", its ref %#" PRIx64,
                 sp.m[3].from, fwd0);
    cr_assert_eq(sp.m[4].type, 42);
    cr_assert_eq(sp.m[4].from, fwd1,
                 "from an actor on shard 1: from %#" PRIx64 ", its ref %#" PRIx64, sp.m[4].from,
                 fwd1);
    for (unsigned i = 0; i < 5; i++) {
        if (sp.m[i].len > 0)
            cr_assert(sp.m[i].aligned, "message %u's data is not 16-byte aligned", i);
        cr_assert_eq(sp.m[i].self, ref);
        cr_assert_eq(sp.m[i].shard, 0, "message %u was handled on shard %d", i, sp.m[i].shard);
    }
    pith_actor_type_stats_t st = type_stats(&recorder_type);
    cr_assert_eq(st.spawned, 1);
    cr_assert_eq(st.live, 1);
    cr_assert_eq(st.messages, 5);
    cr_assert_eq(type_stats(&forwarder_type).messages, 2);
    test_stop(NULL);
}

/* ---- 2. per-pair FIFO ---- */

#define FIFO_KICK  1
#define FIFO_CONT  2
#define FIFO_SEQ   3
#define FIFO_CHUNK 256 /* most sends per behaviour call, so that a call stays short */

static struct {
    uint64_t n;
    pith_ref_t producer;
    atomic_uint_fast64_t received;
    atomic_uint_fast64_t eagain; /* sends the producer saw refused */
    atomic_uint_fast64_t bad;    /* messages out of sequence or with the wrong sender */
    uint64_t first_bad_expected, first_bad_got, first_bad_type;
    pith_ref_t first_bad_from;
    test_error_t err;
} ff;

struct producer_arg {
    pith_ref_t to;
    uint64_t n;
};

struct producer {
    pith_ref_t to;
    uint64_t next, n;
};

static int producer_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    struct producer *p = state;
    const struct producer_arg *a = arg;
    p->to = a->to;
    p->n = a->n;
    return 0;
}

/* KICK or CONT: send what fits. Refused (-EAGAIN: the mailbox is full or the mesh pushes back),
 * or after FIFO_CHUNK sends, it sends itself CONT and returns, so that the consumer (or the
 * mesh) gets to run before it goes on. */
static int producer(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)msg;
    struct producer *p = state;
    for (unsigned i = 0; i < FIFO_CHUNK && p->next < p->n; i++) {
        int rc = pith_send(p->to, FIFO_SEQ, &p->next, sizeof(p->next));
        if (rc == -EAGAIN) {
            atomic_fetch_add(&ff.eagain, 1);
            break;
        }
        if (rc != 0) {
            TEST_NOTE(&ff.err, rc);
            return 0;
        }
        p->next++;
    }
    if (p->next < p->n) {
        int rc = pith_send(pith_self(self), FIFO_CONT, NULL, 0);
        if (rc != 0)
            TEST_NOTE(&ff.err, rc);
    }
    return 0;
}

static const pith_actor_type_t producer_type = {
    .name = "producer",
    .behaviour = producer,
    .state_size = sizeof(struct producer),
    .init = producer_init,
};

static int consumer(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    uint64_t *expect = state;
    uint64_t seq = payload_u64(msg);
    if (msg->type != FIFO_SEQ || msg->from != ff.producer || seq != *expect) {
        if (atomic_fetch_add(&ff.bad, 1) == 0) {
            ff.first_bad_expected = *expect;
            ff.first_bad_got = seq;
            ff.first_bad_type = msg->type;
            ff.first_bad_from = msg->from;
        }
    }
    *expect = seq + 1;
    atomic_fetch_add(&ff.received, 1);
    return 0;
}

/* On the producer's shard the mailbox is small, so that the producer meets -EAGAIN at once. */
static const pith_actor_type_t consumer_near_type = {
    .name = "consumer-near",
    .behaviour = consumer,
    .state_size = sizeof(uint64_t),
    .mailbox_max = 128,
};

/* Across shards a mailbox refusal is not reported to the sender (the receiving shard counts
 * it), so this mailbox takes everything; the producer's -EAGAIN comes from the mesh. */
static const pith_actor_type_t consumer_far_type = {
    .name = "consumer-far",
    .behaviour = consumer,
    .state_size = sizeof(uint64_t),
    .mailbox_max = 1u << 20,
};

static void fifo_run(unsigned producer_shard, const pith_actor_type_t *ctype)
{
    memset(&ff, 0, sizeof(ff));
    ff.n = scaled(100000);
    if (ff.n < 1000)
        ff.n = 1000;
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t cons = spawn_at(0, ctype, NULL);
    struct producer_arg pa = {.to = cons, .n = ff.n};
    ff.producer = spawn_at(producer_shard, &producer_type, &pa);
    cr_assert_eq(send_from(producer_shard, ff.producer, FIFO_KICK, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&ff.received) >= ff.n || atomic_load(&ff.err.code) != 0);
    test_sync_shard(0);
    test_sync_shard(1);
    test_assert_no_error(&ff.err);
    cr_assert_eq(atomic_load(&ff.bad), 0,
                 "%" PRIu64 " messages out of order; the first: expected %" PRIu64 ", got %" PRIu64
                 " (type %" PRIu64 ", from %#" PRIx64 ")",
                 (uint64_t)atomic_load(&ff.bad), ff.first_bad_expected, ff.first_bad_got,
                 ff.first_bad_type, ff.first_bad_from);
    cr_assert_eq(atomic_load(&ff.received), ff.n);
    pith_actor_type_stats_t st = type_stats(ctype);
    cr_assert_eq(st.messages, ff.n);
    cr_assert_eq(st.rejected, producer_shard == 0 ? atomic_load(&ff.eagain) : 0,
                 "rejected %" PRIu64 ", the producer saw %" PRIu64 " -EAGAIN", st.rejected,
                 (uint64_t)atomic_load(&ff.eagain));
    cr_assert_leq(st.mailbox_max, ctype->mailbox_max);
    if (producer_shard == 0)
        cr_assert_gt(atomic_load(&ff.eagain), 0,
                     "the producer never met a full mailbox of %u: backpressure untested",
                     ctype->mailbox_max);
    test_stop(NULL);
}

Test(actor, fifo_per_pair_on_one_shard_under_backpressure, .timeout = 60)
{
    fifo_run(0, &consumer_near_type);
}

Test(actor, fifo_per_pair_across_shards_under_backpressure, .timeout = 60)
{
    fifo_run(1, &consumer_far_type);
}

/* ---- 3. stale and invalid refs ---- */

Test(actor, stale_refs_are_esrch_here_and_dead_letters_elsewhere, .timeout = 30)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    /* A keeper keeps shard 0's table alive: x's ref goes stale by its generation. */
    pith_ref_t keeper = spawn_at(0, &probe_type, NULL);
    pith_ref_t x = spawn_at(0, &probe_type, NULL);
    cr_assert_neq(x, keeper);
    cr_assert_eq(stop_from(0, x), 0);
    /* On the actor's own shard, an idle actor ends within pith_stop. */
    cr_assert_eq(atomic_load(&plog.terminated), 1);
    cr_assert_eq(atomic_load(&plog.term_self), x);
    cr_assert_eq(atomic_load(&plog.reason), PITH_EXIT_NORMAL);

    cr_assert_eq(send_u64_from(0, x, P_PLAIN, 1), -ESRCH);
    cr_assert_eq(stop_from(0, x), -ESRCH);

    uint64_t dl0 = dead_letters(0), dl1 = dead_letters(1);
    cr_assert_eq(send_u64_from(1, x, P_PLAIN, 2), 0, "across shards a stale ref is not refused");
    TEST_WAIT_FOR(dead_letters(0) == dl0 + 1);
    /* From a thread outside the engine it is the same. */
    uint64_t v = 3;
    cr_assert_eq(pith_send(x, P_PLAIN, &v, sizeof(v)), 0);
    TEST_WAIT_FOR(dead_letters(0) == dl0 + 2);
    test_sync_shard(0);
    cr_assert_eq(dead_letters(0), dl0 + 2);
    cr_assert_eq(dead_letters(1), dl1, "shard 1 counted dead letters meant for shard 0");

    /* A new actor reuses x's slot with a new generation: x stays stale. */
    pith_ref_t y = spawn_at(0, &probe_type, NULL);
    cr_assert_neq(y, x, "a new actor got the stopped actor's ref");
    cr_assert_eq(send_u64_from(0, x, P_PLAIN, 4), -ESRCH);
    cr_assert_eq(send_u64_from(1, x, P_PLAIN, 5), 0);
    TEST_WAIT_FOR(dead_letters(0) == dl0 + 3);
    cr_assert_eq(send_u64_from(0, y, P_PLAIN, 6), 0);
    TEST_WAIT_FOR(atomic_load(&plog.handled) == 1);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&plog.handled), 1, "a message to a stale ref reached an actor");
    cr_assert_eq(plog.e[0].self, y);
    cr_assert_eq(plog.e[0].val, 6);
    pith_actor_type_stats_t st = type_stats(&probe_type);
    cr_assert_eq(st.spawned, 3);
    cr_assert_eq(st.stopped, 1);
    cr_assert_eq(st.live, 2);
    cr_assert_eq(st.messages, 1);
    test_stop(NULL);
}

/* Sends to each stale ref from a task on shard 0 (expecting -ESRCH) and from one on shard 1
 * (expecting a dead letter), then one message to y from each of those two senders. Once y has
 * both of its own, whatever the stale sends delivered has been handled (per-pair order) or
 * counted: y must have handled exactly its two. For refs of a previous engine, -EINVAL (what
 * the header promises for a ref that is not of this engine) is accepted in both places. */
static void assert_stale_refs_miss(const pith_ref_t *stale, unsigned n, pith_ref_t y,
                                   bool other_engine, const char *story)
{
    uint64_t dl0 = dead_letters(0);
    unsigned h0 = atomic_load(&plog.handled);
    int rc_here[4], rc_there[4];
    unsigned crossed = 0; /* sends from shard 1 that were accepted */
    cr_assert_leq(n, 4);
    for (unsigned i = 0; i < n; i++) {
        rc_here[i] = send_u64_from(0, stale[i], P_PLAIN, 100 + i);
        rc_there[i] = send_u64_from(1, stale[i], P_PLAIN, 200 + i);
        if (rc_there[i] == 0)
            crossed++;
    }
    cr_assert_eq(send_u64_from(0, y, P_PLAIN, 4), 0);
    cr_assert_eq(send_u64_from(1, y, P_PLAIN, 5), 0);
    TEST_WAIT_FOR(plog_seen(4) && plog_seen(5));
    test_sync_shard(0);
    unsigned handled = atomic_load(&plog.handled) - h0;
    uint64_t dl = dead_letters(0) - dl0;
    for (unsigned i = 0; i < n; i++) {
        bool refused = rc_here[i] == -ESRCH || (other_engine && rc_here[i] == -EINVAL);
        cr_assert(stale[i] != y && refused,
                  "%s: stale ref %u (%#" PRIx64 ") %s y's ref; a send to it on shard 0 returned "
                  "%d (not -ESRCH); y handled %u messages (its own 2 expected), %" PRIu64
                  " dead letters counted (%u expected): mail for a stopped actor reached y",
                  story, i, stale[i], stale[i] == y ? "equals" : "differs from", rc_here[i],
                  handled, dl, crossed);
        cr_assert(rc_there[i] == 0 || (other_engine && rc_there[i] == -EINVAL),
                  "%s: stale ref %u from shard 1: %d", story, i, rc_there[i]);
    }
    cr_assert_eq(handled, 2, "%s: y handled %u messages, its own 2 expected", story, handled);
    cr_assert_eq(dl, crossed, "%s: %" PRIu64 " dead letters, %u expected", story, dl, crossed);
}

/* With no actor left on a shard its table is given back; a ref from before must stay stale all
 * the same (actor.h: a stale ref "never reaches another actor"). */
Test(actor, stale_ref_of_a_shards_last_actor_never_reaches_a_later_one, .timeout = 30)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t x = spawn_at(0, &probe_type, NULL);
    cr_assert_eq(stop_from(0, x), 0);
    cr_assert_eq(send_u64_from(0, x, P_PLAIN, 1), -ESRCH);
    pith_ref_t y = spawn_at(0, &probe_type, NULL);
    assert_stale_refs_miss(&x, 1, y, false, "x stopped as shard 0's last actor, then y spawned");
    test_stop(NULL);
}

/* The same when records were recycled before the table went: a and b spawn; a stops and its
 * record is taken twice more (a1, a2, each stopped in turn); b stops as the shard's last actor;
 * then y spawns. None of the four stale refs may reach y. */
Test(actor, stale_refs_of_recycled_records_never_reach_a_later_one, .timeout = 30)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t x[4];
    x[0] = spawn_at(0, &probe_type, NULL); /* a */
    x[3] = spawn_at(0, &probe_type, NULL); /* b */
    cr_assert_eq(stop_from(0, x[0]), 0);
    x[1] = spawn_at(0, &probe_type, NULL); /* a1 */
    cr_assert_eq(stop_from(0, x[1]), 0);
    x[2] = spawn_at(0, &probe_type, NULL); /* a2 */
    cr_assert_eq(stop_from(0, x[2]), 0);
    cr_assert_eq(stop_from(0, x[3]), 0);
    for (unsigned i = 0; i < 4; i++)
        for (unsigned j = 0; j < i; j++)
            cr_assert_neq(x[i], x[j], "two live-at-once or successive actors share a ref");
    pith_ref_t y = spawn_at(0, &probe_type, NULL);
    assert_stale_refs_miss(x, 4, y, false,
                           "a and b spawned, a's record reused by a1 then a2, b last");
    test_stop(NULL);
}

/* Refs are plain numbers an application may keep: one from an engine that has stopped is not a
 * ref of the next engine (actor.h: -EINVAL "to is not a ref of this engine") and must not reach
 * the new engine's actors. The first engine's actors are as in the test above (a's record
 * reused twice), with a2 and b still alive when it stops. */
Test(actor, refs_from_a_previous_engine_never_reach_a_new_actor, .timeout = 60)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t x[4];
    x[0] = spawn_at(0, &probe_type, NULL); /* a */
    x[3] = spawn_at(0, &probe_type, NULL); /* b */
    cr_assert_eq(stop_from(0, x[0]), 0);
    x[1] = spawn_at(0, &probe_type, NULL); /* a1 */
    cr_assert_eq(stop_from(0, x[1]), 0);
    x[2] = spawn_at(0, &probe_type, NULL); /* a2 */
    test_stop(NULL);

    probe_reset();
    test_start(&cfg);
    pith_ref_t y = spawn_at(0, &probe_type, NULL);
    /* From outside the engine too: -EINVAL by the header, or at least never delivered. Each
     * accepted send must land as a dead letter (polled: deliveries are tasks on shard 0). */
    uint64_t v = 1, dl0 = dead_letters(0);
    unsigned accepted = 0;
    for (unsigned i = 0; i < 4; i++) {
        int rc = pith_send(x[i], P_PLAIN, &v, sizeof(v));
        cr_assert(rc == 0 || rc == -EINVAL, "old ref %u from outside: %d", i, rc);
        accepted += rc == 0;
    }
    TEST_WAIT_FOR(dead_letters(0) - dl0 + atomic_load(&plog.handled) >= accepted);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&plog.handled), 0,
                 "%u messages sent from outside to refs of the previous engine reached y (%#" PRIx64
                 "); the old refs: %#" PRIx64 " %#" PRIx64 " %#" PRIx64 " %#" PRIx64,
                 atomic_load(&plog.handled), y, x[0], x[1], x[2], x[3]);
    assert_stale_refs_miss(x, 4, y, true, "refs of the previous engine");
    test_stop(NULL);
}

Test(actor, invalid_refs_are_einval, .timeout = 60)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t on1 = spawn_at(1, &probe_type, NULL);
    uint64_t v = 1;
    cr_assert_eq(pith_send(PITH_REF_NONE, P_PLAIN, &v, sizeof(v)), -EINVAL);
    cr_assert_eq(send_u64_from(0, PITH_REF_NONE, P_PLAIN, 1), -EINVAL);
    cr_assert_eq(stop_from(0, PITH_REF_NONE), -EINVAL);
    cr_assert_eq(pith_stop(PITH_REF_NONE), -EINVAL);
    /* data NULL with len > 0. */
    cr_assert_eq(send_from(0, on1, P_PLAIN, NULL, 8), -EINVAL);
    cr_assert_eq(pith_send(on1, P_PLAIN, NULL, 8), -EINVAL);
    test_stop(NULL);

    /* A ref of shard 1 in an engine of one shard: its shard is out of range. */
    cfg = test_config(1);
    test_start(&cfg);
    cr_assert_eq(pith_ref_shard(on1), 1);
    cr_assert_eq(pith_send(on1, P_PLAIN, &v, sizeof(v)), -EINVAL);
    cr_assert_eq(send_u64_from(0, on1, P_PLAIN, 1), -EINVAL);
    cr_assert_eq(stop_from(0, on1), -EINVAL);
    cr_assert_eq(pith_stop(on1), -EINVAL);
    test_sync_shard(0);
    cr_assert_eq(dead_letters(0), 0);
    cr_assert_eq(atomic_load(&plog.handled), 0);
    test_stop(NULL);
}

/* ---- 4. mailbox overflow ---- */

#define FLOOD_N   1000
#define FLOOD_MAX 100

static struct {
    atomic_uint got;
    uint64_t seen[FLOOD_N];
} fl;

static int flood_sink(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    unsigned i = atomic_load(&fl.got); /* one sink: a single writer */
    if (i < FLOOD_N)
        fl.seen[i] = payload_u64(msg);
    atomic_store(&fl.got, i + 1);
    return 0;
}

static const pith_actor_type_t reject_type = {
    .name = "reject-100",
    .behaviour = flood_sink,
    .mailbox_max = FLOOD_MAX,
    .overflow = PITH_OVERFLOW_REJECT,
};

static const pith_actor_type_t drop_type = {
    .name = "drop-oldest-100",
    .behaviour = flood_sink,
    .mailbox_max = FLOOD_MAX,
    .overflow = PITH_OVERFLOW_DROP_OLDEST,
};

struct flood_req {
    pith_ref_t to;
    unsigned ok, eagain, other;
    int first_other;
};

/* FLOOD_N numbered sends in one go: the receiver cannot run in between on its own shard. */
static void *flood_fn(void *p)
{
    struct flood_req *q = p;
    for (uint64_t i = 0; i < FLOOD_N; i++) {
        int rc = pith_send(q->to, 1, &i, sizeof(i));
        if (rc == 0) {
            q->ok++;
        } else if (rc == -EAGAIN) {
            q->eagain++;
        } else if (q->other++ == 0) {
            q->first_other = rc;
        }
    }
    return NULL;
}

Test(actor, reject_mailbox_refuses_past_its_max, .timeout = 30)
{
    memset(&fl, 0, sizeof(fl));
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t a = spawn_at(0, &reject_type, NULL);
    struct flood_req q = {.to = a};
    call_on(0, flood_fn, &q);
    cr_assert_eq(q.other, 0, "%u sends failed, the first with %d", q.other, q.first_other);
    cr_assert_eq(q.ok, FLOOD_MAX);
    cr_assert_eq(q.eagain, FLOOD_N - FLOOD_MAX);
    TEST_WAIT_FOR(atomic_load(&fl.got) >= FLOOD_MAX);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&fl.got), FLOOD_MAX);
    for (unsigned i = 0; i < FLOOD_MAX; i++)
        cr_assert_eq(fl.seen[i], i, "message %u was number %" PRIu64, i, fl.seen[i]);
    pith_actor_type_stats_t st = type_stats(&reject_type);
    cr_assert_eq(st.rejected, FLOOD_N - FLOOD_MAX, "rejected %" PRIu64, st.rejected);
    cr_assert_eq(st.messages, FLOOD_MAX, "messages %" PRIu64, st.messages);
    cr_assert_eq(st.dropped, 0);
    cr_assert_eq(st.mailbox_max, FLOOD_MAX);
    test_stop(NULL);
}

Test(actor, drop_oldest_mailbox_keeps_the_newest, .timeout = 30)
{
    memset(&fl, 0, sizeof(fl));
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t a = spawn_at(0, &drop_type, NULL);
    struct flood_req q = {.to = a};
    call_on(0, flood_fn, &q);
    cr_assert_eq(q.other, 0, "%u sends failed, the first with %d", q.other, q.first_other);
    cr_assert_eq(q.eagain, 0);
    cr_assert_eq(q.ok, FLOOD_N);
    TEST_WAIT_FOR(atomic_load(&fl.got) >= FLOOD_MAX);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&fl.got), FLOOD_MAX);
    for (unsigned i = 0; i < FLOOD_MAX; i++)
        cr_assert_eq(fl.seen[i], FLOOD_N - FLOOD_MAX + i, "message %u was number %" PRIu64, i,
                     fl.seen[i]);
    pith_actor_type_stats_t st = type_stats(&drop_type);
    cr_assert_eq(st.dropped, FLOOD_N - FLOOD_MAX, "dropped %" PRIu64, st.dropped);
    cr_assert_eq(st.rejected, 0);
    cr_assert_eq(st.messages, FLOOD_MAX);
    cr_assert_eq(st.mailbox_max, FLOOD_MAX);
    test_stop(NULL);
}

/* From another shard a refusal is not the sender's to see: every send succeeds and the
 * receiving shard counts what its mailbox refused; what got in arrives in order. */
/* Whether every message of the cross-shard flood was handled or refused. */
static bool reject_flood_done(void)
{
    pith_actor_type_stats_t st = type_stats(&reject_type);
    return st.messages + st.rejected >= FLOOD_N;
}

Test(actor, reject_mailbox_across_shards_counts_refusals_on_the_receiver, .timeout = 30)
{
    memset(&fl, 0, sizeof(fl));
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t a = spawn_at(0, &reject_type, NULL);
    struct flood_req q = {.to = a};
    call_on(1, flood_fn, &q);
    cr_assert_eq(q.other, 0, "%u sends failed, the first with %d", q.other, q.first_other);
    cr_assert_eq(q.eagain, 0);
    cr_assert_eq(q.ok, FLOOD_N);
    pith_actor_type_stats_t st;
    TEST_WAIT_FOR(reject_flood_done());
    test_sync_shard(0);
    st = type_stats(&reject_type);
    cr_assert_eq(st.messages + st.rejected, FLOOD_N, "messages %" PRIu64 " + rejected %" PRIu64,
                 st.messages, st.rejected);
    unsigned got = atomic_load(&fl.got);
    cr_assert_eq(got, st.messages);
    cr_assert_leq(st.mailbox_max, FLOOD_MAX);
    for (unsigned i = 1; i < got; i++)
        cr_assert_gt(fl.seen[i], fl.seen[i - 1],
                     "message %u (number %" PRIu64 ") came after number %" PRIu64, i, fl.seen[i],
                     fl.seen[i - 1]);
    test_stop(NULL);
}

/* ---- 5. fairness ---- */

#define FAIR_N 10000

static struct {
    atomic_uint_fast64_t a_count;
    atomic_uint_fast64_t b_saw;
    atomic_int b_ran;
    unsigned a_ok;
    int b_rc;
} fair;

static int fair_a(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    atomic_fetch_add(&fair.a_count, 1);
    return 0;
}

static int fair_b(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    atomic_store(&fair.b_saw, atomic_load(&fair.a_count));
    atomic_fetch_add(&fair.b_ran, 1);
    return 0;
}

static const pith_actor_type_t fair_a_default = {
    .name = "fair-a-64",
    .behaviour = fair_a,
    .mailbox_max = 2 * FAIR_N,
};

static const pith_actor_type_t fair_a_10 = {
    .name = "fair-a-10",
    .behaviour = fair_a,
    .mailbox_max = 2 * FAIR_N,
    .turn_msgs = 10,
};

static const pith_actor_type_t fair_b_type = {.name = "fair-b", .behaviour = fair_b};

struct fair_req {
    pith_ref_t a, b;
};

/* Queues FAIR_N messages for A, then one for B, in one task. */
static void *fair_fn(void *p)
{
    struct fair_req *q = p;
    for (unsigned i = 0; i < FAIR_N; i++)
        if (pith_send(q->a, 1, NULL, 0) == 0)
            fair.a_ok++;
    fair.b_rc = pith_send(q->b, 1, NULL, 0);
    return NULL;
}

static void fairness_run(const pith_actor_type_t *atype, unsigned turn)
{
    memset(&fair, 0, sizeof(fair));
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    struct fair_req q = {.a = spawn_at(0, atype, NULL), .b = spawn_at(0, &fair_b_type, NULL)};
    call_on(0, fair_fn, &q);
    cr_assert_eq(fair.a_ok, FAIR_N);
    cr_assert_eq(fair.b_rc, 0);
    TEST_WAIT_FOR(atomic_load(&fair.b_ran) == 1 && atomic_load(&fair.a_count) == FAIR_N);
    test_sync_shard(0);
    uint64_t saw = atomic_load(&fair.b_saw);
    cr_assert_lt(saw, FAIR_N, "B ran only after A had handled all %d messages", FAIR_N);
    /* B's turn was queued right behind A's first: B waits for one turn of A at most. */
    cr_assert_leq(saw, turn, "B ran after A had handled %" PRIu64 " messages (turns of %u)", saw,
                  turn);
    cr_assert_eq(atomic_load(&fair.b_ran), 1);
    pith_actor_type_stats_t st = type_stats(atype);
    cr_assert_eq(st.messages, FAIR_N);
    cr_assert_geq(st.turns, (FAIR_N + turn - 1) / turn,
                  "%" PRIu64 " turns for %d messages of at most %u a turn", st.turns, FAIR_N, turn);
    cr_assert_eq(st.mailbox_max, FAIR_N);
    test_stop(NULL);
}

Test(actor, flooded_actor_yields_after_a_default_turn, .timeout = 30)
{
    fairness_run(&fair_a_default, 64);
}

Test(actor, flooded_actor_yields_after_turn_msgs, .timeout = 30)
{
    fairness_run(&fair_a_10, 10);
}

/* ---- 6. become ---- */

struct burst {
    pith_ref_t to;
    unsigned n;
    const uint32_t *types;
    int rc[16];
};

/* Sends n messages (types[i], payload i) in one task. */
static void *burst_fn(void *p)
{
    struct burst *q = p;
    for (uint64_t i = 0; i < q->n; i++)
        q->rc[i] = pith_send(q->to, q->types[i], &i, sizeof(i));
    return NULL;
}

static void burst_from(unsigned shard, pith_ref_t to, const uint32_t *types, unsigned n)
{
    struct burst q = {.to = to, .n = n, .types = types};
    cr_assert_leq(n, 16);
    call_on(shard, burst_fn, &q);
    for (unsigned i = 0; i < n; i++)
        cr_assert_eq(q.rc[i], 0, "send %u: %d (%s)", i, q.rc[i], pith_strerror(q.rc[i]));
}

Test(actor, become_switches_from_the_next_message, .timeout = 30)
{
    probe_reset();
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_ref_t a = spawn_at(0, &probe_type, NULL);
    static const uint32_t types[] = {P_PLAIN, P_BECOME, P_PLAIN, P_PLAIN, P_BECOME, P_PLAIN};
    static const int want[] = {1, 1, 2, 2, 2, 1};
    burst_from(0, a, types, 6);
    TEST_WAIT_FOR(atomic_load(&plog.handled) == 6);
    test_sync_shard(0);
    for (unsigned i = 0; i < 6; i++) {
        cr_assert_eq(plog.e[i].val, i);
        cr_assert_eq(plog.e[i].behaviour, want[i], "message %u (type %u) went to behaviour %d", i,
                     plog.e[i].type, plog.e[i].behaviour);
    }
    /* Everything in one burst, with become in between: the turn went on with the new one. */
    cr_assert_eq(atomic_load(&plog.handled), 6);
    test_stop(NULL);
}

/* ---- 7. stop ---- */

Test(actor, stop_from_its_behaviour_ends_it_after_that_message, .timeout = 30)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t a = spawn_at(0, &probe_type, NULL);
    static const uint32_t types[] = {P_PLAIN, P_STOP, P_PLAIN, P_PLAIN, P_PLAIN};
    burst_from(0, a, types, 5);
    TEST_WAIT_FOR(atomic_load(&plog.terminated) >= 1);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&plog.stop_rc), 0, "pith_stop(self) in the behaviour: %d",
                 atomic_load(&plog.stop_rc));
    cr_assert_eq(atomic_load(&plog.handled), 2, "%u messages handled: stop did not end it there",
                 atomic_load(&plog.handled));
    cr_assert_eq(plog.e[1].type, P_STOP);
    cr_assert_eq(atomic_load(&plog.terminated), 1);
    cr_assert_eq(atomic_load(&plog.reason), PITH_EXIT_NORMAL);
    cr_assert_eq(atomic_load(&plog.term_self), a);
    cr_assert_eq(atomic_load(&plog.term_shard), 0);
    pith_actor_type_stats_t st = type_stats(&probe_type);
    cr_assert_eq(st.dropped, 3, "dropped %" PRIu64 " of the 3 messages behind the stop",
                 st.dropped);
    cr_assert_eq(st.messages, 2);
    cr_assert_eq(st.stopped, 1);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(send_u64_from(0, a, P_PLAIN, 9), -ESRCH);
    cr_assert_eq(stop_from(0, a), -ESRCH);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&plog.terminated), 1, "terminate ran again");
    test_stop(NULL);
}

Test(actor, stop_from_another_shard_or_outside_ends_it_on_its_shard, .timeout = 30)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t a = spawn_at(0, &probe_type, NULL);
    pith_ref_t b = spawn_at(1, &probe_type, NULL);
    cr_assert_eq(stop_from(1, a), 0);
    TEST_WAIT_FOR(atomic_load(&plog.terminated) >= 1);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&plog.terminated), 1);
    cr_assert_eq(atomic_load(&plog.term_self), a);
    cr_assert_eq(atomic_load(&plog.term_shard), 0, "a's terminate ran on shard %d",
                 atomic_load(&plog.term_shard));
    cr_assert_eq(atomic_load(&plog.reason), PITH_EXIT_NORMAL);
    cr_assert_eq(send_u64_from(0, a, P_PLAIN, 1), -ESRCH);

    /* From a thread outside the engine. */
    cr_assert_eq(pith_stop(b), 0);
    TEST_WAIT_FOR(atomic_load(&plog.terminated) >= 2);
    test_sync_shard(1);
    cr_assert_eq(atomic_load(&plog.terminated), 2);
    cr_assert_eq(atomic_load(&plog.term_self), b);
    cr_assert_eq(atomic_load(&plog.term_shard), 1, "b's terminate ran on shard %d",
                 atomic_load(&plog.term_shard));
    cr_assert_eq(atomic_load(&plog.reason), PITH_EXIT_NORMAL);
    cr_assert_eq(send_u64_from(1, b, P_PLAIN, 1), -ESRCH);
    pith_actor_type_stats_t st = type_stats(&probe_type);
    cr_assert_eq(st.stopped, 2);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(atomic_load(&plog.handled), 0);
    test_stop(NULL);
}

/* ---- 8. failure ---- */

Test(actor, failing_behaviour_ends_the_actor_with_its_status, .timeout = 30)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t a = spawn_at(0, &probe_type, NULL);
    static const uint32_t types[] = {P_PLAIN, P_FAIL, P_PLAIN};
    burst_from(0, a, types, 3);
    TEST_WAIT_FOR(atomic_load(&plog.terminated) >= 1);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&plog.handled), 2, "%u messages handled", atomic_load(&plog.handled));
    cr_assert_eq(atomic_load(&plog.terminated), 1);
    cr_assert_eq(atomic_load(&plog.reason), -EIO, "exit reason %d, not -EIO",
                 atomic_load(&plog.reason));
    cr_assert_eq(atomic_load(&plog.term_shard), 0);
    pith_actor_type_stats_t st = type_stats(&probe_type);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.stopped, 1);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(st.messages, 2);
    cr_assert_eq(st.dropped, 1);
    cr_assert_eq(send_u64_from(0, a, P_PLAIN, 1), -ESRCH);
    cr_assert_eq(stop_from(0, a), -ESRCH);
    test_stop(NULL);
}

/* ---- 9. init failure ---- */

static atomic_int failing_inits;

static int init_enoent(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    (void)state;
    (void)arg;
    atomic_fetch_add(&failing_inits, 1);
    return -ENOENT;
}

static const pith_actor_type_t init_fails_type = {
    .name = "init-fails",
    .behaviour = probe_a,
    .state_size = 64,
    .init = init_enoent,
    .terminate = probe_terminate,
};

Test(actor, init_failure_fails_the_spawn_without_terminate, .timeout = 30)
{
    probe_reset();
    atomic_store(&failing_inits, 0);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_mem_stats_t m0;
    test_sync_shard(0);
    cr_assert_eq(pith_mem_stats(0, &m0), 0);
    struct spawn_req q = {.type = &init_fails_type, .ref = 12345};
    call_on(0, spawn_fn, &q);
    cr_assert_eq(q.rc, -ENOENT, "pith_spawn: %d (%s)", q.rc, pith_strerror(q.rc));
    cr_assert_eq(q.ref, PITH_REF_NONE);
    cr_assert_eq(atomic_load(&failing_inits), 1);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&plog.terminated), 0, "terminate ran after a failed init");
    pith_actor_type_stats_t st = type_stats(&init_fails_type);
    cr_assert_eq(st.spawned, 0);
    cr_assert_eq(st.stopped, 0);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.live, 0);
    /* Nothing of it is left: its state went back, and the actor table once it had stayed
     * empty for 10 ms (core/actor.c, TRIM_DELAY_NS). */
    pith_mem_stats_t m1;
    TEST_WAIT_FOR(pith_mem_stats(0, &m1) == 0 && m1.in_use == m0.in_use);
    cr_assert_eq(m1.in_use, m0.in_use, "in_use %zu, %zu before the spawn", m1.in_use, m0.in_use);
    test_stop(NULL);
}

/* ---- 10. spawn_on ---- */

static struct {
    atomic_int calls;
    pith_ref_t ref;
    int err;
    int shard;
    void *ctx;
    int rc;
} so;

static void spawned_cb(pith_ref_t ref, int err, void *ctx)
{
    so.ref = ref;
    so.err = err;
    so.shard = pith_shard_id();
    so.ctx = ctx;
    atomic_fetch_add(&so.calls, 1);
}

struct spawn_on_req {
    unsigned shard;
    const pith_actor_type_t *type;
};

static int so_ctx;

static void *spawn_on_fn(void *p)
{
    struct spawn_on_req *q = p;
    so.rc = pith_spawn_on(q->shard, q->type, NULL, spawned_cb, &so_ctx);
    return NULL;
}

static void spawn_on_reset(void)
{
    memset(&so, 0, sizeof(so));
    so.err = 12345;
    so.shard = -2;
}

Test(actor, spawn_on_another_shard_replies_on_the_caller, .timeout = 30)
{
    probe_reset();
    spawn_on_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    struct spawn_on_req q = {.shard = 1, .type = &probe_type};
    call_on(0, spawn_on_fn, &q);
    cr_assert_eq(so.rc, 0, "pith_spawn_on: %d (%s)", so.rc, pith_strerror(so.rc));
    TEST_WAIT_FOR(atomic_load(&so.calls) >= 1);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&so.calls), 1);
    cr_assert_eq(so.err, 0, "done got error %d", so.err);
    cr_assert_eq(so.shard, 0, "done ran on shard %d, not the caller's", so.shard);
    cr_assert_eq(so.ctx, &so_ctx);
    cr_assert_neq(so.ref, PITH_REF_NONE);
    cr_assert_eq(pith_ref_shard(so.ref), 1);
    pith_ref_t a = so.ref;
    cr_assert_eq(send_u64_from(0, a, P_PLAIN, 77), 0);
    TEST_WAIT_FOR(atomic_load(&plog.handled) >= 1);
    test_sync_shard(1);
    cr_assert_eq(plog.e[0].val, 77);
    cr_assert_eq(plog.e[0].shard, 1, "the actor ran on shard %d", plog.e[0].shard);
    cr_assert_eq(plog.e[0].self, a);

    /* On the caller's own shard too. */
    spawn_on_reset();
    q.shard = 0;
    call_on(0, spawn_on_fn, &q);
    cr_assert_eq(so.rc, 0);
    TEST_WAIT_FOR(atomic_load(&so.calls) >= 1);
    test_sync_shard(0);
    cr_assert_eq(so.err, 0);
    cr_assert_eq(so.shard, 0);
    cr_assert_eq(pith_ref_shard(so.ref), 0);
    cr_assert_neq(so.ref, a);

    /* init's error comes back through done. */
    spawn_on_reset();
    atomic_store(&failing_inits, 0);
    q = (struct spawn_on_req){.shard = 1, .type = &init_fails_type};
    call_on(0, spawn_on_fn, &q);
    cr_assert_eq(so.rc, 0);
    TEST_WAIT_FOR(atomic_load(&so.calls) >= 1);
    test_sync_shard(0);
    cr_assert_eq(so.err, -ENOENT, "done got %d", so.err);
    cr_assert_eq(so.ref, PITH_REF_NONE);
    cr_assert_eq(so.shard, 0);
    cr_assert_eq(atomic_load(&failing_inits), 1);

    /* A shard out of range fails at once, and done is not called. */
    spawn_on_reset();
    q = (struct spawn_on_req){.shard = 2, .type = &probe_type};
    call_on(0, spawn_on_fn, &q);
    cr_assert_eq(so.rc, -EINVAL, "pith_spawn_on(shard 2 of 2): %d", so.rc);
    test_sync_shard(0);
    test_sync_shard(1);
    cr_assert_eq(atomic_load(&so.calls), 0);

    pith_actor_type_stats_t st = type_stats(&probe_type);
    cr_assert_eq(st.spawned, 2);
    cr_assert_eq(st.live, 2);
    test_stop(NULL);
}

/* ---- 11. errors and the outside thread ---- */

static const pith_actor_type_t no_behaviour_type = {.name = "no-behaviour"};

struct bad_spawns {
    int null_type, null_behaviour, null_type_on, null_done;
    pith_ref_t ref;
};

static void *bad_spawns_fn(void *p)
{
    struct bad_spawns *q = p;
    q->ref = 12345;
    q->null_type = pith_spawn(NULL, NULL, &q->ref);
    q->null_behaviour = pith_spawn(&no_behaviour_type, NULL, NULL);
    q->null_type_on = pith_spawn_on(1, NULL, NULL, spawned_cb, NULL);
    q->null_done = pith_spawn_on(1, &probe_type, NULL, NULL, NULL);
    return NULL;
}

Test(actor, api_errors, .timeout = 30)
{
    probe_reset();
    spawn_on_reset();
    uint64_t v = 1, n = 0;
    pith_actor_type_stats_t st;
    /* No engine. (Any ref will do: there is no engine to look it up in.) */
    cr_assert_eq(pith_send((pith_ref_t)1 << 32, P_PLAIN, &v, sizeof(v)), -ESHUTDOWN);
    cr_assert_eq(pith_stop((pith_ref_t)1 << 32), -ESHUTDOWN);
    cr_assert_eq(pith_actor_type_stats(&probe_type, &st), -ESHUTDOWN);
    cr_assert_eq(pith_dead_letters(0, &n), -ESHUTDOWN);

    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t ref = 12345;
    /* Outside the engine. */
    cr_assert_eq(pith_spawn(&probe_type, NULL, &ref), -EPERM);
    cr_assert_eq(ref, PITH_REF_NONE);
    cr_assert_eq(pith_spawn_on(0, &probe_type, NULL, spawned_cb, NULL), -EPERM);
    /* Bad arguments, on a shard. */
    struct bad_spawns q;
    call_on(0, bad_spawns_fn, &q);
    cr_assert_eq(q.null_type, -EINVAL, "pith_spawn(NULL): %d", q.null_type);
    cr_assert_eq(q.ref, PITH_REF_NONE);
    cr_assert_eq(q.null_behaviour, -EINVAL, "pith_spawn(no behaviour): %d", q.null_behaviour);
    cr_assert_eq(q.null_type_on, -EINVAL);
    cr_assert_eq(q.null_done, -EINVAL);
    cr_assert_eq(pith_actor_type_stats(NULL, &st), -EINVAL);
    cr_assert_eq(pith_actor_type_stats(&probe_type, NULL), -EINVAL);
    cr_assert_eq(pith_dead_letters(2, &n), -EINVAL);
    cr_assert_eq(pith_dead_letters(0, NULL), -EINVAL);
    test_sync_shard(0);
    test_sync_shard(1);
    cr_assert_eq(atomic_load(&so.calls), 0);
    st = type_stats(&no_behaviour_type);
    cr_assert_eq(st.spawned, 0);
    test_stop(NULL);

    /* After the engine stopped. */
    cr_assert_eq(pith_send((pith_ref_t)1 << 32, P_PLAIN, &v, sizeof(v)), -ESHUTDOWN);
    cr_assert_eq(pith_stop((pith_ref_t)1 << 32), -ESHUTDOWN);
    cr_assert_eq(pith_actor_type_stats(&probe_type, &st), -ESHUTDOWN);
}

Test(actor, outside_thread_sends_to_actors, .timeout = 30)
{
    probe_reset();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t a = spawn_at(0, &probe_type, NULL);
    pith_ref_t b = spawn_at(1, &probe_type, NULL);
    for (uint64_t i = 0; i < 10; i++) {
        cr_assert_eq(pith_send(a, P_PLAIN, &i, sizeof(i)), 0);
        cr_assert_eq(pith_send(b, P_PLAIN, &i, sizeof(i)), 0);
    }
    TEST_WAIT_FOR(atomic_load(&plog.handled) >= 20);
    test_sync_shard(0);
    test_sync_shard(1);
    cr_assert_eq(atomic_load(&plog.handled), 20);
    /* One outside sender to each receiver: each saw 0..9 in order. */
    uint64_t next[2] = {0, 0};
    for (unsigned i = 0; i < 20; i++) {
        int k = plog.e[i].self == a ? 0 : 1;
        cr_assert(plog.e[i].self == a || plog.e[i].self == b);
        cr_assert_eq(plog.e[i].shard, k);
        cr_assert_eq(plog.e[i].val, next[k], "actor %d got %" PRIu64 ", expected %" PRIu64, k,
                     plog.e[i].val, next[k]);
        next[k]++;
    }
    pith_actor_type_stats_t st = type_stats(&probe_type);
    cr_assert_eq(st.messages, 20);
    test_stop(NULL);
}

/* ---- 12. a million actors ---- */

#define MANY_TASK 25000 /* most spawns, sends or stops per task */

static struct {
    pith_ref_t *refs;
    atomic_uint_fast64_t handled, terminated, bad_reason;
    test_error_t err;
} many;

static int many_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    uint64_t *s = state;
    *s = payload_u64(msg);
    atomic_fetch_add(&many.handled, 1);
    return 0;
}

static void many_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)state;
    if (reason != PITH_EXIT_NORMAL)
        atomic_fetch_add(&many.bad_reason, 1);
    atomic_fetch_add(&many.terminated, 1);
}

static const pith_actor_type_t many_type = {
    .name = "many",
    .behaviour = many_behaviour,
    .state_size = sizeof(uint64_t),
    .terminate = many_terminate,
};

struct many_req {
    uint64_t from, to;
    int what; /* 0 spawn, 1 send, 2 stop */
};

static void *many_fn(void *p)
{
    const struct many_req *q = p;
    for (uint64_t i = q->from; i < q->to; i++) {
        int rc;
        if (q->what == 0)
            rc = pith_spawn(&many_type, NULL, &many.refs[i]);
        else if (q->what == 1)
            rc = pith_send(many.refs[i], 1, &i, sizeof(i));
        else
            rc = pith_stop(many.refs[i]);
        if (rc != 0) {
            TEST_NOTE(&many.err, rc);
            break;
        }
    }
    return NULL;
}

static void many_pass(uint64_t n, int what)
{
    for (uint64_t i = 0; i < n; i += MANY_TASK) {
        struct many_req q = {.from = i, .to = i + MANY_TASK < n ? i + MANY_TASK : n, .what = what};
        call_on(0, many_fn, &q);
        test_assert_no_error(&many.err);
    }
}

Test(actor, a_million_actors_come_and_go_and_give_their_memory_back, .timeout = 120)
{
    memset(&many, 0, sizeof(many));
    const uint64_t n = test_on_valgrind() ? 100000 : 1000000;
    many.refs = calloc(n, sizeof(pith_ref_t));
    cr_assert_not_null(many.refs);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    test_sync_shard(0);
    pith_mem_stats_t before;
    cr_assert_eq(pith_mem_stats(0, &before), 0);

    many_pass(n, 0);
    pith_actor_type_stats_t st = type_stats(&many_type);
    cr_assert_eq(st.spawned, n);
    cr_assert_eq(st.live, n);
    for (uint64_t i = 0; i < n; i++)
        if (many.refs[i] == PITH_REF_NONE || pith_ref_shard(many.refs[i]) != 0)
            cr_assert_fail("ref %" PRIu64 " is %#" PRIx64, i, many.refs[i]);

    many_pass(n, 1);
    TEST_WAIT_FOR(atomic_load(&many.handled) >= n);
    many_pass(n, 2);
    test_sync_shard(0);
    cr_assert_eq(atomic_load(&many.handled), n);
    cr_assert_eq(atomic_load(&many.terminated), n);
    cr_assert_eq(atomic_load(&many.bad_reason), 0);
    st = type_stats(&many_type);
    cr_assert_eq(st.spawned, n, "spawned %" PRIu64, st.spawned);
    cr_assert_eq(st.stopped, n, "stopped %" PRIu64, st.stopped);
    cr_assert_eq(st.messages, n, "messages %" PRIu64, st.messages);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.dropped, 0);
    cr_assert_eq(st.rejected, 0);
    /* The empty actor table goes back once it has stayed empty for 10 ms (core/actor.c,
     * TRIM_DELAY_NS): wait for that. */
    pith_mem_stats_t after;
    TEST_WAIT_FOR(pith_mem_stats(0, &after) == 0 && after.in_use == before.in_use);
    cr_assert_eq(after.in_use, before.in_use,
                 "shard 0 holds %zu bytes, %zu before the spawns (%+zd)", after.in_use,
                 before.in_use, (ssize_t)(after.in_use - before.in_use));
    cr_assert_gt(after.peak, before.in_use + n * sizeof(uint64_t));
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
    free(many.refs);
}

/* ---- 13. engine stop with live actors ---- */

#define LIVE_PAIRS 500 /* an actor on each shard per pair */

static struct {
    pith_ref_t refs[2][LIVE_PAIRS];
    atomic_uint terminated[2][LIVE_PAIRS];
    atomic_uint_fast64_t bad_reason, wrong_shard, handled;
    atomic_int first_bad_reason;
} live;

struct live_state {
    unsigned shard, idx;
};

static int live_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    struct live_state *s = state;
    unsigned v = (unsigned)(uintptr_t)arg;
    s->shard = v >> 16;
    s->idx = v & 0xffff;
    return 0;
}

/* Passes every message on to its peer on the other shard: mail circulates until the stop. */
static int live_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct live_state *s = state;
    atomic_fetch_add(&live.handled, 1);
    (void)pith_send(live.refs[1 - s->shard][s->idx], msg->type, msg->data, msg->len);
    return 0;
}

static void live_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    struct live_state *s = state;
    if (reason != PITH_EXIT_SHUTDOWN && atomic_fetch_add(&live.bad_reason, 1) == 0)
        atomic_store(&live.first_bad_reason, reason);
    if (pith_shard_id() != (int)s->shard)
        atomic_fetch_add(&live.wrong_shard, 1);
    if (s->shard < 2 && s->idx < LIVE_PAIRS)
        atomic_fetch_add(&live.terminated[s->shard][s->idx], 1);
}

static const pith_actor_type_t live_type = {
    .name = "live",
    .behaviour = live_behaviour,
    .state_size = sizeof(struct live_state),
    .init = live_init,
    .terminate = live_terminate,
};

static void *live_spawn_fn(void *p)
{
    unsigned shard = (unsigned)(uintptr_t)p;
    for (unsigned i = 0; i < LIVE_PAIRS; i++) {
        int rc = pith_spawn(&live_type, (void *)(uintptr_t)(shard << 16 | i), &live.refs[shard][i]);
        if (rc != 0)
            return (void *)(intptr_t)rc;
    }
    return NULL;
}

/* Three messages for each actor on this shard: they start circulating at once. */
static void *live_seed_fn(void *p)
{
    unsigned shard = (unsigned)(uintptr_t)p;
    for (unsigned i = 0; i < LIVE_PAIRS; i++)
        for (uint64_t k = 0; k < 3; k++) {
            int rc = pith_send(live.refs[shard][i], 1, &k, sizeof(k));
            if (rc != 0)
                return (void *)(intptr_t)rc;
        }
    return NULL;
}

Test(actor, engine_stop_terminates_live_actors_once_on_their_shards, .timeout = 60)
{
    memset(&live, 0, sizeof(live));
    pith_config_t cfg = test_config(2);
    cfg.drain_ns = 100 * MS; /* the mail never stops circulating: do not wait the default 1 s */
    test_start(&cfg);
    for (unsigned s = 0; s < 2; s++) {
        void *rc = call_on(s, live_spawn_fn, (void *)(uintptr_t)s);
        cr_assert_null(rc, "spawning on shard %u: %d", s, (int)(intptr_t)rc);
    }
    for (unsigned s = 0; s < 2; s++) {
        void *rc = call_on(s, live_seed_fn, (void *)(uintptr_t)s);
        cr_assert_null(rc, "seeding on shard %u: %d", s, (int)(intptr_t)rc);
    }
    /* Let the mail go round a few times. */
    TEST_WAIT_FOR(atomic_load(&live.handled) >= 4 * 6 * LIVE_PAIRS);
    pith_actor_type_stats_t st = type_stats(&live_type);
    cr_assert_eq(st.live, 2 * LIVE_PAIRS);
    cr_assert_eq(st.stopped, 0);
    for (unsigned s = 0; s < 2; s++)
        for (unsigned i = 0; i < LIVE_PAIRS; i++)
            cr_assert_eq(atomic_load(&live.terminated[s][i]), 0);

    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(atomic_load(&live.bad_reason), 0,
                 "%" PRIu64 " terminate hooks got another reason than PITH_EXIT_SHUTDOWN, the "
                 "first %d",
                 (uint64_t)atomic_load(&live.bad_reason), atomic_load(&live.first_bad_reason));
    cr_assert_eq(atomic_load(&live.wrong_shard), 0,
                 "%" PRIu64 " terminate hooks ran off their actor's shard",
                 (uint64_t)atomic_load(&live.wrong_shard));
    for (unsigned s = 0; s < 2; s++)
        for (unsigned i = 0; i < LIVE_PAIRS; i++)
            cr_assert_eq(atomic_load(&live.terminated[s][i]), 1,
                         "actor %u of shard %u: terminate ran %u times", i, s,
                         atomic_load(&live.terminated[s][i]));
    cr_assert_eq(rep.mem_in_use, 0, "%" PRIu64 " bytes still live at stop", rep.mem_in_use);
}
