/* The shard-to-shard mesh: FIFO per (source, destination) pair under load, and no loss when a
 * tiny ring pushes back on its producers. */
#include <inttypes.h>
#include <string.h>

#include "util.h"

#define MAX_SHARDS 8

/* A message is its sequence number, destination and source packed into the task's argument, so
 * the flood allocates nothing. */
static inline void *pack(uint64_t seq, unsigned dst, unsigned src)
{
    return (void *)(uintptr_t)(seq << 16 | (uint64_t)dst << 8 | src);
}

/* Per destination, touched only on that shard. */
struct receiver {
    uint64_t expected[MAX_SHARDS];
    uint64_t received[MAX_SHARDS];
    uint64_t out_of_order;
    uint64_t misdelivered;
} __attribute__((aligned(64)));

/* Per source, touched only on that shard. */
struct producer {
    uint64_t next[MAX_SHARDS];
    uint64_t eagain;
    unsigned cursor;
} __attribute__((aligned(64)));

static struct {
    unsigned shards;
    unsigned src_mask, dst_mask;
    uint64_t per_pair;
    unsigned chunk;
    struct receiver rx[MAX_SHARDS];
    struct producer tx[MAX_SHARDS];
    atomic_uint pairs_left;
    test_error_t err;
    sem_t done;
} fl;

static bool is_pair(unsigned src, unsigned dst)
{
    return src != dst && (fl.src_mask >> src & 1u) && (fl.dst_mask >> dst & 1u);
}

static void flood_fail(int rc, int line)
{
    test_error_note(&fl.err, rc, line);
    sem_post(&fl.done);
}

static void flood_receive(void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    unsigned src = v & 0xff, dst = (v >> 8) & 0xff;
    uint64_t seq = v >> 16;
    int me = pith_shard_id();
    if (me < 0 || (unsigned)me >= fl.shards) {
        flood_fail(TEST_ERR_WRONG_SHARD, __LINE__);
        return;
    }
    struct receiver *rx = &fl.rx[me];
    if ((unsigned)me != dst)
        rx->misdelivered++;
    if (seq != rx->expected[src])
        rx->out_of_order++;
    rx->expected[src] = seq + 1;
    if (++rx->received[src] == fl.per_pair && atomic_fetch_sub(&fl.pairs_left, 1) == 1)
        sem_post(&fl.done);
}

/* Sends up to `chunk` messages to each destination, stopping at a destination that pushes back,
 * then queues itself behind the loop's publish step to go on next turn. */
static void flood_produce(void *arg)
{
    unsigned me = (unsigned)(uintptr_t)arg;
    struct producer *tx = &fl.tx[me];
    bool more = false;
    for (unsigned k = 0; k < fl.shards; k++) {
        unsigned dst = (tx->cursor + k) % fl.shards;
        if (!is_pair(me, dst))
            continue;
        for (unsigned n = 0; n < fl.chunk && tx->next[dst] < fl.per_pair; n++) {
            int rc = pith_submit(dst, flood_receive, pack(tx->next[dst], dst, me));
            if (rc == -EAGAIN) {
                tx->eagain++;
                break;
            }
            if (rc != 0) {
                flood_fail(rc, __LINE__);
                return;
            }
            tx->next[dst]++;
        }
        if (tx->next[dst] < fl.per_pair)
            more = true;
    }
    tx->cursor = (tx->cursor + 1) % fl.shards;
    if (more) {
        int rc = pith_submit(me, flood_produce, arg);
        if (rc != 0)
            flood_fail(rc, __LINE__);
    }
}

static void *copy_receiver(void *arg)
{
    struct receiver *out = arg;
    *out = fl.rx[pith_shard_id()];
    return NULL;
}

static void *copy_producer(void *arg)
{
    struct producer *out = arg;
    *out = fl.tx[pith_shard_id()];
    return NULL;
}

struct flood_result {
    uint64_t eagain;       /* -EAGAIN counted by the producers */
    uint64_t backpressure; /* summed from stats */
    uint64_t ring_full;    /* summed from stats */
};

/* Floods every (source in src_mask, destination in dst_mask) pair with `total` messages in all,
 * and asserts that each destination got exactly per_pair from each source, in order. */
static struct flood_result flood(const pith_config_t *cfg, unsigned src_mask, unsigned dst_mask,
                                 uint64_t total, unsigned chunk)
{
    memset(&fl, 0, sizeof fl);
    fl.shards = (unsigned)cfg->shards;
    cr_assert_leq(fl.shards, MAX_SHARDS);
    fl.src_mask = src_mask;
    fl.dst_mask = dst_mask;
    fl.chunk = chunk;
    unsigned pairs = 0;
    for (unsigned s = 0; s < fl.shards; s++)
        for (unsigned d = 0; d < fl.shards; d++)
            pairs += is_pair(s, d);
    cr_assert_gt(pairs, 0);
    fl.per_pair = total / pairs ? total / pairs : 1;
    atomic_store(&fl.pairs_left, pairs);
    cr_assert_eq(sem_init(&fl.done, 0, 0), 0);

    test_start(cfg);
    uint64_t t0 = pith_now_ns();
    for (unsigned s = 0; s < fl.shards; s++)
        if (src_mask >> s & 1u)
            cr_assert_eq(pith_submit(s, flood_produce, (void *)(uintptr_t)s), 0);
    sem_wait(&fl.done);
    uint64_t took = pith_now_ns() - t0;
    test_assert_no_error(&fl.err);

    struct flood_result res = {0};
    for (unsigned d = 0; d < fl.shards; d++) {
        struct receiver rx;
        cr_assert_eq(pith_call_wait(d, copy_receiver, &rx, NULL), 0);
        cr_assert_eq(rx.misdelivered, 0, "shard %u ran %" PRIu64 " tasks meant for another", d,
                     rx.misdelivered);
        cr_assert_eq(rx.out_of_order, 0, "shard %u saw %" PRIu64 " messages out of order", d,
                     rx.out_of_order);
        for (unsigned s = 0; s < fl.shards; s++) {
            uint64_t want = is_pair(s, d) ? fl.per_pair : 0;
            cr_assert_eq(rx.received[s], want,
                         "shard %u received %" PRIu64 " from shard %u, expected %" PRIu64, d,
                         rx.received[s], s, want);
        }
    }
    for (unsigned s = 0; s < fl.shards; s++) {
        struct producer tx;
        cr_assert_eq(pith_call_wait(s, copy_producer, &tx, NULL), 0);
        res.eagain += tx.eagain;
    }
    pith_shard_stats_t st[MAX_SHARDS];
    test_stats(st, fl.shards);
    uint64_t out = 0, in = 0;
    for (unsigned s = 0; s < fl.shards; s++) {
        out += st[s].msgs_out;
        in += st[s].msgs_in;
        res.backpressure += st[s].backpressure;
        res.ring_full += st[s].ring_full;
    }
    cr_log_info("%u shards: %" PRIu64 " messages in %.3f s; %" PRIu64 " -EAGAIN, %" PRIu64
                " ring full",
                fl.shards, fl.per_pair * pairs, (double)took / 1e9, res.eagain, res.ring_full);
    cr_assert_geq(out, fl.per_pair * pairs, "msgs_out summed %" PRIu64, out);
    cr_assert_geq(in, fl.per_pair * pairs, "msgs_in summed %" PRIu64, in);
    cr_assert_eq(res.backpressure, res.eagain,
                 "stats count %" PRIu64 " -EAGAIN, the producers saw %" PRIu64, res.backpressure,
                 res.eagain);
    test_stop(NULL);
    return res;
}

Test(mesh, fifo_per_pair_10m_messages_2_shards, .timeout = 240)
{
    pith_config_t cfg = test_config(2);
    flood(&cfg, 0x3, 0x3, scaled(10000000), 1024);
}

Test(mesh, fifo_per_pair_4_shards_oversubscribed, .timeout = 240)
{
    pith_config_t cfg = test_config(4);
    flood(&cfg, 0xf, 0xf, scaled(2000000), 512);
}

Test(mesh, fifo_per_pair_with_single_message_batches, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    cfg.batch_msgs = 1;
    flood(&cfg, 0x3, 0x3, scaled(400000), 256);
}

/* Three producers on 2 CPUs, one of them beside the destination: the producers retry by
 * re-queueing themselves, which competes for that CPU, so the count stays modest. */
Test(mesh, tiny_ring_pushes_back_and_loses_nothing, .timeout = 120)
{
    pith_config_t cfg = test_config(4);
    cfg.ring_batches = 4;
    cfg.batch_msgs = 1;
    cfg.backlog_batches = 1;
    struct flood_result r = flood(&cfg, 0xe, 0x1, scaled(100000), 64);
    cr_assert_gt(r.eagain, 0, "three producers flooding one shard never saw -EAGAIN");
    cr_assert_gt(r.ring_full, 0, "no publish found the 4-batch ring full");
}

Test(mesh, tiny_ring_with_two_message_batches_loses_nothing, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    cfg.ring_batches = 4;
    cfg.batch_msgs = 2;
    cfg.backlog_batches = 1;
    struct flood_result r = flood(&cfg, 0x3, 0x3, scaled(300000), 64);
    cr_assert_gt(r.eagain, 0, "producers on a 4-batch ring never saw -EAGAIN");
    cr_assert_gt(r.ring_full, 0);
}
