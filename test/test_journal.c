/* The journal (pith/journal.h): appends acknowledged in order after their sync, read back after
 * a restart, damage found and gone past, segments rolled over, the bound on what waits, and
 * faults (a failed sync, a short write, no room for a segment) as errors that lose nothing
 * acknowledged. Shards record into globals; only the test thread asserts. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

static char dir[64];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void dir_make(void)
{
    snprintf(dir, sizeof(dir), "/tmp/pith-journal-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void dir_remove(void)
{
    (void)nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- faults ---- */

static _Atomic int fault_op;      /* PITH_JOURNAL_OP_* to fail, 0: none */
static _Atomic int64_t fault_res; /* what it gets */
static _Atomic int fault_times;   /* how many more times */
static _Atomic uint64_t fault_hits;

static int64_t fault_fn(int op, uint64_t len, void *ctx)
{
    (void)ctx;
    (void)len;
    if (op != atomic_load(&fault_op) || atomic_load(&fault_times) <= 0)
        return 0;
    atomic_fetch_sub(&fault_times, 1);
    atomic_fetch_add(&fault_hits, 1);
    return atomic_load(&fault_res);
}

static uint64_t sync_every; /* the next engines' journal.sync_every_ns */

static void start_with(uint64_t seg_bytes, uint64_t pending_max, unsigned flags)
{
    pith_config_t cfg = test_config(1);
    cfg.journal.sync_every_ns = sync_every;
    cfg.journal.dir = dir;
    cfg.journal.segment_bytes = seg_bytes;
    cfg.journal.pending_max = pending_max;
    cfg.journal.flags = flags;
    cfg.journal.fault = fault_fn;
    test_start(&cfg);
}

static void start(void)
{
    start_with(0, 0, 0);
}

/* ---- appends on shard 0 ---- */

#define MAXREC 100000
static _Atomic uint64_t acked, failed, out_of_order, last_ok;
static _Atomic int last_err;

static void on_done(int err, uint64_t seq, void *ctx)
{
    (void)ctx;
    if (err == 0) {
        if (seq != atomic_load(&last_ok) + 1 && atomic_load(&last_ok) != 0)
            atomic_fetch_add(&out_of_order, 1);
        atomic_store(&last_ok, seq);
        atomic_fetch_add(&acked, 1);
    } else {
        atomic_store(&last_err, err);
        atomic_fetch_add(&failed, 1);
    }
}

/* The payload of record i: its length and bytes follow from i. */
static uint32_t payload(uint64_t i, unsigned char *buf)
{
    uint32_t len = (uint32_t)(i * 37 % 300);
    for (uint32_t k = 0; k < len; k++)
        buf[k] = (unsigned char)(i * 7 + k);
    return len;
}

struct appends {
    uint64_t from, n; /* records from..from+n (i numbers) */
    int err;          /* the first refusal */
    uint64_t done;    /* appended */
    uint64_t first_seq;
};

static void *append_fn(void *arg)
{
    struct appends *a = arg;
    unsigned char buf[512];
    for (uint64_t i = a->from; i < a->from + a->n; i++) {
        uint32_t len = payload(i, buf);
        uint64_t seq;
        int rc = pith_journal_append(i, (uint32_t)(i % 5), buf, len, on_done, NULL, &seq);
        if (rc != 0) {
            a->err = rc;
            break;
        }
        if (a->done++ == 0)
            a->first_seq = seq;
    }
    return NULL;
}

static struct appends append_on0(uint64_t from, uint64_t n)
{
    struct appends a = {.from = from, .n = n};
    cr_assert_eq(pith_call_wait(0, append_fn, &a, NULL), 0);
    return a;
}

static pith_journal_stats_t jstats(void)
{
    pith_journal_stats_t st;
    cr_assert_eq(pith_journal_stats(0, &st), 0);
    return st;
}

/* Records 0..want on shard 0 in tasks of 2,000, all acknowledged (a full segment refuses with
 * -EAGAIN while the next is made: the task stops there and the next goes on). */
static void append_across_segments(uint64_t want)
{
    for (uint64_t i = 0; i < want;) {
        struct appends a = append_on0(i, want - i < 2000 ? want - i : 2000);
        i += a.done;
        cr_assert(a.err == 0 || a.err == -EAGAIN, "append: %d", a.err);
    }
    TEST_WAIT_FOR(atomic_load(&acked) == want);
}

/* ---- reading back ---- */

struct scan {
    uint64_t from, n, bad, first, last;
};

static int scan_rec(const pith_journal_rec_t *r, void *ctx)
{
    struct scan *s = ctx;
    unsigned char buf[512];
    /* Record with seq q holds i = q - 1 + from_i (the tests number i from seq 1 on). */
    uint64_t i = r->stream;
    uint32_t len = payload(i, buf);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t now_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    if (r->len != len || memcmp(r->data, buf, len) != 0 || r->type != i % 5 ||
        (s->n > 0 && r->seq != s->last + 1) || r->time_ns == 0 || r->time_ns > now_ns)
        s->bad++;
    if (s->n++ == 0)
        s->first = r->seq;
    s->last = r->seq;
    return 0;
}

static void *scan_fn(void *arg)
{
    struct scan *s = arg;
    int rc = pith_journal_scan(s->from, scan_rec, s);
    if (rc != 0)
        s->bad = UINT64_MAX - (uint64_t)(-rc);
    return NULL;
}

static struct scan scan_on0(uint64_t from)
{
    struct scan s = {.from = from};
    cr_assert_eq(pith_call_wait(0, scan_fn, &s, NULL), 0);
    cr_assert_eq(s.bad, 0, "%llu records read back wrong", (unsigned long long)s.bad);
    return s;
}

static void reset_counts(void)
{
    atomic_store(&acked, 0);
    atomic_store(&failed, 0);
    atomic_store(&last_ok, 0);
    atomic_store(&out_of_order, 0);
    atomic_store(&last_err, 0);
}

/* ---- tests ---- */

Test(journal, crc32c_matches_the_published_check_value)
{
    cr_assert_eq(pith_crc32c(0, "123456789", 9), 0xe3069283u);
    /* In pieces, at odd alignments, the same. */
    char buf[1000];
    for (int i = 0; i < 1000; i++)
        buf[i] = (char)(i * 31 + 7);
    uint32_t whole = pith_crc32c(0, buf + 3, 997);
    uint32_t parts =
        pith_crc32c(pith_crc32c(pith_crc32c(0, buf + 3, 5), buf + 8, 500), buf + 508, 492);
    cr_assert_eq(whole, parts);
    cr_assert_eq(pith_crc32c(0, NULL, 0), 0);
}

static void failed_sync(unsigned flags);

static void in_order_and_read_back(unsigned flags)
{
    dir_make();
    reset_counts();
    start_with(0, 0, flags);
    uint64_t n = scaled(20000);
    struct appends a = append_on0(0, n);
    cr_assert_eq(a.err, 0, "append: %d", a.err);
    cr_assert_eq(a.first_seq, 1);
    TEST_WAIT_FOR(atomic_load(&acked) == n);
    cr_assert_eq(atomic_load(&failed), 0);
    cr_assert_eq(atomic_load(&out_of_order), 0);
    pith_journal_stats_t st = jstats();
    cr_assert(st.open);
    cr_assert_eq(st.durable_seq, n);
    cr_assert_eq(st.acked, n);
    cr_assert_eq(st.pending_bytes, 0);
    /* Group commit: appended in one task, they went in few writes. */
    cr_assert_leq(st.groups, 1 + n / 1000, "%llu groups for %llu records",
                  (unsigned long long)st.groups, (unsigned long long)n);
    if (flags & PITH_JOURNAL_NOSYNC)
        cr_assert_eq(st.syncs, 0);
    else if (sync_every != 0)
        cr_assert(st.syncs >= 1 && st.syncs <= st.groups, "%llu syncs for %llu groups",
                  (unsigned long long)st.syncs, (unsigned long long)st.groups);
    else
        cr_assert_geq(st.syncs, st.groups);
    struct scan s = scan_on0(1);
    cr_assert_eq(s.n, n);
    test_stop(NULL);

    /* A new engine reads them back, and goes on after them. */
    reset_counts();
    start_with(0, 0, flags);
    s = scan_on0(1);
    cr_assert_eq(s.n, n);
    cr_assert_eq(s.first, 1);
    cr_assert_eq(s.last, n);
    st = jstats();
    cr_assert_eq(st.recovered, n);
    cr_assert_eq(st.damaged_segment, UINT64_MAX);
    a = append_on0(n, 10);
    cr_assert_eq(a.first_seq, n + 1);
    TEST_WAIT_FOR(atomic_load(&acked) == 10);
    s = scan_on0(n - 5);
    cr_assert_eq(s.n, 16);
    test_stop(NULL);
    dir_remove();
}

Test(journal, appends_are_acknowledged_in_order_once_synced_and_read_back_after_a_restart,
     .timeout = 60)
{
    in_order_and_read_back(0);
}

Test(journal, without_syncs_records_are_acknowledged_once_written_and_read_back, .timeout = 60)
{
    in_order_and_read_back(PITH_JOURNAL_NOSYNC);
    in_order_and_read_back(PITH_JOURNAL_NOSYNC | PITH_JOURNAL_BUFFERED);
}

Test(journal, with_periodic_syncs_one_sync_covers_many_groups, .timeout = 60)
{
    sync_every = 20 * MS;
    in_order_and_read_back(0);
    /* The acknowledgements wait for the periodic sync: when it fails, so do they. */
    failed_sync(0);
    sync_every = 0;
}

Test(journal, the_same_with_buffered_writes_and_separate_fdatasyncs, .timeout = 60)
{
    in_order_and_read_back(PITH_JOURNAL_BUFFERED | PITH_JOURNAL_FDATASYNC);
    /* Each of the two, alone. */
    in_order_and_read_back(PITH_JOURNAL_FDATASYNC);
    in_order_and_read_back(PITH_JOURNAL_BUFFERED);
}

/* The last segment file of shard 0 and the offset of its last record (by reading it back). */
static int last_segment(char *path, size_t n)
{
    char d[128];
    snprintf(d, sizeof(d), "%s/shard-0", dir);
    int best = -1;
    for (int i = 0; i < 1000; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s/%08d.seg", d, i);
        if (access(p, F_OK) == 0)
            best = i;
    }
    snprintf(path, n, "%s/%08d.seg", d, best);
    return best;
}

/* Offset of the record with seq `want` in a segment, walking the headers. */
static long record_at(const char *path, uint64_t want)
{
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    long off = 0;
    for (;;) {
        unsigned char h[40];
        if (pread(fd, h, 40, off) != 40)
            break;
        uint32_t len;
        uint64_t seq;
        memcpy(&len, h + 4, 4);
        memcpy(&seq, h + 8, 8);
        if (seq == want) {
            close(fd);
            return off;
        }
        if (seq == 0)
            break;
        off += (long)((40 + len + 7) & ~7u);
    }
    close(fd);
    return -1;
}

Test(journal, a_damaged_record_stops_reading_back_there_and_later_appends_go_on_from_it,
     .timeout = 60)
{
    dir_make();
    reset_counts();
    start();
    append_on0(0, 100);
    TEST_WAIT_FOR(atomic_load(&acked) == 100);
    test_stop(NULL);

    /* A byte of record 90's payload flips (or its header tears). */
    char seg[200];
    cr_assert_geq(last_segment(seg, sizeof(seg)), 0);
    long off = record_at(seg, 90);
    cr_assert_geq(off, 0);
    int fd = open(seg, O_RDWR);
    unsigned char b;
    cr_assert_eq(pread(fd, &b, 1, off + 41), 1);
    b ^= 0x40;
    cr_assert_eq(pwrite(fd, &b, 1, off + 41), 1);
    close(fd);

    reset_counts();
    start();
    struct scan s = scan_on0(1);
    cr_assert_eq(s.n, 89, "read back %llu", (unsigned long long)s.n);
    pith_journal_stats_t st = jstats();
    cr_assert_eq(st.recovered, 89);
    cr_assert_eq(st.damaged_segment, 0);
    cr_assert_eq(st.damaged_offset, (uint64_t)off);
    /* Appends go on at 90, over the damage; the old 91..100 are gone for good. */
    struct appends a = append_on0(1000, 5);
    cr_assert_eq(a.first_seq, 90);
    TEST_WAIT_FOR(atomic_load(&acked) == 5);
    test_stop(NULL);

    reset_counts();
    start();
    s = scan_on0(1);
    cr_assert_eq(s.n, 94);
    cr_assert_eq(s.last, 94);
    st = jstats();
    cr_assert_eq(st.damaged_segment, UINT64_MAX, "the damage was overwritten");
    test_stop(NULL);
    dir_remove();
}

Test(journal, a_torn_tail_is_cut_where_it_tears, .timeout = 60)
{
    dir_make();
    reset_counts();
    start();
    append_on0(0, 50);
    TEST_WAIT_FOR(atomic_load(&acked) == 50);
    test_stop(NULL);
    char seg[200];
    last_segment(seg, sizeof(seg));
    long off = record_at(seg, 41);
    cr_assert_geq(off, 0);
    /* Everything from the middle of record 41's header on is zeros, as an unwritten tail is. */
    int fd = open(seg, O_RDWR);
    char zeros[8192] = {0};
    cr_assert_eq(pwrite(fd, zeros, sizeof(zeros), off + 16), (ssize_t)sizeof(zeros));
    close(fd);
    reset_counts();
    start();
    struct scan s = scan_on0(1);
    cr_assert_eq(s.n, 40);
    cr_assert_eq(jstats().damaged_segment, 0);
    test_stop(NULL);
    dir_remove();
}

Test(journal, records_roll_over_segments_and_read_back_across_them, .timeout = 120)
{
    dir_make();
    reset_counts();
    start_with(1 << 20, 0, 0);
    /* About 3.5 MiB of records in 1 MiB segments. */
    uint64_t want = 20000;
    append_across_segments(want);
    pith_journal_stats_t st;
    st = jstats();
    cr_assert_geq(st.segments, 4, "%llu segments", (unsigned long long)st.segments);
    test_stop(NULL);
    reset_counts();
    start_with(1 << 20, 0, 0);
    struct scan s = scan_on0(1);
    cr_assert_eq(s.n, want);
    cr_assert_eq(jstats().recovered, want);
    s = scan_on0(want - 100);
    cr_assert_eq(s.n, 101);
    test_stop(NULL);
    dir_remove();
}

/* Whether every byte of the file at path lies in written extents (not merely allocated ones):
 * 1 yes, 0 no (*why says where), -1 the file system cannot say (no FIEMAP). */
static int all_written(const char *path, char *why, size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    enum { N = 64 };
    struct fiemap *fm = calloc(1, sizeof(*fm) + N * sizeof(struct fiemap_extent));
    cr_assert_not_null(fm);
    uint64_t at = 0;
    int res = 1;
    while (at < (uint64_t)st.st_size && res == 1) {
        *fm = (struct fiemap){.fm_start = at,
                              .fm_length = (uint64_t)st.st_size - at,
                              .fm_flags = FIEMAP_FLAG_SYNC,
                              .fm_extent_count = N};
        if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0) {
            cr_assert(errno == EOPNOTSUPP || errno == ENOTTY, "FIEMAP: %s", strerror(errno));
            res = -1;
            break;
        }
        if (fm->fm_mapped_extents == 0) {
            snprintf(why, whylen, "%s: nothing mapped from %llu", path, (unsigned long long)at);
            res = 0;
            break;
        }
        for (uint32_t i = 0; i < fm->fm_mapped_extents && res == 1; i++) {
            const struct fiemap_extent *e = &fm->fm_extents[i];
            if (e->fe_logical > at || (e->fe_flags & FIEMAP_EXTENT_UNWRITTEN)) {
                snprintf(why, whylen, "%s: %s at %llu", path,
                         e->fe_logical > at ? "a hole" : "an unwritten extent",
                         (unsigned long long)at);
                res = 0;
            }
            at = e->fe_logical + e->fe_length;
        }
    }
    free(fm);
    close(fd);
    return res;
}

Test(journal, new_segments_are_written_with_zeros_so_a_sync_changes_no_metadata, .timeout = 60)
{
    dir_make();
    reset_counts();
    start_with(1 << 20, 0, 0);
    /* About 2 MiB of records in 1 MiB segments: the first segment is made at first use, the
     * next ones on the ring ahead of need. */
    uint64_t want = 12000;
    append_across_segments(want);
    cr_assert_geq(jstats().segments, 2);
    test_stop(NULL);
    char path[128];
    unsigned files = 0;
    for (unsigned k = 0; k < 8; k++) {
        snprintf(path, sizeof(path), "%s/shard-0/%08u.seg", dir, k);
        if (access(path, F_OK) != 0)
            continue;
        files++;
        char why[256] = "";
        int w = all_written(path, why, sizeof(why));
        if (w < 0) {
            dir_remove();
            cr_skip_test("the file system of %s does not map extents (FIEMAP)", dir);
        }
        cr_assert_eq(w, 1, "%s", why);
    }
    cr_assert_geq(files, 3, "%u segment files", files);
    /* What they hold reads back. */
    reset_counts();
    start_with(1 << 20, 0, 0);
    cr_assert_eq(scan_on0(1).n, want);
    test_stop(NULL);
    dir_remove();
}

Test(journal, what_waits_is_bounded_by_pending_max, .timeout = 60)
{
    dir_make();
    reset_counts();
    start_with(0, 64 << 10, 0);
    /* One task appends past 64 KiB before any write can end: refused with -EAGAIN. */
    struct appends a = append_on0(0, 5000);
    cr_assert_eq(a.err, -EAGAIN);
    cr_assert_lt(a.done, 5000);
    cr_assert_gt(a.done, 100);
    TEST_WAIT_FOR(atomic_load(&acked) == a.done);
    /* Once acknowledged, room again. */
    struct appends b = append_on0(a.done, 10);
    cr_assert_eq(b.err, 0);
    TEST_WAIT_FOR(atomic_load(&acked) == a.done + 10);
    test_stop(NULL);
    dir_remove();
}

static void failed_sync(unsigned flags)
{
    dir_make();
    reset_counts();
    start_with(0, 0, flags);
    append_on0(0, 30);
    TEST_WAIT_FOR(atomic_load(&acked) == 30);
    atomic_store(&fault_res, -EIO);
    atomic_store(&fault_times, 1);
    atomic_store(&fault_op, PITH_JOURNAL_OP_SYNC);
    append_on0(30, 20);
    TEST_WAIT_FOR(atomic_load(&failed) == 20);
    cr_assert_eq(atomic_load(&last_err), -EIO);
    cr_assert_eq(atomic_load(&acked), 30);
    struct appends a = append_on0(50, 1);
    cr_assert_eq(a.err, -EIO);
    pith_journal_stats_t st = jstats();
    cr_assert(st.failed);
    cr_assert_eq(st.failed_records, 20);
    atomic_store(&fault_op, 0);
    test_stop(NULL);
    /* What was acknowledged is there after a restart; the failed ones may or may not be (the
     * page cache had them), but nothing else. */
    reset_counts();
    start_with(0, 0, flags);
    struct scan s = scan_on0(1);
    cr_assert_geq(s.n, 30);
    cr_assert_leq(s.n, 50);
    test_stop(NULL);
    dir_remove();
}

Test(journal, a_failed_sync_fails_what_it_covered_and_the_journal_refuses_after, .timeout = 60)
{
    failed_sync(0);
    failed_sync(PITH_JOURNAL_FDATASYNC);
}

Test(journal, a_short_write_goes_on_and_loses_nothing, .timeout = 60)
{
    dir_make();
    reset_counts();
    start();
    atomic_store(&fault_res, 4096);
    atomic_store(&fault_times, 1);
    atomic_store(&fault_op, PITH_JOURNAL_OP_WRITE);
    append_on0(0, 500); /* about 90 KiB: the first write stops after one block */
    TEST_WAIT_FOR(atomic_load(&acked) == 500);
    cr_assert_eq(atomic_load(&fault_hits), 1);
    cr_assert_eq(atomic_load(&failed), 0);
    atomic_store(&fault_op, 0);
    test_stop(NULL);
    reset_counts();
    start();
    cr_assert_eq(scan_on0(1).n, 500);
    test_stop(NULL);
    dir_remove();
}

Test(journal, no_room_for_a_new_segment_is_enospc_and_the_next_try_makes_it, .timeout = 60)
{
    dir_make();
    reset_counts();
    start_with(1 << 20, 0, 0);
    atomic_store(&fault_res, -ENOSPC);
    atomic_store(&fault_times, 1000000);
    atomic_store(&fault_op, PITH_JOURNAL_OP_CREATE);
    /* Appends until the first segment is full: then -ENOSPC. */
    uint64_t i = 0;
    int err = 0;
    while (err == 0 && i < 100000) {
        struct appends a = append_on0(i, 1000);
        i += a.done;
        err = a.err;
    }
    cr_assert_eq(err, -ENOSPC);
    TEST_WAIT_FOR(atomic_load(&acked) == i);
    cr_assert_eq(atomic_load(&failed), 0, "nothing appended before failed");
    /* Room again: a later append gets a new segment (-EAGAIN while it is made). */
    atomic_store(&fault_op, 0);
    uint64_t before = i;
    err = -EAGAIN;
    for (int k = 0; k < 100000 && err != 0; k++) {
        struct appends a = append_on0(i, 1);
        i += a.done;
        err = a.err;
        cr_assert(err == 0 || err == -EAGAIN || err == -ENOSPC, "append: %d", err);
    }
    cr_assert_eq(err, 0);
    TEST_WAIT_FOR(atomic_load(&acked) == before + 1);
    test_stop(NULL);
    reset_counts();
    start_with(1 << 20, 0, 0);
    cr_assert_eq(scan_on0(1).n, before + 1);
    test_stop(NULL);
    dir_remove();
}

static void *errs_fn(void *arg)
{
    int *e = arg;
    e[0] = pith_journal_append(1, 1u << 31, "x", 1, NULL, NULL, NULL);
    e[1] = pith_journal_append(1, 1, NULL, 5, NULL, NULL, NULL);
    e[2] = pith_journal_append(1, 1, "x", 1, NULL, NULL, NULL);
    return NULL;
}

Test(journal, the_api_errors, .timeout = 30)
{
    /* Off the shards; and without a directory, on one. */
    cr_assert_eq(pith_journal_append(1, 1, "x", 1, NULL, NULL, NULL), -EPERM);
    unsetenv("PITH_JOURNAL_DIR");
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    int e[3];
    cr_assert_eq(pith_call_wait(0, errs_fn, e, NULL), 0);
    cr_assert_eq(e[2], -ENOTCONN);
    pith_journal_stats_t st;
    cr_assert_eq(pith_journal_stats(0, &st), 0);
    cr_assert(!st.open);
    cr_assert_eq(pith_journal_stats(1, &st), -EINVAL);
    test_stop(NULL);
    dir_make();
    start();
    cr_assert_eq(pith_call_wait(0, errs_fn, e, NULL), 0);
    cr_assert_eq(e[0], -EINVAL);
    cr_assert_eq(e[1], -EINVAL);
    cr_assert_eq(e[2], 0);
    test_stop(NULL);
    cfg.journal.segment_bytes = 12345;
    cr_assert_eq(pith_engine_start(&cfg), -EINVAL);
    cfg.journal.segment_bytes = 0;
    cfg.journal.flags = PITH_JOURNAL_NOSYNC;
    cfg.journal.sync_every_ns = MS;
    cr_assert_eq(pith_engine_start(&cfg), -EINVAL);
    dir_remove();
}

/* Files in the shard's directory: segments and spares. */
static unsigned files_in_dir(void)
{
    char d[128];
    snprintf(d, sizeof(d), "%s/shard-0", dir);
    unsigned n = 0;
    for (int i = 0; i < 10000; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s/%08d.seg", d, i);
        n += access(p, F_OK) == 0;
        snprintf(p, sizeof(p), "%s/%08d.spare", d, i);
        n += access(p, F_OK) == 0;
    }
    return n;
}

static void *release_fn(void *arg)
{
    uint64_t *upto = arg;
    pith_journal_stats_t st;
    (void)pith_journal_stats(0, &st);
    int rc = pith_journal_release(st.durable_seq);
    *upto = rc == 0 ? st.durable_seq : 0;
    if (rc == 0 && pith_journal_release(st.durable_seq + 1) != -EINVAL)
        *upto = 0; /* past the durable end is refused */
    return NULL;
}

Test(journal, released_records_keep_the_files_bounded_under_a_steady_load, .timeout = 120)
{
    dir_make();
    reset_counts();
    start_with(1 << 20, 0, 0);
    /* 24 rounds of about 0.7 MiB, each then released: 17 MiB in 1 MiB segments. */
    uint64_t i = 0, upto = 0, most = 0;
    for (int round = 0; round < 24; round++) {
        uint64_t want = i + 4000;
        while (i < want) {
            struct appends a = append_on0(i, want - i);
            i += a.done;
            cr_assert(a.err == 0 || a.err == -EAGAIN, "append: %d", a.err);
        }
        TEST_WAIT_FOR(atomic_load(&acked) == i);
        cr_assert_eq(pith_call_wait(0, release_fn, &upto, NULL), 0);
        cr_assert_gt(upto, 0, "pith_journal_release");
        test_sync_all(); /* the renames run on the shard's ring */
        unsigned n = files_in_dir();
        most = n > most ? n : most;
    }
    pith_journal_stats_t st = jstats();
    cr_assert_gt(st.released, 10, "%llu segments released", (unsigned long long)st.released);
    cr_assert_gt(st.recycled, 5, "%llu segments made from spares", (unsigned long long)st.recycled);
    cr_assert_leq(most, 5, "%llu files at most in the directory", (unsigned long long)most);
    test_stop(NULL);
    /* After a restart the records not released are there, whole and in order, from where
     * the first kept segment begins; none past the last. */
    reset_counts();
    start_with(1 << 20, 0, 0);
    struct scan s = scan_on0(1);
    cr_assert_gt(s.n, 0);
    cr_assert_eq(s.last, i);
    cr_assert_gt(s.first, 1, "released records came back");
    struct appends a = append_on0(i, 10);
    cr_assert_eq(a.first_seq, i + 1);
    TEST_WAIT_FOR(atomic_load(&acked) == 10);
    test_stop(NULL);
    dir_remove();
}

/* Records as large as a segment allows (a quarter of it: 16 MiB of 64), alone past pending_max
 * and past the journal's group and read buffers: appended, acknowledged, read back. */
static unsigned char *big_buf;
#define BIG (16u << 20)

static void *big_fn(void *arg)
{
    int *rc = arg;
    rc[0] = pith_journal_append(7, 1, big_buf, BIG, on_done, NULL, NULL);
    rc[1] = pith_journal_append(8, 1, big_buf, BIG + 1, NULL, NULL, NULL);
    return NULL;
}

static int big_rec(const pith_journal_rec_t *r, void *ctx)
{
    int *seen = ctx;
    if (r->stream == 7 && r->len == BIG && memcmp(r->data, big_buf, BIG) == 0)
        (*seen)++;
    else
        *seen = -1000;
    return 0;
}

static void *big_scan_fn(void *arg)
{
    int *seen = arg;
    if (pith_journal_scan(1, big_rec, seen) != 0)
        *seen = -2000;
    return NULL;
}

Test(journal, a_record_of_a_quarter_segment_goes_alone_and_comes_back, .timeout = 60)
{
    dir_make();
    reset_counts();
    big_buf = malloc(BIG);
    cr_assert_not_null(big_buf);
    for (uint32_t k = 0; k < BIG; k++)
        big_buf[k] = (unsigned char)(k * 131 + (k >> 12));
    start_with(0, 1 << 20, 0); /* 64 MiB segments; pending_max 1 MiB, less than the record */
    int rc[2];
    cr_assert_eq(pith_call_wait(0, big_fn, rc, NULL), 0);
    cr_assert_eq(rc[0], 0, "append of 16 MiB: %d", rc[0]);
    cr_assert_eq(rc[1], -EINVAL, "append past a quarter segment: %d", rc[1]);
    TEST_WAIT_FOR(atomic_load(&acked) == 1);
    test_stop(NULL);
    start_with(0, 1 << 20, 0);
    int seen = 0;
    cr_assert_eq(pith_call_wait(0, big_scan_fn, &seen, NULL), 0);
    cr_assert_eq(seen, 1, "read back: %d", seen);
    cr_assert_eq(jstats().damaged_segment, UINT64_MAX);
    test_stop(NULL);
    free(big_buf);
    dir_remove();
}
