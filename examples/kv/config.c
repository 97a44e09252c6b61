/* CONFIG GET / CONFIG SET over pith-kv's settings (config.h). */
#include "config.h"

#include <fnmatch.h>
#include <limits.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

struct kv_settings kv_cfg;

/* client-output-buffer-limit of the classes pith-kv has no clients of (slave, pubsub): kept
 * only to be shown as they were set; Redis's defaults. Read and written under CONFIG's calls,
 * which any shard may make: relaxed atomics. */
static _Atomic uint64_t other_limits[2][3] = {{268435456, 67108864, 60}, {33554432, 8388608, 60}};

enum kind {
    MUTABLE_INT,  /* an integer in [lo, hi] */
    SIGNED_INT,   /* an integer in [-1, hi], kept as an int64_t's bits */
    MUTABLE_MEM,  /* a memory value (parse_memory) in [lo, hi] */
    FIXED,        /* read-only here: CONFIG SET is "can't set immutable config" */
    OUTPUT_LIMIT, /* client-output-buffer-limit: "class hard soft seconds", normal settable */
};

struct setting_def {
    const char *name;
    enum kind kind;
    _Atomic uint64_t *v; /* MUTABLE_INT, and FIXED integers */
    uint64_t lo, hi;
    const char *text; /* FIXED strings */
};

/* Ours, in the order CONFIG GET lists them. */
static struct setting_def defs[] = {
    {"timeout", MUTABLE_INT, &kv_cfg.timeout_s, 0, 2147483647, NULL},
    {"maxclients", MUTABLE_INT, &kv_cfg.maxclients, 1, 4294967295u, NULL},
    {"proto-max-bulk-len", FIXED, &kv_cfg.max_bulk, 0, 0, NULL},
    {"port", FIXED, NULL, 0, 0, NULL},
    {"bind", FIXED, NULL, 0, 0, NULL},
    {"databases", FIXED, NULL, 0, 0, "1"},
    {"save", FIXED, NULL, 0, 0, ""},
    {"appendonly", FIXED, NULL, 0, 0, "no"},
    {"maxmemory", MUTABLE_MEM, &kv_cfg.maxmemory, 0, 9223372036854775807ull, NULL},
    {"maxmemory-policy", FIXED, NULL, 0, 0, "noeviction"},
    {"maxmemory-clients", MUTABLE_MEM, &kv_cfg.maxmemory_clients, 0, 9223372036854775807ull, NULL},
    {"client-query-buffer-limit", FIXED, &kv_cfg.query_limit, 0, 0, NULL},
    {"client-output-buffer-limit", OUTPUT_LIMIT, NULL, 0, 0, NULL},
    {"slowlog-log-slower-than", SIGNED_INT, &kv_cfg.slowlog_slower_than, 0, 9223372036854775807ull,
     NULL},
    {"slowlog-max-len", MUTABLE_INT, &kv_cfg.slowlog_max_len, 0, 9223372036854775807ull, NULL},
    {"latency-monitor-threshold", MUTABLE_INT, &kv_cfg.latency_threshold_ms, 0,
     9223372036854775807ull, NULL},
    {"latency-tracking", FIXED, NULL, 0, 0, "yes"},
    {"latency-tracking-info-percentiles", FIXED, NULL, 0, 0, "50 99 99.9"},
};
#define NDEFS (sizeof(defs) / sizeof(defs[0]))

static int value_of(const struct setting_def *d, char *buf, size_t size)
{
    if (strcmp(d->name, "port") == 0)
        return snprintf(buf, size, "%d", kv_cfg.port);
    if (strcmp(d->name, "bind") == 0)
        return snprintf(buf, size, "%s", kv_cfg.bind);
    if (d->kind == OUTPUT_LIMIT)
        /* The other classes are Redis's defaults: pith-kv has no replicas or pub/sub. */
        return snprintf(buf, size,
                        "normal %" PRIu64 " %" PRIu64 " %" PRIu64 " slave %" PRIu64 " %" PRIu64
                        " %" PRIu64 " pubsub %" PRIu64 " %" PRIu64 " %" PRIu64,
                        setting(&kv_cfg.obl_hard), setting(&kv_cfg.obl_soft),
                        setting(&kv_cfg.obl_secs), setting(&other_limits[0][0]),
                        setting(&other_limits[0][1]), setting(&other_limits[0][2]),
                        setting(&other_limits[1][0]), setting(&other_limits[1][1]),
                        setting(&other_limits[1][2]));
    if (d->kind == SIGNED_INT)
        return snprintf(buf, size, "%" PRId64, signed_setting(d->v));
    if (d->v != NULL)
        return snprintf(buf, size, "%" PRIu64, setting(d->v));
    return snprintf(buf, size, "%s", d->text);
}

static bool has_glob(const struct resp_arg *p)
{
    return memchr(p->p, '*', p->len) || memchr(p->p, '?', p->len) || memchr(p->p, '[', p->len);
}

int config_get(struct resp_out *o, const struct resp_arg *pats, unsigned n)
{
    /* Each setting once, whichever patterns match it; a pattern without a glob is a name, and
     * Redis answers with the name as it was asked (CONFIG GET TIMEOUT gives TIMEOUT). */
    const struct resp_arg *named[NDEFS] = {0};
    bool hit[NDEFS] = {0};
    unsigned count = 0;
    for (unsigned i = 0; i < n; i++) {
        char pat[128];
        if (pats[i].len >= sizeof(pat))
            continue;
        memcpy(pat, pats[i].p, pats[i].len);
        pat[pats[i].len] = 0;
        bool glob = has_glob(&pats[i]);
        for (unsigned j = 0; j < NDEFS; j++) {
            bool m = glob ? fnmatch(pat, defs[j].name, FNM_CASEFOLD) == 0
                          : strcasecmp(pat, defs[j].name) == 0;
            if (!m || hit[j])
                continue;
            hit[j] = true;
            named[j] = glob ? NULL : &pats[i];
            count++;
        }
    }
    int err = resp_put_array(o, 2 * (long long)count);
    for (unsigned j = 0; j < NDEFS && err == 0; j++) {
        if (!hit[j])
            continue;
        char val[160];
        int len = value_of(&defs[j], val, sizeof(val));
        err = named[j] != NULL ? resp_put_bulk(o, named[j]->p, named[j]->len)
                               : resp_put_bulk(o, defs[j].name, strlen(defs[j].name));
        if (err == 0)
            err = resp_put_bulk(o, val, (size_t)len);
    }
    return err;
}

static const struct setting_def *find_def(const struct resp_arg *name)
{
    for (unsigned j = 0; j < NDEFS; j++)
        if (strlen(defs[j].name) == name->len && strncasecmp(defs[j].name, name->p, name->len) == 0)
            return &defs[j];
    return NULL;
}

static const char *failed(char *buf, size_t size, const struct resp_arg *name, const char *why)
{
    snprintf(buf, size, "ERR CONFIG SET failed (possibly related to argument '%.*s') - %s",
             (int)(name->len < 64 ? name->len : 64), name->p, why);
    return buf;
}

const char *config_set(const struct resp_arg *a, unsigned n, char *buf, size_t size)
{
    if (n % 2 != 0)
        return "ERR syntax error";
    /* Check every pair first, then apply: all or none, as in Redis. */
    uint64_t values[NDEFS];
    uint64_t obl[3][3] = {
        {setting(&kv_cfg.obl_hard), setting(&kv_cfg.obl_soft), setting(&kv_cfg.obl_secs)}};
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < 3; k++)
            obl[c + 1][k] = setting(&other_limits[c][k]);
    const struct setting_def *which[NDEFS];
    unsigned pairs = 0;
    for (unsigned i = 0; i + 1 < n; i += 2) {
        const struct setting_def *d = find_def(&a[i]);
        if (d == NULL) {
            snprintf(buf, size, "ERR Unknown option or number of arguments for CONFIG SET - '%.*s'",
                     (int)(a[i].len < 64 ? a[i].len : 64), a[i].p);
            return buf;
        }
        for (unsigned k = 0; k < pairs; k++)
            if (which[k] == d)
                return failed(buf, size, &a[i], "duplicate parameter");
        if (d->kind == FIXED)
            return failed(buf, size, &a[i], "can't set immutable config");
        if (d->kind == OUTPUT_LIMIT) {
            const char *why = parse_output_limit(a[i + 1].p, a[i + 1].len, obl);
            if (why != NULL)
                return failed(buf, size, &a[i], why);
            which[pairs] = d;
            values[pairs++] = 0;
            continue;
        }
        long long v;
        uint64_t m;
        if (d->kind == MUTABLE_MEM) {
            if (!parse_memory(a[i + 1].p, a[i + 1].len, &m) || m > (uint64_t)LLONG_MAX)
                return failed(buf, size, &a[i],
                              d->v == &kv_cfg.maxmemory_clients
                                  ? "argument must be a memory or percent value"
                                  : "argument must be a memory value");
            v = (long long)m;
        } else if (!resp_parse_ll(a[i + 1].p, a[i + 1].len, &v)) {
            return failed(buf, size, &a[i], "argument couldn't be parsed into an integer");
        }
        long long lo = d->kind == SIGNED_INT ? -1 : (long long)d->lo;
        if (v < lo || (v >= 0 && ((uint64_t)v < d->lo || (uint64_t)v > d->hi))) {
            char why[96];
            snprintf(why, sizeof(why), "argument must be between %lld and %" PRIu64 " inclusive",
                     lo, d->hi);
            return failed(buf, size, &a[i], why);
        }
        if (d->v == &kv_cfg.maxclients && (uint64_t)v > kv_cfg.maxclients_limit) {
            char why[128];
            snprintf(why, sizeof(why),
                     "The operating system is not able to handle the specified number of "
                     "clients, try with %" PRIu64,
                     kv_cfg.maxclients_limit);
            return failed(buf, size, &a[i], why);
        }
        which[pairs] = d;
        values[pairs++] = (uint64_t)v;
    }
    for (unsigned k = 0; k < pairs; k++) {
        if (which[k]->kind == OUTPUT_LIMIT) {
            atomic_store_explicit(&kv_cfg.obl_hard, obl[0][0], memory_order_relaxed);
            atomic_store_explicit(&kv_cfg.obl_soft, obl[0][1], memory_order_relaxed);
            atomic_store_explicit(&kv_cfg.obl_secs, obl[0][2], memory_order_relaxed);
            for (int c = 0; c < 2; c++)
                for (int k = 0; k < 3; k++)
                    atomic_store_explicit(&other_limits[c][k], obl[c + 1][k], memory_order_relaxed);
        } else {
            atomic_store_explicit(which[k]->v, values[k], memory_order_relaxed);
        }
    }
    return NULL;
}

const char *parse_output_limit(const char *p, size_t n, uint64_t out[3][3])
{
    /* Groups of four words: a class, hard, soft (memory values), seconds; checked as Redis
     * checks them, word count first. Only "normal" has clients here: "replica" (or "slave")
     * and "pubsub" groups are kept to be shown, and have no effect. */
    const char *w[64];
    size_t wl[64];
    unsigned nw = 0;
    for (const char *q = p, *end = p + n; q < end;) {
        while (q < end && *q == ' ')
            q++;
        if (q == end)
            break;
        if (nw == 64)
            return "Wrong number of arguments in buffer limit configuration.";
        w[nw] = q;
        while (q < end && *q != ' ')
            q++;
        wl[nw] = (size_t)(q - w[nw]);
        nw++;
    }
    if (nw == 0 || nw % 4 != 0)
        return "Wrong number of arguments in buffer limit configuration.";
    uint64_t got[3][3];
    memcpy(got, out, sizeof(got));
    for (unsigned g = 0; g < nw; g += 4) {
        int cls = wl[g] == 6 && strncasecmp(w[g], "normal", 6) == 0    ? 0
                  : wl[g] == 7 && strncasecmp(w[g], "replica", 7) == 0 ? 1
                  : wl[g] == 5 && strncasecmp(w[g], "slave", 5) == 0   ? 1
                  : wl[g] == 6 && strncasecmp(w[g], "pubsub", 6) == 0  ? 2
                                                                       : -1;
        if (cls < 0)
            return "Invalid client class specified in buffer limit configuration.";
        uint64_t v[3];
        long long secs;
        if (!parse_memory(w[g + 1], wl[g + 1], &v[0]) ||
            !parse_memory(w[g + 2], wl[g + 2], &v[1]) ||
            !resp_parse_ll(w[g + 3], wl[g + 3], &secs) || secs < 0)
            return "Error in hard, soft or soft_seconds setting in buffer limit configuration.";
        v[2] = (uint64_t)secs;
        memcpy(got[cls], v, sizeof(v));
    }
    memcpy(out, got, sizeof(got));
    return NULL;
}

bool parse_memory(const char *p, size_t n, uint64_t *out)
{
    static const struct {
        const char *unit;
        uint64_t mul;
    } units[] = {{"", 1},        {"b", 1},         {"k", 1000},        {"kb", 1024},
                 {"m", 1000000}, {"mb", 1u << 20}, {"g", 1000000000u}, {"gb", 1u << 30}};
    size_t digits = 0;
    while (digits < n && p[digits] >= '0' && p[digits] <= '9')
        digits++;
    if (digits == 0 || digits > 19)
        return false;
    long long v;
    if (!resp_parse_ll(p, digits, &v) || v < 0)
        return false;
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        size_t ul = strlen(units[u].unit);
        if (ul != n - digits || strncasecmp(p + digits, units[u].unit, ul) != 0)
            continue;
        if ((uint64_t)v > UINT64_MAX / units[u].mul)
            return false;
        *out = (uint64_t)v * units[u].mul;
        return true;
    }
    return false;
}
