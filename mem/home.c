/* A shard's memory home: its configuration, its first extent and heap, the idle-time collection
 * of remote frees, the owner API, and the end of its life (heaps deleted on the shard's thread,
 * accounts kept while blocks are live). */
#include "mem.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__thread struct mem_home *mem_self;

/* Homes whose blocks outlived their engine: kept reachable so late frees find their accounts. */
static pthread_mutex_t parked_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mem_home **parked;
static size_t nparked;

void mem_warn(struct mem_home *h, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (h != NULL)
        fprintf(stderr, "pith: warning: shard %u: %s\n", h->id, msg);
    else
        fprintf(stderr, "pith: warning: %s\n", msg);
}

static size_t round_grain(size_t v)
{
    if (v > SIZE_MAX - MEM_GRAIN)
        return SIZE_MAX & ~(MEM_GRAIN - 1);
    return (v + MEM_GRAIN - 1) & ~(MEM_GRAIN - 1);
}

/* "64M", "1G", "33554432". */
static int parse_size(const char *text, size_t *out)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*text))
        return -EINVAL;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno)
        return -EINVAL;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case '\0':
        break;
    default:
        return -EINVAL;
    }
    if (shift) {
        end++;
        if (toupper((unsigned char)*end) == 'I')
            end++;
        if (toupper((unsigned char)*end) == 'B')
            end++;
    }
    if (*end != '\0' || v > (SIZE_MAX >> shift))
        return -EINVAL;
    *out = (size_t)v << shift;
    return 0;
}

/* PITH_MEM_x=0 sets the flag, =1 clears it. */
static int env_flag(const char *name, unsigned bit, unsigned *flags, char *why, size_t whylen)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return 0;
    if (strcmp(v, "0") == 0)
        *flags |= bit;
    else if (strcmp(v, "1") == 0)
        *flags &= ~bit;
    else {
        snprintf(why, whylen, "%s=\"%s\": give 0 or 1", name, v);
        return -EINVAL;
    }
    return 0;
}

int mem_config_resolve(pith_mem_config_t *c, unsigned nshards, char *why, size_t whylen)
{
    static const struct {
        const char *name;
        size_t offset;
    } sizes[] = {
        {"PITH_MEM_INITIAL", offsetof(pith_mem_config_t, initial)},
        {"PITH_MEM_HOT_INITIAL", offsetof(pith_mem_config_t, hot_initial)},
        {"PITH_MEM_COLD_INITIAL", offsetof(pith_mem_config_t, cold_initial)},
        {"PITH_MEM_GROW", offsetof(pith_mem_config_t, grow)},
        {"PITH_MEM_CAP", offsetof(pith_mem_config_t, cap)},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        const char *v = getenv(sizes[i].name);
        if (v == NULL || *v == '\0')
            continue;
        if (parse_size(v, (size_t *)((char *)c + sizes[i].offset)) != 0) {
            snprintf(why, whylen, "%s=\"%s\" is not a size like 64M or 1G", sizes[i].name, v);
            return -EINVAL;
        }
    }
    int err = env_flag("PITH_MEM_HUGETLB", PITH_MEM_NO_HUGETLB, &c->flags, why, whylen);
    if (!err)
        err = env_flag("PITH_MEM_THP", PITH_MEM_NO_THP, &c->flags, why, whylen);
    if (!err)
        err = env_flag("PITH_MEM_LOCK", PITH_MEM_NO_LOCK, &c->flags, why, whylen);
    if (!err)
        err = env_flag("PITH_MEM_BIND", PITH_MEM_NO_BIND, &c->flags, why, whylen);
    if (err)
        return err;
    if (c->flags & ~(PITH_MEM_NO_HUGETLB | PITH_MEM_NO_THP | PITH_MEM_NO_LOCK | PITH_MEM_NO_BIND)) {
        snprintf(why, whylen, "mem.flags has unknown bits 0x%x", c->flags);
        return -EINVAL;
    }
    if (c->initial == 0)
        c->initial = MEM_GRAIN;
    if (c->grow == 0)
        c->grow = MEM_GRAIN;
    if (c->cap == 0) {
        long pages = sysconf(_SC_PHYS_PAGES), pg = sysconf(_SC_PAGESIZE);
        size_t ram = pages > 0 && pg > 0 ? (size_t)pages * (size_t)pg : (size_t)1 << 30;
        c->cap = (ram / 2 / (nshards ? nshards : 1)) & ~(MEM_GRAIN - 1);
        if (c->cap < 2 * MEM_GRAIN)
            c->cap = 2 * MEM_GRAIN;
    }
    c->initial = round_grain(c->initial);
    c->hot_initial = round_grain(c->hot_initial);
    c->cold_initial = round_grain(c->cold_initial);
    c->grow = round_grain(c->grow);
    c->cap = round_grain(c->cap);
    size_t at_start;
    if (__builtin_add_overflow(c->initial, c->hot_initial, &at_start) ||
        __builtin_add_overflow(at_start, c->cold_initial, &at_start) || c->cap < at_start) {
        snprintf(why, whylen,
                 "mem.cap (%zu MiB) is below mem.initial + hot_initial + cold_initial (%zu + "
                 "%zu + %zu MiB)",
                 c->cap >> 20, c->initial >> 20, c->hot_initial >> 20, c->cold_initial >> 20);
        return -EINVAL;
    }
    return 0;
}

/* The NUMA node of the CPU the shard is pinned to, -1 when unknown or unpinned. */
static int cpu_node(hwloc_topology_t topo, int cpu, bool *multi)
{
    *multi = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE) > 1;
    if (cpu < 0)
        return -1;
    hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(topo, (unsigned)cpu);
    hwloc_nodeset_t ns = hwloc_bitmap_alloc();
    if (pu == NULL || ns == NULL) {
        hwloc_bitmap_free(ns);
        return -1;
    }
    hwloc_cpuset_to_nodeset(topo, pu->cpuset, ns);
    int node = hwloc_bitmap_first(ns);
    hwloc_bitmap_free(ns);
    return node;
}

/* mem_home_open could not make an extent it needs: give back what it made. */
static void mem_home_open_failed(struct mem_home *h)
{
    for (int p = 0; p < PITH_MEM_PROFILES; p++) {
        struct mem_prof *pr = &h->prof[p];
        for (unsigned i = 0; i < pr->n; i++) {
            if (pr->heap[i] != NULL)
                mi_heap_delete(pr->heap[i]);
            extent_put(pr->ext[i]);
        }
    }
    free(h);
}

int mem_home_open(struct mem_home **out, unsigned id, const pith_mem_config_t *cfg,
                  hwloc_topology_t topo, int cpu)
{
    struct mem_home *h = aligned_alloc(MEM_LINE, sizeof(*h));
    if (h == NULL)
        return -ENOMEM;
    memset(h, 0, sizeof(*h));
    h->id = id;
    h->cfg = *cfg;
    h->topo = topo;
    h->node = cpu_node(topo, cpu, &h->strict);
    h->total.home = h;
    h->live_word = (uintptr_t)&h->total | MEM_LIVE_SMALL;
    h->dead_word = (uintptr_t)&h->total | MEM_DEAD;
    mem_cache_enable(h, !mem_plain);
    /* The warm extent, then the hot and cold ones asked for. A full arena table is not fatal:
     * allocations then use the thread's mimalloc heap. */
    int err = mem_prof_grow(h, PITH_MEM_WARM, 0);
    if ((err == 0 || err == -ENOSPC) && cfg->hot_initial)
        err = mem_prof_grow(h, PITH_MEM_HOT, 0);
    if ((err == 0 || err == -ENOSPC) && cfg->cold_initial)
        err = mem_prof_grow(h, PITH_MEM_COLD, 0);
    if (err && err != -ENOSPC) {
        mem_home_open_failed(h);
        return err;
    }
    mem_self = h;
    *out = h;
    return 0;
}

void mem_home_close(struct mem_home *h)
{
    if (h == NULL)
        return;
    /* mi_heap_delete, not destroy: pages with live blocks move to this thread's backing heap
     * and are abandoned when it exits; blocks freed later by anyone stay valid frees. */
    mem_bins_flush(h);
    mem_self = NULL;
    if (mem_plain)
        return;
    for (int p = 0; p < PITH_MEM_PROFILES; p++) {
        struct mem_prof *pr = &h->prof[p];
        for (unsigned i = 0; i < pr->n; i++) {
            mi_heap_delete(pr->heap[i]);
            pr->heap[i] = NULL;
        }
    }
    mi_heap_collect(mi_heap_get_default(), true);
}

size_t mem_home_release(struct mem_home *h)
{
    if (h == NULL)
        return 0;
    for (int p = 0; p < PITH_MEM_PROFILES; p++) {
        struct mem_prof *pr = &h->prof[p];
        for (unsigned i = 0; i < pr->n; i++)
            extent_put(pr->ext[i]);
        pr->n = 0;
    }
    if (mem_owner_idle(&h->total)) {
        mem_owner_table_free(h);
        free(h);
        return 0;
    }
    size_t live = (size_t)mem_owner_in_use(&h->total);
    mem_warn(h,
             "%zu bytes in live blocks at stop; their accounts stay so that late frees are "
             "safe",
             live);
    pthread_mutex_lock(&parked_lock);
    struct mem_home **grown = realloc(parked, (nparked + 1) * sizeof(*parked));
    if (grown != NULL) {
        parked = grown;
        parked[nparked++] = h;
    }
    pthread_mutex_unlock(&parked_lock);
    /* If realloc failed the home is still never freed: a leak, never a use after free. */
    return live;
}

static void collect(struct mem_home *h, bool force)
{
    for (int p = 0; p < PITH_MEM_PROFILES && !mem_plain; p++)
        for (unsigned i = 0; i < h->prof[p].n; i++)
            mi_heap_collect(h->prof[p].heap[i], force);
    h->collected_remote = atomic_load_explicit(&h->total.remote, memory_order_relaxed);
}

static void advise_cold(struct mem_home *h, bool pageout)
{
    struct mem_prof *pr = &h->prof[PITH_MEM_COLD];
    for (unsigned i = 0; i < pr->n; i++)
        if (extent_advise_cold(pr->ext[i], pageout) == 0)
            stat_add(&h->st.cold_advice, 1);
}

void mem_home_idle(struct mem_home *h)
{
    /* Other threads' frees wait in mimalloc's per-page lists until the owner collects them;
     * an active heap does so as it allocates, an idle one here. */
    if (atomic_load_explicit(&h->total.remote, memory_order_relaxed) != h->collected_remote)
        collect(h, false);
    if (h->pressure) {
        h->pressure = false;
        advise_cold(h, false);
    }
}

int pith_mem_reclaim(void)
{
    struct mem_home *h = mem_self;
    if (h == NULL)
        return -EPERM;
    mem_bins_flush(h);
    collect(h, true);
    advise_cold(h, true);
    return 0;
}

int pith_mem_owner_budget(uint64_t owner, size_t budget)
{
    struct mem_home *h = mem_self;
    if (h == NULL)
        return -EPERM;
    struct mem_owner *o = mem_owner_get(h, owner, true);
    if (o == NULL)
        return -ENOMEM;
    o->budget = budget;
    if (o == &h->total) {
        /* Cache hits skip the accounts, so owner 0's budget turns the cache off. */
        mem_cache_enable(h, budget == 0 && !mem_plain);
    }
    return 0;
}

int pith_mem_owner_stats(uint64_t owner, pith_mem_owner_stats_t *out)
{
    struct mem_home *h = mem_self;
    if (out == NULL)
        return -EINVAL;
    if (h == NULL)
        return -EPERM;
    struct mem_owner *o = mem_owner_get(h, owner, false);
    if (o == NULL)
        return -ENOENT;
    out->in_use = mem_in_use(h, o);
    out->peak = atomic_load_explicit(&o->peak, memory_order_relaxed);
    out->budget = o->budget;
    out->allocs = mem_allocs(h, o);
    out->refusals = atomic_load_explicit(&o->refusals, memory_order_relaxed);
    return 0;
}
