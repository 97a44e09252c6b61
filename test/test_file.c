/* Files on the shards' rings (pith/file.h): a chain of open, writes, syncs, readv, statx, close
 * and unlink; the errors the kernel gives and those the calls give at once; linked timeouts;
 * cancel; outcomes as actor messages; operations in flight at engine stop and calls from an
 * actor's terminate then; registered buffers; and hundreds of operations in flight per shard.
 * Outcomes run on shard threads and are recorded in structs that the test thread checks afterwards:
 * nothing asserts on a shard thread. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <pith/file.h>

#include "util.h"

/* ---- helpers ---- */

/* Each test's own directory under /tmp, made by the .init fixture and emptied and removed by
 * the .fini one, or at exit when a failed assertion skips .fini (the TSan shim). */
static char tmpdir[64];

static void tmp_cleanup(void);

static void tmp_setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pith-file-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
    atexit(tmp_cleanup);
}

static void tmp_cleanup(void)
{
    if (tmpdir[0] == '\0')
        return;
    DIR *d = opendir(tmpdir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(tmpdir);
    tmpdir[0] = '\0';
}

static void tmp_path(char *out, size_t size, const char *name)
{
    int n = snprintf(out, size, "%s/%s", tmpdir, name);
    cr_assert(n > 0 && (size_t)n < size, "path %s/%s too long", tmpdir, name);
}

/* open(2) of a file in the test's directory, from the test thread. */
static int tmp_open(const char *name, int flags)
{
    char path[128];
    tmp_path(path, sizeof path, name);
    int fd = open(path, flags | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "open(%s): %s", path, strerror(errno));
    return fd;
}

/* A file of `len` bytes from `data`, written with plain system calls; returns a descriptor
 * opened with `flags`. */
static int tmp_file(const char *name, const void *data, size_t len, int flags)
{
    int fd = tmp_open(name, O_CREAT | O_WRONLY | O_TRUNC);
    cr_assert_eq(write(fd, data, len), (ssize_t)len, "write: %s", strerror(errno));
    cr_assert_eq(close(fd), 0);
    return tmp_open(name, flags);
}

static void make_pipe(int p[2])
{
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
}

static void close_pipe(int p[2])
{
    close(p[0]);
    close(p[1]);
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 24);
    }
}

static void *call_on(unsigned shard, pith_call_fn_t fn, void *arg)
{
    void *res = NULL;
    int rc = pith_call_wait(shard, fn, arg, &res);
    cr_assert_eq(rc, 0, "pith_call_wait(%u): %d (%s)", shard, rc, pith_strerror(rc));
    return res;
}

/* fn run on `shard`, returning an int: its value. */
static int call_rc(unsigned shard, pith_call_fn_t fn, void *arg)
{
    return (int)(intptr_t)call_on(shard, fn, arg);
}

struct spawn_req {
    const pith_actor_type_t *type;
    pith_ref_t ref;
    int rc;
};

static void *spawn_fn(void *p)
{
    struct spawn_req *q = p;
    q->rc = pith_spawn(q->type, NULL, &q->ref);
    return NULL;
}

static pith_ref_t spawn_at(unsigned shard, const pith_actor_type_t *type)
{
    struct spawn_req q = {.type = type};
    call_on(shard, spawn_fn, &q);
    cr_assert_eq(q.rc, 0, "pith_spawn(%s): %d (%s)", type->name, q.rc, pith_strerror(q.rc));
    return q.ref;
}

/* An actor that counts what it gets: a target for outcomes that must never arrive. */
static atomic_uint quiet_handled;

static int quiet_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    atomic_fetch_add(&quiet_handled, 1);
    return 0;
}

static const pith_actor_type_t quiet_type = {.name = "file.quiet", .behaviour = quiet_behaviour};

static void assert_ids_distinct(const pith_io_id_t *ids, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        cr_assert_neq(ids[i], 0, "operation %u got id 0", i);
        for (unsigned j = 0; j < i; j++)
            cr_assert_neq(ids[i], ids[j], "operations %u and %u share id %" PRIu64, j, i, ids[i]);
    }
}

/* ---- 1. a chain: open, three writes, fsync, fdatasync, readv, statx, close, unlink, statx ---- */

#define WR_A     4096u
#define WR_B     100u
#define WR_C     65536u
#define WR_TOTAL (WR_A + WR_B + WR_C)
#define WR_SPLIT 10000u /* where the readv's first iovec ends */

enum {
    WR_OPEN,
    WR_W0,
    WR_W1,
    WR_W2,
    WR_FSYNC,
    WR_FDATASYNC,
    WR_READV,
    WR_STATX,
    WR_CLOSE,
    WR_UNLINK,
    WR_STATX_GONE,
    WR_STEPS
};

static const char *const wr_name[WR_STEPS] = {
    "open",
    "write 0",
    "write 1",
    "write 2",
    "fsync",
    "fdatasync",
    "readv",
    "statx",
    "close",
    "unlink",
    "statx after unlink",
};

/* Chunks by offset, written out of offset order. */
static const uint32_t wr_off[3] = {0, WR_A, WR_A + WR_B};
static const uint32_t wr_len[3] = {WR_A, WR_B, WR_C};
static const unsigned wr_order[3] = {2, 0, 1};

static struct {
    char path[128];
    uint8_t data[WR_TOTAL];
    uint8_t back[WR_TOTAL];
    struct statx st, st_gone;
    int fd;
    unsigned step; /* shard 0 only */
    int64_t res[WR_STEPS];
    pith_io_id_t id[WR_STEPS];
    int issue_rc; /* the call that refused, and at which step */
    unsigned issue_step;
    unsigned wrong_shard, wrong_ctx, extra;
    atomic_bool finished;
} wr;

static void wr_done(int64_t res, void *ctx);

static int wr_issue(unsigned step)
{
    pith_io_done_t done = {.fn = wr_done, .ctx = &wr};
    pith_io_id_t *id = &wr.id[step];
    /* The calls copy paths and iovec arrays (and read *done at the call): these copies on the
     * stack are wiped as soon as the call returns. */
    char path[sizeof wr.path];
    memcpy(path, wr.path, sizeof path);
    struct iovec iov[2] = {{wr.back, WR_SPLIT}, {wr.back + WR_SPLIT, WR_TOTAL - WR_SPLIT}};
    int rc;
    switch (step) {
    case WR_OPEN:
        rc = pith_file_open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600, &done, id);
        break;
    case WR_W0:
    case WR_W1:
    case WR_W2: {
        unsigned c = wr_order[step - WR_W0];
        rc = pith_file_write(wr.fd, wr.data + wr_off[c], wr_len[c], wr_off[c], &done, id);
        break;
    }
    case WR_FSYNC:
        rc = pith_file_fsync(wr.fd, &done, id);
        break;
    case WR_FDATASYNC:
        rc = pith_file_fdatasync(wr.fd, &done, id);
        break;
    case WR_READV:
        rc = pith_file_readv(wr.fd, iov, 2, 0, &done, id);
        break;
    case WR_STATX:
        rc = pith_file_statx(path, 0, STATX_SIZE, &wr.st, &done, id);
        break;
    case WR_CLOSE:
        rc = pith_file_close(wr.fd, &done, id);
        break;
    case WR_UNLINK:
        rc = pith_file_unlink(path, 0, &done, id);
        break;
    default:
        rc = pith_file_statx(path, 0, STATX_SIZE, &wr.st_gone, &done, id);
        break;
    }
    explicit_bzero(path, sizeof path);
    explicit_bzero(iov, sizeof iov);
    explicit_bzero(&done, sizeof done);
    return rc;
}

/* Records the outcome of the current step and starts the next. */
static void wr_done(int64_t res, void *ctx)
{
    if (ctx != &wr)
        wr.wrong_ctx++;
    if (pith_shard_id() != 0)
        wr.wrong_shard++;
    unsigned s = wr.step;
    if (s >= WR_STEPS) {
        wr.extra++;
        return;
    }
    wr.res[s] = res;
    if (s == WR_OPEN)
        wr.fd = (int)res;
    wr.step = ++s;
    if (s == WR_STEPS) {
        atomic_store(&wr.finished, true);
        return;
    }
    int rc = wr_issue(s);
    if (rc != 0) {
        wr.issue_rc = rc;
        wr.issue_step = s;
        atomic_store(&wr.finished, true);
    }
}

static void *wr_start(void *arg)
{
    (void)arg;
    int rc = wr_issue(WR_OPEN);
    if (rc != 0)
        atomic_store(&wr.finished, true);
    return (void *)(intptr_t)rc;
}

Test(file, a_chain_of_callbacks_writes_syncs_reads_back_and_unlinks, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    memset(&wr, 0, sizeof wr);
    tmp_path(wr.path, sizeof wr.path, "chain");
    fill_random(wr.data, WR_TOTAL, 0x9e3779b97f4a7c15ull);
    memset(wr.back, 0xee, sizeof wr.back);
    wr.fd = -1;

    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    int rc = call_rc(0, wr_start, NULL);
    cr_assert_eq(rc, 0, "pith_file_open: %d (%s)", rc, pith_strerror(rc));
    TEST_WAIT_FOR(atomic_load(&wr.finished));
    test_sync_all(); /* an outcome that came twice would show in wr.extra */

    cr_assert_eq(wr.issue_rc, 0, "the %s call: %d (%s)", wr_name[wr.issue_step], wr.issue_rc,
                 pith_strerror(wr.issue_rc));
    cr_assert_eq(wr.step, WR_STEPS);
    cr_assert_eq(wr.wrong_ctx, 0, "%u outcomes came with another ctx", wr.wrong_ctx);
    cr_assert_eq(wr.wrong_shard, 0, "%u outcomes ran off shard 0", wr.wrong_shard);
    cr_assert_eq(wr.extra, 0, "%u outcomes more than operations", wr.extra);

    cr_assert_geq(wr.res[WR_OPEN], 0, "open: %" PRId64, wr.res[WR_OPEN]);
    for (unsigned i = 0; i < 3; i++)
        cr_assert_eq(wr.res[WR_W0 + i], (int64_t)wr_len[wr_order[i]],
                     "write of %u bytes at %u: %" PRId64, wr_len[wr_order[i]], wr_off[wr_order[i]],
                     wr.res[WR_W0 + i]);
    cr_assert_eq(wr.res[WR_FSYNC], 0, "fsync: %" PRId64, wr.res[WR_FSYNC]);
    cr_assert_eq(wr.res[WR_FDATASYNC], 0, "fdatasync: %" PRId64, wr.res[WR_FDATASYNC]);
    cr_assert_eq(wr.res[WR_READV], WR_TOTAL, "readv: %" PRId64 " of %u bytes", wr.res[WR_READV],
                 WR_TOTAL);
    for (unsigned i = 0; i < WR_TOTAL; i++)
        cr_assert_eq(wr.back[i], wr.data[i], "byte %u read back as %#x, written %#x", i, wr.back[i],
                     wr.data[i]);
    cr_assert_eq(wr.res[WR_STATX], 0, "statx: %" PRId64, wr.res[WR_STATX]);
    cr_assert(wr.st.stx_mask & STATX_SIZE, "statx left out the size (mask %#x)", wr.st.stx_mask);
    cr_assert_eq(wr.st.stx_size, WR_TOTAL, "statx size %" PRIu64, (uint64_t)wr.st.stx_size);
    cr_assert_eq(wr.res[WR_CLOSE], 0, "close: %" PRId64, wr.res[WR_CLOSE]);
    cr_assert_eq(wr.res[WR_UNLINK], 0, "unlink: %" PRId64, wr.res[WR_UNLINK]);
    cr_assert_eq(wr.res[WR_STATX_GONE], -ENOENT, "statx after unlink: %" PRId64,
                 wr.res[WR_STATX_GONE]);
    cr_assert_eq(access(wr.path, F_OK), -1, "the file is still there");
    cr_assert_eq(fcntl(wr.fd, F_GETFD), -1, "descriptor %d is still open", wr.fd);
    assert_ids_distinct(wr.id, WR_STEPS);
    test_stop(NULL);
}

/* ---- 2. errors from the kernel come as outcomes ---- */

#define BAD_FD 9999

enum {
    EP_OPEN_MISSING,
    EP_READ_BADFD,
    EP_PAST_END,
    EP_SHORT,
    EP_CLOSE_BADFD,
    EP_WRITE_RDONLY,
    EP_N
};

static const char *const ep_name[EP_N] = {
    "open of a missing path", "read of a bad fd",  "read past the end",
    "read across the end",    "close of a bad fd", "write to a read-only fd",
};

static const int64_t ep_want[EP_N] = {-ENOENT, -EBADF, 0, 6, -EBADF, -EBADF};

static struct {
    char missing[128];
    int small_fd; /* 10 bytes, read-only */
    uint8_t buf[EP_N][64];
    int rc[EP_N];
    _Atomic int64_t res[EP_N];
    atomic_uint calls[EP_N];
    atomic_uint total, wrong_shard;
} ep;

static void ep_done(int64_t res, void *ctx)
{
    uintptr_t i = (uintptr_t)ctx;
    if (pith_shard_id() != 0)
        atomic_fetch_add(&ep.wrong_shard, 1);
    if (i < EP_N) {
        atomic_store(&ep.res[i], res);
        atomic_fetch_add(&ep.calls[i], 1);
    }
    atomic_fetch_add(&ep.total, 1);
}

static void *ep_issue(void *arg)
{
    (void)arg;
    pith_io_done_t d[EP_N];
    for (uintptr_t i = 0; i < EP_N; i++)
        d[i] = (pith_io_done_t){.fn = ep_done, .ctx = (void *)i};
    ep.rc[EP_OPEN_MISSING] = pith_file_open(ep.missing, O_RDONLY, 0, &d[EP_OPEN_MISSING], NULL);
    ep.rc[EP_READ_BADFD] =
        pith_file_read(BAD_FD, ep.buf[EP_READ_BADFD], 64, 0, &d[EP_READ_BADFD], NULL);
    ep.rc[EP_PAST_END] =
        pith_file_read(ep.small_fd, ep.buf[EP_PAST_END], 64, 1000, &d[EP_PAST_END], NULL);
    ep.rc[EP_SHORT] = pith_file_read(ep.small_fd, ep.buf[EP_SHORT], 64, 4, &d[EP_SHORT], NULL);
    ep.rc[EP_CLOSE_BADFD] = pith_file_close(BAD_FD, &d[EP_CLOSE_BADFD], NULL);
    ep.rc[EP_WRITE_RDONLY] = pith_file_write(ep.small_fd, "x", 1, 0, &d[EP_WRITE_RDONLY], NULL);
    return NULL;
}

Test(file, kernel_errors_and_end_of_file_come_as_outcomes, .init = tmp_setup, .fini = tmp_cleanup,
     .timeout = 30)
{
    memset(&ep, 0, sizeof ep);
    cr_assert_eq(fcntl(BAD_FD, F_GETFD), -1, "descriptor %d is open in the test", BAD_FD);
    tmp_path(ep.missing, sizeof ep.missing, "missing");
    ep.small_fd = tmp_file("small", "0123456789", 10, O_RDONLY);

    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    call_on(0, ep_issue, NULL);
    for (unsigned i = 0; i < EP_N; i++)
        cr_assert_eq(ep.rc[i], 0, "%s: %d (%s)", ep_name[i], ep.rc[i], pith_strerror(ep.rc[i]));
    TEST_WAIT_FOR(atomic_load(&ep.total) >= EP_N);
    test_sync_all();
    cr_assert_eq(atomic_load(&ep.total), EP_N, "%u outcomes for %u operations",
                 atomic_load(&ep.total), EP_N);
    for (unsigned i = 0; i < EP_N; i++) {
        cr_assert_eq(atomic_load(&ep.calls[i]), 1, "%s: %u outcomes", ep_name[i],
                     atomic_load(&ep.calls[i]));
        int64_t res = atomic_load(&ep.res[i]);
        cr_assert_eq(res, ep_want[i], "%s: %" PRId64 " (%s), expected %" PRId64, ep_name[i], res,
                     res < 0 ? pith_strerror((int)res) : "", ep_want[i]);
    }
    cr_assert_eq(memcmp(ep.buf[EP_SHORT], "456789", 6), 0, "the short read got %.6s",
                 (const char *)ep.buf[EP_SHORT]);
    cr_assert_eq(atomic_load(&ep.wrong_shard), 0);
    test_stop(NULL);
    close(ep.small_fd);
}

/* ---- 3. argument errors are returned at once, and queue nothing ---- */

enum {
    AE_DONE_NULL,
    AE_DONE_EMPTY,
    AE_DONE_RESERVED_TYPE,
    AE_OPEN_NULL,
    AE_STATX_NULL,
    AE_STATX_OUT_NULL,
    AE_UNLINK_NULL,
    AE_READV_ZERO,
    AE_READV_NULL,
    AE_READV_TOO_MANY,
    AE_WRITEV_ZERO,
    AE_READ_BUF_NULL,
    AE_WRITE_BUF_NULL,
    AE_READ_FIXED_NONE,
    AE_WRITE_FIXED_NONE,
    AE_REGISTER_NULL,
    AE_REGISTER_ZERO,
    AE_UNREGISTER_NONE,
    AE_N
};

static const char *const ae_name[AE_N] = {
    "done NULL",
    "done with neither fn nor to",
    "done to an actor with a reserved type",
    "open of path NULL",
    "statx of path NULL",
    "statx with out NULL",
    "unlink of path NULL",
    "readv with iovcnt 0",
    "readv with iov NULL",
    "readv with iovcnt IOV_MAX + 1",
    "writev with iovcnt 0",
    "read into NULL",
    "write from NULL",
    "read_fixed with no buffers registered",
    "write_fixed with no buffers registered",
    "register_buffers(NULL, 1)",
    "register_buffers(iov, 0)",
    "unregister_buffers with none registered",
};

static struct {
    char path[128];
    int fd; /* "0123456789", read-write */
    pith_ref_t actor;
    uint8_t buf[64];
    struct statx st;
    struct iovec many_iov[IOV_MAX + 1];
    int rc[AE_N];
    int good_rc;
    atomic_uint bad_outcomes, good_outcomes;
    _Atomic int64_t good_res;
} ae;

static void ae_bad(int64_t res, void *ctx)
{
    (void)res;
    (void)ctx;
    atomic_fetch_add(&ae.bad_outcomes, 1);
}

static void ae_good(int64_t res, void *ctx)
{
    (void)ctx;
    atomic_store(&ae.good_res, res);
    atomic_fetch_add(&ae.good_outcomes, 1);
}

static void *ae_on_shard(void *arg)
{
    (void)arg;
    pith_io_done_t d = {.fn = ae_bad, .ctx = &ae};
    pith_io_done_t empty = {.fn = NULL, .ctx = &ae, .to = PITH_REF_NONE, .type = 1};
    pith_io_done_t reserved = {.to = ae.actor, .type = PITH_MSG_TIMEOUT};
    struct iovec iov = {ae.buf, sizeof ae.buf};
    pith_io_id_t id = 0;
    int *rc = ae.rc;
    rc[AE_DONE_NULL] = pith_file_read(ae.fd, ae.buf, 8, 0, NULL, &id);
    rc[AE_DONE_EMPTY] = pith_file_read(ae.fd, ae.buf, 8, 0, &empty, &id);
    rc[AE_DONE_RESERVED_TYPE] = pith_file_read(ae.fd, ae.buf, 8, 0, &reserved, &id);
    rc[AE_OPEN_NULL] = pith_file_open(NULL, O_RDONLY, 0, &d, &id);
    rc[AE_STATX_NULL] = pith_file_statx(NULL, 0, STATX_SIZE, &ae.st, &d, &id);
    rc[AE_STATX_OUT_NULL] = pith_file_statx(ae.path, 0, STATX_SIZE, NULL, &d, &id);
    rc[AE_UNLINK_NULL] = pith_file_unlink(NULL, 0, &d, &id);
    rc[AE_READV_ZERO] = pith_file_readv(ae.fd, &iov, 0, 0, &d, &id);
    rc[AE_READV_NULL] = pith_file_readv(ae.fd, NULL, 1, 0, &d, &id);
    rc[AE_READV_TOO_MANY] = pith_file_readv(ae.fd, ae.many_iov, IOV_MAX + 1, 0, &d, &id);
    rc[AE_WRITEV_ZERO] = pith_file_writev(ae.fd, &iov, 0, 0, &d, &id);
    rc[AE_READ_BUF_NULL] = pith_file_read(ae.fd, NULL, 8, 0, &d, &id);
    rc[AE_WRITE_BUF_NULL] = pith_file_write(ae.fd, NULL, 8, 0, &d, &id);
    rc[AE_READ_FIXED_NONE] = pith_file_read_fixed(ae.fd, ae.buf, 8, 0, 0, &d, &id);
    rc[AE_WRITE_FIXED_NONE] = pith_file_write_fixed(ae.fd, ae.buf, 8, 0, 0, &d, &id);
    rc[AE_REGISTER_NULL] = pith_file_register_buffers(NULL, 1);
    rc[AE_REGISTER_ZERO] = pith_file_register_buffers(&iov, 0);
    rc[AE_UNREGISTER_NONE] = pith_file_unregister_buffers();
    /* One that is valid, after them: once its outcome is in, any outcome of the calls above
     * would have come too. */
    pith_io_done_t good = {.fn = ae_good};
    ae.good_rc = pith_file_read(ae.fd, ae.buf, sizeof ae.buf, 0, &good, &id);
    return NULL;
}

/* Every call with valid arguments, from a thread that is not a shard: each must say -EPERM. */
static void ae_assert_eperm(const char *when)
{
    pith_io_done_t d = {.fn = ae_bad, .ctx = &ae};
    struct iovec iov = {ae.buf, sizeof ae.buf};
    pith_io_id_t id = 0;
    struct {
        const char *name;
        int rc;
    } calls[] = {
        {"open", pith_file_open(ae.path, O_RDONLY, 0, &d, &id)},
        {"close", pith_file_close(ae.fd, &d, &id)},
        {"read", pith_file_read(ae.fd, ae.buf, 8, 0, &d, &id)},
        {"write", pith_file_write(ae.fd, ae.buf, 8, 0, &d, &id)},
        {"readv", pith_file_readv(ae.fd, &iov, 1, 0, &d, &id)},
        {"writev", pith_file_writev(ae.fd, &iov, 1, 0, &d, &id)},
        {"fsync", pith_file_fsync(ae.fd, &d, &id)},
        {"fdatasync", pith_file_fdatasync(ae.fd, &d, &id)},
        {"statx", pith_file_statx(ae.path, 0, STATX_SIZE, &ae.st, &d, &id)},
        {"unlink", pith_file_unlink(ae.path, 0, &d, &id)},
        {"read_fixed", pith_file_read_fixed(ae.fd, ae.buf, 8, 0, 0, &d, &id)},
        {"write_fixed", pith_file_write_fixed(ae.fd, ae.buf, 8, 0, 0, &d, &id)},
        {"register_buffers", pith_file_register_buffers(&iov, 1)},
        {"unregister_buffers", pith_file_unregister_buffers()},
        {"io_cancel", pith_io_cancel(1)},
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
        cr_assert_eq(calls[i].rc, -EPERM, "%s %s: %d (%s), expected -EPERM", calls[i].name, when,
                     calls[i].rc, pith_strerror(calls[i].rc));
    cr_assert_eq(access(ae.path, F_OK), 0, "the unlink %s removed the file", when);
    cr_assert_eq(fcntl(ae.fd, F_GETFD), FD_CLOEXEC, "the close %s closed the descriptor", when);
}

Test(file, bad_arguments_and_calls_off_a_shard_fail_at_once_and_queue_nothing, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    memset(&ae, 0, sizeof ae);
    tmp_path(ae.path, sizeof ae.path, "args");
    ae.fd = tmp_file("args", "0123456789", 10, O_RDWR);
    for (unsigned i = 0; i <= IOV_MAX; i++)
        ae.many_iov[i] = (struct iovec){ae.buf, 1};

    ae_assert_eperm("with no engine");
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    ae_assert_eperm("from the test thread");

    ae.actor = spawn_at(0, &quiet_type);
    call_on(0, ae_on_shard, NULL);
    for (unsigned i = 0; i < AE_N; i++) {
        int want = i == AE_UNREGISTER_NONE ? -ENXIO : -EINVAL;
        cr_assert_eq(ae.rc[i], want, "%s: %d (%s), expected %d", ae_name[i], ae.rc[i],
                     pith_strerror(ae.rc[i]), want);
    }
    cr_assert_eq(ae.good_rc, 0, "the valid read: %d (%s)", ae.good_rc, pith_strerror(ae.good_rc));
    TEST_WAIT_FOR(atomic_load(&ae.good_outcomes) == 1);
    test_sync_all();
    cr_assert_eq(atomic_load(&ae.good_res), 10);
    cr_assert_eq(atomic_load(&ae.good_outcomes), 1);
    cr_assert_eq(atomic_load(&ae.bad_outcomes), 0, "%u outcomes for calls that were refused",
                 atomic_load(&ae.bad_outcomes));
    cr_assert_eq(atomic_load(&quiet_handled), 0, "the actor got an outcome of a refused call");
    test_stop(NULL);
    close(ae.fd);
}

/* ---- 4. linked timeouts ---- */

static struct {
    int idle[2], ready[2];
    uint8_t buf_idle[16], buf_ready[16], buf_later[16];
    int rc_idle, rc_ready, rc_later;
    uint64_t t_issue, t_idle_done; /* pith_now_ns on shard 0 */
    _Atomic int64_t res_idle, res_ready, res_later;
    atomic_uint n_idle, n_ready, n_later;
} tt;

static void tt_idle_done(int64_t res, void *ctx)
{
    (void)ctx;
    tt.t_idle_done = pith_now_ns();
    atomic_store(&tt.res_idle, res);
    atomic_fetch_add(&tt.n_idle, 1);
}

static void tt_ready_done(int64_t res, void *ctx)
{
    (void)ctx;
    atomic_store(&tt.res_ready, res);
    atomic_fetch_add(&tt.n_ready, 1);
}

static void tt_later_done(int64_t res, void *ctx)
{
    (void)ctx;
    atomic_store(&tt.res_later, res);
    atomic_fetch_add(&tt.n_later, 1);
}

/* The read that can complete first, then the one that cannot, both with 20 ms: once the second
 * has timed out, the first's timeout would have fired too, had it been left armed. */
static void *tt_issue(void *arg)
{
    (void)arg;
    pith_io_done_t ready = {.fn = tt_ready_done, .timeout_ns = 20 * MS};
    pith_io_done_t idle = {.fn = tt_idle_done, .timeout_ns = 20 * MS};
    tt.t_issue = pith_now_ns();
    tt.rc_ready =
        pith_file_read(tt.ready[0], tt.buf_ready, sizeof tt.buf_ready, PITH_FILE_POS, &ready, NULL);
    tt.rc_idle =
        pith_file_read(tt.idle[0], tt.buf_idle, sizeof tt.buf_idle, PITH_FILE_POS, &idle, NULL);
    return NULL;
}

static void *tt_issue_later(void *arg)
{
    (void)arg;
    pith_io_done_t later = {.fn = tt_later_done};
    tt.rc_later =
        pith_file_read(tt.idle[0], tt.buf_later, sizeof tt.buf_later, PITH_FILE_POS, &later, NULL);
    return NULL;
}

Test(file, a_read_past_its_timeout_is_etimedout_and_one_in_time_is_not, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    memset(&tt, 0, sizeof tt);
    make_pipe(tt.idle);
    make_pipe(tt.ready);
    cr_assert_eq(write(tt.ready[1], "hello", 5), 5);

    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    call_on(0, tt_issue, NULL);
    cr_assert_eq(tt.rc_ready, 0, "%d (%s)", tt.rc_ready, pith_strerror(tt.rc_ready));
    cr_assert_eq(tt.rc_idle, 0, "%d (%s)", tt.rc_idle, pith_strerror(tt.rc_idle));
    TEST_WAIT_FOR(atomic_load(&tt.n_idle) >= 1 && atomic_load(&tt.n_ready) >= 1);
    test_sync_all();
    cr_assert_eq(atomic_load(&tt.n_ready), 1, "%u outcomes for the read in time",
                 atomic_load(&tt.n_ready));
    cr_assert_eq(atomic_load(&tt.res_ready), 5, "the read in time: %" PRId64 " (%s)",
                 atomic_load(&tt.res_ready), pith_strerror((int)atomic_load(&tt.res_ready)));
    cr_assert_eq(memcmp(tt.buf_ready, "hello", 5), 0);
    cr_assert_eq(atomic_load(&tt.n_idle), 1, "%u outcomes for the read that timed out",
                 atomic_load(&tt.n_idle));
    cr_assert_eq(atomic_load(&tt.res_idle), -ETIMEDOUT, "the idle read: %" PRId64 " (%s)",
                 atomic_load(&tt.res_idle), pith_strerror((int)atomic_load(&tt.res_idle)));
    cr_assert_geq(tt.t_idle_done - tt.t_issue, 20 * MS,
                  "the timeout fired %" PRIu64 " ns after the read started",
                  tt.t_idle_done - tt.t_issue);

    /* The read that timed out took nothing: the pipe's next bytes go to the next read. */
    call_on(0, tt_issue_later, NULL);
    cr_assert_eq(tt.rc_later, 0, "%d (%s)", tt.rc_later, pith_strerror(tt.rc_later));
    cr_assert_eq(write(tt.idle[1], "later", 5), 5);
    TEST_WAIT_FOR(atomic_load(&tt.n_later) == 1);
    cr_assert_eq(atomic_load(&tt.res_later), 5, "%" PRId64, atomic_load(&tt.res_later));
    cr_assert_eq(memcmp(tt.buf_later, "later", 5), 0);
    cr_assert_eq(atomic_load(&tt.n_idle), 1);
    test_stop(NULL);
    close_pipe(tt.idle);
    close_pipe(tt.ready);
}

/* ---- 5. cancel ---- */

/* Reads on empty pipes: a, cancelled in the task that started it (before the loop submitted
 * it); b, cancelled once it is in the kernel; c, with a long linked timeout, cancelled too:
 * a cancel is -ECANCELED, not -ETIMEDOUT. */
#define CX_N 3

static struct {
    int p[CX_N][2];
    uint8_t buf[CX_N][16];
    pith_io_id_t id[CX_N];
    int rc_read[CX_N];
    int rc_cancel_a, rc_cancel_a_again; /* in the task that started read a */
    int rc_other_shard, rc_other_zero;  /* on shard 1 */
    int rc_cancel_b, rc_cancel_c;
    int rc_after[CX_N], rc_zero; /* after the outcomes */
    _Atomic int64_t res[CX_N];
    atomic_uint calls[CX_N];
    atomic_int shard[CX_N];
} cx;

static void cx_done(int64_t res, void *ctx)
{
    uintptr_t i = (uintptr_t)ctx;
    if (i < CX_N) {
        atomic_store(&cx.res[i], res);
        atomic_store(&cx.shard[i], pith_shard_id());
        atomic_fetch_add(&cx.calls[i], 1);
    }
}

static int cx_read(uintptr_t i, uint64_t timeout_ns)
{
    pith_io_done_t d = {.fn = cx_done, .ctx = (void *)i, .timeout_ns = timeout_ns};
    return cx.rc_read[i] = pith_file_read(cx.p[i][0], cx.buf[i], sizeof cx.buf[i], PITH_FILE_POS,
                                          &d, &cx.id[i]);
}

static void *cx_start_a(void *arg)
{
    (void)arg;
    if (cx_read(0, 0) == 0) {
        cx.rc_cancel_a = pith_io_cancel(cx.id[0]);
        cx.rc_cancel_a_again = pith_io_cancel(cx.id[0]);
    }
    return NULL;
}

static void *cx_start_bc(void *arg)
{
    (void)arg;
    cx_read(1, 0);
    cx_read(2, 3600000 * MS);
    return NULL;
}

static void *cx_from_shard1(void *arg)
{
    (void)arg;
    cx.rc_other_shard = pith_io_cancel(cx.id[1]);
    cx.rc_other_zero = pith_io_cancel(0);
    return NULL;
}

static void *cx_cancel_bc(void *arg)
{
    (void)arg;
    cx.rc_cancel_b = pith_io_cancel(cx.id[1]);
    cx.rc_cancel_c = pith_io_cancel(cx.id[2]);
    return NULL;
}

static void *cx_after(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < CX_N; i++)
        cx.rc_after[i] = pith_io_cancel(cx.id[i]);
    cx.rc_zero = pith_io_cancel(0);
    return NULL;
}

Test(file, cancel_ends_a_read_with_ecanceled_once, .init = tmp_setup, .fini = tmp_cleanup,
     .timeout = 30)
{
    memset(&cx, 0, sizeof cx);
    for (unsigned i = 0; i < CX_N; i++)
        make_pipe(cx.p[i]);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);

    call_on(0, cx_start_a, NULL);
    cr_assert_eq(cx.rc_read[0], 0, "read a: %d (%s)", cx.rc_read[0], pith_strerror(cx.rc_read[0]));
    cr_assert_eq(cx.rc_cancel_a, 0, "cancel of a read not yet submitted: %d (%s)", cx.rc_cancel_a,
                 pith_strerror(cx.rc_cancel_a));
    cr_assert_eq(cx.rc_cancel_a_again, -EALREADY, "a second cancel while the first runs: %d (%s)",
                 cx.rc_cancel_a_again, pith_strerror(cx.rc_cancel_a_again));

    call_on(0, cx_start_bc, NULL);
    for (unsigned i = 1; i < CX_N; i++)
        cr_assert_eq(cx.rc_read[i], 0, "read %c: %d (%s)", 'a' + i, cx.rc_read[i],
                     pith_strerror(cx.rc_read[i]));
    test_sync_shard(0); /* reads b and c are in the kernel now */
    call_on(1, cx_from_shard1, NULL);
    cr_assert_eq(cx.rc_other_shard, -ENOENT, "shard 1 cancelling shard 0's read: %d (%s)",
                 cx.rc_other_shard, pith_strerror(cx.rc_other_shard));
    cr_assert_eq(cx.rc_other_zero, -ENOENT, "cancel of id 0 on shard 1: %d", cx.rc_other_zero);
    cr_assert_eq(pith_io_cancel(cx.id[1]), -EPERM, "cancel from the test thread");
    test_sync_all();
    for (unsigned i = 1; i < CX_N; i++)
        cr_assert_eq(atomic_load(&cx.calls[i]), 0, "read %c ended before its cancel: %" PRId64,
                     'a' + i, atomic_load(&cx.res[i]));

    call_on(0, cx_cancel_bc, NULL);
    cr_assert_eq(cx.rc_cancel_b, 0, "cancel of a submitted read: %d (%s)", cx.rc_cancel_b,
                 pith_strerror(cx.rc_cancel_b));
    cr_assert_eq(cx.rc_cancel_c, 0, "cancel of a read with a timeout: %d (%s)", cx.rc_cancel_c,
                 pith_strerror(cx.rc_cancel_c));
    TEST_WAIT_FOR(atomic_load(&cx.calls[0]) >= 1 && atomic_load(&cx.calls[1]) >= 1 &&
                  atomic_load(&cx.calls[2]) >= 1);
    call_on(0, cx_after, NULL);
    test_sync_all();
    for (unsigned i = 0; i < CX_N; i++) {
        cr_assert_eq(atomic_load(&cx.calls[i]), 1, "read %c: %u outcomes", 'a' + i,
                     atomic_load(&cx.calls[i]));
        cr_assert_eq(atomic_load(&cx.res[i]), -ECANCELED, "read %c: %" PRId64 " (%s)", 'a' + i,
                     atomic_load(&cx.res[i]), pith_strerror((int)atomic_load(&cx.res[i])));
        cr_assert_eq(atomic_load(&cx.shard[i]), 0);
        cr_assert_eq(cx.rc_after[i], -ENOENT, "cancel of read %c after its outcome: %d (%s)",
                     'a' + i, cx.rc_after[i], pith_strerror(cx.rc_after[i]));
    }
    cr_assert_eq(cx.rc_zero, -ENOENT, "cancel of id 0: %d", cx.rc_zero);
    assert_ids_distinct(cx.id, CX_N);
    test_stop(NULL);
    for (unsigned i = 0; i < CX_N; i++)
        close_pipe(cx.p[i]);
}

/* An id kept from one engine finds nothing in the next, although the next engine's first
 * operation on that shard takes the same slot of the same table. */
static struct {
    int p[2];
    uint8_t buf[8];
    pith_io_id_t old_id, new_id;
    int rc_old_read, rc_new_read, rc_cancel_old, rc_cancel_new;
    _Atomic int64_t res;
    atomic_uint calls;
} rs;

static void rs_done(int64_t res, void *ctx)
{
    (void)ctx;
    atomic_store(&rs.res, res);
    atomic_fetch_add(&rs.calls, 1);
}

static void *rs_first(void *arg)
{
    (void)arg;
    pith_io_done_t d = {.fn = rs_done};
    rs.rc_old_read = pith_file_read(rs.p[0], rs.buf, sizeof rs.buf, PITH_FILE_POS, &d, &rs.old_id);
    return NULL;
}

static void *rs_second(void *arg)
{
    (void)arg;
    pith_io_done_t d = {.fn = rs_done};
    rs.rc_new_read = pith_file_read(rs.p[0], rs.buf, sizeof rs.buf, PITH_FILE_POS, &d, &rs.new_id);
    rs.rc_cancel_old = pith_io_cancel(rs.old_id);
    return NULL;
}

static void *rs_cancel_new(void *arg)
{
    (void)arg;
    rs.rc_cancel_new = pith_io_cancel(rs.new_id);
    return NULL;
}

Test(file, an_id_from_an_earlier_engine_finds_nothing_in_the_next, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    memset(&rs, 0, sizeof rs);
    make_pipe(rs.p);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    call_on(0, rs_first, NULL);
    cr_assert_eq(rs.rc_old_read, 0, "first read: %d (%s)", rs.rc_old_read,
                 pith_strerror(rs.rc_old_read));
    test_stop(NULL);
    cr_assert_eq(atomic_load(&rs.calls), 1, "the read in flight at stop: %u outcomes",
                 atomic_load(&rs.calls));
    cr_assert_eq(atomic_load(&rs.res), -ECANCELED);

    test_start(&cfg);
    call_on(0, rs_second, NULL);
    cr_assert_eq(rs.rc_new_read, 0, "second read: %d (%s)", rs.rc_new_read,
                 pith_strerror(rs.rc_new_read));
    cr_assert_neq(rs.new_id, rs.old_id, "the second engine's first read reused the first's id");
    cr_assert_eq(rs.rc_cancel_old, -ENOENT, "cancel by the first engine's id: %d (%s)",
                 rs.rc_cancel_old, pith_strerror(rs.rc_cancel_old));
    test_sync_all();
    cr_assert_eq(atomic_load(&rs.calls), 1, "the stale id cancelled the new read");
    call_on(0, rs_cancel_new, NULL);
    cr_assert_eq(rs.rc_cancel_new, 0);
    TEST_WAIT_FOR(atomic_load(&rs.calls) == 2);
    cr_assert_eq(atomic_load(&rs.res), -ECANCELED);
    test_stop(NULL);
    close_pipe(rs.p);
}

/* Inside an operation's own outcome it has finished: there is nothing left to cancel, and no
 * other outcome will come. */
static struct {
    int p[2];
    uint8_t buf[16];
    pith_io_id_t id;
    int rc_read;
    atomic_int rc_cancel_own;
    _Atomic int64_t res;
    atomic_uint calls;
} co;

static void co_done(int64_t res, void *ctx)
{
    (void)ctx;
    atomic_store(&co.rc_cancel_own, pith_io_cancel(co.id));
    atomic_store(&co.res, res);
    atomic_fetch_add(&co.calls, 1);
}

static void *co_start(void *arg)
{
    (void)arg;
    pith_io_done_t d = {.fn = co_done};
    co.rc_read = pith_file_read(co.p[0], co.buf, sizeof co.buf, PITH_FILE_POS, &d, &co.id);
    return NULL;
}

Test(file, cancel_from_the_operations_own_outcome_is_enoent, .init = tmp_setup, .fini = tmp_cleanup,
     .timeout = 30)
{
    memset(&co, 0, sizeof co);
    atomic_store(&co.rc_cancel_own, 12345);
    make_pipe(co.p);
    cr_assert_eq(write(co.p[1], "ready", 5), 5);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    call_on(0, co_start, NULL);
    cr_assert_eq(co.rc_read, 0, "%d (%s)", co.rc_read, pith_strerror(co.rc_read));
    TEST_WAIT_FOR(atomic_load(&co.calls) >= 1);
    test_sync_all();
    cr_assert_eq(atomic_load(&co.calls), 1, "%u outcomes", atomic_load(&co.calls));
    cr_assert_eq(atomic_load(&co.res), 5, "%" PRId64, atomic_load(&co.res));
    int rc = atomic_load(&co.rc_cancel_own);
    cr_assert_eq(rc, -ENOENT,
                 "pith_io_cancel of the operation from its own outcome: %d (%s), expected "
                 "-ENOENT (0 promises an outcome that never comes)",
                 rc, pith_strerror(rc));
    test_stop(NULL);
    close_pipe(co.p);
}

/* ---- 6. outcomes as messages to an actor ---- */

#define FA_START 1
#define FA_WROTE 2
#define FA_READ  3
#define FA_LEN   3000u

static struct {
    int fd;
    uint8_t data[FA_LEN], back[FA_LEN];
    int ctx_magic;
    pith_ref_t self;
    int rc_write, rc_read;
    pith_io_id_t id_write, id_read;
    struct {
        uint32_t type, len;
        pith_io_result_t r;
        int shard;
    } got[4];
    atomic_uint ngot, unexpected;
    atomic_bool finished;
} fa;

static int fa_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    pith_io_done_t done = {.fn = NULL, .ctx = &fa.ctx_magic, .to = pith_self(self)};
    if (msg->type == FA_START) {
        done.type = FA_WROTE;
        fa.rc_write = pith_file_write(fa.fd, fa.data, FA_LEN, 0, &done, &fa.id_write);
        if (fa.rc_write != 0)
            atomic_store(&fa.finished, true);
        return 0;
    }
    if (msg->type != FA_WROTE && msg->type != FA_READ) {
        atomic_fetch_add(&fa.unexpected, 1);
        return 0;
    }
    unsigned i = atomic_load(&fa.ngot);
    if (i < 4) {
        fa.got[i].type = msg->type;
        fa.got[i].len = msg->len;
        fa.got[i].shard = pith_shard_id();
        if (msg->len == sizeof(pith_io_result_t))
            memcpy(&fa.got[i].r, msg->data, sizeof(pith_io_result_t));
    }
    atomic_store(&fa.ngot, i + 1);
    if (msg->type == FA_WROTE) {
        done.type = FA_READ;
        fa.rc_read = pith_file_read(fa.fd, fa.back, FA_LEN, 0, &done, &fa.id_read);
        if (fa.rc_read != 0)
            atomic_store(&fa.finished, true);
    } else {
        atomic_store(&fa.finished, true);
    }
    return 0;
}

static const pith_actor_type_t fa_type = {.name = "file.actor", .behaviour = fa_behaviour};

static void *fa_kick(void *arg)
{
    return (void *)(intptr_t)pith_send(*(pith_ref_t *)arg, FA_START, NULL, 0);
}

Test(file, outcomes_reach_an_actor_as_messages, .init = tmp_setup, .fini = tmp_cleanup,
     .timeout = 30)
{
    memset(&fa, 0, sizeof fa);
    fill_random(fa.data, FA_LEN, 77);
    fa.fd = tmp_open("actor", O_CREAT | O_RDWR | O_TRUNC);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_ref_t ref = spawn_at(1, &fa_type);
    cr_assert_eq(call_rc(0, fa_kick, &ref), 0);
    TEST_WAIT_FOR(atomic_load(&fa.finished));
    test_sync_all();

    cr_assert_eq(fa.rc_write, 0, "write: %d (%s)", fa.rc_write, pith_strerror(fa.rc_write));
    cr_assert_eq(fa.rc_read, 0, "read: %d (%s)", fa.rc_read, pith_strerror(fa.rc_read));
    cr_assert_eq(atomic_load(&fa.ngot), 2, "%u outcome messages", atomic_load(&fa.ngot));
    cr_assert_eq(atomic_load(&fa.unexpected), 0);
    const uint32_t want_type[2] = {FA_WROTE, FA_READ};
    const pith_io_id_t want_id[2] = {fa.id_write, fa.id_read};
    for (unsigned i = 0; i < 2; i++) {
        cr_assert_eq(fa.got[i].type, want_type[i], "message %u has tag %u", i, fa.got[i].type);
        cr_assert_eq(fa.got[i].len, sizeof(pith_io_result_t), "message %u has %u bytes", i,
                     fa.got[i].len);
        cr_assert_eq(fa.got[i].r.res, FA_LEN, "message %u: res %" PRId64 " (%s)", i,
                     fa.got[i].r.res, pith_strerror((int)fa.got[i].r.res));
        cr_assert_neq(want_id[i], 0);
        cr_assert_eq(fa.got[i].r.id, want_id[i],
                     "message %u: id %" PRIu64 ", the call gave %" PRIu64, i, fa.got[i].r.id,
                     want_id[i]);
        cr_assert_eq(fa.got[i].r.ctx, &fa.ctx_magic, "message %u: ctx %p", i, fa.got[i].r.ctx);
        cr_assert_eq(fa.got[i].shard, 1);
    }
    cr_assert_eq(memcmp(fa.back, fa.data, FA_LEN), 0, "the actor read back other bytes");
    uint8_t check[FA_LEN];
    cr_assert_eq(pread(fa.fd, check, FA_LEN, 0), (ssize_t)FA_LEN);
    cr_assert_eq(memcmp(check, fa.data, FA_LEN), 0, "the file holds other bytes");
    test_stop(NULL);
    close(fa.fd);
}

/* An outcome addressed to an actor that has stopped meanwhile goes nowhere, and leaks nothing. */
static struct {
    int p[2];
    uint8_t buf[16];
    pith_ref_t ref;
    int rc_read, rc_stop;
} fs;

static void *fs_read_then_stop(void *arg)
{
    (void)arg;
    pith_io_done_t done = {.to = fs.ref, .type = 5};
    fs.rc_read = pith_file_read(fs.p[0], fs.buf, sizeof fs.buf, PITH_FILE_POS, &done, NULL);
    fs.rc_stop = pith_stop(fs.ref);
    return NULL;
}

Test(file, an_outcome_for_an_actor_that_stopped_is_dropped, .init = tmp_setup, .fini = tmp_cleanup,
     .timeout = 30)
{
    memset(&fs, 0, sizeof fs);
    make_pipe(fs.p);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    fs.ref = spawn_at(0, &quiet_type);
    call_on(0, fs_read_then_stop, NULL);
    cr_assert_eq(fs.rc_read, 0, "%d (%s)", fs.rc_read, pith_strerror(fs.rc_read));
    cr_assert_eq(fs.rc_stop, 0, "%d (%s)", fs.rc_stop, pith_strerror(fs.rc_stop));
    test_sync_all();
    cr_assert_eq(write(fs.p[1], "gone", 4), 4);
    /* Nothing to wait on but the pipe draining: the read took the bytes once it saw them. */
    int avail = 4;
    uint64_t deadline = test_wait_deadline();
    while (pith_now_ns() < deadline) {
        cr_assert_eq(ioctl(fs.p[0], FIONREAD, &avail), 0);
        if (avail == 0)
            break;
        test_sync_all();
    }
    cr_assert_eq(avail, 0, "the read never took the bytes");
    test_sync_all();
    cr_assert_eq(atomic_load(&quiet_handled), 0, "the stopped actor handled a message");
    test_stop(NULL);
    close_pipe(fs.p);
}

/* ---- 7. operations in flight when the engine stops ---- */

#define SF_N 3

static const unsigned sf_shard[SF_N] = {0, 0, 1};
static const uint64_t sf_timeout[SF_N] = {0, 3600000 * MS, 0};

static struct {
    int p[SF_N][2];
    uint8_t buf[SF_N][16];
    int rc[SF_N];
    bool again; /* the outcome tries to start another read */
    int rc_again[SF_N];
    _Atomic int64_t res[SF_N];
    atomic_uint calls[SF_N];
    atomic_int shard[SF_N];
    atomic_uint again_outcomes;
} sf;

static void sf_again_done(int64_t res, void *ctx)
{
    (void)res;
    (void)ctx;
    atomic_fetch_add(&sf.again_outcomes, 1);
}

static void sf_done(int64_t res, void *ctx)
{
    uintptr_t i = (uintptr_t)ctx;
    if (i >= SF_N)
        return;
    atomic_store(&sf.res[i], res);
    atomic_store(&sf.shard[i], pith_shard_id());
    if (sf.again) {
        pith_io_done_t d = {.fn = sf_again_done};
        sf.rc_again[i] =
            pith_file_read(sf.p[i][0], sf.buf[i], sizeof sf.buf[i], PITH_FILE_POS, &d, NULL);
    }
    atomic_fetch_add(&sf.calls[i], 1);
}

static void *sf_issue(void *arg)
{
    uintptr_t i = (uintptr_t)arg;
    pith_io_done_t d = {.fn = sf_done, .ctx = (void *)i, .timeout_ns = sf_timeout[i]};
    sf.rc[i] = pith_file_read(sf.p[i][0], sf.buf[i], sizeof sf.buf[i], PITH_FILE_POS, &d, NULL);
    return NULL;
}

static void sf_run(bool again)
{
    memset(&sf, 0, sizeof sf);
    sf.again = again;
    for (unsigned i = 0; i < SF_N; i++) {
        make_pipe(sf.p[i]);
        sf.rc_again[i] = 12345;
    }
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    for (uintptr_t i = 0; i < SF_N; i++) {
        call_on(sf_shard[i], sf_issue, (void *)i);
        cr_assert_eq(sf.rc[i], 0, "read %u: %d (%s)", (unsigned)i, sf.rc[i],
                     pith_strerror(sf.rc[i]));
    }
    test_sync_all();
    for (unsigned i = 0; i < SF_N; i++)
        cr_assert_eq(atomic_load(&sf.calls[i]), 0, "read %u ended before the stop: %" PRId64, i,
                     atomic_load(&sf.res[i]));
    test_stop(NULL);
    for (unsigned i = 0; i < SF_N; i++) {
        cr_assert_eq(atomic_load(&sf.calls[i]), 1,
                     "read %u: %u outcomes by the time the stop "
                     "returned",
                     i, atomic_load(&sf.calls[i]));
        cr_assert_eq(atomic_load(&sf.res[i]), -ECANCELED, "read %u: %" PRId64 " (%s)", i,
                     atomic_load(&sf.res[i]), pith_strerror((int)atomic_load(&sf.res[i])));
        cr_assert_eq(atomic_load(&sf.shard[i]), (int)sf_shard[i], "read %u's outcome ran on %d", i,
                     atomic_load(&sf.shard[i]));
        if (again)
            cr_assert_eq(sf.rc_again[i], -ESHUTDOWN,
                         "a read started from the stop's outcome %u: %d (%s)", i, sf.rc_again[i],
                         pith_strerror(sf.rc_again[i]));
        close_pipe(sf.p[i]);
    }
    cr_assert_eq(atomic_load(&sf.again_outcomes), 0);
}

Test(file, engine_stop_cancels_operations_in_flight_and_runs_each_outcome_once, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    sf_run(false);
}

Test(file, an_operation_started_from_an_outcome_at_stop_is_eshutdown, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    sf_run(true);
}

/* An outcome addressed to an actor, in flight when the engine stops: the stop ends it and the
 * message (if it is made) is released with the actor; nothing leaks. An actor that does get it
 * must see -ECANCELED. */
static struct {
    int p[2];
    uint8_t buf[16];
    int rc_read;
    atomic_uint got, terminated;
    _Atomic int64_t res;
} sa;

static int sa_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    pith_io_result_t r = {.res = 12345};
    if (msg->len == sizeof r)
        memcpy(&r, msg->data, sizeof r);
    atomic_store(&sa.res, r.res);
    atomic_fetch_add(&sa.got, 1);
    return 0;
}

static void sa_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)state;
    (void)reason;
    atomic_fetch_add(&sa.terminated, 1);
}

static const pith_actor_type_t sa_type = {
    .name = "file.at_stop", .behaviour = sa_behaviour, .terminate = sa_terminate};

static void *sa_start(void *arg)
{
    pith_io_done_t d = {.to = *(pith_ref_t *)arg, .type = 9};
    sa.rc_read = pith_file_read(sa.p[0], sa.buf, sizeof sa.buf, PITH_FILE_POS, &d, NULL);
    return NULL;
}

Test(file, an_actor_outcome_in_flight_at_stop_ends_with_the_engine, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    memset(&sa, 0, sizeof sa);
    make_pipe(sa.p);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_ref_t ref = spawn_at(0, &sa_type);
    call_on(0, sa_start, &ref);
    cr_assert_eq(sa.rc_read, 0, "%d (%s)", sa.rc_read, pith_strerror(sa.rc_read));
    test_sync_all();
    cr_assert_eq(atomic_load(&sa.got), 0);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&sa.terminated), 1);
    cr_assert_leq(atomic_load(&sa.got), 1, "%u outcome messages", atomic_load(&sa.got));
    if (atomic_load(&sa.got) == 1)
        cr_assert_eq(atomic_load(&sa.res), -ECANCELED, "%" PRId64, atomic_load(&sa.res));
    close_pipe(sa.p);
}

/* An actor's terminate at engine stop runs after the shard's operations have ended: the file
 * calls refuse. A buffer set registered there is either refused or released by the stop, like
 * any set left registered (the leak check of test_stop tells, under ASan and valgrind). */
static struct {
    int fd;
    uint8_t *buf;
    atomic_int rc_close, rc_register;
    atomic_uint terminated, outcomes;
} st;

static void st_done(int64_t res, void *ctx)
{
    (void)res;
    (void)ctx;
    atomic_fetch_add(&st.outcomes, 1);
}

static void st_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)state;
    (void)reason;
    pith_io_done_t d = {.fn = st_done};
    struct iovec iov = {st.buf, 4096};
    atomic_store(&st.rc_close, pith_file_close(st.fd, &d, NULL));
    atomic_store(&st.rc_register, pith_file_register_buffers(&iov, 1));
    atomic_fetch_add(&st.terminated, 1);
}

static const pith_actor_type_t st_type = {
    .name = "file.terminate", .behaviour = quiet_behaviour, .terminate = st_terminate};

Test(file, file_calls_from_a_terminate_at_stop_refuse_and_leak_nothing, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    memset(&st, 0, sizeof st);
    st.buf = aligned_alloc(4096, 4096);
    cr_assert_not_null(st.buf);
    st.fd = tmp_open("terminate", O_CREAT | O_RDWR | O_TRUNC);
    atomic_store(&st.rc_close, 12345);
    atomic_store(&st.rc_register, 12345);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    spawn_at(0, &st_type);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&st.terminated), 1);
    int rc = atomic_load(&st.rc_close);
    cr_assert_eq(rc, -ESHUTDOWN, "pith_file_close from terminate at stop: %d (%s)", rc,
                 pith_strerror(rc));
    cr_assert_eq(atomic_load(&st.outcomes), 0, "the refused close had an outcome");
    cr_assert_eq(fcntl(st.fd, F_GETFD), FD_CLOEXEC, "the refused close closed the descriptor");
    rc = atomic_load(&st.rc_register);
    cr_assert(rc == 0 || rc == -ESHUTDOWN,
              "pith_file_register_buffers from terminate at stop: %d (%s)", rc, pith_strerror(rc));
    close(st.fd);
    free(st.buf);
}

/* ---- 8. registered buffers ---- */

#define FX_SIZE (64u * 1024u)
#define FX_HALF (FX_SIZE / 2)
#define FX_LEN  (8u * 1024u)

enum { FX_WRITE, FX_READ, FX_PIPE, FX_OPS };

static struct {
    int fd;
    int p[2];
    uint8_t *buf;
    uint8_t other[64];
    int rc_reg, rc_reg_again, rc_reg_null, rc_reg_zero;
    int rc_op[FX_OPS];
    pith_io_id_t id_pipe;
    int rc_span_end, rc_span_outside, rc_span_write, rc_index;
    int rc_unreg_busy, rc_cancel;
    int rc_unreg, rc_unreg_again, rc_after;
    int rc_shard1_read, rc_shard1_reg;
    _Atomic int64_t res[FX_OPS];
    atomic_uint calls[FX_OPS];
    atomic_uint total;
} fx;

static void fx_done(int64_t res, void *ctx)
{
    uintptr_t i = (uintptr_t)ctx;
    if (i < FX_OPS) {
        atomic_store(&fx.res[i], res);
        atomic_fetch_add(&fx.calls[i], 1);
    }
    atomic_fetch_add(&fx.total, 1);
}

static pith_io_done_t fx_d(uintptr_t i)
{
    return (pith_io_done_t){.fn = fx_done, .ctx = (void *)i};
}

static void *fx_register_and_write(void *arg)
{
    (void)arg;
    struct iovec iov = {fx.buf, FX_SIZE};
    fx.rc_reg_null = pith_file_register_buffers(NULL, 1);
    fx.rc_reg_zero = pith_file_register_buffers(&iov, 0);
    fx.rc_reg = pith_file_register_buffers(&iov, 1);
    fx.rc_reg_again = pith_file_register_buffers(&iov, 1);
    pith_io_done_t d = fx_d(FX_WRITE);
    fx.rc_op[FX_WRITE] = pith_file_write_fixed(fx.fd, fx.buf, FX_LEN, 0, 0, &d, NULL);
    return NULL;
}

static void *fx_read(void *arg)
{
    (void)arg;
    pith_io_done_t d = fx_d(FX_READ);
    fx.rc_op[FX_READ] = pith_file_read_fixed(fx.fd, fx.buf + FX_HALF, FX_LEN, 0, 0, &d, NULL);
    return NULL;
}

static void *fx_bad_spans(void *arg)
{
    (void)arg;
    pith_io_done_t d = fx_d(FX_OPS);
    fx.rc_span_end = pith_file_read_fixed(fx.fd, fx.buf + FX_SIZE - 100, 200, 0, 0, &d, NULL);
    fx.rc_span_outside = pith_file_read_fixed(fx.fd, fx.other, sizeof fx.other, 0, 0, &d, NULL);
    fx.rc_span_write = pith_file_write_fixed(fx.fd, fx.buf + 1, FX_SIZE, 0, 0, &d, NULL);
    fx.rc_index = pith_file_read_fixed(fx.fd, fx.buf, FX_LEN, 0, 1, &d, NULL);
    return NULL;
}

/* A fixed read that cannot complete (an empty pipe) holds the set: unregister is refused until
 * its outcome. */
static void *fx_pipe_read(void *arg)
{
    (void)arg;
    pith_io_done_t d = fx_d(FX_PIPE);
    fx.rc_op[FX_PIPE] =
        pith_file_read_fixed(fx.p[0], fx.buf, 16, PITH_FILE_POS, 0, &d, &fx.id_pipe);
    if (fx.rc_op[FX_PIPE] == 0) {
        fx.rc_unreg_busy = pith_file_unregister_buffers();
        fx.rc_cancel = pith_io_cancel(fx.id_pipe);
    }
    return NULL;
}

static void *fx_unregister(void *arg)
{
    (void)arg;
    fx.rc_unreg = pith_file_unregister_buffers();
    fx.rc_unreg_again = pith_file_unregister_buffers();
    pith_io_done_t d = fx_d(FX_OPS);
    fx.rc_after = pith_file_read_fixed(fx.fd, fx.buf, FX_LEN, 0, 0, &d, NULL);
    return NULL;
}

/* Shard 1 has no set of its own yet: shard 0's does not count there. It registers one and keeps
 * it past the engine's stop. */
static void *fx_shard1(void *arg)
{
    (void)arg;
    pith_io_done_t d = fx_d(FX_OPS);
    fx.rc_shard1_read = pith_file_read_fixed(fx.fd, fx.buf, FX_LEN, 0, 0, &d, NULL);
    struct iovec iov = {fx.buf, FX_SIZE};
    fx.rc_shard1_reg = pith_file_register_buffers(&iov, 1);
    return NULL;
}

#define FX_ASSERT_RC(rc, want)                                                                     \
    cr_assert_eq((rc), (want), "%s: %d (%s), expected %s", #rc, (rc), pith_strerror(rc), #want)

Test(file, registered_buffers_read_and_write_and_check_their_spans, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    memset(&fx, 0, sizeof fx);
    fx.buf = aligned_alloc(4096, FX_SIZE);
    cr_assert_not_null(fx.buf);
    fill_random(fx.buf, FX_HALF, 4242);
    memset(fx.buf + FX_HALF, 0, FX_HALF);
    fx.fd = tmp_open("fixed", O_CREAT | O_RDWR | O_TRUNC);
    make_pipe(fx.p);
    pith_config_t cfg = test_config(2);
    test_start(&cfg);

    call_on(0, fx_register_and_write, NULL);
    FX_ASSERT_RC(fx.rc_reg_null, -EINVAL);
    FX_ASSERT_RC(fx.rc_reg_zero, -EINVAL);
    FX_ASSERT_RC(fx.rc_reg, 0);
    FX_ASSERT_RC(fx.rc_reg_again, -EBUSY);
    FX_ASSERT_RC(fx.rc_op[FX_WRITE], 0);
    TEST_WAIT_FOR(atomic_load(&fx.calls[FX_WRITE]) == 1);
    cr_assert_eq(atomic_load(&fx.res[FX_WRITE]), FX_LEN, "write_fixed: %" PRId64,
                 atomic_load(&fx.res[FX_WRITE]));

    call_on(0, fx_read, NULL);
    FX_ASSERT_RC(fx.rc_op[FX_READ], 0);
    TEST_WAIT_FOR(atomic_load(&fx.calls[FX_READ]) == 1);
    cr_assert_eq(atomic_load(&fx.res[FX_READ]), FX_LEN, "read_fixed: %" PRId64,
                 atomic_load(&fx.res[FX_READ]));
    cr_assert_eq(memcmp(fx.buf + FX_HALF, fx.buf, FX_LEN), 0,
                 "read_fixed brought back other bytes than write_fixed wrote");
    uint8_t check[FX_LEN];
    cr_assert_eq(pread(fx.fd, check, FX_LEN, 0), (ssize_t)FX_LEN);
    cr_assert_eq(memcmp(check, fx.buf, FX_LEN), 0, "the file holds other bytes");

    call_on(0, fx_bad_spans, NULL);
    FX_ASSERT_RC(fx.rc_span_end, -EINVAL);
    FX_ASSERT_RC(fx.rc_span_outside, -EINVAL);
    FX_ASSERT_RC(fx.rc_span_write, -EINVAL);
    FX_ASSERT_RC(fx.rc_index, -EINVAL);

    call_on(0, fx_pipe_read, NULL);
    FX_ASSERT_RC(fx.rc_op[FX_PIPE], 0);
    FX_ASSERT_RC(fx.rc_unreg_busy, -EBUSY);
    FX_ASSERT_RC(fx.rc_cancel, 0);
    TEST_WAIT_FOR(atomic_load(&fx.calls[FX_PIPE]) == 1);
    cr_assert_eq(atomic_load(&fx.res[FX_PIPE]), -ECANCELED, "the fixed pipe read: %" PRId64,
                 atomic_load(&fx.res[FX_PIPE]));

    call_on(0, fx_unregister, NULL);
    FX_ASSERT_RC(fx.rc_unreg, 0);
    FX_ASSERT_RC(fx.rc_unreg_again, -ENXIO);
    FX_ASSERT_RC(fx.rc_after, -EINVAL);

    call_on(1, fx_shard1, NULL);
    FX_ASSERT_RC(fx.rc_shard1_read, -EINVAL);
    FX_ASSERT_RC(fx.rc_shard1_reg, 0);

    test_sync_all();
    cr_assert_eq(atomic_load(&fx.total), 3, "%u outcomes for 3 operations", atomic_load(&fx.total));
    test_stop(NULL);
    close(fx.fd);
    close_pipe(fx.p);
    free(fx.buf);
}

/* The outcome of the last fixed operation ends it: the set can go from there. */
static struct {
    int fd;
    uint8_t *buf;
    int rc_reg, rc_write, rc_unreg_after;
    atomic_int rc_unreg_in_outcome;
    _Atomic int64_t res;
    atomic_uint calls;
} fu;

static void fu_done(int64_t res, void *ctx)
{
    (void)ctx;
    atomic_store(&fu.rc_unreg_in_outcome, pith_file_unregister_buffers());
    atomic_store(&fu.res, res);
    atomic_fetch_add(&fu.calls, 1);
}

static void *fu_start(void *arg)
{
    (void)arg;
    struct iovec iov = {fu.buf, FX_SIZE};
    fu.rc_reg = pith_file_register_buffers(&iov, 1);
    pith_io_done_t d = {.fn = fu_done};
    fu.rc_write = pith_file_write_fixed(fu.fd, fu.buf, FX_LEN, 0, 0, &d, NULL);
    return NULL;
}

static void *fu_after(void *arg)
{
    (void)arg;
    fu.rc_unreg_after = pith_file_unregister_buffers();
    return NULL;
}

Test(file, buffers_unregister_from_the_last_fixed_operations_outcome, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 30)
{
    memset(&fu, 0, sizeof fu);
    atomic_store(&fu.rc_unreg_in_outcome, 12345);
    fu.buf = aligned_alloc(4096, FX_SIZE);
    cr_assert_not_null(fu.buf);
    fill_random(fu.buf, FX_SIZE, 99);
    fu.fd = tmp_open("fixed-last", O_CREAT | O_RDWR | O_TRUNC);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    call_on(0, fu_start, NULL);
    FX_ASSERT_RC(fu.rc_reg, 0);
    FX_ASSERT_RC(fu.rc_write, 0);
    TEST_WAIT_FOR(atomic_load(&fu.calls) >= 1);
    call_on(0, fu_after, NULL);
    cr_assert_eq(atomic_load(&fu.calls), 1);
    cr_assert_eq(atomic_load(&fu.res), FX_LEN, "write_fixed: %" PRId64, atomic_load(&fu.res));
    int rc = atomic_load(&fu.rc_unreg_in_outcome);
    cr_assert_eq(rc, 0,
                 "pith_file_unregister_buffers in the outcome of the only fixed operation: %d "
                 "(%s), expected 0 (no fixed operation is in flight any more)",
                 rc, pith_strerror(rc));
    FX_ASSERT_RC(fu.rc_unreg_after, -ENXIO);
    test_stop(NULL);
    close(fu.fd);
    free(fu.buf);
}

/* ---- 9. hundreds of operations in flight on each shard ---- */

#define MANY_N     200u
#define MANY_CHUNK 4096u
#define MANY_SIZE  (MANY_N * MANY_CHUNK)
#define MANY_STEP  7u  /* issue order: i * 7 mod 200 visits every chunk */
#define MANY_READS 64u /* short reads tolerated while reading the file back */

struct many_shard;

struct many_op {
    struct many_shard *m;
    unsigned i;
};

static struct many_shard {
    unsigned shard;
    int fd;
    uint8_t *data, *back;
    struct many_op ops[MANY_N];
    pith_io_id_t ids[MANY_N];
    int64_t res[MANY_N];
    unsigned calls[MANY_N];
    unsigned written, reads; /* the shard's only */
    uint64_t read_off;
    int issue_rc;
    unsigned issue_at;
    int64_t read_err;
    unsigned wrong_shard, wrong_ctx;
    atomic_bool finished;
} many[2];

static void many_read_done(int64_t res, void *ctx);

static void many_read_next(struct many_shard *m)
{
    pith_io_done_t d = {.fn = many_read_done, .ctx = m};
    uint64_t left = MANY_SIZE - m->read_off;
    int rc = pith_file_read(m->fd, m->back + m->read_off, (uint32_t)left, m->read_off, &d, NULL);
    if (rc != 0) {
        m->issue_rc = rc;
        m->issue_at = MANY_N;
        atomic_store(&m->finished, true);
    }
}

static void many_read_done(int64_t res, void *ctx)
{
    struct many_shard *m = ctx;
    if (pith_shard_id() != (int)m->shard)
        m->wrong_shard++;
    m->reads++;
    if (res <= 0) {
        m->read_err = res == 0 ? -EIO : res;
        atomic_store(&m->finished, true);
        return;
    }
    m->read_off += (uint64_t)res;
    if (m->read_off >= MANY_SIZE || m->reads >= MANY_READS)
        atomic_store(&m->finished, true);
    else
        many_read_next(m);
}

static void many_write_done(int64_t res, void *ctx)
{
    struct many_op *op = ctx;
    struct many_shard *m = NULL;
    for (unsigned s = 0; s < 2; s++)
        if (op >= many[s].ops && op < many[s].ops + MANY_N)
            m = &many[s];
    if (m == NULL) {
        /* Nothing to attribute it to: count it on both. */
        many[0].wrong_ctx++;
        many[1].wrong_ctx++;
        return;
    }
    if (pith_shard_id() != (int)m->shard)
        m->wrong_shard++;
    m->res[op->i] = res;
    m->calls[op->i]++;
    if (++m->written == MANY_N)
        many_read_next(m);
}

/* All writes in one task, so that all are in flight together: even chunks with write, odd ones
 * with a two-part writev. */
static void *many_issue(void *arg)
{
    struct many_shard *m = arg;
    for (unsigned k = 0; k < MANY_N; k++) {
        unsigned i = (k * MANY_STEP) % MANY_N;
        uint8_t *p = m->data + (size_t)i * MANY_CHUNK;
        uint64_t off = (uint64_t)i * MANY_CHUNK;
        pith_io_done_t d = {.fn = many_write_done, .ctx = &m->ops[i]};
        int rc;
        if (i % 2 == 0) {
            rc = pith_file_write(m->fd, p, MANY_CHUNK, off, &d, &m->ids[i]);
        } else {
            struct iovec iov[2] = {{p, 1000}, {p + 1000, MANY_CHUNK - 1000}};
            rc = pith_file_writev(m->fd, iov, 2, off, &d, &m->ids[i]);
        }
        if (rc != 0) {
            m->issue_rc = rc;
            m->issue_at = k;
            atomic_store(&m->finished, true);
            break;
        }
    }
    return NULL;
}

static void many_kick(void *arg)
{
    many_issue(arg);
}

static void many_run(unsigned io_entries)
{
    memset(many, 0, sizeof many);
    pith_config_t cfg = test_config(2);
    if (io_entries != 0)
        cfg.io_entries = io_entries;
    for (unsigned s = 0; s < 2; s++) {
        struct many_shard *m = &many[s];
        char name[16];
        snprintf(name, sizeof name, "many-%u", s);
        m->shard = s;
        m->fd = tmp_open(name, O_CREAT | O_RDWR | O_TRUNC);
        m->data = malloc(MANY_SIZE);
        m->back = malloc(MANY_SIZE);
        cr_assert(m->data != NULL && m->back != NULL);
        fill_random(m->data, MANY_SIZE, 1000 + s);
        memset(m->back, 0xee, MANY_SIZE);
        for (unsigned i = 0; i < MANY_N; i++)
            m->ops[i] = (struct many_op){m, i};
    }
    test_start(&cfg);
    for (unsigned s = 0; s < 2; s++)
        cr_assert_eq(pith_submit(s, many_kick, &many[s]), 0);
    TEST_WAIT_FOR(atomic_load(&many[0].finished) && atomic_load(&many[1].finished));
    test_sync_all();
    for (unsigned s = 0; s < 2; s++) {
        struct many_shard *m = &many[s];
        cr_assert_eq(m->issue_rc, 0, "shard %u: operation %u refused: %d (%s)", s, m->issue_at,
                     m->issue_rc, pith_strerror(m->issue_rc));
        cr_assert_eq(m->wrong_ctx, 0);
        cr_assert_eq(m->wrong_shard, 0, "shard %u: %u outcomes ran elsewhere", s, m->wrong_shard);
        for (unsigned i = 0; i < MANY_N; i++) {
            cr_assert_eq(m->calls[i], 1, "shard %u: write %u had %u outcomes", s, i, m->calls[i]);
            cr_assert_eq(m->res[i], MANY_CHUNK, "shard %u: write %u: %" PRId64 " (%s)", s, i,
                         m->res[i], pith_strerror((int)m->res[i]));
        }
        assert_ids_distinct(m->ids, MANY_N);
        cr_assert_eq(m->read_err, 0, "shard %u: reading back: %" PRId64 " (%s)", s, m->read_err,
                     pith_strerror((int)m->read_err));
        cr_assert_eq(m->read_off, MANY_SIZE, "shard %u read back %" PRIu64 " bytes in %u reads", s,
                     m->read_off, m->reads);
        for (size_t b = 0; b < MANY_SIZE; b++)
            cr_assert_eq(m->back[b], m->data[b], "shard %u: byte %zu read back as %#x, not %#x", s,
                         b, m->back[b], m->data[b]);
    }
    test_stop(NULL);
    for (unsigned s = 0; s < 2; s++) {
        close(many[s].fd);
        free(many[s].data);
        free(many[s].back);
    }
}

Test(file, two_hundred_writes_in_flight_per_shard_land_and_read_back, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 60)
{
    many_run(0);
}

Test(file, more_operations_than_submission_entries_all_complete, .init = tmp_setup,
     .fini = tmp_cleanup, .timeout = 60)
{
    many_run(16);
}
