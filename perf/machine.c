/* Collects and prints the machine facts quoted beside pith-bench's figures. Reads /proc, /sys,
 * uname, hwloc, pith_shard_stats and pith_mem_stats; measures nothing. */
#include <ctype.h>
#include <math.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/utsname.h>
#include <time.h>
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

machine_cpu_t machine_cpu_now(void)
{
    machine_cpu_t c = {0};
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    c.at_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    char line[512];
    read_line("/proc/stat", line, sizeof(line)); /* "cpu  user nice system idle iowait irq ..." */
    unsigned long long v[8] = {0};
    if (sscanf(line, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
               &v[4], &v[5], &v[6], &v[7]) != 8)
        return c;
    c.busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f == NULL)
        return c;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* After the command's closing parenthesis: state is field 3, utime 14, stime 15. */
    const char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (p == NULL ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return c;
    c.self = ut + st;
    c.ok = true;
    return c;
}

double machine_others_pct(const machine_t *m, machine_cpu_t a, machine_cpu_t b)
{
    long hz = sysconf(_SC_CLK_TCK);
    if (!a.ok || !b.ok || b.at_ns <= a.at_ns || hz <= 0 || m->cpus_online <= 0)
        return NAN;
    double cap = (double)(b.at_ns - a.at_ns) / 1e9 * (double)hz * (double)m->cpus_online;
    double others = (double)(b.busy - a.busy) - (double)(b.self - a.self);
    if (others < 0)
        others = 0;
    /* Ticks are coarse (10 ms): a row shorter than a few of them tells little. */
    return cap >= 10 ? 100.0 * others / cap : NAN;
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
    m->smt = m->hwloc_pus > 0 && m->hwloc_cores > 0 ? m->hwloc_pus / m->hwloc_cores : -1;
    read_line("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", m->governor,
              sizeof(m->governor));
    FILE *f = fopen("/proc/cpuinfo", "r");
    char buf[4096];
    while (f != NULL && fgets(buf, sizeof(buf), f) != NULL) {
        if (strncmp(buf, "flags", 5) == 0) {
            m->vm = strstr(buf, " hypervisor") != NULL;
            break;
        }
    }
    if (f != NULL)
        fclose(f);
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
        machine_mem_collect(i, &m->mem[i]);
    }
}

int machine_mem_collect(unsigned shard, machine_mem_t *mm)
{
    memset(mm, 0, sizeof(*mm));
    pith_mem_stats_t st;
    int rc = pith_mem_stats((int)shard, &st);
    if (rc != 0)
        return rc;
    mm->node = st.node;
    mm->cap = st.cap;
    mm->reserved = st.reserved;
    mm->committed = st.committed;
    mm->locked = st.locked;
    mm->huge = st.huge;
    mm->extents = st.extents;
    for (unsigned i = 0; i < st.extents && i < MACHINE_MEM_EXTENTS; i++) {
        rc = pith_mem_extent_info((int)shard, i, &mm->ext[i]);
        if (rc != 0) {
            mm->extents = i; /* an engine stopping under us: keep what was read */
            break;
        }
    }
    mm->seen = true;
    return 0;
}

static const char *profile_name(pith_mem_profile_t p)
{
    switch (p) {
    case PITH_MEM_WARM:
        return "warm";
    case PITH_MEM_HOT:
        return "hot";
    case PITH_MEM_COLD:
        return "cold";
    }
    return "?";
}

static const char *backing_name(pith_mem_backing_t b)
{
    switch (b) {
    case PITH_MEM_HUGETLB:
        return "hugetlb";
    case PITH_MEM_THP:
        return "thp";
    case PITH_MEM_PLAIN:
        return "plain";
    }
    return "?";
}

/* Locked whole (prefaulted extents), on fault, or not at all; cold extents are never locked. */
static const char *lock_name(const pith_mem_extent_t *x)
{
    if (x->locked)
        return x->prefaulted ? "locked" : "locked(onfault)";
    return x->prefaulted ? "prefaulted unlocked" : "unlocked";
}

static unsigned mem_described(const machine_mem_t *mm)
{
    return mm->extents < MACHINE_MEM_EXTENTS ? mm->extents : MACHINE_MEM_EXTENTS;
}

#define MIB(x) ((x) >> 20)

void machine_mem_format(const machine_mem_t *mm, char *buf, size_t len)
{
    size_t off = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int w_ = snprintf(buf + off, off < len ? len - off : 0, __VA_ARGS__);                      \
        off += w_ > 0 ? (size_t)w_ : 0;                                                            \
    } while (0)
    buf[0] = '\0';
    if (!mm->seen) {
        PUT("not read");
        return;
    }
    if (mm->node >= 0)
        PUT("node %d", mm->node);
    else
        PUT("node -");
    for (unsigned i = 0; i < mem_described(mm); i++) {
        const pith_mem_extent_t *x = &mm->ext[i];
        PUT(", %s %zu MiB %s %s", profile_name(x->profile), MIB(x->size), backing_name(x->backing),
            lock_name(x));
        /* Only when the extent is not where the shard binds: "unbound", or another node. */
        if (x->node != mm->node) {
            if (x->node < 0)
                PUT(" unbound");
            else
                PUT(" node %d", x->node);
        }
    }
    if (mm->extents > mem_described(mm))
        PUT(", ... (%u extents)", mm->extents);
    PUT(", resident %zu MiB (huge %zu MiB, locked %zu MiB), cap %zu MiB", MIB(mm->committed),
        MIB(mm->huge), MIB(mm->locked), MIB(mm->cap));
#undef PUT
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
    fprintf(f, " smt=%d governor=%s vm=%s", m->smt, m->governor[0] ? m->governor : "?",
            m->vm ? "yes" : "no");
    fprintf(f, " thp=%s hugetlb=%ld load1=%.2f->%.2f\n", m->thp, m->hugetlb, m->load_start,
            m->load_end);
    /* What each shard's memory got when the probe engine started: hugepages or not, locked or
     * not, bound where. Later engines take the same extents back from the process's pool. */
    if (m->engine_seen) {
        for (unsigned i = 0; i < described(m); i++) {
            char line[512];
            machine_mem_format(&m->mem[i], line, sizeof(line));
            fprintf(f, "mem shard %u: %s\n", i, line);
        }
        if (m->shards > described(m))
            fprintf(f, "mem shard ...: %u more not shown\n", m->shards - described(m));
    }
}

/* One shard's memory: {"shard":0,"node":0,"cap":...,"extents":[{"profile":"warm",...}]}; byte
 * counts are bytes, "node" -1 where none. null for a shard whose memory could not be read. */
static void mem_json(FILE *f, unsigned shard, const machine_mem_t *mm)
{
    if (shard)
        fputc(',', f);
    if (!mm->seen) {
        fputs("null", f);
        return;
    }
    fprintf(f,
            "{\"shard\":%u,\"node\":%d,\"cap\":%zu,\"reserved\":%zu,\"resident\":%zu,"
            "\"locked\":%zu,\"huge\":%zu,\"extent_count\":%u,\"extents\":[",
            shard, mm->node, mm->cap, mm->reserved, mm->committed, mm->locked, mm->huge,
            mm->extents);
    for (unsigned i = 0; i < mem_described(mm); i++) {
        const pith_mem_extent_t *x = &mm->ext[i];
        fprintf(f,
                "%s{\"profile\":\"%s\",\"size\":%zu,\"backing\":\"%s\",\"locked\":%s,"
                "\"prefaulted\":%s,\"node\":%d}",
                i ? "," : "", profile_name(x->profile), x->size, backing_name(x->backing),
                x->locked ? "true" : "false", x->prefaulted ? "true" : "false", x->node);
    }
    fputs("]}", f);
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
        fputs("],\"mem\":[", f);
        for (unsigned i = 0; i < described(m); i++)
            mem_json(f, i, &m->mem[i]);
        fputc(']', f);
    } else {
        fputs(",\"shard_cpus\":null,\"shard_pinned\":null,\"ring_flags\":null,\"mem\":null", f);
    }
    fprintf(f, ",\"smt\":%d,\"governor\":", m->smt);
    if (m->governor[0])
        json_string(f, m->governor);
    else
        fputs("null", f);
    fprintf(f, ",\"vm\":%s", m->vm ? "true" : "false");
    fputs(",\"thp\":", f);
    json_string(f, m->thp);
    fprintf(f, ",\"hugetlb_pages\":%ld,\"load1_start\":", m->hugetlb);
    json_number(f, m->load_start);
    fputs(",\"load1_end\":", f);
    json_number(f, m->load_end);
    fputc('}', f);
}
