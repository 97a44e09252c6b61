/* Virtual actors (pith/vactor.h): registered types, virtual refs, and each shard's part of the
 * directory with its activations.
 *
 * A key's directory shard is a jump consistent hash of the key's hash over the shards. That
 * shard alone keeps the key's entry, so it alone activates, and since the activation lives
 * there too (hash placement), every message for the key is routed on that shard: from an actor
 * or task of that shard at once, from another shard through the mesh (vdeliver_task), from a
 * client through its lane (core_lane_vmsg). Entries are chained under their hash (keys compare
 * as bytes), found from an activation's ref through a second map, and kept per type in a list
 * by last use, which an idle sweep reads from its cold end. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <pith/hash.h>
#include <pith/persist.h>
#include <pith/sla.h>
#include <pith/vactor.h>

#include "clients.h"
#include "core.h"
#include "turn.h"
#include "metrics.h"
#include "mem.h"
#include "vpersist.h"

/* ---- types (process-wide) ---- */

struct vtype_rec {
    const pith_vtype_t *vt;
    pith_actor_type_t at; /* vt->actor's, with init and terminate wrapped */
    uint64_t tick_ns;     /* the idle sweep's period: idle_ns / 4; 0: no sweep */
    uint32_t id;
    uint32_t key_off; /* where a long key (over VKEY_IN) lies in an activation's block */
    /* Whether anything reads the order of the type's list (the cap, the idle sweep, shedding
     * under memory pressure, a worker pool's pick of its warmest): if not, a message leaves its
     * activation where it is in it. */
    bool lru;
    /* What a client's message reads of the type, here rather than three loads away:
     * vt->workers == 0, vt->flags & PITH_VTYPE_REBALANCE, vt->actor->behaviour. */
    bool keyed, rebalance;
    pith_behaviour_t behaviour;
};

static struct vtype_rec vtypes[PITH_VTYPES_MAX];
static uint32_t key_off_of(size_t state_size);
/* Types registered: a record is whole before its index is published (release; readers load
 * with acquire), and never changes after. */
static _Atomic uint32_t nvtypes;
static pthread_mutex_t vtypes_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char hash_key[16];
static pthread_once_t hash_once = PTHREAD_ONCE_INIT;

/* A sweep tick every idle_ns / 4; an activation goes once IDLE_TICKS ticks have passed without
 * a message: between idle_ns and 1.25 idle_ns after its last one. */
#define IDLE_TICKS 5u
#define TICK_MIN   (1000ull * 1000) /* 1 ms */

static void hash_key_init(void)
{
    /* A per-process key: nobody outside can pick keys that pile into one directory chain. */
    size_t got = 0;
    while (got < sizeof(hash_key)) {
        ssize_t r = getrandom(hash_key + got, sizeof(hash_key) - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (got < sizeof(hash_key)) {
        uint64_t t = pith_now_ns() ^ (uint64_t)(uintptr_t)&got;
        memcpy(hash_key, &t, sizeof(t));
    }
}

static struct vtype_rec *rec_of_vt(const pith_vtype_t *vt)
{
    uint32_t n = atomic_load_explicit(&nvtypes, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++)
        if (vtypes[i].vt == vt)
            return &vtypes[i];
    return NULL;
}

/* The record of an activation's actor type, or NULL: not a virtual type's. */
static struct vtype_rec *rec_of_actor_type(const pith_actor_type_t *t)
{
    uintptr_t p = (uintptr_t)t, lo = (uintptr_t)&vtypes[0],
              hi = (uintptr_t)&vtypes[PITH_VTYPES_MAX];
    if (p < lo || p >= hi)
        return NULL;
    struct vtype_rec *r = &vtypes[(p - lo) / sizeof(struct vtype_rec)];
    return &r->at == t ? r : NULL;
}

/* The record a ref names (checked: refs are the application's values). */
static const struct vtype_rec *rec_of_ref(const pith_vref_t *v)
{
    if (v == NULL || v->tid == 0 || v->len > PITH_VKEY_MAX)
        return NULL;
    uint32_t n = atomic_load_explicit(&nvtypes, memory_order_acquire);
    if (v->tid > n || vtypes[v->tid - 1].vt != v->type)
        return NULL;
    return &vtypes[v->tid - 1];
}

static int vinit(pith_actor_t *self, void *state, void *arg);
static void vterminate(pith_actor_t *self, void *state, int reason);
static int vbehaviour(pith_actor_t *self, void *state, const pith_msg_t *msg);

int pith_vtype_register(const pith_vtype_t *t)
{
    if (t == NULL || t->name == NULL || t->actor == NULL || t->actor->behaviour == NULL ||
        (unsigned)t->actor->profile >= PITH_MEM_PROFILES ||
        (unsigned)t->actor->overflow > PITH_OVERFLOW_MUTE_SENDER)
        return -EINVAL;
    size_t nl = strlen(t->name);
    if (nl == 0 || nl > PITH_NAME_MAX)
        return -EINVAL;
    if ((unsigned)t->placement > PITH_PLACE_FN ||
        (t->placement == PITH_PLACE_FN && t->place == NULL))
        return -EINVAL;
    /* A persistent type lives where its journal is: not a worker, not placed or moved. */
    if (t->persist != NULL &&
        (t->persist->apply == NULL ||
         (t->persist->snapshot != NULL) != (t->persist->restore != NULL) || t->workers != 0 ||
         t->placement != PITH_PLACE_HASH || (t->flags & PITH_VTYPE_REBALANCE)))
        return -EINVAL;
    pthread_once(&hash_once, hash_key_init);
    pthread_mutex_lock(&vtypes_lock);
    uint32_t n = atomic_load_explicit(&nvtypes, memory_order_relaxed);
    int err = 0;
    for (uint32_t i = 0; i < n && err == 0; i++) {
        if (vtypes[i].vt == t)
            err = 1;
        else if (strcmp(vtypes[i].vt->name, t->name) == 0)
            err = -EEXIST;
    }
    if (err == 0 && n == PITH_VTYPES_MAX)
        err = -ENOSPC;
    if (err == 0) {
        struct vtype_rec *r = &vtypes[n];
        r->vt = t;
        r->at = *t->actor;
        r->at.init = vinit;
        r->at.terminate = vterminate;
        r->at.behaviour = vbehaviour;
        uint64_t idle = t->idle_ns == 0 ? PITH_VIDLE_DEFAULT : t->idle_ns;
        r->tick_ns = idle == PITH_VIDLE_NEVER ? 0 : idle / 4 < TICK_MIN ? TICK_MIN : idle / 4;
        r->id = n;
        r->key_off = key_off_of(t->actor->state_size);
        r->lru = t->max_per_shard != 0 || r->tick_ns != 0 || (t->flags & PITH_VTYPE_SHED) ||
                 t->workers != 0;
        r->keyed = t->workers == 0;
        r->rebalance = (t->flags & PITH_VTYPE_REBALANCE) != 0;
        r->behaviour = t->actor->behaviour;
        /* Release: the record is whole for whoever sees the new count (acquire). */
        atomic_store_explicit(&nvtypes, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&vtypes_lock);
    return err > 0 ? 0 : err;
}

int pith_vref(const pith_vtype_t *type, const void *key, size_t len, pith_vref_t *out)
{
    if (out == NULL || (key == NULL && len > 0) || len > PITH_VKEY_MAX)
        return -EINVAL;
    struct vtype_rec *r = rec_of_vt(type);
    if (r == NULL)
        return -ENOENT;
    memset(out, 0, sizeof(*out));
    out->type = type;
    out->len = (uint32_t)len;
    out->tid = r->id + 1;
    if (len > 0)
        memcpy(out->key, key, len);
    /* The hash covers the type's name, so one key of two types is two actors (and two
     * entries that only the chain's byte compare tells apart, if their hashes meet). */
    unsigned char buf[PITH_NAME_MAX + 1 + PITH_VKEY_MAX];
    size_t nl = strlen(type->name);
    memcpy(buf, type->name, nl);
    buf[nl] = 0;
    if (len > 0)
        memcpy(buf + nl + 1, key, len);
    out->hash = pith_siphash(hash_key, buf, nl + 1 + len, 1, 3);
    return 0;
}

/* The directory shard of a hash among n: Lamping and Veach's jump consistent hash, so that a
 * change of n moves only the keys it must (the same function will range over machines). */
static unsigned dir_shard(uint64_t h, unsigned n)
{
    int64_t b = -1, j = 0;
    while (j < (int64_t)n) {
        b = j;
        h = h * 2862933555777941757ull + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1ll << 31) / (double)((h >> 33) + 1)));
    }
    return (unsigned)b;
}

/* ---- one shard's part ---- */

/* A key's entry: the first bytes of its activation's state block (core_spawn_ex), so an
 * activation finds its entry, and an entry its key (after the state), without a lookup. */
struct ventry {
    struct ventry *chain;       /* the directory bucket's next */
    struct ventry *prev, *next; /* the type's list on this shard, least recently used first */
    pith_ref_t act;             /* the activation */
    uint64_t hash;
    uint32_t tick : 24; /* the sweep tick of its last message (mod 2^24) */
    uint32_t tid : 8;   /* type index */
    uint8_t why;        /* PITH_VDEACT_* of a deactivation begun here; 0: none */
    uint8_t flags;      /* E_* */
    uint8_t klen;
    uint8_t xf; /* X_* */
};
/* The prefix before an activation's state: the entry, 16-aligned. */
#define VHDR ((sizeof(struct ventry) + 15) & ~(size_t)15)
/* A key of up to VKEY_IN bytes lies between the entry and the state: in the entry's cache line
 * or the state's first, both read by a message anyway. A longer one follows the state. Block:
 * [entry VHDR][short key VKEY_IN][state, 16-aligned][long key]. */
#define VKEY_IN 16u
#define VPRE    (VHDR + VKEY_IN)

static uint32_t key_off_of(size_t state_size)
{
    return (uint32_t)(VPRE + core_state_span(state_size));
}

/* The bytes after the state: a long key's. */
static inline uint32_t key_tail(uint32_t klen)
{
    return klen > VKEY_IN ? klen : 0;
}
_Static_assert(sizeof(struct ventry) == 48, "an idle activation's entry: 48 bytes");
#define TICK_MASK 0xffffffu
_Static_assert(PITH_VKEY_MAX <= 255, "klen fits a byte");
_Static_assert(PITH_VTYPES_MAX <= 256, "tid fits a byte");
#define E_ACTIVE 1u   /* on_activate returned 0 */
#define E_LISTED 2u   /* on its type's list */
#define E_OFF    4u   /* pith_vactor_deactivate asked */
#define E_DIR    8u   /* in the directory */
#define E_WARM   16u  /* pre-warmed, and no message has come yet */
#define E_WORKER 32u  /* a stateless worker: in its type's pool, not in the directory */
#define E_LATER  64u  /* on_activate answered PITH_VACT_LATER: held until pith_vactor_activated */
#define E_ENDING 128u /* its hooks run as it ends: messages to its key wait for the next one */
/* ventry.xf */
#define X_REMOTE    1u  /* a directory entry (struct rentry) of an activation on another shard */
#define X_GUEST     2u  /* an activation whose directory is another shard */
#define X_MIGRATE   4u  /* pith_vactor_migrate asked: it moves to its extra's target */
#define X_REBAL     8u  /* the move was rebalancing's */
#define X_TIMED     16u /* its first behaviour call ends a timed activation (vtype_shard.first_*) */
#define X_HELD      32u /* muted from its turns until migrate_task (a move asked from its turn) */
#define X_EXT       64u /* it has extras (vshard.ext) */
#define X_ANNOUNCED 128u /* a guest its directory knows begun (GMARK sent): its end says GONE */

/* An entry's extras, which most never need: kept out of the entry (48 bytes for every idle
 * activation), packed into one word in a side map of the shard, by the activation's ref. */
#define EXT_CAND(x)   ((unsigned)((x)&0xffff))           /* rebalancing: the shard voted for */
#define EXT_VOTES(x)  ((unsigned)(((x) >> 16) & 0xffff)) /* rebalancing: its lead */
#define EXT_TARGET(x) ((unsigned)(((x) >> 32) & 0xffff)) /* X_MIGRATE: where it moves */
#define EXT_MOVES(x)  ((unsigned)(((x) >> 48) & 0xfff))  /* moves since its last fresh start */
/* How it came, when not by its type's own placement: that pith_placement_t + 1 (0: by its
 * type's, which most do, so that they need no extras); see placed_of. */
#define EXT_PLACED(x) ((unsigned)((x) >> 60))
static inline uint64_t ext_pack(unsigned cand, unsigned votes, unsigned target, unsigned moves,
                                unsigned placed)
{
    return (uint64_t)(cand & 0xffff) | (uint64_t)(votes & 0xffff) << 16 |
           (uint64_t)(target & 0xffff) << 32 | (uint64_t)(moves > 0xfff ? 0xfff : moves) << 48 |
           (uint64_t)(placed & 0xf) << 60;
}

/* A pre-warm travelling as a message (never reaches a behaviour). */
#define MSG_VPREWARM (PITH_MSG_RESERVED + 0x30u)
/* Memory is checked for pressure every this many activations (and at each sweep). */
#define PRESSURE_EVERY 64u
/* Messages held for keys whose activation is ending, at most, per shard. */
#define HELD_MAX 4096u
/* Entries an eviction looks at from the cold end before it gives up (a cap, memory pressure):
 * busy ones are rare there (a message moves its activation to the warm end), and a shard
 * whose cold end is all busy must not scan a million entries per activation. */
#define SHED_SCAN 256u

/* The directory shard's entry for a key whose activation lives on another shard (the host):
 * it forwards there, and while an activation that ended or moved away gives back what it had
 * not handled (GONE, the messages given back, then a marker that comes back once all of them
 * did), it keeps those and holds newer messages behind them. The key follows, at RHDR. */
struct rentry {
    struct ventry e;               /* E_DIR, X_REMOTE; e.act: the host's activation, once it said */
    struct amsg *ret, *ret_tail;   /* given back, in the order the host had them */
    struct amsg *held, *held_tail; /* newer, while draining */
    void *blob;                    /* a move's state, from GONE to the next activation */
    uint32_t nheld;
    uint16_t host;
    uint16_t target; /* a move's shard */
    uint16_t moves;
    uint8_t state;  /* R_* */
    uint8_t placed; /* pith_placement_t */
    int32_t err;    /* the activation failed: what it gave back fails with this */
    uint8_t rebal;  /* the move is rebalancing's */
};
#define RHDR     ((sizeof(struct rentry) + 15) & ~(size_t)15)
#define R_ACTIVE 0 /* forwarding to host */
#define R_DRAIN  1 /* GONE came: holding until the marker is back */

/* Messages a directory holds for one key while its activation elsewhere ends or moves: they
 * would wait in its mailbox otherwise, so its mailbox's bound (the core's default 4096 when the
 * type names none), and at least HELD_MAX. */
static inline uint32_t held_cap(uint32_t tid)
{
    uint32_t m = vtypes[tid].vt->actor->mailbox_max;
    return m > HELD_MAX ? m : HELD_MAX;
}

static inline unsigned char *entry_key(struct ventry *e)
{
    if (UNLIKELY(e->xf & X_REMOTE))
        return (unsigned char *)e + RHDR;
    return (unsigned char *)e + (e->klen <= VKEY_IN ? VHDR : vtypes[e->tid].key_off);
}

static inline struct ventry *entry_of_state(void *state)
{
    return (struct ventry *)((char *)state - VPRE);
}

/* Bytes of an activation's block: its entry, its state, its key. */
static inline size_t entry_size(const struct ventry *e)
{
    return vtypes[e->tid].key_off + key_tail(e->klen);
}

/* One type on one shard. Counters: written by the shard, relaxed; read by any thread. */
struct vtype_shard {
    struct ventry *head, *tail;
    uint32_t tick;
    uint32_t live;
    uint32_t sample; /* activations since the last timed one */
    bool armed;
    pith_timer_id_t timer;
    _Atomic uint64_t activations, failed, deact[PITH_VDEACT_REASONS], messages, lookups, collisions,
        refused, prewarms, prewarm_used, prewarm_wasted, moves, moves_failed, remote, forwards,
        direct, returned, migrations, rebalances, migrate_failed, cached, stale;
    _Atomic uint64_t live_now, act_max, act_sum, first_sum; /* sums: ns of the samples */
    /* An SLA's memory guarantee here (bytes; 0: none), the bytes of the type's states in hot
     * memory here (every one, whatever put it there), and activations within the guarantee
     * that found no hot memory. */
    size_t guarantee;
    _Atomic uint64_t hot, hot_misses;
    _Atomic uint64_t hist[HIST_BUCKETS];
    /* First message to first behaviour call, one activation timed at a time: its ref and
     * when its first message reached the directory. */
    pith_ref_t first_ref;
    uint64_t first_t0;
    _Atomic uint64_t first_max;
    _Atomic uint64_t first_hist[HIST_BUCKETS];
};

struct vshard {
    /* The directory: buckets of entries chained through ventry.chain, by hash; half as many
     * buckets as entries at least (it doubles once entries reach twice the buckets; a failed
     * doubling leaves the chains longer, nothing fails): chains of 1 to 2 entries on average,
     * 4 bytes of table per entry, or 8 just after a doubling. A lookup that finds its entry
     * behind others moves it to the front of its chain, so a key that keeps getting messages
     * costs one entry's read, whatever the chain's length (a table twice as large would cost
     * every idle activation 4 bytes more for about the same). The table is the shard's memory
     * (pith_calloc); it shrinks to a quarter when entries fall to an eighth of the buckets,
     * never below DIR_MIN. A bucket's word is its first
     * entry's address with, in the 16 bits above it, a filter of the chain's hashes (dir_bit):
     * a key not in the table is told so by the word alone in about 9 lookups of 10 at the
     * average chain, without a load from the chain's entries, which are scattered over the
     * shard's memory (each a cache miss with a million). Removals leave their bit; a lookup
     * that walks a whole chain in vain writes it again exactly, as does a resize. A shard
     * whose entry has an address of more than 48 bits (not seen on Linux, which gives those
     * only to a mapping that asks) stops filtering: `wide`. */
    uintptr_t *buckets;
    uint64_t nbuckets, nentries;
    /* The table a resize left, emptied into `buckets` a few buckets at a time (dir_step):
     * its buckets below `moved` are empty; a hash whose bucket here is not is found here. */
    uintptr_t *old;
    uint64_t nold, moved;
    uint32_t ticks; /* insertions and removals, for dir_tick */
    bool wide;
    /* Messages sent to a key while its activation ends (from on_deactivate or terminate),
     * each with its trailer: delivered by held_task once the end is over, in order. */
    struct amsg *held, *held_tail;
    uint32_t nheld; /* at most HELD_MAX: past it such a send fails with -EAGAIN */
    bool held_armed;
    /* The last activate() failed in the application's init or on_activate (not for the
     * engine's memory): a client's lane does not retry it. */
    bool app_err;
    /* A move in progress (migrate_task to vterminate): the state's copy and where it goes. */
    void *mig_blob;
    bool blob_taken; /* vinit copied a moved state into a new activation's */
    struct map ext;  /* activation ref -> its entry's extras (X_EXT), packed */
    /* Where recent keys of other directory shards live (made on first use). */
    struct lslot *cache;
    uint32_t nchold; /* messages the cache holds (K_MARK, K_PROBE), at most HELD_MAX */
    /* Made on first use, published with release for counter readers (acquire). */
    _Atomic(struct vtype_shard *) types[PITH_VTYPES_MAX];
};

/* A virtual message's trailer, after its payload (core_msg_extra_off): whom it is for. */
struct vtrail {
    uint64_t hash;
    uint16_t tid;
    uint16_t klen;
    uint16_t vf;  /* V_* */
    uint16_t via; /* V_MOVED: the shard that gave it back */
    unsigned char key[];
};
#define V_MOVED 1u /* given back by an activation that ended or moved: passes the next's bound */

/* A shard's location cache: a slot per hash (direct-mapped), for keys whose directory is
 * another shard. A key's slot is claimed when messages to it keep coming (CACHE_AFTER routed
 * ones); then one word asks where it lives (CMARK, through the directory to the host, answered
 * by CECHO straight from the host): once the answer comes, everything this shard sent through
 * the directory before has reached the host, so the next messages go there directly (one ring
 * instead of two). Meanwhile they wait in the slot. A host that no longer has that activation
 * sends a direct message back; the slot then probes the host (PROBE, PECHO back: all that
 * comes back has come) and sends what came back, then what waited, through the directory. A
 * slot taken by another key that stays unused gives way by the same probe. */
#define CACHE_SLOTS   1024u
#define CACHE_AFTER   8u    /* routed messages to a key before its slot asks where it lives */
#define CACHE_RECHECK 4096u /* routed messages to a key not worth caching before asking again */
#define CACHE_IDLE    64u   /* messages to other keys of a slot before its unused key gives way */
enum { K_FREE = 0, K_COUNT, K_MARK, K_DIRECT, K_PROBE, K_NONE };
struct lslot {
    uint64_t hash;
    pith_ref_t act;                /* K_DIRECT, K_PROBE: the activation */
    struct amsg *held, *held_tail; /* K_MARK, K_PROBE: this shard's newer messages */
    struct amsg *back, *back_tail; /* K_PROBE: messages the host sent back */
    uint32_t count;                /* K_COUNT, K_NONE: routed messages; K_DIRECT: misses */
    uint16_t host;
    uint8_t state; /* K_* */
    uint8_t tid, klen;
    bool evict;  /* K_PROBE: the slot is freed after, not kept for the key */
    bool unsent; /* K_MARK, K_PROBE: its word found no memory (slot_word) */
    unsigned char key[PITH_VKEY_MAX];
};

static inline struct vtrail *trail_of(struct amsg *m)
{
    uint32_t len = m->len & AMSG_LEN_MASK;
    return (struct vtrail *)((char *)(m + 1) + core_msg_extra_off(len));
}

/* A chain of messages through amsg.next: m goes at its tail. */
static inline void chain_push(struct amsg **head, struct amsg **tail, struct amsg *m)
{
    m->next = NULL;
    if (*tail != NULL)
        (*tail)->next = m;
    else
        *head = m;
    *tail = m;
}

/* Frees a chain (messages the engine's stop leaves behind). */
static void chain_free(struct amsg *m)
{
    while (m != NULL) {
        struct amsg *next = m->next;
        core_msg_free(m);
        m = next;
    }
}

static struct vshard *vshard_get(struct core_shard *cs)
{
    struct vshard *vs = atomic_load_explicit(&cs->vs, memory_order_relaxed);
    if (LIKELY(vs != NULL))
        return vs;
    vs = calloc(1, sizeof(*vs));
    if (vs != NULL)
        atomic_store_explicit(&cs->vs, vs, memory_order_release); /* see struct vshard */
    return vs;
}

static struct vtype_shard *vts_get(struct vshard *vs, uint32_t tid)
{
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[tid], memory_order_relaxed);
    if (LIKELY(ts != NULL))
        return ts;
    ts = calloc(1, sizeof(*ts));
    if (ts != NULL)
        atomic_store_explicit(&vs->types[tid], ts, memory_order_release); /* see struct vshard */
    return ts;
}

static uint64_t ext_of(struct vshard *vs, const struct ventry *e)
{
    return (e->xf & X_EXT) ? (uint64_t)(uintptr_t)map_get(&vs->ext, e->act) : 0;
}

/* The pith_placement_t that brought e here, from its extras x. */
static unsigned placed_of(const struct ventry *e, uint64_t x)
{
    return EXT_PLACED(x) != 0 ? EXT_PLACED(x) - 1 : (unsigned)vtypes[e->tid].vt->placement;
}

/* Sets e's extras (all zero: none). Out of memory for the map: false, and nothing changes. */
static bool ext_set(struct vshard *vs, struct ventry *e, uint64_t x)
{
    if (x == 0) {
        if (e->xf & X_EXT)
            (void)map_del(&vs->ext, e->act);
        e->xf &= (uint8_t)~X_EXT;
        return true;
    }
    /* A replace never fails (map_put); a new key may. */
    if (map_put(&vs->ext, e->act, (void *)(uintptr_t)x) != 0)
        return false;
    e->xf |= X_EXT;
    return true;
}

#define DIR_PTR (UINTPTR_MAX >> 16) /* an entry address; the filter above it */
_Static_assert(sizeof(uintptr_t) == 8, "a bucket word holds an address and 16 filter bits");

/* A hash's bit in its bucket's filter: the hash's top 4 bits (the bucket is from its low). */
static inline uintptr_t dir_bit(uint64_t hash)
{
    return (uintptr_t)1 << (48 + (hash >> 60));
}

/* The first entry of a bucket's word. */
static inline struct ventry *dir_head(const struct vshard *vs, uintptr_t w)
{
    return (struct ventry *)(vs->wide ? w : w & DIR_PTR);
}

/* A bucket's word: head e, and the filter of the chain from e. */
static uintptr_t dir_word(const struct vshard *vs, struct ventry *e)
{
    uintptr_t w = (uintptr_t)e;
    for (; !vs->wide && e != NULL; e = e->chain)
        w |= dir_bit(e->hash);
    return w;
}

/* A bucket's word whose head is now e, the rest of its filter kept. */
static inline uintptr_t dir_rehead(const struct vshard *vs, uintptr_t w, struct ventry *e)
{
    return vs->wide ? (uintptr_t)e : (e != NULL ? (w & ~DIR_PTR) | (uintptr_t)e : 0);
}

/* Puts e at the head of the bucket word *w. */
static inline void dir_push(const struct vshard *vs, uintptr_t *w, struct ventry *e)
{
    e->chain = dir_head(vs, *w);
    *w = vs->wide ? (uintptr_t)e : ((*w & ~DIR_PTR) | (uintptr_t)e | dir_bit(e->hash));
}

/* The bucket word of a hash: in the table being emptied while its bucket is not yet moved,
 * else in the table. The caller made sure there is a table. */
static inline uintptr_t *dir_slot(struct vshard *vs, uint64_t hash)
{
    if (vs->old != NULL && (hash & (vs->nold - 1)) >= vs->moved)
        return &vs->old[hash & (vs->nold - 1)];
    return &vs->buckets[hash & (vs->nbuckets - 1)];
}

/* Whether the first and the last w bytes (w <= n, a constant once inlined: one load each) of
 * a and b are the same: for w <= n <= 2w, whether all n are. */
static inline bool ends_eq(const unsigned char *a, const unsigned char *b, uint32_t n, unsigned w)
{
    uint64_t a0 = 0, a1 = 0, b0 = 0, b1 = 0;
    memcpy(&a0, a, w);
    memcpy(&b0, b, w);
    memcpy(&a1, a + n - w, w);
    memcpy(&b1, b + n - w, w);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
}

/* Whether n bytes at a and b are the same. Keys are mostly short: up to 16 bytes take two
 * loads from each side (overlapping when n is not a power of two), not a call. */
static inline bool key_eq(const unsigned char *a, const unsigned char *b, uint32_t n)
{
    if (n > 16)
        return memcmp(a, b, n) == 0;
    if (n >= 8)
        return ends_eq(a, b, n, 8);
    if (n >= 4)
        return ends_eq(a, b, n, 4);
    if (n >= 2)
        return ends_eq(a, b, n, 2);
    return n == 0 || a[0] == b[0];
}

static inline __attribute__((always_inline)) struct ventry *
dir_lookup(struct vshard *vs, struct vtype_shard *ts, uint32_t tid, uint64_t hash,
           const unsigned char *key, uint32_t klen)
{
    core_bump(&ts->lookups, 1);
    if (vs->nbuckets == 0)
        return NULL;
    uintptr_t *b = dir_slot(vs, hash);
    if (!vs->wide && !(*b & dir_bit(hash)))
        return NULL;
    struct ventry *prev = NULL;
    for (struct ventry *e = dir_head(vs, *b); e != NULL; prev = e, e = e->chain) {
        if (e->hash != hash)
            continue;
        if (e->tid == tid && e->klen == klen && key_eq(entry_key(e), key, klen)) {
            if (prev != NULL) {
                /* To the front of its chain: a key that keeps getting messages is found at
                 * the first entry read, not after its neighbours' (each a cache miss). The
                 * filter stays: the chain holds the same entries. */
                prev->chain = e->chain;
                e->chain = dir_head(vs, *b);
                *b = dir_rehead(vs, *b, e);
            }
            return e;
        }
        core_bump(&ts->collisions, 1);
    }
    /* In vain: the bit was another key's, or one a removal left. The chain was just read, so
     * its filter is made exact again at no cost. */
    *b = dir_word(vs, dir_head(vs, *b));
    return NULL;
}

/* dir_lookup, called: for every caller but a client's message (core_lane_vmsg_inline). */
static struct ventry *dir_find(struct vshard *vs, struct vtype_shard *ts, uint32_t tid,
                               uint64_t hash, const unsigned char *key, uint32_t klen)
{
    return dir_lookup(vs, ts, tid, hash, key, klen);
}

/* An entry address that does not fit below the filter: every bucket's filter goes. */
static void dir_widen(struct vshard *vs)
{
    for (uint64_t i = 0; i < vs->nbuckets; i++)
        vs->buckets[i] &= DIR_PTR;
    for (uint64_t i = vs->moved; vs->old != NULL && i < vs->nold; i++)
        vs->old[i] &= DIR_PTR;
    vs->wide = true;
}

/* Moves buckets of the table being emptied into the table: at most `full` that hold entries,
 * and `scan` in all; frees it when none is left. The entries are scattered (a cache miss each):
 * the chains' heads of up to DIR_BATCH buckets are loaded together, then their next ones. */
#define DIR_BATCH 16u
static void dir_step(struct vshard *vs, unsigned full, uint64_t scan)
{
    while (vs->old != NULL && vs->moved < vs->nold && full > 0 && scan > 0) {
        struct ventry *batch[DIR_BATCH];
        unsigned nb = 0;
        for (; vs->moved < vs->nold && nb < DIR_BATCH && nb < full && scan > 0; scan--) {
            struct ventry *e = dir_head(vs, vs->old[vs->moved]);
            vs->old[vs->moved++] = 0;
            if (e != NULL) {
                __builtin_prefetch(e, 1);
                batch[nb++] = e;
            }
        }
        full -= nb;
        /* Each round moves one entry of each chain left and prefetches its next. */
        for (unsigned left = nb; left > 0;) {
            left = 0;
            for (unsigned i = 0; i < nb; i++) {
                struct ventry *e = batch[i];
                if (e == NULL)
                    continue;
                batch[i] = e->chain;
                if (batch[i] != NULL) {
                    __builtin_prefetch(batch[i], 1);
                    left++;
                }
                dir_push(vs, &vs->buckets[e->hash & (vs->nbuckets - 1)], e);
            }
        }
    }
    if (vs->old != NULL && vs->moved == vs->nold) {
        pith_free(vs->old);
        vs->old = NULL;
        vs->nold = vs->moved = 0;
    }
}

/* Buckets moved, every DIR_EVERY insertions or removals: a doubling's old table is empty after
 * a quarter as many insertions as it has buckets (the next doubling comes after twice as many),
 * and a shrink's after a thirty-second as many removals (the next shrink comes after three
 * thirty-seconds); both tables are held meanwhile. A resize that finds the last one still
 * being emptied finishes it first. A step moves about 64 entries (a few microseconds). */
#define DIR_EVERY     8u
#define DIR_STEP_FULL (4u * DIR_EVERY)
#define DIR_STEP_SCAN (64u * DIR_EVERY)

static inline void dir_tick(struct vshard *vs)
{
    if (vs->old != NULL && (++vs->ticks % DIR_EVERY) == 0)
        dir_step(vs, DIR_STEP_FULL, DIR_STEP_SCAN);
}

/* Makes a table of n buckets (a power of two) that the present one empties into, a few buckets
 * at each insertion or removal (dir_step), so no one call pays to move them all (35 ms for a
 * million entries here). No memory: nothing changes. */
static void dir_resize(struct vshard *vs, uint64_t n)
{
    if (vs->old != NULL)
        dir_step(vs, UINT_MAX, UINT64_MAX);
    uintptr_t *b = pith_calloc(n, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, or a larger table, until a later resize works */
    if (vs->nbuckets != 0) {
        vs->old = vs->buckets;
        vs->nold = vs->nbuckets;
        vs->moved = 0;
    }
    vs->buckets = b;
    vs->nbuckets = n;
}

#define DIR_MIN 64u /* buckets of the smallest table */

static void dir_grow(struct vshard *vs)
{
    dir_resize(vs, vs->nbuckets ? vs->nbuckets * 2 : DIR_MIN);
}

/* The caller made sure there is a table (activate). */
static void dir_insert(struct vshard *vs, struct ventry *e)
{
    dir_tick(vs);
    if (!vs->wide && ((uintptr_t)e & ~DIR_PTR) != 0)
        dir_widen(vs);
    dir_push(vs, dir_slot(vs, e->hash), e);
    e->flags |= E_DIR;
    vs->nentries++;
}

/* The word whose chain holds e (of that hash: e may be a moved entry's old address, not to be
 * read), and e's predecessor in it (NULL: e is its head). */
static uintptr_t *dir_where(struct vshard *vs, uint64_t hash, const struct ventry *e,
                            struct ventry **prev)
{
    uintptr_t *b = dir_slot(vs, hash);
    *prev = NULL;
    for (struct ventry *p = dir_head(vs, *b); p != NULL && p != e; p = p->chain)
        *prev = p;
    return b;
}

static void dir_unlink(struct vshard *vs, struct ventry *e)
{
    if (!(e->flags & E_DIR))
        return;
    struct ventry *prev;
    uintptr_t *b = dir_where(vs, e->hash, e, &prev);
    if (prev == NULL)
        *b = dir_rehead(vs, *b, e->chain);
    else
        prev->chain = e->chain;
    e->flags &= (uint8_t)~E_DIR;
    vs->nentries--;
    /* Down to an eighth of an entry a bucket, a quarter of the table (half an entry a bucket,
     * far from the doubling at two): what a burst of activations grew goes back after it. */
    if (vs->nbuckets > DIR_MIN && vs->nentries * 8 < vs->nbuckets)
        dir_resize(vs, vs->nbuckets / 4 > DIR_MIN ? vs->nbuckets / 4 : DIR_MIN);
    else
        dir_tick(vs);
}

static void list_unlink(struct vtype_shard *ts, struct ventry *e)
{
    if (!(e->flags & E_LISTED))
        return;
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        ts->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        ts->tail = e->prev;
    e->prev = e->next = NULL;
    e->flags &= (uint8_t)~E_LISTED;
}

static void list_append(struct vtype_shard *ts, struct ventry *e)
{
    e->next = NULL;
    e->prev = ts->tail;
    if (ts->tail != NULL)
        ts->tail->next = e;
    else
        ts->head = e;
    ts->tail = e;
    e->flags |= E_LISTED;
}

/* A message for e: it moves to the warm end, so the list stays in order of last use (the cap
 * lets the coldest go) and of tick (the sweep reads from the cold end). */
static inline void touch(struct vtype_shard *ts, struct ventry *e)
{
    /* Unless nothing reads the order or the tick (vtype_rec.lru: the sweep is one of its
     * readers): then the move would only write the neighbours' entries, two or three cache
     * lines a message, and the tick would make the entry's line dirty, to be written back
     * when it leaves the cache. */
    if (!vtypes[e->tid].lru)
        return;
    if (ts->tail != e && (e->flags & E_LISTED)) {
        list_unlink(ts, e);
        list_append(ts, e);
    }
    e->tick = ts->tick;
}

static void sweep(void *arg);
static void pressure_check(struct core_shard *cs, struct vshard *vs, bool force);

static void sweep_arm(struct vtype_shard *ts, const struct vtype_rec *r)
{
    if (ts->armed || r->tick_ns == 0)
        return;
    /* Periodic, so ticks keep to the clock: a one-shot re-armed after each tick would add the
     * loop's wake-up delay to every tick (20 ms idle times ended after 29-33 ms). */
    if (pith_timer_add(r->tick_ns, r->tick_ns, sweep, (void *)(uintptr_t)r->id, &ts->timer) == 0)
        ts->armed = true; /* else the next activation tries again */
}

/* Whether an activation is idle: no mail, no turn queued or running. */
static bool idle(const struct actor *a)
{
    return a->head == NULL && !(a->gen & (A_SCHEDULED | A_RUNNING | A_MUTED | A_STOP));
}

static int vdeliver(struct core_shard *cs, struct vshard *vs, uint32_t tid, uint64_t hash,
                    const unsigned char *key, uint32_t klen, struct amsg *m, struct lane *l,
                    bool moved);
static void give_back(struct core_shard *cs, struct amsg *m);
static void vdeliver_task(void *arg);
static void guest_gone(struct core_shard *cs, struct vshard *vs, struct ventry *e, int err);
static struct amsg *trailed(struct amsg *m, int dst, uint32_t tid, uint64_t hash,
                            const unsigned char *key, uint32_t klen);

/* Takes what waits in a's mailbox for the virtual actor (not what it asked for itself:
 * replies to its asks, timeouts, notices, admitted past the bound, stay and end with it, as
 * any actor's would), in order. */
static struct amsg *take_mail(struct core_shard *cs, struct actor *a)
{
    struct amsg *kept = NULL, *kept_tail = NULL, *prev = NULL;
    for (struct amsg *m = a->head, *next; m != NULL; m = next) {
        next = m->next;
        if (m->len & AMSG_ADMIT) {
            prev = m;
            continue;
        }
        core_mailbox_take(cs, a, prev, m);
        chain_push(&kept, &kept_tail, m);
    }
    return kept;
}

/* What an ended activation had not handled goes on, in order: on its directory shard, to the
 * next activation; from a guest, back to the directory shard. */
static void give_on(struct core_shard *cs, struct vshard *vs, bool guest, uint32_t tid,
                    uint64_t hash, const unsigned char *key, uint32_t klen, struct amsg *kept)
{
    while (kept != NULL) {
        struct amsg *m = kept;
        kept = m->next;
        m->next = NULL;
        if (!guest) {
            (void)vdeliver(cs, vs, tid, hash, key, klen, m, NULL, true);
            continue;
        }
        /* A trailer names the key on the way (the mailbox's messages may have none). */
        struct amsg *f = trailed(m, (int)dir_shard(hash, pith_shard_count()), tid, hash, key, klen);
        if (f != NULL) {
            give_back(cs, f);
        } else {
            core_undelivered(cs, m, -ENOMEM);
            core_msg_free(m);
        }
    }
}

/* Ends activation e for `why`: what waits in its mailbox is taken out first and given, in
 * order, to the next activation (made by the first of them), so nothing is lost. */
static void deactivate(struct core_shard *cs, struct vshard *vs, struct ventry *e, int why)
{
    struct actor *a = core_find(cs, e->act);
    if (a == NULL)
        return;
    /* What was sent to the virtual actor goes to the next activation. */
    struct amsg *kept = take_mail(cs, a);
    unsigned char key[PITH_VKEY_MAX];
    uint32_t tid = e->tid, klen = e->klen;
    uint64_t hash = e->hash;
    memcpy(key, entry_key(e), klen);
    e->why = (uint8_t)why;
    bool guest = (e->xf & X_GUEST) != 0;
    /* vterminate runs on_deactivate, the type's terminate, and frees e. */
    (void)core_end_now(cs, e->act, PITH_EXIT_NORMAL);
    give_on(cs, vs, guest, tid, hash, key, klen, kept);
}

/* The least recently used idle activation of the type goes (the cap): true if one did. */
static bool evict_one(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts)
{
    unsigned looked = 0;
    for (struct ventry *e = ts->head; e != NULL && looked++ < SHED_SCAN; e = e->next) {
        struct actor *a = core_find(cs, e->act);
        if (a != NULL && idle(a)) {
            deactivate(cs, vs, e, PITH_VDEACT_CAP);
            return true;
        }
    }
    return false;
}

static void sweep(void *arg)
{
    uint32_t tid = (uint32_t)(uintptr_t)arg;
    struct core_shard *cs = core_self;
    struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_relaxed) : NULL;
    struct vtype_shard *ts =
        vs != NULL ? atomic_load_explicit(&vs->types[tid], memory_order_relaxed) : NULL;
    if (ts == NULL || cs->closing)
        return;
    ts->tick++;
    /* From the cold end while the tick says idle long enough: busy ones count as used now. */
    struct ventry *e;
    while ((e = ts->head) != NULL && ((ts->tick - e->tick) & TICK_MASK) >= IDLE_TICKS) {
        struct actor *a = core_find(cs, e->act);
        if (a != NULL && !idle(a)) {
            touch(ts, e);
            continue;
        }
        deactivate(cs, vs, e, PITH_VDEACT_IDLE);
    }
    pressure_check(cs, vs, false);
    if (ts->live == 0 && ts->armed) {
        pith_timer_cancel(ts->timer); /* nothing left to sweep: the timer goes until needed */
        ts->armed = false;
    }
}

/* An activation an SLA's memory guarantee keeps: its state is in the hot memory promised. */
static inline bool guaranteed(const struct vtype_shard *ts, const struct ventry *e)
{
    return ts->guarantee > 0 && pith_mem_profile_of(e) == PITH_MEM_HOT;
}

/* Memory pressure: past 3/4 of the shard's cap in use, the idle activations of types that
 * shed (PITH_VTYPE_SHED) go, coldest first, 64 at a time, until under 1/2 or none is idle
 * (the cap bounds what the shard reserves, and the heap's own room and fragmentation need the
 * margin: at 7/8 a cap of 64 MiB refused allocations of 256 KiB states). */
static void pressure_check(struct core_shard *cs, struct vshard *vs, bool force)
{
    /* Not pith_mem_stats: it reads the mappings (smaps), which made a million activations
     * take 22 s. */
    size_t in_use, cap;
    if (mem_self_usage(&in_use, &cap) != 0 || cap == 0 || (!force && in_use <= cap - cap / 4))
        return;
    uint32_t n = atomic_load_explicit(&nvtypes, memory_order_acquire);
    for (unsigned round = 0; round < 1024; round++) {
        unsigned shed = 0;
        for (uint32_t t = 0; t < n; t++) {
            struct vtype_shard *ts = atomic_load_explicit(&vs->types[t], memory_order_relaxed);
            if (ts == NULL || !(vtypes[t].vt->flags & PITH_VTYPE_SHED))
                continue;
            while (shed < 64) {
                /* From the cold end each time: an on_deactivate may end others. */
                struct ventry *e = ts->head;
                struct actor *a = NULL;
                unsigned looked = 0;
                while (e != NULL && looked++ < SHED_SCAN &&
                       ((a = core_find(cs, e->act)) == NULL || !idle(a) || guaranteed(ts, e)))
                    e = e->next;
                if (e == NULL || looked > SHED_SCAN)
                    break;
                deactivate(cs, vs, e, PITH_VDEACT_PRESSURE);
                shed++;
            }
        }
        if (shed == 0 || force || mem_self_usage(&in_use, &cap) != 0 || in_use <= cap / 2)
            return;
    }
}

/* The related keys of an activation that a message made (resolve queued it): pre-warmed. */
static void related_task(void *arg)
{
    struct vtrail *t = arg;
    const pith_vtype_t *vt = vtypes[t->tid].vt;
    pith_vref_t out[16];
    struct core_shard *cs = core_self;
    uint32_t n = cs != NULL && !cs->closing ? vt->related(t->key, t->klen, out, 16) : 0;
    for (uint32_t i = 0; i < n && i < 16; i++)
        (void)pith_vactor_prewarm(&out[i]);
    pith_free(t);
}

/* How an activation begins: why, and for a guest or a moved state, what comes with it. */
struct how {
    int reason;     /* PITH_VACT_* */
    bool guest;     /* its directory is another shard */
    void *blob;     /* PITH_VACT_MIGRATED: the state's bytes */
    uint8_t placed; /* pith_placement_t */
    uint16_t moves;
    uint64_t t0; /* timed: when its first message reached the directory (0: not timed) */
};

struct prep {
    struct vshard *vs;
    struct vtype_shard *ts;
    bool worker;
    bool hot; /* the block is hot memory */
    uint32_t tid;
    uint64_t hash;
    const unsigned char *key;
    uint32_t klen;
    const struct how *how;
};

/* core_spawn_ex's step before init: the entry is made and in the directory, so that whatever
 * init or on_activate sends to the key finds this activation. */
static void prep_entry(void *block, pith_ref_t ref, void *ctx)
{
    const struct prep *p = ctx;
    struct ventry *e = block;
    e->act = ref;
    e->hash = p->hash;
    e->tid = (uint8_t)p->tid;
    e->klen = (uint8_t)p->klen;
    memcpy(entry_key(e), p->key, p->klen);
    /* Out of memory for the extras, an activation placed or moved here says hash and 0 moves
     * (pith_vactor_info): nothing else depends on them. */
    unsigned own = (unsigned)vtypes[p->tid].vt->placement;
    (void)ext_set(
        p->vs, e,
        ext_pack(0, 0, 0, p->how->moves, p->how->placed == own ? 0 : p->how->placed + 1u));
    if (p->worker)
        e->flags |= E_WORKER;
    else
        dir_insert(p->vs, e);
    if (p->how->guest)
        e->xf |= X_GUEST;
    p->ts->live++;
    core_bump(&p->ts->live_now, 1);
    if (p->hot)
        core_bump(&p->ts->hot, entry_size(e));
}

/* An entry leaves: the directory, its type's list, the live count. */
static void entry_drop(struct vshard *vs, struct ventry *e)
{
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[e->tid], memory_order_relaxed);
    if (e->flags & (E_DIR | E_WORKER)) {
        ts->live--;
        core_bump(&ts->live_now, (uint64_t)0 - 1);
        if (pith_mem_profile_of(e) == PITH_MEM_HOT)
            core_bump(&ts->hot, (uint64_t)0 - entry_size(e));
    }
    e->xf &= (uint8_t)~X_GUEST;
    (void)ext_set(vs, e, 0);
    dir_unlink(vs, e);
    e->flags &= (uint8_t)~E_WORKER;
    list_unlink(ts, e);
}

/* Makes key's activation on this shard (its directory shard). Errors: -EAGAIN at the cap with
 * none idle, -ENOMEM, init's or on_activate's error. */
static struct ventry *activate(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                               uint32_t tid, uint64_t hash, const unsigned char *key, uint32_t klen,
                               const struct how *how, int *err)
{
    const struct vtype_rec *r = &vtypes[tid];
    int reason = how->reason;
    /* One activation in HIST_SAMPLE is timed, the first included (two clock reads cost a
     * tenth of one). */
    uint32_t nth = ts->sample++;
    bool timed = nth % HIST_SAMPLE == 0;
    /* Every PRESSURE_EVERY activations, or each one when states are large. */
    if (nth % PRESSURE_EVERY == PRESSURE_EVERY - 1 || r->vt->actor->state_size >= 4096) {
        pressure_check(cs, vs, false);
        struct ventry *now = r->vt->workers == 0 ? dir_find(vs, ts, tid, hash, key, klen) : NULL;
        if (now != NULL)
            return now; /* an on_deactivate of one that went sent to this key */
    }
    uint64_t t0 = timed ? pith_now_ns() : 0;
    /* Timed to its first behaviour call too: a message's, or the directory's choice for one
     * placed here (one at a time per type and shard). */
    uint64_t first_t0 = how->t0 != 0 ? how->t0 : timed && reason == PITH_VACT_MESSAGE ? t0 : 0;
    vs->app_err = false;
    if (r->vt->workers == 0 && r->vt->max_per_shard != 0 && ts->live >= r->vt->max_per_shard) {
        if (!evict_one(cs, vs, ts)) {
            core_bump(&ts->refused, 1);
            *err = -EAGAIN;
            return NULL;
        }
        /* The one that went ran on_deactivate, which may have sent to this key. */
        struct ventry *now = dir_find(vs, ts, tid, hash, key, klen);
        if (now != NULL)
            return now;
    }
    /* The directory has room before the spawn, so the entry always goes in (a chain grows
     * when a doubling finds no memory). */
    if (r->vt->workers == 0 && vs->nentries >= 2 * vs->nbuckets)
        dir_grow(vs);
    if (r->vt->workers == 0 && vs->nbuckets == 0) {
        *err = -ENOMEM;
        return NULL;
    }
    /* Within an SLA's memory guarantee, in hot memory (reserved when it was set). */
    pith_mem_profile_t prof = r->at.profile;
    size_t size = r->key_off + key_tail(klen);
    if (ts->guarantee > 0 && prof != PITH_MEM_HOT &&
        atomic_load_explicit(&ts->hot, memory_order_relaxed) + size <= ts->guarantee)
        prof = PITH_MEM_HOT;
    struct prep p = {vs, ts, r->vt->workers != 0, prof == PITH_MEM_HOT, tid, hash, key, klen, how};
    pith_ref_t ref;
    *err = core_spawn_ex(&r->at, how->blob, VPRE, key_tail(klen), prof, prep_entry, &p, &ref);
    if (*err == -ENOMEM && !vs->app_err && prof != r->at.profile) {
        /* No hot memory left for the guarantee: the type's own profile, counted. */
        core_bump(&ts->hot_misses, 1);
        prof = r->at.profile;
        p.hot = prof == PITH_MEM_HOT;
        *err = core_spawn_ex(&r->at, how->blob, VPRE, key_tail(klen), prof, prep_entry, &p, &ref);
    }
    if (*err == -ENOMEM && !vs->app_err) {
        /* Out of the engine's memory: idle activations that may shed go, and one more try
         * (unless what they ran in going made this key's activation already). */
        pressure_check(cs, vs, true);
        struct ventry *now = r->vt->workers == 0 ? dir_find(vs, ts, tid, hash, key, klen) : NULL;
        if (now != NULL)
            return now;
        *err = core_spawn_ex(&r->at, how->blob, VPRE, key_tail(klen), prof, prep_entry, &p, &ref);
    }
    if (*err != 0) {
        core_bump(&ts->failed, 1);
        return NULL;
    }
    struct actor *a = core_find(cs, ref);
    if (a == NULL) {
        *err = -ECANCELED; /* it stopped itself in init */
        core_bump(&ts->failed, 1);
        return NULL;
    }
    struct ventry *e = entry_of_state(a->state);
    /* One at a time; one whose first call never came (a pith_become before it) gives way
     * after a second. */
    if (first_t0 != 0 &&
        (ts->first_ref == PITH_REF_NONE || first_t0 - ts->first_t0 > 1000ull * 1000 * 1000)) {
        ts->first_ref = ref;
        ts->first_t0 = first_t0;
        e->xf |= X_TIMED;
    }
    if (r->vt->on_activate != NULL || (r->vt->persist != NULL && vactor_persist != NULL)) {
        struct pith_actor self = {a, ref};
        pith_ref_t outer = core_current;
        core_current = ref;
        a->gen |= A_RUNNING;
        /* A persistent type's state comes back from its journal first. */
        int rc = r->vt->persist != NULL && vactor_persist != NULL
                     ? vactor_persist->activate(&self, a->state, r->vt, entry_key(e), klen)
                     : 0;
        if (rc == 0 && r->vt->on_activate != NULL && core_find(cs, ref) != NULL)
            rc = r->vt->on_activate(&self, a->state, entry_key(e), klen, reason);
        if ((a = core_find(cs, ref)) != NULL)
            a->gen &= ~A_RUNNING;
        core_current = outer;
        /* A stop it asked for itself (pith_stop(self) there) ends it as a failure: no turn
         * follows on_activate to act on it. */
        if (rc >= 0 && (a == NULL || (a->gen & A_STOP)))
            rc = -ECANCELED;
        /* The application's answer (a client's lane does not retry it), unless the engine
         * finds no memory to hold a PITH_VACT_LATER. */
        *err = rc > 0 && rc != PITH_VACT_LATER ? -EINVAL : rc;
        vs->app_err = *err != 0 && *err != PITH_VACT_LATER;
        if (*err == PITH_VACT_LATER && core_mute_hold(cs, ref, true) != 0) {
            *err = -ENOMEM;
        } else if (*err == PITH_VACT_LATER) {
            /* Held from its turns (as a muted actor is) until pith_vactor_activated; it counts
             * as busy, so neither the sweep nor a cap lets it go meanwhile. */
            *err = 0;
            e->flags |= E_LATER;
            if (reason == PITH_VACT_PREWARM)
                e->flags |= E_WARM;
            e->tick = ts->tick;
            list_append(ts, e);
            sweep_arm(ts, r);
            return e;
        }
        if (*err != 0) {
            if (a != NULL)
                (void)core_end_now(cs, ref, *err); /* vterminate unlinks e */
            core_bump(&ts->failed, 1);
            return NULL;
        }
    }
    e->flags |= E_ACTIVE;
    if (reason == PITH_VACT_PREWARM) {
        e->flags |= E_WARM;
        core_bump(&ts->prewarms, 1);
    }
    e->tick = ts->tick;
    list_append(ts, e);
    sweep_arm(ts, r);
    core_bump(&ts->activations, 1);
    if (timed) {
        uint64_t took = pith_now_ns() - t0;
        core_bump(&ts->hist[hist_bucket(took)], 1);
        core_bump(&ts->act_sum, took);
        if (took > atomic_load_explicit(&ts->act_max, memory_order_relaxed))
            atomic_store_explicit(&ts->act_max, took, memory_order_relaxed);
    }
    return e;
}

/* The first behaviour call of a timed activation ends its time. */
static void first_call(struct ventry *e)
{
    e->xf &= (uint8_t)~X_TIMED;
    struct vshard *vs = atomic_load_explicit(&core_self->vs, memory_order_relaxed);
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[e->tid], memory_order_relaxed);
    if (ts->first_ref != e->act)
        return;
    ts->first_ref = PITH_REF_NONE;
    uint64_t took = pith_now_ns() - ts->first_t0;
    core_bump(&ts->first_hist[hist_bucket(took)], 1);
    core_bump(&ts->first_sum, took);
    if (took > atomic_load_explicit(&ts->first_max, memory_order_relaxed))
        atomic_store_explicit(&ts->first_max, took, memory_order_relaxed);
}

/* Every activation's behaviour (until a pith_become): the type's, after the check above. */
static int vbehaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct ventry *e = entry_of_state(state);
    if (UNLIKELY(e->xf & X_TIMED))
        first_call(e);
    return vtypes[e->tid].vt->actor->behaviour(self, state, msg);
}

static int vinit(pith_actor_t *self, void *state, void *arg)
{
    struct ventry *e = entry_of_state(state);
    const pith_actor_type_t *t = vtypes[e->tid].vt->actor;
    if (arg != NULL) {
        /* A move: the old activation's state, byte for byte, instead of init. */
        memcpy(state, arg, t->state_size);
        atomic_load_explicit(&core_self->vs, memory_order_relaxed)->blob_taken = true;
        return 0;
    }
    int err = t->init != NULL ? t->init(self, state, NULL) : 0;
    if (err != 0) {
        struct vshard *vs = atomic_load_explicit(&core_self->vs, memory_order_relaxed);
        vs->app_err = true; /* the application's error, not the engine's memory */
        entry_drop(vs, e);
    }
    return err; /* the core frees the block, without terminate */
}

static void vterminate(pith_actor_t *self, void *state, int reason)
{
    struct vshard *vs = atomic_load_explicit(&core_self->vs, memory_order_relaxed);
    struct ventry *e = entry_of_state(state);
    const struct vtype_rec *r = &vtypes[e->tid];
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[r->id], memory_order_relaxed);
    e->flags |= E_ENDING;
    if ((e->xf & X_TIMED) && ts->first_ref == e->act)
        ts->first_ref = PITH_REF_NONE; /* it ends before any behaviour call: untimed */
    bool moving = e->why == PITH_VDEACT_MIGRATED;
    if (e->flags & E_ACTIVE) {
        int why = e->why != 0                    ? e->why
                  : reason == PITH_EXIT_SHUTDOWN ? PITH_VDEACT_SHUTDOWN
                                                 : PITH_VDEACT_ENDED;
        if (r->vt->on_deactivate != NULL)
            r->vt->on_deactivate(self, state, why);
        if (r->vt->persist != NULL && vactor_persist != NULL)
            vactor_persist->ended(self, state, r->vt, why, true);
        core_bump(&ts->deact[why], 1);
        /* A move: the state as on_deactivate left it goes on. */
        if (moving && vs->mig_blob != NULL)
            memcpy(vs->mig_blob, state, r->vt->actor->state_size);
        if ((e->flags & E_WARM) && !moving)
            core_bump(&ts->prewarm_wasted, 1);
    } else if (r->vt->persist != NULL && vactor_persist != NULL)
        vactor_persist->ended(self, state, r->vt, 0, false);
    /* A moving state lives on in the next activation: what it owns is not let go. */
    if (r->vt->actor->terminate != NULL && !moving)
        r->vt->actor->terminate(self, state, reason);
    /* A fresh activation that failed to begin fails what waited for it; one that ended, or a
     * move that could not land, hands it on to the next. */
    unsigned placed = placed_of(e, ext_of(vs, e));
    bool failed =
        !(e->flags & E_ACTIVE) && placed != PITH_PLACE_MIGRATED && placed != PITH_PLACE_REBALANCED;
    /* A guest that fails inside ctl_act's activate is ctl_act's to report. */
    if ((e->xf & X_GUEST) && (e->xf & X_ANNOUNCED))
        guest_gone(core_self, vs, e, failed ? (reason < 0 ? reason : -ECANCELED) : 0);
    entry_drop(vs, e); /* the core frees the block, e with it, after this */
}

static void held_task(void *arg);

/* m (with its trailer) for a key whose activation is ending: it waits for held_task. */
static void hold(struct core_shard *cs, struct vshard *vs, struct amsg *m)
{
    vs->nheld++;
    chain_push(&vs->held, &vs->held_tail, m);
    if (!vs->held_armed && shard_submit_force(cs->id, held_task, NULL) == 0)
        vs->held_armed = true;
}

/* A stateless worker of this shard's pool for one message: an idle one (the most recently
 * used first: its memory is warm), else a new one while the pool is under the type's
 * `workers`, else the one with the fewest messages waiting. */
static struct ventry *worker_pick(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                                  uint32_t tid, uint64_t hash, const unsigned char *key,
                                  uint32_t klen, int reason, int *err)
{
    struct ventry *best = NULL;
    uint32_t least = UINT32_MAX;
    for (struct ventry *e = ts->tail; e != NULL; e = e->prev) {
        struct actor *a = core_find(cs, e->act);
        if (a == NULL)
            continue;
        if (idle(a) || reason == PITH_VACT_PREWARM)
            return e;
        if (a->depth < least) {
            least = a->depth;
            best = e;
        }
    }
    if (ts->live < vtypes[tid].vt->workers) {
        struct ventry *e =
            activate(cs, vs, ts, tid, hash, key, klen, &(struct how){.reason = reason}, err);
        if (e != NULL || best == NULL)
            return e;
    }
    if (best == NULL)
        *err = -EAGAIN;
    return best;
}

static void related_task(void *arg);

static struct ventry *remote_new(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                                 uint32_t tid, uint64_t hash, const unsigned char *key,
                                 uint32_t klen, unsigned host, const struct how *how);

/* Live activations of type tid on `shard` (its own counter, read from here: a hint). */
static uint64_t live_on(unsigned shard, uint32_t tid)
{
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    if (ce == NULL || shard >= ce->n)
        return UINT64_MAX;
    /* Acquire: pairs with the release stores that published each part. */
    struct core_shard *cs = atomic_load_explicit(&ce->shards[shard], memory_order_acquire);
    struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_acquire) : NULL;
    struct vtype_shard *ts =
        vs != NULL ? atomic_load_explicit(&vs->types[tid], memory_order_acquire) : NULL;
    return ts != NULL ? atomic_load_explicit(&ts->live_now, memory_order_relaxed) : 0;
}

/* The shard for a new activation of (tid, key) by the type's placement; origin is the shard of
 * the message's sender, or UINT_MAX. Runs on the key's directory shard. */
static unsigned place_for(struct core_shard *cs, uint32_t tid, const unsigned char *key,
                          uint32_t klen, unsigned origin)
{
    const pith_vtype_t *vt = vtypes[tid].vt;
    unsigned n = pith_shard_count();
    switch (vt->placement) {
    case PITH_PLACE_LOCAL:
        return origin < n ? origin : cs->id;
    case PITH_PLACE_FN: {
        unsigned to = vt->place(key, klen, origin < n ? origin : UINT_MAX, n);
        return to < n ? to : cs->id;
    }
    case PITH_PLACE_LEAST_LOADED:
    case PITH_PLACE_NUMA: {
        bool numa = vt->placement == PITH_PLACE_NUMA, any = false;
        for (unsigned i = 0; numa && i < n && !any; i++)
            any = shard_numa_node(i) == vt->numa_node;
        numa = numa && any; /* no shard on that node: all of them */
        unsigned best = cs->id;
        uint64_t least =
            numa && shard_numa_node(cs->id) != vt->numa_node ? UINT64_MAX : live_on(cs->id, tid);
        for (unsigned i = 0; i < n; i++) {
            if (i == cs->id || (numa && shard_numa_node(i) != vt->numa_node))
                continue;
            uint64_t l = live_on(i, tid);
            if (l < least) {
                least = l;
                best = i;
            }
        }
        return best;
    }
    default:
        return cs->id;
    }
}

/* The activation of (tid, key) on this shard, its directory shard: found (an activation here,
 * or the entry of one elsewhere), or made for `reason` where the placement says (origin: the
 * sender's shard, or UINT_MAX); a message's activation pre-warms the type's related keys, from
 * a task of their own. */
static struct ventry *resolve(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                              uint32_t tid, uint64_t hash, const unsigned char *key, uint32_t klen,
                              int reason, unsigned origin, int *err)
{
    if (vtypes[tid].vt->workers != 0)
        return worker_pick(cs, vs, ts, tid, hash, key, klen, reason, err);
    struct ventry *e = dir_find(vs, ts, tid, hash, key, klen);
    if (e != NULL) {
        if (reason == PITH_VACT_MESSAGE && (e->flags & E_WARM)) {
            e->flags &= (uint8_t)~E_WARM;
            core_bump(&ts->prewarm_used, 1);
        }
        return e;
    }
    const pith_vtype_t *vt = vtypes[tid].vt;
    unsigned host =
        vt->placement == PITH_PLACE_HASH ? cs->id : place_for(cs, tid, key, klen, origin);
    if (vt->persist != NULL && vactor_persist != NULL) {
        host = vactor_persist->home(vt, key, klen, pith_shard_count());
        if (host >= pith_shard_count())
            host = cs->id;
    }
    struct how how = {.reason = reason, .placed = (uint8_t)vt->placement};
    e = NULL;
    if (host != cs->id) {
        /* Timed from here, one in HIST_SAMPLE, to the first behaviour call there. */
        if (reason == PITH_VACT_MESSAGE && ts->sample++ % HIST_SAMPLE == 0)
            how.t0 = pith_now_ns();
        e = remote_new(cs, vs, ts, tid, hash, key, klen, host, &how);
        how.t0 = 0;
    }
    if (e == NULL) {
        how.placed = host != cs->id ? PITH_PLACE_HASH : how.placed; /* it could not go there */
        e = activate(cs, vs, ts, tid, hash, key, klen, &how, err);
    }
    if (e != NULL && reason == PITH_VACT_MESSAGE && vtypes[tid].vt->related != NULL) {
        /* Later, not now: the caller still holds e, which a cap could let go. */
        struct vtrail *t = pith_malloc(sizeof(*t) + klen);
        if (t != NULL) {
            *t = (struct vtrail){.hash = hash, .tid = tid, .klen = klen};
            memcpy(t->key, key, klen);
            if (pith_submit(cs->id, related_task, t) != 0)
                pith_free(t); /* the queue is full: no pre-warming this time */
        }
    }
    return e;
}

/* The shard of a message's sender, or UINT_MAX (a client, a ref of no shard). */
static inline unsigned sender_shard(pith_ref_t from)
{
    unsigned s = ref_shard(from);
    return from != PITH_REF_NONE && !ref_is_client(from) && s < pith_shard_count() ? s : UINT_MAX;
}

/* Whether key points at m's trailer (the callers pass a trailer's key, or a copy when m has
 * none: messages sent to an activation on its own shard carry none). Integers, not pointers:
 * a message without a trailer ends before the address. */
static inline bool has_trail(const struct amsg *m, const unsigned char *key)
{
    uintptr_t at = (uintptr_t)(m + 1) + core_msg_extra_off(m->len & AMSG_LEN_MASK) +
                   offsetof(struct vtrail, key);
    return (uintptr_t)key == at;
}

/* m with a trailer for (tid, hash, key): m itself when it has one, else a copy that takes over
 * m's buffer reference (m is freed). NULL: no memory (m is left as it was). */
static struct amsg *trailed(struct amsg *m, int dst, uint32_t tid, uint64_t hash,
                            const unsigned char *key, uint32_t klen)
{
    if (has_trail(m, key))
        return m;
    uint32_t len = m->len & AMSG_LEN_MASK;
    struct amsg *n =
        core_msg_make_ext(dst, m->to, m->from, m->type, m + 1, len, sizeof(struct vtrail) + klen);
    if (n == NULL)
        return NULL;
    n->len |= m->len & AMSG_BUF;
    n->req = m->req;
    n->sent = m->sent; /* the copy's time in the mailbox began with the original's */
    struct vtrail *t = trail_of(n);
    *t = (struct vtrail){.hash = hash, .tid = tid, .klen = (uint16_t)klen};
    memcpy(t->key, key, klen);
    m->len &= ~AMSG_BUF; /* the copy owns the reference now */
    core_msg_free(m);
    return n;
}

/* A message to another shard that must not be lost on the way: past the mesh's bounds (the
 * amount is bounded where it is made). Out of memory for the mesh, the sender is told. */
static void send_msg(struct core_shard *cs, unsigned dst, pith_fn_t fn, struct amsg *m)
{
    if (shard_submit_force(dst, fn, m) != 0) {
        core_undelivered(cs, m, -ENOMEM);
        core_msg_free(m);
    }
}

static void fwd_task(void *arg);
static void vote(struct core_shard *cs, struct ventry *e, pith_ref_t from);

/* Routes m to the virtual actor (tid, hash, key) on its directory shard, this one, activating
 * it when it is not; key may point into m. Consumes m: delivered, or told to its sender
 * (core_undelivered), whose error is then returned. With a client's lane l, m is the lane
 * record's and is kept (not consumed) when the answer is LANE_PARK (the activation's mailbox is
 * full and its type would refuse m) or LANE_RETRY (out of memory). */
static int vdeliver(struct core_shard *cs, struct vshard *vs, uint32_t tid, uint64_t hash,
                    const unsigned char *key, uint32_t klen, struct amsg *m, struct lane *l,
                    bool moved)
{
    struct vtype_shard *ts = vts_get(vs, tid);
    int err = -ENOMEM;
    struct ventry *e = NULL;
    unsigned origin = sender_shard(m->from);
    if (ts != NULL && m->type == MSG_VPREWARM) {
        if (resolve(cs, vs, ts, tid, hash, key, klen, PITH_VACT_PREWARM, origin, &err) != NULL)
            err = 0;
        core_msg_free(m); /* an engine message: its failure is not reported back */
        return err;
    }
    if (ts != NULL) {
        core_bump(&ts->messages, 1);
        e = resolve(cs, vs, ts, tid, hash, key, klen, PITH_VACT_MESSAGE, origin, &err);
    }
    if (e != NULL && (e->xf & X_REMOTE)) {
        struct rentry *r = (struct rentry *)e;
        if (r->state == R_ACTIVE) {
            struct amsg *f = trailed(m, -1, tid, hash, key, klen);
            if (f != NULL && l != NULL) {
                /* A client's: within the mesh's bounds, else it waits in its lane. */
                trail_of(f)->vf = 0;
                if (pith_submit(r->host, fwd_task, f) != 0)
                    return LANE_RETRY;
                core_bump(&ts->forwards, 1);
                return 0;
            }
            if (f != NULL) {
                trail_of(f)->vf = moved ? V_MOVED : 0;
                core_bump(&ts->forwards, 1);
                send_msg(cs, r->host, fwd_task, f);
                return 0;
            }
            err = -ENOMEM;
        } else if (r->nheld < held_cap(tid)) {
            /* Held behind what the ended activation gives back, until its marker is back. */
            if (moved && has_trail(m, key))
                trail_of(m)->vf |= V_MOVED; /* it passes the next activation's bound */
            chain_push(&r->held, &r->held_tail, m);
            r->nheld++;
            return 0;
        } else {
            err = -EAGAIN;
        }
        if (l != NULL && (err == -ENOMEM || err == -EAGAIN))
            return LANE_RETRY;
        core_undelivered(cs, m, err);
        core_msg_free(m);
        return err;
    }
    if (e != NULL && (e->flags & E_ENDING)) {
        if (l != NULL)
            return LANE_RETRY; /* the record waits in its lane: the end is over at once */
        hold(cs, vs, m);
        return 0;
    }
    struct actor *a = e != NULL ? core_find(cs, e->act) : NULL;
    if (a != NULL) {
        touch(ts, e);
        vote(cs, e, m->from);
        m->to = e->act;
        if (l != NULL && a->depth >= a->rec->mailbox_max &&
            a->rec->type->overflow != PITH_OVERFLOW_DROP_OLDEST && !(m->len & AMSG_ADMIT))
            return core_lane_park(cs, l, e->act) == 0 ? LANE_PARK : LANE_RETRY;
        /* Moved from the last activation's mailbox: they were taken, so they pass the bound
         * (admitted for the enqueue only: once in, they are ordinary mail again). */
        bool admit = moved && !(m->len & AMSG_ADMIT);
        if (admit)
            m->len |= AMSG_ADMIT;
        err = core_enqueue(cs, a, m);
        if (admit)
            m->len &= ~AMSG_ADMIT;
        if (err == 0)
            return 0;
    } else if (e != NULL) {
        err = -ESRCH; /* not expected: an entry outlives its activation only inside vterminate */
    }
    if (l != NULL && err == -ENOMEM && !vs->app_err)
        return LANE_RETRY; /* the engine's own memory: the record tries again later */
    core_undelivered(cs, m, err);
    core_msg_free(m);
    return err;
}

/* The messages held while activations ended, now that the ends are over. */
static void held_task(void *arg)
{
    (void)arg;
    struct core_shard *cs = core_self;
    struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_relaxed) : NULL;
    if (vs == NULL)
        return;
    vs->held_armed = false;
    struct amsg *m = vs->held;
    vs->held = vs->held_tail = NULL;
    vs->nheld = 0;
    while (m != NULL) {
        struct amsg *next = m->next;
        m->next = NULL;
        if (cs->closing) {
            core_msg_free(m);
        } else {
            struct vtrail *t = trail_of(m);
            (void)vdeliver(cs, vs, t->tid, t->hash, t->key, t->klen, m, NULL, false);
        }
        m = next;
    }
}

/* ---- activations off their directory shard ----
 *
 * The directory shard keeps a struct rentry for the key and forwards (fwd_task) to the host.
 * The host's activation (a guest) is an ordinary activation there, in the host's table (the
 * host's own senders reach it through their location cache, as other shards' do). Words
 * between the two (struct vctl, ctl_task):
 *  ACT    directory -> host: activate (with a moved state, or not), before any forward;
 *  GMARK  host -> directory: the guest's ref, for pith_vactor_info;
 *  GONE   host -> directory: the guest ended (or failed to begin, or moves: with its state);
 *         what it had not handled, and forwards that find it gone, come back (ret_task);
 *  MARK   directory -> host, ECHO back: everything the host gives back has come once ECHO
 *         does; the directory then hands on what came back, then what it held meanwhile. */

enum { C_ACT = 1, C_GMARK, C_GONE, C_MARK, C_ECHO, C_CMARK, C_CECHO, C_PROBE, C_PECHO };

struct vctl {
    uint8_t kind;   /* C_* */
    uint8_t reason; /* C_ACT: on_activate's */
    uint8_t placed; /* C_ACT: pith_placement_t */
    uint8_t rebal;  /* C_GONE with a state: the move is rebalancing's */
    int32_t err;    /* C_GONE: the activation failed with this */
    uint32_t tid, klen;
    uint16_t target; /* C_GONE with a state: where it moves */
    uint16_t from;   /* the shard that sent the word */
    uint16_t moves;
    uint16_t asker; /* C_CMARK, C_CECHO: the shard whose location cache asks */
    uint64_t t0;    /* C_ACT: the first message's time at the directory (0: not timed) */
    pith_ref_t ref; /* C_GMARK, C_GONE, C_CECHO: the activation */
    uint64_t hash;
    void *blob; /* C_ACT, C_GONE: a moving state's bytes */
    unsigned char key[];
};

static void ctl_task(void *arg);

static struct vctl *ctl_make(struct core_shard *cs, int kind, uint32_t tid, uint64_t hash,
                             const unsigned char *key, uint32_t klen)
{
    struct vctl *c = pith_malloc(sizeof(*c) + klen);
    if (c == NULL)
        return NULL;
    memset(c, 0, sizeof(*c));
    c->kind = (uint8_t)kind;
    c->tid = tid;
    c->hash = hash;
    c->klen = klen;
    c->from = (uint16_t)cs->id;
    memcpy(c->key, key, klen);
    return c;
}

/* A moved state that reaches no activation (the target at its cap with none idle, or out of
 * memory, or the engine stopping): the actor type's terminate lets go of what it owns, with a
 * self that names no actor (pith_self PITH_REF_NONE, pith_vactor_key NULL). Then it is freed. */
static void orphan_end(uint32_t tid, void *blob, int reason)
{
    const pith_actor_type_t *t = vtypes[tid].vt->actor;
    if (blob != NULL && t->terminate != NULL) {
        /* An actor record of a plain type of no behaviour: not an activation's, so the vactor
         * calls answer as for another actor, and pith_actor_owner reads a budget of 0. */
        static const pith_actor_type_t nobody = {.name = "pith.orphaned-state"};
        static struct type_rec none = {.type = &nobody};
        struct actor a = {.rec = &none, .state = blob};
        struct pith_actor self = {&a, PITH_REF_NONE};
        t->terminate(&self, blob, reason);
    }
    pith_free(blob);
}

/* After an activation with a moved state failed: the state's end, unless it reached an actor
 * (vinit copied it), whose terminate has run. */
static void blob_done(struct vshard *vs, uint32_t tid, void *blob, int err)
{
    if (vs->blob_taken)
        pith_free(blob);
    else
        orphan_end(tid, blob, err);
}

static void ctl_free(struct vctl *c)
{
    if (c->blob != NULL)
        orphan_end(c->tid, c->blob, PITH_EXIT_SHUTDOWN);
    pith_free(c);
}

/* A word to shard dst. Out of memory for the mesh it is lost, said on stderr: the directory
 * takes the first message given back as the GONE it missed, so nothing waits forever for a
 * lost GONE, MARK or ECHO but a move's state. */
static bool ctl_send(struct core_shard *cs, unsigned dst, struct vctl *c)
{
    if (shard_submit_force(dst, ctl_task, c) == 0)
        return true;
    fprintf(stderr, "pith: shard %u: out of memory, a virtual actor's word to shard %u lost\n",
            cs->id, dst);
    ctl_free(c);
    return false;
}

static void ret_task(void *arg);

/* m (with its trailer) goes back to its directory shard, from a guest that ended or moved. */
static void give_back(struct core_shard *cs, struct amsg *m)
{
    struct vtrail *t = trail_of(m);
    t->vf |= V_MOVED;
    t->via = (uint16_t)cs->id;
    struct vshard *vs = atomic_load_explicit(&cs->vs, memory_order_relaxed);
    struct vtype_shard *ts =
        vs != NULL ? atomic_load_explicit(&vs->types[t->tid], memory_order_relaxed) : NULL;
    if (ts != NULL)
        core_bump(&ts->returned, 1);
    send_msg(cs, dir_shard(t->hash, pith_shard_count()), ret_task, m);
}

/* Makes the entry of (tid, key) for an activation on `host`, and tells host to activate (with
 * how->blob, which the word owns once this succeeds). NULL: no memory (nothing made). */
static struct ventry *remote_new(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                                 uint32_t tid, uint64_t hash, const unsigned char *key,
                                 uint32_t klen, unsigned host, const struct how *how)
{
    if (vs->nentries >= 2 * vs->nbuckets)
        dir_grow(vs);
    if (vs->nbuckets == 0)
        return NULL;
    struct vctl *c = ctl_make(cs, C_ACT, tid, hash, key, klen);
    struct rentry *r = c != NULL ? pith_malloc(RHDR + klen) : NULL;
    if (r == NULL) {
        pith_free(c);
        return NULL;
    }
    memset(r, 0, sizeof(*r));
    r->e.act = PITH_REF_NONE;
    r->e.hash = hash;
    r->e.tid = (uint8_t)tid;
    r->e.klen = (uint8_t)klen;
    r->e.xf = X_REMOTE;
    memcpy(entry_key(&r->e), key, klen);
    r->host = (uint16_t)host;
    r->placed = how->placed;
    r->moves = how->moves;
    r->state = R_ACTIVE;
    c->reason = (uint8_t)how->reason;
    c->placed = how->placed;
    c->moves = how->moves;
    c->blob = how->blob;
    c->t0 = how->t0;
    if (shard_submit_force(host, ctl_task, c) != 0) {
        pith_free(c); /* not the blob: still the caller's */
        pith_free(r);
        return NULL;
    }
    dir_insert(vs, &r->e);
    core_bump(&ts->remote, 1);
    return &r->e;
}

/* A moved state arrives where it goes (this shard, or another through a new entry). */
static void land(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts, uint32_t tid,
                 uint64_t hash, const unsigned char *key, uint32_t klen, unsigned target,
                 void *blob, uint16_t moves, bool rebal)
{
    struct how how = {.reason = PITH_VACT_MIGRATED,
                      .blob = blob,
                      .placed = rebal ? PITH_PLACE_REBALANCED : PITH_PLACE_MIGRATED,
                      .moves = moves};
    if (target != cs->id && target < pith_shard_count() &&
        remote_new(cs, vs, ts, tid, hash, key, klen, target, &how) != NULL)
        return; /* the word owns the blob */
    int err;
    vs->blob_taken = false;
    struct ventry *e = activate(cs, vs, ts, tid, hash, key, klen, &how, &err);
    if (e == NULL || !vs->blob_taken) {
        /* Failed, or a fresh activation of the key began meanwhile (an eviction's
         * on_deactivate sent to it) and took its place: the state's end. */
        core_bump(&ts->migrate_failed, 1);
        blob_done(vs, tid, blob, e == NULL ? err : -EEXIST);
    } else {
        pith_free(blob);
    }
}

/* On a guest's end (vterminate): GONE to the directory, with the state if it moves. */
static void guest_gone(struct core_shard *cs, struct vshard *vs, struct ventry *e, int err)
{
    if (cs->closing)
        return;
    unsigned dir = dir_shard(e->hash, pith_shard_count());
    struct vctl *c = ctl_make(cs, C_GONE, e->tid, e->hash, entry_key(e), e->klen);
    if (c == NULL) {
        fprintf(stderr, "pith: shard %u: out of memory, a virtual actor's word to shard %u lost\n",
                cs->id, dir);
        return;
    }
    uint64_t x = ext_of(vs, e);
    c->err = err;
    c->ref = e->act;
    c->moves = (uint16_t)EXT_MOVES(x);
    if (e->why == PITH_VDEACT_MIGRATED && vs->mig_blob != NULL) {
        c->blob = vs->mig_blob;
        vs->mig_blob = NULL;
        c->target = (uint16_t)EXT_TARGET(x);
        c->rebal = (e->xf & X_REBAL) != 0;
    }
    ctl_send(cs, dir, c);
}

/* ACT on the host. */
static void ctl_act(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                    struct vctl *c)
{
    unsigned dir = c->from;
    int err = -EEXIST;
    struct how how = {.reason = c->reason,
                      .guest = true,
                      .blob = c->blob,
                      .placed = c->placed,
                      .moves = c->moves,
                      .t0 = c->t0};
    /* None is expected: the directory asks for one activation at a time. */
    struct ventry *e = dir_find(vs, ts, c->tid, c->hash, c->key, c->klen);
    vs->blob_taken = false;
    e = e == NULL ? activate(cs, vs, ts, c->tid, c->hash, c->key, c->klen, &how, &err) : NULL;
    if (c->blob != NULL && e != NULL && !vs->blob_taken) {
        /* A fresh activation took its place meanwhile (see land): the state's end, and the
         * activation stands. */
        core_bump(&ts->migrate_failed, 1);
        orphan_end(c->tid, c->blob, -EEXIST);
        c->blob = NULL;
    } else if (e == NULL && c->blob != NULL) {
        core_bump(&ts->migrate_failed, 1);
        blob_done(vs, c->tid, c->blob, err);
        /* A move that could not land ends the activation: what waited for it goes on to a
         * fresh one, as after any end, not failed. */
        err = 0;
    } else {
        pith_free(c->blob); /* copied into the state by vinit */
    }
    c->blob = NULL;
    c->from = (uint16_t)cs->id;
    if (e != NULL) {
        e->xf |= X_ANNOUNCED;
        c->kind = C_GMARK;
        c->ref = e->act;
        ctl_send(cs, dir, c);
    } else {
        c->kind = C_GONE;
        c->err = err;
        c->ref = PITH_REF_NONE;
        ctl_send(cs, dir, c);
    }
}

/* The directory begins to drain r: MARK to its host (reusing c, or a new word). */
static void drain(struct core_shard *cs, struct rentry *r, struct vctl *c)
{
    r->state = R_DRAIN;
    if (c == NULL)
        c = ctl_make(cs, C_MARK, r->e.tid, r->e.hash, entry_key(&r->e), r->e.klen);
    if (c == NULL) {
        fprintf(stderr, "pith: shard %u: out of memory, a virtual actor's word to shard %u lost\n",
                cs->id, r->host);
        return;
    }
    c->kind = C_MARK;
    c->from = (uint16_t)cs->id;
    ctl_send(cs, r->host, c);
}

static struct rentry *rentry_of(struct vshard *vs, struct vtype_shard *ts, struct vctl *c)
{
    struct ventry *e = dir_find(vs, ts, c->tid, c->hash, c->key, c->klen);
    return e != NULL && (e->xf & X_REMOTE) && ((struct rentry *)e)->host == c->from
               ? (struct rentry *)e
               : NULL;
}

/* ECHO on the directory: all that the ended activation gives back is here. The next one (a
 * moved state's, or the next message's) gets it first, then what waited meanwhile. */
static void ctl_echo(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                     struct vctl *c)
{
    struct rentry *r = rentry_of(vs, ts, c);
    if (r == NULL || r->state != R_DRAIN)
        return;
    struct amsg *ret = r->ret, *held = r->held;
    void *blob = r->blob;
    unsigned target = r->target;
    int err = r->err;
    uint16_t moves = r->moves;
    bool rebal = r->rebal;
    dir_unlink(vs, &r->e);
    pith_free(r);
    if (blob != NULL)
        land(cs, vs, ts, c->tid, c->hash, c->key, c->klen, target, blob, (uint16_t)(moves + 1),
             rebal);
    for (struct amsg *m = ret, *next; m != NULL; m = next) {
        next = m->next;
        m->next = NULL;
        struct vtrail *t = trail_of(m);
        if (err != 0) {
            /* It failed to begin: what waited for it fails as a local first message would. */
            core_undelivered(cs, m, err);
            core_msg_free(m);
        } else {
            (void)vdeliver(cs, vs, t->tid, t->hash, t->key, t->klen, m, NULL, true);
        }
    }
    for (struct amsg *m = held, *next; m != NULL; m = next) {
        next = m->next;
        m->next = NULL;
        struct vtrail *t = trail_of(m);
        (void)vdeliver(cs, vs, t->tid, t->hash, t->key, t->klen, m, NULL, (t->vf & V_MOVED) != 0);
    }
}

static void cache_word(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                       struct vctl *c);

static void ctl_task(void *arg)
{
    struct vctl *c = arg;
    struct core_shard *cs = core_shard_get();
    struct vshard *vs = cs != NULL && !cs->closing ? vshard_get(cs) : NULL;
    struct vtype_shard *ts = vs != NULL ? vts_get(vs, c->tid) : NULL;
    if (ts == NULL) {
        ctl_free(c);
        return;
    }
    unsigned back = c->from;
    switch (c->kind) {
    case C_ACT:
        ctl_act(cs, vs, ts, c);
        return;
    case C_GMARK: {
        /* The directory learns the guest's ref. */
        struct rentry *r = rentry_of(vs, ts, c);
        if (r != NULL && r->state == R_ACTIVE)
            r->e.act = c->ref;
        break;
    }
    case C_GONE: {
        struct rentry *r = rentry_of(vs, ts, c);
        if (r == NULL)
            break;
        if (c->err != 0)
            r->err = c->err;
        if (c->blob != NULL) {
            r->blob = c->blob;
            c->blob = NULL;
            r->target = c->target;
            r->rebal = c->rebal;
            r->moves = c->moves;
        }
        if (r->state == R_ACTIVE) {
            drain(cs, r, c);
            return;
        }
        break; /* a message given back began the drain already (this GONE was late) */
    }
    case C_MARK:
        c->kind = C_ECHO;
        c->from = (uint16_t)cs->id;
        ctl_send(cs, back, c);
        return;
    case C_ECHO:
        ctl_echo(cs, vs, ts, c);
        break;
    case C_CMARK:
    case C_CECHO:
    case C_PROBE:
    case C_PECHO:
        cache_word(cs, vs, ts, c);
        return;
    default:
        break;
    }
    ctl_free(c);
}

/* A message task's arrival: this shard's parts for m's type, or NULL when there are none (the
 * engine stops; or no memory, and m's sender is told): m is freed then. */
static struct vtype_shard *arrived(struct amsg *m, struct core_shard **cs, struct vshard **vs)
{
    *cs = core_shard_get();
    *vs = *cs != NULL && !(*cs)->closing ? vshard_get(*cs) : NULL;
    struct vtype_shard *ts = *vs != NULL ? vts_get(*vs, trail_of(m)->tid) : NULL;
    if (ts == NULL) {
        if (*cs != NULL && !(*cs)->closing)
            core_undelivered(*cs, m, -ENOMEM);
        core_msg_free(m);
    }
    return ts;
}

/* A message the directory forwarded, on the host. */
static void fwd_task(void *arg)
{
    struct amsg *m = arg;
    struct core_shard *cs;
    struct vshard *vs;
    struct vtype_shard *ts = arrived(m, &cs, &vs);
    if (ts == NULL)
        return;
    struct vtrail *t = trail_of(m);
    struct ventry *e = dir_find(vs, ts, t->tid, t->hash, t->key, t->klen);
    struct actor *a =
        e != NULL && (e->xf & X_GUEST) && !(e->flags & E_ENDING) ? core_find(cs, e->act) : NULL;
    if (a == NULL) {
        give_back(cs, m); /* it ended or moved: the directory hands it on */
        return;
    }
    touch(ts, e);
    vote(cs, e, m->from);
    m->to = e->act;
    bool admit = (t->vf & V_MOVED) && !(m->len & AMSG_ADMIT);
    if (admit)
        m->len |= AMSG_ADMIT;
    int err = core_enqueue(cs, a, m);
    if (admit)
        m->len &= ~AMSG_ADMIT;
    if (err != 0) {
        core_undelivered(cs, m, err);
        core_msg_free(m);
    }
}

/* A message given back by a guest, on the directory: kept for the next activation. */
static void ret_task(void *arg)
{
    struct amsg *m = arg;
    struct core_shard *cs;
    struct vshard *vs;
    struct vtype_shard *ts = arrived(m, &cs, &vs);
    if (ts == NULL)
        return;
    struct vtrail *t = trail_of(m);
    struct ventry *e = dir_find(vs, ts, t->tid, t->hash, t->key, t->klen);
    if (e == NULL || !(e->xf & X_REMOTE)) {
        (void)vdeliver(cs, vs, t->tid, t->hash, t->key, t->klen, m, NULL, true); /* unexpected */
        return;
    }
    struct rentry *r = (struct rentry *)e;
    if (r->state == R_ACTIVE && t->via != r->host) {
        /* Not from the activation this entry names (not expected): a message like any. */
        (void)vdeliver(cs, vs, t->tid, t->hash, t->key, t->klen, m, NULL, true);
        return;
    }
    /* Not bounded here: each came out of the ended activation's mailbox, or was on its way to
     * it past that mailbox's bound already counted. */
    chain_push(&r->ret, &r->ret_tail, m);
    if (r->state == R_ACTIVE)
        drain(cs, r, NULL); /* its GONE was lost: this says as much */
}

/* ---- the location cache ---- */

static void dfwd_task(void *arg);
static void bounce_task(void *arg);

static bool slot_is(const struct lslot *k, uint32_t tid, uint64_t hash, const unsigned char *key,
                    uint32_t klen)
{
    return k->state != K_FREE && k->hash == hash && k->tid == tid && k->klen == klen &&
           memcmp(k->key, key, klen) == 0;
}

static void slot_release(struct core_shard *cs, struct vshard *vs, struct lslot *k);

/* The word a K_MARK or K_PROBE slot waits on: CMARK through the directory, or PROBE to the
 * host. Out of memory, a mark is given up (nothing was sent straight: what waits goes through
 * the directory, in order); a probe is not sent (k->unsent) and tried again at the slot's next
 * send or bounce, since direct messages may still be on their way. */
static void slot_word(struct core_shard *cs, struct vshard *vs, struct lslot *k)
{
    bool mark = k->state == K_MARK;
    unsigned dst = mark ? dir_shard(k->hash, pith_shard_count()) : k->host;
    struct vctl *c = ctl_make(cs, mark ? C_CMARK : C_PROBE, k->tid, k->hash, k->key, k->klen);
    if (c != NULL)
        c->asker = (uint16_t)cs->id;
    k->unsent = c == NULL || !ctl_send(cs, dst, c);
    if (k->unsent && mark) {
        k->unsent = false;
        k->state = K_COUNT;
        k->count = 0;
        slot_release(cs, vs, k);
    }
}

/* A direct message: straight to the cached host, for the cached activation. */
static void slot_direct(struct core_shard *cs, struct lslot *k, struct amsg *m)
{
    m->to = k->act;
    trail_of(m)->vf = 0;
    struct vshard *vs = atomic_load_explicit(&cs->vs, memory_order_relaxed);
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[k->tid], memory_order_relaxed);
    if (ts != NULL)
        core_bump(&ts->cached, 1);
    if (k->host == cs->id)
        dfwd_task(m); /* now: the next send goes straight into the mailbox (local_send) */
    else
        send_msg(cs, k->host, dfwd_task, m);
}

/* Ends a probe (or a mark answered "not cached"): what came back, then what waited, through
 * the directory, in order. */
static void slot_release(struct core_shard *cs, struct vshard *vs, struct lslot *k)
{
    unsigned dir = dir_shard(k->hash, pith_shard_count());
    struct amsg *lists[2] = {k->back, k->held};
    k->back = k->back_tail = k->held = k->held_tail = NULL;
    for (int i = 0; i < 2; i++) {
        for (struct amsg *m = lists[i], *next; m != NULL; m = next) {
            next = m->next;
            m->next = NULL;
            if (i == 1)
                vs->nchold--;
            trail_of(m)->vf = 0;
            send_msg(cs, dir, vdeliver_task, m);
        }
    }
}

/* The probe of a K_DIRECT slot: its host is asked to echo, and meanwhile new messages wait. */
static void slot_probe(struct core_shard *cs, struct vshard *vs, struct lslot *k, bool evict)
{
    k->state = K_PROBE;
    k->evict = evict;
    slot_word(cs, vs, k);
}

/* K_DIRECT to this shard itself: into the activation's mailbox now, as a send to an actor of
 * one's own shard. Its end ended the slot's use (what was in its mailbox went back to the
 * directory then): 1, through the directory now. */
static int local_send(struct core_shard *cs, struct vshard *vs, struct lslot *k,
                      const pith_vref_t *to, pith_ref_t from, uint32_t type, const void *data,
                      uint32_t len, uint32_t flag, uint64_t req, bool *made)
{
    uint32_t tid = to->tid - 1;
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[tid], memory_order_relaxed);
    struct ventry *e = ts != NULL ? dir_find(vs, ts, tid, to->hash, to->key, to->len) : NULL;
    struct actor *a = e != NULL && (e->xf & X_GUEST) && e->act == k->act && !(e->flags & E_ENDING)
                          ? core_find(cs, e->act)
                          : NULL;
    if (a == NULL) {
        k->state = K_NONE;
        k->count = 0;
        return 1;
    }
    if (a->depth >= a->rec->mailbox_max && a->rec->type->overflow == PITH_OVERFLOW_REJECT) {
        core_bump(&core_counters(cs, a->rec)->rejected, 1);
        return -EAGAIN;
    }
    struct amsg *m = core_msg_make_for(-1, e->act, from, type, data, len);
    if (m == NULL)
        return -ENOMEM;
    *made = true;
    m->len |= flag;
    m->req = req;
    touch(ts, e);
    vote(cs, e, from);
    core_bump(&ts->direct, 1);
    int err = core_enqueue(cs, a, m);
    if (err)
        core_msg_free(m);
    return err;
}

/* A send from this shard to (tid, key), whose directory is dir, another shard: 1 to route it
 * through the directory (the slot may note it), else the send's result (it was sent straight
 * to the host, or waits in the slot). */
static int cache_send(struct core_shard *cs, struct vshard *vs, const pith_vref_t *to,
                      pith_ref_t from, uint32_t type, const void *data, uint32_t len, uint32_t flag,
                      uint64_t req, bool *made, unsigned dir)
{
    if (vs->cache == NULL) {
        vs->cache = calloc(CACHE_SLOTS, sizeof(*vs->cache));
        if (vs->cache == NULL)
            return 1;
    }
    uint32_t tid = to->tid - 1;
    struct lslot *k = &vs->cache[(to->hash >> 32) & (CACHE_SLOTS - 1)];
    if (!slot_is(k, tid, to->hash, to->key, to->len)) {
        if (k->state == K_DIRECT && ++k->count >= CACHE_IDLE)
            slot_probe(cs, vs, k, true); /* unused while others want the slot: it gives way */
        if (k->state != K_FREE && k->state != K_COUNT && k->state != K_NONE)
            return 1;
        k->state = K_COUNT;
        k->hash = to->hash;
        k->tid = (uint8_t)tid;
        k->klen = (uint8_t)to->len;
        memcpy(k->key, to->key, to->len);
        k->count = 0;
    }
    switch (k->state) {
    case K_COUNT:
    case K_NONE:
        if (++k->count < (k->state == K_COUNT ? CACHE_AFTER : CACHE_RECHECK))
            return 1;
        if (k->state == K_NONE) {
            k->state = K_COUNT;
            k->count = 0;
            return 1;
        }
        /* Hot: this message goes through the directory, then the word that asks. */
        k->state = K_MARK;
        k->count = 0;
        {
            struct amsg *m = core_vmsg_make((int)dir, to, from, type, data, len, flag);
            if (m == NULL) {
                k->state = K_COUNT;
                return -ENOMEM;
            }
            *made = true;
            m->req = req;
            int err = pith_submit(dir, vdeliver_task, m);
            if (err) {
                core_msg_free(m);
                k->state = K_COUNT;
                return err;
            }
        }
        slot_word(cs, vs, k);
        return 0;
    case K_DIRECT: {
        k->count = 0;
        if (k->host == cs->id)
            return local_send(cs, vs, k, to, from, type, data, len, flag, req, made);
        struct amsg *m = core_vmsg_make((int)k->host, to, from, type, data, len, flag);
        if (m == NULL)
            return -ENOMEM;
        *made = true;
        m->req = req;
        m->to = k->act;
        struct vtype_shard *ts = atomic_load_explicit(&vs->types[tid], memory_order_relaxed);
        int err = pith_submit(k->host, dfwd_task, m);
        if (err)
            core_msg_free(m);
        else if (ts != NULL)
            core_bump(&ts->cached, 1);
        return err;
    }
    default: { /* K_MARK, K_PROBE: after what went before */
        if (k->unsent)
            slot_word(cs, vs, k); /* a probe that found no memory before */
        if (vs->nchold >= HELD_MAX)
            return -EAGAIN;
        struct amsg *m = core_vmsg_make(-1, to, from, type, data, len, flag);
        if (m == NULL)
            return -ENOMEM;
        *made = true;
        m->req = req;
        chain_push(&k->held, &k->held_tail, m);
        vs->nchold++;
        return 0;
    }
    }
}

/* The cache's words, on whichever shard they reach. */
static void cache_word(struct core_shard *cs, struct vshard *vs, struct vtype_shard *ts,
                       struct vctl *c)
{
    unsigned asker = c->asker;
    switch (c->kind) {
    case C_CMARK: {
        struct ventry *e = dir_find(vs, ts, c->tid, c->hash, c->key, c->klen);
        if (e != NULL && (e->xf & X_REMOTE)) {
            /* The directory: on to the host, behind what it forwarded before. */
            struct rentry *r = (struct rentry *)e;
            if (r->state == R_ACTIVE) {
                c->from = (uint16_t)cs->id;
                ctl_send(cs, r->host, c);
                return;
            }
            e = NULL;
        }
        /* The host (a guest here), or a directory without a remote activation: the answer. */
        c->ref = e != NULL && (e->xf & X_GUEST) && !(e->flags & E_ENDING) ? e->act : PITH_REF_NONE;
        c->kind = C_CECHO;
        c->from = (uint16_t)cs->id;
        ctl_send(cs, asker, c);
        return;
    }
    case C_CECHO: {
        struct lslot *k =
            vs->cache != NULL ? &vs->cache[(c->hash >> 32) & (CACHE_SLOTS - 1)] : NULL;
        if (k == NULL || !slot_is(k, c->tid, c->hash, c->key, c->klen) || k->state != K_MARK)
            break;
        if (c->ref != PITH_REF_NONE && c->from == cs->id) {
            /* This shard answered itself through its queue: the activation may have ended
             * since. Then, as for no answer. */
            struct ventry *e = dir_find(vs, ts, c->tid, c->hash, c->key, c->klen);
            if (e == NULL || e->act != c->ref || (e->flags & E_ENDING))
                c->ref = PITH_REF_NONE;
        }
        if (c->ref == PITH_REF_NONE) {
            k->state = K_NONE; /* it lives on its directory shard, or nowhere now */
            k->count = 0;
            slot_release(cs, vs, k);
            break;
        }
        k->state = K_DIRECT;
        k->host = c->from;
        k->act = c->ref;
        k->count = 0;
        for (struct amsg *m = k->held, *next; m != NULL; m = next) {
            next = m->next;
            m->next = NULL;
            vs->nchold--;
            slot_direct(cs, k, m);
        }
        k->held = k->held_tail = NULL;
        break;
    }
    case C_PROBE:
        c->kind = C_PECHO;
        c->from = (uint16_t)cs->id;
        ctl_send(cs, asker, c);
        return;
    case C_PECHO: {
        struct lslot *k =
            vs->cache != NULL ? &vs->cache[(c->hash >> 32) & (CACHE_SLOTS - 1)] : NULL;
        if (k == NULL || !slot_is(k, c->tid, c->hash, c->key, c->klen) || k->state != K_PROBE)
            break;
        slot_release(cs, vs, k);
        k->state = k->evict ? K_FREE : K_NONE;
        k->count = 0;
        break;
    }
    default:
        break;
    }
    ctl_free(c);
}

/* A direct message, on the host: for the activation the sender's cache named, else back. */
static void dfwd_task(void *arg)
{
    struct amsg *m = arg;
    struct core_shard *cs;
    struct vshard *vs;
    struct vtype_shard *ts = arrived(m, &cs, &vs);
    if (ts == NULL)
        return;
    struct vtrail *t = trail_of(m);
    struct ventry *e = dir_find(vs, ts, t->tid, t->hash, t->key, t->klen);
    struct actor *a = e != NULL && (e->xf & X_GUEST) && e->act == m->to && !(e->flags & E_ENDING)
                          ? core_find(cs, e->act)
                          : NULL;
    unsigned back = sender_shard(m->from);
    if (a == NULL) {
        core_bump(&ts->stale, 1);
        if (back != UINT_MAX && back != cs->id) {
            send_msg(cs, back, bounce_task, m); /* the sender's cache sorts it out */
        } else {
            /* This shard's own: everything it sent earlier is on the ring to the directory
             * already (given back at the activation's end, or routed), so this goes there as a
             * message, behind them. */
            t->vf = 0;
            send_msg(cs, dir_shard(t->hash, pith_shard_count()), vdeliver_task, m);
        }
        return;
    }
    touch(ts, e);
    vote(cs, e, m->from);
    int err = core_enqueue(cs, a, m);
    if (err != 0) {
        core_undelivered(cs, m, err);
        core_msg_free(m);
    }
}

/* A direct message back from a host without its activation, on the sender's shard. */
static void bounce_task(void *arg)
{
    struct amsg *m = arg;
    struct core_shard *cs;
    struct vshard *vs;
    if (arrived(m, &cs, &vs) == NULL)
        return;
    struct vtrail *t = trail_of(m);
    struct lslot *k = vs->cache != NULL ? &vs->cache[(t->hash >> 32) & (CACHE_SLOTS - 1)] : NULL;
    if (k == NULL || !slot_is(k, t->tid, t->hash, t->key, t->klen) ||
        (k->state != K_DIRECT && k->state != K_PROBE)) {
        /* Not expected (a slot stays K_PROBE until its echo): through the directory. */
        t->vf = 0;
        send_msg(cs, dir_shard(t->hash, pith_shard_count()), vdeliver_task, m);
        return;
    }
    if (k->state == K_DIRECT)
        slot_probe(cs, vs, k, false);
    else if (k->unsent)
        slot_word(cs, vs, k);
    chain_push(&k->back, &k->back_tail, m);
}

/* ---- moves ---- */

#define REBAL_VOTES 64u

static void migrate_task(void *arg);

static int migrate_ask(struct core_shard *cs, struct ventry *e, unsigned to, bool rebal)
{
    struct vshard *vs = atomic_load_explicit(&cs->vs, memory_order_relaxed);
    uint64_t x = ext_of(vs, e);
    if (!ext_set(vs, e, ext_pack(EXT_CAND(x), EXT_VOTES(x), to, EXT_MOVES(x), EXT_PLACED(x))))
        return -ENOMEM;
    if (!(e->xf & X_MIGRATE)) {
        int err = shard_submit_force(cs->id, migrate_task, (void *)(uintptr_t)e->act);
        if (err)
            return err;
        /* Asked from its own turn: the turn ends with this message (a muted actor's does), and
         * no other begins before the move, so the next message is handled where it goes. */
        if (core_current == e->act && (e->flags & E_ACTIVE) &&
            core_mute_hold(cs, e->act, true) == 0)
            e->xf |= X_HELD;
    }
    e->xf = (uint8_t)((e->xf & ~X_REBAL) | X_MIGRATE | (rebal ? X_REBAL : 0));
    return 0;
}

/* Rebalancing's vote: a message for e from `from` (see PITH_VTYPE_REBALANCE). */
static void vote(struct core_shard *cs, struct ventry *e, pith_ref_t from)
{
    if (LIKELY(!vtypes[e->tid].rebalance))
        return;
    unsigned o = sender_shard(from);
    if (o == UINT_MAX)
        return;
    struct vshard *vs = atomic_load_explicit(&cs->vs, memory_order_relaxed);
    uint64_t x = ext_of(vs, e);
    unsigned cand = EXT_CAND(x), votes = EXT_VOTES(x);
    bool move = false;
    if (o == cs->id) {
        if (votes > 0)
            votes--;
    } else if (votes == 0 || cand == o) {
        cand = o;
        if (votes < REBAL_VOTES)
            votes++;
        /* Of a pair, the one on the higher shard moves: never both. */
        move = votes >= REBAL_VOTES && o < cs->id && !(e->xf & X_MIGRATE) && (e->flags & E_ACTIVE);
    } else {
        votes--;
    }
    if (move) {
        votes = 0;
        uint64_t there = live_on(o, e->tid), here = live_on(cs->id, e->tid);
        move = there <= here + here / 4 + 16; /* else it would unbalance the shards: vote again */
    }
    /* Out of memory for the extras, this vote is not counted. */
    (void)ext_set(vs, e, ext_pack(cand, votes, EXT_TARGET(x), EXT_MOVES(x), EXT_PLACED(x)));
    if (move)
        (void)migrate_ask(cs, e, o, true);
}

static void migrate_task(void *arg)
{
    pith_ref_t ref = (pith_ref_t)(uintptr_t)arg;
    struct core_shard *cs = core_self;
    struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_relaxed) : NULL;
    struct actor *a = vs != NULL && !cs->closing ? core_find(cs, ref) : NULL;
    if (a == NULL || rec_of_actor_type(a->rec->type) == NULL)
        return; /* it ended meanwhile */
    if (a->gen & A_RUNNING) {
        /* Asked from a turn still on the stack (a task run inside it): after it. */
        (void)shard_submit_force(cs->id, migrate_task, arg);
        return;
    }
    struct ventry *e = entry_of_state(a->state);
    if (e->xf & X_HELD) {
        e->xf &= (uint8_t)~X_HELD;
        core_mute_hold(cs, ref, false); /* it turns again, unless it ends below first */
    }
    if (!(e->xf & X_MIGRATE) || !(e->flags & E_DIR))
        return;
    bool rebal = (e->xf & X_REBAL) != 0, guest = (e->xf & X_GUEST) != 0;
    uint64_t x = ext_of(vs, e);
    unsigned to = EXT_TARGET(x);
    e->xf &= (uint8_t) ~(X_MIGRATE | X_REBAL);
    if (to == cs->id || to >= pith_shard_count() || !(e->flags & E_ACTIVE) ||
        (e->flags & (E_LATER | E_OFF)))
        return;
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[e->tid], memory_order_relaxed);
    size_t size = vtypes[e->tid].vt->actor->state_size;
    void *blob = pith_malloc(size > 0 ? size : 1);
    if (blob == NULL) {
        core_bump(&ts->migrate_failed, 1);
        return;
    }
    core_bump(&ts->migrations, 1);
    if (rebal)
        core_bump(&ts->rebalances, 1);
    struct amsg *kept = take_mail(cs, a);
    unsigned char key[PITH_VKEY_MAX];
    uint32_t tid = e->tid, klen = e->klen;
    uint64_t hash = e->hash;
    uint16_t moves = (uint16_t)EXT_MOVES(x);
    memcpy(key, entry_key(e), klen);
    e->why = PITH_VDEACT_MIGRATED;
    /* vterminate copies the state into it once on_deactivate has run; for a guest,
     * guest_gone then sends it with the GONE (and reads the target from the extras). */
    vs->mig_blob = blob;
    if (guest && rebal)
        e->xf |= X_REBAL;
    (void)core_end_now(cs, ref, PITH_EXIT_NORMAL);
    blob = vs->mig_blob; /* a guest's went with its GONE, unless no memory was found for it */
    vs->mig_blob = NULL;
    if (guest) {
        if (blob != NULL)
            orphan_end(tid, blob, -ENOMEM);
        give_on(cs, vs, true, tid, hash, key, klen, kept);
        return;
    }
    /* On its directory shard: the entry of its new place first, then what waited, to it. */
    struct how how = {.reason = PITH_VACT_MIGRATED,
                      .blob = blob,
                      .placed = rebal ? PITH_PLACE_REBALANCED : PITH_PLACE_MIGRATED,
                      .moves = (uint16_t)(moves + 1)};
    if (remote_new(cs, vs, ts, tid, hash, key, klen, to, &how) == NULL) {
        orphan_end(tid, blob, -ENOMEM);
        core_bump(&ts->migrate_failed, 1);
    }
    give_on(cs, vs, false, tid, hash, key, klen, kept);
}

/* A virtual message from another shard. */
static void vdeliver_task(void *arg)
{
    struct amsg *m = arg;
    struct core_shard *cs;
    struct vshard *vs;
    if (arrived(m, &cs, &vs) == NULL)
        return;
    struct vtrail *t = trail_of(m);
    (void)vdeliver(cs, vs, t->tid, t->hash, t->key, t->klen, m, NULL, false);
}

int core_lane_vmsg(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len)
{
    (void)arg;
    (void)aux;
    (void)len;
    struct amsg *m;
    memcpy(&m, data, sizeof(m));
    if (l == NULL) {
        core_msg_free(m);
        return 0;
    }
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return LANE_RETRY;
    if (cs->closing) {
        core_msg_free(m);
        return 0;
    }
    struct vshard *vs = vshard_get(cs);
    if (vs == NULL)
        return LANE_RETRY;
    struct vtrail *t = trail_of(m);
    int r = vdeliver(cs, vs, t->tid, t->hash, t->key, t->klen, m, l, false);
    return r == LANE_PARK || r == LANE_RETRY ? r : 0;
}

int core_lane_vmsg_inline(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len)
{
    if (l == NULL)
        return 0; /* the record holds nothing beyond its bytes */
    struct core_shard *cs = core_self;
    if (UNLIKELY(cs == NULL) && (cs = core_shard_get()) == NULL)
        return LANE_RETRY;
    if (cs->closing)
        return 0;
    struct vshard *vs = vshard_get(cs);
    if (vs == NULL)
        return LANE_RETRY;
    struct {
        uint64_t hash;
        uint32_t tid, klen;
    } h = {(uint64_t)(uintptr_t)arg, (uint32_t)(aux >> VLREC_TID_SHIFT) & 0xff,
           (uint32_t)(aux >> VLREC_KLEN_SHIFT) & 0xff};
    const void *payload = data;
    uint32_t plen = len - h.klen;
    const unsigned char *key = (const unsigned char *)data + plen;
    pith_ref_t from = atomic_load_explicit(&l->owner, memory_order_relaxed);
    uint32_t type = (uint32_t)aux;
    /* The common case, where it lies: the key's activation lives here, idle (no mail, no turn
     * queued or running, not muted: so not activating later, not held for a move), not ending,
     * its type not shedding. Running it now is what enqueueing it into the empty mailbox and
     * running the turn would do, in the same order, without the message's copy, the turn's
     * task or their memory. Anything else takes the general path below. */
    struct vtype_shard *ts = vts_get(vs, h.tid);
    if (ts != NULL && vtypes[h.tid].keyed) {
        struct ventry *e = dir_lookup(vs, ts, h.tid, h.hash, key, h.klen);
        if (e != NULL && !(e->xf & X_REMOTE) && !(e->flags & (E_ENDING | E_WARM))) {
            struct actor *a = core_find(cs, e->act);
            struct type_counters *c = a != NULL ? core_counters(cs, a->rec) : NULL;
            if (a != NULL && idle(a) && !c->shedding) {
                core_bump(&ts->messages, 1);
                touch(ts, e);
                vote(cs, e, from);
                /* Field by field: an initializer's zeroing came out as a rep stos, whose
                 * start-up alone is tens of cycles here. */
                pith_msg_t msg;
                msg.type = type;
                msg.len = plen;
                msg.from = from;
                msg.req = 0;
                msg.data = payload;
                msg.buf = NULL;
                /* The application's behaviour straight, unless vbehaviour has a first call
                 * to time. */
                pith_behaviour_t b = LIKELY(!(e->xf & X_TIMED)) ? vtypes[h.tid].behaviour : NULL;
                if (core_run_now(cs, a, c, e->act, &msg, b))
                    return 0;
                core_bump(&ts->messages, (uint64_t)0 - 1); /* counted again below */
            }
        }
    }
    struct amsg *m = core_msg_make_ext(-1, PITH_REF_NONE, from, type, payload, plen,
                                       sizeof(struct vtrail) + h.klen);
    if (m == NULL)
        return LANE_RETRY;
    struct vtrail *t = trail_of(m);
    *t = (struct vtrail){.hash = h.hash, .tid = (uint16_t)h.tid, .klen = (uint16_t)h.klen};
    memcpy(t->key, key, h.klen);
    int r = vdeliver(cs, vs, h.tid, h.hash, t->key, h.klen, m, l, false);
    if (r == LANE_PARK || r == LANE_RETRY) {
        core_msg_free(m); /* the record stays in its lane, and is made again when it runs */
        return r;
    }
    return 0;
}

/* ---- sends ---- */

/* A virtual message for shard dst (or, dst -1, made here), with its trailer. */
struct amsg *core_vmsg_make(int dst, const pith_vref_t *to, pith_ref_t from, uint32_t type,
                            const void *data, uint32_t len, uint32_t flag)
{
    struct amsg *m = core_msg_make_ext(dst, PITH_REF_NONE, from, type, data, len,
                                       sizeof(struct vtrail) + to->len);
    if (m == NULL)
        return NULL;
    m->len |= flag;
    struct vtrail *t = trail_of(m);
    t->hash = to->hash;
    t->tid = to->tid - 1;
    t->klen = (uint16_t)to->len;
    t->vf = 0;
    memcpy(t->key, to->key, to->len);
    return m;
}

unsigned pith_vref_shard(const pith_vref_t *v)
{
    unsigned n = pith_shard_count();
    return n == 0 || rec_of_ref(v) == NULL ? UINT_MAX : dir_shard(v->hash, n);
}

unsigned core_vref_shard(const pith_vref_t *to, unsigned n)
{
    return dir_shard(to->hash, n);
}

bool core_vref_ok(const pith_vref_t *to)
{
    return rec_of_ref(to) != NULL;
}

/* pith_vsend, pith_vsend_buf and pith_vask on a shard. flag: AMSG_BUF (data is &buf, and the
 * message owns that reference once made: *made). ask: the request id, 0 for a send. */
static int vsend_shard(struct core_shard *cs, const pith_vref_t *to, pith_ref_t from, uint32_t type,
                       const void *data, uint32_t len, uint32_t flag, uint64_t req, bool *made)
{
    unsigned n = pith_shard_count();
    /* A stateless worker takes the message on the sender's shard. */
    unsigned dst = to->type->workers != 0 ? cs->id : dir_shard(to->hash, n);
    if (dst != cs->id) {
        /* Where it lives, as this shard's cache knows (1: it does not): straight there, this
         * shard included, instead of through the directory. */
        struct vshard *vs = vshard_get(cs);
        if (vs != NULL && type != MSG_VPREWARM) {
            int r = cache_send(cs, vs, to, from, type, data, len, flag, req, made, dst);
            if (r <= 0)
                return r;
        }
        struct amsg *m = core_vmsg_make((int)dst, to, from, type, data, len, flag);
        if (m == NULL)
            return -ENOMEM;
        *made = true;
        m->req = req;
        int err = pith_submit(dst, vdeliver_task, m);
        if (err)
            core_msg_free(m);
        return err;
    }
    /* Here: the directory is ours, and a refused message is the caller's error at once. */
    struct vshard *vs = vshard_get(cs);
    struct vtype_shard *ts = vs != NULL ? vts_get(vs, to->tid - 1) : NULL;
    if (ts == NULL)
        return -ENOMEM;
    int err = 0;
    if (type == MSG_VPREWARM) {
        struct ventry *w = resolve(cs, vs, ts, to->tid - 1, to->hash, to->key, to->len,
                                   PITH_VACT_PREWARM, cs->id, &err);
        return w != NULL ? 0 : err;
    }
    core_bump(&ts->messages, 1);
    struct ventry *e = resolve(cs, vs, ts, to->tid - 1, to->hash, to->key, to->len,
                               PITH_VACT_MESSAGE, cs->id, &err);
    if (e == NULL)
        return err;
    if (e->xf & X_REMOTE) {
        struct rentry *r = (struct rentry *)e;
        bool fwd = r->state == R_ACTIVE;
        if (!fwd && r->nheld >= held_cap(to->tid - 1))
            return -EAGAIN;
        struct amsg *m = core_vmsg_make(fwd ? (int)r->host : -1, to, from, type, data, len, flag);
        if (m == NULL)
            return -ENOMEM;
        *made = true;
        m->req = req;
        if (!fwd) {
            /* Held behind what the ended activation gives back. */
            chain_push(&r->held, &r->held_tail, m);
            r->nheld++;
            return 0;
        }
        core_bump(&ts->forwards, 1);
        err = pith_submit(r->host, fwd_task, m);
        if (err)
            core_msg_free(m);
        return err;
    }
    if (e->flags & E_ENDING) {
        /* Sent from its own end (on_deactivate, terminate): for the next activation. */
        if (vs->nheld >= HELD_MAX)
            return -EAGAIN;
        struct amsg *m = core_vmsg_make(-1, to, from, type, data, len, flag);
        if (m == NULL)
            return -ENOMEM;
        *made = true;
        m->req = req;
        hold(cs, vs, m);
        return 0;
    }
    touch(ts, e);
    vote(cs, e, from);
    struct actor *a = core_find(cs, e->act);
    if (a == NULL)
        return -ESRCH;
    if (a->depth >= a->rec->mailbox_max && a->rec->type->overflow == PITH_OVERFLOW_REJECT) {
        core_bump(&core_counters(cs, a->rec)->rejected, 1);
        return -EAGAIN;
    }
    struct amsg *m = core_msg_make_for(-1, e->act, from, type, data, len);
    if (m == NULL)
        return -ENOMEM;
    *made = true;
    m->len |= flag;
    m->req = req;
    err = core_enqueue(cs, a, m);
    if (err)
        core_msg_free(m);
    return err;
}

static int vsend_impl(const pith_vref_t *to, uint32_t type, const void *data, uint32_t len,
                      uint32_t flag, bool *made)
{
    *made = false;
    if (rec_of_ref(to) == NULL || (data == NULL && len > 0) || len >= PITH_MSG_MAX)
        return -EINVAL;
    if (pith_shard_count() == 0)
        return -ESHUTDOWN;
    if (pith_shard_id() < 0) {
        pith_client_t *c = pith_client_self();
        if (c == NULL)
            return -errno;
        int err = client_vsend(c, to, type, flag, data, len, 0);
        *made = err == 0;
        return err;
    }
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ENOMEM;
    if (cs->closing)
        return -ESHUTDOWN;
    pith_ref_t from = core_current != PITH_REF_NONE ? core_current : ref_task(cs->id);
    return vsend_shard(cs, to, from, type, data, len, flag, 0, made);
}

int pith_vsend(const pith_vref_t *to, uint32_t type, const void *data, uint32_t len)
{
    if (type >= PITH_MSG_RESERVED)
        return -EINVAL;
    bool made;
    return vsend_impl(to, type, data, len, 0, &made);
}

int pith_vsend_buf(const pith_vref_t *to, uint32_t type, pith_buf_t *buf)
{
    if (buf == NULL || type >= PITH_MSG_RESERVED)
        return -EINVAL;
    pith_buf_ref(buf); /* the message's reference */
    bool made;
    int err = vsend_impl(to, type, &buf, sizeof(buf), AMSG_BUF, &made);
    if (err && !made)
        pith_buf_release(buf);
    return err;
}

int pith_vask(const pith_vref_t *to, uint32_t type, const void *data, uint32_t len,
              uint64_t timeout_ns, pith_reply_fn_t cb, void *ctx, uint64_t *req_out)
{
    if (req_out != NULL)
        *req_out = 0;
    if (pith_shard_id() < 0)
        return -EPERM;
    if (timeout_ns == 0 || rec_of_ref(to) == NULL || (data == NULL && len > 0) ||
        len >= PITH_MSG_MAX || type >= PITH_MSG_RESERVED)
        return -EINVAL;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ENOMEM;
    if (cs->closing)
        return -ESHUTDOWN;
    pith_ref_t asker;
    uint64_t id;
    int err = core_ask_open(cs, timeout_ns, cb, ctx, &asker, &id);
    if (err)
        return err;
    bool made = false;
    pith_ref_t from = asker != PITH_REF_NONE ? asker : ref_task(cs->id);
    err = vsend_shard(cs, to, from, type, data, len, 0, id, &made);
    core_ask_close(cs, id, err == 0);
    if (err == 0 && req_out != NULL)
        *req_out = id;
    return err;
}

int pith_vactor_prewarm(const pith_vref_t *v)
{
    bool made;
    return vsend_impl(v, MSG_VPREWARM, NULL, 0, 0, &made);
}

/* ---- listing ---- */

struct list_req {
    uint32_t tid;
    uint64_t *cursor;
    pith_vref_t *out;
    uint32_t max;
    int got;
};

#define LIST_SCAN 4096u /* buckets one call looks at, at most */

/* x with its bits in reverse order. */
static inline uint64_t rev64(uint64_t x)
{
    x = (x >> 1 & 0x5555555555555555ull) | (x & 0x5555555555555555ull) << 1;
    x = (x >> 2 & 0x3333333333333333ull) | (x & 0x3333333333333333ull) << 2;
    x = (x >> 4 & 0x0f0f0f0f0f0f0f0full) | (x & 0x0f0f0f0f0f0f0f0full) << 4;
    return __builtin_bswap64(x);
}

/* Whether a listing of type tid returns e. */
static inline bool listed(const struct ventry *e, uint32_t tid)
{
    return e->tid == tid && (e->flags & E_ACTIVE);
}

/* A listing goes through the entries in the order of their hashes bit-reversed, and the cursor
 * is where in that order it goes on (0: the beginning). A bucket holds the hashes of its low
 * bits, so in that order each bucket is one stretch, the buckets follow one another in the
 * bit-reversed order of their indices, and the stretches of a table of any other size are
 * those split or merged: the cursor means the same across the directory's resizes, and an entry
 * that lives through the listing is returned once. While a table empties into another, a
 * stretch of the finer one has its entries in two chains at most: one bucket of each table.
 * Entries of one hash go in one page; when more than max share a hash, the page takes max of
 * them and the rest are not returned. */
static void *list_here(void *arg)
{
    struct list_req *q = arg;
    struct core_shard *cs = core_shard_get();
    struct vshard *vs = cs != NULL ? vshard_get(cs) : NULL;
    if (vs == NULL) {
        q->got = -ENOMEM;
        return NULL;
    }
    q->got = 0;
    if (vs->nbuckets == 0) {
        *q->cursor = 0;
        return NULL;
    }
    if (q->max == 0)
        return NULL;
    uint64_t fine = vs->old != NULL && vs->nold > vs->nbuckets ? vs->nold : vs->nbuckets;
    unsigned shift = 64u - (unsigned)__builtin_ctzll(fine); /* fine >= DIR_MIN */
    uint64_t at = *q->cursor, j = at >> shift;
    uint32_t got = 0;
    for (uint64_t scanned = 0; j < fine && scanned < LIST_SCAN; j++, scanned++) {
        /* The stretch [lo, end]: any hash in it picks the same bucket of either table. */
        uint64_t h = rev64(j << shift), end = ((j + 1) << shift) - 1;
        struct ventry *heads[2] = {dir_head(vs, vs->buckets[h & (vs->nbuckets - 1)]), NULL};
        if (vs->old != NULL && (h & (vs->nold - 1)) >= vs->moved)
            heads[1] = dir_head(vs, vs->old[h & (vs->nold - 1)]);
        for (;;) {
            /* The next hash in the order, at `at` or after, in the stretch: chains are short. */
            uint64_t next = 0;
            unsigned run = 0;
            for (int k = 0; k < 2; k++) {
                for (struct ventry *e = heads[k]; e != NULL; e = e->chain) {
                    uint64_t r = rev64(e->hash);
                    if (!listed(e, q->tid) || r < at || r > end || (run > 0 && r > next))
                        continue;
                    run = run > 0 && r == next ? run + 1 : 1;
                    next = r;
                }
            }
            if (run == 0)
                break;
            if (got > 0 && got + run > q->max) {
                *q->cursor = next; /* the whole run in the next page */
                q->got = (int)got;
                return NULL;
            }
            for (int k = 0; k < 2; k++) {
                for (struct ventry *e = heads[k]; e != NULL && got < q->max; e = e->chain) {
                    if (!listed(e, q->tid) || rev64(e->hash) != next)
                        continue;
                    pith_vref_t *v = &q->out[got++];
                    memset(v, 0, sizeof(*v));
                    v->type = vtypes[e->tid].vt;
                    v->tid = e->tid + 1u;
                    v->hash = e->hash;
                    v->len = e->klen;
                    memcpy(v->key, entry_key(e), e->klen);
                }
            }
            at = next + 1;
            if (at == 0 || got == q->max) {
                *q->cursor = at; /* 0: past the last hash there can be */
                q->got = (int)got;
                return NULL;
            }
        }
        at = end + 1; /* 0 past the last stretch */
    }
    *q->cursor = j < fine ? at : 0;
    q->got = (int)got;
    return NULL;
}

int pith_vactor_list(const pith_vtype_t *t, unsigned shard, uint64_t *cursor, pith_vref_t *out,
                     uint32_t max)
{
    const struct vtype_rec *r = t != NULL ? rec_of_vt(t) : NULL;
    if (t == NULL || cursor == NULL || (out == NULL && max > 0))
        return -EINVAL;
    if (r == NULL)
        return -ENOENT;
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    if (shard >= n)
        return -EINVAL;
    struct list_req q = {.tid = r->id, .cursor = cursor, .out = out, .max = max};
    int me = pith_shard_id();
    if (me >= 0) {
        if ((unsigned)me != shard)
            return -EDEADLK;
        list_here(&q);
        return q.got;
    }
    int err = pith_call_wait(shard, list_here, &q, NULL);
    return err != 0 ? err : q.got;
}

/* ---- the running activation ---- */

static struct ventry *entry_of(const pith_actor_t *self)
{
    if (self == NULL || self->a->state == NULL || rec_of_actor_type(self->a->rec->type) == NULL)
        return NULL;
    struct ventry *e = entry_of_state(self->a->state);
    return (e->flags & (E_DIR | E_WORKER)) ? e : NULL;
}

const struct vpersist_hooks *vactor_persist;

unsigned vactor_jump(uint64_t h, unsigned n)
{
    return dir_shard(h, n);
}

const pith_vtype_t *vactor_type_at(uint32_t i)
{
    /* Acquire: pairs with pith_vtype_register's release of the count. */
    return i < atomic_load_explicit(&nvtypes, memory_order_acquire) ? vtypes[i].vt : NULL;
}

const pith_vtype_t *vactor_type_of(const pith_actor_t *self)
{
    struct ventry *e = entry_of(self);
    return e != NULL && !(e->flags & E_WORKER) ? vtypes[e->tid].vt : NULL;
}

void vactor_persist_ready(pith_ref_t act, int err)
{
    struct core_shard *cs = core_self;
    struct actor *a = cs != NULL ? core_find(cs, act) : NULL;
    if (a == NULL || rec_of_actor_type(a->rec->type) == NULL)
        return;
    struct ventry *e = entry_of_state(a->state);
    const pith_vtype_t *vt = vtypes[e->tid].vt;
    if (err == 0 && vt->on_activate != NULL) {
        struct pith_actor self = {a, act};
        pith_ref_t outer = core_current;
        core_current = act;
        a->gen |= A_RUNNING;
        int reason = (e->flags & E_WARM) ? PITH_VACT_PREWARM : PITH_VACT_MESSAGE;
        int rc = vt->on_activate(&self, a->state, entry_key(e), e->klen, reason);
        if ((a = core_find(cs, act)) != NULL)
            a->gen &= ~A_RUNNING;
        core_current = outer;
        if (rc == PITH_VACT_LATER && a != NULL && !(a->gen & A_STOP))
            return; /* on_activate's own pith_vactor_activated finishes it */
        err = rc > 0 ? -EINVAL : rc;
        if (err == 0 && (a == NULL || (a->gen & A_STOP)))
            err = -ECANCELED;
        if (a == NULL)
            return;
    }
    (void)pith_vactor_activated(act, err);
}

const void *pith_vactor_key(const pith_actor_t *self, uint32_t *len)
{
    struct ventry *e = entry_of(self);
    if (e == NULL)
        return NULL;
    if (len != NULL)
        *len = e->klen;
    return entry_key(e);
}

static void off_task(void *arg)
{
    pith_ref_t ref = (pith_ref_t)(uintptr_t)arg;
    struct core_shard *cs = core_self;
    struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_relaxed) : NULL;
    if (vs == NULL || cs->closing)
        return;
    struct actor *a = core_find(cs, ref);
    if (a == NULL || rec_of_actor_type(a->rec->type) == NULL)
        return; /* it ended meanwhile */
    struct ventry *e = entry_of_state(a->state);
    if (!(e->flags & E_OFF) || !(e->flags & (E_DIR | E_WORKER)))
        return;
    if (a->gen & A_RUNNING) {
        /* Asked from a turn still on the stack (a task run inside it): after it. */
        if (shard_submit_force(cs->id, off_task, arg) != 0)
            e->flags &= (uint8_t)~E_OFF;
        return;
    }
    deactivate(cs, vs, e, PITH_VDEACT_SELF);
}

int pith_vactor_deactivate(pith_actor_t *self)
{
    struct ventry *e = entry_of(self);
    if (e == NULL || !(e->flags & E_ACTIVE))
        return -EINVAL;
    if (e->flags & E_OFF)
        return 0;
    int err = shard_submit_force(core_self->id, off_task, (void *)(uintptr_t)e->act);
    if (err == 0)
        e->flags |= E_OFF;
    return err;
}

int pith_vactor_migrate(pith_actor_t *self, unsigned shard)
{
    struct ventry *e = entry_of(self);
    if (e == NULL || (e->flags & (E_WORKER | E_ENDING)) || shard >= pith_shard_count() ||
        vtypes[e->tid].vt->persist != NULL)
        return -EINVAL;
    if (shard == core_self->id)
        return -EALREADY;
    return migrate_ask(core_self, e, shard, false);
}

int pith_vactor_activated(pith_ref_t act, int err)
{
    if (err > 0)
        return -EINVAL;
    if (pith_shard_id() < 0)
        return -EPERM;
    struct core_shard *cs = core_self;
    struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_relaxed) : NULL;
    struct actor *a = vs != NULL && ref_shard(act) == cs->id ? core_find(cs, act) : NULL;
    if (a == NULL || rec_of_actor_type(a->rec->type) == NULL)
        return -EINVAL;
    struct ventry *e = entry_of_state(a->state);
    if (!(e->flags & E_LATER))
        return -EINVAL;
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[e->tid], memory_order_relaxed);
    e->flags &= (uint8_t)~E_LATER;
    if (err == 0) {
        e->flags |= E_ACTIVE;
        if (e->flags & E_WARM)
            core_bump(&ts->prewarms, 1);
        core_bump(&ts->activations, 1);
        core_mute_hold(cs, act, false); /* schedules it for the mail that waited */
        return 0;
    }
    /* Failed: what waited goes back with err, then the activation ends without on_deactivate. */
    core_mute_hold(cs, act, false);
    for (struct amsg *m = a->head, *prev = NULL, *next; m != NULL; m = next) {
        next = m->next;
        if (m->len & AMSG_ADMIT) {
            prev = m; /* its own business (a reply to an ask of on_activate's): ends with it */
            continue;
        }
        core_mailbox_take(cs, a, prev, m);
        core_undelivered(cs, m, err);
        core_msg_free(m);
    }
    core_bump(&ts->failed, 1);
    (void)core_end_now(cs, act, err);
    return 0;
}

/* ---- a profile per activation ---- */

struct move_req {
    pith_ref_t act;
    pith_mem_profile_t profile;
};

/* Points what pointed at `from` (its directory bucket or chain, its list neighbours) at `to`. */
static void entry_moved(struct vshard *vs, struct vtype_shard *ts, struct ventry *from,
                        struct ventry *to)
{
    if (to->flags & E_DIR) {
        if (!vs->wide && ((uintptr_t)to & ~DIR_PTR) != 0)
            dir_widen(vs);
        struct ventry *prev;
        uintptr_t *b = dir_where(vs, to->hash, from, &prev);
        if (prev == NULL)
            *b = dir_rehead(vs, *b, to);
        else
            prev->chain = to;
    }
    if (to->flags & E_LISTED) {
        if (to->prev != NULL)
            to->prev->next = to;
        else
            ts->head = to;
        if (to->next != NULL)
            to->next->prev = to;
        else
            ts->tail = to;
    }
}

static void move_task(void *arg)
{
    struct move_req *q = arg;
    struct core_shard *cs = core_self;
    struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_relaxed) : NULL;
    struct actor *a = vs != NULL && !cs->closing ? core_find(cs, q->act) : NULL;
    if (a == NULL || rec_of_actor_type(a->rec->type) == NULL) {
        pith_free(q);
        return; /* it ended meanwhile */
    }
    if (a->gen & A_RUNNING) {
        /* A task run inside its turn: after it. */
        if (shard_submit_force(cs->id, move_task, q) != 0)
            pith_free(q);
        return;
    }
    struct ventry *e = entry_of_state(a->state);
    const pith_actor_type_t *t = vtypes[e->tid].vt->actor;
    struct vtype_shard *ts = atomic_load_explicit(&vs->types[e->tid], memory_order_relaxed);
    size_t size = entry_size(e);
    struct ventry *n = pith_malloc_ex(size, 0, q->profile, t->mem_budget > 0 ? q->act : 0);
    if (n == NULL) {
        core_bump(&ts->moves_failed, 1);
        pith_free(q);
        return;
    }
    memcpy(n, e, size);
    entry_moved(vs, ts, e, n);
    a->state = (char *)n + VPRE;
    bool was_hot = pith_mem_profile_of(e) == PITH_MEM_HOT, hot = q->profile == PITH_MEM_HOT;
    if (was_hot != hot)
        core_bump(&ts->hot, hot ? size : (uint64_t)0 - size);
    pith_free(e);
    core_bump(&ts->moves, 1);
    pith_free(q);
}

int pith_vactor_set_profile(pith_actor_t *self, pith_mem_profile_t profile)
{
    struct ventry *e = entry_of(self);
    if (e == NULL || (unsigned)profile >= PITH_MEM_PROFILES)
        return -EINVAL;
    struct move_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    q->act = e->act;
    q->profile = profile;
    int err = shard_submit_force(core_self->id, move_task, q);
    if (err)
        pith_free(q);
    return err;
}

/* ---- the SLA monitor's remedies (sla.c) ---- */

const pith_actor_type_t *pith_vtype_actor(const pith_vtype_t *t)
{
    const struct vtype_rec *r = t != NULL ? rec_of_vt(t) : NULL;
    return r != NULL ? &r->at : NULL;
}

int vactor_sla_guarantee(struct core_shard *cs, const pith_actor_type_t *t, size_t bytes)
{
    const struct vtype_rec *r = rec_of_actor_type(t);
    struct vshard *vs = r != NULL ? vshard_get(cs) : NULL;
    struct vtype_shard *ts = vs != NULL ? vts_get(vs, r->id) : NULL;
    if (ts == NULL)
        return r == NULL ? -EINVAL : -ENOMEM;
    if (bytes == ts->guarantee)
        return 0;
    int err = mem_self_promise_hot((int64_t)bytes - (int64_t)ts->guarantee);
    if (err == 0)
        ts->guarantee = bytes;
    return err;
}

void vactor_sla_mem(struct core_shard *cs, const pith_actor_type_t *t, uint64_t *hot,
                    uint64_t *misses)
{
    const struct vtype_rec *r = rec_of_actor_type(t);
    /* Acquire: pairs with the release stores that published each part (struct vshard). */
    struct vshard *vs =
        r != NULL && cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_acquire) : NULL;
    struct vtype_shard *ts =
        vs != NULL ? atomic_load_explicit(&vs->types[r->id], memory_order_acquire) : NULL;
    *hot = ts != NULL ? atomic_load_explicit(&ts->hot, memory_order_relaxed) : 0;
    *misses = ts != NULL ? atomic_load_explicit(&ts->hot_misses, memory_order_relaxed) : 0;
}

int vactor_sla_check(const pith_actor_type_t *t, unsigned remedies)
{
    const struct vtype_rec *r = rec_of_actor_type(t);
    if (r == NULL)
        return -EINVAL; /* not an activation's type: nothing of it can move or pre-warm */
    if ((remedies & PITH_SLA_PREWARM) && r->vt->related == NULL)
        return -EINVAL;
    if ((remedies & PITH_SLA_MIGRATE) && (r->vt->persist != NULL || r->vt->workers != 0))
        return -EINVAL;
    return 0;
}

/* The live activation `ref` of type t on this shard, between its turns or in one, or NULL. */
static struct ventry *sla_entry(struct core_shard *cs, pith_ref_t ref, const pith_actor_type_t *t)
{
    struct vshard *vs = atomic_load_explicit(&cs->vs, memory_order_relaxed);
    struct actor *a =
        vs != NULL && !cs->closing && ref_shard(ref) == cs->id ? core_find(cs, ref) : NULL;
    if (a == NULL || a->rec->type != t || a->state == NULL)
        return NULL;
    struct ventry *e = entry_of_state(a->state);
    if (!(e->flags & E_ACTIVE) || (e->flags & (E_OFF | E_ENDING | E_LATER)) ||
        !(e->flags & (E_DIR | E_WORKER)))
        return NULL;
    return e;
}

int vactor_sla_profile(struct core_shard *cs, pith_ref_t ref, const pith_actor_type_t *t)
{
    struct ventry *e = sla_entry(cs, ref, t);
    if (e == NULL || pith_mem_profile_of(e) == PITH_MEM_HOT)
        return 0;
    struct move_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    q->act = ref;
    q->profile = PITH_MEM_HOT;
    int err = shard_submit_force(cs->id, move_task, q);
    if (err) {
        pith_free(q);
        return err;
    }
    return 1;
}

int vactor_sla_prewarm(struct core_shard *cs, pith_ref_t ref, const pith_actor_type_t *t)
{
    struct ventry *e = sla_entry(cs, ref, t);
    if (e == NULL || (e->flags & E_WORKER))
        return 0;
    const pith_vtype_t *vt = vtypes[e->tid].vt;
    if (vt->related == NULL)
        return 0;
    pith_vref_t out[16];
    uint32_t n = vt->related(entry_key(e), e->klen, out, 16);
    int done = 0;
    for (uint32_t i = 0; i < n && i < 16; i++)
        if (pith_vactor_prewarm(&out[i]) == 0)
            done++;
    return done;
}

int vactor_sla_migrate(struct core_shard *cs, pith_ref_t ref, const pith_actor_type_t *t,
                       unsigned to)
{
    struct ventry *e = sla_entry(cs, ref, t);
    if (e == NULL || (e->flags & E_WORKER) || (e->xf & X_MIGRATE) || to == cs->id ||
        to >= pith_shard_count() || vtypes[e->tid].vt->persist != NULL)
        return 0;
    int err = migrate_ask(cs, e, to, false);
    return err != 0 ? err : 1;
}

/* ---- info and counters ---- */

/* A pith_vactor_info request: the caller's and the shard's, freed by whichever is last (the
 * caller may stop waiting before the shard runs it). */
struct info_req {
    _Atomic uint32_t owners;
    int err;
    pith_vref_t v;
    pith_vactor_info_t out;
};

static void info_put(struct info_req *q)
{
    /* acq_rel: the last owner sees the other's writes before it frees. */
    if (atomic_fetch_sub_explicit(&q->owners, 1, memory_order_acq_rel) == 1)
        free(q);
}

static void info_here(struct info_req *q)
{
    struct core_shard *cs = core_shard_get();
    struct vshard *vs = cs != NULL ? vshard_get(cs) : NULL;
    struct vtype_shard *ts = vs != NULL ? vts_get(vs, q->v.tid - 1) : NULL;
    memset(&q->out, 0, sizeof(q->out));
    if (ts == NULL) {
        q->err = -ENOMEM;
        return;
    }
    struct ventry *e = dir_find(vs, ts, q->v.tid - 1, q->v.hash, q->v.key, q->v.len);
    q->out.dir_shard = cs->id;
    if (e != NULL && (e->xf & X_REMOTE)) {
        struct rentry *r = (struct rentry *)e;
        if (r->state == R_ACTIVE) {
            q->out.active = true;
            q->out.shard = r->host;
            q->out.ref = r->e.act;
            q->out.placement = r->placed;
            q->out.moves = r->moves;
        }
    } else if (e != NULL && (e->flags & E_ACTIVE)) {
        q->out.active = true;
        q->out.shard = cs->id;
        q->out.ref = e->act;
        uint64_t x = ext_of(vs, e);
        q->out.placement = placed_of(e, x);
        q->out.moves = EXT_MOVES(x);
    }
}

static void *info_task(void *arg)
{
    info_here(arg);
    info_put(arg);
    return NULL;
}

int pith_vactor_info(const pith_vref_t *v, uint64_t timeout_ns, pith_vactor_info_t *out)
{
    if (rec_of_ref(v) == NULL || out == NULL || v->type->workers != 0)
        return -EINVAL;
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    unsigned dst = dir_shard(v->hash, n);
    int me = pith_shard_id();
    if (me >= 0) {
        if ((unsigned)me != dst)
            return -EDEADLK;
        struct info_req q = {.v = *v};
        info_here(&q);
        if (q.err == 0)
            *out = q.out;
        return q.err;
    }
    pith_client_t *c = pith_client_self();
    if (c == NULL)
        return -errno;
    struct info_req *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    q->v = *v;
    atomic_init(&q->owners, 2);
    int err = pith_client_call(c, dst, info_task, q, timeout_ns, NULL);
    if (err == 0) {
        err = q->err;
        if (err == 0)
            *out = q->out;
        info_put(q);
    } else if (err == -ETIMEDOUT) {
        info_put(q); /* the task may still run: it frees the request */
    } else {
        free(q); /* never pushed */
    }
    return err;
}

/* Samples, p50 and p99 (bucket upper bounds) of a log histogram. */
static void pcts_of(const uint64_t *hist, uint64_t *samples, uint64_t *p50, uint64_t *p99)
{
    uint64_t total = 0, seen = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++)
        total += hist[b];
    *samples = total;
    for (unsigned b = 0; b < HIST_BUCKETS && total > 0; b++) {
        seen += hist[b];
        if (*p50 == 0 && seen * 2 >= total)
            *p50 = hist_upper(b);
        if (seen * 100 >= total * 99) {
            *p99 = hist_upper(b);
            break;
        }
    }
}

/* The counters of t summed over the shards, or (one) of `shard` alone. */
static int stats_of(const pith_vtype_t *t, bool one, unsigned shard, pith_vtype_stats_t *out)
{
    if (t == NULL || out == NULL)
        return -EINVAL;
    const struct vtype_rec *r = rec_of_vt(t);
    if (r == NULL)
        return -ENOENT;
    /* The engine's parts are freed once it is gone: a reader holds that off meanwhile. */
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    if (ce == NULL) {
        /* The actor layer is made by its first use: before that, a running engine has counted
         * nothing yet. */
        shard_reader_leave();
        unsigned n = pith_shard_count();
        if (n == 0)
            return -ESHUTDOWN;
        if (one && shard >= n)
            return -EINVAL;
        memset(out, 0, sizeof(*out));
        return 0;
    }
    if (one && shard >= ce->n) {
        shard_reader_leave();
        return -EINVAL;
    }
    memset(out, 0, sizeof(*out));
    uint64_t hist[HIST_BUCKETS] = {0}, first[HIST_BUCKETS] = {0};
    for (unsigned i = one ? shard : 0; i < (one ? shard + 1 : ce->n); i++) {
        /* Acquire: pairs with the release stores that published each part. */
        struct core_shard *cs = atomic_load_explicit(&ce->shards[i], memory_order_acquire);
        struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_acquire) : NULL;
        struct vtype_shard *ts =
            vs != NULL ? atomic_load_explicit(&vs->types[r->id], memory_order_acquire) : NULL;
        if (ts == NULL)
            continue;
#define RD(f) atomic_load_explicit(&ts->f, memory_order_relaxed)
        out->activations += RD(activations);
        out->activate_failed += RD(failed);
        for (unsigned k = 0; k < PITH_VDEACT_REASONS; k++)
            out->deactivations[k] += RD(deact[k]);
        out->prewarms += RD(prewarms);
        out->prewarm_used += RD(prewarm_used);
        out->prewarm_wasted += RD(prewarm_wasted);
        out->profile_moves += RD(moves);
        out->profile_failed += RD(moves_failed);
        out->remote += RD(remote);
        out->forwards += RD(forwards);
        out->direct += RD(direct);
        out->returned += RD(returned);
        out->migrations += RD(migrations);
        out->rebalances += RD(rebalances);
        out->migrate_failed += RD(migrate_failed);
        out->cached += RD(cached);
        out->stale += RD(stale);
        out->live += RD(live_now);
        out->messages += RD(messages);
        out->lookups += RD(lookups);
        out->collisions += RD(collisions);
        out->refused += RD(refused);
        if (RD(act_max) > out->activate_max_ns)
            out->activate_max_ns = RD(act_max);
        for (unsigned b = 0; b < HIST_BUCKETS; b++) {
            hist[b] += RD(hist[b]);
            first[b] += RD(first_hist[b]);
        }
        if (RD(first_max) > out->first_max_ns)
            out->first_max_ns = RD(first_max);
#undef RD
    }
    shard_reader_leave();
    pcts_of(hist, &out->activate_samples, &out->activate_p50_ns, &out->activate_p99_ns);
    pcts_of(first, &out->first_samples, &out->first_p50_ns, &out->first_p99_ns);
    return 0;
}

int vactor_type_hists(const pith_vtype_t *t, unsigned shard, struct vtype_hists *out)
{
    if (t == NULL || out == NULL)
        return -EINVAL;
    const struct vtype_rec *r = rec_of_vt(t);
    if (r == NULL)
        return -ENOENT;
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    memset(out, 0, sizeof(*out));
    int err = 0;
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    if (shard >= pith_shard_count()) {
        err = -EINVAL;
    } else if (ce != NULL) {
        /* Acquire: pairs with the release stores that published each part. */
        struct core_shard *cs = atomic_load_explicit(&ce->shards[shard], memory_order_acquire);
        struct vshard *vs = cs != NULL ? atomic_load_explicit(&cs->vs, memory_order_acquire) : NULL;
        struct vtype_shard *ts =
            vs != NULL ? atomic_load_explicit(&vs->types[r->id], memory_order_acquire) : NULL;
        if (ts != NULL) {
            for (unsigned b = 0; b < HIST_BUCKETS; b++) {
                out->act[b] = atomic_load_explicit(&ts->hist[b], memory_order_relaxed);
                out->first[b] = atomic_load_explicit(&ts->first_hist[b], memory_order_relaxed);
            }
            out->act_sum_ns = atomic_load_explicit(&ts->act_sum, memory_order_relaxed);
            out->first_sum_ns = atomic_load_explicit(&ts->first_sum, memory_order_relaxed);
        }
    }
    shard_reader_leave();
    return err;
}

int pith_vtype_stats(const pith_vtype_t *t, pith_vtype_stats_t *out)
{
    return stats_of(t, false, 0, out);
}

int pith_vtype_shard_stats(const pith_vtype_t *t, unsigned shard, pith_vtype_stats_t *out)
{
    return stats_of(t, true, shard, out);
}

/* ---- the shard hooks ---- */

void core_vactor_exit(struct core_shard *cs)
{
    struct vshard *vs = atomic_load_explicit(&cs->vs, memory_order_relaxed);
    if (vs == NULL)
        return;
    /* Every activation has ended, its entry (in its state block) with it. */
    chain_free(vs->held);
    vs->held = vs->held_tail = NULL;
    vs->mig_blob = NULL; /* only ever set within migrate_task */
    for (unsigned i = 0; vs->cache != NULL && i < CACHE_SLOTS; i++) {
        chain_free(vs->cache[i].held);
        chain_free(vs->cache[i].back);
    }
    free(vs->cache);
    vs->cache = NULL;
    vs->nchold = 0;
    /* What is left in the table are the entries of activations on other shards. */
    dir_step(vs, UINT_MAX, UINT64_MAX); /* one table */
    for (uint64_t b = 0; b < vs->nbuckets; b++) {
        for (struct ventry *e = dir_head(vs, vs->buckets[b]), *next; e != NULL; e = next) {
            next = e->chain;
            if (!(e->xf & X_REMOTE))
                continue;
            struct rentry *r = (struct rentry *)e;
            chain_free(r->ret);
            chain_free(r->held);
            if (r->blob != NULL)
                orphan_end(r->e.tid, r->blob, PITH_EXIT_SHUTDOWN);
            pith_free(r);
        }
    }
    pith_free(vs->buckets);
    vs->buckets = NULL;
    vs->nbuckets = vs->nentries = 0;
    map_free(&vs->ext);
    for (unsigned t = 0; t < PITH_VTYPES_MAX; t++) {
        struct vtype_shard *ts = atomic_load_explicit(&vs->types[t], memory_order_relaxed);
        if (ts != NULL && ts->armed) {
            pith_timer_cancel(ts->timer);
            ts->armed = false;
        }
    }
}

bool core_vactor_release(pith_fn_t fn, void *arg)
{
    if (fn == vdeliver_task || fn == fwd_task || fn == ret_task || fn == dfwd_task ||
        fn == bounce_task) {
        core_msg_free(arg);
        return true;
    }
    if (fn == ctl_task) {
        ctl_free(arg);
        return true;
    }
    if (fn == related_task || fn == move_task) {
        pith_free(arg);
        return true;
    }
    return fn == off_task || fn == sweep || fn == held_task || fn == migrate_task;
}

void core_vactor_gone(struct core_shard *cs)
{
    struct vshard *vs = atomic_load_explicit(&cs->vs, memory_order_relaxed);
    if (vs == NULL)
        return;
    for (unsigned t = 0; t < PITH_VTYPES_MAX; t++)
        free(atomic_load_explicit(&vs->types[t], memory_order_relaxed));
    free(vs);
}
