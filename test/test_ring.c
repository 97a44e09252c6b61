/* The mesh ring (shard/ring.h) on its own: capacity and give-back, order across the 32-bit wrap
 * of its positions, and a producer and a consumer on two threads through a 4-slot ring. */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>

#include "../shard/ring.h"
#include "util.h"

static void push(struct ring *r, uintptr_t v)
{
    struct envelope *slot = ring_reserve(r);
    cr_assert_not_null(slot, "the ring refused value %ju", (uintmax_t)v);
    slot->batch = NULL;
    slot->count = 1;
    slot->tasks[0].arg = (void *)v;
    ring_commit(r, slot);
}

static uintptr_t pop(struct ring *r)
{
    const struct envelope *slot = ring_peek(r);
    cr_assert_not_null(slot, "nothing to read");
    cr_assert_eq(slot->count, 1);
    uintptr_t v = (uintptr_t)slot->tasks[0].arg;
    ring_advance(r);
    return v;
}

Test(mesh_ring, holds_exactly_its_capacity_and_reuses_only_what_was_given_back)
{
    struct ring r;
    cr_assert_eq(ring_init(&r, 4), 0);
    cr_assert_not(ring_pending(&r));
    for (uintptr_t v = 1; v <= 4; v++)
        push(&r, v);
    cr_assert_null(ring_reserve(&r), "a 4-slot ring took a fifth envelope");
    cr_assert(ring_pending(&r));
    cr_assert_eq(pop(&r), 1);
    cr_assert_eq(pop(&r), 2);
    /* Read but not given back: the producer must not write over them yet. */
    cr_assert_null(ring_reserve(&r), "slots read but not released were reused");
    ring_release(&r);
    push(&r, 5);
    push(&r, 6);
    cr_assert_null(ring_reserve(&r));
    for (uintptr_t v = 3; v <= 6; v++)
        cr_assert_eq(pop(&r), v);
    cr_assert_null(ring_peek(&r), "an empty ring gave an envelope");
    cr_assert_not(ring_pending(&r));
    ring_fini(&r);
}

/* Positions are 32-bit and wrap; a slot's sequence is its position + 1, so the lap before the
 * wrap leaves UINT32_MAX - k in slots that must not read as published for the lap after it. */
Test(mesh_ring, keeps_order_across_the_wrap_of_its_positions)
{
    struct ring r;
    const uint32_t cap = 8;
    cr_assert_eq(ring_init(&r, cap), 0);
    uint32_t start = UINT32_MAX - 2 * cap;
    /* As if the ring had run up to `start`: the last lap wrote every slot. */
    for (uint32_t pos = start - cap; pos != start; pos++)
        atomic_store(&r.slots[pos & r.mask].seq, pos + 1);
    r.tail = r.head = r.head_seen = start;
    atomic_store(&r.head_pub, start);
    cr_assert_null(ring_peek(&r), "a stale lap read as published");

    const uintptr_t total = 6 * cap;
    uintptr_t next_in = 0, next_out = 0;
    while (next_in < total) {
        while (ring_reserve(&r) != NULL)
            push(&r, next_in++);
        cr_assert_eq(next_in - next_out, cap, "the ring did not fill to %u", cap);
        for (uint32_t i = 0; i < 3; i++)
            cr_assert_eq(pop(&r), next_out++);
        cr_assert_null(ring_reserve(&r), "slots were reused before ring_release");
        ring_release(&r);
    }
    while (ring_peek(&r) != NULL)
        cr_assert_eq(pop(&r), next_out++);
    cr_assert_eq(next_out, next_in);
    cr_assert_lt(r.head, start, "the positions did not wrap");
    ring_fini(&r);
}

struct duo {
    struct ring r;
    uint64_t total;
    uint64_t mismatches, first_bad;
};

static void *produce(void *arg)
{
    struct duo *d = arg;
    for (uint64_t v = 0; v < d->total; v++) {
        struct envelope *slot;
        while ((slot = ring_reserve(&d->r)) == NULL)
            sched_yield(); /* full: the consumer runs on the other CPU, or after us */
        slot->batch = NULL;
        slot->count = (uint32_t)(v % ENVELOPE_TASKS) + 1;
        for (uint32_t i = 0; i < slot->count; i++)
            slot->tasks[i].arg = (void *)(uintptr_t)(v + i);
        ring_commit(&d->r, slot);
    }
    return NULL;
}

Test(mesh_ring, two_threads_through_four_slots_lose_and_reorder_nothing, .timeout = 120)
{
    static struct duo d;
    d.total = scaled(2000000);
    d.mismatches = 0;
    cr_assert_eq(ring_init(&d.r, 4), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, produce, &d), 0);
    for (uint64_t v = 0; v < d.total; v++) {
        const struct envelope *slot;
        while ((slot = ring_peek(&d.r)) == NULL)
            sched_yield();
        uint32_t want = (uint32_t)(v % ENVELOPE_TASKS) + 1;
        bool ok = slot->batch == NULL && slot->count == want;
        for (uint32_t i = 0; ok && i < want; i++)
            ok = slot->tasks[i].arg == (void *)(uintptr_t)(v + i);
        if (!ok && d.mismatches++ == 0)
            d.first_bad = v;
        ring_advance(&d.r);
        if (v % 3 == 2 || v + 1 == d.total)
            ring_release(&d.r);
    }
    pthread_join(t, NULL);
    cr_assert_eq(d.mismatches, 0, "%ju envelopes arrived wrong, the first at %ju",
                 (uintmax_t)d.mismatches, (uintmax_t)d.first_bad);
    cr_assert_null(ring_peek(&d.r), "more came out than went in");
    ring_fini(&d.r);
}
