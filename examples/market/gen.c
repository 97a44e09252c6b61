/* The synthetic day (gen.h). Each symbol keeps its resting orders in an array to draw from and
 * a reference book (book.c) for its best prices, which is what keeps new orders from crossing. */
#include "gen.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "book.h"

#define NS_PER_S    UINT64_C(1000000000)
#define TICK        100u /* one cent in ITCH's 4-decimal prices */
#define MIN_MID     (10 * TICK)
#define MAX_MID     (UINT32_MAX / 2)
#define MAX_LEVELS  65536
#define ADD_PERCENT 45

struct live {
    uint64_t ref;
    uint32_t shares;
    uint32_t price;
    char side;
};

struct symbol {
    char name[8];
    uint32_t mid;
    struct live *live;
    size_t nlive, cap;
    book_t *book;
};

enum phase {
    P_OPEN,
    P_DIRECTORY,
    P_SYSTEM,
    P_MARKET,
    P_BODY,
    P_CLOSE,
    P_SYSTEM_END,
    P_END,
    P_DONE
};

struct gen {
    struct gen_config cfg;
    uint64_t rng;
    enum phase phase;
    uint32_t next_dir;
    uint64_t emitted;
    uint64_t now, step;
    uint64_t next_ref, next_match;
    double *cdf; /* Zipf: cumulative weight of symbols 0..i */
    struct symbol *sym;
};

/* splitmix64: small, fast and, what matters here, the same on every machine. */
static uint64_t rnd(gen_t *g)
{
    uint64_t z = (g->rng += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint32_t below(gen_t *g, uint32_t n)
{
    return (uint32_t)(rnd(g) % n);
}

static double unit(gen_t *g)
{
    return (double)(rnd(g) >> 11) * (1.0 / 9007199254740992.0);
}

gen_t *gen_create(const struct gen_config *cfg)
{
    if (cfg->symbols == 0 || cfg->symbols > UINT16_MAX) {
        errno = EINVAL;
        return NULL;
    }
    gen_t *g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->cfg = *cfg;
    g->rng = cfg->seed;
    g->cdf = calloc(cfg->symbols, sizeof *g->cdf);
    g->sym = calloc(cfg->symbols, sizeof *g->sym);
    if (g->cdf == NULL || g->sym == NULL) {
        gen_destroy(g);
        errno = ENOMEM;
        return NULL;
    }
    double total = 0;
    for (uint32_t i = 0; i < cfg->symbols; i++) {
        total += 1.0 / (i + 1);
        g->cdf[i] = total;
        char name[16];
        snprintf(name, sizeof name, "SYM%04u", (unsigned)(i + 1));
        memset(g->sym[i].name, ' ', 8);
        memcpy(g->sym[i].name, name, strlen(name));
        /* $5 to $500 */
        g->sym[i].mid = (50000 + below(g, 4950001)) / TICK * TICK;
    }
    g->now = 4 * 3600 * NS_PER_S;
    g->step = cfg->messages ? 23400 * NS_PER_S / cfg->messages : 1;
    if (g->step < 1)
        g->step = 1;
    g->next_ref = 1;
    g->next_match = 1;
    return g;
}

void gen_destroy(gen_t *g)
{
    if (g == NULL)
        return;
    if (g->sym != NULL) {
        for (uint32_t i = 0; i < g->cfg.symbols; i++) {
            free(g->sym[i].live);
            book_destroy(g->sym[i].book);
        }
    }
    free(g->sym);
    free(g->cdf);
    free(g);
}

static uint32_t zipf(gen_t *g)
{
    double u = unit(g) * g->cdf[g->cfg.symbols - 1];
    uint32_t lo = 0, hi = g->cfg.symbols - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (g->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void header(gen_t *g, struct itch_msg *m, char type, uint16_t locate)
{
    memset(m, 0, sizeof *m);
    m->type = type;
    m->locate = locate;
    m->timestamp = g->now;
}

static void system_event(gen_t *g, struct itch_msg *m, char code, uint64_t at)
{
    g->now = at > g->now ? at : g->now + 1;
    header(g, m, 'S', 0);
    m->system.event_code = code;
}

static void directory(gen_t *g, struct itch_msg *m, uint32_t i)
{
    g->now += 1000;
    header(g, m, 'R', (uint16_t)(i + 1));
    memcpy(m->directory.stock, g->sym[i].name, 8);
    m->directory.market_category = "QNA"[i % 3];
    m->directory.financial_status = 'N';
    m->directory.round_lot_size = 100;
    m->directory.round_lots_only = 'N';
    m->directory.issue_classification = 'C';
    memcpy(m->directory.issue_subtype, "Z ", 2);
    m->directory.authenticity = 'P';
    m->directory.short_sale_threshold = 'N';
    m->directory.ipo_flag = 'N';
    m->directory.luld_tier = '1';
    m->directory.etp_flag = 'N';
    m->directory.etp_leverage = 0;
    m->directory.inverse = 'N';
}

static uint32_t lot(gen_t *g)
{
    return below(g, 10) == 0 ? 1 + below(g, 99) : 100 * (1 + below(g, 10));
}

/* A price for a new order on side: near the mid, most often at the top, and strictly on its
 * own side of the far side's best, so that the book never crosses or locks. */
static uint32_t place(gen_t *g, struct symbol *s, char side)
{
    struct book_top top = {0};
    if (s->book != NULL)
        book_top(s->book, &top);
    uint32_t depth = 1 + below(g, 16) * below(g, 16) / 16;
    uint32_t p;
    if (side == 'B') {
        p = s->mid > depth * TICK + TICK ? s->mid - depth * TICK : TICK;
        /* Every ask was placed at least MIN_MID + TICK, so this stays above 0. */
        if (top.ask.orders && p >= top.ask.price)
            p = top.ask.price - TICK;
    } else {
        p = s->mid + depth * TICK;
        if (top.bid.orders && p <= top.bid.price)
            p = top.bid.price + TICK;
    }
    return p;
}

/* One step of the symbol's walk, pulled back inside its book's spread. */
static void walk(gen_t *g, struct symbol *s)
{
    uint32_t r = below(g, 8);
    if (r == 0 && s->mid < MAX_MID)
        s->mid += TICK;
    else if (r == 1 && s->mid > MIN_MID)
        s->mid -= TICK;
    if (s->book == NULL)
        return;
    struct book_top top;
    book_top(s->book, &top);
    if (top.bid.orders && s->mid < top.bid.price)
        s->mid = top.bid.price;
    if (top.ask.orders && s->mid > top.ask.price)
        s->mid = top.ask.price;
    if (s->mid < MIN_MID)
        s->mid = MIN_MID;
}

static int live_push(struct symbol *s, const struct live *o)
{
    if (s->nlive == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        struct live *l = realloc(s->live, cap * sizeof *l);
        if (l == NULL)
            return -ENOMEM;
        s->live = l;
        s->cap = cap;
    }
    s->live[s->nlive++] = *o;
    return 0;
}

static void live_drop(struct symbol *s, size_t i)
{
    s->live[i] = s->live[--s->nlive];
}

static int add(gen_t *g, struct itch_msg *m, uint32_t si)
{
    static const char mpids[][4] = {
        {'G', 'S', 'C', 'O'}, {'J', 'P', 'M', 'S'}, {'M', 'L', 'C', 'O'}, {'U', 'B', 'S', 'S'}};
    struct symbol *s = &g->sym[si];
    if (s->book == NULL && (s->book = book_create(g->cfg.messages + 1, MAX_LEVELS)) == NULL)
        return -ENOMEM;
    bool mpid = below(g, 10) == 0;
    header(g, m, mpid ? 'F' : 'A', (uint16_t)(si + 1));
    m->add.side = below(g, 2) ? 'B' : 'S';
    m->add.ref = g->next_ref++;
    m->add.shares = lot(g);
    memcpy(m->add.stock, s->name, 8);
    m->add.price = place(g, s, m->add.side);
    memcpy(m->add.mpid, mpid ? mpids[below(g, 4)] : "    ", 4);
    struct live o = {m->add.ref, m->add.shares, m->add.price, m->add.side};
    int r = live_push(s, &o);
    return r < 0 ? r : 0;
}

/* An action on a resting order of symbol si, drawn by r (a percentage past the adds). */
static void act(gen_t *g, struct itch_msg *m, uint32_t si, uint32_t r)
{
    struct symbol *s = &g->sym[si];
    size_t i = below(g, (uint32_t)s->nlive);
    struct live *o = &s->live[i];
    uint16_t locate = (uint16_t)(si + 1);
    if (r < 65 && o->shares > 1) {
        header(g, m, 'X', locate);
        m->cancel.ref = o->ref;
        m->cancel.shares = 1 + below(g, o->shares - 1);
        o->shares -= m->cancel.shares;
    } else if (r < 85) {
        header(g, m, 'D', locate);
        m->del.ref = o->ref;
        live_drop(s, i);
    } else if (r < 93) {
        bool priced = below(g, 5) == 0;
        header(g, m, priced ? 'C' : 'E', locate);
        m->executed.ref = o->ref;
        m->executed.shares = below(g, 2) ? o->shares : 1 + below(g, o->shares);
        m->executed.match = g->next_match++;
        if (priced) {
            m->executed.printable = 'Y';
            m->executed.price = o->price;
        }
        o->shares -= m->executed.shares;
        if (o->shares == 0)
            live_drop(s, i);
    } else {
        header(g, m, 'U', locate);
        m->replace.ref = o->ref;
        m->replace.new_ref = g->next_ref++;
        m->replace.shares = lot(g);
        m->replace.price = place(g, s, o->side);
        o->ref = m->replace.new_ref;
        o->shares = m->replace.shares;
        o->price = m->replace.price;
    }
}

static void trade(gen_t *g, struct itch_msg *m, uint32_t si)
{
    struct symbol *s = &g->sym[si];
    header(g, m, 'P', (uint16_t)(si + 1));
    m->trade.side = below(g, 2) ? 'B' : 'S';
    m->trade.shares = 100 * (1 + below(g, 5));
    memcpy(m->trade.stock, s->name, 8);
    m->trade.price = s->mid;
    m->trade.match = g->next_match++;
}

static int body(gen_t *g, struct itch_msg *m)
{
    g->now += 1 + rnd(g) % (2 * g->step);
    uint32_t si = zipf(g);
    struct symbol *s = &g->sym[si];
    walk(g, s);
    uint32_t r = below(g, 100);
    int err = 0;
    if (r >= 98)
        trade(g, m, si);
    else if (r < ADD_PERCENT || s->nlive == 0)
        err = add(g, m, si);
    else
        act(g, m, si, r);
    if (err == 0 && m->type != 'P')
        err = book_apply(s->book, m);
    return err;
}

int gen_next(gen_t *g, struct itch_msg *m)
{
    switch (g->phase) {
    case P_OPEN:
        system_event(g, m, 'O', 4 * 3600 * NS_PER_S);
        g->phase = P_DIRECTORY;
        return 1;
    case P_DIRECTORY:
        directory(g, m, g->next_dir++);
        if (g->next_dir == g->cfg.symbols)
            g->phase = P_SYSTEM;
        return 1;
    case P_SYSTEM:
        system_event(g, m, 'S', 4 * 3600 * NS_PER_S + NS_PER_S);
        g->phase = P_MARKET;
        return 1;
    case P_MARKET:
        system_event(g, m, 'Q', 34200 * NS_PER_S);
        g->phase = g->cfg.messages ? P_BODY : P_CLOSE;
        return 1;
    case P_BODY: {
        int r = body(g, m);
        if (r < 0)
            return r;
        if (++g->emitted == g->cfg.messages)
            g->phase = P_CLOSE;
        return 1;
    }
    case P_CLOSE:
        system_event(g, m, 'M', 57600 * NS_PER_S);
        g->phase = P_SYSTEM_END;
        return 1;
    case P_SYSTEM_END:
        system_event(g, m, 'E', 72000 * NS_PER_S);
        g->phase = P_END;
        return 1;
    case P_END:
        system_event(g, m, 'C', 72000 * NS_PER_S + 300 * NS_PER_S);
        g->phase = P_DONE;
        return 1;
    case P_DONE:
        break;
    }
    return 0;
}

uint8_t *gen_day(const struct gen_config *cfg, size_t *len, uint64_t *count)
{
    gen_t *g = gen_create(cfg);
    if (g == NULL)
        return NULL;
    /* Every message of the day and its directory, each at most the longest frame. */
    size_t cap = (size_t)(cfg->messages + cfg->symbols + 16) * ITCH_MAX_FRAME, at = 0;
    uint8_t *buf = malloc(cap);
    uint64_t n = 0;
    struct itch_msg m;
    int r = buf != NULL ? 0 : -ENOMEM;
    while (r == 0 && (r = gen_next(g, &m)) == 1) {
        ssize_t k = itch_encode(&m, buf + at, cap - at);
        r = k < 0 ? (int)k : 0;
        at += k > 0 ? (size_t)k : 0;
        n++;
    }
    gen_destroy(g);
    if (r != 0) {
        free(buf);
        errno = r == -ENOMEM ? ENOMEM : EINVAL;
        return NULL;
    }
    *len = at;
    if (count != NULL)
        *count = n;
    return buf;
}
