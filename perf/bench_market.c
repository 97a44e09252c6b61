/* The market example's books (issue 18): its reference order books (examples/market/book.c)
 * fed a synthetic ITCH 5.0 day in a plain loop on one thread, no engine (raw.book_update_ns,
 * the floor), and the same day through the engine to pith-market's book actors, which run the
 * same book code (market.book_update_ns). */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "book.h"
#include "feed.h"
#include "floor.h"
#include "gen.h"
#include "itch.h"
#include "mkt.h"

/* The day's instruments (Zipf popularity over them, as gen.c draws). */
#define SYMBOLS 3000u
/* Messages timed together: one sample. */
#define CHUNK 1024u

/* The whole day written as Nasdaq's files are: *len bytes, *count messages; NULL on failure. */
static uint8_t *day_bytes(uint64_t n, size_t *len, uint64_t *count)
{
    struct gen_config cfg = {.seed = 18, .symbols = SYMBOLS, .messages = n};
    return gen_day(&cfg, len, count);
}

int bench_raw_book_update(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    (void)env;
    size_t len;
    uint64_t count;
    uint8_t *day = day_bytes(n, &len, &count);
    book_set_t *books = book_set_create(SYMBOLS, 1u << 20, 1u << 16);
    samples_t s = {0};
    if (day == NULL || books == NULL || samples_init(&s, count / CHUNK + 1) != 0) {
        snprintf(why, whylen, "no memory for the day or the books");
        free(day);
        book_set_destroy(books);
        return BENCH_FAIL;
    }
    uint64_t done = 0, refused = 0, t_all = bench_clock_ns();
    size_t at = 0;
    int err = 0;
    while (at < len && err == 0) {
        uint64_t t0 = bench_clock_ns();
        unsigned k = 0;
        for (; k < CHUNK && at < len; k++) {
            struct itch_msg m;
            size_t used;
            err = itch_decode(day + at, len - at, &m, &used);
            if (err != 0)
                break;
            at += used;
            refused += book_set_apply(books, &m) != 0;
        }
        uint64_t t1 = bench_clock_ns();
        if (k > 0)
            samples_add(&s, (int64_t)((t1 - t0 + k / 2) / k));
        done += k;
        if ((done & BENCH_PROGRESS_MASK) < CHUNK)
            bench_progress(done, count);
    }
    t_all = bench_clock_ns() - t_all;
    book_set_destroy(books);
    free(day);
    if (err != 0 || refused != 0 || done != count) {
        snprintf(why, whylen, "the day did not apply: %s, %llu refused, %llu of %llu messages",
                 err != 0 ? itch_strerror(err) : "decoded", (unsigned long long)refused,
                 (unsigned long long)done, (unsigned long long)count);
        samples_free(&s);
        return BENCH_FAIL;
    }
    samples_sort(&s);
    result_set_pcts(r, &s);
    r->value = (double)t_all / (double)done;
    bench_note("%s: %llu ITCH 5.0 messages (%zu bytes, %u symbols, Zipf popularity) decoded and "
               "applied to their books on the main thread (unpinned), no engine: %.1f ns a "
               "message over the "
               "day; percentiles over chunks of %u messages (each a chunk's mean)",
               r->name, (unsigned long long)done, len, SYMBOLS, r->value, CHUNK);
    samples_free(&s);
    return 0;
}

/* ---- the same day handed from one thread to another through a plain ring ---- */

int bench_raw_book_update_spsc(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen)
{
    size_t len;
    uint64_t count;
    uint8_t *day = day_bytes(n, &len, &count);
    struct floor_result *fr = calloc(1, sizeof *fr);
    if (day == NULL || fr == NULL) {
        snprintf(why, whylen, "no memory for the day");
        free(day);
        free(fr);
        return BENCH_FAIL;
    }
    uint64_t t0 = bench_clock_ns();
    int rc = floor_run(day, len, 0, false, env->cpu_a, env->cpu_b, fr);
    uint64_t t1 = bench_clock_ns();
    free(day);
    uint64_t msgs = fr->msgs, refused = fr->refused, full = fr->ring_full;
    free(fr);
    if (rc != 0 || refused != 0 || msgs == 0) {
        snprintf(why, whylen, "%s, %llu refused", rc != 0 ? strerror(-rc) : "fed",
                 (unsigned long long)refused);
        return BENCH_FAIL;
    }
    r->value = (double)(t1 - t0) / (double)msgs;
    bench_note("%s: the same day (%llu book messages, %u symbols) decoded on a thread on CPU %d "
               "and handed through a plain single-producer ring of 1024 entries (pith-market's "
               "--floor, no clock read per message) to a thread on CPU %d that spins on it, "
               "applies each with the same book code and takes its top of book: the floor for "
               "a hand-off between two threads, without an engine; from the start to the last "
               "message applied; the ring was full at %llu pushes",
               r->name, (unsigned long long)msgs, SYMBOLS, env->cpu_a, env->cpu_b,
               (unsigned long long)full);
    return 0;
}

/* ---- the same day through the engine: feed lane -> book actor -> top of book ---- */

static bool ticks_done(uint64_t want)
{
    uint64_t got = 0;
    for (unsigned s = 0; s < mkt_cfg.shards; s++)
        got += atomic_load_explicit(&mkt_shards[s].ticks, memory_order_relaxed);
    return got >= want;
}

int bench_market_book_update(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen)
{
    size_t len;
    uint64_t count;
    uint8_t *day = day_bytes(n, &len, &count);
    struct feed_result *fr = calloc(1, sizeof *fr);
    int rc = books_register();
    if (day == NULL || fr == NULL || rc != 0) {
        snprintf(why, whylen, "%s", rc != 0 ? pith_strerror(rc) : "no memory for the day");
        free(day);
        free(fr);
        return BENCH_FAIL;
    }
    /* Books only, as raw.book_update_ns: no signals, no timestamps read, no digest. */
    mkt_cfg = (struct mkt_config){.shards = 1, .max_orders = 1u << 20, .max_levels = 1u << 16};
    mkt_shards = aligned_alloc(64, sizeof *mkt_shards);
    if (mkt_shards == NULL) {
        free(day);
        free(fr);
        snprintf(why, whylen, "no memory");
        return BENCH_FAIL;
    }
    memset(mkt_shards, 0, sizeof *mkt_shards);
    mkt_epoch_ns = pith_now_ns();
    static unsigned cpu;
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    cfg.poll_ns = 10ull * 1000000000; /* the shard polls: the feed keeps it busy anyway */
    if (env->cpu_b >= 0) {
        cpu = (unsigned)env->cpu_b;
        cfg.cpus = &cpu;
        cfg.ncpus = 1;
    }
    if (bench_engine_start(&cfg, why, whylen) != 0) {
        free(day);
        free(fr);
        free(mkt_shards);
        return BENCH_FAIL;
    }
    (void)bench_pin_self(env->cpu_a);
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    ccfg.spin_ns = 1000000; /* as pith-market's feed: it polls for lane room before sleeping */
    pith_client_t *c = pith_client_open(&ccfg);
    rc = c == NULL ? -errno : 0;
    /* Every book is made before the clock starts, as a trading day starts. */
    for (unsigned l = 1; l <= SYMBOLS && rc == 0; l++) {
        pith_vref_t v;
        pith_msg_t reply;
        rc = books_vref((uint16_t)l, &v);
        if (rc == 0)
            rc = pith_client_vask(c, &v, MT_BOOKQ, NULL, 0, 5000000000ull, &reply);
    }
    uint64_t t0 = bench_clock_ns(), t1 = t0;
    if (rc == 0) {
        struct feed_config fc = {.day = day, .len = len, .rate = 0};
        rc = feed_run(c, &fc, fr);
        while (rc == 0 && !ticks_done(fr->book_msgs))
            if (bench_clock_ns() - t0 > (uint64_t)(env->wait_s * 1e9)) {
                rc = -ETIMEDOUT;
                break;
            }
        t1 = bench_clock_ns();
    }
    uint64_t refused = atomic_load(&mkt_shards[0].refused);
    pith_client_close(c);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    bench_engine_stop(r->name);
    free(day);
    free(mkt_shards);
    mkt_shards = NULL;
    uint64_t msgs = fr->book_msgs, pushed = fr->pushed_back;
    free(fr);
    if (rc != 0 || refused != 0) {
        snprintf(why, whylen, "%s, %llu refused", rc != 0 ? pith_strerror(rc) : "fed",
                 (unsigned long long)refused);
        return BENCH_FAIL;
    }
    r->value = (double)(t1 - t0) / (double)msgs;
    bench_note("%s: the same day (%llu book messages, %u symbols) decoded on a client thread on "
               "CPU %d and sent in pith_client_vsend_batch runs of up to 16 (pith-market's feed) "
               "to its symbol's book actor (a virtual actor) on one shard on CPU %d, which "
               "applies it with the same book code and "
               "takes its top of book; from the first send to the last message applied, the "
               "books made beforehand; the lane pushed back %llu times",
               r->name, (unsigned long long)msgs, SYMBOLS, env->cpu_a, env->cpu_b,
               (unsigned long long)pushed);
    return 0;
}
