/* INFO's engine sections (engineinfo.h): the engine's stats structs, one line per shard, and a
 * small reader of pith_metrics_json's histograms for their percentiles. */
#include "engineinfo.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pith/pith.h>

/* Each shard's last sample of its own busy and elapsed time and when it took it (touched by that
 * shard only), and the utilisation between its last two samples in parts per million, for INFO
 * on any shard: one relaxed atomic, so a reading never mixes two windows. */
struct util {
    uint64_t busy, elapsed, at;
    _Atomic uint64_t ppm;
};
static struct util utils[4096];

#define SAMPLE_NS (1000ull * 1000 * 1000)

void engine_sample(void)
{
    int id = pith_shard_id();
    uint64_t now = pith_now_ns();
    if (id < 0 || (utils[id].at != 0 && now - utils[id].at < SAMPLE_NS))
        return;
    pith_shard_stats_t st;
    if (pith_shard_stats((unsigned)id, &st) != 0)
        return;
    struct util *u = &utils[id];
    if (u->at != 0 && st.elapsed_ns > u->elapsed) {
        uint64_t db = st.busy_ns - u->busy, de = st.elapsed_ns - u->elapsed;
        atomic_store_explicit(&u->ppm, db >= de ? 1000000 : db * 1000000 / de,
                              memory_order_relaxed);
    }
    u->busy = st.busy_ns;
    u->elapsed = st.elapsed_ns;
    u->at = now;
}

typedef unsigned long long ull;

static int engine(struct resp_out *o, unsigned nshards)
{
    int err = resp_put_fmt(o, "# Engine\r\n");
    for (unsigned i = 0; i < nshards && err == 0; i++) {
        pith_shard_stats_t s;
        if (pith_shard_stats(i, &s) != 0)
            continue;
        double util = s.elapsed_ns > 0 ? (double)s.busy_ns / (double)s.elapsed_ns : 0;
        err = resp_put_fmt(
            o,
            "shard%u:cpu=%d,pinned=%d,utilisation=%.4f,utilisation_1s=%.4f,busy_ns=%llu,"
            "elapsed_ns=%llu,loops=%llu,sleeps=%llu,tasks=%llu,mesh_sent=%llu,"
            "mesh_received=%llu,mesh_batches_sent=%llu,mesh_batches_received=%llu,"
            "ring_full=%llu,backpressure=%llu,wakes_sent=%llu,wake_failures=%llu,"
            "external_tasks=%llu,lanes=%u,timers_fired=%llu,timers_pending=%llu,"
            "stalls=%llu\r\n",
            i, s.cpu, s.pinned, util,
            (double)atomic_load_explicit(&utils[i].ppm, memory_order_relaxed) / 1e6, (ull)s.busy_ns,
            (ull)s.elapsed_ns, (ull)s.loops, (ull)s.sleeps, (ull)s.tasks_run, (ull)s.msgs_out,
            (ull)s.msgs_in, (ull)s.batches_out, (ull)s.batches_in, (ull)s.ring_full,
            (ull)s.backpressure, (ull)s.wakes_sent, (ull)s.wake_failures, (ull)s.external_in,
            s.lanes, (ull)s.timers_fired, (ull)s.timers_pending, (ull)s.stalls);
    }
    return err != 0 ? err : resp_put_fmt(o, "\r\n");
}

static int memory(struct resp_out *o, unsigned nshards)
{
    int err = resp_put_fmt(o, "# Enginememory\r\n");
    for (unsigned i = 0; i < nshards && err == 0; i++) {
        pith_mem_stats_t m;
        if (pith_mem_stats((int)i, &m) != 0)
            continue;
        err = resp_put_fmt(o,
                           "shard%u:node=%d,cap=%zu,reserved=%zu,committed=%zu,locked=%zu,huge=%zu,"
                           "in_use=%zu,peak=%zu,extents=%u,reserved_hot=%zu,reserved_warm=%zu,"
                           "reserved_cold=%zu,allocs=%llu,frees=%llu,remote_frees=%llu,grows=%llu,"
                           "cap_refusals=%llu,budget_refusals=%llu,lock_failures=%llu,"
                           "bind_failures=%llu\r\n",
                           i, m.node, m.cap, m.reserved, m.committed, m.locked, m.huge, m.in_use,
                           m.peak, m.extents, m.profile_reserved[PITH_MEM_HOT],
                           m.profile_reserved[PITH_MEM_WARM], m.profile_reserved[PITH_MEM_COLD],
                           (ull)m.allocs, (ull)m.frees, (ull)m.remote_frees, (ull)m.grows,
                           (ull)m.cap_refusals, (ull)m.budget_refusals, (ull)m.lock_failures,
                           (ull)m.bind_failures);
    }
    return err != 0 ? err : resp_put_fmt(o, "\r\n");
}

static int net(struct resp_out *o, unsigned nshards)
{
    int err = resp_put_fmt(o, "# Enginenet\r\n");
    for (unsigned i = 0; i < nshards && err == 0; i++) {
        pith_net_stats_t n;
        if (pith_net_stats(i, &n) != 0)
            continue;
        err = resp_put_fmt(
            o,
            "shard%u:connections=%llu,accepted=%llu,refused=%llu,over_limit=%llu,"
            "idle_closed=%llu,resets=%llu,bytes_in=%llu,bytes_out=%llu,recv_nobufs=%llu,"
            "partial_sends=%llu,paused=%llu\r\n",
            i, (ull)n.conns_open, (ull)n.accepted, (ull)n.refused, (ull)n.over_limit,
            (ull)n.idle_closed, (ull)n.resets, (ull)n.bytes_in, (ull)n.bytes_out,
            (ull)n.recv_nobufs, (ull)n.partial_sends, (ull)n.paused);
    }
    return err != 0 ? err : resp_put_fmt(o, "\r\n");
}

static int journal(struct resp_out *o, unsigned nshards)
{
    int err = resp_put_fmt(o, "# Enginejournal\r\n");
    for (unsigned i = 0; i < nshards && err == 0; i++) {
        pith_journal_stats_t j;
        if (pith_journal_stats(i, &j) != 0)
            continue;
        err = resp_put_fmt(o,
                           "shard%u:open=%d,failed=%d,appended=%llu,appended_bytes=%llu,acked=%llu,"
                           "failed_records=%llu,groups=%llu,syncs=%llu,bytes_written=%llu,"
                           "pending_bytes=%llu,segments=%llu,released=%llu,recycled=%llu,"
                           "recovered=%llu\r\n",
                           i, j.open, j.failed, (ull)j.appended, (ull)j.appended_bytes,
                           (ull)j.acked, (ull)j.failed_records, (ull)j.groups, (ull)j.syncs,
                           (ull)j.bytes_written, (ull)j.pending_bytes, (ull)j.segments,
                           (ull)j.released, (ull)j.recycled, (ull)j.recovered);
    }
    return err != 0 ? err : resp_put_fmt(o, "\r\n");
}

/* ---- the histograms, from pith_metrics_json ----
 * Its form (metrics.h): {"families": [{"name": ..., "samples": [{"labels": {"shard": "N"},
 * "count": C, "sum": S, "buckets": [[upper edge in seconds, samples], ...]}, ...]}, ...]}, the
 * buckets in increasing order, empty ones left out. This reads only that. */

struct hist {
    uint64_t count;
    unsigned n;
    double le[160];
    uint64_t k[160];
};

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
        p++;
    return p;
}

/* After `key` (a quoted name and its colon) from p, before `end`: the value's start, or NULL. */
static const char *after(const char *p, const char *end, const char *key)
{
    size_t kl = strlen(key);
    for (const char *q = p; q != NULL && q + kl <= end; q++) {
        q = memchr(q, '"', (size_t)(end - q));
        if (q == NULL || q + kl + 2 > end)
            return NULL;
        if (memcmp(q + 1, key, kl) == 0 && q[kl + 1] == '"') {
            const char *v = skip_ws(q + kl + 2);
            return *v == ':' ? skip_ws(v + 1) : NULL;
        }
    }
    return NULL;
}

/* Family `name`'s samples into h[0..nshards), by their shard label; false when it is absent. */
static bool read_family(const char *json, const char *name, struct hist *h, unsigned nshards)
{
    const char *end = json + strlen(json);
    char want[96];
    snprintf(want, sizeof(want), "\"%s\"", name);
    const char *p = strstr(json, want);
    if (p == NULL || (p = after(p, end, "samples")) == NULL || *p != '[')
        return false;
    p++;
    /* Each sample: its labels, count and buckets, in that order. */
    for (;;) {
        p = skip_ws(p);
        if (*p != '{')
            return true;
        const char *shard = after(p, end, "shard");
        const char *count = shard != NULL ? after(shard, end, "count") : NULL;
        const char *buckets = count != NULL ? after(count, end, "buckets") : NULL;
        if (buckets == NULL || *shard != '"' || *buckets != '[')
            return true;
        unsigned long sh = strtoul(shard + 1, NULL, 10);
        struct hist dummy, *x = sh < nshards ? &h[sh] : &dummy;
        memset(x, 0, sizeof(*x));
        x->count = strtoull(count, NULL, 10);
        p = buckets + 1;
        for (;;) {
            p = skip_ws(p);
            if (*p == ',')
                p = skip_ws(p + 1);
            if (*p != '[')
                break;
            char *q;
            double le = strtod(p + 1, &q);
            q = (char *)skip_ws(q);
            if (*q != ',')
                return true;
            uint64_t k = strtoull(q + 1, &q, 10);
            if (x->n < sizeof(x->le) / sizeof(x->le[0])) {
                x->le[x->n] = le;
                x->k[x->n++] = k;
            }
            p = strchr(q, ']');
            if (p == NULL)
                return true;
            p++;
        }
        /* The buckets' ']', then the sample's '}', then ',' or the samples' ']'. */
        p = strchr(p, '}');
        if (p == NULL)
            return true;
        p = skip_ws(p + 1);
        if (*p == ',')
            p++;
    }
}

/* The q-quantile of h in µs: the upper edge of its bucket; 0 without samples. */
static double usec(const struct hist *h, double q)
{
    uint64_t total = 0;
    for (unsigned b = 0; b < h->n; b++)
        total += h->k[b];
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total + 0.999999), seen = 0;
    for (unsigned b = 0; b < h->n; b++)
        if ((seen += h->k[b]) >= (rank > 0 ? rank : 1))
            return h->le[b] * 1e6;
    return h->le[h->n - 1] * 1e6;
}

static int latency(struct resp_out *o, unsigned nshards)
{
    static const struct {
        const char *family, *name;
    } fams[] = {
        {"pith_shard_stall_seconds", "stall"},
        {"pith_journal_commit_seconds", "journal_commit"},
        {"pith_journal_write_sync_seconds", "journal_write_sync"},
    };
    enum { NFAMS = sizeof(fams) / sizeof(fams[0]) };
    int err = resp_put_fmt(o, "# Enginelatency\r\n");
    long need = pith_metrics_json(NULL, 0);
    char *json = NULL;
    for (int tries = 0; need > 0 && tries < 3; tries++) {
        size_t cap = (size_t)need + (size_t)need / 4 + 4096;
        pith_free(json);
        if ((json = pith_malloc(cap)) == NULL)
            return -ENOMEM;
        need = pith_metrics_json(json, cap);
        if (need >= 0 && (size_t)need < cap)
            break;
    }
    struct hist *h = json != NULL ? pith_calloc((size_t)NFAMS * nshards, sizeof(*h)) : NULL;
    if (h == NULL) {
        pith_free(json);
        return err != 0 ? err : resp_put_fmt(o, "\r\n");
    }
    for (unsigned f = 0; f < NFAMS; f++)
        (void)read_family(json, fams[f].family, &h[(size_t)f * nshards], nshards);
    /* Per shard, for each histogram: its samples, and p50, p99 and p99.9 in µs. */
    for (unsigned i = 0; i < nshards && err == 0; i++) {
        char line[1024];
        int len = snprintf(line, sizeof(line), "shard%u:", i);
        for (unsigned f = 0; f < NFAMS; f++) {
            const struct hist *x = &h[(size_t)f * nshards + i];
            len +=
                snprintf(line + len, sizeof(line) - (size_t)len,
                         "%s%ss=%llu,%s_p50_usec=%.3f,%s_p99_usec=%.3f,%s_p999_usec=%.3f",
                         f > 0 ? "," : "", fams[f].name, (ull)x->count, fams[f].name, usec(x, 0.5),
                         fams[f].name, usec(x, 0.99), fams[f].name, usec(x, 0.999));
        }
        err = resp_put_fmt(o, "%s\r\n", line);
    }
    pith_free(h);
    pith_free(json);
    return err != 0 ? err : resp_put_fmt(o, "\r\n");
}

int engine_info(struct resp_out *o, unsigned nshards, unsigned which)
{
    int err = 0;
    if (which & EI_ENGINE)
        err = engine(o, nshards);
    if (err == 0 && (which & EI_MEMORY))
        err = memory(o, nshards);
    if (err == 0 && (which & EI_NET))
        err = net(o, nshards);
    if (err == 0 && (which & EI_JOURNAL))
        err = journal(o, nshards);
    if (err == 0 && (which & EI_LATENCY))
        err = latency(o, nshards);
    return err;
}
