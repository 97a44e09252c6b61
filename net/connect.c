/* Outbound connections: pith_tcp_connect, and the address parsing that listen.c shares. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include "net.h"

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
