/* Tail-latency SLAs per actor type: each shard watches the latency its messages of the type
 * see (time in the mailbox plus the handler: from the send to the end of handling) over a
 * sliding window, reports when a target is missed and when it is met again, and, where asked,
 * acts.
 *
 * Each shard judges its own window: a type violates on shard 3 when the messages shard 3
 * handled missed the target, whatever the other shards did, and the remedies act there. The
 * latencies come from one message in 16 on average (those pith/metrics.h's mailbox histogram
 * times), as
 * log buckets: a percentile is its bucket's upper edge, within 19% above the true value. A
 * window of fewer than 16 samples gives no verdict; with fewer than 100 (1000) samples the
 * p99 (p999) is their largest.
 *
 * Remedies, opt-in per type, taken one per evaluation that misses, in this order (a remedy
 * not asked for, or with nothing to act on now, is passed over in the same evaluation):
 * - PITH_SLA_PROFILE moves the states of the busiest activations to the hot profile
 *   (pith/mem.h: prefaulted and locked), as pith_vactor_set_profile does;
 * - PITH_SLA_PREWARM pre-warms the related keys (pith_vtype_t.related) of the busiest
 *   activations, as pith_vactor_prewarm does;
 * - PITH_SLA_SHED refuses new messages to the type on that shard (senders get -EBUSY, as
 *   pith_send's errors and undelivered notices carry it), until the SLA is met again. A window
 *   with too few samples while shedding counts as met (nothing waits long: the backlog is gone);
 * - PITH_SLA_MIGRATE moves the busiest activations to the least-loaded shard (utilisation over
 *   the last eighth of the window, pith_shard_stats_t.busy_ns), as pith_vactor_migrate does,
 *   when that shard is 10 points of utilisation below this one; it is the last step, tried
 *   again at each evaluation that misses.
 * The busiest activations are the 4 that the most timed messages went to lately (a count over
 * the timed messages that halves at each evaluation). Only shedding is undone when the SLA is
 * met again; a whole window without a miss sends the next miss back to the first remedy. Each
 * remedy taken is reported (the hook's report, or a line on stderr) with the figures that
 * caused it and what it did. PROFILE, PREWARM and MIGRATE act on activations: the type must be
 * a virtual type's (pith_vtype_actor), with related keys for PREWARM, and one that can move
 * (not event-sourced, not stateless workers) for MIGRATE.
 *
 * A memory guarantee (pith_sla_t.mem_bytes, a virtual type's only): each shard reserves that
 * many bytes of hot memory (prefaulted and locked) when the SLA is set, and from then on the
 * type's new activations there are made in hot memory while its states in hot memory stay
 * within the guarantee (an activation's state, entry and key count), so they take no page
 * fault; memory pressure does not deactivate them. The hot profile grows by the guarantees'
 * sum; other hot blocks of the shard share it. An activation within the guarantee that still
 * found no hot memory is made in its type's profile, counted (mem_misses) and reported at the
 * next evaluation. */
#ifndef PITH_SLA_H
#define PITH_SLA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/actor.h>
#include <pith/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Remedies (pith_sla_t.remedies). */
#define PITH_SLA_SHED    (1u << 0) /* refuse new messages to the type on the shard: -EBUSY */
#define PITH_SLA_PROFILE (1u << 1) /* the busiest activations' states to the hot profile */
#define PITH_SLA_PREWARM (1u << 2) /* pre-warm the busiest activations' related keys */
#define PITH_SLA_MIGRATE (1u << 3) /* the busiest activations to the least-loaded shard */

/* What the monitor tells: a violation (met false) or the SLA met again after one (met true),
 * with the figures that decided it. */
typedef struct pith_sla_report {
    const pith_actor_type_t *type; /* whose SLA */
    unsigned shard;                /* where it was judged (the report runs there) */
    bool met;                      /* false: missed; true: met again after a miss */
    uint64_t p99_ns;               /* over the window on this shard; 0 with fewer than 16 samples */
    uint64_t p999_ns;              /* see p99_ns */
    uint64_t samples;              /* messages timed in the window */
    uint64_t p99_target_ns;        /* the SLA's targets */
    uint64_t p999_target_ns;       /* see p99_target_ns */
    unsigned action; /* the PITH_SLA_* remedy taken (or, met again, undone) now; 0: none */
    /* What it did: activations moved to hot memory (PROFILE) or to another shard (MIGRATE),
     * keys asked to pre-warm (PREWARM); 0 for SHED and none. */
    unsigned acted;
    unsigned to_shard;      /* MIGRATE: where they went; else UINT_MAX */
    uint64_t mem_guarantee; /* the memory guarantee (0: none) */
    uint64_t mem_hot;       /* bytes of the type's states in hot memory on this shard */
    /* Activations within the guarantee that found no hot memory since the last evaluation:
     * a report with action 0 and this above 0 says the guarantee was broken. */
    uint64_t mem_misses;
} pith_sla_report_t;

/* An SLA: targets for the p99 and p999 of (time in the mailbox + handler), 0 for none, and a
 * memory guarantee; at least one of the three. */
typedef struct pith_sla {
    uint64_t p99_ns;    /* target for the p99 (0: none) */
    uint64_t p999_ns;   /* target for the p999 (0: none) */
    uint64_t window_ns; /* the sliding window (default 10 s; 8 ms to 1 h), judged every eighth */
    unsigned remedies;  /* PITH_SLA_* */
    size_t mem_bytes;   /* the memory guarantee per shard, in bytes (0: none); see above */
    /* Runs on the shard, outside any actor's turn, for each report. NULL: a line on stderr.
     * It must not block. */
    void (*on_report)(const pith_sla_report_t *r, void *ctx);
    void *ctx; /* on_report's */
} pith_sla_t;

/* Sets (or, sla NULL, removes) the SLA of `type` on every shard of the running engine; type
 * must outlive the engine. A new SLA replaces the old, with a fresh window; removing one stops
 * its shedding. From a thread outside the engine it returns once every shard took it; from a
 * shard, once every shard was asked (its own and the others take it in their next loop).
 * Errors: -EINVAL type NULL, no target and no guarantee, window out of range, a remedy
 * unknown or one that type cannot take, a guarantee for a type that is not a virtual type's
 * (see above); -ESHUTDOWN no engine; -ENOMEM (a shard could not reserve the guarantee: from
 * outside the engine, no shard keeps the SLA then; from a shard, that shard alone lacks it). */
PITH_API int pith_sla_set(const pith_actor_type_t *type, const pith_sla_t *sla);

/* The SLA's figures for `type` on `shard`. */
typedef struct pith_sla_stats {
    bool set;                /* an SLA is set on this shard */
    bool violated;           /* the last verdict missed a target */
    bool shedding;           /* PITH_SLA_SHED acts now */
    uint64_t p99_ns;         /* at the last evaluation, over the window (0: too few samples) */
    uint64_t p999_ns;        /* see p99_ns */
    uint64_t p99_target_ns;  /* the SLA's targets (0: none) */
    uint64_t p999_target_ns; /* see p99_target_ns */
    uint64_t samples;        /* in the window at the last evaluation */
    uint64_t evaluations;    /* windows judged */
    uint64_t violations;     /* times it went from met to missed */
    uint64_t recoveries;     /* times it was met again after a miss */
    uint64_t shed;           /* messages refused while shedding */
    uint64_t upgraded;       /* activations moved to hot memory by PITH_SLA_PROFILE */
    uint64_t prewarmed;      /* related keys PITH_SLA_PREWARM asked to pre-warm */
    uint64_t migrated;       /* activations PITH_SLA_MIGRATE moved away */
    uint64_t mem_guarantee;  /* the memory guarantee (0: none) */
    uint64_t mem_hot;        /* bytes of the type's states in hot memory on this shard */
    uint64_t mem_misses;     /* activations within the guarantee that found no hot memory */
} pith_sla_stats_t;

/* Any thread. Errors: -EINVAL type or out NULL, shard out of range; -ESHUTDOWN. */
PITH_API int pith_sla_stats(const pith_actor_type_t *type, unsigned shard, pith_sla_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
