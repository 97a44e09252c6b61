/* A connection's output: the send queue (copied segments and held pith_bufs, written with one
 * send or sendmsg at a time, partial sends resumed), the watermarks, the shutdown after the last
 * byte, and pith_conn_send, pith_conn_sendv and pith_conn_send_buf. */
#include <errno.h>
#include <string.h>

#include "net.h"

#define SEG_BYTES 16384u

static void seg_free(struct seg *s)
{
    if (s->buf != NULL)
        pith_buf_release(s->buf);
    pith_free(s);
}

void send_drop_output(struct conn *c)
{
    while (c->head != NULL) {
        struct seg *s = c->head;
        c->head = s->next;
        seg_free(s);
    }
    c->tail = NULL;
    c->unsent = 0;
}

static void kick_later(struct conn *c)
{
    if (c->kick_queued || c->in_cb > 0)
        return; /* the code that ran the callback kicks when it returns */
    if (pith_submit(c->ns->shard, send_kick_task, (void *)(uintptr_t)c->id) == 0)
        c->kick_queued = true;
    else
        send_kick(c);
}

void send_kick(struct conn *c)
{
    if (c->sending || c->unsent == 0 || c->state == C_DEAD || c->state == C_CONNECTING)
        return;
    struct io_uring_sqe *sqe = io_ring_sqe(c->ns->ring);
    if (sqe == NULL) {
        kick_later(c);
        return;
    }
    unsigned n = 0;
    size_t total = 0;
    for (struct seg *s = c->head; s != NULL && n < NET_IOV; s = s->next) {
        if (s->len == s->off)
            continue;
        c->iov[n].iov_base = (void *)(s->base + s->off);
        c->iov[n].iov_len = s->len - s->off;
        total += c->iov[n].iov_len;
        n++;
    }
    if (n == 1) {
        io_uring_prep_send(sqe, c->fd, c->iov[0].iov_base, c->iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        memset(&c->msg, 0, sizeof(c->msg));
        c->msg.msg_iov = c->iov;
        c->msg.msg_iovlen = n;
        io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data(sqe, &c->send_op);
    c->fly = total;
    c->sending = true;
    c->ops++;
}

void send_kick_task(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    struct conn *c = conn_by_id(id);
    if (c == NULL)
        return;
    c->kick_queued = false;
    send_kick(c);
}

/* n bytes left: frees what was sent, keeping the last copy segment for reuse. */
static void advance(struct conn *c, size_t n)
{
    c->unsent -= n;
    while (n > 0 && c->head != NULL) {
        struct seg *s = c->head;
        size_t take = s->len - s->off < n ? s->len - s->off : n;
        s->off += (uint32_t)take;
        n -= take;
        if (s->off < s->len)
            break;
        if (s->next == NULL && s->buf == NULL) {
            s->off = s->len = 0;
            break;
        }
        c->head = s->next;
        if (c->head == NULL)
            c->tail = NULL;
        seg_free(s);
    }
}

static void after_send(struct conn *c)
{
    if (c->state == C_DEAD)
        return;
    if (c->unsent == 0) {
        if (c->shut_req && !c->shut_done) {
            shutdown(c->fd, SHUT_WR);
            c->shut_done = true;
        }
        if (c->state == C_CLOSING) {
            conn_finish_close(c);
            return;
        }
    }
    if ((c->pause & PAUSE_WATER) && c->unsent <= c->o.low) {
        c->pause &= (uint8_t)~PAUSE_WATER;
        if (c->pause == 0) {
            if (c->in_len > 0)
                recv_feed(c);
            recv_arm(c);
        }
        if (c->o.handler->on_drain != NULL && c->state == C_OPEN) {
            c->in_cb++;
            c->o.handler->on_drain(c->id, c->cctx);
            c->in_cb--;
        }
    }
    send_kick(c);
}

void send_cqe(struct io_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct conn *c = CONN_OF(op, send_op);
    struct net_shard *ns = c->ns;
    c->sending = false;
    c->ops--;
    /* Held across the body: conn_fail below may make the connection freeable, and only the
     * conn_maybe_free at the end may free it. */
    c->in_cb++;
    if (res < 0) {
        if (res == -ECONNRESET)
            stat_inc(&ns->st.resets);
        if (res != -ECANCELED)
            conn_fail(c, res);
    } else {
        if ((size_t)res < c->fly)
            stat_inc(&ns->st.partial_sends);
        c->bytes_out += (uint64_t)res;
        stat_add(&ns->st.bytes_out, (uint64_t)res);
        if (c->state != C_DEAD)
            advance(c, (size_t)res);
        after_send(c);
    }
    c->in_cb--;
    conn_maybe_free(c);
}

static void water_check(struct conn *c)
{
    if (c->unsent > c->o.high && !(c->pause & PAUSE_WATER)) {
        c->pause |= PAUSE_WATER;
        stat_inc(&c->ns->st.paused);
        recv_stop(c);
    }
}

static struct seg *seg_room(struct conn *c, size_t n)
{
    struct seg *t = c->tail;
    if (t != NULL && t->buf == NULL && t->cap - t->len >= n)
        return t;
    size_t cap = n > SEG_BYTES - sizeof(struct seg) ? n : SEG_BYTES - sizeof(struct seg);
    if (cap > UINT32_MAX)
        return NULL;
    struct seg *s = pith_malloc(sizeof(*s) + cap);
    if (s == NULL)
        return NULL;
    s->next = NULL;
    s->buf = NULL;
    s->base = s->data;
    s->off = s->len = 0;
    s->cap = (uint32_t)cap;
    if (c->tail != NULL)
        c->tail->next = s;
    else
        c->head = s;
    c->tail = s;
    return s;
}

/* Checks that n more bytes may be queued: -EPIPE, or -ENOBUFS (and the connection fails). */
static int may_queue(struct conn *c, size_t n)
{
    if (c->state != C_OPEN || c->shut_req)
        return -EPIPE;
    if (c->unsent + c->in_len + n > c->o.max_buffered) {
        conn_over_limit(c);
        return -ENOBUFS;
    }
    return 0;
}

static void queued(struct conn *c, size_t n)
{
    c->unsent += n;
    water_check(c);
    if (!c->sending)
        kick_later(c);
}

int pith_conn_send(pith_conn_t id, const void *data, size_t len)
{
    struct iovec v = {.iov_base = (void *)data, .iov_len = len};
    return pith_conn_sendv(id, &v, 1);
}

int pith_conn_sendv(pith_conn_t id, const struct iovec *iov, int iovcnt)
{
    if (iovcnt < 0 || (iov == NULL && iovcnt > 0))
        return -EINVAL;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_base == NULL && iov[i].iov_len > 0)
            return -EINVAL;
        total += iov[i].iov_len;
    }
    int err = 0;
    struct conn *c = conn_owned(id, &err);
    if (c == NULL)
        return err;
    if ((err = may_queue(c, total)) != 0 || total == 0)
        return err;
    /* Room for the whole of it first, so that a failure queues nothing. */
    struct seg *s = seg_room(c, total);
    if (s == NULL)
        return -ENOMEM;
    for (int i = 0; i < iovcnt; i++) {
        memcpy(s->data + s->len, iov[i].iov_base, iov[i].iov_len);
        s->len += (uint32_t)iov[i].iov_len;
    }
    queued(c, total);
    return 0;
}

int pith_conn_send_buf(pith_conn_t id, pith_buf_t *buf)
{
    if (buf == NULL)
        return -EINVAL;
    int err = 0;
    struct conn *c = conn_owned(id, &err);
    if (c == NULL)
        return err;
    size_t len = pith_buf_len(buf);
    if ((err = may_queue(c, len)) != 0 || len == 0)
        return err;
    if (len > UINT32_MAX)
        return -EINVAL;
    struct seg *s = pith_malloc(sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->next = NULL;
    s->buf = pith_buf_ref(buf);
    s->base = pith_buf_data(buf);
    s->off = 0;
    s->len = (uint32_t)len;
    s->cap = 0;
    if (c->tail != NULL)
        c->tail->next = s;
    else
        c->head = s;
    c->tail = s;
    queued(c, len);
    return 0;
}
