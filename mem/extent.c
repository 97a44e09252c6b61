/* Extents: 32 MiB-aligned mappings backed by the best pages the machine grants (hugetlb, then
 * transparent hugepages, then base pages), bound to a NUMA node before first touch, locked as
 * the profile asks, and handed to mimalloc as exclusive arenas. mimalloc keeps at most 64
 * arenas per process and cannot forget one, so extents are never unmapped: a stopped shard's
 * extents go to a pool that the next engine's shards take from. */
#include "mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct extent *pool;
/* Every extent made, newest first, through extent.known; under pool_lock. */
static struct extent *registry;

/* /sys/kernel/mm/transparent_hugepage/enabled: "always [madvise] never" and the like. */
static bool thp_available(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f == NULL)
        return false;
    char line[128] = "";
    bool ok = fgets(line, sizeof(line), f) != NULL && strstr(line, "[never]") == NULL;
    fclose(f);
    return ok;
}

/* Touches every page for writing: MADV_POPULATE_WRITE (5.14+), else by hand. */
static int populate(void *base, size_t size)
{
    if (madvise(base, size, MADV_POPULATE_WRITE) == 0)
        return 0;
    if (errno != EINVAL)
        return -errno;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    for (size_t off = 0; off < size; off += pg)
        ((volatile char *)base)[off] = 0;
    return 0;
}

/* When RLIMIT_MEMLOCK is what refused: raise the soft limit to the hard one, once it helps. */
static bool raise_memlock(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
        return false;
    rl.rlim_cur = rl.rlim_max;
    return setrlimit(RLIMIT_MEMLOCK, &rl) == 0;
}

static bool lock_range(void *base, size_t size, bool whole, unsigned flags)
{
    if (flags & PITH_MEM_NO_LOCK)
        return false; /* the caller asked us to behave as if mlock were refused */
    /* valgrind 3.19 does not know mlock2 (glibc then says EINVAL): lock it all there, which
     * also faults it in. */
    whole |= mem_plain;
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc = whole ? mlock(base, size) : mlock2(base, size, MLOCK_ONFAULT);
        if (rc != 0 && (errno == ENOSYS || errno == EINVAL) && !whole)
            rc = mlock(base, size);
        if (rc == 0)
            return true;
        if ((errno != ENOMEM && errno != EPERM && errno != EAGAIN) || !raise_memlock())
            return false;
    }
    return false;
}

static bool bind_range(hwloc_topology_t topo, void *base, size_t size, int node, bool strict)
{
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (set == NULL)
        return false;
    hwloc_bitmap_only(set, (unsigned)node);
    int fl = HWLOC_MEMBIND_BYNODESET | (strict ? HWLOC_MEMBIND_STRICT : 0);
    int rc = hwloc_set_area_membind(topo, base, size, set, HWLOC_MEMBIND_BIND, fl);
    hwloc_bitmap_free(set);
    return rc == 0;
}

/* Brings a pooled extent's lock state to what the profile and flags ask now. */
static void relock(struct extent *x, unsigned flags, unsigned *events)
{
    if (x->profile == PITH_MEM_COLD)
        return;
    if (flags & PITH_MEM_NO_LOCK) {
        if (x->locked)
            munlock(x->base, x->size);
        x->locked = false;
    } else if (!x->locked) {
        x->locked = lock_range(x->base, x->size, x->prefaulted, flags);
    }
    if (!x->locked)
        *events |= EV_LOCK_REFUSED;
}

static struct extent *pool_take(size_t size, pith_mem_profile_t profile, unsigned flags, int node)
{
    pthread_mutex_lock(&pool_lock);
    struct extent **pp = &pool, *x = NULL;
    for (; *pp != NULL; pp = &(*pp)->next) {
        struct extent *c = *pp;
        if (c->size != size || c->profile != profile || c->node != node)
            continue;
        /* Made under the same page policy: neither more nor less than the flags allow. */
        if (c->made_with != (flags & (PITH_MEM_NO_HUGETLB | PITH_MEM_NO_THP)))
            continue;
        x = c;
        *pp = c->next;
        x->next = NULL;
        break;
    }
    pthread_mutex_unlock(&pool_lock);
    return x;
}

void extent_put(struct extent *x)
{
    pthread_mutex_lock(&pool_lock);
    x->next = pool;
    pool = x;
    pthread_mutex_unlock(&pool_lock);
}

/* Maps `size` bytes at a MEM_GRAIN-aligned address with no access yet: the slack around the
 * aligned range is given back. */
static void *reserve_aligned(size_t size)
{
    size_t span = size + MEM_GRAIN;
    char *raw = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    char *a = (char *)(((uintptr_t)raw + MEM_GRAIN - 1) & ~(uintptr_t)(MEM_GRAIN - 1));
    if (a > raw)
        munmap(raw, (size_t)(a - raw));
    size_t tail = (size_t)(raw + span - (a + size));
    if (tail > 0)
        munmap(a + size, tail);
    return a;
}

/* A failed MAP_FIXED mmap leaves a hole where our reservation was (the kernel unmaps the old
 * range first), and another thread may map into it at once: we must never map over it again
 * unless we hold it. Take it back with MAP_FIXED_NOREPLACE, or start over somewhere else. */
static char *retake(char *a, size_t size)
{
    char *r = mmap(a, size, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (r == a)
        return a;
    if (r != MAP_FAILED)
        munmap(r, size); /* an old kernel took the flag for a hint */
    return reserve_aligned(size);
}

/* Free 2 MiB pages in the system pool: no point trying MAP_HUGETLB for more than that. */
static size_t hugetlb_free_bytes(void)
{
    FILE *f = fopen("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "r");
    unsigned long pages = 0;
    if (f != NULL) {
        if (fscanf(f, "%lu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    return (size_t)pages << 21;
}

static int map_new(struct extent *x, unsigned flags, hwloc_topology_t topo, int node, bool strict,
                   unsigned *events)
{
    char *a = reserve_aligned(x->size);
    if (a == NULL)
        return -ENOMEM;
    const int anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    bool bound = false;
    x->backing = PITH_MEM_PLAIN;

    /* Hugetlb pages are reserved at mmap time (no MAP_NORESERVE), so a machine without enough
     * free pages says so here. They are populated at once: on a NUMA machine the node's pool
     * may still run dry, and we would rather learn it now than take SIGBUS at a fault. */
    if (x->profile != PITH_MEM_COLD && !(flags & PITH_MEM_NO_HUGETLB) &&
        hugetlb_free_bytes() >= x->size) {
        if (mmap(a, x->size, PROT_READ | PROT_WRITE, anon | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0) ==
            a) {
            bound = node >= 0 && bind_range(topo, a, x->size, node, strict);
            if (populate(a, x->size) == 0) {
                x->backing = PITH_MEM_HUGETLB;
                x->prefaulted = true;
            }
        } else if ((a = retake(a, x->size)) == NULL) {
            return -ENOMEM;
        }
    }
    if (x->backing != PITH_MEM_HUGETLB) {
        /* Replacing a mapping we hold is atomic; only a failure could leave a hole, and then
         * the range is left alone rather than unmapped under someone else. */
        if (mmap(a, x->size, PROT_READ | PROT_WRITE, anon, -1, 0) != a)
            return -errno;
        if (x->profile == PITH_MEM_COLD)
            madvise(a, x->size, MADV_NOHUGEPAGE);
        else if (!(flags & PITH_MEM_NO_THP) && thp_available() &&
                 madvise(a, x->size, MADV_HUGEPAGE) == 0)
            x->backing = PITH_MEM_THP;
        /* Before the first touch: the pages are placed when they fault. */
        bound = node >= 0 && bind_range(topo, a, x->size, node, strict);
        if (x->profile == PITH_MEM_HOT) {
            int err = populate(a, x->size);
            if (err) {
                munmap(a, x->size);
                return err;
            }
            x->prefaulted = true;
        }
    }
    if (node >= 0 && !bound && !(flags & PITH_MEM_NO_BIND))
        *events |= EV_BIND_FAILED;
    x->node = bound ? node : -1;
    x->base = a;
    if (x->profile != PITH_MEM_COLD) {
        x->locked = lock_range(a, x->size, x->prefaulted, flags);
        if (!x->locked)
            *events |= EV_LOCK_REFUSED;
    }
    /* Committed (readable and writable, the kernel commits on fault), not large: mimalloc
     * then never decommits or resets these pages, so locked memory stays resident. The node
     * is -1 on purpose: mimalloc would refuse the arena to a thread it places on another node
     * by its own count, and the binding above already decides placement. */
    if (!mi_manage_os_memory_ex(a, x->size, true, false, true, -1, true, &x->arena)) {
        munmap(a, x->size);
        *events |= EV_ARENA_FULL;
        return -ENOSPC;
    }
    return 0;
}

int extent_get(struct extent **out, size_t size, pith_mem_profile_t profile, unsigned flags,
               hwloc_topology_t topo, int node, bool strict, unsigned *events)
{
    if (flags & PITH_MEM_NO_BIND)
        node = -1;
    struct extent *x = pool_take(size, profile, flags, node);
    if (x != NULL) {
        relock(x, flags, events);
        *out = x;
        return 0;
    }
    x = calloc(1, sizeof(*x));
    if (x == NULL)
        return -ENOMEM;
    x->size = size;
    x->profile = profile;
    x->made_with = flags & (PITH_MEM_NO_HUGETLB | PITH_MEM_NO_THP);
    int err = map_new(x, flags, topo, node, strict, events);
    if (err) {
        free(x);
        return err;
    }
    pthread_mutex_lock(&pool_lock);
    x->known = registry;
    registry = x;
    pthread_mutex_unlock(&pool_lock);
    *out = x;
    return 0;
}

unsigned mem_locked_extents(uintptr_t lo, uintptr_t hi, uintptr_t *out, unsigned max)
{
    unsigned n = 0, all = 0;
    pthread_mutex_lock(&pool_lock);
    for (struct extent *x = registry; x != NULL; x = x->known) {
        uintptr_t b = (uintptr_t)x->base, e = b + x->size;
        if (!atomic_load(&x->locked) || e <= lo || b >= hi)
            continue;
        if (all++ >= max)
            continue; /* counted, not kept */
        out[2 * n] = b;
        out[2 * n + 1] = e;
        n++;
    }
    pthread_mutex_unlock(&pool_lock);
    return all;
}

/* Cold extents only: MADV_COLD makes their pages the first the kernel reclaims; MADV_PAGEOUT
 * reclaims them now. Contents stay valid either way. */
int extent_advise_cold(struct extent *x, bool pageout)
{
    if (madvise(x->base, x->size, pageout ? MADV_PAGEOUT : MADV_COLD) == 0)
        return 0;
    if (pageout && madvise(x->base, x->size, MADV_COLD) == 0)
        return 0;
    return -errno;
}
