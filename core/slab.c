/* Messages for another shard are carved from a slab per destination: one allocation, and one
 * free, per slab instead of per message. A message freed one by one on another shard costs a
 * remote free into the sender's heap; here the receiver only decrements the slab's balance, a
 * line no one else writes until the slab closes.
 *
 * balance: each message freed subtracts 1 (on the receiving shard, or on the sender when a send
 * failed); closing the slab adds SLAB_CLOSED + the messages it handed out. Whoever brings it to
 * exactly SLAB_CLOSED frees the slab: the receiver after the last message once closed, or the
 * sender at close when every message was already done. Both use acq_rel, so all reads of the
 * messages happen before the free.
 *
 * A slab closes when full, or when its destination's idle timer finds it still open (so a
 * quiet pair does not hold one). Its size adapts per destination, from 1 KiB for a trickle to
 * 16 KiB for a flood, so that messages waiting in a mailbox pin little memory. */
#include "core.h"

#include <errno.h>
#include <stdlib.h>

#define SLAB_MIN     1024
#define SLAB_MAX     (16 * 1024)
#define SLAB_IDLE_NS (UINT64_C(1000) * 1000) /* an open slab closes after at most ~1 ms */
#define SLAB_CLOSED  (INT64_C(1) << 40)

struct mslab {
    uint32_t used;  /* bytes handed out, this header included (sender) */
    uint32_t count; /* messages handed out (sender) */
    uint32_t size;
    alignas(CORE_LINE) _Atomic int64_t balance;
};
#define SLAB_HDR ((uint32_t)((sizeof(struct mslab) + 15) & ~(size_t)15))

/* What the sending shard keeps per destination. */
struct slab_out {
    struct mslab *open;
    uint32_t next_size;
    bool timer_armed;
    pith_timer_id_t timer;
};

static void slab_close(struct mslab *s)
{
    int64_t add = SLAB_CLOSED + (int64_t)s->count;
    if (atomic_fetch_add_explicit(&s->balance, add, memory_order_acq_rel) + add == SLAB_CLOSED)
        pith_free(s);
}

void core_msg_free(struct amsg *m)
{
    if (m->len & AMSG_BUF)
        pith_buf_release(*(struct pith_buf **)(m + 1));
    struct mslab *s = m->slab;
    if (s == NULL) {
        pith_free(m);
        return;
    }
    if (atomic_fetch_sub_explicit(&s->balance, 1, memory_order_acq_rel) - 1 == SLAB_CLOSED)
        pith_free(s);
}

static void slab_tick(void *arg)
{
    unsigned dst = (unsigned)(uintptr_t)arg;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->slabs == NULL)
        return;
    struct slab_out *o = &cs->slabs[dst];
    o->timer_armed = false;
    if (o->open != NULL) {
        /* Still open after a while: the pair is quiet, so the next slab may be smaller. */
        if (o->next_size > SLAB_MIN)
            o->next_size /= 2;
        slab_close(o->open);
        o->open = NULL;
    }
}

struct amsg *core_slab_msg(struct core_shard *cs, unsigned dst, size_t bytes)
{
    size_t need = (bytes + 15) & ~(size_t)15;
    if (need > SLAB_MAX - SLAB_HDR || dst >= cs->nslabs)
        return NULL;
    struct slab_out *o = &cs->slabs[dst];
    struct mslab *s = o->open;
    if (s == NULL || s->used + need > s->size) {
        if (s != NULL) {
            if (o->next_size < SLAB_MAX)
                o->next_size *= 2; /* filled before its timer: a busier pair */
            slab_close(s);
            o->open = NULL;
        }
        uint32_t size = o->next_size;
        while (size < SLAB_HDR + need)
            size *= 2;
        s = pith_aligned_alloc(CORE_LINE, size); /* balance on a line of its own */
        if (s == NULL)
            return NULL;
        s->used = SLAB_HDR;
        s->count = 0;
        s->size = size;
        atomic_init(&s->balance, 0);
        o->open = s;
        if (!o->timer_armed &&
            pith_timer_add(SLAB_IDLE_NS, 0, slab_tick, (void *)(uintptr_t)dst, &o->timer) == 0)
            o->timer_armed = true;
    }
    struct amsg *m = (struct amsg *)((char *)s + s->used);
    s->used += (uint32_t)need;
    s->count++;
    m->slab = s;
    return m;
}

int core_slabs_init(struct core_shard *cs, unsigned n)
{
    cs->slabs = calloc(n, sizeof(*cs->slabs));
    if (cs->slabs == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++)
        cs->slabs[i].next_size = SLAB_MIN;
    cs->nslabs = n;
    return 0;
}

void core_slabs_close_all(struct core_shard *cs)
{
    for (unsigned i = 0; cs->slabs != NULL && i < cs->nslabs; i++) {
        if (cs->slabs[i].open != NULL)
            slab_close(cs->slabs[i].open);
        cs->slabs[i].open = NULL;
        /* Our own timers end with us rather than count as released at stop. */
        if (cs->slabs[i].timer_armed)
            pith_timer_cancel(cs->slabs[i].timer);
    }
    free(cs->slabs);
    cs->slabs = NULL;
    cs->nslabs = 0;
}
