/* pith_file_*: file operations on the calling shard's ring (io/fop.h does the bookkeeping), and
 * delivery of each outcome to a callback or, as a message, to an actor. */
#include <pith/file.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include "core.h"
#include "fop.h"
#include "hooks.h"

/* The caller's part of a record: where the outcome goes, then a path or iovec copy. */
struct fcall {
    pith_io_done_t done;
    /* path bytes or struct iovec[], 16-byte aligned */
    alignas(16) unsigned char tail[];
};

static void deliver(struct fop *f, int res)
{
    struct fcall *c = (struct fcall *)f->data;
    if (c->done.fn != NULL) {
        c->done.fn(res, c->done.ctx);
        return;
    }
    pith_io_result_t r = {.res = res, .id = f->id, .ctx = c->done.ctx};
    /* The actor asked for it: it comes in past the mailbox's bound. A stopped actor loses it
     * (a dead letter, as the header says). */
    (void)core_send_sys(c->done.to, c->done.type, &r, sizeof(r), AMSG_ADMIT);
}

/* What every call shares, in the header's order: *id cleared, -EPERM off the shards, -EINVAL
 * for `bad` arguments or a bad `done`, -ESHUTDOWN, then the record (with `tail` bytes for a
 * copy) and its SQE. On success the caller preps *sqe and ends with finish(). */
static int start(const pith_io_done_t *done, bool bad, size_t tail, pith_io_id_t *id,
                 struct fop **out, struct io_uring_sqe **sqe)
{
    if (id != NULL)
        *id = 0;
    struct fops *t = shard_fops();
    if (t == NULL)
        return -EPERM;
    if (bad || done == NULL ||
        (done->fn == NULL && (done->to == PITH_REF_NONE || done->type >= PITH_MSG_RESERVED)))
        return -EINVAL;
    if (shard_stopping())
        return -ESHUTDOWN;
    struct fop *f = fop_new(t, sizeof(struct fcall) + tail, deliver);
    if (f == NULL)
        return -ENOMEM;
    *sqe = fop_sqe(f, done->timeout_ns > 0);
    if (*sqe == NULL) {
        fop_discard(f);
        return -EBUSY;
    }
    ((struct fcall *)f->data)->done = *done;
    *out = f;
    return 0;
}

static int finish(struct fop *f, struct io_uring_sqe *sqe, pith_io_id_t *id)
{
    fop_arm(f, sqe, ((struct fcall *)f->data)->done.timeout_ns);
    if (id != NULL)
        *id = f->id;
    return 0;
}

/* start() for a call that names a path: the record carries a copy of it in *copy. */
static int start_path(const char *path, const pith_io_done_t *done, bool bad, pith_io_id_t *id,
                      struct fop **f, struct io_uring_sqe **sqe, const char **copy)
{
    size_t n = path != NULL ? strlen(path) + 1 : 0;
    int err = start(done, bad || path == NULL, n, id, f, sqe);
    if (err)
        return err;
    char *p = (char *)((struct fcall *)(*f)->data)->tail;
    memcpy(p, path, n);
    *copy = p;
    return 0;
}

int pith_file_open(const char *path, int flags, unsigned mode, const pith_io_done_t *done,
                   pith_io_id_t *id)
{
    struct fop *f;
    struct io_uring_sqe *sqe;
    const char *p;
    int err = start_path(path, done, false, id, &f, &sqe, &p);
    if (err)
        return err;
    io_uring_prep_openat(sqe, AT_FDCWD, p, flags | O_CLOEXEC, mode);
    return finish(f, sqe, id);
}

int pith_file_statx(const char *path, int flags, unsigned mask, struct statx *out,
                    const pith_io_done_t *done, pith_io_id_t *id)
{
    struct fop *f;
    struct io_uring_sqe *sqe;
    const char *p;
    int err = start_path(path, done, out == NULL, id, &f, &sqe, &p);
    if (err)
        return err;
    io_uring_prep_statx(sqe, AT_FDCWD, p, flags, mask, out);
    return finish(f, sqe, id);
}

int pith_file_unlink(const char *path, int flags, const pith_io_done_t *done, pith_io_id_t *id)
{
    struct fop *f;
    struct io_uring_sqe *sqe;
    const char *p;
    int err = start_path(path, done, false, id, &f, &sqe, &p);
    if (err)
        return err;
    io_uring_prep_unlinkat(sqe, AT_FDCWD, p, flags);
    return finish(f, sqe, id);
}

int pith_file_close(int fd, const pith_io_done_t *done, pith_io_id_t *id)
{
    struct fop *f;
    struct io_uring_sqe *sqe;
    int err = start(done, false, 0, id, &f, &sqe);
    if (err)
        return err;
    io_uring_prep_close(sqe, fd);
    return finish(f, sqe, id);
}

/* Whether buf..buf+len lies inside registered buffer `index`. */
static bool fixed_ok(const struct fops *t, const void *buf, uint32_t len, unsigned index)
{
    if (t == NULL || index >= t->nbufs)
        return false;
    uintptr_t b = (uintptr_t)t->bufs[index].iov_base, e = b + t->bufs[index].iov_len;
    uintptr_t p = (uintptr_t)buf;
    return p >= b && p <= e && len <= e - p;
}

enum rw { RW_READ, RW_WRITE, RW_READ_FIXED, RW_WRITE_FIXED };

static int rw(enum rw kind, int fd, void *buf, uint32_t len, uint64_t off, unsigned index,
              const pith_io_done_t *done, pith_io_id_t *id)
{
    struct fops *t = shard_fops();
    bool fixed = kind == RW_READ_FIXED || kind == RW_WRITE_FIXED;
    bool bad = (buf == NULL && len > 0) || (fixed && !fixed_ok(t, buf, len, index));
    struct fop *f;
    struct io_uring_sqe *sqe;
    int err = start(done, bad, 0, id, &f, &sqe);
    if (err)
        return err;
    switch (kind) {
    case RW_READ:
        io_uring_prep_read(sqe, fd, buf, len, off);
        break;
    case RW_WRITE:
        io_uring_prep_write(sqe, fd, buf, len, off);
        break;
    case RW_READ_FIXED:
        io_uring_prep_read_fixed(sqe, fd, buf, len, off, (int)index);
        break;
    case RW_WRITE_FIXED:
        io_uring_prep_write_fixed(sqe, fd, buf, len, off, (int)index);
        break;
    }
    f->fixed = fixed;
    return finish(f, sqe, id);
}

int pith_file_read(int fd, void *buf, uint32_t len, uint64_t off, const pith_io_done_t *done,
                   pith_io_id_t *id)
{
    return rw(RW_READ, fd, buf, len, off, 0, done, id);
}

int pith_file_write(int fd, const void *buf, uint32_t len, uint64_t off, const pith_io_done_t *done,
                    pith_io_id_t *id)
{
    return rw(RW_WRITE, fd, (void *)(uintptr_t)buf, len, off, 0, done, id);
}

int pith_file_read_fixed(int fd, void *buf, uint32_t len, uint64_t off, unsigned index,
                         const pith_io_done_t *done, pith_io_id_t *id)
{
    return rw(RW_READ_FIXED, fd, buf, len, off, index, done, id);
}

int pith_file_write_fixed(int fd, const void *buf, uint32_t len, uint64_t off, unsigned index,
                          const pith_io_done_t *done, pith_io_id_t *id)
{
    return rw(RW_WRITE_FIXED, fd, (void *)(uintptr_t)buf, len, off, index, done, id);
}

static int rwv(bool write, int fd, const struct iovec *iov, unsigned iovcnt, uint64_t off,
               const pith_io_done_t *done, pith_io_id_t *id)
{
    bool bad = iov == NULL || iovcnt == 0 || iovcnt > IOV_MAX;
    size_t n = bad ? 0 : (size_t)iovcnt * sizeof(*iov);
    struct fop *f;
    struct io_uring_sqe *sqe;
    int err = start(done, bad, n, id, &f, &sqe);
    if (err)
        return err;
    /* The kernel may read the array as late as when the operation runs: ours lives as long. */
    struct iovec *v = (struct iovec *)((struct fcall *)f->data)->tail;
    memcpy(v, iov, n);
    if (write)
        io_uring_prep_writev(sqe, fd, v, iovcnt, off);
    else
        io_uring_prep_readv(sqe, fd, v, iovcnt, off);
    return finish(f, sqe, id);
}

int pith_file_readv(int fd, const struct iovec *iov, unsigned iovcnt, uint64_t off,
                    const pith_io_done_t *done, pith_io_id_t *id)
{
    return rwv(false, fd, iov, iovcnt, off, done, id);
}

int pith_file_writev(int fd, const struct iovec *iov, unsigned iovcnt, uint64_t off,
                     const pith_io_done_t *done, pith_io_id_t *id)
{
    return rwv(true, fd, iov, iovcnt, off, done, id);
}

static int sync_op(int fd, unsigned flags, const pith_io_done_t *done, pith_io_id_t *id)
{
    struct fop *f;
    struct io_uring_sqe *sqe;
    int err = start(done, false, 0, id, &f, &sqe);
    if (err)
        return err;
    io_uring_prep_fsync(sqe, fd, flags);
    return finish(f, sqe, id);
}

int pith_file_fsync(int fd, const pith_io_done_t *done, pith_io_id_t *id)
{
    return sync_op(fd, 0, done, id);
}

int pith_file_fdatasync(int fd, const pith_io_done_t *done, pith_io_id_t *id)
{
    return sync_op(fd, IORING_FSYNC_DATASYNC, done, id);
}

int pith_file_register_buffers(const struct iovec *iov, unsigned n)
{
    struct fops *t = shard_fops();
    if (t == NULL)
        return -EPERM;
    if (iov == NULL || n == 0)
        return -EINVAL;
    if (shard_stopping())
        return -ESHUTDOWN;
    return fops_register(t, iov, n);
}

int pith_file_unregister_buffers(void)
{
    struct fops *t = shard_fops();
    if (t == NULL)
        return -EPERM;
    return fops_unregister(t);
}

int pith_io_cancel(pith_io_id_t id)
{
    struct fops *t = shard_fops();
    if (t == NULL)
        return -EPERM;
    struct fop *f = fops_find(t, id);
    if (f == NULL)
        return -ENOENT;
    return fop_cancel(f);
}
