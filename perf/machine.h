/* The machine facts pith-bench prints beside its figures: CPUs, kernel, where the shards ran,
 * the io_uring setup flags they got, hugepage mode and load. */
#ifndef PITH_PERF_MACHINE_H
#define PITH_PERF_MACHINE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define MACHINE_MAX_SHARDS 64 /* shards described one by one; the count is always exact */

typedef struct machine {
    long cpus_online;
    int hwloc_pus, hwloc_cores, hwloc_numa; /* -1 when hwloc could not load the topology */
    char cpu_model[96];
    char kernel[96];
    char thp[24];                /* the bracketed mode of transparent_hugepage/enabled, or "?" */
    long hugetlb;                /* vm.nr_hugepages, -1 unreadable */
    double load_start, load_end; /* 1-minute load average before and after the run */

    bool engine_seen; /* shard facts below come from a started engine */
    unsigned shards;
    int shard_cpu[MACHINE_MAX_SHARDS];
    bool shard_pinned[MACHINE_MAX_SHARDS];
    uint32_t ring_flags[MACHINE_MAX_SHARDS];
} machine_t;

/* Facts that need no engine. */
void machine_collect_host(machine_t *m);

/* Reads each shard's cpu, pinned and ring_flags; call while the engine runs. */
void machine_collect_shards(machine_t *m);

/* Writes the IORING_SETUP_* names of flags, '|'-separated ("none" for 0). */
void machine_ring_flags_name(uint32_t flags, char *buf, size_t len);

/* 1-minute load average, or NAN. */
double machine_loadavg(void);

void machine_print_text(FILE *f, const machine_t *m);
/* Prints "\"machine\":{...}". */
void machine_print_json(FILE *f, const machine_t *m);

#endif
