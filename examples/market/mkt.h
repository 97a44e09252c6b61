/* pith-market's pieces on the engine, and what they say to each other: the book actors
 * (books.c), the signal actors (signals.c), the risk actors (risk.c), the order gateway
 * (gateway.c) and the feed handler (feed.c). Built on include/pith/ only. */
#ifndef MARKET_MKT_H
#define MARKET_MKT_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/pith.h>

#include "book.h"
#include "lat.h"
#include "order.h"

/* Stock locates a run may use: 1..MKT_MAX_LOCATE. */
#define MKT_MAX_LOCATE 4096u
/* Accounts at most (each one risk actor). */
#define MKT_MAX_ACCOUNTS 64u
/* Open orders one account may have at once. */
#define MKT_MAX_OPEN 1024u

/* Message tags. */
enum {
    MT_TICK = 1, /* feed -> book: struct tick */
    MT_BOOKQ,    /* main -> book (ask): replied with struct book_report */
    MT_TOB,      /* book -> signal: struct tob */
    MT_ORDER,    /* signal -> risk: struct order_req */
    MT_EXCH,     /* gateway -> risk: struct order_msg (an 'A', 'J' or 'F') */
    MT_RISKQ,    /* main -> risk (ask): replied with struct risk_report */
    MT_POSQ,     /* main -> risk (ask): replied with int64_t[MKT_MAX_LOCATE + 1], by locate */
};

/* A book message as the feed hands it over: what the book needs of the ITCH message, and when
 * the tick was due. TICK_LEN (30) bytes travel: with the 2-byte key, one 64-byte lane slot (the
 * engine carries a client's small virtual message whole in its lane record). The locate is the
 * actor's key. The due time is kept in 39 bits of nanoseconds (9 minutes), and ages are taken
 * modulo that (tick_age): right for any latency under 9 minutes, in a run of any length. */
struct tick {
    uint64_t ref;     /* the order's reference (A F E C X D U P) */
    uint64_t new_ref; /* U: the new reference */
    uint32_t shares;  /* A F E C X U P */
    uint32_t price;   /* A F C U P */
    uint32_t due_lo;  /* when the tick was due, ns since mkt_epoch_ns: bits 0..31 */
    char type;        /* the ITCH type */
    uint8_t due_hi;   /* bits 32..38 of the due time; bit 7: the side is 'S' (A F P) */
};
#define TICK_LEN      (offsetof(struct tick, due_hi) + 1)
#define TICK_DUE_MASK ((UINT64_C(1) << 39) - 1)
_Static_assert(TICK_LEN == 30, "a tick and its 2-byte key fill one lane slot");

/* The due time, in TICK_DUE_MASK's bits. */
static inline uint64_t tick_due(const struct tick *t)
{
    return ((uint64_t)(t->due_hi & 0x7f) << 32 | t->due_lo);
}

static inline char tick_side(const struct tick *t)
{
    return (t->due_hi & 0x80) ? 'S' : 'B';
}

static inline void tick_set(struct tick *t, uint64_t due_ns, char side)
{
    t->due_lo = (uint32_t)due_ns;
    t->due_hi = (uint8_t)((due_ns >> 32) & 0x7f) | (side == 'S' ? 0x80 : 0);
}

/* How long ago, at now (ns since mkt_epoch_ns), something due at `due` (a tick_due) was due. */
static inline uint64_t tick_age(uint64_t due, uint64_t now)
{
    return (now - due) & TICK_DUE_MASK;
}

/* Whether an ITCH message type is one the books take (the feed hands these over). */
static inline bool mkt_book_msg(char type)
{
    switch (type) {
    case 'A':
    case 'F':
    case 'E':
    case 'C':
    case 'X':
    case 'D':
    case 'U':
    case 'P':
        return true;
    default:
        return false;
    }
}

/* A book's figures, for the check against the reference books and for the summary. */
struct book_report {
    uint64_t msgs;    /* ticks handled */
    uint64_t refused; /* ticks the book refused (book_apply's error): must stay 0 */
    uint64_t tob_changes;
    uint32_t digest; /* CRC32C over the top of book after every tick (with checking on) */
    uint32_t pad;
    struct book_top top;
};

/* Book -> signal: the top of book after a tick that changed it or traded. */
struct tob {
    uint32_t bid, ask;       /* best prices, 0 for an empty side */
    uint64_t bid_sz, ask_sz; /* shares at them */
    uint32_t trade_px;       /* a trade or execution's price, 0 when the tick was none */
    uint32_t trade_sz;       /* its shares */
    uint64_t due;            /* the tick's due time (tick_due) */
    uint64_t at_book;        /* when the book took it */
};

/* Signal -> risk: an order the signals want. */
struct order_req {
    uint16_t locate;
    char side;
    char why; /* 'E' EMA crossover, 'I' imbalance */
    uint32_t qty;
    uint32_t price;
    uint32_t pad;
    uint64_t due, at_book, at_signal;
};

/* Risk's figures, and its positions, for the summary and the restart test. */
struct risk_report {
    uint32_t account;
    uint32_t open;     /* orders open now */
    uint64_t fills;    /* durable fills applied */
    uint64_t last_seq; /* the exchange's fill number of the last one */
    uint64_t seq_gaps; /* fills whose number was not last_seq + 1 */
    int64_t cash;      /* - sum(side * qty * price), ITCH price units */
    uint64_t gross;    /* sum over symbols of |position| */
    uint64_t nonzero;  /* symbols with a position */
    uint64_t events;   /* pith_persist_events */
};

/* What a run is set to. Filled by main before the engine starts; read-only after. */
struct mkt_config {
    unsigned shards;
    unsigned accounts; /* risk actors, account i trades locates with locate % accounts == i */
    bool signals;      /* book actors feed signal actors (off: books only) */
    bool check;        /* books keep the digest of their top after every tick */
    bool timing;       /* stages record latencies */
    uint32_t qty;      /* shares per order */
    uint32_t cooldown; /* book updates between two orders of one symbol at least */
    int64_t max_pos;   /* |position + open| per symbol at most */
    uint64_t max_open_notional; /* sum of open orders' qty * price at most (ITCH units) */
    uint32_t max_orders;        /* per book */
    uint32_t max_levels;        /* per book side */
    uint64_t run_id;            /* high bits of order ids: unique per run */
    uint64_t book_spin_ns; /* for tests: each book message spins this long more (a slow book) */
};

/* What each shard counts: written by that shard alone (relaxed stores of its own values),
 * read by main with relaxed loads while the run goes and after it. The histograms are read only
 * after the engine has stopped (its stop joins the shard threads: that join orders them). */
struct mkt_shard {
    alignas(64) _Atomic uint64_t ticks; /* handled by books */
    _Atomic uint64_t refused;           /* refused by books */
    _Atomic uint64_t tobs;              /* top-of-book updates sent to signals */
    _Atomic uint64_t signals;           /* orders the signals asked for */
    _Atomic uint64_t risk_rejects;      /* refused by risk */
    _Atomic uint64_t orders_sent;       /* written to the exchange's socket */
    _Atomic uint64_t gw_down;           /* orders refused: no connection */
    _Atomic uint64_t accepted;
    _Atomic uint64_t exch_rejects;
    _Atomic uint64_t fills;         /* fills received */
    _Atomic uint64_t fills_durable; /* fills made durable and applied */
    _Atomic uint64_t fill_failed;   /* fills the journal could not make durable */
    _Atomic uint64_t undelivered;   /* messages of this shard's tasks that came back */
    _Atomic uint64_t routed_late;   /* gateway replies that waited for mesh room */
    struct lat to_book;             /* tick due -> book handler */
    struct lat to_signal;           /* tick due -> signal handler */
    struct lat to_risk;             /* tick due -> risk handler */
    struct lat to_order;            /* tick due -> order written to the socket */
    struct lat hop_signal;          /* book handler -> signal handler */
    struct lat hop_risk;            /* signal handler -> risk handler */
    struct lat hop_wire;            /* risk handler -> order written */
    struct lat fill_rtt;            /* order written -> fill back at risk */
};

extern struct mkt_config mkt_cfg;
extern struct mkt_shard *mkt_shards; /* [mkt_cfg.shards] */
/* CLOCK_MONOTONIC ns (pith_now_ns) at the start: ticks' due times count from it. */
extern uint64_t mkt_epoch_ns;

/* Single-writer counters: a relaxed load and store, no read-modify-write, since only the
 * owning shard writes; readers may see an older value, never a torn one. */
static inline void mkt_inc(_Atomic uint64_t *c, uint64_t by)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

static inline uint64_t mkt_now(void)
{
    return pith_now_ns() - mkt_epoch_ns;
}

static inline struct mkt_shard *mkt_here(void)
{
    return &mkt_shards[pith_shard_id()];
}

/* books.c: the book type (books_register before the engine starts, once), a locate's ref. */
extern const pith_vtype_t mkt_book_type;
int books_register(void);
int books_vref(uint16_t locate, pith_vref_t *out);

/* signals.c: the signal actor type a book spawns beside itself. */
extern const pith_actor_type_t mkt_signal_type;

/* risk.c: the persistent risk type, an account's ref. */
extern const pith_vtype_t mkt_risk_type;
int risk_register(void);
int risk_vref(uint32_t account, pith_vref_t *out);

/* gateway.c: one connection to the exchange per shard. gateway_connect runs on each shard
 * (through pith_client_call) and gateway_up says when every one is open; gateway_send writes an
 * order from the calling shard's connection (-ENOTCONN when it has none). */
int gateway_init(unsigned shards, const char *host, uint16_t port);
void *gateway_connect(void *arg);
int gateway_state(unsigned shard); /* 1 open, 0 connecting, < 0 failed or closed: -errno */
int gateway_send(const struct order_msg *m);
void *gateway_close(void *arg);
void gateway_fini(void);

#endif
