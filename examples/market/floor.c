/* The latency floor (floor.h): a Lamport ring of ticks with cached indices, one producer (the
 * calling thread, paced as feed.c paces) and one consumer thread that spins on it. */
#include "floor.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "book.h"
#include "itch.h"
#include "mkt.h"

#define RING 1024u /* entries: a feed lane's bytes, 512 slots of 64, hold as many ticks */

struct entry {
    struct itch_msg m;
    uint64_t due;
};

struct ring {
    struct entry *slots;
    alignas(64) _Atomic uint64_t tail; /* written by the producer */
    uint64_t head_seen;                /* the producer's copy of head */
    alignas(64) _Atomic uint64_t head; /* written by the consumer */
    _Atomic bool done;                 /* the producer has pushed its last entry */
    uint64_t tail_seen;                /* the consumer's copy of tail */
    int cpu;
    bool timed;
    struct floor_result *r;
};

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *consume(void *arg)
{
    struct ring *q = arg;
    pin(q->cpu);
    book_set_t *books = book_set_create(MKT_MAX_LOCATE, 1u << 20, 1u << 16);
    if (books == NULL)
        return (void *)(intptr_t)-ENOMEM;
    uint64_t head = 0;
    for (;;) {
        if (head == q->tail_seen) {
            /* Acquire pairs with the producer's release of tail: the entries are written. */
            q->tail_seen = atomic_load_explicit(&q->tail, memory_order_acquire);
            if (head == q->tail_seen) {
                /* done is set after the last tail store, so a second look settles it. */
                if (atomic_load_explicit(&q->done, memory_order_acquire) &&
                    head == atomic_load_explicit(&q->tail, memory_order_acquire))
                    break;
                continue;
            }
        }
        const struct entry *e = &q->slots[head % RING];
        q->r->refused += book_set_apply(books, &e->m) != 0;
        struct book_top top;
        book_t *b = book_set_get(books, e->m.locate);
        if (b != NULL)
            book_top(b, &top);
        if (q->timed)
            lat_add(&q->r->to_book, mkt_now() - e->due);
        q->r->msgs++;
        head++;
        /* Release: our reads of the entry happen before the producer reuses its slot. */
        atomic_store_explicit(&q->head, head, memory_order_release);
    }
    book_set_destroy(books);
    return NULL;
}

int floor_run(const uint8_t *day, size_t len, uint64_t rate, bool timed, int feed_cpu, int book_cpu,
              struct floor_result *r)
{
    struct ring *q = aligned_alloc(64, sizeof *q);
    if (q == NULL)
        return -ENOMEM;
    memset(q, 0, sizeof *q);
    q->slots = calloc(RING, sizeof *q->slots);
    q->cpu = book_cpu;
    q->timed = timed;
    q->r = r;
    pthread_t t;
    if (q->slots == NULL || pthread_create(&t, NULL, consume, q) != 0) {
        free(q->slots);
        free(q);
        return -ENOMEM;
    }
    cpu_set_t was;
    bool had = sched_getaffinity(0, sizeof was, &was) == 0;
    pin(feed_cpu);
    double period = rate > 0 ? 1e9 / (double)rate : 0;
    uint64_t start = mkt_now() + 1000000, n = 0, tail = 0;
    r->start_ns = UINT64_MAX;
    size_t at = 0;
    while (at < len) {
        struct itch_msg m;
        size_t used;
        int err = itch_decode(day + at, len - at, &m, &used);
        if (err != 0 && err != -ENOMSG)
            break; /* not reached: the day was checked whole before */
        at += used;
        if (err != 0 || !mkt_book_msg(m.type) || m.locate == 0 || m.locate > MKT_MAX_LOCATE)
            continue;
        uint64_t now = timed ? mkt_now() : 0, due = now;
        if (period > 0) {
            due = start + (uint64_t)((double)n * period);
            while (now < due)
                now = mkt_now();
        }
        if (tail - q->head_seen >= RING) {
            r->ring_full++;
            /* Acquire pairs with the consumer's release of head: it is done with the slot. */
            while (tail - (q->head_seen = atomic_load_explicit(&q->head, memory_order_acquire)) >=
                   RING)
                ;
        }
        q->slots[tail % RING] = (struct entry){.m = m, .due = due};
        tail++;
        /* Release: the entry is written before the consumer can see it. */
        atomic_store_explicit(&q->tail, tail, memory_order_release);
        if (timed)
            lat_add(&r->late, now - due);
        if (r->start_ns == UINT64_MAX)
            r->start_ns = timed ? now : mkt_now();
        n++;
    }
    r->end_ns = mkt_now(); /* the last hand-over */
    atomic_store_explicit(&q->done, true, memory_order_release);
    void *ret;
    pthread_join(t, &ret);
    if (had)
        (void)sched_setaffinity(0, sizeof was, &was);
    free(q->slots);
    free(q);
    return (int)(intptr_t)ret;
}
