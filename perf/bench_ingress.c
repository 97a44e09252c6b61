/* Threads outside the engine: a thread streaming messages to an actor one by one
 * (ingress.send_mps) and 64 at a time (ingress.send_batch_mps) beside
 * the same thread writing into plain SPSC rings that a thread drains (raw.ingress_ring_mps, the
 * lane's own slot-sequenced layout, and Concurrency Kit's ck_ring where it is installed), a
 * client's ask round trip (ingress.rtt_ns), and one thread feeding 100k actors over every shard
 * (ingress.fanout_mps). Only the public API for the engine rows. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#ifdef PITH_BENCH_CK
#include <ck_ring.h>
#endif

#include "bench.h"

#define SEC              1000000000ull
#define BUSY_POLL_NS     (10ull * SEC)
#define WARMUP_DIV       20
#define RING_SLOTS       512 /* as the engine's default lane */
#define FANOUT_ACTORS    100000u
#define FANOUT_PER_SHARD ((FANOUT_ACTORS + 1) / 2)
#define MSG_DATA         1
#define INGRESS_BATCH    64 /* messages per pith_client_send_batch */

/* What every stream row moves: 16 bytes, a sequence and a value. */
struct msg16 {
    uint64_t seq;
    uint64_t value;
};

/* ---- the raw rings: one producer thread, one consumer thread, nothing else ---- */

enum ring_kind { RING_LAMPORT, RING_SLOTSEQ, RING_SLOTSEQ_WAKE, RING_CK };

/* A Lamport ring with cached indices: 16-byte entries, four to a line; the producer publishes
 * its index per message, the consumer its own once per drain. */
struct lamport {
    struct msg16 *slots;
    uint32_t mask;
    _Alignas(64) _Atomic uint32_t tail;
    uint32_t head_seen; /* producer's copy */
    _Alignas(64) _Atomic uint32_t head;
    uint32_t tail_seen; /* consumer's copy */
};

/* The lane's layout (shard/lane.h) reduced to a message: a 64-byte slot with the position it was
 * written for, polled by the consumer; the producer reads the consumer's index only when full. */
struct seq_slot {
    _Atomic uint32_t seq;
    uint32_t pad;
    struct msg16 m;
    char rest[64 - 8 - sizeof(struct msg16)];
};
struct slotseq {
    struct seq_slot *slots;
    uint32_t mask;
    _Alignas(64) uint32_t tail, head_seen;
    _Alignas(64) uint32_t head;
    _Alignas(64) _Atomic uint32_t head_pub;
    /* RING_SLOTSEQ_WAKE: what a consumer that may sleep would announce (never set here). */
    _Alignas(64) _Atomic uint32_t asleep;
};

#ifdef PITH_BENCH_CK
CK_RING_PROTOTYPE(msg16, msg16)
#endif

struct raw_stream {
    enum ring_kind kind;
    int cpu_a, cpu_b;
    uint64_t n;
    pthread_barrier_t ready;
    int pin_err;
    uint64_t t_start, t_end, sum;
    struct lamport lp;
    struct slotseq ss;
#ifdef PITH_BENCH_CK
    struct ck_ring ck;
    struct msg16 *ck_buf;
#endif
};

static void raw_pin(struct raw_stream *r, int cpu)
{
    int rc = bench_pin_self(cpu);
    if (rc != 0)
        r->pin_err = rc;
    pthread_barrier_wait(&r->ready);
}

static void *raw_producer(void *arg)
{
    struct raw_stream *r = arg;
    raw_pin(r, r->cpu_a);
    r->t_start = bench_clock_ns();
    for (uint64_t i = 0; i < r->n; i++) {
        struct msg16 m = {.seq = i, .value = i * 3};
        switch (r->kind) {
        case RING_LAMPORT: {
            struct lamport *q = &r->lp;
            uint32_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
            while (t - q->head_seen > q->mask)
                /* Acquire pairs with the consumer's release of head. */
                q->head_seen = atomic_load_explicit(&q->head, memory_order_acquire);
            q->slots[t & q->mask] = m;
            /* Release: the entry is written before the consumer sees the index. */
            atomic_store_explicit(&q->tail, t + 1, memory_order_release);
            break;
        }
        case RING_SLOTSEQ:
        case RING_SLOTSEQ_WAKE: {
            struct slotseq *q = &r->ss;
            while (q->tail - q->head_seen > q->mask)
                q->head_seen = atomic_load_explicit(&q->head_pub, memory_order_acquire);
            struct seq_slot *s = &q->slots[q->tail & q->mask];
            s->m = m;
            q->tail++;
            if (r->kind == RING_SLOTSEQ) {
                /* Release: the payload is written before the consumer sees the sequence. */
                atomic_store_explicit(&s->seq, q->tail, memory_order_release);
                break;
            }
            /* What a consumer that sleeps needs of each publish: a full barrier (here a
             * seq_cst exchange, as the lanes publish) before a look at its sleep word. */
            atomic_exchange(&s->seq, q->tail);
            if (atomic_load(&q->asleep) != 0)
                r->pin_err = -EINVAL; /* never: nobody sleeps in this row */
            break;
        }
        case RING_CK:
#ifdef PITH_BENCH_CK
            while (!ck_ring_enqueue_spsc_msg16(&r->ck, r->ck_buf, &m))
                ;
#endif
            break;
        }
    }
    return NULL;
}

static void *raw_consumer(void *arg)
{
    struct raw_stream *r = arg;
    raw_pin(r, r->cpu_b);
    uint64_t got = 0, sum = 0;
    while (got < r->n) {
        switch (r->kind) {
        case RING_LAMPORT: {
            struct lamport *q = &r->lp;
            uint32_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
            if (h == q->tail_seen) {
                q->tail_seen = atomic_load_explicit(&q->tail, memory_order_acquire);
                if (h == q->tail_seen)
                    continue;
            }
            while (h != q->tail_seen) {
                sum += q->slots[h & q->mask].value;
                h++;
                got++;
            }
            atomic_store_explicit(&q->head, h, memory_order_release);
            break;
        }
        case RING_SLOTSEQ:
        case RING_SLOTSEQ_WAKE: {
            struct slotseq *q = &r->ss;
            bool took = false;
            for (;;) {
                struct seq_slot *s = &q->slots[q->head & q->mask];
                if (atomic_load_explicit(&s->seq, memory_order_acquire) != q->head + 1)
                    break;
                sum += s->m.value;
                q->head++;
                got++;
                took = true;
            }
            if (took)
                atomic_store_explicit(&q->head_pub, q->head, memory_order_release);
            break;
        }
        case RING_CK: {
#ifdef PITH_BENCH_CK
            struct msg16 m;
            while (ck_ring_dequeue_spsc_msg16(&r->ck, r->ck_buf, &m)) {
                sum += m.value;
                got++;
            }
#endif
            break;
        }
        }
    }
    r->t_end = bench_clock_ns();
    r->sum = sum;
    return NULL;
}

static int raw_ring(const bench_env_t *env, enum ring_kind kind, uint64_t n, result_t *r, char *why,
                    size_t whylen)
{
    static struct raw_stream rs;
    memset(&rs, 0, sizeof(rs));
    rs.kind = kind;
    rs.cpu_a = env->cpu_a;
    rs.cpu_b = env->cpu_b;
    rs.n = n;
    rs.lp.mask = rs.ss.mask = RING_SLOTS - 1;
    rs.lp.slots = aligned_alloc(64, RING_SLOTS * sizeof(struct msg16));
    rs.ss.slots = aligned_alloc(64, RING_SLOTS * sizeof(struct seq_slot));
#ifdef PITH_BENCH_CK
    rs.ck_buf = aligned_alloc(64, RING_SLOTS * sizeof(struct msg16));
    ck_ring_init(&rs.ck, RING_SLOTS);
#endif
    int rc = 0;
    if (rs.lp.slots == NULL || rs.ss.slots == NULL) {
        snprintf(why, whylen, "out of memory for the rings");
        rc = BENCH_FAIL;
    } else {
        memset(rs.ss.slots, 0, RING_SLOTS * sizeof(struct seq_slot));
        pthread_barrier_init(&rs.ready, NULL, 2);
        pthread_t p, c;
        pthread_create(&c, NULL, raw_consumer, &rs);
        pthread_create(&p, NULL, raw_producer, &rs);
        pthread_join(p, NULL);
        pthread_join(c, NULL);
        pthread_barrier_destroy(&rs.ready);
        uint64_t want = 3 * (n * (n - 1) / 2);
        if (rs.sum != want) {
            snprintf(why, whylen, "the consumer summed %llu, not %llu", (unsigned long long)rs.sum,
                     (unsigned long long)want);
            rc = BENCH_FAIL;
        } else {
            r->value = (double)n / ((double)(rs.t_end - rs.t_start) / 1e9) / 1e6;
            if (rs.pin_err)
                bench_note("%s: pinning failed (%s): the threads float", r->name,
                           pith_strerror(rs.pin_err));
        }
    }
    free(rs.lp.slots);
    free(rs.ss.slots);
#ifdef PITH_BENCH_CK
    free(rs.ck_buf);
#endif
    return rc;
}

int bench_raw_ingress_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen)
{
    int rc = raw_ring(env, RING_LAMPORT, n, r, why, whylen);
    if (rc == 0)
        bench_note("%s: one thread on CPU %d writes 16-byte messages into a %u-entry Lamport "
                   "ring (cached indices, four entries to a line) that a thread on CPU %d drains "
                   "busy-polling; no engine",
                   r->name, env->cpu_a, RING_SLOTS, env->cpu_b);
    return rc;
}

int bench_raw_slotseq_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen)
{
    int rc = raw_ring(env, RING_SLOTSEQ, n, r, why, whylen);
    if (rc == 0)
        bench_note("%s: the same, through the ingress lane's layout alone: a 64-byte slot per "
                   "message carrying the position it was written for, polled by the consumer",
                   r->name);
    return rc;
}

int bench_raw_slotseq_wake_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                size_t whylen)
{
    int rc = raw_ring(env, RING_SLOTSEQ_WAKE, n, r, why, whylen);
    if (rc == 0)
        bench_note("%s: the same layout with what a consumer that may sleep costs each publish "
                   "(a seq_cst exchange, then a look at its sleep word): the floor of the ingress "
                   "lanes, whose shards sleep when idle",
                   r->name);
    return rc;
}

int bench_ck_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
#ifdef PITH_BENCH_CK
    int rc = raw_ring(env, RING_CK, n, r, why, whylen);
    if (rc == 0)
        bench_note("%s: the same, through Concurrency Kit's ck_ring_enqueue_spsc / "
                   "dequeue_spsc (16-byte entries, CK_RING_PROTOTYPE), which reads the other "
                   "side's index on every call",
                   r->name);
    return rc;
#else
    (void)env;
    (void)n;
    (void)r;
    snprintf(why, whylen, "built without Concurrency Kit (libck-dev)");
    return BENCH_SKIP;
#endif
}

/* ---- the engine: an outside thread streaming to one actor ---- */

struct sink {
    uint64_t n;
    _Alignas(64) uint64_t got, sum, t_end; /* shard side */
    sem_t finished;
};

static struct sink sk;

static int sink_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type != MSG_DATA)
        return 0;
    const struct msg16 *m = msg->data;
    sk.sum += m->value;
    if (++sk.got == sk.n) {
        sk.t_end = pith_now_ns();
        sem_post(&sk.finished);
    }
    return 0;
}

static const pith_actor_type_t sink_type = {.name = "bench.sink", .behaviour = sink_behaviour};

/* An engine of one shard on cpu_b; the calling thread goes on cpu_a. */
static int one_shard_engine(const bench_env_t *env, uint64_t poll_ns, char *why, size_t whylen)
{
    static unsigned cpu;
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    cfg.poll_ns = poll_ns;
    if (env->cpu_b >= 0) {
        cpu = (unsigned)env->cpu_b;
        cfg.cpus = &cpu;
        cfg.ncpus = 1;
    }
    if (bench_engine_start(&cfg, why, whylen) != 0)
        return BENCH_FAIL;
    (void)bench_pin_self(env->cpu_a);
    return 0;
}

static void unpin_self(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* A stream's end: waits for the sink to have it all (rc 0), stops the engine, checks the sum
 * and sets r->value (millions a second, from t0 to the last message). 0 or BENCH_FAIL. */
static int stream_end(const bench_env_t *env, pith_client_t *c, int rc, uint64_t t0, result_t *r,
                      char *why, size_t whylen)
{
    uint64_t n = sk.n;
    if (rc == 0)
        rc = bench_wait(env, &sk.finished);
    pith_client_close(c);
    unpin_self();
    bench_engine_stop(r->name);
    sem_destroy(&sk.finished);
    if (rc != 0) {
        snprintf(why, whylen, "%s after %llu of %llu delivered", bench_wait_strerror(rc),
                 (unsigned long long)sk.got, (unsigned long long)n);
        return BENCH_FAIL;
    }
    if (sk.sum != 3 * (n * (n - 1) / 2)) {
        snprintf(why, whylen, "the sink summed %llu, not what was sent",
                 (unsigned long long)sk.sum);
        return BENCH_FAIL;
    }
    r->value = (double)n / ((double)(sk.t_end - t0) / 1e9) / 1e6;
    return 0;
}

/* pith_client_send_batch and pith_client_vsend_batch, as one kind. */
typedef int (*batch_fn)(pith_client_t *c, const void *msgs, unsigned n, uint64_t timeout_ns);

static int send_batch(pith_client_t *c, const void *msgs, unsigned n, uint64_t timeout_ns)
{
    return pith_client_send_batch(c, msgs, n, timeout_ns);
}

static int vsend_batch(pith_client_t *c, const void *msgs, unsigned n, uint64_t timeout_ns)
{
    return pith_client_vsend_batch(c, msgs, n, timeout_ns);
}

/* k messages (of `size` bytes each, from msgs) through send: at once, then what is left with up
 * to 10 s to wait, counted in *pushed. 0 or -errno. */
static int batch_all(batch_fn send, pith_client_t *c, const void *msgs, size_t size, unsigned k,
                     uint64_t *pushed)
{
    int sent = send(c, msgs, k, 0);
    if (sent == -EAGAIN || (sent >= 0 && (unsigned)sent < k)) {
        (*pushed)++;
        unsigned done = sent > 0 ? (unsigned)sent : 0;
        int more = send(c, (const char *)msgs + done * size, k - done, 10 * SEC);
        sent = more < 0 ? more : (int)(done + (unsigned)more);
    }
    return sent < 0 ? sent : (unsigned)sent < k ? -ETIMEDOUT : 0;
}

/* Streams n messages to a sink actor, one pith_client_send each (batch 1) or batch at a time
 * with pith_client_send_batch. */
static int ingress_stream(const bench_env_t *env, uint64_t n, unsigned batch, result_t *r,
                          char *why, size_t whylen)
{
    memset(&sk, 0, sizeof(sk));
    sk.n = n;
    sem_init(&sk.finished, 0, 0);
    int rc = one_shard_engine(env, BUSY_POLL_NS, why, whylen);
    if (rc != 0) {
        sem_destroy(&sk.finished);
        return rc;
    }
    pith_client_t *c = pith_client_open(NULL);
    pith_ref_t a = PITH_REF_NONE;
    rc = c == NULL ? -errno : pith_client_spawn(c, 0, &sink_type, NULL, 5 * SEC, &a);
    uint64_t t0 = pith_now_ns(), pushed = 0;
    if (batch <= 1) {
        for (uint64_t i = 0; rc == 0 && i < n; i++) {
            struct msg16 m = {.seq = i, .value = i * 3};
            rc = pith_client_send(c, a, MSG_DATA, &m, sizeof(m), 0);
            if (rc == -EAGAIN) {
                pushed++;
                rc = pith_client_send(c, a, MSG_DATA, &m, sizeof(m), 10 * SEC);
            }
        }
    } else {
        struct msg16 m[INGRESS_BATCH];
        pith_client_msg_t b[INGRESS_BATCH];
        for (unsigned k = 0; k < batch; k++)
            b[k] =
                (pith_client_msg_t){.to = a, .type = MSG_DATA, .len = sizeof(m[k]), .data = &m[k]};
        for (uint64_t i = 0; rc == 0 && i < n;) {
            unsigned k = n - i < batch ? (unsigned)(n - i) : batch;
            for (unsigned j = 0; j < k; j++)
                m[j] = (struct msg16){.seq = i + j, .value = (i + j) * 3};
            rc = batch_all(send_batch, c, b, sizeof(b[0]), k, &pushed);
            i += k;
        }
    }
    if (stream_end(env, c, rc, t0, r, why, whylen) != 0)
        return BENCH_FAIL;
    bench_note("%s: a client thread on CPU %d sends %llu 16-byte messages to one actor on a shard "
               "on CPU %d (busy-polling), %s, waiting for room when its lane is full (%llu times); "
               "from the first send to the actor's last message",
               r->name, env->cpu_a, (unsigned long long)n, env->cpu_b,
               batch <= 1 ? "one pith_client_send each" : "pith_client_send_batch of 64",
               (unsigned long long)pushed);
    return 0;
}

/* ---- the same stream to virtual actors ---- */

#define VKEYS 16 /* the sink's keys, sent to in turn */

static const pith_vtype_t vsink_type = {.name = "bench.vsink", .actor = &sink_type};

/* Streams n messages to VKEYS virtual actors of one shard, in turn: one pith_client_vsend each
 * (batch 1), or batch at a time with pith_client_vsend_batch. */
static int ingress_vstream(const bench_env_t *env, uint64_t n, unsigned batch, result_t *r,
                           char *why, size_t whylen)
{
    memset(&sk, 0, sizeof(sk));
    sk.n = n;
    sem_init(&sk.finished, 0, 0);
    pith_vref_t keys[VKEYS];
    int rc = pith_vtype_register(&vsink_type);
    for (unsigned k = 0; rc == 0 && k < VKEYS; k++) {
        char name[8];
        rc = pith_vref(&vsink_type, name, (size_t)snprintf(name, sizeof(name), "k%u", k), &keys[k]);
    }
    if (rc != 0) {
        sem_destroy(&sk.finished);
        snprintf(why, whylen, "the virtual sink: %s", pith_strerror(rc));
        return BENCH_FAIL;
    }
    rc = one_shard_engine(env, BUSY_POLL_NS, why, whylen);
    if (rc != 0) {
        sem_destroy(&sk.finished);
        return rc;
    }
    /* As a feed handler's (pith-market's): a CPU of its own, so it polls for lane room for up
     * to 1 ms before it sleeps. A sleeping producer costs the shard a wake-up per drain, which
     * a producer faster than the shard (a batch, against this path) would pay at every run. */
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    ccfg.spin_ns = 1000000;
    pith_client_t *c = pith_client_open(&ccfg);
    rc = c == NULL ? -errno : 0;
    /* Every key activated before the clock starts (an empty message each, not counted). */
    for (unsigned k = 0; rc == 0 && k < VKEYS; k++)
        rc = pith_client_vsend(c, &keys[k], MSG_DATA + 1, NULL, 0, 10 * SEC);
    uint64_t t0 = pith_now_ns(), pushed = 0;
    struct msg16 m[INGRESS_BATCH];
    pith_client_vmsg_t b[INGRESS_BATCH];
    for (uint64_t i = 0; rc == 0 && i < n;) {
        unsigned k = n - i < batch ? (unsigned)(n - i) : batch;
        for (unsigned j = 0; j < k; j++) {
            m[j] = (struct msg16){.seq = i + j, .value = (i + j) * 3};
            b[j] = (pith_client_vmsg_t){
                .to = &keys[(i + j) % VKEYS], .type = MSG_DATA, .len = sizeof(m[j]), .data = &m[j]};
        }
        if (batch <= 1) {
            rc = pith_client_vsend(c, b[0].to, MSG_DATA, &m[0], sizeof(m[0]), 0);
            if (rc == -EAGAIN) {
                pushed++;
                rc = pith_client_vsend(c, b[0].to, MSG_DATA, &m[0], sizeof(m[0]), 10 * SEC);
            }
        } else {
            rc = batch_all(vsend_batch, c, b, sizeof(b[0]), k, &pushed);
        }
        i += k;
    }
    if (stream_end(env, c, rc, t0, r, why, whylen) != 0)
        return BENCH_FAIL;
    bench_note("%s: a client thread on CPU %d sends %llu 16-byte messages to %u virtual actors in "
               "turn on a shard on CPU %d (busy-polling), %s, waiting for room when its lane is "
               "full (%llu times; it polls for room for 1 ms before it sleeps); from the first "
               "send to the last message handled",
               r->name, env->cpu_a, (unsigned long long)n, VKEYS, env->cpu_b,
               batch <= 1 ? "one pith_client_vsend each" : "pith_client_vsend_batch of 64",
               (unsigned long long)pushed);
    return 0;
}

int bench_ingress_vsend(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return ingress_vstream(env, n, 1, r, why, whylen);
}

int bench_ingress_vsend_batch(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen)
{
    return ingress_vstream(env, n, INGRESS_BATCH, r, why, whylen);
}

int bench_ingress_send(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return ingress_stream(env, n, 1, r, why, whylen);
}

int bench_ingress_send_batch(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen)
{
    return ingress_stream(env, n, INGRESS_BATCH, r, why, whylen);
}

/* ---- an outside client's ask round trip ---- */

static int echo_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    return msg->req != 0 ? pith_reply(msg, MSG_DATA, msg->data, msg->len) : 0;
}

static const pith_actor_type_t echo_type = {.name = "bench.echo", .behaviour = echo_behaviour};

int bench_ingress_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    samples_t s;
    if (samples_init(&s, n) != 0) {
        snprintf(why, whylen, "out of memory for %llu samples", (unsigned long long)n);
        return BENCH_FAIL;
    }
    int rc = one_shard_engine(env, BUSY_POLL_NS, why, whylen);
    if (rc != 0) {
        samples_free(&s);
        return rc;
    }
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    ccfg.spin_ns = BUSY_POLL_NS; /* the client has a CPU of its own: it polls, as the shard does */
    pith_client_t *c = pith_client_open(&ccfg);
    pith_ref_t a = PITH_REF_NONE;
    rc = c == NULL ? -errno : pith_client_spawn(c, 0, &echo_type, NULL, 5 * SEC, &a);
    uint64_t warmup = n / WARMUP_DIV;
    for (uint64_t i = 0; rc == 0 && i < warmup + n; i++) {
        pith_msg_t reply;
        uint64_t t0 = pith_now_ns();
        rc = pith_client_ask(c, a, MSG_DATA, &i, sizeof(i), 5 * SEC, &reply);
        uint64_t t1 = pith_now_ns();
        if (rc == 0 && i >= warmup)
            samples_add(&s, (int64_t)(t1 - t0));
        if ((i & BENCH_PROGRESS_MASK) == 0)
            bench_progress(i, warmup + n);
    }
    pith_client_close(c);
    unpin_self();
    bench_engine_stop(r->name);
    if (rc != 0) {
        snprintf(why, whylen, "ask: %s", pith_strerror(rc));
        samples_free(&s);
        return BENCH_FAIL;
    }
    samples_sort(&s);
    result_set_pcts(r, &s);
    result_set_hist(r, &s, 1);
    r->value = r->p50;
    samples_free(&s);
    bench_note("%s: a client thread on CPU %d asks an actor on a shard on CPU %d and waits for the "
               "reply, both polling (client spin_ns, shard poll_ns); one ask in flight",
               r->name, env->cpu_a, env->cpu_b);
    return 0;
}

/* ---- one thread feeding 100k actors over every shard ---- */

struct fan_shard {
    _Alignas(64) _Atomic uint64_t got;
};

static struct {
    struct fan_shard *sh;
    pith_ref_t *refs;
    unsigned nrefs;
    int spawn_err;
} fan;

static int fan_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->type == MSG_DATA) {
        _Atomic uint64_t *g = &fan.sh[pith_shard_id()].got;
        atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    }
    return 0;
}

static const pith_actor_type_t fan_type = {.name = "bench.fanout", .behaviour = fan_behaviour};

/* On shard s: spawns actors s, s + shards, ... (refs by global index). */
static void *fan_spawn(void *arg)
{
    unsigned shards = pith_shard_count(), s = (unsigned)(uintptr_t)arg;
    for (unsigned i = s; i < fan.nrefs; i += shards) {
        int rc = pith_spawn(&fan_type, NULL, &fan.refs[i]);
        if (rc != 0) {
            fan.spawn_err = rc;
            break;
        }
    }
    return NULL;
}

static void *fan_stop(void *arg)
{
    unsigned shards = pith_shard_count(), s = (unsigned)(uintptr_t)arg;
    for (unsigned i = s; i < fan.nrefs; i += shards)
        (void)pith_stop(fan.refs[i]);
    return NULL;
}

int bench_ingress_fanout(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    memset(&fan, 0, sizeof(fan));
    fan.nrefs = FANOUT_ACTORS;
    fan.refs = calloc(fan.nrefs, sizeof(*fan.refs));
    fan.sh = aligned_alloc(64, env->shards * sizeof(*fan.sh));
    if (fan.refs == NULL || fan.sh == NULL) {
        free(fan.refs);
        free(fan.sh);
        snprintf(why, whylen, "out of memory for %u refs", fan.nrefs);
        return BENCH_FAIL;
    }
    memset(fan.sh, 0, env->shards * sizeof(*fan.sh));
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    int rc = bench_engine_start(&cfg, why, whylen) != 0 ? BENCH_FAIL : 0;
    pith_client_t *c = rc == 0 ? pith_client_open(NULL) : NULL;
    if (rc == 0 && c == NULL)
        rc = -errno;
    for (unsigned s = 0; rc == 0 && s < env->shards; s++)
        rc = pith_client_call(c, s, fan_spawn, (void *)(uintptr_t)s, 60 * SEC, NULL);
    if (rc == 0)
        rc = fan.spawn_err;
    uint64_t sent = 0, failed = 0, pushed = 0;
    uint64_t t0 = pith_now_ns();
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        pith_ref_t to = fan.refs[i % fan.nrefs];
        int src = pith_client_send(c, to, MSG_DATA, &i, sizeof(i), 0);
        if (src == -EAGAIN) {
            pushed++;
            src = pith_client_send(c, to, MSG_DATA, &i, sizeof(i), 10 * SEC);
        }
        if (src == 0)
            sent++;
        else
            failed++;
    }
    uint64_t got = 0, deadline = pith_now_ns() + (uint64_t)(env->wait_s * 1e9);
    while (rc == 0 && pith_now_ns() < deadline) {
        got = 0;
        for (unsigned s = 0; s < env->shards; s++)
            got += atomic_load_explicit(&fan.sh[s].got, memory_order_relaxed);
        if (got >= sent)
            break;
        sched_yield();
    }
    uint64_t t1 = pith_now_ns();
    pith_client_stats_t cst = {0};
    if (c != NULL)
        pith_client_stats(c, &cst);
    for (unsigned s = 0; rc == 0 && s < env->shards; s++)
        (void)pith_client_call(c, s, fan_stop, (void *)(uintptr_t)s, 60 * SEC, NULL);
    pith_client_close(c);
    if (rc != BENCH_FAIL)
        bench_engine_stop(r->name);
    free(fan.refs);
    free(fan.sh);
    if (rc != 0) {
        if (rc != BENCH_FAIL)
            snprintf(why, whylen, "%s", pith_strerror(rc));
        return BENCH_FAIL;
    }
    if (got + failed + cst.undelivered != n) {
        snprintf(why, whylen, "delivered %llu + failed %llu + reported %llu != sent %llu: a loss",
                 (unsigned long long)got, (unsigned long long)failed,
                 (unsigned long long)cst.undelivered, (unsigned long long)n);
        return BENCH_FAIL;
    }
    r->value = (double)n / ((double)(t1 - t0) / 1e9) / 1e6;
    bench_note("%s: one client thread (unpinned) feeds %llu 8-byte messages round-robin to %u "
               "actors on %u shards (default mailboxes and poll); delivered %llu + failed at once "
               "%llu + reported undelivered %llu = sent %llu; the lane was full %llu times",
               r->name, (unsigned long long)n, fan.nrefs, env->shards, (unsigned long long)got,
               (unsigned long long)failed, (unsigned long long)cst.undelivered,
               (unsigned long long)n, (unsigned long long)pushed);
    return 0;
}
