/* TCP (pith/net.h) against plain sockets on 127.0.0.1: echo over many connections with both
 * spreads, partial sends, a starved receive buffer ring, peer resets, limits, watermarks,
 * half-close, idle and connect timeouts, outbound connects, actor mode, engine stop with
 * connections open, API errors, and zero-copy and vectored sends. Clients run on the test thread
 * with nonblocking sockets, every wait bounded by poll; the server's callbacks record what they
 * see in atomics that the test thread checks afterwards: nothing asserts on a shard thread. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

#define KIB      ((size_t)1024)
#define MIB      (1024 * KIB)
#define LOOPBACK "127.0.0.1"

/* ---- data, calls on a shard, counters ---- */

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed | 1;
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(rng_next(&x) >> 24);
}

static uint8_t *random_bytes(size_t n, uint64_t seed)
{
    uint8_t *p = malloc(n ? n : 1);
    cr_assert_not_null(p);
    fill_random(p, n, seed);
    return p;
}

static void *call_on(unsigned shard, pith_call_fn_t fn, void *arg)
{
    void *res = NULL;
    int rc = pith_call_wait(shard, fn, arg, &res);
    cr_assert_eq(rc, 0, "pith_call_wait(%u): %d (%s)", shard, rc, pith_strerror(rc));
    return res;
}

static pith_net_stats_t stats_of(unsigned shard)
{
    pith_net_stats_t s;
    int rc = pith_net_stats(shard, &s);
    cr_assert_eq(rc, 0, "pith_net_stats(%u): %d (%s)", shard, rc, pith_strerror(rc));
    return s;
}

/* The counters summed over every shard. */
static pith_net_stats_t stats_sum(void)
{
    pith_net_stats_t t;
    memset(&t, 0, sizeof t);
    for (unsigned i = 0; i < pith_shard_count(); i++) {
        pith_net_stats_t s = stats_of(i);
        t.conns_open += s.conns_open;
        t.accepted += s.accepted;
        t.connected += s.connected;
        t.refused += s.refused;
        t.over_limit += s.over_limit;
        t.idle_closed += s.idle_closed;
        t.resets += s.resets;
        t.bytes_in += s.bytes_in;
        t.bytes_out += s.bytes_out;
        t.recv_nobufs += s.recv_nobufs;
        t.recv_rearms += s.recv_rearms;
        t.accept_rearms += s.accept_rearms;
        t.partial_sends += s.partial_sends;
        t.paused += s.paused;
    }
    return t;
}

/* 1000 clients and their 1000 server ends do not fit under the usual soft limit of 1024. */
static void raise_nofile(rlim_t need)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0, "setrlimit: %s", strerror(errno));
        cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    cr_assert_geq(rl.rlim_cur, need, "RLIMIT_NOFILE is %llu, the test needs %llu",
                  (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

/* More than the kernel holds for one connection whose client reads nothing: twice the ceiling
 * of a socket's send buffer (tcp_wmem's third field), and at least 8 MiB. */
static size_t beyond_kernel(void)
{
    unsigned long lo, def, max = 4 * MIB;
    FILE *f = fopen("/proc/sys/net/ipv4/tcp_wmem", "r");
    if (f != NULL) {
        if (fscanf(f, "%lu %lu %lu", &lo, &def, &max) != 3)
            max = 4 * MIB;
        fclose(f);
    }
    return 2 * max > 8 * MIB ? 2 * max : 8 * MIB;
}

/* ---- clients: plain sockets on the test thread ---- */

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* Polls one descriptor for `events` until `until`: its revents, 0 at the deadline. */
static short wait_fd(int fd, short events, uint64_t until)
{
    for (;;) {
        uint64_t now = pith_now_ns();
        if (now >= until)
            return 0;
        uint64_t ms = (until - now) / MS + 1;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, ms > 1000 ? 1000 : (int)ms);
        if (n > 0)
            return p.revents;
        cr_assert(n == 0 || errno == EINTR, "poll: %s", strerror(errno));
    }
}

/* A nonblocking socket whose connect to 127.0.0.1:port has been started. rcvbuf > 0 sets
 * SO_RCVBUF first (it bounds the window the server may fill). */
static int client_start(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    if (rcvbuf > 0)
        cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    /* Small writes go at once (the tests wait for each to arrive before the next). */
    int one = 1;
    cr_assert_eq(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), 0);
    struct sockaddr_in a = loopback(port);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    cr_assert(rc == 0 || errno == EINPROGRESS, "connect: %s", strerror(errno));
    return fd;
}

/* How the connect started on fd ended: 0 or the errno (bounded wait). */
static int client_connected(int fd)
{
    short ev = wait_fd(fd, POLLOUT, test_wait_deadline());
    cr_assert_neq(ev, 0, "a connect never completed");
    int err = 0;
    socklen_t len = sizeof err;
    cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
    return err;
}

/* A connected nonblocking client. */
static int client_open(int port, int rcvbuf)
{
    int fd = client_start(port, rcvbuf);
    int err = client_connected(fd);
    cr_assert_eq(err, 0, "connect to port %d: %s", port, strerror(err));
    return fd;
}

static int local_port(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

static void client_write(int fd, const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t until = test_wait_deadline();
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        cr_assert(k < 0 && (errno == EAGAIN || errno == EINTR), "send: %s with %zu bytes left",
                  strerror(errno), n);
        cr_assert_neq(wait_fd(fd, POLLOUT, until), 0, "send blocked with %zu bytes left", n);
    }
}

/* Reads exactly n bytes into out. */
static void client_read(int fd, void *out, size_t n)
{
    uint8_t *p = out;
    size_t want = n;
    uint64_t until = test_wait_deadline();
    while (n > 0) {
        ssize_t k = recv(fd, p, n, 0);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        cr_assert_neq(k, 0, "end of stream after %zu of %zu bytes", want - n, want);
        cr_assert(errno == EAGAIN || errno == EINTR, "recv: %s after %zu of %zu bytes",
                  strerror(errno), want - n, want);
        cr_assert_neq(wait_fd(fd, POLLIN, until), 0, "timed out after %zu of %zu bytes", want - n,
                      want);
    }
}

/* Reads n bytes and compares them with expect[0..n). */
static void client_expect(int fd, const uint8_t *expect, size_t n)
{
    size_t chunk = 256 * KIB, at = 0;
    uint8_t *buf = malloc(chunk);
    cr_assert_not_null(buf);
    while (at < n) {
        size_t k = n - at < chunk ? n - at : chunk;
        client_read(fd, buf, k);
        if (memcmp(buf, expect + at, k) != 0) {
            size_t i = 0;
            while (buf[i] == expect[at + i])
                i++;
            cr_assert_fail("byte %zu of %zu differs: %#x, expected %#x", at + i, n, buf[i],
                           expect[at + i]);
        }
        at += k;
    }
    free(buf);
}

/* Waits, bounded by `until`, for the stream to end with no more bytes: 0 at end of stream,
 * -errno when it ended with an error, 1 when it had not ended by `until`. */
static int client_end_by(int fd, uint64_t until)
{
    char b[512];
    for (;;) {
        ssize_t k = recv(fd, b, sizeof b, 0);
        if (k == 0)
            return 0;
        cr_assert(k < 0, "%zd bytes came where the stream should end", k);
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        if (wait_fd(fd, POLLIN, until) == 0)
            return 1;
    }
}

static int client_end(int fd)
{
    int r = client_end_by(fd, test_wait_deadline());
    cr_assert_neq(r, 1, "the stream never ended");
    return r;
}

/* Closes with a reset: SO_LINGER {1, 0}. */
static void client_reset(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd);
}

/* Reads until the stream ends, comparing what comes with expect[0..max): the bytes read, and in
 * *end 0 for an end of stream or -errno. */
static size_t client_drain(int fd, const uint8_t *expect, size_t max, int *end)
{
    uint8_t *buf = malloc(64 * KIB);
    cr_assert_not_null(buf);
    size_t got = 0;
    uint64_t until = test_wait_deadline();
    for (;;) {
        ssize_t k = recv(fd, buf, 64 * KIB, 0);
        if (k > 0) {
            cr_assert_leq(got + (size_t)k, max, "more bytes than were sent");
            cr_assert_eq(memcmp(buf, expect + got, (size_t)k), 0, "bytes %zu..%zu differ", got,
                         got + (size_t)k);
            got += (size_t)k;
            continue;
        }
        if (k == 0) {
            *end = 0;
            break;
        }
        if (errno != EAGAIN && errno != EINTR) {
            *end = -errno;
            break;
        }
        cr_assert_neq(wait_fd(fd, POLLIN, until), 0, "the stream never ended (%zu bytes read)",
                      got);
    }
    free(buf);
    return got;
}

/* ---- the server side: callbacks that record what they see ---- */

#define TRACK_MAX 64

/* One server connection as its callbacks saw it. */
struct sconn {
    _Atomic uint64_t id;
    atomic_uint opens, closes, eofs, drains;
    atomic_int reason;
    _Atomic uint64_t data_bytes;       /* consumed by on_data */
    _Atomic uint64_t data_calls, held; /* on_data calls; bytes the last one left */
    _Atomic uint64_t open_ns, close_ns;
    char peer[46]; /* pith_conn_info in on_open: written before `opens` counts it */
    int peer_port;
};

static const int reasons[] = {0,          -ECONNRESET,   -ETIMEDOUT,    -ENOBUFS,
                              -ESHUTDOWN, -ECONNABORTED, -ECONNREFUSED, -EPIPE};
#define NREASONS (sizeof reasons / sizeof reasons[0])

static struct server {
    void *expect_ctx;
    atomic_uint opens, closes, eofs, drains;
    atomic_uint wrong_shard;    /* a callback ran off its connection's shard */
    atomic_uint bad_ctx;        /* on_open's ctx or on_close's cctx was not what it should be */
    atomic_uint alive_in_close; /* the id still named a connection in on_close */
    atomic_uint by_reason[NREASONS];
    atomic_uint odd_reasons;
    atomic_int odd_reason;
    atomic_uint send_errs;
    atomic_int send_err; /* the last error a send in a callback returned */
    atomic_uint ntracked;
    struct sconn conns[TRACK_MAX];
    struct sconn rest; /* every connection past TRACK_MAX */
    /* Called at the end of on_open. */
    void (*open_hook)(pith_conn_t c, struct sconn *s);
} srv;

/* What open hooks send: set before the listener starts. */
static uint8_t *payload;
static size_t payload_len;

static bool on_own_shard(pith_conn_t c)
{
    return pith_shard_id() >= 0 && (unsigned)pith_shard_id() == pith_conn_shard(c);
}

static void note_send(int rc)
{
    if (rc != 0) {
        atomic_fetch_add(&srv.send_errs, 1);
        atomic_store(&srv.send_err, rc);
    }
}

static void *srv_open(pith_conn_t c, void *ctx)
{
    if (!on_own_shard(c))
        atomic_fetch_add(&srv.wrong_shard, 1);
    if (ctx != srv.expect_ctx)
        atomic_fetch_add(&srv.bad_ctx, 1);
    unsigned i = atomic_fetch_add(&srv.ntracked, 1);
    struct sconn *s = i < TRACK_MAX ? &srv.conns[i] : &srv.rest;
    pith_conn_info_t info;
    if (s != &srv.rest && pith_conn_info(c, &info) == 0) {
        memcpy(s->peer, info.peer, sizeof s->peer);
        s->peer_port = info.peer_port;
    }
    atomic_store(&s->id, c);
    atomic_store(&s->open_ns, pith_now_ns());
    atomic_fetch_add(&s->opens, 1);
    atomic_fetch_add(&srv.opens, 1);
    if (srv.open_hook != NULL)
        srv.open_hook(c, s);
    return s;
}

static size_t echo_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    struct sconn *s = cctx;
    if (!on_own_shard(c))
        atomic_fetch_add(&srv.wrong_shard, 1);
    note_send(pith_conn_send(c, data, len));
    /* After the send: a test that sees the count also sees the send's outcome. */
    atomic_fetch_add(&s->data_bytes, len);
    return len;
}

/* Consumes nothing: the input stays held. */
static size_t hold_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    (void)c;
    (void)cctx;
    (void)data;
    (void)len;
    return 0;
}

static void srv_drain(pith_conn_t c, void *cctx)
{
    struct sconn *s = cctx;
    if (!on_own_shard(c))
        atomic_fetch_add(&srv.wrong_shard, 1);
    atomic_fetch_add(&s->drains, 1);
    atomic_fetch_add(&srv.drains, 1);
}

static void srv_close(pith_conn_t c, void *cctx, int reason)
{
    struct sconn *s = cctx;
    if (!on_own_shard(c))
        atomic_fetch_add(&srv.wrong_shard, 1);
    if (s == NULL || (s != &srv.rest && atomic_load(&s->id) != c)) {
        atomic_fetch_add(&srv.bad_ctx, 1);
        s = &srv.rest;
    }
    pith_conn_info_t info;
    if (pith_conn_info(c, &info) != -ENOENT)
        atomic_fetch_add(&srv.alive_in_close, 1);
    atomic_store(&s->reason, reason);
    atomic_store(&s->close_ns, pith_now_ns());
    atomic_fetch_add(&s->closes, 1);
    unsigned k = 0;
    while (k < NREASONS && reasons[k] != reason)
        k++;
    if (k < NREASONS) {
        atomic_fetch_add(&srv.by_reason[k], 1);
    } else {
        atomic_fetch_add(&srv.odd_reasons, 1);
        atomic_store(&srv.odd_reason, reason);
    }
    atomic_fetch_add(&srv.closes, 1);
}

static unsigned closes_with(int reason)
{
    for (unsigned k = 0; k < NREASONS; k++)
        if (reasons[k] == reason)
            return atomic_load(&srv.by_reason[k]);
    return 0;
}

/* Echoes; the end of stream closes after the queued output (no on_eof). */
static const pith_tcp_handler_t echo_handler = {
    .on_open = srv_open,
    .on_data = echo_data,
    .on_drain = srv_drain,
    .on_close = srv_close,
};

/* The server's callbacks ran where they should, with the right pointers, and no send in them
 * failed. */
static void assert_server_clean(void)
{
    cr_assert_eq(atomic_load(&srv.wrong_shard), 0, "callbacks ran off their connection's shard");
    cr_assert_eq(atomic_load(&srv.bad_ctx), 0, "a callback got the wrong ctx or cctx");
    cr_assert_eq(atomic_load(&srv.alive_in_close), 0,
                 "an id still named its connection in on_close");
    cr_assert_eq(atomic_load(&srv.odd_reasons), 0, "on_close got reason %d",
                 atomic_load(&srv.odd_reason));
    cr_assert_eq(atomic_load(&srv.send_errs), 0, "a send in a callback failed: %d (%s)",
                 atomic_load(&srv.send_err), pith_strerror(atomic_load(&srv.send_err)));
}

static void assert_closed(const struct sconn *s, int reason)
{
    cr_assert_eq(atomic_load(&s->opens), 1);
    cr_assert_eq(atomic_load(&s->closes), 1, "on_close ran %u times", atomic_load(&s->closes));
    cr_assert_eq(atomic_load(&s->reason), reason, "on_close reason %d (%s), expected %d (%s)",
                 atomic_load(&s->reason), pith_strerror(atomic_load(&s->reason)), reason,
                 pith_strerror(reason));
}

static pith_listen_config_t listen_config(const pith_tcp_handler_t *h)
{
    pith_listen_config_t lc;
    memset(&lc, 0, sizeof lc);
    lc.host = LOOPBACK;
    lc.conn.handler = h;
    lc.conn.ctx = &srv;
    srv.expect_ctx = &srv;
    return lc;
}

static pith_listener_t listen_on(const pith_listen_config_t *lc, int *port)
{
    pith_listener_t l = 0;
    int rc = pith_tcp_listen(lc, &l);
    cr_assert_eq(rc, 0, "pith_tcp_listen: %d (%s)", rc, pith_strerror(rc));
    cr_assert_neq(l, 0);
    *port = pith_tcp_listener_port(l);
    cr_assert_gt(*port, 0, "pith_tcp_listener_port: %d", *port);
    return l;
}

/* ---- the public calls on a connection, run on a shard ---- */

enum conn_op { OP_SEND, OP_CLOSE, OP_ABORT, OP_SHUTDOWN, OP_PAUSE, OP_RESUME, OP_INFO };

struct conn_call {
    pith_conn_t c;
    enum conn_op op;
    const void *data;
    size_t len;
    pith_conn_info_t info;
};

static void *conn_call_fn(void *arg)
{
    struct conn_call *cc = arg;
    int rc = -EINVAL;
    switch (cc->op) {
    case OP_SEND:
        rc = pith_conn_send(cc->c, cc->data, cc->len);
        break;
    case OP_CLOSE:
        rc = pith_conn_close(cc->c);
        break;
    case OP_ABORT:
        rc = pith_conn_abort(cc->c);
        break;
    case OP_SHUTDOWN:
        rc = pith_conn_shutdown(cc->c);
        break;
    case OP_PAUSE:
        rc = pith_conn_pause(cc->c);
        break;
    case OP_RESUME:
        rc = pith_conn_resume(cc->c);
        break;
    case OP_INFO:
        rc = pith_conn_info(cc->c, &cc->info);
        break;
    }
    return (void *)(intptr_t)rc;
}

/* op on connection c, run on `shard`. */
static int conn_do_on(unsigned shard, pith_conn_t c, enum conn_op op, const void *data, size_t len)
{
    struct conn_call cc = {.c = c, .op = op, .data = data, .len = len};
    return (int)(intptr_t)call_on(shard, conn_call_fn, &cc);
}

/* op on connection c, run on its own shard. */
static int conn_do(pith_conn_t c, enum conn_op op, const void *data, size_t len)
{
    return conn_do_on(pith_conn_shard(c), c, op, data, len);
}

static pith_conn_info_t conn_info(pith_conn_t c)
{
    struct conn_call cc = {.c = c, .op = OP_INFO};
    int rc = (int)(intptr_t)call_on(pith_conn_shard(c), conn_call_fn, &cc);
    cr_assert_eq(rc, 0, "pith_conn_info: %d (%s)", rc, pith_strerror(rc));
    return cc.info;
}

/* ---- many clients, each echoing messages of random sizes ---- */

struct echo_client {
    int fd;
    bool connecting;
    unsigned round;
    size_t off, len, sent, got;
};

static void echo_pick(struct echo_client *c, uint64_t *x, size_t max_len)
{
    c->len = 1 + (size_t)(rng_next(x) % max_len);
    c->off = (size_t)(rng_next(x) % max_len);
    c->sent = c->got = 0;
}

/* n clients connect to port at once; each sends `rounds` messages of 1..max_len random bytes,
 * reading each one's echo back (compared byte for byte) before it sends the next. All run
 * together through one poll loop; then every client closes. Returns the bytes echoed. */
static uint64_t echo_clients(int port, unsigned n, unsigned rounds, size_t max_len, uint64_t seed)
{
    uint8_t *pool = random_bytes(2 * max_len, seed);
    uint8_t *scratch = malloc(max_len);
    struct echo_client *cl = calloc(n, sizeof *cl);
    struct pollfd *pf = calloc(n, sizeof *pf);
    unsigned *who = calloc(n, sizeof *who);
    cr_assert(scratch != NULL && cl != NULL && pf != NULL && who != NULL);
    uint64_t x = seed * 2 + 1, total = 0;
    for (unsigned i = 0; i < n; i++) {
        cl[i].fd = client_start(port, 0);
        cl[i].connecting = true;
        echo_pick(&cl[i], &x, max_len);
    }
    unsigned done = 0;
    uint64_t until = test_wait_deadline();
    while (done < n) {
        cr_assert_lt(pith_now_ns(), until, "%u of %u echo clients done at the deadline", done, n);
        unsigned m = 0;
        for (unsigned i = 0; i < n; i++) {
            struct echo_client *c = &cl[i];
            if (c->round == rounds)
                continue;
            pf[m].fd = c->fd;
            pf[m].events =
                c->connecting ? POLLOUT : (short)(POLLIN | (c->sent < c->len ? POLLOUT : 0));
            pf[m].revents = 0;
            who[m++] = i;
        }
        int k = poll(pf, m, 100);
        cr_assert(k >= 0 || errno == EINTR, "poll: %s", strerror(errno));
        for (unsigned j = 0; j < m && k > 0; j++) {
            if (pf[j].revents == 0)
                continue;
            unsigned i = who[j];
            struct echo_client *c = &cl[i];
            if (c->connecting) {
                int err = 0;
                socklen_t len = sizeof err;
                cr_assert_eq(getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
                cr_assert_eq(err, 0, "client %u: connect: %s", i, strerror(err));
                c->connecting = false;
                continue;
            }
            if ((pf[j].revents & POLLOUT) && c->sent < c->len) {
                ssize_t w = send(c->fd, pool + c->off + c->sent, c->len - c->sent, MSG_NOSIGNAL);
                cr_assert(w > 0 || errno == EAGAIN, "client %u: send: %s", i, strerror(errno));
                if (w > 0)
                    c->sent += (size_t)w;
            }
            if (pf[j].revents & (POLLIN | POLLERR | POLLHUP)) {
                ssize_t r = recv(c->fd, scratch, c->len - c->got, 0);
                cr_assert_neq(r, 0, "client %u round %u: end of stream after %zu of %zu bytes", i,
                              c->round, c->got, c->len);
                cr_assert(r > 0 || errno == EAGAIN, "client %u: recv: %s", i, strerror(errno));
                if (r > 0) {
                    cr_assert_eq(memcmp(scratch, pool + c->off + c->got, (size_t)r), 0,
                                 "client %u round %u: bytes %zu..%zu of the echo differ", i,
                                 c->round, c->got, c->got + (size_t)r);
                    c->got += (size_t)r;
                    total += (uint64_t)r;
                    if (c->got == c->len) {
                        if (++c->round == rounds)
                            done++;
                        else
                            echo_pick(c, &x, max_len);
                    }
                }
            }
        }
    }
    for (unsigned i = 0; i < n; i++)
        close(cl[i].fd);
    free(who);
    free(pf);
    free(cl);
    free(scratch);
    free(pool);
    return total;
}

/* ---- 1: echo over many connections, both spreads ---- */

static void echo_many(pith_tcp_spread_t spread)
{
    unsigned n = (unsigned)scaled(1000);
    raise_nofile(2 * n + 128);
    pith_config_t cfg = test_config(2);
    /* The per-shard bound from the completion queue: with io_entries 512 it is far above n
     * even if every connection lands on one shard. */
    cfg.io_entries = 512;
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.spread = spread;
    lc.acceptor_shard = 1;
    lc.max_conns = n + 16;
    int port;
    pith_listener_t l = listen_on(&lc, &port);

    uint64_t bytes = echo_clients(port, n, 2, 64 * KIB, 0x9e3779b97f4a7c15u ^ spread);

    TEST_WAIT_FOR(atomic_load(&srv.closes) == n);
    TEST_WAIT_FOR(stats_sum().conns_open == 0);
    pith_net_stats_t s0 = stats_of(0), s1 = stats_of(1), t = stats_sum();
    cr_assert_eq(t.accepted, n, "accepted %" PRIu64 " + %" PRIu64 ", expected %u", s0.accepted,
                 s1.accepted, n);
    cr_assert_eq(t.refused, 0);
    cr_assert_eq(t.resets, 0);
    cr_assert_eq(t.over_limit, 0);
    cr_assert_eq(t.bytes_in, bytes, "bytes_in %" PRIu64 ", clients sent %" PRIu64, t.bytes_in,
                 bytes);
    cr_assert_eq(t.bytes_out, bytes);
    /* The acceptor breaks ties round-robin, so any two connections already reach both shards;
     * the kernel's hash spreads REUSEPORT connections, certain to touch both only for many. */
    if (spread == PITH_TCP_ACCEPTOR || n >= 100)
        cr_assert(s0.accepted > 0 && s1.accepted > 0,
                  "spread: %" PRIu64 " on shard 0, %" PRIu64 " on shard 1", s0.accepted,
                  s1.accepted);
    cr_assert_eq(atomic_load(&srv.opens), n);
    cr_assert_eq(closes_with(0), n, "%u of %u closes had reason 0", closes_with(0), n);
    assert_server_clean();
    cr_assert_eq(pith_tcp_unlisten(l), 0);
    test_stop(NULL);
}

Test(net, echo_1000_connections_reuseport_is_byte_exact_and_all_close, .timeout = 60)
{
    echo_many(PITH_TCP_REUSEPORT);
}

Test(net, echo_1000_connections_acceptor_is_byte_exact_and_all_close, .timeout = 60)
{
    echo_many(PITH_TCP_ACCEPTOR);
}

/* ---- 2: partial sends ---- */

static void send_payload_hook(pith_conn_t c, struct sconn *s)
{
    (void)s;
    note_send(pith_conn_send(c, payload, payload_len));
}

Test(net, a_large_send_to_a_late_reader_is_sent_in_parts_and_arrives_whole, .timeout = 30)
{
    payload_len = beyond_kernel();
    payload = random_bytes(payload_len, 2);
    srv.open_hook = send_payload_hook;
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.conn.max_buffered = 4 * payload_len;
    lc.conn.high_watermark = 2 * payload_len; /* no pause: only the send queue is under test */
    int port;
    listen_on(&lc, &port);

    /* A small window, and twice what the kernel's send buffer may grow to: the payload cannot
     * all leave before the client reads. */
    int fd = client_open(port, 64 * KIB);
    TEST_WAIT_FOR(stats_of(0).partial_sends > 0);
    pith_conn_info_t info = conn_info(atomic_load(&srv.conns[0].id));
    cr_assert_gt(info.unsent, 0, "nothing left in the send queue");
    cr_assert_eq(info.unsent + info.bytes_out, payload_len, "unsent %zu + sent %" PRIu64,
                 info.unsent, info.bytes_out);

    client_expect(fd, payload, payload_len);
    TEST_WAIT_FOR(stats_of(0).bytes_out == payload_len);
    info = conn_info(atomic_load(&srv.conns[0].id));
    cr_assert_eq(info.unsent, 0);
    cr_assert_eq(info.bytes_out, payload_len);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);
    cr_assert_eq(stats_of(0).paused, 0);
    cr_assert_eq(stats_of(0).conns_open, 0);
    assert_server_clean();
    test_stop(NULL);
    free(payload);
}

/* ---- 3: a starved buffer ring ---- */

Test(net, a_tiny_buffer_ring_runs_out_rearms_and_keeps_every_byte, .timeout = 60)
{
    pith_config_t cfg = test_config(1);
    cfg.net_bufs = 1;
    cfg.net_buf_size = 64;
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    listen_on(&lc, &port);

    unsigned n = 4;
    uint64_t bytes = echo_clients(port, n, 2, scaled(64 * KIB), 3);

    TEST_WAIT_FOR(atomic_load(&srv.closes) == n);
    pith_net_stats_t s = stats_of(0);
    cr_assert_gt(s.recv_nobufs, 0, "no receive ran out of buffers");
    cr_assert_gt(s.recv_rearms, 0, "no receive was armed again");
    cr_assert_eq(s.bytes_in, bytes);
    cr_assert_eq(s.bytes_out, bytes);
    cr_assert_eq(s.conns_open, 0);
    cr_assert_eq(closes_with(0), n);
    assert_server_clean();
    test_stop(NULL);
}

/* ---- 4: the peer resets ---- */

Test(net, a_peer_reset_mid_stream_closes_with_econnreset, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    size_t len = beyond_kernel();
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.conn.max_buffered = 4 * len;
    lc.conn.high_watermark = 2 * len;
    int port;
    listen_on(&lc, &port);

    /* The client sends more than the kernel holds and reads none of the echo: the server's
     * output backs up in its queue, and the client's own receive queue holds unread bytes. */
    uint8_t *data = random_bytes(len, 4);
    int fd = client_open(port, 16 * KIB);
    client_write(fd, data, len);
    struct sconn *s = &srv.conns[0];
    TEST_WAIT_FOR(atomic_load(&s->data_bytes) == len);
    pith_conn_info_t info = conn_info(atomic_load(&s->id));
    cr_assert_gt(info.unsent, 0, "the server's output did not back up");
    cr_assert_eq(atomic_load(&s->closes), 0);

    client_reset(fd);
    TEST_WAIT_FOR(atomic_load(&s->closes) == 1);
    /* A reset carries no FIN: whichever of the receive and the send in flight reads the
     * socket's error first reports it, and output was still queued, so nothing ends it as a
     * clean end of stream first. */
    assert_closed(s, -ECONNRESET);
    pith_net_stats_t st = stats_of(0);
    cr_assert_eq(st.resets, 1, "resets %" PRIu64, st.resets);
    cr_assert_eq(st.conns_open, 0);
    cr_assert_lt(st.bytes_out, len);
    assert_server_clean();
    test_stop(NULL);
    free(data);
}

/* ---- 5: limits ---- */

Test(net, past_max_conns_a_connection_is_accepted_and_closed_at_once, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.max_conns = 2;
    int port;
    listen_on(&lc, &port);

    int a = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);
    int b = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 2);
    int c = client_open(port, 0);
    TEST_WAIT_FOR(stats_of(0).refused == 1);
    /* Nothing was sent on it: the server's close is a plain end of stream. */
    cr_assert_eq(client_end(c), 0);
    close(c);
    pith_net_stats_t s = stats_of(0);
    cr_assert_eq(s.accepted, 2);
    cr_assert_eq(s.conns_open, 2);
    cr_assert_eq(atomic_load(&srv.opens), 2, "on_open ran for the refused connection");

    /* The two still echo; once one closes, a new connection is taken again. */
    client_write(a, "a1", 2);
    client_expect(a, (const uint8_t *)"a1", 2);
    client_write(b, "b1", 2);
    client_expect(b, (const uint8_t *)"b1", 2);
    close(a);
    TEST_WAIT_FOR(stats_of(0).conns_open == 1);
    int d = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 3);
    client_write(d, "d1", 2);
    client_expect(d, (const uint8_t *)"d1", 2);
    s = stats_of(0);
    cr_assert_eq(s.accepted, 3);
    cr_assert_eq(s.refused, 1);
    close(b);
    close(d);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 3);
    cr_assert_eq(closes_with(0), 3);
    assert_server_clean();
    test_stop(NULL);
}

/* The documented bound (pith_listen_config_t.max_conns): a ring too small for max_conns lowers
 * it to what fits, io_entries * 16 >= net_bufs + 2 * max_conns + 64. */
Test(net, a_small_ring_lowers_max_conns_to_the_documented_bound, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    cfg.io_entries = 8;
    cfg.net_bufs = 16;
    test_start(&cfg);
    unsigned fit = (8 * 16 - 16 - 64) / 3;
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    listen_on(&lc, &port);

    int fds[32];
    cr_assert_lt(fit, 32u);
    for (unsigned i = 0; i < fit; i++) {
        fds[i] = client_open(port, 0);
        TEST_WAIT_FOR(stats_of(0).accepted + stats_of(0).refused == i + 1);
    }
    pith_net_stats_t s = stats_of(0);
    cr_assert_eq(s.refused, 0, "refused after %" PRIu64 " of %u connections", s.accepted, fit);
    cr_assert_eq(s.accepted, fit);
    fds[fit] = client_open(port, 0);
    TEST_WAIT_FOR(stats_of(0).refused == 1);
    cr_assert_eq(client_end(fds[fit]), 0);
    for (unsigned i = 0; i <= fit; i++)
        close(fds[i]);
    TEST_WAIT_FOR(stats_of(0).conns_open == 0);
    test_stop(NULL);
}

/* Writes until the connection fails (the server closed it) or max bytes went; the bytes
 * written. */
static size_t client_flood(int fd, size_t max, int *err)
{
    uint8_t *chunk = random_bytes(64 * KIB, 5);
    size_t sent = 0;
    *err = 0;
    uint64_t until = test_wait_deadline();
    while (sent < max && pith_now_ns() < until) {
        ssize_t k = send(fd, chunk, 64 * KIB, MSG_NOSIGNAL);
        if (k > 0) {
            sent += (size_t)k;
            continue;
        }
        if (errno != EAGAIN && errno != EINTR) {
            *err = errno;
            break;
        }
        (void)wait_fd(fd, POLLOUT, until);
    }
    free(chunk);
    return sent;
}

Test(net, echo_output_past_max_buffered_closes_with_enobufs, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    /* high just under the bound: reading pauses only when the output is at the bound itself,
     * so the echo passes it rather than stopping short of it. */
    lc.conn.max_buffered = 256 * KIB + 1;
    lc.conn.high_watermark = 256 * KIB;
    lc.conn.low_watermark = 64 * KIB;
    int port;
    listen_on(&lc, &port);

    int fd = client_open(port, 16 * KIB);
    int err = 0;
    size_t sent = client_flood(fd, 256 * MIB, &err);
    cr_assert(err == ECONNRESET || err == EPIPE,
              "the client wrote %zu bytes and never saw the connection end (%s)", sent,
              strerror(err));
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], -ENOBUFS);
    pith_net_stats_t s = stats_of(0);
    cr_assert_eq(s.over_limit, 1);
    cr_assert_eq(s.conns_open, 0);
    /* The echo that passed the bound is the one send that failed, if it was a send. */
    cr_assert_leq(atomic_load(&srv.send_errs), 1);
    if (atomic_load(&srv.send_errs) == 1)
        cr_assert_eq(atomic_load(&srv.send_err), -ENOBUFS);
    close(fd);
    test_stop(NULL);
}

static const pith_tcp_handler_t hold_handler = {
    .on_open = srv_open,
    .on_data = hold_data,
    .on_close = srv_close,
};

Test(net, unconsumed_input_past_max_buffered_closes_with_enobufs, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&hold_handler);
    lc.conn.max_buffered = 64 * KIB;
    int port;
    listen_on(&lc, &port);

    int fd = client_open(port, 0);
    int err = 0;
    size_t sent = client_flood(fd, 64 * MIB, &err);
    cr_assert(err == ECONNRESET || err == EPIPE, "the client wrote %zu bytes (%s)", sent,
              strerror(err));
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], -ENOBUFS);
    cr_assert_eq(stats_of(0).over_limit, 1);
    cr_assert_geq(stats_of(0).bytes_in, 64 * KIB);
    assert_server_clean();
    close(fd);
    test_stop(NULL);
}

/* ---- 6: watermarks ---- */

Test(net, output_above_high_watermark_pauses_reading_until_the_client_drains_it, .timeout = 30)
{
    payload_len = beyond_kernel();
    payload = random_bytes(payload_len, 6);
    srv.open_hook = send_payload_hook;
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.conn.max_buffered = 4 * payload_len;
    lc.conn.high_watermark = 1 * MIB;
    lc.conn.low_watermark = 256 * KIB;
    int port;
    listen_on(&lc, &port);

    int fd = client_open(port, 64 * KIB);
    TEST_WAIT_FOR(stats_of(0).paused == 1);
    struct sconn *s = &srv.conns[0];
    /* Sent while reading is paused: held by the kernel, not delivered. */
    client_write(fd, "ping", 4);
    test_sync_all();
    /* The kernel holds half the payload at most: without the client reading, the output cannot
     * fall to low_watermark, so on_drain cannot have run. */
    cr_assert_eq(atomic_load(&s->drains), 0);
    pith_conn_info_t info = conn_info(atomic_load(&s->id));
    cr_assert_gt(info.unsent, lc.conn.low_watermark);
    cr_assert_eq(info.bytes_in, 0, "%" PRIu64 " bytes read while paused", info.bytes_in);

    /* Reading the payload drains the output: on_drain, then reading resumes and "ping" is
     * echoed after the payload. */
    client_expect(fd, payload, payload_len);
    client_expect(fd, (const uint8_t *)"ping", 4);
    cr_assert_eq(atomic_load(&s->drains), 1, "on_drain ran %u times", atomic_load(&s->drains));
    cr_assert_eq(stats_of(0).paused, 1);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(s, 0);
    assert_server_clean();
    test_stop(NULL);
    free(payload);
}

/* ---- 7: half-close ---- */

static size_t count_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    (void)c;
    (void)data;
    struct sconn *s = cctx;
    atomic_fetch_add(&s->data_bytes, len);
    return len;
}

/* After the client's end of stream: a reply naming the bytes received, then a close. Sends
 * after the close must fail with -EPIPE. */
static void reply_eof(pith_conn_t c, void *cctx)
{
    struct sconn *s = cctx;
    atomic_fetch_add(&s->eofs, 1);
    atomic_fetch_add(&srv.eofs, 1);
    char reply[64];
    int n = snprintf(reply, sizeof reply, "got %" PRIu64 " bytes", atomic_load(&s->data_bytes));
    note_send(pith_conn_send(c, reply, (size_t)n));
    note_send(pith_conn_close(c));
    if (pith_conn_send(c, "late", 4) != -EPIPE)
        note_send(-1000);
}

static const pith_tcp_handler_t eof_handler = {
    .on_open = srv_open,
    .on_data = count_data,
    .on_eof = reply_eof,
    .on_close = srv_close,
};

Test(net, half_close_gets_on_eof_and_the_reply_then_end_of_stream, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&eof_handler);
    int port;
    listen_on(&lc, &port);

    size_t len = 100 * KIB;
    uint8_t *data = random_bytes(len, 7);
    int fd = client_open(port, 0);
    client_write(fd, data, len);
    cr_assert_eq(shutdown(fd, SHUT_WR), 0);
    char expect[64];
    int n = snprintf(expect, sizeof expect, "got %zu bytes", len);
    client_expect(fd, (const uint8_t *)expect, (size_t)n);
    cr_assert_eq(client_end(fd), 0);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);
    cr_assert_eq(atomic_load(&srv.conns[0].eofs), 1);
    assert_server_clean();
    close(fd);
    test_stop(NULL);
    free(data);
}

Test(net, without_on_eof_the_end_of_stream_closes_after_the_queued_output, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    listen_on(&lc, &port);

    /* The client reads nothing until it has shut its side: the echo waits in the server's
     * queue and the kernel's buffers, and must all come before the end of stream. */
    size_t len = 512 * KIB;
    uint8_t *data = random_bytes(len, 8);
    int fd = client_open(port, 16 * KIB);
    client_write(fd, data, len);
    cr_assert_eq(shutdown(fd, SHUT_WR), 0);
    client_expect(fd, data, len);
    cr_assert_eq(client_end(fd), 0);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);
    cr_assert_eq(stats_of(0).bytes_out, len);
    assert_server_clean();
    close(fd);
    test_stop(NULL);
    free(data);
}

/* ---- 8: idle timeout ---- */

Test(net, an_idle_connection_is_closed_and_a_busy_one_is_not, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    /* 50 ms, stretched where everything runs slower so that the busy client's pace holds. */
    uint64_t idle = (uint64_t)(50 * MS * test_timeout_multiplier());
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.conn.idle_timeout_ns = idle;
    int port;
    listen_on(&lc, &port);

    uint64_t t_quiet = pith_now_ns();
    int quiet = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);
    int busy = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 2);
    struct sconn *q = &srv.conns[0], *b = &srv.conns[1];

    /* The busy client sends a byte and reads its echo every idle/10, for six idle periods and
     * at least until the quiet one has been closed. */
    uint64_t start = pith_now_ns(), until = test_wait_deadline();
    unsigned rounds = 0;
    while (pith_now_ns() - start < 6 * idle || atomic_load(&q->closes) == 0) {
        cr_assert_lt(pith_now_ns(), until, "the quiet connection was never closed");
        char ch = (char)('a' + rounds++ % 26);
        client_write(busy, &ch, 1);
        client_expect(busy, (const uint8_t *)&ch, 1);
        (void)wait_fd(busy, POLLIN, pith_now_ns() + idle / 10);
    }
    test_sync_all();
    cr_assert_eq(atomic_load(&b->closes), 0, "the busy connection was closed (reason %d)",
                 atomic_load(&b->reason));
    assert_closed(q, -ETIMEDOUT);
    cr_assert_geq(atomic_load(&q->close_ns) - t_quiet, idle, "closed before its idle timeout");
    cr_assert_eq(stats_of(0).idle_closed, 1);
    /* The idle close is a reset. */
    cr_assert_eq(client_end(quiet), -ECONNRESET);
    close(quiet);

    close(busy);
    TEST_WAIT_FOR(atomic_load(&b->closes) == 1);
    assert_closed(b, 0);
    cr_assert_eq(stats_of(0).idle_closed, 1);
    cr_assert_eq(stats_of(0).conns_open, 0);
    assert_server_clean();
    test_stop(NULL);
}

/* ---- 9: outbound connects ---- */

static const char out_msg[] = "outbound hello";

static struct outbound {
    atomic_uint opens, closes, wrong_shard;
    _Atomic(void *) open_ctx;
    _Atomic(void *) close_cctx;
    atomic_int reason;
    _Atomic uint64_t got, close_ns;
    atomic_int err;
    uint8_t buf[64];
} out;

static void *out_open(pith_conn_t c, void *ctx)
{
    if (!on_own_shard(c))
        atomic_fetch_add(&out.wrong_shard, 1);
    atomic_store(&out.open_ctx, ctx);
    atomic_fetch_add(&out.opens, 1);
    int rc = pith_conn_send(c, out_msg, sizeof out_msg - 1);
    if (rc != 0)
        atomic_store(&out.err, rc);
    return &out;
}

static size_t out_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    (void)cctx;
    uint64_t got = atomic_load(&out.got);
    size_t room = got < sizeof out.buf ? sizeof out.buf - (size_t)got : 0;
    size_t take = len < room ? len : room;
    memcpy(out.buf + got, data, take);
    atomic_store(&out.got, got + len);
    if (got + len >= sizeof out_msg - 1) {
        int rc = pith_conn_close(c);
        if (rc != 0)
            atomic_store(&out.err, rc);
    }
    return len;
}

static void out_close(pith_conn_t c, void *cctx, int reason)
{
    if (!on_own_shard(c))
        atomic_fetch_add(&out.wrong_shard, 1);
    atomic_store(&out.close_cctx, cctx);
    atomic_store(&out.reason, reason);
    atomic_store(&out.close_ns, pith_now_ns());
    atomic_fetch_add(&out.closes, 1);
}

static const pith_tcp_handler_t out_handler = {
    .on_open = out_open,
    .on_data = out_data,
    .on_close = out_close,
};

static int out_marker;

struct connect_req {
    const char *host;
    uint16_t port;
    const pith_tcp_opts_t *opts;
    uint64_t timeout_ns;
    pith_conn_t id;
    int rc;
    uint64_t t0;
};

static void *connect_fn(void *arg)
{
    struct connect_req *q = arg;
    q->t0 = pith_now_ns();
    q->rc = pith_tcp_connect(q->host, q->port, q->opts, q->timeout_ns, &q->id);
    return NULL;
}

static pith_conn_t connect_from(unsigned shard, int port, uint64_t timeout_ns, uint64_t *t0)
{
    pith_tcp_opts_t o;
    memset(&o, 0, sizeof o);
    o.handler = &out_handler;
    o.ctx = &out_marker;
    struct connect_req q = {
        .host = LOOPBACK, .port = (uint16_t)port, .opts = &o, .timeout_ns = timeout_ns};
    call_on(shard, connect_fn, &q);
    cr_assert_eq(q.rc, 0, "pith_tcp_connect: %d (%s)", q.rc, pith_strerror(q.rc));
    cr_assert_neq(q.id, 0);
    cr_assert_eq(pith_conn_shard(q.id), shard);
    if (t0 != NULL)
        *t0 = q.t0;
    return q.id;
}

Test(net, connect_to_a_pith_listener_round_trips_with_its_ctx, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    listen_on(&lc, &port);

    pith_conn_t id = connect_from(1, port, 0, NULL);
    TEST_WAIT_FOR(atomic_load(&out.closes) == 1);
    cr_assert_eq(atomic_load(&out.err), 0, "a call in the client's callbacks failed: %d",
                 atomic_load(&out.err));
    cr_assert_eq(atomic_load(&out.opens), 1);
    cr_assert_eq(atomic_load(&out.open_ctx), (void *)&out_marker, "on_open got another ctx");
    cr_assert_eq(atomic_load(&out.close_cctx), (void *)&out, "on_close got another cctx");
    cr_assert_eq(atomic_load(&out.reason), 0);
    cr_assert_eq(atomic_load(&out.got), sizeof out_msg - 1);
    cr_assert_eq(memcmp(out.buf, out_msg, sizeof out_msg - 1), 0);
    cr_assert_eq(atomic_load(&out.wrong_shard), 0);
    cr_assert_eq(stats_of(1).connected, 1);
    cr_assert_eq(stats_sum().connected, 1);
    cr_assert_eq(conn_do(id, OP_SEND, "x", 1), -ENOENT, "the closed connection's id still works");
    /* The server end sees the client's close as an end of stream. */
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);
    cr_assert_eq(stats_sum().accepted, 1);
    TEST_WAIT_FOR(stats_sum().conns_open == 0);
    assert_server_clean();
    test_stop(NULL);
}

Test(net, connect_to_a_closed_port_ends_with_econnrefused_and_no_cctx, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    /* Bound but not listening: the kernel answers a SYN to it with a reset, and the port stays
     * ours for the test. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = loopback(0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    int port = local_port(fd);

    connect_from(0, port, 0, NULL);
    TEST_WAIT_FOR(atomic_load(&out.closes) == 1);
    cr_assert_eq(atomic_load(&out.opens), 0, "on_open ran for a refused connect");
    cr_assert_eq(atomic_load(&out.reason), -ECONNREFUSED, "reason %d (%s)",
                 atomic_load(&out.reason), pith_strerror(atomic_load(&out.reason)));
    cr_assert_null(atomic_load(&out.close_cctx));
    pith_net_stats_t s = stats_of(0);
    cr_assert_eq(s.connected, 0);
    cr_assert_eq(s.conns_open, 0);
    close(fd);
    test_stop(NULL);
}

/* A listener that drops SYNs: backlog 0 and its accept queue already full with a connection
 * it never accepts. *filler is that connection's client end. Returns the listening socket. */
static int syn_sink(int *port, int *filler)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = loopback(0);
    cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(l, 0), 0);
    *port = local_port(l);
    *filler = client_open(*port, 0);
    /* Readable once the handshake has put the connection in the accept queue. */
    cr_assert_neq(wait_fd(l, POLLIN, test_wait_deadline()) & POLLIN, 0);
    return l;
}

Test(net, connect_to_a_target_that_drops_syns_times_out_with_etimedout, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    int port, filler;
    int l = syn_sink(&port, &filler);

    uint64_t t0;
    connect_from(0, port, 100 * MS, &t0);
    TEST_WAIT_FOR(atomic_load(&out.closes) == 1);
    cr_assert_eq(atomic_load(&out.opens), 0);
    cr_assert_eq(atomic_load(&out.reason), -ETIMEDOUT, "reason %d (%s)", atomic_load(&out.reason),
                 pith_strerror(atomic_load(&out.reason)));
    cr_assert_null(atomic_load(&out.close_cctx));
    cr_assert_geq(atomic_load(&out.close_ns) - t0, 100 * MS, "timed out before timeout_ns");
    cr_assert_eq(stats_of(0).connected, 0);
    cr_assert_eq(stats_of(0).conns_open, 0);
    close(filler);
    close(l);
    test_stop(NULL);
}

Test(net, a_connect_closed_in_flight_ends_at_once_with_reason_0_and_its_timeout_with_it,
     .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    int port, filler;
    int l = syn_sink(&port, &filler);

    /* The timeout is longer than TEST_WAIT_FOR waits: only the close can end the connect. */
    pith_conn_t id = connect_from(0, port, 60000 * MS, NULL);
    cr_assert_eq(conn_do(id, OP_SEND, "x", 1), -EPIPE, "a send before the connect is done");
    cr_assert_eq(conn_do(id, OP_CLOSE, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&out.closes) == 1);
    cr_assert_eq(atomic_load(&out.opens), 0);
    cr_assert_eq(atomic_load(&out.reason), 0, "reason %d (%s)", atomic_load(&out.reason),
                 pith_strerror(atomic_load(&out.reason)));
    cr_assert_null(atomic_load(&out.close_cctx));
    cr_assert_eq(conn_do(id, OP_CLOSE, NULL, 0), -ENOENT);
    cr_assert_eq(stats_of(0).connected, 0);
    cr_assert_eq(stats_of(0).conns_open, 0);
    close(filler);
    close(l);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&out.closes), 1);
}

/* ---- 10: actor mode ---- */

#define ACT_MAX 8

struct actor_rec {
    _Atomic uint64_t conn;
    atomic_uint data_msgs, eofs, closed;
    _Atomic uint64_t bytes;
    atomic_int reason;
};

static struct actors {
    atomic_uint n, bad_arg, wrong_shard, odd_msgs, send_errs;
    atomic_int send_err;
    struct actor_rec rec[ACT_MAX];
} act;

struct actor_state {
    pith_conn_t conn;
    struct actor_rec *rec;
};

static int tcp_actor_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    const pith_tcp_open_t *o = arg;
    struct actor_state *st = state;
    if (o == NULL || o->ctx != (void *)&act) {
        atomic_fetch_add(&act.bad_arg, 1);
        return 0;
    }
    if (!on_own_shard(o->conn))
        atomic_fetch_add(&act.wrong_shard, 1);
    unsigned i = atomic_fetch_add(&act.n, 1);
    st->conn = o->conn;
    st->rec = &act.rec[i < ACT_MAX ? i : ACT_MAX - 1];
    atomic_store(&st->rec->conn, o->conn);
    return 0;
}

static void act_send_note(int rc)
{
    if (rc != 0) {
        atomic_fetch_add(&act.send_errs, 1);
        atomic_store(&act.send_err, rc);
    }
}

/* Echoes the bytes with pith_conn_send (it runs on the connection's shard), closes at the end
 * of stream, stops once told the connection closed. Data "quit" stops the actor at once. */
static int tcp_actor_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct actor_state *st = state;
    if (st->rec == NULL)
        return 0;
    if (!on_own_shard(st->conn))
        atomic_fetch_add(&act.wrong_shard, 1);
    switch (msg->type) {
    case PITH_MSG_TCP_DATA:
        atomic_fetch_add(&st->rec->data_msgs, 1);
        atomic_fetch_add(&st->rec->bytes, msg->len);
        if (msg->len == 4 && memcmp(msg->data, "quit", 4) == 0)
            return pith_stop(pith_self(self));
        act_send_note(pith_conn_send(st->conn, msg->data, msg->len));
        break;
    case PITH_MSG_TCP_EOF:
        atomic_fetch_add(&st->rec->eofs, 1);
        act_send_note(pith_conn_close(st->conn));
        break;
    case PITH_MSG_TCP_CLOSED: {
        int32_t r = -1;
        if (msg->len == sizeof r)
            memcpy(&r, msg->data, sizeof r);
        else
            atomic_fetch_add(&act.odd_msgs, 1);
        atomic_store(&st->rec->reason, r);
        atomic_fetch_add(&st->rec->closed, 1);
        (void)pith_stop(pith_self(self));
        break;
    }
    default:
        atomic_fetch_add(&act.odd_msgs, 1);
        break;
    }
    return 0;
}

static const pith_actor_type_t tcp_actor_type = {
    .name = "net.echo_actor",
    .behaviour = tcp_actor_behaviour,
    .state_size = sizeof(struct actor_state),
    .init = tcp_actor_init,
};

static pith_listen_config_t actor_listen_config(void)
{
    pith_listen_config_t lc;
    memset(&lc, 0, sizeof lc);
    lc.host = LOOPBACK;
    lc.spread = PITH_TCP_ACCEPTOR;
    lc.conn.actor_type = &tcp_actor_type;
    lc.conn.ctx = &act;
    return lc;
}

static struct actor_rec *act_by_port(int port)
{
    unsigned n = atomic_load(&act.n);
    for (unsigned i = 0; i < n && i < ACT_MAX; i++) {
        pith_conn_t c = atomic_load(&act.rec[i].conn);
        struct conn_call cc = {.c = c, .op = OP_INFO};
        if ((int)(intptr_t)call_on(pith_conn_shard(c), conn_call_fn, &cc) == 0 &&
            cc.info.peer_port == port)
            return &act.rec[i];
    }
    cr_assert_fail("no actor's connection has a peer on port %d", port);
    return NULL;
}

Test(net, actor_mode_echoes_and_gets_eof_and_closed_with_the_reason, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_listen_config_t lc = actor_listen_config();
    int port;
    listen_on(&lc, &port);

    /* Two connections: the acceptor puts them on different shards. */
    size_t len = 100 * KIB;
    uint8_t *data = random_bytes(len, 10);
    int a = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&act.n) == 1);
    int b = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&act.n) == 2);
    struct actor_rec *ra = act_by_port(local_port(a)), *rb = act_by_port(local_port(b));
    cr_assert_neq(pith_conn_shard(atomic_load(&ra->conn)), pith_conn_shard(atomic_load(&rb->conn)));

    client_write(a, data, len);
    client_expect(a, data, len);
    client_write(b, data, len / 2);
    client_expect(b, data, len / 2);
    cr_assert_eq(atomic_load(&ra->bytes), len);
    cr_assert_gt(atomic_load(&ra->data_msgs), 0);

    /* a shuts its side: EOF, the actor closes, CLOSED(0), the client reads end of stream. */
    cr_assert_eq(shutdown(a, SHUT_WR), 0);
    cr_assert_eq(client_end(a), 0);
    TEST_WAIT_FOR(atomic_load(&ra->closed) == 1);
    cr_assert_eq(atomic_load(&ra->eofs), 1);
    cr_assert_eq(atomic_load(&ra->reason), 0);

    /* b resets: CLOSED(-ECONNRESET), with no EOF before it. */
    client_reset(b);
    TEST_WAIT_FOR(atomic_load(&rb->closed) == 1);
    cr_assert_eq(atomic_load(&rb->reason), -ECONNRESET, "reason %d", atomic_load(&rb->reason));
    cr_assert_eq(atomic_load(&rb->eofs), 0);

    TEST_WAIT_FOR(stats_sum().conns_open == 0);
    pith_actor_type_stats_t ts;
    TEST_WAIT_FOR(pith_actor_type_stats(&tcp_actor_type, &ts) == 0 && ts.live == 0);
    cr_assert_eq(ts.spawned, 2);
    cr_assert_eq(atomic_load(&act.bad_arg), 0, "init got the wrong pith_tcp_open_t");
    cr_assert_eq(atomic_load(&act.wrong_shard), 0);
    cr_assert_eq(atomic_load(&act.odd_msgs), 0);
    cr_assert_eq(atomic_load(&act.send_errs), 0, "a send from the actor failed: %d",
                 atomic_load(&act.send_err));
    close(a);
    test_stop(NULL);
    free(data);
}

Test(net, an_actor_that_stops_has_its_connection_reset_at_the_next_event, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = actor_listen_config();
    int port;
    listen_on(&lc, &port);

    int fd = client_open(port, 0);
    client_write(fd, "hi", 2);
    client_expect(fd, (const uint8_t *)"hi", 2);
    client_write(fd, "quit", 4);
    pith_actor_type_stats_t ts;
    TEST_WAIT_FOR(pith_actor_type_stats(&tcp_actor_type, &ts) == 0 && ts.live == 0);
    /* The contract: the connection of an actor that stopped is reset at its next event. */
    cr_assert_eq(stats_of(0).conns_open, 1);
    client_write(fd, "more", 4);
    int end = client_end_by(fd, pith_now_ns() + (uint64_t)(5e9 * test_timeout_multiplier()));
    cr_assert_neq(end, 1, "the connection stayed open after bytes for a stopped actor");
    TEST_WAIT_FOR(stats_of(0).conns_open == 0);
    close(fd);
    test_stop(NULL);
}

/* ---- 11: engine stop with connections open ---- */

struct queue_req {
    pith_conn_t c;
    const void *data;
    size_t len;
    int rc;
};

static void *queue_fn(void *arg)
{
    struct queue_req *q = arg;
    q->rc = pith_conn_send(q->c, q->data, q->len);
    return NULL;
}

Test(net, engine_stop_sends_queued_output_and_closes_each_with_eshutdown_once, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.spread = PITH_TCP_ACCEPTOR;
    int port;
    listen_on(&lc, &port);

    enum { N = 8 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = client_open(port, 0);
        TEST_WAIT_FOR(atomic_load(&srv.opens) == (unsigned)i + 1);
    }
    cr_assert(stats_of(0).conns_open > 0 && stats_of(1).conns_open > 0);
    /* Queued last thing before the stop, small enough for the kernel to take without the
     * clients reading (they cannot: this thread is in pith_engine_stop). */
    size_t len = 32 * KIB;
    uint8_t *data = random_bytes(len, 11);
    for (int i = 0; i < N; i++) {
        struct queue_req q = {.c = atomic_load(&srv.conns[i].id), .data = data, .len = len};
        call_on(pith_conn_shard(q.c), queue_fn, &q);
        cr_assert_eq(q.rc, 0, "pith_conn_send: %d", q.rc);
    }
    test_stop(NULL);

    for (int i = 0; i < N; i++) {
        assert_closed(&srv.conns[i], -ESHUTDOWN);
        client_expect(fds[i], data, len);
        cr_assert_eq(client_end(fds[i]), 0, "client %d: the stop was not a clean end of stream", i);
        close(fds[i]);
    }
    cr_assert_eq(atomic_load(&srv.closes), N);
    assert_server_clean();
    free(data);
}

Test(net, engine_stop_ends_a_connect_in_flight_with_eshutdown, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    int port, filler;
    int l = syn_sink(&port, &filler);
    connect_from(0, port, 0, NULL);
    test_sync_all();
    test_stop(NULL);
    cr_assert_eq(atomic_load(&out.closes), 1, "on_close ran %u times", atomic_load(&out.closes));
    cr_assert_eq(atomic_load(&out.opens), 0);
    cr_assert_eq(atomic_load(&out.reason), -ESHUTDOWN, "reason %d (%s)", atomic_load(&out.reason),
                 pith_strerror(atomic_load(&out.reason)));
    cr_assert_null(atomic_load(&out.close_cctx));
    close(filler);
    close(l);
}

/* ---- 12: API errors ---- */

static void *send_here_fn(void *arg)
{
    pith_conn_t c = *(pith_conn_t *)arg;
    return (void *)(intptr_t)pith_conn_send(c, "x", 1);
}

Test(net, conn_calls_off_the_connections_shard_fail_with_eperm, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.spread = PITH_TCP_ACCEPTOR;
    lc.acceptor_shard = 0;
    int port;
    listen_on(&lc, &port);
    int fd = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);
    pith_conn_t c = atomic_load(&srv.conns[0].id);
    unsigned home = pith_conn_shard(c);
    cr_assert_lt(home, 2u);

    cr_assert_eq(pith_conn_send(c, "x", 1), -EPERM);
    struct iovec iov = {.iov_base = (void *)"x", .iov_len = 1};
    cr_assert_eq(pith_conn_sendv(c, &iov, 1), -EPERM);
    cr_assert_eq(pith_conn_close(c), -EPERM);
    cr_assert_eq(pith_conn_abort(c), -EPERM);
    cr_assert_eq(pith_conn_shutdown(c), -EPERM);
    cr_assert_eq(pith_conn_pause(c), -EPERM);
    cr_assert_eq(pith_conn_resume(c), -EPERM);
    pith_conn_info_t info;
    cr_assert_eq(pith_conn_info(c, &info), -EPERM);
    cr_assert_eq((int)(intptr_t)call_on(1 - home, send_here_fn, &c), -EPERM);
    for (int op = OP_SEND; op <= OP_INFO; op++)
        cr_assert_eq(conn_do_on(1 - home, c, (enum conn_op)op, "x", 1), -EPERM, "op %d", op);
    /* From the test thread: pith_tcp_connect needs a shard. */
    pith_tcp_opts_t o;
    memset(&o, 0, sizeof o);
    o.handler = &out_handler;
    pith_conn_t id = 1;
    cr_assert_eq(pith_tcp_connect(LOOPBACK, (uint16_t)port, &o, 0, &id), -EPERM);
    cr_assert_eq(id, 0);

    /* None of it touched the connection. */
    client_write(fd, "ok", 2);
    client_expect(fd, (const uint8_t *)"ok", 2);
    info = conn_info(c);
    cr_assert_eq(info.shard, home);
    cr_assert_str_eq(info.peer, LOOPBACK);
    cr_assert_eq(info.peer_port, local_port(fd));
    cr_assert_eq(info.bytes_in, 2);
    cr_assert_eq(info.bytes_out, 2);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_server_clean();
    test_stop(NULL);
}

Test(net, a_closed_connections_id_finds_nothing, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    listen_on(&lc, &port);
    int fd = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);
    pith_conn_t c = atomic_load(&srv.conns[0].id);
    cr_assert_neq(c, 0);

    /* Closing: sends are refused at once with -EPIPE; the id goes with on_close. */
    cr_assert_eq(conn_do(c, OP_CLOSE, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);
    cr_assert_eq(client_end(fd), 0);
    for (int op = OP_SEND; op <= OP_INFO; op++)
        cr_assert_eq(conn_do(c, (enum conn_op)op, "x", 1), -ENOENT, "op %d", op);
    /* A made-up id on a shard: another generation of the same slot. */
    cr_assert_eq(conn_do(c ^ (UINT64_C(1) << 32), OP_SEND, "x", 1), -ENOENT);
    cr_assert_eq(conn_do_on(0, 0, OP_SEND, "x", 1), -ENOENT);
    close(fd);
    assert_server_clean();
    test_stop(NULL);
}

static void *send_after_close_fn(void *arg)
{
    pith_conn_t c = *(pith_conn_t *)arg;
    int rc = pith_conn_close(c);
    if (rc != 0)
        return (void *)(intptr_t)(rc - 2000);
    return (void *)(intptr_t)pith_conn_send(c, "x", 1);
}

static void *send_after_shutdown_fn(void *arg)
{
    pith_conn_t c = *(pith_conn_t *)arg;
    int rc = pith_conn_shutdown(c);
    if (rc != 0)
        return (void *)(intptr_t)(rc - 2000);
    return (void *)(intptr_t)pith_conn_send(c, "x", 1);
}

Test(net, sends_after_close_or_shutdown_fail_with_epipe, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    listen_on(&lc, &port);

    int a = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);
    pith_conn_t ca = atomic_load(&srv.conns[0].id);
    cr_assert_eq((int)(intptr_t)call_on(0, send_after_close_fn, &ca), -EPIPE);
    cr_assert_eq(client_end(a), 0);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);

    /* After pith_conn_shutdown the client reads end of stream, and its own bytes are still
     * received (and, being an echo, refused as sends: -EPIPE). */
    int b = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 2);
    pith_conn_t cb = atomic_load(&srv.conns[1].id);
    cr_assert_eq((int)(intptr_t)call_on(0, send_after_shutdown_fn, &cb), -EPIPE);
    cr_assert_eq(client_end(b), 0);
    client_write(b, "abc", 3);
    TEST_WAIT_FOR(atomic_load(&srv.conns[1].data_bytes) == 3);
    cr_assert_eq(atomic_load(&srv.send_err), -EPIPE);
    cr_assert_eq(atomic_load(&srv.conns[1].closes), 0);
    close(a);
    close(b);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 2);
    assert_closed(&srv.conns[1], 0);
    test_stop(NULL);
}

static size_t null_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    (void)c;
    (void)cctx;
    (void)data;
    return len;
}

static const pith_tcp_handler_t no_data_handler = {.on_open = srv_open, .on_close = srv_close};

static void *connect_bad_fn(void *arg)
{
    int *rcs = arg;
    pith_tcp_handler_t ok = {.on_data = null_data};
    pith_tcp_opts_t o;
    memset(&o, 0, sizeof o);
    o.handler = &ok;
    pith_conn_t id = 1;
    rcs[0] = pith_tcp_connect("not-an-address", 80, &o, 0, &id);
    rcs[1] = pith_tcp_connect(NULL, 80, &o, 0, &id);
    rcs[2] = pith_tcp_connect(LOOPBACK, 0, &o, 0, &id);
    rcs[3] = pith_tcp_connect(LOOPBACK, 80, NULL, 0, &id);
    o.handler = &no_data_handler;
    rcs[4] = pith_tcp_connect(LOOPBACK, 80, &o, 0, &id);
    o.handler = NULL;
    rcs[5] = pith_tcp_connect(LOOPBACK, 80, &o, 0, &id);
    o.handler = &ok;
    o.low_watermark = 2 * MIB;
    o.high_watermark = 1 * MIB;
    rcs[6] = pith_tcp_connect(LOOPBACK, 80, &o, 0, &id);
    rcs[7] = id == 0 ? 0 : 1;
    return NULL;
}

/* Without *out nobody could name the listener to unlisten it: its port would stay taken until
 * the engine stops. */
Test(net, listen_without_out_is_einval_and_takes_no_port, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = loopback(0);
    cr_assert_eq(bind(probe, (struct sockaddr *)&a, sizeof a), 0);
    int port = local_port(probe);
    close(probe);

    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.port = (uint16_t)port;
    int rc = pith_tcp_listen(&lc, NULL);
    cr_assert_eq(rc, -EINVAL, "pith_tcp_listen(&cfg, NULL): %d (%s)", rc, pith_strerror(rc));

    /* Nothing listens there: a plain socket binds and listens on the port. */
    int mine = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a = loopback(port);
    cr_assert_eq(bind(mine, (struct sockaddr *)&a, sizeof a), 0, "port %d was taken: %s", port,
                 strerror(errno));
    cr_assert_eq(listen(mine, 8), 0);
    close(mine);
    test_stop(NULL);
}

Test(net, bad_configs_are_einval_and_no_engine_is_eshutdown, .timeout = 30)
{
    pith_tcp_handler_t ok = {.on_data = null_data};
    pith_listen_config_t lc;
    memset(&lc, 0, sizeof lc);
    lc.host = LOOPBACK;
    lc.conn.handler = &ok;
    pith_listener_t l = 7;
    cr_assert_eq(pith_tcp_listen(&lc, &l), -ESHUTDOWN, "listen with no engine");
    cr_assert_eq(l, 0);
    cr_assert_eq(pith_tcp_unlisten(1), -ESHUTDOWN);
    pith_net_stats_t s;
    cr_assert_eq(pith_net_stats(0, &s), -ESHUTDOWN);

    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    cr_assert_eq(pith_net_stats(2, &s), -EINVAL);
    cr_assert_eq(pith_net_stats(0, NULL), -EINVAL);
    cr_assert_eq(pith_tcp_listen(NULL, &l), -EINVAL);
    struct {
        const char *what;
        pith_listen_config_t lc;
    } bad[9];
    for (int i = 0; i < 9; i++)
        bad[i].lc = lc;
    bad[0].what = "handler and actor_type NULL";
    bad[0].lc.conn.handler = NULL;
    bad[1].what = "on_data NULL";
    bad[1].lc.conn.handler = &no_data_handler;
    bad[2].what = "low above high";
    bad[2].lc.conn.low_watermark = 2 * MIB;
    bad[2].lc.conn.high_watermark = 1 * MIB;
    bad[3].what = "high at max_buffered";
    bad[3].lc.conn.max_buffered = 1 * MIB;
    bad[3].lc.conn.high_watermark = 1 * MIB;
    bad[4].what = "a host name";
    bad[4].lc.host = "localhost";
    bad[5].what = "a malformed address";
    bad[5].lc.host = "127.0.0.256";
    bad[6].what = "acceptor_shard out of range";
    bad[6].lc.spread = PITH_TCP_ACCEPTOR;
    bad[6].lc.acceptor_shard = 2;
    bad[7].what = "a spread that does not exist";
    bad[7].lc.spread = (pith_tcp_spread_t)7;
    bad[8].what = "a negative backlog";
    bad[8].lc.backlog = -1;
    for (int i = 0; i < 9; i++) {
        l = 7;
        int rc = pith_tcp_listen(&bad[i].lc, &l);
        cr_assert_eq(rc, -EINVAL, "%s: %d (%s)", bad[i].what, rc, pith_strerror(rc));
        cr_assert_eq(l, 0, "%s: *out was not cleared", bad[i].what);
    }
    int rcs[8];
    call_on(0, connect_bad_fn, rcs);
    const char *what[] = {"a host name",    "host NULL",    "port 0",
                          "opts NULL",      "on_data NULL", "handler and actor_type NULL",
                          "low above high", "*out"};
    for (int i = 0; i < 7; i++)
        cr_assert_eq(rcs[i], -EINVAL, "connect, %s: %d (%s)", what[i], rcs[i],
                     pith_strerror(rcs[i]));
    cr_assert_eq(rcs[7], 0, "a failed connect left *out set");

    /* The errno of bind comes back from pith_tcp_listen. */
    int taken = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = loopback(0);
    cr_assert_eq(bind(taken, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(taken, 8), 0);
    lc.port = (uint16_t)local_port(taken);
    cr_assert_eq(pith_tcp_listen(&lc, &l), -EADDRINUSE);
    close(taken);

    /* A listener with SO_REUSEPORT (another server of the same user) is not joined: its port
     * is in use. Without the check the kernel would add our sockets to its group. */
    taken = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    cr_assert_eq(setsockopt(taken, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
    cr_assert_eq(bind(taken, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(taken, 8), 0);
    lc.port = (uint16_t)local_port(taken);
    cr_assert_eq(pith_tcp_listen(&lc, &l), -EADDRINUSE, "joined another SO_REUSEPORT group");
    close(taken);
    /* Nor is our own: a second listen on a listening port fails, and the first still works. */
    pith_listener_t first;
    lc.port = 0;
    cr_assert_eq(pith_tcp_listen(&lc, &first), 0);
    lc.port = (uint16_t)pith_tcp_listener_port(first);
    cr_assert_eq(pith_tcp_listen(&lc, &l), -EADDRINUSE, "a second listener on the same port");
    cr_assert_eq(l, 0);
    cr_assert_eq(pith_tcp_unlisten(first), 0);
    /* Once it is gone the port can be listened on again. */
    cr_assert_eq(pith_tcp_listen(&lc, &l), 0);
    cr_assert_eq(pith_tcp_unlisten(l), 0);
    test_stop(NULL);
    cr_assert_eq(pith_tcp_listen(&lc, &l), -ESHUTDOWN, "listen after the engine stopped");
}

Test(net, unlisten_refuses_new_connections_keeps_open_ones_and_ids_go_stale, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    pith_listener_t l = listen_on(&lc, &port);
    int fd = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);

    cr_assert_eq(pith_tcp_unlisten(l), 0);
    int late = client_start(port, 0);
    cr_assert_eq(client_connected(late), ECONNREFUSED, "a connect after unlisten was not refused");
    close(late);
    int rc = pith_tcp_unlisten(l);
    cr_assert(rc == 0 || rc == -ENOENT, "a second unlisten: %d (%s)", rc, pith_strerror(rc));
    /* The open connection is not the listener's to close. */
    client_write(fd, "still", 5);
    client_expect(fd, (const uint8_t *)"still", 5);

    pith_listener_t stale = l ^ (UINT64_C(1) << 32);
    cr_assert_eq(pith_tcp_unlisten(stale), -ENOENT);
    cr_assert_eq(pith_tcp_listener_port(stale), -ENOENT);
    cr_assert_eq(pith_tcp_unlisten(0), -ENOENT);
    cr_assert_eq(pith_tcp_listener_port(0), -ENOENT);

    /* The ACCEPTOR spread too. */
    lc.spread = PITH_TCP_ACCEPTOR;
    lc.acceptor_shard = 1;
    pith_listener_t l2 = listen_on(&lc, &port);
    int c2 = client_open(port, 0);
    client_write(c2, "two", 3);
    client_expect(c2, (const uint8_t *)"two", 3);
    cr_assert_eq(pith_tcp_unlisten(l2), 0);
    late = client_start(port, 0);
    cr_assert_eq(client_connected(late), ECONNREFUSED);
    close(late);
    close(c2);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 2);
    cr_assert_eq(closes_with(0), 2);
    assert_server_clean();
    test_stop(NULL);
}

/* ---- 13: zero-copy and vectored sends ---- */

struct mix {
    pith_conn_t c;
    const uint8_t *src; /* bytes to draw from */
    size_t src_len, at; /* where the next draw starts */
    uint8_t *expect;    /* what the client must read, in order */
    size_t len;
    int rc; /* first failure */
    int line;
};

static const uint8_t *mix_draw(struct mix *m, size_t n)
{
    if (m->at + n > m->src_len)
        m->at = 0;
    const uint8_t *p = m->src + m->at;
    m->at += n;
    return p;
}

static void mix_check(struct mix *m, int rc, int want, int line)
{
    if (rc != want && m->rc == 0) {
        m->rc = rc == 0 ? -9999 : rc;
        m->line = line;
    }
}

#define MIX_OK(m, call)       mix_check((m), (call), 0, __LINE__)
#define MIX_RC(m, call, want) mix_check((m), (call), (want), __LINE__)

static void mix_copy(struct mix *m, size_t n)
{
    const uint8_t *p = mix_draw(m, n);
    MIX_OK(m, pith_conn_send(m->c, p, n));
    memcpy(m->expect + m->len, p, n);
    m->len += n;
}

static void mix_vec(struct mix *m, int cnt, size_t step)
{
    struct iovec iov[64];
    for (int i = 0; i < cnt; i++) {
        size_t n = 1 + (size_t)i * step;
        iov[i].iov_base = (void *)mix_draw(m, n);
        iov[i].iov_len = n;
        memcpy(m->expect + m->len, iov[i].iov_base, n);
        m->len += n;
    }
    MIX_OK(m, pith_conn_sendv(m->c, iov, cnt));
}

/* On the connection's shard: copies, held buffers and vectors, interleaved; and the calls'
 * argument errors, which must queue nothing. */
static void *send_mix_fn(void *arg)
{
    struct mix *m = arg;
    void *d;
    pith_buf_t *big = pith_buf_new(100 * KIB, &d);
    if (big == NULL) {
        m->rc = -ENOMEM;
        return NULL;
    }
    memcpy(d, mix_draw(m, 100 * KIB), 100 * KIB);
    pith_buf_t *small = pith_buf_new(3, &d);
    if (small == NULL) {
        pith_buf_release(big);
        m->rc = -ENOMEM;
        return NULL;
    }
    memcpy(d, "BUF", 3);

    mix_copy(m, 1000);
    MIX_OK(m, pith_conn_send_buf(m->c, big));
    memcpy(m->expect + m->len, pith_buf_data(big), 100 * KIB);
    m->len += 100 * KIB;
    mix_vec(m, 40, 37);
    mix_copy(m, 5);
    MIX_OK(m, pith_conn_send_buf(m->c, small));
    memcpy(m->expect + m->len, "BUF", 3);
    m->len += 3;
    MIX_OK(m, pith_conn_send_buf(m->c, big)); /* the same buffer again */
    memcpy(m->expect + m->len, pith_buf_data(big), 100 * KIB);
    m->len += 100 * KIB;
    mix_vec(m, 1, 0);
    mix_vec(m, 3, 70 * KIB); /* one segment past the copy segment size */
    MIX_OK(m, pith_conn_send_buf(m->c, small));
    memcpy(m->expect + m->len, "BUF", 3);
    m->len += 3;
    mix_copy(m, 40 * KIB);
    mix_copy(m, 1);
    /* The queue holds its own references: ours can go now. */
    pith_buf_release(big);
    pith_buf_release(small);

    struct iovec bad = {.iov_base = NULL, .iov_len = 3};
    MIX_RC(m, pith_conn_send(m->c, NULL, 5), -EINVAL);
    MIX_RC(m, pith_conn_sendv(m->c, NULL, 1), -EINVAL);
    MIX_RC(m, pith_conn_sendv(m->c, &bad, 1), -EINVAL);
    MIX_RC(m, pith_conn_sendv(m->c, &bad, -1), -EINVAL);
    MIX_RC(m, pith_conn_send_buf(m->c, NULL), -EINVAL);
    MIX_OK(m, pith_conn_send(m->c, NULL, 0));
    MIX_OK(m, pith_conn_sendv(m->c, NULL, 0));
    mix_copy(m, 777);
    return NULL;
}

Test(net, send_buf_and_sendv_interleave_with_copies_in_call_order, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    listen_on(&lc, &port);
    int fd = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);

    struct mix m;
    memset(&m, 0, sizeof m);
    m.c = atomic_load(&srv.conns[0].id);
    m.src_len = 1 * MIB;
    uint8_t *src = random_bytes(m.src_len, 13);
    m.src = src;
    m.expect = malloc(4 * MIB);
    cr_assert_not_null(m.expect);
    /* Three rounds, the client reading each before the next: the queue empties in between and
     * its last copy segment is reused. */
    uint64_t total = 0;
    for (int round = 0; round < 3; round++) {
        m.len = 0;
        call_on(0, send_mix_fn, &m);
        cr_assert_eq(m.rc, 0, "round %d: a call at line %d returned %d (%s)", round, m.line, m.rc,
                     pith_strerror(m.rc));
        client_expect(fd, m.expect, m.len);
        total += m.len;
    }
    TEST_WAIT_FOR(stats_of(0).bytes_out == total);
    pith_conn_info_t info = conn_info(m.c);
    cr_assert_eq(info.unsent, 0);
    cr_assert_eq(info.bytes_out, total);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);
    assert_server_clean();
    test_stop(NULL);
    free(m.expect);
    free(src);
}

/* ---- more of the contract: linger, abort, pause, partial consumption, shutdown ---- */

static void send_and_close_hook(pith_conn_t c, struct sconn *s)
{
    (void)s;
    note_send(pith_conn_send(c, payload, payload_len));
    note_send(pith_conn_close(c));
}

Test(net, a_close_whose_output_cannot_leave_resets_after_linger, .timeout = 30)
{
    payload_len = beyond_kernel();
    payload = random_bytes(payload_len, 14);
    srv.open_hook = send_and_close_hook;
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    uint64_t linger = (uint64_t)(50 * MS * test_timeout_multiplier());
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.conn.max_buffered = 4 * payload_len;
    lc.conn.high_watermark = 2 * payload_len;
    lc.conn.linger_ns = linger;
    int port;
    listen_on(&lc, &port);

    uint64_t t0 = pith_now_ns();
    int fd = client_open(port, 64 * KIB);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], -ETIMEDOUT);
    cr_assert_geq(atomic_load(&srv.conns[0].close_ns) - t0, linger, "reset before linger_ns");
    cr_assert_eq(stats_of(0).idle_closed, 0);
    cr_assert_eq(stats_of(0).conns_open, 0);
    /* What had left arrives in order; then the reset, not a clean end of stream. */
    int end = 1;
    size_t got = client_drain(fd, payload, payload_len, &end);
    cr_assert_lt(got, payload_len);
    cr_assert_eq(end, -ECONNRESET, "the stream ended with %d after %zu bytes", end, got);
    assert_server_clean();
    close(fd);
    test_stop(NULL);
    free(payload);
}

Test(net, abort_drops_the_queued_output_and_resets, .timeout = 30)
{
    payload_len = beyond_kernel();
    payload = random_bytes(payload_len, 15);
    srv.open_hook = send_payload_hook;
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.conn.max_buffered = 4 * payload_len;
    lc.conn.high_watermark = 2 * payload_len;
    int port;
    listen_on(&lc, &port);

    int fd = client_open(port, 64 * KIB);
    TEST_WAIT_FOR(stats_of(0).bytes_out > 0);
    pith_conn_t c = atomic_load(&srv.conns[0].id);
    cr_assert_eq(conn_do(c, OP_ABORT, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], -ECONNABORTED);
    cr_assert_eq(conn_do(c, OP_ABORT, NULL, 0), -ENOENT);
    int end = 1;
    size_t got = client_drain(fd, payload, payload_len, &end);
    cr_assert_lt(got, payload_len);
    cr_assert_eq(end, -ECONNRESET, "the stream ended with %d after %zu bytes", end, got);
    pith_net_stats_t st = stats_of(0);
    cr_assert_eq(st.resets, 0, "our own abort counted as the peer's reset");
    cr_assert_eq(st.conns_open, 0);
    assert_server_clean();
    close(fd);
    test_stop(NULL);
    free(payload);
}

Test(net, pause_holds_input_back_until_resume, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    int port;
    listen_on(&lc, &port);
    int fd = client_open(port, 0);
    client_write(fd, "a", 1);
    client_expect(fd, (const uint8_t *)"a", 1);
    struct sconn *s = &srv.conns[0];
    pith_conn_t c = atomic_load(&s->id);

    cr_assert_eq(conn_do(c, OP_PAUSE, NULL, 0), 0);
    cr_assert_eq(conn_do(c, OP_PAUSE, NULL, 0), 0, "a second pause");
    client_write(fd, "bc", 2);
    /* Whatever the kernel still hands over is kept, not offered. */
    uint64_t until = pith_now_ns() + 20 * MS;
    while (pith_now_ns() < until)
        test_sync_all();
    cr_assert_eq(atomic_load(&s->data_bytes), 1, "on_data ran while paused");
    cr_assert_eq(wait_fd(fd, POLLIN, pith_now_ns() + 20 * MS), 0, "an echo came while paused");
    pith_conn_info_t info = conn_info(c);
    cr_assert(info.bytes_in == 1 || (info.bytes_in == 3 && info.buffered == 2),
              "bytes_in %" PRIu64 ", buffered %zu", info.bytes_in, info.buffered);

    cr_assert_eq(conn_do(c, OP_RESUME, NULL, 0), 0);
    client_expect(fd, (const uint8_t *)"bc", 2);
    cr_assert_eq(atomic_load(&s->data_bytes), 3);
    cr_assert_eq(conn_do(c, OP_RESUME, NULL, 0), 0, "resume when not paused");
    client_write(fd, "d", 1);
    client_expect(fd, (const uint8_t *)"d", 1);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(s, 0);
    assert_server_clean();
    test_stop(NULL);
}

/* Consumes whole lines only, echoing each; the rest of a line waits for the next bytes. */
static size_t line_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    struct sconn *s = cctx;
    const uint8_t *p = data;
    size_t used = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\n') {
            note_send(pith_conn_send(c, p + used, i + 1 - used));
            used = i + 1;
        }
    }
    atomic_fetch_add(&s->data_bytes, used);
    atomic_store(&s->held, len - used);
    atomic_fetch_add(&s->data_calls, 1);
    return used;
}

static const pith_tcp_handler_t line_handler = {
    .on_open = srv_open,
    .on_data = line_data,
    .on_close = srv_close,
};

Test(net, unconsumed_bytes_are_offered_again_in_front_of_the_next, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&line_handler);
    int port;
    listen_on(&lc, &port);
    int fd = client_open(port, 0);
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);
    struct sconn *s = &srv.conns[0];

    char text[2048];
    size_t len = 0;
    for (int i = 0; i < 100; i++)
        len += (size_t)snprintf(text + len, sizeof text - len, "line %d of %s\n", i,
                                i % 7 ? "many" : "a hundred lines");
    /* Chunks of 1..13 bytes, each delivered before the next is sent, so that most lines are
     * assembled from kept bytes and new ones. */
    uint64_t x = 16;
    size_t at = 0, since_nl = 0;
    uint64_t calls = 0;
    while (at < len) {
        size_t n = 1 + (size_t)(rng_next(&x) % 13);
        if (n > len - at)
            n = len - at;
        client_write(fd, text + at, n);
        for (size_t i = at; i < at + n; i++)
            since_nl = text[i] == '\n' ? 0 : since_nl + 1;
        at += n;
        calls++;
        TEST_WAIT_FOR(atomic_load(&s->data_calls) == calls);
        cr_assert_eq(atomic_load(&s->held), since_nl, "after %zu bytes", at);
        cr_assert_eq(conn_info(atomic_load(&s->id)).buffered, since_nl);
    }
    client_expect(fd, (const uint8_t *)text, len);
    cr_assert_eq(atomic_load(&s->data_bytes), len);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(s, 0);
    assert_server_clean();
    test_stop(NULL);
}

static void send_and_shutdown_hook(pith_conn_t c, struct sconn *s)
{
    (void)s;
    note_send(pith_conn_send(c, payload, payload_len));
    note_send(pith_conn_shutdown(c));
}

static const pith_tcp_handler_t count_handler = {
    .on_open = srv_open,
    .on_data = count_data,
    .on_close = srv_close,
};

Test(net, shutdown_sends_the_queued_output_first_and_reading_goes_on, .timeout = 30)
{
    payload_len = 1 * MIB;
    payload = random_bytes(payload_len, 17);
    srv.open_hook = send_and_shutdown_hook;
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&count_handler);
    lc.conn.max_buffered = 4 * payload_len;
    lc.conn.high_watermark = 2 * payload_len;
    int port;
    listen_on(&lc, &port);

    int fd = client_open(port, 64 * KIB);
    client_expect(fd, payload, payload_len);
    cr_assert_eq(client_end(fd), 0);
    client_write(fd, "after", 5);
    TEST_WAIT_FOR(atomic_load(&srv.conns[0].data_bytes) == 5);
    cr_assert_eq(atomic_load(&srv.closes), 0);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);
    assert_server_clean();
    test_stop(NULL);
    free(payload);
}

/* ---- more outbound: a timeout that never fires, IPv6 ---- */

Test(net, a_connect_timeout_does_not_fire_once_connected, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&count_handler);
    int port;
    listen_on(&lc, &port);

    uint64_t timeout = 50 * MS;
    uint64_t t0;
    pith_conn_t id = connect_from(0, port, timeout, &t0);
    TEST_WAIT_FOR(atomic_load(&out.opens) == 1 &&
                  atomic_load(&srv.conns[0].data_bytes) == sizeof out_msg - 1);
    /* Three timeouts later it is still open (nothing answers the client: it does not close). */
    TEST_WAIT_FOR(pith_now_ns() - t0 > 3 * timeout);
    cr_assert_eq(atomic_load(&out.closes), 0, "closed with reason %d", atomic_load(&out.reason));
    cr_assert_eq(stats_of(0).connected, 1);
    cr_assert_eq(conn_do(id, OP_CLOSE, NULL, 0), 0);
    TEST_WAIT_FOR(atomic_load(&out.closes) == 1);
    cr_assert_eq(atomic_load(&out.reason), 0);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_closed(&srv.conns[0], 0);
    TEST_WAIT_FOR(stats_of(0).conns_open == 0);
    test_stop(NULL);
}

Test(net, ipv6_loopback_listens_connects_and_names_its_peer, .timeout = 30)
{
    int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_loopback;
    bool have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&a6, sizeof a6) == 0;
    if (probe >= 0)
        close(probe);
    if (!have_v6)
        cr_skip_test("no IPv6 loopback here");

    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.host = "::1";
    int port;
    listen_on(&lc, &port);
    pith_tcp_opts_t o;
    memset(&o, 0, sizeof o);
    o.handler = &out_handler;
    o.ctx = &out_marker;
    struct connect_req q = {.host = "::1", .port = (uint16_t)port, .opts = &o};
    call_on(0, connect_fn, &q);
    cr_assert_eq(q.rc, 0, "pith_tcp_connect(::1): %d (%s)", q.rc, pith_strerror(q.rc));
    TEST_WAIT_FOR(atomic_load(&srv.opens) == 1);
    cr_assert_str_eq(srv.conns[0].peer, "::1");
    cr_assert_gt(srv.conns[0].peer_port, 0);
    TEST_WAIT_FOR(atomic_load(&out.closes) == 1);
    cr_assert_eq(atomic_load(&out.reason), 0);
    cr_assert_eq(atomic_load(&out.got), sizeof out_msg - 1);
    cr_assert_eq(memcmp(out.buf, out_msg, sizeof out_msg - 1), 0);
    TEST_WAIT_FOR(atomic_load(&srv.closes) == 1);
    assert_server_clean();
    test_stop(NULL);
}

/* ---- more actor mode: a tiny mailbox, a failing init, stop with actors open ---- */

static const pith_actor_type_t tiny_actor_type = {
    .name = "net.tiny_mailbox_actor",
    .behaviour = tcp_actor_behaviour,
    .state_size = sizeof(struct actor_state),
    .init = tcp_actor_init,
    .mailbox_max = 2,
};

Test(net, actor_mode_with_a_full_mailbox_keeps_every_byte_in_order, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = actor_listen_config();
    lc.conn.actor_type = &tiny_actor_type;
    int port;
    listen_on(&lc, &port);

    size_t len = 512 * KIB;
    uint8_t *data = random_bytes(len, 18);
    int fd = client_open(port, 0);
    client_write(fd, data, len);
    client_expect(fd, data, len);
    pith_actor_type_stats_t ts;
    cr_assert_eq(pith_actor_type_stats(&tiny_actor_type, &ts), 0);
    cr_assert_gt(ts.rejected, 0, "the mailbox never filled: the test did not test");
    cr_assert_eq(atomic_load(&act.rec[0].bytes), len);
    close(fd);
    TEST_WAIT_FOR(atomic_load(&act.rec[0].closed) == 1);
    cr_assert_eq(atomic_load(&act.rec[0].reason), 0);
    cr_assert_eq(atomic_load(&act.send_errs), 0, "a send from the actor failed: %d",
                 atomic_load(&act.send_err));
    test_stop(NULL);
    free(data);
}

static int failing_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    (void)state;
    (void)arg;
    return -EACCES;
}

static const pith_actor_type_t failing_actor_type = {
    .name = "net.failing_actor",
    .behaviour = tcp_actor_behaviour,
    .state_size = sizeof(struct actor_state),
    .init = failing_init,
};

Test(net, a_connection_whose_actor_fails_to_start_is_reset, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = actor_listen_config();
    lc.conn.actor_type = &failing_actor_type;
    int port;
    listen_on(&lc, &port);

    /* The reset may come before this thread sees its connect complete. */
    int fd = client_start(port, 0);
    int err = client_connected(fd);
    cr_assert(err == 0 || err == ECONNRESET, "connect: %s", strerror(err));
    if (err == 0)
        cr_assert_eq(client_end(fd), -ECONNRESET);
    TEST_WAIT_FOR(stats_of(0).accepted == 1 && stats_of(0).conns_open == 0);
    pith_actor_type_stats_t ts;
    cr_assert_eq(pith_actor_type_stats(&failing_actor_type, &ts), 0);
    cr_assert_eq(ts.live, 0);
    close(fd);
    test_stop(NULL);
}

Test(net, engine_stop_with_actor_connections_open_ends_them_cleanly, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_listen_config_t lc = actor_listen_config();
    int port;
    listen_on(&lc, &port);
    enum { N = 4 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = client_open(port, 0);
        client_write(fds[i], "x", 1);
        client_expect(fds[i], (const uint8_t *)"x", 1);
    }
    test_stop(NULL);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(client_end(fds[i]), 0, "client %d", i);
        close(fds[i]);
    }
}

/* ---- listeners: from a shard, ports released, a second engine ---- */

struct listen_req {
    pith_listen_config_t lc;
    pith_listener_t l;
    int rc;
};

static void *listen_fn(void *arg)
{
    struct listen_req *q = arg;
    q->rc = pith_tcp_listen(&q->lc, &q->l);
    return NULL;
}

static void *unlisten_fn(void *arg)
{
    struct listen_req *q = arg;
    q->rc = pith_tcp_unlisten(q->l);
    return NULL;
}

Test(net, listen_and_unlisten_from_a_shard, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    struct listen_req q;
    q.lc = listen_config(&echo_handler);
    call_on(0, listen_fn, &q);
    cr_assert_eq(q.rc, 0, "pith_tcp_listen on a shard: %d (%s)", q.rc, pith_strerror(q.rc));
    int port = pith_tcp_listener_port(q.l);
    cr_assert_gt(port, 0);
    int fd = client_open(port, 0);
    client_write(fd, "shard", 5);
    client_expect(fd, (const uint8_t *)"shard", 5);

    call_on(1, unlisten_fn, &q);
    cr_assert_eq(q.rc, 0);
    /* From a shard the other shards stop when their tasks run: a connect is refused soon. */
    uint64_t until = test_wait_deadline();
    int err = 0;
    while (err != ECONNREFUSED) {
        cr_assert_lt(pith_now_ns(), until, "connects still succeed after unlisten");
        int c = client_start(port, 0);
        err = client_connected(c);
        close(c);
        test_sync_all();
    }
    client_write(fd, "still", 5);
    client_expect(fd, (const uint8_t *)"still", 5);
    close(fd);
    TEST_WAIT_FOR(stats_sum().conns_open == 0);
    test_stop(NULL);
}

Test(net, unlisten_from_outside_returns_with_the_port_released, .timeout = 30)
{
    /* Ten rounds, each on a fresh engine whose shards sleep when unlisten reaches them. */
    for (int round = 0; round < 10; round++) {
        pith_config_t cfg = test_config(2);
        test_start(&cfg);
        /* A port of our choosing, so that every shard's socket binds it explicitly (and holds
         * it until the socket is closed, not merely shut). */
        int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = loopback(0);
        cr_assert_eq(bind(probe, (struct sockaddr *)&a, sizeof a), 0);
        int port = local_port(probe);
        close(probe);
        pith_listen_config_t lc = listen_config(&echo_handler);
        lc.port = (uint16_t)port;
        int got;
        pith_listener_t l = listen_on(&lc, &got);
        cr_assert_eq(got, port);
        cr_assert_eq(pith_tcp_unlisten(l), 0);
        /* "From outside the engine it returns once every shard has closed its socket": a
         * plain bind to the port, without SO_REUSEADDR, finds it free. */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        a = loopback(port);
        int rc = bind(fd, (struct sockaddr *)&a, sizeof a);
        cr_assert_eq(rc, 0, "round %d: port %d is still bound after unlisten returned: %s", round,
                     port, strerror(errno));
        close(fd);
        test_stop(NULL);
    }
}

Test(net, a_second_engine_listens_and_echoes_with_fresh_state, .timeout = 30)
{
    pith_listener_t old = 0;
    for (unsigned round = 0; round < 2; round++) {
        pith_config_t cfg = test_config(2);
        test_start(&cfg);
        if (old != 0) {
            cr_assert_eq(pith_tcp_unlisten(old), -ENOENT, "the last engine's listener");
            cr_assert_eq(pith_tcp_listener_port(old), -ENOENT);
        }
        pith_listen_config_t lc = listen_config(&echo_handler);
        int port;
        old = listen_on(&lc, &port);
        int fd = client_open(port, 0);
        client_write(fd, "again", 5);
        client_expect(fd, (const uint8_t *)"again", 5);
        pith_net_stats_t t = stats_sum();
        cr_assert_eq(t.accepted, 1, "round %u: accepted %" PRIu64, round, t.accepted);
        cr_assert_eq(t.bytes_in, 5);
        close(fd);
        TEST_WAIT_FOR(atomic_load(&srv.closes) == round + 1);
        TEST_WAIT_FOR(stats_sum().conns_open == 0);
        test_stop(NULL);
    }
    cr_assert_eq(closes_with(0), 2);
    assert_server_clean();
}

/* ---- stop with output the client does not take ---- */

Test(net, engine_stop_with_output_that_cannot_leave_does_not_end_in_a_clean_eof, .timeout = 30)
{
    payload_len = beyond_kernel();
    payload = random_bytes(payload_len, 19);
    srv.open_hook = send_payload_hook;
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_listen_config_t lc = listen_config(&echo_handler);
    lc.conn.max_buffered = 4 * payload_len;
    lc.conn.high_watermark = 2 * payload_len;
    int port;
    listen_on(&lc, &port);
    int fd = client_open(port, 64 * KIB);
    TEST_WAIT_FOR(stats_of(0).partial_sends > 0);
    test_stop(NULL);
    assert_closed(&srv.conns[0], -ESHUTDOWN);
    /* The output was cut short: a clean end of stream would pass a truncated stream off as
     * whole, so the stop must end it as a linger timeout does, with a reset. */
    int end = 1;
    size_t got = client_drain(fd, payload, payload_len, &end);
    cr_assert_lt(got, payload_len);
    cr_assert_eq(end, -ECONNRESET, "the truncated stream (%zu of %zu bytes) ended with %d", got,
                 payload_len, end);
    close(fd);
    free(payload);
}
