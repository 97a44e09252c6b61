/* The raw baselines: what the hardware and kernel give two plain threads without the engine —
 * a cache-line ping-pong, an eventfd wake-up ping-pong, a minimal SPSC ring streaming from one to
 * the other, and clock_nanosleep lateness. They run
 * while no engine runs, on the CPUs the shards use, so the engine's figures have a floor.
 * The allocator baselines (glibc's malloc, mimalloc) are the exception: they run on shard 0's
 * thread through bench_mem.c's harness, the very thread and loop pith_malloc is timed on. */
#include <dlfcn.h>
#include <errno.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <mimalloc.h>

#include "bench.h"

/* Round trips dropped before recording, so that faults, frequency ramp and cold caches stay
 * out of the percentiles; the engine rows drop the same share. */
#define WARMUP_DIV 20

struct pair {
    int cpu_a, cpu_b;
    uint64_t warmup, n;
    samples_t s;
    pthread_barrier_t ready;
    int pin_err;
    int io_err;
    /* The ping-pong line, alone on its cache line so that only the counter moves between the
     * two cores. */
    _Alignas(64) _Atomic uint64_t line;
    char pad[64 - sizeof(uint64_t)];
    int efd_ping, efd_pong;
};

static void pair_pin(struct pair *p, int cpu)
{
    int rc = bench_pin_self(cpu);
    if (rc != 0)
        p->pin_err = rc; /* racy between the two threads, but any one error is enough to note */
    pthread_barrier_wait(&p->ready);
}

/* Each round trip is timed on its own with two CLOCK_MONOTONIC reads, as mesh.rtt_ns times its
 * round trips with pith_now_ns(): the clock's cost (~20 ns through the vDSO) is in both, and
 * per-trip timestamps give true percentiles rather than averages of batches. */
static void *c2c_ping(void *arg)
{
    struct pair *p = arg;
    pair_pin(p, p->cpu_a);
    for (uint64_t i = 0; i < p->warmup + p->n; i++) {
        uint64_t t0 = bench_clock_ns();
        /* release pairs with the pong thread's acquire load: it sees the line only after
         * everything this thread wrote before; acquire below pairs with its release store. */
        atomic_store_explicit(&p->line, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&p->line, memory_order_acquire) != 2 * i + 2)
            ;
        uint64_t t1 = bench_clock_ns();
        if (i >= p->warmup)
            samples_add(&p->s, (int64_t)(t1 - t0));
        if ((i & BENCH_PROGRESS_MASK) == 0) /* after t1: not in the round trip it times */
            bench_progress(i, p->warmup + p->n);
    }
    return NULL;
}

/* Busy-waits without a pause instruction: the point is the floor of a line's transfer, and a
 * pause (up to ~140 cycles on recent x86) would add to what is measured. */
static void *c2c_pong(void *arg)
{
    struct pair *p = arg;
    pair_pin(p, p->cpu_b);
    for (uint64_t i = 0; i < p->warmup + p->n; i++) {
        while (atomic_load_explicit(&p->line, memory_order_acquire) != 2 * i + 1)
            ;
        atomic_store_explicit(&p->line, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

static void efd_write(struct pair *p, int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof(one)) != (ssize_t)sizeof(one)) {
        if (errno != EINTR) {
            p->io_err = -errno;
            return;
        }
    }
}

static void efd_read(struct pair *p, int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v)) {
        if (errno != EINTR) {
            p->io_err = -errno;
            return;
        }
    }
}

/* Each thread blocks in read(2) on its own eventfd, so every round trip wakes a sleeping thread
 * twice: the kernel's wake-up path, which mesh.wake_rtt_ns pays through io_uring instead. */
static void *wake_ping(void *arg)
{
    struct pair *p = arg;
    pair_pin(p, p->cpu_a);
    for (uint64_t i = 0; i < p->warmup + p->n && !p->io_err; i++) {
        uint64_t t0 = bench_clock_ns();
        efd_write(p, p->efd_pong);
        efd_read(p, p->efd_ping);
        uint64_t t1 = bench_clock_ns();
        if (i >= p->warmup)
            samples_add(&p->s, (int64_t)(t1 - t0));
        if ((i & BENCH_PROGRESS_MASK) == 0)
            bench_progress(i, p->warmup + p->n);
    }
    return NULL;
}

static void *wake_pong(void *arg)
{
    struct pair *p = arg;
    pair_pin(p, p->cpu_b);
    for (uint64_t i = 0; i < p->warmup + p->n && !p->io_err; i++) {
        efd_read(p, p->efd_pong);
        efd_write(p, p->efd_ping);
    }
    return NULL;
}

static int run_pair(const bench_env_t *env, const char *name, uint64_t n, void *(*ping)(void *),
                    void *(*pong)(void *), struct pair *p, result_t *r, char *why, size_t whylen)
{
    if (env->cpu_a < 0 || env->cpu_b < 0) {
        snprintf(why, whylen, "needs two CPUs this process may run on");
        return BENCH_SKIP;
    }
    p->cpu_a = env->cpu_a;
    p->cpu_b = env->cpu_b;
    p->n = n;
    p->warmup = n / WARMUP_DIV;
    if (samples_init(&p->s, n) != 0) {
        snprintf(why, whylen, "out of memory for %llu samples", (unsigned long long)n);
        return BENCH_FAIL;
    }
    pthread_barrier_init(&p->ready, NULL, 2);
    pthread_t ta, tb;
    int rc = pthread_create(&tb, NULL, pong, p);
    if (rc == 0) {
        rc = pthread_create(&ta, NULL, ping, p);
        if (rc != 0) {
            /* The pong thread waits at the barrier for a partner that never comes. */
            pthread_cancel(tb);
        } else {
            pthread_join(ta, NULL);
        }
        pthread_join(tb, NULL);
    }
    pthread_barrier_destroy(&p->ready);
    if (rc != 0) {
        snprintf(why, whylen, "pthread_create: %s", strerror(rc));
        samples_free(&p->s);
        return BENCH_FAIL;
    }
    if (p->io_err) {
        snprintf(why, whylen, "eventfd I/O: %s", strerror(-p->io_err));
        samples_free(&p->s);
        return BENCH_FAIL;
    }
    if (p->pin_err)
        bench_note("%s: could not pin to CPUs %d and %d (%s); measured unpinned", name, p->cpu_a,
                   p->cpu_b, strerror(-p->pin_err));
    samples_sort(&p->s);
    result_set_pcts(r, &p->s);
    result_set_hist(r, &p->s, 1);
    r->value = r->p50;
    samples_free(&p->s);
    return 0;
}

int bench_raw_c2c_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    static struct pair p; /* static: its cache line stays aligned whatever the stack does */
    memset(&p, 0, sizeof(p));
    atomic_init(&p.line, 0);
    return run_pair(env, r->name, n, c2c_ping, c2c_pong, &p, r, why, whylen);
}

int bench_raw_wake_rtt(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    static struct pair p;
    memset(&p, 0, sizeof(p));
    p.efd_ping = eventfd(0, EFD_CLOEXEC);
    p.efd_pong = eventfd(0, EFD_CLOEXEC);
    int rc;
    if (p.efd_ping < 0 || p.efd_pong < 0) {
        snprintf(why, whylen, "eventfd: %s", strerror(errno));
        rc = BENCH_FAIL;
    } else {
        rc = run_pair(env, r->name, n, wake_ping, wake_pong, &p, r, why, whylen);
    }
    if (p.efd_ping >= 0)
        close(p.efd_ping);
    if (p.efd_pong >= 0)
        close(p.efd_pong);
    return rc;
}

/* --- a minimal SPSC ring: the floor under mesh.throughput_mps --- */

/* What the ring carries: 16 bytes, the size of a task on the mesh (a function and its argument,
 * what mesh.throughput_mps sends with pith_submit). */
struct spsc_msg {
    uint64_t seq;
    uint64_t value;
};

/* 1024 entries, 16 KiB: 256 cache lines, as many as the mesh ring's 256 one-line slots (the
 * default cfg.ring_batches). A power of two: positions wrap with a mask. */
#define SPSC_SLOTS 1024u
/* Messages between two progress stores: the producer's inner loop is the plain loop. */
#define SPSC_CHUNK 16384u

/* The textbook cached-index ring (as Rigtorp's SPSCQueue): each side publishes its own index
 * with one release store per message and reads the other's, with acquire, only when its copy
 * says the ring is full (producer) or empty (consumer). The copies live in each thread's
 * registers; the two indices sit on lines of their own, so neither side's store takes the
 * other's line unless the other is reading it. */
struct spsc {
    struct spsc_msg *slots; /* read-only while the threads run, like the fields up to tail */
    uint64_t n;
    int cpu_a, cpu_b;
    pthread_barrier_t ready;
    int pin_err;
    uint64_t t_start;
    _Alignas(64) _Atomic uint32_t tail; /* next position the producer writes */
    _Alignas(64) _Atomic uint32_t head; /* next position the consumer reads */
    uint64_t t_end, sum;                /* the consumer's, written once at its end */
};

static void spsc_pin(struct spsc *q, int cpu)
{
    int rc = bench_pin_self(cpu);
    if (rc != 0)
        q->pin_err = rc; /* racy between the two threads, but any one error is enough to note */
    pthread_barrier_wait(&q->ready);
}

static void *spsc_producer(void *arg)
{
    struct spsc *q = arg;
    spsc_pin(q, q->cpu_a);
    uint32_t tail = 0, head_seen = 0; /* tail: only this thread writes it, so a copy is exact */
    q->t_start = bench_clock_ns();
    for (uint64_t i = 0; i < q->n;) {
        uint64_t end = q->n - i > SPSC_CHUNK ? i + SPSC_CHUNK : q->n;
        for (; i < end; i++) {
            while (tail - head_seen == SPSC_SLOTS)
                /* Acquire pairs with the consumer's release store of head: its read of the
                 * entry we are about to overwrite happened before. Without it the write below
                 * could land while the consumer still reads the old message. */
                head_seen = atomic_load_explicit(&q->head, memory_order_acquire);
            q->slots[tail & (SPSC_SLOTS - 1)] = (struct spsc_msg){.seq = i, .value = i * 3};
            /* Release pairs with the consumer's acquire load of tail: the entry is written
             * before the index that hands it over is seen. */
            atomic_store_explicit(&q->tail, ++tail, memory_order_release);
        }
        bench_progress(i, q->n);
    }
    return NULL;
}

/* Busy-polls without a pause instruction, as the c2c ping-pong does: the row is the floor. */
static void *spsc_consumer(void *arg)
{
    struct spsc *q = arg;
    spsc_pin(q, q->cpu_b);
    uint32_t head = 0, tail_seen = 0; /* head: only this thread writes it */
    uint64_t sum = 0;
    for (uint64_t got = 0; got < q->n;) {
        if (head == tail_seen) {
            /* Acquire pairs with the producer's release store of tail: the entries below it
             * are written before we read them. */
            tail_seen = atomic_load_explicit(&q->tail, memory_order_acquire);
            continue;
        }
        sum += q->slots[head & (SPSC_SLOTS - 1)].value;
        /* Release pairs with the producer's acquire load of head: our read of the entry is
         * done before the producer may write the slot again. */
        atomic_store_explicit(&q->head, ++head, memory_order_release);
        got++;
    }
    q->t_end = bench_clock_ns();
    q->sum = sum;
    return NULL;
}

int bench_raw_spsc_ring(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    if (env->cpu_a < 0 || env->cpu_b < 0) {
        snprintf(why, whylen, "needs two CPUs this process may run on");
        return BENCH_SKIP;
    }
    static struct spsc q; /* static: its index lines stay aligned whatever the stack does */
    memset(&q, 0, sizeof(q));
    q.n = n;
    q.cpu_a = env->cpu_a;
    q.cpu_b = env->cpu_b;
    atomic_init(&q.tail, 0);
    atomic_init(&q.head, 0);
    q.slots = aligned_alloc(64, SPSC_SLOTS * sizeof(struct spsc_msg));
    if (q.slots == NULL) {
        snprintf(why, whylen, "out of memory for the ring");
        return BENCH_FAIL;
    }
    memset(q.slots, 0, SPSC_SLOTS * sizeof(struct spsc_msg));
    pthread_barrier_init(&q.ready, NULL, 2);
    pthread_t tp, tc;
    int rc = pthread_create(&tc, NULL, spsc_consumer, &q);
    if (rc == 0) {
        rc = pthread_create(&tp, NULL, spsc_producer, &q);
        if (rc != 0)
            pthread_cancel(tc); /* it waits at the barrier for a partner that never comes */
        else
            pthread_join(tp, NULL);
        pthread_join(tc, NULL);
    }
    pthread_barrier_destroy(&q.ready);
    free(q.slots);
    if (rc != 0) {
        snprintf(why, whylen, "pthread_create: %s", strerror(rc));
        return BENCH_FAIL;
    }
    uint64_t want = 3 * (n * (n - 1) / 2);
    if (q.sum != want) {
        snprintf(why, whylen, "the consumer summed %llu, not %llu", (unsigned long long)q.sum,
                 (unsigned long long)want);
        return BENCH_FAIL;
    }
    r->value = (double)n / ((double)(q.t_end - q.t_start) / 1e9) / 1e6;
    if (q.pin_err)
        bench_note("%s: could not pin to CPUs %d and %d (%s); measured unpinned", r->name, q.cpu_a,
                   q.cpu_b, strerror(-q.pin_err));
    bench_note("%s: one thread on CPU %d writes %zu-byte messages (a mesh task's size) into a "
               "%u-entry ring that a thread on CPU %d drains busy-polling, one release store per "
               "message on each side, the other's index read only when the ring looks full or "
               "empty; no engine, no batching: the floor under mesh.throughput_mps (shard 0 to "
               "shard 1 on the same CPUs)",
               r->name, q.cpu_a, sizeof(struct spsc_msg), SPSC_SLOTS, q.cpu_b);
    return 0;
}

struct sleeper {
    int cpu;
    uint64_t n;
    samples_t s;
    int pin_err;
    int64_t early; /* wake-ups before the deadline: should never happen */
};

/* The same schedule as timer.jitter_p99_ns: absolute deadlines one period apart, lateness
 * measured against the deadline (not against the previous wake-up), so a late wake-up does not
 * shift the ones after it. */
static void *sleeper_main(void *arg)
{
    struct sleeper *sl = arg;
    sl->pin_err = bench_pin_self(sl->cpu);
    /* The default timer slack (50 us) would widen every deadline; shards ask the kernel for the
     * tightest slack, so the baseline does too and both rows measure wake-up, not slack. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    uint64_t deadline = bench_clock_ns() + BENCH_TIMER_PERIOD_NS;
    for (uint64_t i = 0; i < BENCH_TIMER_WARMUP + sl->n; i++) {
        struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
                              .tv_nsec = (long)(deadline % 1000000000ull)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        int64_t late = (int64_t)(bench_clock_ns() - deadline);
        if (i >= BENCH_TIMER_WARMUP) {
            samples_add(&sl->s, late);
            sl->early += late < 0;
        }
        bench_progress(i + 1, BENCH_TIMER_WARMUP + sl->n); /* a store a millisecond */
        deadline += BENCH_TIMER_PERIOD_NS;
    }
    return NULL;
}

int bench_raw_nanosleep_jitter(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen)
{
    struct sleeper sl = {.cpu = env->cpu_a, .n = n};
    if (samples_init(&sl.s, n) != 0) {
        snprintf(why, whylen, "out of memory for %llu samples", (unsigned long long)n);
        return BENCH_FAIL;
    }
    pthread_t t;
    int rc = pthread_create(&t, NULL, sleeper_main, &sl);
    if (rc != 0) {
        snprintf(why, whylen, "pthread_create: %s", strerror(rc));
        samples_free(&sl.s);
        return BENCH_FAIL;
    }
    pthread_join(t, NULL);
    if (sl.pin_err)
        bench_note("%s: could not pin to CPU %d (%s); measured unpinned", r->name, sl.cpu,
                   strerror(-sl.pin_err));
    if (sl.early)
        bench_note("%s: %lld of %llu wake-ups came before their deadline", r->name,
                   (long long)sl.early, (unsigned long long)n);
    samples_sort(&sl.s);
    result_set_pcts(r, &sl.s);
    result_set_hist(r, &sl.s, 1);
    r->value = r->p99;
    samples_free(&sl.s);
    return 0;
}

/* --- allocators ---
 * libpith links libmimalloc, which exports malloc and free and, on glibc systems, also
 * __libc_malloc, __libc_free and the rest of glibc's internal names: in this process every one
 * of them binds to mimalloc (libmimalloc comes before libc in the search order). glibc's own
 * allocator is therefore looked up in libc.so.6 itself, where dlsym sees only glibc. */
static void *(*glibc_malloc)(size_t size);
static void (*glibc_free)(void *p);

BENCH_ALLOC_LOOPS(libc, glibc_malloc, glibc_free)
BENCH_ALLOC_LOOPS(mi, mi_malloc, mi_free)

static char libc_label[96];
static bench_allocator_t libc_allocator_v = {
    .pairs = libc_pairs,
    .burst = libc_burst,
};

/* glibc's __libc_malloc and __libc_free, checked to live in another object than mimalloc's. */
static const bench_allocator_t *libc_allocator(char *why, size_t whylen)
{
    if (glibc_malloc != NULL)
        return &libc_allocator_v;
    void *h = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL) {
        snprintf(why, whylen, "dlopen(libc.so.6, RTLD_NOLOAD): %s", dlerror());
        return NULL;
    }
    void *m = dlsym(h, "__libc_malloc"), *f = dlsym(h, "__libc_free");
    dlclose(h); /* RTLD_NOLOAD: only drops the reference it took; libc stays */
    /* Function and object pointers converted by copying: ISO C has no cast between them. */
    void *(*mi_fn)(size_t) = mi_malloc;
    void *mi_addr;
    memcpy(&mi_addr, &mi_fn, sizeof(mi_addr));
    Dl_info gi, mi;
    if (m == NULL || f == NULL || dladdr(m, &gi) == 0 || dladdr(mi_addr, &mi) == 0 ||
        gi.dli_fbase == mi.dli_fbase) {
        snprintf(why, whylen, "glibc's __libc_malloc/__libc_free not found apart from mimalloc");
        return NULL;
    }
    memcpy(&glibc_malloc, &m, sizeof(m));
    memcpy(&glibc_free, &f, sizeof(f));
    snprintf(libc_label, sizeof(libc_label),
             "glibc %s malloc/free (__libc_malloc/__libc_free of %s)", gnu_get_libc_version(),
             gi.dli_fname);
    libc_allocator_v.label = libc_label;
    libc_allocator_v.alloc = glibc_malloc;
    libc_allocator_v.free = glibc_free;
    return &libc_allocator_v;
}

static const bench_allocator_t *mi_allocator(void)
{
    static char label[96];
    static bench_allocator_t a = {
        .alloc = mi_malloc,
        .free = mi_free,
        .pairs = mi_pairs,
        .burst = mi_burst,
    };
    int v = mi_version(); /* the library's, not the header's: 209 is 2.0.9 */
    snprintf(label, sizeof(label),
             "mimalloc %d.%d.%d mi_malloc/mi_free (the thread's default heap)", v / 100,
             v / 10 % 10, v % 10);
    a.label = label;
    return &a;
}

int bench_raw_malloc_free(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    const bench_allocator_t *a = libc_allocator(why, whylen);
    return a ? bench_alloc_pairs(env, a, false, n, r, why, whylen) : BENCH_SKIP;
}

/* Not a goal's baseline: a reference for what pith's header and accounts add to mimalloc. */
int bench_raw_mi_malloc_free(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen)
{
    return bench_alloc_pairs(env, mi_allocator(), false, n, r, why, whylen);
}

int bench_raw_malloc_free_burst(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                size_t whylen)
{
    const bench_allocator_t *a = libc_allocator(why, whylen);
    return a ? bench_alloc_pairs(env, a, true, n, r, why, whylen) : BENCH_SKIP;
}

int bench_raw_malloc_page_faults(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                 size_t whylen)
{
    const bench_allocator_t *a = libc_allocator(why, whylen);
    return a ? bench_alloc_faults(env, a, n, r, why, whylen) : BENCH_SKIP;
}
