/* Private to mem/ and its one caller, shard/: extents (extent.c), a shard's memory home with its
 * heaps and accounts (home.c, alloc.c), and what the kernel says about them (stats.c). */
#ifndef PITH_MEM_PRIV_H
#define PITH_MEM_PRIV_H

#include <hwloc.h>
#include <mimalloc.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/mem.h>

/* mimalloc 2.0 arenas are made of 32 MiB blocks and must be 32 MiB-aligned. */
#define MEM_GRAIN ((size_t)32 << 20)
#define MEM_HDR   16
/* Extents per profile of one shard; growth doubles, so 16 reach far past any RAM. */
#define MEM_MAX_EXTENTS 16
#define MEM_LINE        64
#define MEM_BIN_MAX     256 /* largest (size + header) kept in a bin */
#define MEM_BIN_CLASSES (MEM_BIN_MAX / 16)
#define MEM_BIN_DEPTH   64

/* One mapping handed to mimalloc as an exclusive arena. Made on a shard's thread, kept for the
 * life of the process (mimalloc cannot forget an arena) and reused by later engines. */
struct extent {
    void *base;
    size_t size;
    mi_arena_id_t arena;
    pith_mem_profile_t profile;
    pith_mem_backing_t backing;
    bool locked;
    bool prefaulted;
    int node;
    unsigned made_with;  /* PITH_MEM_NO_HUGETLB | PITH_MEM_NO_THP as they were when mapped */
    struct extent *next; /* the pool's list */
};

/* What happened while making an extent, for the home's counters and warnings. */
enum {
    EV_LOCK_REFUSED = 1u << 0,
    EV_BIND_FAILED = 1u << 1,
    EV_ARENA_FULL = 1u << 2,
};

/* Single-writer counter (shard/ uses it too): a load and a store, no locked instruction. Relaxed
 * atomics, so readers on other threads never see torn values and TSan sees no race. */
static inline void stat_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* extent.c */
int extent_get(struct extent **out, size_t size, pith_mem_profile_t profile, unsigned flags,
               hwloc_topology_t topo, int node, bool strict, unsigned *events);
void extent_put(struct extent *x);
int extent_advise_cold(struct extent *x, bool pageout);

/* An account: bytes in live blocks and their high-water mark. `local` is written only by the
 * home's shard (alloc and its own frees); frees from other threads add to `remote` with an
 * atomic add, on a line of its own. in use = local - remote. The outside account has no home:
 * every thread updates its `local` with atomic adds. */
struct mem_owner {
    uint64_t tag;
    struct mem_home *home; /* NULL: outside the engine */
    size_t budget;         /* 0: none; read and written by the home's shard only */
    _Atomic int64_t local;
    _Atomic uint64_t peak;
    _Atomic uint64_t allocs;
    _Atomic uint64_t frees;
    _Atomic uint64_t refusals;
    alignas(MEM_LINE) _Atomic int64_t remote;
    _Atomic uint64_t remote_frees;
};

struct mem_prof {
    struct extent *ext[MEM_MAX_EXTENTS];
    mi_heap_t *heap[MEM_MAX_EXTENTS];
    unsigned n;   /* extents (and heaps) */
    unsigned cur; /* the heap allocations try first */
    size_t reserved;
};

/* Counters other threads read: single writer (the shard), relaxed. */
struct mem_counters {
    _Atomic uint64_t grows, cap_refusals, budget_refusals, lock_failures, bind_failures,
        arena_failures, cold_advice;
};

struct mem_home {
    unsigned id;
    int node; /* NUMA node, -1 unknown */
    bool strict;
    hwloc_topology_t topo;
    pith_mem_config_t cfg;

    struct mem_prof prof[PITH_MEM_PROFILES];
    size_t reserved;
    /* Every extent in creation order, for readers on other threads: the shard stores the
     * pointer, then publishes the count with release; readers load it with acquire. */
    struct extent *all[PITH_MEM_PROFILES * MEM_MAX_EXTENTS];
    _Atomic unsigned nall;

    /* The shard's account, charged for every block; also owner 0 (untagged blocks), whose
     * budget is then a budget on untagged allocations. */
    struct mem_owner total;
    /* owner tag -> account, open addressing (linear probing); the last hit is cached */
    struct mem_owner **owners;
    unsigned owners_cap, owners_len, owners_dead;
    struct mem_owner *last_owner;

    /* Freed small warm blocks of this shard, by 16-byte size class of (size + header), kept
     * for the next allocation of that class: a pop and a push instead of two calls into
     * mimalloc. Linked through the header's owner field; flushed to mimalloc at close. */
    struct {
        void *head;
        unsigned count;
    } bins[MEM_BIN_CLASSES];

    struct mem_counters st;
    _Atomic uint64_t bad_frees;
    int64_t collected_remote; /* total.remote at the last collect */
    bool pressure;            /* reserved crossed 7/8 of the cap: advise the cold profile */
    unsigned warned;          /* EV_* already warned about */
    bool fallback_warned;
};

/* home.c: called by shard/ only. */
int mem_config_resolve(pith_mem_config_t *cfg, unsigned nshards, char *why, size_t whylen);
/* On the shard's thread, before it runs anything: reserve the first extent, make the heap. */
int mem_home_open(struct mem_home **out, unsigned id, const pith_mem_config_t *cfg,
                  hwloc_topology_t topo, int cpu);
/* On the shard's thread when it leaves its loop: delete the heaps (live blocks stay valid). */
void mem_home_close(struct mem_home *h);
/* After every shard is joined: frees the home, or keeps it (returns its bytes in use) when
 * blocks are still live so that their late frees stay safe. */
size_t mem_home_release(struct mem_home *h);
/* On the shard's thread when it is about to sleep: collect remote frees, advise cold. */
void mem_home_idle(struct mem_home *h);
/* The calling shard's home, NULL on other threads. */
extern __thread struct mem_home *mem_self __attribute__((tls_model("initial-exec")));

/* alloc.c */
extern bool mem_plain; /* under valgrind: blocks from libc, no mimalloc heaps */
void *mem_alloc(struct mem_home *h, size_t size, size_t align, pith_mem_profile_t prof,
                struct mem_owner *o, bool zero);
int mem_prof_grow(struct mem_home *h, pith_mem_profile_t prof, size_t need);
struct mem_owner *mem_owner_get(struct mem_home *h, uint64_t tag, bool create);
void mem_owner_table_free(struct mem_home *h);
void mem_bins_flush(struct mem_home *h);
/* True when no block is charged to `o`, for the owner's shard about to free the account; the
 * acquire pairs with the release in credit_remote. */
static inline bool mem_owner_idle(struct mem_owner *o)
{
    int64_t remote = atomic_load_explicit(&o->remote, memory_order_acquire);
    return atomic_load_explicit(&o->local, memory_order_relaxed) == remote;
}
static inline int64_t mem_owner_in_use(const struct mem_owner *o)
{
    int64_t v = atomic_load_explicit(&o->local, memory_order_relaxed) -
                atomic_load_explicit(&o->remote, memory_order_relaxed);
    return v < 0 ? 0 : v;
}

/* stats.c */
int mem_home_stats(struct mem_home *h, pith_mem_stats_t *out);
int mem_home_extent(struct mem_home *h, unsigned i, pith_mem_extent_t *out);
void mem_outside_stats(pith_mem_stats_t *out);

void mem_warn(struct mem_home *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
