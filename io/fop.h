/* Operations on the ring that report once each: a record per operation, found by id for
 * cancellation, with an optional linked timeout, and a drain that ends every one of them before
 * the ring goes away. What an operation is (a file read, a statx) is the caller's business: it
 * fills the SQE that fop_sqe hands out. Knows nothing of shards or actors. */
#ifndef PITH_IO_FOP_H
#define PITH_IO_FOP_H

#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "io.h"
#include "slots.h"

struct fop;
/* The outcome, once every CQE of the operation has arrived: the operation's result, or
 * -ETIMEDOUT when its linked timeout cancelled it. The record is freed after this returns. */
typedef void (*fop_done_fn)(struct fop *f, int res);

struct fop {
    struct io_op op;      /* the operation's CQE */
    struct io_op timeout; /* the linked timeout's CQE */
    struct fops *tab;
    fop_done_fn done;
    uint64_t id;
    int32_t res;
    uint8_t pending; /* CQEs still to come */
    bool timed_out, cancelling;
    bool fixed; /* uses the registered buffer set: set before fop_arm */
    struct __kernel_timespec ts;
    /* The caller's part: `extra` bytes asked of fop_new, 16-byte aligned. */
    alignas(16) unsigned char data[];
};

/* A ring's table of operations in flight. */
struct fops {
    struct io_ring *ring;
    struct slots ops; /* the records by id; its owner (the shard) is in every id */
    uint32_t fixed_live;
    unsigned nbufs; /* registered buffers; 0: none */
    struct iovec *bufs;
};

void fops_init(struct fops *t, struct io_ring *r, unsigned owner);

/* A record with `extra` bytes of caller data, entered in the table; NULL: no memory. */
struct fop *fop_new(struct fops *t, size_t extra, fop_done_fn done);
/* Frees a record that was never submitted (fop_sqe failed, or the caller gave up). */
void fop_discard(struct fop *f);

/* An SQE for f's operation, with room kept behind it for a linked timeout when `timed`. NULL
 * when the submission queue has no room even after submitting (-EBUSY for the caller). */
struct io_uring_sqe *fop_sqe(struct fop *f, bool timed);
/* After io_uring_prep_* on that SQE: sets its user_data and, when timeout_ns > 0, links the
 * timeout behind it. From here the record belongs to the ring until its outcome. */
void fop_arm(struct fop *f, struct io_uring_sqe *sqe, uint64_t timeout_ns);

/* The live record for an id, or NULL. */
struct fop *fops_find(struct fops *t, uint64_t id);

/* Queues an ASYNC_CANCEL for f. -EALREADY: already asked; -EBUSY: no SQE. */
int fop_cancel(struct fop *f);

/* Registers and unregisters the table's buffer set (io_uring_register_buffers). */
int fops_register(struct fops *t, const struct iovec *iov, unsigned n);
int fops_unregister(struct fops *t);

/* At the end of the ring's life, on its thread: cancels every operation in flight and reaps
 * until each has reported (bounded by `limit_ns`). Returns how many never reported. Then
 * frees the table. */
unsigned fops_drain(struct fops *t, uint64_t limit_ns);

#endif
