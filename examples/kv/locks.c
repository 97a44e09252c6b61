/* The key lock table (locks.h): chained buckets, doubled when the keys outnumber them, from
 * the shard's heap. */
#include "locks.h"

#include <errno.h>
#include <string.h>

#include <pith/mem.h>

#define MIN_BUCKETS 64u

struct lock_ent {
    struct lock_ent *next;
    uint64_t h;
    const char *k;
    size_t kl;
    const void *owner;
};

static struct lock_ent **find(const struct locks *L, const char *k, size_t kl, uint64_t h)
{
    struct lock_ent **pp = &L->b[h & L->mask];
    while (*pp != NULL &&
           ((*pp)->h != h || (*pp)->kl != kl || (kl > 0 && memcmp((*pp)->k, k, kl) != 0)))
        pp = &(*pp)->next;
    return pp;
}

const void *locks_owner(const struct locks *L, const char *k, size_t kl, uint64_t h)
{
    if (L->n == 0)
        return NULL;
    struct lock_ent *e = *find(L, k, kl, h);
    return e != NULL ? e->owner : NULL;
}

/* Twice the buckets; false when there is no memory (the table stays as it was). */
static int grow(struct locks *L)
{
    size_t nb = L->b == NULL ? MIN_BUCKETS : (L->mask + 1) * 2;
    struct lock_ent **b = pith_calloc(nb, sizeof(*b));
    if (b == NULL)
        return -ENOMEM;
    if (L->b != NULL) {
        for (size_t i = 0; i <= L->mask; i++) {
            for (struct lock_ent *e = L->b[i], *next; e != NULL; e = next) {
                next = e->next;
                e->next = b[e->h & (nb - 1)];
                b[e->h & (nb - 1)] = e;
            }
        }
        pith_free(L->b);
    }
    L->b = b;
    L->mask = nb - 1;
    return 0;
}

int locks_take(struct locks *L, const char *k, size_t kl, uint64_t h, const void *owner)
{
    if ((L->b == NULL || L->n > L->mask) && grow(L) != 0 && L->b == NULL)
        return -ENOMEM;
    struct lock_ent **pp = find(L, k, kl, h);
    if (*pp != NULL)
        return (*pp)->owner == owner ? 0 : -EBUSY;
    struct lock_ent *e = pith_malloc(sizeof(*e));
    if (e == NULL)
        return -ENOMEM;
    e->next = NULL;
    e->h = h;
    e->k = k;
    e->kl = kl;
    e->owner = owner;
    *pp = e;
    L->n++;
    return 0;
}

void locks_drop(struct locks *L, const char *k, size_t kl, uint64_t h, const void *owner)
{
    if (L->n == 0)
        return;
    struct lock_ent **pp = find(L, k, kl, h);
    struct lock_ent *e = *pp;
    if (e == NULL || e->owner != owner)
        return;
    *pp = e->next;
    pith_free(e);
    L->n--;
}

void locks_free(struct locks *L)
{
    if (L->b != NULL) {
        for (size_t i = 0; i <= L->mask; i++) {
            for (struct lock_ent *e = L->b[i], *next; e != NULL; e = next) {
                next = e->next;
                pith_free(e);
            }
        }
        pith_free(L->b);
    }
    memset(L, 0, sizeof(*L));
}
