/* pith-kv's per-shard key space: a chained hash table of byte-string keys and values with an
 * optional expiry (Unix time in milliseconds, as Redis keeps it). Each shard owns one and is the
 * only thread that touches it; the counters are relaxed atomics so INFO can read them from any
 * shard.
 *
 * Hostile keys: the hash is SipHash-1-3 under a random per-process key (kv_hash_seed), so nobody
 * outside can build keys that share a bucket or a shard. Pauses: the table grows and shrinks by
 * incremental rehash, as Redis's dict does: two tables, and every operation (and the shard's
 * tick, by time) moves a few buckets from the old to the new, so no command waits for a whole
 * table to move. Expiry: the entries that have one are also in a dense array, which the active
 * expiry cycle walks (store_expire_cycle). */
#ifndef PITH_KV_STORE_H
#define PITH_KV_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct entry {
    struct entry *next;
    uint64_t hash;
    int64_t expire_ms; /* 0: none */
    uint32_t klen, vlen;
    uint32_t xi; /* its index in the store's expiry array, when expire_ms != 0 */
    char data[]; /* key, then value */
};

struct table {
    struct entry **b;
    size_t mask; /* buckets - 1; b == NULL: no table */
};

struct store {
    struct table t[2];     /* t[1] exists while a rehash moves t[0] into it */
    size_t rehash;         /* the next bucket of t[0] to move, while t[1].b != NULL */
    struct entry **exp;    /* the entries with an expiry, in no order */
    size_t nexp, capexp;   /* exp's length and room */
    size_t exp_cursor;     /* where the expiry cycle looks next */
    uint64_t rehash_steps; /* buckets moved, for the tests and INFO */
    _Atomic uint64_t keys, expires, bytes; /* written by the owning shard only */
    _Atomic uint64_t overhead;             /* bytes of the tables and the expiry array (likewise) */
    _Atomic uint64_t avg_ttl; /* ms: Redis's estimate from the expiry cycle's samples; 0: none */
};

/* Adds d to a counter written by one shard only: a relaxed load and store, no locked
 * instruction; other shards read it relaxed (INFO). */
static inline void count(_Atomic uint64_t *c, int64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + (uint64_t)d,
                          memory_order_relaxed);
}

/* Sets the hash's 16-byte key; once, before any store is used (pith-kv: from getrandom). */
void kv_hash_seed(const unsigned char key[16]);
uint64_t kv_hash(const void *p, size_t n);

int store_init(struct store *s);
/* Frees every entry and both tables, and starts again with the smallest table (FLUSHALL gives
 * the memory back). -ENOMEM when even that table cannot be had: the store is then empty and
 * usable, and its first insert allocates it. */
int store_clear(struct store *s);
/* Frees everything; the store is not usable after it. */
void store_free(struct store *s);
/* The live entry for key, or NULL (an expired one is deleted on the way). */
struct entry *store_get(struct store *s, const char *k, size_t kl, uint64_t h, int64_t now);
/* Inserts or replaces; the new entry, or NULL when out of memory (nothing changed). */
struct entry *store_set(struct store *s, const char *k, size_t kl, uint64_t h, const char *v,
                        size_t vl, int64_t expire_ms);
/* MSET in two steps, so that a command of many keys is all or nothing: an entry for k = v
 * (no expiry) made beforehand, outside any store (NULL: no memory; pith_free frees it), then
 * put in the store in place of k's entry (whose expiry goes, as with SET). store_put needs no
 * memory, except for the first table after a store_clear that found none: then e is freed and
 * it returns false. */
struct entry *store_entry_new(const char *k, size_t kl, uint64_t h, const char *v, size_t vl);
bool store_put(struct store *s, struct entry *e);
/* 1 when a live key was deleted, 0 when there was none (an expired one is deleted too). */
int store_del(struct store *s, const char *k, size_t kl, uint64_t h, int64_t now);
/* 0, or -ENOMEM when the expiry array cannot grow (nothing changed). */
int store_set_expire(struct store *s, struct entry *e, int64_t expire_ms);
/* Redis's active expiry: looks at the entries with an expiry 20 at a time and deletes those
 * past `now` (and, as Redis does, folds the remaining TTLs it saw into avg_ttl), going on while
 * more than a quarter of a batch was expired and the clock (CLOCK_MONOTONIC, ns) has not passed
 * deadline_ns. Returns how many it deleted; *more says that it stopped for the deadline with
 * expired entries likely left. */
size_t store_expire_cycle(struct store *s, int64_t now, uint64_t deadline_ns, bool *more);
/* Moves buckets of a rehash in progress until it ends or the clock passes deadline_ns, and
 * starts a shrink when the table is mostly empty. True while a rehash is still going. */
bool store_rehash_for(struct store *s, uint64_t deadline_ns);
/* The buckets of the table being filled (the new one during a rehash). */
size_t store_buckets(const struct store *s);
bool store_rehashing(const struct store *s);

/* Calls fn for live entries from *cursor (0 to begin) in the order of their hashes bit-reversed,
 * through about `max` buckets, and sets *cursor for the next call (0 when done). An entry that
 * lives through the whole scan is seen once, whatever the incremental rehash does between
 * calls (the stretches of a table of one size are those of the other split or merged); one
 * added or removed meanwhile may or may not be. Expired entries are skipped, not deleted. */
void store_scan(struct store *s, uint64_t *cursor, size_t max, int64_t now,
                void (*fn)(struct entry *e, void *ctx), void *ctx);

static inline const char *entry_val(const struct entry *e)
{
    return e->data + e->klen;
}

#endif
