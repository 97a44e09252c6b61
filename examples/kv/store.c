/* The per-shard hash table of pith-kv. Entries come from the shard's heap (pith_malloc). */
#include "store.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include <pith/mem.h>

#define INITIAL_BUCKETS 1024u

uint64_t kv_hash(const void *p, size_t n)
{
    /* 8 bytes at a time with a multiply-xorshift mix; keys are short. */
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    return h;
}

int store_init(struct store *s)
{
    memset(s, 0, sizeof(*s));
    s->b = pith_calloc(INITIAL_BUCKETS, sizeof(*s->b));
    if (s->b == NULL)
        return -ENOMEM;
    s->mask = INITIAL_BUCKETS - 1;
    return 0;
}

static size_t entry_bytes(const struct entry *e)
{
    return sizeof(*e) + e->klen + e->vlen;
}

static void unlink_free(struct store *s, struct entry **pp)
{
    struct entry *e = *pp;
    *pp = e->next;
    count(&s->keys, -1);
    if (e->expire_ms != 0)
        count(&s->expires, -1);
    count(&s->bytes, -(int64_t)entry_bytes(e));
    pith_free(e);
}

void store_clear(struct store *s)
{
    for (size_t i = 0; i <= s->mask; i++)
        while (s->b[i] != NULL)
            unlink_free(s, &s->b[i]);
}

/* Doubles the buckets when the table is fuller than one entry per bucket. Done at once: with
 * many keys this is a pause (noted in the README), traded for a simple table. */
static void maybe_grow(struct store *s)
{
    if (atomic_load_explicit(&s->keys, memory_order_relaxed) <= s->mask + 1)
        return;
    size_t nb = (s->mask + 1) * 2;
    struct entry **b = pith_calloc(nb, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i <= s->mask; i++) {
        struct entry *e = s->b[i];
        while (e != NULL) {
            struct entry *next = e->next;
            size_t j = e->hash & (nb - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    pith_free(s->b);
    s->b = b;
    s->mask = nb - 1;
}

static struct entry **find(struct store *s, const char *k, size_t kl, uint64_t h)
{
    struct entry **pp = &s->b[h & s->mask];
    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->klen == kl && memcmp((*pp)->data, k, kl) == 0)
            return pp;
    return pp;
}

struct entry *store_get(struct store *s, const char *k, size_t kl, uint64_t h, int64_t now)
{
    struct entry **pp = find(s, k, kl, h);
    struct entry *e = *pp;
    if (e != NULL && e->expire_ms != 0 && e->expire_ms <= now) {
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
    struct entry **pp = find(s, k, kl, h);
    struct entry *old = *pp;
    struct entry *e;
    if (old != NULL && old->vlen == vl) {
        e = old; /* same size: overwrite in place */
        if ((old->expire_ms != 0) != (expire_ms != 0))
            count(&s->expires, expire_ms != 0 ? 1 : -1);
        memcpy(e->data + kl, v, vl);
        e->expire_ms = expire_ms;
        return e;
    }
    e = pith_malloc(sizeof(*e) + kl + vl);
    if (e == NULL)
        return NULL;
    e->hash = h;
    e->klen = (uint32_t)kl;
    e->vlen = (uint32_t)vl;
    e->expire_ms = expire_ms;
    memcpy(e->data, k, kl);
    memcpy(e->data + kl, v, vl);
    if (old != NULL) {
        e->next = old->next;
        *pp = e;
        count(&s->bytes, -(int64_t)entry_bytes(old));
        if (old->expire_ms != 0)
            count(&s->expires, -1);
        pith_free(old);
    } else {
        e->next = NULL;
        *pp = e;
        count(&s->keys, 1);
    }
    count(&s->bytes, (int64_t)entry_bytes(e));
    if (expire_ms != 0)
        count(&s->expires, 1);
    maybe_grow(s);
    return e;
}

int store_del(struct store *s, const char *k, size_t kl, uint64_t h, int64_t now)
{
    struct entry **pp = find(s, k, kl, h);
    struct entry *e = *pp;
    if (e == NULL)
        return 0;
    bool live = e->expire_ms == 0 || e->expire_ms > now;
    unlink_free(s, pp);
    return live ? 1 : 0;
}

void store_set_expire(struct store *s, struct entry *e, int64_t expire_ms)
{
    if ((e->expire_ms != 0) != (expire_ms != 0))
        count(&s->expires, expire_ms != 0 ? 1 : -1);
    e->expire_ms = expire_ms;
}

void store_expire_step(struct store *s, int64_t now, unsigned budget)
{
    for (unsigned i = 0; i < budget; i++) {
        size_t j = s->cursor++ & s->mask;
        struct entry **pp = &s->b[j];
        while (*pp != NULL) {
            if ((*pp)->expire_ms != 0 && (*pp)->expire_ms <= now)
                unlink_free(s, pp);
            else
                pp = &(*pp)->next;
        }
    }
}
