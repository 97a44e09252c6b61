/* Listeners: a socket per shard with SO_REUSEPORT, or one socket on an acceptor shard that
 * hands each connection to the shard with the fewest open ones. Multishot accept, armed again
 * whenever a completion comes without IORING_CQE_F_MORE. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "net.h"

/* Listeners of the running engine, by id; taken under `lock`, by shards too. Entries go when
 * the engine is gone, and the table with them; its generations go on in the next engine's. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct slots table;
static uint32_t gen_keep;

#define DEF_BACKLOG   4096
#define DEF_MAX_CONNS 4096u
#define RETRY_NS      UINT64_C(10000000)

/* The listener in slot i, for a task that carries its slot: listeners stay until the engine
 * is gone, so it is there. Under the lock: another thread may be growing the table. */
static struct listener *listener_get(uint32_t i)
{
    pthread_mutex_lock(&lock);
    struct listener *l = slots_at(&table, i);
    pthread_mutex_unlock(&lock);
    return l;
}

static void accept_cqe(struct io_op *op, int res, uint32_t flags);

static void accept_retry(void *arg);

static void retry_later(struct lpart *p)
{
    if (p->retry == 0 && pith_timer_add(RETRY_NS, 0, accept_retry, p, &p->retry) != 0)
        p->retry = 0;
}

static void arm_accept(struct net_shard *ns, struct lpart *p)
{
    if (p->armed || p->closing)
        return;
    struct io_uring_sqe *sqe = io_ring_sqe(ns->ring);
    if (sqe == NULL) {
        retry_later(p);
        return;
    }
    io_uring_prep_multishot_accept(sqe, p->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &p->op);
    p->armed = true;
}

static void accept_retry(void *arg)
{
    struct lpart *p = arg;
    p->retry = 0;
    struct net_shard *ns = net_shard_peek((unsigned)pith_shard_id());
    if (ns != NULL && !p->closing)
        arm_accept(ns, p);
}

static void part_free(struct net_shard *ns, struct lpart *p)
{
    for (struct lpart **q = &ns->parts; *q != NULL; q = &(*q)->next)
        if (*q == p) {
            *q = p->next;
            break;
        }
    if (p->retry != 0)
        (void)pith_timer_cancel(p->retry);
    close(p->fd);
    /* Release: the close happens before an unlistening thread that sees the count drop. */
    atomic_fetch_sub_explicit(&p->l->parts_open, 1, memory_order_release);
    free(p);
}

/* Stops one socket of a listener. It is shut at once, so the kernel takes no more connections
 * on it; the descriptor closes when the accept's last completion comes. */
static void part_stop(struct net_shard *ns, struct lpart *p)
{
    if (p->closing)
        return;
    p->closing = true;
    shutdown(p->fd, SHUT_RDWR);
    if (!p->armed) {
        part_free(ns, p);
        return;
    }
    (void)io_ring_queue_cancel(ns->ring, &p->op); /* the shutdown ends it anyway */
}

static unsigned conns_of(unsigned shard)
{
    struct net_shard *ns = net_shard_peek(shard);
    return ns != NULL ? (unsigned)atomic_load_explicit(&ns->st.conns_open, memory_order_relaxed)
                      : 0;
}

/* Where the acceptor sends a new connection: the shard with the fewest open, ties broken
 * round-robin so that an idle engine still spreads. The counts are other shards' relaxed
 * counters: a slightly stale view only skews one choice. */
static unsigned pick_shard(struct listener *l)
{
    unsigned n = pith_shard_count();
    unsigned start = atomic_fetch_add_explicit(&l->rr, 1, memory_order_relaxed) % n;
    unsigned best = start, best_load = conns_of(start);
    for (unsigned k = 1; k < n && best_load > 0; k++) {
        unsigned s = (start + k) % n;
        unsigned load = conns_of(s);
        if (load < best_load) {
            best = s;
            best_load = load;
        }
    }
    return best;
}

void adopt_task(void *arg)
{
    uint64_t v = (uint64_t)(uintptr_t)arg;
    int fd = (int)(v & 0xFFFFFFFFu);
    struct listener *l = listener_get((uint32_t)(v >> 32));
    struct net_shard *ns = net_shard_get();
    if (l == NULL || ns == NULL) {
        close(fd);
        return;
    }
    (void)conn_adopt(ns, fd, l);
}

static void hand_out(struct net_shard *ns, struct lpart *p, int fd)
{
    struct listener *l = p->l;
    if (l->spread == PITH_TCP_REUSEPORT) {
        (void)conn_adopt(ns, fd, l);
        return;
    }
    unsigned to = pick_shard(l);
    if (to == ns->shard) {
        (void)conn_adopt(ns, fd, l);
        return;
    }
    uint32_t idx = slots_slot(l->id);
    if (pith_submit(to, adopt_task, (void *)(uintptr_t)((uint64_t)idx << 32 | (uint32_t)fd)) != 0) {
        /* The mesh pushes back: keep it here rather than drop it. */
        (void)conn_adopt(ns, fd, l);
    }
}

static void accept_cqe(struct io_op *op, int res, uint32_t flags)
{
    struct lpart *p = (struct lpart *)((char *)op - offsetof(struct lpart, op));
    struct net_shard *ns = net_shard_peek((unsigned)pith_shard_id());
    bool more = (flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        p->armed = false;
    if (res >= 0) {
        if (p->closing)
            close(res);
        else
            hand_out(ns, p, res);
    }
    if (more)
        return;
    if (p->closing) {
        part_free(ns, p);
        return;
    }
    stat_inc(&ns->st.accept_rearms);
    if (res < 0 && res != -ECANCELED) {
        /* Out of descriptors or memory: try again a little later rather than spin. */
        retry_later(p);
        return;
    }
    arm_accept(ns, p);
}

/* On the shard: takes the listener's socket number `part` and starts accepting. Returns 0 or
 * -errno, as a pointer for pith_call_wait. */
static void *install(void *arg)
{
    uint64_t v = (uint64_t)(uintptr_t)arg;
    struct listener *l = listener_get((uint32_t)(v >> 32));
    int part = (int)(v & 0xFFFFFFFFu);
    int fd = l->fds[part];
    l->fds[part] = -1;
    struct net_shard *ns = shard_stopping() ? NULL : net_shard_get();
    struct lpart *p = ns != NULL ? calloc(1, sizeof(*p)) : NULL;
    if (p == NULL) {
        int err = ns == NULL ? (shard_stopping() ? -ESHUTDOWN : errno ? -errno : -ENOMEM) : -ENOMEM;
        close(fd);
        atomic_fetch_sub_explicit(&l->parts_open, 1, memory_order_release);
        return (void *)(intptr_t)err;
    }
    p->op.done = accept_cqe;
    p->l = l;
    p->fd = fd;
    p->next = ns->parts;
    ns->parts = p;
    arm_accept(ns, p);
    return NULL;
}

void listen_install_task(void *arg)
{
    (void)install(arg);
}

/* A socket bound to ss with SO_REUSEADDR and TCP_NODELAY (and SO_REUSEPORT when asked), listening
 * unless backlog is negative; or -errno. */
static int open_socket(const struct sockaddr_storage *ss, socklen_t sl, bool reuseport, int backlog)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
        /* Accepted connections inherit it: no setsockopt per connection. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)ss, sl) != 0 ||
        (backlog >= 0 && listen(fd, backlog) != 0)) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* Whether another socket already listens on ss (an explicit port). SO_REUSEPORT lets sockets
 * of the same user share a port, so without this a second server started on a port in use
 * would join the first one's group and silently take half of its connections. A socket bound
 * with SO_REUSEADDR alone conflicts with any listener; it is closed before the group binds.
 * Another process of the same user can still join the group afterwards: that is what
 * SO_REUSEPORT allows, and no option forbids it. Returns 0 or the errno of bind. */
static int probe_free(const struct sockaddr_storage *ss, socklen_t sl)
{
    int fd = open_socket(ss, sl, false, -1);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -errno;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void listener_free(struct listener *l)
{
    if (l->fds != NULL)
        for (int i = 0; i < l->nfds; i++)
            if (l->fds[i] >= 0)
                close(l->fds[i]);
    free(l->fds);
    free(l);
}

int pith_tcp_listen(const pith_listen_config_t *cfg, pith_listener_t *out)
{
    /* The id is the only way to pith_tcp_unlisten: without it the port stays taken. */
    if (out == NULL)
        return -EINVAL;
    *out = 0;
    if (cfg == NULL)
        return -EINVAL;
    struct conn_opts o;
    int err = conn_opts_resolve(&o, &cfg->conn);
    if (err)
        return err;
    struct sockaddr_storage ss;
    socklen_t sl;
    if (net_parse_addr(cfg->host, cfg->port, &ss, &sl) != 0 || cfg->backlog < 0 ||
        (cfg->spread != PITH_TCP_REUSEPORT && cfg->spread != PITH_TCP_ACCEPTOR))
        return -EINVAL;
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    if (cfg->spread == PITH_TCP_ACCEPTOR && cfg->acceptor_shard >= n)
        return -EINVAL;
    struct listener *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return -ENOMEM;
    l->spread = cfg->spread;
    l->acceptor = cfg->acceptor_shard;
    l->max_conns = cfg->max_conns ? cfg->max_conns : DEF_MAX_CONNS;
    l->o = o;
    l->nfds = cfg->spread == PITH_TCP_REUSEPORT ? (int)n : 1;
    l->fds = malloc((size_t)l->nfds * sizeof(int));
    if (l->fds == NULL) {
        free(l);
        return -ENOMEM;
    }
    for (int i = 0; i < l->nfds; i++)
        l->fds[i] = -1;
    int backlog = cfg->backlog ? cfg->backlog : DEF_BACKLOG;
    if (cfg->spread == PITH_TCP_REUSEPORT && cfg->port != 0) {
        err = probe_free(&ss, sl);
        if (err) {
            listener_free(l);
            return err;
        }
    }
    for (int i = 0; i < l->nfds; i++) {
        int fd = open_socket(&ss, sl, cfg->spread == PITH_TCP_REUSEPORT, backlog);
        if (fd < 0) {
            listener_free(l);
            return fd;
        }
        l->fds[i] = fd;
        if (i == 0) {
            /* Port 0: the others bind to the port the kernel gave the first. */
            l->port = bound_port(fd);
            if (ss.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)l->port);
            else
                ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)l->port);
        }
    }
    pthread_mutex_lock(&lock);
    if (table.gen == 0) /* the engine's first listener */
        slots_init(&table, 0, NET_MAX_LISTENERS, &gen_keep);
    err = slots_add(&table, l, &l->id);
    pthread_mutex_unlock(&lock);
    if (err) {
        listener_free(l);
        return err;
    }
    uint32_t idx = slots_slot(l->id);
    atomic_store_explicit(&l->parts_open, (unsigned)l->nfds, memory_order_relaxed);
    bool outside = pith_shard_id() < 0;
    int first_err = 0;
    for (int i = 0; i < l->nfds; i++) {
        unsigned shard = cfg->spread == PITH_TCP_REUSEPORT ? (unsigned)i : cfg->acceptor_shard;
        void *arg = (void *)(uintptr_t)((uint64_t)idx << 32 | (uint32_t)i);
        int e;
        if (outside) {
            void *res = NULL;
            e = pith_call_wait(shard, install, arg, &res);
            if (e == 0)
                e = (int)(intptr_t)res;
        } else {
            e = pith_submit(shard, listen_install_task, arg);
            if (e != 0) { /* never installed: its socket closes here */
                close(l->fds[i]);
                l->fds[i] = -1;
                atomic_fetch_sub_explicit(&l->parts_open, 1, memory_order_release);
            }
        }
        if (e != 0 && first_err == 0)
            first_err = e;
    }
    if (first_err != 0) {
        (void)pith_tcp_unlisten(l->id);
        return first_err;
    }
    *out = l->id;
    return 0;
}

int pith_tcp_listener_port(pith_listener_t id)
{
    pthread_mutex_lock(&lock);
    struct listener *l = slots_find(&table, id);
    int port = l != NULL ? l->port : -ENOENT;
    pthread_mutex_unlock(&lock);
    return port;
}

/* On a shard: stops its sockets of listener l. */
static void *unlisten_on(void *arg)
{
    struct listener *l = arg;
    struct net_shard *ns = net_shard_peek((unsigned)pith_shard_id());
    if (ns == NULL)
        return NULL;
    for (struct lpart *p = ns->parts, *next; p != NULL; p = next) {
        next = p->next;
        if (p->l == l)
            part_stop(ns, p);
    }
    return NULL;
}

void unlisten_task(void *arg)
{
    (void)unlisten_on(arg);
}

int pith_tcp_unlisten(pith_listener_t id)
{
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    pthread_mutex_lock(&lock);
    struct listener *l = slots_find(&table, id);
    bool first = l != NULL && !l->unlistened;
    if (first)
        l->unlistened = true;
    pthread_mutex_unlock(&lock);
    if (l == NULL)
        return -ENOENT;
    if (!first)
        return 0;
    bool outside = pith_shard_id() < 0;
    for (unsigned s = 0; s < n; s++) {
        if (l->spread == PITH_TCP_ACCEPTOR && s != l->acceptor)
            continue;
        if (outside)
            (void)pith_call_wait(s, unlisten_on, l, NULL);
        else if ((unsigned)pith_shard_id() == s)
            (void)unlisten_on(l);
        else
            (void)pith_submit(s, unlisten_task, l);
    }
    /* From outside, return once every socket is closed: each closes when its accept's last
     * completion reaches its shard, which is a loop turn or two away. Bounded at 2 s. */
    if (outside) {
        uint64_t deadline = pith_now_ns() + UINT64_C(2000000000);
        while (atomic_load_explicit(&l->parts_open, memory_order_acquire) > 0 &&
               pith_now_ns() < deadline) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
    return 0;
}

void listen_exit_all(struct net_shard *ns)
{
    for (struct lpart *p = ns->parts, *next; p != NULL; p = next) {
        next = p->next;
        part_stop(ns, p);
    }
}

void net_listeners_gone(void)
{
    pthread_mutex_lock(&lock);
    for (uint32_t i = 0; i < table.end; i++) {
        struct listener *l = slots_at(&table, i);
        if (l != NULL) {
            slots_remove(&table, l->id);
            listener_free(l);
        }
    }
    slots_fini(&table);
    pthread_mutex_unlock(&lock);
}
