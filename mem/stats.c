/* What a shard's memory really is, read from the kernel when asked: resident pages (mincore),
 * transparent hugepages (/proc/self/smaps), and the home's own counters. Readers may be on any
 * thread; they see the extents the shard has published (mem_home.nall). */
#include "mem.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t resident(const struct extent *x)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), bytes = 0;
    unsigned char vec[4096];
    for (size_t off = 0; off < x->size; off += sizeof(vec) * pg) {
        size_t len = x->size - off;
        if (len > sizeof(vec) * pg)
            len = sizeof(vec) * pg;
        if (mincore((char *)x->base + off, len, vec) != 0)
            return 0;
        for (size_t i = 0; i < len / pg; i++)
            bytes += (vec[i] & 1) * pg;
    }
    return bytes;
}

/* AnonHugePages of the mappings that overlap each THP extent, at most the overlap. */
static void thp_bytes(struct extent *const *xs, unsigned n, size_t *huge)
{
    bool any = false;
    for (unsigned i = 0; i < n; i++)
        any |= xs[i]->backing == PITH_MEM_THP;
    if (!any)
        return;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL)
        return;
    char line[256];
    uintptr_t lo = 0, hi = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long a, b;
        size_t kb;
        char perms[8];
        /* A mapping's first line: "start-end perms offset dev inode path". */
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) == 3) {
            lo = a;
            hi = b;
        } else if (sscanf(line, "AnonHugePages: %zu kB", &kb) == 1 && kb > 0) {
            for (unsigned i = 0; i < n; i++) {
                uintptr_t xa = (uintptr_t)xs[i]->base, xb = xa + xs[i]->size;
                if (xs[i]->backing != PITH_MEM_THP || xb <= lo || xa >= hi)
                    continue;
                size_t overlap = (size_t)((xb < hi ? xb : hi) - (xa > lo ? xa : lo));
                huge[i] += kb * 1024 < overlap ? kb * 1024 : overlap;
            }
        }
    }
    fclose(f);
}

int mem_home_stats(struct mem_home *h, pith_mem_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->shard = (int)h->id;
    out->node = h->node;
    out->cap = h->cfg.cap;
    unsigned n = atomic_load_explicit(&h->nall, memory_order_acquire);
    struct extent *xs[PITH_MEM_PROFILES * MEM_MAX_EXTENTS];
    size_t huge[PITH_MEM_PROFILES * MEM_MAX_EXTENTS] = {0};
    memcpy(xs, h->all, n * sizeof(xs[0]));
    thp_bytes(xs, n, huge);
    for (unsigned i = 0; i < n; i++) {
        const struct extent *x = xs[i];
        size_t res = resident(x);
        out->reserved += x->size;
        out->profile_reserved[x->profile] += x->size;
        out->committed += res;
        if (x->locked)
            out->locked += res;
        if (x->backing == PITH_MEM_HUGETLB)
            huge[i] = res;
        out->huge += huge[i] < res ? huge[i] : res;
    }
    out->extents = n;
    out->in_use = mem_in_use(h, &h->total);
    out->peak = atomic_load_explicit(&h->total.peak, memory_order_relaxed);
    out->allocs = mem_allocs(h, &h->total);
    out->frees = mem_frees(h, &h->total);
    out->remote_frees = atomic_load_explicit(&h->total.remote_frees, memory_order_relaxed);
    out->budget_refusals = atomic_load_explicit(&h->st.budget_refusals, memory_order_relaxed);
    out->grows = atomic_load_explicit(&h->st.grows, memory_order_relaxed);
    out->cap_refusals = atomic_load_explicit(&h->st.cap_refusals, memory_order_relaxed);
    out->lock_failures = atomic_load_explicit(&h->st.lock_failures, memory_order_relaxed);
    out->bind_failures = atomic_load_explicit(&h->st.bind_failures, memory_order_relaxed);
    out->arena_failures = atomic_load_explicit(&h->st.arena_failures, memory_order_relaxed);
    out->cold_advice = atomic_load_explicit(&h->st.cold_advice, memory_order_relaxed);
    out->bad_frees = atomic_load_explicit(&h->bad_frees, memory_order_relaxed);
    return 0;
}

int mem_home_extent(struct mem_home *h, unsigned i, pith_mem_extent_t *out)
{
    unsigned n = atomic_load_explicit(&h->nall, memory_order_acquire);
    if (i >= n)
        return -ENOENT;
    const struct extent *x = h->all[i];
    out->base = x->base;
    out->size = x->size;
    out->profile = x->profile;
    out->backing = x->backing;
    out->locked = x->locked;
    out->prefaulted = x->prefaulted;
    out->node = x->node;
    return 0;
}

int mem_self_usage(size_t *in_use, size_t *cap)
{
    struct mem_home *h = mem_self;
    if (h == NULL)
        return -EPERM;
    *in_use = mem_in_use(h, &h->total);
    *cap = h->cfg.cap;
    return 0;
}
