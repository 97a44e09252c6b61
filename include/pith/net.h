/* TCP on the calling shard's io_uring: listeners on every shard, connections owned by one shard
 * each, driven by callbacks or by an actor per connection. Receives use multishot recv into a
 * ring of buffers the shard provides to the kernel; sends go through a per-connection queue
 * (partial sends resumed, segments written with one vectored send). Nothing blocks a shard.
 *
 * A connection lives on the shard that accepted or opened it; every pith_conn_* call is made on
 * that shard (pith_conn_shard says which), from a callback, an actor of that shard or a task
 * submitted there. Addresses are numeric (IPv4 or IPv6 literals): no name resolution. */
#ifndef PITH_NET_H
#define PITH_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <pith/actor.h>
#include <pith/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Names a connection: its shard, a generation and a slot. Never 0. A stale id (its connection
 * has closed) finds nothing: calls on it return -ENOENT. */
typedef uint64_t pith_conn_t;
/* Names a listener; never 0. */
typedef uint64_t pith_listener_t;

/* The reasons on_close (and PITH_MSG_TCP_CLOSED) gives: 0 after a close asked for locally or a
 * clean end of stream; otherwise -errno: -ECONNRESET the peer reset it, -ETIMEDOUT the idle
 * timeout (or a connect timeout), -ENOBUFS over max_buffered, -ESHUTDOWN the engine stopped,
 * -ECONNABORTED aborted locally, or the error a receive, send or connect ended with. */

/* Callbacks of a connection, run on its shard outside any actor's turn. Only on_data is
 * required. */
typedef struct pith_tcp_handler {
    /* The connection is open (accepted, or a connect succeeded). Returns the pointer the other
     * callbacks get as `cctx`. It may already send, or close the connection. ctx: the
     * listener's or the connect's. */
    void *(*on_open)(pith_conn_t c, void *ctx);
    /* Bytes arrived: data[0..len) holds what the last call left unconsumed, then the new bytes.
     * Returns how many it consumed (0..len) from the front; the rest is kept (counted against
     * max_buffered) and offered again, with more, at the next arrival. data is valid for the
     * call only. */
    size_t (*on_data)(pith_conn_t c, void *cctx, const void *data, size_t len);
    /* The peer shut its side (end of stream); sending still works. NULL: the connection
     * closes once its queued output is sent. */
    void (*on_eof)(pith_conn_t c, void *cctx);
    /* Unsent output went above high_watermark (reading paused) and is now below
     * low_watermark (reading resumed). NULL: nothing. */
    void (*on_drain)(pith_conn_t c, void *cctx);
    /* Last call for the connection: it is closed and its id finds nothing. Always comes once
     * for every connection that had on_open, and for a connect that failed (with cctx NULL). */
    void (*on_close)(pith_conn_t c, void *cctx, int reason);
} pith_tcp_handler_t;

/* Actor mode: messages that a connection's actor receives (tags above PITH_MSG_RESERVED). */
#define PITH_MSG_TCP_DATA   0xFFFFFF10u /* payload: the bytes (all are taken) */
#define PITH_MSG_TCP_EOF    0xFFFFFF11u /* the peer shut its side; no payload */
#define PITH_MSG_TCP_DRAIN  0xFFFFFF12u /* output fell below low_watermark; no payload */
#define PITH_MSG_TCP_CLOSED 0xFFFFFF13u /* payload: int32_t reason. The last message */

/* What an actor-mode connection's init gets as `arg`. */
typedef struct pith_tcp_open {
    pith_conn_t conn; /* the connection the actor is spawned for */
    void *ctx;        /* the listener's or the connect's */
} pith_tcp_open_t;

/* How connections behave. Zeros take the defaults. */
typedef struct pith_tcp_opts {
    /* Callbacks; or, when NULL, actor_type: each connection spawns an actor of that type on its
     * shard (init's arg is a pith_tcp_open_t *) and gets the messages above. An actor that
     * wants the connection closed calls pith_conn_close before it stops; the connection of an
     * actor that stopped without closing it is reset at its next event (bytes arriving, end of
     * stream, output drained) or by idle_timeout_ns. */
    const pith_tcp_handler_t *handler;
    const pith_actor_type_t *actor_type; /* used when handler is NULL */
    /* Given to on_open (or the actor's pith_tcp_open_t). The handler, the actor type and what
     * ctx points to must stay valid while connections made with these options live. */
    void *ctx;
    /* Close a connection that received nothing for this long (-ETIMEDOUT). 0: never. */
    uint64_t idle_timeout_ns;
    /* Unsent output plus unconsumed input one connection may hold (default 8 MiB). Past it
     * the connection is closed with -ENOBUFS and the shard's over_limit counter goes up. */
    size_t max_buffered;
    /* Unsent output above high pauses reading; below low resumes it (defaults 1 MiB, 256 KiB;
     * low <= high < max_buffered). */
    size_t high_watermark;
    size_t low_watermark; /* see high_watermark */
    /* How long a graceful close waits for queued output to leave before it resets the
     * connection (default 5 s). */
    uint64_t linger_ns;
} pith_tcp_opts_t;

/* How a listener spreads connections over the shards. */
typedef enum pith_tcp_spread {
    /* One socket per shard bound with SO_REUSEPORT: the kernel hashes each connection to a
     * shard. No hand-off, but the spread follows the hash, not the load. A port another
     * socket already listens on is refused with -EADDRINUSE, SO_REUSEPORT or not, so two
     * servers never split one port's connections by accident. */
    PITH_TCP_REUSEPORT = 0,
    /* One socket, accepted on acceptor_shard, each connection handed to the shard with the
     * fewest open connections (the acceptor included). */
    PITH_TCP_ACCEPTOR = 1,
} pith_tcp_spread_t;

/* Where and how to listen: zeros take the defaults; pith_tcp_listen copies it (but not what
 * conn's pointers point to, see pith_tcp_opts_t.ctx). */
typedef struct pith_listen_config {
    const char *host;         /* numeric address; NULL: every IPv4 address */
    uint16_t port;            /* 0: the kernel picks one (pith_tcp_listener_port) */
    int backlog;              /* 0: 4096 */
    pith_tcp_spread_t spread; /* how connections are spread over the shards */
    unsigned acceptor_shard;  /* PITH_TCP_ACCEPTOR */
    /* Open connections per shard at most (default 4096). More are accepted and closed at once,
     * and the shard's refused counter goes up. The shard's completion queue must hold a
     * completion per connection on top of its receive buffers: a shard whose ring is too small
     * (cfg.io_entries * 16 < net_bufs + 3 * max_conns + 64) lowers the bound to what fits. */
    unsigned max_conns;
    pith_tcp_opts_t conn; /* how the connections it accepts behave */
} pith_listen_config_t;

/* Listens on host:port on every shard; *out receives the listener's id, the only way to
 * pith_tcp_unlisten it (out is required: a listener nobody can name would hold its port until
 * the engine stops). From any thread while the engine runs; the sockets are bound before it
 * returns (so errors such as -EADDRINUSE come back here) and each shard starts accepting when it
 * next runs its loop. On an error *out (if out is not NULL) is 0 and nothing listens.
 * Errors: -EINVAL out or cfg NULL, or a bad address or option (handler and actor_type both
 * NULL, on_data NULL, watermarks out of order, acceptor_shard out of range), -ESHUTDOWN no
 * engine or it is stopping, -ENOMEM, or the errno of socket/bind/listen. */
PITH_API int pith_tcp_listen(const pith_listen_config_t *cfg, pith_listener_t *out);
/* The port a listener is bound to, or -ENOENT. Any thread. */
PITH_API int pith_tcp_listener_port(pith_listener_t l);
/* Stops accepting; open connections stay. From any thread; from outside the engine it returns
 * once every shard has closed its socket. Errors: -ENOENT, -ESHUTDOWN. */
PITH_API int pith_tcp_unlisten(pith_listener_t l);

/* Opens a connection from the calling shard to host:port; it belongs to this shard. The
 * outcome comes later: on_open (or the actor's spawn), or on_close with cctx NULL and the
 * error (-ETIMEDOUT after timeout_ns, 0: no limit; -ECONNREFUSED...). *out (if out is not
 * NULL) names it at once; the callbacks and the actor's pith_tcp_open_t name it too.
 * Errors now: -EPERM not on a shard, -EINVAL, -ESHUTDOWN, -ENOMEM, -EMFILE, -EBUSY no SQE. */
PITH_API int pith_tcp_connect(const char *host, uint16_t port, const pith_tcp_opts_t *opts,
                              uint64_t timeout_ns, pith_conn_t *out);

/* The shard a connection lives on (a stale id still tells its shard). Any thread. */
PITH_API unsigned pith_conn_shard(pith_conn_t c);

/* Queues a copy of data[0..len) (the iovecs' bytes) for sending, in call order. Errors:
 * -EPERM not on the connection's shard, -ENOENT no such connection, -EPIPE it is closing or
 * was shut for writing, -ENOBUFS past max_buffered (the connection is then closed), -ENOMEM,
 * -EINVAL data NULL with len > 0. */
PITH_API int pith_conn_send(pith_conn_t c, const void *data, size_t len);
/* As pith_conn_send, with the bytes of iov[0..iovcnt) in one piece (the bytes are copied).
 * Errors: as pith_conn_send, and -EINVAL iovcnt negative, iov NULL with iovcnt > 0, or an entry
 * with iov_base NULL and iov_len > 0. */
PITH_API int pith_conn_sendv(pith_conn_t c, const struct iovec *iov, int iovcnt);
/* Queues buf's bytes without copying them; the queue holds a reference of its own until they
 * are sent (the caller keeps and releases its own). Errors: as pith_conn_send, and -EINVAL buf
 * NULL. */
PITH_API int pith_conn_send_buf(pith_conn_t c, pith_buf_t *buf);

/* The calls below act on a connection of the calling shard. Their errors: -EPERM not called on
 * the connection's shard, -ENOENT no such connection (it closed: a stale id), and as each says. */

/* Stops reading (the application's own backpressure, independent of the watermarks). Bytes
 * already received keep arriving until the kernel has stopped. Errors: -EPIPE it is closing. */
PITH_API int pith_conn_pause(pith_conn_t c);
/* Resumes reading after pith_conn_pause; input kept from before is offered first. Errors:
 * -EPIPE it is closing. */
PITH_API int pith_conn_resume(pith_conn_t c);

/* Half-close: after the queued output, our side is shut (the peer reads end of stream);
 * receiving goes on. Errors: -EPIPE it is closing. */
PITH_API int pith_conn_shutdown(pith_conn_t c);
/* Closes once the queued output has left (at most linger_ns), then on_close(0). A connect in
 * flight ends at once, with on_close(0). */
PITH_API int pith_conn_close(pith_conn_t c);
/* Closes now with a reset; queued output is dropped. on_close(-ECONNABORTED). */
PITH_API int pith_conn_abort(pith_conn_t c);

/* What pith_conn_info tells of a connection. */
typedef struct pith_conn_info {
    unsigned shard;     /* where it lives */
    uint64_t bytes_in;  /* received since it opened */
    uint64_t bytes_out; /* taken by the kernel since it opened */
    size_t unsent;      /* queued output not yet taken by the kernel */
    size_t buffered;    /* unconsumed input held */
    int peer_port;      /* 0 when the peer is unknown (not connected yet, or gone) */
    char peer[46];      /* numeric address, "" when unknown */
} pith_conn_info_t;
/* Fills *out for a connection of the calling shard. Errors: -EINVAL out NULL, -EPERM, -ENOENT. */
PITH_API int pith_conn_info(pith_conn_t c, pith_conn_info_t *out);

/* Counters of one shard's networking; any thread while the engine runs. */
typedef struct pith_net_stats {
    uint64_t conns_open;    /* open now */
    uint64_t accepted;      /* connections accepted (or adopted from the acceptor) */
    uint64_t connected;     /* outbound connects that succeeded */
    uint64_t refused;       /* accepted past max_conns and closed at once */
    uint64_t over_limit;    /* closed for passing max_buffered */
    uint64_t idle_closed;   /* closed by the idle timeout */
    uint64_t resets;        /* ended by the peer's reset */
    uint64_t bytes_in;      /* received, all connections */
    uint64_t bytes_out;     /* taken by the kernel, all connections */
    uint64_t recv_nobufs;   /* receives that found no provided buffer (re-armed) */
    uint64_t recv_rearms;   /* multishot receives armed again after they ended */
    uint64_t accept_rearms; /* multishot accepts armed again after they ended */
    uint64_t partial_sends; /* sends the kernel took only part of */
    uint64_t paused;        /* times reading was paused by the high watermark */
} pith_net_stats_t;
/* Copies shard `shard`'s counters (zeros for a shard that never used TCP). Any thread while the
 * engine runs. Errors: -EINVAL shard out of range or out NULL, -ESHUTDOWN no engine. */
PITH_API int pith_net_stats(unsigned shard, pith_net_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
