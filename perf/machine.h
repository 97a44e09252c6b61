/* The machine facts pith-bench prints beside its figures: CPUs, kernel, where the shards ran,
 * the io_uring setup flags they got, the memory each shard got, hugepage mode and load. */
#ifndef PITH_PERF_MACHINE_H
#define PITH_PERF_MACHINE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <pith/mem.h>

#define MACHINE_MAX_SHARDS  64 /* shards described one by one; the count is always exact */
#define MACHINE_MEM_EXTENTS 8  /* extents described per shard; the count is always exact */

/* One shard's memory as pith_mem_stats and pith_mem_extent_info report it. */
typedef struct machine_mem {
    bool seen; /* false: the calls failed */
    int node;  /* NUMA node the shard binds to, -1 none */
    size_t cap, reserved, committed, locked, huge;
    unsigned extents;
    pith_mem_extent_t ext[MACHINE_MEM_EXTENTS];
} machine_mem_t;

typedef struct machine {
    long cpus_online;
    int hwloc_pus, hwloc_cores, hwloc_numa; /* -1 when hwloc could not load the topology */
    char cpu_model[96];
    char kernel[96];
    char thp[24];                /* the bracketed mode of transparent_hugepage/enabled, or "?" */
    long hugetlb;                /* vm.nr_hugepages, -1 unreadable */
    double load_start, load_end; /* 1-minute load average before and after the run */
    int smt;                     /* hardware threads per core (hwloc PUs / cores), -1 unknown */
    char governor[32];           /* cpu0's cpufreq scaling governor, "" where unreadable */
    bool vm;                     /* the CPU says it runs under a hypervisor */

    bool engine_seen; /* shard facts below come from a started engine */
    unsigned shards;
    int shard_cpu[MACHINE_MAX_SHARDS];
    bool shard_pinned[MACHINE_MAX_SHARDS];
    uint32_t ring_flags[MACHINE_MAX_SHARDS];
    machine_mem_t mem[MACHINE_MAX_SHARDS]; /* what each shard's memory got at start */
} machine_t;

/* Facts that need no engine. */
void machine_collect_host(machine_t *m);

/* Reads each shard's cpu, pinned, ring_flags and memory; call while the engine runs. */
void machine_collect_shards(machine_t *m);

/* Reads shard `shard`'s memory; call while the engine runs. Returns 0 or a negative errno. */
int machine_mem_collect(unsigned shard, machine_mem_t *mm);

/* "node 0, warm 32 MiB thp locked(onfault), resident 2 MiB (huge 2 MiB), cap 6144 MiB" */
void machine_mem_format(const machine_mem_t *mm, char *buf, size_t len);

/* Writes the IORING_SETUP_* names of flags, '|'-separated ("none" for 0). */
void machine_ring_flags_name(uint32_t flags, char *buf, size_t len);

/* 1-minute load average, or NAN. */
double machine_loadavg(void);

/* CPU time in clock ticks: busy on the whole machine (user, nice, system, irq, softirq and a
 * hypervisor's steal, from /proc/stat) and this process's (utime + stime), and when (ns). */
typedef struct machine_cpu {
    bool ok;
    uint64_t busy, self, at_ns;
} machine_cpu_t;
machine_cpu_t machine_cpu_now(void);
/* The share (percent) of the machine's CPU time between a and b that went to others than this
 * process, or NAN. */
double machine_others_pct(const machine_t *m, machine_cpu_t a, machine_cpu_t b);

void machine_print_text(FILE *f, const machine_t *m);
/* Prints "\"machine\":{...}". */
void machine_print_json(FILE *f, const machine_t *m);

#endif
