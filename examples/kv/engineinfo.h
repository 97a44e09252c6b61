/* INFO's sections of the engine's own figures, one line per shard, read from the engine's public
 * stats calls (pith_shard_stats, pith_mem_stats, pith_net_stats, pith_journal_stats) and, for
 * the percentiles of its histograms, from pith_metrics_json (the one place the engine gives
 * them). Not pith-kv's figures (cmdstats.h, kv.c's INFO). */
#ifndef PITH_KV_ENGINEINFO_H
#define PITH_KV_ENGINEINFO_H

#include "resp.h"

enum {
    EI_ENGINE = 1,  /* "# Engine": the loop, the mesh, utilisation */
    EI_MEMORY = 2,  /* "# Enginememory": the shard's memory, per profile */
    EI_NET = 4,     /* "# Enginenet": TCP */
    EI_JOURNAL = 8, /* "# Enginejournal": the journal's counts */
    /* "# Enginelatency": percentiles of stalls and of the journal's commits. It reads every
     * figure the engine keeps (pith_metrics_json: about a millisecond, memory's figures from
     * /proc), so only INFO enginelatency, all or everything ask for it. */
    EI_LATENCY = 16,
};

/* The sections in `which` (EI_*), in that order, each ending with a blank line; any shard.
 * 0 or -ENOMEM. */
int engine_info(struct resp_out *o, unsigned nshards, unsigned which);

/* On each shard, from its tick: its utilisation over the last second or so, for "# Engine". */
void engine_sample(void);

#endif
