/* pith-kv's figures per command, per shard: calls, time, rejected and failed calls, and a
 * log-scale histogram of each command's duration; INFO commandstats and latencystats and LATENCY
 * HISTOGRAM read them. Not the slowlog (slowlog.h) nor the latency monitor (latency.h).
 *
 * A command's duration is the time the shards spent executing it: on the connection's shard from
 * its parsing to the end of its dispatch, plus, for each request it sent to another shard (or
 * that waited in a park list), that request's execution there. Waiting is not in it (the mesh,
 * locks held by others, the journal's sync), as Redis's duration is the time its one thread was
 * busy with the command. */
#ifndef PITH_KV_CMDSTATS_H
#define PITH_KV_CMDSTATS_H

#include <stdbool.h>
#include <stdint.h>

#include "resp.h"

/* 4 buckets per power of two of nanoseconds from 32 ns; the last also holds everything past
 * about 2^36.75 ns (115 s). A percentile is the upper edge of its bucket: within 19% above the
 * true value, as the engine's own histograms. */
#define CMD_HIST_BUCKETS 128

/* The commands pith-kv counts (its own and their subcommands, as INFO names them: "get",
 * "config|get"). Index into the table, or -1 for a name pith-kv does not have (and for an unknown
 * subcommand of a command that has subcommands: Redis does not count those either). A command
 * with subcommands given alone ("CONFIG") is the command itself. */
int cmd_find(const struct resp_arg *a, unsigned argc);
/* Redis's "fast" flag (O(1) or O(log N) commands): the latency monitor's fast-command event. */
bool cmd_fast(int cmd);
const char *cmd_name(int cmd);

/* On a shard, at its start: its figures. 0 or -ENOMEM. */
int cmd_stats_init(void);

/* On the connection's shard: a call of cmd took ns, and answered with an error or not. */
void cmd_record(int cmd, uint64_t ns, bool failed);
/* On the connection's shard: a call of cmd refused before it ran (its arguments' count, -OOM,
 * -MISCONF): Redis's rejected_calls. */
void cmd_reject(int cmd);

/* CONFIG RESETSTAT: every shard's figures read as 0 from now on (any shard). */
void cmd_stats_reset(void);

/* INFO's "# Commandstats" and "# Latencystats" sections (with their trailing blank line), over
 * all shards; any shard. 0 or -ENOMEM. */
int cmd_info_commandstats(struct resp_out *o, unsigned nshards);
int cmd_info_latencystats(struct resp_out *o, unsigned nshards);

/* LATENCY HISTOGRAM [command ...]: Redis 7's reply (RESP2: a flat array of name, then calls and
 * histogram_usec, the cumulative count at each power of two of microseconds from 1 µs up to the
 * last one with a sample); names[0..n), none: every command called. Any shard. */
int cmd_histogram_reply(struct resp_out *o, unsigned nshards, const struct resp_arg *names,
                        unsigned n);

#endif
