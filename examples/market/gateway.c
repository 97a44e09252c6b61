/* The order gateway: one TCP connection to pith-exchange per shard, opened by that shard, so
 * that a risk actor writes its orders to its own shard's socket without a hop; replies
 * (accepted, rejected, fills) come back on the same connection and go to their account's risk
 * actor. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkt.h"

struct gateway {
    pith_conn_t conn;
    /* 1 open, 0 connecting, -errno once closed or failed: written by the shard (release),
     * read by main and by gateway_send (acquire), so that main sees the connection id set
     * before it sees the state that says it is open. */
    _Atomic int state;
};

static struct gateway *gateways;
static unsigned ngateways;
static char gw_host[64];
static uint16_t gw_port;

static void *on_open(pith_conn_t c, void *ctx)
{
    struct gateway *g = ctx;
    g->conn = c;
    atomic_store_explicit(&g->state, 1, memory_order_release);
    return g;
}

static void resume(void *arg)
{
    struct gateway *g = arg;
    pith_conn_resume(g->conn);
}

static size_t on_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    struct gateway *g = cctx;
    const uint8_t *p = data;
    size_t at = 0;
    while (at < len) {
        struct order_msg m;
        size_t used;
        int err = order_decode(p + at, len - at, &m, &used);
        if (err == -EAGAIN)
            break;
        if (err != 0 || m.type == 'O' || m.account >= mkt_cfg.accounts) {
            /* The exchange is not speaking the protocol: nothing more from it is trusted, and
             * the orders that follow are refused for want of a connection (no_gateway). */
            fprintf(stderr, "pith-market: shard %d: a bad frame from the exchange at %zu; closed\n",
                    pith_shard_id(), at);
            pith_conn_abort(c);
            return len;
        }
        pith_vref_t risk;
        err = risk_vref(m.account, &risk);
        if (err == 0)
            err = pith_vsend(&risk, MT_EXCH, &m, sizeof m);
        if (err == -EAGAIN) {
            /* The mesh to the risk actor's shard is full, or, on this shard, the risk actor's
             * mailbox: keep the rest, stop reading, and take it up again once the mesh has
             * room (at once on this shard, after the risk actor's turns): the kept bytes are
             * offered first. */
            mkt_inc(&mkt_here()->routed_late, 1);
            if (pith_conn_pause(c) == 0 &&
                pith_when_shard_room(pith_vref_shard(&risk), resume, g) != 0)
                pith_conn_resume(c);
            return at;
        }
        if (err != 0)
            mkt_inc(&mkt_here()->undelivered, 1);
        at += used;
    }
    return at;
}

static void on_close(pith_conn_t c, void *cctx, int reason)
{
    (void)c;
    struct gateway *g = cctx != NULL ? cctx : &gateways[pith_shard_id()];
    atomic_store_explicit(&g->state, reason < 0 ? reason : -ENOTCONN, memory_order_release);
}

static const pith_tcp_handler_t handler = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
};

int gateway_init(unsigned shards, const char *host, uint16_t port)
{
    if (strlen(host) >= sizeof gw_host)
        return -EINVAL;
    gateways = calloc(shards, sizeof *gateways);
    if (gateways == NULL)
        return -ENOMEM;
    ngateways = shards;
    snprintf(gw_host, sizeof gw_host, "%s", host);
    gw_port = port;
    return 0;
}

void *gateway_connect(void *arg)
{
    (void)arg;
    struct gateway *g = &gateways[pith_shard_id()];
    pith_tcp_opts_t opts = {.handler = &handler, .ctx = g};
    int err = pith_tcp_connect(gw_host, gw_port, &opts, 2000000000, NULL);
    if (err != 0)
        atomic_store_explicit(&g->state, err, memory_order_release);
    return NULL;
}

int gateway_state(unsigned shard)
{
    return atomic_load_explicit(&gateways[shard].state, memory_order_acquire);
}

int gateway_send(const struct order_msg *m)
{
    struct gateway *g = &gateways[pith_shard_id()];
    if (atomic_load_explicit(&g->state, memory_order_acquire) != 1)
        return -ENOTCONN;
    uint8_t buf[ORDER_MAX_FRAME];
    ssize_t n = order_encode(m, buf, sizeof buf);
    if (n < 0)
        return (int)n;
    return pith_conn_send(g->conn, buf, (size_t)n);
}

void *gateway_close(void *arg)
{
    (void)arg;
    struct gateway *g = &gateways[pith_shard_id()];
    if (atomic_load_explicit(&g->state, memory_order_acquire) == 1)
        pith_conn_close(g->conn);
    return NULL;
}

void gateway_fini(void)
{
    free(gateways);
    gateways = NULL;
    ngateways = 0;
}
