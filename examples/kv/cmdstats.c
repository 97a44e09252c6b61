/* Per-command figures, per shard (cmdstats.h): the table of command names, the counters and
 * histograms each shard writes for the commands its connections run, and INFO's and LATENCY
 * HISTOGRAM's readings of them over all shards. */
#include "cmdstats.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <pith/pith.h>

struct def {
    const char *name; /* as INFO shows it */
    uint8_t len;      /* strlen(name) */
    bool fast;        /* Redis 7's "fast" flag */
    uint8_t subs;     /* a command with subcommands: this many follow it in the table */
};

#define D(name, fast, subs)                                                                        \
    {                                                                                              \
        name, sizeof(name) - 1, fast, subs                                                         \
    }

/* pith-kv's commands and, after each that has them, its subcommands (Redis 7 counts those
 * apart: cmdstat_config|get). The fast flags are Redis 7.0's (COMMAND INFO). */
static const struct def defs[] = {
    D("get", true, 0),
    D("set", false, 0),
    D("del", false, 0),
    D("ttl", true, 0),
    D("pttl", true, 0),
    D("expiretime", true, 0),
    D("pexpiretime", true, 0),
    D("incr", true, 0),
    D("decr", true, 0),
    D("incrby", true, 0),
    D("decrby", true, 0),
    D("mget", true, 0),
    D("mset", false, 0),
    D("exists", true, 0),
    D("expire", true, 0),
    D("pexpire", true, 0),
    D("expireat", true, 0),
    D("pexpireat", true, 0),
    D("persist", true, 0),
    D("ping", true, 0),
    D("echo", true, 0),
    D("dbsize", true, 0),
    D("select", true, 0),
    D("flushdb", false, 0),
    D("flushall", false, 0),
    D("info", false, 0),
    D("quit", true, 0),
    D("command", false, 0),
    D("bgrewriteaof", false, 0),
    D("config", false, 4),
    D("config|get", false, 0),
    D("config|set", false, 0),
    D("config|resetstat", false, 0),
    D("config|help", false, 0),
    D("client", false, 8),
    D("client|id", false, 0),
    D("client|getname", false, 0),
    D("client|setname", false, 0),
    D("client|info", false, 0),
    D("client|list", false, 0),
    D("client|kill", false, 0),
    D("client|reply", false, 0),
    D("client|help", false, 0),
    D("slowlog", false, 4),
    D("slowlog|get", false, 0),
    D("slowlog|len", false, 0),
    D("slowlog|reset", false, 0),
    D("slowlog|help", false, 0),
    D("latency", false, 6),
    D("latency|latest", false, 0),
    D("latency|history", false, 0),
    D("latency|reset", false, 0),
    D("latency|doctor", false, 0),
    D("latency|histogram", false, 0),
    D("latency|help", false, 0),
};
#define NCMDS ((int)(sizeof(defs) / sizeof(defs[0])))

/* One command's figures on one shard. Written by that shard only, with relaxed loads and stores
 * (no read-modify-write: there is one writer); read by any shard's INFO with relaxed loads. A
 * reading is consistent per counter, not across them (a call may show in calls before its
 * time), which INFO's sums tolerate. */
struct cmd_stat {
    _Atomic uint64_t calls, ns, rejected, failed;
    _Atomic uint64_t hist[CMD_HIST_BUCKETS];
};

struct shard_stats {
    /* The CONFIG RESETSTAT generation these figures are of. The shard zeroes its counters and
     * then stores the new generation with release; a reader loads it with acquire and counts
     * the shard only when it is the current one: it then sees the zeroes (or later counts),
     * never the figures from before the reset. */
    _Atomic uint64_t gen;
    struct cmd_stat c[NCMDS];
};

static struct shard_stats *shards[4096];
/* Bumped by CONFIG RESETSTAT (relaxed: the shards and readers compare against it, see gen). */
static _Atomic uint64_t reset_gen;

/* ---- names ---- */

static bool same(const struct resp_arg *a, const char *name)
{
    return a->len == strlen(name) && strncasecmp(a->p, name, a->len) == 0;
}

int cmd_find(const struct resp_arg *a, unsigned argc)
{
    /* A walk over the top-level names that compares lengths first: about 30 of them, most
     * passed over on their length, GET and SET first. */
    for (int i = 0; i < NCMDS; i += 1 + defs[i].subs) {
        if (a[0].len != defs[i].len || strncasecmp(a[0].p, defs[i].name, a[0].len) != 0)
            continue;
        if (defs[i].subs == 0 || argc < 2)
            return i;
        for (int j = i + 1; j <= i + defs[i].subs; j++)
            if (same(&a[1], strchr(defs[j].name, '|') + 1))
                return j;
        return -1;
    }
    return -1;
}

bool cmd_fast(int cmd)
{
    return cmd >= 0 && cmd < NCMDS && defs[cmd].fast;
}

const char *cmd_name(int cmd)
{
    return cmd >= 0 && cmd < NCMDS ? defs[cmd].name : "";
}

/* ---- recording ---- */

static unsigned bucket(uint64_t ns)
{
    if (ns < 32)
        return 0;
    unsigned e = 63u - (unsigned)__builtin_clzll(ns);
    unsigned b = 1 + (e - 5) * 4 + (unsigned)((ns >> (e - 2)) & 3);
    return b < CMD_HIST_BUCKETS ? b : CMD_HIST_BUCKETS - 1;
}

/* The upper edge of bucket b, in ns (the last one's is where it begins: it has no edge). */
static uint64_t upper(unsigned b)
{
    if (b == 0)
        return 32;
    unsigned e = 5 + (b - 1) / 4, sub = (b - 1) % 4;
    return (1ull << e) + ((uint64_t)(sub + 1) << (e - 2));
}

int cmd_stats_init(void)
{
    struct shard_stats *s = pith_calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    atomic_store_explicit(&s->gen, atomic_load_explicit(&reset_gen, memory_order_relaxed),
                          memory_order_release);
    shards[pith_shard_id()] = s;
    return 0;
}

static void add(_Atomic uint64_t *c, uint64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

/* This shard's figures, zeroed first when a CONFIG RESETSTAT came since the last call. */
static struct shard_stats *mine(void)
{
    struct shard_stats *s = shards[pith_shard_id()];
    uint64_t g = atomic_load_explicit(&reset_gen, memory_order_relaxed);
    if (atomic_load_explicit(&s->gen, memory_order_relaxed) != g) {
        for (int i = 0; i < NCMDS; i++) {
            struct cmd_stat *c = &s->c[i];
            atomic_store_explicit(&c->calls, 0, memory_order_relaxed);
            atomic_store_explicit(&c->ns, 0, memory_order_relaxed);
            atomic_store_explicit(&c->rejected, 0, memory_order_relaxed);
            atomic_store_explicit(&c->failed, 0, memory_order_relaxed);
            for (unsigned b = 0; b < CMD_HIST_BUCKETS; b++)
                atomic_store_explicit(&c->hist[b], 0, memory_order_relaxed);
        }
        atomic_store_explicit(&s->gen, g, memory_order_release); /* pairs with current() */
    }
    return s;
}

void cmd_record(int cmd, uint64_t ns, bool failed)
{
    struct cmd_stat *c = &mine()->c[cmd];
    add(&c->calls, 1);
    add(&c->ns, ns);
    if (failed)
        add(&c->failed, 1);
    add(&c->hist[bucket(ns)], 1);
}

void cmd_reject(int cmd)
{
    add(&mine()->c[cmd].rejected, 1);
}

void cmd_stats_reset(void)
{
    atomic_fetch_add_explicit(&reset_gen, 1, memory_order_relaxed);
}

/* ---- reading, over all shards ---- */

/* Shard i's figures when they are of the current generation, else NULL (they read as 0). */
static const struct shard_stats *current(unsigned i)
{
    const struct shard_stats *s = shards[i];
    if (s == NULL)
        return NULL;
    uint64_t g = atomic_load_explicit(&reset_gen, memory_order_relaxed);
    return atomic_load_explicit(&s->gen, memory_order_acquire) == g ? s : NULL;
}

struct sum {
    uint64_t calls, ns, rejected, failed;
};

static struct sum sum_of(int cmd, unsigned nshards)
{
    struct sum t = {0};
    for (unsigned i = 0; i < nshards; i++) {
        const struct shard_stats *s = current(i);
        if (s == NULL)
            continue;
        const struct cmd_stat *c = &s->c[cmd];
        t.calls += atomic_load_explicit(&c->calls, memory_order_relaxed);
        t.ns += atomic_load_explicit(&c->ns, memory_order_relaxed);
        t.rejected += atomic_load_explicit(&c->rejected, memory_order_relaxed);
        t.failed += atomic_load_explicit(&c->failed, memory_order_relaxed);
    }
    return t;
}

/* cmd's histogram over all shards into h; the samples in it. */
static uint64_t hist_of(int cmd, unsigned nshards, uint64_t h[CMD_HIST_BUCKETS])
{
    uint64_t total = 0;
    memset(h, 0, CMD_HIST_BUCKETS * sizeof(h[0]));
    for (unsigned i = 0; i < nshards; i++) {
        const struct shard_stats *s = current(i);
        if (s == NULL)
            continue;
        for (unsigned b = 0; b < CMD_HIST_BUCKETS; b++) {
            uint64_t n = atomic_load_explicit(&s->c[cmd].hist[b], memory_order_relaxed);
            h[b] += n;
            total += n;
        }
    }
    return total;
}

/* The q-quantile (0 < q <= 1) of h (total samples): its bucket's upper edge, ns. */
static uint64_t quantile(const uint64_t h[CMD_HIST_BUCKETS], uint64_t total, double q)
{
    uint64_t rank = (uint64_t)(q * (double)total + 0.999999);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < CMD_HIST_BUCKETS; b++) {
        seen += h[b];
        if (seen >= rank)
            return upper(b);
    }
    return upper(CMD_HIST_BUCKETS - 1);
}

int cmd_info_commandstats(struct resp_out *o, unsigned nshards)
{
    /* Redis lists a command once it was called, rejected or failed. */
    int err = resp_put_fmt(o, "# Commandstats\r\n");
    for (int i = 0; i < NCMDS && err == 0; i++) {
        struct sum t = sum_of(i, nshards);
        if (t.calls == 0 && t.rejected == 0 && t.failed == 0)
            continue;
        uint64_t usec = t.ns / 1000;
        err = resp_put_fmt(o,
                           "cmdstat_%s:calls=%llu,usec=%llu,usec_per_call=%.2f,rejected_calls=%llu,"
                           "failed_calls=%llu\r\n",
                           defs[i].name, (unsigned long long)t.calls, (unsigned long long)usec,
                           t.calls > 0 ? (double)t.ns / 1000.0 / (double)t.calls : 0.0,
                           (unsigned long long)t.rejected, (unsigned long long)t.failed);
    }
    return err != 0 ? err : resp_put_fmt(o, "\r\n");
}

int cmd_info_latencystats(struct resp_out *o, unsigned nshards)
{
    /* Redis 7's default latency-tracking-info-percentiles: 50 99 99.9, in µs. */
    int err = resp_put_fmt(o, "# Latencystats\r\n");
    uint64_t h[CMD_HIST_BUCKETS];
    for (int i = 0; i < NCMDS && err == 0; i++) {
        uint64_t total = hist_of(i, nshards, h);
        if (total == 0)
            continue;
        err = resp_put_fmt(o, "latency_percentiles_usec_%s:p50=%.3f,p99=%.3f,p99.9=%.3f\r\n",
                           defs[i].name, (double)quantile(h, total, 0.5) / 1000.0,
                           (double)quantile(h, total, 0.99) / 1000.0,
                           (double)quantile(h, total, 0.999) / 1000.0);
    }
    return err != 0 ? err : resp_put_fmt(o, "\r\n");
}

/* One command's entry of LATENCY HISTOGRAM: name, [calls, n, histogram_usec, [edge, count ...]]
 * at every power of two of ns from 1024, each with the samples below it, where that count grew.
 * Each edge is shown as Redis shows it: the highest value its histogram (2 significant digits)
 * holds in that bucket, in whole µs (1, 2, 4, 8, 16, 33, 66, 132, 264, 528, ...). */
static int histogram_entry(struct resp_out *o, int cmd, unsigned nshards)
{
    uint64_t h[CMD_HIST_BUCKETS];
    uint64_t total = hist_of(cmd, nshards, h);
    uint64_t edges[40], counts[40];
    unsigned n = 0;
    uint64_t seen = 0, last = 0;
    unsigned b = 0;
    for (unsigned e = 10; e < 38 && last < total; e++) {
        /* Samples below 2^e ns: the buckets before the first one that starts at 2^e. */
        unsigned first = 1 + (e - 5) * 4;
        for (; b < first && b < CMD_HIST_BUCKETS; b++)
            seen += h[b];
        if (e == 37)
            seen = total; /* the last bucket has no upper edge */
        if (seen > last) {
            edges[n] = ((1ull << e) + (1ull << (e - 7)) - 1) / 1000;
            counts[n++] = seen;
            last = seen;
        }
    }
    int err = resp_put_bulk(o, defs[cmd].name, strlen(defs[cmd].name));
    err = err ? err : resp_put_array(o, 4);
    err = err ? err : resp_put_bulk(o, "calls", 5);
    err = err ? err : resp_put_int(o, (long long)total);
    err = err ? err : resp_put_bulk(o, "histogram_usec", 14);
    err = err ? err : resp_put_array(o, 2 * (long long)n);
    for (unsigned i = 0; i < n && err == 0; i++) {
        err = resp_put_int(o, (long long)edges[i]);
        err = err ? err : resp_put_int(o, (long long)counts[i]);
    }
    return err;
}

int cmd_histogram_reply(struct resp_out *o, unsigned nshards, const struct resp_arg *names,
                        unsigned n)
{
    /* The commands to show, each once: those named (a command with subcommands names them all),
     * or every one called; only those with samples. */
    bool want[NCMDS];
    uint64_t h[CMD_HIST_BUCKETS];
    memset(want, 0, sizeof(want));
    for (int i = 0; i < NCMDS; i++) {
        if (n == 0) {
            want[i] = true;
            continue;
        }
        for (unsigned k = 0; k < n && !want[i]; k++) {
            const char *bar = strchr(defs[i].name, '|');
            size_t top = bar != NULL ? (size_t)(bar - defs[i].name) : strlen(defs[i].name);
            want[i] =
                same(&names[k], defs[i].name) || (bar != NULL && names[k].len == top &&
                                                  strncasecmp(names[k].p, defs[i].name, top) == 0);
        }
    }
    long long count = 0;
    for (int i = 0; i < NCMDS; i++)
        if (want[i] && (want[i] = hist_of(i, nshards, h) > 0))
            count++;
    int err = resp_put_array(o, 2 * count);
    for (int i = 0; i < NCMDS && err == 0; i++)
        if (want[i])
            err = histogram_entry(o, i, nshards);
    return err;
}
