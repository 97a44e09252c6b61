/* The metrics registry: every counter, gauge and histogram the engine keeps, read through the
 * layers' stats calls shard by shard (each counter is written by its shard alone and read here
 * without stopping it: a snapshot that is consistent per counter, not across them), and
 * written as the Prometheus text format 0.0.4 or as JSON.
 *
 * The figures are described by tables: a source (shard, actor layer, memory, network,
 * journal, persistence, an actor type, a virtual type) reads one struct per shard, and each of
 * its fields becomes a family with a `shard` label (and `type` for the per-type sources).
 * Families are written whole, one after another, as the text format wants. */
#include "obs.h"

#include "hooks.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "vpersist.h"

#include <pith/engine.h>
#include <pith/journal.h>
#include <pith/mem.h>
#include <pith/metrics.h>
#include <pith/net.h>
#include <pith/persist.h>
#include <pith/sla.h>
#include <pith/version.h>

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the buffer ---- */

static bool obuf_room(struct obuf *b, size_t n)
{
    if (b->failed)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    size_t cap = b->cap != 0 ? b->cap : 4096;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void obuf_put(struct obuf *b, const char *s, size_t n)
{
    if (!obuf_room(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void obuf_puts(struct obuf *b, const char *s)
{
    obuf_put(b, s, strlen(s));
}

void obuf_printf(struct obuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        obuf_put(b, small, (size_t)n);
        return;
    }
    if (!obuf_room(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void obuf_free(struct obuf *b)
{
    free(b->p);
    *b = (struct obuf){0};
}

/* ---- the writer: families and samples in either format ---- */

enum mkind { M_COUNTER, M_GAUGE, M_HISTOGRAM };
static const char *const kind_name[] = {"counter", "gauge", "histogram"};

struct label {
    const char *key, *value;
};

struct writer {
    struct obuf *b;
    enum obs_format f;
    bool any_family;  /* JSON: a family was opened (a comma before the next) */
    bool any_sample;  /* JSON: the open family has a sample */
    const char *name; /* the open family */
};

/* A label value or a string, escaped for the format: the text format escapes \, " and newline;
 * JSON also the other control characters. */
static void put_escaped(struct obuf *b, enum obs_format f, const char *s)
{
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\\')
            obuf_puts(b, "\\\\");
        else if (c == '"')
            obuf_puts(b, "\\\"");
        else if (c == '\n')
            obuf_puts(b, "\\n");
        else if (c < 0x20 && f == OBS_JSON)
            obuf_printf(b, "\\u%04x", c);
        else
            obuf_put(b, p, 1);
    }
}

static void w_begin(struct writer *w)
{
    if (w->f == OBS_JSON)
        obuf_printf(w->b, "{\"version\":\"%s\",\"shards\":%u,\"families\":[", pith_version(),
                    pith_shard_count());
}

static void w_end(struct writer *w)
{
    if (w->f == OBS_JSON)
        obuf_puts(w->b, w->any_family ? "]}]}\n" : "]}\n");
}

static void w_family(struct writer *w, const char *name, enum mkind k, const char *help)
{
    w->name = name;
    if (w->f == OBS_PROMETHEUS) {
        obuf_printf(w->b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind_name[k]);
        return;
    }
    obuf_printf(w->b, "%s{\"name\":\"%s\",\"type\":\"%s\",\"help\":\"", w->any_family ? "]}," : "",
                name, kind_name[k]);
    put_escaped(w->b, w->f, help);
    obuf_puts(w->b, "\",\"samples\":[");
    w->any_family = true;
    w->any_sample = false;
}

/* The text format's `{k="v",...}` (with an extra le="..." when le is not NULL), or JSON's
 * "labels":{...}. */
static void w_labels(struct writer *w, const struct label *l, unsigned n, const char *le)
{
    struct obuf *b = w->b;
    if (w->f == OBS_PROMETHEUS) {
        if (n == 0 && le == NULL)
            return;
        obuf_puts(b, "{");
        for (unsigned i = 0; i < n; i++) {
            obuf_printf(b, "%s%s=\"", i > 0 ? "," : "", l[i].key);
            put_escaped(b, w->f, l[i].value);
            obuf_puts(b, "\"");
        }
        if (le != NULL)
            obuf_printf(b, "%sle=\"%s\"", n > 0 ? "," : "", le);
        obuf_puts(b, "}");
        return;
    }
    obuf_puts(b, "\"labels\":{");
    for (unsigned i = 0; i < n; i++) {
        obuf_printf(b, "%s\"%s\":\"", i > 0 ? "," : "", l[i].key);
        put_escaped(b, w->f, l[i].value);
        obuf_puts(b, "\"");
    }
    obuf_puts(b, "}");
}

/* Nanoseconds as seconds, exactly: "12.000345678". */
static void fmt_seconds(char *out, size_t cap, uint64_t ns)
{
    snprintf(out, cap, "%llu.%09llu", (unsigned long long)(ns / 1000000000u),
             (unsigned long long)(ns % 1000000000u));
}

/* One sample: an integer, or (secs) nanoseconds written as seconds. */
static void w_value(struct writer *w, const struct label *l, unsigned n, uint64_t v, bool secs)
{
    char num[32];
    if (secs)
        fmt_seconds(num, sizeof(num), v);
    else
        snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    if (w->f == OBS_PROMETHEUS) {
        obuf_puts(w->b, w->name);
        w_labels(w, l, n, NULL);
        obuf_printf(w->b, " %s\n", num);
        return;
    }
    obuf_puts(w->b, w->any_sample ? ",{" : "{");
    w_labels(w, l, n, NULL);
    obuf_printf(w->b, ",\"value\":%s}", num);
    w->any_sample = true;
}

/* The histograms' bucket edges in the text format: every power of two from 2^HIST_LO ns
 * (128 ns) to 2^HIST_HI ns (34 s), each an edge of the engine's own buckets, so the counts are
 * exact: `le` counts the samples below that edge (a sample of exactly le ns, a whole number of
 * ns, falls in the next). JSON gives the engine's buckets themselves (4 per power of two). */
#define HIST_LO 7
#define HIST_HI 35

static void w_hist(struct writer *w, const struct label *l, unsigned n, const uint64_t *h,
                   uint64_t sum_ns)
{
    struct obuf *b = w->b;
    uint64_t count = 0;
    for (unsigned i = 0; i < CORE_HIST_BUCKETS; i++)
        count += h[i];
    char sum[32];
    fmt_seconds(sum, sizeof(sum), sum_ns);
    if (w->f == OBS_PROMETHEUS) {
        unsigned bkt = 0;
        uint64_t below = 0;
        for (unsigned e = HIST_LO; e <= HIST_HI; e++) {
            uint64_t edge = UINT64_C(1) << e;
            while (bkt < CORE_HIST_BUCKETS && core_hist_upper(bkt) <= edge)
                below += h[bkt++];
            char le[32];
            fmt_seconds(le, sizeof(le), edge);
            obuf_printf(b, "%s_bucket", w->name);
            w_labels(w, l, n, le);
            obuf_printf(b, " %llu\n", (unsigned long long)below);
        }
        obuf_printf(b, "%s_bucket", w->name);
        w_labels(w, l, n, "+Inf");
        obuf_printf(b, " %llu\n%s_sum", (unsigned long long)count, w->name);
        w_labels(w, l, n, NULL);
        obuf_printf(b, " %s\n%s_count", sum, w->name);
        w_labels(w, l, n, NULL);
        obuf_printf(b, " %llu\n", (unsigned long long)count);
        return;
    }
    obuf_puts(b, w->any_sample ? ",{" : "{");
    w_labels(w, l, n, NULL);
    obuf_printf(b, ",\"count\":%llu,\"sum\":%s,\"buckets\":[", (unsigned long long)count, sum);
    bool first = true;
    for (unsigned i = 0; i < CORE_HIST_BUCKETS; i++) {
        if (h[i] == 0)
            continue;
        uint64_t up = core_hist_upper(i);
        char le[32];
        if (up == UINT64_MAX)
            snprintf(le, sizeof(le), "null");
        else
            fmt_seconds(le, sizeof(le), up);
        obuf_printf(b, "%s[%s,%llu]", first ? "" : ",", le, (unsigned long long)h[i]);
        first = false;
    }
    obuf_puts(b, "]}");
    w->any_sample = true;
}

/* A histogram of counts (a mailbox's depth): bucket b of h (n of them) holds the values in
 * [2^(b-1), 2^b), so `le` is 2^b - 1 and exact. */
static void w_hist_pow2(struct writer *w, const struct label *l, unsigned n, const uint64_t *h,
                        unsigned nb, uint64_t sum)
{
    struct obuf *b = w->b;
    uint64_t count = 0;
    for (unsigned i = 0; i < nb; i++)
        count += h[i];
    if (w->f == OBS_PROMETHEUS) {
        uint64_t below = h[0];
        for (unsigned i = 1; i < nb; i++) {
            below += h[i];
            char le[32];
            snprintf(le, sizeof(le), "%llu", (unsigned long long)((UINT64_C(1) << i) - 1));
            obuf_printf(b, "%s_bucket", w->name);
            w_labels(w, l, n, le);
            obuf_printf(b, " %llu\n", (unsigned long long)below);
        }
        obuf_printf(b, "%s_bucket", w->name);
        w_labels(w, l, n, "+Inf");
        obuf_printf(b, " %llu\n%s_sum", (unsigned long long)count, w->name);
        w_labels(w, l, n, NULL);
        obuf_printf(b, " %llu\n%s_count", (unsigned long long)sum, w->name);
        w_labels(w, l, n, NULL);
        obuf_printf(b, " %llu\n", (unsigned long long)count);
        return;
    }
    obuf_puts(b, w->any_sample ? ",{" : "{");
    w_labels(w, l, n, NULL);
    obuf_printf(b, ",\"count\":%llu,\"sum\":%llu,\"buckets\":[", (unsigned long long)count,
                (unsigned long long)sum);
    bool first = true;
    for (unsigned i = 0; i < nb; i++) {
        if (h[i] == 0)
            continue;
        obuf_printf(b, "%s[%llu,%llu]", first ? "" : ",",
                    (unsigned long long)(i == 0 ? 0 : (UINT64_C(1) << i) - 1),
                    (unsigned long long)h[i]);
        first = false;
    }
    obuf_puts(b, "]}");
    w->any_sample = true;
}

/* ---- the tables ---- */

enum conv { V_NUM, V_NS };

struct field {
    const char *name, *help;
    enum mkind kind;
    enum conv conv;
    unsigned short off, size;
};

/* A histogram family read from a record: its buckets at `off` (CORE_HIST_BUCKETS of ns; or,
 * with pow2 > 0, that many buckets of counts, bucket b holding [2^(b-1), 2^b)) and their sum
 * at `sum`. */
struct hist_fam {
    const char *name, *help;
    size_t off, sum;
    unsigned pow2;
};

#define FLD(st, fld, nm, k, cv, help)                                                              \
    {                                                                                              \
        nm, help, k, cv, offsetof(st, fld), sizeof(((st *)0)->fld)                                 \
    }
#define CTR(st, fld, nm, help) FLD(st, fld, nm, M_COUNTER, V_NUM, help)
#define GAU(st, fld, nm, help) FLD(st, fld, nm, M_GAUGE, V_NUM, help)

static uint64_t field_value(const struct field *f, const void *rec)
{
    const char *p = (const char *)rec + f->off;
    switch (f->size) {
    case 1:
        return *(const bool *)p;
    case 4:
        return *(const uint32_t *)p;
    default:
        return *(const uint64_t *)p;
    }
}
_Static_assert(sizeof(size_t) == 8, "size_t fields are read as uint64_t");

static const struct field shard_fields[] = {
    CTR(pith_shard_stats_t, loops, "pith_shard_loops_total", "Loop iterations."),
    CTR(pith_shard_stats_t, sleeps, "pith_shard_sleeps_total",
        "Times the shard blocked in its ring's wait."),
    FLD(pith_shard_stats_t, busy_ns, "pith_shard_busy_seconds_total", M_COUNTER, V_NS,
        "Time the shard's loop was not idle; its rate is the shard's utilisation."),
    FLD(pith_shard_stats_t, elapsed_ns, "pith_shard_elapsed_seconds_total", M_COUNTER, V_NS,
        "Time since the shard's loop began."),
    CTR(pith_shard_stats_t, tasks_run, "pith_shard_tasks_total", "Tasks run, from every source."),
    CTR(pith_shard_stats_t, msgs_out, "pith_shard_mesh_sent_total",
        "Tasks published to other shards."),
    CTR(pith_shard_stats_t, msgs_in, "pith_shard_mesh_received_total",
        "Tasks taken from other shards' rings."),
    CTR(pith_shard_stats_t, batches_out, "pith_shard_mesh_batches_sent_total",
        "Batches published to other shards."),
    CTR(pith_shard_stats_t, batches_in, "pith_shard_mesh_batches_received_total",
        "Batches taken from other shards' rings."),
    CTR(pith_shard_stats_t, ring_full, "pith_shard_ring_full_total",
        "Publish attempts that found a ring to another shard full."),
    CTR(pith_shard_stats_t, backpressure, "pith_shard_backpressure_total",
        "-EAGAIN returned to submitters on this shard."),
    CTR(pith_shard_stats_t, wakes_sent, "pith_shard_wakes_sent_total",
        "Wake-ups sent to sleeping shards."),
    CTR(pith_shard_stats_t, wake_failures, "pith_shard_wake_failures_total",
        "Wake-ups the kernel refused."),
    CTR(pith_shard_stats_t, external_in, "pith_shard_external_tasks_total",
        "Records run from threads outside the engine."),
    GAU(pith_shard_stats_t, lanes, "pith_shard_lanes", "Ingress lanes the shard looks at."),
    GAU(pith_shard_stats_t, lanes_dormant, "pith_shard_lanes_dormant",
        "Ingress lanes set aside as idle."),
    GAU(pith_shard_stats_t, lanes_orphaned, "pith_shard_lanes_orphaned",
        "Ingress lanes left with records by producers that have gone."),
    CTR(pith_shard_stats_t, timers_fired, "pith_shard_timers_fired_total", "Timer callbacks run."),
    GAU(pith_shard_stats_t, timers_pending, "pith_shard_timers_pending", "Timers waiting now."),
    CTR(pith_shard_stats_t, stalls, "pith_shard_stalls_total",
        "Stalls the detector saw on this shard."),
};

static const struct field core_fields[] = {
    CTR(pith_core_stats_t, dead_letters, "pith_actor_dead_letters_total",
        "Messages for actors that had ended."),
    CTR(pith_core_stats_t, asks, "pith_actor_asks_total", "Asks made on this shard."),
    CTR(pith_core_stats_t, replies, "pith_actor_replies_total",
        "Replies that reached their asker."),
    CTR(pith_core_stats_t, late_replies, "pith_actor_late_replies_total",
        "Replies after the ask's timeout, dropped."),
    CTR(pith_core_stats_t, ask_timeouts, "pith_actor_ask_timeouts_total",
        "Asks that got no reply in time."),
    CTR(pith_core_stats_t, timer_msgs, "pith_actor_timer_messages_total",
        "Messages sent by actor timers."),
    CTR(pith_core_stats_t, undelivered, "pith_actor_undelivered_total",
        "Notices of undelivered messages made on this shard."),
    CTR(pith_core_stats_t, undelivered_folded, "pith_actor_undelivered_folded_total",
        "Undelivered notices folded into a summary for want of room."),
    CTR(pith_core_stats_t, undelivered_tasks, "pith_actor_undelivered_tasks_total",
        "Undelivered notices for messages sent by this shard's tasks."),
    CTR(pith_core_stats_t, undelivered_unhandled, "pith_actor_undelivered_unhandled_total",
        "Of those, notices with no pith_on_undelivered handler (only counted)."),
};

static const struct field mem_fields[] = {
    GAU(pith_mem_stats_t, cap, "pith_mem_cap_bytes", "The shard's memory cap."),
    GAU(pith_mem_stats_t, reserved, "pith_mem_reserved_bytes", "Extent bytes mapped."),
    GAU(pith_mem_stats_t, committed, "pith_mem_committed_bytes",
        "Extent bytes resident now (read from the kernel)."),
    GAU(pith_mem_stats_t, locked, "pith_mem_locked_bytes", "Resident bytes locked."),
    GAU(pith_mem_stats_t, huge, "pith_mem_huge_bytes", "Resident bytes backed by hugepages."),
    GAU(pith_mem_stats_t, in_use, "pith_mem_in_use_bytes", "Bytes in live blocks."),
    GAU(pith_mem_stats_t, peak, "pith_mem_peak_bytes", "Most bytes the shard's heaps had out."),
    GAU(pith_mem_stats_t, extents, "pith_mem_extents", "Extents made, all profiles."),
    CTR(pith_mem_stats_t, allocs, "pith_mem_allocs_total", "Blocks allocated."),
    CTR(pith_mem_stats_t, frees, "pith_mem_frees_total", "Of those, freed by this shard."),
    CTR(pith_mem_stats_t, remote_frees, "pith_mem_remote_frees_total",
        "Of those, freed by another thread."),
    CTR(pith_mem_stats_t, grows, "pith_mem_grows_total", "Extents added after the first."),
    CTR(pith_mem_stats_t, cap_refusals, "pith_mem_cap_refusals_total",
        "Allocations refused because the cap was reached."),
    CTR(pith_mem_stats_t, budget_refusals, "pith_mem_budget_refusals_total",
        "Allocations refused by an owner's budget."),
    CTR(pith_mem_stats_t, lock_failures, "pith_mem_lock_failures_total",
        "Extents left unlocked because mlock was refused."),
    CTR(pith_mem_stats_t, bind_failures, "pith_mem_bind_failures_total",
        "Extents whose NUMA binding failed."),
    CTR(pith_mem_stats_t, arena_failures, "pith_mem_arena_failures_total",
        "Extents the allocator would not take."),
    CTR(pith_mem_stats_t, bad_frees, "pith_mem_bad_frees_total",
        "Frees of something that was not a live block."),
    CTR(pith_mem_stats_t, cold_advice, "pith_mem_cold_advice_total",
        "Times the cold profile was advised cold or paged out."),
};

static const struct field net_fields[] = {
    GAU(pith_net_stats_t, conns_open, "pith_net_connections", "TCP connections open now."),
    CTR(pith_net_stats_t, accepted, "pith_net_accepted_total", "Connections accepted."),
    CTR(pith_net_stats_t, connected, "pith_net_connected_total",
        "Outbound connects that succeeded."),
    CTR(pith_net_stats_t, refused, "pith_net_refused_total",
        "Connections accepted past max_conns and closed at once."),
    CTR(pith_net_stats_t, over_limit, "pith_net_over_limit_total",
        "Connections closed for passing max_buffered."),
    CTR(pith_net_stats_t, idle_closed, "pith_net_idle_closed_total",
        "Connections closed by the idle timeout."),
    CTR(pith_net_stats_t, resets, "pith_net_resets_total", "Connections ended by a reset."),
    CTR(pith_net_stats_t, bytes_in, "pith_net_received_bytes_total", "Bytes received."),
    CTR(pith_net_stats_t, bytes_out, "pith_net_sent_bytes_total", "Bytes taken by the kernel."),
    CTR(pith_net_stats_t, recv_nobufs, "pith_net_recv_nobufs_total",
        "Receives that found no provided buffer."),
    CTR(pith_net_stats_t, recv_rearms, "pith_net_recv_rearms_total",
        "Multishot receives armed again."),
    CTR(pith_net_stats_t, accept_rearms, "pith_net_accept_rearms_total",
        "Multishot accepts armed again."),
    CTR(pith_net_stats_t, partial_sends, "pith_net_partial_sends_total",
        "Sends the kernel took only part of."),
    CTR(pith_net_stats_t, paused, "pith_net_paused_total",
        "Times reading was paused by the high watermark."),
};

static const struct field journal_fields[] = {
    GAU(pith_journal_stats_t, open, "pith_journal_open", "1 when the journal is open."),
    GAU(pith_journal_stats_t, failed, "pith_journal_failed",
        "1 when a write or sync failed and appends are refused."),
    GAU(pith_journal_stats_t, last_seq, "pith_journal_last_sequence",
        "The last sequence number given out."),
    GAU(pith_journal_stats_t, durable_seq, "pith_journal_durable_sequence",
        "Every record up to it is durable."),
    CTR(pith_journal_stats_t, appended, "pith_journal_records_total", "Records appended."),
    CTR(pith_journal_stats_t, appended_bytes, "pith_journal_appended_bytes_total",
        "Bytes of the records appended, headers included."),
    CTR(pith_journal_stats_t, acked, "pith_journal_acked_total", "Records acknowledged durable."),
    CTR(pith_journal_stats_t, failed_records, "pith_journal_failed_records_total",
        "Records that failed."),
    CTR(pith_journal_stats_t, groups, "pith_journal_groups_total", "Group writes."),
    CTR(pith_journal_stats_t, syncs, "pith_journal_syncs_total", "fdatasyncs completed."),
    CTR(pith_journal_stats_t, bytes_written, "pith_journal_written_bytes_total",
        "Bytes of group writes."),
    GAU(pith_journal_stats_t, pending_bytes, "pith_journal_pending_bytes",
        "Bytes appended and not yet acknowledged or failed."),
    GAU(pith_journal_stats_t, segments, "pith_journal_segments", "Segment files holding records."),
    CTR(pith_journal_stats_t, released, "pith_journal_segments_released_total",
        "Segments released."),
    CTR(pith_journal_stats_t, recycled, "pith_journal_segments_recycled_total",
        "Segments made from a released one's file."),
    CTR(pith_journal_stats_t, recovered, "pith_journal_recovered_records_total",
        "Records read back at first use."),
    CTR(pith_journal_stats_t, recovered_bytes, "pith_journal_recovered_bytes_total",
        "Bytes of the records read back."),
};

static const struct field persist_fields[] = {
    GAU(pith_persist_stats_t, keys, "pith_persist_keys",
        "Keys with events, snapshots or reminders in the journal."),
    CTR(pith_persist_stats_t, events, "pith_persist_events_total", "Events made durable."),
    CTR(pith_persist_stats_t, event_records, "pith_persist_event_records_total",
        "Journal records the events went in."),
    CTR(pith_persist_stats_t, failed, "pith_persist_events_failed_total",
        "Events that could not be made durable."),
    CTR(pith_persist_stats_t, snapshots, "pith_persist_snapshots_total", "Snapshots made durable."),
    CTR(pith_persist_stats_t, snapshot_failed, "pith_persist_snapshots_failed_total",
        "Snapshots that failed or were too large."),
    CTR(pith_persist_stats_t, recoveries, "pith_persist_recoveries_total",
        "Activations that read the journal."),
    CTR(pith_persist_stats_t, replayed, "pith_persist_replayed_events_total",
        "Events applied by recoveries."),
    CTR(pith_persist_stats_t, restored, "pith_persist_restored_snapshots_total",
        "Snapshots restored by recoveries."),
    CTR(pith_persist_stats_t, carried, "pith_persist_carried_records_total",
        "Records copied forward so that old segments could leave."),
    GAU(pith_persist_stats_t, reminders, "pith_persist_reminders", "Reminders set now."),
    CTR(pith_persist_stats_t, reminders_fired, "pith_persist_reminders_fired_total",
        "Reminder messages sent."),
};

static const struct field type_fields[] = {
    CTR(struct core_type_shard, st.spawned, "pith_actor_type_spawned_total", "Actors started."),
    CTR(struct core_type_shard, st.stopped, "pith_actor_type_stopped_total",
        "Actors ended, for any reason."),
    CTR(struct core_type_shard, st.failed, "pith_actor_type_failed_total",
        "Actors ended with a reason other than normal or shutdown."),
    GAU(struct core_type_shard, st.live, "pith_actor_type_live", "Actors alive now."),
    CTR(struct core_type_shard, st.messages, "pith_actor_type_messages_total",
        "Messages handled by the behaviour."),
    CTR(struct core_type_shard, st.rejected, "pith_actor_type_rejected_total",
        "Messages refused for a full mailbox."),
    CTR(struct core_type_shard, st.dropped, "pith_actor_type_dropped_total",
        "Messages dropped (a full mailbox with DROP_OLDEST, or waiting at stop)."),
    GAU(struct core_type_shard, st.mailbox_max, "pith_actor_type_mailbox_depth_max",
        "Deepest mailbox seen."),
    GAU(struct core_type_shard, st.mailbox_now, "pith_actor_type_mailbox_depth",
        "Messages waiting in the type's mailboxes now."),
    CTR(struct core_type_shard, st.turns, "pith_actor_type_turns_total",
        "Times an actor of the type was scheduled."),
    CTR(struct core_type_shard, st.restarts, "pith_actor_type_restarts_total",
        "Restarts by a supervisor."),
    CTR(struct core_type_shard, st.mutes, "pith_actor_type_mutes_total",
        "Senders muted by a full mailbox."),
    CTR(struct core_type_shard, stalls, "pith_actor_type_stalls_total",
        "Stalls the detector saw in a behaviour of the type."),
};

static const struct field sla_fields[] = {
    FLD(pith_sla_stats_t, p99_ns, "pith_sla_p99_seconds", M_GAUGE, V_NS,
        "p99 of time in the mailbox + handler over the SLA's window on the shard (0: too few "
        "samples)."),
    FLD(pith_sla_stats_t, p999_ns, "pith_sla_p999_seconds", M_GAUGE, V_NS,
        "p999 of time in the mailbox + handler over the SLA's window on the shard (0: too few "
        "samples)."),
    FLD(pith_sla_stats_t, p99_target_ns, "pith_sla_p99_target_seconds", M_GAUGE, V_NS,
        "The SLA's p99 target (0: none)."),
    FLD(pith_sla_stats_t, p999_target_ns, "pith_sla_p999_target_seconds", M_GAUGE, V_NS,
        "The SLA's p999 target (0: none)."),
    GAU(pith_sla_stats_t, samples, "pith_sla_window_samples", "Messages timed in the window."),
    GAU(pith_sla_stats_t, violated, "pith_sla_violated", "1 while the SLA is missed."),
    GAU(pith_sla_stats_t, shedding, "pith_sla_shedding", "1 while the type sheds new messages."),
    CTR(pith_sla_stats_t, evaluations, "pith_sla_evaluations_total", "Windows judged."),
    CTR(pith_sla_stats_t, violations, "pith_sla_violations_total",
        "Times the SLA went from met to missed."),
    CTR(pith_sla_stats_t, recoveries, "pith_sla_recoveries_total",
        "Times the SLA was met again after a miss."),
    CTR(pith_sla_stats_t, shed, "pith_sla_shed_total", "Messages refused while shedding."),
    CTR(pith_sla_stats_t, upgraded, "pith_sla_upgraded_total",
        "Activations the SLA's profile remedy moved to hot memory."),
    CTR(pith_sla_stats_t, prewarmed, "pith_sla_prewarmed_total",
        "Related keys the SLA's pre-warm remedy asked to pre-warm."),
    CTR(pith_sla_stats_t, migrated, "pith_sla_migrated_total",
        "Activations the SLA's migrate remedy moved to another shard."),
    GAU(pith_sla_stats_t, mem_guarantee, "pith_sla_memory_guarantee_bytes",
        "The SLA's memory guarantee on the shard (0: none)."),
    GAU(pith_sla_stats_t, mem_hot, "pith_sla_memory_hot_bytes",
        "Bytes of the type's states in hot memory on the shard (with a guarantee)."),
    CTR(pith_sla_stats_t, mem_misses, "pith_sla_memory_misses_total",
        "Activations within the memory guarantee that found no hot memory."),
};

/* A virtual type on one shard: its counters and its histograms. */
struct vtype_shard_rec {
    pith_vtype_stats_t st;
    struct vtype_hists h;
};

static const struct hist_fam vtype_hist_fams[] = {
    {"pith_vactor_activation_seconds",
     "Time to activate (directory, spawn, init, on_activate), from one activation in 16.",
     offsetof(struct vtype_shard_rec, h.act), offsetof(struct vtype_shard_rec, h.act_sum_ns), 0},
    {"pith_vactor_first_message_seconds",
     "From a first message's arrival at the directory to the start of the activation's first "
     "behaviour call, from one activation in 16.",
     offsetof(struct vtype_shard_rec, h.first), offsetof(struct vtype_shard_rec, h.first_sum_ns),
     0},
};

static const struct field vtype_fields[] = {
    CTR(struct vtype_shard_rec, st.activations, "pith_vactor_activations_total",
        "Activations that began."),
    CTR(struct vtype_shard_rec, st.activate_failed, "pith_vactor_activate_failed_total",
        "Activations whose on_activate or init failed."),
    GAU(struct vtype_shard_rec, st.live, "pith_vactor_live", "Activations now."),
    CTR(struct vtype_shard_rec, st.messages, "pith_vactor_messages_total",
        "Messages routed through the directory."),
    CTR(struct vtype_shard_rec, st.lookups, "pith_vactor_lookups_total", "Directory lookups."),
    CTR(struct vtype_shard_rec, st.collisions, "pith_vactor_collisions_total",
        "Lookups that passed an entry of the same hash and another key."),
    CTR(struct vtype_shard_rec, st.refused, "pith_vactor_refused_total",
        "Messages refused for the cap, with no activation idle."),
    CTR(struct vtype_shard_rec, st.prewarms, "pith_vactor_prewarms_total",
        "Activations made by a pre-warm."),
    CTR(struct vtype_shard_rec, st.prewarm_used, "pith_vactor_prewarm_used_total",
        "Pre-warmed activations reached by a message."),
    CTR(struct vtype_shard_rec, st.prewarm_wasted, "pith_vactor_prewarm_wasted_total",
        "Pre-warmed activations that ended without a message."),
    CTR(struct vtype_shard_rec, st.profile_moves, "pith_vactor_profile_moves_total",
        "States moved to another memory profile."),
    CTR(struct vtype_shard_rec, st.profile_failed, "pith_vactor_profile_failed_total",
        "Profile moves that found no memory."),
    CTR(struct vtype_shard_rec, st.remote, "pith_vactor_remote_total",
        "Activations placed on another shard than the key's directory."),
    CTR(struct vtype_shard_rec, st.forwards, "pith_vactor_forwards_total",
        "Messages the directory handed to another shard."),
    CTR(struct vtype_shard_rec, st.direct, "pith_vactor_direct_total",
        "Messages taken on an activation's own shard without the directory."),
    CTR(struct vtype_shard_rec, st.returned, "pith_vactor_returned_total",
        "Messages an ending or moving activation gave back."),
    CTR(struct vtype_shard_rec, st.migrations, "pith_vactor_migrations_total", "Moves begun."),
    CTR(struct vtype_shard_rec, st.rebalances, "pith_vactor_rebalances_total",
        "Moves begun by rebalancing."),
    CTR(struct vtype_shard_rec, st.migrate_failed, "pith_vactor_migrate_failed_total",
        "Moves that could not land."),
    CTR(struct vtype_shard_rec, st.cached, "pith_vactor_cached_total",
        "Messages a sender's location cache sent straight to the activation's shard."),
    CTR(struct vtype_shard_rec, st.stale, "pith_vactor_stale_total",
        "Of those, messages that found it gone and went back."),
};

static const char *const deact_names[PITH_VDEACT_REASONS] = {
    [PITH_VDEACT_IDLE] = "idle",         [PITH_VDEACT_SELF] = "self",
    [PITH_VDEACT_CAP] = "cap",           [PITH_VDEACT_ENDED] = "ended",
    [PITH_VDEACT_SHUTDOWN] = "shutdown", [PITH_VDEACT_PRESSURE] = "pressure",
    [PITH_VDEACT_MIGRATED] = "migrated",
};

/* Per-shard histograms of the layers below: stalls (shard/), the journal's (log/), and the
 * connections' (net/: their lives, in the time table below, and their bytes). */
struct shard_hists {
    uint64_t stall[CORE_HIST_BUCKETS], stall_sum;
    uint64_t commit[CORE_HIST_BUCKETS], commit_sum, sync[CORE_HIST_BUCKETS], sync_sum;
    struct net_conn_hists net;
};

static const struct hist_fam shard_hist_fams[] = {
    {"pith_shard_stall_seconds",
     "How long the stalls the detector saw lasted (to within its sampling period).",
     offsetof(struct shard_hists, stall), offsetof(struct shard_hists, stall_sum), 0},
    {"pith_journal_commit_seconds",
     "Per group of records made durable: from its first record to its acknowledgement.",
     offsetof(struct shard_hists, commit), offsetof(struct shard_hists, commit_sum), 0},
    {"pith_journal_write_sync_seconds",
     "Per group of records made durable: from its write's submission to its durability.",
     offsetof(struct shard_hists, sync), offsetof(struct shard_hists, sync_sum), 0},
    {"pith_net_conn_lifetime_seconds",
     "Per TCP connection that ended: from its opening to its end.",
     offsetof(struct shard_hists, net.life), offsetof(struct shard_hists, net.life_sum), 0},
    {"pith_net_conn_received_bytes", "Per TCP connection that ended: the bytes it received.",
     offsetof(struct shard_hists, net.in), offsetof(struct shard_hists, net.in_sum), NET_POW2},
    {"pith_net_conn_sent_bytes",
     "Per TCP connection that ended: the bytes the kernel took from it to send.",
     offsetof(struct shard_hists, net.out), offsetof(struct shard_hists, net.out_sum), NET_POW2},
};

static const struct hist_fam type_hist_fams[] = {
    {"pith_actor_type_handler_seconds", "Time in the behaviour, from one message in 16 on average.",
     offsetof(struct core_type_shard, hist), offsetof(struct core_type_shard, sum_ns), 0},
    {"pith_actor_type_mailbox_seconds",
     "Time in the mailbox, from the send to the start of handling, from one message in 16 (one "
     "handled as it arrives counts as 0).",
     offsetof(struct core_type_shard, mbox), offsetof(struct core_type_shard, mbox_sum_ns), 0},
    {"pith_actor_type_enqueue_depth",
     "Depth of the mailbox a message joined (itself counted), from one enqueue in 16.",
     offsetof(struct core_type_shard, depth), offsetof(struct core_type_shard, depth_sum),
     CORE_DEPTH_BUCKETS},
};

/* ---- reading ---- */

/* Per-shard sources: one struct per shard. */
static int rd_shard(unsigned i, void *out)
{
    return pith_shard_stats(i, out);
}
static int rd_core(unsigned i, void *out)
{
    return pith_core_stats(i, out);
}
static int rd_mem(unsigned i, void *out)
{
    return pith_mem_stats((int)i, out);
}
static int rd_net(unsigned i, void *out)
{
    return pith_net_stats(i, out);
}
static int rd_journal(unsigned i, void *out)
{
    return pith_journal_stats(i, out);
}
static int rd_persist(unsigned i, void *out)
{
    return pith_persist_stats(i, out);
}

struct source {
    int (*read)(unsigned shard, void *out);
    size_t size;
    const struct field *f;
    size_t nf;
};

#define SOURCE(fn, st, tab)                                                                        \
    {                                                                                              \
        fn, sizeof(st), tab, sizeof(tab) / sizeof(tab[0])                                          \
    }
static const struct source shard_sources[] = {
    SOURCE(rd_shard, pith_shard_stats_t, shard_fields),
    SOURCE(rd_core, pith_core_stats_t, core_fields),
    SOURCE(rd_mem, pith_mem_stats_t, mem_fields),
    SOURCE(rd_net, pith_net_stats_t, net_fields),
    SOURCE(rd_journal, pith_journal_stats_t, journal_fields),
    SOURCE(rd_persist, pith_persist_stats_t, persist_fields),
};
#define NSOURCES (sizeof(shard_sources) / sizeof(shard_sources[0]))

/* A named thing with a struct per shard: an actor type or a virtual type. Its label value is
 * its name, made unique ("name#2") when two share one, or "unnamed". */
struct named {
    char label[96];
    void *per_shard; /* n records */
};

static void name_label(struct named *all, size_t i, const char *name)
{
    const char *base = name != NULL && name[0] != '\0' ? name : "unnamed";
    snprintf(all[i].label, sizeof(all[i].label), "%s", base);
    for (unsigned k = 2;; k++) {
        bool clash = false;
        for (size_t j = 0; j < i && !clash; j++)
            clash = strcmp(all[j].label, all[i].label) == 0;
        if (!clash)
            return;
        snprintf(all[i].label, sizeof(all[i].label), "%.80s#%u", base, k);
    }
}

static void emit_table(struct writer *w, const struct field *f, size_t nf, const void *recs,
                       size_t size, unsigned n, const char *key, const struct named *named,
                       size_t nnamed)
{
    char sh[16];
    for (size_t k = 0; k < nf; k++) {
        w_family(w, f[k].name, f[k].kind, f[k].help);
        for (size_t t = 0; t < (named != NULL ? nnamed : 1); t++) {
            const char *base =
                named != NULL ? (const char *)named[t].per_shard : (const char *)recs;
            for (unsigned i = 0; i < n; i++) {
                snprintf(sh, sizeof(sh), "%u", i);
                struct label l[2] = {{"shard", sh}, {key, named != NULL ? named[t].label : ""}};
                w_value(w, l, named != NULL ? 2 : 1, field_value(&f[k], base + i * size),
                        f[k].conv == V_NS);
            }
        }
    }
}

/* As emit_table, for histogram families. */
static void emit_hists(struct writer *w, const struct hist_fam *f, size_t nf, const void *recs,
                       size_t size, unsigned n, const char *key, const struct named *named,
                       size_t nnamed)
{
    char sh[16];
    for (size_t k = 0; k < nf; k++) {
        w_family(w, f[k].name, M_HISTOGRAM, f[k].help);
        for (size_t t = 0; t < (named != NULL ? nnamed : 1); t++) {
            const char *base =
                named != NULL ? (const char *)named[t].per_shard : (const char *)recs;
            for (unsigned i = 0; i < n; i++) {
                snprintf(sh, sizeof(sh), "%u", i);
                struct label l[2] = {{"shard", sh}, {key, named != NULL ? named[t].label : ""}};
                const char *r = base + i * size;
                const uint64_t *h = (const uint64_t *)(r + f[k].off);
                uint64_t sum = *(const uint64_t *)(r + f[k].sum);
                if (f[k].pow2 > 0)
                    w_hist_pow2(w, l, named != NULL ? 2 : 1, h, f[k].pow2, sum);
                else
                    w_hist(w, l, named != NULL ? 2 : 1, h, sum);
            }
        }
    }
}

int obs_render(struct obuf *b, enum obs_format fmt)
{
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    int err = 0;
    void *recs[NSOURCES] = {0};
    struct named *types = NULL, *vtypes = NULL;
    const pith_actor_type_t **tlist = NULL;
    size_t ntypes = 0, nvtypes = 0;

    /* Read everything first, then write: a read that fails (the engine stopping) leaves the
     * buffer as it was. */
    for (size_t s = 0; s < NSOURCES && err == 0; s++) {
        recs[s] = calloc(n, shard_sources[s].size);
        if (recs[s] == NULL) {
            err = -ENOMEM;
            break;
        }
        for (unsigned i = 0; i < n && err == 0; i++)
            err = shard_sources[s].read(i, (char *)recs[s] + i * shard_sources[s].size);
    }
    if (err == 0) {
        size_t cap = 16;
        for (;;) {
            tlist = calloc(cap, sizeof(*tlist));
            if (tlist == NULL) {
                err = -ENOMEM;
                break;
            }
            ntypes = core_types(tlist, cap);
            if (ntypes <= cap)
                break;
            free(tlist);
            cap = ntypes;
        }
    }
    if (err == 0 && ntypes > 0) {
        types = calloc(ntypes, sizeof(*types));
        err = types == NULL ? -ENOMEM : 0;
        for (size_t t = 0; t < ntypes && err == 0; t++) {
            name_label(types, t, tlist[t]->name);
            struct core_type_shard *rs = calloc(n, sizeof(*rs));
            types[t].per_shard = rs;
            if (rs == NULL)
                err = -ENOMEM;
            for (unsigned i = 0; i < n && err == 0; i++)
                err = core_type_shard(tlist[t], i, &rs[i]);
        }
    }
    /* The types with an SLA on some shard, with its figures per shard. */
    struct named *slas = NULL;
    size_t nslas = 0;
    if (err == 0 && ntypes > 0) {
        slas = calloc(ntypes, sizeof(*slas));
        err = slas == NULL ? -ENOMEM : 0;
        for (size_t t = 0; t < ntypes && err == 0; t++) {
            pith_sla_stats_t *st = calloc(n, sizeof(*st));
            if (st == NULL) {
                err = -ENOMEM;
                break;
            }
            bool any = false;
            for (unsigned i = 0; i < n && err == 0; i++) {
                err = pith_sla_stats(tlist[t], i, &st[i]);
                any |= st[i].set;
            }
            if (!any || err != 0) {
                free(st);
                continue;
            }
            memcpy(slas[nslas].label, types[t].label, sizeof(slas[nslas].label));
            slas[nslas++].per_shard = st;
        }
    }
    /* Per-shard histograms: stalls, and the journal's commit and sync. */
    struct shard_hists *hs = NULL;
    if (err == 0) {
        hs = calloc(n, sizeof(*hs));
        err = hs == NULL ? -ENOMEM : 0;
        for (unsigned i = 0; i < n && err == 0; i++) {
            err = shard_stall_hist(i, hs[i].stall, &hs[i].stall_sum);
            if (err == 0)
                err = log_hists(i, hs[i].commit, &hs[i].commit_sum, hs[i].sync, &hs[i].sync_sum);
            if (err == 0)
                err = net_conn_hists(i, &hs[i].net);
        }
    }
    while (err == 0 && vactor_type_at((uint32_t)nvtypes) != NULL)
        nvtypes++;
    if (err == 0 && nvtypes > 0) {
        vtypes = calloc(nvtypes, sizeof(*vtypes));
        err = vtypes == NULL ? -ENOMEM : 0;
        for (size_t t = 0; t < nvtypes && err == 0; t++) {
            const pith_vtype_t *vt = vactor_type_at((uint32_t)t);
            name_label(vtypes, t, vt->name);
            struct vtype_shard_rec *rs = calloc(n, sizeof(*rs));
            vtypes[t].per_shard = rs;
            if (rs == NULL)
                err = -ENOMEM;
            for (unsigned i = 0; i < n && err == 0; i++) {
                err = pith_vtype_shard_stats(vt, i, &rs[i].st);
                if (err == 0)
                    err = vactor_type_hists(vt, i, &rs[i].h);
            }
        }
    }

    if (err == 0) {
        struct writer w = {.b = b, .f = fmt};
        w_begin(&w);
        w_family(&w, "pith_build_info", M_GAUGE, "The library's version; always 1.");
        w_value(&w, (struct label[]){{"version", pith_version()}}, 1, 1, false);
        w_family(&w, "pith_shards", M_GAUGE, "Shards the engine runs.");
        w_value(&w, NULL, 0, n, false);
        for (size_t s = 0; s < NSOURCES; s++)
            emit_table(&w, shard_sources[s].f, shard_sources[s].nf, recs[s], shard_sources[s].size,
                       n, NULL, NULL, 0);
        emit_hists(&w, shard_hist_fams, sizeof(shard_hist_fams) / sizeof(shard_hist_fams[0]), hs,
                   sizeof(*hs), n, NULL, NULL, 0);
        if (ntypes > 0) {
            emit_table(&w, type_fields, sizeof(type_fields) / sizeof(type_fields[0]), NULL,
                       sizeof(struct core_type_shard), n, "type", types, ntypes);
            emit_hists(&w, type_hist_fams, sizeof(type_hist_fams) / sizeof(type_hist_fams[0]), NULL,
                       sizeof(struct core_type_shard), n, "type", types, ntypes);
        }
        if (nslas > 0)
            emit_table(&w, sla_fields, sizeof(sla_fields) / sizeof(sla_fields[0]), NULL,
                       sizeof(pith_sla_stats_t), n, "type", slas, nslas);
        if (nvtypes > 0) {
            emit_table(&w, vtype_fields, sizeof(vtype_fields) / sizeof(vtype_fields[0]), NULL,
                       sizeof(struct vtype_shard_rec), n, "type", vtypes, nvtypes);
            w_family(&w, "pith_vactor_deactivations_total", M_COUNTER,
                     "Activations ended, by reason.");
            char sh[16];
            for (size_t t = 0; t < nvtypes; t++)
                for (unsigned i = 0; i < n; i++) {
                    const struct vtype_shard_rec *r =
                        (struct vtype_shard_rec *)vtypes[t].per_shard + i;
                    snprintf(sh, sizeof(sh), "%u", i);
                    for (unsigned k = 1; k < PITH_VDEACT_REASONS; k++) {
                        struct label l[3] = {
                            {"shard", sh}, {"type", vtypes[t].label}, {"reason", deact_names[k]}};
                        w_value(&w, l, 3, r->st.deactivations[k], false);
                    }
                }
            emit_hists(&w, vtype_hist_fams, sizeof(vtype_hist_fams) / sizeof(vtype_hist_fams[0]),
                       NULL, sizeof(struct vtype_shard_rec), n, "type", vtypes, nvtypes);
        }
        w_end(&w);
        if (b->failed)
            err = -ENOMEM;
    }

    for (size_t s = 0; s < NSOURCES; s++)
        free(recs[s]);
    for (size_t t = 0; types != NULL && t < ntypes; t++)
        free(types[t].per_shard);
    for (size_t t = 0; vtypes != NULL && t < nvtypes; t++)
        free(vtypes[t].per_shard);
    for (size_t t = 0; slas != NULL && t < nslas; t++)
        free(slas[t].per_shard);
    free(slas);
    free(types);
    free(vtypes);
    free(hs);
    free(tlist);
    return err;
}

/* ---- the public calls ---- */

static long render_into(char *buf, size_t cap, enum obs_format f)
{
    if (buf == NULL && cap > 0)
        return -EINVAL;
    struct obuf b = {0};
    int err = obs_render(&b, f);
    if (err != 0) {
        obuf_free(&b);
        return err;
    }
    if (cap > 0) {
        size_t k = b.len < cap ? b.len : cap - 1;
        memcpy(buf, b.p, k);
        buf[k] = '\0';
    }
    long len = (long)b.len;
    obuf_free(&b);
    return len;
}

long pith_metrics_text(char *buf, size_t cap)
{
    return render_into(buf, cap, OBS_PROMETHEUS);
}

long pith_metrics_json(char *buf, size_t cap)
{
    return render_into(buf, cap, OBS_JSON);
}
