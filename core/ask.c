/* ask and reply, and actor timers. An ask is remembered on the asking shard under its request
 * id (shard in the top 12 bits, a sequence below) with a shard timer for its timeout; the reply
 * travels to that shard and finds it there, or finds nothing and is counted as late. */
#include "clients.h"
#include "core.h"

#include <errno.h>
#include <string.h>

struct ask {
    pith_ref_t asker; /* the asking actor, or PITH_REF_NONE with a callback */
    pith_reply_fn_t cb;
    void *ctx;
    pith_timer_id_t timer;
};

#define ASK_SEQ_MASK ((UINT64_C(1) << 52) - 1)

/* Gives the outcome to the asker: reply (consumed) or, with reply NULL, a timeout. */
static void ask_finish(struct core_shard *cs, uint64_t id, struct ask *k, struct amsg *reply)
{
    if (k->cb != NULL) {
        if (reply != NULL) {
            pith_msg_t msg;
            core_msg_view(reply, &msg);
            msg.req = id;
            k->cb(&msg, 0, k->ctx);
            core_msg_free(reply);
        } else {
            k->cb(NULL, -ETIMEDOUT, k->ctx);
        }
        pith_free(k);
        return;
    }
    struct amsg *m = reply;
    if (m == NULL)
        m = core_msg_make(k->asker, PITH_REF_NONE, PITH_MSG_TIMEOUT, NULL, 0);
    if (m != NULL) {
        m->to = k->asker;
        m->req = id;
        m->len |= AMSG_ADMIT; /* the asker asked for it: past its mailbox's bound */
        struct actor *a = core_lookup(cs, k->asker);
        if (a == NULL) {
            core_bump(&cs->dead_letters, 1);
            core_msg_free(m);
        } else if (core_enqueue(cs, a, m) != 0) {
            core_msg_free(m); /* out of memory for its turn */
        }
    }
    pith_free(k);
}

bool core_ask_fail(struct core_shard *cs, const pith_undelivered_t *u)
{
    struct ask *k = map_del(&cs->asks, u->req);
    if (k == NULL)
        return false;
    pith_timer_cancel(k->timer);
    if (k->cb != NULL) {
        k->cb(NULL, u->reason, k->ctx);
    } else {
        struct actor *a = core_lookup(cs, k->asker);
        if (a != NULL)
            core_notice_actor(cs, a, k->asker, u);
    }
    pith_free(k);
    return true;
}

static void ask_timeout(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->closing)
        return;
    struct ask *k = map_del(&cs->asks, id);
    if (k == NULL)
        return;
    core_bump(&cs->ask_timeouts, 1);
    ask_finish(cs, id, k, NULL);
}

int core_ask_open(struct core_shard *cs, uint64_t timeout_ns, pith_reply_fn_t cb, void *ctx,
                  pith_ref_t *asker, uint64_t *id_out)
{
    *asker = core_current_ref();
    if (cb == NULL && *asker == PITH_REF_NONE)
        return -EINVAL;
    struct ask *k = pith_malloc(sizeof(*k));
    if (k == NULL)
        return -ENOMEM;
    *k = (struct ask){.asker = cb != NULL ? PITH_REF_NONE : *asker, .cb = cb, .ctx = ctx};
    uint64_t seq = ++cs->ask_seq & ASK_SEQ_MASK;
    if (seq == 0)
        seq = ++cs->ask_seq & ASK_SEQ_MASK;
    uint64_t id = ((uint64_t)cs->id << 52) | seq;
    int err = map_put(&cs->asks, id, k);
    if (err == 0) {
        err = pith_timer_add(timeout_ns, 0, ask_timeout, (void *)(uintptr_t)id, &k->timer);
        if (err)
            map_del(&cs->asks, id);
    }
    if (err) {
        pith_free(k);
        return err;
    }
    *id_out = id;
    return 0;
}

void core_ask_close(struct core_shard *cs, uint64_t id, bool sent)
{
    if (sent) {
        core_bump(&cs->asks_made, 1);
        return;
    }
    struct ask *k = map_del(&cs->asks, id);
    if (k != NULL) {
        pith_timer_cancel(k->timer);
        pith_free(k);
    }
}

int pith_ask(pith_ref_t to, uint32_t type, const void *data, uint32_t len, uint64_t timeout_ns,
             pith_reply_fn_t cb, void *ctx, uint64_t *req_out)
{
    if (req_out != NULL)
        *req_out = 0;
    if (pith_shard_id() < 0)
        return -EPERM;
    unsigned n = pith_shard_count();
    if (timeout_ns == 0 || ref_gen(to) == 0 || (ref_shard(to) >= n && !ref_is_client(to)) ||
        (data == NULL && len > 0) || len >= PITH_MSG_MAX || type >= PITH_MSG_RESERVED)
        return -EINVAL;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ENOMEM;
    if (cs->closing)
        return -ESHUTDOWN;
    pith_ref_t asker;
    uint64_t id;
    int err = core_ask_open(cs, timeout_ns, cb, ctx, &asker, &id);
    if (err)
        return err;
    struct amsg *m = core_msg_make(to, asker, type, data, len);
    if (m == NULL) {
        core_ask_close(cs, id, false);
        return -ENOMEM;
    }
    m->req = id;
    err = core_send_msg(m, false);
    core_ask_close(cs, id, err == 0);
    if (err)
        return err;
    if (req_out != NULL)
        *req_out = id;
    return 0;
}

/* A reply on its asking shard. */
void core_ask_task(void *arg)
{
    struct amsg *m = arg;
    struct core_shard *cs = core_shard_get();
    struct ask *k = cs != NULL && !cs->closing ? map_del(&cs->asks, m->req) : NULL;
    if (k == NULL) {
        if (cs != NULL)
            core_bump(&cs->late_replies, 1);
        core_msg_free(m);
        return;
    }
    pith_timer_cancel(k->timer);
    core_bump(&cs->replies, 1);
    ask_finish(cs, m->req, k, m);
}

int pith_reply(const pith_msg_t *request, uint32_t type, const void *data, uint32_t len)
{
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    if (request == NULL || request->req == 0 || (data == NULL && len > 0) || len >= PITH_MSG_MAX ||
        type >= PITH_MSG_RESERVED)
        return -EINVAL;
    uint64_t req = request->req;
    unsigned dst = req_shard(req);
    bool client = req_is_client(req);
    if (dst >= n && !client)
        return -EINVAL;
    if (pith_shard_id() < 0)
        return client_reply_outside(req, type, data, len);
    if (client) {
        /* Straight into the asking client's inbox from here. */
        struct core_shard *cs = core_shard_get();
        if (cs == NULL)
            return -ENOMEM;
        return client_send_copy(cs, PITH_REF_NONE, core_current_ref(), type, req, data, len);
    }
    struct amsg *m =
        core_msg_make_for((int)dst, PITH_REF_NONE, core_current_ref(), type, data, len);
    if (m == NULL)
        return -ENOMEM;
    m->req = req;
    /* Through the queue even on the asker's own shard: the asker's callback or turn must not
     * run inside the replier's behaviour. */
    int err = pith_submit(dst, core_ask_task, m);
    if (err)
        core_msg_free(m);
    return err;
}

/* ---- actor timers ---- */

struct atimer {
    struct atimer *next; /* the actor's timers, in core_shard.timers */
    pith_ref_t ref;
    pith_timer_id_t id;
    uint32_t type, len;
    bool periodic;
    char pad[15];
    /* payload, 16-byte aligned */
};
_Static_assert(sizeof(struct atimer) % 16 == 0, "payload alignment");

static void atimer_unlink(struct core_shard *cs, struct atimer *t)
{
    struct atimer *head = map_get(&cs->timers, t->ref);
    if (head == t) {
        if (t->next != NULL)
            map_put(&cs->timers, t->ref, t->next); /* replaces: cannot fail */
        else
            map_del(&cs->timers, t->ref);
        return;
    }
    for (struct atimer *p = head; p != NULL; p = p->next) {
        if (p->next == t) {
            p->next = t->next;
            return;
        }
    }
}

static void atimer_fire(void *arg)
{
    struct atimer *t = arg;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->closing)
        return;
    struct actor *a = core_lookup(cs, t->ref);
    if (a != NULL) {
        struct amsg *m = core_msg_make(t->ref, PITH_REF_NONE, t->type, t + 1, t->len);
        if (m != NULL && core_enqueue(cs, a, m) != 0)
            core_msg_free(m); /* a full mailbox counted it */
        else if (m != NULL)
            core_bump(&cs->timer_msgs, 1);
    }
    if (!t->periodic || a == NULL) {
        if (t->periodic)
            pith_timer_cancel(t->id);
        atimer_unlink(cs, t);
        pith_free(t);
    }
}

int pith_actor_timer(pith_actor_t *self, uint64_t delay_ns, uint64_t period_ns, uint32_t type,
                     const void *data, uint32_t len, pith_timer_id_t *id)
{
    if (id != NULL)
        *id = 0;
    if (self == NULL || (data == NULL && len > 0) || len >= PITH_MSG_MAX ||
        type >= PITH_MSG_RESERVED)
        return -EINVAL;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ENOMEM;
    if (cs->closing)
        return -ESHUTDOWN;
    struct atimer *t = pith_malloc(sizeof(*t) + len);
    if (t == NULL)
        return -ENOMEM;
    memset(t, 0, sizeof(*t));
    t->ref = self->ref;
    t->type = type;
    t->len = len;
    t->periodic = period_ns > 0;
    if (len)
        memcpy(t + 1, data, len);
    t->next = map_get(&cs->timers, t->ref);
    int err = map_put(&cs->timers, t->ref, t);
    if (err == 0) {
        err = pith_timer_add(delay_ns, period_ns, atimer_fire, t, &t->id);
        if (err)
            atimer_unlink(cs, t);
    }
    if (err) {
        pith_free(t);
        return err;
    }
    if (id != NULL)
        *id = t->id;
    return 0;
}

int pith_actor_timer_cancel(pith_actor_t *self, pith_timer_id_t id)
{
    if (self == NULL)
        return -EINVAL;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ENOENT;
    for (struct atimer *t = map_get(&cs->timers, self->ref); t != NULL; t = t->next) {
        if (t->id != id)
            continue;
        pith_timer_cancel(id);
        atimer_unlink(cs, t);
        pith_free(t);
        return 0;
    }
    return -ENOENT;
}

void core_timers_end(struct core_shard *cs, pith_ref_t ref)
{
    struct atimer *t = map_del(&cs->timers, ref);
    while (t != NULL) {
        struct atimer *next = t->next;
        pith_timer_cancel(t->id);
        pith_free(t);
        t = next;
    }
}

void core_asks_free(struct core_shard *cs)
{
    for (uint32_t i = 0; i < cs->asks.cap; i++) {
        if (cs->asks.ents[i].key == 0)
            continue;
        struct ask *k = cs->asks.ents[i].val;
        pith_timer_cancel(k->timer); /* ends with the ask, not counted as released */
        pith_free(k);
    }
    map_free(&cs->asks);
}
