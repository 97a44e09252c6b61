/* The per-shard hash table of pith-kv. Entries, tables and the expiry array come from the
 * shard's heap (pith_malloc), so they count against its memory cap. */
#include "store.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include <pith/mem.h>

#include <pith/hash.h>

#define INITIAL_BUCKETS 1024u
#define STEP_EMPTY      10u /* empty buckets a rehash step may pass over per bucket it moves */
#define EXP_SAMPLE      20u /* entries the expiry cycle looks at before deciding to go on */
#define EXP_MIN_CAP     64u

static unsigned char hash_key[16];

void kv_hash_seed(const unsigned char key[16])
{
    memcpy(hash_key, key, sizeof(hash_key));
}

uint64_t kv_hash(const void *p, size_t n)
{
    return pith_siphash(hash_key, p, n, 1, 3);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t entry_bytes(const struct entry *e)
{
    return sizeof(*e) + e->klen + e->vlen;
}

static bool table_new(struct store *s, struct table *t, size_t buckets)
{
    t->b = pith_calloc(buckets, sizeof(*t->b));
    t->mask = buckets - 1;
    if (t->b != NULL)
        count(&s->overhead, (int64_t)(buckets * sizeof(*t->b)));
    return t->b != NULL;
}

static void table_free(struct store *s, struct table *t)
{
    if (t->b != NULL)
        count(&s->overhead, -(int64_t)((t->mask + 1) * sizeof(*t->b)));
    pith_free(t->b);
    memset(t, 0, sizeof(*t));
}

int store_init(struct store *s)
{
    memset(s, 0, sizeof(*s));
    return table_new(s, &s->t[0], INITIAL_BUCKETS) ? 0 : -ENOMEM;
}

bool store_rehashing(const struct store *s)
{
    return s->t[1].b != NULL;
}

size_t store_buckets(const struct store *s)
{
    const struct table *t = &s->t[store_rehashing(s) ? 1 : 0];
    return t->b != NULL ? t->mask + 1 : 0;
}

/* ---- scanning ---- */

static inline uint64_t rev64(uint64_t x)
{
    x = (x >> 1 & 0x5555555555555555ull) | (x & 0x5555555555555555ull) << 1;
    x = (x >> 2 & 0x3333333333333333ull) | (x & 0x3333333333333333ull) << 2;
    x = (x >> 4 & 0x0f0f0f0f0f0f0f0full) | (x & 0x0f0f0f0f0f0f0f0full) << 4;
    return __builtin_bswap64(x);
}

void store_scan(struct store *s, uint64_t *cursor, size_t max, int64_t now,
                void (*fn)(struct entry *e, void *ctx), void *ctx)
{
    if (s->t[0].b == NULL) {
        *cursor = 0;
        return;
    }
    /* The finer of the tables in use: one of its buckets is one stretch of the order, and
     * holds the entries of that stretch in it or, while not yet moved, in one bucket of the
     * other table. */
    bool two = store_rehashing(s);
    size_t fine = two && s->t[1].mask > s->t[0].mask ? s->t[1].mask + 1 : s->t[0].mask + 1;
    unsigned shift = 64u - (unsigned)__builtin_ctzll((unsigned long long)fine);
    uint64_t j = *cursor >> shift;
    for (size_t n = 0; j < fine && n < max; j++, n++) {
        uint64_t h = rev64(j << shift); /* any hash of the stretch picks these buckets */
        struct entry *heads[2] = {NULL, NULL};
        size_t b0 = h & s->t[0].mask;
        if (!two || b0 >= s->rehash)
            heads[0] = s->t[0].b[b0];
        if (two)
            heads[1] = s->t[1].b[h & s->t[1].mask];
        uint64_t lo = j << shift, hi = ((j + 1) << shift) - 1;
        for (int k = 0; k < 2; k++) {
            for (struct entry *e = heads[k], *next; e != NULL; e = next) {
                next = e->next;
                uint64_t r = rev64(e->hash);
                if (r >= lo && r <= hi && (e->expire_ms == 0 || e->expire_ms > now))
                    fn(e, ctx);
            }
        }
    }
    *cursor = j < fine ? j << shift : 0;
}

/* ---- the expiry array ---- */

static int exp_reserve(struct store *s)
{
    if (s->nexp < s->capexp)
        return 0;
    size_t cap = s->capexp != 0 ? s->capexp * 2 : EXP_MIN_CAP;
    struct entry **a = pith_realloc(s->exp, cap * sizeof(*a));
    if (a == NULL)
        return -ENOMEM;
    count(&s->overhead, (int64_t)((cap - s->capexp) * sizeof(*a)));
    s->exp = a;
    s->capexp = cap;
    return 0;
}

/* Room was reserved. */
static void exp_add(struct store *s, struct entry *e)
{
    e->xi = (uint32_t)s->nexp;
    s->exp[s->nexp++] = e;
    count(&s->expires, 1);
}

static void exp_remove(struct store *s, struct entry *e)
{
    struct entry *last = s->exp[--s->nexp];
    s->exp[e->xi] = last;
    last->xi = e->xi;
    count(&s->expires, -1);
    /* Give the array back as it empties; a failed shrink keeps the larger one. */
    if (s->capexp > EXP_MIN_CAP && s->nexp < s->capexp / 4) {
        struct entry **a = pith_realloc(s->exp, (s->capexp / 2) * sizeof(*a));
        if (a != NULL) {
            count(&s->overhead, -(int64_t)((s->capexp / 2) * sizeof(*a)));
            s->exp = a;
            s->capexp /= 2;
        }
    }
}

/* ---- rehash ---- */

/* Moves up to n non-empty buckets of t[0] into t[1]; ends the rehash when t[0] is empty. */
static void rehash_step(struct store *s, unsigned n)
{
    struct table *from = &s->t[0], *to = &s->t[1];
    if (to->b == NULL)
        return;
    unsigned empty = n * STEP_EMPTY;
    while (n > 0 && s->rehash <= from->mask) {
        struct entry *e = from->b[s->rehash];
        if (e == NULL) {
            s->rehash++;
            if (--empty == 0)
                break;
            continue;
        }
        while (e != NULL) {
            struct entry *next = e->next;
            size_t j = e->hash & to->mask;
            e->next = to->b[j];
            to->b[j] = e;
            e = next;
        }
        from->b[s->rehash++] = NULL;
        s->rehash_steps++;
        n--;
    }
    if (s->rehash > from->mask) {
        table_free(s, from);
        *from = *to;
        memset(to, 0, sizeof(*to));
        s->rehash = 0;
    }
}

/* Starts moving into a table of `buckets`; without memory for it, the old table stays (longer
 * chains, still correct). */
static void rehash_start(struct store *s, size_t buckets)
{
    if (store_rehashing(s) || buckets == s->t[0].mask + 1)
        return;
    if (!table_new(s, &s->t[1], buckets)) {
        memset(&s->t[1], 0, sizeof(s->t[1]));
        return;
    }
    s->rehash = 0;
}

static size_t pow2_at_least(size_t n)
{
    size_t b = INITIAL_BUCKETS;
    while (b < n)
        b *= 2;
    return b;
}

/* Grows past one entry per bucket (to twice the buckets). */
static void maybe_grow(struct store *s)
{
    size_t keys = atomic_load_explicit(&s->keys, memory_order_relaxed);
    if (!store_rehashing(s) && keys > s->t[0].mask + 1)
        rehash_start(s, (s->t[0].mask + 1) * 2);
}

/* Shrinks below one entry per eight buckets (to the smallest table that holds one per bucket). */
static void maybe_shrink(struct store *s)
{
    size_t keys = atomic_load_explicit(&s->keys, memory_order_relaxed);
    size_t buckets = s->t[0].mask + 1;
    if (!store_rehashing(s) && s->t[0].b != NULL && buckets > INITIAL_BUCKETS && keys < buckets / 8)
        rehash_start(s, pow2_at_least(keys));
}

bool store_rehash_for(struct store *s, uint64_t deadline_ns)
{
    maybe_shrink(s);
    while (store_rehashing(s)) {
        rehash_step(s, 128);
        if (mono_ns() >= deadline_ns)
            break;
    }
    return store_rehashing(s);
}

/* ---- lookups ---- */

/* Where key is in its chain (a pointer to the link that points at it), or NULL. While a rehash
 * goes, the key is in t[0] when its bucket there has not moved yet, else in t[1]. */
static struct entry **find(struct store *s, const char *k, size_t kl, uint64_t h)
{
    for (int i = 0; i < 2; i++) {
        struct table *t = &s->t[i];
        if (t->b == NULL)
            break;
        struct entry **pp = &t->b[h & t->mask];
        for (; *pp != NULL; pp = &(*pp)->next)
            if ((*pp)->hash == h && (*pp)->klen == kl && memcmp((*pp)->data, k, kl) == 0)
                return pp;
    }
    return NULL;
}

/* The link that points at e (which is in the store). */
static struct entry **link_of(struct store *s, const struct entry *e)
{
    for (int i = 0; i < 2; i++) {
        struct table *t = &s->t[i];
        if (t->b == NULL)
            break;
        for (struct entry **pp = &t->b[e->hash & t->mask]; *pp != NULL; pp = &(*pp)->next)
            if (*pp == e)
                return pp;
    }
    return NULL;
}

static void unlink_free(struct store *s, struct entry **pp)
{
    struct entry *e = *pp;
    *pp = e->next;
    count(&s->keys, -1);
    if (e->expire_ms != 0)
        exp_remove(s, e);
    count(&s->bytes, -(int64_t)entry_bytes(e));
    pith_free(e);
}

struct entry *store_get(struct store *s, const char *k, size_t kl, uint64_t h, int64_t now)
{
    rehash_step(s, 1);
    struct entry **pp = find(s, k, kl, h);
    if (pp == NULL)
        return NULL;
    struct entry *e = *pp;
    if (e->expire_ms != 0 && e->expire_ms <= now) {
        unlink_free(s, pp);
        return NULL;
    }
    return e;
}

struct entry *store_set(struct store *s, const char *k, size_t kl, uint64_t h, const char *v,
                        size_t vl, int64_t expire_ms)
{
    if (kl > UINT32_MAX || vl > UINT32_MAX)
        return NULL;
    rehash_step(s, 1);
    if (s->t[0].b == NULL && !table_new(s, &s->t[0], INITIAL_BUCKETS)) {
        memset(&s->t[0], 0, sizeof(s->t[0]));
        return NULL;
    }
    if (expire_ms != 0 && exp_reserve(s) != 0)
        return NULL;
    struct entry **pp = find(s, k, kl, h);
    struct entry *old = pp != NULL ? *pp : NULL;
    if (old != NULL && old->vlen == vl) {
        /* Same size: overwrite in place. */
        if (old->expire_ms != 0 && expire_ms == 0)
            exp_remove(s, old);
        else if (old->expire_ms == 0 && expire_ms != 0)
            exp_add(s, old);
        memcpy(old->data + kl, v, vl);
        old->expire_ms = expire_ms;
        return old;
    }
    struct entry *e = pith_malloc(sizeof(*e) + kl + vl);
    if (e == NULL)
        return NULL;
    e->hash = h;
    e->klen = (uint32_t)kl;
    e->vlen = (uint32_t)vl;
    e->expire_ms = expire_ms;
    memcpy(e->data, k, kl);
    memcpy(e->data + kl, v, vl);
    if (old != NULL) {
        /* In old's place in its chain; old's place in the expiry array too, when both have
         * one. */
        e->next = old->next;
        *pp = e;
        if (old->expire_ms != 0 && expire_ms != 0) {
            e->xi = old->xi;
            s->exp[e->xi] = e;
        } else if (old->expire_ms != 0) {
            exp_remove(s, old);
        } else if (expire_ms != 0) {
            exp_add(s, e);
        }
        count(&s->bytes, -(int64_t)entry_bytes(old));
        pith_free(old);
    } else {
        struct table *t = &s->t[store_rehashing(s) ? 1 : 0];
        size_t j = h & t->mask;
        e->next = t->b[j];
        t->b[j] = e;
        count(&s->keys, 1);
        if (expire_ms != 0)
            exp_add(s, e);
    }
    count(&s->bytes, (int64_t)entry_bytes(e));
    maybe_grow(s);
    return e;
}

struct entry *store_entry_new(const char *k, size_t kl, uint64_t h, const char *v, size_t vl)
{
    if (kl > UINT32_MAX || vl > UINT32_MAX)
        return NULL;
    struct entry *e = pith_malloc(sizeof(*e) + kl + vl);
    if (e == NULL)
        return NULL;
    e->next = NULL;
    e->hash = h;
    e->klen = (uint32_t)kl;
    e->vlen = (uint32_t)vl;
    e->expire_ms = 0;
    memcpy(e->data, k, kl);
    memcpy(e->data + kl, v, vl);
    return e;
}

bool store_put(struct store *s, struct entry *e)
{
    rehash_step(s, 1);
    if (s->t[0].b == NULL && !table_new(s, &s->t[0], INITIAL_BUCKETS)) {
        memset(&s->t[0], 0, sizeof(s->t[0]));
        pith_free(e);
        return false;
    }
    struct entry **pp = find(s, e->data, e->klen, e->hash);
    struct entry *old = pp != NULL ? *pp : NULL;
    if (old != NULL) {
        e->next = old->next;
        *pp = e;
        if (old->expire_ms != 0)
            exp_remove(s, old);
        count(&s->bytes, -(int64_t)entry_bytes(old));
        pith_free(old);
    } else {
        struct table *t = &s->t[store_rehashing(s) ? 1 : 0];
        size_t j = e->hash & t->mask;
        e->next = t->b[j];
        t->b[j] = e;
        count(&s->keys, 1);
    }
    count(&s->bytes, (int64_t)entry_bytes(e));
    maybe_grow(s);
    return true;
}

int store_del(struct store *s, const char *k, size_t kl, uint64_t h, int64_t now)
{
    rehash_step(s, 1);
    struct entry **pp = find(s, k, kl, h);
    if (pp == NULL)
        return 0;
    struct entry *e = *pp;
    bool live = e->expire_ms == 0 || e->expire_ms > now;
    unlink_free(s, pp);
    return live ? 1 : 0;
}

int store_set_expire(struct store *s, struct entry *e, int64_t expire_ms)
{
    if (e->expire_ms == 0 && expire_ms != 0) {
        if (exp_reserve(s) != 0)
            return -ENOMEM;
        exp_add(s, e);
    } else if (e->expire_ms != 0 && expire_ms == 0) {
        exp_remove(s, e);
    }
    e->expire_ms = expire_ms;
    return 0;
}

size_t store_expire_cycle(struct store *s, int64_t now, uint64_t deadline_ns, bool *more)
{
    size_t deleted = 0;
    double ttl_sum = 0; /* TTLs reach 2^63 ms: summed as doubles, which cannot overflow */
    uint64_t ttl_n = 0;
    *more = false;
    while (s->nexp > 0) {
        unsigned looked = 0, expired = 0;
        for (; looked < EXP_SAMPLE && s->nexp > 0; looked++) {
            if (s->exp_cursor >= s->nexp)
                s->exp_cursor = 0;
            struct entry *e = s->exp[s->exp_cursor];
            if (e->expire_ms <= now) {
                /* The array's last entry takes e's index: the cursor stays to look at it. */
                unlink_free(s, link_of(s, e));
                expired++;
            } else {
                ttl_sum += (double)e->expire_ms - (double)now;
                ttl_n++;
                s->exp_cursor++;
            }
        }
        deleted += expired;
        if (expired * 4 <= looked)
            break;
        if (mono_ns() >= deadline_ns) {
            *more = s->nexp > 0;
            break;
        }
    }
    /* Redis's estimate: the sample's mean, into a running average that moves by 1/50. */
    if (ttl_n > 0) {
        uint64_t avg = atomic_load_explicit(&s->avg_ttl, memory_order_relaxed);
        uint64_t mean = (uint64_t)(ttl_sum / (double)ttl_n);
        atomic_store_explicit(&s->avg_ttl, avg == 0 ? mean : avg / 50 * 49 + mean / 50,
                              memory_order_relaxed);
    } else if (s->nexp == 0) {
        atomic_store_explicit(&s->avg_ttl, 0, memory_order_relaxed);
    }
    return deleted;
}

static void free_entries(struct store *s)
{
    for (int i = 0; i < 2; i++) {
        struct table *t = &s->t[i];
        if (t->b == NULL)
            continue;
        for (size_t j = 0; j <= t->mask; j++) {
            struct entry *e = t->b[j];
            while (e != NULL) {
                struct entry *next = e->next;
                pith_free(e);
                e = next;
            }
        }
        table_free(s, t);
    }
    count(&s->overhead, -(int64_t)(s->capexp * sizeof(*s->exp)));
    pith_free(s->exp);
    s->exp = NULL;
    s->nexp = s->capexp = s->exp_cursor = 0;
    s->rehash = 0;
    atomic_store_explicit(&s->keys, 0, memory_order_relaxed);
    atomic_store_explicit(&s->expires, 0, memory_order_relaxed);
    atomic_store_explicit(&s->bytes, 0, memory_order_relaxed);
}

int store_clear(struct store *s)
{
    free_entries(s);
    atomic_store_explicit(&s->avg_ttl, 0, memory_order_relaxed); /* as Redis's FLUSHALL */
    if (!table_new(s, &s->t[0], INITIAL_BUCKETS)) {
        memset(&s->t[0], 0, sizeof(s->t[0]));
        return -ENOMEM;
    }
    return 0;
}

void store_free(struct store *s)
{
    free_entries(s);
}
