/* Virtual actors: named by (type, key), never spawned or stopped by the application. The first
 * message to a key activates exactly one instance of the type's actor on this node; an
 * activation that has had no message for the type's idle time is deactivated, and the next
 * message activates a new one. A virtual ref (pith_vref_t) is a plain value that never goes
 * stale: keep it, copy it, send to it from any thread for as long as the process lives.
 *
 * Where an activation lives: each key has a directory shard, picked by a jump consistent hash
 * of the key's hash over the shards. The directory shard owns the key's entry, so only it
 * activates, and only once. Its placement picks the activation's shard: with PITH_PLACE_HASH
 * (the default) the directory shard itself, so a message for the key crosses at most one ring.
 * An activation placed elsewhere (another placement, pith_vactor_migrate, rebalancing) is
 * reached through the directory shard, which forwards: two rings. A shard that keeps sending to
 * such a key (8 messages) learns where it lives, in one round trip through the directory, and
 * then sends straight there: one ring, or none from the activation's own shard. Each shard
 * keeps 1,024 such places (a slot per hash); a place gone stale costs its messages a trip
 * back, never their order. Messages from one sender to one virtual actor arrive in the order
 * sent, across activations and moves (a sender is an actor, a shard's tasks, or a client): an
 * activation that ends or moves away sends what it had not handled back to the directory
 * shard, which hands it on before anything newer. Clients always go through the directory.
 *
 * An activation is an ordinary actor of the type's actor type (behaviour, state, mailbox bound
 * and overflow policy, memory profile, budget): the behaviour answers asks with pith_reply and
 * sees msg->from as from any send. Its ref (pith_self) names this activation only; give others
 * the virtual ref. A behaviour's failure or a pith_stop ends the activation (on_deactivate,
 * then the actor type's terminate, run as for any end); the next message activates afresh. */
#ifndef PITH_VACTOR_H
#define PITH_VACTOR_H

#include <stdint.h>

#include <pith/actor.h>
#include <pith/api.h>
#include <pith/client.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Keys are at most this many bytes; they compare as bytes (the hash is only a hint). */
#define PITH_VKEY_MAX 128u
/* Types registered at most (for the life of the process). */
#define PITH_VTYPES_MAX 64u
/* The default idle time: 15 minutes, as Orleans. */
#define PITH_VIDLE_DEFAULT (UINT64_C(15) * 60 * 1000000000)
/* idle_ns that means "never deactivate for idleness". */
#define PITH_VIDLE_NEVER UINT64_MAX

/* Where a new activation goes. */
typedef enum pith_placement {
    PITH_PLACE_HASH = 0,  /* the key's directory shard */
    PITH_PLACE_LOCAL = 1, /* the shard of the message's sender (a client's: the directory) */
    /* The shard with the fewest live activations of the type (read from each shard's counter
     * when placing: a hint, not a lock; ties go to the directory shard, then the lowest). */
    PITH_PLACE_LEAST_LOADED = 2,
    /* As PITH_PLACE_LEAST_LOADED among the shards whose CPU is on NUMA node numa_node (all
     * shards, when none is). */
    PITH_PLACE_NUMA = 3,
    PITH_PLACE_FN = 4, /* the type's place() */
    /* pith_vactor_info's placement of an activation that came by a move, not by placing. */
    PITH_PLACE_MIGRATED = 5,   /* pith_vactor_migrate */
    PITH_PLACE_REBALANCED = 6, /* the runtime's rebalancing (PITH_VTYPE_REBALANCE) */
} pith_placement_t;

/* Why an activation began (on_activate's reason). */
#define PITH_VACT_MESSAGE 1 /* a message came for the key */
#define PITH_VACT_PREWARM 2 /* pith_vactor_prewarm, or a related key's activation */
/* It moved here (pith_vactor_migrate, rebalancing): the state is the old activation's, copied
 * byte for byte before on_activate; the actor type's init did not run. */
#define PITH_VACT_MIGRATED 3

/* on_activate's answer when it finishes later (pith_vactor_activated). */
#define PITH_VACT_LATER 1

/* Why an activation ends (on_deactivate's reason). */
#define PITH_VDEACT_IDLE     1 /* no message for the type's idle time */
#define PITH_VDEACT_SELF     2 /* pith_vactor_deactivate */
#define PITH_VDEACT_CAP      3 /* the shard was at the type's cap of activations */
#define PITH_VDEACT_ENDED    4 /* its behaviour failed, or it was stopped or killed */
#define PITH_VDEACT_SHUTDOWN 5 /* the engine stopped */
#define PITH_VDEACT_PRESSURE 6 /* its shard's memory was near its cap (PITH_VTYPE_SHED) */
/* It moves to another shard (pith_vactor_migrate, rebalancing): its state lives on in the next
 * activation, so on_deactivate must leave what the state owns (the actor type's terminate
 * does not run). */
#define PITH_VDEACT_MIGRATED 7
#define PITH_VDEACT_REASONS  8 /* reasons are below this */

/* pith_vtype_t.flags */
/* Under memory pressure (a shard's memory in use past 3/4 of its cap, checked every 64
 * activations, each one when states are 4 KiB or more, and at each idle sweep) the shard
 * deactivates its least recently used idle activations of the type, down to 1/2, before an
 * allocation fails; an activation that finds no memory all the same sheds some and tries
 * once more. */
#define PITH_VTYPE_SHED (1u << 0)
/* Locality-aware rebalancing: each activation keeps a majority vote over the shards its
 * messages come from (a message from its own shard votes against any other); when one other
 * shard is 64 votes ahead and holds no more live activations of the type than this one does
 * plus a quarter (and 16), the activation migrates there. Of two
 * activations that talk only to each other, the one on the higher-numbered shard moves, so
 * a pair never swaps places. Off by default. */
#define PITH_VTYPE_REBALANCE (1u << 1)

struct pith_vref;
struct pith_persist_type;

/* A virtual actor type. Register it once (pith_vtype_register) and keep the object alive and
 * unchanged for the life of the process (a static object is the usual choice). */
typedef struct pith_vtype {
    /* Its name: 1 to PITH_NAME_MAX bytes, unique among the registered types; hashed with each
     * key, so that two types' actors of one key are two actors. */
    const char *name;
    /* What an activation is. Its init, if any, runs with arg NULL, before on_activate. */
    const pith_actor_type_t *actor;
    /* An activation without a message for this long is deactivated (between idle_ns and
     * 1.25 idle_ns after its last message, plus the shard's timer lateness: a sweep ticks
     * every idle_ns / 4, and at most every millisecond, so idle times under 4 ms act as 4 ms);
     * 0: PITH_VIDLE_DEFAULT; PITH_VIDLE_NEVER: never. */
    uint64_t idle_ns;
    pith_placement_t placement; /* where activations go (PITH_PLACE_HASH) */
    /* Runs on the activation's shard after init, before any message: 0 to go on, or a
     * negative errno: the activation ends (terminate runs, on_deactivate does not) and the
     * message that caused it comes back undelivered with that reason (an ask fails with it);
     * the next message tries again. PITH_VACT_LATER: the activation finishes later (its state
     * loads from a file, say) with pith_vactor_activated; meanwhile messages wait in its
     * mailbox, bounded by its policy, and are handled in order once it is done. key is valid
     * during the call. NULL: nothing to do. */
    int (*on_activate)(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason);
    /* Runs when the activation ends, with a PITH_VDEACT_* reason, before the actor type's
     * terminate and before its state is freed. NULL: nothing to do. */
    void (*on_deactivate)(pith_actor_t *self, void *state, int reason);
    /* Live activations per shard at most (0: no cap). A shard at the cap deactivates its least
     * recently used idle activation of the type (PITH_VDEACT_CAP) to make room; with none idle,
     * the message comes back undelivered with -EAGAIN. */
    uint32_t max_per_shard;
    /* 0: each key is one actor. N > 0: a stateless worker type, as Orleans's: no directory
     * entry and no identity; each shard keeps a pool of up to N activations of the type and
     * gives a message to an idle one, else to a new one while the pool is under N, else to
     * the one with the fewest messages waiting. A message goes to the sender's own shard (a
     * client's, to the key's directory shard), so keys only spread clients' messages over the
     * shards. Order between two messages is kept only while one worker takes both. Workers
     * go when idle as other activations do; max_per_shard does not apply, pith_vactor_info
     * answers -EINVAL and pith_vactor_list does not list them. */
    uint32_t workers;
    uint32_t flags; /* PITH_VTYPE_* */
    /* The keys to pre-warm when this key is activated by a message (the RFC's connected
     * actors): fills out[0..max) and returns how many (at most max; max is 16). Runs on the
     * activating shard after on_activate; each is pre-warmed as pith_vactor_prewarm does, and
     * none of them pre-warms its own related keys. NULL: none. */
    uint32_t (*related)(const void *key, uint32_t len, struct pith_vref *out, uint32_t max);
    /* PITH_PLACE_FN: the shard for a new activation of key, given the shard of the message's
     * sender (UINT_MAX for a client or a pre-warm from outside) and the number of shards; a
     * shard out of range means the directory shard. Runs on the directory shard. */
    unsigned (*place)(const void *key, uint32_t len, unsigned sender, unsigned shards);
    int numa_node; /* PITH_PLACE_NUMA: the node */
    /* Event sourcing (pith/persist.h): the state is rebuilt from the journal at each
     * activation. Such a type has hash placement (its activations live on the key's home
     * shard, where its journal is), no workers, no rebalancing, and pith_vactor_migrate says
     * -EINVAL. NULL: the state is not kept. */
    const struct pith_persist_type *persist;
} pith_vtype_t;

/* Registers t (copied: t itself must stay, as its address names the type). Any thread, before
 * or while an engine runs. Errors: -EINVAL t, its name or its actor type invalid (as
 * pith_spawn checks), a name too long or empty; -EEXIST a type of that name is registered (t
 * itself: 0, it already is); -EINVAL a placement unknown (or PITH_PLACE_MIGRATED or
 * PITH_PLACE_REBALANCED), PITH_PLACE_FN without place; -ENOSPC PITH_VTYPES_MAX types are
 * registered. */
PITH_API int pith_vtype_register(const pith_vtype_t *t);

/* A virtual ref: a value, valid for the life of the process once made by pith_vref. Copy it
 * freely; do not change its fields (hash is derived from type and key, and sends trust it). */
typedef struct pith_vref {
    const pith_vtype_t *type; /* its type */
    uint64_t hash;            /* keyed hash of the type's name and the key (a per-process key) */
    uint32_t len;             /* bytes of key */
    uint32_t tid;             /* the type's registration, as pith_vref found it */
    unsigned char key[PITH_VKEY_MAX]; /* the key's bytes, len of them */
} pith_vref_t;

/* The actor type t's activations run as: a copy of t->actor with the engine's hooks, so not
 * t->actor itself. It is the type that pith_actor_type_stats, the metrics' `type` label and
 * pith_sla_set (pith/sla.h) know the virtual type by. NULL: t is not registered. Any thread. */
PITH_API const pith_actor_type_t *pith_vtype_actor(const pith_vtype_t *t);

/* Makes *out name (type, key[0..len)). Any thread. Errors: -EINVAL out NULL, key NULL with
 * len > 0, len > PITH_VKEY_MAX; -ENOENT type is not registered. */
PITH_API int pith_vref(const pith_vtype_t *type, const void *key, size_t len, pith_vref_t *out);

/* The directory shard of v in the running engine (where its activation lives, with hash
 * placement); UINT_MAX when no engine runs or v was not made by pith_vref. Any thread. */
PITH_API unsigned pith_vref_shard(const pith_vref_t *v);

/* As pith_send, to the virtual actor `to` (activated if it is not). From a shard (an actor's
 * behaviour or a task) the message goes to the key's directory shard; from a thread outside the
 * engine it goes through the thread's own client, without waiting (pith_client_vsend waits).
 * What is not delivered (the activation's mailbox is full and its type rejects, on_activate
 * failed, the shard is at its cap with none idle) comes back as pith_send's notices say, with
 * `to` the activation's ref when there was one.
 * Errors: -EINVAL to NULL or not made by pith_vref, type reserved, data NULL with len > 0;
 * -EAGAIN the mailbox is full (same shard) or the mesh or the lane pushes back; -ENOMEM;
 * -ESHUTDOWN; and on the directory shard, the errors of activating (on_activate's). */
PITH_API int pith_vsend(const pith_vref_t *to, uint32_t type, const void *data, uint32_t len);
/* As pith_send_buf, to a virtual actor. */
PITH_API int pith_vsend_buf(const pith_vref_t *to, uint32_t type, pith_buf_t *buf);
/* As pith_ask, to a virtual actor: from a shard, with a callback or (from a behaviour) the
 * reply as a message. Errors: as pith_ask and pith_vsend. */
PITH_API int pith_vask(const pith_vref_t *to, uint32_t type, const void *data, uint32_t len,
                       uint64_t timeout_ns, pith_reply_fn_t cb, void *ctx, uint64_t *req_out);
/* As pith_client_send, to a virtual actor: a client's messages to one virtual actor arrive in
 * the order sent, and a full mailbox pushes the client back (its message waits in the lane)
 * instead of refusing it, while the activation lives on its directory shard. One placed or
 * moved elsewhere is reached by a forward, and its full mailbox refuses as for any send from
 * another shard: the message comes back undelivered (a PITH_MSG_UNDELIVERED in the inbox). */
PITH_API int pith_client_vsend(pith_client_t *c, const pith_vref_t *to, uint32_t type,
                               const void *data, uint32_t len, uint64_t timeout_ns);
/* One message of pith_client_vsend_batch. */
typedef struct pith_client_vmsg {
    const pith_vref_t *to; /* made by pith_vref */
    uint32_t type;         /* below PITH_MSG_RESERVED */
    uint32_t len;          /* bytes at data */
    const void *data;      /* copied at send */
} pith_client_vmsg_t;

/* Sends msgs[0..n) in order, each as pith_client_vsend would, waiting for room up to
 * timeout_ns for the whole batch (0: not at all). As pith_client_send_batch: the messages to
 * one shard are published with one check of whether that shard sleeps (a full barrier) instead
 * of one each; the way for a feed handler to pass on what one packet carried to its
 * instruments' actors. Returns how many were sent, from the first: n, or fewer when one failed
 * (the rest are not sent); the first's -errno when none was. Errors: as pith_client_vsend
 * (-ETIMEDOUT when room did not come in time), and -EINVAL msgs NULL with n > 0. */
PITH_API int pith_client_vsend_batch(pith_client_t *c, const pith_client_vmsg_t *msgs, unsigned n,
                                     uint64_t timeout_ns);
/* As pith_client_ask, to a virtual actor (activated if it is not); a failed activation ends the
 * ask with on_activate's error. */
PITH_API int pith_client_vask(pith_client_t *c, const pith_vref_t *to, uint32_t type,
                              const void *data, uint32_t len, uint64_t timeout_ns,
                              pith_msg_t *reply);

/* The running activation's key (*len its bytes; the pointer is valid while the activation
 * lives). NULL when self is not a virtual actor's activation. From its behaviour, init,
 * on_activate, on_deactivate or terminate. */
PITH_API const void *pith_vactor_key(const pith_actor_t *self, uint32_t *len);
/* Finishes an activation whose on_activate answered PITH_VACT_LATER: with err 0 it begins and
 * handles the messages that waited, in order; with a negative errno it ends (terminate runs,
 * on_deactivate does not) and every message that waited comes back undelivered with err (an
 * ask fails with it); the next message tries again. On the activation's shard, from any task
 * or callback (act is pith_self's value in on_activate). Errors: -EINVAL act is not an
 * activation of this shard waiting to finish, or err > 0; -EPERM off the engine. */
PITH_API int pith_vactor_activated(pith_ref_t act, int err);

/* Deactivates the running activation once its behaviour returns (PITH_VDEACT_SELF). Messages
 * already in its mailbox, and those that come later, go to the next activation, in order.
 * Errors: -EINVAL self is not a virtual actor's activation. */
PITH_API int pith_vactor_deactivate(pith_actor_t *self);

/* Activates v ahead of its first message (on_activate's reason PITH_VACT_PREWARM); nothing if
 * it is active. Any thread; from a shard other than the key's directory shard, and from outside
 * (through the thread's client, without waiting), it is sent there and done later. Counted as
 * used when a message reaches it before it is deactivated, else as wasted.
 * Errors: as pith_vsend (on the directory shard, those of activating). */
PITH_API int pith_vactor_prewarm(const pith_vref_t *v);

/* Pages through the live activations of t on `shard`, without stopping it for long: from
 * *cursor (0 to begin), fills out[0..max) with their virtual refs and returns how many, and
 * sets *cursor for the next call (0 when done). Each call looks at a bounded part of the
 * shard's directory, so a call may return 0 with *cursor not 0: call again. An activation that
 * lives through the whole listing is returned once, whatever the directory does between two
 * calls (it grows and shrinks); one that comes or goes meanwhile may or may not be. Keys of one
 * 64-bit hash come in one page: if more than max share one, the rest of them are left out. From a
 * thread outside the engine (it asks the shard and waits) or on `shard` itself. Errors: -EINVAL;
 * -ENOENT t not registered; -EDEADLK on another shard; -ESHUTDOWN. */
PITH_API int pith_vactor_list(const pith_vtype_t *t, unsigned shard, uint64_t *cursor,
                              pith_vref_t *out, uint32_t max);

/* Moves the running activation to `shard` once its behaviour returns (a message boundary): its
 * mailbox and the messages on their way follow it, in order per sender; on_deactivate runs
 * here with PITH_VDEACT_MIGRATED, the state is copied byte for byte (blocks it points to stay
 * valid: they do not move, and a shard may free another's), and on_activate runs there with
 * PITH_VACT_MIGRATED. Its directory shard forwards to it from then on. A move that cannot land
 * (the shard at the type's cap with none idle, no memory there, on_activate failing, or the
 * engine stopping meanwhile) ends it instead: the actor type's terminate runs on the state (with
 * a self that names no actor: pith_self gives PITH_REF_NONE, pith_vactor_key NULL), counted in
 * migrate_failed, and the next message activates afresh. Errors: -EINVAL self is not a virtual
 * actor's activation (a stateless worker is not one here), it is ending (on_deactivate), or
 * shard out of range; -EALREADY it lives on shard; -ENOMEM. */
PITH_API int pith_vactor_migrate(pith_actor_t *self, unsigned shard);

/* Moves the running activation's state (with its directory entry) to memory of `profile`
 * (pith/mem.h: hot is prefaulted and locked, cold may be paged out) once its behaviour returns:
 * a profile per activation, not only per type, for the keys that matter now. The state's bytes
 * are copied as they are (pointers in it stay valid: blocks they name do not move). It stays
 * there until moved again or deactivated; the next activation starts in the type's profile.
 * Errors: -EINVAL self is not a virtual actor's activation (a stateless worker is one too), or
 * profile unknown; -ENOMEM (nothing moves). A move that finds no memory of the new profile
 * when it runs leaves the state where it was, counted in the type's profile_failed. */
PITH_API int pith_vactor_set_profile(pith_actor_t *self, pith_mem_profile_t profile);

/* Where a virtual actor is, as its directory shard sees it. */
typedef struct pith_vactor_info {
    unsigned dir_shard; /* the key's directory shard */
    bool active;        /* an activation lives now */
    unsigned shard;     /* where it lives, when active */
    /* The activation's ref, when active (PITH_REF_NONE for a moment after one begins on
     * another shard than the directory's, until that shard's first word comes back). */
    pith_ref_t ref;
    /* How it came where it is, when active: the placement (pith_placement_t) that chose the
     * shard, PITH_PLACE_MIGRATED or PITH_PLACE_REBALANCED. */
    uint32_t placement;
    uint32_t moves; /* times this key's activations moved since its last fresh activation */
} pith_vactor_info_t;

/* Asks the key's directory shard and waits (from a thread outside the engine, through its own
 * client, up to timeout_ns; on a shard, only when this is the directory shard).
 * Errors: -EINVAL; -EDEADLK on another shard than the key's directory shard; -ETIMEDOUT;
 * -ESHUTDOWN. */
PITH_API int pith_vactor_info(const pith_vref_t *v, uint64_t timeout_ns, pith_vactor_info_t *out);

/* Counters of one virtual type, summed over the shards (each shard writes its own; a read is
 * not a snapshot of all at once). */
typedef struct pith_vtype_stats {
    uint64_t activations;     /* activations that began (on_activate returned 0) */
    uint64_t activate_failed; /* on_activate (or init) failed */
    uint64_t deactivations[PITH_VDEACT_REASONS]; /* ended, by PITH_VDEACT_* (index 0 unused) */
    uint64_t live;                               /* activations now */
    uint64_t messages;       /* messages routed to the type through the directory */
    uint64_t lookups;        /* directory lookups */
    uint64_t collisions;     /* lookups that passed an entry of the same hash, another key */
    uint64_t refused;        /* messages refused for the cap, with none idle */
    uint64_t prewarms;       /* activations made by pith_vactor_prewarm or as related keys */
    uint64_t prewarm_used;   /* of those, reached by a message before they went */
    uint64_t prewarm_wasted; /* of those, deactivated without a message */
    uint64_t profile_moves;  /* states moved by pith_vactor_set_profile */
    uint64_t profile_failed; /* moves that found no memory of the profile asked for */
    uint64_t remote;         /* activations placed on another shard than the key's directory */
    uint64_t forwards;       /* messages the directory shard handed to another shard */
    uint64_t direct;         /* messages taken on an activation's own shard, without the
                                directory (the activation lives off its directory shard) */
    uint64_t returned;       /* messages an ending or moving activation gave back */
    uint64_t migrations;     /* moves begun (pith_vactor_migrate and rebalancing) */
    uint64_t rebalances;     /* of those, begun by rebalancing */
    uint64_t migrate_failed; /* moves that could not land (pith_vactor_migrate says which) */
    /* Messages a sender's location cache sent straight to the activation's shard (not through
     * the directory). */
    uint64_t cached;
    uint64_t stale; /* of those, messages that found it gone and went back to their sender */
    /* Time to activate (directory, spawn, init and on_activate), from one activation in 16:
     * samples and percentiles as pith_actor_type_stats's. */
    uint64_t activate_samples;
    uint64_t activate_p50_ns; /* see activate_samples */
    uint64_t activate_p99_ns; /* see activate_samples */
    uint64_t activate_max_ns; /* the longest timed activation */
    /* Activation latency as a caller feels it, from one activation made by a message in 16
     * (one at a time per shard): from the first message's arrival at the key's directory shard
     * to the start of the activation's first behaviour call (placement, the hop to another
     * shard, spawn, init, on_activate, a PITH_VACT_LATER's wait, and the turn's queue). */
    uint64_t first_samples;
    uint64_t first_p50_ns; /* see first_samples */
    uint64_t first_p99_ns; /* see first_samples */
    uint64_t first_max_ns; /* the longest timed */
} pith_vtype_stats_t;

/* Errors: -EINVAL t or out NULL; -ENOENT not registered; -ESHUTDOWN no engine. Any thread. */
PITH_API int pith_vtype_stats(const pith_vtype_t *t, pith_vtype_stats_t *out);

/* As pith_vtype_stats, of one shard: what happened there (activations hosted there, messages
 * its directory routed, its location cache's sends, its own moves and rebalancing). Errors: as
 * pith_vtype_stats, and -EINVAL shard out of range. */
PITH_API int pith_vtype_shard_stats(const pith_vtype_t *t, unsigned shard, pith_vtype_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
