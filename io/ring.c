/* io_uring setup with fallbacks, SQE acquisition, and completion dispatch for one shard. */
#include "io.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

#if PITH_HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#else
#define RUNNING_ON_VALGRIND 0
#endif

static const uint32_t mode_flags[] = {
    [IO_MODE_BEST] = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                     IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    [IO_MODE_COOP] = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    [IO_MODE_PLAIN] = 0,
};

int io_ring_init(struct io_ring *r, unsigned sq_entries, enum io_mode mode)
{
    int err = -EINVAL;
    memset(r, 0, sizeof(*r));
    /* valgrind 3.19 keeps its global lock across io_uring_enter, so a thread blocked in the
     * ring's wait would stall every other thread: under valgrind we block in ppoll instead.
     * Deferred task work (DEFER_TASKRUN, COOP_TASKRUN) does not wake a poller, so the ring
     * then gets no optional flags: completions and MSG_RING wake-ups post directly. */
    bool valgrind = RUNNING_ON_VALGRIND != 0;
    if (valgrind)
        mode = IO_MODE_PLAIN;
    for (unsigned m = mode; m <= IO_MODE_PLAIN; m++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = mode_flags[m] | IORING_SETUP_CQSIZE;
        p.cq_entries = sq_entries * 16;
        err = io_uring_queue_init_params(sq_entries, &r->ring, &p);
        if (err == 0) {
            r->flags = p.flags;
            r->features = p.features;
            r->poll_wait = valgrind;
            return 0;
        }
        /* -EINVAL: a flag this kernel does not know. Anything else (ENOMEM, EPERM under a
         * seccomp sandbox, EMFILE) will not be cured by asking for fewer flags, but trying
         * costs nothing and the last error is what the caller sees. */
    }
    return err;
}

void io_ring_exit(struct io_ring *r)
{
    io_uring_queue_exit(&r->ring);
}

struct io_uring_sqe *io_ring_sqe(struct io_ring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe == NULL && io_uring_submit(&r->ring) >= 0)
        sqe = io_uring_get_sqe(&r->ring);
    return sqe;
}

/* Failed wake-ups come back as CQEs on the sender's ring (success is skipped). */
static void wake_failed(struct io_op *op, int res, uint32_t cqe_flags)
{
    (void)op;
    (void)res;
    (void)cqe_flags;
}
static struct io_op wake_op = {.done = wake_failed};

int io_ring_queue_wake(struct io_ring *r, int target_fd)
{
    struct io_uring_sqe *sqe = io_ring_sqe(r);
    if (sqe == NULL)
        return -EBUSY;
    io_uring_prep_msg_ring(sqe, target_fd, 0, IO_WAKE_TAG, 0);
    io_uring_sqe_set_flags(sqe, IOSQE_CQE_SKIP_SUCCESS);
    io_uring_sqe_set_data(sqe, &wake_op);
    return 0;
}

int io_ring_queue_cancel(struct io_ring *r, const void *target)
{
    struct io_uring_sqe *sqe = io_ring_sqe(r);
    if (sqe == NULL)
        return -EBUSY;
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)target, 0);
    io_uring_sqe_set_data64(sqe, 0);
    return 0;
}

static unsigned dispatch(struct io_ring *r)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe)
    {
        uint64_t ud = cqe->user_data;
        n++;
        if (ud == IO_WAKE_TAG || ud == 0)
            continue;
        struct io_op *op = (struct io_op *)(uintptr_t)ud;
        if (op == &wake_op) /* single writer: no locked instruction needed */
            atomic_store_explicit(&r->wake_failures,
                                  atomic_load_explicit(&r->wake_failures, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
        op->done(op, cqe->res, cqe->flags);
    }
    io_uring_cq_advance(&r->ring, n);
    return n;
}

unsigned io_ring_poll(struct io_ring *r)
{
    /* With TASKRUN_FLAG the kernel raises IORING_SQ_TASKRUN when completions wait as deferred
     * task work; they reach the CQ only on an enter with GETEVENTS. Checking the flag keeps the
     * busy loop free of syscalls while nothing is pending. */
    unsigned sq_flags = __atomic_load_n(r->ring.sq.kflags, __ATOMIC_RELAXED);
    if (io_uring_sq_ready(&r->ring) > 0 || (sq_flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)))
        io_uring_submit_and_get_events(&r->ring);
    if (io_uring_cq_ready(&r->ring) == 0)
        return 0;
    return dispatch(r);
}

/* The valgrind path: block in ppoll on the ring fd, then submit without blocking. */
static unsigned poll_wait(struct io_ring *r, uint64_t timeout_ns)
{
    struct pollfd pfd = {.fd = r->ring.ring_fd, .events = POLLIN};
    struct timespec ts = {(time_t)(timeout_ns / 1000000000u), (long)(timeout_ns % 1000000000u)};
    io_uring_submit(&r->ring);
    if (io_uring_cq_ready(&r->ring) == 0)
        (void)ppoll(&pfd, 1, timeout_ns == UINT64_MAX ? NULL : &ts, NULL);
    io_uring_submit_and_get_events(&r->ring);
    return io_uring_cq_ready(&r->ring);
}

unsigned io_ring_wait(struct io_ring *r, uint64_t timeout_ns)
{
    if (r->poll_wait)
        return poll_wait(r, timeout_ns);
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts, *tsp = NULL;
    if (timeout_ns != UINT64_MAX) {
        ts.tv_sec = (long long)(timeout_ns / 1000000000u);
        ts.tv_nsec = (long long)(timeout_ns % 1000000000u);
        tsp = &ts;
    }
    /* -ETIME (timeout) and -EINTR (a signal) both just end the wait. */
    (void)io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, tsp, NULL);
    return io_uring_cq_ready(&r->ring);
}

bool io_ring_settle(struct io_ring *r, uint64_t limit_ns, io_quiet_fn quiet, void *arg)
{
    uint64_t deadline = io_now_ns() + limit_ns;
    for (;;) {
        if (quiet(arg))
            return true;
        if (io_now_ns() >= deadline)
            return false;
        /* Short waits: quiet may have queued SQEs that only the next pass submits. */
        io_ring_wait(r, 10 * 1000 * 1000);
        io_ring_poll(r);
    }
}
