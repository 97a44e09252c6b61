/* Actors: spawn, refs, mailboxes and turns on the shards' local queues, send, become, stop.
 * A turn is a task on the actor's shard: when a message reaches an idle actor, one turn is
 * queued; it handles up to turn_msgs messages and queues itself again behind the shard's other
 * work while mail remains, so a flooded actor never starves the rest. */
#include "clients.h"
#include "core.h"
#include "turn.h"
#include "metrics.h"
#include "vpersist.h"
#include "hooks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAILBOX 4096
#define DEFAULT_TURN    64

_Atomic(struct core_engine *) core_eng;
__thread struct core_shard *core_self;
__thread pith_ref_t core_current;
__thread void (*core_msg_done)(void);

/* Each shard's generation count, carried from one engine to the next (written by the
 * shard thread as it exits, read by the next engine's thread of that index, which the join and
 * the next thread creation order after it): a ref of an earlier engine stays stale. */
static uint32_t gen_carry[REF_MAX_SHARDS];

struct core_engine *core_engine_get(void)
{
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    if (ce != NULL)
        return ce;
    unsigned n = pith_shard_count();
    if (n == 0)
        return NULL;
    ce = calloc(1, sizeof(*ce) + n * sizeof(ce->shards[0]));
    if (ce == NULL)
        return NULL;
    ce->n = n;
    struct core_engine *expected = NULL;
    /* Release: the winner's initialised fields are visible to whoever loads it with acquire. */
    if (!atomic_compare_exchange_strong_explicit(&core_eng, &expected, ce, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        free(ce);
        return expected;
    }
    return ce;
}

/* The calling shard's actor table, made on first use. NULL outside the engine or on ENOMEM. */
struct core_shard *core_shard_get(void)
{
    struct core_shard *cs = core_self;
    if (LIKELY(cs != NULL))
        return cs;
    int id = pith_shard_id();
    if (id < 0)
        return NULL;
    struct core_engine *ce = core_engine_get();
    if (ce == NULL)
        return NULL;
    cs = calloc(1, sizeof(*cs));
    if (cs == NULL)
        return NULL;
    cs->id = (unsigned)id;
    cs->last_gen = gen_carry[id];
    cs->note = shard_running_slot(); /* not NULL: pith_shard_id said this is a shard */
    if (core_slabs_init(cs, ce->n) != 0) {
        free(cs);
        return NULL;
    }
    /* Release: readers on other threads (stats) load it with acquire. */
    atomic_store_explicit(&ce->shards[id], cs, memory_order_release);
    core_self = cs;
    return cs;
}

pith_ref_t core_current_ref(void)
{
    return core_current;
}

/* The record of `type`, listed on first use. Types are few: a list searched from the last hit. */
static struct type_rec *type_get(struct core_shard *cs, const pith_actor_type_t *type)
{
    if (cs->last != NULL && cs->last->type == type)
        return cs->last;
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    struct type_rec *head = atomic_load_explicit(&ce->types, memory_order_acquire);
    for (struct type_rec *r = head; r != NULL; r = r->next)
        if (r->type == type)
            return cs->last = r;
    struct type_rec *r = calloc(1, sizeof(*r));
    struct type_counters *pc = r ? aligned_alloc(CORE_LINE, ce->n * sizeof(*pc)) : NULL;
    if (pc == NULL) {
        free(r);
        return NULL;
    }
    memset(pc, 0, ce->n * sizeof(*pc));
    r->type = type;
    r->per_shard = pc;
    r->mailbox_max = type->mailbox_max ? type->mailbox_max : DEFAULT_MAILBOX;
    r->turn_msgs = type->turn_msgs ? type->turn_msgs : DEFAULT_TURN;
    /* Push with release so that a reader who finds r sees it whole; another shard may have
     * listed the same type meanwhile: then two records count it, and stats sum both. */
    r->next = head;
    while (!atomic_compare_exchange_weak_explicit(&ce->types, &r->next, r, memory_order_release,
                                                  memory_order_relaxed))
        ;
    return cs->last = r;
}

struct type_rec *core_type_rec(struct core_shard *cs, const pith_actor_type_t *type)
{
    return type_get(cs, type);
}

_Static_assert(CORE_HIST_BUCKETS == HIST_BUCKETS && CORE_DEPTH_BUCKETS == DEPTH_BUCKETS,
               "core/metrics.h sizes its arrays as the counters are");

/* ---- the table of records ---- */

struct actor *core_lookup(const struct core_shard *cs, pith_ref_t ref)
{
    return ref_shard(ref) == cs->id ? core_find(cs, ref) : NULL;
}

static int slot_alloc(struct core_shard *cs, uint32_t *slot)
{
    if (cs->free_head != 0) {
        *slot = cs->free_head - 1;
        cs->free_head = (uint32_t)(uintptr_t)rec_at(cs, *slot)->head;
        cs->chunk_live[*slot >> CHUNK_SHIFT]++;
        return 0;
    }
    if (cs->used > REF_SLOT_MASK)
        return -ENOMEM;
    if ((cs->used & (CHUNK_SIZE - 1)) == 0 && (cs->used >> CHUNK_SHIFT) == cs->nchunks) {
        if (cs->nchunks == cs->chunks_cap) {
            uint32_t cap = cs->chunks_cap ? cs->chunks_cap * 2 : 16;
            struct actor **grown = realloc(cs->chunks, cap * sizeof(*grown));
            if (grown == NULL)
                return -ENOMEM;
            cs->chunks = grown;
            uint32_t *counts = realloc(cs->chunk_live, cap * sizeof(*counts));
            if (counts == NULL)
                return -ENOMEM; /* chunks stays grown: its capacity is chunk_live's, not more */
            cs->chunk_live = counts;
            cs->chunks_cap = cap;
        }
        struct actor *c = pith_aligned_alloc(CORE_LINE, CHUNK_SIZE * sizeof(struct actor));
        if (c == NULL)
            return -ENOMEM;
        /* gen 0 everywhere: free, and no ref matches it (generations start at 1). */
        memset(c, 0, CHUNK_SIZE * sizeof(struct actor));
        cs->chunk_live[cs->nchunks] = 0;
        cs->chunks[cs->nchunks++] = c;
    }
    *slot = cs->used++;
    cs->chunk_live[*slot >> CHUNK_SHIFT]++;
    return 0;
}

/* Puts a record that never held an actor back on the free list. */
static void slot_free(struct core_shard *cs, uint32_t slot)
{
    struct actor *a = rec_at(cs, slot);
    memset(a, 0, sizeof(*a));
    a->head = (struct amsg *)(uintptr_t)cs->free_head;
    cs->free_head = slot + 1;
    cs->chunk_live[slot >> CHUNK_SHIFT]--;
}

/* Gives chunks back: every one once no actor is left, so that a shard's table costs nothing
 * after a wave of actors has come and gone; else the empty chunks at the table's end (a wave
 * beside a few actors that stay, such as virtual actors activated and deactivated in turn),
 * after which the free list is made again from the records left. A stale ref from before then
 * names a slot past `used`, or a record whose new actor has a later generation (pith_spawn). */
static void table_trim(struct core_shard *cs)
{
    if (cs->nchunks == 0)
        return;
    uint32_t keep = cs->nchunks;
    if (cs->live != 0) {
        while (keep > 1 && cs->chunk_live[keep - 1] == 0)
            keep--;
        if (keep == cs->nchunks)
            return;
    } else {
        keep = 0;
    }
    for (uint32_t i = keep; i < cs->nchunks; i++)
        pith_free(cs->chunks[i]);
    cs->nchunks = keep;
    if (keep == 0) {
        free(cs->chunks);
        free(cs->chunk_live);
        cs->chunks = NULL;
        cs->chunk_live = NULL;
        cs->chunks_cap = 0;
        cs->free_head = 0;
        cs->used = 0;
        return;
    }
    if (cs->used > keep << CHUNK_SHIFT)
        cs->used = keep << CHUNK_SHIFT;
    /* The free list, highest slot last out: the records that hold no actor (gen 0). */
    cs->free_head = 0;
    for (uint32_t slot = cs->used; slot-- > 0;) {
        struct actor *a = rec_at(cs, slot);
        if (a->gen == 0) {
            a->head = (struct amsg *)(uintptr_t)cs->free_head;
            cs->free_head = slot + 1;
        }
    }
}

/* A shard whose actors come and go one at a time would otherwise free and clear a whole chunk
 * at every stop and spawn: chunks go only once the table has stayed so for TRIM_DELAY_NS. */
#define TRIM_DELAY_NS (UINT64_C(10) * 1000 * 1000)

static void trim_timer(void *arg)
{
    (void)arg;
    struct core_shard *cs = core_self;
    if (cs == NULL)
        return;
    cs->trim_armed = false;
    table_trim(cs);
}

/* After an actor of chunk c ended: the table (or its last chunk) may have emptied. */
static void trim_soon(struct core_shard *cs, uint32_t c)
{
    if (cs->nchunks == 0 || cs->trim_armed || cs->closing)
        return;
    if (cs->live != 0 && (c != cs->nchunks - 1 || cs->chunk_live[c] != 0 || c == 0))
        return;
    if (pith_timer_add(TRIM_DELAY_NS, 0, trim_timer, NULL, &cs->trim_timer) == 0)
        cs->trim_armed = true;
    else
        table_trim(cs);
}

/* ---- ending an actor ---- */

/* Drops what waits in the mailbox of the ending actor `ref`; senders other than itself hear of
 * it (-ECANCELED). */
static void mailbox_drop_all(struct core_shard *cs, struct actor *a, pith_ref_t ref)
{
    struct amsg *m = a->head;
    uint64_t n = 0;
    a->head = a->tail = NULL;
    a->depth = 0;
    while (m != NULL) {
        struct amsg *next = m->next;
        if (m->from != ref)
            core_undelivered(cs, m, -ECANCELED);
        core_msg_free(m);
        m = next;
        n++;
    }
    if (n) {
        core_bump(&core_counters(cs, a->rec)->dropped, n);
        core_bump(&core_counters(cs, a->rec)->depth_now, (uint64_t)0 - n);
    }
}

/* Ends what the side tables hold for an actor that has just ended (its ref already stale). */
static void side_tables_end(struct core_shard *cs, pith_ref_t ref, int reason)
{
    if (cs->stop_reasons.len)
        map_del(&cs->stop_reasons, ref);
    if (cs->timers.len)
        core_timers_end(cs, ref);
    if (cs->names_of.len)
        core_names_end(cs, ref);
    if (cs->muted.len)
        core_mute_drained(cs, ref);
    if (cs->folded.len)
        map_del(&cs->folded, ref);
    if (cs->became.len)
        map_del(&cs->became, ref);
    if (cs->parked.len)
        core_lanes_resume(cs, ref); /* their records find the actor gone */
    if (cs->room.len)
        core_room_fire(cs, ref);
    if (cs->watching.len)
        core_watching_end(cs, ref);
    if (cs->watchers.len)
        core_watchers_end(cs, ref, reason);
}

static void actor_end(struct core_shard *cs, struct actor *a, uint32_t slot, int reason)
{
    cs->ending++;
    struct type_rec *r = a->rec;
    pith_ref_t ref = ref_make(cs->id, a->gen & REF_GEN_MASK, slot);
    if (a->gen & A_STOP)
        map_del(&cs->stop_reasons, ref);
    mailbox_drop_all(cs, a, ref);
    if (r->type->terminate != NULL) {
        struct pith_actor self = {a, ref_make(cs->id, a->gen & REF_GEN_MASK, slot)};
        a->gen |= A_RUNNING;
        pith_ref_t outer = core_current;
        core_current = self.ref;
        r->type->terminate(&self, a->state, reason);
        core_current = outer;
        /* A stop asked for from terminate (of itself, or back through a link) is moot:
         * side_tables_end drops it. */
        /* Messages it sent itself meanwhile are dropped with the rest. */
        mailbox_drop_all(cs, a, ref);
    }
    if (a->state != NULL)
        pith_free((char *)a->state - atomic_load_explicit(&r->state_prefix, memory_order_relaxed));
    /* Its account goes unless the actor left blocks charged to it (then the account stays,
     * so that their frees still find it). */
    if (r->type->mem_budget > 0)
        pith_mem_owner_forget(ref);
    core_bump(&core_counters(cs, r)->stopped, 1);
    if (reason != PITH_EXIT_NORMAL && reason != PITH_EXIT_SHUTDOWN)
        core_bump(&core_counters(cs, r)->failed, 1);
    memset(a, 0, sizeof(*a));
    a->head = (struct amsg *)(uintptr_t)cs->free_head; /* gen 0: free */
    cs->free_head = slot + 1;
    cs->chunk_live[slot >> CHUNK_SHIFT]--;
    cs->live--;
    /* The ref is stale from here: what follows may stop other actors of this shard (links),
     * which may in turn look this one up. */
    side_tables_end(cs, ref, reason);
    /* The outermost end runs the link exits that nested ones queued; it stays counted while
     * it does, so the ends those cause queue theirs here too instead of recursing. */
    if (cs->ending == 1) {
        while (cs->nexits > 0) {
            struct core_exit e = cs->exits[--cs->nexits];
            core_stop_here(cs, e.ref, e.reason);
        }
    }
    cs->ending--;
    trim_soon(cs, slot >> CHUNK_SHIFT);
}

/* actor_end, for a turn's end in turn.h. */
void core_turn_ended(struct core_shard *cs, struct actor *a, uint32_t slot, int reason)
{
    actor_end(cs, a, slot, reason);
}

/* ---- turns ---- */

/* After a turn: what waits for this actor's mailbox to have room. */
void core_mailbox_drained(struct core_shard *cs, struct actor *a, pith_ref_t ref)
{
    if (a->depth <= a->rec->mailbox_max / 2) {
        if (cs->muted.len)
            core_mute_drained(cs, ref);
        if (cs->parked.len)
            core_lanes_resume(cs, ref);
        if (cs->room.len)
            core_room_fire(cs, ref);
    }
    if (cs->folded.len)
        core_folded_flush(cs, a, ref);
}

/* Forced past local_queue_max: an actor has at most one turn queued, so the live actors bound
 * them, and a refused turn would strand its mail. */
int core_schedule(struct core_shard *cs, struct actor *a, pith_ref_t ref)
{
    int err = shard_submit_force(cs->id, core_turn_task, (void *)(uintptr_t)ref);
    if (err == 0) {
        a->gen |= A_SCHEDULED;
        core_bump(&core_counters(cs, a->rec)->turns, 1);
    }
    return err;
}

/* One turn of a scheduled actor: up to turn_msgs messages. */
static void turn_run(struct core_shard *cs, struct actor *a, pith_ref_t ref)
{
    struct type_rec *r = a->rec;
    struct type_counters *c = core_counters(cs, r);
    if (a->gen & A_MUTED) {
        a->gen &= ~A_SCHEDULED; /* the unmute schedules it again */
        return;
    }
    struct pith_actor self = {a, ref};
    uint32_t n = 0;
    int status = 0;
    /* Running for the whole turn: between messages no code of ours can reach this actor. */
    a->gen |= A_RUNNING;
    core_current = ref;
    atomic_store_explicit(&cs->running, r, memory_order_release); /* see core_describe */
    while (n < r->turn_msgs && a->head != NULL) {
        struct amsg *m = a->head;
        a->head = m->next;
        if (a->head == NULL)
            a->tail = NULL;
        a->depth--;
        /* A message stamped with its send time is timed: its wait in the mailbox, its
         * handler, and for an SLA the two together. */
        uint64_t sent = m->sent, t = 0;
        if (UNLIKELY(sent != 0)) {
            t = ticks_now();
            uint64_t waited = t > sent ? ticks_ns(t - sent) : 0;
            core_bump(&c->mbox[hist_bucket(waited)], 1);
            core_bump(&c->mbox_sum, waited);
        }
        pith_msg_t msg;
        core_msg_view(m, &msg);
        status = core_behave(cs, a, &self, &msg, c, &t, r->type->behaviour);
        core_msg_free(m);
        if (UNLIKELY(sent != 0)) {
            /* The type's SLA on this shard, if any, takes the whole latency. */
            struct sla_shard *ss = atomic_load_explicit(&c->sla, memory_order_relaxed);
            if (ss != NULL)
                core_sla_note(ss, ref, t > sent ? ticks_ns(t - sent) : 0);
        }
        n++;
        if (status != 0 || (a->gen & (A_STOP | A_MUTED)))
            break; /* a sender muted by this message gets no more of this turn */
    }
    core_turn_end(cs, a, c, ref, status, n, n);
}

void core_turn_task(void *arg)
{
    pith_ref_t ref = (pith_ref_t)(uintptr_t)arg;
    struct core_shard *cs = core_self;
    if (cs == NULL || cs->closing)
        return;
    struct actor *a = core_find(cs, ref);
    if (a != NULL) /* else it stopped after this turn was queued */
        turn_run(cs, a, ref);
}

/* ---- spawn ---- */

int pith_spawn(const pith_actor_type_t *type, void *arg, pith_ref_t *out)
{
    return core_spawn_ex(type, arg, 0, 0, type != NULL ? type->profile : PITH_MEM_WARM, NULL, NULL,
                         out);
}

int core_spawn_ex(const pith_actor_type_t *type, void *arg, size_t prefix, size_t tail,
                  pith_mem_profile_t profile, core_prep_fn prep, void *ctx, pith_ref_t *out)
{
    if (out != NULL)
        *out = PITH_REF_NONE;
    if (type == NULL || type->behaviour == NULL || (unsigned)type->profile >= PITH_MEM_PROFILES ||
        (unsigned)type->overflow > PITH_OVERFLOW_MUTE_SENDER ||
        (unsigned)profile >= PITH_MEM_PROFILES)
        return -EINVAL;
    if (pith_shard_id() < 0)
        return -EPERM;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ENOMEM;
    if (cs->closing)
        return -ESHUTDOWN;
    struct type_rec *r = type_get(cs, type);
    if (r == NULL)
        return -ENOMEM;
    uint32_t slot;
    int err = slot_alloc(cs, &slot);
    if (err)
        return err;
    struct actor *a = rec_at(cs, slot);
    /* The shard's next generation: it keeps counting across records, table_trim and
     * engines, so a ref from before names no later actor (until 2^24 spawns). */
    uint32_t gen = cs->last_gen = (cs->last_gen + 1) & REF_GEN_MASK;
    if (gen == 0)
        gen = cs->last_gen = 1;
    pith_ref_t ref = ref_make(cs->id, gen, slot);
    /* The state, charged to the actor itself (owner tag = its ref) when the type has a
     * budget, so that the budget covers it too. */
    void *state = NULL, *block = NULL;
    if (type->mem_budget > 0 && (err = pith_mem_owner_budget(ref, type->mem_budget)) != 0) {
        slot_free(cs, slot);
        return err;
    }
    if (type->state_size > 0 || prefix > 0) {
        size_t span = prefix > 0 ? core_state_span(type->state_size) : type->state_size;
        block = pith_malloc_ex(prefix + span + tail, 0, profile, type->mem_budget > 0 ? ref : 0);
        if (block == NULL) {
            if (type->mem_budget > 0)
                pith_mem_owner_forget(ref);
            slot_free(cs, slot);
            return -ENOMEM;
        }
        memset(block, 0, prefix + type->state_size);
        state = (char *)block + prefix;
        /* Relaxed: only this shard frees its actors' states; every spawn of the type stores
         * the same value. */
        atomic_store_explicit(&r->state_prefix, (uint32_t)prefix, memory_order_relaxed);
    }
    *a = (struct actor){.rec = r, .state = state, .gen = gen};
    cs->live++;
    core_bump(&core_counters(cs, r)->spawned, 1);
    if (prep != NULL)
        prep(block, ref, ctx);
    if (type->init != NULL) {
        struct pith_actor self = {a, ref};
        pith_ref_t outer = core_current;
        core_current = ref;
        a->gen |= A_RUNNING;
        err = type->init(&self, state, arg);
        a->gen &= ~A_RUNNING;
        core_current = outer;
        if (err != 0) {
            /* Not started: no terminate, and it does not count as spawned. */
            mailbox_drop_all(cs, a, ref);
            pith_free(block);
            if (type->mem_budget > 0)
                pith_mem_owner_forget(ref);
            core_bump(&core_counters(cs, r)->spawned, (uint64_t)-1);
            slot_free(cs, slot);
            cs->live--;
            /* What init set up for it goes too: a stop asked for, timers, names (taken back),
             * muted senders (let go), and those who watch it hear it ended with err. */
            side_tables_end(cs, ref, err < 0 ? err : -err);
            trim_soon(cs, slot >> CHUNK_SHIFT);
            return err < 0 ? err : -err;
        }
        if (a->gen & A_STOP) {
            /* Stopped during init (by itself, or through a link): with the reason asked for. */
            int reason = (int)(intptr_t)map_get(&cs->stop_reasons, ref);
            actor_end(cs, a, slot, reason);
            if (out != NULL)
                *out = ref;
            return 0;
        }
    }
    if (out != NULL)
        *out = ref;
    return 0;
}

struct spawn_req {
    const pith_actor_type_t *type;
    void *arg;
    pith_spawned_fn_t done;
    void *ctx;
    pith_ref_t ref;
    int err;
};

static void *spawn_remote(void *arg)
{
    struct spawn_req *q = arg;
    q->err = pith_spawn(q->type, q->arg, &q->ref);
    return q;
}

static void spawn_done(void *result, void *ctx)
{
    (void)ctx;
    struct spawn_req *q = result;
    q->done(q->ref, q->err, q->ctx);
    free(q);
}

int pith_spawn_on(unsigned shard, const pith_actor_type_t *type, void *arg, pith_spawned_fn_t done,
                  void *ctx)
{
    if (type == NULL || done == NULL)
        return -EINVAL;
    struct spawn_req *q = malloc(sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    *q = (struct spawn_req){.type = type, .arg = arg, .done = done, .ctx = ctx};
    int err = pith_call(shard, spawn_remote, q, spawn_done, NULL);
    if (err)
        free(q);
    return err;
}

/* ---- self, become, stop ---- */

pith_ref_t pith_self(const pith_actor_t *self)
{
    return self != NULL ? self->ref : PITH_REF_NONE;
}

uint64_t pith_actor_owner(const pith_actor_t *self)
{
    return self != NULL && self->a->rec->type->mem_budget > 0 ? self->ref : 0;
}

void pith_become(pith_actor_t *self, pith_behaviour_t behaviour)
{
    struct core_shard *cs = core_self;
    /* A self of no actor (a moved state's end, vactor.c) has no ref to key the map by. */
    if (self == NULL || behaviour == NULL || cs == NULL || self->ref == PITH_REF_NONE)
        return;
    struct actor *a = self->a;
    if (behaviour == a->rec->type->behaviour) {
        if (a->gen & A_BECAME)
            (void)map_del(&cs->became, self->ref);
        a->gen &= ~A_BECAME;
        return;
    }
    /* A replace never fails; a new entry may, and then the behaviour stays as it was (the
     * function returns nothing: the next message shows it). */
    if (map_put(&cs->became, self->ref, (void *)(uintptr_t)behaviour) == 0)
        a->gen |= A_BECAME;
}

unsigned pith_ref_shard(pith_ref_t ref)
{
    return ref_shard(ref);
}

int core_stop_here(struct core_shard *cs, pith_ref_t ref, int reason)
{
    /* A supervisor stopped normally stops its children first, and ends once they have. */
    struct actor *a = core_lookup(cs, ref);
    if (a != NULL && reason == PITH_EXIT_NORMAL && a->rec->type == &core_sup_type &&
        !(a->gen & A_RUNNING) && core_sup_stop(cs, a, ref) == 0)
        return 0;
    return core_end_now(cs, ref, reason);
}

int core_end_now(struct core_shard *cs, pith_ref_t ref, int reason)
{
    struct actor *a = core_lookup(cs, ref);
    if (a == NULL)
        return -ESRCH;
    if (a->gen & A_RUNNING) {
        /* The running behaviour's caller ends it; the first reason given wins. */
        if (!(a->gen & A_STOP)) {
            a->gen |= A_STOP;
            if (reason != PITH_EXIT_NORMAL &&
                map_put(&cs->stop_reasons, ref, (void *)(intptr_t)reason) != 0)
                return -ENOMEM;
        }
        return 0;
    }
    actor_end(cs, a, ref_slot(ref), reason);
    return 0;
}

static void stop_task(void *arg)
{
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->closing)
        return;
    if (core_stop_here(cs, (pith_ref_t)(uintptr_t)arg, PITH_EXIT_NORMAL) != 0)
        core_bump(&cs->dead_letters, 1);
}

static void kill_task(void *arg)
{
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->closing)
        return;
    if (core_stop_here(cs, (pith_ref_t)(uintptr_t)arg, PITH_EXIT_KILLED) != 0)
        core_bump(&cs->dead_letters, 1);
}

static int stop_any(pith_ref_t ref, int reason, pith_fn_t remote)
{
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    if (ref_gen(ref) == 0 || ref_shard(ref) >= n)
        return -EINVAL;
    int me = pith_shard_id();
    if (me >= 0 && (unsigned)me == ref_shard(ref)) {
        struct core_shard *cs = core_shard_get();
        if (cs == NULL)
            return -ENOMEM;
        if (cs->closing)
            return -ESHUTDOWN;
        return core_stop_here(cs, ref, reason);
    }
    return pith_submit(ref_shard(ref), remote, (void *)(uintptr_t)ref);
}

int pith_kill(pith_ref_t ref)
{
    return stop_any(ref, PITH_EXIT_KILLED, kill_task);
}

int pith_stop(pith_ref_t ref)
{
    return stop_any(ref, PITH_EXIT_NORMAL, stop_task);
}

/* ---- stats ---- */

/* Sums type's counters and histograms over shards [from, to) into *out (zeroed first). The
 * caller holds a reader's pass. */
static void type_sum(const struct core_engine *ce, const pith_actor_type_t *type, unsigned from,
                     unsigned to, struct core_type_shard *all)
{
    memset(all, 0, sizeof(*all));
    pith_actor_type_stats_t *out = &all->st;
    /* A type can have two records: two shards may have added it at once (type_get). */
    for (struct type_rec *r = ce ? atomic_load_explicit(&ce->types, memory_order_acquire) : NULL;
         r != NULL; r = r->next) {
        if (r->type != type)
            continue;
        for (unsigned i = from; i < to && i < ce->n; i++) {
            const struct type_counters *c = &r->per_shard[i];
#define RD(f) atomic_load_explicit(&c->f, memory_order_relaxed)
            out->spawned += RD(spawned);
            out->stopped += RD(stopped);
            out->failed += RD(failed);
            out->messages += RD(messages);
            out->rejected += RD(rejected);
            out->dropped += RD(dropped);
            out->turns += RD(turns);
            out->restarts += RD(restarts);
            out->mutes += RD(mutes);
            out->mailbox_now += RD(depth_now);
            all->sum_ns += RD(hist_sum);
            all->mbox_sum_ns += RD(mbox_sum);
            all->stalls += RD(stalls);
            all->depth_sum += RD(depth_sum);
            for (unsigned b = 0; b < HIST_BUCKETS; b++) {
                uint64_t k = RD(hist[b]);
                all->hist[b] += k;
                out->handler_samples += k;
                all->mbox[b] += RD(mbox[b]);
            }
            for (unsigned b = 0; b < DEPTH_BUCKETS; b++)
                all->depth[b] += RD(depth[b]);
            if (RD(mailbox_max) > out->mailbox_max)
                out->mailbox_max = RD(mailbox_max);
#undef RD
        }
    }
    out->live = out->spawned > out->stopped ? out->spawned - out->stopped : 0;
    out->handler_p50_ns = hist_quantile(all->hist, out->handler_samples, 500);
    out->handler_p99_ns = hist_quantile(all->hist, out->handler_samples, 990);
    out->handler_p999_ns = hist_quantile(all->hist, out->handler_samples, 999);
}

int pith_actor_type_stats(const pith_actor_type_t *type, pith_actor_type_stats_t *out)
{
    if (type == NULL || out == NULL)
        return -EINVAL;
    struct core_type_shard *all = malloc(sizeof(*all));
    if (all == NULL)
        return -ENOMEM;
    if (!shard_reader_enter()) {
        free(all);
        return -ESHUTDOWN;
    }
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    type_sum(ce, type, 0, ce != NULL ? ce->n : 0, all);
    shard_reader_leave();
    *out = all->st;
    free(all);
    return 0;
}

int core_type_shard(const pith_actor_type_t *type, unsigned shard, struct core_type_shard *out)
{
    if (type == NULL || out == NULL)
        return -EINVAL;
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    int err = 0;
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    if (shard >= pith_shard_count())
        err = -EINVAL;
    else
        type_sum(ce, type, shard, shard + 1, out);
    shard_reader_leave();
    return err;
}

size_t core_types(const pith_actor_type_t **types, size_t cap)
{
    if (!shard_reader_enter())
        return 0;
    size_t n = 0;
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    for (struct type_rec *r = ce ? atomic_load_explicit(&ce->types, memory_order_acquire) : NULL;
         r != NULL; r = r->next) {
        bool seen = false;
        for (size_t i = 0; i < n && i < cap && !seen; i++)
            seen = types[i] == r->type;
        if (seen)
            continue;
        if (n < cap)
            types[n] = r->type;
        n++;
    }
    shard_reader_leave();
    return n;
}

uint64_t core_hist_upper(unsigned b)
{
    return hist_upper(b);
}

int pith_dead_letters(unsigned shard, uint64_t *out)
{
    if (out == NULL)
        return -EINVAL;
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    int err = 0;
    *out = 0;
    if (shard >= pith_shard_count()) {
        err = -EINVAL;
    } else {
        struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
        struct core_shard *cs =
            ce ? atomic_load_explicit(&ce->shards[shard], memory_order_acquire) : NULL;
        if (cs != NULL)
            *out = atomic_load_explicit(&cs->dead_letters, memory_order_relaxed);
    }
    shard_reader_leave();
    return err;
}

int pith_core_stats(unsigned shard, pith_core_stats_t *out)
{
    if (out == NULL)
        return -EINVAL;
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    int err = 0;
    memset(out, 0, sizeof(*out));
    if (shard >= pith_shard_count()) {
        err = -EINVAL;
    } else {
        struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
        struct core_shard *cs =
            ce ? atomic_load_explicit(&ce->shards[shard], memory_order_acquire) : NULL;
        if (cs != NULL) {
            out->dead_letters = atomic_load_explicit(&cs->dead_letters, memory_order_relaxed);
            out->asks = atomic_load_explicit(&cs->asks_made, memory_order_relaxed);
            out->replies = atomic_load_explicit(&cs->replies, memory_order_relaxed);
            out->late_replies = atomic_load_explicit(&cs->late_replies, memory_order_relaxed);
            out->ask_timeouts = atomic_load_explicit(&cs->ask_timeouts, memory_order_relaxed);
            out->timer_msgs = atomic_load_explicit(&cs->timer_msgs, memory_order_relaxed);
            out->undelivered = atomic_load_explicit(&cs->undelivered, memory_order_relaxed);
            out->undelivered_folded =
                atomic_load_explicit(&cs->undelivered_folded, memory_order_relaxed);
            out->undelivered_tasks =
                atomic_load_explicit(&cs->undelivered_tasks, memory_order_relaxed);
            out->undelivered_unhandled =
                atomic_load_explicit(&cs->undelivered_unhandled, memory_order_relaxed);
        }
    }
    shard_reader_leave();
    return err;
}

/* ---- the shard hooks: stop ---- */

/* The shard has left its loop: every actor still alive ends with PITH_EXIT_SHUTDOWN. */
static void core_shard_exit(unsigned shard)
{
    (void)shard;
    struct core_shard *cs = core_self;
    if (cs == NULL)
        return;
    cs->closing = true;
    for (uint32_t slot = 0; slot < cs->used && cs->live > 0; slot++) {
        struct actor *a = rec_at(cs, slot);
        if (a->gen != 0 && a->rec != NULL)
            actor_end(cs, a, slot, PITH_EXIT_SHUTDOWN);
    }
    core_vactor_exit(cs);
    core_sla_exit(cs);
    core_pins_free(cs);
    table_trim(cs);
    if (cs->trim_armed)
        pith_timer_cancel(cs->trim_timer);
    core_asks_free(cs);
    core_watchers_free(cs);
    core_registry_free(cs);
    map_free(&cs->timers);
    map_free(&cs->names_of);
    map_free(&cs->stop_reasons);
    free(cs->exits);
    cs->exits = NULL;
    cs->nexits = cs->exits_cap = 0;
    core_mute_free(cs);
    map_free(&cs->folded);
    map_free(&cs->became);
    core_lanes_free(cs);
    core_room_free(cs);
    core_slabs_close_all(cs);
    gen_carry[cs->id] = cs->last_gen;
    core_self = NULL;
}

static void core_engine_gone(void)
{
    struct core_engine *ce = atomic_exchange(&core_eng, NULL);
    if (ce == NULL)
        return;
    core_clients_gone(ce);
    for (unsigned i = 0; i < ce->n; i++) {
        struct core_shard *cs = atomic_load_explicit(&ce->shards[i], memory_order_relaxed);
        if (cs != NULL)
            core_vactor_gone(cs);
        free(cs);
    }
    struct type_rec *r = atomic_load_explicit(&ce->types, memory_order_relaxed);
    while (r != NULL) {
        struct type_rec *next = r->next;
        for (unsigned i = 0; i < ce->n; i++)
            core_sla_free(atomic_load_explicit(&r->per_shard[i].sla, memory_order_relaxed));
        free(r->per_shard);
        free(r);
        r = next;
    }
    free(ce);
}

static bool core_release(pith_fn_t fn, void *arg)
{
    if (fn == core_deliver_task || fn == core_ask_task) {
        core_msg_free(arg);
        return true;
    }
    if (fn == core_watch_task || fn == core_reg_task || fn == core_mute_task ||
        fn == core_undelivered_task || fn == core_room_task || fn == core_room_send) {
        pith_free(arg);
        return true;
    }
    return fn == core_turn_task || fn == stop_task || fn == kill_task ||
           core_sup_release(fn, arg) || core_vactor_release(fn, arg) || core_sla_release(fn, arg);
}

/* The stall detector's question: what runs on `shard`, when it is an actor's turn. */
static const char *core_describe(unsigned shard, pith_anyfn_t *fn)
{
    if (*fn != (pith_anyfn_t)core_turn_task)
        return NULL;
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    struct core_shard *cs = ce != NULL && shard < ce->n
                                ? atomic_load_explicit(&ce->shards[shard], memory_order_acquire)
                                : NULL;
    /* Acquire pairs with turn_run's release: the record (and its type) the shard saw are
     * visible here. */
    const struct type_rec *r =
        cs != NULL ? atomic_load_explicit(&cs->running, memory_order_acquire) : NULL;
    if (r == NULL)
        return NULL;
    *fn = atomic_load_explicit(&cs->running_fn, memory_order_relaxed);
    return r->type->name != NULL ? r->type->name : "";
}

/* The stall detector counts a stall: when it is an actor's turn, its type's. */
static void core_stalled(unsigned shard, pith_anyfn_t fn)
{
    if (fn != (pith_anyfn_t)core_turn_task)
        return;
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    struct core_shard *cs = ce != NULL && shard < ce->n
                                ? atomic_load_explicit(&ce->shards[shard], memory_order_acquire)
                                : NULL;
    /* Acquire: as core_describe's. */
    const struct type_rec *r =
        cs != NULL ? atomic_load_explicit(&cs->running, memory_order_acquire) : NULL;
    if (r != NULL) /* an add: the watchdog writes this counter, not the shard */
        atomic_fetch_add_explicit(&r->per_shard[shard].stalls, 1, memory_order_relaxed);
}

__attribute__((constructor)) static void core_hooks(void)
{
    static const struct shard_hooks h = {
        .shard_exit = core_shard_exit,
        .engine_gone = core_engine_gone,
        .release = core_release,
        .stopping = core_clients_stopping,
        .describe = core_describe,
        .stalled = core_stalled,
    };
    shard_hooks_add(&h);
}
