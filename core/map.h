/* A map from nonzero 64-bit keys to pointers, for one shard's side tables (asks waiting for a
 * reply, the timers and watchers of actors that have some). Open addressing with linear probing
 * and backward-shift deletion: no tombstones, lookups stay short. */
#ifndef PITH_CORE_MAP_H
#define PITH_CORE_MAP_H

#include <stddef.h>
#include <stdint.h>

struct map_ent {
    uint64_t key; /* 0: empty */
    void *val;
};

struct map {
    struct map_ent *ents;
    uint32_t cap; /* power of two, or 0 */
    uint32_t len;
};

void *map_get(const struct map *m, uint64_t key);
/* Sets key -> val (val not NULL). Errors: -ENOMEM, never when key is already there. */
int map_put(struct map *m, uint64_t key, void *val);
/* Removes key; returns its value, or NULL. */
void *map_del(struct map *m, uint64_t key);
void map_free(struct map *m);

#endif
