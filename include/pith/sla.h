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
 * Remedies, opt-in per type, taken one per evaluation while the SLA stays violated, in this
 * order: PITH_SLA_SHED refuses new messages to the type on that shard (senders get -EBUSY, as
 * pith_send's errors and undelivered notices carry it), until the SLA is met again. A window
 * with too few samples while shedding counts as met (nothing waits long: the backlog is gone).
 * Not yet: raising the memory profile of a virtual type's activations, pre-warming related
 * keys, migrating the busiest activations, and a memory guarantee; pith_sla_set refuses those
 * remedy bits with -EOPNOTSUPP. */
#ifndef PITH_SLA_H
#define PITH_SLA_H

#include <stdbool.h>
#include <stdint.h>

#include <pith/actor.h>
#include <pith/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Remedies (pith_sla_t.remedies). */
#define PITH_SLA_SHED    (1u << 0) /* refuse new messages to the type on the shard: -EBUSY */
#define PITH_SLA_PROFILE (1u << 1) /* not yet: -EOPNOTSUPP */
#define PITH_SLA_PREWARM (1u << 2) /* not yet: -EOPNOTSUPP */
#define PITH_SLA_MIGRATE (1u << 3) /* not yet: -EOPNOTSUPP */

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
} pith_sla_report_t;

/* An SLA: targets for the p99 and p999 of (time in the mailbox + handler), 0 for none (not
 * both). */
typedef struct pith_sla {
    uint64_t p99_ns;    /* target for the p99 (0: none) */
    uint64_t p999_ns;   /* target for the p999 (0: none) */
    uint64_t window_ns; /* the sliding window (default 10 s; 8 ms to 1 h), judged every eighth */
    unsigned remedies;  /* PITH_SLA_* */
    /* Runs on the shard, outside any actor's turn, for each report. NULL: a line on stderr.
     * It must not block. */
    void (*on_report)(const pith_sla_report_t *r, void *ctx);
    void *ctx; /* on_report's */
} pith_sla_t;

/* Sets (or, sla NULL, removes) the SLA of `type` on every shard of the running engine; type
 * must outlive the engine. A new SLA replaces the old, with a fresh window; removing one stops
 * its shedding. From a thread outside the engine it returns once every shard took it; from a
 * shard, once every shard was asked (its own and the others take it in their next loop).
 * Errors: -EINVAL type NULL, both targets 0, window out of range; -EOPNOTSUPP a remedy not
 * done yet; -ESHUTDOWN no engine; -ENOMEM. */
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
} pith_sla_stats_t;

/* Any thread. Errors: -EINVAL type or out NULL, shard out of range; -ESHUTDOWN. */
PITH_API int pith_sla_stats(const pith_actor_type_t *type, unsigned shard, pith_sla_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
