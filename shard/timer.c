/* Per-shard timers: a 4-ary min-heap ordered by (deadline, arming order) over a slot table, so
 * that arming, cancelling and firing are O(log n) and a million pending timers stay cheap. */
#include "shard.h"

#include <errno.h>
#include <stdlib.h>

#define TIMER_FREE UINT32_MAX
#define SLOT_BITS  24
#define SEQ_BITS   28
#define MAX_SLOTS  ((1u << SLOT_BITS) - 1)
#define SEQ_MASK   ((1u << SEQ_BITS) - 1)

/* id = shard (12 bits) | arming sequence (28 bits, never 0) | slot (24 bits). */
static pith_timer_id_t make_id(unsigned shard, uint32_t seq, uint32_t slot)
{
    return ((uint64_t)shard << (SEQ_BITS + SLOT_BITS)) | ((uint64_t)seq << SLOT_BITS) | slot;
}

int timers_init(struct timers *t)
{
    t->cap = 64;
    t->slots_cap = 64;
    t->heap = malloc(t->cap * sizeof(*t->heap));
    t->slots = malloc(t->slots_cap * sizeof(*t->slots));
    t->free_slots = malloc(t->slots_cap * sizeof(*t->free_slots));
    if (t->heap == NULL || t->slots == NULL || t->free_slots == NULL)
        return -ENOMEM;
    return 0;
}

void timers_fini(struct timers *t)
{
    free(t->heap);
    free(t->slots);
    free(t->free_slots);
    t->heap = NULL;
    t->slots = NULL;
    t->free_slots = NULL;
    t->len = t->nslots = t->nfree = 0;
}

static bool before(const struct timer_ent *a, const struct timer_ent *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->order < b->order);
}

static void place(struct timers *t, uint32_t i, struct timer_ent ent)
{
    t->heap[i] = ent;
    t->slots[ent.slot].heap_pos = i;
}

static void sift_up(struct timers *t, uint32_t i)
{
    struct timer_ent ent = t->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 4;
        if (!before(&ent, &t->heap[parent]))
            break;
        place(t, i, t->heap[parent]);
        i = parent;
    }
    place(t, i, ent);
}

static void sift_down(struct timers *t, uint32_t i)
{
    struct timer_ent ent = t->heap[i];
    for (;;) {
        uint32_t first = 4 * i + 1;
        if (first >= t->len)
            break;
        uint32_t best = first, last = first + 4 < t->len ? first + 4 : t->len;
        for (uint32_t c = first + 1; c < last; c++)
            if (before(&t->heap[c], &t->heap[best]))
                best = c;
        if (!before(&t->heap[best], &ent))
            break;
        place(t, i, t->heap[best]);
        i = best;
    }
    place(t, i, ent);
}

static void heap_remove(struct timers *t, uint32_t i)
{
    t->len--;
    if (i == t->len)
        return;
    struct timer_ent moved = t->heap[t->len];
    place(t, i, moved);
    if (i > 0 && before(&moved, &t->heap[(i - 1) / 4]))
        sift_up(t, i);
    else
        sift_down(t, i);
}

static void slot_free(struct timers *t, uint32_t slot)
{
    t->slots[slot].heap_pos = TIMER_FREE;
    t->free_slots[t->nfree++] = slot;
}

static void publish_pending(struct shard *s)
{
    atomic_store_explicit(&s->st.timers_pending, s->timers.len, memory_order_relaxed);
}

uint64_t timers_next(const struct timers *t)
{
    return t->len ? t->heap[0].deadline : UINT64_MAX;
}

unsigned timers_fire(struct shard *s, uint64_t now, unsigned budget)
{
    struct timers *t = &s->timers;
    unsigned fired = 0;
    while (t->len > 0 && t->heap[0].deadline <= now && fired < budget) {
        uint32_t slot = t->heap[0].slot;
        struct timer_slot *ts = &t->slots[slot];
        struct task task = {.fn = ts->fn, .arg = ts->arg};
        if (ts->period > 0) {
            /* Keep the phase: the next deadline is a whole number of periods later, skipping
             * the ones already missed rather than firing a burst to catch up. */
            uint64_t next = ts->deadline + ts->period;
            if (next <= now)
                next += ((now - next) / ts->period + 1) * ts->period;
            ts->deadline = next;
            t->heap[0].deadline = next;
            t->heap[0].order = t->armed++;
            sift_down(t, 0);
        } else {
            heap_remove(t, 0);
            slot_free(t, slot);
        }
        /* The callback may arm or cancel timers (even itself): nothing of the table is held
         * across it. */
        run_task(s, &task);
        fired++;
    }
    if (fired) {
        tasks_done(s);
        stat_add(&s->st.timers_fired, fired);
        publish_pending(s);
    }
    return fired;
}

static int grow(void **p, uint32_t *cap, size_t elem, uint32_t limit)
{
    if (*cap >= limit)
        return -ENOMEM;
    uint32_t ncap = *cap > limit / 2 ? limit : *cap * 2;
    void *q = realloc(*p, (size_t)ncap * elem);
    if (q == NULL)
        return -ENOMEM;
    *p = q;
    *cap = ncap;
    return 0;
}

int pith_timer_add(uint64_t delay_ns, uint64_t period_ns, pith_fn_t fn, void *arg,
                   pith_timer_id_t *id)
{
    struct shard *s = shard_cur;
    if (s == NULL)
        return -EPERM;
    if (fn == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&s->eng->state, memory_order_relaxed) != ENGINE_RUNNING)
        return -ESHUTDOWN;
    struct timers *t = &s->timers;
    uint32_t slot;
    if (t->nfree > 0) {
        slot = t->free_slots[--t->nfree];
    } else {
        if (t->nslots == t->slots_cap) {
            uint32_t cap = t->slots_cap;
            if (grow((void **)&t->slots, &t->slots_cap, sizeof(*t->slots), MAX_SLOTS) ||
                grow((void **)&t->free_slots, &cap, sizeof(*t->free_slots), MAX_SLOTS))
                return -ENOMEM;
        }
        slot = t->nslots++;
    }
    if (t->len == t->cap && grow((void **)&t->heap, &t->cap, sizeof(*t->heap), MAX_SLOTS)) {
        t->free_slots[t->nfree++] = slot;
        return -ENOMEM;
    }
    uint64_t now = pith_now_ns();
    uint64_t deadline = delay_ns > UINT64_MAX - now ? UINT64_MAX : now + delay_ns;
    uint32_t seq = (uint32_t)(t->armed % SEQ_MASK) + 1;
    t->slots[slot] = (struct timer_slot){
        .deadline = deadline, .period = period_ns, .fn = fn, .arg = arg, .seq = seq};
    t->heap[t->len] = (struct timer_ent){.deadline = deadline, .order = t->armed++, .slot = slot};
    sift_up(t, t->len++);
    s->timer_gate = 0; /* it may come due before the gate: look at the clock next turn */
    publish_pending(s);
    if (id)
        *id = make_id(s->id, seq, slot);
    return 0;
}

int pith_timer_cancel(pith_timer_id_t id)
{
    struct shard *s = shard_cur;
    if (s == NULL)
        return -EPERM;
    struct timers *t = &s->timers;
    uint32_t slot = (uint32_t)(id & MAX_SLOTS);
    uint32_t seq = (uint32_t)((id >> SLOT_BITS) & SEQ_MASK);
    unsigned shard = (unsigned)(id >> (SEQ_BITS + SLOT_BITS));
    if (shard != s->id || slot >= t->nslots)
        return -ENOENT;
    struct timer_slot *ts = &t->slots[slot];
    if (ts->heap_pos == TIMER_FREE || ts->seq != seq)
        return -ENOENT;
    heap_remove(t, ts->heap_pos);
    slot_free(t, slot);
    publish_pending(s);
    return 0;
}
