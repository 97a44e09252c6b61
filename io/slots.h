/* A table of records named by ids — owner, generation and slot — for the ring's operations
 * (fop.c) and for net's connections and listeners. A stale id finds nothing, also across
 * engines: the generation count goes on where the table's last life left it. Not locked: one
 * thread uses a table, or its user locks around it. */
#ifndef PITH_IO_SLOTS_H
#define PITH_IO_SLOTS_H

#include <stddef.h>
#include <stdint.h>

/* id: owner (12 bits) | generation (24) | slot (28). A stale id finds nothing unless its slot
 * holds a record entered exactly a multiple of 2^24 records later. */
#define SLOTS_OWNER_BITS 12
#define SLOTS_GEN_BITS   24
#define SLOTS_SLOT_BITS  28
#define SLOTS_OWNERS     (1u << SLOTS_OWNER_BITS)
#define SLOTS_MAX        (UINT32_C(1) << SLOTS_SLOT_BITS)

struct slots_entry {
    void *rec;   /* NULL: free */
    uint64_t id; /* rec's id; while free, the next free slot */
};

struct slots {
    struct slots_entry *e; /* [cap] */
    uint32_t cap, max;
    uint32_t end;  /* slots ever used: [0, end) */
    uint32_t free; /* first free slot below end; UINT32_MAX: none */
    uint32_t live; /* records in the table */
    unsigned owner;
    uint32_t gen;   /* the next record's; never 0, so no id is 0 */
    uint32_t *keep; /* where the count waits between the table's lives */
};

/* An empty table for `owner` (its low 12 bits go in every id) holding at most `max` records
 * (at most SLOTS_MAX). Its generations start after the one *keep holds: give each kind of table
 * and owner its own static counter, so that a later life's ids differ from an earlier one's.
 * A zeroed table finds nothing and is not initialised. */
void slots_init(struct slots *t, unsigned owner, uint32_t max, uint32_t *keep);

/* Enters rec (not NULL) and stores its id in *id. -ENOSPC: `max` records are in; -ENOMEM. */
int slots_add(struct slots *t, void *rec, uint64_t *id);

/* Takes the record that id names out of the table: the id finds nothing from here on. */
void slots_remove(struct slots *t, uint64_t id);

/* Leaves the generation count in *keep for the next life and frees the table (not the records
 * that are still in it: they are the caller's). The table is zeroed. */
void slots_fini(struct slots *t);

static inline uint32_t slots_slot(uint64_t id)
{
    return (uint32_t)(id & (SLOTS_MAX - 1));
}

static inline unsigned slots_owner(uint64_t id)
{
    return (unsigned)(id >> (SLOTS_GEN_BITS + SLOTS_SLOT_BITS));
}

/* The record in slot i (i < end), or NULL: for walking the table. */
static inline void *slots_at(const struct slots *t, uint32_t i)
{
    return i < t->end ? t->e[i].rec : NULL;
}

/* The record id names, or NULL when it is stale, made up, or another table's. */
static inline void *slots_find(const struct slots *t, uint64_t id)
{
    uint32_t i = slots_slot(id);
    if (i >= t->end)
        return NULL;
    const struct slots_entry *e = &t->e[i];
    return e->rec != NULL && e->id == id ? e->rec : NULL;
}

#endif
