/* A TCP connection on its shard's ring: multishot receive into provided buffers, the send
 * queue (copied segments and held pith_bufs, written with one send or sendmsg at a time,
 * partial sends resumed), watermarks, half-close, graceful close with a linger bound, abort,
 * idle timeout, and the public pith_conn_* calls.
 *
 * Lifetime: a connection is freed when it is DEAD, none of its operations owes a completion,
 * and none of its callbacks is running (conn_maybe_free). Its id stops naming it just before
 * on_close runs. */
#include <errno.h>
#include <limits.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "net.h"

#define SEG_BYTES   16384u
#define IN_SHRINK   (64u * 1024)
#define DEF_MAX_BUF (8u << 20)
#define DEF_HIGH    (1u << 20)
#define DEF_LOW     (256u << 10)
#define DEF_LINGER  UINT64_C(5000000000)

#define CONN_OF(op, member) ((struct conn *)((char *)(op)-offsetof(struct conn, member)))

static void kick_task(void *arg);
static void rearm_task(void *arg);
static void resume_task(void *arg);
static void conn_start(struct conn *c); /* open: on_open, then reading */
static void conn_fail(struct conn *c, int reason);
static void conn_maybe_free(struct conn *c);

int conn_opts_resolve(struct conn_opts *o, const pith_tcp_opts_t *in)
{
    if (in == NULL)
        return -EINVAL;
    memset(o, 0, sizeof(*o));
    if (in->handler != NULL) {
        if (in->handler->on_data == NULL)
            return -EINVAL;
        o->handler = in->handler;
    } else if (in->actor_type != NULL && in->actor_type->behaviour != NULL) {
        o->handler = &net_actor_handler;
        o->actor_type = in->actor_type;
    } else {
        return -EINVAL;
    }
    o->ctx = in->ctx;
    o->idle_ns = in->idle_timeout_ns;
    o->linger_ns = in->linger_ns ? in->linger_ns : DEF_LINGER;
    o->max_buffered = in->max_buffered ? in->max_buffered : DEF_MAX_BUF;
    o->high = in->high_watermark;
    if (o->high == 0)
        o->high = o->max_buffered / 2 < DEF_HIGH ? o->max_buffered / 2 : DEF_HIGH;
    o->low = in->low_watermark;
    if (o->low == 0)
        o->low = o->high / 4 < DEF_LOW ? o->high / 4 : DEF_LOW;
    if (o->low > o->high || o->high >= o->max_buffered)
        return -EINVAL;
    return 0;
}

/* The connection named by id if it lives on the calling shard. */
static struct conn *owned(pith_conn_t id, int *err)
{
    int me = pith_shard_id();
    if (me < 0 || (unsigned)me != pith_conn_shard(id)) {
        *err = -EPERM;
        return NULL;
    }
    struct conn *c = conn_find(net_shard_peek((unsigned)me), id);
    if (c == NULL)
        *err = -ENOENT;
    return c;
}

static void cancel_op(struct conn *c, struct io_op *op)
{
    /* No SQE even after a submit: end the operation through the socket instead. */
    if (io_ring_queue_cancel(c->ns->ring, op) != 0 && c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
}

/* ---- receiving ---- */

static void starve(struct conn *c)
{
    struct net_shard *ns = c->ns;
    if (!c->starved) {
        c->starved = true;
        c->starved_next = ns->starved;
        ns->starved = c;
    }
    if (!ns->rearm_queued && pith_submit(ns->shard, rearm_task, ns) == 0)
        ns->rearm_queued = true;
}

static void unstarve(struct conn *c)
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

static void arm_recv(struct conn *c)
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

static void stop_recv(struct conn *c)
{
    if (c->recv_armed && !c->recv_cancel) {
        c->recv_cancel = true;
        cancel_op(c, &c->recv_op);
    }
}

static void rearm_task(void *arg)
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
        arm_recv(c);
    }
}

static void over_limit(struct conn *c)
{
    stat_inc(&c->ns->st.over_limit);
    conn_fail(c, -ENOBUFS);
}

/* Keeps n bytes of input for the next offer. */
static int keep(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->in_len + n + c->unsent > c->o.max_buffered) {
        over_limit(c);
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
static void feed(struct conn *c)
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
        feed(c);
}

static void close_graceful(struct conn *c, int reason);

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
        close_graceful(c, 0);
    }
}

static void send_kick(struct conn *c);

static void recv_cqe(struct io_op *op, int res, uint32_t flags)
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
            arm_recv(c);
        }
    }
    if (c->unsent > 0 && !c->sending)
        send_kick(c);
    conn_maybe_free(c);
}

/* ---- sending ---- */

static void seg_free(struct seg *s)
{
    if (s->buf != NULL)
        pith_buf_release(s->buf);
    pith_free(s);
}

static void drop_output(struct conn *c)
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
    if (pith_submit(c->ns->shard, kick_task, (void *)(uintptr_t)c->id) == 0)
        c->kick_queued = true;
    else
        send_kick(c);
}

static void send_kick(struct conn *c)
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

static void kick_task(void *arg)
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

static void finish_close(struct conn *c)
{
    c->state = C_CLOSING; /* conn_fail moves it on */
    conn_fail(c, c->reason);
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
            finish_close(c);
            return;
        }
    }
    if ((c->pause & PAUSE_WATER) && c->unsent <= c->o.low) {
        c->pause &= (uint8_t)~PAUSE_WATER;
        if (c->pause == 0) {
            if (c->in_len > 0)
                feed(c);
            arm_recv(c);
        }
        if (c->o.handler->on_drain != NULL && c->state == C_OPEN) {
            c->in_cb++;
            c->o.handler->on_drain(c->id, c->cctx);
            c->in_cb--;
        }
    }
    send_kick(c);
}

static void send_cqe(struct io_op *op, int res, uint32_t flags)
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
        stop_recv(c);
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
        over_limit(c);
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
    struct conn *c = owned(id, &err);
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
    struct conn *c = owned(id, &err);
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

/* ---- lifecycle ---- */

static void idle_fire(void *arg);

static void arm_idle(struct conn *c, uint64_t delay)
{
    if (pith_timer_add(delay, 0, idle_fire, (void *)(uintptr_t)c->id, &c->idle_timer) != 0)
        c->idle_timer = 0;
}

static void idle_fire(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    struct conn *c = conn_by_id(id);
    if (c == NULL)
        return;
    c->idle_timer = 0;
    if (c->state == C_DEAD)
        return;
    uint64_t quiet = pith_now_ns() - c->last_rx;
    if (quiet >= c->o.idle_ns) {
        stat_inc(&c->ns->st.idle_closed);
        c->reset_on_close = true;
        conn_fail(c, -ETIMEDOUT);
        return;
    }
    arm_idle(c, c->o.idle_ns - quiet);
}

static void linger_fire(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    struct conn *c = conn_by_id(id);
    if (c == NULL)
        return;
    c->linger_timer = 0;
    if (c->state == C_CLOSING) {
        c->reset_on_close = true;
        conn_fail(c, -ETIMEDOUT);
    }
}

static void conn_start(struct conn *c)
{
    struct net_shard *ns = c->ns;
    c->state = C_OPEN;
    stat_inc(&ns->st.conns_open);
    if (c->o.idle_ns != 0) {
        c->last_rx = pith_now_ns();
        arm_idle(c, c->o.idle_ns);
    }
    c->in_cb++;
    c->cctx = c->o.handler->on_open != NULL ? c->o.handler->on_open(c->id, c->o.ctx) : c->o.ctx;
    c->opened = true;
    c->in_cb--;
    arm_recv(c);
    if (c->unsent > 0)
        send_kick(c);
    conn_maybe_free(c);
}

static void conn_fail(struct conn *c, int reason)
{
    if (c->state == C_DEAD)
        return;
    bool connecting = c->state == C_CONNECTING;
    c->state = C_DEAD;
    c->reason = reason;
    if (reason == -ECONNABORTED || reason == -ENOBUFS)
        c->reset_on_close = true;
    drop_output(c);
    unstarve(c);
    if (c->recv_armed)
        stop_recv(c);
    if (c->sending)
        cancel_op(c, &c->send_op);
    if (connecting && c->ops > 0)
        cancel_op(c, &c->conn_op); /* the connect in flight (its timeout goes with it) */
    if (c->idle_timer != 0)
        (void)pith_timer_cancel(c->idle_timer);
    if (c->linger_timer != 0)
        (void)pith_timer_cancel(c->linger_timer);
    c->idle_timer = c->linger_timer = 0;
    conn_maybe_free(c);
}

static void conn_maybe_free(struct conn *c)
{
    if (c->state != C_DEAD || c->ops > 0 || c->in_cb > 0)
        return;
    struct net_shard *ns = c->ns;
    if (c->fd >= 0) {
        if (c->reset_on_close) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            (void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        close(c->fd);
        c->fd = -1;
    }
    if (c->opened)
        stat_add(&ns->st.conns_open, (uint64_t)-1);
    /* The id finds nothing from here: on_close sees the connection gone. */
    conn_release_slot(c);
    if (c->o.handler->on_close != NULL)
        c->o.handler->on_close(c->id, c->opened ? c->cctx : NULL, c->reason);
    pith_free(c->in);
    pith_free(c);
}

static void close_graceful(struct conn *c, int reason)
{
    if (c->state != C_OPEN)
        return;
    c->state = C_CLOSING;
    c->reason = reason;
    stop_recv(c);
    if (c->unsent == 0 && !c->sending) {
        finish_close(c);
        return;
    }
    if (!c->ns->exiting && pith_timer_add(c->o.linger_ns, 0, linger_fire, (void *)(uintptr_t)c->id,
                                          &c->linger_timer) != 0)
        c->linger_timer = 0;
    send_kick(c);
}

int pith_conn_close(pith_conn_t id)
{
    int err = 0;
    struct conn *c = owned(id, &err);
    if (c == NULL)
        return err;
    if (c->state == C_CONNECTING)
        conn_fail(c, 0);
    else
        close_graceful(c, 0);
    return 0;
}

int pith_conn_abort(pith_conn_t id)
{
    int err = 0;
    struct conn *c = owned(id, &err);
    if (c == NULL)
        return err;
    conn_fail(c, -ECONNABORTED);
    return 0;
}

int pith_conn_shutdown(pith_conn_t id)
{
    int err = 0;
    struct conn *c = owned(id, &err);
    if (c == NULL)
        return err;
    if (c->state != C_OPEN)
        return -EPIPE;
    c->shut_req = true;
    if (c->unsent == 0 && !c->sending && !c->shut_done) {
        shutdown(c->fd, SHUT_WR);
        c->shut_done = true;
    }
    return 0;
}

int pith_conn_pause(pith_conn_t id)
{
    int err = 0;
    struct conn *c = owned(id, &err);
    if (c == NULL)
        return err;
    if (c->state != C_OPEN)
        return -EPIPE;
    c->pause |= PAUSE_APP;
    stop_recv(c);
    return 0;
}

static void resume_task(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    struct conn *c = conn_by_id(id);
    if (c == NULL)
        return;
    c->resume_queued = false;
    c->in_cb++;
    feed(c);
    c->in_cb--;
    arm_recv(c);
    if (c->unsent > 0 && !c->sending)
        send_kick(c);
    conn_maybe_free(c);
}

/* Clears a pause bit; reading resumes (kept input offered first, from a task) once none is
 * left. */
void conn_resume(struct conn *c, uint8_t bit)
{
    c->pause &= (uint8_t)~bit;
    if (c->pause != 0 || c->state != C_OPEN)
        return;
    if (c->in_len == 0) {
        arm_recv(c);
        return;
    }
    if (!c->resume_queued && pith_submit(c->ns->shard, resume_task, (void *)(uintptr_t)c->id) == 0)
        c->resume_queued = true;
}

int pith_conn_resume(pith_conn_t id)
{
    int err = 0;
    struct conn *c = owned(id, &err);
    if (c == NULL)
        return err;
    if (c->state != C_OPEN)
        return -EPIPE;
    conn_resume(c, PAUSE_APP);
    return 0;
}

int pith_conn_info(pith_conn_t id, pith_conn_info_t *out)
{
    if (out == NULL)
        return -EINVAL;
    int err = 0;
    struct conn *c = owned(id, &err);
    if (c == NULL)
        return err;
    memset(out, 0, sizeof(*out));
    out->shard = c->ns->shard;
    out->bytes_in = c->bytes_in;
    out->bytes_out = c->bytes_out;
    out->unsent = c->unsent;
    out->buffered = c->in_len;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (c->fd >= 0 && getpeername(c->fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, out->peer, sizeof(out->peer));
            out->peer_port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, out->peer, sizeof(out->peer));
            out->peer_port = ntohs(a->sin6_port);
        }
    }
    return 0;
}

/* ---- adoption, connect, stop ---- */

int conn_adopt(struct net_shard *ns, int fd, struct listener *l)
{
    unsigned limit = l->max_conns < ns->max_conns_fit ? l->max_conns : ns->max_conns_fit;
    if (ns->exiting || shard_stopping() ||
        atomic_load_explicit(&ns->st.conns_open, memory_order_relaxed) >= limit) {
        stat_inc(&ns->st.refused);
        close(fd);
        return -EMFILE;
    }
    struct conn *c = conn_alloc(ns);
    if (c == NULL) {
        stat_inc(&ns->st.refused);
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    c->o = l->o;
    c->recv_op.done = recv_cqe;
    c->send_op.done = send_cqe;
    stat_inc(&ns->st.accepted);
    conn_start(c);
    return 0;
}

static void connect_settle(struct conn *c)
{
    if (c->ops > 0)
        return;
    if (c->state == C_CONNECTING) {
        int r = c->connect_res;
        if (c->connect_timed_out && (r == -ECANCELED || r == -EINTR))
            r = -ETIMEDOUT;
        if (r == 0) {
            stat_inc(&c->ns->st.connected);
            conn_start(c);
            return;
        }
        c->state = C_DEAD;
        c->reason = r;
    }
    conn_maybe_free(c);
}

static void conn_connect_cqe(struct io_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct conn *c = CONN_OF(op, conn_op);
    c->ops--;
    c->connect_res = res;
    connect_settle(c);
}

static void conn_connect_to_cqe(struct io_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct conn *c = CONN_OF(op, to_op);
    c->ops--;
    /* -ECANCELED: the connect ended first. Anything else: the timer fired. */
    if (res != -ECANCELED)
        c->connect_timed_out = true;
    connect_settle(c);
}

int net_parse_addr(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (host == NULL) {
        a4->sin_family = AF_INET;
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
        a4->sin_port = htons(port);
        *len = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof(*a6);
        return 0;
    }
    return -EINVAL;
}

int pith_tcp_connect(const char *host, uint16_t port, const pith_tcp_opts_t *opts,
                     uint64_t timeout_ns, pith_conn_t *out)
{
    if (out != NULL)
        *out = 0;
    if (pith_shard_id() < 0)
        return -EPERM;
    struct conn_opts o;
    int err = conn_opts_resolve(&o, opts);
    if (err)
        return err;
    struct sockaddr_storage ss;
    socklen_t sl;
    if (host == NULL || port == 0 || net_parse_addr(host, port, &ss, &sl) != 0)
        return -EINVAL;
    if (shard_stopping())
        return -ESHUTDOWN;
    struct net_shard *ns = net_shard_get();
    if (ns == NULL)
        return errno ? -errno : -ENOMEM;
    struct io_uring *ring = &ns->ring->ring;
    unsigned need = timeout_ns > 0 ? 2 : 1;
    if (io_uring_sq_space_left(ring) < need) {
        io_uring_submit(ring);
        if (io_uring_sq_space_left(ring) < need)
            return -EBUSY;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* Accepted sockets inherit it from the listener (open_socket). */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = conn_alloc(ns);
    if (c == NULL) {
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    c->o = o;
    c->state = C_CONNECTING;
    c->addr = ss;
    c->addrlen = sl;
    c->recv_op.done = recv_cqe;
    c->send_op.done = send_cqe;
    c->conn_op.done = conn_connect_cqe;
    c->to_op.done = conn_connect_to_cqe;
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&c->addr, c->addrlen);
    io_uring_sqe_set_data(sqe, &c->conn_op);
    c->ops = 1;
    if (timeout_ns > 0) {
        sqe->flags |= IOSQE_IO_LINK;
        c->ts.tv_sec = (long long)(timeout_ns / 1000000000u);
        c->ts.tv_nsec = (long long)(timeout_ns % 1000000000u);
        struct io_uring_sqe *t = io_uring_get_sqe(ring);
        io_uring_prep_link_timeout(t, &c->ts, 0);
        io_uring_sqe_set_data(t, &c->to_op);
        c->ops = 2;
    }
    if (out != NULL)
        *out = c->id;
    return 0;
}

/* No connection is still sending what it had queued before its close. */
static bool none_closing(void *arg)
{
    struct net_shard *ns = arg;
    for (uint32_t i = 0; i < ns->conns.end; i++) {
        struct conn *c = slots_at(&ns->conns, i);
        if (c != NULL && c->state == C_CLOSING)
            return false;
    }
    return true;
}

/* At stop: connections with output left get a short, bounded chance to send it; then every
 * connection ends with -ESHUTDOWN. */
void conn_exit_all(struct net_shard *ns)
{
    for (uint32_t i = 0; i < ns->conns.end; i++) {
        struct conn *c = slots_at(&ns->conns, i);
        if (c != NULL && c->state == C_OPEN)
            close_graceful(c, -ESHUTDOWN);
    }
    (void)io_ring_settle(ns->ring, UINT64_C(250000000), none_closing, ns);
    for (uint32_t i = 0; i < ns->conns.end; i++) {
        struct conn *c = slots_at(&ns->conns, i);
        if (c == NULL)
            continue;
        /* Output still queued at the deadline is dropped: a reset, so that the peer does not
         * take the truncated stream for a complete one. */
        if (c->state == C_CLOSING && c->unsent > 0)
            c->reset_on_close = true;
        conn_fail(c, c->state == C_CLOSING ? c->reason : -ESHUTDOWN);
    }
}

bool net_conn_task(pith_fn_t fn)
{
    return fn == kick_task || fn == rearm_task || fn == resume_task;
}
