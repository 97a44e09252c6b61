/* pith-market-cg: the market day's per-message work, counted by callgrind rather than timed
 * (issue 18). On a shared, noisy machine the same build's market.book_update_ns can move by
 * tens of nanoseconds between runs; the instructions it executes do not. perf/market_cg.sh runs
 * this under callgrind twice over the same day:
 *   raw     the books' own work on one thread: apply each ITCH message with the book code and
 *           take its top of book (as pith-market's --floor consumer does), the day decoded
 *           beforehand and not counted;
 *   engine  the day through the engine as market.book_update_ns sends it: a client thread
 *           decodes and sends each message with pith_client_vsend to its symbol's book actor
 *           on one shard, which applies it and takes its top of book.
 * Only the day itself is counted (the instrumentation is switched on after the day is made and
 * the books exist, and off once the last message is applied). The engine run's shard thread
 * less the raw run is what the shard spends beyond the books: the lane, the directory, the
 * turn, and the book actor's own step (its tick, its counters, its top-of-book check); its
 * feed thread is the decode and the send. The shard polls for 1 ns and the client does not
 * spin, so that waiting adds as few instructions as it can. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <valgrind/callgrind.h>

#include <pith/client.h>
#include <pith/pith.h>

#include "book.h"
#include "feed.h"
#include "gen.h"
#include "itch.h"
#include "mkt.h"

/* The day's instruments: 3000 as bench_market.c, or the run's third argument. */
static unsigned symbols = 3000;

static int run_raw(const uint8_t *day, size_t len, uint64_t *msgs)
{
    /* Decoded first, not counted: the engine run decodes on its feed thread. The types its feed
     * hands to books (a trade, P, changes no book). */
    size_t cap = len / 12 + 1, n = 0;
    struct itch_msg *ms = malloc(cap * sizeof(*ms));
    book_set_t *books = book_set_create(MKT_MAX_LOCATE, 1u << 20, 1u << 16);
    if (ms == NULL || books == NULL) {
        free(ms);
        book_set_destroy(books);
        return -ENOMEM;
    }
    int err = 0;
    for (size_t at = 0; at < len && n < cap;) {
        size_t used;
        err = itch_decode(day + at, len - at, &ms[n], &used);
        if (err != 0)
            break;
        at += used;
        if (ms[n].type != '\0' && strchr("AFECXDUP", ms[n].type) != NULL)
            n++;
    }
    /* Every book made first, as the engine run activates them before its day. */
    for (unsigned l = 1; l <= symbols; l++) {
        struct itch_msg m = {.type = 'D', .locate = (uint16_t)l, .del = {.ref = 0}};
        (void)book_set_apply(books, &m);
    }
    uint64_t refused = 0, sink = 0;
    CALLGRIND_START_INSTRUMENTATION;
    for (size_t i = 0; i < n; i++) {
        refused += book_set_apply(books, &ms[i]) != 0;
        struct book_top top;
        book_top(book_set_get(books, ms[i].locate), &top);
        sink += top.bid.price;
    }
    CALLGRIND_STOP_INSTRUMENTATION;
    book_set_destroy(books);
    free(ms);
    printf("raw: %zu messages, %llu refused (top sum %llu)\n", n, (unsigned long long)refused,
           (unsigned long long)sink);
    *msgs = n;
    return err != 0 ? -EINVAL : refused != 0 ? -EIO : 0;
}

static int run_engine(const uint8_t *day, size_t len, uint64_t *msgs)
{
    int err = books_register();
    if (err != 0)
        return err;
    mkt_cfg = (struct mkt_config){.shards = 1, .max_orders = 1u << 20, .max_levels = 1u << 16};
    mkt_shards = aligned_alloc(64, sizeof *mkt_shards);
    if (mkt_shards == NULL)
        return -ENOMEM;
    memset(mkt_shards, 0, sizeof *mkt_shards);
    mkt_epoch_ns = pith_now_ns();
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    cfg.poll_ns = 1;
    cfg.stall_ns = 0;
    err = pith_engine_start(&cfg);
    if (err != 0)
        return err;
    pith_client_config_t cc;
    pith_client_config_init(&cc);
    cc.spin_ns = 0;
    pith_client_t *c = pith_client_open(&cc);
    err = c == NULL ? -errno : 0;
    for (unsigned l = 1; l <= symbols && err == 0; l++) {
        pith_vref_t v;
        pith_msg_t reply;
        err = books_vref((uint16_t)l, &v);
        if (err == 0)
            err = pith_client_vask(c, &v, MT_BOOKQ, NULL, 0, 60000000000ull, &reply);
    }
    struct feed_result fr = {0};
    if (err == 0) {
        struct feed_config fc = {.day = day, .len = len, .rate = 0};
        CALLGRIND_START_INSTRUMENTATION;
        err = feed_run(c, &fc, &fr);
        while (err == 0 && atomic_load(&mkt_shards[0].ticks) < fr.book_msgs)
            usleep(100);
        CALLGRIND_STOP_INSTRUMENTATION;
    }
    uint64_t refused = atomic_load(&mkt_shards[0].refused);
    if (c != NULL)
        pith_client_close(c);
    pith_engine_stop();
    free(mkt_shards);
    mkt_shards = NULL;
    printf("engine: %llu messages, %llu refused\n", (unsigned long long)fr.book_msgs,
           (unsigned long long)refused);
    *msgs = fr.book_msgs;
    return err != 0 ? err : refused != 0 ? -EIO : 0;
}

int main(int argc, char **argv)
{
    if ((argc != 3 && argc != 4) ||
        (strcmp(argv[1], "raw") != 0 && strcmp(argv[1], "engine") != 0)) {
        fprintf(stderr, "usage: %s raw|engine MESSAGES [SYMBOLS] (run it with perf/market_cg.sh)\n",
                argv[0]);
        return 2;
    }
    if (argc == 4) {
        unsigned long k = strtoul(argv[3], NULL, 10);
        if (k == 0 || k >= MKT_MAX_LOCATE) {
            fprintf(stderr, "SYMBOLS: 1 to %u\n", MKT_MAX_LOCATE - 1);
            return 2;
        }
        symbols = (unsigned)k;
    }
    struct gen_config g = {.seed = 18, .symbols = symbols, .messages = strtoull(argv[2], NULL, 10)};
    size_t len;
    uint64_t count, msgs = 0;
    uint8_t *day = gen_day(&g, &len, &count);
    if (day == NULL) {
        fprintf(stderr, "no memory for the day\n");
        return 1;
    }
    int err = strcmp(argv[1], "raw") == 0 ? run_raw(day, len, &msgs) : run_engine(day, len, &msgs);
    free(day);
    if (err != 0) {
        fprintf(stderr, "%s: %s\n", argv[1], strerror(-err));
        return 1;
    }
    printf("book messages %llu\n", (unsigned long long)msgs);
    return 0;
}
