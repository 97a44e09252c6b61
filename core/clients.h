/* Private to core/: clients (pith/client.h). The handle is the application's (client.c); what
 * the shards touch lives in a client entry (struct cent) that the handle and the engine both
 * reference, so that neither the handle's close nor the engine's stop frees it under the other.
 * Shards find an entry from a client's ref in the engine's table and use it only within one loop
 * iteration: a client's close makes its ref stale, then waits until every shard has passed the
 * end of an iteration (shard_quiesce) before it takes the entry apart. */
#ifndef PITH_CORE_CLIENTS_H
#define PITH_CORE_CLIENTS_H

#include <pthread.h>

#include <pith/client.h>
#include <pith/vactor.h>

#include "core.h"
#include "lane.h"
#include "ring.h"

#define MAX_CLIENT_SHARDS 4095 /* the engine's most shards */
#define CLIENT_SLOT_BITS  16
#define CLIENT_MAX        (1u << CLIENT_SLOT_BITS)
#define CLIENT_CHUNK      256u

/* Internal message tags, between the engine and its clients. */
#define MSG_SPAWNED (PITH_MSG_RESERVED + 0x20u) /* payload: struct spawned */
#define MSG_CALLED  (PITH_MSG_RESERVED + 0x21u) /* payload: void *result */

struct spawned {
    pith_ref_t ref;
    int32_t err;
    uint32_t pad;
};

/* What shards and the client share. One reference is the handle's, one the engine's table's. */
struct cent {
    _Atomic uint32_t refs;
    /* Futex word: 1 while the client sleeps in a receive. A shard that gave it a message
     * clears it and wakes the client. */
    _Atomic uint32_t wake;
    /* Notices for this client that found its inbox full: reported as one summary. */
    _Atomic uint64_t folded;
    /* The engine's answers to its spawns and calls (ingress.c), newest first. */
    _Atomic(struct amsg *) answers;
    uint32_t inbox_cap; /* slots of each inbox ring (a power of two) */
    unsigned n;         /* shards */
    /* The inbox: one SPSC ring per shard, made by that shard on its first message for this
     * client; each slot carries one struct amsg * in tasks[0].arg. */
    _Atomic(struct ring *) inbox[];
};

/* One table slot: the generation of the slot's client (0: none), and its entry. */
struct cslot {
    _Atomic uint32_t gen;
    _Atomic(struct cent *) ent;
    uint32_t next_free; /* slot + 1, under the table's lock */
    uint32_t seq;       /* the last request sequence a client of this slot used */
};

/* The engine's clients, made on the first client and freed when the engine is gone. */
struct ctable {
    pthread_mutex_t lock; /* slot allocation; the stopper's sweep */
    uint32_t free_head;   /* slot + 1 */
    uint32_t used;        /* slots ever handed out */
    _Atomic(struct cslot *) chunks[CLIENT_MAX / CLIENT_CHUNK];
};

/* The client's inbox as read by its thread, and the handle itself. */
struct pith_client {
    struct producer own; /* an opened client's lanes */
    struct producer *p;  /* &own, or the thread's producer for pith_client_self */
    uint64_t epoch;      /* the engine the ref and entry belong to */
    pith_ref_t ref;
    struct cent *ent; /* NULL: none yet, or let go of */
    pith_client_config_t cfg;
    unsigned next_shard;                 /* where the next receive starts looking */
    struct amsg *current;                /* the last message handed out, freed at the next call */
    struct amsg *held, *held_tail;       /* set aside by an ask while it waited */
    struct amsg *answers, *answers_tail; /* taken from cent.answers, oldest first */
    uint32_t nheld;
    uint32_t seq;
    pith_undelivered_t summary; /* the payload of a summary made from cent.folded */
    pith_client_stats_t st;
    bool thread_own; /* pith_client_self's */
    /* Actors spawned too late for a spawn that gave up, whose stop found the lane full: asked
     * to stop again at the next call and at close. */
    pith_ref_t *orphans;
    uint32_t norphans, orphans_cap;
};

/* client.c: the table, for the shards' side and the engine's stop */
/* The entry of the client `ref` names, or NULL; on a shard, valid until the end of the loop
 * iteration. */
struct cent *client_lookup(pith_ref_t ref);
/* The entry of whichever client holds `slot` now, and its ref through *ref. */
struct cent *client_lookup_slot(uint32_t slot, pith_ref_t *ref);
/* Wakes the client if it sleeps in a receive (after a shard gave it something). */
void client_wake(struct cent *e);
void core_clients_stopping(void);
void core_clients_gone(struct core_engine *ce);
/* pith_send and pith_send_buf from a thread outside the engine: its own client, not waiting. */
int client_send_outside(pith_ref_t to, uint32_t type, const void *data, uint32_t len, uint32_t flag,
                        bool *made);
/* pith_reply from a thread outside the engine. */
int client_reply_outside(uint64_t req, uint32_t type, const void *data, uint32_t len);

/* An inbox slot (struct envelope) carries a message one of two ways: a struct amsg * in
 * tasks[0].arg (count 1), or, for a copied payload of up to INBOX_INLINE bytes, the message
 * itself in the slot (count INBOX_INLINE_TAG | len), which spares the shard an allocation and the
 * client a free into the shard's heap. */
#define INBOX_INLINE     24u
#define INBOX_INLINE_TAG (UINT32_C(1) << 31)
struct inbox_inline {
    uint32_t type;
    uint32_t len;
    pith_ref_t from;
    uint64_t req;
    char data[INBOX_INLINE];
};
_Static_assert(sizeof(struct inbox_inline) == 3 * sizeof(struct task), "fits a ring slot");

/* ingress.c: what runs on a shard for a client */
/* A copy of data[0..len) for the client `to`, or with `to` PITH_REF_NONE for the client whose
 * ask `req` names (a reply), from this shard. Errors: -ESRCH no such client, -EAGAIN its inbox
 * from here is full, -ENOMEM. */
int client_send_copy(struct core_shard *cs, pith_ref_t to, pith_ref_t from, uint32_t type,
                     uint64_t req, const void *data, uint32_t len);
/* Puts m (to a client) in the client's inbox from this shard; on error m stays the caller's.
 * Errors: -ESRCH no such client, -EAGAIN its inbox from here is full, -ENOMEM. */
int client_deliver(struct core_shard *cs, struct amsg *m);
/* As client_deliver for a reply (m->req names the client's slot; m->to is set here). */
int client_deliver_req(struct core_shard *cs, struct amsg *m);
/* An answer to one of a client's own calls (spawn, call, the failure of an ask), past the
 * inbox's bound: each call has one. m->to names the client; m is consumed on success.
 * Errors: -ESRCH. */
int answer_put(struct amsg *m);
/* A notice for a client: into its inbox (into its answers for the failure of its own ask), or
 * folded into its count. */
void client_notice(struct core_shard *cs, pith_ref_t client, const pith_undelivered_t *u);
int client_lane_msg(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len);
int client_lane_spawn(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len);
int client_lane_call(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len);
/* Stops the actor `arg` (a late spawn's, that nobody knows of). */
int client_lane_stop(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len);
/* The lanes parked on an actor's full mailbox run again (it drained, or ended). */
void core_lanes_resume(struct core_shard *cs, pith_ref_t ref);
void core_lanes_free(struct core_shard *cs);

/* In a lane record's aux: the message tag in the low 32 bits, and these flags. */
#define LREC_REQ (UINT64_C(1) << 32) /* the bytes start with a uint64_t request id */
#define LREC_BUF (UINT64_C(1) << 33) /* the payload is a pith_buf_t * (the record's reference) */
#define LREC_MSG (UINT64_C(1) << 34) /* the payload is a struct amsg * made by the client */

/* Virtual actors (vactor.c) */
/* A lane record carrying a virtual message by pointer (its data: the struct amsg *). */
int core_lane_vmsg(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len);
/* A lane record carrying a virtual message whole, made by client_vsend for what fits a lane:
 * its bytes are the payload (so that it keeps the record's 16-byte alignment) and then the
 * key; the key's hash rides in the record's arg, and its aux holds the tag (bits 0..31), the
 * key's length (32..39) and the type's registration less 1 (40..47). A 2-byte key and a
 * 30-byte payload fill one 64-byte slot. */
#define VLREC_KLEN_SHIFT 32
#define VLREC_TID_SHIFT  40
_Static_assert(sizeof(void *) == sizeof(uint64_t), "a lane record's arg carries a 64-bit hash");
int core_lane_vmsg_inline(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len);
/* The record waits in lane l until `to`'s mailbox has drained to half. Errors: -ENOMEM. */
int core_lane_park(struct core_shard *cs, struct lane *l, pith_ref_t to);
/* A message for virtual actor `to` made by the calling thread for shard dst (-1: unknown),
 * with its trailer; flag goes into its length (AMSG_BUF). NULL: ENOMEM. */
struct amsg *core_vmsg_make(int dst, const pith_vref_t *to, pith_ref_t from, uint32_t type,
                            const void *data, uint32_t len, uint32_t flag);
unsigned core_vref_shard(const pith_vref_t *to, unsigned n); /* its directory shard */
bool core_vref_ok(const pith_vref_t *to);                    /* made by pith_vref */
/* pith_client_vsend's body (client.c); flag AMSG_BUF: data is &buf, whose reference the
 * message takes when this returns 0. */
int client_vsend(struct pith_client *c, const pith_vref_t *to, uint32_t type, uint32_t flag,
                 const void *data, uint32_t len, uint64_t timeout_ns);

#endif
