/* The mesh's single-producer/single-consumer ring of envelopes, one cache line per slot.
 *
 * The consumer polls the slot it will read next, not a producer index: each slot carries the
 * position it was written for (+1), stored last with release. A message that crosses shards
 * then costs the receiver one transfer of one line (the slot), where an index ring costs two
 * in a row (the index, then the slot it points to). The producer reads the consumer's index
 * only when its cached copy says the ring is full, so no line travels back per message either.
 *
 * ck_ring, the first mesh, reads the peer's index on every call from both sides. Measured on
 * two CPUs with a 130-140 ns cache-line round trip (raw.c2c_rtt_ns), same runs: mesh.rtt_ns
 * went from 231-240 ns with ck_ring to 140-141 ns with this ring, actor.remote_ask_rtt_ns from
 * 361-371 ns (ck_ring, already with the prefetch and sleep-line fixes) to 291-301 ns, and
 * mesh.throughput_batch1_mps from 27-29 to 78-80 M/s. */
#ifndef PITH_SHARD_RING_H
#define PITH_SHARD_RING_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <pith/engine.h>

#define RING_LINE 64

/* One unit of work: 16 bytes, copied into batches, ring slots and queues by value. Calls and
 * replies are tasks too: their arg is a call record (submit.c). */
struct task {
    pith_fn_t fn;
    void *arg;
};

/* One ring slot, one cache line: up to ENVELOPE_TASKS tasks travel inline, so a lightly loaded
 * pair costs the receiver no access to the sender's memory; a fuller batch goes by pointer. */
#define ENVELOPE_TASKS 3
struct envelope {
    struct batch *batch; /* NULL: the tasks are inline */
    uint32_t count;      /* inline tasks */
    /* Position this slot was last written for, + 1 (0: never written). The producer's
     * release store of it publishes the fields above and below; the consumer's acquire load
     * that finds its own position + 1 makes them visible. */
    _Atomic uint32_t seq;
    struct task tasks[ENVELOPE_TASKS];
};
_Static_assert(sizeof(struct envelope) == RING_LINE, "one slot, one line");

struct ring {
    struct envelope *slots; /* read-only after ring_init, like mask */
    uint32_t mask;
    /* The producer's line. */
    alignas(RING_LINE) uint32_t tail; /* next position to write */
    uint32_t head_seen;               /* the consumer's index as last read */
    /* The consumer's private line... */
    alignas(RING_LINE) uint32_t head; /* next position to read */
    /* ...and the line it shares: the producer polls it while the ring is full, and would
     * otherwise take the line away from under each head++ of a consumer catching up. */
    alignas(RING_LINE) _Atomic uint32_t head_pub; /* head as published by ring_release */
    char pad[RING_LINE - sizeof(uint32_t)];
};

/* cap: a power of two (config.c checks it); the ring then holds cap envelopes. */
int ring_init(struct ring *r, uint32_t cap);
void ring_fini(struct ring *r);

/* Producer: the slot to fill for the next position, or NULL while the ring is full. */
static inline struct envelope *ring_reserve(struct ring *r)
{
    if (r->tail - r->head_seen > r->mask) {
        /* Acquire pairs with ring_release: the consumer's reads of the slots it gave back
         * happen before we write them again. */
        r->head_seen = atomic_load_explicit(&r->head_pub, memory_order_acquire);
        if (r->tail - r->head_seen > r->mask)
            return NULL;
    }
    return &r->slots[r->tail & r->mask];
}

/* Producer: publish the slot ring_reserve gave. */
static inline void ring_commit(struct ring *r, struct envelope *slot)
{
    r->tail++;
    /* Release: the slot's fields, and whatever its tasks point to, are written before the
     * consumer can see the new sequence. */
    atomic_store_explicit(&slot->seq, r->tail, memory_order_release);
}

/* Consumer: the next slot if the producer has published it, else NULL. Read it, then
 * ring_advance; the producer does not reuse it before ring_release. */
static inline const struct envelope *ring_peek(struct ring *r)
{
    const struct envelope *slot = &r->slots[r->head & r->mask];
    /* Acquire pairs with ring_commit's release. */
    if (atomic_load_explicit(&slot->seq, memory_order_acquire) != r->head + 1)
        return NULL;
    return slot;
}

static inline void ring_advance(struct ring *r)
{
    r->head++;
    /* Under a flood the next slot is likely written already: start its transfer now, while
     * the tasks of this one run. */
    __builtin_prefetch(&r->slots[r->head & r->mask]);
}

/* Consumer: give the slots read so far back to the producer. Once per drain, not per slot. */
static inline void ring_release(struct ring *r)
{
    /* Release pairs with ring_reserve's acquire (see there). */
    atomic_store_explicit(&r->head_pub, r->head, memory_order_release);
}

/* Consumer (or the sleeper's last look, seq_cst for its Dekker with the publisher, loop.c):
 * whether a slot is waiting. */
static inline bool ring_pending(struct ring *r)
{
    const struct envelope *slot = &r->slots[r->head & r->mask];
    return atomic_load_explicit(&slot->seq, memory_order_seq_cst) == r->head + 1;
}

#endif
