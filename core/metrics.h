/* What obs/ (the metrics registry) reads of the actor layer beyond the public stats: the
 * actor types it knows, and the log-scale histograms behind the public percentiles, per shard.
 * Any thread while the engine runs. */
#ifndef PITH_CORE_METRICS_H
#define PITH_CORE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <pith/actor.h>
#include <pith/vactor.h>

/* Buckets of the histograms below: bucket b holds the samples v (ns) with
 * core_hist_upper(b - 1) <= v < core_hist_upper(b), 4 buckets per power of two. */
#define CORE_HIST_BUCKETS 256
uint64_t core_hist_upper(unsigned b);

/* The actor types this engine has seen, each once, into types[0..cap). Returns how many it
 * found (more than cap: ask again with room for that many); 0 without an engine. */
size_t core_types(const pith_actor_type_t **types, size_t cap);

/* Buckets of the mailbox-depth histogram: bucket b holds the depths in [2^(b-1), 2^b). */
#define CORE_DEPTH_BUCKETS 33

/* One actor type on one shard: its counters (as pith_actor_type_stats's, of that shard); the
 * handler-time histogram (one message in 16) with the sum of its samples; the time in the
 * mailbox, from the send to the start of handling (one message in 16 that a thread makes; a
 * message handled as it arrives, with no mailbox, counts as 0) with its sum; the depth one
 * enqueue in 16 left; and the stalls the detector saw in its behaviours. */
struct core_type_shard {
    pith_actor_type_stats_t st;
    uint64_t hist[CORE_HIST_BUCKETS];
    uint64_t sum_ns;
    uint64_t mbox[CORE_HIST_BUCKETS];
    uint64_t mbox_sum_ns;
    uint64_t depth[CORE_DEPTH_BUCKETS];
    uint64_t depth_sum;
    uint64_t stalls;
};
/* Errors: -EINVAL, -ESHUTDOWN. */
int core_type_shard(const pith_actor_type_t *type, unsigned shard, struct core_type_shard *out);

/* A virtual type's latency histograms on one shard (one activation in 16): activation, and a
 * caller's first message (pith_vtype_stats_t says what each times), with their sums. */
struct vtype_hists {
    uint64_t act[CORE_HIST_BUCKETS];
    uint64_t act_sum_ns;
    uint64_t first[CORE_HIST_BUCKETS];
    uint64_t first_sum_ns;
};
/* Errors: as pith_vtype_shard_stats. */
int vactor_type_hists(const pith_vtype_t *t, unsigned shard, struct vtype_hists *out);

#endif
