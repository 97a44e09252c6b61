/* The market example's synthetic day (examples/market/gen.c): the same seed gives the same
 * bytes, the day decodes whole, and applied to the reference book it is never refused and
 * never crosses. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "book.h"
#include "gen.h"
#include "itch.h"

/* The encoded day for cfg, in a buffer the caller frees. */
static uint8_t *day(const struct gen_config *cfg, size_t *len)
{
    gen_t *g = gen_create(cfg);
    cr_assert_not_null(g);
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    struct itch_msg m;
    int r;
    while ((r = gen_next(g, &m)) == 1) {
        if (cap - n < ITCH_MAX_FRAME) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
        ssize_t w = itch_encode(&m, buf + n, cap - n);
        cr_assert_gt(w, 0, "type %c: %zd", m.type, w);
        n += (size_t)w;
    }
    cr_assert_eq(r, 0);
    cr_assert_eq(gen_next(g, &m), 0, "the day stays over");
    gen_destroy(g);
    *len = n;
    return buf;
}

static const struct gen_config small = {.seed = 7, .symbols = 200, .messages = 50000};

Test(gen, the_same_seed_gives_the_same_bytes_and_another_seed_others)
{
    size_t a_len, b_len, c_len;
    uint8_t *a = day(&small, &a_len);
    uint8_t *b = day(&small, &b_len);
    struct gen_config other = small;
    other.seed = 8;
    uint8_t *c = day(&other, &c_len);
    cr_assert_eq(a_len, b_len);
    cr_assert_eq(memcmp(a, b, a_len), 0);
    cr_assert(a_len != c_len || memcmp(a, c, a_len) != 0);
    free(a);
    free(b);
    free(c);
}

struct tally {
    uint64_t count[256];
    uint64_t last_ts;
    uint64_t order_msgs;
    uint64_t busiest, second;
    book_set_t *books;
    uint64_t crossed_checks;
};

static int visit(const struct itch_msg *m, size_t offset, void *arg)
{
    struct tally *t = arg;
    t->count[(uint8_t)m->type]++;
    cr_assert_gt(m->timestamp, t->last_ts, "timestamps increase at offset %zu", offset);
    t->last_ts = m->timestamp;
    if (m->locate == 1)
        t->busiest++;
    if (m->locate == 2)
        t->second++;
    int r = book_set_apply(t->books, m);
    cr_assert_eq(r, 0, "type %c ref at offset %zu refused: %d", m->type, offset, r);
    if (strchr("AFECXDU", m->type) != NULL) {
        t->order_msgs++;
        struct book_top top;
        book_top(book_set_get(t->books, m->locate), &top);
        if (top.bid.orders && top.ask.orders) {
            cr_assert_lt(top.bid.price, top.ask.price, "crossed at offset %zu", offset);
            t->crossed_checks++;
        }
        cr_assert_eq(top.bid.orders == 0, top.bid.shares == 0);
        cr_assert_eq(top.ask.orders == 0, top.ask.shares == 0);
    }
    return 0;
}

Test(gen, the_small_day_decodes_whole_and_builds_consistent_uncrossed_books)
{
    size_t len;
    uint8_t *buf = day(&small, &len);
    static struct tally t;
    t.books = book_set_create(200, 100000, 65536);
    cr_assert_not_null(t.books);
    struct itch_read_stats st;
    cr_assert_eq(itch_read(buf, len, visit, &t, &st), 0);
    cr_assert_eq(st.offset, len);
    cr_assert_eq(st.skipped, 0);
    cr_assert_eq(st.messages, 6 + 200 + 50000);
    cr_assert_eq(t.count['S'], 6);
    cr_assert_eq(t.count['R'], 200);

    /* The mix, within a few points of the one asked for. Actions that found no resting order
     * became adds, so adds run a little over. */
    double n = 50000;
    double adds = (double)(t.count['A'] + t.count['F']) / n;
    double cuts = (double)(t.count['X'] + t.count['D']) / n;
    double execs = (double)(t.count['E'] + t.count['C']) / n;
    cr_assert(adds > 0.44 && adds < 0.52, "adds %.3f", adds);
    cr_assert(cuts > 0.35 && cuts < 0.41, "cancels and deletes %.3f", cuts);
    cr_assert(execs > 0.06 && execs < 0.09, "executions %.3f", execs);
    cr_assert(t.count['U'] > 0.04 * n && t.count['U'] < 0.06 * n, "replaces %lu",
              (unsigned long)t.count['U']);
    cr_assert(t.count['P'] > 0.01 * n && t.count['P'] < 0.03 * n);
    cr_assert_gt(t.count['F'], 0);
    cr_assert_gt(t.count['C'], 0);
    /* Zipf with s = 1 over 200 symbols: locate 1 about 1/H(200) = 17%, twice locate 2. */
    cr_assert(t.busiest > 0.15 * n && t.busiest < 0.20 * n, "busiest %lu",
              (unsigned long)t.busiest);
    cr_assert(t.busiest > 1.7 * (double)t.second && t.busiest < 2.3 * (double)t.second);
    cr_assert_gt(t.crossed_checks, 10000, "both sides present often enough to mean something");

    size_t resting = 0;
    for (uint16_t l = 1; l <= 200; l++) {
        book_t *b = book_set_get(t.books, l);
        if (b == NULL)
            continue;
        cr_assert_eq(book_check(b), 0, "locate %u", l);
        resting += book_orders(b);
    }
    cr_assert_gt(resting, 0);
    book_set_destroy(t.books);
    free(buf);
}

Test(gen, bad_configs_are_einval)
{
    struct gen_config cfg = small;
    cfg.symbols = 0;
    errno = 0;
    cr_assert_null(gen_create(&cfg));
    cr_assert_eq(errno, EINVAL);
    cfg.symbols = 65536;
    cr_assert_null(gen_create(&cfg));
    gen_destroy(NULL);
}

Test(gen, directory_names_are_padded_to_eight)
{
    struct gen_config cfg = {.seed = 1, .symbols = 12, .messages = 0};
    gen_t *g = gen_create(&cfg);
    struct itch_msg m;
    cr_assert_eq(gen_next(g, &m), 1);
    cr_assert_eq(m.type, 'S');
    cr_assert_eq(m.system.event_code, 'O');
    for (int i = 1; i <= 12; i++) {
        cr_assert_eq(gen_next(g, &m), 1);
        cr_assert_eq(m.type, 'R');
        cr_assert_eq(m.locate, i);
        char want[9];
        snprintf(want, sizeof want, "SYM%04d ", i);
        cr_assert_eq(memcmp(m.directory.stock, want, 8), 0, "%.8s", m.directory.stock);
    }
    const char *events = "SQMEC";
    for (const char *e = events; *e; e++) {
        cr_assert_eq(gen_next(g, &m), 1);
        cr_assert_eq(m.type, 'S');
        cr_assert_eq(m.system.event_code, *e);
    }
    cr_assert_eq(gen_next(g, &m), 0);
    gen_destroy(g);
}
