/* Ingress lanes: how threads outside the engine hand work to a shard. Each outside producer (a
 * thread, or a client handle of core/) has one bounded single-producer/single-consumer lane per
 * shard it talks to; records are copied into the lane, so the hot path allocates nothing. The
 * layers above use the records' handlers to carry their own payloads (core/: actor messages).
 * Private to libpith. */
#ifndef PITH_SHARD_LANE_H
#define PITH_SHARD_LANE_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <pith/engine.h>

struct lane;
struct shard;

/* Runs one record on the lane's shard, with the record's bytes (data, len: 16-byte aligned,
 * in the lane, valid during the call only). Returns 0 when done with it, LANE_PARK to keep it
 * and stop draining this lane until lane_unpark (the upper layer promises to call it), or
 * LANE_RETRY to keep it and look again at the next drain. Called with l == NULL at stop for a
 * record that will never run: release what it holds and return 0. */
typedef int (*lane_fn_t)(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len);
#define LANE_PARK  1
#define LANE_RETRY 2

#define LANE_SLOT 64u
#define LANE_HDR  32u /* the record header; its bytes follow, 16-byte aligned */

/* The first slot of a record. A record covers ceil((LANE_HDR + len) / LANE_SLOT) slots in a
 * row; fn NULL marks padding up to the end of the ring (a record never wraps). */
struct lane_slot {
    /* Position of the record + 1. Stored last by the producer with release; the consumer's
     * acquire load that finds its head + 1 here makes the rest of the record visible. */
    _Atomic uint32_t seq;
    uint32_t len;
    lane_fn_t fn;
    void *arg;
    uint64_t aux;
};
_Static_assert(sizeof(struct lane_slot) == LANE_HDR, "record header");

struct lane {
    struct lane_slot *slots; /* cap slots of LANE_SLOT bytes; read-only after creation */
    uint32_t mask;
    unsigned shard;
    /* The producer's identity for the upper layer (core: a client's ref). Written by the
     * producer before the records it covers, read by the shard after their seq (acquire). */
    _Atomic uint64_t owner;
    struct lane *next_new; /* the shard's adoption stack (shard.new_lanes) */

    /* The producer's line. */
    alignas(64) uint32_t tail; /* next position to write */
    uint32_t head_seen;        /* head_pub as last read */

    /* The consumer's line: touched by the shard only. */
    alignas(64) uint32_t head;
    bool parked; /* not drained until lane_unpark */
    /* Set by the producer as it closed the lane with records left in it (before closed, which
     * publishes it): the shard counts it in shard.orphans until it frees the lane. */
    bool orphan;
    uint32_t idle;        /* drains in a row that found it empty */
    unsigned dormant_idx; /* its place in shard.dormant, LANE_ACTIVE while in shard.lanes */

    /* Shared, written by the consumer at each drain. */
    alignas(64) _Atomic uint32_t head_pub; /* head as released by the consumer */
    /* Futex word: 1 while the producer waits for room. The consumer clears it and wakes. */
    _Atomic uint32_t room_wait;

    /* Shared, rarely written: the producer reads asleep at every record, so it must not sit
     * on head_pub's line, which the consumer writes at every drain. */
    alignas(64) _Atomic uint32_t closed; /* the producer is gone: free the lane once empty */
    /* 1 while the lane is dormant: empty for LANE_DORMANT_AFTER drains, it left the shard's
     * list, so that idle lanes cost a shard nothing. The producer that puts a record in (or
     * closes it) takes it back to 0 and hands the lane to the shard again (new_lanes). */
    _Atomic uint32_t asleep;
    /* 2 at creation: the producer's reference and the shard's. Whoever drops the last frees
     * the lane (acq_rel, so that all of one side's accesses happen before the other's free). */
    _Atomic uint32_t refs;
};

/* One outside producer: a thread's own (made on its first pith_submit, pith_call_wait or
 * pith_send, closed when it exits) or a client's. Used by one thread at a time. */
struct producer {
    struct producer *prev, *next; /* the engine's list, under its producers lock */
    /* 1 while the owner is inside the engine (between producer_enter and producer_leave); the
     * stopper waits for 0 once it has refused new entries. */
    _Atomic uint32_t busy;
    _Atomic uint64_t epoch; /* the engine this producer is registered with; 0: none */
    struct lane **lanes;    /* [n], a lane made on first use (under the producers lock) */
    unsigned n;
    uint64_t owner;    /* copied into each lane it makes */
    uint32_t lane_cap; /* slots per lane (a power of two) */
    /* How long a push that finds its lane full polls for room before it sleeps (0: it sleeps
     * at once). A client's spin_ns (pith_client_config_t). */
    uint64_t spin_ns;
    /* What the layer above keeps for this producer (core/: the thread's client), and how it
     * lets go of it when the thread exits; for the thread's own producer only. */
    void *upper;
    void (*upper_fini)(struct producer *p);
};

/* Engine-side state of the lanes of one shard lives in struct shard (shard.h). */

/* Drains in a row that find a lane empty before it goes dormant (lane.asleep). */
#define LANE_DORMANT_AFTER 4096u
#define LANE_ACTIVE        (~0u)

/* Lanes a shard may hold whose producers have gone with records left in them. Past it, a new
 * lane to that shard waits for room (or is -EAGAIN), so that closing clients, or threads that
 * send and exit, cannot get around the lanes' bound. */
#define LANE_ORPHANS_MAX 64

/* Makes p an empty producer (not registered). */
void producer_init(struct producer *p, uint64_t owner);
/* Sets the identity p's lanes carry, for its records from now on. p's own thread. */
void producer_set_owner(struct producer *p, uint64_t owner);
/* Registers p with the running engine if it is not, and marks it inside: until producer_leave
 * the engine's memory stays. Errors: -ESHUTDOWN no engine, or it is stopping; -ENOMEM. */
int producer_enter(struct producer *p);
void producer_leave(struct producer *p);
/* Unregisters p and lets go of its lanes (their records still run). From p's own thread,
 * outside producer_enter. */
void producer_close(struct producer *p);

/* Appends a record (bytes: head[0..hlen) then data[0..len)) to p's lane to `shard` and wakes the
 * shard if it sleeps; inside
 * producer_enter. When the lane is full: -EAGAIN if timeout_ns is 0, else waits for room until
 * timeout_ns (UINT64_MAX: no limit) passes, then -ETIMEDOUT. While it waits the producer is
 * outside; -ESHUTDOWN: the engine began to stop meanwhile, and the producer stays outside.
 * After any other return it is still inside. Errors: -EINVAL shard out of range or len too
 * large for a lane (lane_max_len), -ENOMEM. */
int lane_push(struct producer *p, unsigned shard, lane_fn_t fn, void *arg, uint64_t aux,
              const void *head, uint32_t hlen, const void *data, uint32_t len, uint64_t timeout_ns);
/* As lane_push, without the look at whether the shard sleeps (nor the full barrier it needs):
 * for all but the last of a run of records to one shard. The caller ends the run with a
 * lane_push, or with lane_flush, or the records may wait until the shard next wakes. */
int lane_push_more(struct producer *p, unsigned shard, lane_fn_t fn, void *arg, uint64_t aux,
                   const void *head, uint32_t hlen, const void *data, uint32_t len,
                   uint64_t timeout_ns);
/* Ends a run of lane_push_more to `shard`: wakes the shard if it sleeps. Inside. */
void lane_flush(struct producer *p, unsigned shard);
/* After a record's seq_cst publish: hands a dormant lane back, wakes a sleeping shard. */
void lane_published(struct lane *l, unsigned shard);

/* The part of lane_push (more: lane_push_more) that most records take, inline in the caller:
 * a lane that exists, room as last seen, no padding, hlen + len <= lane_max_len (the caller's
 * check); the record's bytes are head's then data's, as lane_push's. False where it did
 * nothing: lane_push then does all of it. Inline because the record's stores are what the
 * producer waits on (for their lines to come over from the shard), and every store of a
 * call's frame and spilled arguments, queued behind them, is one fewer record in flight.
 * Inside. */
static inline bool lane_push_quick(struct producer *p, unsigned shard, lane_fn_t fn, void *arg,
                                   uint64_t aux, const void *head, uint32_t hlen, const void *data,
                                   uint32_t len, bool more)
{
    struct lane *l = p->lanes[shard];
    if (l == NULL)
        return false;
    uint32_t need = (LANE_HDR + hlen + len + LANE_SLOT - 1) / LANE_SLOT, cap = l->mask + 1;
    uint32_t pos = l->tail;
    if ((pos & l->mask) + need > cap || pos + need - l->head_seen > cap)
        return false;
    struct lane_slot *r =
        (struct lane_slot *)((char *)l->slots + (size_t)(pos & l->mask) * LANE_SLOT);
    r->len = hlen + len;
    r->fn = fn;
    r->arg = arg;
    r->aux = aux;
    /* Either may be NULL with no bytes, which memcpy may not be given. */
    if (hlen > 0)
        __builtin_memcpy((char *)r + LANE_HDR, head, hlen);
    if (len > 0)
        __builtin_memcpy((char *)r + LANE_HDR + hlen, data, len);
    l->tail = pos + need;
    if (more) {
        /* Release: as lane_push_more's. */
        atomic_store_explicit(&r->seq, pos + 1, memory_order_release);
        return true;
    }
    /* seq_cst: as lane_push's (a release, and our side of its two Dekkers). */
    atomic_exchange(&r->seq, pos + 1);
    lane_published(l, shard);
    return true;
}
/* The largest record a lane of p takes. */
uint32_t lane_max_len(const struct producer *p);

/* On the lane's shard: drain it again. */
void lane_unpark(struct lane *l);

/* The calling thread's own producer, made on first use; NULL on ENOMEM. Off the shards. */
struct producer *producer_self(void);

/* shard/ internals (loop.c, engine.c) */
unsigned lanes_drain(struct shard *s, unsigned budget);
bool lanes_pending(struct shard *s);
void lanes_release(struct shard *s, uint64_t *released);
void producers_stop(void);     /* the stopper, after refusing entries: wait for those inside */
void producers_teardown(void); /* the stopper, single-threaded: detach every producer */

#endif
