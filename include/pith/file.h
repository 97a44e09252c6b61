/* Files on the calling shard's io_uring: open, read, write, readv, writev, fsync, fdatasync,
 * close, statx, unlink, and reads and writes into registered (fixed) buffers. Each call queues
 * one operation and returns at once; the loop submits it with the rest of the iteration's work
 * and the outcome comes back on the same shard, exactly once, to a callback or as a message to
 * an actor. Nothing blocks the shard.
 *
 * Ownership: paths and iovec arrays are copied at the call; the data buffers (and a statx
 * result) belong to the caller and must stay valid until the outcome arrives. */
#ifndef PITH_FILE_H
#define PITH_FILE_H

#include <stdint.h>
#include <sys/uio.h>

#include <pith/actor.h>
#include <pith/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Names an operation in flight for pith_io_cancel; never 0. */
typedef uint64_t pith_io_id_t;

/* res: what the system call would return (bytes, a file descriptor, 0), or -errno. Runs on the
 * shard that started the operation, outside any actor's turn. */
typedef void (*pith_io_fn_t)(int64_t res, void *ctx);

/* Where an outcome goes, and the operation's time limit. An outcome sent to an actor is a
 * message like any other, except that it comes in past the mailbox's bound (the actor asked
 * for it); if the actor has stopped it is a dead letter. */
typedef struct pith_io_done {
    pith_io_fn_t fn; /* called with the result, or, when NULL: */
    void *ctx;       /* (given back to fn, and in pith_io_result_t.ctx) */
    pith_ref_t to;   /* this actor gets a message of `type` whose payload is a pith_io_result_t */
    uint32_t type;   /* (below PITH_MSG_RESERVED) */
    /* 0: none. Otherwise a timeout linked to the operation: if it has not completed after
     * timeout_ns, the kernel cancels it and the outcome is -ETIMEDOUT. Work a kernel worker
     * has already begun (fsync, a blocking open) may not stop: its real result comes when it
     * ends, or -ETIMEDOUT if the worker was interrupted. */
    uint64_t timeout_ns;
} pith_io_done_t;

/* The payload of the message an actor gets. */
typedef struct pith_io_result {
    int64_t res;     /* what the system call returned (bytes, a descriptor, 0), or -errno */
    pith_io_id_t id; /* the operation's id, as the call that started it gave it */
    void *ctx;       /* the pith_io_done_t's ctx */
} pith_io_result_t;

/* As the offset of a read or write: use and advance the file position (pipes, sockets). */
#define PITH_FILE_POS UINT64_MAX

/* Each call below: 0 when the operation is queued (*id, if not NULL, names it; its outcome will
 * come), or -errno and nothing is queued and no outcome comes:
 *   -EPERM    not called on a shard;
 *   -EINVAL   done NULL, or neither done->fn nor done->to, or a bad argument (named per call);
 *   -ESHUTDOWN the engine is stopping;
 *   -ENOMEM   no memory for the operation's record;
 *   -EBUSY    the shard's submission queue is full and could not be submitted (an operation
 *             with a timeout needs two entries: never available with cfg.io_entries = 1).
 * Outcomes of operations still in flight when the engine stops arrive before the shard ends,
 * as -ECANCELED (or their real result, if they finished first). */

/* openat(AT_FDCWD, path, flags | O_CLOEXEC, mode): the outcome is the new descriptor.
 * -EINVAL: path NULL. */
PITH_API int pith_file_open(const char *path, int flags, unsigned mode, const pith_io_done_t *done,
                            pith_io_id_t *id);
/* close(fd): the outcome is 0 or -errno. The descriptor is the caller's until then. */
PITH_API int pith_file_close(int fd, const pith_io_done_t *done, pith_io_id_t *id);

/* pread at `off` (PITH_FILE_POS: the file position): the outcome is the byte count, which may
 * be short. buf stays the caller's, and must stay valid, until the outcome. -EINVAL: buf NULL
 * with len > 0. */
PITH_API int pith_file_read(int fd, void *buf, uint32_t len, uint64_t off,
                            const pith_io_done_t *done, pith_io_id_t *id);
/* pwrite, as pith_file_read: the outcome is the byte count written, which may be short. */
PITH_API int pith_file_write(int fd, const void *buf, uint32_t len, uint64_t off,
                             const pith_io_done_t *done, pith_io_id_t *id);

/* preadv; the iovec array is copied, the buffers it names are not (they stay the caller's until
 * the outcome). -EINVAL: iov NULL, iovcnt 0 or over IOV_MAX. */
PITH_API int pith_file_readv(int fd, const struct iovec *iov, unsigned iovcnt, uint64_t off,
                             const pith_io_done_t *done, pith_io_id_t *id);
/* pwritev, as pith_file_readv. */
PITH_API int pith_file_writev(int fd, const struct iovec *iov, unsigned iovcnt, uint64_t off,
                              const pith_io_done_t *done, pith_io_id_t *id);

/* fsync(fd): the outcome is 0 once the file's data and metadata are durable, or -errno. */
PITH_API int pith_file_fsync(int fd, const pith_io_done_t *done, pith_io_id_t *id);
/* fdatasync(fd): as pith_file_fsync, for the data (and the metadata needed to read it back). */
PITH_API int pith_file_fdatasync(int fd, const pith_io_done_t *done, pith_io_id_t *id);

struct statx;
/* statx(AT_FDCWD, path, flags, mask, out): the outcome is 0 with *out filled, or -errno.
 * -EINVAL: path or out NULL. */
PITH_API int pith_file_statx(const char *path, int flags, unsigned mask, struct statx *out,
                             const pith_io_done_t *done, pith_io_id_t *id);

/* unlinkat(AT_FDCWD, path, flags); flags AT_REMOVEDIR removes a directory. -EINVAL: path NULL. */
PITH_API int pith_file_unlink(const char *path, int flags, const pith_io_done_t *done,
                              pith_io_id_t *id);

/* Registers buffers with the calling shard's ring (io_uring_register_buffers): reads and writes
 * that name one by index skip the kernel's page pinning per operation. One set per shard; it
 * stays until pith_file_unregister_buffers or the engine stops. Errors: -EPERM not on a shard;
 * -EINVAL iov NULL or n 0; -ESHUTDOWN the engine is stopping; -EBUSY a set is already registered;
 * or the kernel's -errno (-ENOMEM past RLIMIT_MEMLOCK, -EFAULT a bad buffer). */
PITH_API int pith_file_register_buffers(const struct iovec *iov, unsigned n);
/* Errors: -EPERM not on a shard; -ENXIO no set registered; -EBUSY fixed operations in flight. */
PITH_API int pith_file_unregister_buffers(void);

/* As pith_file_read, into registered buffer `index`; buf..buf+len must lie inside it.
 * -EINVAL: no registered set, index out of range, or the span outside the buffer. */
PITH_API int pith_file_read_fixed(int fd, void *buf, uint32_t len, uint64_t off, unsigned index,
                                  const pith_io_done_t *done, pith_io_id_t *id);
/* As pith_file_write, from registered buffer `index`, with pith_file_read_fixed's errors. */
PITH_API int pith_file_write_fixed(int fd, const void *buf, uint32_t len, uint64_t off,
                                   unsigned index, const pith_io_done_t *done, pith_io_id_t *id);

/* Asks the kernel to cancel an operation of the calling shard. Its outcome still comes, as
 * -ECANCELED, or as its real result if it finished first. Errors: -EPERM not on a shard;
 * -ENOENT no such operation in flight on this shard (it finished, or the id is from another
 * shard); -EALREADY already being cancelled; -EBUSY the submission queue is full. */
PITH_API int pith_io_cancel(pith_io_id_t id);

#ifdef __cplusplus
}
#endif

#endif
