/* Allocation: the public pith_malloc family, the block header that names each block's account,
 * growth of a profile up to the cap, and the owner table of a home. */
#include "mem.h"
#include "tsan.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#ifdef PITH_HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define asan_poison(p, n)   ASAN_POISON_MEMORY_REGION(p, n)
#define asan_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#define NO_ASAN             __attribute__((no_sanitize("address")))
#else
#define asan_poison(p, n)   ((void)0)
#define asan_unpoison(p, n) ((void)0)
#define NO_ASAN
#endif

/* ASan, for a block handed back to mimalloc (free_slow): mimalloc may build a segment of its
 * own in that memory later, and it starts a segment by memset-ing the segment's header at a
 * segment-aligned address: about 40 KiB for a normal segment, and for a huge one (a block of
 * 16 MiB or more gets a segment of its own) an 80-byte slice entry per 64 KiB of the segment
 * (333 KB for a 260 MiB segment). Segments are aligned to 32 MiB in mimalloc 2.0 (4, 8 or 16
 * in other builds). ASan's memset interceptor would report our poison there as a
 * use-after-poison inside mimalloc. So the poison leaves out, at every 4 MiB-aligned address
 * the block covers, what a segment starting there and reaching to the block's end would
 * clear (at least ASAN_SEG_HEAD): the rest of the block, all but about 0.1% of a big one,
 * stays poisoned and use after free there is still caught. */
#define ASAN_SEG_ALIGN (4u << 20)
#define ASAN_SEG_HEAD  (256u << 10)

static void asan_poison_returned(void *p, size_t n)
{
    (void)p;
    (void)n;
#if defined(__SANITIZE_ADDRESS__)
    asan_poison(p, n);
    uintptr_t lo = (uintptr_t)p, hi = lo + n;
    for (uintptr_t a = lo & ~(uintptr_t)(ASAN_SEG_ALIGN - 1); a < hi; a += ASAN_SEG_ALIGN) {
        uintptr_t head = ((hi - a) >> 16) * 80 + (64u << 10);
        if (head < ASAN_SEG_HEAD)
            head = ASAN_SEG_HEAD;
        uintptr_t from = a > lo ? a : lo, to = hi - a > head ? a + head : hi;
        if (from < to)
            asan_unpoison((void *)from, to - from);
    }
#endif
}

#define LIKELY(x)   __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Every block starts with this header; the user's pointer follows it and keeps its 16-byte
 * alignment.
 * - word: the account the block is charged to (a struct mem_owner, 64-byte aligned) with the
 *   block's state in the low 6 bits: LIVE_BIG, LIVE_SMALL (mem.h), or DEAD, so that a second
 *   free finds DEAD. One compare of the word tells pith_free a small live block of the
 *   shard's own account.
 * - meta: size (bits 0-47), log2 of the alignment (48-53), profile (54-55) and a kind byte
 *   (56-63): BIG, or SMALL for a block of a cache class, whose size is then its class size
 *   minus the header, whatever was asked. Blocks of a class are interchangeable, so taking
 *   one from the cache writes `word` and nothing else. */
struct blk {
    uintptr_t word;
    uint64_t meta;
};
_Static_assert(sizeof(struct blk) == MEM_HDR, "header size");
_Static_assert(alignof(struct mem_owner) >= 64, "the state bits need 64-byte aligned owners");

#define STATE_MASK    ((uintptr_t)63)
#define META_SIZE_MAX ((UINT64_C(1) << 48) - 1)
#define KIND_BIG      UINT64_C(0xB7)
#define KIND_SMALL    UINT64_C(0xB9)
#define SMALL_MAX     (MEM_BIN_MAX - MEM_HDR) /* largest size asked for of a small block */

static inline uint64_t meta_make(size_t size, unsigned align_log2, pith_mem_profile_t prof,
                                 uint64_t kind)
{
    return (uint64_t)size | ((uint64_t)align_log2 << 48) | ((uint64_t)prof << 54) | (kind << 56);
}
static inline struct mem_owner *word_owner(uintptr_t w)
{
    return (struct mem_owner *)(w & ~STATE_MASK);
}
/* Class of a small block from its size asked for; its bytes with the header are (c + 1) * 16,
 * and its meta size field is c * 16. Class 0 is never used: a cached block needs room for its
 * link after the header. */
static inline unsigned small_class(size_t size)
{
    return (unsigned)((size + (size == 0) + MEM_HDR + 15) >> 4) - 1;
}
static inline size_t meta_size(uint64_t m)
{
    return (size_t)(m & META_SIZE_MAX);
}
static inline size_t meta_align(uint64_t m)
{
    return (size_t)1 << ((m >> 48) & 63);
}
static inline pith_mem_profile_t meta_prof(uint64_t m)
{
    return (pith_mem_profile_t)((m >> 54) & 3);
}

/* Allocations outside the engine: many threads, so every update is an atomic add. */
static struct mem_owner outside = {.tag = 0, .home = NULL};
static _Atomic uint64_t outside_bad_frees;
static _Atomic int outside_warned;

/* Adds delta to the owner's local bytes (its shard only) and moves the peak if in use passed it.
 * `remote` only grows, so local - remote_seen (an older reading) is at least in use: the line
 * that other shards' frees write is read only when that bound passes the peak, not on every
 * allocation of a shard whose blocks are freed elsewhere. */
static inline void local_add(struct mem_owner *o, int64_t delta)
{
    int64_t local = atomic_load_explicit(&o->local, memory_order_relaxed) + delta;
    atomic_store_explicit(&o->local, local, memory_order_relaxed);
    int64_t peak = (int64_t)atomic_load_explicit(&o->peak, memory_order_relaxed);
    if (delta <= 0 || local - o->remote_seen <= peak)
        return;
    o->remote_seen = atomic_load_explicit(&o->remote, memory_order_relaxed);
    if (local - o->remote_seen > peak)
        atomic_store_explicit(&o->peak, (uint64_t)(local - o->remote_seen), memory_order_relaxed);
}

static inline void charge(struct mem_owner *o, size_t n)
{
    local_add(o, (int64_t)n);
    stat_add(&o->allocs, 1);
}

/* A block of this shard changed size in place. */
static inline void resize(struct mem_owner *o, size_t old, size_t now)
{
    local_add(o, (int64_t)now - (int64_t)old);
}

static inline void credit_local(struct mem_owner *o, size_t n)
{
    atomic_store_explicit(&o->local,
                          atomic_load_explicit(&o->local, memory_order_relaxed) - (int64_t)n,
                          memory_order_relaxed);
    stat_add(&o->frees, 1);
}

/* Frees from a thread that is not the owner's shard: atomic adds on the owner's remote line.
 * The add to `remote` is the freeing thread's last access to the account, with release: the
 * owner's shard may free the account (pith_mem_owner_forget, mem_home_release) as soon as it
 * sees in use reach 0, and its acquire load of `remote` (mem_owner_idle, mem.h) orders that after
 * everything we did to it. */
static inline void credit_remote(struct mem_owner *o, size_t n)
{
    atomic_fetch_add_explicit(&o->remote_frees, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&o->remote, (int64_t)n, memory_order_release);
}

static void outside_peak(int64_t use)
{
    uint64_t peak = atomic_load_explicit(&outside.peak, memory_order_relaxed);
    while (use > (int64_t)peak &&
           !atomic_compare_exchange_weak_explicit(&outside.peak, &peak, (uint64_t)use,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

static unsigned log2_of(size_t v)
{
    return (unsigned)__builtin_ctzll((unsigned long long)v);
}

/* ASan: mimalloc clears a zeroed block with an intercepted memset, and a recycled block is
 * still poisoned from its last pith_free; finish() zeroes after unpoisoning instead. TSan: the
 * same memset runs before finish()'s acquire, so a block another shard freed last (a reply
 * part made on one shard, sent and freed by the connection's) reads as a race with that free;
 * finish() zeroes after the acquire instead. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ZERO_IN_FINISH 1
#else
#define ZERO_IN_FINISH 0
#endif

static inline void *heap_alloc(mi_heap_t *hp, size_t n, size_t align, bool zero)
{
    zero &= !ZERO_IN_FINISH;
    if (align <= MEM_HDR)
        return zero ? mi_heap_zalloc(hp, n) : mi_heap_malloc(hp, n);
    return zero ? mi_heap_zalloc_aligned_at(hp, n, align, MEM_HDR)
                : mi_heap_malloc_aligned_at(hp, n, align, MEM_HDR);
}

/* Under valgrind, mimalloc's free is replaced by memcheck's (mi_free and free share an
 * address in Debian's libmimalloc), so blocks come from libc there: memcheck then sees every
 * block, and the header, accounts, budgets and cap work as everywhere else. Fixed per process. */
bool mem_plain;

__attribute__((constructor)) static void mem_detect(void)
{
#ifdef PITH_HAVE_VALGRIND_H
    mem_plain = RUNNING_ON_VALGRIND;
#endif
}

/* A block outside any shard heap: the calling thread's mimalloc heap, or libc under valgrind.
 * In plain mode an aligned block sits `align` bytes into its allocation, header just before. */
static struct blk *sys_alloc(size_t n, size_t align, bool zero)
{
    zero &= !ZERO_IN_FINISH || mem_plain;
    if (!mem_plain)
        return align <= MEM_HDR ? (zero ? mi_zalloc(n) : mi_malloc(n))
                                : (zero ? mi_zalloc_aligned_at(n, align, MEM_HDR)
                                        : mi_malloc_aligned_at(n, align, MEM_HDR));
    if (align <= MEM_HDR)
        return zero ? calloc(1, n) : malloc(n);
    void *base;
    if (posix_memalign(&base, align, align - MEM_HDR + n) != 0)
        return NULL;
    if (zero)
        memset(base, 0, align - MEM_HDR + n);
    return (struct blk *)((char *)base + align - MEM_HDR);
}

static void *blk_base(struct blk *b, uint64_t meta)
{
    size_t align = meta_align(meta);
    return align <= MEM_HDR ? (void *)b : (char *)b + MEM_HDR - align;
}

static void blk_release(struct blk *b, uint64_t meta)
{
    if (mem_plain)
        free(blk_base(b, meta));
    else
        mi_free(b);
}

/* Bytes from the header to the end of the block. */
static size_t blk_usable(const struct blk *b, uint64_t meta)
{
    if (!mem_plain)
        return mi_usable_size(b);
    char *base = blk_base((struct blk *)b, meta);
    return malloc_usable_size(base) - (size_t)((const char *)b - base);
}

/* Grows `prof` by one extent: max(grow, what it has), at least `need` bytes, within the cap. */
int mem_prof_grow(struct mem_home *h, pith_mem_profile_t prof, size_t need)
{
    struct mem_prof *p = &h->prof[prof];
    if (p->n == MEM_MAX_EXTENTS)
        return -ENOMEM;
    size_t first[PITH_MEM_PROFILES] = {
        [PITH_MEM_WARM] = h->cfg.initial,
        [PITH_MEM_HOT] = h->cfg.hot_initial,
        [PITH_MEM_COLD] = h->cfg.cold_initial,
    };
    size_t size = p->n == 0 && first[prof] ? first[prof] : h->cfg.grow;
    if (p->reserved > size)
        size = p->reserved;
    if (need > size)
        size = (need + MEM_GRAIN - 1) & ~(MEM_GRAIN - 1);
    size_t room = h->cfg.cap - h->reserved;
    if (size > room)
        size = room & ~(MEM_GRAIN - 1);
    if (size == 0 || size < need)
        return -ENOMEM;
    unsigned ev = 0;
    struct extent *x = NULL;
    int err = extent_get(&x, size, prof, h->cfg.flags, h->topo, h->node, h->strict, &ev);
    if (ev & EV_LOCK_REFUSED)
        stat_add(&h->st.lock_failures, 1);
    if (ev & EV_BIND_FAILED)
        stat_add(&h->st.bind_failures, 1);
    if (ev & EV_ARENA_FULL)
        stat_add(&h->st.arena_failures, 1);
    unsigned fresh = ev & ~h->warned;
    h->warned |= ev;
    if (fresh & EV_LOCK_REFUSED)
        mem_warn(h, "memory not locked (RLIMIT_MEMLOCK or permission): pages may be swapped");
    if (fresh & EV_BIND_FAILED)
        mem_warn(h, "could not bind memory to NUMA node %d", h->node);
    if (fresh & EV_ARENA_FULL)
        mem_warn(h, "mimalloc's arena table is full: this shard uses its thread's heap");
    if (err)
        return err;
    mi_heap_t *heap = mem_plain ? NULL : mi_heap_new_in_arena(x->arena);
    if (heap == NULL && !mem_plain) {
        extent_put(x);
        return -ENOMEM;
    }
    p->ext[p->n] = x;
    p->heap[p->n] = heap;
    p->cur = p->n++;
    if (h->reserved > 0)
        stat_add(&h->st.grows, 1);
    p->reserved += size;
    h->reserved += size;
    unsigned i = atomic_load_explicit(&h->nall, memory_order_relaxed);
    h->all[i] = x;
    atomic_store_explicit(&h->nall, i + 1, memory_order_release);
    if (h->reserved >= h->cfg.cap / 8 * 7)
        h->pressure = true;
    return 0;
}

int mem_self_promise_hot(int64_t delta)
{
    struct mem_home *h = mem_self;
    if (h == NULL)
        return -EPERM;
    int64_t want = (int64_t)h->hot_promised + delta;
    if (want < 0)
        want = 0;
    struct mem_prof *p = &h->prof[PITH_MEM_HOT];
    while (delta > 0 && p->reserved < (size_t)want) {
        int err = mem_prof_grow(h, PITH_MEM_HOT, (size_t)want - p->reserved);
        if (err)
            return err;
    }
    h->hot_promised = (size_t)want;
    return 0;
}

int mem_self_hot_ready(void)
{
    struct mem_home *h = mem_self;
    if (h == NULL)
        return -EPERM;
    if (h->prof[PITH_MEM_HOT].n > 0)
        return 0;
    return mem_prof_grow(h, PITH_MEM_HOT, 0);
}

/* The current heap is full: try the profile's other heaps (frees may have made room), then
 * grow, then (only when mimalloc has no arena left) the thread's own heap. */
static struct blk *alloc_slow(struct mem_home *h, pith_mem_profile_t prof, size_t n, size_t align,
                              bool zero)
{
    struct mem_prof *p = &h->prof[prof];
    for (unsigned i = 0; i < p->n; i++) {
        if (i == p->cur)
            continue;
        struct blk *b = heap_alloc(p->heap[i], n, align, zero);
        if (b != NULL) {
            p->cur = i;
            return b;
        }
    }
    /* Room for mimalloc's segment header beside a block of its own segment size. */
    size_t need = n + align + ((size_t)1 << 20);
    int err;
    while ((err = mem_prof_grow(h, prof, p->n == 0 ? 0 : need)) == 0) {
        struct blk *b = heap_alloc(p->heap[p->cur], n, align, zero);
        if (b != NULL)
            return b;
        if (p->reserved >= need)
            need = p->reserved + MEM_GRAIN;
    }
    if (err == -ENOSPC) {
        if ((size_t)mem_owner_in_use(&h->total) + n > h->cfg.cap)
            return NULL;
        return sys_alloc(n, align, zero);
    }
    h->pressure = true;
    return NULL;
}

/* Plain mode: libc blocks, with the shard's extents grown as if the heap lived in them, so
 * reserved, the cap and the profile's extents behave as in a normal run. */
static struct blk *plain_alloc(struct mem_home *h, pith_mem_profile_t prof, size_t n, size_t align,
                               bool zero)
{
    struct mem_prof *p = &h->prof[prof];
    size_t use = (size_t)mem_owner_in_use(&h->total);
    while (use + n > h->reserved || p->n == 0) {
        int err = mem_prof_grow(h, prof, p->n == 0 ? 0 : n);
        if (err == -ENOSPC && use + n <= h->cfg.cap)
            break; /* no arena to account it to: as the normal path, the thread's heap */
        if (err) {
            h->pressure = true;
            return NULL;
        }
    }
    return sys_alloc(n, align, zero);
}

static inline void *finish(struct blk *b, struct mem_owner *o, size_t size, size_t align,
                           pith_mem_profile_t prof, bool zero, uint64_t kind)
{
    /* The block may have been freed last by another thread, through mimalloc's lists that
     * TSan cannot see; its release in pith_free pairs with this. Its memory may also have been
     * part of a block of another size that another thread freed (mimalloc re-carves pages):
     * that free released on the owner's home, which this acquires. */
    tsan_acquire(b);
    tsan_acquire(o->home != NULL ? (void *)o->home : (void *)&outside);
    asan_unpoison(b, MEM_HDR + size);
    b->word = (uintptr_t)o | (kind == KIND_SMALL ? MEM_LIVE_SMALL : MEM_LIVE_BIG);
    b->meta = meta_make(size, log2_of(align), prof, kind);
    if (zero && ZERO_IN_FINISH && !mem_plain)
        memset(b + 1, 0, size);
    return b + 1;
}

/* ---- the cache of freed small blocks (struct mem_home, mem.h) ----
 * A shard that frees a small block of its own usually wants one of the same class soon: the
 * block waits here instead of going back to mimalloc. The hot slot is what makes the common
 * free-then-malloc cheap: its stores do not depend on anything loaded from the block, so the
 * next allocation is not held up behind the free's loads. Cached blocks are poisoned under
 * ASan; their links are read and written unchecked. */

static inline NO_ASAN void *bin_next(const struct blk *b)
{
    return *(void *const *)(b + 1);
}
static inline NO_ASAN void bin_set_next(struct blk *b, void *next)
{
    *(void **)(b + 1) = next;
}
static inline NO_ASAN uintptr_t blk_word(const struct blk *b)
{
    return b->word;
}

/* A cached block of class c, or NULL. */
static inline struct blk *cache_take(struct mem_home *h, unsigned c)
{
    if (atomic_load_explicit(&h->hot_size, memory_order_relaxed) == c * 16) {
        uintptr_t w = atomic_load_explicit(&h->hot, memory_order_relaxed);
        atomic_store_explicit(&h->hot_size, MEM_HOT_NONE, memory_order_relaxed);
        atomic_store_explicit(&h->hot, 0, memory_order_relaxed);
        return (struct blk *)w;
    }
    struct blk *b = h->bins[c].head;
    if (b != NULL) {
        h->bins[c].head = bin_next(b);
        unsigned k = atomic_load_explicit(&h->bins[c].count, memory_order_relaxed);
        atomic_store_explicit(&h->bins[c].count, k - 1, memory_order_relaxed);
    }
    return b;
}

/* Keeps a freed small block (already marked DEAD) of class c; false when c is full. */
static inline bool cache_put(struct mem_home *h, struct blk *b, unsigned c)
{
    if (atomic_load_explicit(&h->hot, memory_order_relaxed) == 0) {
        atomic_store_explicit(&h->hot_size, (uint8_t)(c * 16), memory_order_relaxed);
        atomic_store_explicit(&h->hot, (uintptr_t)b, memory_order_relaxed);
    } else {
        unsigned k = atomic_load_explicit(&h->bins[c].count, memory_order_relaxed);
        if (k >= MEM_BIN_DEPTH)
            return false;
        bin_set_next(b, h->bins[c].head);
        h->bins[c].head = b;
        atomic_store_explicit(&h->bins[c].count, k + 1, memory_order_relaxed);
    }
    stat_inc(&h->cached_frees);
    /* Pairs with the acquire in cache_give; same thread, but TSan may have seen the block
     * handed between threads by mimalloc before. */
    tsan_release(b);
    asan_poison(b, (size_t)(c + 1) * 16);
    return true;
}

/* Hands out a block taken from the cache, charged to o (the caller charged a tagged owner). */
static inline void *cache_give(struct blk *b, struct mem_owner *o, bool zero)
{
    tsan_acquire(b);
    asan_unpoison(b, MEM_HDR);
    size_t size = meta_size(b->meta);
    asan_unpoison(b, MEM_HDR + size);
    b->word = (uintptr_t)o | MEM_LIVE_SMALL;
    if (zero)
        memset(b + 1, 0, size);
    return b + 1;
}

void *mem_alloc(struct mem_home *h, size_t size, size_t align, pith_mem_profile_t prof,
                struct mem_owner *o, bool zero)
{
    if (UNLIKELY(size > META_SIZE_MAX - MEM_HDR - align)) {
        errno = ENOMEM;
        return NULL;
    }
    bool small = prof == PITH_MEM_WARM && align == MEM_HDR && size <= SMALL_MAX;
    unsigned c = small_class(size);
    size_t n = small ? (size_t)(c + 1) * 16 : size + MEM_HDR;
    if (UNLIKELY(o->budget != 0) && mem_in_use(h, o) + n > o->budget) {
        stat_add(&o->refusals, 1);
        stat_add(&h->st.budget_refusals, 1);
        errno = ENOMEM;
        return NULL;
    }
    struct blk *b;
    if (small && (b = cache_take(h, c)) != NULL) {
        /* Still charged to total: only a tagged owner's account moves. */
        if (o != &h->total)
            charge(o, n);
        return cache_give(b, o, zero);
    }
    struct mem_prof *p = &h->prof[prof];
    if (UNLIKELY(mem_plain)) {
        b = plain_alloc(h, prof, n, align, zero);
    } else {
        b = LIKELY(p->n > 0) ? heap_alloc(p->heap[p->cur], n, align, zero) : NULL;
        if (UNLIKELY(b == NULL))
            b = alloc_slow(h, prof, n, align, zero);
    }
    if (UNLIKELY(b == NULL)) {
        stat_add(&h->st.cap_refusals, 1);
        errno = ENOMEM;
        return NULL;
    }
    charge(o, n);
    if (o != &h->total)
        charge(&h->total, n);
    return finish(b, o, n - MEM_HDR, align, prof, zero, small ? KIND_SMALL : KIND_BIG);
}

static void *outside_alloc_as(size_t size, size_t align, pith_mem_profile_t prof, bool zero,
                              bool quiet)
{
    if (!quiet && !atomic_exchange_explicit(&outside_warned, 1, memory_order_relaxed))
        mem_warn(NULL, "pith_malloc outside the engine: using the process heap "
                       "(counted under PITH_MEM_OUTSIDE)");
    if (size > META_SIZE_MAX - MEM_HDR - align) {
        errno = ENOMEM;
        return NULL;
    }
    size_t n = size + MEM_HDR;
    struct blk *b = sys_alloc(n, align, zero);
    if (b == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    int64_t use =
        atomic_fetch_add_explicit(&outside.local, (int64_t)n, memory_order_relaxed) + (int64_t)n;
    atomic_fetch_add_explicit(&outside.allocs, 1, memory_order_relaxed);
    outside_peak(use);
    return finish(b, &outside, size, align, prof, zero, KIND_BIG);
}

static void *outside_alloc(size_t size, size_t align, pith_mem_profile_t prof, bool zero)
{
    return outside_alloc_as(size, align, prof, zero, false);
}

void *mem_malloc_lib(size_t size)
{
    if (mem_self != NULL)
        return pith_malloc(size);
    return outside_alloc_as(size, MEM_HDR, PITH_MEM_WARM, false, true);
}

static void *alloc_any(size_t size, size_t align, pith_mem_profile_t prof, uint64_t tag, bool zero)
{
    if (align == 0)
        align = MEM_HDR;
    if (UNLIKELY((align & (align - 1)) != 0 || (unsigned)prof >= PITH_MEM_PROFILES)) {
        errno = EINVAL;
        return NULL;
    }
    if (align < MEM_HDR)
        align = MEM_HDR;
    struct mem_home *h = mem_self;
    if (UNLIKELY(h == NULL))
        return outside_alloc(size, align, prof, zero);
    struct mem_owner *o = tag == 0 ? &h->total : mem_owner_get(h, tag, true);
    if (UNLIKELY(o == NULL)) {
        errno = ENOMEM;
        return NULL;
    }
    return mem_alloc(h, size, align, prof, o, zero);
}

/* pith_malloc and pith_free start on a cache line: their inline paths are a handful of
 * instructions, and where they fall against the line and the op cache moved
 * mem.alloc_free_ns between 2.2 and 2.8 ns from one build to the next. */
__attribute__((aligned(64))) void *pith_malloc(size_t size)
{
    struct mem_home *h = mem_self;
    if (LIKELY(h != NULL)) {
        /* The hot slot first, inline: the block freed last, when it has the class asked.
         * Class c holds c * 16 bytes after the header, so a size of 1 to 240 fits the block
         * when it rounds up to hot_size. Size 0 and sizes that wrap round to 0, sizes past
         * 240 to 256 or more: never a hot_size. */
        if (atomic_load_explicit(&h->hot_size, memory_order_relaxed) ==
            ((size + 15) & ~(size_t)15)) {
            struct blk *b = (struct blk *)atomic_load_explicit(&h->hot, memory_order_relaxed);
            atomic_store_explicit(&h->hot_size, MEM_HOT_NONE, memory_order_relaxed);
            atomic_store_explicit(&h->hot, 0, memory_order_relaxed);
            tsan_acquire(b);
            asan_unpoison(b, MEM_HDR);
            asan_unpoison(b, MEM_HDR + meta_size(b->meta));
            b->word = h->live_word;
            return b + 1;
        }
        /* Then the class's list: class c holds c * 16 bytes, (size + 15) / 16 for 1 to 240. */
        if (LIKELY(size - 1 < SMALL_MAX)) {
            unsigned c = (unsigned)((size + 15) >> 4);
            struct blk *b = h->bins[c].head;
            if (b != NULL) {
                h->bins[c].head = bin_next(b);
                unsigned k = atomic_load_explicit(&h->bins[c].count, memory_order_relaxed);
                atomic_store_explicit(&h->bins[c].count, k - 1, memory_order_relaxed);
                tsan_acquire(b);
                asan_unpoison(b, (size_t)(c + 1) * 16);
                b->word = h->live_word;
                return b + 1;
            }
        }
        return mem_alloc(h, size, MEM_HDR, PITH_MEM_WARM, &h->total, false);
    }
    return outside_alloc(size, MEM_HDR, PITH_MEM_WARM, false);
}

void *pith_calloc(size_t count, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return alloc_any(total, 0, PITH_MEM_WARM, 0, true);
}

void *pith_aligned_alloc(size_t align, size_t size)
{
    if (align == 0) {
        errno = EINVAL;
        return NULL;
    }
    return alloc_any(size, align, PITH_MEM_WARM, 0, false);
}

void *pith_malloc_ex(size_t size, size_t align, pith_mem_profile_t profile, uint64_t owner)
{
    return alloc_any(size, align, profile, owner, false);
}

/* Reads the header of what claims to be a live block; 0 when it is not one. Not checked by
 * ASan: a freed block's header is poisoned, and telling the caller is our job here. */
static NO_ASAN uint64_t live_meta(const struct blk *b)
{
    uint64_t m = b->meta;
    uintptr_t state = b->word & STATE_MASK;
    if ((state == MEM_LIVE_BIG && (m >> 56) == KIND_BIG) ||
        (state == MEM_LIVE_SMALL && (m >> 56) == KIND_SMALL))
        return m;
    return 0;
}

static void bad_free(const void *p)
{
    struct mem_home *h = mem_self;
    atomic_fetch_add_explicit(h ? &h->bad_frees : &outside_bad_frees, 1, memory_order_relaxed);
    static _Atomic int warned;
    if (!atomic_exchange_explicit(&warned, 1, memory_order_relaxed))
        mem_warn(h,
                 "pith_free/pith_realloc of %p, which is not a live pith block (double "
                 "free?): ignored",
                 p);
}

static void free_slow(struct blk *b)
{
    uint64_t m = live_meta(b);
    if (UNLIKELY(m == 0)) {
        bad_free(b + 1);
        return;
    }
    uintptr_t w = b->word;
    b->word = (w & ~STATE_MASK) | MEM_DEAD;
    size_t n = meta_size(m) + MEM_HDR;
    struct mem_owner *o = word_owner(w);
    struct mem_home *h = o->home;
    if (LIKELY(h != NULL && h == mem_self)) {
        if (o != &h->total)
            credit_local(o, n);
        if ((m >> 56) == KIND_SMALL && h->cache_on && cache_put(h, b, (unsigned)(n >> 4) - 1))
            return; /* still charged to total until it leaves the cache */
        credit_local(&h->total, n);
    } else if (h != NULL) {
        credit_remote(o, n);
        if (o != &h->total)
            credit_remote(&h->total, n);
    } else {
        atomic_fetch_sub_explicit(&outside.local, (int64_t)n, memory_order_relaxed);
        atomic_fetch_add_explicit(&outside.frees, 1, memory_order_relaxed);
    }
    /* Pairs with the acquire in finish(): whoever gets this block (or memory of it, under
     * another block's header) next sees our writes. */
    tsan_release(b);
    tsan_release(h != NULL ? (void *)h : (void *)&outside);
    asan_poison_returned(b, blk_usable(b, m));
    blk_release(b, m);
}

__attribute__((aligned(64))) void pith_free(void *p)
{
    if (p == NULL)
        return;
    struct blk *b = (struct blk *)p - 1;
    struct mem_home *h = mem_self;
    /* Inline: a small block of this shard's own account into the empty hot slot (never empty
     * while the cache is off). The stores do not depend on the hot slot's value. A small block
     * is warm and 16-byte aligned, with c * 16 bytes after the header in meta's low byte. */
    if (LIKELY(h != NULL && blk_word(b) == h->live_word)) {
        uint64_t m = b->meta;
        if (LIKELY(atomic_load_explicit(&h->hot, memory_order_relaxed) == 0)) {
            b->word = h->dead_word;
            atomic_store_explicit(&h->hot_size, (uint8_t)m, memory_order_relaxed);
            atomic_store_explicit(&h->hot, (uintptr_t)b, memory_order_relaxed);
            stat_inc(&h->cached_frees);
            tsan_release(b);
            asan_poison(b, (size_t)(uint8_t)m + MEM_HDR);
            return;
        }
        /* The hot slot is taken: the class's list, when the cache is on and has room. */
        unsigned c = (uint8_t)m >> 4;
        unsigned k = atomic_load_explicit(&h->bins[c].count, memory_order_relaxed);
        if (LIKELY(h->cache_on && k < MEM_BIN_DEPTH)) {
            b->word = h->dead_word;
            bin_set_next(b, h->bins[c].head);
            h->bins[c].head = b;
            atomic_store_explicit(&h->bins[c].count, k + 1, memory_order_relaxed);
            stat_inc(&h->cached_frees);
            tsan_release(b);
            asan_poison(b, (size_t)(c + 1) * 16);
            return;
        }
    }
    free_slow(b);
}

size_t pith_malloc_usable_size(const void *p)
{
    if (p == NULL)
        return 0;
    const struct blk *b = (const struct blk *)p - 1;
    uint64_t m = live_meta(b);
    if (m == 0)
        return 0;
    return (m >> 56) == KIND_SMALL ? meta_size(m) : blk_usable(b, m) - MEM_HDR;
}

int pith_mem_profile_of(const void *p)
{
    if (p == NULL)
        return -EINVAL;
    const struct blk *b = (const struct blk *)p - 1;
    uint64_t m = live_meta(b);
    if (m == 0)
        return -EINVAL;
    if (word_owner(b->word) == &outside)
        return -ENOENT; /* the process heap's: no profile backs it */
    return (int)meta_prof(m);
}

void *pith_realloc(void *p, size_t size)
{
    if (p == NULL)
        return pith_malloc(size);
    if (size == 0) {
        pith_free(p);
        return NULL;
    }
    struct blk *b = (struct blk *)p - 1;
    uint64_t m = live_meta(b);
    if (m == 0) {
        bad_free(p);
        errno = EINVAL;
        return NULL;
    }
    struct mem_owner *o = word_owner(b->word);
    struct mem_home *h = o->home;
    size_t old = meta_size(m), align = meta_align(m);
    /* A small block keeps its class: in place while the size fits it, unchanged. */
    if ((m >> 56) == KIND_SMALL && size <= old)
        return p;
    /* In place when the block is ours and already big enough: only the accounts change. */
    if ((m >> 56) == KIND_BIG && h != NULL && h == mem_self &&
        size <= META_SIZE_MAX - MEM_HDR - align && size + MEM_HDR <= blk_usable(b, m)) {
        if (size > old && o->budget != 0 && mem_in_use(h, o) + size - old > o->budget) {
            stat_add(&o->refusals, 1);
            stat_add(&h->st.budget_refusals, 1);
            errno = ENOMEM;
            return NULL;
        }
        resize(o, old, size);
        if (o != &h->total)
            resize(&h->total, old, size);
        asan_unpoison(b, MEM_HDR + size);
        b->meta = meta_make(size, log2_of(align), meta_prof(m), KIND_BIG);
        return p;
    }
    void *q = alloc_any(size, align, meta_prof(m), o->tag, false);
    if (q == NULL)
        return NULL;
    memcpy(q, p, old < size ? old : size);
    pith_free(p);
    return q;
}

/* ---- owner table ---- */

#define DEAD_SLOT ((struct mem_owner *)1)

static unsigned slot_of(uint64_t tag, unsigned cap)
{
    tag ^= tag >> 33;
    tag *= UINT64_C(0xff51afd7ed558ccd);
    tag ^= tag >> 33;
    return (unsigned)tag & (cap - 1);
}

static int table_grow(struct mem_home *h)
{
    unsigned cap = h->owners_cap ? h->owners_cap * 2 : 64;
    struct mem_owner **t = calloc(cap, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < h->owners_cap; i++) {
        struct mem_owner *o = h->owners[i];
        if (o == NULL || o == DEAD_SLOT)
            continue;
        unsigned j = slot_of(o->tag, cap);
        while (t[j] != NULL)
            j = (j + 1) & (cap - 1);
        t[j] = o;
    }
    free(h->owners);
    h->owners = t;
    h->owners_cap = cap;
    h->owners_dead = 0;
    return 0;
}

struct mem_owner *mem_owner_get(struct mem_home *h, uint64_t tag, bool create)
{
    if (tag == 0)
        return &h->total;
    if (h->last_owner != NULL && h->last_owner->tag == tag)
        return h->last_owner;
    if (h->owners_cap > 0) {
        unsigned j = slot_of(tag, h->owners_cap);
        for (struct mem_owner *o; (o = h->owners[j]) != NULL; j = (j + 1) & (h->owners_cap - 1))
            if (o != DEAD_SLOT && o->tag == tag)
                return h->last_owner = o;
    }
    if (!create)
        return NULL;
    if ((h->owners_len + h->owners_dead + 1) * 2 > h->owners_cap && table_grow(h) != 0)
        return NULL;
    struct mem_owner *o = aligned_alloc(MEM_LINE, sizeof(*o));
    if (o == NULL)
        return NULL;
    memset(o, 0, sizeof(*o));
    o->tag = tag;
    o->home = h;
    unsigned j = slot_of(tag, h->owners_cap);
    while (h->owners[j] != NULL && h->owners[j] != DEAD_SLOT)
        j = (j + 1) & (h->owners_cap - 1);
    if (h->owners[j] == DEAD_SLOT)
        h->owners_dead--;
    h->owners[j] = o;
    h->owners_len++;
    return h->last_owner = o;
}

int pith_mem_owner_forget(uint64_t owner)
{
    struct mem_home *h = mem_self;
    if (h == NULL)
        return -EPERM;
    if (owner == 0 || h->owners_cap == 0)
        return owner == 0 ? -EINVAL : -ENOENT;
    unsigned j = slot_of(owner, h->owners_cap);
    for (struct mem_owner *o; (o = h->owners[j]) != NULL; j = (j + 1) & (h->owners_cap - 1)) {
        if (o == DEAD_SLOT || o->tag != owner)
            continue;
        /* No live block names it, so no free can reach it after this. */
        if (!mem_owner_idle(o))
            return -EBUSY;
        h->owners[j] = DEAD_SLOT;
        h->owners_len--;
        h->owners_dead++;
        if (h->last_owner == o)
            h->last_owner = NULL;
        free(o);
        return 0;
    }
    return -ENOENT;
}

void mem_owner_table_free(struct mem_home *h)
{
    for (unsigned i = 0; i < h->owners_cap; i++)
        if (h->owners[i] != NULL && h->owners[i] != DEAD_SLOT)
            free(h->owners[i]);
    free(h->owners);
    h->owners = NULL;
    h->owners_cap = 0;
}

/* Gives the cached blocks back to mimalloc and their bytes back to total. Their frees were
 * counted when they were cached. */
void mem_bins_flush(struct mem_home *h)
{
    size_t bytes;
    size_t n = mem_cached(h, &bytes);
    uintptr_t w = atomic_load_explicit(&h->hot, memory_order_relaxed);
    if (w > MEM_HOT_OFF) {
        atomic_store_explicit(&h->hot_size, MEM_HOT_NONE, memory_order_relaxed);
        atomic_store_explicit(&h->hot, 0, memory_order_relaxed);
        mi_free((void *)w);
    }
    for (unsigned c = 0; c < MEM_BIN_CLASSES; c++) {
        struct blk *b = h->bins[c].head;
        while (b != NULL) {
            struct blk *next = bin_next(b);
            mi_free(b);
            b = next;
        }
        h->bins[c].head = NULL;
        atomic_store_explicit(&h->bins[c].count, 0, memory_order_relaxed);
    }
    stat_add(&h->flushed, n);
    local_add(&h->total, -(int64_t)bytes);
}

void mem_cache_enable(struct mem_home *h, bool on)
{
    mem_bins_flush(h);
    h->cache_on = on;
    /* Off: the hot slot looks full, so pith_free's inline path passes it by. */
    atomic_store_explicit(&h->hot_size, MEM_HOT_NONE, memory_order_relaxed);
    atomic_store_explicit(&h->hot, on ? 0 : MEM_HOT_OFF, memory_order_relaxed);
}

void mem_outside_stats(pith_mem_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->shard = PITH_MEM_OUTSIDE;
    out->node = -1;
    out->in_use = (size_t)mem_owner_in_use(&outside);
    out->peak = atomic_load_explicit(&outside.peak, memory_order_relaxed);
    out->allocs = atomic_load_explicit(&outside.allocs, memory_order_relaxed);
    out->frees = atomic_load_explicit(&outside.frees, memory_order_relaxed);
    out->bad_frees = atomic_load_explicit(&outside_bad_frees, memory_order_relaxed);
}
