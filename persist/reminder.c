/* Durable reminders: a key's timers, kept in its home shard's journal (a record per set and per
 * cancel; the index keeps the last word on each id), armed on the home shard as soon as its
 * index is built, and each sends its key a message when due (activating it). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pith/engine.h>
#include <pith/mem.h>

#include "core.h"
#include "pst.h"
#include "vpersist.h"

#define RETRY_NS      (10ull * 1000 * 1000) /* a send pushed back, or the type not registered yet */
#define PERIOD_MIN_NS (1000ull * 1000)

static uint64_t realtime_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static struct prem *find(struct pstream *st, uint32_t id, struct prem ***link)
{
    struct prem **l = &st->rems;
    for (; *l != NULL; l = &(*l)->next)
        if ((*l)->id == id)
            break;
    if (link != NULL)
        *link = l;
    return *l;
}

static void disarm(struct prem *m)
{
    if (m->armed)
        (void)pith_timer_cancel(m->timer);
    m->armed = false;
}

static void drop(struct pshard *ps, struct pstream *st, uint32_t id)
{
    struct prem **l;
    struct prem *m = find(st, id, &l);
    if (m == NULL)
        return;
    disarm(m);
    *l = m->next;
    if (!m->cancelled)
        pst_bump(&ps->st_reminders, -1);
    pith_free(m);
}

/* Reading the journal back: records come in the order they were asked, so the last word on an
 * id wins. */
int prem_index(struct pshard *ps, struct pstream *st, const struct prem_rec *r,
               const pith_journal_rec_t *rec, const struct log_loc *loc)
{
    if (r->cancel) {
        drop(ps, st, r->id);
        return 0;
    }
    struct prem *m = find(st, r->id, NULL);
    if (m == NULL) {
        if ((m = pith_calloc(1, sizeof(*m))) == NULL)
            return -ENOMEM;
        m->st = st;
        m->id = r->id;
        m->next = st->rems;
        st->rems = m;
        pst_bump(&ps->st_reminders, 1);
    }
    m->type = r->type;
    m->due_ns = r->due_ns;
    m->period_ns = r->period_ns < PERIOD_MIN_NS && r->period_ns != 0 ? PERIOD_MIN_NS : r->period_ns;
    m->next_due = 0;
    m->seq = rec->seq;
    m->loc = *loc;
    return 0;
}

static void fire(void *arg);

static void arm(struct prem *m, uint64_t delay)
{
    disarm(m);
    if (pith_timer_add(delay, 0, fire, m, &m->timer) == 0)
        m->armed = true;
}

static void arm_due(struct prem *m)
{
    if (m->next_due == 0)
        m->next_due = m->due_ns;
    uint64_t now = realtime_ns();
    arm(m, m->next_due > now ? m->next_due - now : 0);
}

void prem_arm_all(struct pshard *ps)
{
    for (uint32_t i = 0; i < ps->nbuckets; i++)
        for (struct pstream *st = ps->buckets[i]; st != NULL; st = st->next)
            for (struct prem *m = st->rems; m != NULL; m = m->next)
                if (!m->cancelled)
                    arm_due(m);
}

struct rem_op {
    struct pshard *ps;
    struct pstream *st;
    struct prem_rec r;
    struct log_loc loc;
    uint64_t ver; /* the operation's place among the key's reminder operations */
    bool carry;
};

static void rem_done(int err, uint64_t seq, void *ctx)
{
    struct rem_op *op = ctx;
    struct pstream *st = op->st;
    struct pshard *ps = op->ps;
    st->rem_inflight--;
    struct prem *m = find(st, op->r.id, NULL);
    if (op->carry) {
        /* A copy: the reminder lives at the copy now, unless something newer was asked. */
        if (err == 0 && m != NULL && !m->cancelled && m->ver == op->ver) {
            m->seq = seq;
            m->loc = op->loc;
            pst_bump(&ps->st_carried, 1);
        }
    } else if (op->r.cancel) {
        if (m != NULL && m->cancelled && m->ver == op->ver)
            drop(ps, st, op->r.id); /* the tombstone is no longer needed */
    } else if (err == 0 && (m == NULL || m->ver < op->ver)) {
        pith_journal_rec_t rec = {.seq = seq};
        if (m != NULL && m->cancelled) {
            m->cancelled = false; /* set again after a cancel */
            pst_bump(&ps->st_reminders, 1);
        }
        if (prem_index(ps, st, &op->r, &rec, &op->loc) == 0 &&
            (m = find(st, op->r.id, NULL)) != NULL) {
            m->ver = op->ver;
            arm_due(m);
        }
    }
    pith_free(op);
}

/* Appends a reminder record for st, as operation ver. */
static int rem_append(struct pshard *ps, struct pstream *st, const struct prem_rec *r, uint64_t ver,
                      bool carry)
{
    struct rem_op *op = pith_malloc(sizeof(*op));
    uint32_t len;
    unsigned char *p = op != NULL ? pst_payload(st, 0, 0, r, sizeof(*r), &len) : NULL;
    if (p == NULL) {
        pith_free(op);
        return -ENOMEM;
    }
    *op = (struct rem_op){.ps = ps, .st = st, .r = *r, .ver = ver, .carry = carry};
    int err = log_append(st->id, PT_REMIND, p, len, rem_done, op, NULL, &op->loc);
    pith_free(p);
    if (err) {
        pith_free(op);
        return err;
    }
    st->rem_inflight++;
    return 0;
}

/* Cancels m (durably): a tombstone until the record is durable. */
static int cancel(struct pshard *ps, struct pstream *st, struct prem *m)
{
    struct prem_rec r = {.id = m->id, .cancel = 1};
    uint64_t ver = ++st->rem_ver;
    int err = rem_append(ps, st, &r, ver, false);
    if (err)
        return err;
    disarm(m);
    m->cancelled = true;
    m->ver = ver;
    pst_bump(&ps->st_reminders, -1);
    return 0;
}

static void fire(void *arg)
{
    struct prem *m = arg;
    struct pstream *st = m->st;
    uint32_t id = m->id;
    m->armed = false;
    struct pshard *ps;
    if (pshard_get(&ps) != 0 || m->cancelled)
        return;
    if (st->vt == NULL)
        st->vt = pst_type_of_tag(st->tag);
    pith_vref_t v;
    if (st->vt == NULL || pith_vref(st->vt, st->key, st->klen, &v) != 0) {
        arm(m, RETRY_NS); /* its type is not registered (yet) */
        return;
    }
    uint64_t now = realtime_ns();
    uint64_t missed = 0;
    if (m->period_ns > 0 && now > m->next_due)
        missed = (now - m->next_due) / m->period_ns;
    pith_reminder_msg_t msg = {.id = id,
                               .missed = missed > UINT32_MAX ? UINT32_MAX : (uint32_t)missed,
                               .due_ns = m->next_due};
    uint64_t period = m->period_ns, ver = m->ver;
    /* The send may activate the key at once, and its code may cancel or set this reminder
     * again: m is looked up afresh after it. */
    int err = pith_vsend(&v, m->type, &msg, sizeof(msg));
    m = find(st, id, NULL);
    if (m == NULL || m->cancelled || m->ver != ver || m->armed)
        return; /* changed meanwhile: what changed it armed it as it wants */
    if (err == -EAGAIN || err == -ENOMEM) {
        arm(m, RETRY_NS);
        return;
    }
    pst_bump(&ps->st_fired, 1);
    if (period > 0) {
        m->next_due += (missed + 1) * period;
        arm_due(m);
        return;
    }
    /* Once: it goes, durably (a crash before that record is durable sends it again). */
    if (cancel(ps, st, m) != 0)
        arm(m, RETRY_NS);
}

void prem_carry(struct pshard *ps, struct pstream *st, uint64_t upto)
{
    if (st->rem_inflight > 0)
        return; /* a set or cancel on its way: a copy now could carry what it replaces */
    for (struct prem *m = st->rems; m != NULL; m = m->next) {
        if (m->seq > upto || m->cancelled)
            continue;
        struct prem_rec r = {
            .id = m->id, .type = m->type, .due_ns = m->due_ns, .period_ns = m->period_ns};
        if (rem_append(ps, st, &r, m->ver, true) != 0)
            return;
    }
}

void prem_disarm_all(struct pstream *st)
{
    for (struct prem *m = st->rems; m != NULL; m = m->next)
        disarm(m);
}

void prem_free_all(struct pstream *st)
{
    for (struct prem *m = st->rems, *next; m != NULL; m = next) {
        next = m->next;
        pith_free(m); /* the shard's timers are gone with its loop */
    }
    st->rems = NULL;
}

/* The running activation's key, for a reminder call. */
static int rem_stream(pith_actor_t *self, struct pshard **ps, struct pstream **st)
{
    const pith_vtype_t *vt = vactor_type_of(self);
    if (vt == NULL || vt->persist == NULL)
        return -EINVAL;
    if (pith_self(self) != core_current)
        return -EPERM;
    int err = pshard_get(ps);
    const unsigned char *mk;
    if (err == 0)
        err = pmeta_key(&mk);
    if (err)
        return err;
    uint32_t klen;
    const void *key = pith_vactor_key(self, &klen);
    uint64_t sid = pmeta_stream(mk, vt, key, klen);
    uint32_t tag = pmeta_tag(vt);
    *st = pstream_find(*ps, sid, tag, key, klen);
    if (*st == NULL && (*st = pstream_make(*ps, sid, tag, key, klen)) == NULL)
        return -ENOMEM;
    (*st)->vt = vt;
    return 0;
}

int pith_reminder_set(pith_actor_t *self, uint32_t id, uint64_t delay_ns, uint64_t period_ns,
                      uint32_t type)
{
    if ((period_ns != 0 && period_ns < PERIOD_MIN_NS) || type >= PITH_MSG_RESERVED)
        return -EINVAL;
    struct pshard *ps;
    struct pstream *st;
    int err = rem_stream(self, &ps, &st);
    if (err)
        return err;
    uint64_t now = realtime_ns();
    struct prem_rec r = {.id = id,
                         .type = type,
                         .due_ns = delay_ns > UINT64_MAX - now ? UINT64_MAX : now + delay_ns,
                         .period_ns = period_ns};
    return rem_append(ps, st, &r, ++st->rem_ver, false);
}

int pith_reminder_cancel(pith_actor_t *self, uint32_t id)
{
    struct pshard *ps;
    struct pstream *st;
    int err = rem_stream(self, &ps, &st);
    if (err)
        return err;
    struct prem *m = find(st, id, NULL);
    if (m == NULL || m->cancelled)
        return -ENOENT;
    return cancel(ps, st, m);
}
