/* The signal actors: one per instrument, spawned by its book actor on the book's shard. Each
 * keeps the instrument's VWAP (from executions and trades), a fast and a slow EMA of the mid
 * price and the book's imbalance, and asks its account's risk actor for an order, when the
 * price is near the VWAP, on either of two signals: the EMAs cross (and the imbalance does not
 * lean against it), or the imbalance crosses out past its threshold. */
#include <math.h>
#include <string.h>

#include "mkt.h"

/* Updates of the top before the EMAs count (the slow one's memory). */
#define WARMUP 32
/* An order only within this fraction of the VWAP. */
#define VWAP_BAND 0.05
/* The imbalance must not lean harder than this against a crossover's side. */
#define IMBALANCE_MAX 0.3
/* The imbalance past this (either way) is a signal of its own when it crosses out to it. */
#define IMBALANCE_FIRE 0.6

struct signal_state {
    uint16_t locate;
    int last_sign; /* the fast EMA above (1) or below (-1) the slow one; 0 before warm-up */
    int last_zone; /* the imbalance past IMBALANCE_FIRE on the bid's side (1), the ask's (-1) */
    uint32_t updates, since_order;
    double ema_fast, ema_slow;
    double vwap_num, vwap_den;
};

static int signal_init(pith_actor_t *self, void *state, void *arg)
{
    struct signal_state *s = state;
    (void)self;
    memcpy(&s->locate, arg, sizeof s->locate);
    s->since_order = UINT32_MAX / 2;
    return 0;
}

static void want_order(struct signal_state *s, const struct tob *u, char side, char why,
                       uint64_t at)
{
    struct mkt_shard *sh = mkt_here();
    struct order_req r = {.locate = s->locate,
                          .side = side,
                          .why = why,
                          .qty = mkt_cfg.qty,
                          .price = side == 'B' ? u->ask : u->bid,
                          .due = u->due,
                          .at_book = u->at_book,
                          .at_signal = at};
    if (mkt_cfg.accounts == 0) { /* no orders this run: the signal is only counted */
        mkt_inc(&sh->signals, 1);
        s->since_order = 0;
        return;
    }
    pith_vref_t risk;
    if (risk_vref(s->locate % mkt_cfg.accounts, &risk) != 0)
        return;
    /* The risk actor's type mutes this one when its mailbox is full; a send the mesh refuses
     * now is a signal lost, counted as such (it would be stale when sent later anyway). */
    if (pith_vsend(&risk, MT_ORDER, &r, sizeof r) == 0) {
        mkt_inc(&sh->signals, 1);
        s->since_order = 0;
    } else {
        mkt_inc(&sh->undelivered, 1);
    }
}

static int signal_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct signal_state *s = state;
    (void)self;
    if (msg->type != MT_TOB || msg->len != sizeof(struct tob))
        return 0;
    const struct tob *u = msg->data;
    uint64_t at = 0;
    if (mkt_cfg.timing) {
        struct mkt_shard *sh = mkt_here();
        at = mkt_now();
        lat_add(&sh->to_signal, tick_age(u->due, at));
        lat_add(&sh->hop_signal, at - u->at_book);
    }
    if (u->trade_sz != 0) {
        s->vwap_num += (double)u->trade_px * u->trade_sz;
        s->vwap_den += u->trade_sz;
    }
    s->since_order++;
    if (u->bid == 0 || u->ask == 0)
        return 0;
    double mid = ((double)u->bid + u->ask) / 2;
    if (s->updates++ == 0) {
        s->ema_fast = s->ema_slow = mid;
        return 0;
    }
    s->ema_fast += (mid - s->ema_fast) / 8;
    s->ema_slow += (mid - s->ema_slow) / 32;
    if (s->updates < WARMUP)
        return 0;
    int sign = s->ema_fast > s->ema_slow ? 1 : -1;
    int last = s->last_sign;
    s->last_sign = sign;
    double depth = (double)u->bid_sz + (double)u->ask_sz;
    double imbalance = depth > 0 ? ((double)u->bid_sz - (double)u->ask_sz) / depth : 0;
    int zone = imbalance > IMBALANCE_FIRE ? 1 : imbalance < -IMBALANCE_FIRE ? -1 : 0;
    int last_zone = s->last_zone;
    s->last_zone = zone;
    if (s->since_order < mkt_cfg.cooldown)
        return 0;
    if (s->vwap_den > 0 && fabs(mid - s->vwap_num / s->vwap_den) > VWAP_BAND * mid)
        return 0;
    /* An EMA crossover the imbalance does not lean against, or the imbalance crossing out
     * past its threshold: buy on the bid's side, sell on the ask's. */
    if (last != 0 && sign != last && sign * imbalance >= -IMBALANCE_MAX)
        want_order(s, u, sign > 0 ? 'B' : 'S', 'E', at);
    else if (zone != 0 && zone != last_zone)
        want_order(s, u, zone > 0 ? 'B' : 'S', 'I', at);
    return 0;
}

const pith_actor_type_t mkt_signal_type = {
    .name = "market.signal",
    .behaviour = signal_behaviour,
    .init = signal_init,
    .state_size = sizeof(struct signal_state),
    .mailbox_max = 4096,
    .overflow = PITH_OVERFLOW_MUTE_SENDER,
};
