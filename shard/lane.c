/* Ingress lanes (lane.h): producers outside the engine, their bounded SPSC lanes to each shard,
 * the shard's drain of them, and how the stopper shuts producers out. */
#include "shard.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- futexes ---- */

static void futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Waits while *word == val, at most until `deadline` (pith_now_ns; UINT64_MAX: none). */
static void futex_wait_until(_Atomic uint32_t *word, uint32_t val, uint64_t deadline)
{
    struct timespec ts, *tsp = NULL;
    if (deadline != UINT64_MAX) {
        uint64_t now = pith_now_ns();
        uint64_t left = deadline > now ? deadline - now : 0;
        ts.tv_sec = (time_t)(left / 1000000000u);
        ts.tv_nsec = (long)(left % 1000000000u);
        tsp = &ts;
    }
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, val, tsp, NULL, 0);
}

void shard_wake_external(struct shard *s)
{
    /* Dekker with the sleeper (loop.c): our caller published its work with a seq_cst
     * read-modify-write, and this load is seq_cst; the sleeper exchanges ASLEEP in and then
     * looks at its lanes once more (seq_cst). One of us sees the other. */
    if (atomic_load(&s->sleep_state) != ASLEEP)
        return;
    uint32_t expect = ASLEEP;
    if (atomic_compare_exchange_strong(&s->sleep_state, &expect, WOKEN)) {
        uint64_t one = 1;
        ssize_t r = write(s->efd, &one, sizeof(one));
        (void)r; /* eventfd writes fail only on counter overflow, which still wakes */
    }
}

/* ---- lanes ---- */

static inline uint32_t rec_slots(uint32_t len)
{
    return (LANE_HDR + len + LANE_SLOT - 1) / LANE_SLOT;
}

static inline struct lane_slot *slot_at(const struct lane *l, uint32_t pos)
{
    return (struct lane_slot *)((char *)l->slots + (size_t)(pos & l->mask) * LANE_SLOT);
}

static struct lane *lane_new(uint32_t cap, unsigned shard, uint64_t owner)
{
    size_t head = (sizeof(struct lane) + LANE_SLOT - 1) & ~(size_t)(LANE_SLOT - 1);
    char *mem = aligned_alloc(LANE_SLOT, head + (size_t)cap * LANE_SLOT);
    if (mem == NULL)
        return NULL;
    memset(mem, 0, head + (size_t)cap * LANE_SLOT);
    struct lane *l = (struct lane *)mem;
    l->slots = (struct lane_slot *)(mem + head);
    l->mask = cap - 1;
    /* Positions start four laps short of the 32-bit wrap, so that every lane that carries a
     * little traffic crosses it early, tests included (as Linux starts jiffies near theirs).
     * The first lap's slots hold 0, which no position before the wrap expects. */
    l->tail = l->head_seen = l->head = (uint32_t)0 - 4 * cap;
    atomic_init(&l->head_pub, l->head);
    l->dormant_idx = LANE_ACTIVE;
    l->shard = shard;
    atomic_init(&l->owner, owner);
    atomic_init(&l->refs, 2);
    return l;
}

static void lane_put(struct lane *l)
{
    if (atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) == 1)
        free(l);
}

uint32_t lane_max_len(const struct producer *p)
{
    /* A record of at most half the ring always fits once the ring is empty, padding included
     * (the padding is shorter than the record it makes room for). */
    return p->lane_cap / 2 * LANE_SLOT - LANE_HDR;
}

/* ---- producers ---- */

static pthread_mutex_t producers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct producer *producers; /* the running engine's, under producers_lock */

void producer_init(struct producer *p, uint64_t owner)
{
    memset(p, 0, sizeof(*p));
    p->owner = owner;
}

void producer_set_owner(struct producer *p, uint64_t owner)
{
    p->owner = owner;
    for (unsigned i = 0; i < p->n; i++)
        if (p->lanes[i] != NULL)
            atomic_store_explicit(&p->lanes[i]->owner, owner, memory_order_relaxed);
}

static void new_lanes_push(struct shard *s, struct lane *l)
{
    struct lane *head = atomic_load_explicit(&s->new_lanes, memory_order_relaxed);
    do {
        l->next_new = head;
        /* Release: the lane's fields are visible to the shard's acquire exchange (adopt). */
    } while (!atomic_compare_exchange_weak_explicit(&s->new_lanes, &head, l, memory_order_release,
                                                    memory_order_relaxed));
}

/* A dormant lane back to its shard's list; the one that moves asleep from 1 to 0 does it. */
static void hand_back(struct lane *l)
{
    uint32_t one = 1;
    if (atomic_compare_exchange_strong(&l->asleep, &one, 0))
        new_lanes_push(pith_engine.shards[l->shard], l);
}

/* Drops the producer's references to its lanes and marks them closed. `live`: the lanes are
 * the running engine's, whose shards count those left with records (orphans). */
static void drop_lanes(struct producer *p, bool live)
{
    for (unsigned i = 0; i < p->n; i++) {
        struct lane *l = p->lanes[i];
        if (l == NULL)
            continue;
        /* A lane the shard has just emptied may count as an orphan for a moment: that only
         * delays a new lane's start. */
        if (live && l->tail != atomic_load(&l->head_pub)) {
            l->orphan = true;
            atomic_fetch_add_explicit(&pith_engine.shards[l->shard]->orphans, 1,
                                      memory_order_relaxed);
        }
        /* seq_cst, and a release: the shard that sees closed (acquire) sees every record
         * written before, and `orphan`; and our Dekker with a shard that puts the lane to
         * sleep (go_dormant): either it sees closed and keeps the lane, or we see it asleep
         * and hand it back, so that the shard frees it. */
        atomic_store(&l->closed, 1);
        if (live && atomic_load(&l->asleep) != 0)
            hand_back(l);
        lane_put(l);
    }
    free(p->lanes);
    p->lanes = NULL;
    p->n = 0;
}

static int producer_register(struct producer *p)
{
    struct engine *e = &pith_engine;
    pthread_mutex_lock(&producers_lock);
    int err = 0;
    uint64_t ep = atomic_load(&e->epoch);
    if (atomic_load(&e->state) != ENGINE_RUNNING) {
        err = -ESHUTDOWN;
    } else if (atomic_load_explicit(&p->epoch, memory_order_relaxed) != ep) {
        /* Lanes of an earlier engine: that engine let go of them at its stop. */
        drop_lanes(p, false);
        p->lanes = calloc(e->n, sizeof(*p->lanes));
        if (p->lanes == NULL) {
            err = -ENOMEM;
        } else {
            p->n = e->n;
            p->lane_cap = e->cfg.lane_slots;
            p->prev = NULL;
            p->next = producers;
            if (producers != NULL)
                producers->prev = p;
            producers = p;
            atomic_store_explicit(&p->epoch, ep, memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&producers_lock);
    return err;
}

int producer_enter(struct producer *p)
{
    struct engine *e = &pith_engine;
    uint64_t ep = atomic_load(&e->epoch);
    if (atomic_load_explicit(&p->epoch, memory_order_relaxed) != ep) {
        int err = producer_register(p);
        if (err)
            return err;
    }
    /* Dekker with producers_stop: our exchange (a full barrier) orders busy = 1 before the
     * load of state; the stopper stores DRAINING (seq_cst) before it loads busy. Either we see
     * it stopping and back out, or it sees us inside and waits. */
    atomic_exchange(&p->busy, 1);
    if (atomic_load(&e->state) != ENGINE_RUNNING ||
        atomic_load_explicit(&p->epoch, memory_order_relaxed) != atomic_load(&e->epoch)) {
        atomic_store_explicit(&p->busy, 0, memory_order_release);
        return -ESHUTDOWN;
    }
    return 0;
}

void producer_leave(struct producer *p)
{
    /* Release: the stopper's acquire load of 0 orders everything we did inside before its
     * teardown. */
    atomic_store_explicit(&p->busy, 0, memory_order_release);
}

void producer_close(struct producer *p)
{
    pthread_mutex_lock(&producers_lock);
    /* Listed: the lanes belong to the running (or stopping) engine, whose shards still live
     * (producers_teardown unlists every producer, under this lock, before they are freed). */
    bool live = atomic_load_explicit(&p->epoch, memory_order_relaxed) != 0;
    if (live) {
        /* Still listed by a running (or stopping) engine: unlist it. */
        if (p->prev != NULL)
            p->prev->next = p->next;
        else
            producers = p->next;
        if (p->next != NULL)
            p->next->prev = p->prev;
        atomic_store_explicit(&p->epoch, 0, memory_order_relaxed);
    }
    drop_lanes(p, live);
    pthread_mutex_unlock(&producers_lock);
}

void producers_stop(void)
{
    pthread_mutex_lock(&producers_lock);
    for (struct producer *p = producers; p != NULL; p = p->next) {
        /* seq_cst: our side of producer_enter's Dekker (we stored DRAINING, seq_cst, before
         * this load); it also acquires producer_leave's release. */
        while (atomic_load(&p->busy) != 0)
            sched_yield();
        /* Producers waiting for room: they find the engine stopping and return. */
        for (unsigned i = 0; i < p->n; i++) {
            struct lane *l = p->lanes[i];
            if (l != NULL && atomic_exchange(&l->room_wait, 0) != 0)
                futex_wake_all(&l->room_wait);
        }
    }
    pthread_mutex_unlock(&producers_lock);
}

void producers_teardown(void)
{
    pthread_mutex_lock(&producers_lock);
    for (struct producer *p = producers; p != NULL;) {
        struct producer *next = p->next;
        p->prev = p->next = NULL;
        /* Its lanes stay its own (the shards dropped their references): it lets go of them
         * when it closes or registers with the next engine. */
        atomic_store_explicit(&p->epoch, 0, memory_order_relaxed);
        p = next;
    }
    producers = NULL;
    pthread_mutex_unlock(&producers_lock);
}

/* The thread's own producer, closed by the key's destructor when the thread exits. */
static pthread_key_t self_key;
static pthread_once_t self_once = PTHREAD_ONCE_INIT;
static __thread struct producer *self_producer;

static void self_destroy(void *arg)
{
    struct producer *p = arg;
    if (p->upper_fini != NULL)
        p->upper_fini(p);
    producer_close(p);
    free(p);
    self_producer = NULL;
}

static void self_key_make(void)
{
    (void)pthread_key_create(&self_key, self_destroy);
}

struct producer *producer_self(void)
{
    struct producer *p = self_producer;
    if (p != NULL)
        return p;
    pthread_once(&self_once, self_key_make);
    p = malloc(sizeof(*p));
    if (p == NULL)
        return NULL;
    producer_init(p, 0);
    if (pthread_setspecific(self_key, p) != 0) {
        free(p);
        return NULL;
    }
    self_producer = p;
    return p;
}

/* ---- pushing ---- */

/* p's lane to `shard`, made when it has none; NULL with *err -ENOMEM, or -EAGAIN while the
 * shard holds LANE_ORPHANS_MAX lanes of producers that have gone. */
static struct lane *lane_get(struct producer *p, unsigned shard, int *err)
{
    struct lane *l = p->lanes[shard];
    if (l != NULL)
        return l;
    struct shard *s = pith_engine.shards[shard];
    if (atomic_load_explicit(&s->orphans, memory_order_relaxed) >= LANE_ORPHANS_MAX) {
        *err = -EAGAIN;
        return NULL;
    }
    l = lane_new(p->lane_cap, shard, p->owner);
    if (l == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    new_lanes_push(s, l);
    p->lanes[shard] = l;
    return l;
}

/* Whether `total` slots fit now, reading the consumer's index only when the cached one says
 * they do not. */
static bool lane_room(struct lane *l, uint32_t total)
{
    uint32_t cap = l->mask + 1;
    if (l->tail + total - l->head_seen <= cap)
        return true;
    /* Acquire pairs with the consumer's release of head_pub: its reads (and clears) of the
     * slots it gave back happen before we write them again. */
    l->head_seen = atomic_load_explicit(&l->head_pub, memory_order_acquire);
    return l->tail + total - l->head_seen <= cap;
}

/* Blocks until the lane may have room, the deadline passes or the engine stops; the producer
 * is outside meanwhile. Returns 0 to try again, -ETIMEDOUT (inside again), or -ESHUTDOWN
 * (outside). */
static int wait_room(struct producer *p, struct lane *l, uint32_t total, uint64_t deadline)
{
    if (p->spin_ns > 0) {
        /* Poll first, as the producer's owner asked: a thread with a CPU of its own (a feed
         * handler) keeps up with a shard that frees a few slots at a time, where sleeping
         * would cost a futex wake-up per slot freed, on the shard's side too. lane_room reads
         * head_pub with acquire (see there); room_wait stays 0 meanwhile, so the shard does
         * not wake anyone. The clock is read once in 64 looks; a stop ends the spin. */
        uint64_t until = pith_now_ns() + p->spin_ns;
        if (until > deadline)
            until = deadline;
        for (unsigned k = 1;; k++) {
            if (lane_room(l, total))
                return 0;
            if ((k & 63) == 0 && (pith_now_ns() >= until || shard_engine_stopping()))
                break;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
    /* Dekker with the consumer (drain_one): our exchange of room_wait and load of head_pub,
     * its store of head_pub and load of room_wait, all seq_cst. Either we see the room or it
     * sees us waiting and wakes us. */
    atomic_exchange(&l->room_wait, 1);
    l->head_seen = atomic_load(&l->head_pub);
    if (lane_room(l, total)) {
        atomic_store_explicit(&l->room_wait, 0, memory_order_relaxed);
        return 0;
    }
    uint64_t epoch = atomic_load_explicit(&p->epoch, memory_order_relaxed);
    producer_leave(p);
    /* We hold a reference to the lane: its memory stays while we sleep on it. */
    futex_wait_until(&l->room_wait, 1, deadline);
    atomic_store_explicit(&l->room_wait, 0, memory_order_relaxed);
    int err = producer_enter(p);
    if (err == 0 && atomic_load_explicit(&p->epoch, memory_order_relaxed) != epoch) {
        producer_leave(p); /* another engine by now: this lane is not its */
        err = -ESHUTDOWN;
    }
    if (err)
        return err;
    if (deadline != UINT64_MAX && pith_now_ns() >= deadline && !lane_room(l, total))
        return -ETIMEDOUT;
    return 0;
}

static int push(struct producer *p, unsigned shard, lane_fn_t fn, void *arg, uint64_t aux,
                const void *head, uint32_t hlen, const void *data, uint32_t len,
                uint64_t timeout_ns, bool more);

int lane_push(struct producer *p, unsigned shard, lane_fn_t fn, void *arg, uint64_t aux,
              const void *head, uint32_t hlen, const void *data, uint32_t len, uint64_t timeout_ns)
{
    return push(p, shard, fn, arg, aux, head, hlen, data, len, timeout_ns, false);
}

int lane_push_more(struct producer *p, unsigned shard, lane_fn_t fn, void *arg, uint64_t aux,
                   const void *head, uint32_t hlen, const void *data, uint32_t len,
                   uint64_t timeout_ns)
{
    return push(p, shard, fn, arg, aux, head, hlen, data, len, timeout_ns, true);
}

/* After the records are published: hand a dormant lane back, wake a sleeping shard. The caller
 * has ordered its publishing before these loads with a full barrier (see push). */
void lane_published(struct lane *l, unsigned shard)
{
    if (__builtin_expect(atomic_load(&l->asleep) != 0, 0))
        hand_back(l);
    shard_wake_external(pith_engine.shards[shard]);
}

void lane_flush(struct producer *p, unsigned shard)
{
    struct lane *l = shard < p->n ? p->lanes[shard] : NULL;
    if (l == NULL)
        return;
        /* Orders the release stores of the run's records before the loads lane_published makes, in
         * the two Dekkers push describes: the shard's side is seq_cst operations (its exchange of
         * its sleep word, then its seq_cst load of the slot at its head), so a seq_cst fence here
         * makes either it see the records or us see it asleep. */
#if defined(PITH_TSAN) && PITH_TSAN
    /* gcc refuses the fence under -fsanitize=thread, which does not model fences and checks no
     * Dekker: a seq_cst read-modify-write, a full barrier on the machine, stands in. */
    static _Atomic uint32_t tsan_fence;
    atomic_fetch_add(&tsan_fence, 1);
#else
    atomic_thread_fence(memory_order_seq_cst);
#endif
    lane_published(l, shard);
}

static int push(struct producer *p, unsigned shard, lane_fn_t fn, void *arg, uint64_t aux,
                const void *head, uint32_t hlen, const void *data, uint32_t len,
                uint64_t timeout_ns, bool more)
{
    if (shard >= p->n || len > lane_max_len(p) || hlen > lane_max_len(p) - len)
        return -EINVAL;
    uint32_t tail_len = len;
    len += hlen;
    int err = 0;
    struct lane *l = lane_get(p, shard, &err);
    uint64_t deadline = UINT64_MAX;
    while (l == NULL) {
        if (err != -EAGAIN || timeout_ns == 0)
            return err;
        /* Too many lanes left behind by producers that have gone: wait for the shard to run
         * them, looking every millisecond (outside meanwhile; a rare path). */
        if (deadline == UINT64_MAX && timeout_ns != UINT64_MAX)
            deadline = pith_now_ns() + timeout_ns;
        if (deadline != UINT64_MAX && pith_now_ns() >= deadline)
            return -ETIMEDOUT;
        uint64_t epoch = atomic_load_explicit(&p->epoch, memory_order_relaxed);
        producer_leave(p);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        if ((err = producer_enter(p)) != 0)
            return err;
        if (atomic_load_explicit(&p->epoch, memory_order_relaxed) != epoch) {
            producer_leave(p);
            return -ESHUTDOWN;
        }
        l = lane_get(p, shard, &err);
    }
    uint32_t need = rec_slots(len), cap = l->mask + 1;
    for (;;) {
        uint32_t at = l->tail & l->mask;
        uint32_t pad = at + need > cap ? cap - at : 0;
        if (lane_room(l, pad + need)) {
            uint32_t pos = l->tail + pad;
            struct lane_slot *r = slot_at(l, pos);
            r->len = len;
            r->fn = fn;
            r->arg = arg;
            r->aux = aux;
            if (hlen > 0)
                memcpy((char *)r + LANE_HDR, head, hlen);
            if (tail_len > 0)
                memcpy((char *)r + LANE_HDR + hlen, data, tail_len);
            if (pad > 0) {
                struct lane_slot *ps = slot_at(l, l->tail);
                ps->len = pad * LANE_SLOT - LANE_HDR;
                ps->fn = NULL;
                /* Release: the consumer that finds the padding finds it whole. */
                atomic_store_explicit(&ps->seq, l->tail + 1, memory_order_release);
            }
            l->tail = pos + need;
            if (more) {
                /* Release: the record's fields and bytes, and whatever arg points to, are
                 * written before the shard can see the sequence (its acquire load in
                 * drain_one). The run's last record (or lane_flush) does the rest. */
                atomic_store_explicit(&r->seq, pos + 1, memory_order_release);
                return 0;
            }
            /* A seq_cst read-modify-write: that release, and our side of two Dekkers, with a
             * shard that puts the lane to sleep (go_dormant) and with a shard that goes to
             * sleep itself (shard_wake_external): the loads lane_published makes come after
             * it. It costs a full barrier, which waits for this slot's line: lane_push_more
             * lets a run of records pay it once. */
            atomic_exchange(&r->seq, pos + 1);
            lane_published(l, shard);
            return 0;
        }
        if (timeout_ns == 0)
            return -EAGAIN;
        if (deadline == UINT64_MAX && timeout_ns != UINT64_MAX)
            deadline = pith_now_ns() + timeout_ns;
        /* Records of a run (lane_push_more) may be waiting for the shard to see them: it must,
         * to make the room we wait for. */
        lane_flush(p, shard);
        int err = wait_room(p, l, pad + need, deadline);
        if (err)
            return err;
    }
}

/* ---- the shard's side ---- */

/* Takes l out of the shard's dormant list (it is back, or going). */
static void dormant_remove(struct shard *s, struct lane *l)
{
    if (l->dormant_idx == LANE_ACTIVE)
        return;
    struct lane *last = s->dormant[--s->ndormant];
    s->dormant[l->dormant_idx] = last;
    last->dormant_idx = l->dormant_idx;
    l->dormant_idx = LANE_ACTIVE;
}

/* Lane i of the shard's list has been empty for a while: off the list, unless a record or the
 * producer's close comes meanwhile. Returns whether it left. */
static bool go_dormant(struct shard *s, unsigned i)
{
    struct lane *l = s->lanes[i];
    if (s->ndormant == s->dormant_cap) {
        unsigned cap = s->dormant_cap ? s->dormant_cap * 2 : 8;
        struct lane **grown = realloc(s->dormant, cap * sizeof(*grown));
        if (grown == NULL)
            return false; /* out of memory: it stays on the list, which costs only time */
        s->dormant = grown;
        s->dormant_cap = cap;
    }
    /* Dekker with lane_push and drop_lanes: we store asleep, then look at the lane's next slot
     * and at closed; the producer publishes (or closes), then looks at asleep. All seq_cst:
     * either we see its record or its close, or it sees the lane asleep and hands it back. */
    atomic_store(&l->asleep, 1);
    if (atomic_load(&slot_at(l, l->head)->seq) == l->head + 1 || atomic_load(&l->closed) != 0) {
        if (atomic_exchange(&l->asleep, 0) == 1)
            return false; /* taken back before the producer saw it asleep: stays listed */
        /* The producer saw it asleep and is handing it back: adopt brings it again. */
        s->lanes[i] = s->lanes[--s->nlanes];
        return true;
    }
    s->lanes[i] = s->lanes[--s->nlanes];
    l->dormant_idx = s->ndormant;
    s->dormant[s->ndormant++] = l;
    return true;
}

/* Takes the lanes producers made (or handed back) since the last look. */
static void adopt(struct shard *s)
{
    /* Acquire pairs with new_lanes_push's release CAS. */
    struct lane *l = atomic_exchange_explicit(&s->new_lanes, NULL, memory_order_acquire);
    while (l != NULL) {
        struct lane *next = l->next_new;
        if (s->nlanes == s->lanes_cap) {
            unsigned cap = s->lanes_cap ? s->lanes_cap * 2 : 8;
            struct lane **grown = realloc(s->lanes, cap * sizeof(*grown));
            if (grown == NULL) {
                /* Out of memory: put the rest back for the next drain. */
                struct lane *tail = l;
                while (tail->next_new != NULL)
                    tail = tail->next_new;
                struct lane *head = atomic_load_explicit(&s->new_lanes, memory_order_relaxed);
                do {
                    tail->next_new = head;
                } while (!atomic_compare_exchange_weak_explicit(
                    &s->new_lanes, &head, l, memory_order_release, memory_order_relaxed));
                return;
            }
            s->lanes = grown;
            s->lanes_cap = cap;
        }
        dormant_remove(s, l);
        l->idle = 0;
        s->lanes[s->nlanes++] = l;
        l = next;
    }
}

void lane_unpark(struct lane *l)
{
    if (!l->parked)
        return;
    l->parked = false;
    struct shard *s = shard_cur;
    stat_add(&s->lanes_held, (uint64_t)-1);
}

/* Runs the records waiting in one lane, up to budget. Returns the records run. */
static unsigned drain_one(struct shard *s, struct lane *l, unsigned budget)
{
    unsigned ran = 0;
    bool moved = false;
    while (ran < budget) {
        struct lane_slot *r = slot_at(l, l->head);
        /* Acquire pairs with lane_push's release store of seq. */
        if (atomic_load_explicit(&r->seq, memory_order_acquire) != l->head + 1)
            break;
        uint32_t n = rec_slots(r->len);
        bool yield = false;
        if (r->fn != NULL) {
            /* As run_task: the stall detector sees what runs (a handler may name its own). */
            atomic_store_explicit(&s->cur_fn, (pith_anyfn_t)r->fn, memory_order_relaxed);
            stat_add(&s->task_seq, 1);
            uint32_t lq_tail = s->lq_tail;
            int rc = r->fn(l, r->arg, r->aux, (char *)r + LANE_HDR, r->len);
            if (rc == LANE_PARK) {
                l->parked = true;
                stat_add(&s->lanes_held, 1);
                break;
            }
            if (rc == LANE_RETRY)
                break;
            ran++;
            /* The record gave this shard work of its own (a turn, a task): that runs before
             * the lane's next records, as it would had they come a little later. */
            yield = s->lq_tail != lq_tail;
        }
        /* Every slot but the record's first held bytes, or (padding) whatever an earlier lap
         * left: either may read as the sequence a later lap expects there, at the 32-bit wrap
         * too (0 is what a slot never written holds, and what position 2^32 - 1 expects). Each
         * gets its own position + 1 now, a value no later lap looks for; so every slot is
         * written once a lap. Relaxed: ordered before the producer's reuse by the release of
         * head_pub below. */
        for (uint32_t i = 1; i < n; i++)
            atomic_store_explicit(&slot_at(l, l->head + i)->seq, l->head + i + 1,
                                  memory_order_relaxed);
        l->head += n;
        moved = true;
        if (yield)
            break;
    }
    if (moved) {
        /* seq_cst, and a release for lane_room's acquire (see there). Dekker with wait_room:
         * this store and our load of room_wait below, its exchange of room_wait and its load of
         * head_pub, all seq_cst, fall in one total order, so either it sees the room or we see
         * it waiting. (A fence here would do the same; ThreadSanitizer does not model one.) */
        atomic_store(&l->head_pub, l->head);
        if (atomic_load(&l->room_wait) != 0 && atomic_exchange(&l->room_wait, 0) != 0)
            futex_wake_all(&l->room_wait);
    }
    return ran;
}

static bool lane_empty(struct lane *l)
{
    return atomic_load_explicit(&slot_at(l, l->head)->seq, memory_order_acquire) != l->head + 1;
}

unsigned lanes_drain(struct shard *s, unsigned budget)
{
    if (atomic_load_explicit(&s->new_lanes, memory_order_relaxed) != NULL)
        adopt(s);
    unsigned n = s->nlanes;
    if (n == 0) {
        atomic_store_explicit(&s->st.lanes, 0, memory_order_relaxed);
        atomic_store_explicit(&s->st.lanes_dormant, s->ndormant, memory_order_relaxed);
        return 0;
    }
    unsigned ran = 0, i = s->next_lane < n ? s->next_lane : 0;
    for (unsigned k = 0; k < n && ran < budget; k++) {
        struct lane *l = s->lanes[i];
        if (!l->parked)
            ran += drain_one(s, l, budget - ran);
        /* Acquire pairs with drop_lanes' release: every record of the lane is visible. */
        if (!l->parked && atomic_load_explicit(&l->closed, memory_order_acquire) && lane_empty(l)) {
            s->lanes[i] = s->lanes[--s->nlanes];
            n--;
            if (l->orphan)
                atomic_fetch_sub_explicit(&s->orphans, 1, memory_order_relaxed);
            lane_put(l);
            if (i >= n)
                i = 0;
            continue;
        }
        if (l->parked || !lane_empty(l))
            l->idle = 0;
        else if (++l->idle >= LANE_DORMANT_AFTER && go_dormant(s, i)) {
            n--;
            if (i >= n)
                i = 0;
            continue;
        }
        i = i + 1 == n ? 0 : i + 1;
    }
    s->next_lane = i;
    if (ran) {
        tasks_done(s);
        stat_add(&s->st.external_in, ran);
    }
    atomic_store_explicit(&s->st.lanes, s->nlanes, memory_order_relaxed);
    atomic_store_explicit(&s->st.lanes_dormant, s->ndormant, memory_order_relaxed);
    return ran;
}

bool lanes_pending(struct shard *s)
{
    if (atomic_load(&s->new_lanes) != NULL)
        return true;
    for (unsigned i = 0; i < s->nlanes; i++) {
        struct lane *l = s->lanes[i];
        /* seq_cst: the sleeper's last look, in its Dekker with lane_push (loop.c). */
        if (!l->parked &&
            atomic_load_explicit(&slot_at(l, l->head)->seq, memory_order_seq_cst) == l->head + 1)
            return true;
    }
    return false;
}

/* After the shard threads are joined: release every record left and let go of the lanes. */
void lanes_release(struct shard *s, uint64_t *released)
{
    adopt(s);
    for (unsigned i = 0; i < s->nlanes; i++) {
        struct lane *l = s->lanes[i];
        for (;;) {
            struct lane_slot *r = slot_at(l, l->head);
            if (atomic_load_explicit(&r->seq, memory_order_acquire) != l->head + 1)
                break;
            if (r->fn != NULL) {
                r->fn(NULL, r->arg, r->aux, (char *)r + LANE_HDR, r->len);
                (*released)++;
            }
            l->head += rec_slots(r->len);
        }
        atomic_store_explicit(&l->head_pub, l->head, memory_order_release);
        lane_put(l);
    }
    /* Dormant lanes are empty: only the shard's reference to let go of. */
    for (unsigned i = 0; i < s->ndormant; i++)
        lane_put(s->dormant[i]);
    free(s->lanes);
    free(s->dormant);
    s->lanes = s->dormant = NULL;
    s->nlanes = s->lanes_cap = s->ndormant = s->dormant_cap = 0;
}
