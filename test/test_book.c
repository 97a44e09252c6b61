/* The market example's reference order book (examples/market/book.c): a hand-written day with
 * the top of book after each step, errors that leave the book as it was, and its bounds. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <criterion/criterion.h>

#include "book.h"

static struct itch_msg add(uint64_t ref, char side, uint32_t shares, uint32_t price)
{
    struct itch_msg m = {.type = 'A', .locate = 1};
    m.add.ref = ref;
    m.add.side = side;
    m.add.shares = shares;
    m.add.price = price;
    memcpy(m.add.stock, "SYM0001 ", 8);
    return m;
}

static struct itch_msg exec(uint64_t ref, uint32_t shares)
{
    struct itch_msg m = {.type = 'E', .locate = 1};
    m.executed.ref = ref;
    m.executed.shares = shares;
    return m;
}

static struct itch_msg cancel(uint64_t ref, uint32_t shares)
{
    struct itch_msg m = {.type = 'X', .locate = 1};
    m.cancel.ref = ref;
    m.cancel.shares = shares;
    return m;
}

static struct itch_msg del(uint64_t ref)
{
    struct itch_msg m = {.type = 'D', .locate = 1};
    m.del.ref = ref;
    return m;
}

static struct itch_msg replace(uint64_t ref, uint64_t new_ref, uint32_t shares, uint32_t price)
{
    struct itch_msg m = {.type = 'U', .locate = 1};
    m.replace.ref = ref;
    m.replace.new_ref = new_ref;
    m.replace.shares = shares;
    m.replace.price = price;
    return m;
}

#define APPLY(b, msg)                                                                              \
    do {                                                                                           \
        struct itch_msg m_ = (msg);                                                                \
        int r_ = book_apply((b), &m_);                                                             \
        cr_assert_eq(r_, 0, "%s: %d", #msg, r_);                                                   \
        cr_assert_eq(book_check(b), 0, "after %s", #msg);                                          \
    } while (0)

static void assert_top(const book_t *b, uint32_t bid, uint64_t bid_shares, uint32_t ask,
                       uint64_t ask_shares, int line)
{
    struct book_top t;
    book_top(b, &t);
    cr_assert_eq(t.bid.price, bid, "line %d: bid %u", line, t.bid.price);
    cr_assert_eq(t.bid.shares, bid_shares, "line %d: bid shares %lu", line,
                 (unsigned long)t.bid.shares);
    cr_assert_eq(t.ask.price, ask, "line %d: ask %u", line, t.ask.price);
    cr_assert_eq(t.ask.shares, ask_shares, "line %d: ask shares %lu", line,
                 (unsigned long)t.ask.shares);
}
#define TOP(b, bid, bs, ask, as) assert_top((b), (bid), (bs), (ask), (as), __LINE__)

Test(book, hand_written_day_gives_the_top_of_book_after_each_step)
{
    book_t *b = book_create(1000, 100);
    cr_assert_not_null(b);
    TOP(b, 0, 0, 0, 0);
    APPLY(b, add(1, 'B', 100, 1000000));
    TOP(b, 1000000, 100, 0, 0);
    APPLY(b, add(2, 'B', 200, 999900));
    TOP(b, 1000000, 100, 0, 0);
    APPLY(b, add(3, 'S', 300, 1000200));
    TOP(b, 1000000, 100, 1000200, 300);
    APPLY(b, add(4, 'S', 50, 1000100));
    TOP(b, 1000000, 100, 1000100, 50);
    APPLY(b, add(5, 'B', 400, 1000000));
    TOP(b, 1000000, 500, 1000100, 50);
    cr_assert_eq(book_levels(b, 'B'), 2);
    cr_assert_eq(book_levels(b, 'S'), 2);

    /* A partial execution at the best bid. */
    APPLY(b, exec(1, 60));
    TOP(b, 1000000, 440, 1000100, 50);
    char side;
    uint32_t shares, price;
    cr_assert_eq(book_order(b, 1, &side, &shares, &price), 0);
    cr_assert_eq(shares, 40);

    /* The best ask executed in full leaves the book, and its level with it. */
    APPLY(b, exec(4, 50));
    TOP(b, 1000000, 440, 1000200, 300);
    cr_assert_eq(book_order(b, 4, &side, &shares, &price), -ENOENT);
    cr_assert_eq(book_levels(b, 'S'), 1);

    /* A partial cancel. */
    APPLY(b, cancel(5, 150));
    TOP(b, 1000000, 290, 1000200, 300);

    /* A replace moves order 2 above the best bid, with a new reference and size. */
    APPLY(b, replace(2, 6, 250, 1000100));
    TOP(b, 1000100, 250, 1000200, 300);
    cr_assert_eq(book_order(b, 2, &side, &shares, &price), -ENOENT);
    cr_assert_eq(book_order(b, 6, &side, &shares, &price), 0);
    cr_assert_eq(side, 'B');
    cr_assert_eq(shares, 250);
    cr_assert_eq(price, 1000100);
    cr_assert_eq(book_levels(b, 'B'), 2, "999900 emptied, 1000100 made");

    struct book_level l;
    cr_assert_eq(book_level(b, 'B', 1, &l), 0);
    cr_assert_eq(l.price, 1000000);
    cr_assert_eq(l.shares, 290);
    cr_assert_eq(l.orders, 2);
    cr_assert_eq(book_level(b, 'B', 2, &l), -ERANGE);

    /* Deletes empty the book. */
    APPLY(b, del(6));
    TOP(b, 1000000, 290, 1000200, 300);
    APPLY(b, del(1));
    TOP(b, 1000000, 250, 1000200, 300);
    APPLY(b, del(5));
    TOP(b, 0, 0, 1000200, 300);
    APPLY(b, cancel(3, 300));
    TOP(b, 0, 0, 0, 0);
    cr_assert_eq(book_orders(b), 0);
    book_destroy(b);
}

static void assert_refused(book_t *b, struct itch_msg m, int want)
{
    struct book_top before, after;
    book_top(b, &before);
    size_t orders = book_orders(b);
    cr_assert_eq(book_apply(b, &m), want, "type %c", m.type);
    book_top(b, &after);
    cr_assert_eq(memcmp(&before, &after, sizeof before), 0, "type %c changed the top", m.type);
    cr_assert_eq(book_orders(b), orders);
    cr_assert_eq(book_check(b), 0);
}

Test(book, refused_messages_leave_the_book_as_it_was)
{
    book_t *b = book_create(1000, 100);
    APPLY(b, add(1, 'B', 100, 500));
    APPLY(b, add(2, 'S', 100, 600));
    assert_refused(b, add(1, 'S', 10, 700), -EEXIST);
    assert_refused(b, add(3, 'Z', 10, 700), -EINVAL);
    assert_refused(b, add(3, 'B', 0, 700), -EINVAL);
    assert_refused(b, exec(9, 1), -ENOENT);
    assert_refused(b, exec(1, 101), -ERANGE);
    assert_refused(b, cancel(2, 101), -ERANGE);
    assert_refused(b, del(9), -ENOENT);
    assert_refused(b, replace(9, 10, 1, 1), -ENOENT);
    assert_refused(b, replace(1, 2, 1, 1), -EEXIST);
    assert_refused(b, replace(1, 3, 0, 1), -EINVAL);
    struct itch_msg trade = {.type = 'P', .locate = 1};
    cr_assert_eq(book_apply(b, &trade), 0, "trades leave the book alone");
    book_destroy(b);
}

Test(book, bounds_on_orders_and_levels_are_enomem)
{
    book_t *b = book_create(3, 2);
    APPLY(b, add(1, 'B', 1, 100));
    APPLY(b, add(2, 'B', 1, 200));
    assert_refused(b, add(3, 'B', 1, 300), -ENOMEM);
    APPLY(b, add(3, 'B', 1, 200));
    assert_refused(b, add(4, 'S', 1, 900), -ENOMEM);
    /* A replace that empties its own level may take a new one at the bound. */
    APPLY(b, replace(1, 4, 5, 150));
    TOP(b, 200, 2, 0, 0);
    /* One that leaves its level to another order may not. */
    assert_refused(b, replace(2, 5, 1, 50), -ENOMEM);
    book_destroy(b);
    errno = 0;
    cr_assert_null(book_create(0, 1));
    cr_assert_eq(errno, EINVAL);
}

Test(book, many_orders_on_one_level_survive_growth_and_removal_in_any_order)
{
    book_t *b = book_create(100000, 10);
    for (uint64_t i = 1; i <= 5000; i++) {
        struct itch_msg m = add(i * 7919, i % 2 ? 'B' : 'S', (uint32_t)i, i % 2 ? 100 : 200);
        cr_assert_eq(book_apply(b, &m), 0);
    }
    cr_assert_eq(book_check(b), 0);
    TOP(b, 100, 2500u * 2500u, 200, 2500u * 2501u);
    for (uint64_t i = 5000; i >= 2; i -= 2) {
        struct itch_msg m = del(i * 7919);
        cr_assert_eq(book_apply(b, &m), 0, "delete %lu", (unsigned long)i);
    }
    cr_assert_eq(book_check(b), 0);
    TOP(b, 100, 2500u * 2500u, 0, 0);
    cr_assert_eq(book_orders(b), 2500);
    book_destroy(b);
}

Test(book, a_set_routes_by_locate_and_refuses_locates_out_of_range)
{
    book_set_t *s = book_set_create(2, 100, 10);
    struct itch_msg m = add(1, 'B', 10, 100);
    cr_assert_eq(book_set_apply(s, &m), 0);
    m.locate = 2;
    m.add.ref = 2;
    m.add.price = 300;
    cr_assert_eq(book_set_apply(s, &m), 0);
    m.locate = 3;
    cr_assert_eq(book_set_apply(s, &m), -EINVAL);
    m.locate = 0;
    cr_assert_eq(book_set_apply(s, &m), -EINVAL);
    struct itch_msg sys = {.type = 'S', .locate = 0};
    cr_assert_eq(book_set_apply(s, &sys), 0);
    struct book_top t;
    book_top(book_set_get(s, 1), &t);
    cr_assert_eq(t.bid.price, 100);
    book_top(book_set_get(s, 2), &t);
    cr_assert_eq(t.bid.price, 300);
    cr_assert_null(book_set_get(s, 3));
    book_set_destroy(s);
    book_set_destroy(NULL);
    book_destroy(NULL);
}
