/* pith-kv's settings: what the command line sets and CONFIG GET / CONFIG SET read and change at
 * run time, with Redis's names, ranges and error texts. Values live in relaxed atomics: any
 * shard may change one (CONFIG SET) and every shard reads them (a setting takes effect on each
 * shard at its next use; no ordering with other data is needed). */
#ifndef PITH_KV_CONFIG_H
#define PITH_KV_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resp.h"

struct kv_settings {
    _Atomic uint64_t timeout_s;  /* close clients idle this long; 0: never (Redis: timeout) */
    _Atomic uint64_t maxclients; /* connections at most, over all shards */
    _Atomic uint64_t max_bulk;   /* proto-max-bulk-len */
    _Atomic uint64_t maxmemory;  /* bytes of data past which writes get -OOM; 0: none */
    /* Memory all clients together may hold (input kept for unfinished commands, replies not
     * yet sent); each shard keeps its share and closes its largest clients past it. */
    _Atomic uint64_t maxmemory_clients;
    _Atomic uint64_t query_limit; /* client-query-buffer-limit: one client's unconsumed input */
    /* client-output-buffer-limit for normal clients: past hard, closed; past soft for longer
     * than soft_secs, closed. 0: no such limit. */
    _Atomic uint64_t obl_hard, obl_soft, obl_secs;
    /* slowlog-log-slower-than: µs, an int64_t's bits (negative: no slowlog; 0: every command);
     * slowlog-max-len: entries each shard keeps; latency-monitor-threshold: ms, 0: off. */
    _Atomic uint64_t slowlog_slower_than, slowlog_max_len, latency_threshold_ms;
    uint64_t maxclients_limit; /* the start value, which the rings were sized for */
    int port;
    const char *bind;
};

extern struct kv_settings kv_cfg;

static inline uint64_t setting(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

/* A setting that may be negative (slowlog-log-slower-than). */
static inline int64_t signed_setting(_Atomic uint64_t *v)
{
    return (int64_t)atomic_load_explicit(v, memory_order_relaxed);
}

/* CONFIG GET pattern [pattern ...]: appends the array of matching names and values (glob
 * patterns, case-insensitive, each setting once). */
int config_get(struct resp_out *o, const struct resp_arg *pats, unsigned n);
/* CONFIG SET name value [name value ...]: all or none. NULL when applied, else the error line
 * (which may be written into buf). n counts the arguments after SET. */
const char *config_set(const struct resp_arg *a, unsigned n, char *buf, size_t size);

/* A Redis memory value ("100", "1k" = 1000, "1kb" = 1024, m/mb, g/gb; case-insensitive) into
 * *out: false when it is not one (or is negative, or overflows). */
bool parse_memory(const char *p, size_t n, uint64_t *out);
/* client-output-buffer-limit's value ("normal 256mb 64mb 60", more groups allowed): each
 * group's hard, soft and seconds into its class's row of out (0 normal, 1 slave or replica,
 * 2 pubsub; rows of classes not named are unchanged). NULL, or Redis's words for what is wrong
 * with it (out unchanged). */
const char *parse_output_limit(const char *p, size_t n, uint64_t out[3][3]);

#endif
