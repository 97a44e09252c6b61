/* pith-kv's latency monitor (Redis's LATENCY command): per shard, for each event, the latest
 * 160 samples of at least latency-monitor-threshold ms (one per second: the largest in it) and
 * the largest ever, in fixed arrays; LATENCY's replies merge every shard's. Events:
 *
 *   command           a command that is not "fast" ran that long (cmdstats.h: its duration)
 *   fast-command      a fast one (Redis's O(1) and O(log N) commands) did
 *   expire-cycle      a round of the active expiry cycle took that long
 *   aof-fsync-always  with --appendfsync always, replies waited that long for the journal's sync
 *                     (the engine syncs off the shard's thread: nothing is blocked, but the
 *                     replies are held)
 *
 * Not the slowlog (slowlog.h). */
#ifndef PITH_KV_LATENCY_H
#define PITH_KV_LATENCY_H

#include <stdint.h>

#include "resp.h"

enum lat_event {
    LAT_COMMAND,
    LAT_FAST_COMMAND,
    LAT_EXPIRE_CYCLE,
    LAT_AOF_FSYNC_ALWAYS,
    LAT_EVENTS,
};

#define LAT_SAMPLES 160 /* Redis's LATENCY_TS_LEN */

/* The event named a (case-sensitive, as Redis's), or -1. */
int latency_event(const struct resp_arg *a);

/* On a shard: `ms` of event ev, kept when latency-monitor-threshold is on and ms is at least
 * it. */
void latency_add(enum lat_event ev, uint64_t ms);

/* LATENCY RESET's part on this shard: the events named (none: all) are cleared; the mask of
 * those that had samples goes into o (8 bytes). 0 or -ENOMEM. */
int latency_reset(const struct resp_arg *names, unsigned n, struct resp_out *o);
/* The other subcommands' part on this shard: every event's samples, into o. 0 or -ENOMEM. */
int latency_dump(struct resp_out *o);

/* The replies, from every shard's part (parts[0..n)). 0 or -ENOMEM. */
int latency_reset_reply(const struct resp_out *parts, unsigned n, struct resp_out *o);
int latency_latest_reply(const struct resp_out *parts, unsigned n, struct resp_out *o);
int latency_history_reply(const struct resp_out *parts, unsigned n, int ev, struct resp_out *o);
int latency_doctor_reply(const struct resp_out *parts, unsigned n, struct resp_out *o);

#endif
