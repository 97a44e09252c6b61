/* See map.h. */
#include "map.h"

#include <errno.h>
#include <stdlib.h>

static inline uint32_t home_of(uint64_t key, uint32_t cap)
{
    key ^= key >> 33;
    key *= UINT64_C(0xff51afd7ed558ccd);
    key ^= key >> 33;
    return (uint32_t)key & (cap - 1);
}

void *map_get(const struct map *m, uint64_t key)
{
    if (m->cap == 0)
        return NULL;
    for (uint32_t i = home_of(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->ents[i].key == key)
            return m->ents[i].val;
        if (m->ents[i].key == 0)
            return NULL;
    }
}

static int grow(struct map *m)
{
    uint32_t cap = m->cap ? m->cap * 2 : 16;
    if (cap == 0)
        return -ENOMEM;
    struct map_ent *t = calloc(cap, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    for (uint32_t j = 0; j < m->cap; j++) {
        if (m->ents[j].key == 0)
            continue;
        uint32_t i = home_of(m->ents[j].key, cap);
        while (t[i].key != 0)
            i = (i + 1) & (cap - 1);
        t[i] = m->ents[j];
    }
    free(m->ents);
    m->ents = t;
    m->cap = cap;
    return 0;
}

int map_put(struct map *m, uint64_t key, void *val)
{
    /* Replacing never grows, so it cannot fail: callers rely on that. */
    for (uint32_t i = m->cap ? home_of(key, m->cap) : 0; m->cap != 0; i = (i + 1) & (m->cap - 1)) {
        if (m->ents[i].key == key) {
            m->ents[i].val = val;
            return 0;
        }
        if (m->ents[i].key == 0)
            break;
    }
    if ((m->len + 1) * 2 > m->cap && grow(m) != 0)
        return -ENOMEM;
    uint32_t i = home_of(key, m->cap);
    while (m->ents[i].key != 0 && m->ents[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (m->ents[i].key == 0)
        m->len++;
    m->ents[i].key = key;
    m->ents[i].val = val;
    return 0;
}

void *map_del(struct map *m, uint64_t key)
{
    if (m->cap == 0)
        return NULL;
    uint32_t mask = m->cap - 1, i = home_of(key, m->cap);
    while (m->ents[i].key != key) {
        if (m->ents[i].key == 0)
            return NULL;
        i = (i + 1) & mask;
    }
    void *val = m->ents[i].val;
    /* Backward shift: move later entries of the run into the hole when their home allows. */
    for (uint32_t j = (i + 1) & mask;; j = (j + 1) & mask) {
        if (m->ents[j].key == 0)
            break;
        uint32_t h = home_of(m->ents[j].key, m->cap);
        /* j's entry may fill hole i unless its home lies cyclically in (i, j]. */
        if (((j - h) & mask) >= ((j - i) & mask)) {
            m->ents[i] = m->ents[j];
            i = j;
        }
    }
    m->ents[i].key = 0;
    m->ents[i].val = NULL;
    m->len--;
    return val;
}

void map_free(struct map *m)
{
    free(m->ents);
    m->ents = NULL;
    m->cap = m->len = 0;
}
