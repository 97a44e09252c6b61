/* The market example's floor (issue 18): its reference order books (examples/market/book.c)
 * fed a synthetic ITCH 5.0 day in a plain loop on one thread, no engine: each message decoded
 * from its bytes and applied to its instrument's book. The engine's per-instrument actors will
 * be measured against this. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "book.h"
#include "gen.h"
#include "itch.h"

/* The day's instruments (Zipf popularity over them, as gen.c draws). */
#define SYMBOLS 3000u
/* Messages timed together: one sample. */
#define CHUNK 1024u

/* The whole day written as Nasdaq's files are: *len bytes, *count messages; NULL on failure. */
static uint8_t *day_bytes(uint64_t n, size_t *len, uint64_t *count)
{
    struct gen_config cfg = {.seed = 18, .symbols = SYMBOLS, .messages = n};
    gen_t *g = gen_create(&cfg);
    size_t cap = (size_t)(n + SYMBOLS + 16) * 52, at = 0; /* 2 + the longest message, 50 */
    uint8_t *buf = g != NULL ? malloc(cap) : NULL;
    struct itch_msg m;
    int r = 0;
    *count = 0;
    while (buf != NULL && (r = gen_next(g, &m)) == 1) {
        ssize_t k = itch_encode(&m, buf + at, cap - at);
        if (k < 0) {
            r = (int)k;
            break;
        }
        at += (size_t)k;
        (*count)++;
    }
    gen_destroy(g);
    if (r != 0) {
        free(buf);
        return NULL;
    }
    *len = at;
    return buf;
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
