/* Per-shard memory: each shard allocates from its own mimalloc heap over extents it reserved on
 * its own thread (2 MiB hugepages where the system has them, transparent hugepages otherwise),
 * bound to its NUMA node and locked in RAM where the limits allow. Blocks carry their owner, so
 * any thread may free any block and every shard keeps exact accounts. */
#ifndef PITH_MEM_H
#define PITH_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What backs an allocation. Each profile has its own extents (created on first use) and heap.
 *   WARM  the default: hugepages where possible, locked on fault (mlock2 MLOCK_ONFAULT).
 *   HOT   hugepages, prefaulted and locked when the extent is made: no page fault afterwards.
 *   COLD  plain pages, never locked; advised cold (MADV_COLD) when the shard nears its cap and
 *         paged out by pith_mem_reclaim (MADV_PAGEOUT). */
typedef enum pith_mem_profile {
    PITH_MEM_WARM = 0,
    PITH_MEM_HOT = 1,
    PITH_MEM_COLD = 2,
} pith_mem_profile_t;
/* How many profiles there are (array sizes). */
#define PITH_MEM_PROFILES 3

/* pith_mem_config_t.flags: turn off what the machine offers (tests, or to compare). */
#define PITH_MEM_NO_HUGETLB (1u << 0) /* never try MAP_HUGETLB */
#define PITH_MEM_NO_THP     (1u << 1) /* no MADV_HUGEPAGE either: plain pages */
#define PITH_MEM_NO_LOCK    (1u << 2) /* behave as if mlock were refused */
#define PITH_MEM_NO_BIND    (1u << 3) /* do not bind extents to the shard's NUMA node */

/* Memory of each shard. Sizes are rounded up to 32 MiB, mimalloc's arena granule. The
 * environment overrides these fields when set: PITH_MEM_INITIAL, PITH_MEM_HOT_INITIAL,
 * PITH_MEM_COLD_INITIAL, PITH_MEM_GROW, PITH_MEM_CAP (bytes, with an optional K, M or G suffix),
 * and PITH_MEM_HUGETLB=0, PITH_MEM_THP=0, PITH_MEM_LOCK=0, PITH_MEM_BIND=0 for the flags. */
typedef struct pith_mem_config {
    size_t initial; /* reserved for the warm profile at start (default 32 MiB) */
    /* Reserved for the hot and cold profiles at start. 0 (default): a profile's first extent
     * is made by its first allocation, on the shard's loop; a hot extent is prefaulted and
     * locked then, which takes milliseconds. A latency-minded application sets hot_initial. */
    size_t hot_initial;
    size_t cold_initial; /* as hot_initial, for the cold profile (nothing to prefault) */
    /* Smallest growth step (default 32 MiB). A profile grows by max(grow, what it already
     * has), so reaching the cap takes few extents: a process may have 64 mimalloc arenas. */
    size_t grow;
    /* Most bytes a shard may reserve over all its profiles; past it allocations fail with
     * ENOMEM. 0 (default): half the machine's RAM divided among the shards, at least 64 MiB. */
    size_t cap;
    unsigned flags; /* PITH_MEM_* */
} pith_mem_config_t;

/* Allocation on the calling shard's heap (warm profile, no owner). Any thread may free the
 * block; a block freed on another shard goes back to its owner's heap, which collects it.
 * On a thread outside the engine these use the process heap (mimalloc's), warn once on stderr,
 * and are counted under PITH_MEM_OUTSIDE. Failure returns NULL with errno ENOMEM (cap or
 * budget reached, see pith_mem_stats) or EINVAL (a bad alignment). Never aborts.
 * Each block carries a 16-byte header; accounting counts the size asked for plus the header. */
PITH_API void *pith_malloc(size_t size);
/* As pith_malloc, zeroed, for count * size bytes (ENOMEM when that overflows). */
PITH_API void *pith_calloc(size_t count, size_t size);
/* As realloc(3): NULL p allocates; size 0 frees p and returns NULL. A block may be resized by
 * any shard: it stays with its owner tag, and moves to the caller's heap if it must move.
 * A failed call returns NULL and leaves p untouched. */
PITH_API void *pith_realloc(void *p, size_t size);
/* Frees a block from any pith_ allocator, from any thread. NULL is ignored. A pointer that is
 * not a live pith block (a double free, say) is refused with a warning and counted in
 * bad_frees, as far as the header shows it. */
PITH_API void pith_free(void *p);
/* align: a power of two. */
PITH_API void *pith_aligned_alloc(size_t align, size_t size);

/* The general form: align 0 means 16; profile as above; owner a tag (an actor id, say) that
 * the calling shard accounts bytes to and holds to its budget (0: no owner). */
PITH_API void *pith_malloc_ex(size_t size, size_t align, pith_mem_profile_t profile,
                              uint64_t owner);

/* Usable bytes of a live block: at least what was asked for. */
PITH_API size_t pith_malloc_usable_size(const void *p);

/* The profile whose memory holds the live block p (a block moved to another profile is a new
 * block). Any thread. Errors: -EINVAL p NULL or not a live block of pith_malloc's; -ENOENT a
 * block made outside the engine (the process heap's, no profile). */
PITH_API int pith_mem_profile_of(const void *p);

/* Owners live on the shard that charges them: these act on the calling shard's view. Owner 0
 * is the shard's untagged allocations (pith_malloc and the mesh's batches among them).
 * Sets the most bytes `owner` may hold on this shard (0: no limit). An allocation that would go
 * over fails with ENOMEM and counts a refusal. Errors: -EPERM outside the engine, -ENOMEM. */
PITH_API int pith_mem_owner_budget(uint64_t owner, size_t budget);

/* The account of one owner on the calling shard (pith_mem_owner_stats). */
typedef struct pith_mem_owner_stats {
    size_t in_use;     /* bytes held now: per block its size + header; a small block (warm,
                          16-byte aligned, size + header <= 256) counts that rounded up to 16 */
    size_t peak;       /* highest in_use; for owner 0, as pith_mem_stats's peak */
    size_t budget;     /* 0: none */
    uint64_t allocs;   /* blocks allocated for this owner */
    uint64_t refusals; /* allocations refused for the budget */
} pith_mem_owner_stats_t;

/* Errors: -EPERM outside the engine, -ENOENT this shard never saw `owner`, -EINVAL out NULL. */
PITH_API int pith_mem_owner_stats(uint64_t owner, pith_mem_owner_stats_t *out);

/* Forgets `owner` on the calling shard (its budget and counters). Errors: -EBUSY it still holds
 * bytes here, -ENOENT unknown, -EINVAL owner 0 (always kept), -EPERM outside the engine. */
PITH_API int pith_mem_owner_forget(uint64_t owner);

/* Gives memory back on the calling shard: collects frees other threads made into its heaps and
 * pages out the cold profile's extents (their contents stay valid and fault back in).
 * Errors: -EPERM outside the engine. */
PITH_API int pith_mem_reclaim(void);

/* Hints about how memory will be used (pith_mem_advise), each passed on as the kernel's
 * madvise advice named beside it. */
typedef enum pith_mem_advice {
    PITH_MEM_NORMAL = 0,     /* no particular pattern (MADV_NORMAL): undoes SEQUENTIAL */
    PITH_MEM_WILLNEED = 1,   /* needed soon (MADV_WILLNEED: pages out in swap are read back) */
    PITH_MEM_SEQUENTIAL = 2, /* read once, in order (MADV_SEQUENTIAL) */
    PITH_MEM_DONE = 3,       /* not needed for a while (MADV_COLD: reclaimed first, kept) */
} pith_mem_advice_t;

/* Advises the kernel about the whole pages inside [p, p + len) (a page shared with bytes outside
 * the range is left alone, so a block's neighbours are never advised); *granted (may be NULL)
 * gets the bytes advised, 0 when the range holds no whole page. Contents never change. Locked
 * memory (the hot profile, and the warm one where mlock was allowed) stays resident whatever
 * the advice. Any thread. Errors: -EINVAL p NULL or advice unknown; the kernel's -errno (MADV_COLD
 * needs Linux 5.4). */
PITH_API int pith_mem_advise(const void *p, size_t len, pith_mem_advice_t advice, size_t *granted);

/* Pins the whole pages inside [p, p + len) (mlock: faulted in now and kept resident) until
 * pith_mem_unpin, or for ttl_ns (0: no limit) at most: for a block that must not fault while it
 * matters (an order book at the open), whatever its profile. *granted (may be NULL) gets the
 * bytes pinned, 0 when the range holds no whole page (then nothing is pinned, and 0 returns).
 * A pin belongs to the calling shard: unpins and expiries unlock only the pages that no other
 * pin of that shard holds and that the engine does not keep locked itself (the hot profile, the
 * warm one where mlock was allowed); the shard's stop ends its pins. Pins of two shards on one
 * page do not know of each other: the first to end unlocks it. On a shard. Errors: -EINVAL p
 * NULL; -EPERM off the shards; -ENOSPC 64 pins on this shard already; -ENOMEM; the kernel's
 * mlock errors (-EPERM or -ENOMEM past RLIMIT_MEMLOCK without CAP_IPC_LOCK; nothing stays
 * pinned). */
PITH_API int pith_mem_pin(const void *p, size_t len, uint64_t ttl_ns, size_t *granted);

/* Ends the calling shard's pin of exactly [p, p + len) (as pith_mem_pin rounded it) before its
 * time. Errors: -EINVAL p NULL; -EPERM off the shards; -ENOENT no such pin here (it expired,
 * or was made on another shard). */
PITH_API int pith_mem_unpin(const void *p, size_t len);

/* What backs an extent, as the kernel granted it. */
typedef enum pith_mem_backing {
    PITH_MEM_HUGETLB = 0, /* MAP_HUGETLB 2 MiB pages */
    PITH_MEM_THP = 1,     /* anonymous memory advised MADV_HUGEPAGE, THP enabled */
    PITH_MEM_PLAIN = 2,   /* base pages */
} pith_mem_backing_t;

/* One extent of a shard: what it asked for and what the system gave (pith_mem_extent_info). */
typedef struct pith_mem_extent {
    void *base;                 /* where it is mapped */
    size_t size;                /* bytes mapped */
    pith_mem_profile_t profile; /* the profile it backs */
    pith_mem_backing_t backing; /* the pages it got */
    bool locked;                /* mlock succeeded (on fault, or whole for the hot profile) */
    bool prefaulted;            /* every page was touched when the extent was made */
    int node;                   /* NUMA node it is bound to, -1 when not bound */
} pith_mem_extent_t;

/* The i-th extent of `shard` (0 = the first made). Errors: -ENOENT i past the last,
 * -EINVAL shard out of range or out NULL, -ESHUTDOWN no engine. Any thread. */
PITH_API int pith_mem_extent_info(int shard, unsigned i, pith_mem_extent_t *out);

/* pith_mem_stats's shard for allocations made outside the engine. */
#define PITH_MEM_OUTSIDE (-1)

/* Accounts of one shard. reserved, committed, locked and huge are read from the kernel when
 * asked (mincore, /proc/self/smaps), so locked <= committed <= reserved and huge <= committed.
 * The counters are each written by one thread and read here without stopping it. */
typedef struct pith_mem_stats {
    int shard;        /* the shard, or PITH_MEM_OUTSIDE */
    int node;         /* NUMA node the shard binds its extents to, -1 none */
    size_t cap;       /* the shard's cap */
    size_t reserved;  /* extent bytes mapped */
    size_t committed; /* of those, resident now */
    size_t locked;    /* of those, resident and locked */
    size_t huge;      /* of those, backed by hugepages (hugetlb or THP) */
    size_t in_use;    /* bytes in live blocks allocated here (as owners count them) */
    size_t peak;      /* most bytes the shard's heaps had out at once: live blocks plus the
                         small freed blocks the shard keeps for reuse (at most 16 classes x 65,
                         under 140 KiB), so peak >= in_use */
    unsigned extents; /* extents made, all profiles */
    size_t profile_reserved[PITH_MEM_PROFILES]; /* reserved, per profile */
    uint64_t allocs;                            /* blocks allocated here */
    uint64_t frees;                             /* of those, freed by this shard */
    uint64_t remote_frees;                      /* of those, freed by another thread */
    uint64_t grows;                             /* extents added after the first */
    uint64_t cap_refusals;    /* allocations refused because the cap was reached */
    uint64_t budget_refusals; /* allocations refused by an owner's budget */
    uint64_t lock_failures;   /* extents left unlocked because mlock was refused */
    uint64_t bind_failures;   /* extents whose NUMA binding failed */
    uint64_t arena_failures;  /* extents mimalloc would not take (its arena table is full) */
    uint64_t bad_frees;       /* pith_free/realloc of something that was not a live block */
    uint64_t cold_advice;     /* times the cold profile was advised cold or paged out */
} pith_mem_stats_t;

/* Copies shard `shard`'s accounts, or PITH_MEM_OUTSIDE's (then only in_use, peak, allocs,
 * frees and bad_frees mean anything). Any thread. Errors: -ESHUTDOWN no engine (except for
 * PITH_MEM_OUTSIDE), -EINVAL shard out of range or out NULL. */
PITH_API int pith_mem_stats(int shard, pith_mem_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
