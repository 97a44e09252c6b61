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

/* One actor type on one shard: its counters (as pith_actor_type_stats's, of that shard), and
 * the handler-time histogram (one message in 16) with the sum of its samples. */
struct core_type_shard {
    pith_actor_type_stats_t st;
    uint64_t hist[CORE_HIST_BUCKETS];
    uint64_t sum_ns;
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
