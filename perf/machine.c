/* Collects and prints the machine facts quoted beside pith-bench's figures. Reads /proc, /sys,
 * uname, hwloc and pith_shard_stats; measures nothing. */
#include <ctype.h>
#include <math.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <hwloc.h>
#include <liburing.h> /* IORING_SETUP_* names only */
#include <pith/pith.h>

#include "machine.h"
#include "report.h"

static void read_line(const char *path, char *buf, size_t len)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (!fgets(buf, (int)len, f))
        buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
}

static void read_cpu_model(char *buf, size_t len)
{
    snprintf(buf, len, "?");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof(line), f)) {
        /* x86 says "model name", arm64 only "CPU part"; take the first that names the CPU. */
        if (strncmp(line, "model name", 10) != 0)
            continue;
        const char *p = strchr(line, ':');
        if (!p)
            break;
        p++;
        while (isspace((unsigned char)*p))
            p++;
        snprintf(buf, len, "%s", p);
        buf[strcspn(buf, "\n")] = '\0';
        break;
    }
    fclose(f);
}

static void read_thp(char *buf, size_t len)
{
    char line[128];
    read_line("/sys/kernel/mm/transparent_hugepage/enabled", line, sizeof(line));
    /* The active mode is the bracketed one: "always [madvise] never". */
    const char *open = strchr(line, '['), *close = open ? strchr(open, ']') : NULL;
    if (!open || !close) {
        snprintf(buf, len, "?");
        return;
    }
    snprintf(buf, len, "%.*s", (int)(close - open - 1), open + 1);
}

double machine_loadavg(void)
{
    double l[1];
    return getloadavg(l, 1) == 1 ? l[0] : NAN;
}

void machine_collect_host(machine_t *m)
{
    memset(m, 0, sizeof(*m));
    m->cpus_online = sysconf(_SC_NPROCESSORS_ONLN);
    m->hwloc_pus = m->hwloc_cores = m->hwloc_numa = -1;
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) == 0) {
        if (hwloc_topology_load(topo) == 0) {
            m->hwloc_pus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
            m->hwloc_cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
            m->hwloc_numa = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
        }
        hwloc_topology_destroy(topo);
    }
    read_cpu_model(m->cpu_model, sizeof(m->cpu_model));
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(m->kernel, sizeof(m->kernel), "%s", u.release);
    else
        snprintf(m->kernel, sizeof(m->kernel), "?");
    read_thp(m->thp, sizeof(m->thp));
    char line[64];
    read_line("/proc/sys/vm/nr_hugepages", line, sizeof(line));
    m->hugetlb = line[0] ? strtol(line, NULL, 10) : -1;
    m->load_start = machine_loadavg();
    m->load_end = NAN;
}

void machine_collect_shards(machine_t *m)
{
    m->shards = pith_shard_count();
    m->engine_seen = m->shards > 0;
    for (unsigned i = 0; i < m->shards && i < MACHINE_MAX_SHARDS; i++) {
        pith_shard_stats_t st;
        if (pith_shard_stats(i, &st) != 0) {
            m->shard_cpu[i] = -1;
            continue;
        }
        m->shard_cpu[i] = st.cpu;
        m->shard_pinned[i] = st.pinned;
        m->ring_flags[i] = st.ring_flags;
    }
}

void machine_ring_flags_name(uint32_t flags, char *buf, size_t len)
{
    static const struct {
        uint32_t bit;
        const char *name;
    } names[] = {
        {IORING_SETUP_IOPOLL, "IOPOLL"},
        {IORING_SETUP_SQPOLL, "SQPOLL"},
        {IORING_SETUP_SQ_AFF, "SQ_AFF"},
        {IORING_SETUP_CQSIZE, "CQSIZE"},
        {IORING_SETUP_CLAMP, "CLAMP"},
        {IORING_SETUP_ATTACH_WQ, "ATTACH_WQ"},
        {IORING_SETUP_R_DISABLED, "R_DISABLED"},
        {IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL"},
        {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
        {IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG"},
        {IORING_SETUP_SQE128, "SQE128"},
        {IORING_SETUP_CQE32, "CQE32"},
        {IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER"},
        {IORING_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN"},
    };
    size_t off = 0;
    buf[0] = '\0';
    if (flags == 0) {
        snprintf(buf, len, "none");
        return;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!(flags & names[i].bit))
            continue;
        flags &= ~names[i].bit;
        int w =
            snprintf(buf + off, off < len ? len - off : 0, "%s%s", off ? "|" : "", names[i].name);
        off += w > 0 ? (size_t)w : 0;
    }
    /* Bits newer than the liburing headers we were built with: shown, not dropped. */
    if (flags)
        snprintf(buf + off, off < len ? len - off : 0, "%s0x%x", off ? "|" : "", flags);
}

static unsigned described(const machine_t *m)
{
    return m->shards < MACHINE_MAX_SHARDS ? m->shards : MACHINE_MAX_SHARDS;
}

static bool ring_flags_uniform(const machine_t *m)
{
    for (unsigned i = 1; i < described(m); i++)
        if (m->ring_flags[i] != m->ring_flags[0])
            return false;
    return true;
}

void machine_print_text(FILE *f, const machine_t *m)
{
    fprintf(f, "machine: cpus=%ld online (hwloc %d PUs, %d cores, %d NUMA) model=\"%s\" kernel=%s",
            m->cpus_online, m->hwloc_pus, m->hwloc_cores, m->hwloc_numa, m->cpu_model, m->kernel);
    if (m->engine_seen) {
        fprintf(f, " shards=%u on cpus ", m->shards);
        for (unsigned i = 0; i < described(m); i++)
            fprintf(f, "%s%d%s", i ? "," : "", m->shard_cpu[i],
                    m->shard_pinned[i] ? "" : "(unpinned)");
        if (m->shards > described(m))
            fprintf(f, ",...");
        char name[256];
        if (ring_flags_uniform(m)) {
            machine_ring_flags_name(m->ring_flags[0], name, sizeof(name));
            fprintf(f, " ring=%s", name);
        } else {
            fprintf(f, " ring=");
            for (unsigned i = 0; i < described(m); i++) {
                machine_ring_flags_name(m->ring_flags[i], name, sizeof(name));
                fprintf(f, "%s%u:%s", i ? "," : "", i, name);
            }
        }
    } else {
        fprintf(f, " shards=%u (engine did not start)", m->shards);
    }
    fprintf(f, " thp=%s hugetlb=%ld load1=%.2f->%.2f\n", m->thp, m->hugetlb, m->load_start,
            m->load_end);
}

void machine_print_json(FILE *f, const machine_t *m)
{
    fprintf(f,
            "\"machine\":{\"cpus_online\":%ld,\"hwloc_pus\":%d,\"hwloc_cores\":%d,"
            "\"hwloc_numa_nodes\":%d,\"cpu_model\":",
            m->cpus_online, m->hwloc_pus, m->hwloc_cores, m->hwloc_numa);
    json_string(f, m->cpu_model);
    fputs(",\"kernel\":", f);
    json_string(f, m->kernel);
    fprintf(f, ",\"shards\":%u", m->shards);
    if (m->engine_seen) {
        fputs(",\"shard_cpus\":[", f);
        for (unsigned i = 0; i < described(m); i++)
            fprintf(f, "%s%d", i ? "," : "", m->shard_cpu[i]);
        fputs("],\"shard_pinned\":[", f);
        for (unsigned i = 0; i < described(m); i++)
            fprintf(f, "%s%s", i ? "," : "", m->shard_pinned[i] ? "true" : "false");
        fputs("],\"ring_flags\":[", f);
        for (unsigned i = 0; i < described(m); i++) {
            char name[256];
            machine_ring_flags_name(m->ring_flags[i], name, sizeof(name));
            if (i)
                fputc(',', f);
            json_string(f, name);
        }
        fputc(']', f);
    } else {
        fputs(",\"shard_cpus\":null,\"shard_pinned\":null,\"ring_flags\":null", f);
    }
    fputs(",\"thp\":", f);
    json_string(f, m->thp);
    fprintf(f, ",\"hugetlb_pages\":%ld,\"load1_start\":", m->hugetlb);
    json_number(f, m->load_start);
    fputs(",\"load1_end\":", f);
    json_number(f, m->load_end);
    fputc('}', f);
}
