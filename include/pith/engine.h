/* The engine: start and stop the shards, run work on a shard, read per-shard stats.
 * One engine per process. Actors, memory and networking have their own headers. */
#ifndef PITH_ENGINE_H
#define PITH_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include <pith/api.h>
#include <pith/journal.h>
#include <pith/mem.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A value for pith_config_t.shards: take $PITH_SHARDS if set, else one shard per CPU of the
 * CPU list (pith_config_t.cpus), whose default is one CPU per core the process may use. */
#define PITH_AUTO (-1)

/* pith_config_t.flags */
#define PITH_CFG_NO_PIN    (1u << 0) /* do not pin shard threads to CPUs */
#define PITH_CFG_RING_COOP (1u << 1) /* do not ask io_uring for SINGLE_ISSUER|DEFER_TASKRUN */
#define PITH_CFG_RING_PLAIN                                                                        \
    (1u << 2) /* ask io_uring for no setup flags beyond CQSIZE (oldest kernels; tests) */

/* Any task function, as the stall detector names it; compare after a cast to this type. */
typedef void (*pith_anyfn_t)(void);

/* What the stall detector saw: a task on `shard` that kept running past the threshold. */
typedef struct pith_stall {
    unsigned shard; /* the shard it ran on */
    /* The function that was running: the task's, or for an actor's turn its behaviour. */
    pith_anyfn_t fn;
    const char *fn_name; /* its symbol name where the dynamic linker knows it, else NULL */
    /* The name of the actor type whose behaviour ran (pith_actor_type_t.name), or NULL when
     * the task was not an actor's turn or the type has no name. */
    const char *actor_type;
    uint64_t ns; /* how long it had been running when seen (a lower bound) */
} pith_stall_t;

/* How the engine runs: pith_config_init fills the defaults, pith_engine_start copies it. */
typedef struct pith_config {
    /* Number of shards (> 0), or PITH_AUTO: one per CPU of the list below, so under
     * `taskset -c 1` one shard, on CPU 1. 0 and values above 4095 are rejected (4095 is the
     * shard field of clients' refs, pith/client.h). */
    int shards;
    /* CPUs (OS numbering) the shards are pinned to, shard i on cpus[i % ncpus]. NULL: take
     * $PITH_CPUS ("0-3,8,10"), else, of each core, the first hardware thread the process may
     * use. The CPUs a process may use are those hwloc allows (cgroup cpusets) within the
     * affinity mask the process had when libpith was loaded (taskset, or sched_setaffinity
     * before exec); the application pinning its own threads later changes nothing here. A CPU
     * given here or in $PITH_CPUS that does not exist or is outside those makes
     * pith_engine_start fail with -EINVAL, and pith_last_error() names it and the CPUs allowed. */
    const unsigned *cpus;
    unsigned ncpus; /* entries of cpus */
    /* Messages carried by one mesh batch (default 64, 1..65536). */
    unsigned batch_msgs;
    /* Capacity of each shard-to-shard SPSC ring, in batches (default 256; power of two >= 4). */
    unsigned ring_batches;
    /* Full batches that may wait on the sender for one destination whose ring is full before
     * pith_submit returns -EAGAIN (default 64, >= 1). */
    unsigned backlog_batches;
    /* Tasks a shard runs per loop iteration before it services rings, I/O and timers
     * (default 256). */
    unsigned budget;
    /* Tasks a shard may queue for itself before pith_submit returns -EAGAIN (default 1 << 20,
     * at least 1024). */
    unsigned local_queue_max;
    /* Slots of 64 bytes in each ingress lane: the bounded queue from one thread outside the
     * engine (or one client, pith/client.h) to one shard (default 512; a power of two,
     * 16..65536). A task, or a message of up to 32 bytes, takes one slot; a message too large
     * for half a lane travels by pointer. Each lane costs lane_slots * 64 bytes (32 KiB by
     * default), made when its thread first reaches that shard and freed once the thread (or
     * client) has gone and the shard has run what it left; a shard keeps at most 64 lanes so
     * left with records, and past that a new lane waits (or is -EAGAIN) until one empties. */
    unsigned lane_slots;
    /* Busy polling after the last piece of work before a shard sleeps (default 50 us). A
     * sleeping shard also wakes this long before its next timer and spins to the deadline. */
    uint64_t poll_ns;
    /* Stall threshold (default 20 ms); 0 turns the detector off. */
    uint64_t stall_ns;
    /* How long pith_engine_stop lets queued work keep running before it releases what is
     * left (default 1 s). */
    uint64_t drain_ns;
    /* io_uring submission queue entries per shard (default 256); the CQ gets 16 times that. */
    unsigned io_entries;
    /* Receive buffers each shard provides to the kernel for its TCP connections (pith/net.h):
     * how many (0 or default 256, a power of two up to 32768) and of how many bytes (0 or default
     * 16384, 64..1 MiB). Set up on a shard when it first uses TCP. */
    unsigned net_bufs;
    unsigned net_buf_size; /* bytes of each of them (see net_bufs) */
    unsigned flags;        /* PITH_CFG_* */
    /* Called from the stall detector's thread for each reported stall (rate-limited to one
     * per shard per second); NULL prints a line on stderr. */
    void (*on_stall)(const pith_stall_t *stall, void *ctx);
    void *stall_ctx; /* on_stall's ctx */
    /* Each shard's memory (pith/mem.h); zeros take the defaults. */
    pith_mem_config_t mem;
    /* Each shard's journal (pith/journal.h); zeros take the defaults, and no directory (nor
     * $PITH_JOURNAL_DIR) means no journal. */
    pith_journal_config_t journal;
} pith_config_t;

/* Fills *cfg with the defaults above (shards = PITH_AUTO, cpus = NULL). */
PITH_API void pith_config_init(pith_config_t *cfg);

/* Starts the engine: creates the shards, pins them, sets up each shard's io_uring on its own
 * thread, and returns once every shard runs its loop. cfg may be NULL for the defaults; it is
 * copied, the caller keeps ownership. Call from a thread outside the engine.
 * Errors: -EINVAL a bad config value, such as a CPU the process may not use (see
 * pith_last_error()), -EALREADY the engine runs, -ENODEV no CPU to run shards on, -ENOMEM,
 * -EAGAIN threads could not be created, or the errno of io_uring_setup when a shard could not
 * get a ring even without optional flags. A failed start leaves nothing behind.
 * A CPU that exists but refuses pinning is not an error: see pith_shard_stats_t.pinned. */
PITH_API int pith_engine_start(const pith_config_t *cfg);

/* What the last pith_engine_stop did with the work it found. */
typedef struct pith_stop_report {
    uint64_t drain_ns;        /* how long queued work was allowed to run */
    bool quiescent;           /* every queue ran empty before the drain deadline */
    uint64_t released_tasks;  /* tasks that never ran: queued when the deadline passed */
    uint64_t released_timers; /* timers that were still pending, released without firing */
    /* Bytes still held in blocks the shards allocated (pith_malloc): their accounts are kept
     * so that freeing them later stays safe. */
    uint64_t mem_in_use;
} pith_stop_report_t;

/* Stops the engine. External submission is refused at once (-ESHUTDOWN); work already queued
 * keeps running, and may queue more work on other shards, until every shard is idle with every
 * queue empty or until cfg.drain_ns passes; then timers are released, whatever is still queued
 * is released without running (counted in the report), threads are joined and all memory is
 * freed. Call from a thread outside the engine.
 * Errors: -EDEADLK called from a shard, -ESHUTDOWN no engine runs. */
PITH_API int pith_engine_stop(void);

/* Copies the report of the last completed pith_engine_stop. Errors: -ENOENT none yet. */
PITH_API int pith_engine_stop_report(pith_stop_report_t *out);

/* Number of shards of the running engine, 0 when none runs. Any thread. */
PITH_API unsigned pith_shard_count(void);

/* The calling shard's index, or -1 on a thread outside the engine. */
PITH_API int pith_shard_id(void);

/* CLOCK_MONOTONIC in nanoseconds: the clock timers and stats use. Any thread. */
PITH_API uint64_t pith_now_ns(void);

/* A unit of work: runs on one shard, must not block. */
typedef void (*pith_fn_t)(void *arg);

/* Runs fn(arg) on `shard`, once, soon. From a shard thread the task joins the mesh batch for
 * that shard (or the local queue when shard is the caller's own); tasks sent from one shard to
 * another run in the order they were submitted. From another thread it goes through that
 * thread's own ingress lane to the shard (bounded: cfg.lane_slots; FIFO per thread and shard)
 * and wakes the shard if it sleeps; nothing is allocated per task. arg stays the caller's.
 * Errors: -EINVAL shard out of range or fn NULL; -ESHUTDOWN no engine runs, or it is stopping
 * and the caller is outside the engine; -EAGAIN backpressure: the ring to that shard is full and
 * cfg.backlog_batches batches already wait (or the local queue is at cfg.local_queue_max), or
 * the calling thread's lane to it is full — wait with pith_when_shard_room on a shard, or use
 * pith_call_wait / pith_client_call (pith/client.h), which wait for room, outside; -ENOMEM. */
PITH_API int pith_submit(unsigned shard, pith_fn_t fn, void *arg);

/* Runs fn(arg) once on the calling shard when pith_submit or pith_call to `shard` would no
 * longer get -EAGAIN: its mesh backlog (or, for the calling shard itself, its local queue) has
 * drained to half its bound. Call from a shard; threads outside wait inside pith_call_wait or
 * pith_client_call instead. Errors: -EPERM outside the engine, -EINVAL shard out of range or fn
 * NULL, -ENOMEM, -ESHUTDOWN. */
PITH_API int pith_when_shard_room(unsigned shard, pith_fn_t fn, void *arg);

/* pith_call's function returns a result that travels back to the caller; pith_submit's returns
 * nothing, because nothing travels back: a task is fire-and-forget. */
typedef void *(*pith_call_fn_t)(void *arg);
/* What pith_call runs back on the calling shard with fn's result. */
typedef void (*pith_done_fn_t)(void *result, void *ctx);

/* Runs result = fn(arg) on `shard`, then done(result, ctx) back on the calling shard. Call from
 * a shard thread; outside threads use pith_call_wait. The reply travels the mesh like any task,
 * so done runs even when the engine starts stopping meanwhile, unless the drain deadline passes.
 * Errors: as pith_submit, and -EPERM called from outside the engine, -EINVAL done NULL. */
PITH_API int pith_call(unsigned shard, pith_call_fn_t fn, void *arg, pith_done_fn_t done,
                       void *ctx);

/* Runs fn(arg) on `shard` and blocks the calling thread until it returns; *result (if not NULL)
 * receives its return value. For threads outside the engine: it waits for room in the thread's
 * lane instead of failing with -EAGAIN. When the engine stops first it returns once the task has
 * run, or with -ECANCELED once the stop released it. Errors: -EDEADLK called from a shard;
 * otherwise as pith_submit but -EAGAIN. */
PITH_API int pith_call_wait(unsigned shard, pith_call_fn_t fn, void *arg, void **result);

/* Counters of one shard. Each is written by that shard only and read here without stopping it,
 * so a snapshot is not atomic as a whole. */
typedef struct pith_shard_stats {
    unsigned shard;          /* the shard these are of */
    int cpu;                 /* CPU the shard was meant to run on, -1 when not pinned */
    bool pinned;             /* pinning was asked for and succeeded */
    uint32_t ring_flags;     /* io_uring setup flags the ring got (IORING_SETUP_*) */
    uint32_t ring_features;  /* io_uring features the kernel reported (IORING_FEAT_*) */
    uint64_t loops;          /* loop iterations */
    uint64_t sleeps;         /* times the shard blocked in its ring's wait */
    uint64_t tasks_run;      /* tasks run, from every source */
    uint64_t msgs_out;       /* tasks published to other shards */
    uint64_t msgs_in;        /* tasks taken from other shards' rings */
    uint64_t batches_out;    /* batches published to other shards */
    uint64_t batches_in;     /* batches taken from other shards' rings */
    uint64_t ring_full;      /* publish attempts that found a ring full */
    uint64_t backpressure;   /* -EAGAIN returned to submitters on this shard */
    uint64_t wakes_sent;     /* IORING_OP_MSG_RING wake-ups sent to sleeping shards */
    uint64_t wake_failures;  /* of those, wake-ups the kernel refused (should stay 0) */
    uint64_t external_in;    /* records run from ingress lanes (threads outside the engine) */
    uint32_t lanes;          /* ingress lanes the shard looks at each loop */
    uint32_t lanes_dormant;  /* lanes set aside as idle (their next record brings them back) */
    uint32_t lanes_orphaned; /* lanes left with records by producers that have gone */
    uint64_t timers_fired;   /* timer callbacks run */
    uint64_t timers_pending; /* timers waiting now */
    uint64_t stalls;         /* stalls the detector saw on this shard */
    /* Time since the shard's loop began, and of it the time the loop was not idle (idle:
     * polling with nothing to do, or asleep, from 16 iterations into a run of empty ones to the
     * one that finds work; a shorter gap counts as busy). Between two reads,
     * Δbusy_ns / Δelapsed_ns is the shard's utilisation; busy_ns never goes down. Measured with
     * the TSC where the CPU has an invariant one. */
    uint64_t busy_ns;
    uint64_t elapsed_ns; /* see busy_ns */
} pith_shard_stats_t;

/* Copies shard `shard`'s counters. Any thread while the engine runs.
 * Errors: -ESHUTDOWN no engine, -EINVAL shard out of range or out NULL. */
PITH_API int pith_shard_stats(unsigned shard, pith_shard_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
