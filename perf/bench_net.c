/* Net rows: a loopback TCP echo of 64-byte messages over 50 connections in a closed loop (each
 * connection sends, waits for its echo, sends again), driven by a load generator in a forked
 * child pinned to env->cpu_a, against a server pinned to env->cpu_b in this process.
 *
 * raw.epoll_echo_*: one thread, level-triggered epoll, one read(2) and one write(2) per
 * readiness (edge triggering, reading again only after a full buffer, measured the same within
 * noise). net.echo_*: pith_tcp_listen on one shard, on_data sends the bytes back with
 * pith_conn_send. The _2shards row runs two shards, the second on the generator's CPU.
 *
 * rps: requests completed in the measured window over its length; p50/p99/p999 are the
 * client's per-request latency in ns (send to the echo's last byte, read once per batch of
 * completions). cpu_us_per_req: this process's CPU time (CLOCK_PROCESS_CPUTIME_ID: every
 * thread, shards and stall detector included; never the child) over the window, divided by the
 * requests. On loopback each sender's system call also runs the receiver's TCP input, so both
 * sides pay some of the other's kernel work, the same for both servers. The engine rows use the
 * default config: shards busy-poll cfg.poll_ns (50 us) before sleeping, which counts as CPU
 * time; the cpu row also measures cfg.poll_ns = 0 and gives that figure in a note.
 *
 * The generator is a single-threaded io_uring loop: a send (its completion skipped) and a
 * receive per request, one system call per batch. An epoll loop of recv(2) and send(2)
 * (PITH_BENCH_NET_GEN=epoll) and multishot receives into provided buffers measured the same
 * within this box's noise: each lets the epoll server reach ~99% of its CPU, and each itself
 * spends ~99% of its own, since the loopback's TCP work is the bulk on both sides.
 * Every figure's note gives the server's and the generator's CPU share and how much other
 * work ran on the two CPUs (from /proc/stat), which tells a disturbed run. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#include <pith/net.h>

#include "bench.h"

#define CONNS     50
#define MSG_BYTES 64
/* The generator gives up when no echo came for this long: the server died or stalled. */
#define STALL_NS 5000000000ull
/* A measured window stops after this share of env->wait_s even short of n requests (the row
 * notes it), leaving the parent time to read the report. */
#define WINDOW_SHARE 0.5

/* What the generator hands back, in a shared mapping the parent reads once the child has
 * written 'E' (or 'F') on the report pipe; the pipe's write and read order the accesses. */
struct gen_report {
    uint64_t done;           /* requests completed in the measured window */
    uint64_t t_start, t_end; /* the window, CLOCK_MONOTONIC */
    uint64_t cpu_ns;         /* the generator's own CPU time over the window */
    bool timed_out;          /* the window ended at its time bound, short of n */
    char why[160];           /* the failure, after 'F' */
    int64_t samples[];       /* per-request latency, ns; done of them (at most n) */
};

/* Set before the fork; the child reads its copy. */
struct gen {
    int cpu;
    bool use_epoll;
    uint64_t n, warmup, window_max_ns;
    double wait_s;
    int ctl_rd, rep_wr; /* the child's ends: port in, progress out */
    struct gen_report *rep;
};

struct conn {
    int fd;
    unsigned got; /* echo bytes received of the message in flight */
    uint64_t seq, t_sent;
    unsigned char out[MSG_BYTES], in[MSG_BYTES];
};

struct load {
    struct gen *g;
    struct conn conns[CONNS];
    uint64_t completed, last_progress, cpu0;
    unsigned inflight; /* requests sent and not yet echoed */
    /* The window has closed: no more sends, only the echoes still in flight are awaited, so
     * that every socket is closed empty (a close with unread bytes would send a reset). */
    bool measuring, finished;
};

static uint64_t process_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void write_byte(int fd, char b)
{
    while (write(fd, &b, 1) < 0 && errno == EINTR)
        ;
}

/* The next message of a connection: eight words that differ per connection and per request,
 * so that a misrouted or stale echo cannot match. */
static void next_msg(struct conn *c, unsigned idx)
{
    c->seq++;
    for (unsigned k = 0; k < MSG_BYTES / 8; k++) {
        uint64_t w = (c->seq * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)idx << 40) ^ k;
        memcpy(c->out + 8 * k, &w, 8);
    }
    c->got = 0;
}

static int gen_fail(struct load *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int gen_fail(struct load *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->g->rep->why, sizeof(l->g->rep->why), fmt, ap);
    va_end(ap);
    return -1;
}

/* A whole echo arrived on connection idx at `now`: checks it, counts it, opens or closes the
 * measured window. Returns -1 on a mismatch. */
static int echo_done(struct load *l, unsigned idx, uint64_t now)
{
    struct conn *c = &l->conns[idx];
    struct gen_report *rep = l->g->rep;
    if (memcmp(c->in, c->out, MSG_BYTES) != 0)
        return gen_fail(l, "echo of request %llu on connection %u differs from what was sent",
                        (unsigned long long)c->seq, idx);
    l->inflight--;
    l->last_progress = now;
    if (l->finished)
        return 0;
    l->completed++;
    if (l->measuring) {
        if (rep->done < l->g->n)
            rep->samples[rep->done] = (int64_t)(now - c->t_sent);
        rep->done++;
        bool out_of_time = now - rep->t_start > l->g->window_max_ns;
        if (rep->done == l->g->n || out_of_time) {
            rep->t_end = now;
            rep->cpu_ns = process_cpu_ns() - l->cpu0;
            rep->timed_out = out_of_time && rep->done < l->g->n;
            l->finished = true;
            write_byte(l->g->rep_wr, 'E');
        }
    } else if (l->completed == l->g->warmup) {
        l->measuring = true;
        rep->t_start = now;
        l->cpu0 = process_cpu_ns();
        write_byte(l->g->rep_wr, 'S');
    }
    return 0;
}

static int stalled(struct load *l, uint64_t now)
{
    if (now - l->last_progress <= STALL_NS)
        return 0;
    return gen_fail(l, "no echo for %.0f s after %llu requests: the server stopped answering",
                    STALL_NS / 1e9, (unsigned long long)l->completed);
}

static int epoll_send(struct load *l, unsigned idx, uint64_t now)
{
    struct conn *c = &l->conns[idx];
    next_msg(c, idx);
    c->t_sent = now;
    /* 64 bytes into a socket with nothing unsent: a short send would mean a broken loop. */
    ssize_t w = send(c->fd, c->out, MSG_BYTES, MSG_NOSIGNAL);
    l->inflight++;
    if (w != MSG_BYTES)
        return gen_fail(l, "send on connection %u gave %zd: %s", idx, w,
                        w < 0 ? strerror(errno) : "short");
    return 0;
}

/* recv(2) on each readable connection, send(2) of the next message once an echo is whole. */
static int run_epoll(struct load *l)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return gen_fail(l, "epoll_create1: %s", strerror(errno));
    int rc = 0;
    for (unsigned i = 0; i < CONNS && rc == 0; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, l->conns[i].fd, &ev) != 0)
            rc = gen_fail(l, "epoll_ctl: %s", strerror(errno));
    }
    uint64_t now = bench_clock_ns();
    l->last_progress = now;
    for (unsigned i = 0; i < CONNS && rc == 0; i++)
        rc = epoll_send(l, i, now);
    struct epoll_event evs[CONNS];
    while (rc == 0 && (!l->finished || l->inflight)) {
        int k = epoll_wait(ep, evs, CONNS, 1000);
        now = bench_clock_ns();
        if (k < 0 && errno != EINTR)
            rc = gen_fail(l, "epoll_wait: %s", strerror(errno));
        else if (k <= 0)
            rc = stalled(l, now);
        for (int e = 0; e < k && rc == 0; e++) {
            unsigned idx = evs[e].data.u32;
            struct conn *c = &l->conns[idx];
            ssize_t r = recv(c->fd, c->in + c->got, MSG_BYTES - c->got, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                rc = gen_fail(l, "recv on connection %u: %s", idx,
                              r == 0 ? "the server closed it" : strerror(errno));
                break;
            }
            c->got += (unsigned)r;
            if (c->got < MSG_BYTES)
                continue;
            rc = echo_done(l, idx, now);
            if (rc == 0 && !l->finished)
                rc = epoll_send(l, idx, now);
        }
        if (rc == 0)
            rc = stalled(l, now);
    }
    close(ep);
    return rc;
}

#define UD_SEND 1u /* user_data: connection index << 1, low bit set for a send */

static struct io_uring_sqe *uring_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) {
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
    }
    return sqe;
}

/* Queues a receive of the rest of connection idx's echo. */
static int uring_recv(struct load *l, struct io_uring *ring, unsigned idx)
{
    struct conn *c = &l->conns[idx];
    struct io_uring_sqe *sqe = uring_sqe(ring);
    if (sqe == NULL)
        return gen_fail(l, "io_uring: no SQE");
    io_uring_prep_recv(sqe, c->fd, c->in + c->got, MSG_BYTES - c->got, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)idx << 1);
    return 0;
}

/* Queues the next message of connection idx and the receive of its echo. The send posts a
 * completion only if it fails; MSG_WAITALL has the kernel finish a short send itself. */
static int uring_send(struct load *l, struct io_uring *ring, unsigned idx, uint64_t now)
{
    struct conn *c = &l->conns[idx];
    next_msg(c, idx);
    c->t_sent = now;
    l->inflight++;
    struct io_uring_sqe *sqe = uring_sqe(ring);
    if (sqe == NULL)
        return gen_fail(l, "io_uring: no SQE");
    io_uring_prep_send(sqe, c->fd, c->out, MSG_BYTES, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_flags(sqe, IOSQE_CQE_SKIP_SUCCESS);
    io_uring_sqe_set_data64(sqe, (uint64_t)idx << 1 | UD_SEND);
    return uring_recv(l, ring, idx);
}

static int uring_cqe(struct load *l, struct io_uring *ring, const struct io_uring_cqe *cqe,
                     uint64_t now)
{
    unsigned idx = (unsigned)(cqe->user_data >> 1);
    struct conn *c = &l->conns[idx];
    if (cqe->user_data & UD_SEND)
        return gen_fail(l, "send on connection %u: %s", idx,
                        cqe->res < 0 ? strerror(-cqe->res) : "short");
    if (cqe->res <= 0)
        return gen_fail(l, "recv on connection %u: %s", idx,
                        cqe->res == 0 ? "the server closed it" : strerror(-cqe->res));
    c->got += (unsigned)cqe->res;
    if (c->got < MSG_BYTES)
        return uring_recv(l, ring, idx);
    int rc = echo_done(l, idx, now);
    if (rc == 0 && !l->finished)
        rc = uring_send(l, ring, idx, now);
    return rc;
}

static int run_uring(struct load *l)
{
    struct io_uring ring;
    struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
    int rc = io_uring_queue_init_params(4 * CONNS, &ring, &p);
    if (rc < 0) {
        memset(&p, 0, sizeof(p)); /* kernels before 6.1 */
        rc = io_uring_queue_init_params(4 * CONNS, &ring, &p);
    }
    if (rc < 0)
        return gen_fail(l, "io_uring_queue_init: %s", strerror(-rc));
    uint64_t now = bench_clock_ns();
    l->last_progress = now;
    for (unsigned i = 0; i < CONNS && rc == 0; i++)
        rc = uring_send(l, &ring, i, now);
    while (rc == 0 && (!l->finished || l->inflight)) {
        struct __kernel_timespec ts = {.tv_sec = 1};
        struct io_uring_cqe *cqe;
        int w = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &ts, NULL);
        now = bench_clock_ns();
        if (w < 0 && w != -ETIME && w != -EINTR) {
            rc = gen_fail(l, "io_uring_submit_and_wait_timeout: %s", strerror(-w));
            break;
        }
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe)
        {
            seen++;
            if (rc == 0)
                rc = uring_cqe(l, &ring, cqe, now);
        }
        io_uring_cq_advance(&ring, seen);
        if (rc == 0)
            rc = stalled(l, now);
    }
    io_uring_queue_exit(&ring);
    return rc;
}

static int connect_all(struct load *l, uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (unsigned i = 0; i < CONNS; i++) {
        struct conn *c = &l->conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            return gen_fail(l, "socket: %s", strerror(errno));
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* Loopback: the handshake completes in the call, the server's accept or not. */
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            return gen_fail(l, "connect to 127.0.0.1:%u (connection %u): %s", port, i,
                            strerror(errno));
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    }
    return 0;
}

/* The generator: waits for the port, connects, runs, reports, and never returns. */
static void gen_main(struct gen *g)
{
    static struct load l;
    l.g = g;
    for (unsigned i = 0; i < CONNS; i++)
        l.conns[i].fd = -1;
    /* Killed with its parent, so that a crashed pith-bench leaves no generator behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (g->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((unsigned)g->cpu, &set);
        sched_setaffinity(0, sizeof(set), &set);
    }
    uint16_t port = 0;
    struct pollfd pfd = {.fd = g->ctl_rd, .events = POLLIN};
    int rc = -1;
    if (poll(&pfd, 1, (int)(g->wait_s * 1000)) == 1 &&
        read(g->ctl_rd, &port, sizeof(port)) == (ssize_t)sizeof(port))
        rc = connect_all(&l, port);
    else
        _exit(0); /* the server did not start: the parent closed the pipe, nothing to report */
    if (rc == 0)
        rc = g->use_epoll ? run_epoll(&l) : run_uring(&l);
    if (!l.finished) /* else 'E' went at the window's end; a failed drain changes nothing */
        write_byte(g->rep_wr, 'F');
    for (unsigned i = 0; i < CONNS; i++)
        if (l.conns[i].fd >= 0)
            close(l.conns[i].fd);
    _exit(0);
}

/* --- the servers --- */

struct server {
    const char *label;
    /* Starts listening on 127.0.0.1 and returns the port, or a negative errno with why set. */
    int (*start)(struct server *s, const bench_env_t *env, char *why, size_t whylen);
    /* Stops it; notes what it saw under the row's name. Returns 0 or -1 (why set) when the
     * server saw errors that void the figures. */
    int (*stop)(struct server *s, const char *row, char *why, size_t whylen);
    /* Engine servers: shards and busy-poll; the epoll server ignores them. */
    unsigned shards;
    uint64_t poll_ns;
    bool default_poll;
    /* The epoll server. */
    int lfd, stop_fd;
    pthread_t thread;
    /* The engine server. */
    pith_listener_t listener;
    bench_stats_t before;
    _Atomic uint64_t send_errors, bad_closes;
    _Atomic int first_error;
};

static int listen_loopback(char *why, size_t whylen)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        return -errno;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 4096) != 0) {
        int err = errno;
        snprintf(why, whylen, "bind/listen on 127.0.0.1: %s", strerror(err));
        close(fd);
        return -err;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    return getsockname(fd, (struct sockaddr *)&sa, &len) == 0 ? ntohs(sa.sin_port) : -errno;
}

/* Output the kernel would not take at once: kept until the socket is writable, reading paused
 * meanwhile. In the closed loop of 64-byte messages it never happens; it keeps the server a
 * correct echo all the same. */
struct epoll_conn {
    bool open;
    unsigned char *pending;
    size_t npending;
};

static void epoll_close(int ep, struct epoll_conn *ec, int fd)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(ec->pending);
    *ec = (struct epoll_conn){0};
}

/* Writes buf[0..len), keeping what the kernel did not take. Returns -1 when the connection
 * failed and was closed. */
static int epoll_write(int ep, struct epoll_conn *ec, int fd, const unsigned char *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, buf + off, len - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        epoll_close(ep, ec, fd);
        return -1;
    }
    if (off == len)
        return 0;
    unsigned char *p = malloc(len - off);
    if (p == NULL) {
        epoll_close(ep, ec, fd);
        return -1;
    }
    memcpy(p, buf + off, len - off);
    ec->pending = p;
    ec->npending = len - off;
    struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    return 0;
}

#define EPOLL_MAX_FD 65536

static void *epoll_server(void *arg)
{
    struct server *s = arg;
    static struct epoll_conn conns[EPOLL_MAX_FD];
    static unsigned char buf[16384];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s->lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->lfd, &ev);
    ev.data.fd = s->stop_fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, s->stop_fd, &ev);
    struct epoll_event evs[256];
    for (bool run = true; run;) {
        int k = epoll_wait(ep, evs, 256, -1);
        for (int e = 0; e < k; e++) {
            int fd = evs[e].data.fd;
            if (fd == s->stop_fd) {
                run = false;
            } else if (fd == s->lfd) {
                int c;
                while ((c = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c >= EPOLL_MAX_FD) {
                        close(c);
                        continue;
                    }
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                    conns[c].open = true;
                }
            } else if (conns[fd].npending) {
                struct epoll_conn *ec = &conns[fd];
                unsigned char *p = ec->pending;
                size_t len = ec->npending;
                ec->pending = NULL;
                ec->npending = 0;
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &cev);
                epoll_write(ep, ec, fd, p, len);
                free(p);
            } else {
                ssize_t r = read(fd, buf, sizeof(buf));
                if (r > 0)
                    epoll_write(ep, &conns[fd], fd, buf, (size_t)r);
                else if (r == 0 || (errno != EAGAIN && errno != EINTR))
                    epoll_close(ep, &conns[fd], fd);
            }
        }
    }
    for (int fd = 0; fd < EPOLL_MAX_FD; fd++)
        if (conns[fd].open)
            epoll_close(ep, &conns[fd], fd);
    close(ep);
    return NULL;
}

static int epoll_server_start(struct server *s, const bench_env_t *env, char *why, size_t whylen)
{
    s->lfd = listen_loopback(why, whylen);
    if (s->lfd < 0)
        return s->lfd;
    s->stop_fd = eventfd(0, EFD_CLOEXEC);
    int rc = s->stop_fd < 0 ? errno : 0;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (env->cpu_b >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((unsigned)env->cpu_b, &set);
        pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
    }
    if (rc == 0)
        rc = pthread_create(&s->thread, &attr, epoll_server, s);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        snprintf(why, whylen, "starting the epoll server: %s", strerror(rc));
        close(s->lfd);
        if (s->stop_fd >= 0)
            close(s->stop_fd);
        return -rc;
    }
    return bound_port(s->lfd);
}

static int epoll_server_stop(struct server *s, const char *row, char *why, size_t whylen)
{
    (void)row, (void)why, (void)whylen;
    uint64_t one = 1;
    (void)!write(s->stop_fd, &one, sizeof(one));
    pthread_join(s->thread, NULL);
    close(s->stop_fd);
    close(s->lfd);
    return 0;
}

static size_t echo_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    struct server *s = cctx;
    int rc = pith_conn_send(c, data, len);
    if (rc != 0) {
        int none = 0;
        atomic_compare_exchange_strong(&s->first_error, &none, rc);
        atomic_fetch_add(&s->send_errors, 1);
    }
    return len;
}

static void *echo_open(pith_conn_t c, void *ctx)
{
    (void)c;
    return ctx;
}

/* The generator ends every connection with a clean close: anything else is a failure. */
static void echo_close(pith_conn_t c, void *cctx, int reason)
{
    (void)c;
    struct server *s = cctx;
    if (s != NULL && reason != 0) {
        int none = 0;
        atomic_compare_exchange_strong(&s->first_error, &none, reason);
        atomic_fetch_add(&s->bad_closes, 1);
    }
}

static const pith_tcp_handler_t echo_handler = {
    .on_open = echo_open,
    .on_data = echo_data,
    .on_close = echo_close,
};

static int engine_server_start(struct server *s, const bench_env_t *env, char *why, size_t whylen)
{
    unsigned cpus[2] = {(unsigned)env->cpu_b, (unsigned)env->cpu_a};
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)s->shards;
    cfg.cpus = cpus;
    cfg.ncpus = s->shards;
    if (!s->default_poll)
        cfg.poll_ns = s->poll_ns;
    s->poll_ns = cfg.poll_ns;
    int rc = bench_engine_start(&cfg, why, whylen);
    if (rc != 0)
        return rc;
    pith_listen_config_t lc = {
        .host = "127.0.0.1",
        .conn = {.handler = &echo_handler, .ctx = s},
    };
    rc = pith_tcp_listen(&lc, &s->listener);
    if (rc == 0)
        rc = pith_tcp_listener_port(s->listener);
    if (rc < 0) {
        snprintf(why, whylen, "pith_tcp_listen on 127.0.0.1: %s", pith_strerror(rc));
        bench_engine_stop(s->label);
        return rc;
    }
    s->before = bench_stats(0);
    return rc;
}

static int engine_server_stop(struct server *s, const char *row, char *why, size_t whylen)
{
    bench_stats_t d = bench_stats_delta(bench_stats(0), s->before);
    /* The generator has exited: its connections' ends of stream are on their way. Waiting for
     * them (up to 2 s) keeps the engine's stop from closing them with -ESHUTDOWN. */
    pith_net_stats_t ns[2] = {0};
    for (uint64_t until = bench_clock_ns() + 2000000000ull;;) {
        uint64_t open = 0;
        for (unsigned i = 0; i < s->shards && i < 2; i++)
            if (pith_net_stats(i, &ns[i]) == 0)
                open += ns[i].conns_open;
        if (open == 0 || bench_clock_ns() > until)
            break;
        struct timespec ts = {.tv_nsec = 1000000};
        nanosleep(&ts, NULL);
    }
    int rc = pith_tcp_unlisten(s->listener);
    if (rc != 0)
        bench_note("%s: pith_tcp_unlisten: %s", row, pith_strerror(rc));
    bench_engine_stop(row);
    for (unsigned i = 0; i < s->shards && i < 2; i++)
        bench_note("%s: shard %u accepted %llu, in %llu B, out %llu B, recv_nobufs %llu, "
                   "recv_rearms %llu, partial_sends %llu",
                   row, i, (unsigned long long)ns[i].accepted, (unsigned long long)ns[i].bytes_in,
                   (unsigned long long)ns[i].bytes_out, (unsigned long long)ns[i].recv_nobufs,
                   (unsigned long long)ns[i].recv_rearms, (unsigned long long)ns[i].partial_sends);
    bench_note("%s: shard 0 looped %llu times and slept %llu times (poll_ns %llu)", row,
               (unsigned long long)d.loops, (unsigned long long)d.sleeps,
               (unsigned long long)s->poll_ns);
    uint64_t errs = atomic_load(&s->send_errors), bad = atomic_load(&s->bad_closes);
    if (errs || bad) {
        snprintf(why, whylen,
                 "%llu failed sends, %llu connections closed with an error (first: %s)",
                 (unsigned long long)errs, (unsigned long long)bad,
                 pith_strerror(atomic_load(&s->first_error)));
        return -1;
    }
    return 0;
}

/* --- one run: fork the generator, start the server, measure, stop both --- */

struct echo_result {
    uint64_t n, done;
    double secs, rps, cpu_us_per_req, server_pct, client_pct;
    double others_pct; /* what else ran on the two CPUs, in % of one CPU */
    double p50, p99, p999;
    size_t samples;
    bool timed_out;
};

/* Busy time of one CPU in ns, from /proc/stat (user, nice, system, irq, softirq, steal, in
 * USER_HZ ticks): with the processes' own CPU times it tells how much else ran on the two CPUs
 * during a window. 0 when unreadable. */
static uint64_t cpu_busy_ns(int cpu)
{
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return 0;
    char line[256], want[16];
    snprintf(want, sizeof(want), "cpu%d ", cpu);
    uint64_t busy = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long v[8] = {0};
        if (strncmp(line, want, strlen(want)) != 0 ||
            sscanf(line + strlen(want), "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
            continue;
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        break;
    }
    fclose(f);
    long tck = sysconf(_SC_CLK_TCK);
    return tck > 0 ? busy * (1000000000ull / (uint64_t)tck) : 0;
}

/* Reads the generator's next progress byte, 0 when it died or time ran out. */
static char wait_byte(int fd, pid_t child, double wait_s)
{
    uint64_t deadline = bench_clock_ns() + (uint64_t)(wait_s * 1e9);
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int k = poll(&pfd, 1, 1000);
        char b;
        if (k == 1)
            return read(fd, &b, 1) == 1 ? b : 0;
        if (k < 0 && errno != EINTR)
            return 0;
        if (bench_clock_ns() > deadline || waitpid(child, NULL, WNOHANG) == child)
            return 0;
    }
}

/* Waits up to 5 s for the generator to exit, then kills it. */
static void reap(pid_t child)
{
    for (int i = 0; i < 500; i++) {
        if (waitpid(child, NULL, WNOHANG) != 0)
            return;
        struct timespec ts = {.tv_nsec = 10000000};
        nanosleep(&ts, NULL);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
}

static int echo_run(const bench_env_t *env, uint64_t n, struct server *s, const char *row,
                    struct echo_result *out, char *why, size_t whylen)
{
    if (env->cpu_a < 0 || env->cpu_b < 0) {
        snprintf(why, whylen, "needs two CPUs this process may run on");
        return BENCH_SKIP;
    }
    size_t maplen = sizeof(struct gen_report) + n * sizeof(int64_t);
    struct gen_report *rep =
        mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rep == MAP_FAILED) {
        snprintf(why, whylen, "mmap of %zu bytes: %s", maplen, strerror(errno));
        return BENCH_FAIL;
    }
    const char *genv = getenv("PITH_BENCH_NET_GEN");
    struct gen g = {.cpu = env->cpu_a,
                    .use_epoll = genv && strcmp(genv, "epoll") == 0,
                    .n = n,
                    .warmup = n / 10 > 1000 ? n / 10 : 1000,
                    .wait_s = env->wait_s,
                    .window_max_ns = (uint64_t)(env->wait_s * WINDOW_SHARE * 1e9),
                    .rep = rep};
    int ctl[2], rp[2];
    if (pipe2(ctl, O_CLOEXEC) != 0) {
        snprintf(why, whylen, "pipe: %s", strerror(errno));
        munmap(rep, maplen);
        return BENCH_FAIL;
    }
    if (pipe2(rp, O_CLOEXEC) != 0) {
        snprintf(why, whylen, "pipe: %s", strerror(errno));
        close(ctl[0]), close(ctl[1]);
        munmap(rep, maplen);
        return BENCH_FAIL;
    }
    /* Forked before the server starts, so the child copies a process with one thread. */
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        close(ctl[1]), close(rp[0]);
        g.ctl_rd = ctl[0];
        g.rep_wr = rp[1];
        gen_main(&g);
    }
    close(ctl[0]), close(rp[1]);
    int rc = 0;
    if (child < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        close(ctl[1]), close(rp[0]);
        munmap(rep, maplen);
        return BENCH_FAIL;
    }

    int port = s->start(s, env, why, whylen);
    if (port < 0) {
        close(ctl[1]); /* the generator reads end of file and exits */
        close(rp[0]);
        reap(child);
        munmap(rep, maplen);
        return BENCH_FAIL;
    }
    uint16_t p16 = (uint16_t)port;
    (void)!write(ctl[1], &p16, sizeof(p16));
    char b = wait_byte(rp[0], child, env->wait_s);
    uint64_t cpu0 = process_cpu_ns(), wall0 = bench_clock_ns();
    uint64_t busy0 = cpu_busy_ns(env->cpu_a) + cpu_busy_ns(env->cpu_b);
    if (b == 'S')
        b = wait_byte(rp[0], child, env->wait_s);
    uint64_t cpu1 = process_cpu_ns(), wall1 = bench_clock_ns();
    uint64_t busy1 = cpu_busy_ns(env->cpu_a) + cpu_busy_ns(env->cpu_b);
    close(ctl[1]);
    close(rp[0]);
    reap(child);
    if (b != 'E') {
        rc = BENCH_FAIL;
        snprintf(why, whylen, "load generator: %s",
                 b == 'F' ? rep->why
                 : b == 0 ? "died or timed out without a report"
                          : "sent an unexpected report");
    }
    char swhy[200] = "";
    if (s->stop(s, row, swhy, sizeof(swhy)) != 0 && rc == 0) {
        snprintf(why, whylen, "server: %s", swhy);
        rc = BENCH_FAIL;
    }
    if (rc == 0) {
        out->n = n;
        out->done = rep->done;
        out->timed_out = rep->timed_out;
        out->secs = (double)(rep->t_end - rep->t_start) / 1e9;
        out->rps = (double)rep->done / out->secs;
        out->cpu_us_per_req = (double)(cpu1 - cpu0) / 1e3 / (double)rep->done;
        out->server_pct = (double)(cpu1 - cpu0) / (double)(wall1 - wall0) * 100.0;
        out->client_pct = (double)rep->cpu_ns / (double)(rep->t_end - rep->t_start) * 100.0;
        /* Tick-sampled, so a few percent either way; it flags a run that shared its CPUs. */
        out->others_pct = ((double)(busy1 - busy0) - (double)(cpu1 - cpu0) - (double)rep->cpu_ns) /
                          (double)(wall1 - wall0) * 100.0;
        samples_t sm = {.v = rep->samples, .n = rep->done, .cap = n};
        samples_sort(&sm);
        result_t pr = {0};
        result_set_pcts(&pr, &sm);
        out->p50 = pr.p50;
        out->p99 = pr.p99;
        out->p999 = pr.p999;
        out->samples = pr.samples;
    }
    munmap(rep, maplen);
    return rc;
}

/* --- rows --- */

enum echo_kind { ECHO_EPOLL, ECHO_PITH1, ECHO_PITH2, ECHO_KINDS };

/* The rps row's run, reused by the cpu row of the same server and n: one run gives both. */
static struct {
    bool valid;
    uint64_t n;
    struct echo_result res;
} cache[ECHO_KINDS];

static void server_init(struct server *s, enum echo_kind kind)
{
    memset(s, 0, sizeof(*s));
    if (kind == ECHO_EPOLL) {
        s->label = "epoll";
        s->start = epoll_server_start;
        s->stop = epoll_server_stop;
    } else {
        s->label = "pith";
        s->start = engine_server_start;
        s->stop = engine_server_stop;
        s->shards = kind == ECHO_PITH2 ? 2 : 1;
        s->default_poll = true;
    }
}

static double default_poll_ns(void)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    return (double)cfg.poll_ns;
}

static const char *gen_label(void)
{
    const char *genv = getenv("PITH_BENCH_NET_GEN");
    return genv && strcmp(genv, "epoll") == 0 ? "an epoll loop" : "an io_uring loop";
}

static int echo_cached(const bench_env_t *env, enum echo_kind kind, uint64_t n, const char *row,
                       struct echo_result *res, char *why, size_t whylen)
{
    if (cache[kind].valid && cache[kind].n == n) {
        *res = cache[kind].res;
        return 0;
    }
    struct server s;
    server_init(&s, kind);
    int rc = echo_run(env, n, &s, row, res, why, whylen);
    if (rc != 0)
        return rc;
    cache[kind].valid = true;
    cache[kind].n = n;
    cache[kind].res = *res;
    if (res->timed_out)
        bench_note("%s: the window stopped at %.0f s after %llu of %llu requests", row,
                   env->wait_s * WINDOW_SHARE, (unsigned long long)res->done,
                   (unsigned long long)n);
    return 0;
}

static void fill_rps(result_t *r, const struct echo_result *res)
{
    r->value = res->rps;
    r->p50 = res->p50;
    r->p99 = res->p99;
    r->p999 = res->p999;
    r->samples = res->samples;
}

static void note_run(const char *row, const char *server, const bench_env_t *env,
                     const struct echo_result *res)
{
    bench_note("%s: %s; %d connections, %d B messages in a closed loop from %s in a child "
               "process on CPU %d; %llu requests in %.2f s; p50/p99/p999 are client latency in "
               "ns; server process CPU %.0f%% of one CPU (%.2f us/request), generator %.0f%%, "
               "other work on CPUs %d and %d %.0f%%%s",
               row, server, CONNS, MSG_BYTES, gen_label(), env->cpu_a,
               (unsigned long long)res->done, res->secs, res->server_pct, res->cpu_us_per_req,
               res->client_pct, env->cpu_a, env->cpu_b, res->others_pct,
               res->others_pct > 10 ? " (a busy machine: rps and latency are disturbed)" : "");
}

int bench_raw_epoll_echo_rps(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen)
{
    struct echo_result res;
    int rc = echo_cached(env, ECHO_EPOLL, n, r->name, &res, why, whylen);
    if (rc != 0)
        return rc;
    fill_rps(r, &res);
    char server[96];
    snprintf(server, sizeof(server), "one thread, level-triggered epoll, on CPU %d", env->cpu_b);
    note_run(r->name, server, env, &res);
    return 0;
}

int bench_raw_epoll_echo_cpu(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen)
{
    struct echo_result res;
    int rc = echo_cached(env, ECHO_EPOLL, n, r->name, &res, why, whylen);
    if (rc != 0)
        return rc;
    r->value = res.cpu_us_per_req;
    return 0;
}

int bench_net_echo_rps(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    struct echo_result res;
    int rc = echo_cached(env, ECHO_PITH1, n, r->name, &res, why, whylen);
    if (rc != 0)
        return rc;
    fill_rps(r, &res);
    char server[96];
    snprintf(server, sizeof(server), "1 shard on CPU %d, default config (poll_ns %.0f us)",
             env->cpu_b, default_poll_ns() / 1e3);
    note_run(r->name, server, env, &res);
    return 0;
}

int bench_net_echo_cpu(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    struct echo_result res;
    int rc = echo_cached(env, ECHO_PITH1, n, r->name, &res, why, whylen);
    if (rc != 0)
        return rc;
    r->value = res.cpu_us_per_req;
    /* The same run without busy polling: the shard sleeps as soon as it runs out of work. */
    struct server s;
    server_init(&s, ECHO_PITH1);
    s.default_poll = false;
    s.poll_ns = 0;
    struct echo_result np;
    char nwhy[200] = "";
    rc = echo_run(env, n, &s, r->name, &np, nwhy, sizeof(nwhy));
    if (rc == 0)
        bench_note("%s: %.2f us/request with the default poll_ns (%.0f us), %.2f us/request "
                   "(%.0f rps, p99 %.0f ns, server %.0f%% of a CPU, other work %.0f%%) with "
                   "poll_ns = 0",
                   r->name, res.cpu_us_per_req, default_poll_ns() / 1e3, np.cpu_us_per_req, np.rps,
                   np.p99, np.server_pct, np.others_pct);
    else
        bench_note("%s: the poll_ns = 0 run failed: %s", r->name, nwhy);
    return 0;
}

int bench_net_echo_2shards_rps(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                               size_t whylen)
{
    struct echo_result res;
    int rc = echo_cached(env, ECHO_PITH2, n, r->name, &res, why, whylen);
    if (rc != 0)
        return rc;
    fill_rps(r, &res);
    char server[160];
    snprintf(server, sizeof(server),
             "2 shards (SO_REUSEPORT) on CPUs %d and %d, the second shared with the generator",
             env->cpu_b, env->cpu_a);
    note_run(r->name, server, env, &res);
    return 0;
}
