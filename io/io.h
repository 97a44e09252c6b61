/* The shard's io_uring: setup with the best flags the kernel grants, submission, and dispatch of
 * completions to their operations. Knows nothing of shards, meshes or actors. */
#ifndef PITH_IO_H
#define PITH_IO_H

#include <liburing.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct io_op;
/* Runs on the ring's thread when the operation's CQE is reaped. */
typedef void (*io_done_fn)(struct io_op *op, int res, uint32_t cqe_flags);

/* An operation in flight: its address is the SQE's user_data. Embed it in the owner's state. */
struct io_op {
    io_done_fn done;
};

/* user_data of the CQE that IORING_OP_MSG_RING posts to wake a ring: nothing to dispatch. */
#define IO_WAKE_TAG ((uint64_t)1)

/* Which setup flags to ask for. IO_MODE_BEST falls back to COOP and then PLAIN by itself. */
enum io_mode {
    IO_MODE_BEST,  /* SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN | TASKRUN_FLAG */
    IO_MODE_COOP,  /* COOP_TASKRUN | TASKRUN_FLAG */
    IO_MODE_PLAIN, /* nothing beyond CQSIZE */
};

struct io_ring {
    struct io_uring ring;
    bool poll_wait;    /* block in ppoll on the ring fd instead of io_uring_enter (valgrind) */
    uint32_t flags;    /* setup flags the kernel accepted */
    uint32_t features; /* IORING_FEAT_* */
    /* MSG_RING wake-ups the kernel refused; written by the ring's thread, read by any. */
    _Atomic uint64_t wake_failures;
};

/* Sets the ring up on the calling thread (SINGLE_ISSUER ties it to that thread). The CQ gets
 * 16 * sq_entries so that completions of in-flight work cannot overflow it. Returns 0 or the
 * -errno of the last attempt. */
int io_ring_init(struct io_ring *r, unsigned sq_entries, enum io_mode mode);
void io_ring_exit(struct io_ring *r);

/* An SQE, submitting what is queued first if the SQ is full; NULL only if that fails. */
struct io_uring_sqe *io_ring_sqe(struct io_ring *r);

/* Queues an IORING_OP_MSG_RING that posts a CQE tagged IO_WAKE_TAG to the ring `target_fd`.
 * It is submitted by the next io_ring_poll or io_ring_wait; success posts nothing here. */
int io_ring_queue_wake(struct io_ring *r, int target_fd);

/* Queues an IORING_OP_ASYNC_CANCEL of the operation whose user_data is `target`. Its own CQE
 * carries user_data 0, which dispatch skips. -EBUSY: no SQE even after a submit. */
int io_ring_queue_cancel(struct io_ring *r, const void *target);

/* CLOCK_MONOTONIC in nanoseconds: pith_now_ns, here so that io/ keeps its own deadlines. */
static inline uint64_t io_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Submits what is queued and dispatches the completions that are ready, without blocking.
 * Enters the kernel only when there is something to submit, deferred task work is flagged, or
 * the CQ overflowed. Returns the number of CQEs dispatched. */
unsigned io_ring_poll(struct io_ring *r);

/* Submits what is queued and blocks until at least one CQE arrives or timeout_ns passes
 * (UINT64_MAX: no timeout). Dispatches nothing: completions run their code in the next
 * io_ring_poll, so that none runs while the shard still reads as asleep. Returns the CQEs
 * ready. */
unsigned io_ring_wait(struct io_ring *r, uint64_t timeout_ns);

/* Whether what io_ring_settle waits for has ended. When it has not, it may queue what moves the
 * rest on (a cancel that found no SQE on the last pass). */
typedef bool (*io_quiet_fn)(void *arg);

/* At the end of a ring's life, on its thread: submits, waits and dispatches completions until
 * quiet(arg) holds or limit_ns has passed, blocking at most 10 ms at a time. Returns quiet's
 * last answer. */
bool io_ring_settle(struct io_ring *r, uint64_t limit_ns, io_quiet_fn quiet, void *arg);

#endif
