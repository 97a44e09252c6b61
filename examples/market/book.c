/* The reference order book (book.h): an open-addressing map of resting orders by reference and,
 * per side, a sorted array of levels with the best at the end, so that the busy end of the
 * book moves the fewest entries. */
#include "book.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MIN_SLOTS  16
#define MIN_LEVELS 8

struct order {
    uint64_t ref;
    uint32_t shares;
    uint32_t price;
    char side;
    bool used;
};

/* Levels sorted by key ascending, best last: a bid's key is its price, an ask's the price
 * reflected, so one search serves both sides. */
struct side {
    struct book_level *levels;
    size_t n, cap;
};

struct book {
    struct order *slots; /* linear probing, at most half full */
    size_t nslots;       /* a power of two */
    size_t count;
    size_t max_orders, max_levels;
    struct side bids, asks;
};

struct book_set {
    book_t **books; /* by locate, [0] unused */
    uint16_t max_locate;
    size_t max_orders, max_levels;
};

static uint32_t key_of(char side, uint32_t price)
{
    return side == 'B' ? price : UINT32_MAX - price;
}

static struct side *side_of(book_t *b, char side)
{
    return side == 'B' ? &b->bids : &b->asks;
}

static const struct side *cside_of(const book_t *b, char side)
{
    return side == 'B' ? &b->bids : &b->asks;
}

/* The first index whose key is not below price's; *found says whether it holds price. */
static size_t level_find(const struct side *s, char side, uint32_t price, bool *found)
{
    uint32_t key = key_of(side, price);
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_of(side, s->levels[mid].price) < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < s->n && s->levels[lo].price == price;
    return lo;
}

/* Room for one more level, within max_levels. */
static int level_reserve(struct side *s, size_t max_levels)
{
    if (s->n >= max_levels)
        return -ENOMEM;
    if (s->n < s->cap)
        return 0;
    size_t cap = s->cap ? s->cap * 2 : MIN_LEVELS;
    if (cap > max_levels)
        cap = max_levels;
    struct book_level *l = realloc(s->levels, cap * sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    s->levels = l;
    s->cap = cap;
    return 0;
}

/* Adds an order's shares at price; the caller has reserved a level if the price has none. */
static void level_add(struct side *s, char side, uint32_t price, uint32_t shares)
{
    bool found;
    size_t i = level_find(s, side, price, &found);
    if (!found) {
        memmove(&s->levels[i + 1], &s->levels[i], (s->n - i) * sizeof s->levels[0]);
        s->levels[i] = (struct book_level){.price = price};
        s->n++;
    }
    s->levels[i].orders++;
    s->levels[i].shares += shares;
}

/* Takes shares from price's level, and the order from it when gone is set; drops the level
 * when its last order goes. The level exists: an order rests on it. */
static void level_take(struct side *s, char side, uint32_t price, uint32_t shares, bool gone)
{
    bool found;
    size_t i = level_find(s, side, price, &found);
    s->levels[i].shares -= shares;
    if (gone && --s->levels[i].orders == 0) {
        memmove(&s->levels[i], &s->levels[i + 1], (s->n - i - 1) * sizeof s->levels[0]);
        s->n--;
    }
}

static size_t slot_of(const book_t *b, uint64_t ref)
{
    return (size_t)((ref * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (b->nslots - 1);
}

static struct order *order_find(const book_t *b, uint64_t ref)
{
    for (size_t i = slot_of(b, ref);; i = (i + 1) & (b->nslots - 1)) {
        if (!b->slots[i].used)
            return NULL;
        if (b->slots[i].ref == ref)
            return &b->slots[i];
    }
}

static void order_put(book_t *b, const struct order *o)
{
    size_t i = slot_of(b, o->ref);
    while (b->slots[i].used)
        i = (i + 1) & (b->nslots - 1);
    b->slots[i] = *o;
    b->slots[i].used = true;
    b->count++;
}

/* Backward-shift deletion: later entries of the probe run move up into the hole, so lookups
 * never need tombstones. */
static void order_remove(book_t *b, struct order *o)
{
    size_t mask = b->nslots - 1;
    size_t hole = (size_t)(o - b->slots);
    for (size_t i = (hole + 1) & mask; b->slots[i].used; i = (i + 1) & mask) {
        size_t home = slot_of(b, b->slots[i].ref);
        /* The entry at i may fill the hole if its home is not cyclically within (hole, i]. */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            b->slots[hole] = b->slots[i];
            hole = i;
        }
    }
    b->slots[hole].used = false;
    b->count--;
}

/* Room for one more order, within max_orders, keeping the table at most half full. */
static int order_reserve(book_t *b)
{
    if (b->count >= b->max_orders)
        return -ENOMEM;
    if ((b->count + 1) * 2 <= b->nslots)
        return 0;
    size_t n = b->nslots * 2;
    struct order *slots = calloc(n, sizeof *slots);
    if (slots == NULL)
        return -ENOMEM;
    struct order *old = b->slots;
    size_t oldn = b->nslots;
    b->slots = slots;
    b->nslots = n;
    b->count = 0;
    for (size_t i = 0; i < oldn; i++)
        if (old[i].used)
            order_put(b, &old[i]);
    free(old);
    return 0;
}

book_t *book_create(size_t max_orders, size_t max_levels)
{
    if (max_orders == 0 || max_levels == 0 || max_orders > SIZE_MAX / 4 / sizeof(struct order)) {
        errno = EINVAL;
        return NULL;
    }
    book_t *b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    b->nslots = MIN_SLOTS;
    b->slots = calloc(b->nslots, sizeof *b->slots);
    if (b->slots == NULL) {
        free(b);
        errno = ENOMEM;
        return NULL;
    }
    b->max_orders = max_orders;
    b->max_levels = max_levels;
    return b;
}

void book_destroy(book_t *b)
{
    if (b == NULL)
        return;
    free(b->slots);
    free(b->bids.levels);
    free(b->asks.levels);
    free(b);
}

static int apply_add(book_t *b, uint64_t ref, char side, uint32_t shares, uint32_t price)
{
    if (shares == 0 || (side != 'B' && side != 'S'))
        return -EINVAL;
    if (order_find(b, ref) != NULL)
        return -EEXIST;
    struct side *s = side_of(b, side);
    bool found;
    level_find(s, side, price, &found);
    int r = order_reserve(b);
    if (r == 0 && !found)
        r = level_reserve(s, b->max_levels);
    if (r < 0)
        return r;
    order_put(b, &(struct order){.ref = ref, .shares = shares, .price = price, .side = side});
    level_add(s, side, price, shares);
    return 0;
}

/* Executions and cancels: shares leave the order, and the order the book at 0. */
static int apply_reduce(book_t *b, uint64_t ref, uint32_t shares)
{
    struct order *o = order_find(b, ref);
    if (o == NULL)
        return -ENOENT;
    if (shares > o->shares)
        return -ERANGE;
    bool gone = shares == o->shares;
    level_take(side_of(b, o->side), o->side, o->price, shares, gone);
    if (gone)
        order_remove(b, o);
    else
        o->shares -= shares;
    return 0;
}

static int apply_delete(book_t *b, uint64_t ref)
{
    struct order *o = order_find(b, ref);
    if (o == NULL)
        return -ENOENT;
    level_take(side_of(b, o->side), o->side, o->price, o->shares, true);
    order_remove(b, o);
    return 0;
}

/* The order keeps its side and takes a new reference, size and price. Everything that can
 * fail is checked before the old order leaves. */
static int apply_replace(book_t *b, uint64_t ref, uint64_t new_ref, uint32_t shares, uint32_t price)
{
    if (shares == 0)
        return -EINVAL;
    struct order *o = order_find(b, ref);
    if (o == NULL)
        return -ENOENT;
    if (new_ref != ref && order_find(b, new_ref) != NULL)
        return -EEXIST;
    struct order old = *o;
    struct side *s = side_of(b, old.side);
    bool found_old, found_new;
    size_t i = level_find(s, old.side, old.price, &found_old);
    level_find(s, old.side, price, &found_new);
    bool frees_level = s->levels[i].orders == 1;
    if (!found_new && !(frees_level && s->n >= b->max_levels)) {
        int r = level_reserve(s, b->max_levels);
        if (r < 0)
            return r;
    }
    level_take(s, old.side, old.price, old.shares, true);
    order_remove(b, o);
    order_put(b,
              &(struct order){.ref = new_ref, .shares = shares, .price = price, .side = old.side});
    level_add(s, old.side, price, shares);
    return 0;
}

int book_apply(book_t *b, const struct itch_msg *m)
{
    switch (m->type) {
    case 'A':
    case 'F':
        return apply_add(b, m->add.ref, m->add.side, m->add.shares, m->add.price);
    case 'E':
    case 'C':
        return apply_reduce(b, m->executed.ref, m->executed.shares);
    case 'X':
        return apply_reduce(b, m->cancel.ref, m->cancel.shares);
    case 'D':
        return apply_delete(b, m->del.ref);
    case 'U':
        return apply_replace(b, m->replace.ref, m->replace.new_ref, m->replace.shares,
                             m->replace.price);
    default:
        return 0;
    }
}

static struct book_level best(const struct side *s)
{
    return s->n ? s->levels[s->n - 1] : (struct book_level){0};
}

void book_top(const book_t *b, struct book_top *top)
{
    top->bid = best(&b->bids);
    top->ask = best(&b->asks);
}

size_t book_orders(const book_t *b)
{
    return b->count;
}

size_t book_levels(const book_t *b, char side)
{
    return cside_of(b, side)->n;
}

int book_level(const book_t *b, char side, size_t i, struct book_level *out)
{
    const struct side *s = cside_of(b, side);
    if (i >= s->n)
        return -ERANGE;
    *out = s->levels[s->n - 1 - i];
    return 0;
}

int book_order(const book_t *b, uint64_t ref, char *side, uint32_t *shares, uint32_t *price)
{
    const struct order *o = order_find(b, ref);
    if (o == NULL)
        return -ENOENT;
    *side = o->side;
    *shares = o->shares;
    *price = o->price;
    return 0;
}

static int check_side(const book_t *b, char side)
{
    const struct side *s = cside_of(b, side);
    for (size_t i = 0; i < s->n; i++) {
        if (s->levels[i].orders == 0 || s->levels[i].shares == 0)
            return -EPROTO;
        if (i > 0 && key_of(side, s->levels[i - 1].price) >= key_of(side, s->levels[i].price))
            return -EPROTO;
    }
    struct book_level *sums = calloc(s->n ? s->n : 1, sizeof *sums);
    if (sums == NULL)
        return -ENOMEM;
    int r = 0;
    for (size_t i = 0; i < b->nslots && r == 0; i++) {
        const struct order *o = &b->slots[i];
        if (!o->used || o->side != side)
            continue;
        bool found;
        size_t l = level_find(s, side, o->price, &found);
        if (!found || o->shares == 0 || order_find(b, o->ref) != o)
            r = -EPROTO;
        else {
            sums[l].orders++;
            sums[l].shares += o->shares;
        }
    }
    for (size_t i = 0; i < s->n && r == 0; i++)
        if (sums[i].orders != s->levels[i].orders || sums[i].shares != s->levels[i].shares)
            r = -EPROTO;
    free(sums);
    return r;
}

int book_check(const book_t *b)
{
    size_t used = 0;
    for (size_t i = 0; i < b->nslots; i++) {
        if (!b->slots[i].used)
            continue;
        used++;
        if (b->slots[i].side != 'B' && b->slots[i].side != 'S')
            return -EPROTO;
    }
    if (used != b->count || b->count * 2 > b->nslots)
        return -EPROTO;
    int r = check_side(b, 'B');
    return r < 0 ? r : check_side(b, 'S');
}

book_set_t *book_set_create(uint16_t max_locate, size_t max_orders, size_t max_levels)
{
    if (max_locate == 0 || max_orders == 0 || max_levels == 0) {
        errno = EINVAL;
        return NULL;
    }
    book_set_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->books = calloc((size_t)max_locate + 1, sizeof *s->books);
    if (s->books == NULL) {
        free(s);
        errno = ENOMEM;
        return NULL;
    }
    s->max_locate = max_locate;
    s->max_orders = max_orders;
    s->max_levels = max_levels;
    return s;
}

void book_set_destroy(book_set_t *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i <= s->max_locate; i++)
        book_destroy(s->books[i]);
    free(s->books);
    free(s);
}

int book_set_apply(book_set_t *s, const struct itch_msg *m)
{
    if (m->type == '\0' || strchr("AFECXDU", m->type) == NULL)
        return 0;
    if (m->locate == 0 || m->locate > s->max_locate)
        return -EINVAL;
    book_t **b = &s->books[m->locate];
    if (*b == NULL && (*b = book_create(s->max_orders, s->max_levels)) == NULL)
        return -ENOMEM;
    return book_apply(*b, m);
}

book_t *book_set_get(const book_set_t *s, uint16_t locate)
{
    if (locate == 0 || locate > s->max_locate)
        return NULL;
    return s->books[locate];
}
