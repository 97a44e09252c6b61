/* pith-kv's store (examples/kv/store.c) on a shard of a one-shard engine: the keyed hash
 * (SipHash, published vectors; keys built to collide under one key spread under another), the
 * incremental rehash (no operation moves more than one bucket; growth and shrink; every key
 * found throughout), FLUSHALL giving memory back, and the expiry array and cycle. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include <pith/pith.h>

#include <pith/hash.h>
#include "store.h"
#include "util.h"

static const unsigned char seed_a[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const unsigned char seed_b[16] = {0x5a, 0x17, 0xc3, 0x99, 0x02, 0x7e, 0x41, 0xd8,
                                         0x66, 0xb0, 0x1f, 0x3c, 0xe5, 0x84, 0x2b, 0x70};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Runs fn(arg) on shard 0 of a one-shard engine and returns its result. */
static intptr_t on_shard(void *(*fn)(void *), void *arg)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    void *res = NULL;
    cr_assert_eq(pith_call_wait(0, fn, arg, &res), 0);
    test_stop(NULL);
    return (intptr_t)res;
}

static size_t key_of(char *buf, unsigned long i)
{
    return (size_t)snprintf(buf, 32, "key:%lu", i);
}

Test(kv_store, siphash_matches_the_published_vectors)
{
    unsigned char k[16], m[64];
    for (int i = 0; i < 16; i++)
        k[i] = (unsigned char)i;
    for (int i = 0; i < 64; i++)
        m[i] = (unsigned char)i;
    /* SipHash-2-4, key 00..0f: the paper's example (15 bytes) and the empty message. */
    cr_assert_eq(pith_siphash(k, m, 15, 2, 4), 0xa129ca6149be45e5ull);
    cr_assert_eq(pith_siphash(k, m, 0, 2, 4), 0x726fdb47dd0e0e31ull);
    /* Every length up to 64 differs from its neighbours and from 2-4 (the tail is read). */
    for (size_t n = 1; n < 64; n++) {
        cr_assert_neq(pith_siphash(k, m, n, 1, 3), pith_siphash(k, m, n - 1, 1, 3));
        cr_assert_neq(pith_siphash(k, m, n, 1, 3), pith_siphash(k, m, n, 2, 4));
    }
}

Test(kv_store, keys_built_to_collide_under_one_key_spread_under_another)
{
    /* What an attacker who knew the hash's key would send: 2,000 keys that all land in bucket
     * 0 of a 1,024-bucket table and on the same shard of two. */
    enum { N = 2000, BUCKETS = 1024 };
    static char keys[N][32];
    static size_t lens[N];
    kv_hash_seed(seed_a);
    unsigned found = 0;
    for (unsigned long i = 0; found < N; i++) {
        size_t n = key_of(keys[found], i);
        uint64_t h = kv_hash(keys[found], n);
        if ((h & (BUCKETS - 1)) == 0 && ((h >> 40) & 1) == 0)
            lens[found++] = n;
    }
    /* Under another key (the server draws one per process) they spread as random keys do. */
    kv_hash_seed(seed_b);
    static unsigned chain[BUCKETS];
    memset(chain, 0, sizeof(chain));
    unsigned longest = 0, shard0 = 0;
    for (unsigned i = 0; i < N; i++) {
        uint64_t h = kv_hash(keys[i], lens[i]);
        unsigned c = ++chain[h & (BUCKETS - 1)];
        longest = c > longest ? c : longest;
        shard0 += ((h >> 40) & 1) == 0;
    }
    /* 2,000 random keys in 1,024 buckets: the longest chain is about 7 (11 has odds far below
     * one in a million); a shard gets 1,000 +- 22 (7 sigma is 156). */
    cr_assert_leq(longest, 11u, "longest chain %u", longest);
    cr_assert(shard0 > 1000 - 156 && shard0 < 1000 + 156, "shard 0 got %u of 2000", shard0);
}

/* ---- the rehash ---- */

struct grow_result {
    size_t max_steps_per_op;
    size_t buckets_full, buckets_shrunk;
    unsigned missing;
    bool rehashed;
    size_t in_use_empty, in_use_full, in_use_cleared;
};

static size_t shard_in_use(void)
{
    pith_mem_stats_t st;
    return pith_mem_stats(0, &st) == 0 ? st.in_use : 0;
}

static void *grow_and_shrink(void *arg)
{
    struct grow_result *r = arg;
    enum { N = 200000, KEEP = 1000 };
    struct store s;
    char k[32];
    r->in_use_empty = shard_in_use();
    if (store_init(&s) != 0)
        return NULL;
    for (unsigned long i = 0; i < N; i++) {
        size_t n = key_of(k, i);
        uint64_t before = s.rehash_steps;
        if (store_set(&s, k, n, kv_hash(k, n), "v", 1, 0) == NULL)
            r->missing++;
        r->rehashed |= store_rehashing(&s);
        size_t d = (size_t)(s.rehash_steps - before);
        r->max_steps_per_op = d > r->max_steps_per_op ? d : r->max_steps_per_op;
        /* Every key set so far is found, rehash or not (a sample, to keep it quick). */
        if (i % 97 == 0)
            for (unsigned long j = i % 89; j <= i; j += 1009) {
                size_t m = key_of(k, j);
                if (store_get(&s, k, m, kv_hash(k, m), 0) == NULL)
                    r->missing++;
            }
    }
    while (store_rehash_for(&s, UINT64_MAX))
        ;
    r->buckets_full = store_buckets(&s);
    r->in_use_full = shard_in_use();
    for (unsigned long i = KEEP; i < N; i++) {
        size_t n = key_of(k, i);
        if (store_del(&s, k, n, kv_hash(k, n), 0) != 1)
            r->missing++;
    }
    while (store_rehash_for(&s, UINT64_MAX))
        ;
    r->buckets_shrunk = store_buckets(&s);
    for (unsigned long i = 0; i < KEEP; i++) {
        size_t n = key_of(k, i);
        if (store_get(&s, k, n, kv_hash(k, n), 0) == NULL)
            r->missing++;
    }
    cr_assert_eq(store_clear(&s), 0);
    r->in_use_cleared = shard_in_use();
    store_free(&s);
    return NULL;
}

Test(kv_store, the_table_grows_and_shrinks_a_bucket_at_a_time_and_flush_gives_memory_back,
     .timeout = 120)
{
    kv_hash_seed(seed_b);
    struct grow_result r = {0};
    on_shard(grow_and_shrink, &r);
    cr_assert_eq(r.missing, 0u, "every key found while the table moved");
    cr_assert(r.rehashed);
    cr_assert_leq(r.max_steps_per_op, 1u, "an insert moved %zu buckets", r.max_steps_per_op);
    cr_assert_geq(r.buckets_full, 200000u / 2, "grown to %zu buckets", r.buckets_full);
    cr_assert_leq(r.buckets_shrunk, 1024u, "shrunk to %zu buckets", r.buckets_shrunk);
    /* 200,000 entries and a table of 256K buckets are megabytes; after the flush what is left
     * is the smallest table and the allocator's rounding. */
    cr_assert_gt(r.in_use_full, r.in_use_empty + (8u << 20), "full: %zu", r.in_use_full);
    cr_assert_leq(r.in_use_cleared, r.in_use_empty + (64u << 10), "after the flush: %zu vs %zu",
                  r.in_use_cleared, r.in_use_empty);
}

/* ---- expiry ---- */

struct expiry_result {
    size_t gone_first, gone_second, keys_after, exp_after;
    unsigned bad_index, wrong_ttl;
    uint64_t cycle_ns;
};

/* Every entry with an expiry is in the array at its index, and only those are. */
static unsigned check_array(struct store *s)
{
    unsigned bad = 0;
    size_t with = 0;
    for (int t = 0; t < 2; t++) {
        if (s->t[t].b == NULL)
            continue;
        for (size_t j = 0; j <= s->t[t].mask; j++)
            for (struct entry *e = s->t[t].b[j]; e != NULL; e = e->next)
                if (e->expire_ms != 0) {
                    with++;
                    bad += e->xi >= s->nexp || s->exp[e->xi] != e;
                }
    }
    return bad + (with != s->nexp) +
           (with != atomic_load_explicit(&s->expires, memory_order_relaxed));
}

static void *expire_among_many(void *arg)
{
    struct expiry_result *r = arg;
    enum { PLAIN = 100000, SOON = 1000, LATER = 1000 };
    struct store s;
    char k[32];
    if (store_init(&s) != 0)
        return NULL;
    const int64_t now = 1000000;
    for (unsigned long i = 0; i < PLAIN + SOON + LATER; i++) {
        size_t n = key_of(k, i);
        int64_t at = i < PLAIN ? 0 : i < PLAIN + SOON ? now - 1 : now + 60000;
        (void)store_set(&s, k, n, kv_hash(k, n), "value", 5, at);
    }
    /* Churn the array through every path that changes it. Of the 1,000 later ones, by offset
     * mod 3: 0, a longer value that keeps an expiry (334, of which the 167 even ones are then
     * persisted); 1, the same size without one (333, in place); 2, a longer value without one
     * (333). Then plain keys gain one: 0-499 by EXPIRE, 500-599 by a longer value, 600-699 by
     * the same size. Left with an expiry: 167 + 500 + 100 + 100 = 867. */
    for (unsigned long o = 0; o < LATER; o++) {
        size_t n = key_of(k, PLAIN + SOON + o);
        uint64_t h = kv_hash(k, n);
        if (o % 3 == 0) {
            struct entry *e = store_set(&s, k, n, h, "longer value", 12, now + 60000);
            if (e != NULL && (PLAIN + SOON + o) % 2 == 0)
                (void)store_set_expire(&s, e, 0);
        } else {
            (void)store_set(&s, k, n, h, o % 3 == 1 ? "VALUE" : "longer value", o % 3 == 1 ? 5 : 12,
                            0);
        }
    }
    for (unsigned long i = 0; i < 700; i++) {
        size_t n = key_of(k, i);
        uint64_t h = kv_hash(k, n);
        if (i < 500) {
            struct entry *e = store_get(&s, k, n, h, now);
            if (e != NULL)
                (void)store_set_expire(&s, e, now + 60000);
        } else {
            (void)store_set(&s, k, n, h, i < 600 ? "longer value" : "VALUE", i < 600 ? 12 : 5,
                            now + 60000);
        }
    }
    r->bad_index += check_array(&s);
    uint64_t t0 = mono_ns();
    bool more;
    r->gone_first = store_expire_cycle(&s, now, UINT64_MAX, &more);
    r->cycle_ns = mono_ns() - t0;
    r->bad_index += check_array(&s);
    /* Nothing else is expired: a second cycle looks at one batch and stops. */
    r->gone_second = store_expire_cycle(&s, now, UINT64_MAX, &more);
    r->keys_after = atomic_load_explicit(&s.keys, memory_order_relaxed);
    r->exp_after = s.nexp;
    for (unsigned long i = 0; i < 700; i++) {
        size_t n = key_of(k, i);
        struct entry *e = store_get(&s, k, n, kv_hash(k, n), now);
        r->wrong_ttl += e == NULL || e->expire_ms != now + 60000;
    }
    store_free(&s);
    return NULL;
}

Test(kv_store, the_expiry_cycle_finds_expired_keys_among_many_without_scanning_them, .timeout = 60)
{
    kv_hash_seed(seed_b);
    struct expiry_result r = {0};
    on_shard(expire_among_many, &r);
    cr_assert_eq(r.bad_index, 0u, "the expiry array matches the table");
    cr_assert_eq(r.gone_first, 1000u, "every expired key went in one cycle");
    cr_assert_eq(r.gone_second, 0u);
    cr_assert_eq(r.keys_after, 101000u);
    cr_assert_eq(r.exp_after, 867u, "with an expiry: %zu", r.exp_after);
    cr_assert_eq(r.wrong_ttl, 0u);
    fprintf(stderr, "expiry cycle: 1000 expired among 102000 in %.3f ms\n",
            (double)r.cycle_ns / 1e6);
}

/* MSET's two steps (store_entry_new, then store_put): a put replaces a key's entry, with or
 * without an expiry before, and takes its expiry away as SET does; counts stay right. */
struct put_result {
    unsigned wrong;
    size_t keys, expires, exp_array;
};

static void *put_prepared(void *arg)
{
    struct put_result *r = arg;
    struct store s;
    if (store_init(&s) != 0)
        return (void *)(intptr_t)-ENOMEM;
    char k[32];
    for (unsigned long i = 0; i < 100; i++) {
        size_t kl = key_of(k, i);
        /* even keys have an expiry, every third key is new at the put */
        if (i % 3 != 0 &&
            store_set(&s, k, kl, kv_hash(k, kl), "old", 3, i % 2 ? 0 : INT64_MAX) == NULL)
            r->wrong++;
    }
    struct entry *made[100];
    for (unsigned long i = 0; i < 100; i++) {
        size_t kl = key_of(k, i);
        made[i] = store_entry_new(k, kl, kv_hash(k, kl), "new-value", 9);
        r->wrong += made[i] == NULL;
    }
    for (unsigned long i = 0; i < 100; i++)
        r->wrong += made[i] == NULL || !store_put(&s, made[i]);
    for (unsigned long i = 0; i < 100; i++) {
        size_t kl = key_of(k, i);
        struct entry *e = store_get(&s, k, kl, kv_hash(k, kl), 0);
        r->wrong += e == NULL || e->vlen != 9 || memcmp(entry_val(e), "new-value", 9) != 0 ||
                    e->expire_ms != 0;
    }
    r->keys = (size_t)atomic_load(&s.keys);
    r->expires = (size_t)atomic_load(&s.expires);
    r->exp_array = s.nexp;
    store_free(&s);
    return NULL;
}

Test(kv_store, prepared_entries_replace_keys_and_their_expiry)
{
    kv_hash_seed(seed_a);
    struct put_result r = {0};
    cr_assert_eq(on_shard(put_prepared, &r), 0);
    cr_assert_eq(r.wrong, 0u);
    cr_assert_eq(r.keys, 100u);
    cr_assert_eq(r.expires, 0u, "a put takes the expiry away");
    cr_assert_eq(r.exp_array, 0u);
}
