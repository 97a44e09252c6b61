/* Connection and listener ids across engines (pith/net.h): an id kept from one engine names
 * nothing in the next, although the next engine makes its connections in the same order, on
 * the same shard, in the same slots. Both ends of each connection are the engine's own: an
 * outbound pith_tcp_connect to its own listener on 127.0.0.1. */
#include <string.h>

#include "util.h"

#define LOOPBACK "127.0.0.1"

/* What one engine's connections were called, recorded by their callbacks. */
static struct ids {
    _Atomic uint64_t in, out; /* the accepted end's id, the connecting end's */
    atomic_uint opens, closes;
} ids;

static void *in_open(pith_conn_t c, void *ctx)
{
    atomic_store(&ids.in, c);
    atomic_fetch_add(&ids.opens, 1);
    return ctx;
}

static void *out_open(pith_conn_t c, void *ctx)
{
    atomic_store(&ids.out, c);
    atomic_fetch_add(&ids.opens, 1);
    return ctx;
}

static size_t keep_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    (void)c;
    (void)cctx;
    (void)data;
    return len;
}

static void count_close(pith_conn_t c, void *cctx, int reason)
{
    (void)c;
    (void)cctx;
    (void)reason;
    atomic_fetch_add(&ids.closes, 1);
}

static const pith_tcp_handler_t in_handler = {
    .on_open = in_open, .on_data = keep_data, .on_close = count_close};
static const pith_tcp_handler_t out_handler = {
    .on_open = out_open, .on_data = keep_data, .on_close = count_close};

struct connect_req {
    uint16_t port;
    pith_conn_t id;
    int rc;
};

static void *connect_fn(void *arg)
{
    struct connect_req *q = arg;
    pith_tcp_opts_t o;
    memset(&o, 0, sizeof o);
    o.handler = &out_handler;
    q->rc = pith_tcp_connect(LOOPBACK, q->port, &o, 0, &q->id);
    return NULL;
}

/* pith_conn_info on c, from c's shard. */
static void *info_fn(void *arg)
{
    pith_conn_info_t info;
    return (void *)(intptr_t)pith_conn_info(*(pith_conn_t *)arg, &info);
}

static int info_rc(pith_conn_t c)
{
    void *res = NULL;
    cr_assert_eq(pith_call_wait(pith_conn_shard(c), info_fn, &c, &res), 0);
    return (int)(intptr_t)res;
}

/* Starts a one-shard engine with a listener and one connection to it from shard 0; returns
 * with both ends open and their ids in `ids`. */
static pith_listener_t engine_with_one_connection(void)
{
    memset(&ids, 0, sizeof ids);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc;
    memset(&lc, 0, sizeof lc);
    lc.host = LOOPBACK;
    lc.conn.handler = &in_handler;
    pith_listener_t l = 0;
    int rc = pith_tcp_listen(&lc, &l);
    cr_assert_eq(rc, 0, "pith_tcp_listen: %d (%s)", rc, pith_strerror(rc));
    int port = pith_tcp_listener_port(l);
    cr_assert_gt(port, 0);
    struct connect_req q = {.port = (uint16_t)port};
    cr_assert_eq(pith_call_wait(0, connect_fn, &q, NULL), 0);
    cr_assert_eq(q.rc, 0, "pith_tcp_connect: %d (%s)", q.rc, pith_strerror(q.rc));
    TEST_WAIT_FOR(atomic_load(&ids.opens) == 2);
    cr_assert_eq(atomic_load(&ids.out), q.id);
    cr_assert_eq(info_rc(atomic_load(&ids.in)), 0);
    cr_assert_eq(info_rc(atomic_load(&ids.out)), 0);
    return l;
}

Test(net, connection_and_listener_ids_from_an_earlier_engine_name_nothing_in_the_next,
     .timeout = 30)
{
    pith_listener_t old_l = engine_with_one_connection();
    pith_conn_t old_in = atomic_load(&ids.in), old_out = atomic_load(&ids.out);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&ids.closes), 2);

    pith_listener_t new_l = engine_with_one_connection();
    pith_conn_t new_in = atomic_load(&ids.in), new_out = atomic_load(&ids.out);
    cr_assert_eq(pith_conn_shard(old_in), pith_conn_shard(new_in));
    cr_assert_eq(pith_conn_shard(old_out), pith_conn_shard(new_out));
    cr_assert(old_in != new_in && old_in != new_out,
              "the accepted end's id from the first engine names a connection of the second");
    cr_assert(old_out != new_in && old_out != new_out,
              "the connecting end's id from the first engine names a connection of the second");
    cr_assert_eq(info_rc(old_in), -ENOENT);
    cr_assert_eq(info_rc(old_out), -ENOENT);
    cr_assert_eq(info_rc(new_in), 0);
    cr_assert_eq(info_rc(new_out), 0);
    cr_assert_neq(old_l, new_l);
    cr_assert_eq(pith_tcp_listener_port(old_l), -ENOENT);
    cr_assert_gt(pith_tcp_listener_port(new_l), 0);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&ids.closes), 2);
}
