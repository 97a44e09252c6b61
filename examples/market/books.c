/* The book actors: one virtual actor per instrument, keyed by its stock locate, owning the
 * instrument's price-level book (book.c) and handing each change of its top, and each trade, to
 * the instrument's signal actor beside it on the same shard. */
#include <errno.h>
#include <string.h>

#include "mkt.h"

struct book_state {
    book_t *book;
    struct mkt_shard *sh; /* the shard's counters, where the activation lives */
    pith_ref_t signal;    /* the instrument's signal actor, PITH_REF_NONE with signals off */
    uint16_t locate;
    uint64_t msgs, refused, tob_changes;
    uint32_t digest;
    struct book_top top;
};

static void tick_to_itch(const struct tick *t, uint16_t locate, struct itch_msg *m)
{
    m->type = t->type;
    m->locate = locate;
    switch (t->type) {
    case 'A':
    case 'F':
        m->add.ref = t->ref;
        m->add.side = tick_side(t);
        m->add.shares = t->shares;
        m->add.price = t->price;
        break;
    case 'E':
    case 'C':
        m->executed.ref = t->ref;
        m->executed.shares = t->shares;
        m->executed.price = t->price;
        break;
    case 'X':
        m->cancel.ref = t->ref;
        m->cancel.shares = t->shares;
        break;
    case 'D':
        m->del.ref = t->ref;
        break;
    case 'U':
        m->replace.ref = t->ref;
        m->replace.new_ref = t->new_ref;
        m->replace.shares = t->shares;
        m->replace.price = t->price;
        break;
    default:
        break;
    }
}

/* The price and shares a tick traded, if it did: an execution at the resting order's price
 * ('E', read before the book forgets the order), at its own price ('C'), or a trade ('P'). */
static void traded(const book_t *b, const struct tick *t, uint32_t *px, uint32_t *sz)
{
    *px = 0;
    *sz = 0;
    char side;
    uint32_t shares, price;
    if (t->type == 'E' && book_order(b, t->ref, &side, &shares, &price) == 0) {
        *px = price;
        *sz = t->shares;
    } else if (t->type == 'C' || t->type == 'P') {
        *px = t->price;
        *sz = t->shares;
    }
}

static int book_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct book_state *s = state;
    if (msg->type == MT_BOOKQ) {
        struct book_report r = {.msgs = s->msgs,
                                .refused = s->refused,
                                .tob_changes = s->tob_changes,
                                .digest = s->digest,
                                .top = s->top};
        pith_reply(msg, MT_BOOKQ, &r, sizeof r);
        return 0;
    }
    if (msg->type != MT_TICK || msg->len != TICK_LEN)
        return 0;
    struct mkt_shard *sh = s->sh;
    struct tick tk;
    memcpy(&tk, msg->data, TICK_LEN);
    const struct tick *t = &tk;
    uint64_t at = 0;
    if (mkt_cfg.timing) {
        at = mkt_now();
        lat_add(&sh->to_book, tick_age(tick_due(t), at));
    }
    if (mkt_cfg.book_spin_ns > 0)
        for (uint64_t until = pith_now_ns() + mkt_cfg.book_spin_ns; pith_now_ns() < until;)
            ;
    struct itch_msg m;
    tick_to_itch(t, s->locate, &m);
    uint32_t trade_px = 0, trade_sz = 0;
    if (s->signal != PITH_REF_NONE)
        traded(s->book, t, &trade_px, &trade_sz);
    int err = book_apply(s->book, &m);
    s->msgs++;
    mkt_inc(&sh->ticks, 1);
    if (err != 0) {
        s->refused++;
        mkt_inc(&sh->refused, 1);
    }
    struct book_top top;
    book_top(s->book, &top);
    bool changed = memcmp(&top, &s->top, sizeof top) != 0;
    if (changed) {
        s->top = top;
        s->tob_changes++;
    }
    if (mkt_cfg.check)
        s->digest = pith_crc32c(s->digest, &top, sizeof top);
    if (s->signal != PITH_REF_NONE && (changed || trade_sz != 0)) {
        struct tob u = {.bid = top.bid.price,
                        .ask = top.ask.price,
                        .bid_sz = top.bid.shares,
                        .ask_sz = top.ask.shares,
                        .trade_px = trade_px,
                        .trade_sz = trade_sz,
                        .due = tick_due(t),
                        .at_book = at};
        /* The signal actor mutes this one when its mailbox is full (MUTE_SENDER): the book
         * stops taking ticks, its own mailbox fills, and the feed's lane pushes back. */
        err = pith_send(s->signal, MT_TOB, &u, sizeof u);
        if (err == 0)
            mkt_inc(&sh->tobs, 1);
        else
            mkt_inc(&sh->undelivered, 1);
    }
    (void)self;
    return 0;
}

static int book_activate(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    struct book_state *s = state;
    s->sh = mkt_here();
    if (reason == PITH_VACT_MIGRATED)
        return 0; /* the state came whole, its book and signal actor with it */
    if (len != sizeof(uint16_t))
        return -EINVAL;
    memcpy(&s->locate, key, sizeof s->locate);
    s->book = book_create(mkt_cfg.max_orders, mkt_cfg.max_levels);
    if (s->book == NULL)
        return -ENOMEM;
    if (mkt_cfg.signals) {
        int err = pith_spawn(&mkt_signal_type, &s->locate, &s->signal);
        if (err != 0) {
            book_destroy(s->book);
            s->book = NULL;
            return err;
        }
    }
    (void)self;
    return 0;
}

static void book_deactivate(pith_actor_t *self, void *state, int reason)
{
    struct book_state *s = state;
    (void)self;
    if (reason == PITH_VDEACT_MIGRATED)
        return;
    if (s->signal != PITH_REF_NONE)
        pith_stop(s->signal);
    book_destroy(s->book);
    s->book = NULL;
}

static const pith_actor_type_t book_actor = {
    .name = "market.book",
    .behaviour = book_behaviour,
    .state_size = sizeof(struct book_state),
    .mailbox_max = 4096,
    .overflow = PITH_OVERFLOW_MUTE_SENDER,
};

/* Books hold the market's state and nothing else does: they never deactivate for idleness, and
 * memory pressure does not shed them. */
const pith_vtype_t mkt_book_type = {
    .name = "market.book",
    .actor = &book_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .on_activate = book_activate,
    .on_deactivate = book_deactivate,
};

int books_register(void)
{
    return pith_vtype_register(&mkt_book_type);
}

int books_vref(uint16_t locate, pith_vref_t *out)
{
    return pith_vref(&mkt_book_type, &locate, sizeof locate, out);
}
