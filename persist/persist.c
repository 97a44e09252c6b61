/* Event-sourced virtual actors on each shard's journal: the index of the shard's keys (built by
 * reading the journal at first use), pith_persist and the acknowledgement that applies events,
 * recovery at activation, snapshots and compaction. Reminders are in reminder.c, replay in
 * replay.c, the directory's key in meta.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pith/engine.h>
#include <pith/mem.h>

#include "core.h"
#include "hooks.h"
#include "pst.h"
#include "vpersist.h"

#define PSHARDS_MAX      4096u
#define COMPACT_NS       (100ull * 1000 * 1000) /* compaction at most this often, but: */
#define COMPACT_GROWN_NS (5ull * 1000 * 1000)   /* when a segment was added since the last */
#define CARRY_SEGS       4u                     /* past this many segments, old records move on */
#define CARRY_BUDGET     256u                   /* records copied forward per compaction */
#define RETRY_NS         (1000ull * 1000)       /* a record the journal pushed back: tried again */
#define RETRY_MAX        (16u << 20) /* bytes waiting so, past which pith_persist refuses */

/* The shards' persistence, made at first use and freed when the engine is gone; readers off the
 * shards hold shard_reader_enter. Published with release (pshard_get), read with acquire. */
static _Atomic(struct pshard *) pshards[PSHARDS_MAX];

static void compact_soon(struct pshard *ps);

static uint64_t realtime_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---- the index ---- */

struct pstream *pstream_find(struct pshard *ps, uint64_t id, uint32_t tag, const void *key,
                             uint32_t klen)
{
    if (ps->nbuckets == 0)
        return NULL;
    for (struct pstream *st = ps->buckets[id & (ps->nbuckets - 1)]; st != NULL; st = st->next)
        if (st->id == id && st->tag == tag && st->klen == klen && memcmp(st->key, key, klen) == 0)
            return st;
    return NULL;
}

struct pstream *pstream_make(struct pshard *ps, uint64_t id, uint32_t tag, const void *key,
                             uint32_t klen)
{
    if (ps->nstreams >= ps->nbuckets) {
        uint32_t n = ps->nbuckets ? ps->nbuckets * 2 : 64;
        struct pstream **b = pith_calloc(n, sizeof(*b));
        if (b == NULL)
            return NULL;
        for (uint32_t i = 0; i < ps->nbuckets; i++)
            for (struct pstream *st = ps->buckets[i], *next; st != NULL; st = next) {
                next = st->next;
                st->next = b[st->id & (n - 1)];
                b[st->id & (n - 1)] = st;
            }
        pith_free(ps->buckets);
        ps->buckets = b;
        ps->nbuckets = n;
    }
    struct pstream *st = pith_calloc(1, sizeof(*st) + klen);
    if (st == NULL)
        return NULL;
    st->id = id;
    st->tag = tag;
    st->klen = (uint16_t)klen;
    st->next_n = 1;
    st->live = st->waiting = PITH_REF_NONE;
    memcpy(st->key, key, klen);
    st->next = ps->buckets[id & (ps->nbuckets - 1)];
    ps->buckets[id & (ps->nbuckets - 1)] = st;
    ps->nstreams++;
    pst_bump(&ps->st_keys, 1);
    return st;
}

/* A key's records stay sorted by what they cover: n, an event record before a snapshot of the
 * same n. Records come mostly in that order; a copy that compaction made while a newer snapshot
 * was on its way (or one read back after the original left) may come later than newer ones. */
static inline bool rec_before(const struct ploc *a, uint64_t n, bool snap)
{
    return a->n < n || (a->n == n && !a->snap && snap);
}

/* Enters r in its place: 0; 1 when a record of the same n and kind was there (its copy: r
 * replaces it); -ENOMEM. */
static int rec_push(struct pstream *st, const struct ploc *r)
{
    uint32_t lo = 0, hi = st->nrecs;
    if (hi > 0 && rec_before(&st->recs[hi - 1], r->n, r->snap)) {
        lo = hi; /* the usual case: after the last */
    } else {
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (rec_before(&st->recs[mid], r->n, r->snap))
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < st->nrecs && st->recs[lo].n == r->n && st->recs[lo].snap == r->snap) {
            st->recs[lo].seq = r->seq;
            st->recs[lo].loc = r->loc;
            st->recs[lo].len = r->len;
            return 1;
        }
    }
    if (st->nrecs == st->cap) {
        uint32_t cap = st->cap ? st->cap * 2 : 4;
        struct ploc *v = pith_realloc(st->recs, cap * sizeof(*v));
        if (v == NULL)
            return -ENOMEM;
        st->recs = v;
        st->cap = cap;
    }
    memmove(&st->recs[lo + 1], &st->recs[lo], (st->nrecs - lo) * sizeof(*r));
    st->recs[lo] = *r;
    st->nrecs++;
    if (r->snap)
        st->nsnaps++;
    return 0;
}

/* Keeps the last `keep` snapshots and the records after the oldest of them. */
static void rec_trim(struct pstream *st, uint32_t keep)
{
    if (st->nsnaps <= keep)
        return;
    uint32_t skip = st->nsnaps - keep + 1, k0 = 0;
    for (; k0 < st->nrecs; k0++)
        if (st->recs[k0].snap && --skip == 0)
            break; /* the oldest kept snapshot */
    uint32_t dropped = 0;
    for (uint32_t k = 0; k < k0; k++)
        dropped += st->recs[k].snap;
    memmove(st->recs, &st->recs[k0], (st->nrecs - k0) * sizeof(*st->recs));
    st->nrecs -= k0;
    st->nsnaps -= dropped;
}

uint32_t pst_keep(const pith_vtype_t *vt)
{
    return vt != NULL && vt->persist->keep > 0 ? vt->persist->keep : 1;
}

unsigned char *pst_payload(const struct pstream *st, uint32_t count, uint64_t first,
                           const void *body, uint32_t blen, uint32_t *len)
{
    uint32_t kpad = (uint32_t)JALIGN(st->klen);
    *len = (uint32_t)sizeof(struct phdr) + kpad + blen;
    unsigned char *p = pith_calloc(1, *len);
    if (p == NULL)
        return NULL;
    struct phdr h = {
        .tag = st->tag, .count = count, .first = first, .time_ns = realtime_ns(), .klen = st->klen};
    memcpy(p, &h, sizeof(h));
    memcpy(p + sizeof(h), st->key, st->klen);
    if (blen > 0)
        memcpy(p + sizeof(h) + kpad, body, blen);
    return p;
}

/* A record's persist header and key, checked. */
static bool parse(const pith_journal_rec_t *rec, const struct phdr **h, const unsigned char **key,
                  const unsigned char **body, uint32_t *blen)
{
    if (rec->len < sizeof(struct phdr))
        return false;
    *h = rec->data;
    uint32_t kpad = (uint32_t)JALIGN((*h)->klen);
    if ((*h)->klen > PITH_VKEY_MAX || rec->len < sizeof(struct phdr) + kpad)
        return false;
    *key = (const unsigned char *)rec->data + sizeof(struct phdr);
    *body = *key + kpad;
    *blen = rec->len - (uint32_t)sizeof(struct phdr) - kpad;
    return true;
}

int pst_read(struct pshard *ps, const struct ploc *r, pith_journal_rec_t *rec,
             const struct phdr **h, const unsigned char **body, uint32_t *blen)
{
    int err = log_read(&r->loc, rec, &ps->rbuf, &ps->rcap);
    if (err)
        return err == -ENOENT ? -EIO : err;
    const unsigned char *key;
    if (rec->seq != r->seq || !parse(rec, h, &key, body, blen))
        return -EIO;
    return 0;
}

/* Building the index: each record of the journal, in order. */
static int index_rec(const pith_journal_rec_t *rec, const struct log_loc *loc, void *ctx)
{
    struct pshard *ps = ctx;
    if (rec->type != PT_EVENTS && rec->type != PT_SNAP && rec->type != PT_REMIND)
        return 0;
    const struct phdr *h;
    const unsigned char *key, *body;
    uint32_t blen;
    if (!parse(rec, &h, &key, &body, &blen))
        return 0; /* not ours to understand: left alone */
    struct pstream *st = pstream_find(ps, rec->stream, h->tag, key, h->klen);
    if (st == NULL && (st = pstream_make(ps, rec->stream, h->tag, key, h->klen)) == NULL)
        return -ENOMEM;
    if (rec->type == PT_REMIND) {
        struct prem_rec r;
        if (blen < sizeof(r))
            return 0;
        memcpy(&r, body, sizeof(r));
        return prem_index(ps, st, &r, rec, loc);
    }
    bool snap = rec->type == PT_SNAP;
    uint64_t n = snap ? h->first : h->first + h->count - 1;
    if (!snap && h->count == 0)
        return 0;
    struct ploc r = {.seq = rec->seq,
                     .n = n,
                     .loc = *loc,
                     .len = (uint32_t)(sizeof(struct jhdr) + rec->len),
                     .snap = snap};
    int pushed = rec_push(st, &r); /* a copy replaces its original */
    if (pushed < 0)
        return -ENOMEM;
    if (pushed == 1)
        return 0;
    if (n > st->n)
        st->n = n;
    st->next_n = st->n + 1;
    if (snap)
        st->since_snap = n < st->n ? st->n - n : 0;
    else
        st->since_snap += h->count;
    return 0;
}

static void pshard_free_streams(struct pshard *ps)
{
    for (uint32_t i = 0; i < ps->nbuckets; i++)
        for (struct pstream *st = ps->buckets[i], *next; st != NULL; st = next) {
            next = st->next;
            prem_free_all(st);
            pith_free(st->recs);
            pith_free(st);
        }
    pith_free(ps->buckets);
    ps->buckets = NULL;
    ps->nbuckets = 0;
    ps->nstreams = 0;
    pith_free(ps->rbuf);
    ps->rbuf = NULL;
    ps->rcap = 0;
}

int pshard_get(struct pshard **out)
{
    int id = pith_shard_id();
    if (id < 0 || (unsigned)id >= PSHARDS_MAX)
        return -EPERM;
    struct pshard *ps = atomic_load_explicit(&pshards[id], memory_order_relaxed);
    if (ps == NULL) {
        if (shard_engine_stopping())
            return -ESHUTDOWN;
        const unsigned char *key;
        int err = pmeta_key(&key);
        if (err)
            return err;
        err = log_open();
        if (err)
            return err;
        ps = calloc(1, sizeof(*ps)); /* plain memory: freed off the shards at the end */
        if (ps == NULL)
            return -ENOMEM;
        ps->shard = (unsigned)id;
        uint64_t segs;
        err = log_limits(&ps->append_max, &segs);
        if (err == 0)
            err = log_scan(1, index_rec, ps);
        if (err) {
            pshard_free_streams(ps);
            free(ps);
            set_last_error("persist: reading the journal back: %s", strerror(-err));
            return err == -ENOMEM ? -ENOMEM : -EIO;
        }
        ps->compact_ns = pith_now_ns();
        /* Release: a reader off the shard that sees the pointer sees the fields set above. */
        atomic_store_explicit(&pshards[id], ps, memory_order_release);
        prem_arm_all(ps);
    }
    if (ps->err)
        return ps->err;
    *out = ps;
    return 0;
}

const pith_vtype_t *pst_type_of_tag(uint32_t tag)
{
    for (uint32_t i = 0;; i++) {
        const pith_vtype_t *vt = vactor_type_at(i);
        if (vt == NULL)
            return NULL;
        if (vt->persist != NULL && pmeta_tag(vt) == tag)
            return vt;
    }
}

/* The calling activation's key in the index (made if new). */
static int stream_of(const pith_actor_t *self, const pith_vtype_t *vt, struct pshard **ps_out,
                     struct pstream **out)
{
    struct pshard *ps;
    int err = pshard_get(&ps);
    if (err)
        return err;
    const unsigned char *mk;
    if ((err = pmeta_key(&mk)) != 0)
        return err;
    uint32_t klen;
    const void *key = pith_vactor_key(self, &klen);
    uint64_t id = pmeta_stream(mk, vt, key, klen);
    uint32_t tag = pmeta_tag(vt);
    struct pstream *st = pstream_find(ps, id, tag, key, klen);
    if (st == NULL && (st = pstream_make(ps, id, tag, key, klen)) == NULL)
        return -ENOMEM;
    st->vt = vt;
    *ps_out = ps;
    *out = st;
    return 0;
}

/* ---- running the application's code as the actor, outside its turn ---- */

struct as_actor {
    struct actor *a;
    pith_ref_t outer;
    bool was_running; /* inside its own turn already (a failure at a message's end) */
    struct pith_actor self;
};

static bool actor_enter(pith_ref_t ref, struct as_actor *x)
{
    struct core_shard *cs = core_self;
    x->a = cs != NULL && ref != PITH_REF_NONE ? core_find(cs, ref) : NULL;
    if (x->a == NULL)
        return false;
    x->self = (struct pith_actor){x->a, ref};
    x->outer = core_current;
    x->was_running = (x->a->gen & A_RUNNING) != 0;
    core_current = ref;
    x->a->gen |= A_RUNNING;
    return true;
}

static void actor_leave(struct as_actor *x)
{
    struct core_shard *cs = core_self;
    core_current = x->outer;
    struct actor *a = core_find(cs, x->self.ref);
    if (a != NULL && !x->was_running) {
        a->gen &= ~A_RUNNING;
        /* A pith_stop(self) from the callback: no turn follows to act on it. */
        if (a->gen & A_STOP)
            (void)core_end_now(cs, x->self.ref,
                               (int)(intptr_t)map_get(&cs->stop_reasons, x->self.ref));
    }
    /* Events persisted from here go out now, not with some later message. */
    if (!x->was_running && core_msg_done != NULL) {
        void (*fn)(void) = core_msg_done;
        core_msg_done = NULL;
        fn();
    }
}

/* ---- snapshots ---- */

struct snap_op {
    struct pshard *ps;
    struct pstream *st;
    uint64_t n;
    struct log_loc loc;
    uint32_t len;
};

static void snap_done(int err, uint64_t seq, void *ctx);

/* Takes a snapshot of st's live state (holding st->n events) now. */
static void snapshot_take(struct pshard *ps, struct pstream *st, const void *state)
{
    const pith_persist_type_t *pt = st->vt->persist;
    if (pt->snapshot == NULL)
        return;
    st->since_snap = 0;
    st->snap_ns = pith_now_ns();
    uint32_t room = ps->append_max - (uint32_t)sizeof(struct phdr) - (uint32_t)JALIGN(st->klen);
    uint32_t cap = 1024;
    unsigned char *buf = NULL;
    uint32_t need = 0;
    for (int pass = 0; pass < 2; pass++) {
        unsigned char *b = pith_realloc(buf, cap);
        if (b == NULL)
            break;
        buf = b;
        need = pt->snapshot(state, buf, cap);
        if (need <= cap || need > room)
            break;
        cap = need;
    }
    struct snap_op *op = NULL;
    uint32_t len = 0;
    unsigned char *p = buf != NULL && need <= cap && need <= room
                           ? pst_payload(st, 0, st->n, buf, need, &len)
                           : NULL;
    pith_free(buf);
    if (p != NULL && (op = pith_malloc(sizeof(*op))) != NULL) {
        *op = (struct snap_op){
            .ps = ps, .st = st, .n = st->n, .len = (uint32_t)sizeof(struct jhdr) + len};
        if (log_append(st->id, PT_SNAP, p, len, snap_done, op, NULL, &op->loc) == 0) {
            st->snap_inflight++;
            pith_free(p);
            return;
        }
    }
    pith_free(p);
    pith_free(op);
    pst_bump(&ps->st_snap_failed, 1);
}

static void snap_done(int err, uint64_t seq, void *ctx)
{
    struct snap_op *op = ctx;
    struct pstream *st = op->st;
    struct pshard *ps = op->ps;
    st->snap_inflight--;
    if (err == 0) {
        struct ploc r = {.seq = seq, .n = op->n, .loc = op->loc, .len = op->len, .snap = true};
        if (rec_push(st, &r) >= 0) {
            rec_trim(st, pst_keep(st->vt));
            pst_bump(&ps->st_snaps, 1);
        } else {
            pst_bump(&ps->st_snap_failed, 1);
        }
        compact_soon(ps);
    } else {
        pst_bump(&ps->st_snap_failed, 1);
    }
    pith_free(op);
}

/* After events were applied to the live state: a snapshot if the policy asks for one. */
static void snapshot_maybe(struct pshard *ps, struct pstream *st, const void *state)
{
    const pith_persist_type_t *pt = st->vt->persist;
    if (pt->snapshot == NULL || st->since_snap == 0)
        return;
    if ((pt->snapshot_every > 0 && st->since_snap >= pt->snapshot_every) ||
        (pt->snapshot_every_ns > 0 && pith_now_ns() - st->snap_ns >= pt->snapshot_every_ns))
        snapshot_take(ps, st, state);
}

/* ---- events ---- */

static void batch_free(struct pbatch *b)
{
    pith_free(b->buf);
    pith_free(b->cbs);
    pith_free(b);
}

/* Each event's done, with err (the events were not applied), as the actor if it lives. */
static void batch_fail(struct pshard *ps, struct pbatch *b, int err)
{
    pst_bump(&ps->st_failed, b->count);
    struct as_actor x;
    bool in = actor_enter(b->act, &x);
    for (uint32_t i = 0; i < b->count; i++)
        if (b->cbs[i].fn != NULL)
            b->cbs[i].fn(in ? &x.self : NULL, in ? x.a->state : NULL, err, b->cbs[i].ctx);
    if (in)
        actor_leave(&x);
    if (b->muted)
        (void)core_mute_hold(core_self, b->act, false);
}

struct batch_op {
    struct pshard *ps;
    struct pbatch *b;
    struct log_loc loc;
    uint64_t first;
};

/* A message's events are durable (or not): applied to the live state, then each done. */
static void batch_done(int err, uint64_t seq, void *ctx)
{
    struct batch_op *op = ctx;
    struct pshard *ps = op->ps;
    struct pbatch *b = op->b;
    struct pstream *st = b->st;
    st->inflight--;
    if (err != 0) {
        batch_fail(ps, b, err);
    } else {
        uint64_t last = op->first + b->count - 1;
        struct ploc r = {
            .seq = seq, .n = last, .loc = op->loc, .len = (uint32_t)sizeof(struct jhdr) + b->len};
        if (rec_push(st, &r) < 0) {
            /* Durable but not indexed: this run's activations would not see it. Fail the
             * shard's persistence rather than let a later activation lose it. */
            ps->err = -ENOMEM;
        }
        st->n = last;
        st->since_snap += b->count;
        pst_bump(&ps->st_events, b->count);
        pst_bump(&ps->st_records, 1);
        struct as_actor x;
        bool in = st->live == b->act && actor_enter(b->act, &x);
        const pith_persist_type_t *pt = st->vt->persist;
        const unsigned char *p = b->buf + sizeof(struct phdr) + JALIGN(st->klen);
        for (uint32_t i = 0; i < b->count; i++) {
            uint32_t len;
            memcpy(&len, p, 4);
            if (in)
                pt->apply(x.a->state, p + PEV_HDR, len);
            p += PEV_HDR + JALIGN(len);
            if (b->cbs[i].fn != NULL)
                b->cbs[i].fn(in ? &x.self : NULL, in ? x.a->state : NULL, 0, b->cbs[i].ctx);
            if (in && core_find(core_self, b->act) == NULL)
                in = false; /* it ended from a done: the rest run without it */
        }
        if (in) {
            snapshot_maybe(ps, st, x.a->state);
            actor_leave(&x);
        }
        if (b->muted)
            (void)core_mute_hold(core_self, b->act, false);
    }
    batch_free(b);
    pith_free(op);
    pst_waiting_go(ps, st);
}

static void retry_tick(void *arg);

/* Appends b's record: 0, or the journal's error. */
static int batch_append(struct pshard *ps, struct pbatch *b)
{
    struct pstream *st = b->st;
    struct phdr h;
    memcpy(&h, b->buf, sizeof(h));
    h.count = b->count;
    h.first = st->next_n;
    memcpy(b->buf, &h, sizeof(h));
    struct batch_op *op = pith_malloc(sizeof(*op));
    if (op == NULL)
        return -ENOMEM;
    *op = (struct batch_op){.ps = ps, .b = b, .first = h.first};
    int err = log_append(st->id, PT_EVENTS, b->buf, b->len, batch_done, op, NULL, &op->loc);
    if (err) {
        pith_free(op);
        return err;
    }
    st->next_n += b->count;
    return 0;
}

/* A record the journal could not take yet (its queue is full, or its next segment is still
 * being made) waits, with those after it, in order, and is tried again shortly. */
static void batch_retry_later(struct pshard *ps, struct pbatch *b)
{
    b->next = NULL;
    if (ps->retry_tail != NULL)
        ps->retry_tail->next = b;
    else
        ps->retry_head = b;
    ps->retry_tail = b;
    ps->retry_bytes += b->len;
    if (!ps->retry_armed && pith_timer_add(RETRY_NS, 0, retry_tick, ps, &ps->retry_timer) == 0)
        ps->retry_armed = true;
}

static void batch_give_up(struct pshard *ps, struct pbatch *b, int err)
{
    b->st->inflight--;
    batch_fail(ps, b, err);
    struct pstream *st = b->st;
    batch_free(b);
    pst_waiting_go(ps, st);
}

static void retry_tick(void *arg)
{
    struct pshard *ps = arg;
    ps->retry_armed = false;
    while (ps->retry_head != NULL) {
        struct pbatch *b = ps->retry_head;
        int err = batch_append(ps, b);
        if (err == -EAGAIN)
            break;
        ps->retry_head = b->next;
        if (ps->retry_head == NULL)
            ps->retry_tail = NULL;
        ps->retry_bytes -= b->len;
        if (err)
            batch_give_up(ps, b, err);
    }
    if (ps->retry_head != NULL && !ps->retry_armed &&
        pith_timer_add(RETRY_NS, 0, retry_tick, ps, &ps->retry_timer) == 0)
        ps->retry_armed = true;
}

/* The message has ended: its events go to the journal as one record. */
static void batch_flush(void)
{
    int id = pith_shard_id();
    struct pshard *ps = id >= 0 && (unsigned)id < PSHARDS_MAX
                            ? atomic_load_explicit(&pshards[id], memory_order_relaxed)
                            : NULL;
    if (ps == NULL || ps->open == NULL)
        return;
    struct pbatch *b = ps->open;
    ps->open = NULL;
    if (b->count == 0) {
        /* Nothing came of it (memory ran out after it was opened). */
        if (b->muted)
            (void)core_mute_hold(core_self, b->act, false);
        batch_free(b);
        return;
    }
    b->st->inflight++; /* from here until its outcome: an activation of the key waits */
    int err = ps->retry_head != NULL ? -EAGAIN : batch_append(ps, b);
    if (err == -EAGAIN)
        batch_retry_later(ps, b);
    else if (err)
        batch_give_up(ps, b, err);
}

static int persist(pith_actor_t *self, const void *event, uint32_t len, pith_persisted_fn_t done,
                   void *ctx, bool sync)
{
    const pith_vtype_t *vt = vactor_type_of(self);
    if (vt == NULL || vt->persist == NULL || (event == NULL && len > 0))
        return -EINVAL;
    if (pith_self(self) != core_current)
        return -EPERM;
    struct pshard *ps;
    struct pstream *st;
    int err = stream_of(self, vt, &ps, &st);
    if (err)
        return err;
    if (ps->retry_bytes > RETRY_MAX)
        return -EAGAIN; /* the journal pushes back, and this much already waits for it */
    if (ps->open != NULL && ps->open->st != st)
        batch_flush(); /* another key's (it cannot be, inside one behaviour; but safe) */
    struct pbatch *b = ps->open;
    uint32_t base = b != NULL ? b->len : (uint32_t)(sizeof(struct phdr) + JALIGN(st->klen));
    uint32_t room = (uint32_t)(PEV_HDR + JALIGN(len));
    if (len > ps->append_max || (uint64_t)base + room > ps->append_max)
        return -EINVAL;
    if (b == NULL) {
        b = pith_calloc(1, sizeof(*b));
        if (b == NULL)
            return -ENOMEM;
        b->st = st;
        b->act = pith_self(self);
        b->buf = pst_payload(st, 0, 0, NULL, 0, &b->len);
        b->cap = b->len;
        if (b->buf == NULL) {
            pith_free(b);
            return -ENOMEM;
        }
        ps->open = b;
    }
    if (b->len + room > b->cap) {
        uint32_t cap = b->cap * 2 > b->len + room ? b->cap * 2 : b->len + room;
        unsigned char *nb = pith_realloc(b->buf, cap);
        if (nb == NULL)
            return -ENOMEM;
        b->buf = nb;
        b->cap = cap;
    }
    if (b->count == b->cbcap) {
        uint32_t cap = b->cbcap ? b->cbcap * 2 : 4;
        struct pcb *cbs = pith_realloc(b->cbs, cap * sizeof(*cbs));
        if (cbs == NULL)
            return -ENOMEM;
        b->cbs = cbs;
        b->cbcap = cap;
    }
    if (sync && !b->muted) {
        if (core_mute_hold(core_self, b->act, true) != 0)
            return -ENOMEM;
        b->muted = true;
    }
    memset(b->buf + b->len, 0, room);
    memcpy(b->buf + b->len, &len, 4);
    if (len > 0)
        memcpy(b->buf + b->len + PEV_HDR, event, len);
    b->len += room;
    b->cbs[b->count++] = (struct pcb){done, ctx};
    core_msg_done = batch_flush;
    shard_flush_ask(); /* the shard's flush hook catches a message that ends outside a turn */
    return 0;
}

int pith_persist(pith_actor_t *self, const void *event, uint32_t len, pith_persisted_fn_t done,
                 void *ctx)
{
    return persist(self, event, len, done, ctx, true);
}

int pith_persist_async(pith_actor_t *self, const void *event, uint32_t len,
                       pith_persisted_fn_t done, void *ctx)
{
    return persist(self, event, len, done, ctx, false);
}

uint64_t pith_persist_events(const pith_actor_t *self)
{
    const pith_vtype_t *vt = vactor_type_of(self);
    struct pshard *ps;
    struct pstream *st;
    if (vt == NULL || vt->persist == NULL || stream_of(self, vt, &ps, &st) != 0)
        return 0;
    return st->n;
}

/* ---- activation ---- */

static unsigned hook_home(const pith_vtype_t *vt, const unsigned char *key, uint32_t klen,
                          unsigned shards)
{
    const unsigned char *mk;
    if (pmeta_key(&mk) != 0)
        return UINT32_MAX; /* the activation fails where it is, saying why */
    return pmeta_jump(pmeta_stream(mk, vt, key, klen), shards);
}

/* An activation's recovery: its key's latest snapshot and the event records after it, read on
 * the ring while its messages wait, then restored and applied. */
struct recov {
    struct pshard *ps;
    struct pstream *st;
    pith_ref_t act;
    uint32_t n;
    bool snap;     /* rds[0] is a snapshot */
    bool starting; /* log_read_many has not returned yet */
    bool finished; /* it ended while starting: err */
    int err;
    struct log_rd *rds;
    unsigned char *buf;
};

static void recov_free(struct recov *rc)
{
    pith_free(rc->rds);
    pith_free(rc->buf);
    pith_free(rc);
}

/* Restores and applies what was read into the activation's state. */
static int recov_apply(struct recov *rc, void *state)
{
    struct pstream *st = rc->st;
    struct pshard *ps = rc->ps;
    const pith_persist_type_t *pt = st->vt->persist;
    uint64_t applied = 0;
    for (uint32_t i = 0; i < rc->n; i++) {
        struct jhdr jh;
        memcpy(&jh, rc->buf + rc->rds[i].at, sizeof(jh));
        pith_journal_rec_t rec = {.seq = jh.seq,
                                  .stream = jh.stream,
                                  .type = jh.type,
                                  .len = jh.len,
                                  .data = rc->buf + rc->rds[i].at + sizeof(jh)};
        const struct phdr *h;
        const unsigned char *key, *body;
        uint32_t blen;
        if (!parse(&rec, &h, &key, &body, &blen))
            return -EIO;
        if (i == 0 && rc->snap) {
            if (pt->restore == NULL || jh.type != PT_SNAP)
                return -EIO;
            int err = pt->restore(state, body, blen);
            if (err)
                return err < 0 ? err : -EINVAL;
            applied = h->first;
            pst_bump(&ps->st_restored, 1);
            continue;
        }
        bool stop = false;
        int err = pst_apply_events(ps, pt, state, body, blen, h->first, h->count, UINT64_MAX,
                                   PITH_REPLAY_EVENT, &applied, &stop);
        if (err)
            return err == -ENODATA ? -EIO : err; /* what the index says is there is not */
    }
    return applied == st->n ? 0 : -EIO;
}

static void recov_done(int err, void *ctx)
{
    struct recov *rc = ctx;
    if (rc->starting) {
        rc->finished = true;
        rc->err = err;
        return;
    }
    rc->st->recovering = false;
    struct actor *a = core_self != NULL ? core_find(core_self, rc->act) : NULL;
    if (a != NULL) {
        if (err == 0)
            err = recov_apply(rc, a->state);
        pst_bump(&rc->ps->st_recoveries, 1);
        if (err && rc->st->live == rc->act)
            rc->st->live = PITH_REF_NONE;
    }
    pith_ref_t act = rc->act;
    recov_free(rc);
    if (a != NULL)
        vactor_persist_ready(act, err);
}

/* Starts act's recovery: 0 nothing to read (or read and applied at once), PITH_VACT_LATER
 * (recov_done finishes it), or a negative errno. */
static int recover_start(struct pshard *ps, struct pstream *st, pith_ref_t act, void *state)
{
    int si = -1;
    for (uint32_t i = st->nrecs; i-- > 0;)
        if (st->recs[i].snap) {
            si = (int)i;
            break;
        }
    uint64_t base = si >= 0 ? st->recs[si].n : 0;
    uint32_t n = si >= 0 ? 1 : 0;
    /* Each record at an 8-byte boundary of the buffer, as the headers want. */
    uint64_t bytes = si >= 0 ? JALIGN(st->recs[si].len) : 0;
    for (uint32_t i = 0; i < st->nrecs; i++)
        if (!st->recs[i].snap && st->recs[i].n > base) {
            n++;
            bytes += JALIGN(st->recs[i].len);
        }
    if (n == 0)
        return 0;
    if (bytes > UINT32_MAX)
        return -ENOMEM;
    struct recov *rc = pith_calloc(1, sizeof(*rc));
    if (rc == NULL)
        return -ENOMEM;
    *rc = (struct recov){.ps = ps, .st = st, .act = act, .n = n, .snap = si >= 0, .starting = true};
    rc->rds = pith_malloc(n * sizeof(*rc->rds));
    rc->buf = pith_malloc(bytes);
    if (rc->rds == NULL || rc->buf == NULL) {
        recov_free(rc);
        return -ENOMEM;
    }
    uint32_t k = 0, at = 0;
    if (si >= 0) {
        const struct ploc *r = &st->recs[si];
        rc->rds[k++] = (struct log_rd){r->loc, r->len, at, r->seq};
        at += (uint32_t)JALIGN(r->len);
    }
    for (uint32_t i = 0; i < st->nrecs; i++) {
        const struct ploc *r = &st->recs[i];
        if (r->snap || r->n <= base)
            continue;
        rc->rds[k++] = (struct log_rd){r->loc, r->len, at, r->seq};
        at += (uint32_t)JALIGN(r->len);
    }
    int err = log_read_many(rc->rds, n, rc->buf, recov_done, rc);
    if (err) {
        recov_free(rc);
        return err;
    }
    rc->starting = false;
    if (!rc->finished) {
        st->recovering = true; /* its state is not whole until recov_done */
        return PITH_VACT_LATER;
    }
    /* Every read ended before log_read_many returned (it could not queue them all). */
    err = rc->err == 0 ? recov_apply(rc, state) : rc->err;
    pst_bump(&ps->st_recoveries, 1);
    recov_free(rc);
    return err;
}

static int hook_activate(pith_actor_t *self, void *state, const pith_vtype_t *vt, const void *key,
                         uint32_t klen)
{
    (void)key;
    (void)klen;
    struct pshard *ps;
    struct pstream *st;
    int err = stream_of(self, vt, &ps, &st);
    if (err)
        return err;
    st->live = pith_self(self);
    st->snap_ns = pith_now_ns();
    rec_trim(st, pst_keep(vt));
    if (st->inflight > 0) {
        /* An earlier activation's events are still on their way: this one waits for them. */
        st->waiting = st->live;
        return PITH_VACT_LATER;
    }
    err = recover_start(ps, st, st->live, state);
    if (err < 0)
        st->live = PITH_REF_NONE;
    return err;
}

/* An activation that waits for its key's records: once none is on its way, it recovers. */
void pst_waiting_go(struct pshard *ps, struct pstream *st)
{
    if (st->waiting == PITH_REF_NONE || st->inflight > 0)
        return;
    pith_ref_t act = st->waiting;
    st->waiting = PITH_REF_NONE;
    struct actor *a = core_find(core_self, act);
    if (a == NULL)
        return;
    int err = recover_start(ps, st, act, a->state);
    if (err == PITH_VACT_LATER)
        return;
    if (err)
        st->live = PITH_REF_NONE;
    vactor_persist_ready(act, err);
}

static void hook_ended(pith_actor_t *self, void *state, const pith_vtype_t *vt, int why,
                       bool active)
{
    (void)why;
    struct pshard *ps;
    if (pshard_get(&ps) != 0)
        return;
    const unsigned char *mk;
    if (pmeta_key(&mk) != 0)
        return;
    uint32_t klen;
    const void *key = pith_vactor_key(self, &klen);
    struct pstream *st =
        pstream_find(ps, pmeta_stream(mk, vt, key, klen), pmeta_tag(vt), key, klen);
    if (st == NULL || st->live != pith_self(self))
        return;
    if (ps->open != NULL && ps->open->st == st)
        batch_flush();
    if (active && (vt->persist->flags & PITH_SNAPSHOT_ON_DEACTIVATE) && st->since_snap > 0)
        snapshot_take(ps, st, state);
    st->live = PITH_REF_NONE;
    if (st->waiting == pith_self(self))
        st->waiting = PITH_REF_NONE;
}

/* ---- compaction ---- */

struct carry_op {
    struct pshard *ps;
    struct pstream *st;
    uint64_t old_seq;
    struct log_loc loc;
};

static void carry_done(int err, uint64_t seq, void *ctx)
{
    struct carry_op *op = ctx;
    struct pstream *st = op->st;
    for (uint32_t i = 0; i < st->nrecs; i++) {
        struct ploc *r = &st->recs[i];
        if (r->seq != op->old_seq)
            continue;
        r->carrying = false;
        if (err == 0) {
            r->seq = seq;
            r->loc = op->loc;
            pst_bump(&op->ps->st_carried, 1);
        }
        break;
    }
    compact_soon(op->ps);
    pith_free(op);
}

/* Copies st's records up to seq `upto` to the journal's end. */
static unsigned carry(struct pshard *ps, struct pstream *st, uint64_t upto, unsigned budget)
{
    unsigned done = 0;
    if (st->snap_inflight > 0)
        return 0; /* a newer snapshot is on its way: a copy of an older one could outlive it */
    for (uint32_t i = 0; i < st->nrecs && done < budget; i++) {
        struct ploc *r = &st->recs[i];
        if (r->seq > upto || r->carrying)
            continue;
        pith_journal_rec_t rec;
        const struct phdr *h;
        const unsigned char *body;
        uint32_t blen;
        struct carry_op *op = pith_malloc(sizeof(*op));
        if (op == NULL || pst_read(ps, r, &rec, &h, &body, &blen) != 0) {
            pith_free(op);
            return done;
        }
        *op = (struct carry_op){.ps = ps, .st = st, .old_seq = r->seq};
        if (log_append(st->id, rec.type, rec.data, rec.len, carry_done, op, NULL, &op->loc) != 0) {
            pith_free(op);
            return budget; /* the journal pushes back: next time */
        }
        r->carrying = true;
        done++;
    }
    return done;
}

static void compact(struct pshard *ps);

static void compact_tick(void *arg)
{
    struct pshard *ps = arg;
    ps->compact_armed = false;
    compact(ps);
}

/* A compaction once COMPACT_NS has passed since the last (it walks every key of the shard),
 * or COMPACT_GROWN_NS when the journal has grown by a segment since: so that a burst of writes
 * does not outrun it by more than a segment or so. */
static void compact_soon(struct pshard *ps)
{
    uint32_t amax;
    uint64_t segs = 0;
    (void)log_limits(&amax, &segs);
    bool grown = segs > ps->compact_segs;
    if (ps->compact_armed && (ps->compact_soon || !grown))
        return;
    uint64_t gap = grown ? COMPACT_GROWN_NS : COMPACT_NS;
    uint64_t since = pith_now_ns() - ps->compact_ns;
    if (ps->compact_armed) /* armed for later: sooner now */
        (void)pith_timer_cancel(ps->compact_timer);
    ps->compact_armed = pith_timer_add(since >= gap ? 0 : gap - since, 0, compact_tick, ps,
                                       &ps->compact_timer) == 0;
    ps->compact_soon = grown;
}

/* Lets go of the segments no key needs: the oldest record any key needs bounds them. When the
 * journal holds many segments, keys whose records pin the oldest copy them forward. */
static void compact(struct pshard *ps)
{
    ps->compact_ns = pith_now_ns();
    pith_journal_stats_t js;
    if (pith_journal_stats(ps->shard, &js) != 0 || !js.open)
        return;
    uint64_t floor = js.durable_seq + 1;
    for (uint32_t i = 0; i < ps->nbuckets; i++)
        for (struct pstream *st = ps->buckets[i]; st != NULL; st = st->next) {
            for (uint32_t k = 0; k < st->nrecs; k++)
                if (st->recs[k].seq < floor)
                    floor = st->recs[k].seq;
            for (struct prem *m = st->rems; m != NULL; m = m->next)
                if (!m->cancelled && m->seq < floor)
                    floor = m->seq; /* a cancel's record outlives the sets before it anyway */
        }
    (void)log_release_engine(floor - 1);
    uint32_t amax;
    uint64_t segs;
    if (log_limits(&amax, &segs) != 0)
        return;
    ps->compact_segs = segs;
    if (segs <= CARRY_SEGS)
        return;
    /* Records in the oldest segments (the first half of the journal's sequence range held):
     * their keys copy them forward, a bounded number per round. */
    uint64_t upto = floor + (js.durable_seq - floor) / (segs > 0 ? segs : 1);
    unsigned budget = CARRY_BUDGET;
    for (uint32_t i = 0; i < ps->nbuckets && budget > 0; i++)
        for (struct pstream *st = ps->buckets[i]; st != NULL && budget > 0; st = st->next) {
            budget -= carry(ps, st, upto, budget);
            if (budget > 0)
                prem_carry(ps, st, upto);
        }
}

/* ---- stats and hooks ---- */

int pith_persist_stats(unsigned shard, pith_persist_stats_t *out)
{
    if (out == NULL)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    if (shard >= pith_shard_count() || shard >= PSHARDS_MAX) {
        shard_reader_leave();
        return -EINVAL;
    }
    /* Acquire: pairs with pshard_get's release. */
    struct pshard *ps = atomic_load_explicit(&pshards[shard], memory_order_acquire);
    if (ps != NULL) {
        out->keys = atomic_load_explicit(&ps->st_keys, memory_order_relaxed);
        out->events = atomic_load_explicit(&ps->st_events, memory_order_relaxed);
        out->event_records = atomic_load_explicit(&ps->st_records, memory_order_relaxed);
        out->failed = atomic_load_explicit(&ps->st_failed, memory_order_relaxed);
        out->snapshots = atomic_load_explicit(&ps->st_snaps, memory_order_relaxed);
        out->snapshot_failed = atomic_load_explicit(&ps->st_snap_failed, memory_order_relaxed);
        out->recoveries = atomic_load_explicit(&ps->st_recoveries, memory_order_relaxed);
        out->replayed = atomic_load_explicit(&ps->st_replayed, memory_order_relaxed);
        out->restored = atomic_load_explicit(&ps->st_restored, memory_order_relaxed);
        out->carried = atomic_load_explicit(&ps->st_carried, memory_order_relaxed);
        out->reminders = atomic_load_explicit(&ps->st_reminders, memory_order_relaxed);
        out->reminders_fired = atomic_load_explicit(&ps->st_fired, memory_order_relaxed);
    }
    shard_reader_leave();
    return 0;
}

/* A task at each shard's start when a persistent type is registered: the index is built and
 * reminders are armed without waiting for a key's first message. */
static void boot_task(void *arg)
{
    (void)arg;
    struct pshard *ps;
    (void)pshard_get(&ps);
}

static void persist_start(unsigned shard)
{
    (void)shard;
    for (uint32_t i = 0;; i++) {
        const pith_vtype_t *vt = vactor_type_at(i);
        if (vt == NULL)
            return;
        if (vt->persist != NULL) {
            const pith_config_t *cfg = shard_config();
            if (cfg != NULL && cfg->journal.dir != NULL)
                (void)pith_submit(shard, boot_task, NULL);
            return;
        }
    }
}

static void persist_flush(unsigned shard)
{
    struct pshard *ps =
        shard < PSHARDS_MAX ? atomic_load_explicit(&pshards[shard], memory_order_relaxed) : NULL;
    if (ps != NULL && ps->open != NULL) {
        core_msg_done = NULL;
        batch_flush();
    }
}

/* The shard has left its loop, its actors still live: the activations of types that snapshot
 * on deactivation take theirs now, while the journal still takes records (it writes and syncs
 * them as it closes); their ends (PITH_VDEACT_SHUTDOWN) then find nothing new to snapshot. */
static void persist_leaving(unsigned shard)
{
    struct pshard *ps =
        shard < PSHARDS_MAX ? atomic_load_explicit(&pshards[shard], memory_order_relaxed) : NULL;
    if (ps == NULL || ps->err)
        return;
    for (uint32_t i = 0; i < ps->nbuckets; i++)
        for (struct pstream *st = ps->buckets[i]; st != NULL; st = st->next) {
            if (st->live == PITH_REF_NONE || st->recovering || st->waiting != PITH_REF_NONE ||
                st->since_snap == 0 || st->vt == NULL ||
                !(st->vt->persist->flags & PITH_SNAPSHOT_ON_DEACTIVATE))
                continue;
            struct actor *a = core_find(core_self, st->live);
            if (a != NULL)
                snapshot_take(ps, st, a->state);
        }
}

/* The shard leaves its loop: its timers go now, so that the stop finds none left. */
static void persist_ring_exit(unsigned shard)
{
    struct pshard *ps =
        shard < PSHARDS_MAX ? atomic_load_explicit(&pshards[shard], memory_order_relaxed) : NULL;
    if (ps == NULL)
        return;
    if (ps->compact_armed)
        (void)pith_timer_cancel(ps->compact_timer);
    ps->compact_armed = false;
    if (ps->retry_armed)
        (void)pith_timer_cancel(ps->retry_timer);
    ps->retry_armed = false;
    while (ps->retry_head != NULL) {
        struct pbatch *b = ps->retry_head;
        ps->retry_head = b->next;
        batch_give_up(ps, b, -ECANCELED);
    }
    ps->retry_tail = NULL;
    ps->retry_bytes = 0;
    for (uint32_t i = 0; i < ps->nbuckets; i++)
        for (struct pstream *st = ps->buckets[i]; st != NULL; st = st->next)
            prem_disarm_all(st);
}

static void persist_shard_exit(unsigned shard)
{
    struct pshard *ps =
        shard < PSHARDS_MAX ? atomic_load_explicit(&pshards[shard], memory_order_relaxed) : NULL;
    if (ps == NULL)
        return;
    if (ps->open != NULL) {
        batch_free(ps->open);
        ps->open = NULL;
    }
    core_msg_done = NULL;
    pshard_free_streams(ps);
}

static void persist_engine_gone(void)
{
    for (unsigned i = 0; i < PSHARDS_MAX; i++) {
        struct pshard *ps = atomic_exchange_explicit(&pshards[i], NULL, memory_order_relaxed);
        free(ps);
    }
    pmeta_forget();
}

static const struct vpersist_hooks vhooks = {
    .home = hook_home,
    .activate = hook_activate,
    .ended = hook_ended,
};

__attribute__((constructor)) static void persist_hooks(void)
{
    static const struct shard_hooks h = {
        .leaving = persist_leaving,
        .ring_exit = persist_ring_exit,
        .shard_exit = persist_shard_exit,
        .engine_gone = persist_engine_gone,
        .flush = persist_flush,
        .start = persist_start,
    };
    shard_hooks_add(&h);
    vactor_persist = &vhooks;
}
