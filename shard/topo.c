/* Machine topology through hwloc: the default CPU list, CPU validation, and pinning. */
#include "shard.h"

#include <errno.h>
#include <stdlib.h>

int topo_open(struct engine *e)
{
    if (hwloc_topology_init(&e->topo) != 0)
        return -ENOMEM;
    if (hwloc_topology_load(e->topo) != 0) {
        hwloc_topology_destroy(e->topo);
        e->topo = NULL;
        return -EIO;
    }
    return 0;
}

void topo_close(struct engine *e)
{
    if (e->topo != NULL)
        hwloc_topology_destroy(e->topo);
    e->topo = NULL;
}

/* The first hardware thread of each core the process may use. */
int topo_default_cpus(struct engine *e, unsigned **cpus, unsigned *ncpus)
{
    hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(e->topo);
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
            hwloc_obj_t pu =
                hwloc_get_obj_inside_cpuset_by_type(e->topo, core->cpuset, HWLOC_OBJ_PU, 0);
            if (pu != NULL && hwloc_bitmap_isset(allowed, pu->os_index))
                list[n++] = pu->os_index;
        }
    } else {
        for (int i = 0; i < pus; i++) {
            hwloc_obj_t pu = hwloc_get_obj_by_type(e->topo, HWLOC_OBJ_PU, (unsigned)i);
            if (hwloc_bitmap_isset(allowed, pu->os_index))
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
