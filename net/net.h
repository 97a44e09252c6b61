/* Private to net/: a shard's networking state, its connections and listeners. Every structure
 * here is touched by its shard's thread only, except the counters (relaxed atomics, read by
 * pith_net_stats from any thread) and the listener table (a mutex). */
#ifndef PITH_NET_PRIV_H
#define PITH_NET_PRIV_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <pith/net.h>
#include <pith/pith.h>

#include "hist.h"
#include "hooks.h"
#include "fop.h"
#include "io.h"
#include "mem.h"   /* stat_add: single-writer counters */
#include "slots.h" /* ids of connections and listeners */

/* The buffer group id of the shard's provided receive buffers. */
#define NET_BGID 7
/* At most this many segments go into one vectored send. */
#define NET_IOV 16
/* Completions one connection may have outstanding at once (receive, send, cancels): the
 * completion queue is sized against this (pith_listen_config_t.max_conns). */
#define NET_CQE_PER_CONN  3
#define NET_MAX_LISTENERS 256

/* Buckets of the per-connection byte histograms: bucket b holds [2^(b-1), 2^b). */
#define NET_POW2 49

struct net_counters {
    _Atomic uint64_t conns_open, accepted, connected, refused, over_limit, idle_closed, resets,
        bytes_in, bytes_out, recv_nobufs, recv_rearms, accept_rearms, partial_sends, paused;
    /* Per connection, counted as one that opened is freed: how long it lived (log buckets of
     * ns, hist.h) and its bytes each way, with their sums. */
    _Atomic uint64_t life[HIST_BUCKETS], life_sum;
    _Atomic uint64_t in[NET_POW2], in_sum, out[NET_POW2], out_sum;
};

/* The per-connection histograms of one shard (obs/ reads them): as struct net_counters's. */
struct net_conn_hists {
    uint64_t life[HIST_BUCKETS], life_sum;
    uint64_t in[NET_POW2], in_sum, out[NET_POW2], out_sum;
};
/* Any thread while the engine runs (zeros for a shard that never used TCP). Errors: -EINVAL
 * shard out of range, -ESHUTDOWN no engine. */
int net_conn_hists(unsigned shard, struct net_conn_hists *out);

/* Connection options after defaults. */
struct conn_opts {
    const pith_tcp_handler_t *handler;
    const pith_actor_type_t *actor_type;
    void *ctx;
    uint64_t idle_ns, linger_ns;
    size_t max_buffered, high, low;
};

/* An output segment: bytes copied into data[], or a pith_buf held by reference. */
struct seg {
    struct seg *next;
    pith_buf_t *buf; /* NULL: bytes are data[] */
    const uint8_t *base;
    uint32_t off, len, cap;
    uint8_t data[];
};

enum conn_state { C_CONNECTING, C_OPEN, C_CLOSING, C_DEAD };
enum { PAUSE_APP = 1, PAUSE_WATER = 2, PAUSE_ACTOR = 4 };

struct net_shard;

struct conn {
    struct io_op recv_op, send_op;
    struct net_shard *ns;
    uint64_t id;
    int fd;
    uint8_t state;
    uint8_t pause;
    uint8_t ops;   /* operations whose last CQE has not come */
    uint8_t in_cb; /* callbacks of this connection running: freeing waits */
    bool recv_armed, recv_cancel, sending, rd_eof, shut_req, shut_done, reset_on_close;
    bool kick_queued, resume_queued, starved;
    bool opened; /* on_open ran (and conns_open counts it) */
    int reason;
    struct conn_opts o;
    void *cctx;
    pith_ref_t actor;
    /* input the application has not consumed */
    uint8_t *in;
    size_t in_len, in_cap;
    /* output */
    struct seg *head, *tail;
    size_t unsent;
    uint32_t fly; /* bytes the send in flight asked for */
    struct iovec iov[NET_IOV];
    struct msghdr msg;
    uint64_t last_rx;
    pith_timer_id_t idle_timer, linger_timer;
    uint64_t bytes_in, bytes_out;
    uint64_t born; /* when it opened (ticks) */
    struct conn *starved_next;
    struct fop *connect; /* an outbound connect in flight (connect.c) */
    /* The peer's numeric address, looked up by the first pith_conn_info that finds it (a
     * connected socket's peer does not change), so later calls make no system call. */
    char peer[46];
    uint16_t peer_port;
    bool peer_known;
};

/* A listener's socket on one shard. */
struct lpart {
    struct io_op op;
    struct listener *l;
    int fd;
    bool armed, closing;
    pith_timer_id_t retry; /* a re-arm waiting on a timer */
    struct lpart *next;    /* the shard's list */
};

struct listener {
    uint64_t id; /* in the listener table (listen.c) */
    pith_tcp_spread_t spread;
    unsigned acceptor;
    unsigned max_conns;
    int port;
    int nfds;
    int *fds;                    /* one per shard (REUSEPORT) or one (ACCEPTOR) */
    _Atomic unsigned parts_open; /* shards still holding a socket of it */
    _Atomic unsigned rr;         /* the acceptor's round-robin start */
    bool unlistened;
    struct conn_opts o;
};

struct net_shard {
    unsigned shard;
    struct io_ring *ring;
    /* provided receive buffers */
    struct io_uring_buf_ring *br;
    uint8_t *bufs;
    size_t br_bytes, bufs_bytes;
    unsigned nbufs, buf_size;
    bool br_registered;
    unsigned max_conns_fit; /* what the completion queue can carry */
    struct slots conns;     /* by id; the shard is the owner in every id */
    struct conn *starved;   /* waiting for buffers to re-arm */
    bool rearm_queued;
    struct lpart *parts;
    bool exiting;
    struct net_counters st;
};

/* state.c */
struct net_shard *net_shard_get(void); /* the calling shard's, made on first use */
struct net_shard *net_shard_peek(unsigned shard);
struct conn *conn_find(struct net_shard *ns, uint64_t id);
/* The live connection an id names, on whichever shard's table it points to; NULL if none. */
struct conn *conn_by_id(uint64_t id);
struct conn *conn_alloc(struct net_shard *ns);
void conn_release_slot(struct conn *c);
/* bufring.c */
int bufring_open(struct net_shard *ns);
void bufring_close(struct net_shard *ns);
static inline uint8_t *bufring_addr(struct net_shard *ns, unsigned bid)
{
    return ns->bufs + (size_t)bid * ns->buf_size;
}
void bufring_put(struct net_shard *ns, unsigned bid);
/* The connection an io_op of it belongs to. */
#define CONN_OF(op, member) ((struct conn *)((char *)(op)-offsetof(struct conn, member)))

/* conn.c: the connection's lifecycle */
int conn_opts_resolve(struct conn_opts *o, const pith_tcp_opts_t *in);
/* The connection id names if it lives on the calling shard; else NULL and *err is -EPERM (not
 * its shard) or -ENOENT. */
struct conn *conn_owned(pith_conn_t id, int *err);
/* Ends one of c's operations in flight: an ASYNC_CANCEL, or a shutdown of the socket when no
 * SQE can be had. */
void conn_cancel_op(struct conn *c, struct io_op *op);
void conn_start(struct conn *c); /* open: on_open, then reading */
/* Ends c now with `reason`: output dropped, operations cancelled; freed once they report. */
void conn_fail(struct conn *c, int reason);
void conn_maybe_free(struct conn *c);
/* Stops reading and ends c once its queued output is sent (or the linger bound passes). */
void conn_close_graceful(struct conn *c, int reason);
void conn_finish_close(struct conn *c); /* CLOSING with nothing left to send: ends it */
void conn_over_limit(struct conn *c);   /* past max_buffered: counted, ended with -ENOBUFS */
int conn_adopt(struct net_shard *ns, int fd, struct listener *l);
void conn_resume(struct conn *c, uint8_t bit);
void conn_resume_task(void *arg);
void conn_exit_all(struct net_shard *ns);
bool net_conn_task(pith_fn_t fn);
/* recv.c: input */
void recv_arm(struct conn *c);      /* unless paused, starved, closing or armed */
void recv_stop(struct conn *c);     /* cancels the armed receive */
void recv_unstarve(struct conn *c); /* off the list of receives waiting for buffers */
void recv_feed(struct conn *c);     /* offers the kept input again */
void recv_cqe(struct io_op *op, int res, uint32_t flags);
void recv_rearm_task(void *arg);
/* send.c: output */
void send_kick(struct conn *c); /* starts a send of what is queued, if none is in flight */
void send_drop_output(struct conn *c);
void send_cqe(struct io_op *op, int res, uint32_t flags);
void send_kick_task(void *arg);
/* connect.c */
int net_parse_addr(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);
/* listen.c */
void listen_exit_all(struct net_shard *ns);
void adopt_task(void *arg);
void listen_install_task(void *arg);
void unlisten_task(void *arg);
void net_listeners_gone(void);
/* actor.c */
extern const pith_tcp_handler_t net_actor_handler;
void net_actor_retry(void *arg);

#endif
