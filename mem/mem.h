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
#include <unistd.h>

#include <pith/mem.h>

/* mimalloc 2.0 arenas are made of 32 MiB blocks and must be 32 MiB-aligned. */
#define MEM_GRAIN ((size_t)32 << 20)
#define MEM_HDR   16
/* Extents per profile of one shard; growth doubles, so 16 reach far past any RAM. */
#define MEM_MAX_EXTENTS 16
#define MEM_LINE        64
/* Small blocks: warm, 16-byte aligned, size + header at most MEM_BIN_MAX. They are made and
 * charged at their class size (size + header rounded up to 16 bytes), and a freed one waits in
 * the shard's cache for the next request of its class (alloc.c). */
#define MEM_BIN_MAX     256
#define MEM_BIN_CLASSES (MEM_BIN_MAX / 16)
#define MEM_BIN_DEPTH   64 /* blocks per class in the cache's lists, besides the hot slot */

/* One mapping handed to mimalloc as an exclusive arena. Made on a shard's thread, kept for the
 * life of the process (mimalloc cannot forget an arena) and reused by later engines. */
struct extent {
    void *base;
    size_t size;
    mi_arena_id_t arena;
    pith_mem_profile_t profile;
    pith_mem_backing_t backing;
    /* mlock holds (on fault, or whole for hot); atomic: pith_mem_pin reads it from any shard
     * (mem_locked_extents) while the owner's shard may relock a pooled extent. */
    _Atomic bool locked;
    bool prefaulted;
    int node;
    unsigned made_with;   /* PITH_MEM_NO_HUGETLB | PITH_MEM_NO_THP as they were when mapped */
    struct extent *next;  /* the pool's list */
    struct extent *known; /* every extent ever made (they are never unmapped): the registry */
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

/* stat_add(c, 1) in one instruction where the compiler emits three (it does not merge an atomic
 * load and store): a plain add to memory, not locked, so single-writer only. An aligned 8-byte
 * store is single-copy atomic on x86-64, so relaxed readers see the old value or the new. TSan
 * cannot see into asm, so its builds keep stat_add. */
static inline void stat_inc(_Atomic uint64_t *c)
{
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    __asm__("addq $1, %0" : "+m"(*(uint64_t *)c));
#else
    stat_add(c, 1);
#endif
}

/* extent.c */
int extent_get(struct extent **out, size_t size, pith_mem_profile_t profile, unsigned flags,
               hwloc_topology_t topo, int node, bool strict, unsigned *events);
void extent_put(struct extent *x);
int extent_advise_cold(struct extent *x, bool pageout);
/* The extents whose memory the engine keeps locked that overlap [lo, hi): up to max of them,
 * as [base, end) pairs in out[2 * i], out[2 * i + 1], in no order; returns how many there are
 * (more than max: only max of them are in out). Any thread. */
unsigned mem_locked_extents(uintptr_t lo, uintptr_t hi, uintptr_t *out, unsigned max);

/* The whole pages inside [p, p + len) as [*lo, *hi) (pith_mem_advise, pith_mem_pin): false
 * when there are none. */
static inline bool mem_whole_pages(const void *p, size_t len, uintptr_t *lo, uintptr_t *hi)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t end = (uintptr_t)p + len < (uintptr_t)p ? UINTPTR_MAX : (uintptr_t)p + len;
    *lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    *hi = end & ~(page - 1);
    return *hi > *lo;
}

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
    int64_t remote_seen; /* a reading of `remote` by the home's shard (alloc.c, local_add) */
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
    size_t hot_promised; /* hot bytes promised to SLAs' memory guarantees (mem_self_promise_hot) */
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

    /* The cache of freed small blocks (class c holds blocks of (c + 1) * 16 bytes with the
     * header). `hot` is the last block freed (0: none) and `hot_size` its bytes after the header,
     * 16 * its class, or MEM_HOT_NONE when the slot has no block; behind it a
     * list per class, linked through the first word after the header. Cached blocks stay
     * charged to `total` (so a cache hit touches no account of the shard): the shard's bytes
     * in use are total's minus mem_cached_bytes(). Written by the shard only; the atomics are
     * for stats readers on other threads (relaxed: the values only add up once the shard is
     * quiet). Off (cache_on false, hot = MEM_HOT_OFF) under valgrind and while owner 0 has a
     * budget. */
    alignas(MEM_LINE) _Atomic uintptr_t hot; /* pith_malloc and pith_free inline: this line */
    _Atomic uint8_t hot_size;
    bool cache_on;
    uintptr_t live_word, dead_word; /* header words of a small block of total, live and freed */
    _Atomic uint64_t cached_frees;
    struct {
        void *head;
        _Atomic unsigned count;
    } bins[MEM_BIN_CLASSES];
    /* Frees the cache kept, and blocks it gave back to mimalloc: allocations it served are
     * cached_frees - flushed - the blocks in it now. */
    _Atomic uint64_t flushed;

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
/* Moves the calling shard's hot bytes promised by `delta` and, when it grows, the hot profile
 * until it has reserved that much (prefaulted and locked, as hot extents are): an SLA's memory
 * guarantee, reserved when it is set rather than on the activation that needs it. Errors:
 * -EPERM off a shard; -ENOMEM the cap or the kernel refused (the promise is unchanged; what
 * grew stays, as extents do). */
int mem_self_promise_hot(int64_t delta);
/* Makes the calling shard's first hot extent (prefaulted and locked: milliseconds) now if it
 * has none, so that what later moves into hot memory finds it ready instead of faulting it in
 * on the shard's loop. Errors: -EPERM off a shard; -ENOMEM as mem_prof_grow. */
int mem_self_hot_ready(void);
struct mem_owner *mem_owner_get(struct mem_home *h, uint64_t tag, bool create);
void mem_owner_table_free(struct mem_home *h);
void mem_bins_flush(struct mem_home *h);
/* Turns the cache of small blocks on or off, giving back what it holds. */
void mem_cache_enable(struct mem_home *h, bool on);
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

#define MEM_HOT_OFF  ((uintptr_t)1) /* hot while the cache is off */
#define MEM_HOT_NONE 1              /* hot_size with no block in the slot: no request's size */

/* A block header's state: the low bits of its owner word (alloc.c). */
#define MEM_LIVE_BIG   ((uintptr_t)0x2D)
#define MEM_LIVE_SMALL ((uintptr_t)0x33)
#define MEM_DEAD       ((uintptr_t)0x12)

/* Blocks waiting in the home's cache and their bytes. */
static inline size_t mem_cached(struct mem_home *h, size_t *bytes)
{
    size_t n = 0, b = 0;
    for (unsigned c = 0; c < MEM_BIN_CLASSES; c++) {
        size_t k = atomic_load_explicit(&h->bins[c].count, memory_order_relaxed);
        n += k;
        b += k * (c + 1) * 16;
    }
    unsigned c = atomic_load_explicit(&h->hot_size, memory_order_relaxed) / 16;
    if (atomic_load_explicit(&h->hot, memory_order_relaxed) > MEM_HOT_OFF && c < MEM_BIN_CLASSES) {
        n++;
        b += ((size_t)c + 1) * 16;
    }
    if (bytes != NULL)
        *bytes = b;
    return n;
}
static inline size_t mem_cached_bytes(struct mem_home *h)
{
    size_t b;
    mem_cached(h, &b);
    return b;
}
/* Bytes in live blocks charged to `o` of home `h`; for owner 0 the cache is left out. */
static inline size_t mem_in_use(struct mem_home *h, const struct mem_owner *o)
{
    int64_t v = mem_owner_in_use(o);
    if (o == &h->total)
        v -= (int64_t)mem_cached_bytes(h);
    return v < 0 ? 0 : (size_t)v;
}
/* Allocations and frees counted for `o`; owner 0's include those the cache served. */
static inline uint64_t mem_allocs(struct mem_home *h, const struct mem_owner *o)
{
    uint64_t n = atomic_load_explicit(&o->allocs, memory_order_relaxed);
    if (o != &h->total)
        return n;
    uint64_t kept = atomic_load_explicit(&h->cached_frees, memory_order_relaxed);
    uint64_t gone = atomic_load_explicit(&h->flushed, memory_order_relaxed) + mem_cached(h, NULL);
    return kept > gone ? n + kept - gone : n;
}
static inline uint64_t mem_frees(struct mem_home *h, const struct mem_owner *o)
{
    uint64_t n = atomic_load_explicit(&o->frees, memory_order_relaxed);
    return o == &h->total ? n + atomic_load_explicit(&h->cached_frees, memory_order_relaxed) : n;
}

/* stats.c */
int mem_home_stats(struct mem_home *h, pith_mem_stats_t *out);
/* The calling shard's bytes in use and its cap, without pith_mem_stats's look at the mappings
 * (smaps): for callers that check often. -EPERM off a shard. */
int mem_self_usage(size_t *in_use, size_t *cap);
int mem_home_extent(struct mem_home *h, unsigned i, pith_mem_extent_t *out);
void mem_outside_stats(pith_mem_stats_t *out);
/* pith_malloc for libpith's own blocks: outside the engine it takes the process heap (counted
 * under PITH_MEM_OUTSIDE) without the warning meant for applications. */
void *mem_malloc_lib(size_t size);

void mem_warn(struct mem_home *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
