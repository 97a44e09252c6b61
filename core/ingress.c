/* What runs on a shard for clients (pith/client.h): the records of their lanes (messages,
 * replies, spawns, calls), their inbox from this shard, and the lanes parked on an actor whose
 * mailbox is full. A client's message waits in its lane, not in memory of ours, until the
 * mailbox has room: that is how a client is pushed back without anything being lost. */
#include "clients.h"
#include "core.h"
#include "turn.h"

#include <errno.h>
#include <linux/futex.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- the inbox ---- */

void client_wake(struct cent *e)
{
    /* Dekker with the client's sleep (client.c): our ring_commit (a release store) then this
     * fence, then the load of wake; the client exchanges wake = 1 (a full barrier) then looks
     * at its rings. Either it sees the message or we see it asleep. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&e->wake, memory_order_relaxed) != 0 &&
        atomic_exchange(&e->wake, 0) != 0)
        syscall(SYS_futex, (uint32_t *)&e->wake, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static struct ring *inbox_ring(struct core_shard *cs, struct cent *e);

static int inbox_put(struct core_shard *cs, struct cent *e, struct amsg *m)
{
    struct ring *r = inbox_ring(cs, e);
    if (r == NULL)
        return -ENOMEM;
    struct envelope *slot = ring_reserve(r);
    if (slot == NULL)
        return -EAGAIN;
    slot->batch = NULL;
    slot->count = 1;
    slot->tasks[0].fn = NULL;
    slot->tasks[0].arg = m;
    ring_commit(r, slot);
    client_wake(e);
    return 0;
}

static struct ring *inbox_ring(struct core_shard *cs, struct cent *e)
{
    /* Only this shard writes its ring pointer: relaxed to read it back. */
    struct ring *r = atomic_load_explicit(&e->inbox[cs->id], memory_order_relaxed);
    if (r != NULL)
        return r;
    r = aligned_alloc(RING_LINE, sizeof(*r));
    if (r == NULL)
        return NULL;
    if (ring_init(r, e->inbox_cap) != 0) {
        free(r);
        return NULL;
    }
    /* Release: the client that loads it (acquire) finds it set up. */
    atomic_store_explicit(&e->inbox[cs->id], r, memory_order_release);
    return r;
}

int client_send_copy(struct core_shard *cs, pith_ref_t to, pith_ref_t from, uint32_t type,
                     uint64_t req, const void *data, uint32_t len)
{
    struct cent *e =
        to != PITH_REF_NONE ? client_lookup(to) : client_lookup_slot(req_client_slot(req), &to);
    if (e == NULL)
        return -ESRCH;
    if (len > INBOX_INLINE) {
        struct amsg *m = core_msg_make_for(-1, to, from, type, data, len);
        if (m == NULL)
            return -ENOMEM;
        m->req = req;
        int err = inbox_put(cs, e, m);
        if (err)
            core_msg_free(m);
        return err;
    }
    struct ring *r = inbox_ring(cs, e);
    if (r == NULL)
        return -ENOMEM;
    struct envelope *slot = ring_reserve(r);
    if (slot == NULL)
        return -EAGAIN;
    struct inbox_inline *in = (struct inbox_inline *)slot->tasks;
    in->type = type;
    in->len = len;
    in->from = from;
    in->req = req;
    if (len > 0)
        memcpy(in->data, data, len);
    slot->batch = NULL;
    slot->count = INBOX_INLINE_TAG | len;
    ring_commit(r, slot);
    client_wake(e);
    return 0;
}

int client_deliver(struct core_shard *cs, struct amsg *m)
{
    struct cent *e = client_lookup(m->to);
    return e == NULL ? -ESRCH : inbox_put(cs, e, m);
}

int client_deliver_req(struct core_shard *cs, struct amsg *m)
{
    pith_ref_t ref;
    struct cent *e = client_lookup_slot(req_client_slot(m->req), &ref);
    if (e == NULL)
        return -ESRCH;
    m->to = ref;
    return inbox_put(cs, e, m);
}

/* The engine's answers to a client's spawns and calls: one per call it made, so they are not
 * held to the inbox's bound. A stack that the client takes whole. */
int answer_put(struct amsg *m)
{
    struct cent *e = client_lookup(m->to);
    if (e == NULL)
        return -ESRCH;
    struct amsg *head = atomic_load_explicit(&e->answers, memory_order_relaxed);
    do {
        m->next = head;
        /* Release: the message is visible to the client's acquire exchange. */
    } while (!atomic_compare_exchange_weak_explicit(&e->answers, &head, m, memory_order_release,
                                                    memory_order_relaxed));
    client_wake(e);
    return 0;
}

void client_notice(struct core_shard *cs, pith_ref_t client, const pith_undelivered_t *u)
{
    struct cent *e = client_lookup(client);
    if (e == NULL)
        return; /* the client is gone: nobody to tell */
    struct amsg *m =
        core_msg_make_for(-1, client, PITH_REF_NONE, PITH_MSG_UNDELIVERED, u, sizeof(*u));
    if (m != NULL) {
        m->req = u->req;
        /* The failure of one of the client's own asks: at most one per ask, so it comes past
         * the inbox's bound, with the answers, and ends the ask at once. */
        bool own_ask =
            u->req != 0 && req_is_client(u->req) && req_client_slot(u->req) == ref_slot(client);
        if ((own_ask ? answer_put(m) : inbox_put(cs, e, m)) == 0)
            return;
        core_msg_free(m);
    }
    atomic_fetch_add_explicit(&e->folded, u->count, memory_order_relaxed);
    core_bump(&cs->undelivered_folded, 1);
}

/* ---- lanes parked on a full mailbox ---- */

struct lane_park {
    struct lane_park *next;
    struct lane *lane;
};

int core_lane_park(struct core_shard *cs, struct lane *l, pith_ref_t to)
{
    struct lane_park *p = pith_malloc(sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    p->lane = l;
    p->next = map_get(&cs->parked, to);
    if (map_put(&cs->parked, to, p) != 0) {
        pith_free(p);
        return -ENOMEM;
    }
    return 0;
}

void core_lanes_resume(struct core_shard *cs, pith_ref_t ref)
{
    struct lane_park *p = map_del(&cs->parked, ref);
    while (p != NULL) {
        struct lane_park *next = p->next;
        lane_unpark(p->lane);
        pith_free(p);
        p = next;
    }
}

void core_lanes_free(struct core_shard *cs)
{
    for (uint32_t i = 0; i < cs->parked.cap; i++) {
        struct lane_park *p = cs->parked.ents[i].key ? cs->parked.ents[i].val : NULL;
        while (p != NULL) {
            struct lane_park *next = p->next;
            pith_free(p);
            p = next;
        }
    }
    map_free(&cs->parked);
}

/* ---- lane records ---- */

/* A record's request id (LREC_REQ: the first 16 bytes) and where its payload starts. */
static inline uint64_t rec_req(uint64_t aux, const void **data, uint32_t *len)
{
    if (!(aux & LREC_REQ))
        return 0;
    uint64_t req;
    memcpy(&req, *data, sizeof(req));
    *data = (const char *)*data + 16;
    *len -= 16;
    return req;
}

static inline void *rec_ptr(const void *data)
{
    void *p;
    memcpy(&p, data, sizeof(p));
    return p;
}

/* What a record that will not run holds: a buffer reference, or a message the client made. */
static void rec_release(uint64_t aux, const void *data, uint32_t len)
{
    (void)rec_req(aux, &data, &len);
    if (aux & LREC_BUF)
        pith_buf_release(rec_ptr(data));
    else if (aux & LREC_MSG)
        core_msg_free(rec_ptr(data));
}

/* The message a record carries, made here (the payload is the record's) or the client's. NULL
 * on ENOMEM, with the record untouched. */
static struct amsg *rec_msg(pith_ref_t to, pith_ref_t from, uint64_t aux, uint64_t req,
                            const void *data, uint32_t len)
{
    struct amsg *m;
    if (aux & LREC_MSG) {
        m = rec_ptr(data);
    } else {
        m = core_msg_make_for(-1, to, from, (uint32_t)aux, data, len);
        if (m == NULL)
            return NULL;
        if (aux & LREC_BUF)
            m->len |= AMSG_BUF;
    }
    m->to = to;
    m->from = from;
    m->type = (uint32_t)aux;
    m->req = req;
    return m;
}

/* Gives a message made by rec_msg back without touching what the record still owns. */
static void rec_unmake(uint64_t aux, struct amsg *m)
{
    if (aux & LREC_MSG)
        return;
    m->len &= ~AMSG_BUF; /* the record keeps its reference */
    core_msg_free(m);
}

/* A reply a client sent with pith_reply, on the asker's shard (or any, for a client asker). */
static void lane_reply(struct core_shard *cs, struct amsg *m)
{
    if (req_is_client(m->req)) {
        int err = client_deliver_req(cs, m);
        if (err) {
            /* The asking client is gone, or its inbox from here is full: the replier hears of
             * it (the asker's ask ends at its timeout). */
            core_undelivered(cs, m, err);
            core_msg_free(m);
        }
        return;
    }
    core_ask_task(m);
}

int client_lane_msg(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len)
{
    if (l == NULL) {
        rec_release(aux, data, len);
        return 0;
    }
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return LANE_RETRY; /* out of memory for the actor table: try again */
    if (cs->closing) {
        rec_release(aux, data, len);
        return 0;
    }
    pith_ref_t to = (pith_ref_t)(uintptr_t)arg;
    pith_ref_t from = atomic_load_explicit(&l->owner, memory_order_relaxed);
    uint64_t req = rec_req(aux, &data, &len);
    struct actor *a = NULL;
    if (to != PITH_REF_NONE && !ref_is_client(to)) {
        a = core_find(cs, to);
        if (a == NULL) {
            struct amsg hdr = {.to = to, .from = from, .req = req, .type = (uint32_t)aux};
            core_bump(&cs->dead_letters, 1);
            core_undelivered(cs, &hdr, -ESRCH);
            rec_release(aux, data, len);
            return 0;
        }
        /* Full: the record waits in the lane until the mailbox drains to half. */
        if (a->depth >= a->rec->mailbox_max && a->rec->type->overflow != PITH_OVERFLOW_DROP_OLDEST)
            return core_lane_park(cs, l, to) == 0 ? LANE_PARK : LANE_RETRY;
    }
    /* An idle actor runs on the record where it lies: no copy, no turn queued. */
    if (a != NULL && !(aux & LREC_MSG)) {
        pith_msg_t msg = {.type = (uint32_t)aux, .from = from, .req = req};
        pith_buf_t *b = NULL;
        if (aux & LREC_BUF) {
            b = rec_ptr(data);
            msg.buf = b;
            msg.data = pith_buf_data(b);
            msg.len = (uint32_t)pith_buf_len(b);
        } else {
            msg.data = data;
            msg.len = len;
        }
        if (core_run_now(cs, a, core_counters(cs, a->rec), to, &msg, NULL)) {
            pith_buf_release(b); /* the record's reference */
            return 0;
        }
    }
    struct amsg *m = rec_msg(to, from, aux, req, data, len);
    if (m == NULL)
        return LANE_RETRY;
    if (to == PITH_REF_NONE) {
        lane_reply(cs, m);
        return 0;
    }
    if (a == NULL) {
        /* To another client, through this shard. */
        int err = client_deliver(cs, m);
        if (err) {
            core_undelivered(cs, m, err);
            core_msg_free(m);
        }
        return 0;
    }
    int err = core_enqueue(cs, a, m);
    if (err == 0)
        return 0;
    rec_unmake(aux, m);
    /* -EAGAIN: a DROP_OLDEST mailbox full of messages it must keep; else out of memory. */
    if (err == -EAGAIN && core_lane_park(cs, l, to) == 0)
        return LANE_PARK;
    return LANE_RETRY;
}

/* The answer to a spawn or call: to the client, or, if it cannot get there, undone. */
static int answer(pith_ref_t client, uint32_t type, uint64_t req, const void *data, uint32_t len)
{
    struct amsg *m = core_msg_make_for(-1, client, PITH_REF_NONE, type, data, len);
    if (m == NULL)
        return -ENOMEM;
    m->req = req;
    int err = answer_put(m);
    if (err)
        core_msg_free(m);
    return err;
}

int client_lane_spawn(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len)
{
    if (l == NULL)
        return 0; /* holds nothing */
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return LANE_RETRY;
    if (cs->closing)
        return 0;
    uint64_t req = rec_req(aux, &data, &len);
    struct spawned sp = {.ref = PITH_REF_NONE};
    sp.err = pith_spawn(arg, rec_ptr(data), &sp.ref);
    /* An actor nobody will hear of is stopped rather than left running. */
    if (answer(atomic_load_explicit(&l->owner, memory_order_relaxed), MSG_SPAWNED, req, &sp,
               sizeof(sp)) != 0 &&
        sp.err == 0)
        (void)pith_stop(sp.ref);
    return 0;
}

int client_lane_call(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len)
{
    (void)arg;
    if (l == NULL)
        return 0;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return LANE_RETRY;
    if (cs->closing)
        return 0;
    uint64_t req = rec_req(aux, &data, &len);
    pith_call_fn_t fn;
    void *call_arg;
    memcpy(&fn, data, sizeof(fn));
    memcpy(&call_arg, (const char *)data + sizeof(fn), sizeof(call_arg));
    /* The stall detector names the caller's function, not this one. */
    shard_note_running((pith_anyfn_t)fn);
    void *result = fn(call_arg);
    (void)answer(atomic_load_explicit(&l->owner, memory_order_relaxed), MSG_CALLED, req, &result,
                 sizeof(result));
    return 0;
}

int client_lane_stop(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len)
{
    (void)aux;
    (void)data;
    (void)len;
    struct core_shard *cs = l != NULL ? core_shard_get() : NULL;
    if (cs != NULL && !cs->closing)
        (void)core_stop_here(cs, (pith_ref_t)(uintptr_t)arg, PITH_EXIT_NORMAL);
    return 0;
}
