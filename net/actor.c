/* Actor mode, built on the callbacks: each connection spawns an actor of the configured type on
 * its shard and its events become messages (PITH_MSG_TCP_*). The callbacks' cctx is the actor's
 * ref. */
#include <errno.h>

#include "core.h"
#include "net.h"

#define RETRY_NS UINT64_C(1000000)

static void *a_open(pith_conn_t c, void *ctx)
{
    struct conn *k = conn_by_id(c);
    pith_tcp_open_t open = {.conn = c, .ctx = ctx};
    pith_ref_t ref = PITH_REF_NONE;
    if (k == NULL || pith_spawn(k->o.actor_type, &open, &ref) != 0) {
        (void)pith_conn_abort(c);
        return NULL;
    }
    return (void *)(uintptr_t)ref;
}

void net_actor_retry(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    struct conn *c = conn_by_id(id);
    if (c != NULL)
        conn_resume(c, PAUSE_ACTOR);
}

static size_t a_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    pith_ref_t ref = (pith_ref_t)(uintptr_t)cctx;
    /* Held to the mailbox's bound: a full one pushes back on the socket. */
    int err = core_send_sys(ref, PITH_MSG_TCP_DATA, data, (uint32_t)len, 0);
    if (err == 0)
        return len;
    struct conn *k = conn_by_id(c);
    if (err == -EAGAIN && k != NULL) {
        /* A full mailbox: keep the bytes (they count against max_buffered), stop reading, and
         * offer them again shortly. */
        k->pause |= PAUSE_ACTOR;
        if (pith_timer_add(RETRY_NS, 0, net_actor_retry, (void *)(uintptr_t)c, NULL) == 0)
            return 0;
    }
    /* The actor is gone (or the bytes cannot be kept): the connection ends. */
    (void)pith_conn_abort(c);
    return len;
}

static void a_eof(pith_conn_t c, void *cctx)
{
    if (core_send_sys((pith_ref_t)(uintptr_t)cctx, PITH_MSG_TCP_EOF, NULL, 0, AMSG_ADMIT) != 0)
        (void)pith_conn_abort(c);
}

static void a_drain(pith_conn_t c, void *cctx)
{
    if (core_send_sys((pith_ref_t)(uintptr_t)cctx, PITH_MSG_TCP_DRAIN, NULL, 0, AMSG_ADMIT) != 0)
        (void)pith_conn_abort(c);
}

static void a_close(pith_conn_t c, void *cctx, int reason)
{
    (void)c;
    int32_t r = reason;
    if (cctx != NULL)
        (void)core_send_sys((pith_ref_t)(uintptr_t)cctx, PITH_MSG_TCP_CLOSED, &r, sizeof(r),
                            AMSG_ADMIT);
}

const pith_tcp_handler_t net_actor_handler = {
    .on_open = a_open,
    .on_data = a_data,
    .on_eof = a_eof,
    .on_drain = a_drain,
    .on_close = a_close,
};
