/* pith-kv's key locks: one shard's table of the keys that a command spanning several shards
 * holds while it runs (see kv.c, "Commands over several shards"). A key is locked by one owner
 * at a time; the table holds a pointer to the key's bytes, which the owner keeps valid until it
 * unlocks. Touched by its shard only. */
#ifndef PITH_KV_LOCKS_H
#define PITH_KV_LOCKS_H

#include <stddef.h>
#include <stdint.h>

struct lock_ent;

struct locks {
    struct lock_ent **b; /* [mask + 1] chains; NULL until the first lock */
    size_t mask;
    size_t n; /* keys locked */
};

/* Who holds key k (its hash h, kv_hash), or NULL when nobody does. */
const void *locks_owner(const struct locks *L, const char *k, size_t kl, uint64_t h);
/* Locks k for owner, which must not be NULL; locking a key the owner already holds does
 * nothing. 0, -EBUSY another owner holds it, or -ENOMEM. */
int locks_take(struct locks *L, const char *k, size_t kl, uint64_t h, const void *owner);
/* Unlocks k if owner holds it. */
void locks_drop(struct locks *L, const char *k, size_t kl, uint64_t h, const void *owner);
/* Frees the table and every entry left in it. */
void locks_free(struct locks *L);

#endif
