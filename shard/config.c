/* Engine configuration: defaults, environment overrides, validation with a readable reason. */
#include "shard.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static __thread char last_error[256];

const char *pith_last_error(void)
{
    return last_error;
}

void set_last_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
}

void pith_config_init(pith_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->shards = PITH_AUTO;
    cfg->batch_msgs = 64;
    cfg->ring_batches = 256;
    cfg->backlog_batches = 64;
    cfg->budget = 256;
    cfg->local_queue_max = 1u << 20;
    cfg->lane_slots = 512;
    cfg->poll_ns = 50000;
    cfg->stall_ns = 20000000;
    cfg->drain_ns = 1000000000;
    cfg->io_entries = 256;
    cfg->net_bufs = 256;
    cfg->net_buf_size = 16384;
}

/* Parses a CPU list such as "0-3,8,10" into a new array. */
static int parse_cpu_list(const char *text, unsigned **out, unsigned *count)
{
    unsigned cap = 16, n = 0;
    unsigned *cpus = malloc(cap * sizeof(*cpus));
    if (cpus == NULL)
        return -ENOMEM;
    const char *p = text;
    while (*p) {
        char *end;
        if (!isdigit((unsigned char)*p))
            goto bad;
        unsigned long lo = strtoul(p, &end, 10), hi = lo;
        p = end;
        if (*p == '-') {
            p++;
            if (!isdigit((unsigned char)*p))
                goto bad;
            hi = strtoul(p, &end, 10);
            p = end;
        }
        if (hi < lo || hi >= 1u << 20)
            goto bad;
        for (unsigned long c = lo; c <= hi; c++) {
            if (n == MAX_SHARDS)
                goto bad;
            if (n == cap) {
                unsigned *grown = realloc(cpus, (cap *= 2) * sizeof(*cpus));
                if (grown == NULL) {
                    free(cpus);
                    return -ENOMEM;
                }
                cpus = grown;
            }
            cpus[n++] = (unsigned)c;
        }
        if (*p == ',')
            p++;
        else if (*p != '\0')
            goto bad;
    }
    if (n == 0)
        goto bad;
    *out = cpus;
    *count = n;
    return 0;
bad:
    free(cpus);
    return -EINVAL;
}

static int parse_shards(const char *text, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < 0 || v > MAX_SHARDS)
        return -EINVAL;
    *out = (int)v;
    return 0;
}

static bool pow2(unsigned v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

int config_resolve(struct engine *e, const pith_config_t *user)
{
    pith_config_t c;
    if (user)
        c = *user;
    else
        pith_config_init(&c);

    const char *env = getenv("PITH_SHARDS");
    if (c.shards == PITH_AUTO && env != NULL && *env != '\0') {
        if (parse_shards(env, &c.shards) != 0) {
            set_last_error("PITH_SHARDS=\"%s\" is not a shard count (1..%d)", env, MAX_SHARDS);
            return -EINVAL;
        }
        if (c.shards == 0) {
            set_last_error("PITH_SHARDS=0: an engine needs at least one shard");
            return -EINVAL;
        }
    }
    if (c.shards == 0 || c.shards < PITH_AUTO || c.shards > MAX_SHARDS) {
        set_last_error("shards = %d: give 1..%d, or PITH_AUTO", c.shards, MAX_SHARDS);
        return -EINVAL;
    }

    unsigned *cpus = NULL, ncpus = 0;
    const char *envc = getenv("PITH_CPUS");
    if (c.cpus != NULL) {
        if (c.ncpus == 0 || c.ncpus > MAX_SHARDS) {
            set_last_error("ncpus = %u: give 1..%d CPUs", c.ncpus, MAX_SHARDS);
            return -EINVAL;
        }
        cpus = malloc(c.ncpus * sizeof(*cpus));
        if (cpus == NULL)
            return -ENOMEM;
        memcpy(cpus, c.cpus, c.ncpus * sizeof(*cpus));
        ncpus = c.ncpus;
    } else if (envc != NULL && *envc != '\0') {
        int err = parse_cpu_list(envc, &cpus, &ncpus);
        if (err) {
            set_last_error("PITH_CPUS=\"%s\" is not a CPU list like \"0-3,8\"", envc);
            return err;
        }
    } else {
        int err = topo_default_cpus(e, &cpus, &ncpus);
        if (err) {
            char usable[128];
            topo_usable_list(e, usable, sizeof(usable));
            set_last_error("found no CPU to run shards on (this process may use: \"%s\")", usable);
            return err;
        }
    }
    for (unsigned i = 0; i < ncpus; i++) {
        const char *what = c.cpus ? "cpus" : "PITH_CPUS";
        unsigned bad = cpus[i];
        if (!topo_cpu_exists(e, bad)) {
            free(cpus);
            set_last_error("%s: CPU %u does not exist on this machine (%ld online)", what, bad,
                           sysconf(_SC_NPROCESSORS_ONLN));
            return -EINVAL;
        }
        if (!topo_cpu_usable(e, bad)) {
            char usable[128];
            topo_usable_list(e, usable, sizeof(usable));
            free(cpus);
            set_last_error("%s: CPU %u is outside the CPUs this process may use (%s)", what, bad,
                           usable);
            return -EINVAL;
        }
    }
    if (c.shards == PITH_AUTO)
        c.shards = (int)ncpus;

    const char *why = NULL;
    if (c.batch_msgs == 0 || c.batch_msgs > 65536)
        why = "batch_msgs must be 1..65536";
    else if (!pow2(c.ring_batches) || c.ring_batches < 4 || c.ring_batches > (1u << 24))
        why = "ring_batches must be a power of two, 4..2^24";
    else if (c.backlog_batches == 0)
        why = "backlog_batches must be at least 1";
    else if (c.budget == 0)
        why = "budget must be at least 1";
    else if (c.local_queue_max < 1024)
        why = "local_queue_max must be at least 1024";
    else if (!pow2(c.lane_slots) || c.lane_slots < 16 || c.lane_slots > 65536)
        why = "lane_slots must be a power of two, 16..65536";
    else if (c.io_entries == 0 || c.io_entries > 4096)
        why = "io_entries must be 1..4096";
    else if (c.net_bufs != 0 && (!pow2(c.net_bufs) || c.net_bufs > 32768))
        why = "net_bufs must be a power of two, 1..32768";
    else if (c.net_buf_size != 0 && (c.net_buf_size < 64 || c.net_buf_size > (1u << 20)))
        why = "net_buf_size must be 64..1048576";
    const char *jdir = c.journal.dir != NULL ? c.journal.dir : getenv("PITH_JOURNAL_DIR");
    if (jdir != NULL && jdir[0] == '\0')
        jdir = NULL;
    if (c.journal.segment_bytes == 0)
        c.journal.segment_bytes = 64ull << 20;
    if (c.journal.pending_max == 0)
        c.journal.pending_max = 16ull << 20;
    if (!why && (c.journal.segment_bytes < (1ull << 20) || c.journal.segment_bytes > (1ull << 30) ||
                 c.journal.segment_bytes % 4096 != 0))
        why = "journal.segment_bytes must be a multiple of 4096, 1 MiB..1 GiB";
    else if (!why && c.journal.pending_max < (64u << 10))
        why = "journal.pending_max must be at least 64 KiB";
    else if (!why && (c.journal.flags &
                      ~(PITH_JOURNAL_BUFFERED | PITH_JOURNAL_FDATASYNC | PITH_JOURNAL_NOSYNC)) != 0)
        why = "journal.flags has an unknown bit";
    else if (!why && (c.journal.flags & PITH_JOURNAL_NOSYNC) && c.journal.sync_every_ns != 0)
        why = "journal.sync_every_ns and PITH_JOURNAL_NOSYNC exclude each other";
    if (why) {
        free(cpus);
        set_last_error("%s", why);
        return -EINVAL;
    }
    char *jcopy = NULL;
    if (jdir != NULL && (jcopy = strdup(jdir)) == NULL) {
        free(cpus);
        return -ENOMEM;
    }
    c.journal.dir = jcopy;
    char mem_why[200];
    int err = mem_config_resolve(&c.mem, (unsigned)c.shards, mem_why, sizeof(mem_why));
    if (err) {
        free(cpus);
        free(jcopy);
        set_last_error("%s", mem_why);
        return err;
    }

    if (c.net_bufs == 0)
        c.net_bufs = 256;
    if (c.net_buf_size == 0)
        c.net_buf_size = 16384;
    c.cpus = cpus;
    c.ncpus = ncpus;
    e->cfg = c;
    e->cpu_list = cpus;
    e->n = (unsigned)c.shards;
    return 0;
}
