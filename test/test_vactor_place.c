/* Virtual actors that live off their directory shard (pith/vactor.h): the placements (the
 * sender's shard, the application's function, the least loaded shard, a NUMA node) and what
 * pith_vtype_register refuses; per-sender order to remote activations that come and go (their
 * own deactivation, idleness racing the senders); exactly one activation under a storm of first
 * messages from every shard; a remote activation that fails or finishes later; pith_vactor_migrate
 * (the state and the hooks, its errors, under load from every shard, into a shard at the cap);
 * rebalancing of a pair that talks only to itself; and engine stops with activations mid-move and
 * mid-activation. Shards record into globals (atomics); only the test thread asserts. */
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vtest.h"

#define SEC (1000ull * MS)
/* Longer than any wait here: an ask with this timeout that ended, ended early. */
#define LONG_ASK (600 * SEC)

enum { ADD = 1, GET, OFF, FILL, SEQ, MIG, PING, HOLD, SPIN, FWD };

#define SENDERS  6
#define SLOTS    8
#define KEYS_MAX 4096
#define REASONS  PITH_VDEACT_REASONS
#define PATTERN  1024

/* ---- what the shards record ---- */

static _Atomic uint64_t init_calls, term_calls, bufs_made, bufs_freed;
/* on_activate: calls by reason, activations that began (fresh, or by a move), and states that
 * arrived wrong (a key that is not the activation's, a state not copied byte for byte). */
static _Atomic uint64_t act_calls[4], began_fresh, began_moved, act_bad;
static _Atomic uint64_t deacts[REASONS];
static _Atomic unsigned moved_to_mask;       /* shards where a moved activation began */
static _Atomic int act_shard[KEYS_MAX];      /* where each key's last on_activate ran, + 1 */
static _Atomic uint32_t act_fresh[KEYS_MAX]; /* fresh activations that began, per key */
static _Atomic int deact_moved_from;         /* the shard of the last PITH_VDEACT_MIGRATED, + 1 */
static test_error_t beh_err;                 /* the first error of a call a behaviour made */

/* Migrations asked for by MIG messages: pith_vactor_migrate's answer per slot. */
static _Atomic int mig_rc[SLOTS], mig_done[SLOTS];

/* Knobs the behaviour reads (set before the engine starts). */
static _Atomic uint64_t off_every; /* SEQ: deactivate every this many (per activation) */
static _Atomic uint64_t mig_every; /* SEQ: move to the next shard every this many */
static _Atomic int hold;           /* HOLD goes on sending itself while set */
static _Atomic int64_t spin_left;  /* SPIN moves and sends itself while this stays positive */

/* PING back and forth. */
static _Atomic uint64_t pings;
static _Atomic int ping_done;

/* Per-sender order: the payload of SEQ is (sender << 32 | seq), every number sent in turn. */
static _Atomic uint32_t next_seq[SENDERS];
static _Atomic uint64_t seq_seen[SENDERS], seq_bad, seq_bad_got, seq_bad_want;

/* Notices of messages tasks sent that were not delivered. */
static _Atomic uint64_t notices, notice_eio;
static _Atomic int notice_reason;

static void on_undelivered(const pith_undelivered_t *u, void *ctx)
{
    (void)ctx;
    atomic_fetch_add(&notices, u->count);
    if (u->reason == -EIO)
        atomic_fetch_add(&notice_eio, u->count);
    else
        atomic_store(&notice_reason, u->reason);
}

static void seq_check(uint64_t v)
{
    uint32_t sender = (uint32_t)(v >> 32), seq = (uint32_t)v;
    if (sender >= SENDERS) {
        atomic_fetch_add(&seq_bad, 1);
        return;
    }
    uint32_t want = atomic_load(&next_seq[sender]);
    if (seq != want && atomic_fetch_add(&seq_bad, 1) == 0) {
        atomic_store(&seq_bad_got, v);
        atomic_store(&seq_bad_want, (uint64_t)sender << 32 | want);
    }
    atomic_store(&next_seq[sender], seq + 1);
    atomic_fetch_add(&seq_seen[sender], 1);
}

/* ---- one actor for every type ---- */

struct pst {
    uint64_t n;        /* ADDs' sum, plus one per SEQ */
    uint64_t handled;  /* messages handled since the fresh activation, moves included */
    uint64_t shadow;   /* ~handled: a state copied wrong shows */
    uint32_t seed;     /* pattern[i] = seed * 31 + i * 7 */
    uint32_t moves;    /* times on_activate saw this state arrive by a move */
    pith_buf_t *owned; /* made by init, released by terminate: one of each per state */
    pith_vref_t me;    /* this key's virtual ref */
    pith_vref_t peer;  /* PING's other side */
    unsigned char pattern[PATTERN];
};

/* GET's answer. */
struct greply {
    uint64_t n, handled;
    uint32_t seed, moves;
    int32_t shard;
    uint32_t pattern_ok;
};

/* MIG's payload: the shard to move to, and the slot for pith_vactor_migrate's answer. */
struct mig {
    uint32_t target, slot;
};

static void fill(struct pst *st, uint32_t seed)
{
    st->seed = seed;
    for (uint32_t i = 0; i < PATTERN; i++)
        st->pattern[i] = (unsigned char)(seed * 31 + i * 7);
}

static bool pattern_ok(const struct pst *st)
{
    for (uint32_t i = 0; i < PATTERN; i++)
        if (st->pattern[i] != (unsigned char)(st->seed * 31 + i * 7))
            return false;
    return true;
}

static bool vref_same(const pith_vref_t *a, const pith_vref_t *b)
{
    return a->type == b->type && a->hash == b->hash && a->len == b->len && a->tid == b->tid &&
           memcmp(a->key, b->key, a->len) == 0;
}

/* The number a key ends with ("L12": 12), -1 when none (or too large). */
static int key_index(const void *key, uint32_t len)
{
    const char *k = key;
    uint32_t i = len;
    while (i > 0 && k[i - 1] >= '0' && k[i - 1] <= '9')
        i--;
    if (i == len || len - i > 6)
        return -1;
    int n = 0;
    for (; i < len; i++)
        n = n * 10 + (k[i] - '0');
    return n < KEYS_MAX ? n : -1;
}

static int pinit(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    struct pst *st = state;
    atomic_fetch_add(&init_calls, 1);
    if (arg != NULL)
        atomic_fetch_add(&act_bad, 1);
    void *d;
    st->owned = pith_buf_new(32, &d);
    if (st->owned == NULL)
        return -ENOMEM;
    atomic_fetch_add(&bufs_made, 1);
    st->shadow = ~st->handled;
    return 0;
}

static void pterm(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)reason;
    struct pst *st = state;
    atomic_fetch_add(&term_calls, 1);
    if (st->owned != NULL) {
        pith_buf_release(st->owned);
        st->owned = NULL;
        atomic_fetch_add(&bufs_freed, 1);
    }
}

static int pbehaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct pst *st = state;
    if (st->shadow != ~st->handled)
        atomic_fetch_add(&act_bad, 1);
    st->handled++;
    st->shadow = ~st->handled;
    uint64_t v = 0;
    if (msg->buf == NULL && msg->len >= sizeof(v))
        memcpy(&v, msg->data, sizeof(v));
    int rc;
    switch (msg->type) {
    case ADD:
        st->n += v;
        break;
    case GET: {
        struct greply r = {.n = st->n,
                           .handled = st->handled,
                           .seed = st->seed,
                           .moves = st->moves,
                           .shard = pith_shard_id(),
                           .pattern_ok = pattern_ok(st)};
        (void)pith_reply(msg, GET, &r, sizeof(r));
        break;
    }
    case OFF:
        if ((rc = pith_vactor_deactivate(self)) != 0)
            TEST_NOTE(&beh_err, rc);
        break;
    case FILL:
        fill(st, (uint32_t)v);
        break;
    case SEQ: {
        seq_check(v);
        st->n++;
        uint64_t every = atomic_load(&off_every);
        if (every != 0 && st->n % every == 0 && (rc = pith_vactor_deactivate(self)) != 0)
            TEST_NOTE(&beh_err, rc);
        every = atomic_load(&mig_every);
        if (every != 0 && st->n % every == 0) {
            unsigned to = ((unsigned)pith_shard_id() + 1) % pith_shard_count();
            if ((rc = pith_vactor_migrate(self, to)) != 0)
                TEST_NOTE(&beh_err, rc);
        }
        break;
    }
    case MIG: {
        struct mig m = {UINT32_MAX, UINT32_MAX};
        if (msg->len == sizeof(m))
            memcpy(&m, msg->data, sizeof(m));
        rc = pith_vactor_migrate(self, m.target);
        if (m.slot < SLOTS) {
            atomic_store(&mig_rc[m.slot], rc);
            atomic_fetch_add(&mig_done[m.slot], 1);
        } else if (rc != 0 && rc != -ESHUTDOWN && rc != -EALREADY) {
            TEST_NOTE(&beh_err, rc); /* slot-less MIGs may aim at the shard they are on */
        }
        break;
    }
    case PING:
        atomic_fetch_add(&pings, 1);
        if (v == 0)
            atomic_store(&ping_done, 1);
        else if ((rc = pith_vsend(&st->peer, PING, &(uint64_t){v - 1}, sizeof(v))) != 0)
            TEST_NOTE(&beh_err, rc);
        break;
    case HOLD:
        if (atomic_load(&hold) && (rc = pith_vsend(&st->me, HOLD, NULL, 0)) != 0 &&
            rc != -ESHUTDOWN)
            TEST_NOTE(&beh_err, rc);
        break;
    case SPIN:
        if (atomic_fetch_sub(&spin_left, 1) > 0) {
            unsigned to = ((unsigned)pith_shard_id() + 1) % pith_shard_count();
            rc = pith_vactor_migrate(self, to);
            if (rc != 0 && rc != -ESHUTDOWN)
                TEST_NOTE(&beh_err, rc);
            rc = pith_vsend(&st->me, SPIN, NULL, 0);
            if (rc != 0 && rc != -ESHUTDOWN)
                TEST_NOTE(&beh_err, rc);
        }
        break;
    default:
        break;
    }
    return 0;
}

/* A mailbox large enough that nothing here is refused by it; a few messages a turn, so that a
 * deactivation or a move finds messages still waiting. */
static const pith_actor_type_t p_actor = {
    .name = "place",
    .behaviour = pbehaviour,
    .init = pinit,
    .terminate = pterm,
    .state_size = sizeof(struct pst),
    .mailbox_max = 1u << 16,
    .turn_msgs = 4,
};

static const pith_actor_type_t p2_actor = {
    .name = "place2",
    .behaviour = pbehaviour,
    .init = pinit,
    .terminate = pterm,
    .state_size = sizeof(struct pst),
    .mailbox_max = 1u << 16,
    .turn_msgs = 2,
};

/* What every on_activate does first: check the key and the state, note where it runs. */
static int began(const pith_vtype_t *t, pith_actor_t *self, void *state, const void *key,
                 uint32_t len, int reason)
{
    struct pst *st = state;
    uint32_t klen = 0;
    const void *k = pith_vactor_key(self, &klen);
    bool ok = k != NULL && klen == len && memcmp(k, key, len) == 0;
    int sh = pith_shard_id(), idx = key_index(key, len);
    if (reason == PITH_VACT_MIGRATED) {
        pith_vref_t me;
        ok = ok && st->shadow == ~st->handled && st->owned != NULL && pattern_ok(st) &&
             pith_vref(t, key, len, &me) == 0 && vref_same(&me, &st->me);
        st->moves++;
        if (sh >= 0)
            atomic_fetch_or(&moved_to_mask, 1u << sh);
    } else if (reason == PITH_VACT_MESSAGE || reason == PITH_VACT_PREWARM) {
        ok = ok && st->handled == 0 && st->shadow == ~UINT64_C(0) && st->owned != NULL &&
             pith_vref(t, key, len, &st->me) == 0;
        fill(st, (uint32_t)idx + 1);
    } else {
        ok = false;
    }
    if (reason > 0 && reason < 4)
        atomic_fetch_add(&act_calls[reason], 1);
    if (!ok)
        atomic_fetch_add(&act_bad, 1);
    if (idx >= 0)
        atomic_store(&act_shard[idx], sh + 1);
    return 0;
}

static void counted(const void *key, uint32_t len, int reason)
{
    if (reason == PITH_VACT_MIGRATED) {
        atomic_fetch_add(&began_moved, 1);
        return;
    }
    atomic_fetch_add(&began_fresh, 1);
    int idx = key_index(key, len);
    if (idx >= 0)
        atomic_fetch_add(&act_fresh[idx], 1);
}

static void ended(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    struct pst *st = state;
    if (reason > 0 && reason < REASONS)
        atomic_fetch_add(&deacts[reason], 1);
    else
        atomic_fetch_add(&act_bad, 1);
    if (reason == PITH_VDEACT_MIGRATED) {
        atomic_store(&deact_moved_from, pith_shard_id() + 1);
        if (st->shadow != ~st->handled || st->owned == NULL)
            atomic_fetch_add(&act_bad, 1);
    }
}

static uint64_t deacts_total(void)
{
    uint64_t n = 0;
    for (int i = 1; i < REASONS; i++)
        n += atomic_load(&deacts[i]);
    return n;
}

/* Declares name_type and defines name_act, its on_activate: began, then body_ (self, state,
 * key, len, reason and rc_ in scope; it may set rc_ to the answer). */
#define VTYPE_ACT(name_, body_)                                                                    \
    static const pith_vtype_t name_##_type;                                                        \
    static int name_##_act(pith_actor_t *self, void *state, const void *key, uint32_t len,         \
                           int reason)                                                             \
    {                                                                                              \
        int rc_ = began(&name_##_type, self, state, key, len, reason);                             \
        body_;                                                                                     \
        if (rc_ == 0)                                                                              \
            counted(key, len, reason);                                                             \
        return rc_;                                                                                \
    }

/* ---- placement functions ---- */

static unsigned dir_of(const pith_vtype_t *t, const void *key, uint32_t len)
{
    pith_vref_t v;
    return pith_vref(t, key, len, &v) == 0 ? pith_vref_shard(&v) : UINT_MAX;
}

static _Atomic uint64_t place_calls, place_off_dir;
static _Atomic unsigned place_shards;
static _Atomic unsigned place_sender_of[KEYS_MAX];
static _Atomic uint32_t place_called[KEYS_MAX];

static const pith_vtype_t fn_type;

/* By the key's first byte: a digit, that shard; 'x' 99 and 'u' UINT_MAX (both out of range: the
 * directory shard); 's' the sender's shard. */
static unsigned place_pick(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    const char *k = key;
    atomic_fetch_add(&place_calls, 1);
    atomic_store(&place_shards, shards);
    if ((unsigned)pith_shard_id() != dir_of(&fn_type, key, len))
        atomic_fetch_add(&place_off_dir, 1);
    int idx = key_index(key, len);
    if (idx >= 0) {
        atomic_store(&place_sender_of[idx], sender);
        atomic_fetch_add(&place_called[idx], 1);
    }
    if (len == 0)
        return 0;
    if (k[0] >= '0' && k[0] <= '9')
        return (unsigned)(k[0] - '0');
    if (k[0] == 'x')
        return 99;
    if (k[0] == 's')
        return sender;
    return UINT_MAX;
}

static const pith_vtype_t fail_type, later_type;

/* The shard after the key's directory. */
static unsigned place_fail(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    (void)sender;
    return (dir_of(&fail_type, key, len) + 1) % shards;
}

static unsigned place_later(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    (void)sender;
    return (dir_of(&later_type, key, len) + 1) % shards;
}

/* 'a...' on shard 0, 'b...' on shard 1. */
static unsigned place_pair(const void *key, uint32_t len, unsigned sender, unsigned shards)
{
    (void)sender;
    return len > 0 && ((const char *)key)[0] == 'b' ? 1 % shards : 0;
}

/* ---- the types ---- */

VTYPE_ACT(local, (void)0)
static const pith_vtype_t local_type = {
    .name = "place.local",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_LOCAL,
    .on_activate = local_act,
    .on_deactivate = ended,
};

VTYPE_ACT(fn, (void)0)
static const pith_vtype_t fn_type = {
    .name = "place.fn",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_FN,
    .on_activate = fn_act,
    .on_deactivate = ended,
    .place = place_pick,
};

VTYPE_ACT(least, (void)0)
static const pith_vtype_t least_type = {
    .name = "place.least",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_LEAST_LOADED,
    .on_activate = least_act,
    .on_deactivate = ended,
};

VTYPE_ACT(numa0, (void)0)
static const pith_vtype_t numa0_type = {
    .name = "place.numa0",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_NUMA,
    .numa_node = 0,
    .on_activate = numa0_act,
    .on_deactivate = ended,
};

VTYPE_ACT(numa_far, (void)0)
static const pith_vtype_t numa_far_type = {
    .name = "place.numa.far",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_NUMA,
    .numa_node = 999, /* no such node: all shards */
    .on_activate = numa_far_act,
    .on_deactivate = ended,
};

VTYPE_ACT(lfifo, (void)0)
static const pith_vtype_t lfifo_type = {
    .name = "place.lfifo",
    .actor = &p2_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_LOCAL,
    .on_activate = lfifo_act,
    .on_deactivate = ended,
};

VTYPE_ACT(flick, (void)0)
static const pith_vtype_t flick_type = {
    .name = "place.flick",
    .actor = &p2_actor,
    .idle_ns = 4 * MS, /* swept every ms: gone 4 to 5 ms after its last message */
    .placement = PITH_PLACE_LOCAL,
    .on_activate = flick_act,
    .on_deactivate = ended,
};

VTYPE_ACT(storm, (void)0)
static const pith_vtype_t storm_type = {
    .name = "place.storm",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_LOCAL,
    .on_activate = storm_act,
    .on_deactivate = ended,
};

/* on_activate fails with -EIO while fail_next is positive (one less each time). */
static _Atomic int fail_next;
static _Atomic uint64_t fail_tries;
VTYPE_ACT(fail, {
    int f = atomic_load(&fail_next);
    while (f > 0) {
        if (atomic_compare_exchange_weak(&fail_next, &f, f - 1)) {
            atomic_fetch_add(&fail_tries, 1);
            rc_ = -EIO;
            break;
        }
    }
})
static const pith_vtype_t fail_type = {
    .name = "place.fail",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_FN,
    .on_activate = fail_act,
    .on_deactivate = ended,
    .place = place_fail,
};

/* on_activate finishes later (pith_vactor_activated); loading holds the last one's ref. */
static _Atomic pith_ref_t loading;
static _Atomic uint64_t later_calls;
VTYPE_ACT(later, {
    atomic_store(&loading, pith_self(self));
    atomic_fetch_add(&later_calls, 1);
    rc_ = PITH_VACT_LATER;
})
static const pith_vtype_t later_type = {
    .name = "place.later",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_FN,
    .on_activate = later_act,
    .on_deactivate = ended,
    .place = place_later,
};

VTYPE_ACT(mig, (void)0)
static const pith_vtype_t mig_type = {
    .name = "place.mig",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .on_activate = mig_act,
    .on_deactivate = ended,
};

VTYPE_ACT(cap, (void)0)
static const pith_vtype_t cap_type = {
    .name = "place.cap",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .max_per_shard = 1,
    .on_activate = cap_act,
    .on_deactivate = ended,
};

/* The pair's other key: 'a' and 'b' swapped. */
static void set_peer(const pith_vtype_t *t, struct pst *st, const void *key, uint32_t len)
{
    char k[PITH_VKEY_MAX];
    memcpy(k, key, len);
    if (len > 0)
        k[0] = k[0] == 'a' ? 'b' : 'a';
    if (pith_vref(t, k, len, &st->peer) != 0)
        atomic_fetch_add(&act_bad, 1);
}

VTYPE_ACT(rb, {
    if (reason != PITH_VACT_MIGRATED)
        set_peer(&rb_type, state, key, len);
})
static const pith_vtype_t rb_type = {
    .name = "place.rb",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_FN,
    .flags = PITH_VTYPE_REBALANCE,
    .on_activate = rb_act,
    .on_deactivate = ended,
    .place = place_pair,
};

VTYPE_ACT(norb, {
    if (reason != PITH_VACT_MIGRATED)
        set_peer(&norb_type, state, key, len);
})
static const pith_vtype_t norb_type = {
    .name = "place.norb",
    .actor = &p_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .placement = PITH_PLACE_FN,
    .on_activate = norb_act,
    .on_deactivate = ended,
    .place = place_pair,
};

/* Stateless workers: pith_vactor_migrate is not for them. */
static const pith_vtype_t pool_type = {
    .name = "place.pool", .actor = &p_actor, .workers = 2, .idle_ns = PITH_VIDLE_NEVER};

static void register_all(void)
{
    static const pith_vtype_t *const all[] = {
        &local_type, &fn_type,    &least_type, &numa0_type, &numa_far_type,
        &lfifo_type, &flick_type, &storm_type, &fail_type,  &later_type,
        &mig_type,   &cap_type,   &rb_type,    &norb_type,  &pool_type,
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        int rc = pith_vtype_register(all[i]);
        cr_assert_eq(rc, 0, "registering %s: %d (%s)", all[i]->name, rc, pith_strerror(rc));
    }
}

/* A plain actor: FWD sends ADD 1 to the virtual ref it carries; MIG tries pith_vactor_migrate. */
static int fwd_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    if (msg->type == FWD && msg->len == sizeof(pith_vref_t)) {
        pith_vref_t v;
        memcpy(&v, msg->data, sizeof(v));
        uint64_t one = 1;
        int rc = pith_vsend(&v, ADD, &one, sizeof(one));
        if (rc != 0)
            TEST_NOTE(&beh_err, rc);
    } else if (msg->type == MIG && msg->len == sizeof(struct mig)) {
        struct mig m;
        memcpy(&m, msg->data, sizeof(m));
        int rc = pith_vactor_migrate(self, m.target);
        if (m.slot < SLOTS) {
            atomic_store(&mig_rc[m.slot], rc);
            atomic_fetch_add(&mig_done[m.slot], 1);
        }
    }
    return 0;
}

static const pith_actor_type_t fwd_actor = {.name = "place.fwd", .behaviour = fwd_behaviour};

/* ---- helpers ---- */

static void start(int shards)
{
    register_all();
    pith_on_undelivered(on_undelivered, NULL);
    pith_config_t cfg = test_config(shards);
    test_start(&cfg);
}

/* Stops the engine (test_stop: the stop succeeds, nothing leaks), then: every state's terminate
 * ran once (the buffer init made went back once), and no state arrived wrong. */
static void stop(void)
{
    test_stop(NULL);
    cr_assert_eq(atomic_load(&term_calls), atomic_load(&init_calls),
                 "terminate ran %llu times for %llu inits",
                 (unsigned long long)atomic_load(&term_calls),
                 (unsigned long long)atomic_load(&init_calls));
    cr_assert_eq(atomic_load(&bufs_freed), atomic_load(&bufs_made),
                 "%llu of the %llu buffers states owned were released",
                 (unsigned long long)atomic_load(&bufs_freed),
                 (unsigned long long)atomic_load(&bufs_made));
    cr_assert_eq(atomic_load(&act_bad), 0,
                 "%llu activations found a wrong key or a state not copied byte for byte",
                 (unsigned long long)atomic_load(&act_bad));
}

static pith_vref_t vref_of(const pith_vtype_t *t, const char *key)
{
    pith_vref_t v;
    int rc = pith_vref(t, key, strlen(key), &v);
    cr_assert_eq(rc, 0, "pith_vref(%s): %d", key, rc);
    return v;
}

static int vidx(const pith_vref_t *v)
{
    int i = key_index(v->key, v->len);
    cr_assert_geq(i, 0);
    return i;
}

#define KEYF     "%.*s"
#define KEYA(v_) (int)(v_).len, (const char *)(v_).key

/* The first key "<prefix><i>" of t, i from *next on (then past it), whose directory shard is
 * `want` (any, when negative) and neither avoid nor avoid2. */
static pith_vref_t key_find(const pith_vtype_t *t, const char *prefix, unsigned *next, int want,
                            int avoid, int avoid2)
{
    for (; *next < KEYS_MAX; (*next)++) {
        char key[48];
        snprintf(key, sizeof(key), "%s%u", prefix, *next);
        pith_vref_t v = vref_of(t, key);
        unsigned d = pith_vref_shard(&v);
        cr_assert_lt(d, pith_shard_count(), "pith_vref_shard: %u", d);
        if ((want < 0 || d == (unsigned)want) && d != (unsigned)avoid && d != (unsigned)avoid2) {
            (*next)++;
            return v;
        }
    }
    cr_assert_fail("no key %s* of %s for shard %d", prefix, t->name, want);
    return vref_of(t, prefix);
}

static pith_vtype_stats_t stats_of(const pith_vtype_t *t)
{
    pith_vtype_stats_t st;
    int rc = pith_vtype_stats(t, &st);
    cr_assert_eq(rc, 0, "pith_vtype_stats: %d", rc);
    return st;
}

static pith_vactor_info_t info_of(const pith_vref_t *v)
{
    pith_vactor_info_t info;
    memset(&info, 0xA5, sizeof(info));
    int rc = pith_vactor_info(v, 5 * SEC, &info);
    cr_assert_eq(rc, 0, "pith_vactor_info(" KEYF "): %d (%s)", KEYA(*v), rc, pith_strerror(rc));
    cr_assert_eq(info.dir_shard, pith_vref_shard(v), "info's dir_shard %u, pith_vref_shard %u",
                 info.dir_shard, pith_vref_shard(v));
    return info;
}

/* Waits until the directory knows v active on `shard` with its ref, then checks it. */
static pith_vactor_info_t info_at(const pith_vref_t *v, unsigned shard)
{
    uint64_t deadline = test_wait_deadline();
    pith_vactor_info_t i = info_of(v);
    while (!(i.active && i.ref != PITH_REF_NONE && i.shard == shard) && pith_now_ns() < deadline) {
        test_sync_all();
        i = info_of(v);
    }
    cr_assert(i.active, "key " KEYF " is not active", KEYA(*v));
    cr_assert_eq(i.shard, shard,
                 "key " KEYF " lives on shard %u, not %u (directory %u, placement %u)", KEYA(*v),
                 i.shard, shard, i.dir_shard, i.placement);
    cr_assert_neq(i.ref, PITH_REF_NONE, "key " KEYF ": no ref", KEYA(*v));
    cr_assert_eq(pith_ref_shard(i.ref), shard, "key " KEYF ": its ref is of shard %u", KEYA(*v),
                 pith_ref_shard(i.ref));
    return i;
}

static int try_ask(const pith_vref_t *v, struct greply *out)
{
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), v, GET, NULL, 0, 20 * SEC, &reply);
    if (rc == 0) {
        cr_assert_eq(reply.len, sizeof(*out));
        memcpy(out, reply.data, sizeof(*out));
    }
    return rc;
}

/* A client's GET, which must succeed; line: the caller's, for the failure's message. */
static struct greply ask_get_at(const pith_vref_t *v, int line)
{
    struct greply r;
    int rc = try_ask(v, &r);
    cr_assert_eq(rc, 0, "line %d: pith_client_vask(" KEYF "): %d (%s)", line, KEYA(*v), rc,
                 pith_strerror(rc));
    cr_assert(r.pattern_ok, "line %d: key " KEYF ": the state's pattern is damaged", line,
              KEYA(*v));
    return r;
}

#define ask_get(v_) ask_get_at((v_), __LINE__)

static void vsend_ok(const pith_vref_t *v, uint32_t type, uint64_t x)
{
    int rc = pith_client_vsend(pith_client_self(), v, type, &x, sizeof(x), PITH_FOREVER);
    cr_assert_eq(rc, 0, "pith_client_vsend: %d (%s)", rc, pith_strerror(rc));
}

static void mig_send(const pith_vref_t *v, uint32_t target, uint32_t slot)
{
    struct mig m = {target, slot};
    int rc = pith_client_vsend(pith_client_self(), v, MIG, &m, sizeof(m), PITH_FOREVER);
    cr_assert_eq(rc, 0, "pith_client_vsend(MIG): %d (%s)", rc, pith_strerror(rc));
}

/* pith_vactor_migrate's answer to the MIG with this slot. */
static int mig_answer(uint32_t slot)
{
    TEST_WAIT_FOR(atomic_load(&mig_done[slot]) == 1);
    return atomic_load(&mig_rc[slot]);
}

/* Sends from a task of `shard`: n messages of `type` carrying x, stopping at the first error. */
struct tsend {
    const pith_vref_t *v;
    uint32_t type, n;
    uint64_t x;
    uint32_t sent;
    int rc;
};

static void *tsend_fn(void *arg)
{
    struct tsend *q = arg;
    q->rc = 0;
    for (q->sent = 0; q->sent < q->n; q->sent++) {
        q->rc = pith_vsend(q->v, q->type, &q->x, sizeof(q->x));
        if (q->rc != 0)
            break;
    }
    return NULL;
}

static int send_from(unsigned shard, const pith_vref_t *v, uint32_t type, uint64_t x, uint32_t n)
{
    struct tsend q = {.v = v, .type = type, .n = n, .x = x};
    cr_assert_eq(pith_call_wait(shard, tsend_fn, &q, NULL), 0);
    return q.rc;
}

/* Sends n from a task on `shard`; the mesh may push back (-EAGAIN: nothing more is sent this
 * call). Returns how many went. For a loop that sends until something is seen. */
static uint32_t send_some_from(unsigned shard, const pith_vref_t *v, uint32_t n)
{
    struct tsend q = {.v = v, .type = ADD, .n = n, .x = 1};
    cr_assert_eq(pith_call_wait(shard, tsend_fn, &q, NULL), 0);
    cr_assert(q.rc == 0 || q.rc == -EAGAIN, "pith_vsend from shard %u: %d (%s)", shard, q.rc,
              pith_strerror(q.rc));
    return q.sent;
}

/* Asks from a task, with a callback. */
struct cb_slot {
    _Atomic int done, err;
    _Atomic uint64_t n;
};

static struct cb_slot cbs[SLOTS];

static void cbs_reset(void)
{
    for (int i = 0; i < SLOTS; i++) {
        atomic_store(&cbs[i].done, 0);
        atomic_store(&cbs[i].err, 12345);
        atomic_store(&cbs[i].n, UINT64_MAX);
    }
}

static void ask_cb(const pith_msg_t *reply, int err, void *ctx)
{
    struct cb_slot *s = ctx;
    if (reply != NULL && reply->len == sizeof(struct greply)) {
        struct greply r;
        memcpy(&r, reply->data, sizeof(r));
        atomic_store(&s->n, r.n);
    }
    atomic_store(&s->err, err);
    atomic_fetch_add(&s->done, 1);
}

struct task_ask {
    const pith_vref_t *v;
    struct cb_slot *slot;
    int rc;
};

static void *task_ask_fn(void *arg)
{
    struct task_ask *q = arg;
    q->rc = pith_vask(q->v, GET, NULL, 0, LONG_ASK, ask_cb, q->slot, NULL);
    return NULL;
}

/* ---- placement ---- */

static pith_ref_t fwd_on(unsigned shard)
{
    pith_ref_t r = PITH_REF_NONE;
    int rc = pith_client_spawn(pith_client_self(), shard, &fwd_actor, NULL, 5 * SEC, &r);
    cr_assert_eq(rc, 0, "pith_client_spawn: %d", rc);
    return r;
}

Test(vactor_place, local_places_each_key_on_the_shard_of_its_first_sender, .timeout = 60)
{
    start(3);
    unsigned next = 0;
    pith_vref_t v[3];
    /* From a task of each shard, to a key whose directory is another shard. */
    for (unsigned s = 0; s < 3; s++) {
        v[s] = key_find(&local_type, "L", &next, -1, (int)s, -1);
        int rc = send_from(s, &v[s], ADD, 1, 1);
        cr_assert_eq(rc, 0, "pith_vsend from shard %u: %d (%s)", s, rc, pith_strerror(rc));
    }
    for (unsigned s = 0; s < 3; s++) {
        TEST_WAIT_FOR(atomic_load(&act_shard[vidx(&v[s])]) != 0);
        cr_assert_eq(atomic_load(&act_shard[vidx(&v[s])]) - 1, (int)s,
                     "key " KEYF " (directory %u), first sent from shard %u, activated on %d",
                     KEYA(v[s]), pith_vref_shard(&v[s]), s,
                     atomic_load(&act_shard[vidx(&v[s])]) - 1);
        pith_vactor_info_t info = info_at(&v[s], s);
        cr_assert_neq(info.dir_shard, s);
        cr_assert_eq(info.placement, PITH_PLACE_LOCAL, "placement %u", info.placement);
        cr_assert_eq(info.moves, 0);
        struct greply r = ask_get(&v[s]);
        cr_assert_eq(r.n, 1, "key " KEYF " counted %llu", KEYA(v[s]), (unsigned long long)r.n);
        cr_assert_eq(r.shard, (int32_t)s);
    }
    cr_assert_eq(atomic_load(&act_calls[PITH_VACT_MESSAGE]), 3);

    /* An actor's first message: the actor's shard. */
    pith_ref_t fwd = fwd_on(1);
    pith_vref_t a = key_find(&local_type, "L", &next, -1, 1, -1);
    cr_assert_eq(pith_client_send(pith_client_self(), fwd, FWD, &a, sizeof(a), PITH_FOREVER), 0);
    TEST_WAIT_FOR(atomic_load(&act_shard[vidx(&a)]) != 0);
    cr_assert_eq(info_at(&a, 1).placement, PITH_PLACE_LOCAL);
    cr_assert_eq(ask_get(&a).n, 1);

    /* A client's first message: the key's directory shard. */
    pith_vref_t c = key_find(&local_type, "L", &next, 2, -1, -1);
    struct greply r = ask_get(&c);
    cr_assert_eq(r.shard, 2,
                 "a client's first message placed key " KEYF " on %d, not on its "
                 "directory shard 2",
                 KEYA(c), r.shard);
    cr_assert_eq(r.n, 0);
    cr_assert_eq(info_at(&c, 2).placement, PITH_PLACE_LOCAL);

    pith_vtype_stats_t st = stats_of(&local_type);
    cr_assert_eq(st.activations, 5);
    cr_assert_eq(st.live, 5);
    cr_assert_eq(st.remote, 4, "remote %llu: four keys live off their directory shard",
                 (unsigned long long)st.remote);
    cr_assert_gt(st.forwards, 0, "the client's asks to remote activations were forwarded");

    /* Sends from the activation's own shard are taken there, without the directory, once the
     * shard has heard back from it. Until then they go through the directory, and a fast loop
     * of them can find the mesh full: what it refused was not sent, and is not counted. */
    uint64_t more = 0;
    TEST_WAIT_WITH((more += send_some_from(0, &v[0], 16), st = stats_of(&local_type)),
                   st.direct > 0);
    cr_assert_eq(ask_get(&v[0]).n, 1 + more, "every one of them counted, in one activation");
    cr_assert_eq(stats_of(&local_type).activations, 5);
    test_assert_no_error(&beh_err);
    cr_assert_eq(atomic_load(&notices), 0);
    stop();
    cr_assert_eq(atomic_load(&deacts[PITH_VDEACT_SHUTDOWN]), 5);
}

Test(vactor_place, fn_places_where_place_says_and_out_of_range_means_the_directory, .timeout = 60)
{
    start(3);
    unsigned next = 0;
    /* place says 2: from a third shard (neither 2 nor the directory). */
    pith_vref_t a = key_find(&fn_type, "2-", &next, -1, 2, -1);
    unsigned da = pith_vref_shard(&a), s = 0;
    while (s == 2 || s == da)
        s++;
    cr_assert_eq(send_from(s, &a, ADD, 1, 1), 0);
    TEST_WAIT_FOR(atomic_load(&act_shard[vidx(&a)]) != 0);
    cr_assert_eq(info_at(&a, 2).placement, PITH_PLACE_FN);
    cr_assert_eq(atomic_load(&place_sender_of[vidx(&a)]), s, "place() was told sender %u, not %u",
                 atomic_load(&place_sender_of[vidx(&a)]), s);
    cr_assert_eq(atomic_load(&place_shards), 3);
    cr_assert_eq(ask_get(&a).n, 1);

    /* Out of range (99, UINT_MAX): the directory shard. */
    pith_vref_t x = key_find(&fn_type, "x-", &next, -1, -1, -1);
    unsigned dx = pith_vref_shard(&x);
    cr_assert_eq(send_from((dx + 1) % 3, &x, ADD, 1, 1), 0);
    TEST_WAIT_FOR(atomic_load(&act_shard[vidx(&x)]) != 0);
    cr_assert_eq(atomic_load(&act_shard[vidx(&x)]) - 1, (int)dx,
                 "place() answered 99: activated on %d, not the directory shard %u",
                 atomic_load(&act_shard[vidx(&x)]) - 1, dx);
    cr_assert_eq(info_at(&x, dx).placement, PITH_PLACE_FN);
    pith_vref_t u = key_find(&fn_type, "u-", &next, -1, -1, -1);
    struct greply r = ask_get(&u);
    cr_assert_eq(r.shard, (int32_t)pith_vref_shard(&u),
                 "place() answered UINT_MAX: activated on %d, not the directory shard %u", r.shard,
                 pith_vref_shard(&u));
    cr_assert_eq(atomic_load(&place_sender_of[vidx(&u)]), UINT_MAX,
                 "a client's message: sender UINT_MAX, got %u",
                 atomic_load(&place_sender_of[vidx(&u)]));

    /* A client's message to a key place() puts on 1. */
    pith_vref_t one = key_find(&fn_type, "1-", &next, -1, 1, -1);
    r = ask_get(&one);
    cr_assert_eq(r.shard, 1);
    cr_assert_eq(info_at(&one, 1).placement, PITH_PLACE_FN);
    cr_assert_eq(atomic_load(&place_sender_of[vidx(&one)]), UINT_MAX);

    /* A pre-warm from outside: sender UINT_MAX, activated where place() says. */
    pith_vref_t w = key_find(&fn_type, "0-", &next, -1, 0, -1);
    cr_assert_eq(pith_vactor_prewarm(&w), 0);
    TEST_WAIT_FOR(atomic_load(&act_shard[vidx(&w)]) != 0);
    cr_assert_eq(atomic_load(&act_shard[vidx(&w)]) - 1, 0);
    cr_assert_eq(atomic_load(&act_calls[PITH_VACT_PREWARM]), 1);
    cr_assert_eq(atomic_load(&place_sender_of[vidx(&w)]), UINT_MAX);
    cr_assert_eq(info_at(&w, 0).placement, PITH_PLACE_FN);

    /* place() answering the sender's own shard. */
    pith_vref_t sk = key_find(&fn_type, "s-", &next, -1, -1, -1);
    unsigned ss = (pith_vref_shard(&sk) + 2) % 3;
    cr_assert_eq(send_from(ss, &sk, ADD, 1, 1), 0);
    TEST_WAIT_FOR(atomic_load(&act_shard[vidx(&sk)]) != 0);
    cr_assert_eq(info_at(&sk, ss).placement, PITH_PLACE_FN);

    pith_vtype_stats_t st = stats_of(&fn_type);
    cr_assert_eq(atomic_load(&place_calls), 6, "place() ran %llu times for 6 activations",
                 (unsigned long long)atomic_load(&place_calls));
    cr_assert_eq(atomic_load(&place_off_dir), 0,
                 "place() ran %llu times on another shard than the key's directory",
                 (unsigned long long)atomic_load(&place_off_dir));
    cr_assert_eq(st.activations, 6);
    cr_assert_eq(st.live, 6);
    cr_assert_eq(st.prewarms, 1);
    cr_assert_eq(st.remote, 4, "remote %llu", (unsigned long long)st.remote);
    test_assert_no_error(&beh_err);
    stop();
}

/* Where the least loaded of the shards in mask is: ties go to dir (when in mask), then to the
 * lowest. */
static unsigned least_of(const unsigned *load, unsigned shards, unsigned mask, unsigned dir)
{
    unsigned min = UINT_MAX;
    for (unsigned s = 0; s < shards; s++)
        if ((mask >> s & 1u) && load[s] < min)
            min = load[s];
    if ((mask >> dir & 1u) && load[dir] == min)
        return dir;
    for (unsigned s = 0; s < shards; s++)
        if ((mask >> s & 1u) && load[s] == min)
            return s;
    return dir;
}

/* Activates n fresh keys of t one at a time (a client's ask each) and checks each lands where
 * least_of says; counts them in load and notes where in where[]. */
static void place_in_turn(const pith_vtype_t *t, const char *prefix, unsigned *next, unsigned n,
                          unsigned mask, unsigned *load, pith_vref_t *keys, unsigned *where,
                          uint32_t placement)
{
    unsigned shards = pith_shard_count();
    for (unsigned i = 0; i < n; i++) {
        pith_vref_t v = key_find(t, prefix, next, -1, -1, -1);
        unsigned dir = pith_vref_shard(&v), want = least_of(load, shards, mask, dir);
        struct greply r = ask_get(&v);
        cr_assert_eq(r.shard, (int32_t)want,
                     "%s key " KEYF " (directory %u) activated on %d with loads %u/%u/%u, not %u",
                     t->name, KEYA(v), dir, r.shard, load[0], load[1], shards > 2 ? load[2] : 0,
                     want);
        pith_vactor_info_t info = info_at(&v, want);
        cr_assert_eq(info.placement, placement, "placement %u", info.placement);
        load[want]++;
        keys[i] = v;
        where[i] = want;
    }
}

Test(vactor_place, least_loaded_places_on_the_shard_with_fewest_activations, .timeout = 60)
{
    start(2);
    unsigned next = 0, load[3] = {0, 0, 0}, where[32];
    pith_vref_t keys[32];
    /* One at a time: each key goes to the shard with fewer; ties to its directory. */
    place_in_turn(&least_type, "LL", &next, 10, 3u, load, keys, where, PITH_PLACE_LEAST_LOADED);
    cr_assert_eq(load[0], 5);
    cr_assert_eq(load[1], 5);
    /* Those on shard 1 go: shard 0 keeps five, and the next five go to shard 1 whatever their
     * directory. */
    unsigned off = 0;
    for (unsigned i = 0; i < 10; i++) {
        if (where[i] == 1) {
            vsend_ok(&keys[i], OFF, 0);
            off++;
        }
    }
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_SELF]) == off && stats_of(&least_type).live == 5);
    load[1] = 0;
    unsigned dirs[2] = {0, 0};
    place_in_turn(&least_type, "LL", &next, 5, 3u, load, keys + 10, where + 10,
                  PITH_PLACE_LEAST_LOADED);
    for (unsigned i = 10; i < 15; i++) {
        cr_assert_eq(where[i], 1);
        dirs[pith_vref_shard(&keys[i])]++;
    }
    cr_log_info("least loaded: of the five placed on shard 1, %u had directory 0\n", dirs[0]);
    place_in_turn(&least_type, "LL", &next, 4, 3u, load, keys + 15, where + 15,
                  PITH_PLACE_LEAST_LOADED);
    pith_vtype_stats_t st = stats_of(&least_type);
    cr_assert_eq(st.live, 14);
    cr_assert_eq(st.activations, 19);
    stop();
}

static bool cpu_in_list(const char *list, int cpu)
{
    const char *p = list;
    while (*p != '\0') {
        char *end;
        long a = strtol(p, &end, 10), b;
        if (end == p)
            break;
        b = a;
        if (*end == '-') {
            p = end + 1;
            b = strtol(p, &end, 10);
        }
        if (cpu >= a && cpu <= b)
            return true;
        p = end;
        if (*p != ',')
            break;
        p++;
    }
    return false;
}

/* The shards whose CPU is on NUMA node 0 (sysfs), all of them when that is unknown or none. */
static unsigned node0_shards(unsigned shards)
{
    unsigned all = (1u << shards) - 1, mask = 0;
    FILE *f = fopen("/sys/devices/system/node/node0/cpulist", "r");
    if (f == NULL)
        return all;
    char line[4096];
    bool got = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    if (!got)
        return all;
    for (unsigned s = 0; s < shards; s++) {
        pith_shard_stats_t ss;
        cr_assert_eq(pith_shard_stats(s, &ss), 0);
        if (ss.cpu < 0)
            return all;
        if (cpu_in_list(line, ss.cpu))
            mask |= 1u << s;
    }
    return mask != 0 ? mask : all;
}

Test(vactor_place, numa_places_among_the_nodes_shards_and_an_absent_node_means_all, .timeout = 60)
{
    start(2);
    unsigned mask = node0_shards(2);
    cr_log_info("numa: shards on node 0: mask %#x\n", mask);
    unsigned next = 0, load[3] = {0, 0, 0}, where[16];
    pith_vref_t keys[16];
    place_in_turn(&numa0_type, "N", &next, 8, mask, load, keys, where, PITH_PLACE_NUMA);
    unsigned far[3] = {0, 0, 0};
    place_in_turn(&numa_far_type, "N", &next, 8, 3u, far, keys, where, PITH_PLACE_NUMA);
    cr_assert_eq(far[0], 4, "no node 999: spread over all shards");
    cr_assert_eq(far[1], 4);
    cr_assert_eq(stats_of(&numa0_type).live, 8);
    cr_assert_eq(stats_of(&numa_far_type).live, 8);
    stop();
}

Test(vactor_place, register_refuses_unknown_placements_and_fn_without_place, .timeout = 30)
{
    static const pith_vtype_t unknown = {
        .name = "place.bad", .actor = &p_actor, .placement = (pith_placement_t)99};
    static const pith_vtype_t huge = {
        .name = "place.bad", .actor = &p_actor, .placement = (pith_placement_t)-1};
    static const pith_vtype_t migrated = {
        .name = "place.bad", .actor = &p_actor, .placement = PITH_PLACE_MIGRATED};
    static const pith_vtype_t rebalanced = {
        .name = "place.bad", .actor = &p_actor, .placement = PITH_PLACE_REBALANCED};
    static const pith_vtype_t fn_null = {
        .name = "place.bad", .actor = &p_actor, .placement = PITH_PLACE_FN};
    cr_assert_eq(pith_vtype_register(&unknown), -EINVAL, "placement 99: %d",
                 pith_vtype_register(&unknown));
    cr_assert_eq(pith_vtype_register(&huge), -EINVAL);
    cr_assert_eq(pith_vtype_register(&migrated), -EINVAL, "PITH_PLACE_MIGRATED: %d",
                 pith_vtype_register(&migrated));
    cr_assert_eq(pith_vtype_register(&rebalanced), -EINVAL, "PITH_PLACE_REBALANCED: %d",
                 pith_vtype_register(&rebalanced));
    cr_assert_eq(pith_vtype_register(&fn_null), -EINVAL, "PITH_PLACE_FN without place: %d",
                 pith_vtype_register(&fn_null));
    pith_vref_t v;
    cr_assert_eq(pith_vref(&fn_null, "k", 1, &v), -ENOENT, "a refused type is not registered");
    /* A refused type leaves its name free. */
    static const pith_vtype_t fine = {
        .name = "place.bad", .actor = &p_actor, .placement = PITH_PLACE_FN, .place = place_pick};
    cr_assert_eq(pith_vtype_register(&fine), 0);
    /* Every placement the tests use, and again (a no-op). */
    register_all();
    register_all();
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    cr_assert_eq(pith_vref(&fine, "k", 1, &v), 0);
    cr_assert_lt(pith_vref_shard(&v), 2u);
    stop();
}

/* ---- per-sender order to remote activations ---- */

/* A task that sends SEQ total..: burst at a time, then again after whatever else waits. */
struct seq_task {
    const pith_vref_t *v;
    unsigned shard;
    uint32_t sender, total, next, burst;
    _Atomic int done;
    test_error_t *err;
};

static void seq_task_fn(void *arg)
{
    struct seq_task *q = arg;
    for (uint32_t i = 0; i < q->burst && q->next < q->total; i++) {
        uint64_t x = (uint64_t)q->sender << 32 | q->next;
        int rc = pith_vsend(q->v, SEQ, &x, sizeof(x));
        if (rc == -EAGAIN)
            break; /* the mesh pushes back: the same number goes next time */
        if (rc != 0) {
            TEST_NOTE(q->err, rc);
            atomic_store(&q->done, 1);
            return;
        }
        q->next++;
    }
    if (q->next < q->total) {
        int rc = pith_submit(q->shard, seq_task_fn, q);
        if (rc == 0)
            return;
        TEST_NOTE(q->err, rc);
    }
    atomic_store(&q->done, 1);
}

/* A thread outside the engine that sends SEQ 0..total: through its own client
 * (pith_client_open) or through the thread's, where `mixed` sends the odd numbers with
 * pith_vsend and the even with pith_client_vsend (one client: one sender). */
struct seq_out {
    const pith_vref_t *v;
    uint32_t sender, total, sent;
    bool mixed, own_client;
    test_error_t *err;
};

static void *seq_out_fn(void *arg)
{
    struct seq_out *q = arg;
    pith_client_t *c = q->own_client ? pith_client_open(NULL) : pith_client_self();
    if (c == NULL) {
        TEST_NOTE(q->err, -errno);
        return NULL;
    }
    for (uint32_t i = 0; i < q->total; i++) {
        uint64_t x = (uint64_t)q->sender << 32 | i;
        int rc;
        if (q->mixed && (i & 1u)) {
            uint64_t end = pith_now_ns() + 20 * SEC;
            while ((rc = pith_vsend(q->v, SEQ, &x, sizeof(x))) == -EAGAIN && pith_now_ns() < end)
                sched_yield(); /* the lane is full: the same number again */
        } else {
            rc = pith_client_vsend(c, q->v, SEQ, &x, sizeof(x), PITH_FOREVER);
        }
        if (rc != 0) {
            TEST_NOTE(q->err, rc);
            break;
        }
        q->sent++;
    }
    if (q->own_client)
        pith_client_close(c);
    return NULL;
}

static uint64_t seen_total(void);

/* Waits (up to test_wait_deadline) for want messages seen, or reported undelivered; what is
 * missing is reported by assert_in_order after. */
static void wait_seen(uint64_t want)
{
    uint64_t deadline = test_wait_deadline();
    while (seen_total() + atomic_load(&notices) < want && pith_now_ns() < deadline)
        test_sync_all();
    test_sync_all();
}

/* The type's counters, for a failure's message; forwards and returned read twice, 100 ms
 * apart: messages still going round show as counts that grow. */
static const char *stats_line(const pith_vtype_t *t)
{
    static char line[512];
    pith_vtype_stats_t a, b;
    if (pith_vtype_stats(t, &a) != 0)
        return "(no stats)";
    pith_msg_t m;
    (void)pith_client_receive(pith_client_self(), &m, 100 * MS);
    if (pith_vtype_stats(t, &b) != 0)
        return "(no stats)";
    snprintf(line, sizeof(line),
             "%s: activations %llu, live %llu, deactivations self %llu idle %llu, remote %llu, "
             "moves %llu (failed %llu), forwards %llu (%llu 100 ms later), returned %llu (%llu "
             "100 ms later), direct %llu; notices of undelivered messages %llu (reason %d)",
             t->name, (unsigned long long)a.activations, (unsigned long long)a.live,
             (unsigned long long)a.deactivations[PITH_VDEACT_SELF],
             (unsigned long long)a.deactivations[PITH_VDEACT_IDLE], (unsigned long long)a.remote,
             (unsigned long long)a.migrations, (unsigned long long)a.migrate_failed,
             (unsigned long long)a.forwards, (unsigned long long)b.forwards,
             (unsigned long long)a.returned, (unsigned long long)b.returned,
             (unsigned long long)a.direct, (unsigned long long)atomic_load(&notices),
             atomic_load(&notice_reason));
    return line;
}

static void assert_in_order(const pith_vtype_t *t, const uint32_t *sent, unsigned senders)
{
    bool ok = atomic_load(&seq_bad) == 0;
    for (unsigned i = 0; i < senders; i++)
        ok = ok && atomic_load(&seq_seen[i]) == sent[i];
    const char *line = ok ? "" : stats_line(t);
    cr_assert_eq(atomic_load(&seq_bad), 0,
                 "%llu messages out of order; the first: sender %u's %u came when %u was due "
                 "(%s)",
                 (unsigned long long)atomic_load(&seq_bad),
                 (unsigned)(atomic_load(&seq_bad_got) >> 32), (uint32_t)atomic_load(&seq_bad_got),
                 (uint32_t)atomic_load(&seq_bad_want), line);
    for (unsigned i = 0; i < senders; i++)
        cr_assert_eq(atomic_load(&seq_seen[i]), sent[i], "sender %u: %llu seen of %u sent (%s)", i,
                     (unsigned long long)atomic_load(&seq_seen[i]), sent[i], line);
    cr_assert_eq(atomic_load(&notices), 0, "%llu messages came back undelivered (reason %d)",
                 (unsigned long long)atomic_load(&notices), atomic_load(&notice_reason));
}

static uint64_t seen_total(void)
{
    uint64_t n = 0;
    for (int i = 0; i < SENDERS; i++)
        n += atomic_load(&seq_seen[i]);
    return n;
}

Test(vactor_place, senders_keep_their_order_to_a_remote_activation_that_deactivates_every_n,
     .timeout = 90)
{
    atomic_store(&off_every, 37);
    start(3);
    unsigned next = 0;
    pith_vref_t v = key_find(&lfifo_type, "F", &next, -1, -1, -1);
    unsigned dir = pith_vref_shard(&v), first = (dir + 1) % 3;
    /* Activated off its directory first; each later activation goes where its first message
     * came from. */
    cr_assert_eq(send_from(first, &v, ADD, 0, 1), 0);
    cr_assert_eq(info_at(&v, first).placement, PITH_PLACE_LOCAL);
    test_error_t err = {0};
    uint32_t per = (uint32_t)scaled(2000) < 200 ? 200 : (uint32_t)scaled(2000);
    struct seq_task tasks[3];
    for (unsigned s = 0; s < 3; s++) {
        tasks[s] = (struct seq_task){
            .v = &v, .shard = s, .sender = s, .total = per, .burst = 16, .err = &err};
        cr_assert_eq(pith_submit(s, seq_task_fn, &tasks[s]), 0);
    }
    struct seq_out own = {.v = &v, .sender = 4, .total = per, .own_client = true, .err = &err};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, seq_out_fn, &own), 0);
    struct seq_out mine = {.v = &v, .sender = 3, .total = per, .mixed = true, .err = &err};
    seq_out_fn(&mine); /* this thread: pith_vsend and pith_client_vsend in turn */
    pthread_join(t, NULL);
    TEST_WAIT_FOR(atomic_load(&tasks[0].done) && atomic_load(&tasks[1].done) &&
                  atomic_load(&tasks[2].done));
    test_assert_no_error(&err);
    uint32_t sent[5] = {tasks[0].next, tasks[1].next, tasks[2].next, mine.sent, own.sent};
    uint64_t want = 5ull * per;
    wait_seen(want);
    assert_in_order(&lfifo_type, sent, 5);
    test_assert_no_error(&beh_err);
    pith_vtype_stats_t st = stats_of(&lfifo_type);
    cr_assert_gt(st.activations, 10, "only %llu activations", (unsigned long long)st.activations);
    cr_assert_eq(st.deactivations[PITH_VDEACT_SELF] + st.live, st.activations);
    cr_assert_eq(st.activations, atomic_load(&began_fresh));
    cr_assert_geq(st.remote, 1);
    cr_assert_gt(st.forwards, 0);
    cr_log_info("lfifo: %llu activations, %llu remote, %llu forwards, %llu direct, %llu returned\n",
                (unsigned long long)st.activations, (unsigned long long)st.remote,
                (unsigned long long)st.forwards, (unsigned long long)st.direct,
                (unsigned long long)st.returned);
    stop();
}

static const pith_vref_t *flick_first;

static void flick_first_add(void *arg)
{
    int rc = pith_vsend(flick_first, ADD, &(uint64_t){1}, sizeof(uint64_t));
    if (rc != 0)
        TEST_NOTE((test_error_t *)arg, rc);
}

Test(vactor_place, idle_deactivation_racing_senders_on_every_shard_loses_nothing_and_keeps_order,
     .timeout = 90)
{
    start(3);
    unsigned next = 0;
    pith_vref_t v = key_find(&flick_type, "K", &next, -1, -1, -1);
    test_error_t err = {0};
    /* The first activation is placed off the directory shard by a sender there (which one
     * wins each later round is the loops' timing: under valgrind it may be none of them). */
    flick_first = &v;
    cr_assert_eq(pith_submit((pith_vref_shard(&v) + 1) % 3, flick_first_add, &err), 0);
    TEST_WAIT_FOR(stats_of(&flick_type).remote == 1);
    uint32_t rounds = (uint32_t)scaled(80) < 12 ? 12 : (uint32_t)scaled(80);
    struct test_flick f[4];
    for (uint32_t i = 0; i < 4; i++)
        f[i] = (struct test_flick){.v = &v,
                                   .seq_type = SEQ,
                                   .own_ns = 300 * 1000,
                                   .sender = i,
                                   .rounds = rounds,
                                   .burst = 12,
                                   .err = &err};
    test_flick_t0 = pith_now_ns() + 5 * MS;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, test_flick_outside, &f[3]), 0);
    for (unsigned s = 0; s < 3; s++)
        cr_assert_eq(pith_submit(s, test_flick_fn, &f[s]), 0);
    pthread_join(t, NULL);
    TEST_WAIT_FOR(atomic_load(&f[0].done) && atomic_load(&f[1].done) && atomic_load(&f[2].done));
    test_assert_no_error(&err);
    uint32_t sent[4] = {f[0].seq, f[1].seq, f[2].seq, f[3].seq};
    wait_seen((uint64_t)sent[0] + sent[1] + sent[2] + sent[3]);
    assert_in_order(&flick_type, sent, 4);
    TEST_WAIT_FOR(stats_of(&flick_type).live == 0);
    pith_vtype_stats_t st = stats_of(&flick_type);
    cr_assert_eq(st.activations, atomic_load(&began_fresh));
    cr_assert_eq(atomic_load(&began_fresh), deacts_total(), "every activation that began ended");
    /* Under valgrind the pauses between bursts shrink against its slowness: one may be all. */
    cr_assert_geq(st.deactivations[PITH_VDEACT_IDLE], test_on_valgrind() ? 1 : 2,
                  "idle deactivations: %llu",
                  (unsigned long long)st.deactivations[PITH_VDEACT_IDLE]);
    cr_assert_geq(st.remote, 1, "no activation was placed off the directory shard");
    cr_log_info("flick: %llu activations, %llu idle, %llu remote, %llu forwards, %llu direct, "
                "%llu returned\n",
                (unsigned long long)st.activations,
                (unsigned long long)st.deactivations[PITH_VDEACT_IDLE],
                (unsigned long long)st.remote, (unsigned long long)st.forwards,
                (unsigned long long)st.direct, (unsigned long long)st.returned);
    stop();
}

/* ---- exactly one activation ---- */

#define STORM_KEYS 64

struct storm {
    unsigned rounds, shift;
    _Atomic uint64_t *sent; /* accepted, per key */
    _Atomic int done;
    test_error_t *err;
};

static _Atomic uint64_t storm_sent[STORM_KEYS];

static void storm_fn(void *arg)
{
    struct storm *q = arg;
    uint64_t one = 1;
    for (unsigned r = 0; r < q->rounds; r++) {
        for (unsigned j = 0; j < STORM_KEYS; j++) {
            unsigned k = (j + q->shift) % STORM_KEYS;
            char key[16];
            int kl = snprintf(key, sizeof(key), "S%u", k);
            pith_vref_t v;
            int rc = pith_vref(&storm_type, key, (size_t)kl, &v);
            if (rc == 0)
                rc = pith_vsend(&v, ADD, &one, sizeof(one));
            if (rc == 0)
                atomic_fetch_add(&q->sent[k], 1);
            else if (rc != -EAGAIN)
                TEST_NOTE(q->err, rc);
        }
    }
    atomic_store(&q->done, 1);
}

static void *storm_outside(void *arg)
{
    struct storm *q = arg;
    uint64_t one = 1;
    for (unsigned r = 0; r < q->rounds; r++) {
        for (unsigned j = 0; j < STORM_KEYS; j++) {
            unsigned k = (STORM_KEYS - 1 - j + q->shift) % STORM_KEYS;
            char key[16];
            int kl = snprintf(key, sizeof(key), "S%u", k);
            pith_vref_t v;
            int rc = pith_vref(&storm_type, key, (size_t)kl, &v);
            if (rc == 0)
                rc =
                    pith_client_vsend(pith_client_self(), &v, ADD, &one, sizeof(one), PITH_FOREVER);
            if (rc == 0)
                atomic_fetch_add(&q->sent[k], 1);
            else
                TEST_NOTE(q->err, rc);
        }
    }
    atomic_store(&q->done, 1);
    return NULL;
}

Test(vactor_place, first_messages_from_every_shard_and_outside_make_one_local_activation_per_key,
     .timeout = 90)
{
    start(4); /* more shards than CPUs: interleavings vary more */
    test_error_t err = {0};
    struct storm q[6];
    for (unsigned i = 0; i < 6; i++)
        q[i] = (struct storm){.rounds = 10, .shift = i * 11, .sent = storm_sent, .err = &err};
    pthread_t t[2];
    for (unsigned s = 0; s < 4; s++)
        cr_assert_eq(pith_submit(s, storm_fn, &q[s]), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, storm_outside, &q[4 + i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    TEST_WAIT_FOR(atomic_load(&q[0].done) && atomic_load(&q[1].done) && atomic_load(&q[2].done) &&
                  atomic_load(&q[3].done));
    test_assert_no_error(&err);
    for (unsigned k = 0; k < STORM_KEYS; k++) {
        char key[16];
        snprintf(key, sizeof(key), "S%u", k);
        pith_vref_t v = vref_of(&storm_type, key);
        uint64_t sent = atomic_load(&storm_sent[k]);
        struct greply r = ask_get(&v);
        TEST_WAIT_WITH(r = ask_get(&v), r.n >= sent);
        cr_assert_eq(r.n, sent, "key %s counted %llu of %llu", key, (unsigned long long)r.n,
                     (unsigned long long)sent);
        cr_assert_eq(atomic_load(&act_fresh[k]), 1, "key %s activated %u times", key,
                     atomic_load(&act_fresh[k]));
        int sh = atomic_load(&act_shard[k]) - 1;
        cr_assert_eq(r.shard, sh, "key %s answered from shard %d, activated on %d", key, r.shard,
                     sh);
        pith_vactor_info_t info = info_at(&v, (unsigned)sh);
        cr_assert_eq(info.placement, PITH_PLACE_LOCAL);
    }
    pith_vtype_stats_t st = stats_of(&storm_type);
    cr_assert_eq(st.live, STORM_KEYS, "live %llu", (unsigned long long)st.live);
    cr_assert_eq(st.activations, STORM_KEYS, "activations %llu",
                 (unsigned long long)st.activations);
    cr_assert_eq(atomic_load(&act_calls[PITH_VACT_MESSAGE]), STORM_KEYS,
                 "on_activate ran %llu times for %u keys",
                 (unsigned long long)atomic_load(&act_calls[PITH_VACT_MESSAGE]), STORM_KEYS);
    cr_assert_eq(deacts_total(), 0);
    cr_log_info("storm: %llu of %u keys placed off their directory shard\n",
                (unsigned long long)st.remote, STORM_KEYS);
    stop();
}

/* ---- a remote activation that fails, or finishes later ---- */

Test(vactor_place, a_remote_activation_that_fails_fails_the_ask_and_the_next_message_retries,
     .timeout = 60)
{
    start(3);
    unsigned next = 0;
    pith_vref_t v = key_find(&fail_type, "E", &next, -1, -1, -1);
    unsigned dir = pith_vref_shard(&v), there = (dir + 1) % 3;
    atomic_store(&fail_next, 1);
    struct greply r;
    int rc = try_ask(&v, &r);
    cr_assert_eq(rc, -EIO, "the client's ask ends with on_activate's error, got %d (%s)", rc,
                 pith_strerror(rc));
    cr_assert_eq(atomic_load(&fail_tries), 1);
    cr_assert_eq(atomic_load(&act_shard[vidx(&v)]) - 1, (int)there,
                 "the failed try ran on shard %d, not %u", atomic_load(&act_shard[vidx(&v)]) - 1,
                 there);
    pith_vtype_stats_t st = stats_of(&fail_type);
    cr_assert_eq(st.activate_failed, 1);
    cr_assert_eq(st.activations, 0);
    pith_vactor_info_t info = info_of(&v);
    TEST_WAIT_WITH(info = info_of(&v), !info.active);
    r = ask_get(&v);
    cr_assert_eq(r.n, 0);
    cr_assert_eq(r.shard, (int32_t)there);
    cr_assert_eq(info_at(&v, there).placement, PITH_PLACE_FN);

    /* From a task of each shard, with a callback: the ask fails (at once or through its
     * callback), and the next one activates. */
    for (unsigned s = 0; s < 3; s++) {
        pith_vref_t w = key_find(&fail_type, "E", &next, -1, -1, -1);
        atomic_store(&fail_next, 1);
        cbs_reset();
        struct task_ask q = {.v = &w, .slot = &cbs[0]};
        cr_assert_eq(pith_call_wait(s, task_ask_fn, &q, NULL), 0);
        if (q.rc == 0) {
            TEST_WAIT_FOR(atomic_load(&cbs[0].done) != 0);
            cr_assert_eq(atomic_load(&cbs[0].err), -EIO,
                         "from shard %u (directory %u): the ask ended with %d", s,
                         pith_vref_shard(&w), atomic_load(&cbs[0].err));
        } else {
            cr_assert_eq(q.rc, -EIO, "from shard %u: pith_vask %d", s, q.rc);
        }
        q.slot = &cbs[1];
        cr_assert_eq(pith_call_wait(s, task_ask_fn, &q, NULL), 0);
        cr_assert_eq(q.rc, 0, "from shard %u: the retry's pith_vask %d", s, q.rc);
        TEST_WAIT_FOR(atomic_load(&cbs[1].done) != 0);
        cr_assert_eq(atomic_load(&cbs[1].err), 0, "from shard %u: the retry ended with %d", s,
                     atomic_load(&cbs[1].err));
        cr_assert_eq(atomic_load(&cbs[1].n), 0);
        test_sync_all();
        cr_assert_leq(atomic_load(&cbs[0].done), 1, "a callback ran twice");
        cr_assert_eq(atomic_load(&cbs[1].done), 1, "a callback ran twice");
        info_at(&w, (pith_vref_shard(&w) + 1) % 3);
    }
    st = stats_of(&fail_type);
    cr_assert_eq(atomic_load(&fail_tries), 4);
    cr_assert_eq(st.activate_failed, 4);
    cr_assert_eq(st.activations, 4);
    cr_assert_eq(st.live, 4);
    cr_assert_eq(deacts_total(), 0, "on_deactivate never runs for one that never began");
    TEST_WAIT_FOR(atomic_load(&bufs_made) - atomic_load(&bufs_freed) == 4);
    cr_assert_eq(atomic_load(&bufs_made) - atomic_load(&bufs_freed), 4,
                 "terminate ran for each failed activation (%llu made, %llu released)",
                 (unsigned long long)atomic_load(&bufs_made),
                 (unsigned long long)atomic_load(&bufs_freed));
    stop();
}

struct finish {
    pith_ref_t ref;
    int err, rc;
};

static void *finish_fn(void *arg)
{
    struct finish *f = arg;
    f->rc = pith_vactor_activated(f->ref, f->err);
    return NULL;
}

static int finish_on(unsigned shard, pith_ref_t ref, int err)
{
    struct finish f = {ref, err, 12345};
    cr_assert_eq(pith_call_wait(shard, finish_fn, &f, NULL), 0);
    return f.rc;
}

struct asker {
    pith_vref_t v;
    int rc;
    uint64_t n;
};

static void *ask_thread(void *arg)
{
    struct asker *q = arg;
    pith_msg_t reply;
    q->rc = pith_client_vask(pith_client_self(), &q->v, GET, NULL, 0, 20 * SEC, &reply);
    if (q->rc == 0 && reply.len == sizeof(struct greply)) {
        struct greply r;
        memcpy(&r, reply.data, sizeof(r));
        q->n = r.n;
    }
    return NULL;
}

Test(vactor_place, a_remote_activation_finishes_later_and_what_waited_follows_in_order,
     .timeout = 60)
{
    start(3);
    unsigned next = 0;
    pith_vref_t v = key_find(&later_type, "W", &next, -1, -1, -1);
    unsigned dir = pith_vref_shard(&v), there = (dir + 1) % 3;
    for (int i = 0; i < 10; i++)
        vsend_ok(&v, ADD, 1);
    /* The adds have reached the directory (and gone on from it) before the ask, which another
     * client sends, leaves. */
    TEST_WAIT_FOR(atomic_load(&loading) != PITH_REF_NONE);
    test_sync_all();
    struct asker q = {.v = v, .rc = 12345};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, ask_thread, &q), 0);
    pith_ref_t ref = atomic_exchange(&loading, PITH_REF_NONE);
    cr_assert_eq(pith_ref_shard(ref), there, "activating on shard %u, not %u", pith_ref_shard(ref),
                 there);
    pith_vtype_stats_t st = stats_of(&later_type);
    cr_assert_eq(st.live, 1);
    cr_assert_eq(st.activations, 0, "not begun until it is finished");
    int rc = finish_on(dir, ref, 0);
    cr_assert_eq(rc, -EINVAL, "finished from its directory shard, not its own: %d", rc);
    cr_assert_eq(finish_on(there, ref, 0), 0);
    cr_assert_eq(finish_on(there, ref, 0), -EINVAL, "a second pith_vactor_activated");
    pthread_join(t, NULL);
    cr_assert_eq(q.rc, 0, "the ask: %d (%s)", q.rc, pith_strerror(q.rc));
    cr_assert_eq(q.n, 10, "the ask came after the ten adds, and saw %llu", (unsigned long long)q.n);
    cr_assert_eq(info_at(&v, there).placement, PITH_PLACE_FN);
    cr_assert_eq(stats_of(&later_type).activations, 1);

    /* A load that fails: what waited fails with its error; the next message tries again. */
    pith_vref_t w = key_find(&later_type, "W", &next, -1, -1, -1);
    unsigned wthere = (pith_vref_shard(&w) + 1) % 3;
    struct asker f = {.v = w, .rc = 12345};
    cr_assert_eq(pthread_create(&t, NULL, ask_thread, &f), 0);
    TEST_WAIT_FOR(atomic_load(&loading) != PITH_REF_NONE);
    ref = atomic_exchange(&loading, PITH_REF_NONE);
    cr_assert_eq(pith_ref_shard(ref), wthere);
    cr_assert_eq(finish_on(wthere, ref, -EIO), 0);
    pthread_join(t, NULL);
    cr_assert_eq(f.rc, -EIO, "the waiting ask ends with the load's error, got %d", f.rc);
    cr_assert_eq(stats_of(&later_type).activate_failed, 1);
    TEST_WAIT_FOR(stats_of(&later_type).live == 1);
    struct asker g = {.v = w, .rc = 12345};
    cr_assert_eq(pthread_create(&t, NULL, ask_thread, &g), 0);
    TEST_WAIT_FOR(atomic_load(&loading) != PITH_REF_NONE);
    ref = atomic_exchange(&loading, PITH_REF_NONE);
    cr_assert_eq(finish_on(pith_ref_shard(ref), ref, 0), 0);
    pthread_join(t, NULL);
    cr_assert_eq(g.rc, 0);
    cr_assert_eq(g.n, 0);
    cr_assert_eq(stats_of(&later_type).activations, 2);
    cr_assert_eq(deacts_total(), 0);
    stop();
}

/* ---- migration ---- */

Test(vactor_place, migrate_moves_the_state_intact_and_the_hooks_see_why, .timeout = 60)
{
    start(2);
    unsigned next = 0;
    pith_vref_t v = key_find(&mig_type, "M", &next, 0, -1, -1);
    vsend_ok(&v, ADD, 5);
    vsend_ok(&v, FILL, 77);
    struct greply r = ask_get(&v);
    cr_assert_eq(r.n, 5);
    cr_assert_eq(r.seed, 77);
    cr_assert_eq(r.shard, 0);
    pith_vactor_info_t info = info_at(&v, 0);
    cr_assert_eq(info.placement, PITH_PLACE_HASH);
    cr_assert_eq(info.moves, 0);

    mig_send(&v, 1, 0);
    cr_assert_eq(mig_answer(0), 0, "pith_vactor_migrate: %d", atomic_load(&mig_rc[0]));
    TEST_WAIT_FOR(atomic_load(&began_moved) == 1);
    cr_assert_eq(atomic_load(&deacts[PITH_VDEACT_MIGRATED]), 1);
    cr_assert_eq(atomic_load(&deact_moved_from) - 1, 0, "on_deactivate ran on shard %d",
                 atomic_load(&deact_moved_from) - 1);
    cr_assert_eq(atomic_load(&act_shard[vidx(&v)]) - 1, 1, "on_activate ran on shard %d",
                 atomic_load(&act_shard[vidx(&v)]) - 1);
    cr_assert_eq(atomic_load(&act_calls[PITH_VACT_MIGRATED]), 1);
    cr_assert_eq(atomic_load(&init_calls), 1, "init does not run for a move");
    cr_assert_eq(atomic_load(&term_calls), 0, "terminate does not run for a move");
    r = ask_get(&v);
    cr_assert_eq(r.n, 5, "the counter moved with it: %llu", (unsigned long long)r.n);
    cr_assert_eq(r.seed, 77);
    cr_assert_eq(r.shard, 1);
    cr_assert_eq(r.moves, 1);
    cr_assert_eq(r.handled, 5, "ADD, FILL, GET, MIG, GET: %llu", (unsigned long long)r.handled);
    info = info_at(&v, 1);
    cr_assert_eq(info.placement, PITH_PLACE_MIGRATED, "placement %u", info.placement);
    cr_assert_eq(info.moves, 1);

    /* To its own shard, and out of range. */
    mig_send(&v, 1, 1);
    mig_send(&v, 2, 2);
    mig_send(&v, UINT32_MAX, 3);
    cr_assert_eq(mig_answer(1), -EALREADY, "to its own shard: %d", atomic_load(&mig_rc[1]));
    cr_assert_eq(mig_answer(2), -EINVAL, "to shard 2 of 2: %d", atomic_load(&mig_rc[2]));
    cr_assert_eq(mig_answer(3), -EINVAL, "to shard UINT_MAX: %d", atomic_load(&mig_rc[3]));
    cr_assert_eq(ask_get(&v).shard, 1, "it stayed");
    cr_assert_eq(atomic_load(&began_moved), 1);

    /* Back home, with messages right behind the move. */
    vsend_ok(&v, ADD, 1);
    mig_send(&v, 0, 4);
    cr_assert_eq(mig_answer(4), 0);
    TEST_WAIT_FOR(atomic_load(&began_moved) == 2);
    vsend_ok(&v, ADD, 10);
    r = ask_get(&v);
    cr_assert_eq(r.n, 16, "%llu", (unsigned long long)r.n);
    cr_assert_eq(r.shard, 0);
    cr_assert_eq(r.moves, 2);
    info = info_at(&v, 0);
    cr_assert_eq(info.placement, PITH_PLACE_MIGRATED);
    cr_assert_eq(info.moves, 2);
    pith_vtype_stats_t st = stats_of(&mig_type);
    cr_assert_eq(st.migrations, 2);
    cr_assert_eq(st.migrate_failed, 0);
    cr_assert_eq(st.rebalances, 0);
    cr_assert_eq(st.live, 1);
    cr_assert_eq(deacts_total(), 2);

    /* A fresh activation starts over: no moves, placed as the type places. */
    vsend_ok(&v, OFF, 0);
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_SELF]) == 1);
    r = ask_get(&v);
    cr_assert_eq(r.n, 0);
    cr_assert_eq(r.moves, 0);
    info = info_at(&v, 0);
    cr_assert_eq(info.placement, PITH_PLACE_HASH, "placement %u", info.placement);
    cr_assert_eq(info.moves, 0, "moves %u after a fresh activation", info.moves);

    /* Not a virtual actor's activation: NULL, a plain actor, a stateless worker. */
    cr_assert_eq(pith_vactor_migrate(NULL, 0), -EINVAL);
    pith_ref_t plain = fwd_on(0);
    struct mig m = {1, 5};
    cr_assert_eq(pith_client_send(pith_client_self(), plain, MIG, &m, sizeof(m), PITH_FOREVER), 0);
    cr_assert_eq(mig_answer(5), -EINVAL, "a plain actor: %d", atomic_load(&mig_rc[5]));
    pith_vref_t pool = vref_of(&pool_type, "pool");
    mig_send(&pool, 1, 6);
    cr_assert_eq(mig_answer(6), -EINVAL, "a stateless worker: %d", atomic_load(&mig_rc[6]));
    cr_assert_eq(stats_of(&pool_type).migrations, 0);
    stop();
    cr_assert_eq(atomic_load(&deacts[PITH_VDEACT_SHUTDOWN]), 1);
}

/* ADD, MIG, ADD and GET from one client in a row: one turn may take them all, but the move
 * comes at MIG's boundary, so what came behind it is handled where it moved to. */
Test(vactor_place, a_move_happens_at_the_message_boundary_and_what_came_behind_follows_it,
     .timeout = 60)
{
    start(2);
    unsigned next = 0;
    pith_vref_t v = key_find(&mig_type, "T", &next, 0, -1, -1);
    cr_assert_eq(ask_get(&v).shard, 0);
    vsend_ok(&v, ADD, 1);
    mig_send(&v, 1, 0);
    vsend_ok(&v, ADD, 1);
    struct greply r = ask_get(&v);
    cr_assert_eq(mig_answer(0), 0);
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.shard, 1,
                 "the ADD and GET sent right after a MIG to shard 1 were handled on shard %d "
                 "(moves %u): the move did not happen at the message boundary",
                 r.shard, r.moves);
    cr_assert_eq(r.moves, 1);
    TEST_WAIT_FOR(atomic_load(&began_moved) == 1);
    cr_assert_eq(info_at(&v, 1).placement, PITH_PLACE_MIGRATED);
    stop();
}

Test(vactor_place, migration_under_load_keeps_each_senders_order_and_loses_nothing, .timeout = 120)
{
    atomic_store(&mig_every, 25);
    start(3);
    unsigned next = 0;
    pith_vref_t v = key_find(&mig_type, "U", &next, -1, -1, -1);
    vsend_ok(&v, FILL, 9);
    struct greply r = ask_get(&v);
    test_error_t err = {0};
    uint32_t per = (uint32_t)scaled(2000) < 200 ? 200 : (uint32_t)scaled(2000);
    struct seq_task tasks[3];
    for (unsigned s = 0; s < 3; s++) {
        tasks[s] = (struct seq_task){
            .v = &v, .shard = s, .sender = s, .total = per, .burst = 16, .err = &err};
        cr_assert_eq(pith_submit(s, seq_task_fn, &tasks[s]), 0);
    }
    struct seq_out mixed = {.v = &v, .sender = 3, .total = per, .mixed = true, .err = &err};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, seq_out_fn, &mixed), 0);
    struct seq_out mine = {.v = &v, .sender = 4, .total = per, .err = &err};
    seq_out_fn(&mine); /* this thread, through its own client */
    pthread_join(t, NULL);
    TEST_WAIT_FOR(atomic_load(&tasks[0].done) && atomic_load(&tasks[1].done) &&
                  atomic_load(&tasks[2].done));
    test_assert_no_error(&err);
    uint32_t sent[5] = {tasks[0].next, tasks[1].next, tasks[2].next, mixed.sent, mine.sent};
    uint64_t want = 5ull * per;
    wait_seen(want);
    r = ask_get(&v);
    assert_in_order(&mig_type, sent, 5);
    test_assert_no_error(&beh_err);
    cr_assert_eq(r.n, want, "the state counted %llu of %llu: it moved with every message",
                 (unsigned long long)r.n, (unsigned long long)want);
    cr_assert_eq(r.seed, 9);
    pith_vtype_stats_t st = stats_of(&mig_type);
    TEST_WAIT_WITH(st = stats_of(&mig_type),
                   atomic_load(&began_moved) + st.migrate_failed == st.migrations);
    cr_assert_eq(st.migrate_failed, 0);
    cr_assert_geq(st.migrations, want / 25 - 1, "%llu moves for %llu messages",
                  (unsigned long long)st.migrations, (unsigned long long)want);
    cr_assert_eq(r.moves, st.migrations, "the state arrived %u times of %llu moves", r.moves,
                 (unsigned long long)st.migrations);
    cr_assert_eq(atomic_load(&deacts[PITH_VDEACT_MIGRATED]), st.migrations);
    cr_assert_eq(atomic_load(&moved_to_mask), 7u, "moved to shards %#x: each of the three",
                 atomic_load(&moved_to_mask));
    cr_assert_eq(atomic_load(&began_fresh), 1, "one fresh activation: %llu",
                 (unsigned long long)atomic_load(&began_fresh));
    cr_assert_eq(st.activations, 1 + atomic_load(&began_moved),
                 "activations %llu: the fresh one and each arrival",
                 (unsigned long long)st.activations);
    cr_assert_gt(st.forwards, 0);
    cr_assert_gt(st.returned, 0, "no message was given back by a moving activation");
    pith_vactor_info_t info = info_at(&v, (unsigned)r.shard);
    cr_assert_eq(info.placement, PITH_PLACE_MIGRATED);
    cr_assert_eq(info.moves, st.migrations);
    cr_log_info("under load: %llu moves, %llu forwards, %llu direct, %llu returned\n",
                (unsigned long long)st.migrations, (unsigned long long)st.forwards,
                (unsigned long long)st.direct, (unsigned long long)st.returned);
    stop();
}

Test(vactor_place, a_move_into_a_shard_at_its_cap_evicts_an_idle_one_or_ends_with_none_idle,
     .timeout = 60)
{
    start(2);
    unsigned next = 0;
    pith_vref_t a = key_find(&cap_type, "C", &next, 1, -1, -1);
    pith_vref_t b = key_find(&cap_type, "C", &next, 0, -1, -1);
    cr_assert_eq(ask_get(&a).shard, 1);
    vsend_ok(&b, ADD, 5);
    cr_assert_eq(ask_get(&b).shard, 0);
    /* Shard 1 is at its cap of one, with a idle: a makes room. */
    mig_send(&b, 1, 0);
    cr_assert_eq(mig_answer(0), 0);
    TEST_WAIT_FOR(atomic_load(&began_moved) == 1 || stats_of(&cap_type).migrate_failed != 0);
    cr_assert_eq(stats_of(&cap_type).migrate_failed, 0, "the move failed with one idle there");
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_CAP]) == 1);
    struct greply r = ask_get(&b);
    cr_assert_eq(r.shard, 1);
    cr_assert_eq(r.n, 5);
    pith_vactor_info_t info = info_of(&a);
    cr_assert_not(info.active, "a was deactivated to make room");
    cr_assert_eq(stats_of(&cap_type).live, 1);

    /* Shard 1 at its cap with none idle: d sends itself HOLD for as long as hold is set. */
    vsend_ok(&b, OFF, 0);
    TEST_WAIT_FOR(atomic_load(&deacts[PITH_VDEACT_SELF]) == 1 && stats_of(&cap_type).live == 0);
    pith_vref_t d = key_find(&cap_type, "C", &next, 1, -1, -1);
    pith_vref_t c = key_find(&cap_type, "C", &next, 0, -1, -1);
    atomic_store(&hold, 1);
    vsend_ok(&d, HOLD, 0);
    info_at(&d, 1);
    vsend_ok(&c, ADD, 7);
    cr_assert_eq(ask_get(&c).shard, 0);
    mig_send(&c, 1, 1);
    cr_assert_eq(mig_answer(1), 0, "the move is asked for: %d", atomic_load(&mig_rc[1]));
    TEST_WAIT_FOR(stats_of(&cap_type).migrate_failed == 1);
    TEST_WAIT_WITH(info = info_of(&c), !info.active);
    int rc = try_ask(&c, &r);
    if (rc != 0) {
        pith_vtype_stats_t now = stats_of(&cap_type);
        info = info_of(&c);
        pith_vactor_info_t id = info_of(&d);
        cr_assert_eq(rc, 0,
                     "the first message after the failed move: %d (%s); live %llu, c active %d, "
                     "d active %d on shard %u, deactivations: migrated %llu, ended %llu, cap "
                     "%llu, self %llu",
                     rc, pith_strerror(rc), (unsigned long long)now.live, info.active, id.active,
                     id.shard, (unsigned long long)atomic_load(&deacts[PITH_VDEACT_MIGRATED]),
                     (unsigned long long)atomic_load(&deacts[PITH_VDEACT_ENDED]),
                     (unsigned long long)atomic_load(&deacts[PITH_VDEACT_CAP]),
                     (unsigned long long)atomic_load(&deacts[PITH_VDEACT_SELF]));
    }
    cr_assert_eq(r.n, 0, "the move ended it: the next message activates afresh (n %llu)",
                 (unsigned long long)r.n);
    cr_assert_eq(r.shard, 0);
    info = info_at(&c, 0);
    cr_assert_eq(info.placement, PITH_PLACE_HASH);
    cr_assert_eq(info.moves, 0);
    info_at(&d, 1);
    cr_assert_eq(atomic_load(&deacts[PITH_VDEACT_CAP]), 1, "d was busy: it stayed");
    atomic_store(&hold, 0);
    pith_vtype_stats_t st = stats_of(&cap_type);
    cr_assert_eq(st.migrations, 2);
    cr_assert_eq(st.migrate_failed, 1);
    cr_log_info("cap: the failed move's on_deactivate reasons: migrated %llu, ended %llu, cap "
                "%llu\n",
                (unsigned long long)atomic_load(&deacts[PITH_VDEACT_MIGRATED]),
                (unsigned long long)atomic_load(&deacts[PITH_VDEACT_ENDED]),
                (unsigned long long)atomic_load(&deacts[PITH_VDEACT_CAP]));
    test_assert_no_error(&beh_err);
    stop();
}

/* ---- rebalancing ---- */

/* a on shard 0 and b on shard 1 (place_pair) send PING to each other, 2 * rounds times. */
static void pingpong(const pith_vtype_t *t, pith_vref_t *a, pith_vref_t *b, uint64_t rounds)
{
    *a = vref_of(t, "a1");
    *b = vref_of(t, "b1");
    if (atomic_load(&began_fresh) == 0) {
        cr_assert_eq(ask_get(a).shard, 0);
        cr_assert_eq(ask_get(b).shard, 1);
    }
    uint64_t before = atomic_load(&pings);
    atomic_store(&ping_done, 0);
    vsend_ok(a, PING, 2 * rounds);
    TEST_WAIT_FOR(atomic_load(&ping_done));
    test_sync_all();
    cr_assert_eq(atomic_load(&pings) - before, 2 * rounds + 1, "%llu pings handled of %llu",
                 (unsigned long long)(atomic_load(&pings) - before),
                 (unsigned long long)(2 * rounds + 1));
    test_assert_no_error(&beh_err);
}

Test(vactor_place, rebalancing_brings_a_pair_that_talks_only_to_itself_onto_one_shard,
     .timeout = 60)
{
    start(2);
    uint64_t rounds = scaled(3000) < 300 ? 300 : scaled(3000);
    pith_vref_t a, b;
    pingpong(&rb_type, &a, &b, rounds);
    pith_vactor_info_t ia = info_of(&a), ib = info_of(&b);
    TEST_WAIT_WITH((ia = info_of(&a), ib = info_of(&b)),
                   ia.active && ib.active && ia.shard == ib.shard && ib.ref != PITH_REF_NONE);
    cr_assert_eq(ia.shard, 0, "the one on the higher shard moves: both on %u", ia.shard);
    cr_assert_eq(ia.placement, PITH_PLACE_FN);
    cr_assert_eq(ia.moves, 0);
    cr_assert_eq(ib.placement, PITH_PLACE_REBALANCED, "b's placement %u", ib.placement);
    cr_assert_eq(ib.moves, 1, "b moved %u times", ib.moves);
    pith_vtype_stats_t st = stats_of(&rb_type);
    cr_assert_geq(st.rebalances, 1);
    cr_assert_geq(st.migrations, st.rebalances);
    cr_assert_eq(atomic_load(&act_calls[PITH_VACT_MIGRATED]), st.migrations);
    cr_assert_eq(atomic_load(&deacts[PITH_VDEACT_MIGRATED]), st.migrations);
    /* Together, they stay together. */
    pingpong(&rb_type, &a, &b, rounds);
    pith_vtype_stats_t after = stats_of(&rb_type);
    cr_assert_eq(after.rebalances, st.rebalances, "a pair on one shard moved again");
    cr_assert_eq(info_at(&a, 0).moves, 0);
    cr_assert_eq(info_at(&b, 0).moves, 1);
    cr_assert_eq(after.live, 2);
    cr_log_info("rebalance: %llu rebalances, %llu direct, %llu forwards\n",
                (unsigned long long)after.rebalances, (unsigned long long)after.direct,
                (unsigned long long)after.forwards);
    stop();
}

Test(vactor_place, without_rebalancing_a_pair_that_talks_only_to_itself_stays_apart, .timeout = 60)
{
    start(2);
    uint64_t rounds = scaled(3000) < 300 ? 300 : scaled(3000);
    pith_vref_t a, b;
    pingpong(&norb_type, &a, &b, rounds);
    pith_vactor_info_t ia = info_at(&a, 0), ib = info_at(&b, 1);
    cr_assert_eq(ia.placement, PITH_PLACE_FN);
    cr_assert_eq(ib.placement, PITH_PLACE_FN);
    cr_assert_eq(ia.moves + ib.moves, 0);
    pith_vtype_stats_t st = stats_of(&norb_type);
    cr_assert_eq(st.rebalances, 0);
    cr_assert_eq(st.migrations, 0);
    cr_assert_eq(atomic_load(&began_moved), 0);
    stop();
}

/* ---- engine stop mid-move and mid-activation ---- */

struct mig_spray {
    unsigned shard, n;
    test_error_t *err;
};

/* Fresh keys: ADD, then MIG to the next shard, then ADD; the stop comes right behind. */
static void mig_spray_fn(void *arg)
{
    struct mig_spray *q = arg;
    uint64_t one = 1;
    struct mig m = {(q->shard + 1) % pith_shard_count(), UINT32_MAX};
    for (unsigned i = 0; i < q->n; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "Q%u.%u", i, q->shard);
        pith_vref_t v;
        int rc = pith_vref(&mig_type, key, (size_t)kl, &v);
        if (rc == 0)
            rc = pith_vsend(&v, ADD, &one, sizeof(one));
        if (rc == 0)
            rc = pith_vsend(&v, MIG, &m, sizeof(m));
        if (rc == 0)
            rc = pith_vsend(&v, ADD, &one, sizeof(one));
        if (rc == -ESHUTDOWN)
            return;
        if (rc != 0 && rc != -EAGAIN)
            TEST_NOTE(q->err, rc);
    }
}

struct stop_ask {
    pith_vref_t v;
    int rc;
};

static void *stop_ask_fn(void *arg)
{
    struct stop_ask *q = arg;
    pith_msg_t reply;
    q->rc = pith_client_vask(pith_client_self(), &q->v, GET, NULL, 0, 20 * SEC, &reply);
    return NULL;
}

Test(vactor_place, the_engine_stops_with_activations_mid_move_and_mid_activation_on_remote_shards,
     .timeout = 90)
{
    start(3);
    unsigned next = 0;
    /* Remote activations that never finish, with messages waiting behind them. */
    pith_vref_t w[6];
    for (int i = 0; i < 6; i++) {
        w[i] = key_find(&later_type, "W", &next, -1, -1, -1);
        vsend_ok(&w[i], ADD, 1);
    }
    struct stop_ask sa = {.v = w[0], .rc = 12345};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, stop_ask_fn, &sa), 0);
    cbs_reset();
    for (unsigned s = 0; s < 3; s++) {
        struct task_ask q = {.v = &w[1 + s], .slot = &cbs[s]};
        cr_assert_eq(pith_call_wait(s, task_ask_fn, &q, NULL), 0);
        cr_assert_eq(q.rc, 0, "pith_vask from shard %u: %d", s, q.rc);
        cr_assert_eq(send_from(s, &w[4], ADD, 1, 4), 0);
    }
    TEST_WAIT_FOR(atomic_load(&later_calls) == 6);
    /* Activations that move all the time. */
    atomic_store(&spin_left, 1000000);
    for (int i = 0; i < 4; i++) {
        pith_vref_t p = key_find(&mig_type, "P", &next, -1, -1, -1);
        vsend_ok(&p, SPIN, 0);
    }
    TEST_WAIT_FOR(stats_of(&mig_type).migrations >= 40);
    /* Fresh keys told to move, and the stop right behind them. */
    test_error_t err = {0};
    struct mig_spray q[3];
    for (unsigned s = 0; s < 3; s++) {
        q[s] = (struct mig_spray){.shard = s, .n = (unsigned)scaled(64), .err = &err};
        cr_assert_eq(pith_submit(s, mig_spray_fn, &q[s]), 0);
    }
    pith_vtype_stats_t st = stats_of(&mig_type);
    stop();
    pthread_join(t, NULL);
    test_assert_no_error(&err);
    test_assert_no_error(&beh_err);
    cr_assert(sa.rc < 0 && sa.rc != -ETIMEDOUT,
              "a client's ask waiting on an activation that never finished ended with %d (%s)",
              sa.rc, pith_strerror(sa.rc));
    cr_log_info("stop: %llu moves before the stop; %llu on_activate by a move, %llu fresh, %llu "
                "on_deactivate; ask ended with %d\n",
                (unsigned long long)st.migrations, (unsigned long long)atomic_load(&began_moved),
                (unsigned long long)atomic_load(&began_fresh), (unsigned long long)deacts_total(),
                sa.rc);
}

Test(vactor_place, the_engine_stops_right_after_moves_are_asked_for, .timeout = 90)
{
    /* A few rounds: the window between a move asked for and the stop is short. */
    for (int round = 0; round < 4; round++) {
        start(3);
        test_error_t err = {0};
        atomic_store(&spin_left, 1000000);
        unsigned next = 0;
        for (int i = 0; i < 3; i++) {
            pith_vref_t p = key_find(&mig_type, "R", &next, -1, -1, -1);
            vsend_ok(&p, SPIN, 0);
        }
        struct mig_spray q[3];
        for (unsigned s = 0; s < 3; s++) {
            q[s] = (struct mig_spray){.shard = s, .n = (unsigned)scaled(32), .err = &err};
            cr_assert_eq(pith_submit(s, mig_spray_fn, &q[s]), 0);
        }
        stop();
        test_assert_no_error(&err);
        test_assert_no_error(&beh_err);
    }
}
