/* The journal (pith/journal.h) beside what the file system gives without it, in the same
 * directory: a write and fdatasync of 128 B (the floor of a durable record), one record at a
 * time through the journal, records per second with group commit against one fdatasync per
 * record, reading records back, and CRC32C against a byte-at-a-time table. The directory is
 * $PITH_BENCH_DIR, else /var/tmp; its file system is named in the notes. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "bench.h"

#define REC_BYTES 100u
#define INFLIGHT  10000u /* records outstanding in the throughput rows ("10k actors") */

static char bdir[256];

static const char *fs_name(const char *path)
{
    struct statfs sf;
    if (statfs(path, &sf) != 0)
        return "unknown";
    switch ((unsigned long)sf.f_type) {
    case 0xEF53:
        return "ext4";
    case 0x58465342:
        return "xfs";
    case 0x9123683E:
        return "btrfs";
    case 0x01021994:
        return "tmpfs (fdatasync is free there: figures mean nothing)";
    default:
        return "other";
    }
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A fresh directory for one row. */
static int dir_make(char *why, size_t whylen)
{
    const char *base = getenv("PITH_BENCH_DIR");
    snprintf(bdir, sizeof(bdir), "%s/pith-bench-journal-XXXXXX", base != NULL ? base : "/var/tmp");
    if (mkdtemp(bdir) == NULL) {
        snprintf(why, whylen, "mkdtemp %s: %s", bdir, strerror(errno));
        return -errno;
    }
    return 0;
}

static void dir_drop(void)
{
    (void)nftw(bdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the floor: write + fdatasync from a thread ---- */

/* Each of n records of `len` bytes written at the next offset of a preallocated file, then
 * fdatasync; samples of each pair's time. Returns 0 or -errno. */
static int raw_sync_loop(uint64_t n, uint32_t len, samples_t *s, uint64_t *total_ns)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/raw", bdir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (fallocate(fd, 0, 0, (off_t)(n * len + 4096)) != 0 || fsync(fd) != 0)
        rc = -errno;
    char buf[512];
    memset(buf, 0x5a, sizeof(buf));
    uint64_t t0 = bench_clock_ns();
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        uint64_t a = bench_clock_ns();
        if (pwrite(fd, buf, len, (off_t)(i * len)) != (ssize_t)len || fdatasync(fd) != 0) {
            rc = -errno;
            break;
        }
        if (s != NULL)
            samples_add(s, (int64_t)(bench_clock_ns() - a));
        bench_progress(i + 1, n); /* a store an fdatasync */
    }
    *total_ns = bench_clock_ns() - t0;
    close(fd);
    return rc;
}

int bench_raw_fdatasync(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    (void)env;
    samples_t s;
    if (samples_init(&s, n) != 0 || dir_make(why, whylen) != 0) {
        snprintf(why, whylen, "set-up failed");
        return BENCH_FAIL;
    }
    uint64_t ns;
    int rc = raw_sync_loop(n, 128, &s, &ns);
    if (rc == 0) {
        samples_sort(&s);
        result_set_pcts(r, &s);
        result_set_hist(r, &s, 1);
        r->value = r->p50;
        bench_note("%s: %llu times pwrite(2) of 128 B at the next offset of a preallocated file "
                   "and fdatasync(2), from one thread, in %s (%s)",
                   r->name, (unsigned long long)n, bdir, fs_name(bdir));
    } else {
        snprintf(why, whylen, "write/fdatasync: %s", strerror(-rc));
    }
    samples_free(&s);
    dir_drop();
    return rc == 0 ? 0 : BENCH_FAIL;
}

int bench_raw_fsync_each(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    (void)env;
    if (dir_make(why, whylen) != 0)
        return BENCH_FAIL;
    const char *fs = fs_name(bdir);
    uint64_t ns;
    int rc = raw_sync_loop(n, REC_BYTES, NULL, &ns);
    dir_drop();
    if (rc != 0) {
        snprintf(why, whylen, "write/fdatasync: %s", strerror(-rc));
        return BENCH_FAIL;
    }
    r->value = (double)n / ((double)ns / 1e9);
    bench_note("%s: %llu events of %u B, each pwrite(2) then fdatasync(2), one thread, in %s "
               "(%s)",
               r->name, (unsigned long long)n, REC_BYTES, bdir, fs);
    return 0;
}

/* ---- through the journal ---- */

struct jrun {
    uint64_t n, depth;   /* records in all; in flight at once */
    uint64_t sent, done; /* appended; acknowledged */
    uint64_t *t_app;     /* [depth] append time of the record in each slot, for samples */
    samples_t *s;
    uint64_t t0, t1;
    int err;
    sem_t fin;
};

static struct jrun jr;
static unsigned char payload[REC_BYTES];

static void append_one(uint64_t slot);

static void on_ack(int err, uint64_t seq, void *ctx)
{
    (void)seq;
    uint64_t slot = (uint64_t)(uintptr_t)ctx;
    if (err != 0 && jr.err == 0)
        jr.err = err;
    if (jr.s != NULL)
        samples_add(jr.s, (int64_t)(pith_now_ns() - jr.t_app[slot]));
    if (++jr.done == jr.n) {
        jr.t1 = pith_now_ns();
        sem_post(&jr.fin);
        return;
    }
    if (jr.err == 0 && jr.sent < jr.n)
        append_one(slot);
}

static void append_one(uint64_t slot)
{
    jr.t_app[slot] = pith_now_ns();
    int rc =
        pith_journal_append(jr.sent, 1, payload, REC_BYTES, on_ack, (void *)(uintptr_t)slot, NULL);
    if (rc != 0) {
        if (jr.err == 0)
            jr.err = rc;
        sem_post(&jr.fin);
        return;
    }
    jr.sent++;
}

static int scan_none(const pith_journal_rec_t *rec, void *ctx)
{
    (void)rec;
    (void)ctx;
    return 0;
}

static void *start_fn(void *arg)
{
    (void)arg;
    /* The journal's first use (reading back, making its first segment) is not timed: a scan
     * of nothing opens it. */
    int rc = pith_journal_scan(UINT64_MAX, scan_none, NULL);
    if (rc != 0) {
        jr.err = rc;
        sem_post(&jr.fin);
        return NULL;
    }
    jr.t0 = pith_now_ns();
    for (uint64_t i = 0; i < jr.depth && jr.sent < jr.n && jr.err == 0; i++)
        append_one(i);
    return NULL;
}

/* n records of REC_BYTES on shard 0, depth in flight; engine started and stopped here. */
static int journal_run(const bench_env_t *env, uint64_t n, uint64_t depth, unsigned flags,
                       samples_t *s, pith_journal_stats_t *st, char *why, size_t whylen)
{
    memset(&jr, 0, sizeof(jr));
    jr.n = n;
    jr.depth = depth;
    jr.s = s;
    jr.t_app = calloc(depth, sizeof(*jr.t_app));
    sem_init(&jr.fin, 0, 0);
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    cfg.journal.dir = bdir;
    cfg.journal.flags = flags;
    int rc = jr.t_app != NULL ? bench_engine_start(&cfg, why, whylen) : -ENOMEM;
    if (rc != 0) {
        free(jr.t_app);
        return -1;
    }
    rc = pith_call_wait(0, start_fn, NULL, NULL);
    if (rc == 0)
        rc = bench_wait(env, &jr.fin);
    if (rc == 0)
        rc = jr.err;
    if (st != NULL)
        (void)pith_journal_stats(0, st);
    bench_engine_stop("journal");
    free(jr.t_app);
    if (rc != 0)
        snprintf(why, whylen, "%s", pith_strerror(rc));
    return rc;
}

int bench_journal_persist(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    /* In the same kind of directory, in turn: the floor, then the default (O_DIRECT writes
     * with RWF_DSYNC), buffered writes, and O_DIRECT writes each followed by an fdatasync. */
    static const unsigned modes[3] = {0, PITH_JOURNAL_BUFFERED, PITH_JOURNAL_FDATASYNC};
    samples_t s[4];
    for (int i = 0; i < 4; i++)
        if (samples_init(&s[i], n) != 0) {
            snprintf(why, whylen, "out of memory");
            return BENCH_FAIL;
        }
    pith_journal_stats_t st[3];
    uint64_t ns;
    int rc = dir_make(why, whylen);
    const char *fs = rc == 0 ? fs_name(bdir) : "";
    if (rc == 0 && (rc = raw_sync_loop(n, 128, &s[0], &ns)) != 0)
        snprintf(why, whylen, "write/fdatasync: %s", strerror(-rc));
    for (int m = 0; m < 3 && rc == 0; m++) {
        dir_drop();
        if ((rc = dir_make(why, whylen)) == 0)
            rc = journal_run(env, n, 1, modes[m], &s[m + 1], &st[m], why, whylen);
    }
    dir_drop();
    double p50[4] = {0}, p99[4] = {0};
    for (int i = 0; i < 4 && rc == 0; i++) {
        samples_sort(&s[i]);
        samples_pct(&s[i], 0.5, &p50[i]);
        samples_pct(&s[i], 0.99, &p99[i]);
    }
    if (rc == 0) {
        result_set_pcts(r, &s[1]);
        result_set_hist(r, &s[1], 1);
        r->value = r->p50;
        bench_note("%s: %llu records of %u B, one at a time (the next appended from the last "
                   "one's acknowledgement) on shard 0 of %u, from pith_journal_append to the "
                   "acknowledgement; in the same kind of directory (%s) the floor, pwrite + "
                   "fdatasync of 128 B: p50 %.0f, p99 %.0f ns",
                   r->name, (unsigned long long)n, REC_BYTES, env->shards, fs, p50[0], p99[0]);
        bench_note("%s: p50 / p99 / p99 over the floor's p99 (the goal is <= 1.5x): O_DIRECT "
                   "(%s) writes with RWF_DSYNC, the default and the value: %.0f / %.0f ns / "
                   "%.2fx; buffered writes with RWF_DSYNC: %.0f / %.0f / %.2fx; O_DIRECT writes "
                   "then fdatasync: %.0f / %.0f / %.2fx",
                   r->name, st[0].direct ? "granted" : "refused: buffered", p50[1], p99[1],
                   p99[1] / p99[0], p50[2], p99[2], p99[2] / p99[0], p50[3], p99[3],
                   p99[3] / p99[0]);
    }
    for (int i = 0; i < 4; i++)
        samples_free(&s[i]);
    return rc == 0 ? 0 : BENCH_FAIL;
}

int bench_journal_events(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    pith_journal_stats_t st[2];
    double rate[2] = {0};
    int rc = 0;
    for (int mode = 0; mode < 2 && rc == 0; mode++) {
        if ((rc = dir_make(why, whylen)) != 0)
            break;
        rc = journal_run(env, n, INFLIGHT, mode ? PITH_JOURNAL_BUFFERED : 0, NULL, &st[mode], why,
                         whylen);
        dir_drop();
        if (rc == 0)
            rate[mode] = (double)n / ((double)(jr.t1 - jr.t0) / 1e9);
    }
    if (rc != 0)
        return BENCH_FAIL;
    r->value = rate[0];
    bench_note("%s: %llu records of %u B on shard 0 of %u, %u in flight (each acknowledgement "
               "appends the next), O_DIRECT: %.0f records/s in %llu groups (%.0f records a "
               "group, %llu syncs); buffered: %.0f records/s in %llu groups; the goal is >= 1M "
               "a second on a shard; baseline raw.fsync_each_per_s (an fdatasync per record)",
               r->name, (unsigned long long)n, REC_BYTES, env->shards, INFLIGHT, rate[0],
               (unsigned long long)st[0].groups,
               st[0].groups ? (double)n / (double)st[0].groups : 0.0,
               (unsigned long long)st[0].syncs, rate[1], (unsigned long long)st[1].groups);
    return 0;
}

/* ---- reading back ---- */

struct replay {
    uint64_t n, bytes, t0, t1, t_open0, t_open1;
    pith_journal_stats_t st;
    int err;
};

static int count_rec(const pith_journal_rec_t *rec, void *ctx)
{
    struct replay *p = ctx;
    p->n++;
    p->bytes += rec->len;
    return 0;
}

static void *replay_fn(void *arg)
{
    struct replay *p = arg;
    /* The first call opens the journal: it reads every segment back (CRC included). */
    p->t_open0 = pith_now_ns();
    p->err = pith_journal_stats(0, &p->st);
    int rc = pith_journal_scan(UINT64_MAX, count_rec, p);
    p->t_open1 = pith_now_ns();
    if (rc == 0) {
        p->t0 = pith_now_ns();
        rc = pith_journal_scan(1, count_rec, p);
        p->t1 = pith_now_ns();
    }
    if (rc != 0)
        p->err = rc;
    return NULL;
}

int bench_journal_replay(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    if (dir_make(why, whylen) != 0)
        return BENCH_FAIL;
    int rc = journal_run(env, n, INFLIGHT, 0, NULL, NULL, why, whylen);
    struct replay p = {0};
    if (rc == 0) {
        pith_config_t cfg;
        pith_config_init(&cfg);
        cfg.shards = (int)env->shards;
        cfg.journal.dir = bdir;
        rc = bench_engine_start(&cfg, why, whylen);
        if (rc == 0) {
            rc = pith_call_wait(0, replay_fn, &p, NULL);
            if (rc == 0)
                rc = p.err;
            if (rc == 0)
                rc = pith_journal_stats(0, &p.st);
            bench_engine_stop(r->name);
        }
        if (rc != 0 && why[0] == '\0')
            snprintf(why, whylen, "%s", pith_strerror(rc));
    }
    dir_drop();
    if (rc != 0)
        return BENCH_FAIL;
    if (p.n != n || p.st.recovered != n) {
        snprintf(why, whylen, "read back %llu of %llu (recovered %llu)", (unsigned long long)p.n,
                 (unsigned long long)n, (unsigned long long)p.st.recovered);
        return BENCH_FAIL;
    }
    double scan_s = (double)(p.t1 - p.t0) / 1e9, open_s = (double)(p.t_open1 - p.t_open0) / 1e9;
    r->value = (double)n / scan_s;
    bench_note("%s: %llu records of %u B written as journal.events_per_s writes them, then a new "
               "engine: its first use read them all back (segments scanned, CRCs checked) in "
               "%.3f s, %.0f records/s; pith_journal_scan then delivered them in %.3f s (the "
               "value; from the page cache); the goal is >= 5M a second on a shard",
               r->name, (unsigned long long)n, REC_BYTES, open_s, (double)n / open_s, scan_s);
    return 0;
}

/* ---- CRC32C ---- */

static uint32_t bytewise_table[256];

static uint32_t crc_bytewise(uint32_t crc, const unsigned char *p, size_t len)
{
    crc = ~crc;
    while (len-- > 0)
        crc = (crc >> 8) ^ bytewise_table[(crc ^ *p++) & 0xff];
    return ~crc;
}

static int crc_run(bool lib, uint64_t n, double *gbps, uint32_t *out)
{
    if (bytewise_table[1] == 0) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
            bytewise_table[i] = c;
        }
    }
    static unsigned char buf[4096];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)(i * 131 + 7);
    uint32_t c = 0;
    uint64_t t0 = bench_clock_ns();
    for (uint64_t i = 0; i < n; i++)
        c = lib ? pith_crc32c(c, buf, sizeof(buf)) : crc_bytewise(c, buf, sizeof(buf));
    uint64_t ns = bench_clock_ns() - t0;
    *gbps = (double)n * sizeof(buf) / (double)ns;
    *out = c;
    return 0;
}

int bench_raw_crc32c_bytewise(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen)
{
    (void)env;
    (void)why;
    (void)whylen;
    uint32_t c;
    crc_run(false, n, &r->value, &c);
    bench_note("%s: CRC32C of %llu buffers of 4 KiB, one byte a step through one 256-word table "
               "(the plain way; result %08x)",
               r->name, (unsigned long long)n, c);
    return 0;
}

int bench_journal_crc32c(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    (void)env;
    uint32_t c;
    crc_run(true, n, &r->value, &c);
    pith_journal_stats_t st = {0};
    (void)pith_journal_stats(0, &st); /* no engine: -ESHUTDOWN, crc_hw still filled */
    static const unsigned char probe[] = "the journal's records, framed";
    if (pith_crc32c(0, probe, sizeof(probe)) != crc_bytewise(0, probe, sizeof(probe))) {
        snprintf(why, whylen, "pith_crc32c and the table disagree");
        return BENCH_FAIL;
    }
    bench_note("%s: pith_crc32c over %llu buffers of 4 KiB, %s (result %08x)", r->name,
               (unsigned long long)n,
               st.crc_hw ? "the SSE4.2 crc32 instruction, 8 bytes a step"
                         : "no CRC instruction: slicing-by-8 tables",
               c);
    return 0;
}

/* ---- for bench_persist.c: the same directory and floor ---- */

int bench_jdir_make(char *why, size_t whylen)
{
    return dir_make(why, whylen);
}

void bench_jdir_drop(void)
{
    dir_drop();
}

const char *bench_jdir(void)
{
    return bdir;
}

const char *bench_jdir_fs(void)
{
    return fs_name(bdir);
}

int bench_jraw_sync(uint64_t n, uint32_t len, samples_t *s, uint64_t *total_ns)
{
    return raw_sync_loop(n, len, s, total_ns);
}
