/* Outbound connections: pith_tcp_connect, and the address parsing that listen.c shares. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include "net.h"

/* The fop's part of a connect's record: what the outcome goes to, and the target, which
 * stays put until the kernel has read it. */
struct connect_op {
    struct conn *c;
    struct sockaddr_storage addr;
};

/* The connect's outcome (-ETIMEDOUT when its timeout cut it short), after its last CQE: the
 * connection opens, or ends with the error unless something ended it first. */
static void connect_done(struct fop *f, int res)
{
    struct conn *c = ((struct connect_op *)f->data)->c;
    c->connect = NULL; /* the record goes when this returns */
    c->ops--;
    if (c->state == C_CONNECTING) {
        if (res == 0) {
            stat_inc(&c->ns->st.connected);
            conn_start(c);
            return;
        }
        c->state = C_DEAD;
        c->reason = res;
    }
    conn_maybe_free(c);
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
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* Accepted sockets inherit it from the listener (open_socket). */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = conn_alloc(ns);
    struct fop *f =
        c != NULL ? fop_new(shard_fops(), sizeof(struct connect_op), connect_done) : NULL;
    struct io_uring_sqe *sqe = f != NULL ? fop_sqe(f, timeout_ns > 0) : NULL;
    if (sqe == NULL) {
        /* Nothing was queued and no callback has run: undone without a trace. */
        err = f != NULL ? -EBUSY : -ENOMEM;
        if (f != NULL)
            fop_discard(f);
        if (c != NULL) {
            conn_release_slot(c);
            pith_free(c);
        }
        close(fd);
        return err;
    }
    c->fd = fd;
    c->o = o;
    c->state = C_CONNECTING;
    c->recv_op.done = recv_cqe;
    c->send_op.done = send_cqe;
    struct connect_op *co = (struct connect_op *)f->data;
    co->c = c;
    co->addr = ss;
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&co->addr, sl);
    fop_arm(f, sqe, timeout_ns);
    c->connect = f;
    c->ops = 1;
    if (out != NULL)
        *out = c->id;
    return 0;
}
