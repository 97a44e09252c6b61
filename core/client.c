/* Clients (pith/client.h): the engine's table of them, their handles, and what a client's
 * thread does: send through its lanes, receive from its inbox, and wait for asks, spawns and
 * calls. What shards do for clients is ingress.c's. */
#include "clients.h"
#include "core.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define INBOX_DEFAULT 1024u
#define INBOX_MIN     4u
#define INBOX_MAX     65536u

/* ---- the table ---- */

static _Atomic uint32_t client_gens;

static struct ctable *table_of(struct core_engine *ce, bool make)
{
    struct ctable *t = atomic_load_explicit(&ce->clients, memory_order_acquire);
    if (t != NULL || !make)
        return t;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    pthread_mutex_init(&t->lock, NULL);
    struct ctable *expect = NULL;
    /* Release: whoever loads it (acquire) finds it set up; a loser takes the winner's. */
    if (!atomic_compare_exchange_strong_explicit(&ce->clients, &expect, t, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        pthread_mutex_destroy(&t->lock);
        free(t);
        return expect;
    }
    return t;
}

static struct ctable *table_now(void)
{
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    return ce != NULL ? table_of(ce, false) : NULL;
}

static struct cslot *cslot_at(struct ctable *t, uint32_t slot)
{
    /* Acquire pairs with the release store of a new chunk (attach). */
    struct cslot *chunk =
        atomic_load_explicit(&t->chunks[slot / CLIENT_CHUNK], memory_order_acquire);
    return chunk != NULL ? &chunk[slot % CLIENT_CHUNK] : NULL;
}

struct cent *client_lookup(pith_ref_t ref)
{
    struct ctable *t = table_now();
    uint32_t slot = ref_slot(ref);
    if (t == NULL || !ref_is_client(ref) || slot >= CLIENT_MAX)
        return NULL;
    struct cslot *s = cslot_at(t, slot);
    /* seq_cst: the shards' side of detach's Dekker through shard_quiesce (loop.c); it also
     * acquires attach's release of gen, stored after ent, so a matching generation comes with
     * its entry. */
    if (s == NULL || atomic_load(&s->gen) != ref_gen(ref))
        return NULL;
    return atomic_load_explicit(&s->ent, memory_order_acquire);
}

struct cent *client_lookup_slot(uint32_t slot, pith_ref_t *ref)
{
    struct ctable *t = table_now();
    struct cslot *s = t != NULL && slot < CLIENT_MAX ? cslot_at(t, slot) : NULL;
    if (s == NULL)
        return NULL;
    uint32_t gen = atomic_load(&s->gen); /* seq_cst: as in client_lookup */
    struct cent *e = atomic_load_explicit(&s->ent, memory_order_acquire);
    if (e == NULL || gen == 0)
        return NULL;
    *ref = ref_make(REF_CLIENT_SHARD, gen, slot);
    return e;
}

static void cent_put(struct cent *e)
{
    /* acq_rel: the other side's accesses happen before the free. */
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        free(e);
}

/* Frees what waits for the client: its rings and their messages, and the engine's answers.
 * Once no shard writes to them any more. */
static void inbox_free(struct cent *e)
{
    for (unsigned i = 0; i < e->n; i++) {
        struct ring *r = atomic_load_explicit(&e->inbox[i], memory_order_acquire);
        if (r == NULL)
            continue;
        for (const struct envelope *env; (env = ring_peek(r)) != NULL;) {
            if (!(env->count & INBOX_INLINE_TAG))
                core_msg_free(env->tasks[0].arg);
            ring_advance(r);
        }
        ring_fini(r);
        free(r);
        atomic_store_explicit(&e->inbox[i], NULL, memory_order_relaxed);
    }
    struct amsg *m = atomic_exchange_explicit(&e->answers, NULL, memory_order_acquire);
    while (m != NULL) {
        struct amsg *next = m->next;
        core_msg_free(m);
        m = next;
    }
}

/* Gives the client a slot, an entry and a ref in the running engine; inside. */
static int attach(struct pith_client *c)
{
    struct core_engine *ce = core_engine_get();
    if (ce == NULL)
        return -ENOMEM;
    struct ctable *t = table_of(ce, true);
    if (t == NULL)
        return -ENOMEM;
    struct cent *e = calloc(1, sizeof(*e) + ce->n * sizeof(e->inbox[0]));
    if (e == NULL)
        return -ENOMEM;
    atomic_init(&e->refs, 2);
    e->n = ce->n;
    e->inbox_cap = c->cfg.inbox_max;
    pthread_mutex_lock(&t->lock);
    uint32_t slot;
    if (t->free_head != 0) {
        slot = t->free_head - 1;
        t->free_head = cslot_at(t, slot)->next_free;
    } else if (t->used < CLIENT_MAX) {
        slot = t->used;
        uint32_t k = slot / CLIENT_CHUNK;
        if (atomic_load_explicit(&t->chunks[k], memory_order_relaxed) == NULL) {
            struct cslot *chunk = calloc(CLIENT_CHUNK, sizeof(*chunk));
            if (chunk == NULL) {
                pthread_mutex_unlock(&t->lock);
                free(e);
                return -ENOMEM;
            }
            atomic_store_explicit(&t->chunks[k], chunk, memory_order_release);
        }
        t->used++;
    } else {
        pthread_mutex_unlock(&t->lock);
        free(e);
        return -EMFILE;
    }
    struct cslot *s = cslot_at(t, slot);
    /* One count for every client of the process, across engines: a ref kept from an earlier
     * client (of this engine or of an earlier one) names no later client until 2^24 more have
     * been opened. */
    uint32_t gen;
    do
        gen = (atomic_fetch_add_explicit(&client_gens, 1, memory_order_relaxed) + 1) & REF_GEN_MASK;
    while (gen == 0);
    /* Entry first, then the generation that makes refs to it valid (client_lookup). */
    atomic_store_explicit(&s->ent, e, memory_order_release);
    atomic_store_explicit(&s->gen, gen, memory_order_release);
    c->seq = s->seq;
    pthread_mutex_unlock(&t->lock);
    c->ref = ref_make(REF_CLIENT_SHARD, gen, slot);
    c->ent = e;
    c->epoch = atomic_load_explicit(&c->p->epoch, memory_order_relaxed);
    producer_set_owner(c->p, c->ref);
    return 0;
}

/* Takes the client out of the running engine's table; inside. */
static void detach(struct pith_client *c)
{
    struct ctable *t = table_now();
    uint32_t slot = ref_slot(c->ref);
    struct cslot *s = t != NULL ? cslot_at(t, slot) : NULL;
    if (s == NULL)
        return; /* not attached to this engine's table: its stop takes the entry apart */
    /* Generation 0, which no ref has: new lookups fail from here. seq_cst, before the shards'
     * loop counters that shard_quiesce reads. */
    atomic_store(&s->gen, 0);
    /* What a shard found before that, it uses only until the end of its iteration. */
    shard_quiesce();
    atomic_store_explicit(&s->ent, NULL, memory_order_release);
    inbox_free(c->ent);
    pthread_mutex_lock(&t->lock);
    s->seq = c->seq;
    s->next_free = t->free_head;
    t->free_head = slot + 1;
    pthread_mutex_unlock(&t->lock);
    cent_put(c->ent); /* the table's reference */
}

void core_clients_stopping(void)
{
    struct ctable *t = table_now();
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    for (uint32_t i = 0; i < t->used; i++) {
        struct cent *e = atomic_load_explicit(&cslot_at(t, i)->ent, memory_order_acquire);
        if (e != NULL && atomic_exchange(&e->wake, 0) != 0)
            syscall(SYS_futex, (uint32_t *)&e->wake, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    }
    pthread_mutex_unlock(&t->lock);
}

void core_clients_gone(struct core_engine *ce)
{
    struct ctable *t = table_of(ce, false);
    if (t == NULL)
        return;
    for (uint32_t i = 0; i < t->used; i++) {
        struct cslot *s = cslot_at(t, i);
        struct cent *e = atomic_load_explicit(&s->ent, memory_order_acquire);
        if (e == NULL)
            continue;
        inbox_free(e);
        atomic_store_explicit(&s->ent, NULL, memory_order_relaxed);
        cent_put(e);
    }
    for (uint32_t k = 0; k < CLIENT_MAX / CLIENT_CHUNK; k++)
        free(atomic_load_explicit(&t->chunks[k], memory_order_relaxed));
    pthread_mutex_destroy(&t->lock);
    free(t);
    atomic_store_explicit(&ce->clients, NULL, memory_order_relaxed);
}

/* ---- handles ---- */

void pith_client_config_init(pith_client_config_t *cfg)
{
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->inbox_max = INBOX_DEFAULT;
}

static int config_resolve(const pith_client_config_t *in, pith_client_config_t *out)
{
    pith_client_config_init(out);
    if (in == NULL)
        return 0;
    *out = *in;
    if (out->inbox_max == 0)
        out->inbox_max = INBOX_DEFAULT;
    if (out->inbox_max > INBOX_MAX)
        return -EINVAL;
    uint32_t cap = INBOX_MIN;
    while (cap < out->inbox_max)
        cap *= 2;
    out->inbox_max = cap;
    return 0;
}

/* Frees the messages the handle holds: the last one handed out, those an ask set aside, the
 * answers taken but not matched. */
static void free_local(struct pith_client *c)
{
    if (c->current != NULL)
        core_msg_free(c->current);
    c->current = NULL;
    struct amsg *lists[] = {c->held, c->answers};
    for (unsigned i = 0; i < 2; i++) {
        for (struct amsg *m = lists[i], *next; m != NULL; m = next) {
            next = m->next;
            core_msg_free(m);
        }
    }
    c->held = c->held_tail = c->answers = c->answers_tail = NULL;
    c->nheld = 0;
}

static int orphans_retry(struct pith_client *c, uint64_t timeout_ns);

/* Lets go of the client's place in its engine. */
static void client_release(struct pith_client *c)
{
    free_local(c);
    if (c->ent == NULL)
        return;
    /* Only while the engine the client belongs to still takes producers: otherwise its stop
     * takes the entry apart (core_clients_gone), and ends the actors orphans names. */
    if (atomic_load_explicit(&c->p->epoch, memory_order_relaxed) == c->epoch &&
        producer_enter(c->p) == 0) {
        /* Late-spawned actors still to stop: a bounded wait for room, as the lane drains.
         * -ESHUTDOWN: the engine began to stop meanwhile, and we are outside. */
        bool inside = orphans_retry(c, UINT64_C(10000000000)) != -ESHUTDOWN;
        if (inside) {
            if (atomic_load_explicit(&c->p->epoch, memory_order_relaxed) == c->epoch)
                detach(c);
            producer_leave(c->p);
        }
    }
    cent_put(c->ent);
    c->ent = NULL;
    free(c->orphans);
    c->orphans = NULL;
    c->norphans = c->orphans_cap = 0;
}

/* Inside the engine, with the client attached to it. The thread's own client follows the
 * engine across restarts; an opened one belongs to the engine it was opened in. */
static int client_enter(struct pith_client *c)
{
    int err = producer_enter(c->p);
    if (err)
        return err;
    uint64_t ep = atomic_load_explicit(&c->p->epoch, memory_order_relaxed);
    if (c->ent != NULL && c->epoch == ep) {
        /* What still finds no room waits for the next call. -ESHUTDOWN: we are outside. */
        if (UNLIKELY(c->norphans > 0) && orphans_retry(c, 0) == -ESHUTDOWN)
            return -ESHUTDOWN;
        return 0;
    }
    if (!c->thread_own) {
        producer_leave(c->p);
        return -ESHUTDOWN;
    }
    free_local(c);
    c->norphans = 0; /* an earlier engine's actors: its stop ended them */
    if (c->ent != NULL) {
        cent_put(c->ent); /* an earlier engine's, taken apart at its stop */
        c->ent = NULL;
    }
    err = attach(c);
    if (err)
        producer_leave(c->p);
    return err;
}

/* client_enter for the calls that hand out a message (receive, ask, spawn, call): the last one
 * handed out is freed first, as their documentation promises. */
static int client_enter_reading(struct pith_client *c)
{
    if (c->current != NULL) {
        core_msg_free(c->current);
        c->current = NULL;
    }
    return client_enter(c);
}

pith_client_t *pith_client_open(const pith_client_config_t *cfg)
{
    if (pith_shard_id() >= 0) {
        errno = EDEADLK;
        return NULL;
    }
    struct pith_client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    int err = config_resolve(cfg, &c->cfg);
    if (err == 0) {
        producer_init(&c->own, 0);
        c->own.spin_ns = c->cfg.spin_ns;
        c->p = &c->own;
        err = producer_enter(c->p);
        if (err == 0) {
            err = attach(c);
            producer_leave(c->p);
        }
        if (err)
            producer_close(&c->own);
    }
    if (err) {
        free(c);
        errno = -err;
        return NULL;
    }
    return c;
}

void pith_client_close(pith_client_t *c)
{
    if (c == NULL || c->thread_own || pith_shard_id() >= 0)
        return;
    client_release(c);
    producer_close(&c->own);
    free(c);
}

static void self_fini(struct producer *p)
{
    struct pith_client *c = p->upper;
    client_release(c);
    free(c);
    p->upper = NULL;
}

pith_client_t *pith_client_self(void)
{
    if (pith_shard_id() >= 0) {
        errno = EDEADLK;
        return NULL;
    }
    struct producer *p = producer_self();
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    struct pith_client *c = p->upper;
    if (c == NULL) {
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            errno = ENOMEM;
            return NULL;
        }
        c->p = p;
        c->thread_own = true;
        (void)config_resolve(NULL, &c->cfg);
        p->upper = c;
        p->upper_fini = self_fini;
    }
    int err = client_enter(c);
    if (err) {
        errno = -err;
        return NULL;
    }
    producer_leave(c->p);
    return c;
}

pith_ref_t pith_client_ref(const pith_client_t *c)
{
    return c != NULL ? c->ref : PITH_REF_NONE;
}

int pith_client_stats(const pith_client_t *c, pith_client_stats_t *out)
{
    if (c == NULL || out == NULL)
        return -EINVAL;
    *out = c->st;
    return 0;
}

/* ---- sending ---- */

static uint64_t deadline_of(uint64_t timeout_ns)
{
    if (timeout_ns == PITH_FOREVER)
        return PITH_FOREVER;
    uint64_t now = pith_now_ns();
    return timeout_ns > PITH_FOREVER - now ? PITH_FOREVER : now + timeout_ns;
}

static uint64_t time_left(uint64_t deadline)
{
    if (deadline == PITH_FOREVER)
        return PITH_FOREVER;
    uint64_t now = pith_now_ns();
    return deadline > now ? deadline - now : 1; /* 1: one look, no wait to speak of */
}

/* -EINVAL or -ESRCH for a ref this client cannot send to; inside. */
static int check_to(struct pith_client *c, pith_ref_t to)
{
    if (ref_gen(to) == 0)
        return -EINVAL;
    if (!ref_is_client(to))
        return ref_shard(to) < c->p->n ? 0 : -EINVAL;
    struct ctable *t = table_now();
    struct cslot *s = t != NULL && ref_slot(to) < CLIENT_MAX ? cslot_at(t, ref_slot(to)) : NULL;
    return s != NULL && atomic_load_explicit(&s->gen, memory_order_acquire) == ref_gen(to) ? 0
                                                                                           : -ESRCH;
}

/* The shard that carries a message for `to` from this client. */
static inline unsigned dest_shard(const struct pith_client *c, pith_ref_t to)
{
    return ref_is_client(to) ? ref_slot(to) % c->p->n : ref_shard(to);
}

/* One try at pushing a record for `to` (see push_msg_run), waiting up to timeout_ns. */
static int push_try(struct pith_client *c, pith_ref_t to, uint64_t aux, const uint64_t *head,
                    uint32_t hlen, const void *data, uint32_t len, uint64_t timeout_ns, bool more)
{
    struct producer *p = c->p;
    int (*push)(struct producer *, unsigned, lane_fn_t, void *, uint64_t, const void *, uint32_t,
                const void *, uint32_t, uint64_t) = more ? lane_push_more : lane_push;
    return push(p, dest_shard(c, to), client_lane_msg, (void *)(uintptr_t)to, aux, head, hlen, data,
                len, timeout_ns);
}

/* Pushes a message record for `to` (req: an ask's id, or 0); inside. -ESHUTDOWN: left. It
 * waits for room up to timeout_ns, or up to *deadline where deadline is not NULL (a batch's).
 * more: not the last of a run to its shard (lane_push_more). */
static int push_msg_run(struct pith_client *c, pith_ref_t to, uint32_t type, uint64_t flags,
                        uint64_t req, const void *data, uint32_t len, uint64_t timeout_ns,
                        const uint64_t *deadline, bool more)
{
    uint64_t head[2] = {req, 0};
    uint32_t hlen = req != 0 ? (uint32_t)sizeof(head) : 0;
    uint64_t aux = type | flags | (req != 0 ? LREC_REQ : 0);
    struct amsg *m = NULL;
    if (len > lane_max_len(c->p) - hlen) {
        /* Too large for a lane: the message travels by pointer. */
        m = core_msg_make_for(-1, to, c->ref, type, data, len);
        if (m == NULL)
            return -ENOMEM;
        aux |= LREC_MSG;
        data = &m;
        len = sizeof(m);
    }
    /* A first try that does not wait (nor read the clock): the common case, inline where it
     * can be (lane_push_quick). */
    int err = 0;
    if (hlen != 0 || !lane_push_quick(c->p, dest_shard(c, to), client_lane_msg,
                                      (void *)(uintptr_t)to, aux, NULL, 0, data, len, more))
        err = push_try(c, to, aux, head, hlen, data, len, 0, more);
    if (err == -EAGAIN) {
        c->st.pushed_back++;
        if (timeout_ns != 0)
            err = push_try(c, to, aux, head, hlen, data, len,
                           deadline != NULL ? time_left(*deadline) : timeout_ns, more);
    }
    if (err == 0)
        c->st.sent++;
    else if (m != NULL)
        core_msg_free(m);
    return err;
}

static int push_msg(struct pith_client *c, pith_ref_t to, uint32_t type, uint64_t flags,
                    uint64_t req, const void *data, uint32_t len, uint64_t timeout_ns)
{
    return push_msg_run(c, to, type, flags, req, data, len, timeout_ns, NULL, false);
}

/* One message of a batch, msgs[i], pushed as part of a run to its shard (lane_push_more),
 * waiting for room up to *deadline; *dst: that shard. Inside (-ESHUTDOWN: left). */
typedef int (*batch_push_fn)(struct pith_client *c, const void *msgs, unsigned i,
                             uint64_t timeout_ns, const uint64_t *deadline, unsigned *dst);

/* pith_client_send_batch and pith_client_vsend_batch: every record goes in without the look at
 * whether its shard sleeps (lane_push_more); the shards touched get that look, and the full
 * barrier it needs, once each at the end: one barrier per shard instead of one per message. */
static int client_batch(pith_client_t *c, const void *msgs, unsigned n, uint64_t timeout_ns,
                        batch_push_fn push)
{
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || (msgs == NULL && n > 0))
        return -EINVAL;
    if (n == 0)
        return 0;
    int err = client_enter(c);
    if (err)
        return err;
    uint64_t touched[(MAX_CLIENT_SHARDS + 63) / 64] = {0};
    uint64_t deadline = deadline_of(timeout_ns);
    unsigned sent = 0;
    for (; sent < n; sent++) {
        unsigned d = 0;
        if ((err = push(c, msgs, sent, timeout_ns, &deadline, &d)) != 0)
            break;
        touched[d / 64] |= UINT64_C(1) << (d % 64);
    }
    if (err == -ESHUTDOWN)
        return sent > 0 ? (int)sent : err; /* outside: the stop drains what was sent */
    for (unsigned w = 0; w < (MAX_CLIENT_SHARDS + 63) / 64; w++)
        for (uint64_t bits = touched[w]; bits != 0; bits &= bits - 1)
            lane_flush(c->p, w * 64 + (unsigned)__builtin_ctzll(bits));
    producer_leave(c->p);
    return sent > 0 ? (int)sent : err;
}

static int batch_msg(struct pith_client *c, const void *msgs, unsigned i, uint64_t timeout_ns,
                     const uint64_t *deadline, unsigned *dst)
{
    const pith_client_msg_t *m = (const pith_client_msg_t *)msgs + i;
    if (m->type >= PITH_MSG_RESERVED || (m->data == NULL && m->len > 0) || m->len >= PITH_MSG_MAX)
        return -EINVAL;
    int err = check_to(c, m->to);
    if (err)
        return err;
    *dst = dest_shard(c, m->to);
    return push_msg_run(c, m->to, m->type, 0, 0, m->data, m->len, timeout_ns, deadline, true);
}

int pith_client_send_batch(pith_client_t *c, const pith_client_msg_t *msgs, unsigned n,
                           uint64_t timeout_ns)
{
    return client_batch(c, msgs, n, timeout_ns, batch_msg);
}

static int client_send(struct pith_client *c, pith_ref_t to, uint32_t type, uint64_t flags,
                       const void *data, uint32_t len, uint64_t timeout_ns)
{
    int err = client_enter(c);
    if (err)
        return err;
    err = check_to(c, to);
    if (err == 0)
        err = push_msg(c, to, type, flags, 0, data, len, timeout_ns);
    if (err != -ESHUTDOWN)
        producer_leave(c->p);
    return err;
}

int pith_client_send(pith_client_t *c, pith_ref_t to, uint32_t type, const void *data, uint32_t len,
                     uint64_t timeout_ns)
{
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || type >= PITH_MSG_RESERVED || (data == NULL && len > 0) || len >= PITH_MSG_MAX)
        return -EINVAL;
    return client_send(c, to, type, 0, data, len, timeout_ns);
}

int pith_client_send_buf(pith_client_t *c, pith_ref_t to, uint32_t type, pith_buf_t *buf,
                         uint64_t timeout_ns)
{
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || buf == NULL || type >= PITH_MSG_RESERVED)
        return -EINVAL;
    pith_buf_ref(buf); /* the message's reference */
    int err = client_send(c, to, type, LREC_BUF, &buf, sizeof(buf), timeout_ns);
    if (err)
        pith_buf_release(buf);
    return err;
}

int client_send_outside(pith_ref_t to, uint32_t type, const void *data, uint32_t len, uint32_t flag,
                        bool *made)
{
    struct pith_client *c = pith_client_self();
    if (c == NULL)
        return -errno;
    int err = client_send(c, to, type, (flag & AMSG_BUF) ? LREC_BUF : 0, data, len, 0);
    *made = err == 0; /* a buffer's reference went with the record */
    return err;
}

int client_reply_outside(uint64_t req, uint32_t type, const void *data, uint32_t len)
{
    struct pith_client *c = pith_client_self();
    if (c == NULL)
        return -errno;
    int err = client_enter(c);
    if (err)
        return err;
    /* A shard's ask: the reply runs on that shard. A client's: any shard delivers it. */
    unsigned dst = req_is_client(req) ? req_client_slot(req) % c->p->n : req_shard(req);
    if (dst >= c->p->n) {
        producer_leave(c->p);
        return -EINVAL;
    }
    uint64_t head[2] = {req, 0};
    if (len <= lane_max_len(c->p) - sizeof(head)) {
        err = lane_push(c->p, dst, client_lane_msg, NULL, type | LREC_REQ, head, sizeof(head), data,
                        len, 0);
    } else {
        /* Too large for a lane: the reply travels by pointer, as a large send does. */
        struct amsg *m = core_msg_make_for(-1, PITH_REF_NONE, c->ref, type, data, len);
        err = m == NULL ? -ENOMEM
                        : lane_push(c->p, dst, client_lane_msg, NULL, type | LREC_REQ | LREC_MSG,
                                    head, sizeof(head), &m, sizeof(m), 0);
        if (err && m != NULL)
            core_msg_free(m);
    }
    if (err != -ESHUTDOWN)
        producer_leave(c->p);
    return err;
}

/* ---- receiving ---- */

static void list_push(struct amsg **head, struct amsg **tail, struct amsg *m)
{
    m->next = NULL;
    if (*tail != NULL)
        (*tail)->next = m;
    else
        *head = m;
    *tail = m;
}

static struct amsg *list_pop(struct amsg **head, struct amsg **tail)
{
    struct amsg *m = *head;
    if (m != NULL) {
        *head = m->next;
        if (*head == NULL)
            *tail = NULL;
    }
    return m;
}

/* Whether pull would find something; inside. seq_cst loads: the client's last look before it
 * sleeps, in its Dekker with client_wake. */
static bool pending(struct pith_client *c, bool rings)
{
    struct cent *e = c->ent;
    if (c->answers != NULL || atomic_load(&e->answers) != NULL || atomic_load(&e->folded) != 0)
        return true;
    for (unsigned i = 0; rings && i < e->n; i++) {
        struct ring *r = atomic_load(&e->inbox[i]);
        if (r != NULL && ring_pending(r))
            return true;
    }
    return false;
}

/* The next message: the engine's answers, then each shard's ring in turn (when `rings`), then
 * one summary of the notices folded for want of room. NULL: nothing now. Inside. */
static struct amsg *pull(struct pith_client *c, bool rings)
{
    struct cent *e = c->ent;
    if (atomic_load_explicit(&e->answers, memory_order_relaxed) != NULL) {
        /* Acquire pairs with answer_put's release CAS. The stack is newest first. */
        struct amsg *m = atomic_exchange_explicit(&e->answers, NULL, memory_order_acquire);
        struct amsg *fifo = NULL;
        while (m != NULL) {
            struct amsg *next = m->next;
            m->next = fifo;
            fifo = m;
            m = next;
        }
        while (fifo != NULL) {
            struct amsg *next = fifo->next;
            list_push(&c->answers, &c->answers_tail, fifo);
            fifo = next;
        }
    }
    struct amsg *m = list_pop(&c->answers, &c->answers_tail);
    if (m != NULL)
        return m;
    for (unsigned k = 0; rings && k < e->n; k++) {
        unsigned i = (c->next_shard + k) % e->n;
        /* Acquire pairs with inbox_put's release of a new ring. */
        struct ring *r = atomic_load_explicit(&e->inbox[i], memory_order_acquire);
        const struct envelope *env = r != NULL ? ring_peek(r) : NULL;
        if (env == NULL)
            continue;
        if (env->count & INBOX_INLINE_TAG) {
            /* A small message in the slot: copied out into a block of this thread's own. */
            const struct inbox_inline *in = (const struct inbox_inline *)env->tasks;
            m = core_msg_make_for(-1, c->ref, in->from, in->type, in->data, in->len);
            if (m == NULL)
                return NULL; /* out of memory: it waits in the ring */
            m->req = in->req;
        } else {
            m = env->tasks[0].arg;
        }
        ring_advance(r);
        ring_release(r);
        c->next_shard = (i + 1) % e->n;
        return m;
    }
    if (atomic_load_explicit(&e->folded, memory_order_relaxed) != 0) {
        uint64_t count = atomic_exchange_explicit(&e->folded, 0, memory_order_relaxed);
        pith_undelivered_t u = {.reason = -ENOBUFS, .count = count};
        m = core_msg_make_for(-1, c->ref, PITH_REF_NONE, PITH_MSG_UNDELIVERED, &u, sizeof(u));
        if (m == NULL)
            atomic_fetch_add_explicit(&e->folded, count, memory_order_relaxed);
        return m;
    }
    return NULL;
}

/* Blocks until something may have come in, or the deadline passes. Inside on entry; returns 0
 * or -ETIMEDOUT inside, -ESHUTDOWN outside. */
static int client_wait(struct pith_client *c, uint64_t deadline, bool rings)
{
    struct cent *e = c->ent;
    if (c->cfg.spin_ns > 0) {
        uint64_t until = deadline_of(c->cfg.spin_ns);
        if (until > deadline)
            until = deadline;
        /* The clock costs more than a look at the rings: read it once in 64 looks. A stop
         * waits for this client to leave: the spin ends when one begins. */
        for (unsigned k = 1;; k++) {
            if (pending(c, rings))
                return 0;
            if ((k & 63) == 0 && (pith_now_ns() >= until || shard_engine_stopping()))
                break;
        }
    }
    if (deadline != PITH_FOREVER && pith_now_ns() >= deadline)
        return -ETIMEDOUT;
    /* Dekker with client_wake: the exchange (a full barrier) orders wake = 1 before our last
     * look. Either we see what a shard put, or it sees us asleep and wakes us. */
    atomic_exchange(&e->wake, 1);
    if (pending(c, rings)) {
        atomic_store_explicit(&e->wake, 0, memory_order_relaxed);
        return 0;
    }
    uint64_t epoch = c->epoch;
    producer_leave(c->p);
    /* The handle holds a reference to the entry: the word stays while we sleep on it. */
    struct timespec ts, *tsp = NULL;
    if (deadline != PITH_FOREVER) {
        uint64_t left = time_left(deadline);
        ts.tv_sec = (time_t)(left / 1000000000u);
        ts.tv_nsec = (long)(left % 1000000000u);
        tsp = &ts;
    }
    syscall(SYS_futex, (uint32_t *)&e->wake, FUTEX_WAIT_PRIVATE, 1, tsp, NULL, 0);
    atomic_store_explicit(&e->wake, 0, memory_order_relaxed);
    int err = producer_enter(c->p);
    if (err)
        return err;
    if (atomic_load_explicit(&c->p->epoch, memory_order_relaxed) != epoch) {
        producer_leave(c->p);
        return -ESHUTDOWN;
    }
    return 0;
}

/* Asks the shard of an actor nobody knows of to stop it; kept for later when the lane is full
 * (or memory short). Inside. */
static void orphan_stop(struct pith_client *c, pith_ref_t ref)
{
    if (lane_push(c->p, ref_shard(ref), client_lane_stop, (void *)(uintptr_t)ref, 0, NULL, 0, NULL,
                  0, 0) == 0)
        return;
    if (c->norphans == c->orphans_cap) {
        uint32_t cap = c->orphans_cap ? c->orphans_cap * 2 : 8;
        pith_ref_t *grown = realloc(c->orphans, cap * sizeof(*grown));
        if (grown == NULL)
            return; /* out of memory: the actor lives until the engine stops */
        c->orphans = grown;
        c->orphans_cap = cap;
    }
    c->orphans[c->norphans++] = ref;
}

/* Asks again for the stops that found the lane full, waiting up to timeout_ns for room (inside;
 * -ESHUTDOWN: outside). */
static int orphans_retry(struct pith_client *c, uint64_t timeout_ns)
{
    while (c->norphans > 0) {
        pith_ref_t ref = c->orphans[c->norphans - 1];
        int err = lane_push(c->p, ref_shard(ref), client_lane_stop, (void *)(uintptr_t)ref, 0, NULL,
                            0, NULL, 0, timeout_ns);
        if (err)
            return err;
        c->norphans--;
    }
    return 0;
}

/* Whether m answers a call of this client that has ended (it then disposes of it). */
static bool late(struct pith_client *c, struct amsg *m)
{
    bool ours = m->req != 0 && req_is_client(m->req) && req_client_slot(m->req) == ref_slot(c->ref);
    if (m->type != MSG_SPAWNED && m->type != MSG_CALLED && !ours)
        return false;
    if (m->type == MSG_SPAWNED) {
        struct spawned sp;
        memcpy(&sp, m + 1, sizeof(sp));
        /* Spawned after its caller gave up: stop it rather than leave it unknown. */
        if (sp.err == 0)
            orphan_stop(c, sp.ref);
    }
    c->st.late++;
    core_msg_free(m);
    return true;
}

static void hand_out(struct pith_client *c, struct amsg *m, pith_msg_t *out)
{
    c->current = m;
    core_msg_view(m, out);
    c->st.received++;
    if (m->type == PITH_MSG_UNDELIVERED && (m->len & AMSG_LEN_MASK) == sizeof(pith_undelivered_t))
        c->st.undelivered += ((const pith_undelivered_t *)(m + 1))->count;
}

int pith_client_receive(pith_client_t *c, pith_msg_t *out, uint64_t timeout_ns)
{
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || out == NULL)
        return -EINVAL;
    int err = client_enter_reading(c);
    if (err)
        return err;
    uint64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        struct amsg *m = list_pop(&c->held, &c->held_tail);
        if (m != NULL)
            c->nheld--;
        else
            m = pull(c, true);
        if (m != NULL) {
            if (late(c, m))
                continue;
            hand_out(c, m, out);
            producer_leave(c->p);
            return 0;
        }
        if (timeout_ns == 0) {
            producer_leave(c->p);
            return -EAGAIN;
        }
        err = client_wait(c, deadline, true);
        if (err == -ESHUTDOWN)
            return err;
        if (err) {
            producer_leave(c->p);
            return err;
        }
    }
}

/* Waits for the answer to request `req`, setting other messages aside; inside. NULL with *err
 * (-ETIMEDOUT inside, -ESHUTDOWN outside). */
static struct amsg *await(struct pith_client *c, uint64_t req, uint64_t deadline, int *err)
{
    for (;;) {
        /* Past inbox_max set aside, the rings wait: the answer may then time out. */
        bool rings = c->nheld < c->cfg.inbox_max;
        struct amsg *m = pull(c, rings);
        if (m != NULL) {
            if (m->req == req)
                return m;
            if (late(c, m))
                continue;
            list_push(&c->held, &c->held_tail, m);
            c->nheld++;
            continue;
        }
        *err = client_wait(c, deadline, rings);
        if (*err)
            return NULL;
    }
}

static uint64_t next_req(struct pith_client *c)
{
    if (++c->seq == 0)
        ++c->seq;
    return ((uint64_t)REF_CLIENT_SHARD << REQ_SHARD_SHIFT) | ((uint64_t)ref_slot(c->ref) << 32) |
           c->seq;
}

/* What asks, spawns and calls share: enter (freeing the last message), push, await. */
static int call_common(struct pith_client *c, unsigned shard, lane_fn_t fn, void *arg,
                       const void *data, uint32_t len, uint64_t timeout_ns, struct amsg **answer)
{
    int err = client_enter_reading(c);
    if (err)
        return err;
    if (shard >= c->p->n) {
        producer_leave(c->p);
        return -EINVAL;
    }
    uint64_t deadline = deadline_of(timeout_ns);
    uint64_t req = next_req(c);
    uint64_t head[2] = {req, 0};
    err = lane_push(c->p, shard, fn, arg, LREC_REQ, head, sizeof(head), data, len,
                    time_left(deadline));
    if (err == -ESHUTDOWN)
        return err;
    if (err == 0) {
        c->st.sent++;
        *answer = await(c, req, deadline, &err);
        if (err == -ESHUTDOWN)
            return err;
    } else if (err == -EAGAIN || err == -ETIMEDOUT) {
        c->st.pushed_back++;
        err = -ETIMEDOUT;
    }
    producer_leave(c->p);
    return err;
}

int pith_client_spawn(pith_client_t *c, unsigned shard, const pith_actor_type_t *type, void *arg,
                      uint64_t timeout_ns, pith_ref_t *out)
{
    if (out != NULL)
        *out = PITH_REF_NONE;
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || type == NULL || timeout_ns == 0)
        return -EINVAL;
    struct amsg *m = NULL;
    int err = call_common(c, shard, client_lane_spawn, (void *)(uintptr_t)type, &arg, sizeof(arg),
                          timeout_ns, &m);
    if (err)
        return err;
    struct spawned sp;
    memcpy(&sp, m + 1, sizeof(sp));
    core_msg_free(m);
    c->st.received++;
    if (sp.err == 0 && out != NULL)
        *out = sp.ref;
    return sp.err;
}

int pith_client_call(pith_client_t *c, unsigned shard, pith_call_fn_t fn, void *arg,
                     uint64_t timeout_ns, void **result)
{
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || fn == NULL || timeout_ns == 0)
        return -EINVAL;
    char data[sizeof(fn) + sizeof(arg)];
    memcpy(data, &fn, sizeof(fn));
    memcpy(data + sizeof(fn), &arg, sizeof(arg));
    struct amsg *m = NULL;
    int err = call_common(c, shard, client_lane_call, NULL, data, sizeof(data), timeout_ns, &m);
    if (err)
        return err;
    if (result != NULL)
        memcpy(result, m + 1, sizeof(*result));
    core_msg_free(m);
    c->st.received++;
    return 0;
}

/* The end of a client's ask whose request went: its reply in *reply, or the reason it came
 * back undelivered, or -ETIMEDOUT; leaves the producer (unless the engine stopped). */
static int ask_await(struct pith_client *c, uint64_t req, uint64_t deadline, pith_msg_t *reply)
{
    int err = 0;
    struct amsg *m = await(c, req, deadline, &err);
    if (err == -ESHUTDOWN)
        return err;
    if (m != NULL) {
        if (m->type == PITH_MSG_UNDELIVERED &&
            (m->len & AMSG_LEN_MASK) == sizeof(pith_undelivered_t)) {
            const pith_undelivered_t *u = (const void *)(m + 1);
            err = u->reason;
            c->st.undelivered += u->count;
            core_msg_free(m);
        } else {
            hand_out(c, m, reply);
        }
    }
    producer_leave(c->p);
    return err;
}

int pith_client_ask(pith_client_t *c, pith_ref_t to, uint32_t type, const void *data, uint32_t len,
                    uint64_t timeout_ns, pith_msg_t *reply)
{
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || reply == NULL || timeout_ns == 0 || type >= PITH_MSG_RESERVED ||
        (data == NULL && len > 0) || len >= PITH_MSG_MAX)
        return -EINVAL;
    int err = client_enter_reading(c);
    if (err)
        return err;
    err = check_to(c, to);
    if (err) {
        producer_leave(c->p);
        return err;
    }
    uint64_t deadline = deadline_of(timeout_ns);
    uint64_t req = next_req(c);
    err = push_msg(c, to, type, 0, req, data, len, time_left(deadline));
    if (err == -ESHUTDOWN)
        return err;
    if (err) {
        producer_leave(c->p);
        return err == -EAGAIN ? -ETIMEDOUT : err;
    }
    return ask_await(c, req, deadline, reply);
}

/* ---- virtual actors (pith/vactor.h) ----
 * A client's message for a virtual actor is made whole here, trailer and all, and goes by
 * pointer through the lane to the key's directory shard (core_lane_vmsg): one lane per shard
 * keeps the client's messages to one virtual actor in order. */

/* A record for shard dst (lane_push's arguments): a try that does not wait, then, when the
 * lane is full, one that waits up to timeout_ns, or up to *deadline where deadline is not NULL
 * (a batch's); counted in the client's stats. more: not the last of a run to its shard. */
static int push_wait(struct pith_client *c, unsigned dst, lane_fn_t fn, void *arg, uint64_t aux,
                     const void *head, uint32_t hlen, const void *data, uint32_t len,
                     uint64_t timeout_ns, const uint64_t *deadline, bool more)
{
    int (*push)(struct producer *, unsigned, lane_fn_t, void *, uint64_t, const void *, uint32_t,
                const void *, uint32_t, uint64_t) = more ? lane_push_more : lane_push;
    int err = push(c->p, dst, fn, arg, aux, head, hlen, data, len, 0);
    if (err == -EAGAIN) {
        c->st.pushed_back++;
        if (timeout_ns != 0)
            err = push(c->p, dst, fn, arg, aux, head, hlen, data, len,
                       deadline != NULL ? time_left(*deadline) : timeout_ns);
    }
    if (err == 0)
        c->st.sent++;
    return err;
}

/* Pushes m for shard dst, waiting as push_wait; m is the lane's on success. */
static int push_vmsg(struct pith_client *c, unsigned dst, struct amsg *m, uint64_t timeout_ns,
                     const uint64_t *deadline, bool more)
{
    return push_wait(c, dst, core_lane_vmsg, NULL, 0, NULL, 0, &m, sizeof(m), timeout_ns, deadline,
                     more);
}

/* A small message goes whole in the lane record (core_lane_vmsg_inline): no message made here
 * and freed there; its bytes, then the key. Returns 1 when it does not fit (the caller sends it
 * by pointer). Waits as push_wait. */
static int push_vinline(struct pith_client *c, const pith_vref_t *to, unsigned dst, uint32_t type,
                        const void *data, uint32_t len, uint64_t timeout_ns,
                        const uint64_t *deadline, bool more)
{
    if (to->len > lane_max_len(c->p) || len > lane_max_len(c->p) - to->len)
        return 1;
    void *hash = (void *)(uintptr_t)to->hash;
    uint64_t aux =
        type | (uint64_t)to->len << VLREC_KLEN_SHIFT | (uint64_t)(to->tid - 1) << VLREC_TID_SHIFT;
    /* A first try that does not wait, inline (lane_push_quick), as push_msg_run's. */
    if (lane_push_quick(c->p, dst, core_lane_vmsg_inline, hash, aux, data, len, to->key, to->len,
                        more)) {
        c->st.sent++;
        return 0;
    }
    return push_wait(c, dst, core_lane_vmsg_inline, hash, aux, data, len, to->key, to->len,
                     timeout_ns, deadline, more);
}

/* One virtual message pushed to dst (to's directory shard), whole in the record or by pointer;
 * inside (-ESHUTDOWN: left). flag: AMSG_BUF (data is &buf: see client_vsend), only with more
 * false. */
static int push_v(struct pith_client *c, const pith_vref_t *to, unsigned dst, uint32_t type,
                  uint32_t flag, const void *data, uint32_t len, uint64_t timeout_ns,
                  const uint64_t *deadline, bool more)
{
    if (flag == 0 && type < PITH_MSG_RESERVED) {
        int err = push_vinline(c, to, dst, type, data, len, timeout_ns, deadline, more);
        if (err != 1)
            return err;
    }
    struct amsg *m = core_vmsg_make(-1, to, c->ref, type, data, len, flag);
    if (m == NULL)
        return -ENOMEM;
    int err = push_vmsg(c, dst, m, timeout_ns, deadline, more);
    if (err) {
        m->len &= ~AMSG_BUF; /* the caller keeps its buffer's reference */
        core_msg_free(m);
    }
    return err;
}

int client_vsend(struct pith_client *c, const pith_vref_t *to, uint32_t type, uint32_t flag,
                 const void *data, uint32_t len, uint64_t timeout_ns)
{
    int err = client_enter(c);
    if (err)
        return err;
    err =
        push_v(c, to, core_vref_shard(to, c->p->n), type, flag, data, len, timeout_ns, NULL, false);
    if (err != -ESHUTDOWN)
        producer_leave(c->p);
    return err;
}

int pith_client_vsend(pith_client_t *c, const pith_vref_t *to, uint32_t type, const void *data,
                      uint32_t len, uint64_t timeout_ns)
{
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || !core_vref_ok(to) || type >= PITH_MSG_RESERVED || (data == NULL && len > 0) ||
        len >= PITH_MSG_MAX)
        return -EINVAL;
    return client_vsend(c, to, type, 0, data, len, timeout_ns);
}

static int batch_vmsg(struct pith_client *c, const void *msgs, unsigned i, uint64_t timeout_ns,
                      const uint64_t *deadline, unsigned *dst)
{
    const pith_client_vmsg_t *m = (const pith_client_vmsg_t *)msgs + i;
    if (!core_vref_ok(m->to) || m->type >= PITH_MSG_RESERVED || (m->data == NULL && m->len > 0) ||
        m->len >= PITH_MSG_MAX)
        return -EINVAL;
    *dst = core_vref_shard(m->to, c->p->n);
    return push_v(c, m->to, *dst, m->type, 0, m->data, m->len, timeout_ns, deadline, true);
}

int pith_client_vsend_batch(pith_client_t *c, const pith_client_vmsg_t *msgs, unsigned n,
                            uint64_t timeout_ns)
{
    return client_batch(c, msgs, n, timeout_ns, batch_vmsg);
}

int pith_client_vask(pith_client_t *c, const pith_vref_t *to, uint32_t type, const void *data,
                     uint32_t len, uint64_t timeout_ns, pith_msg_t *reply)
{
    if (pith_shard_id() >= 0)
        return -EDEADLK;
    if (c == NULL || reply == NULL || timeout_ns == 0 || !core_vref_ok(to) ||
        type >= PITH_MSG_RESERVED || (data == NULL && len > 0) || len >= PITH_MSG_MAX)
        return -EINVAL;
    int err = client_enter_reading(c);
    if (err)
        return err;
    uint64_t deadline = deadline_of(timeout_ns);
    uint64_t req = next_req(c);
    struct amsg *m = core_vmsg_make(-1, to, c->ref, type, data, len, 0);
    if (m == NULL) {
        producer_leave(c->p);
        return -ENOMEM;
    }
    m->req = req;
    err = push_vmsg(c, core_vref_shard(to, c->p->n), m, time_left(deadline), NULL, false);
    if (err) {
        core_msg_free(m);
        if (err == -ESHUTDOWN)
            return err;
        producer_leave(c->p);
        return err == -EAGAIN ? -ETIMEDOUT : err;
    }
    return ask_await(c, req, deadline, reply);
}
