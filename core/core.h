/* Private to core/: actors on the shards. Each shard keeps its actors in a table of fixed-size
 * records (a ref's slot indexes it); the engine-wide part holds each shard's table and the
 * counters of every actor type seen. */
#ifndef PITH_CORE_H
#define PITH_CORE_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <pith/actor.h>
#include <pith/engine.h>

#include "hist.h"
#include "ticks.h"
#include "hooks.h"
#include "map.h"

#define CORE_LINE 64

#define LIKELY(x)   __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ref = shard (12 bits) | generation (24 bits, never 0) | slot (28 bits). Every spawn on a
 * shard takes the shard's next generation, so a stale ref cannot name a later actor until 2^24
 * more spawns on that shard. */
#define REF_SHARD_SHIFT 52
#define REF_GEN_SHIFT   28
#define REF_GEN_MASK    ((UINT32_C(1) << 24) - 1)
#define REF_SLOT_MASK   ((UINT32_C(1) << 28) - 1)
#define REF_MAX_SHARDS  4096

static inline pith_ref_t ref_make(unsigned shard, uint32_t gen, uint32_t slot)
{
    return ((uint64_t)shard << REF_SHARD_SHIFT) | ((uint64_t)gen << REF_GEN_SHIFT) | slot;
}
static inline unsigned ref_shard(pith_ref_t r)
{
    return (unsigned)(r >> REF_SHARD_SHIFT);
}
static inline uint32_t ref_gen(pith_ref_t r)
{
    return (uint32_t)(r >> REF_GEN_SHIFT) & REF_GEN_MASK;
}
static inline uint32_t ref_slot(pith_ref_t r)
{
    return (uint32_t)r & REF_SLOT_MASK;
}

/* Clients (client.c) have refs whose shard field is PITH_CLIENT_SHARD (pith/client.h). */
#define REF_CLIENT_SHARD 4095u
static inline bool ref_is_client(pith_ref_t r)
{
    return ref_shard(r) == REF_CLIENT_SHARD && ref_gen(r) != 0;
}

/* The `from` of a message a task sent on shard s: generation 0, so no actor's, and the behaviour
 * sees PITH_REF_NONE; its shard says where a notice of its loss goes (undelivered.c). */
static inline pith_ref_t ref_task(unsigned s)
{
    return ref_make(s, 0, REF_SLOT_MASK);
}
static inline bool ref_is_task(pith_ref_t r)
{
    return r != PITH_REF_NONE && ref_gen(r) == 0 && ref_slot(r) == REF_SLOT_MASK;
}

/* Request ids. An ask made on a shard: the shard in the top 12 bits, a sequence below. A
 * client's: REF_CLIENT_SHARD on top, the client's slot in the next 20 bits, a sequence below. */
#define REQ_SHARD_SHIFT 52
static inline unsigned req_shard(uint64_t req)
{
    return (unsigned)(req >> REQ_SHARD_SHIFT);
}
static inline bool req_is_client(uint64_t req)
{
    return req_shard(req) == REF_CLIENT_SHARD;
}
static inline uint32_t req_client_slot(uint64_t req)
{
    return (uint32_t)(req >> 32) & 0xFFFFFu;
}

/* A message in flight or in a mailbox: this header, then the payload (16-byte aligned).
 * Made by the sending thread, from a slab for another shard (slab.c) or with pith_malloc, and
 * given back with core_msg_free wherever it ends. */
struct mslab;
struct amsg {
    struct amsg *next;
    pith_ref_t to;
    pith_ref_t from;
    uint64_t req; /* ask id, 0: none */
    uint32_t type;
    uint32_t len;
    struct mslab *slab; /* NULL: its own pith_malloc block */
    /* When it was made (ticks_now(), never 0), for one message in HIST_SAMPLE on average that
     * a thread makes; 0 for the others. Its handling counts its time in the mailbox, its
     * handler's time and, with an SLA, the whole (type_counters). */
    uint64_t sent;
    uint64_t pad_; /* the payload stays 16-byte aligned */
};
_Static_assert(sizeof(struct amsg) == 64, "message header: payload 16-byte aligned");
/* In amsg.len, above the payload's length: the payload is a pith_buf_t reference (buf.c), owned
 * by the message; the message comes in past the mailbox's bound (the receiver asked for it:
 * replies, DOWN, timeouts, io results, notices within their own bound). */
#define AMSG_BUF      (UINT32_C(1) << 31)
#define AMSG_ADMIT    (UINT32_C(1) << 30)
#define AMSG_LEN_MASK (AMSG_ADMIT - 1)
_Static_assert(PITH_MSG_MAX - 1 == AMSG_LEN_MASK, "payload lengths fit below the flags");

/* A pith_buf_t: this header, then its bytes (16-byte aligned). */
struct pith_buf {
    _Atomic uint64_t refs;
    uint64_t len;
};

/* The behaviour's view of a message. */
static inline void core_msg_view(const struct amsg *m, pith_msg_t *out)
{
    out->type = m->type;
    out->from = ref_gen(m->from) != 0 ? m->from : PITH_REF_NONE;
    out->req = m->req;
    if (m->len & AMSG_BUF) {
        struct pith_buf *b = *(struct pith_buf *const *)(m + 1);
        out->buf = b;
        out->data = b + 1;
        out->len = (uint32_t)b->len;
    } else {
        out->buf = NULL;
        out->data = m + 1;
        out->len = m->len & AMSG_LEN_MASK;
    }
}

#define HIST_SAMPLE   16 /* one message in HIST_SAMPLE is timed */
#define DEPTH_BUCKETS 33 /* mailbox depths up to 2^32 */

/* Messages this thread makes before it stamps one with its send time (send.c): a gap drawn
 * from 1 to 32 each time (16.5 on average), so that a sender that takes turns between receivers
 * does not always stamp the same one's. */
extern __thread uint32_t core_stamp_gap;
uint32_t core_stamp_next_gap(void);

/* Counters of one type on one shard: written by that shard only, relaxed, read by any thread. */
struct type_counters {
    alignas(CORE_LINE) _Atomic uint64_t spawned, stopped, failed, messages, rejected, dropped,
        mailbox_max, turns, restarts, mutes, depth_now;
    _Atomic uint64_t hist[HIST_BUCKETS];
    _Atomic uint64_t hist_sum; /* ns of the samples in hist */
    /* Time in the mailbox, from the send to the start of handling, of the messages timed
     * (amsg.sent), and its sum in ns. */
    _Atomic uint64_t mbox[HIST_BUCKETS];
    _Atomic uint64_t mbox_sum;
    /* The depth of the mailbox one enqueue in HIST_SAMPLE left (itself counted): bucket b
     * holds depths in [2^(b-1), 2^b). */
    _Atomic uint64_t depth[DEPTH_BUCKETS];
    _Atomic uint64_t depth_sum; /* of the depths counted in depth */
    /* Stalls the detector saw in a behaviour of the type: counted by the watchdog thread
     * (core_stalled), with an atomic add since it is a second writer. */
    _Atomic uint64_t stalls;
    /* The type's SLA on this shard (sla.c): made and set by the shard (release), read by it
     * and by readers (acquire); and, while its PITH_SLA_SHED acts, the flag core_enqueue reads
     * (the shard's own) and the messages refused. */
    _Atomic(struct sla_shard *) sla;
    bool shedding;
    _Atomic uint64_t shed;
};

/* One actor type seen by this engine, with a counter block per shard. Listed once, never
 * removed before the engine is gone. */
struct type_rec {
    const pith_actor_type_t *type;
    struct type_rec *next;
    uint32_t mailbox_max, turn_msgs; /* resolved defaults */
    struct type_counters *per_shard; /* [n] */
    /* Bytes of the state's block before the state (core_spawn_ex: a virtual actor's entry);
     * every spawn of the type has the same. */
    _Atomic uint32_t state_prefix;
};

/* Actor record flags, above the 24 generation bits of `gen`. Whether an actor has timers,
 * watchers, names or muted senders is known from the side tables themselves. */
#define A_SCHEDULED (UINT32_C(1) << 24) /* a turn is queued or running */
#define A_RUNNING   (UINT32_C(1) << 25) /* its behaviour is on the stack */
#define A_STOP      (UINT32_C(1) << 26) /* stop when the behaviour returns */
#define A_TRAP      (UINT32_C(1) << 27) /* traps exits of linked actors */
#define A_MUTED     (UINT32_C(1) << 28) /* muted by a full mailbox: no turns until unmuted */
#define A_BECAME    (UINT32_C(1) << 29) /* pith_become gave it a behaviour (core_shard.became) */

/* One actor: 40 bytes of engine overhead, plus its state's allocation. gen holds the 24-bit
 * generation and the A_* flags. A free record has gen 0 and links the free list through `head`
 * (as a slot index + 1). Its behaviour is its type's, or (A_BECAME) the one pith_become gave
 * it, kept in core_shard.became: most actors never change theirs, and every byte here is paid
 * by every actor. */
struct actor {
    struct type_rec *rec;
    void *state;
    struct amsg *head, *tail;
    uint32_t gen; /* generation (low 20 bits) and A_* flags; 0: free */
    uint32_t depth;
};
_Static_assert(sizeof(struct actor) == 40, "actor record");

/* A linked actor to end once the actor_end on the stack returns. */
struct core_exit {
    pith_ref_t ref;
    int reason;
};

/* What a behaviour, init or terminate gets as `self`: on the stack for the call. */
struct pith_actor {
    struct actor *a;
    pith_ref_t ref;
};

#define CHUNK_SHIFT 12 /* records per chunk: 4096 (192 KiB) */
#define CHUNK_SIZE  (1u << CHUNK_SHIFT)

/* The actors of one shard; all but the counters are touched by that shard only. */
struct core_shard {
    unsigned id;
    struct actor **chunks;
    uint32_t nchunks, chunks_cap;
    uint32_t *chunk_live; /* [chunks_cap] records in use (an actor, or being spawned) per chunk */
    uint32_t free_head;   /* slot + 1 of the first free record, 0: none */
    uint32_t used;        /* records ever handed out (the rest of the last chunk is fresh) */
    uint32_t last_gen;    /* generation of the last spawn */
    uint64_t live;
    bool closing;           /* the shard has left its loop: sends and spawns fail */
    struct slab_out *slabs; /* [nslabs]: this shard's open message slab per destination */
    unsigned nslabs;
    bool trim_armed; /* a timer will give the empty table back */
    pith_timer_id_t trim_timer;
    struct type_rec *last; /* the type of the last spawn */
    uint64_t ask_seq;
    uint32_t depth_sample;   /* enqueues since the last whose depth was counted */
    struct map asks;         /* ask id -> struct ask (asks made here, waiting) */
    struct map timers;       /* ref -> list of struct atimer (actors that have timers) */
    struct map watchers;     /* ref -> list of struct watch (watched actors) */
    struct map watching;     /* ref -> list of struct watching (watch.c: actors that watch) */
    struct map names_of;     /* ref -> list of struct name_of (named actors) */
    struct map registry;     /* name hash -> list of struct reg_ent: this shard's replica */
    struct map stop_reasons; /* ref -> reason, for running actors asked to end abnormally */
    struct map muted;        /* receiver ref -> list of struct muted (it muted them) */
    struct map mutes;        /* sender ref -> receivers muting it now (mute.c) */
    struct map folded;       /* actor ref -> notices folded while its mailbox was full */
    struct map became;       /* actor ref -> the behaviour pith_become gave it (A_BECAME) */
    struct map parked;       /* actor ref -> client lanes waiting for its mailbox (ingress.c) */
    struct map room;         /* actor ref -> pith_when_room callbacks waiting (room.c) */
    uint32_t ending;         /* actor_end calls on the stack */
    struct core_exit *exits; /* link exits waiting for the outermost actor_end (watch.c) */
    uint32_t nexits, exits_cap;
    _Atomic uint64_t dead_letters, asks_made, replies, late_replies, ask_timeouts, timer_msgs;
    _Atomic uint64_t undelivered, undelivered_folded, undelivered_tasks, undelivered_unhandled;
    uint64_t unhandled_report_ns; /* when the default handler last printed */
    /* What runs, for the stall detector (shard_hooks.describe): the type of the actor whose
     * turn runs (NULL between turns) and its behaviour. Written by the shard, read by the
     * watchdog; relaxed, as the watchdog's reads are best effort. */
    _Atomic(const struct type_rec *) running;
    _Atomic(pith_anyfn_t) running_fn;
    /* The shard's word for what its task runs (shard_running_slot): a turn run at once
     * (core_run_now) stores there itself, where a call to shard_note_running cost more. */
    _Atomic(pith_anyfn_t) *note;
    /* Virtual actors (vactor.c): the directory part and activations of this shard, made on
     * first use; read by other threads only for counters (release store, acquire load). */
    _Atomic(struct vshard *) vs;
    struct pins *pins; /* pin.c: pith_mem_pin's, made on first use */
};

/* The engine-wide part, made by the first shard (or client) that needs it and freed when the
 * engine is gone (shard hooks). */
struct ctable;
struct core_engine {
    unsigned n;
    _Atomic(struct type_rec *) types;
    _Atomic(struct ctable *) clients;      /* client.c, made by the first client */
    _Atomic(struct core_shard *) shards[]; /* [n] */
};

/* The running engine's actor state; NULL between engines. Set with a CAS by the first thread
 * that needs it, cleared by engine_gone once no shard and no reader is left. */
extern _Atomic(struct core_engine *) core_eng;
/* The calling shard's actors; NULL outside the engine or before its first actor. */
extern __thread struct core_shard *core_self __attribute__((tls_model("initial-exec")));
/* The actor whose behaviour (or hook) runs on this thread, for the `from` of its sends. */
extern __thread pith_ref_t core_current __attribute__((tls_model("initial-exec")));

static inline struct actor *rec_at(const struct core_shard *cs, uint32_t slot)
{
    return &cs->chunks[slot >> CHUNK_SHIFT][slot & (CHUNK_SIZE - 1)];
}

/* The live actor `ref` names on this shard (cs->id == ref_shard(ref)), or NULL. */
static inline struct actor *core_find(const struct core_shard *cs, pith_ref_t ref)
{
    uint32_t slot = ref_slot(ref), gen = ref_gen(ref);
    if (UNLIKELY(slot >= cs->used || gen == 0))
        return NULL; /* a free record has generation 0: no ref names it */
    struct actor *a = rec_at(cs, slot);
    return (a->gen & REF_GEN_MASK) == gen ? a : NULL;
}

/* actor.c, for the other files of core/ */
struct core_engine *core_engine_get(void); /* made on first use; NULL: no engine, or ENOMEM */
struct core_shard *core_shard_get(void);   /* the calling shard's, made on first use */
/* The record of an actor type, listed on first use (actor.c); NULL on ENOMEM. */
struct type_rec *core_type_rec(struct core_shard *cs, const pith_actor_type_t *type);
/* sla.c: a latency (send to the end of handling) of a timed message of a type with an SLA on
 * the calling shard; the engine's end frees what the shards left. */
struct sla_shard;
void core_sla_note(struct sla_shard *ss, pith_ref_t ref, uint64_t ns);
void core_sla_free(struct sla_shard *ss);
/* The shard leaves its loop: its SLAs' timers go (they are the engine's, not the
 * application's, and not counted as released by the stop). */
void core_sla_exit(struct core_shard *cs);
/* The engine's stop released a task: true (and its argument freed) when it was sla.c's. */
bool core_sla_release(pith_fn_t fn, void *arg);
struct actor *core_lookup(const struct core_shard *cs, pith_ref_t ref);
struct amsg *core_msg_make(pith_ref_t to, pith_ref_t from, uint32_t type, const void *data,
                           uint32_t len);
/* As pith_spawn on the calling shard, with the state in a block of prefix + state_size
 * (rounded up to 16) + tail bytes: the state is at block + prefix (16-aligned; not NULL even
 * when state_size is 0), prefix bytes are zeroed, and prep(block, ref, ctx) runs before init
 * (which gets arg), in memory of `profile` (pith_spawn: the type's). Every spawn of one type
 * must use one prefix (a multiple of 16). */
typedef void (*core_prep_fn)(void *block, pith_ref_t ref, void *ctx);
int core_spawn_ex(const pith_actor_type_t *type, void *arg, size_t prefix, size_t tail,
                  pith_mem_profile_t profile, core_prep_fn prep, void *ctx, pith_ref_t *out);
static inline size_t core_state_span(size_t state_size)
{
    return (state_size + 15) & ~(size_t)15;
}

/* send.c */
/* Puts m (addressed to a live actor of this shard) in its mailbox, by the type's overflow
 * policy; on error (-EAGAIN full, -ENOMEM) m stays the caller's. */
int core_enqueue(struct core_shard *cs, struct actor *a, struct amsg *m);
/* Takes m, which follows prev (NULL: m is the head), out of a's mailbox; m is the caller's. */
void core_mailbox_take(struct core_shard *cs, struct actor *a, struct amsg *prev, struct amsg *m);
/* Sends a made message to m->to (an actor or a client) wherever it lives; m is consumed even
 * on error. force: past the mesh's backlog bound. */
int core_send_msg(struct amsg *m, bool force);
/* A message from another shard, run on the receiving shard. */
void core_deliver_task(void *arg);
/* pith_send's core for the layers of libpith (net, files): flags AMSG_ADMIT. Refuses nothing
 * for its tag. */
int core_send_sys(pith_ref_t to, uint32_t type, const void *data, uint32_t len, uint32_t flags);

/* undelivered.c: telling senders */
/* m (not consumed) will not be delivered, for `reason`: tell its sender, as actor.h says. */
void core_undelivered(struct core_shard *cs, const struct amsg *m, int reason);
/* The notices folded for an actor of this shard whose mailbox has room again. */
void core_folded_flush(struct core_shard *cs, struct actor *a, pith_ref_t ref);
void core_undelivered_task(void *arg);
/* A notice for an actor of this shard (its mailbox, or folded). */
void core_notice_actor(struct core_shard *cs, struct actor *a, pith_ref_t ref,
                       const pith_undelivered_t *u);

/* room.c: pith_when_room */
void core_room_fire(struct core_shard *cs, pith_ref_t ref);
void core_room_task(void *arg);
void core_room_send(void *arg);
void core_room_free(struct core_shard *cs);

/* What an actor of this shard's turn end or end owes the side tables that wait for its
 * mailbox: mutes, parked lanes, room callbacks, folded notices (actor.c). */
static inline bool core_waiters(const struct core_shard *cs)
{
    return (cs->muted.len | cs->parked.len | cs->room.len | cs->folded.len) != 0;
}
/* Ends an actor of this shard now, or when its running behaviour returns; a supervisor asked
 * to stop normally begins its orderly stop instead (supervisor.c). Errors: -ESRCH, -ENOMEM. */
int core_stop_here(struct core_shard *cs, pith_ref_t ref, int reason);
/* As core_stop_here, without a supervisor's orderly stop: a supervisor too ends now. */
int core_end_now(struct core_shard *cs, pith_ref_t ref, int reason);
pith_ref_t core_current_ref(void);
/* A counter that only the calling shard writes: a relaxed load and store (a plain add and a
 * plain store on x86); readers on other threads never see torn values. */
static inline __attribute__((always_inline)) void core_bump(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}
/* A type's counters on this shard. */
static inline __attribute__((always_inline)) struct type_counters *
core_counters(const struct core_shard *cs, const struct type_rec *r)
{
    return &r->per_shard[cs->id];
}

int core_schedule(struct core_shard *cs, struct actor *a, pith_ref_t ref);
/* core_run_now: turn.h. */

/* mute.c: the MUTE_SENDER policy */
int core_mute_full(struct core_shard *cs, struct actor *a, struct amsg *m); /* 0: take m */
void core_mute_drained(struct core_shard *cs, pith_ref_t ref);
void core_mute_task(void *arg);
void core_mute_free(struct core_shard *cs);
/* Holds an actor of this shard from its turns as one more mute would (its mail waits), or lets
 * that hold go (and schedules it when mail waits): for an activation still loading. Errors:
 * -ENOMEM (not held). */
int core_mute_hold(struct core_shard *cs, pith_ref_t ref, bool on);

/* slab.c: messages for other shards */
struct amsg *core_slab_msg(struct core_shard *cs, unsigned dst, size_t bytes); /* NULL: none */
void core_msg_free(struct amsg *m);
int core_slabs_init(struct core_shard *cs, unsigned n);
void core_slabs_close_all(struct core_shard *cs);
/* A message for shard dst (-1: this one or unknown) made by the calling thread. */
struct amsg *core_msg_make_for(int dst, pith_ref_t to, pith_ref_t from, uint32_t type,
                               const void *data, uint32_t len);
/* As pith_malloc, without the warning for the first allocation outside the engine: for
 * libpith's own blocks. */
void *core_alloc(size_t size);

/* ask.c: asks, replies and actor timers */
void core_ask_task(void *arg); /* a reply travelling to its asking shard */
/* Ends the ask u->req of this shard with u->reason (its request was not delivered): its
 * callback, or a PITH_MSG_UNDELIVERED to the asking actor. false: no such ask (it had ended). */
bool core_ask_fail(struct core_shard *cs, const pith_undelivered_t *u);
/* Opens an ask on this shard (pith_ask's bookkeeping: its id, its timeout): *asker is the
 * running actor (PITH_REF_NONE in a task), *id the request id for the message. Then
 * core_ask_close says whether the request went (counted) or not (the ask is taken back).
 * Errors: -EINVAL no cb outside a behaviour, -ENOMEM. */
int core_ask_open(struct core_shard *cs, uint64_t timeout_ns, pith_reply_fn_t cb, void *ctx,
                  pith_ref_t *asker, uint64_t *id);
void core_ask_close(struct core_shard *cs, uint64_t id, bool sent);
void core_timers_end(struct core_shard *cs, pith_ref_t ref);
void core_asks_free(struct core_shard *cs);

/* watch.c: monitors and links */
void core_watch_task(void *arg);
/* Makes `watcher` (an actor of any shard) a monitor of `target`, an actor of this shard, for
 * the engine's own use: pith_demonitor does not know of it. A target that has ended sends its
 * DOWN (PITH_EXIT_NOPROC) at once. Errors: -ENOMEM. */
int core_watch_add(struct core_shard *cs, pith_ref_t target, pith_ref_t watcher);
void core_watchers_end(struct core_shard *cs, pith_ref_t ref, int reason);
/* What an actor of this shard that has ended still had in its watches of others. */
void core_watching_end(struct core_shard *cs, pith_ref_t ref);
void core_watchers_free(struct core_shard *cs);

/* supervisor.c and sup_child.c (sup.h) */
extern const pith_actor_type_t core_sup_type;
/* Begins the orderly stop of supervisor a (ref) of this shard. Errors: -ENOMEM, -ESHUTDOWN. */
int core_sup_stop(struct core_shard *cs, struct actor *a, pith_ref_t ref);
/* A supervisor's task released at stop: true when it was one (its argument freed). */
bool core_sup_release(pith_fn_t fn, void *arg);

/* pin.c: the shard's pins end with it (their pages unlocked as pith_mem_unpin does). */
void core_pins_free(struct core_shard *cs);

/* vactor.c: virtual actors */
void core_vactor_exit(struct core_shard *cs); /* after the shard's actors have ended */
bool core_vactor_release(pith_fn_t fn, void *arg);
void core_vactor_gone(struct core_shard *cs); /* the engine is gone: cs's part is freed */
/* For the SLA monitor's remedies (sla.c), on the activation's shard, with t the type the SLA
 * names. vactor_sla_check: -EINVAL when t is not a virtual type's activations' type, or the
 * remedies need what its type lacks (related keys to pre-warm; a type that can move). The
 * others act on the live activation `ref` of type t, outside its turn: 1 (or, pre-warming, the
 * keys asked) when they did something, 0 when there was nothing to do (it went, it is hot
 * already, it is moving), or a negative errno. */
int vactor_sla_check(const pith_actor_type_t *t, unsigned remedies);
/* An SLA's memory guarantee for t on this shard: reserves (or gives back the promise of) hot
 * memory, and from then on the type's activations here go to hot memory while its states in
 * hot memory stay within `bytes`, and memory pressure leaves those be. Errors: -EINVAL t is
 * not a virtual type's; -ENOMEM (nothing changes). */
int vactor_sla_guarantee(struct core_shard *cs, const pith_actor_type_t *t, size_t bytes);
/* Any thread, as a reader (shard_reader_enter): the bytes of t's states in hot memory on cs's
 * shard, and the activations within the guarantee that found no hot memory. */
void vactor_sla_mem(struct core_shard *cs, const pith_actor_type_t *t, uint64_t *hot,
                    uint64_t *misses);
int vactor_sla_profile(struct core_shard *cs, pith_ref_t ref, const pith_actor_type_t *t);
int vactor_sla_prewarm(struct core_shard *cs, pith_ref_t ref, const pith_actor_type_t *t);
int vactor_sla_migrate(struct core_shard *cs, pith_ref_t ref, const pith_actor_type_t *t,
                       unsigned to);
/* As core_msg_make_for, with `extra` more bytes after the payload (from offset
 * core_msg_extra_off(len)), which the payload's length does not count. */
struct amsg *core_msg_make_ext(int dst, pith_ref_t to, pith_ref_t from, uint32_t type,
                               const void *data, uint32_t len, size_t extra);
static inline size_t core_msg_extra_off(uint32_t len)
{
    return ((size_t)len + 15) & ~(size_t)15;
}

/* registry.c */
void core_reg_task(void *arg);
void core_names_end(struct core_shard *cs, pith_ref_t ref);
void core_registry_free(struct core_shard *cs);

static inline uint64_t core_hash(const char *s, size_t n)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * UINT64_C(1099511628211);
    return h | 1; /* never 0: map keys are nonzero */
}

#endif
