/* A connection's input: the multishot receive into the shard's provided buffers (re-armed when
 * it ends by itself, or from a task once buffers are back), input the application has not
 * consumed kept and offered again, and the end of stream. */
#include <errno.h>
#include <string.h>

#include "net.h"

#define IN_SHRINK (64u * 1024)

static void starve(struct conn *c)
{
    struct net_shard *ns = c->ns;
    if (!c->starved) {
        c->starved = true;
        c->starved_next = ns->starved;
        ns->starved = c;
    }
    if (!ns->rearm_queued && pith_submit(ns->shard, recv_rearm_task, ns) == 0)
        ns->rearm_queued = true;
}

void recv_unstarve(struct conn *c)
{
    if (!c->starved)
        return;
    for (struct conn **p = &c->ns->starved; *p != NULL; p = &(*p)->starved_next)
        if (*p == c) {
            *p = c->starved_next;
            break;
        }
    c->starved = false;
}

void recv_arm(struct conn *c)
{
    if (c->recv_armed || c->state != C_OPEN || c->rd_eof || c->pause != 0 || c->starved)
        return;
    struct io_uring_sqe *sqe = io_ring_sqe(c->ns->ring);
    if (sqe == NULL) {
        starve(c); /* tried again from a task */
        return;
    }
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = NET_BGID;
    io_uring_sqe_set_data(sqe, &c->recv_op);
    c->recv_armed = true;
    c->recv_cancel = false;
    c->ops++;
}

void recv_stop(struct conn *c)
{
    if (c->recv_armed && !c->recv_cancel) {
        c->recv_cancel = true;
        conn_cancel_op(c, &c->recv_op);
    }
}

void recv_rearm_task(void *arg)
{
    struct net_shard *ns = arg;
    ns->rearm_queued = false;
    struct conn *list = ns->starved;
    ns->starved = NULL;
    while (list != NULL) {
        struct conn *c = list;
        list = c->starved_next;
        c->starved = false;
        stat_inc(&ns->st.recv_rearms);
        recv_arm(c);
    }
}

/* Keeps n bytes of input for the next offer. */
static int keep(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->in_len + n + c->unsent > c->o.max_buffered) {
        conn_over_limit(c);
        return -ENOBUFS;
    }
    if (c->in_len + n > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        while (cap < c->in_len + n)
            cap *= 2;
        uint8_t *in = pith_realloc(c->in, cap);
        if (in == NULL) {
            conn_fail(c, -ENOMEM);
            return -ENOMEM;
        }
        c->in = in;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
    return 0;
}

static size_t call_data(struct conn *c, const void *p, size_t n)
{
    c->in_cb++;
    size_t used = c->o.handler->on_data(c->id, c->cctx, p, n);
    c->in_cb--;
    return used > n ? n : used;
}

/* Offers the kept input again. */
void recv_feed(struct conn *c)
{
    if (c->in_len == 0 || c->state != C_OPEN || c->pause != 0)
        return;
    size_t used = call_data(c, c->in, c->in_len);
    if (c->state != C_OPEN)
        return;
    c->in_len -= used;
    if (c->in_len > 0 && used > 0)
        memmove(c->in, c->in + used, c->in_len);
    if (c->in_len == 0 && c->in_cap > IN_SHRINK) {
        pith_free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

static void deliver(struct conn *c, const uint8_t *data, size_t len)
{
    struct net_shard *ns = c->ns;
    c->bytes_in += len;
    stat_add(&ns->st.bytes_in, len);
    if (c->o.idle_ns != 0)
        c->last_rx = pith_now_ns();
    if (c->state != C_OPEN)
        return; /* closing: input is dropped */
    if (c->in_len == 0 && c->pause == 0) {
        size_t used = call_data(c, data, len);
        if (used < len && c->state == C_OPEN)
            (void)keep(c, data + used, len - used);
        return;
    }
    if (keep(c, data, len) == 0)
        recv_feed(c);
}

static void eof(struct conn *c)
{
    c->rd_eof = true;
    if (c->state != C_OPEN)
        return;
    if (c->o.handler->on_eof != NULL) {
        c->in_cb++;
        c->o.handler->on_eof(c->id, c->cctx);
        c->in_cb--;
    } else {
        conn_close_graceful(c, 0);
    }
}

void recv_cqe(struct io_op *op, int res, uint32_t flags)
{
    struct conn *c = CONN_OF(op, recv_op);
    struct net_shard *ns = c->ns;
    bool more = (flags & IORING_CQE_F_MORE) != 0;
    if (!more) {
        c->recv_armed = false;
        c->ops--;
    }
    c->in_cb++;
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        if (res > 0)
            deliver(c, bufring_addr(ns, bid), (size_t)res);
        bufring_put(ns, bid);
    } else if (res == 0) {
        if (!more)
            eof(c);
    } else if (res == -ENOBUFS) {
        stat_inc(&ns->st.recv_nobufs);
    } else if (res < 0 && res != -ECANCELED) {
        if (res == -ECONNRESET)
            stat_inc(&ns->st.resets);
        conn_fail(c, res);
    }
    c->in_cb--;
    if (!more && c->state == C_OPEN && !c->rd_eof && c->pause == 0 && !c->recv_armed) {
        /* The multishot ended without being asked to: out of buffers (re-armed once handled
         * completions have returned some), or the CQ was full. Nothing is lost: every byte
         * it took came in a completion. */
        if (res == -ENOBUFS) {
            starve(c);
        } else {
            stat_inc(&ns->st.recv_rearms);
            recv_arm(c);
        }
    }
    if (c->unsent > 0 && !c->sending)
        send_kick(c);
    conn_maybe_free(c);
}
