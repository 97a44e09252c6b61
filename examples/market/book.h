/* The reference price-level order book: one instrument's orders by reference number and its
 * levels by price on each side, built from ITCH messages on one thread. Clarity over speed:
 * the engine's books are checked against this one. */
#ifndef MARKET_BOOK_H
#define MARKET_BOOK_H

#include <stddef.h>
#include <stdint.h>

#include "itch.h"

typedef struct book book_t;
typedef struct book_set book_set_t;

/* One price level: its price, the shares resting there and how many orders hold them. */
struct book_level {
    uint32_t price;
    uint32_t orders;
    uint64_t shares;
};

/* The best level on each side; a side with no orders has price 0, shares 0, orders 0. */
struct book_top {
    struct book_level bid;
    struct book_level ask;
};

/* A book holding at most max_orders orders and max_levels levels per side; its tables start
 * small and grow to these bounds. Returns NULL with errno ENOMEM (no memory) or EINVAL (a
 * bound of 0). The caller owns the book and frees it with book_destroy (NULL is a no-op). */
book_t *book_create(size_t max_orders, size_t max_levels);
void book_destroy(book_t *b);

/* Applies one message to the book. 'A', 'F', 'E', 'C', 'X', 'D', 'U' change it; every other
 * type (system events, directory, trades) leaves it as it is and returns 0. On an error the
 * book is unchanged:
 *   -EINVAL  an add or replace with 0 shares, or an add whose side is neither 'B' nor 'S'
 *   -EEXIST  an add or replace's new reference is already resting
 *   -ENOENT  the reference executed, cancelled, deleted or replaced is not resting
 *   -ERANGE  more shares executed or cancelled than the order has
 *   -ENOMEM  no memory, or max_orders or max_levels reached
 * An order executed or cancelled down to 0 shares leaves the book. */
int book_apply(book_t *b, const struct itch_msg *m);

/* The best bid and ask. */
void book_top(const book_t *b, struct book_top *top);

/* How many orders rest, and how many levels each side has. */
size_t book_orders(const book_t *b);
size_t book_levels(const book_t *b, char side);

/* Level i of a side counted from the best (0), or -ERANGE past the last; side is 'B' or 'S'. */
int book_level(const book_t *b, char side, size_t i, struct book_level *out);

/* The resting order ref's side, shares and price; -ENOENT if it is not resting. */
int book_order(const book_t *b, uint64_t ref, char *side, uint32_t *shares, uint32_t *price);

/* Checks the book's own invariants: each side's levels strictly ordered from the best, no
 * empty level, each level's shares and order count the sums of its orders', every order on a
 * level of its side. Returns 0, -EPROTO where one does not hold, -ENOMEM if the check could
 * not allocate. Costs a pass over every order. */
int book_check(const book_t *b);

/* Books for stock locates 1..max_locate, each made on its first message with the bounds
 * given. The caller owns the set and frees it with book_set_destroy (NULL is a no-op).
 * NULL with errno ENOMEM or EINVAL as book_create. */
book_set_t *book_set_create(uint16_t max_locate, size_t max_orders, size_t max_levels);
void book_set_destroy(book_set_t *s);

/* book_apply on the message's locate's book; -EINVAL for locate 0 or past max_locate, for the
 * types that change a book. Other types with any locate return 0. */
int book_set_apply(book_set_t *s, const struct itch_msg *m);

/* The locate's book, or NULL if it has had no order message yet (or is out of range). */
book_t *book_set_get(const book_set_t *s, uint16_t locate);

#endif
