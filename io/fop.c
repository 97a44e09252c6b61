/* Operations that report once: records, ids, linked timeouts, cancellation, the final drain. */
#include "fop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <pith/mem.h>

/* Where each shard's generation count stopped, so that a later engine's ids differ from an
 * earlier one's: an id kept across a restart finds nothing. Written by shard `owner` as it
 * ends and read by the next engine's shard `owner` as it starts; the join of the first and
 * the creation of the second order the two. */
static uint32_t gen_keep[SLOTS_OWNERS];

void fops_init(struct fops *t, struct io_ring *r, unsigned owner)
{
    memset(t, 0, sizeof(*t));
    t->ring = r;
    owner &= SLOTS_OWNERS - 1;
    slots_init(&t->ops, owner, SLOTS_MAX, &gen_keep[owner]);
}

struct fop *fop_new(struct fops *t, size_t extra, fop_done_fn done)
{
    struct fop *f = pith_malloc(sizeof(*f) + extra);
    if (f == NULL)
        return NULL;
    memset(f, 0, sizeof(*f));
    if (slots_add(&t->ops, f, &f->id) != 0) {
        pith_free(f);
        return NULL;
    }
    f->tab = t;
    f->done = done;
    return f;
}

/* Takes f out of the table: its id finds nothing from here on. */
static void fop_unlink(struct fop *f)
{
    struct fops *t = f->tab;
    slots_remove(&t->ops, f->id);
    if (f->fixed)
        t->fixed_live--;
}

void fop_discard(struct fop *f)
{
    fop_unlink(f);
    pith_free(f);
}

struct fop *fops_find(struct fops *t, uint64_t id)
{
    return slots_find(&t->ops, id);
}

/* Both CQEs in (or the only one): out of the table, report, free. Unlinked first, so that
 * the outcome's own code sees the operation as finished (a cancel by its id finds nothing,
 * the buffer set it used is free to go). */
static void settle(struct fop *f)
{
    if (--f->pending > 0)
        return;
    int res = f->res;
    /* The timeout fired and cut the operation short: say so, rather than -ECANCELED (what the
     * caller gets for its own pith_io_cancel) or the interrupted worker's -EINTR. An operation
     * that finished anyway keeps its result: a write that happened is not reported as lost. */
    if (f->timed_out && (res == -ECANCELED || res == -EINTR))
        res = -ETIMEDOUT;
    fop_unlink(f);
    f->done(f, res);
    pith_free(f);
}

static void op_cqe(struct io_op *op, int res, uint32_t cqe_flags)
{
    (void)cqe_flags;
    struct fop *f = (struct fop *)((char *)op - offsetof(struct fop, op));
    f->res = res;
    settle(f);
}

static void timeout_cqe(struct io_op *op, int res, uint32_t cqe_flags)
{
    (void)cqe_flags;
    struct fop *f = (struct fop *)((char *)op - offsetof(struct fop, timeout));
    /* -ECANCELED: the operation ended first (or was cancelled) and took its timeout with it.
     * Anything else means the timer fired: -ETIME when the kernel cancelled the operation,
     * -EALREADY or -ENOENT when it had already started in a worker and could not be stopped
     * (it then ends with its real result, or -EINTR when the worker was interrupted). */
    f->timed_out = res != -ECANCELED;
    settle(f);
}

struct io_uring_sqe *fop_sqe(struct fop *f, bool timed)
{
    struct io_uring *ring = &f->tab->ring->ring;
    /* A linked pair must go in one submission: make room for both before taking the first. */
    unsigned need = timed ? 2 : 1;
    if (io_uring_sq_space_left(ring) < need) {
        io_uring_submit(ring);
        if (io_uring_sq_space_left(ring) < need)
            return NULL;
    }
    return io_uring_get_sqe(ring);
}

void fop_arm(struct fop *f, struct io_uring_sqe *sqe, uint64_t timeout_ns)
{
    f->op.done = op_cqe;
    io_uring_sqe_set_data(sqe, &f->op);
    if (f->fixed)
        f->tab->fixed_live++; /* fops_unregister waits for these; fop_unlink counts them off */
    f->pending = 1;
    if (timeout_ns == 0)
        return;
    sqe->flags |= IOSQE_IO_LINK;
    f->ts.tv_sec = (long long)(timeout_ns / 1000000000u);
    f->ts.tv_nsec = (long long)(timeout_ns % 1000000000u);
    struct io_uring_sqe *t = io_uring_get_sqe(&f->tab->ring->ring); /* fop_sqe kept room */
    io_uring_prep_link_timeout(t, &f->ts, 0);
    f->timeout.done = timeout_cqe;
    io_uring_sqe_set_data(t, &f->timeout);
    f->pending = 2;
}

int fop_cancel(struct fop *f)
{
    if (f->cancelling)
        return -EALREADY;
    int err = io_ring_queue_cancel(f->tab->ring, &f->op);
    if (err)
        return err;
    f->cancelling = true;
    return 0;
}

int fops_register(struct fops *t, const struct iovec *iov, unsigned n)
{
    if (t->nbufs > 0)
        return -EBUSY;
    struct iovec *copy = malloc(n * sizeof(*copy));
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, iov, n * sizeof(*copy));
    int err = io_uring_register_buffers(&t->ring->ring, iov, n);
    if (err) {
        free(copy);
        return err;
    }
    t->bufs = copy;
    t->nbufs = n;
    return 0;
}

int fops_unregister(struct fops *t)
{
    if (t->nbufs == 0)
        return -ENXIO;
    if (t->fixed_live > 0)
        return -EBUSY;
    int err = io_uring_unregister_buffers(&t->ring->ring);
    if (err)
        return err;
    free(t->bufs);
    t->bufs = NULL;
    t->nbufs = 0;
    return 0;
}

/* io_ring_settle's test: every operation has reported. Until then, asks each to cancel once;
 * one refused for want of an SQE is asked again on the next pass. */
static bool ops_quiet(void *arg)
{
    struct fops *t = arg;
    if (t->ops.live == 0)
        return true;
    for (uint32_t i = 0; i < t->ops.end; i++) {
        struct fop *f = slots_at(&t->ops, i);
        if (f != NULL && !f->cancelling)
            (void)fop_cancel(f);
    }
    return false;
}

unsigned fops_drain(struct fops *t, uint64_t limit_ns)
{
    (void)io_ring_settle(t->ring, limit_ns, ops_quiet, t);
    unsigned left = t->ops.live;
    /* Records the kernel never answered stay allocated: it may still write through them. */
    if (t->nbufs > 0 && left == 0)
        (void)io_uring_unregister_buffers(&t->ring->ring);
    free(t->bufs);
    t->bufs = NULL;
    t->nbufs = 0;
    slots_fini(&t->ops);
    return left;
}
