/* pith-exchange: a matching-engine stub on Pith's public API. It takes new orders in the order
 * protocol (order.h), checks them, and fills every order it accepts in full at its own price, at
 * once: no book and no matching, a counterparty for the gateway to trade against in tests. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <pith/pith.h>

#include "order.h"

#define ACCOUNTS 1024 /* the account table: ORDER_REJ_ACCOUNT past it */

/* The largest --max-log: the log's address space is reserved up front (32 bytes a fill). */
#define MAX_LOG_LIMIT 100000000ull

/* Replies to one order at most: an accept and two fills (--partial). */
#define REPLIES_MAX (ORDER_LEN_ACCEPT + 2 * ORDER_LEN_FILL)

/* A shard's reply buffer grows to what one on_data call needs, up to this; a call whose replies
 * need more (never with the engine's default 16 KiB receive buffers: 455 orders at most, 43 KiB
 * of replies) sends them in pieces of this size. */
#define REPLY_BUF_MAX (1u << 20)

/* Per connection: unsent replies plus unconsumed input (the engine closes the connection with
 * -ENOBUFS past it). Reading pauses at the engine's default high watermark of 1 MiB of unsent
 * replies, so a client that sends and never reads stops being read long before this. */
#define CONN_MAX_BUFFERED (4u << 20)

static struct {
    const char *host;
    int port;
    int shards;
    const char *fills;
    uint64_t reject_every; /* 0: never */
    bool partial;
    uint32_t max_qty;
    uint64_t max_log;
    int64_t poll_us; /* -1: the engine's default */
} opt = {"127.0.0.1", 0, 1, NULL, 0, false, 1000000, 4000000, -1};

/* What each shard counts. Written by its shard only, plain; read by main after pith_engine_stop
 * has joined the shard threads (the join orders the writes before the reads). */
struct counts {
    uint64_t orders;          /* 'O' frames decoded */
    uint64_t accepted;        /* of those, answered 'A' */
    uint64_t rejected;        /* of those, answered 'J' */
    uint64_t fills;           /* 'F' frames made */
    uint64_t protocol_errors; /* connections closed for a frame they should not have sent */
    uint64_t connections;     /* connections opened */
};

/* One per shard, each on its own cache lines: its counters and its reply buffer. */
struct shard {
    _Alignas(64) struct counts n;
    uint8_t *out; /* this shard's reply buffer, out_cap bytes; freed by main after the stop */
    size_t out_cap;
};

static struct shard *shards; /* opt.shards of them, made before the engine starts */

/* The next fill number of each account, shared by every connection on every shard. A relaxed
 * fetch-add is enough: each fill takes the number the add returns, so no two fills get the same
 * one and none is skipped, whichever shards race; nothing else is published through the
 * counter (the fill's fields travel with the fill itself), so no acquire or release pairs with
 * it. */
static _Atomic uint64_t fill_seq[ACCOUNTS];

/* Orders that passed every check, for --reject-every: the exchange's Nth such order (counted over
 * all connections and shards by the same relaxed fetch-add reasoning) is refused instead. */
static _Atomic uint64_t passed_checks;

/* The fill log, bounded by --max-log: a fill takes slot log_next++ and is written there when the
 * slot is below the bound, else only counted. Each slot has one writer (the add hands it out
 * once, relaxed: no other data is published through the counter), and main reads the slots after
 * pith_engine_stop has joined the shard threads. */
struct fill {
    uint64_t seq;
    uint64_t id;
    uint32_t account;
    uint32_t qty;
    uint32_t price;
    uint16_t locate;
    char side;
};
static struct fill *fill_log; /* opt.max_log slots of reserved address space; NULL without
                                 --fills (then nothing is logged) */
static size_t fill_log_bytes;
static _Atomic uint64_t log_next;

/* A connection's own state. */
struct xconn {
    bool closing; /* closed for a protocol error: the rest of its input is ignored */
};

/* The replies of one on_data call, gathered in the shard's buffer and sent at once. */
struct batch {
    pith_conn_t c;
    struct shard *sh;
    size_t len;
    int err; /* the first send's error: nothing more is sent */
};

static void batch_flush(struct batch *b)
{
    if (b->len > 0 && b->err == 0)
        b->err = pith_conn_send(b->c, b->sh->out, b->len);
    b->len = 0;
}

/* Makes room for `need` bytes of replies in the shard's buffer (at most REPLY_BUF_MAX): the
 * buffer grows, and when it cannot, the replies go in several sends. False only when the shard
 * has no buffer at all. */
static bool batch_reserve(struct shard *sh, size_t need)
{
    if (need > REPLY_BUF_MAX)
        need = REPLY_BUF_MAX;
    if (need <= sh->out_cap)
        return true;
    size_t cap = sh->out_cap ? sh->out_cap : 64u << 10;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(sh->out, cap);
    if (p != NULL) {
        sh->out = p;
        sh->out_cap = cap;
    }
    return sh->out_cap >= REPLIES_MAX;
}

static void batch_put(struct batch *b, const struct order_msg *m)
{
    if (b->sh->out_cap - b->len < ORDER_MAX_FRAME)
        batch_flush(b);
    ssize_t n = order_encode(m, b->sh->out + b->len, b->sh->out_cap - b->len);
    if (n > 0)
        b->len += (size_t)n;
}

/* The reason to refuse m, or 0 to accept it. */
static char check_order(const struct order_msg *m)
{
    if (m->qty == 0 || m->qty > opt.max_qty)
        return ORDER_REJ_QTY;
    if (m->price == 0)
        return ORDER_REJ_PRICE;
    if (m->side != 'B' && m->side != 'S')
        return ORDER_REJ_SIDE;
    if (m->locate == 0)
        return ORDER_REJ_SYMBOL;
    if (m->account >= ACCOUNTS)
        return ORDER_REJ_ACCOUNT;
    if (opt.reject_every != 0) {
        uint64_t k = atomic_fetch_add_explicit(&passed_checks, 1, memory_order_relaxed) + 1;
        if (k % opt.reject_every == 0)
            return ORDER_REJ_HALTED;
    }
    return 0;
}

static void fill(struct batch *b, const struct order_msg *o, uint32_t qty)
{
    struct order_msg f = *o;
    f.type = 'F';
    f.qty = qty;
    f.tick_ns = 0;
    f.seq = atomic_fetch_add_explicit(&fill_seq[o->account], 1, memory_order_relaxed) + 1;
    uint64_t slot =
        fill_log != NULL ? atomic_fetch_add_explicit(&log_next, 1, memory_order_relaxed) : 0;
    if (slot < opt.max_log && fill_log != NULL)
        fill_log[slot] = (struct fill){f.seq, f.id, f.account, f.qty, f.price, f.locate, f.side};
    b->sh->n.fills++;
    batch_put(b, &f);
}

static void handle_order(struct batch *b, const struct order_msg *o)
{
    struct counts *n = &b->sh->n;
    n->orders++;
    struct order_msg r = {0};
    r.id = o->id;
    r.account = o->account;
    r.reason = check_order(o);
    if (r.reason != 0) {
        r.type = 'J';
        n->rejected++;
        batch_put(b, &r);
        return;
    }
    r.type = 'A';
    n->accepted++;
    batch_put(b, &r);
    if (opt.partial && o->qty >= 2) {
        fill(b, o, o->qty / 2);
        fill(b, o, o->qty - o->qty / 2);
    } else {
        fill(b, o, o->qty);
    }
}

static void *on_open(pith_conn_t c, void *ctx)
{
    (void)ctx;
    shards[pith_shard_id()].n.connections++;
    struct xconn *xc = calloc(1, sizeof *xc);
    if (xc == NULL)
        (void)pith_conn_abort(c);
    return xc;
}

static size_t on_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    struct xconn *xc = cctx;
    if (xc == NULL || xc->closing)
        return len;
    struct shard *sh = &shards[pith_shard_id()];
    if (!batch_reserve(sh, (len / ORDER_LEN_NEW + 1) * REPLIES_MAX)) {
        xc->closing = true;
        (void)pith_conn_abort(c);
        return len;
    }
    struct batch b = {c, sh, 0, 0};
    const uint8_t *p = data;
    size_t off = 0;
    while (off < len && b.err == 0) {
        struct order_msg m;
        size_t used;
        int r = order_decode(p + off, len - off, &m, &used);
        if (r == -EAGAIN)
            break;
        if (r != 0 || m.type != 'O') {
            /* The replies to the orders before it still go, then the connection closes: after
             * a bad frame nothing more of the stream can be trusted. */
            sh->n.protocol_errors++;
            batch_flush(&b);
            xc->closing = true;
            (void)pith_conn_close(c);
            return len;
        }
        off += used;
        handle_order(&b, &m);
    }
    batch_flush(&b);
    if (b.err != 0) {
        /* -ENOBUFS: the engine has closed it; anything else, it is closing already. */
        xc->closing = true;
        return len;
    }
    return off;
}

static void on_close(pith_conn_t c, void *cctx, int reason)
{
    (void)c;
    (void)reason;
    free(cctx);
}

static const pith_tcp_handler_t handler = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
};

static void usage(const char *why)
{
    if (why != NULL)
        fprintf(stderr, "pith-exchange: %s\n", why);
    fprintf(stderr, "usage: pith-exchange [--host ADDR] [--port N] [--shards N] [--fills FILE]\n"
                    "                     [--reject-every N] [--partial] [--max-qty N]\n"
                    "                     [--max-log N] [--poll-us N]\n"
                    "  --poll-us N  how long a shard polls for work before it sleeps (the\n"
                    "               engine's poll_ns; default 50). 0 beside a latency-critical\n"
                    "               program on the same CPUs, so that each order does not\n"
                    "               cost them 50 us of polling\n");
    exit(2);
}

/* A decimal flag value in [lo, hi]. */
static uint64_t num_arg(const char *flag, const char *v, uint64_t lo, uint64_t hi)
{
    char *end;
    errno = 0;
    unsigned long long x = v != NULL && *v != '-' ? strtoull(v, &end, 10) : 0;
    if (v == NULL || *v == '-' || *v == '\0' || *end != '\0' || errno != 0 || x < lo || x > hi) {
        char why[128];
        snprintf(why, sizeof why, "%s takes a number from %llu to %llu", flag,
                 (unsigned long long)lo, (unsigned long long)hi);
        usage(why);
    }
    return x;
}

/* A flag's non-empty string value. */
static const char *str_arg(const char *flag, const char *v)
{
    if (v == NULL || *v == '\0') {
        char why[128];
        snprintf(why, sizeof why, "%s needs a value", flag);
        usage(why);
    }
    return v;
}

static int by_account_then_seq(const void *a, const void *b)
{
    const struct fill *x = a, *y = b;
    if (x->account != y->account)
        return x->account < y->account ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* Writes the fill log to f (sorted), and a last line saying so when fills were left out. */
static int write_fills(FILE *f, uint64_t made)
{
    uint64_t logged = made < opt.max_log ? made : opt.max_log;
    qsort(fill_log, (size_t)logged, sizeof *fill_log, by_account_then_seq);
    for (uint64_t i = 0; i < logged; i++) {
        const struct fill *x = &fill_log[i];
        fprintf(f, "%u %llu %llu %u %c %u %u\n", x->account, (unsigned long long)x->seq,
                (unsigned long long)x->id, x->locate, x->side, x->qty, x->price);
    }
    if (made > logged)
        fprintf(f, "# log full: %llu fills past --max-log %llu not logged\n",
                (unsigned long long)(made - logged), (unsigned long long)opt.max_log);
    return fflush(f) != 0 || ferror(f) ? -EIO : 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--partial") == 0) {
            opt.partial = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            usage(NULL);
        if (strcmp(a, "--host") == 0)
            opt.host = str_arg(a, v);
        else if (strcmp(a, "--port") == 0)
            opt.port = (int)num_arg(a, v, 0, 65535);
        else if (strcmp(a, "--shards") == 0)
            opt.shards = (int)num_arg(a, v, 1, 4095);
        else if (strcmp(a, "--fills") == 0)
            opt.fills = str_arg(a, v);
        else if (strcmp(a, "--reject-every") == 0)
            opt.reject_every = num_arg(a, v, 1, UINT64_MAX);
        else if (strcmp(a, "--max-qty") == 0)
            opt.max_qty = (uint32_t)num_arg(a, v, 1, UINT32_MAX);
        else if (strcmp(a, "--max-log") == 0)
            opt.max_log = num_arg(a, v, 1, MAX_LOG_LIMIT);
        else if (strcmp(a, "--poll-us") == 0)
            opt.poll_us = (int64_t)num_arg(a, v, 0, 1000000);
        else {
            char why[160];
            snprintf(why, sizeof why, "unknown argument %s", a);
            usage(why);
        }
        i++;
    }

    /* Opened now, so that a path that cannot be written fails before anyone trades. */
    FILE *fills = NULL;
    if (opt.fills != NULL && (fills = fopen(opt.fills, "w")) == NULL) {
        fprintf(stderr, "pith-exchange: %s: %s\n", opt.fills, strerror(errno));
        return 1;
    }
    /* Address space for the whole log, reserved, not committed: only the pages fills reach are
     * ever backed, so a short session costs what it logged. */
    if (opt.fills != NULL) {
        fill_log_bytes = (size_t)opt.max_log * sizeof *fill_log;
        void *m = mmap(NULL, fill_log_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "pith-exchange: --max-log %llu: %s\n", (unsigned long long)opt.max_log,
                    strerror(errno));
            return 1;
        }
        fill_log = m;
    }
    shards = aligned_alloc(_Alignof(struct shard), (size_t)opt.shards * sizeof *shards);
    if (shards == NULL) {
        perror("pith-exchange");
        return 1;
    }
    memset(shards, 0, (size_t)opt.shards * sizeof *shards);

    /* SIGINT and SIGTERM are taken by sigwait below; blocked before any shard thread exists so
     * that every thread inherits the mask and none of them takes the signal instead. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = opt.shards;
    if (opt.poll_us >= 0)
        cfg.poll_ns = (uint64_t)opt.poll_us * 1000;
    int err = pith_engine_start(&cfg);
    if (err) {
        fprintf(stderr, "pith-exchange: engine: %s (%s)\n", pith_strerror(err), pith_last_error());
        return 1;
    }
    pith_listen_config_t lc = {0};
    lc.host = opt.host;
    lc.port = (uint16_t)opt.port;
    lc.conn.handler = &handler;
    lc.conn.max_buffered = CONN_MAX_BUFFERED;
    pith_listener_t l;
    err = pith_tcp_listen(&lc, &l);
    if (err) {
        fprintf(stderr, "pith-exchange: listen on %s:%d: %s\n", opt.host, opt.port,
                pith_strerror(err));
        pith_engine_stop();
        return 1;
    }
    printf("pith-exchange: listening on %s:%d\n", opt.host, pith_tcp_listener_port(l));
    fflush(stdout);

    int sig;
    while (sigwait(&sigs, &sig) != 0)
        ;
    (void)pith_tcp_unlisten(l);
    pith_engine_stop();

    /* The shard threads are joined: their counters and the log are final. */
    struct counts t = {0};
    for (int i = 0; i < opt.shards; i++) {
        const struct counts *n = &shards[i].n;
        t.orders += n->orders;
        t.accepted += n->accepted;
        t.rejected += n->rejected;
        t.fills += n->fills;
        t.protocol_errors += n->protocol_errors;
        t.connections += n->connections;
        free(shards[i].out);
    }
    free(shards);
    uint64_t made = atomic_load_explicit(&log_next, memory_order_relaxed);
    int status = 0;
    if (fills != NULL) {
        if (write_fills(fills, made) != 0) {
            fprintf(stderr, "pith-exchange: %s: cannot write the fill log\n", opt.fills);
            status = 1;
        }
        if (fclose(fills) != 0 && status == 0) {
            fprintf(stderr, "pith-exchange: %s: %s\n", opt.fills, strerror(errno));
            status = 1;
        }
    }
    if (fill_log != NULL)
        munmap(fill_log, fill_log_bytes);
    printf("pith-exchange: orders %llu accepted %llu rejected %llu fills %llu protocol_errors %llu "
           "connections %llu",
           (unsigned long long)t.orders, (unsigned long long)t.accepted,
           (unsigned long long)t.rejected, (unsigned long long)t.fills,
           (unsigned long long)t.protocol_errors, (unsigned long long)t.connections);
    if (fills != NULL && made > opt.max_log)
        printf(" unlogged %llu (--max-log %llu)", (unsigned long long)(made - opt.max_log),
               (unsigned long long)opt.max_log);
    printf("\n");
    fflush(stdout);
    return status;
}
