/* Cross-shard messaging through the engine: round-trip latency with both shards polling, the
 * same with the receiver asleep each time, and streaming throughput batched versus one message
 * per ring operation. Only the public API; the raw baselines are in bench_raw.c. */
#include <errno.h>
#include <semaphore.h>
#include <string.h>

#include "bench.h"

/* Long enough that no shard sleeps during a polling row: the row measures the mesh, not wake-up. */
#define BUSY_POLL_NS (10ull * 1000000000ull)
/* Round trips dropped before recording, the same share as the raw rows drop. */
#define WARMUP_DIV 20
/* Tasks the producer submits per turn before it yields to its shard's loop. */
#define STREAM_PER_TURN 4096

static int need_two_shards(const bench_env_t *env, char *why, size_t whylen)
{
    if (env->shards >= 2)
        return 0;
    snprintf(why, whylen, "needs --shards >= 2 (have %u)", env->shards);
    return BENCH_SKIP;
}

/* --- ping-pong between shard 0 and shard 1 --- */

struct pingpong {
    samples_t s;
    uint64_t warmup, n;
    uint64_t done;   /* round trips completed; shard 0 only */
    uint64_t t_sent; /* when the ping in flight left shard 0; shard 0 only */
    int err;
    sem_t finished;
};

static void ping_fn(void *arg);

static void pong_fn(void *arg)
{
    struct pingpong *pp = arg;
    int rc = pith_submit(0, ping_fn, pp);
    if (rc != 0) {
        pp->err = rc;
        sem_post(&pp->finished);
    }
}

/* Runs on shard 0: first when main kicks it off, then once per returning pong. */
static void ping_fn(void *arg)
{
    struct pingpong *pp = arg;
    uint64_t now = pith_now_ns();
    if (pp->t_sent) {
        pp->done++;
        if (pp->done > pp->warmup)
            samples_add(&pp->s, (int64_t)(now - pp->t_sent));
        if ((pp->done & BENCH_PROGRESS_MASK) == 0) /* before t_sent: not in a round trip */
            bench_progress(pp->done, pp->warmup + pp->n);
    }
    if (pp->done == pp->warmup + pp->n) {
        sem_post(&pp->finished);
        return;
    }
    /* Taken right before the send, as the raw ping-pong does, so that both figures contain
     * the same two clock reads and nothing else of the sender's bookkeeping. */
    pp->t_sent = pith_now_ns();
    int rc = pith_submit(1, pong_fn, pp);
    if (rc != 0) {
        pp->err = rc;
        sem_post(&pp->finished);
    }
}

static int run_pingpong(const bench_env_t *env, uint64_t poll_ns, uint64_t n, result_t *r,
                        char *why, size_t whylen)
{
    int rc = need_two_shards(env, why, whylen);
    if (rc)
        return rc;
    struct pingpong pp = {.warmup = n / WARMUP_DIV, .n = n};
    if (samples_init(&pp.s, n) != 0) {
        snprintf(why, whylen, "out of memory for %llu samples", (unsigned long long)n);
        return BENCH_FAIL;
    }
    sem_init(&pp.finished, 0, 0);

    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    cfg.poll_ns = poll_ns;
    if (bench_engine_start(&cfg, why, whylen) != 0) {
        sem_destroy(&pp.finished);
        samples_free(&pp.s);
        return BENCH_FAIL;
    }
    bench_stats_t before[2] = {bench_stats(0), bench_stats(1)};
    rc = pith_submit(0, ping_fn, &pp);
    if (rc == 0)
        rc = bench_wait(env, &pp.finished);
    bench_stats_t after[2] = {bench_stats(0), bench_stats(1)};
    bench_engine_stop(r->name);

    if (rc == 0)
        rc = pp.err;
    if (rc != 0) {
        snprintf(why, whylen, "%s after %llu of %llu round trips",
                 rc == -ETIMEDOUT ? "timed out" : pith_strerror(rc), (unsigned long long)pp.done,
                 (unsigned long long)(pp.warmup + pp.n));
    } else {
        bench_stats_t d0 = bench_stats_delta(after[0], before[0]);
        bench_stats_t d1 = bench_stats_delta(after[1], before[1]);
        /* Tells a reader whether the receiver really slept (wake row) or never did (polling). */
        bench_note("%s: %llu round trips; sleeps shard0=%llu shard1=%llu, wakes sent "
                   "shard0=%llu shard1=%llu",
                   r->name, (unsigned long long)(pp.warmup + pp.n), (unsigned long long)d0.sleeps,
                   (unsigned long long)d1.sleeps, (unsigned long long)d0.wakes_sent,
                   (unsigned long long)d1.wakes_sent);
        samples_sort(&pp.s);
        result_set_pcts(r, &pp.s);
        result_set_hist(r, &pp.s, 1);
        r->value = r->p50;
    }
    sem_destroy(&pp.finished);
    samples_free(&pp.s);
    return rc ? BENCH_FAIL : 0;
}

int bench_mesh_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return run_pingpong(env, BUSY_POLL_NS, n, r, why, whylen);
}

/* poll_ns = 0: a shard sleeps as soon as an iteration finds nothing, so each ping and each pong
 * finds its receiver blocked in the ring's wait and pays a wake-up. */
int bench_mesh_wake_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return run_pingpong(env, 0, n, r, why, whylen);
}

/* --- streaming from shard 0 to shard 1 --- */

struct stream {
    uint64_t total;
    sem_t finished;
    /* Producer side, written on shard 0 only. */
    _Alignas(64) uint64_t sent;
    uint64_t t_start;
    uint64_t eagain;
    int err;
    /* Consumer side, written on shard 1 only: its own cache line, so counting does not bounce
     * the producer's line. */
    _Alignas(64) uint64_t received;
    uint64_t t_end;
};

static void count_fn(void *arg)
{
    struct stream *st = arg;
    if (++st->received == st->total) {
        st->t_end = pith_now_ns();
        sem_post(&st->finished);
    }
}

/* Submits up to STREAM_PER_TURN tasks, then re-queues itself on its own shard so the loop gets
 * to publish batches; on backpressure it ends the turn early and retries next turn. */
static void producer_fn(void *arg)
{
    struct stream *st = arg;
    if (!st->t_start)
        st->t_start = pith_now_ns();
    for (unsigned i = 0; i < STREAM_PER_TURN && st->sent < st->total; i++) {
        int rc = pith_submit(1, count_fn, st);
        if (rc == -EAGAIN) {
            st->eagain++;
            break;
        }
        if (rc != 0) {
            st->err = rc;
            sem_post(&st->finished);
            return;
        }
        st->sent++;
    }
    bench_progress(st->sent, st->total); /* once a turn of up to STREAM_PER_TURN */
    if (st->sent < st->total) {
        int rc = pith_submit(0, producer_fn, st);
        if (rc != 0) {
            st->err = rc;
            sem_post(&st->finished);
        }
    }
}

static int run_stream(const bench_env_t *env, unsigned batch_msgs, uint64_t n, result_t *r,
                      char *why, size_t whylen)
{
    int rc = need_two_shards(env, why, whylen);
    if (rc)
        return rc;
    static struct stream st; /* static: keeps the two halves' alignment off the stack */
    memset(&st, 0, sizeof(st));
    st.total = n;
    sem_init(&st.finished, 0, 0);

    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    cfg.poll_ns = BUSY_POLL_NS;
    if (batch_msgs)
        cfg.batch_msgs = batch_msgs;
    if (bench_engine_start(&cfg, why, whylen) != 0) {
        sem_destroy(&st.finished);
        return BENCH_FAIL;
    }
    bench_stats_t before = bench_stats(0);
    rc = pith_submit(0, producer_fn, &st);
    if (rc == 0)
        rc = bench_wait(env, &st.finished);
    bench_stats_t d = bench_stats_delta(bench_stats(0), before);
    bench_engine_stop(r->name);

    if (rc == 0)
        rc = st.err;
    if (rc != 0) {
        snprintf(why, whylen, "%s after %llu sent, %llu received of %llu",
                 rc == -ETIMEDOUT ? "timed out" : pith_strerror(rc), (unsigned long long)st.sent,
                 (unsigned long long)st.received, (unsigned long long)n);
    } else {
        double secs = (double)(st.t_end - st.t_start) / 1e9;
        r->value = (double)n / secs / 1e6;
        bench_note("%s: %llu msgs in %.3f s, %.1f msgs per batch, ring_full=%llu "
                   "backpressure=%llu",
                   r->name, (unsigned long long)n, secs,
                   d.batches_out ? (double)d.msgs_out / (double)d.batches_out : 0.0,
                   (unsigned long long)d.ring_full, (unsigned long long)d.backpressure);
    }
    sem_destroy(&st.finished);
    return rc ? BENCH_FAIL : 0;
}

/* One message per batch: one ring operation per message, the unbatched design. */
int bench_mesh_throughput_batch1(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                 size_t whylen)
{
    return run_stream(env, 1, n, r, why, whylen);
}

int bench_mesh_throughput(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return run_stream(env, 0, n, r, why, whylen);
}
