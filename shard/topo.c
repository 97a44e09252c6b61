/* Machine topology through hwloc: the CPUs the process may use, the default CPU list, CPU
 * validation, and pinning. */
#include "shard.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>

/* The affinity mask the process had when the library was loaded, before the application could
 * pin its own threads (a pinned starting thread must not shrink the engine). hwloc's allowed
 * cpuset follows cgroups but not sched_setaffinity, so taskset shows only here. NULL when it
 * could not be read: then hwloc's allowed set alone decides. Written once, before main. */
static cpu_set_t *start_mask;
static size_t start_mask_size;

__attribute__((constructor)) static void topo_read_start_mask(void)
{
    /* The kernel refuses (EINVAL) a mask shorter than its CPU count: grow until it fits. */
    for (int bits = CPU_SETSIZE; bits <= (1 << 20); bits *= 2) {
        cpu_set_t *set = CPU_ALLOC(bits);
        if (set == NULL)
            return;
        size_t size = CPU_ALLOC_SIZE(bits);
        if (sched_getaffinity(0, size, set) == 0) {
            start_mask = set;
            start_mask_size = size;
            return;
        }
        CPU_FREE(set);
        if (errno != EINVAL)
            return;
    }
}

int topo_open(struct engine *e)
{
    if (hwloc_topology_init(&e->topo) != 0)
        return -ENOMEM;
    if (hwloc_topology_load(e->topo) != 0) {
        hwloc_topology_destroy(e->topo);
        e->topo = NULL;
        return -EIO;
    }
    e->usable = hwloc_bitmap_dup(hwloc_topology_get_allowed_cpuset(e->topo));
    if (e->usable == NULL) {
        topo_close(e);
        return -ENOMEM;
    }
    if (start_mask != NULL) {
        int last = hwloc_bitmap_last(e->usable);
        for (int cpu = 0; cpu <= last; cpu++)
            if (!CPU_ISSET_S((size_t)cpu, start_mask_size, start_mask))
                hwloc_bitmap_clr(e->usable, (unsigned)cpu);
    }
    return 0;
}

void topo_close(struct engine *e)
{
    hwloc_bitmap_free(e->usable);
    e->usable = NULL;
    if (e->topo != NULL)
        hwloc_topology_destroy(e->topo);
    e->topo = NULL;
}

/* Of each core, the first hardware thread the process may use. */
int topo_default_cpus(struct engine *e, unsigned **cpus, unsigned *ncpus)
{
    hwloc_const_cpuset_t usable = e->usable;
    int cores = hwloc_get_nbobjs_by_type(e->topo, HWLOC_OBJ_CORE);
    int pus = hwloc_get_nbobjs_by_type(e->topo, HWLOC_OBJ_PU);
    unsigned cap = (unsigned)(cores > 0 ? cores : pus);
    if (cap == 0)
        return -ENODEV;
    unsigned *list = malloc(cap * sizeof(*list)), n = 0;
    if (list == NULL)
        return -ENOMEM;
    if (cores > 0) {
        for (int i = 0; i < cores; i++) {
            hwloc_obj_t core = hwloc_get_obj_by_type(e->topo, HWLOC_OBJ_CORE, (unsigned)i);
            /* Not the core's first thread, which taskset may have left out. */
            int pu = -1;
            for (int c = hwloc_bitmap_first(core->cpuset); c >= 0;
                 c = hwloc_bitmap_next(core->cpuset, c))
                if (hwloc_bitmap_isset(usable, (unsigned)c)) {
                    pu = c;
                    break;
                }
            if (pu >= 0)
                list[n++] = (unsigned)pu;
        }
    } else {
        for (int i = 0; i < pus; i++) {
            hwloc_obj_t pu = hwloc_get_obj_by_type(e->topo, HWLOC_OBJ_PU, (unsigned)i);
            if (hwloc_bitmap_isset(usable, pu->os_index))
                list[n++] = pu->os_index;
        }
    }
    if (n == 0 || n > MAX_SHARDS) {
        free(list);
        return -ENODEV;
    }
    *cpus = list;
    *ncpus = n;
    return 0;
}

bool topo_cpu_exists(struct engine *e, unsigned cpu)
{
    return hwloc_bitmap_isset(hwloc_topology_get_complete_cpuset(e->topo), cpu);
}

bool topo_cpu_usable(struct engine *e, unsigned cpu)
{
    return hwloc_bitmap_isset(e->usable, cpu);
}

int topo_cpu_node(struct engine *e, unsigned cpu)
{
    hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(e->topo, cpu);
    return pu != NULL && pu->nodeset != NULL ? hwloc_bitmap_first(pu->nodeset) : -1;
}

void topo_usable_list(struct engine *e, char *buf, size_t size)
{
    if (hwloc_bitmap_list_snprintf(buf, size, e->usable) < 0 && size > 0)
        buf[0] = '\0';
}

bool topo_pin_self(struct engine *e, unsigned cpu)
{
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (set == NULL)
        return false;
    hwloc_bitmap_only(set, cpu);
    int rc = hwloc_set_cpubind(e->topo, set, HWLOC_CPUBIND_THREAD | HWLOC_CPUBIND_STRICT);
    if (rc != 0)
        rc = hwloc_set_cpubind(e->topo, set, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(set);
    return rc == 0;
}
