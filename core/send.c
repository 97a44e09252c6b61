/* Messages: making them, putting them in mailboxes by the overflow policy, and sending them from
 * behaviours, tasks and, through their clients (client.c), threads outside the engine. What
 * happens to a message that is not delivered is undelivered.c's business. */
#include "clients.h"
#include "core.h"
#include "mem.h"

#include <errno.h>
#include <string.h>

__thread uint32_t core_stamp_gap = 1;
static __thread uint64_t stamp_rng;

uint32_t core_stamp_next_gap(void)
{
    uint64_t x = stamp_rng != 0 ? stamp_rng : (uint64_t)(uintptr_t)&stamp_rng | 1;
    x ^= x << 13; /* xorshift64 */
    x ^= x >> 7;
    x ^= x << 17;
    stamp_rng = x;
    return 1 + (uint32_t)(x >> 59); /* 1..32, 16.5 on average */
}

void *core_alloc(size_t size)
{
    return mem_malloc_lib(size);
}

struct amsg *core_msg_make_ext(int dst, pith_ref_t to, pith_ref_t from, uint32_t type,
                               const void *data, uint32_t len, size_t extra)
{
    struct core_shard *cs = core_self;
    struct amsg *m = NULL;
    if (len >= PITH_MSG_MAX)
        return NULL; /* the API refuses these with -EINVAL first */
    size_t body = extra != 0 ? core_msg_extra_off(len) + extra : len;
    if (cs != NULL && dst >= 0 && (unsigned)dst != cs->id)
        m = core_slab_msg(cs, (unsigned)dst, sizeof(*m) + body);
    if (m == NULL) {
        m = core_alloc(sizeof(*m) + body);
        if (m == NULL)
            return NULL;
        m->slab = NULL;
    }
    m->next = NULL;
    m->to = to;
    m->from = from;
    m->req = 0;
    m->type = type;
    m->len = len;
    m->sent = 0;
    if (UNLIKELY(--core_stamp_gap == 0)) {
        core_stamp_gap = core_stamp_next_gap();
        uint64_t t = ticks_now();
        m->sent = t != 0 ? t : 1;
    }
    if (len)
        memcpy(m + 1, data, len);
    return m;
}

struct amsg *core_msg_make_for(int dst, pith_ref_t to, pith_ref_t from, uint32_t type,
                               const void *data, uint32_t len)
{
    return core_msg_make_ext(dst, to, from, type, data, len, 0);
}

struct amsg *core_msg_make(pith_ref_t to, pith_ref_t from, uint32_t type, const void *data,
                           uint32_t len)
{
    int dst = to != PITH_REF_NONE && !ref_is_client(to) ? (int)ref_shard(to) : -1;
    return core_msg_make_for(dst, to, from, type, data, len);
}

void core_mailbox_take(struct core_shard *cs, struct actor *a, struct amsg *prev, struct amsg *m)
{
    if (prev != NULL)
        prev->next = m->next;
    else
        a->head = m->next;
    if (a->tail == m)
        a->tail = prev;
    a->depth--;
    core_bump(&core_counters(cs, a->rec)->depth_now, (uint64_t)0 - 1);
}

/* DROP_OLDEST: the oldest message that the bound covers (admitted ones stay). */
static bool drop_oldest(struct core_shard *cs, struct actor *a)
{
    struct amsg *prev = NULL, *old = a->head;
    while (old != NULL && (old->len & AMSG_ADMIT)) {
        prev = old;
        old = old->next;
    }
    if (old == NULL)
        return false;
    core_mailbox_take(cs, a, prev, old);
    core_bump(&core_counters(cs, a->rec)->dropped, 1);
    core_undelivered(cs, old, -ENOBUFS);
    core_msg_free(old);
    return true;
}

int core_enqueue(struct core_shard *cs, struct actor *a, struct amsg *m)
{
    struct type_rec *r = a->rec;
    struct type_counters *c = core_counters(cs, r);
    if (UNLIKELY(c->shedding) && !(m->len & AMSG_ADMIT)) {
        /* The type's SLA is missed on this shard and it sheds (sla.c). */
        core_bump(&c->shed, 1);
        return -EBUSY;
    }
    if (UNLIKELY(a->depth >= r->mailbox_max) && !(m->len & AMSG_ADMIT)) {
        pith_overflow_t policy = r->type->overflow;
        if (policy == PITH_OVERFLOW_MUTE_SENDER) {
            if (core_mute_full(cs, a, m) != 0) {
                core_bump(&c->rejected, 1);
                return -EAGAIN;
            }
        } else if (policy != PITH_OVERFLOW_DROP_OLDEST || !drop_oldest(cs, a)) {
            core_bump(&c->rejected, 1);
            return -EAGAIN;
        }
    }
    m->next = NULL;
    if (a->tail != NULL)
        a->tail->next = m;
    else
        a->head = m;
    a->tail = m;
    a->depth++;
    core_bump(&c->depth_now, 1);
    if (UNLIKELY(++cs->depth_sample >= HIST_SAMPLE)) {
        cs->depth_sample = 0;
        core_bump(&c->depth[64 - __builtin_clzll(a->depth)], 1); /* depth >= 1 */
        core_bump(&c->depth_sum, a->depth);
    }
    if (a->depth > atomic_load_explicit(&c->mailbox_max, memory_order_relaxed))
        atomic_store_explicit(&c->mailbox_max, a->depth, memory_order_relaxed);
    if (!(a->gen & (A_SCHEDULED | A_MUTED))) {
        int err = core_schedule(cs, a, m->to);
        if (err != 0) {
            /* Take it back out: it is the tail. */
            a->depth--;
            core_bump(&c->depth_now, (uint64_t)0 - 1);
            if (a->head == m) {
                a->head = a->tail = NULL;
            } else {
                struct amsg *p = a->head;
                while (p->next != m)
                    p = p->next;
                p->next = NULL;
                a->tail = p;
            }
            return err;
        }
    }
    return 0;
}

void core_deliver_task(void *arg)
{
    struct amsg *m = arg;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->closing) {
        core_msg_free(m); /* out of memory for the table, or stopping: the stop counts it */
        return;
    }
    struct actor *a = core_find(cs, m->to);
    if (a == NULL) {
        core_bump(&cs->dead_letters, 1);
        core_undelivered(cs, m, -ESRCH);
        core_msg_free(m);
        return;
    }
    int err = core_enqueue(cs, a, m);
    if (err != 0) {
        core_undelivered(cs, m, err);
        core_msg_free(m);
    }
}

/* The message of a send; flag goes into its length (see send_impl). */
static inline struct amsg *send_msg(int dst, pith_ref_t to, pith_ref_t from, uint32_t type,
                                    const void *data, uint32_t len, uint32_t flag, bool *made)
{
    struct amsg *m = core_msg_make_for(dst, to, from, type, data, len);
    if (m != NULL) {
        m->len |= flag;
        *made = true;
    }
    return m;
}

/* A send to an actor of the calling shard (cs is core_self). */
static inline int send_here(struct core_shard *cs, pith_ref_t to, pith_ref_t from, uint32_t type,
                            const void *data, uint32_t len, uint32_t flag, bool *made)
{
    struct actor *a = core_find(cs, to);
    if (a == NULL)
        return -ESRCH;
    if (a->depth >= a->rec->mailbox_max && a->rec->type->overflow == PITH_OVERFLOW_REJECT &&
        !(flag & AMSG_ADMIT)) {
        core_bump(&core_counters(cs, a->rec)->rejected, 1);
        return -EAGAIN;
    }
    struct amsg *m = send_msg(-1, to, from, type, data, len, flag, made);
    if (m == NULL)
        return -ENOMEM;
    int err = core_enqueue(cs, a, m);
    if (err)
        core_msg_free(m);
    return err;
}

/* A send from a shard to a client: straight into its inbox from this shard. */
static int send_client(struct core_shard *cs, pith_ref_t to, pith_ref_t from, uint32_t type,
                       const void *data, uint32_t len, uint32_t flag, bool *made)
{
    if (!(flag & AMSG_BUF))
        return client_send_copy(cs, to, from, type, 0, data, len);
    struct amsg *m = send_msg(-1, to, from, type, data, len, flag, made);
    if (m == NULL)
        return -ENOMEM;
    int err = client_deliver(cs, m);
    if (err)
        core_msg_free(m);
    return err;
}

/* pith_send, pith_send_buf and core_send_sys. flag: AMSG_BUF when data is a buffer's reference,
 * which the message then owns: *made says whether the message was made (and so owns it, even
 * on error); AMSG_ADMIT past the mailbox's bound. */
static int send_impl(pith_ref_t to, uint32_t type, const void *data, uint32_t len, uint32_t flag,
                     bool *made)
{
    *made = false;
    /* The common case first: an actor of this shard, from this shard. */
    struct core_shard *cs = core_self;
    if (LIKELY(cs != NULL && ref_shard(to) == cs->id && ref_gen(to) != 0 &&
               (data != NULL || len == 0) && len < PITH_MSG_MAX && !cs->closing))
        return send_here(cs, to, core_current != PITH_REF_NONE ? core_current : ref_task(cs->id),
                         type, data, len, flag, made);
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    bool client = ref_is_client(to);
    if (ref_gen(to) == 0 || (ref_shard(to) >= n && !client) || (data == NULL && len > 0) ||
        len >= PITH_MSG_MAX)
        return -EINVAL;
    int me = pith_shard_id();
    if (me < 0)
        return client_send_outside(to, type, data, len, flag, made);
    if (cs == NULL && (cs = core_shard_get()) == NULL)
        return -ENOMEM;
    if (cs->closing)
        return -ESHUTDOWN;
    pith_ref_t from = core_current != PITH_REF_NONE ? core_current : ref_task(cs->id);
    if (client)
        return send_client(cs, to, from, type, data, len, flag, made);
    unsigned dst = ref_shard(to);
    if ((unsigned)me == dst)
        return send_here(cs, to, from, type, data, len, flag, made);
    struct amsg *m = send_msg((int)dst, to, from, type, data, len, flag, made);
    if (m == NULL)
        return -ENOMEM;
    int err = pith_submit(dst, core_deliver_task, m);
    if (err)
        core_msg_free(m);
    return err;
}

int pith_send(pith_ref_t to, uint32_t type, const void *data, uint32_t len)
{
    if (UNLIKELY(type >= PITH_MSG_RESERVED))
        return -EINVAL;
    bool made;
    return send_impl(to, type, data, len, 0, &made);
}

int core_send_sys(pith_ref_t to, uint32_t type, const void *data, uint32_t len, uint32_t flags)
{
    bool made;
    return send_impl(to, type, data, len, flags & AMSG_ADMIT, &made);
}

int pith_send_buf(pith_ref_t to, uint32_t type, pith_buf_t *buf)
{
    if (buf == NULL || type >= PITH_MSG_RESERVED)
        return -EINVAL;
    pith_buf_ref(buf); /* the message's reference */
    bool made;
    int err = send_impl(to, type, &buf, sizeof(buf), AMSG_BUF, &made);
    if (err && !made)
        pith_buf_release(buf);
    return err;
}

int core_send_msg(struct amsg *m, bool force)
{
    unsigned n = pith_shard_count();
    bool client = ref_is_client(m->to);
    if (n == 0 || (ref_shard(m->to) >= n && !client) || ref_gen(m->to) == 0) {
        core_msg_free(m);
        return n == 0 ? -ESHUTDOWN : -EINVAL;
    }
    int me = pith_shard_id();
    if (me >= 0 && (client || (unsigned)me == ref_shard(m->to))) {
        struct core_shard *cs = core_shard_get();
        int err;
        if (cs == NULL)
            err = -ENOMEM;
        else if (cs->closing)
            err = -ESHUTDOWN;
        else if (client)
            err = client_deliver(cs, m);
        else {
            struct actor *a = core_find(cs, m->to);
            err = a == NULL ? -ESRCH : core_enqueue(cs, a, m);
        }
        if (err)
            core_msg_free(m);
        return err;
    }
    if (me < 0) {
        core_msg_free(m);
        return -EPERM; /* the engine's own sends run on shards */
    }
    int err = force ? shard_submit_force(ref_shard(m->to), core_deliver_task, m)
                    : pith_submit(ref_shard(m->to), core_deliver_task, m);
    if (err)
        core_msg_free(m);
    return err;
}
