/* Rebuilding a key's state from its records: the latest snapshot at or before the point asked
 * for, then the events after it, in order. Activation uses it for the whole history; pith_replay
 * for a point in it, into the caller's memory. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <pith/engine.h>

#include "hooks.h"
#include "pst.h"
#include "vpersist.h"

int pst_apply_events(struct pshard *ps, const pith_persist_type_t *pt, void *state,
                     const unsigned char *body, uint32_t blen, uint64_t first, uint32_t count,
                     uint64_t until, int how, uint64_t *applied, bool *stop)
{
    if (first > *applied + 1)
        return -ENODATA; /* what came between has left the journal */
    const unsigned char *p = body, *end = body + blen;
    for (uint32_t k = 0; k < count; k++) {
        uint32_t len;
        if (end - p < PEV_HDR)
            return -EIO;
        memcpy(&len, p, 4);
        if ((uint64_t)(end - p - PEV_HDR) < len)
            return -EIO;
        uint64_t num = first + k;
        if (how == PITH_REPLAY_EVENT && num > until) {
            *stop = true;
            return 0;
        }
        if (num == *applied + 1) {
            pt->apply(state, p + PEV_HDR, len);
            *applied = num;
            pst_bump(&ps->st_replayed, 1);
        }
        p += PEV_HDR + JALIGN(len);
        if (p > end)
            p = end;
    }
    return 0;
}

int pst_rebuild(struct pshard *ps, struct pstream *st, const pith_persist_type_t *pt, void *state,
                uint64_t until, int how, uint64_t *events)
{
    pith_journal_rec_t rec;
    const struct phdr *h;
    const unsigned char *body;
    uint32_t blen;
    uint64_t base = 0;
    bool any = false;
    /* The latest snapshot at or before the point. */
    for (uint32_t i = st->nrecs; i-- > 0;) {
        const struct ploc *r = &st->recs[i];
        if (!r->snap || (how == PITH_REPLAY_EVENT && r->n > until))
            continue;
        int err = pst_read(ps, r, &rec, &h, &body, &blen);
        if (err)
            return err;
        if (how == PITH_REPLAY_TIME && h->time_ns > until)
            continue;
        if (pt->restore == NULL)
            return -EIO;
        err = pt->restore(state, body, blen);
        if (err)
            return err < 0 ? err : -EINVAL;
        base = r->n;
        any = true;
        pst_bump(&ps->st_restored, 1);
        break;
    }
    uint64_t applied = base;
    for (uint32_t i = 0; i < st->nrecs; i++) {
        const struct ploc *r = &st->recs[i];
        if (r->snap || r->n <= applied)
            continue;
        int err = pst_read(ps, r, &rec, &h, &body, &blen);
        if (err)
            return err;
        if (how == PITH_REPLAY_TIME && h->time_ns > until)
            break;
        uint64_t before = applied;
        bool stop = false;
        err = pst_apply_events(ps, pt, state, body, blen, h->first, h->count, until, how, &applied,
                               &stop);
        if (err)
            return err;
        any = any || applied > before;
        if (stop)
            break;
    }
    if (!any)
        return -ENODATA;
    if (events != NULL)
        *events = applied;
    return 0;
}

struct replay_req {
    const pith_vtype_t *t;
    const void *key;
    uint32_t len;
    uint64_t until;
    int how;
    void *state;
    uint64_t *events;
    int err;
};

static void *replay_here(void *arg)
{
    struct replay_req *q = arg;
    struct pshard *ps;
    const unsigned char *mk;
    q->err = pshard_get(&ps);
    if (q->err == 0)
        q->err = pmeta_key(&mk);
    if (q->err)
        return NULL;
    struct pstream *st =
        pstream_find(ps, pmeta_stream(mk, q->t, q->key, q->len), pmeta_tag(q->t), q->key, q->len);
    memset(q->state, 0, q->t->actor->state_size);
    q->err = st == NULL ? -ENODATA
                        : pst_rebuild(ps, st, q->t->persist, q->state, q->until, q->how, q->events);
    return NULL;
}

static int home_of(const struct replay_req *q, unsigned *home)
{
    const unsigned char *mk;
    int err = pmeta_key(&mk);
    if (err == 0)
        *home = pmeta_jump(pmeta_stream(mk, q->t, q->key, q->len), shard_count_here());
    return err;
}

static void *home_call(void *arg)
{
    struct replay_req *q = arg;
    q->err = home_of(q, (unsigned *)q->state);
    return NULL;
}

int pith_replay(const pith_vtype_t *t, const void *key, uint32_t len, uint64_t until, int how,
                void *state, uint64_t *events)
{
    if (t == NULL || (key == NULL && len > 0) || len > PITH_VKEY_MAX || state == NULL ||
        (how != PITH_REPLAY_EVENT && how != PITH_REPLAY_TIME))
        return -EINVAL;
    bool known = false;
    for (uint32_t i = 0; !known; i++) {
        const pith_vtype_t *vt = vactor_type_at(i);
        if (vt == NULL)
            break;
        known = vt == t;
    }
    if (!known || t->persist == NULL)
        return -ENOENT;
    struct replay_req q = {t, key, len, until, how, state, events, 0};
    int id = pith_shard_id();
    if (id >= 0) {
        unsigned home;
        if ((q.err = home_of(&q, &home)) != 0)
            return q.err;
        if ((unsigned)id != home)
            return -EDEADLK;
        replay_here(&q);
        return q.err;
    }
    /* The directory's key is read on a shard: shard 0 finds the home shard first. */
    unsigned home = 0;
    q.state = &home;
    int err = pith_call_wait(0, home_call, &q, NULL);
    if (err || q.err)
        return err ? err : q.err;
    q.state = state;
    err = pith_call_wait(home, replay_here, &q, NULL);
    return err ? err : q.err;
}
