/* pith-kv's persistence, Redis's append-only file on the engine's journal (pith/journal.h):
 * --dir PATH puts every write's effect on the owning shard's journal (the key's state after
 * it: its value and expiry, or its absence; FLUSHALL as such), and each shard reads its journal
 * back into its store at start. --appendfsync says what a reply waits for, with Redis's
 * meaning: always (the write is durable: the reply waits for the journal's sync), everysec (one
 * sync a second; replies do not wait), no (no sync; replies do not wait).
 *
 * A key's records stay on one shard's journal: the store's hash key and the shard count are
 * kept in PATH/kv.meta, and a start with another shard count is refused. */
#ifndef PITH_KV_AOF_H
#define PITH_KV_AOF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/pith.h>

#include "store.h"

enum { AOF_OFF, AOF_ALWAYS, AOF_EVERYSEC, AOF_NO };

extern int aof_mode; /* AOF_* (AOF_OFF without --dir) */

/* "always", "everysec", "no": the mode, or -1. */
int aof_parse(const char *s);

/* Before the engine starts: reads PATH/kv.meta's hash key into key (true), or says there is
 * none yet (false, key untouched). -1 with a message on stderr when it cannot be read. */
int aof_meta_read(const char *dir, unsigned char key[16], unsigned *shards);
/* After the engine starts, when there was no kv.meta: writes it (temporary file, fsync,
 * rename, fsync of the directory). 0 or -errno. */
int aof_meta_write(const char *dir, const unsigned char key[16], unsigned shards);

/* The engine's journal settings for the mode (segment_bytes 0: the engine's default). */
void aof_config(pith_config_t *cfg, const char *dir, uint64_t segment_bytes);

/* On a shard, at start: its journal's records applied to st, in order. 0 or -errno. */
int aof_load(struct store *st, int64_t now_ms, uint64_t *records);

/* On the key's shard, after a command changed it: its state now goes on the journal. 0, or
 * -errno when it could not (the change stays in memory, not durable: the reply says so). */
int aof_key(struct store *st, const char *k, size_t kl, uint64_t h, int64_t now_ms);
int aof_flushall(void);

/* Whether this shard has appended records that are not yet durable. */
bool aof_pending(void);
/* Whether an append failed on this shard since the last call (and clears it). */
bool aof_take_error(void);
/* Whether writes are refused: an append failed in a way that lasts (the journal failed). */
bool aof_broken(void);

/* fn(arg, err) runs on this shard, later, once everything this shard has appended so far is
 * durable (err 0) or has failed (err < 0). 0; -EALREADY nothing is pending (fn never runs);
 * -ENOMEM (fn never runs). */
int aof_when_durable(void (*fn)(void *arg, int err), void *arg);

/* ---- rewriting: what bounds the journal ----
 * A rewrite puts every live key's state on the shard's journal again (a few milliseconds of
 * the store at each tick, in the order store_scan gives), then, once those records are
 * durable, releases everything before its first record (pith_journal_release): replaying
 * what is left gives the same keys, since every key alive throughout has a record after that
 * point, and every change since has its own. BGREWRITEAOF starts one on every shard; a shard
 * starts one by itself once its journal has grown by more than twice its data (64 MiB at
 * least) since the last. */

/* Starts a rewrite on this shard: 0, -EALREADY (one runs), -ENOTCONN (no --dir). */
int aof_rewrite_start(void);
/* At each tick: goes on with a rewrite for slice_ns at most, or starts one when the journal
 * has grown enough for data_bytes of data. Whether one is running. */
bool aof_rewrite_tick(struct store *st, int64_t now_ms, uint64_t slice_ns, uint64_t data_bytes);
/* Rewrites finished on this shard, and whether one runs (INFO; any thread). */
uint64_t aof_rewrites(unsigned shard);
bool aof_rewriting(unsigned shard);

#endif
