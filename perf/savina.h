/* The harness that pith-bench's Savina rows share (savina.c): the engine each row starts, the
 * run's completion, failure and progress, the warm-up and measured runs timed from the driving
 * thread, the check of each run's result, and where the work went. Private to perf/. */
#ifndef PITH_PERF_SAVINA_H
#define PITH_PERF_SAVINA_H

#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/pith.h>

#include "bench.h"

/* Messages a sender sends one receiver before it yields (the default turn of an actor): keeps
 * the shard's other work running and each turn far below the stall threshold. */
#define SV_SEND_BURST 64u

/* The message tags of every Savina row; a row that gets a tag it does not expect fails. */
enum {
    SV_GO = 1,
    SV_PING = 2,
    SV_PONG = 3,
    SV_INC = 4,
    SV_CONTINUE = 5,
    SV_GET = 6,
    SV_COUNT = 7,
    SV_WORK = 8,
    SV_TOKEN = 9,
    SV_START = 10,
    SV_MEET = 11,
    SV_MATE = 12,
    SV_STOP = 13,
    SV_DONE = 14,
};

/* What the harness keeps per shard, one line each: msgs and actors written by that shard only,
 * out0 and out1 by the main thread before and after the runs. */
struct sv_shard {
    _Alignas(64) _Atomic uint64_t msgs; /* messages the row's behaviours handled there */
    _Atomic uint64_t actors;            /* actors sv_spawn_on made there */
    uint64_t out0, out1;                /* its msgs_out when the runs began and ended */
};

/* The row now running. Only one runs at a time, from the main thread. */
struct sv_run {
    sem_t finished;
    _Atomic int err;       /* the first failure */
    _Atomic unsigned left; /* parts of the run (actors, shards) still to finish */
    uint64_t t_start;      /* when the run's first task began (on a shard) */
    uint64_t t_end;        /* when the last part finished (on a shard) */
    unsigned nshards;
    bool busy;     /* the shards busy-poll */
    unsigned runs; /* runs that finished, the warm-up included */
    struct sv_shard *sh;
    /* The first failure's words (sv_failf, or a row's check): written by whoever claimed them
     * first, then why_ready is set with release; read after an acquire load of why_ready. */
    _Atomic int why_claimed;
    _Atomic int why_ready;
    char why[256];
};

extern struct sv_run sv;

/* Ends the run with err (the first failure wins); sv_failf also says why, in words. */
void sv_fail(int err);
void sv_failf(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One part of the run finished; the last one ends the run. */
void sv_part_done(void);

/* Counts one message handled on the calling shard: the rows call it for every message their
 * behaviours handle. Single writer per line: a relaxed load and store, a plain add on x86. */
static inline void sv_bump(void)
{
    _Atomic uint64_t *p = &sv.sh[pith_shard_id()].msgs;
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* Starts the engine; `cross`: the row sends across shards, so they busy-poll when each can have
 * a CPU of its own. Returns 0 or BENCH_FAIL with why. */
int sv_start(const bench_env_t *env, bool cross, char *why, size_t whylen);
void sv_end(void);

/* "2 shards on CPUs 0,1; a run: shard 0 ..., shard 1 ...": where the shards ran and, for each,
 * the actors the row spawned there and the messages handled there and sent to other shards in
 * a run (the average of the runs). Call while the engine runs, after sv_measure. */
void sv_where(char *buf, size_t len);

/* Savina's per-message "computation": the square of sin(37.2), checked so that it cannot be
 * dropped. 0, or -EDOM if the result is impossible. */
int sv_compute(void);

/* Spawns an actor on `shard` from a task there, counting it for sv_where. */
int sv_spawn_on(unsigned shard, const pith_actor_type_t *type, void *arg, pith_ref_t *ref);

/* A type's counters once they show `messages` handled and `stopped` ended, or after a second:
 * a turn adds its messages, and an actor that stopped itself ends, only after its last behaviour
 * returns, which may be after that behaviour signalled the run's end. */
void sv_type_stats(const pith_actor_type_t *type, uint64_t messages, uint64_t stopped,
                   pith_actor_type_stats_t *ts);

/* init for the types whose state is one pointer: the row's record. */
int sv_init_ptr(pith_actor_t *self, void *state, void *arg);

/* The first task of a run with a start on several shards, submitted to shard 0: it takes the
 * shard-side start time and submits fn(arg(s)) to every shard s for which arg gives non-NULL
 * (its own through the local queue, the others through the mesh). The main thread, which has no
 * CPU of its own while the shards busy-poll, then stands between no two shards' starts (it once
 * stood up to ~10 ms between them). */
int sv_fanout(pith_fn_t fn, void *(*arg)(unsigned shard));
/* As a run's first task on one shard: takes the shard-side start time. */
void sv_started(void);

/* One row's runs: kick starts one run from the main thread (after resetting the row's record);
 * check, when not NULL, looks at the row's record once the run has ended and returns 0 or a
 * negative errno with why; parts: sv_part_done calls that end a run; msgs: messages every run
 * handles (sv_bump), checked after each run, 0 when the count varies from run to run. */
struct sv_row {
    int (*kick)(void *ctx);
    int (*check)(void *ctx, char *why, size_t whylen);
    void *ctx;
    unsigned parts;
    uint64_t msgs;
};

/* sv_times.failed_run when the actors could not even be spawned. */
#define SV_SETUP (~0u)

struct sv_times {
    unsigned runs;
    double med, min, max;                   /* ms, on the main thread, from kick to the end seen */
    double shard_med, shard_min, shard_max; /* ms, on the shards, first task to last part */
    int rc;
    unsigned failed_run; /* 0: the warm-up, SV_SETUP: before it */
};

/* One warm-up run, then the measured ones (fewer with env->quick). Each run's time is taken on
 * the main thread, as Savina's and CAF's harnesses time an iteration: from just before it kicks
 * the run off to when it sees the run's end. */
void sv_measure(const bench_env_t *env, const struct sv_row *row, struct sv_times *t);

/* Fills the row from the runs, or why with the failure (`what`: the row's state, for a hang). */
int sv_result(const struct sv_times *t, result_t *r, char *why, size_t whylen, const char *what);

/* A type's total over all runs (warm-up included) against what the runs should have made:
 * 0, or BENCH_FAIL with why when they differ. */
int sv_total_check(const char *what, uint64_t got, uint64_t want, char *why, size_t whylen);

/* The note every row prints: the size against Savina's, the runs, both times, and `where`. */
void sv_note_common(const bench_env_t *env, const result_t *r, const struct sv_times *t, uint64_t n,
                    uint64_t n_savina, const char *where);

#endif
