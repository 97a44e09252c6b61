/* A TCP connection on its shard's ring, all but its bytes: options, start, failure and freeing,
 * graceful close with a linger bound, abort, half-close, pause and resume, the idle timeout,
 * adoption of accepted sockets, the end at engine stop, and the public pith_conn_* calls that do
 * not send. Input is recv.c's, output send.c's, outbound connects connect.c's.
 *
 * Lifetime: a connection is freed when it is DEAD, none of its operations owes a completion,
 * and none of its callbacks is running (conn_maybe_free). Its id stops naming it just before
 * on_close runs. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "net.h"
#include "ticks.h"

#define DEF_MAX_BUF (8u << 20)
#define DEF_HIGH    (1u << 20)
#define DEF_LOW     (256u << 10)
#define DEF_LINGER  UINT64_C(5000000000)

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
struct conn *conn_owned(pith_conn_t id, int *err)
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

/* After asking the ring to cancel one of c's operations: when that found no SQE even after a
 * submit (-EBUSY), the socket's shutdown ends the operation instead. */
static void cancel_or_shut(struct conn *c, int err)
{
    if (err == -EBUSY && c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
}

void conn_cancel_op(struct conn *c, struct io_op *op)
{
    cancel_or_shut(c, io_ring_queue_cancel(c->ns->ring, op));
}

void conn_over_limit(struct conn *c)
{
    stat_inc(&c->ns->st.over_limit);
    conn_fail(c, -ENOBUFS);
}

void conn_finish_close(struct conn *c)
{
    c->state = C_CLOSING; /* conn_fail moves it on */
    conn_fail(c, c->reason);
}

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

void conn_start(struct conn *c)
{
    struct net_shard *ns = c->ns;
    c->state = C_OPEN;
    stat_inc(&ns->st.conns_open);
    c->born = ticks_now();
    if (c->o.idle_ns != 0) {
        c->last_rx = pith_now_ns();
        arm_idle(c, c->o.idle_ns);
    }
    c->in_cb++;
    c->cctx = c->o.handler->on_open != NULL ? c->o.handler->on_open(c->id, c->o.ctx) : c->o.ctx;
    c->opened = true;
    c->in_cb--;
    recv_arm(c);
    if (c->unsent > 0)
        send_kick(c);
    conn_maybe_free(c);
}

void conn_fail(struct conn *c, int reason)
{
    if (c->state == C_DEAD)
        return;
    c->state = C_DEAD;
    c->reason = reason;
    if (reason == -ECONNABORTED || reason == -ENOBUFS)
        c->reset_on_close = true;
    send_drop_output(c);
    recv_unstarve(c);
    if (c->recv_armed)
        recv_stop(c);
    if (c->sending)
        conn_cancel_op(c, &c->send_op);
    if (c->connect != NULL) /* the connect in flight, and its timeout with it */
        cancel_or_shut(c, fop_cancel(c->connect));
    if (c->idle_timer != 0)
        (void)pith_timer_cancel(c->idle_timer);
    if (c->linger_timer != 0)
        (void)pith_timer_cancel(c->linger_timer);
    c->idle_timer = c->linger_timer = 0;
    conn_maybe_free(c);
}

/* The bucket of a byte count: [2^(b-1), 2^b), 0 for none. */
static unsigned pow2_bucket(uint64_t v)
{
    unsigned b = v == 0 ? 0 : 64 - (unsigned)__builtin_clzll(v);
    return b < NET_POW2 ? b : NET_POW2 - 1;
}

/* A connection that opened ends: its life and its bytes into the shard's histograms. */
static void conn_count(struct net_shard *ns, const struct conn *c)
{
    uint64_t now = ticks_now(), life = now > c->born ? ticks_ns(now - c->born) : 0;
    stat_add(&ns->st.life[hist_bucket(life)], 1);
    stat_add(&ns->st.life_sum, life);
    stat_add(&ns->st.in[pow2_bucket(c->bytes_in)], 1);
    stat_add(&ns->st.in_sum, c->bytes_in);
    stat_add(&ns->st.out[pow2_bucket(c->bytes_out)], 1);
    stat_add(&ns->st.out_sum, c->bytes_out);
}

void conn_maybe_free(struct conn *c)
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
    if (c->opened) {
        stat_add(&ns->st.conns_open, (uint64_t)-1);
        conn_count(ns, c);
    }
    /* The id finds nothing from here: on_close sees the connection gone. */
    conn_release_slot(c);
    if (c->o.handler->on_close != NULL)
        c->o.handler->on_close(c->id, c->opened ? c->cctx : NULL, c->reason);
    pith_free(c->in);
    pith_free(c);
}

void conn_close_graceful(struct conn *c, int reason)
{
    if (c->state != C_OPEN)
        return;
    c->state = C_CLOSING;
    c->reason = reason;
    recv_stop(c);
    if (c->unsent == 0 && !c->sending) {
        conn_finish_close(c);
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
    struct conn *c = conn_owned(id, &err);
    if (c == NULL)
        return err;
    if (c->state == C_CONNECTING)
        conn_fail(c, 0);
    else
        conn_close_graceful(c, 0);
    return 0;
}

int pith_conn_abort(pith_conn_t id)
{
    int err = 0;
    struct conn *c = conn_owned(id, &err);
    if (c == NULL)
        return err;
    conn_fail(c, -ECONNABORTED);
    return 0;
}

int pith_conn_shutdown(pith_conn_t id)
{
    int err = 0;
    struct conn *c = conn_owned(id, &err);
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
    struct conn *c = conn_owned(id, &err);
    if (c == NULL)
        return err;
    if (c->state != C_OPEN)
        return -EPIPE;
    c->pause |= PAUSE_APP;
    recv_stop(c);
    return 0;
}

void conn_resume_task(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    struct conn *c = conn_by_id(id);
    if (c == NULL)
        return;
    c->resume_queued = false;
    c->in_cb++;
    recv_feed(c);
    c->in_cb--;
    recv_arm(c);
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
        recv_arm(c);
        return;
    }
    if (!c->resume_queued &&
        pith_submit(c->ns->shard, conn_resume_task, (void *)(uintptr_t)c->id) == 0)
        c->resume_queued = true;
}

int pith_conn_resume(pith_conn_t id)
{
    int err = 0;
    struct conn *c = conn_owned(id, &err);
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
    struct conn *c = conn_owned(id, &err);
    if (c == NULL)
        return err;
    memset(out, 0, sizeof(*out));
    out->shard = c->ns->shard;
    out->bytes_in = c->bytes_in;
    out->bytes_out = c->bytes_out;
    out->unsent = c->unsent;
    out->buffered = c->in_len;
    if (!c->peer_known) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        if (c->fd >= 0 && getpeername(c->fd, (struct sockaddr *)&ss, &len) == 0) {
            if (ss.ss_family == AF_INET) {
                struct sockaddr_in *a = (struct sockaddr_in *)&ss;
                c->peer_known = inet_ntop(AF_INET, &a->sin_addr, c->peer, sizeof(c->peer)) != NULL;
                c->peer_port = ntohs(a->sin_port);
            } else if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
                c->peer_known =
                    inet_ntop(AF_INET6, &a->sin6_addr, c->peer, sizeof(c->peer)) != NULL;
                c->peer_port = ntohs(a->sin6_port);
            }
        }
    }
    if (c->peer_known) {
        memcpy(out->peer, c->peer, sizeof(out->peer));
        out->peer_port = c->peer_port;
    }
    return 0;
}

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
            conn_close_graceful(c, -ESHUTDOWN);
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
    return fn == send_kick_task || fn == recv_rearm_task || fn == conn_resume_task;
}
