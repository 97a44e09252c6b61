/* The risk actors: one persistent virtual actor per account. Each checks the orders its
 * signals want against a position limit per symbol and a limit on open notional, sends those
 * that pass through its shard's gateway, and keeps the account's positions as events in the
 * journal: a fill is an event, positions are what the events add up to, so a restart (after a
 * kill -9 too) resumes with every fill that was made durable. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mkt.h"

#define OPEN_SLOTS (2 * MKT_MAX_OPEN) /* a power of two, at most half full */
#define PENDING    8192u              /* fills on their way to the journal at most */

/* The one event: a fill, as the exchange numbered it. */
struct fill_event {
    uint64_t seq, id;
    uint32_t qty, price;
    uint16_t locate;
    char side;
    char pad[5];
};

/* What the events make: the part of the state a snapshot holds. */
struct durable {
    uint32_t account;
    uint32_t pad;
    uint64_t fills, last_seq, seq_gaps;
    int64_t cash;
    int64_t pos[MKT_MAX_LOCATE + 1];
};

struct open_order {
    uint64_t id;
    uint64_t sent_at; /* when written to the socket (ns since mkt_epoch_ns) */
    uint32_t qty;     /* shares not filled yet */
    uint32_t price;
    uint16_t locate;
    char side;
    bool used, filled_once;
};

struct pending_fill {
    uint64_t id;
    uint32_t qty;
};

struct risk_state {
    struct durable d;
    /* Live only, rebuilt empty at each activation: the orders open now and the fills on their
     * way to the journal. */
    uint32_t nopen;
    uint32_t next_id;
    uint64_t open_notional;
    int32_t open_qty[MKT_MAX_LOCATE + 1]; /* signed: buys up, sells down */
    struct open_order open[OPEN_SLOTS];
    struct pending_fill pending[PENDING];
    uint32_t pend_head, pend_len;
};

static size_t slot_of(uint64_t id)
{
    id ^= id >> 29;
    id *= UINT64_C(0xbf58476d1ce4e5b9);
    return (size_t)(id >> 32) & (OPEN_SLOTS - 1);
}

static struct open_order *open_find(struct risk_state *s, uint64_t id)
{
    for (size_t i = slot_of(id);; i = (i + 1) & (OPEN_SLOTS - 1)) {
        if (!s->open[i].used)
            return NULL;
        if (s->open[i].id == id)
            return &s->open[i];
    }
}

static struct open_order *open_add(struct risk_state *s, uint64_t id)
{
    size_t i = slot_of(id);
    while (s->open[i].used)
        i = (i + 1) & (OPEN_SLOTS - 1);
    s->open[i] = (struct open_order){.id = id, .used = true};
    s->nopen++;
    return &s->open[i];
}

/* Takes o out of the table, shifting back the entries after it that probed past it. */
static void open_remove(struct risk_state *s, struct open_order *o)
{
    size_t i = (size_t)(o - s->open);
    s->open_qty[o->locate] -= o->side == 'B' ? (int32_t)o->qty : -(int32_t)o->qty;
    s->open_notional -= (uint64_t)o->qty * o->price;
    s->open[i].used = false;
    s->nopen--;
    for (size_t j = (i + 1) & (OPEN_SLOTS - 1); s->open[j].used; j = (j + 1) & (OPEN_SLOTS - 1)) {
        size_t home = slot_of(s->open[j].id);
        /* j may move to the hole at i when its home is not in (i, j], cyclically. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        s->open[i] = s->open[j];
        s->open[j].used = false;
        i = j;
    }
}

/* Shares of o filled (durably, or the exchange rejected it: qty = o->qty). */
static void open_reduce(struct risk_state *s, struct open_order *o, uint32_t qty)
{
    if (qty >= o->qty) {
        open_remove(s, o);
        return;
    }
    s->open_qty[o->locate] -= o->side == 'B' ? (int32_t)qty : -(int32_t)qty;
    s->open_notional -= (uint64_t)qty * o->price;
    o->qty -= qty;
}

static void apply(void *state, const void *event, uint32_t len)
{
    struct durable *d = &((struct risk_state *)state)->d;
    struct fill_event f;
    if (len != sizeof f)
        return;
    memcpy(&f, event, sizeof f);
    if (f.locate > MKT_MAX_LOCATE)
        return;
    /* Unsigned, wrapping arithmetic: a fill's figures come from the network, and a crafted one
     * (qty and price near 2^32) must not overflow a signed integer. */
    uint64_t q = f.side == 'B' ? (uint64_t)f.qty : (uint64_t)0 - f.qty;
    d->pos[f.locate] = (int64_t)((uint64_t)d->pos[f.locate] + q);
    d->cash = (int64_t)((uint64_t)d->cash - q * f.price);
    d->fills++;
    if (f.seq != d->last_seq + 1)
        d->seq_gaps++;
    d->last_seq = f.seq;
}

static uint32_t snapshot(const void *state, void *buf, uint32_t cap)
{
    const struct durable *d = &((const struct risk_state *)state)->d;
    if (cap >= sizeof *d)
        memcpy(buf, d, sizeof *d);
    return (uint32_t)sizeof *d;
}

static int restore(void *state, const void *data, uint32_t len)
{
    if (len != sizeof(struct durable))
        return -EINVAL;
    memcpy(&((struct risk_state *)state)->d, data, len);
    return 0;
}

static void order(struct risk_state *s, const struct order_req *r)
{
    struct mkt_shard *sh = mkt_here();
    uint64_t at = 0;
    if (mkt_cfg.timing) {
        at = mkt_now();
        lat_add(&sh->to_risk, tick_age(r->due, at));
        lat_add(&sh->hop_risk, at - r->at_signal);
    }
    int64_t q = r->side == 'B' ? (int64_t)r->qty : -(int64_t)r->qty;
    uint64_t notional = (uint64_t)r->qty * r->price;
    if (r->locate == 0 || r->locate > MKT_MAX_LOCATE || r->qty == 0 ||
        llabs(s->d.pos[r->locate] + s->open_qty[r->locate] + q) > mkt_cfg.max_pos ||
        s->open_notional + notional > mkt_cfg.max_open_notional || s->nopen >= MKT_MAX_OPEN) {
        mkt_inc(&sh->risk_rejects, 1);
        return;
    }
    uint64_t id = mkt_cfg.run_id << 32 | ++s->next_id;
    struct order_msg m = {.type = 'O',
                          .id = id,
                          .account = s->d.account,
                          .locate = r->locate,
                          .side = r->side,
                          .qty = r->qty,
                          .price = r->price,
                          .tick_ns = r->due};
    if (gateway_send(&m) != 0) {
        mkt_inc(&sh->gw_down, 1);
        return;
    }
    uint64_t sent = mkt_now();
    struct open_order *o = open_add(s, id);
    o->locate = r->locate;
    o->side = r->side;
    o->qty = r->qty;
    o->price = r->price;
    o->sent_at = sent;
    s->open_qty[r->locate] += (int32_t)q;
    s->open_notional += notional;
    mkt_inc(&sh->orders_sent, 1);
    if (mkt_cfg.timing) {
        lat_add(&sh->to_order, tick_age(r->due, sent));
        lat_add(&sh->hop_wire, sent - at);
    }
}

/* A fill's event is durable and applied (or failed): the order's open shares go. */
static void fill_done(pith_actor_t *self, void *state, int err, void *ctx)
{
    (void)self;
    (void)ctx;
    struct mkt_shard *sh = mkt_here();
    struct risk_state *s = state;
    if (s == NULL) /* the activation ended first: nothing open to settle */
        return;
    struct pending_fill p = s->pending[s->pend_head];
    s->pend_head = (s->pend_head + 1) % PENDING;
    s->pend_len--;
    mkt_inc(err == 0 ? &sh->fills_durable : &sh->fill_failed, 1);
    struct open_order *o = open_find(s, p.id);
    if (o != NULL)
        open_reduce(s, o, p.qty);
}

static void exchange_reply(pith_actor_t *self, struct risk_state *s, const struct order_msg *m)
{
    struct mkt_shard *sh = mkt_here();
    struct open_order *o = open_find(s, m->id);
    if (m->type == 'A') {
        mkt_inc(&sh->accepted, 1);
    } else if (m->type == 'J') {
        mkt_inc(&sh->exch_rejects, 1);
        if (o != NULL)
            open_remove(s, o);
    } else if (m->type == 'F') {
        mkt_inc(&sh->fills, 1);
        if (o != NULL && !o->filled_once) {
            o->filled_once = true;
            if (mkt_cfg.timing)
                lat_add(&sh->fill_rtt, mkt_now() - o->sent_at);
        }
        struct fill_event f = {.seq = m->seq,
                               .id = m->id,
                               .qty = m->qty,
                               .price = m->price,
                               .locate = m->locate,
                               .side = m->side};
        if (s->pend_len == PENDING ||
            pith_persist_async(self, &f, sizeof f, fill_done, NULL) != 0) {
            mkt_inc(&sh->fill_failed, 1);
            return;
        }
        s->pending[(s->pend_head + s->pend_len) % PENDING] = (struct pending_fill){m->id, m->qty};
        s->pend_len++;
    }
}

static void report(pith_actor_t *self, struct risk_state *s, struct risk_report *r)
{
    *r = (struct risk_report){.account = s->d.account,
                              .open = s->nopen,
                              .fills = s->d.fills,
                              .last_seq = s->d.last_seq,
                              .seq_gaps = s->d.seq_gaps,
                              .cash = s->d.cash,
                              .events = pith_persist_events(self)};
    for (unsigned l = 1; l <= MKT_MAX_LOCATE; l++) {
        int64_t p = s->d.pos[l];
        r->gross += (uint64_t)(p < 0 ? -p : p);
        r->nonzero += p != 0;
    }
}

static int risk_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct risk_state *s = state;
    switch (msg->type) {
    case MT_ORDER:
        if (msg->len == sizeof(struct order_req))
            order(s, msg->data);
        break;
    case MT_EXCH:
        if (msg->len == sizeof(struct order_msg))
            exchange_reply(self, s, msg->data);
        break;
    case MT_RISKQ: {
        struct risk_report r;
        report(self, s, &r);
        pith_reply(msg, MT_RISKQ, &r, sizeof r);
        break;
    }
    case MT_POSQ:
        pith_reply(msg, MT_POSQ, s->d.pos, sizeof s->d.pos);
        break;
    default:
        break;
    }
    return 0;
}

static int risk_activate(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    struct risk_state *s = state;
    (void)self;
    (void)reason;
    if (len != sizeof(uint32_t))
        return -EINVAL;
    memcpy(&s->d.account, key, sizeof s->d.account);
    return 0;
}

static const pith_actor_type_t risk_actor = {
    .name = "market.risk",
    .behaviour = risk_behaviour,
    .state_size = sizeof(struct risk_state),
    .mailbox_max = 65536,
    .overflow = PITH_OVERFLOW_MUTE_SENDER,
};

static const pith_persist_type_t risk_persist = {
    .apply = apply,
    .snapshot = snapshot,
    .restore = restore,
    .snapshot_every = 4096,
    .keep = 2,
    .flags = PITH_SNAPSHOT_ON_DEACTIVATE,
};

const pith_vtype_t mkt_risk_type = {
    .name = "market.risk",
    .actor = &risk_actor,
    .idle_ns = PITH_VIDLE_NEVER,
    .on_activate = risk_activate,
    .persist = &risk_persist,
};

int risk_register(void)
{
    return pith_vtype_register(&mkt_risk_type);
}

int risk_vref(uint32_t account, pith_vref_t *out)
{
    return pith_vref(&mkt_risk_type, &account, sizeof account, out);
}
