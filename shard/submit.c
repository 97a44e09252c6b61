/* Getting a task to a shard: the mesh from shard threads, ingress lanes (lane.c) from outside
 * threads, and the call forms built on them. */
#include "shard.h"

#include <errno.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>

int shard_send(struct shard *s, unsigned dst, const struct task *t, bool force)
{
    if (dst == s->id)
        return lq_push(s, t, force);
    int err = mesh_open_batch(s, dst, force);
    if (err)
        return err;
    struct outbound *o = &s->out[dst];
    struct batch *b = o->open;
    b->tasks[b->count++] = *t;
    stat_add(&s->remote_sent, 1);
    if (b->count >= s->eng->cfg.batch_msgs)
        mesh_flush(s, o, dst); /* full: hand it to the ring now, not at the end of the turn */
    return 0;
}

/* A task from the calling thread's lane to `shard`: a record of no bytes whose handler runs it. */
static int lane_task(struct lane *l, void *arg, uint64_t aux, const void *data, uint32_t len)
{
    (void)data;
    (void)len;
    struct task t = {.fn = (pith_fn_t)(uintptr_t)aux, .arg = arg};
    if (l == NULL)
        task_released(&t);
    else
        run_task(shard_cur, &t);
    return 0;
}

/* From a thread outside the engine: through its own lane. timeout_ns as lane_push. */
static int submit_outside(unsigned shard, const struct task *t, uint64_t timeout_ns)
{
    struct producer *p = producer_self();
    if (p == NULL)
        return -ENOMEM;
    int err = producer_enter(p);
    if (err)
        return err;
    err = lane_push(p, shard, lane_task, t->arg, (uint64_t)(uintptr_t)t->fn, NULL, 0, NULL, 0,
                    timeout_ns);
    if (err != -ESHUTDOWN)
        producer_leave(p);
    return err;
}

static int submit_task(unsigned shard, const struct task *t)
{
    struct shard *self = shard_cur;
    if (self != NULL) {
        if (shard >= self->eng->n)
            return -EINVAL;
        int err = shard == self->id ? lq_push(self, t, false) : shard_send_fast(self, shard, t);
        if (err == -EAGAIN && shard == self->id)
            stat_add(&self->st.backpressure, 1);
        return err;
    }
    return submit_outside(shard, t, 0);
}

int shard_submit_force(unsigned shard, pith_fn_t fn, void *arg)
{
    struct shard *self = shard_cur;
    if (self == NULL)
        return -EPERM;
    if (fn == NULL || shard >= self->eng->n)
        return -EINVAL;
    struct task t = {.fn = fn, .arg = arg};
    return shard_send(self, shard, &t, true);
}

int pith_submit(unsigned shard, pith_fn_t fn, void *arg)
{
    if (fn == NULL)
        return -EINVAL;
    struct task t = {.fn = fn, .arg = arg};
    return submit_task(shard, &t);
}

/* A pith_call in flight: allocated by the calling shard, carried to the callee and back as a
 * task argument, freed by the caller when the reply has run (memory goes home). */
struct call {
    pith_call_fn_t fn;
    void *arg;
    pith_done_fn_t done;
    void *ctx;
    void *result;
    unsigned src;
};

static void call_reply(void *p)
{
    struct call *c = p;
    atomic_store_explicit(&shard_cur->cur_fn, (pith_anyfn_t)c->done, memory_order_relaxed);
    c->done(c->result, c->ctx);
    free(c);
}

static void call_run(void *p)
{
    struct call *c = p;
    struct shard *s = shard_cur;
    /* Name the user's function to the stall detector, not this trampoline. */
    atomic_store_explicit(&s->cur_fn, (pith_anyfn_t)c->fn, memory_order_relaxed);
    c->result = c->fn(c->arg);
    struct task reply = {.fn = call_reply, .arg = c};
    /* Replies ignore the backlog bound: each answers a call that was itself bounded. */
    if (shard_send(s, c->src, &reply, true) != 0)
        fprintf(stderr, "pith: shard %u: out of memory, reply to shard %u lost\n", s->id, c->src);
}

int pith_call(unsigned shard, pith_call_fn_t fn, void *arg, pith_done_fn_t done, void *ctx)
{
    if (fn == NULL || done == NULL)
        return -EINVAL;
    struct shard *self = shard_cur;
    if (self == NULL)
        return atomic_load(&pith_engine.state) == ENGINE_OFF ? -ESHUTDOWN : -EPERM;
    if (shard >= self->eng->n)
        return -EINVAL;
    struct call *c = malloc(sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    *c = (struct call){.fn = fn, .arg = arg, .done = done, .ctx = ctx, .src = self->id};
    struct task t = {.fn = call_run, .arg = c};
    int err = submit_task(shard, &t);
    if (err)
        free(c);
    return err;
}

struct waiter {
    pith_call_fn_t fn;
    void *arg;
    void *result;
    int err;
    sem_t done;
};

static void call_wait_run(void *p)
{
    struct waiter *w = p;
    w->result = w->fn(w->arg);
    sem_post(&w->done);
}

int pith_call_wait(unsigned shard, pith_call_fn_t fn, void *arg, void **result)
{
    if (shard_cur != NULL)
        return -EDEADLK;
    if (fn == NULL)
        return -EINVAL;
    struct waiter w = {.fn = fn, .arg = arg};
    if (sem_init(&w.done, 0, 0) != 0)
        return -errno;
    struct task t = {.fn = call_wait_run, .arg = &w};
    /* A blocking call: wait for room in the lane rather than fail. */
    int err = submit_outside(shard, &t, UINT64_MAX);
    if (err == 0) {
        while (sem_wait(&w.done) != 0)
            ; /* EINTR */
        err = w.err;
        if (err == 0 && result != NULL)
            *result = w.result;
    }
    sem_destroy(&w.done);
    return err;
}

/* A task that will never run because the engine stopped first. A blocked caller of
 * pith_call_wait is told; a call record is freed (its done never runs). The arguments of other
 * tasks stay their submitters'. */
void task_released(const struct task *t)
{
    if (t->fn == call_wait_run) {
        struct waiter *w = t->arg;
        w->err = -ECANCELED;
        sem_post(&w->done);
    } else if (t->fn == call_run || t->fn == call_reply) {
        free(t->arg);
    } else {
        (void)shard_hooks_release(t->fn, t->arg);
    }
}
