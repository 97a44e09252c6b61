/* Private to shard/: the engine, the shard, the mesh's batches and rings, and the inline fast
 * paths of sending and running tasks. Nothing here is part of the public API. */
#ifndef PITH_SHARD_H
#define PITH_SHARD_H

#include <hwloc.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <pith/engine.h>
#include <pith/error.h>
#include <pith/timer.h>

#include "hist.h"
#include "ticks.h"
#include "hooks.h"
#include "fop.h"
#include "io.h"
#include "lane.h"
#include "mem.h"
#include "ring.h"

#define CACHE_LINE 64
/* 4095, not 4096: a ref's shard field of 4095 names a client (pith/client.h). */
#define MAX_SHARDS 4095

/* A batch of tasks for one destination, owned (allocated and freed) by the sending shard. */
struct batch {
    struct batch *next; /* the owner's lists: free, waiting, sent */
    uint64_t seq;       /* index of the ring entry that carried it */
    uint32_t count;
    uint32_t reserved[3]; /* header of 32 bytes: tasks[] stay 16-byte aligned */
    struct task tasks[];
};

/* One ordered pair (src -> dst) of the N x N mesh. */
struct pair {
    struct ring ring;
    /* Ring entries dst has finished with, as the index of the last batch entry + 1. Written
     * only by dst with a release store after it ran every task of that batch; src reads it
     * with acquire before it reuses batches, so dst's reads of a batch happen before src's
     * next writes to it. Inline entries need no return and do not move it. */
    alignas(CACHE_LINE) _Atomic uint64_t consumed;
    char pad[CACHE_LINE - sizeof(uint64_t)];
};

/* Batches in order, linked through batch.next. */
struct batch_fifo {
    struct batch *head, *tail;
};

/* A pith_when_shard_room callback waiting for room. */
struct room_wait {
    struct room_wait *next;
    struct task task;
};

/* What a shard keeps for one destination. Touched only by the sending shard. */
struct outbound {
    struct batch *open;     /* being filled */
    struct batch_fifo wait; /* full or flushed batches the ring has not taken */
    unsigned waiting;       /* batches in `wait` */
    struct batch_fifo sent; /* in the ring or being run, oldest first */
    uint64_t published;     /* ring entries pushed */
    uint64_t wake_checked;  /* `published` when a wake-up was last considered */
    bool dirty;             /* listed in shard.dirty */
    struct room_wait *room; /* callbacks waiting for `waiting` to drain to half the backlog */
};

/* Per-shard timers: a 4-ary min-heap of (deadline, arming order) over a slot table. */
struct timer_slot {
    uint64_t deadline;
    uint64_t period;
    pith_fn_t fn;
    void *arg;
    uint32_t heap_pos; /* index in the heap, or TIMER_FREE */
    uint32_t seq;      /* low bits of the arming counter, part of the id */
};
struct timer_ent {
    uint64_t deadline;
    uint64_t order;
    uint32_t slot;
};
struct timers {
    struct timer_ent *heap;
    uint32_t len, cap;
    struct timer_slot *slots;
    uint32_t nslots, slots_cap;
    uint32_t *free_slots; /* stack of free slot indexes */
    uint32_t nfree;
    uint64_t armed; /* arming counter: order and id sequence */
};

/* sleep_state values. A shard announces ASLEEP before it blocks; a waker that moves it from
 * ASLEEP to WOKEN with a CAS owns the one wake-up of that sleep. */
enum { AWAKE = 0, ASLEEP = 1, WOKEN = 2 };

/* Counters: written by their shard only (the stall count by the watchdog only), read by any
 * thread. Relaxed atomics, so readers never see torn values and TSan sees no race. */
struct shard_counters {
    _Atomic uint64_t loops, sleeps, msgs_out, msgs_in, batches_out, batches_in, ring_full,
        backpressure, wakes_sent, external_in, timers_fired, timers_pending, stalls;
    _Atomic uint32_t lanes, lanes_dormant; /* copies of nlanes and ndormant for readers */
    /* Utilisation (util_*, loop.c): in ticks_now() units, the loop's start, the idle time of
     * closed idle periods, and the start of the open one (0: busy). idle_seq is a seqlock
     * over idle and idle_from, which a reader needs together. */
    _Atomic uint64_t util_start, idle, idle_from;
    _Atomic uint32_t idle_seq;
    _Atomic uint64_t busy_seen; /* the most busy time a reader was told (engine.c) */
    /* How long the stalls lasted (shard_stall_hist), written by the watchdog thread alone. */
    _Atomic uint64_t stall_hist[HIST_BUCKETS];
    _Atomic uint64_t stall_sum;
};

struct engine;

struct shard {
    unsigned id;
    int cpu;
    int node; /* its CPU's NUMA node, -1 unknown (set with cpu) */
    bool pinned;
    int ring_fd; /* set before the engine runs, then read by other shards for MSG_RING */
    struct engine *eng;
    pthread_t thread;
    int init_err;

    struct mem_home *mem; /* made on the shard's thread; freed after every shard is joined */
    struct io_ring io;
    struct fops fops;    /* operations on io that report once (io/fop.h) */
    int efd;             /* eventfd that outside threads write to wake this shard */
    struct io_op efd_op; /* the read that is always armed on efd */
    uint64_t efd_buf;

    /* local run queue: tasks this shard gave itself */
    struct task *lq;
    uint32_t lq_head, lq_tail, lq_mask;
    struct room_wait *lq_room; /* callbacks waiting for it to drain to half local_queue_max */

    struct outbound *out; /* [nshards] */
    unsigned *dirty;      /* destinations with something to publish */
    unsigned ndirty;
    bool flush_asked; /* shard_flush_ask was called: the flush hooks run */
    struct batch *free_batches;
    unsigned next_src;  /* where the next inbound drain starts, for fairness */
    uint64_t *consumed; /* [nshards]: batches taken from each source's ring and finished */

    struct timers timers;
    uint64_t timer_gate; /* TSC value before which no timer is due (tsc.c); 0: look now */

    /* Written by this shard, read by the stop protocol (wakers, stopper, watchdog). Every
     * publish to this shard reads sleep_state, so its line changes only when the shard goes
     * to sleep or wakes: a counter bumped per message beside it would cost each sender a
     * cache miss per publish. */
    alignas(CACHE_LINE) _Atomic uint32_t sleep_state;
    _Atomic uint64_t sleep_epoch; /* +1 at each announcement of sleep */

    /* Written by this shard as it works, read by the stop protocol. */
    alignas(CACHE_LINE) _Atomic uint64_t remote_sent; /* tasks appended for other shards */
    _Atomic uint64_t remote_run;                      /* tasks from other shards run */
    _Atomic uint64_t lanes_held; /* ingress lanes parked with a record waiting (lane.c) */

    /* Ingress lanes (lane.c): the shard's own list, and the stack producers push new ones on. */
    struct lane **lanes;
    unsigned nlanes, lanes_cap, next_lane;
    struct lane **dormant; /* lanes idle long enough to leave `lanes` (lane.asleep) */
    unsigned ndormant, dormant_cap;
    alignas(CACHE_LINE) _Atomic(struct lane *) new_lanes;
    /* Lanes whose producer has gone with records still in them (lane.c, LANE_ORPHANS_MAX). */
    _Atomic uint32_t orphans;

    /* The stall detector reads these; the shard writes them around each task. */
    alignas(CACHE_LINE) _Atomic(pith_anyfn_t) cur_fn;
    _Atomic uint64_t task_seq;

    alignas(CACHE_LINE) struct shard_counters st;
};

enum engine_state { ENGINE_OFF = 0, ENGINE_STARTING, ENGINE_RUNNING, ENGINE_DRAINING, ENGINE_HALT };

struct engine {
    pith_config_t cfg; /* resolved: shards > 0, cpus filled */
    unsigned *cpu_list;
    unsigned n;
    struct shard **shards;
    struct pair *pairs; /* pairs[src * n + dst] */
    hwloc_topology_t topo;
    /* CPUs the process may use: hwloc's allowed set within the affinity mask it started with. */
    hwloc_bitmap_t usable;
    sem_t ready, go; /* shards post ready after set-up; the starter posts go once decided */
    uint64_t *scan;  /* [n] scratch for the stop protocol's quiescence scan */

    _Atomic int state;
    _Atomic unsigned nshards; /* n while the engine runs, else 0; readable by any thread */
    _Atomic int stat_users;   /* outside readers of stats; stop waits for 0 before freeing */
    /* +1 at each start: producers registered with an earlier engine register again (lane.c). */
    _Atomic uint64_t epoch;

    /* stall detector */
    pthread_t watchdog;
    bool watchdog_on;
    _Atomic uint32_t wd_parked; /* futex word: 1 while the watchdog sleeps until a shard wakes */
    _Atomic int wd_stop;

    pith_stop_report_t last_stop;
    bool have_last_stop;
};

extern struct engine pith_engine;
/* initial-exec: a plain %fs-relative load on the hot path, no __tls_get_addr call. */
extern __thread struct shard *shard_cur __attribute__((tls_model("initial-exec")));

static inline struct pair *mesh_pair(struct engine *e, unsigned src, unsigned dst)
{
    return &e->pairs[(size_t)src * e->n + dst];
}

/* config.c */
int config_resolve(struct engine *e, const pith_config_t *user);
void set_last_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* topo.c */
int topo_open(struct engine *e);
void topo_close(struct engine *e);
int topo_default_cpus(struct engine *e, unsigned **cpus, unsigned *ncpus);
bool topo_cpu_exists(struct engine *e, unsigned cpu);
bool topo_cpu_usable(struct engine *e, unsigned cpu);
/* The NUMA node of a CPU (its os index), or -1 when hwloc does not say. */
int topo_cpu_node(struct engine *e, unsigned cpu);
/* The usable CPUs as a list such as "0-3,8", into buf. */
void topo_usable_list(struct engine *e, char *buf, size_t size);
bool topo_pin_self(struct engine *e, unsigned cpu);

/* mesh.c */
int mesh_create(struct engine *e);
void mesh_release_unrun(struct engine *e, uint64_t *released);
void mesh_destroy(struct engine *e);
int mesh_shard_init(struct shard *s);
void mesh_shard_exit(struct shard *s);
void mesh_shard_fini(struct shard *s, uint64_t *released);
int mesh_open_batch(struct shard *s, unsigned dst, bool force);
void mesh_flush(struct shard *s, struct outbound *o, unsigned dst);
unsigned mesh_publish(struct shard *s);
unsigned mesh_drain(struct shard *s, unsigned budget);
bool mesh_inbound_pending(struct shard *s);
/* Moves the callbacks of *list to the local queue (forced); what cannot move stays. */
void room_fire(struct shard *s, struct room_wait **list);
void room_free(struct room_wait **list, uint64_t *released);

/* Wakes s if it sleeps, from a thread outside the engine (eventfd). For a wake-up that must not
 * be lost, the caller publishes its work with a seq_cst read-modify-write before (lane.c). */
void shard_wake_external(struct shard *s);

/* timer.c */
int timers_init(struct timers *t);
void timers_fini(struct timers *t);
unsigned timers_fire(struct shard *s, uint64_t now, unsigned budget);
uint64_t timers_next(const struct timers *t); /* UINT64_MAX when none */

/* tsc.c */
void tsc_calibrate(void);

/* stall.c */
int stall_start(struct engine *e);
void stall_stop(struct engine *e);
void stall_unpark(struct engine *e);

/* loop.c */
void *shard_main(void *arg);
/* Runs one task, telling the stall detector what runs; the caller ends a group of tasks with
 * tasks_done() so an idle shard never looks stalled. */
static inline void run_task(struct shard *s, const struct task *t)
{
    /* Relaxed: the watchdog only needs these eventually; atomics keep its reads defined. */
    atomic_store_explicit(&s->cur_fn, (pith_anyfn_t)t->fn, memory_order_relaxed);
    stat_add(&s->task_seq, 1);
    t->fn(t->arg);
}

static inline void tasks_done(struct shard *s)
{
    atomic_store_explicit(&s->cur_fn, NULL, memory_order_relaxed);
}
int lq_grow(struct shard *s, bool force);

/* submit.c */
int shard_send(struct shard *s, unsigned dst, const struct task *t, bool force);
void task_released(const struct task *t);

/* The hot path of sending: append to the open batch for dst when it has room. */
static inline int shard_send_fast(struct shard *s, unsigned dst, const struct task *t)
{
    struct outbound *o = &s->out[dst];
    struct batch *b = o->open;
    if (b != NULL && b->count + 1 < s->eng->cfg.batch_msgs) {
        b->tasks[b->count++] = *t;
        stat_add(&s->remote_sent, 1);
        return 0;
    }
    return shard_send(s, dst, t, false);
}

static inline unsigned lq_len(const struct shard *s)
{
    return s->lq_tail - s->lq_head;
}

static inline int lq_push(struct shard *s, const struct task *t, bool force)
{
    if (lq_len(s) > s->lq_mask) {
        int err = lq_grow(s, force);
        if (err)
            return err;
    }
    s->lq[s->lq_tail++ & s->lq_mask] = *t;
    return 0;
}

#endif
