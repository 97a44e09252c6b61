/* pith-kv's per-shard key space: a chained hash table of byte-string keys and values with an
 * optional expiry (milliseconds on the monotonic clock). Each shard owns one and is the only
 * thread that touches it; the counters are relaxed atomics so INFO can read them from any
 * shard. */
#ifndef PITH_KV_STORE_H
#define PITH_KV_STORE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct entry {
    struct entry *next;
    uint64_t hash;
    int64_t expire_ms; /* 0: none */
    uint32_t klen, vlen;
    char data[]; /* key, then value */
};

struct store {
    struct entry **b;
    size_t mask;                           /* buckets - 1 */
    size_t cursor;                         /* where active expiry looks next */
    _Atomic uint64_t keys, expires, bytes; /* written by the owning shard only */
};

/* Adds d to a counter written by one shard only: a relaxed load and store, no locked
 * instruction; other shards read it relaxed (INFO). */
static inline void count(_Atomic uint64_t *c, int64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + (uint64_t)d,
                          memory_order_relaxed);
}

uint64_t kv_hash(const void *p, size_t n);

int store_init(struct store *s);
/* The live entry for key, or NULL (an expired one is deleted on the way). */
struct entry *store_get(struct store *s, const char *k, size_t kl, uint64_t h, int64_t now);
/* Inserts or replaces; the new entry, or NULL when out of memory (nothing changed). */
struct entry *store_set(struct store *s, const char *k, size_t kl, uint64_t h, const char *v,
                        size_t vl, int64_t expire_ms);
int store_del(struct store *s, const char *k, size_t kl, uint64_t h, int64_t now);
void store_set_expire(struct store *s, struct entry *e, int64_t expire_ms);
void store_clear(struct store *s);
/* Deletes expired entries among the next `budget` buckets. */
void store_expire_step(struct store *s, int64_t now, unsigned budget);

static inline const char *entry_val(const struct entry *e)
{
    return e->data + e->klen;
}

#endif
