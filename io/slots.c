/* Id tables: slots handed out from a free list, generations, growth up to a bound. */
#include "slots.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS_INITIAL 64u
#define GEN_MASK      ((UINT32_C(1) << SLOTS_GEN_BITS) - 1)
#define NO_SLOT       UINT32_MAX

static uint32_t next_gen(uint32_t gen)
{
    return gen >= GEN_MASK ? 1 : gen + 1;
}

void slots_init(struct slots *t, unsigned owner, uint32_t max, uint32_t *keep)
{
    memset(t, 0, sizeof(*t));
    t->owner = owner & (SLOTS_OWNERS - 1);
    t->max = max < SLOTS_MAX ? max : SLOTS_MAX;
    t->free = NO_SLOT;
    t->keep = keep;
    t->gen = next_gen(*keep);
}

static int grow(struct slots *t)
{
    if (t->cap >= t->max)
        return -ENOSPC;
    uint32_t cap = t->cap ? t->cap * 2 : SLOTS_INITIAL;
    if (cap > t->max)
        cap = t->max;
    struct slots_entry *e = realloc(t->e, cap * sizeof(*e));
    if (e == NULL)
        return -ENOMEM;
    t->e = e;
    t->cap = cap;
    return 0;
}

int slots_add(struct slots *t, void *rec, uint64_t *id)
{
    uint32_t i = t->free;
    if (i != NO_SLOT) {
        t->free = (uint32_t)t->e[i].id;
    } else {
        if (t->end == t->cap) {
            int err = grow(t);
            if (err)
                return err;
        }
        i = t->end++;
    }
    uint64_t v = (uint64_t)t->owner << (SLOTS_GEN_BITS + SLOTS_SLOT_BITS) |
                 (uint64_t)t->gen << SLOTS_SLOT_BITS | i;
    t->gen = next_gen(t->gen);
    t->e[i].rec = rec;
    t->e[i].id = v;
    t->live++;
    *id = v;
    return 0;
}

void slots_remove(struct slots *t, uint64_t id)
{
    uint32_t i = slots_slot(id);
    t->e[i].rec = NULL;
    t->e[i].id = t->free;
    t->free = i;
    t->live--;
}

void slots_fini(struct slots *t)
{
    if (t->keep != NULL)
        *t->keep = t->gen;
    free(t->e);
    memset(t, 0, sizeof(*t));
}
