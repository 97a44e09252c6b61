/* pith-kv: a key-value server that speaks RESP2, on Pith's TCP layer.
 *
 *   pith-kv [--port N] [--host ADDR] [--shards N] [--max-bulk BYTES] [--acceptor]
 *           [--request-timeout SECONDS] [--poll-us MICROSECONDS]
 *
 * Keys are spread over the shards by hash; each shard owns its part of the key space. A
 * connection lives on one shard; a command whose key another shard owns travels the mesh there
 * (pith_call) and its reply comes back. Replies leave in request order per connection: each
 * command that cannot answer at once holds a slot in the connection's queue, and the queue is
 * written out from its head as slots fill, so pipelining is correct. */
#include <errno.h>
#include <sys/stat.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <stdarg.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <pith/pith.h>

#include "aof.h"
#include "cmdstats.h"
#include "config.h"
#include "engineinfo.h"
#include "latency.h"
#include "locks.h"
#include "resp.h"
#include "slowlog.h"
#include "store.h"

#define MAX_SLOTS     1024u /* replies a connection may wait for before it stops reading */
#define RESUME_SLOTS  256u
#define MAX_REMOTE    128u /* requests on other shards a connection may have before it stops */
#define RESUME_REMOTE 32u
/* Reply bytes held in slots past which a connection stops reading, and under which it reads
 * again. Replies still coming from other shards count too, each at the size the connection's
 * recent ones had (reply_est; a new connection assumes REPLY_EST0, so at most 4 requests of
 * unknown size go out at first): without them, 100 pipelined GETs of a 1 MiB value owned by
 * another shard were all made before any came back, 100 MiB per non-reading client. */
#define MAX_HELD    (4u << 20)
#define RESUME_HELD (1u << 20)
#define REPLY_EST0  (MAX_HELD / 4)
/* One on_data runs at most this many commands, this long, or makes this many reply bytes, then
 * lets the shard's other connections run and comes back (fair shards; see on_data). */
#define SLICE_CMDS  1000u
#define SLICE_NS    (250ull * 1000)
#define SLICE_BYTES (1u << 20)
#define OUT_CHUNK   (64u << 10) /* the ready buffer goes out past this; larger is freed after */
/* Output streams to the engine in pieces of OUT_PIECE while its queue for the connection holds
 * less than OUT_WINDOW; past that the rest stays here until the queue drains (on_drain), so a
 * reply of any size is neither refused nor held twice. The engine stops reading a connection
 * whose queue passes HIGH_WATER and calls on_drain once it is under LOW_WATER. */
#define OUT_PIECE     (256u << 10)
#define OUT_WINDOW    (2u << 20)
#define HIGH_WATER    (1u << 20)
#define LOW_WATER     (256u << 10)
#define ARGS_CAP      65536u     /* the parse scratch's usual room, in arguments */
#define ARGS_MAX      (1u << 28) /* arguments per command at most (the input bound comes first) */
#define TICK_NS       (100ull * 1000 * 1000)
#define BUSY_TICK_NS  (10ull * 1000 * 1000) /* the next tick, while expiry or a rehash has more */
#define EXPIRE_SLICE  (1000ull * 1000)      /* the most one tick spends on active expiry, ns */
#define REHASH_SLICE  (250ull * 1000)       /* and on moving buckets of a rehash */
#define REWRITE_SLICE (2ull * 1000 * 1000)  /* and on a journal rewrite (aof.h) */

/* ---- options and per-shard state ---- */

static struct {
    const char *host;
    int port;
    int shards;
    size_t max_bulk;
    bool acceptor;
    uint64_t request_timeout_ns;
    long long poll_us;   /* the engine's busy-poll window; -1: the engine's default */
    uint64_t timeout_s;  /* idle clients: Redis's timeout */
    uint64_t maxclients; /* Redis's maxclients */
    unsigned mesh_ring, mesh_batch, mesh_backlog; /* the engine's, 0: its defaults */
    uint64_t maxmemory;                           /* Redis's maxmemory, 0: none */
    uint64_t query_limit;                         /* Redis's client-query-buffer-limit */
    uint64_t clients_mem;                         /* maxmemory-clients; 0: a quarter of RAM */
    uint64_t obl_hard, obl_soft, obl_secs;        /* client-output-buffer-limit normal */
    const char *dir;                              /* --dir: the journal's; NULL: none */
    uint64_t segment_bytes;                       /* --journal-segment-bytes; 0: default */
    int appendfsync;                              /* AOF_* with a dir */
    int metrics_port; /* --metrics-port: /metrics over HTTP on --host; -1: off */
    /* Redis's slowlog-log-slower-than (µs), slowlog-max-len, latency-monitor-threshold (ms) */
    long long slowlog_slower_than, slowlog_max_len, latency_threshold_ms;
} opt = {
    .host = "127.0.0.1",
    .port = 6379,
    .metrics_port = -1,
    .shards = PITH_AUTO,
    .max_bulk = 512u << 20,
    .query_limit = 1u << 30,
    .request_timeout_ns = 30ull * 1000 * 1000 * 1000,
    /* 10 µs, not the engine's 50: a server that spins 50 µs after each burst burned a fifth of
     * its CPU waiting (perf/redis_compare.sh: requests per CPU-second 0.97-1.30x Redis's at
     * 50 µs, 1.29-1.41x at 10 µs, same latencies; 0 saves more CPU but lost req/s at -P1). */
    .poll_us = 10,
    .maxclients = 10000,
    .appendfsync = AOF_EVERYSEC,  /* Redis's default */
    .slowlog_slower_than = 10000, /* Redis's defaults */
    .slowlog_max_len = 128,
};

static struct resp_limits limits;
static unsigned nshards;
static uint64_t started_ns;

struct kconn;

struct kshard {
    struct store st;
    struct resp_arg *args; /* [args_cap] parse scratch */
    unsigned args_cap;
    struct kconn *conns;   /* open connections, for the slow-request sweep */
    struct kconn *zombies; /* closed ones whose requests or callbacks have not come back */
    struct req *live;      /* requests sent and not done: what stop may leave behind */
    bool more_armed;       /* a busy housekeeping round is coming */
    _Atomic uint64_t nconns, commands, connections, expired;
    _Atomic uint64_t room_waits; /* requests the mesh pushed back, that waited for room */
    /* Client memory: what this shard's connections hold (input kept for an unfinished command,
     * replies not yet taken by the kernel), against its share of maxmemory-clients. */
    size_t client_mem;
    _Atomic uint64_t client_mem_pub;           /* client_mem, for INFO */
    _Atomic uint64_t evicted, out_limit_kills; /* clients closed for the share, for their limit */
    /* Commands over several shards (see "Commands over several shards"): the keys they hold
     * here, the requests waiting for them (FIFO), and replies that found no room to go back. */
    struct locks locks;
    const struct txn *all; /* a DBSIZE or FLUSHALL over several shards holding this one */
    struct req *park, *park_tail;
    unsigned id;           /* this shard's number */
    uint32_t epoch;        /* wake's passes (see must_wait) */
    uint32_t whole_parked; /* whole-shard LOCKs in the park list */
    struct req *backlog;
    _Atomic uint64_t txns, parked; /* multi-shard commands begun here; requests that waited */
    /* Keys found and not found by the commands Redis counts (keyspace_hits): GET, MGET, EXISTS,
     * TTL and its kin, SET's GET option. */
    _Atomic uint64_t hits, misses;
    _Atomic size_t buckets; /* the store's, for INFO (written by the shard's tick) */
};
static struct kshard *kshards[4096];

static struct kshard *me(void)
{
    return kshards[pith_shard_id()];
}

/* Expiry is kept as Redis keeps it, in Unix time (ms): EXPIREAT, EXPIRETIME and the overflow
 * limits then mean what they mean in Redis. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- commands ---- */

enum cmd {
    C_GET,
    C_SET,
    C_INCRBY, /* INCR, DECR, INCRBY, DECRBY after their argument is resolved */
    C_EXPIRE, /* EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: absolute ms, NX/XX/GT/LT in n */
    C_TTL,
    C_PTTL,
    C_EXPIRETIME,
    C_PEXPIRETIME,
    C_PERSIST,
    /* one key of a multi-key command, executed where the key lives */
    C_MGET1,
    C_DEL1,
    C_EXISTS1,
    C_MSET1,
    /* one shard's part of a whole-space command */
    C_DBSIZE1,
    C_FLUSH1,
    C_CLIST1,     /* CLIENT LIST: the lines of this shard's connections (a: ids, or none: all) */
    C_CKILL1,     /* CLIENT KILL: a = id, addr, laddr, the id to spare ("" for any); n: killed */
    C_SLOWGET1,   /* SLOWLOG GET: this shard's newest entries (a: the count) */
    C_SLOWRESET1, /* SLOWLOG RESET */
    C_LATDUMP1,   /* LATENCY LATEST, HISTORY, DOCTOR: this shard's samples */
    C_LATRESET1,  /* LATENCY RESET: a = the events (none: all); the mask of those reset */
};

static bool shard_cmd(unsigned cmd)
{
    return cmd >= C_DBSIZE1;
}

/* How a slot's parts make one reply: as they are, an array of them, the sum of their integers,
 * +OK, one bulk string of their bytes (CLIENT LIST), +OK when the sum is not 0 or else "No
 * such client" (the old form of CLIENT KILL), or a reply that the slot's `merge` makes from
 * every shard's part (SLOWLOG GET, LATENCY). */
enum combine { RAW, ARRAY, SUM, OK, CONCAT, KILLED, MERGED };

/* MERGED's replies. */
enum merge { M_SLOWGET = 1, M_LATEST, M_HISTORY, M_DOCTOR, M_LATRESET };

struct slot {
    struct slot *next;
    uint32_t pending, nparts;
    uint8_t combine;
    bool failed;
    bool jfail;    /* a write whose journal record failed: the reply says so */
    bool mute;     /* CLIENT REPLY OFF or SKIP: made, then not sent */
    bool counted;  /* its bytes are in held (and the connection's slot_bytes) */
    uint8_t stage; /* streaming out: 0 header, 1 parts, 2 trailer */
    uint32_t at;   /* the part being streamed */
    size_t off;    /* bytes of it already handed to the engine */
    size_t held;   /* bytes of its parts not yet handed to the engine, when counted */
    long long sum;
    struct resp_out *parts; /* [nparts] */
    struct resp_out one;    /* parts when nparts == 1 */
    uint8_t merge;          /* MERGED: enum merge */
    long long arg;          /* MERGED: SLOWLOG GET's count, LATENCY HISTORY's event */
    /* The command whose reply it is, while its duration adds up (cmdstats.h: its time on this
     * shard, then each of its requests' where it ran): 1 + its index in cmdstats's table, or 0;
     * and its slowlog entry made in advance (it may be logged once done), charged to the
     * connection's req_bytes. */
    uint16_t timed;
    uint64_t exec_ns;
    struct slow_entry *slow;
    size_t slow_bytes;
};

/* A connection's requests in one shard's park list, and the last wake pass that kept one there.
 * Entry i is read and written by shard i only. */
struct kpark {
    uint32_t parked, seen;
};

struct kconn {
    pith_conn_t id;
    struct kshard *ks;
    struct kconn *next, *prev; /* the shard's list */
    struct resp_out out;       /* replies ready before any slot */
    size_t out_off;            /* bytes of out already handed to the engine */
    size_t slot_bytes;         /* bytes held in slots (their held, summed) */
    size_t unsent;             /* the engine's queue for it: as last asked, plus what went since */
    size_t qbuf;               /* input left unconsumed by the last on_data */
    size_t req_bytes;          /* its requests' copies of their arguments, while they live */
    size_t charged;            /* what the shard's client_mem counts for it */
    uint64_t soft_since;       /* since when its output is over the soft limit; 0: it is not */
    bool out_wait;             /* the engine's queue is full: the rest waits for on_drain */
    unsigned locking;          /* its command over several shards still taking locks */
    struct kpark *pk;          /* [nshards] its requests parked on each shard (see must_wait) */
    bool drop_later;           /* drop_client found no room to queue its reset: the tick does it */
    bool over;                 /* a reply passed what it may hold: it is closed */
    struct slot *head, *tail;
    unsigned nslots;
    unsigned reqs;                /* requests on other shards not yet back */
    size_t reply_est;             /* what the next one is expected to bring back (see held_bytes) */
    unsigned holds;               /* callbacks queued for it (yield, room); freed when both are 0 */
    bool yielding;                /* a yield task is queued */
    bool room_armed;              /* a pith_when_shard_room callback is coming */
    struct req *wait, *wait_tail; /* requests the mesh pushed back, in order */
    bool closed, quitting, paused;
    bool zombie;                   /* on the shard's zombies list */
    uint8_t reply_mode;            /* CLIENT REPLY: REPLY_ON or REPLY_OFF */
    bool skip_next, skip_now;      /* CLIENT REPLY SKIP: the next command's reply, this one's */
    uint64_t partial_since;        /* when the unfinished command at the buffer's end began */
    uint64_t cid;                  /* CLIENT ID */
    uint64_t opened_ns, active_ns; /* when it opened, and last sent or took bytes */
    uint64_t bytes_out;            /* at the last idle check */
    char *name;                    /* CLIENT SETNAME, NUL-terminated; NULL: none */
    char cmd[32];                  /* the last command, for CLIENT LIST */
    bool rejected;                 /* the command running was refused before it ran */
    char addr[SLOWLOG_ADDR_MAX];   /* "ip:port" once the slowlog asked; "" before */
};

enum { REPLY_ON, REPLY_OFF };

/* Over all shards: connections open (against maxclients), refused, and the last CLIENT ID
 * given. Relaxed read-modify-writes: they count, nothing is published through them. */
static _Atomic uint64_t clients_now, clients_refused, last_cid;

/* A command, or one key of one, sent to the shard that owns the key. */
/* A command, one shard's keys of a multi-key command (all of them, in one message: a shard
 * applies them in one task, so no other command on that shard sees a part of them), or one
 * shard's part of a whole-space command, sent to the shard that does it. */
struct txn;

/* What a request does where it arrives: run (a command, one shard's keys of one, a part of a
 * whole-space command), or one step of a command over several shards. */
enum phase { PH_RUN, PH_LOCK, PH_COMMIT, PH_RELEASE };

struct req {
    struct req *next; /* in the connection's queue waiting for room, or a shard's park list */
    struct req *lnext, *lprev; /* in its shard's list of live requests (freed at exit) */
    struct kconn *kc;
    struct slot *slot;
    struct txn *txn; /* the command over several shards it is a part of, or NULL */
    unsigned shard;
    unsigned from; /* the connection's shard, where the reply goes */
    int err;
    bool jfail; /* a journal record it made failed (see slot.jfail) */
    uint8_t phase;
    uint16_t cmd;
    uint32_t argc;  /* arguments in a[] */
    uint32_t nkeys; /* keys of a multi-key command (step arguments each), else 0 */
    uint32_t step;
    uint32_t part;       /* the slot's part of a single request */
    uint32_t *idx;       /* [nkeys] the slot's part of each key */
    struct entry **prep; /* [nkeys] an MSET's entries, made at LOCK and put at COMMIT */
    long long n;         /* integer operand (INCRBY, EXPIRE) or result (DEL1, EXISTS1, DBSIZE1) */
    int64_t expire_ms;
    uint64_t exec_ns;      /* its time running where it went, for its command's duration */
    size_t budget;         /* what its replies may hold (exec_keys) */
    size_t bytes;          /* charged to its connection (req_bytes) while it lives */
    struct resp_out r;     /* a single request's reply */
    struct resp_out *outs; /* [nkeys] each key's reply (MGET) */
    struct resp_arg a[];
};

static bool parse_ll(const struct resp_arg *a, long long *out)
{
    return resp_parse_ll(a->p, a->len, out);
}

static bool is(const struct resp_arg *a, const char *name)
{
    size_t n = strlen(name);
    return a->len == n && strncasecmp(a->p, name, n) == 0;
}

static unsigned owner(const struct resp_arg *key, uint64_t *h)
{
    *h = kv_hash(key->p, key->len);
    return (unsigned)((*h >> 40) % nshards);
}

#define NOT_INT "ERR value is not an integer or out of range"
#define AOF_ERR "MISCONF Errors writing to the AOF file (the journal): the write is not durable"
#define OOM_ERR "OOM command not allowed when used memory > 'maxmemory'."

/* SET's options in n */
#define SET_NX      1
#define SET_XX      2
#define SET_KEEPTTL 4
#define SET_GET     8
/* EXPIRE's options in n */
#define EXP_NX 1
#define EXP_XX 2
#define EXP_GT 4
#define EXP_LT 8

/* Runs a keyed command on the shard that owns its key, appending the reply to o (or, for the
 * parts that add up, setting *n). a[0] is the key. */
static int exec_key(struct kshard *ks, unsigned cmd, const struct resp_arg *a, long long *n,
                    int64_t expire_ms, struct resp_out *o)
{
    struct store *st = &ks->st;
    int64_t now = now_ms();
    uint64_t h = kv_hash(a[0].p, a[0].len);
    struct entry *e;
    int err = 0;
    switch (cmd) {
    case C_GET:
    case C_MGET1:
        e = store_get(st, a[0].p, a[0].len, h, now);
        count(e != NULL ? &ks->hits : &ks->misses, 1);
        err = e != NULL ? resp_put_bulk(o, entry_val(e), e->vlen) : resp_put_null(o);
        break;
    case C_SET: {
        /* a: key value [options]; the options were checked by the caller, expire_ms is
         * absolute (0: none); *n carries SET_NX, SET_XX, SET_KEEPTTL, SET_GET. A plain SET
         * needs no lookup: store_set finds the entry itself. With GET the reply is the old
         * value (or nil), whether or not NX or XX let the write happen, as in Redis. */
        e = *n != 0 ? store_get(st, a[0].p, a[0].len, h, now) : NULL;
        if (*n & SET_GET)
            count(e != NULL ? &ks->hits : &ks->misses, 1); /* a read, as Redis counts it */
        if ((*n & SET_GET) &&
            (err = e != NULL ? resp_put_bulk(o, entry_val(e), e->vlen) : resp_put_null(o)) != 0)
            break;
        if (((*n & SET_NX) && e != NULL) || ((*n & SET_XX) && e == NULL)) {
            if (!(*n & SET_GET))
                err = resp_put_null(o);
            break;
        }
        int64_t exp = (*n & SET_KEEPTTL) && e != NULL ? e->expire_ms : expire_ms;
        if (store_set(st, a[0].p, a[0].len, h, a[1].p, a[1].len, exp) == NULL) {
            if (*n & SET_GET)
                o->len = 0; /* the old value is not the answer after all */
            err = resp_put_error(o, OOM_ERR);
        } else {
            (void)aof_key(st, a[0].p, a[0].len, h, now);
            if (!(*n & SET_GET))
                err = resp_put_simple(o, "OK");
        }
        break;
    }
    case C_MSET1:
        if (store_set(st, a[0].p, a[0].len, h, a[1].p, a[1].len, 0) == NULL)
            err = -ENOMEM;
        else
            (void)aof_key(st, a[0].p, a[0].len, h, now);
        break;
    case C_INCRBY: {
        e = store_get(st, a[0].p, a[0].len, h, now);
        long long v = 0;
        if (e != NULL) {
            struct resp_arg cur = {entry_val(e), e->vlen};
            if (!parse_ll(&cur, &v)) {
                err = resp_put_error(o, NOT_INT);
                break;
            }
        }
        if ((*n > 0 && v > LLONG_MAX - *n) || (*n < 0 && v < LLONG_MIN - *n)) {
            err = resp_put_error(o, "ERR increment or decrement would overflow");
            break;
        }
        v += *n;
        char buf[24];
        int len = snprintf(buf, sizeof(buf), "%lld", v);
        if (store_set(st, a[0].p, a[0].len, h, buf, (size_t)len, e != NULL ? e->expire_ms : 0) ==
            NULL) {
            err = resp_put_error(o, OOM_ERR);
        } else {
            (void)aof_key(st, a[0].p, a[0].len, h, now);
            err = resp_put_int(o, v);
        }
        break;
    }
    case C_EXPIRE: {
        /* Redis 7's conditions: NX only without an expiry, XX only with one, GT only later
         * than the current one (none counts as never), LT only earlier. */
        e = store_get(st, a[0].p, a[0].len, h, now);
        int64_t cur = e != NULL ? e->expire_ms : 0;
        if (e == NULL || ((*n & EXP_NX) && cur != 0) || ((*n & EXP_XX) && cur == 0) ||
            ((*n & EXP_GT) && (cur == 0 || expire_ms <= cur)) ||
            ((*n & EXP_LT) && cur != 0 && expire_ms >= cur)) {
            err = resp_put_int(o, 0);
        } else if (expire_ms <= now) {
            store_del(st, a[0].p, a[0].len, h, now);
            (void)aof_key(st, a[0].p, a[0].len, h, now);
            err = resp_put_int(o, 1);
        } else if (store_set_expire(st, e, expire_ms) != 0) {
            err = resp_put_error(o, OOM_ERR);
        } else {
            (void)aof_key(st, a[0].p, a[0].len, h, now);
            err = resp_put_int(o, 1);
        }
        break;
    }
    case C_PERSIST: {
        e = store_get(st, a[0].p, a[0].len, h, now);
        bool done = e != NULL && e->expire_ms != 0 && store_set_expire(st, e, 0) == 0;
        if (done)
            (void)aof_key(st, a[0].p, a[0].len, h, now);
        err = resp_put_int(o, done);
        break;
    }
    case C_TTL:
    case C_PTTL:
    case C_EXPIRETIME:
    case C_PEXPIRETIME:
        e = store_get(st, a[0].p, a[0].len, h, now);
        count(e != NULL ? &ks->hits : &ks->misses, 1);
        if (e == NULL)
            err = resp_put_int(o, -2);
        else if (e->expire_ms == 0)
            err = resp_put_int(o, -1);
        else if (cmd == C_PTTL)
            err = resp_put_int(o, e->expire_ms - now);
        else if (cmd == C_TTL)
            err = resp_put_int(o, (e->expire_ms - now + 500) / 1000);
        else if (cmd == C_PEXPIRETIME)
            err = resp_put_int(o, e->expire_ms);
        else
            err = resp_put_int(o, e->expire_ms / 1000);
        break;
    case C_DEL1:
        *n = store_del(st, a[0].p, a[0].len, h, now);
        if (*n)
            (void)aof_key(st, a[0].p, a[0].len, h, now);
        break;
    case C_EXISTS1:
        *n = store_get(st, a[0].p, a[0].len, h, now) != NULL;
        count(*n ? &ks->hits : &ks->misses, 1);
        break;
    default:
        break;
    }
    return err; /* -ENOMEM: no memory for the reply or the entry; the slot reports it */
}

/* The reply memory kc holds here (not yet in the engine's queue): the ready buffer's whole
 * block while replies in it wait, the slots' bytes not yet handed on, and the handed-on front
 * of the reply being streamed (its block goes when all of it went). Blocks, not bytes, as
 * Redis counts a client's output memory. */
static size_t kept_bytes(const struct kconn *kc)
{
    size_t n = kc->slot_bytes;
    if (kc->out.len > kc->out_off)
        n += kc->out.cap;
    const struct slot *s = kc->head;
    if (s != NULL && s->off > 0) {
        const struct resp_out *o = s->combine == RAW ? &s->one : &s->parts[s->at];
        n += o->cap - (o->len - s->off);
    }
    return n;
}

/* One line of CLIENT LIST / CLIENT INFO, in Redis's format; fields pith-kv has no counterpart
 * for (fd, the query buffer's free room, the reply buffer's sizes) are 0 or -1. */
static int client_line(struct kconn *kc, uint64_t now, struct resp_out *o)
{
    pith_conn_info_t ci;
    if (pith_conn_info(kc->id, &ci) != 0)
        memset(&ci, 0, sizeof(ci));
    /* omem: replies held here and in the engine's queue */
    size_t omem = kept_bytes(kc) + ci.unsent;
    char head[256], tail[320];
    int hl = snprintf(head, sizeof(head),
                      "id=%llu addr=%s:%d laddr=%s:%d fd=-1 name=", (unsigned long long)kc->cid,
                      ci.peer, ci.peer_port, kv_cfg.bind, kv_cfg.port);
    int tl = snprintf(
        tail, sizeof(tail),
        " age=%llu idle=%llu flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=%zu qbuf-free=0 "
        "argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=%u omem=%zu tot-mem=%zu events=r cmd=%s "
        "user=default redir=-1 resp=2\n",
        (unsigned long long)((now - kc->opened_ns) / 1000000000u),
        (unsigned long long)((now - kc->active_ns) / 1000000000u), ci.buffered, kc->nslots, omem,
        sizeof(*kc) + ci.buffered + omem, kc->cmd[0] ? kc->cmd : "NULL");
    int err = resp_put_raw(o, head, (size_t)hl);
    if (err == 0 && kc->name != NULL)
        err = resp_put_raw(o, kc->name, strlen(kc->name));
    return err != 0 ? err : resp_put_raw(o, tail, (size_t)tl);
}

static bool arg_eq(const struct resp_arg *a, const char *s)
{
    return a->len == strlen(s) && memcmp(a->p, s, a->len) == 0;
}

/* Does kc match CLIENT KILL's filter (a: id, addr, laddr, each "" for any)? */
static bool kill_match(struct kconn *kc, const struct resp_arg *a)
{
    if (a[0].len > 0) {
        long long id;
        if (!parse_ll(&a[0], &id) || (uint64_t)id != kc->cid)
            return false;
    }
    if (a[1].len > 0) {
        pith_conn_info_t ci;
        char addr[64];
        if (pith_conn_info(kc->id, &ci) != 0)
            return false;
        snprintf(addr, sizeof(addr), "%s:%d", ci.peer, ci.peer_port);
        if (!arg_eq(&a[1], addr))
            return false;
    }
    if (a[2].len > 0) {
        char addr[64];
        snprintf(addr, sizeof(addr), "%s:%d", kv_cfg.bind, kv_cfg.port);
        if (!arg_eq(&a[2], addr))
            return false;
    }
    return true;
}

static int exec_shard(struct kshard *ks, unsigned cmd, const struct resp_arg *a, unsigned argc,
                      long long *n, struct resp_out *o)
{
    int err = 0;
    uint64_t now = pith_now_ns();
    switch (cmd) {
    case C_DBSIZE1:
        *n = (long long)atomic_load_explicit(&ks->st.keys, memory_order_relaxed);
        break;
    case C_FLUSH1:
        (void)store_clear(&ks->st); /* without memory for a new table: empty, and usable */
        (void)aof_flushall();
        break;
    case C_CLIST1:
        for (struct kconn *kc = ks->conns; kc != NULL && err == 0; kc = kc->next) {
            bool want = argc == 0;
            for (unsigned i = 0; i < argc && !want; i++) {
                long long id;
                want = parse_ll(&a[i], &id) && (uint64_t)id == kc->cid;
            }
            if (want)
                err = client_line(kc, now, o);
        }
        break;
    case C_CKILL1: {
        long long spare = 0;
        if (a[3].len > 0)
            (void)parse_ll(&a[3], &spare);
        *n = 0;
        for (struct kconn *kc = ks->conns, *next; kc != NULL; kc = next) {
            next = kc->next;
            if (kc->quitting || (uint64_t)spare == kc->cid || !kill_match(kc, a))
                continue;
            (*n)++;
            /* The killer itself (SKIPME no) goes once its reply is out, as in Redis. */
            kc->quitting = true;
            if (kc->head == NULL)
                (void)pith_conn_close(kc->id);
        }
        break;
    }
    case C_SLOWGET1: {
        long long count = -1;
        (void)parse_ll(&a[0], &count);
        err = slowlog_dump(count, o);
        break;
    }
    case C_SLOWRESET1:
        slowlog_reset();
        break;
    case C_LATDUMP1:
        err = latency_dump(o);
        break;
    case C_LATRESET1:
        err = latency_reset(a, argc, o);
        break;
    default:
        break;
    }
    return err;
}

/* ---- reply order ---- */

static void slot_free(struct slot *s)
{
    slowlog_entry_free(s->slow);
    if (s->parts != &s->one) {
        for (uint32_t i = 0; i < s->nparts; i++)
            resp_out_free(&s->parts[i]);
        pith_free(s->parts);
    }
    resp_out_free(&s->one);
    pith_free(s);
}

static void kconn_free(struct kconn *kc)
{
    if (kc->zombie) {
        if (kc->prev != NULL)
            kc->prev->next = kc->next;
        else
            kc->ks->zombies = kc->next;
        if (kc->next != NULL)
            kc->next->prev = kc->prev;
    }
    while (kc->head != NULL) {
        struct slot *s = kc->head;
        kc->head = s->next;
        slot_free(s);
    }
    resp_out_free(&kc->out);
    pith_free(kc->name);
    pith_free(kc->pk);
    pith_free(kc);
}

/* Whether n more bytes (at most OUT_PIECE) may go to the engine's queue now. The engine is
 * asked for its figure only when the estimate says the window may be full, so small replies cost
 * nothing. When the queue is past the window it is past HIGH_WATER: the engine has stopped
 * reading the connection and calls on_drain once the queue is under LOW_WATER. */
static bool out_room(struct kconn *kc, size_t n)
{
    if (kc->out_wait)
        return false;
    if (kc->unsent + n > OUT_WINDOW) {
        pith_conn_info_t ci;
        if (pith_conn_info(kc->id, &ci) != 0)
            return true; /* closing: the send fails and the bytes are dropped */
        kc->unsent = ci.unsent;
        if (kc->unsent + n > OUT_WINDOW && kc->unsent > HIGH_WATER) {
            kc->out_wait = true;
            return false;
        }
    }
    kc->unsent += n;
    return true;
}

/* Hands o's bytes from *off on to the engine, piece by piece while the window has room; a
 * slot's bytes leave its held count as they go. True when all of them went. */
static bool push(struct kconn *kc, struct resp_out *o, size_t *off, struct slot *s)
{
    while (*off < o->len) {
        size_t n = o->len - *off < OUT_PIECE ? o->len - *off : OUT_PIECE;
        if (!out_room(kc, n))
            return false;
        (void)pith_conn_send(kc->id, o->p + *off, n); /* fails only when closing: dropped */
        *off += n;
        if (s != NULL) {
            size_t d = n < s->held ? n : s->held;
            s->held -= d;
            kc->slot_bytes -= d;
        }
    }
    return true;
}

/* A reply of a few bytes (a header, an integer, +OK): always goes, after what went before. */
static void push_small(struct kconn *kc, struct resp_out *t)
{
    if (t->len > 0 && pith_conn_send(kc->id, t->p, t->len) == 0)
        kc->unsent += t->len;
    resp_out_free(t);
}

/* The replies ready before any slot: true when all of them went. */
static bool push_out(struct kconn *kc)
{
    if (!push(kc, &kc->out, &kc->out_off, NULL))
        return false;
    kc->out.len = kc->out_off = 0;
    if (kc->out.cap > OUT_CHUNK)
        resp_out_free(&kc->out); /* a burst's buffer goes back; the next reply starts small */
    return true;
}

/* A MERGED slot's reply, made from its parts (one per shard), which go: the slot is then one
 * RAW part. No memory for it: an error reply. */
static void merge_parts(struct slot *s)
{
    struct resp_out m = {0};
    int err;
    switch (s->merge) {
    case M_SLOWGET:
        err = slowlog_merge(s->parts, s->nparts, s->arg, &m);
        break;
    case M_LATEST:
        err = latency_latest_reply(s->parts, s->nparts, &m);
        break;
    case M_HISTORY:
        err = latency_history_reply(s->parts, s->nparts, (int)s->arg, &m);
        break;
    case M_DOCTOR:
        err = latency_doctor_reply(s->parts, s->nparts, &m);
        break;
    case M_LATRESET:
        err = latency_reset_reply(s->parts, s->nparts, &m);
        break;
    default:
        err = -EINVAL;
        break;
    }
    if (err != 0) {
        resp_out_free(&m);
        (void)resp_put_error(&m, "ERR out of memory");
    }
    if (s->parts != &s->one) {
        for (uint32_t i = 0; i < s->nparts; i++)
            resp_out_free(&s->parts[i]);
        pith_free(s->parts);
        s->parts = &s->one;
        s->nparts = 1;
    }
    resp_out_free(&s->one);
    s->one = m;
    s->off = 0;
}

/* Streams slot s (ready) from where it stopped: true when all of it went. */
static bool push_slot(struct kconn *kc, struct slot *s)
{
    struct resp_out t = {0};
    if (s->mute) {
        /* CLIENT REPLY OFF or SKIP: the reply was made, and is dropped */
        kc->slot_bytes -= s->held;
        s->held = 0;
        return true;
    }
    if (s->jfail) {
        (void)resp_put_error(&t, AOF_ERR);
        push_small(kc, &t);
        return true;
    }
    if (s->failed) {
        (void)resp_put_error(&t, "ERR out of memory");
        push_small(kc, &t);
        return true;
    }
    switch (s->combine) {
    case RAW:
        return push(kc, &s->one, &s->off, s);
    case ARRAY:
    case CONCAT:
        if (s->stage == 0) {
            if (s->combine == ARRAY) {
                (void)resp_put_array(&t, s->nparts);
            } else {
                size_t total = 0;
                for (uint32_t i = 0; i < s->nparts; i++)
                    total += s->parts[i].len;
                char hdr[32];
                int hl = snprintf(hdr, sizeof(hdr), "$%zu\r\n", total);
                (void)resp_put_raw(&t, hdr, (size_t)hl);
            }
            push_small(kc, &t);
            s->stage = 1;
        }
        for (; s->at < s->nparts; s->at++, s->off = 0) {
            if (!push(kc, &s->parts[s->at], &s->off, s))
                return false;
            resp_out_free(&s->parts[s->at]); /* sent: its memory goes back now */
        }
        if (s->combine == CONCAT) {
            (void)resp_put_raw(&t, "\r\n", 2);
            push_small(kc, &t);
        }
        return true;
    case MERGED:
        if (s->stage == 0) {
            merge_parts(s);
            s->stage = 1;
        }
        return push(kc, &s->one, &s->off, s);
    case KILLED:
        if (s->sum > 0)
            (void)resp_put_simple(&t, "OK");
        else
            (void)resp_put_error(&t, "ERR No such client");
        break;
    case SUM:
        (void)resp_put_int(&t, s->sum);
        break;
    default:
        (void)resp_put_simple(&t, "OK");
        break;
    }
    push_small(kc, &t);
    return true;
}

static void kc_release(struct kconn *kc);

static void drop_task(void *arg)
{
    struct kconn *kc = arg;
    if (!kc->closed)
        (void)pith_conn_abort(kc->id);
    kc_release(kc);
}

/* Closes a client for its memory, as Redis frees one past its output limit or evicted: reset,
 * its queued replies dropped, its memory no longer charged. The reset itself runs from a task
 * (its on_close must not free a connection that a caller up the stack still walks), or now when
 * the shard's queue is full. */
static void drop_client(struct kconn *kc, _Atomic uint64_t *why)
{
    struct kshard *ks = kc->ks;
    count(why, 1);
    ks->client_mem -= kc->charged;
    kc->charged = 0;
    kc->quitting = kc->over = true;
    if (pith_submit((unsigned)pith_shard_id(), drop_task, kc) == 0)
        kc->holds++;
    else
        kc->drop_later = true; /* the shard's queue is full: the tick resets it */
}

/* What one reply may hold at most while it is made (an MGET's values): the client's hard
 * output limit, else its shard's share of maxmemory-clients. */
static size_t reply_budget(void)
{
    uint64_t hard = setting(&kv_cfg.obl_hard);
    uint64_t share = setting(&kv_cfg.maxmemory_clients) / nshards;
    uint64_t b = hard != 0 && (share == 0 || hard < share) ? hard : share;
    return b == 0 || b > SIZE_MAX ? SIZE_MAX : (size_t)b;
}

/* The replies kc holds: here, and in the engine's queue (asked now: the estimate only grows
 * between looks, and the kernel may have taken them since). */
static size_t out_held(struct kconn *kc)
{
    if (kc->unsent > 0) {
        pith_conn_info_t ci;
        if (pith_conn_info(kc->id, &ci) == 0)
            kc->unsent = ci.unsent;
    }
    return kept_bytes(kc) + kc->unsent;
}

/* Charges what kc holds (its unconsumed input and its replies) to its shard. */
static void charge(struct kconn *kc, size_t out)
{
    size_t total = out + kc->qbuf + kc->req_bytes;
    kc->ks->client_mem += total - kc->charged;
    kc->charged = total;
}

/* Charges kc's memory to its shard and enforces the limits: the client's own output limits
 * (client-output-buffer-limit: over hard, closed at once; over soft for longer than its
 * seconds, closed), and the shard's share of maxmemory-clients: past it, the shard's largest
 * clients are closed until it fits (Redis 7's client eviction). */
static void account(struct kconn *kc)
{
    if (kc->closed || kc->over)
        return;
    struct kshard *ks = kc->ks;
    size_t out = out_held(kc);
    uint64_t hard = setting(&kv_cfg.obl_hard), soft = setting(&kv_cfg.obl_soft);
    if (hard != 0 && out > hard) {
        drop_client(kc, &ks->out_limit_kills);
        return;
    }
    if (soft != 0 && out > soft) {
        uint64_t now = pith_now_ns();
        if (kc->soft_since == 0) {
            kc->soft_since = now;
        } else if (now - kc->soft_since > setting(&kv_cfg.obl_secs) * 1000000000ull) {
            drop_client(kc, &ks->out_limit_kills);
            return;
        }
    } else {
        kc->soft_since = 0;
    }
    charge(kc, out);
    uint64_t share = setting(&kv_cfg.maxmemory_clients) / nshards;
    if (share != 0 && ks->client_mem > share) {
        /* Other clients' charges are from their last activity: bring them up to date before
         * anyone is closed for them. */
        for (struct kconn *c = ks->conns; c != NULL; c = c->next)
            if (!c->over && c != kc)
                charge(c, out_held(c));
    }
    while (share != 0 && ks->client_mem > share) {
        struct kconn *big = NULL;
        for (struct kconn *c = ks->conns; c != NULL; c = c->next)
            if (!c->over && (big == NULL || c->charged > big->charged))
                big = c;
        if (big == NULL || big->charged == 0)
            break;
        drop_client(big, &ks->evicted);
    }
    atomic_store_explicit(&ks->client_mem_pub, ks->client_mem, memory_order_relaxed);
}

/* The reply bytes kc holds in slots, and those its requests on other shards are expected to
 * bring back (counted against MAX_HELD). */
static size_t held_bytes(const struct kconn *kc)
{
    return kc->slot_bytes + (size_t)kc->reqs * kc->reply_est;
}

static void timed_done(struct kconn *kc, int cmd, uint64_t ns, bool failed, struct slow_entry *e,
                       const struct resp_arg *a, unsigned argc);

/* Whether slot s (done) answers with an error. */
static bool slot_error(const struct slot *s)
{
    return s->failed || s->jfail || (s->combine == KILLED && s->sum == 0) ||
           (s->combine == RAW && s->one.len > 0 && s->one.p[0] == '-');
}

/* The command whose reply slot s is has run everywhere: its duration is counted. */
static void slot_timed(struct kconn *kc, struct slot *s)
{
    struct slow_entry *e = s->slow;
    kc->req_bytes -= s->slow_bytes;
    s->slow = NULL;
    s->slow_bytes = 0;
    timed_done(kc, s->timed - 1, s->exec_ns, slot_error(s), e, NULL, 0);
    s->timed = 0;
}

/* Writes out every reply that is ready, in order, as far as the engine's window allows; the
 * rest goes when the queue drains (on_drain). */
static void flush(struct kconn *kc)
{
    if (kc->closed || kc->over)
        return;
    bool all = push_out(kc);
    while (all && kc->head != NULL && kc->head->pending == 0) {
        struct slot *s = kc->head;
        if (s->timed != 0)
            slot_timed(kc, s);
        if (!push_slot(kc, s)) {
            all = false;
            break;
        }
        kc->head = s->next;
        if (kc->head == NULL)
            kc->tail = NULL;
        kc->nslots--;
        kc->slot_bytes -= s->held;
        slot_free(s);
    }
    if (kc->paused && kc->nslots <= RESUME_SLOTS && kc->reqs <= RESUME_REMOTE &&
        held_bytes(kc) <= RESUME_HELD) {
        kc->paused = false;
        (void)pith_conn_resume(kc->id);
    }
    account(kc);
    /* Last: the close may end the connection (on_close) before it returns. */
    if (kc->quitting && kc->head == NULL && all && !kc->over)
        (void)pith_conn_close(kc->id);
}

static struct slot *slot_new(struct kconn *kc, uint32_t nparts, uint8_t combine)
{
    struct slot *s = pith_calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->nparts = nparts;
    s->combine = combine;
    if (nparts > 1) {
        s->parts = pith_calloc(nparts, sizeof(*s->parts));
        if (s->parts == NULL) {
            pith_free(s);
            return NULL;
        }
    } else {
        s->parts = &s->one;
    }
    /* Replies already made go first. */
    (void)push_out(kc);
    if (kc->tail != NULL)
        kc->tail->next = s;
    else
        kc->head = s;
    kc->tail = s;
    kc->nslots++;
    return s;
}

/* Moves r into part `part` of slot s (appending when that part already has bytes). */
static void part_put(struct slot *s, uint32_t part, struct resp_out *r)
{
    if (r->len == 0)
        return;
    if (s->parts[part].len == 0) {
        resp_out_free(&s->parts[part]);
        s->parts[part] = *r;
        memset(r, 0, sizeof(*r));
    } else {
        (void)resp_put_raw(&s->parts[part], r->p, r->len);
    }
}

/* An MSET's entries for keys[0..nkeys) (as exec_keys numbers them), made before any is put:
 * NULL when there is no memory for all of them (none is then kept). */
static struct entry **mset_prepare(const struct resp_arg *a, unsigned step, const uint32_t *keys,
                                   uint32_t nkeys)
{
    struct entry **es = pith_malloc((size_t)nkeys * sizeof(*es) + 1);
    if (es == NULL)
        return NULL;
    for (uint32_t i = 0; i < nkeys; i++) {
        const struct resp_arg *ka = &a[(size_t)(keys != NULL ? keys[i] : i) * step];
        es[i] =
            store_entry_new(ka[0].p, ka[0].len, kv_hash(ka[0].p, ka[0].len), ka[1].p, ka[1].len);
        if (es[i] == NULL) {
            while (i > 0)
                pith_free(es[--i]);
            pith_free(es);
            return NULL;
        }
    }
    return es;
}

/* Puts an MSET's prepared entries in the store (and frees the array): no memory needed, but for
 * a store whose FLUSHALL found none for its first table (-ENOMEM). */
static int mset_put(struct kshard *ks, struct entry **es, uint32_t nkeys)
{
    int err = 0;
    int64_t now = now_ms();
    for (uint32_t i = 0; i < nkeys; i++) {
        const char *k = es[i]->data;
        size_t kl = es[i]->klen;
        uint64_t h = es[i]->hash;
        if (!store_put(&ks->st, es[i]))
            err = -ENOMEM;
        else
            (void)aof_key(&ks->st, k, kl, h, now);
    }
    pith_free(es);
    return err;
}

static void mset_discard(struct entry **es, uint32_t nkeys)
{
    if (es == NULL)
        return;
    for (uint32_t i = 0; i < nkeys; i++)
        pith_free(es[i]);
    pith_free(es);
}

/* Runs keys[0..nkeys) of a multi-key command (key i's arguments at a[keys[i] * step], or at
 * a[i * step] when keys is NULL), each reply into outs[i] (MGET), adding up *n (DEL, EXISTS).
 * 0, -ENOMEM when a key's reply or entry could not be made, or -ENOBUFS when the replies passed
 * budget bytes (it stops there). */
static int exec_keys(struct kshard *ks, unsigned cmd, const struct resp_arg *a, unsigned step,
                     const uint32_t *keys, uint32_t nkeys, long long *n, struct resp_out *outs,
                     size_t budget)
{
    int err = 0;
    size_t made = 0;
    *n = 0;
    if (cmd == C_MSET1) {
        /* All or nothing: every entry is made before any is put. */
        struct entry **es = mset_prepare(a, step, keys, nkeys);
        if (es == NULL)
            return -ENOMEM;
        return mset_put(ks, es, nkeys);
    }
    for (uint32_t i = 0; i < nkeys; i++) {
        if (outs != NULL && i > 0 && (made += outs[i - 1].len) > budget)
            return -ENOBUFS; /* the reply would pass what the client may hold */
        long long k = 0;
        const struct resp_arg *ka = &a[(size_t)(keys != NULL ? keys[i] : i) * step];
        struct resp_out discard = {0};
        int e = exec_key(ks, cmd, ka, &k, 0, outs != NULL ? &outs[i] : &discard);
        resp_out_free(&discard);
        err = err != 0 ? err : e;
        *n += k;
    }
    return err;
}

/* ---- commands over several shards ----
 *
 * A command whose keys live on several shards (MGET, MSET, DEL, EXISTS) must look to every
 * other client as if it ran at one instant, as in Redis: nobody sees an MSET applied on one
 * shard and not yet on another, nor an MGET that read one shard before a write and another
 * after it. It runs as a transaction under two-phase locking:
 *
 *   1. LOCK, one shard after another in increasing shard order: the shard locks the command's
 *      keys there (an MGET or EXISTS reads them at the same time); the next shard is asked
 *      once this one answered. Taking shards in one global order means two such commands never
 *      wait for each other in a cycle: one waiting at shard i holds only shards below i.
 *   2. COMMIT (MSET, DEL), to all shards at once: each applies its keys and unlocks them; the
 *      reply goes once every shard has. A read (MGET, EXISTS) answers after step 1 and sends
 *      RELEASE, which only unlocks.
 *
 * While a key is locked, any other request that names it waits in its shard's park list (a
 * GET, a SET, another transaction's LOCK), as does any request of a connection that already
 * has one waiting there (a connection's commands keep their order on a shard). Each unlock
 * runs the park list in order. A request that waited sends its reply back itself
 * (send_back). With no lock held and nobody waiting, a shard's commands pay one test. */

struct txn {
    struct kconn *kc;
    struct slot *s;
    uint32_t n;    /* shards, and requests in q */
    uint32_t at;   /* the shard whose LOCK is out */
    uint32_t back; /* COMMITs answered */
    uint32_t live; /* requests not yet freed: the txn goes with the last */
    bool write;    /* MSET, DEL: COMMIT; else RELEASE */
    struct req *q[];
};

static bool busy(const struct kshard *ks)
{
    return ks->locks.n > 0 || ks->park != NULL || ks->all != NULL;
}

/* The keys a request names: one shard's keys of a multi-key command, the key of a keyed one,
 * none for a part of a whole-space command. */
static uint32_t req_nkeys(const struct req *q)
{
    return shard_cmd(q->cmd) ? 0 : q->idx != NULL ? q->nkeys : 1;
}

static const struct resp_arg *req_key(const struct req *q, uint32_t j)
{
    return &q->a[(size_t)j * (q->idx != NULL ? q->step : 1)];
}

/* Whether key k is locked here by another command than `mine`. */
static bool held(const struct kshard *ks, const struct resp_arg *k, const struct txn *mine)
{
    if (ks->all != NULL && ks->all != mine)
        return true;
    if (ks->locks.n == 0)
        return false;
    const void *o = locks_owner(&ks->locks, k->p, k->len, kv_hash(k->p, k->len));
    return o != NULL && o != mine;
}

/* Whether connection kc has a request in this shard's park list. */
static bool kc_parked(const struct kshard *ks, const struct kconn *kc)
{
    return kc->pk[ks->id].parked > 0;
}

/* A DBSIZE's or FLUSHALL's LOCK: it takes the whole shard. */
static bool locks_all(const struct req *q)
{
    return q->phase == PH_LOCK && shard_cmd(q->cmd);
}

/* Whether q must wait here: its connection has a request waiting ahead of it; it is a LOCK and
 * a whole-shard LOCK waits ahead (so that those are not starved); it takes the whole shard and
 * anything is locked; or a key of it is locked by another command. A request arriving is
 * behind every one parked; in wake's pass, a parked one is behind those the pass kept so far
 * (their connections marked with the pass's epoch, whole_ahead when one takes a shard whole).
 * Each test is O(1) but the keys', so a pass is linear in the park list. */
static bool must_wait(const struct kshard *ks, const struct req *q, bool in_pass, bool whole_ahead)
{
    const struct kpark *k = &q->kc->pk[ks->id];
    if (in_pass ? k->seen == ks->epoch : k->parked > 0)
        return true;
    if (q->phase == PH_LOCK && (in_pass ? whole_ahead : ks->whole_parked > 0))
        return true;
    if (locks_all(q))
        return ks->locks.n > 0 || (ks->all != NULL && ks->all != q->txn);
    for (uint32_t j = 0, n = req_nkeys(q); j < n; j++)
        if (held(ks, req_key(q, j), q->txn))
            return true;
    return false;
}

static void park(struct kshard *ks, struct req *q)
{
    q->kc->pk[ks->id].parked++;
    if (locks_all(q))
        ks->whole_parked++;
    q->next = NULL;
    if (ks->park_tail != NULL)
        ks->park_tail->next = q;
    else
        ks->park = q;
    ks->park_tail = q;
    count(&ks->parked, 1);
}

/* Gives back q's locks here: its first `upto` keys, or the whole shard (DBSIZE, FLUSHALL). */
static void unlock_keys(struct kshard *ks, struct req *q, uint32_t upto)
{
    if (shard_cmd(q->cmd) && ks->all == q->txn)
        ks->all = NULL;
    for (uint32_t j = 0; j < upto; j++) {
        const struct resp_arg *k = req_key(q, j);
        locks_drop(&ks->locks, k->p, k->len, kv_hash(k->p, k->len), q->txn);
    }
}

/* Runs q here, now (nothing it names is locked by another command). */
/* ---- replies that wait for the journal (--appendfsync always) ----
 * As Redis replies only after the AOF's fsync, a reply made on a shard goes out only once
 * everything that shard has appended is durable: the writer's, and a reader's that may have
 * seen it. */

static bool must_sync(void)
{
    return aof_mode == AOF_ALWAYS && aof_pending();
}

struct local_wait {
    struct kconn *kc;
    struct slot *s;
};

static void kc_release(struct kconn *kc);

/* The slot's part made here is durable: the slot may go out. The slot lives while kc holds. */
static void local_durable(void *arg, int err)
{
    struct local_wait *w = arg;
    struct kconn *kc = w->kc;
    struct slot *s = w->s;
    free(w);
    if (err != 0)
        s->jfail = true;
    s->pending--;
    if (!kc->closed)
        flush(kc);
    kc_release(kc);
}

/* After a part of slot s ran here: true when it waits for the journal (s->pending stays up
 * until then); false when it need not, or cannot (then its reply says the write failed). */
static bool local_sync(struct kconn *kc, struct slot *s)
{
    if (!must_sync())
        return false;
    struct local_wait *w = malloc(sizeof(*w));
    if (w != NULL) {
        *w = (struct local_wait){kc, s};
        kc->holds++;
        if (aof_when_durable(local_durable, w) == 0)
            return true;
        kc->holds--;
        free(w);
    }
    s->jfail = true;
    return false;
}

static void send_back(void *arg);

static void remote_durable(void *arg, int err)
{
    struct req *q = arg;
    if (err != 0)
        q->jfail = true;
    send_back(q);
}

/* A request that ran here: its reply goes back now (q), or once the journal is durable (NULL;
 * remote_durable sends it). */
static struct req *remote_sync(struct req *q)
{
    if (!must_sync())
        return q;
    if (aof_when_durable(remote_durable, q) == 0)
        return NULL;
    q->jfail = true;
    return q;
}

static void run_here_cmd(struct kshard *ks, struct req *q);

/* Runs q here; a journal record it made that failed shows in its reply. */
static void run_here(struct kshard *ks, struct req *q)
{
    uint64_t t0 = pith_now_ns();
    (void)aof_take_error();
    run_here_cmd(ks, q);
    if (aof_take_error())
        q->jfail = true;
    q->exec_ns += pith_now_ns() - t0;
}

static void run_here_cmd(struct kshard *ks, struct req *q)
{
    if (q->phase == PH_LOCK && shard_cmd(q->cmd)) {
        /* DBSIZE, FLUSHALL: the whole shard; DBSIZE counts as it locks. */
        ks->all = q->txn;
        if (q->cmd == C_DBSIZE1)
            q->err = exec_shard(ks, q->cmd, q->a, q->argc, &q->n, &q->r);
        if (q->err != 0)
            unlock_keys(ks, q, 0);
    } else if (q->phase == PH_LOCK) {
        uint32_t j = 0, n = q->nkeys;
        for (; j < n; j++) {
            const struct resp_arg *k = req_key(q, j);
            if (locks_take(&ks->locks, k->p, k->len, kv_hash(k->p, k->len), q->txn) != 0)
                break; /* -ENOMEM */
        }
        if (j < n)
            q->err = -ENOMEM;
        else if (q->cmd == C_MSET1 && (q->prep = mset_prepare(q->a, q->step, NULL, n)) == NULL)
            q->err = -ENOMEM; /* no memory for its entries: the MSET fails whole */
        else if (q->cmd == C_MGET1 || q->cmd == C_EXISTS1)
            q->err =
                exec_keys(ks, q->cmd, q->a, q->step, NULL, q->nkeys, &q->n, q->outs, q->budget);
        /* A LOCK that fails holds nothing (txn_back counts on it): what it took goes back. */
        if (q->err != 0)
            unlock_keys(ks, q, j);
    } else if (shard_cmd(q->cmd)) {
        q->err = exec_shard(ks, q->cmd, q->a, q->argc, &q->n, &q->r);
    } else if (q->idx != NULL) {
        q->err = exec_keys(ks, q->cmd, q->a, q->step, NULL, q->nkeys, &q->n, q->outs, q->budget);
    } else {
        q->err = exec_key(ks, q->cmd, q->a, &q->n, q->expire_ms, &q->r);
    }
}

static void req_back(void *result, void *ctx);

static void back_task(void *arg)
{
    req_back(arg, NULL);
}

/* A request that waited here is done: its reply goes to the connection's shard. With no room
 * there now, it goes when there is (or, with no memory even to wait, at the next tick). */
static void send_back(void *arg)
{
    struct req *q = arg;
    int rc = pith_submit(q->from, back_task, q);
    if (rc == 0)
        return;
    if (rc == -EAGAIN && pith_when_shard_room(q->from, send_back, q) == 0)
        return;
    struct kshard *ks = me();
    q->next = ks->backlog;
    ks->backlog = q;
}

/* Keys were unlocked here: the requests that wait run, in order, as far as they can. */
static void wake(struct kshard *ks)
{
    struct req *prev = NULL;
    bool whole_ahead = false;
    if (++ks->epoch == 0)
        ks->epoch = 1; /* 0 is what a connection's mark starts as */
    for (struct req *p = ks->park, *next; p != NULL; p = next) {
        next = p->next;
        if (must_wait(ks, p, true, whole_ahead)) {
            p->kc->pk[ks->id].seen = ks->epoch;
            whole_ahead |= locks_all(p);
            prev = p;
            continue;
        }
        if (prev != NULL)
            prev->next = next;
        else
            ks->park = next;
        if (ks->park_tail == p)
            ks->park_tail = prev;
        p->kc->pk[ks->id].parked--;
        if (locks_all(p))
            ks->whole_parked--;
        run_here(ks, p);
        if (remote_sync(p) != NULL)
            send_back(p);
    }
}

static void *req_run(void *arg)
{
    struct req *q = arg;
    struct kshard *ks = me();
    if (q->phase == PH_COMMIT || q->phase == PH_RELEASE) {
        uint64_t t0 = pith_now_ns();
        (void)aof_take_error();
        if (q->phase == PH_COMMIT && q->prep != NULL)
            q->err = mset_put(ks, q->prep, q->nkeys);
        else if (q->phase == PH_COMMIT && shard_cmd(q->cmd))
            q->err = exec_shard(ks, q->cmd, q->a, q->argc, &q->n, &q->r); /* FLUSHALL */
        else if (q->phase == PH_COMMIT)
            q->err = exec_keys(ks, q->cmd, q->a, q->step, NULL, q->nkeys, &q->n, NULL, SIZE_MAX);
        else
            mset_discard(q->prep, q->nkeys); /* an MSET that failed on another shard */
        if (aof_take_error())
            q->jfail = true;
        q->prep = NULL;
        unlock_keys(ks, q, q->nkeys);
        q->exec_ns += pith_now_ns() - t0; /* the requests wake runs time themselves */
        wake(ks);
        return remote_sync(q);
    }
    if (busy(ks) && must_wait(ks, q, false, false)) {
        park(ks, q);
        return NULL; /* the reply goes later, from send_back */
    }
    run_here(ks, q);
    return remote_sync(q);
}

static void req_free(struct req *q)
{
    struct kshard *ks = q->kc->ks;
    q->kc->req_bytes -= q->bytes;
    if (q->lprev != NULL)
        q->lprev->lnext = q->lnext;
    else
        ks->live = q->lnext;
    if (q->lnext != NULL)
        q->lnext->lprev = q->lprev;
    resp_out_free(&q->r);
    if (q->outs != NULL)
        for (uint32_t i = 0; i < q->nkeys; i++)
            resp_out_free(&q->outs[i]);
    pith_free(q->outs);
    pith_free(q->idx);
    mset_discard(q->prep, q->nkeys);
    if (q->txn != NULL && --q->txn->live == 0)
        pith_free(q->txn);
    pith_free(q);
}

/* A request's results go into its slot. */
static void req_results(struct req *q)
{
    struct slot *s = q->slot;
    s->exec_ns += q->exec_ns;
    q->exec_ns = 0;
    if (q->jfail)
        s->jfail = true;
    if (q->err)
        s->failed = true;
    else if (s->combine == SUM || s->combine == KILLED)
        s->sum += q->n;
    size_t add = 0;
    if (q->idx != NULL && q->outs != NULL) {
        for (uint32_t i = 0; i < q->nkeys; i++) {
            add += q->outs[i].len;
            part_put(s, q->idx[i], &q->outs[i]);
        }
    } else {
        add = q->r.len;
        part_put(s, q->part, &q->r);
    }
    if (s->counted) {
        s->held += add;
        q->kc->slot_bytes += add;
    }
    /* Up at once to a larger reply, halfway down toward a smaller one. */
    size_t est = q->kc->reply_est;
    q->kc->reply_est = add >= est ? add : est / 2 + add / 2;
    if (q->err == -ENOBUFS && !q->kc->closed && !q->kc->over)
        drop_client(q->kc, &q->kc->ks->out_limit_kills); /* its reply passed the budget */
}

/* A request is done (or failed): its results go into its slot. */
static void req_done(struct req *q)
{
    req_results(q);
    q->slot->pending--;
    req_free(q);
}

static void txn_back(struct req *q);

/* A closed connection goes once nothing refers to it: no request out, no callback queued, none
 * waiting to be sent (a transaction's COMMIT or RELEASE is sent even then). */
static bool kc_unused(const struct kconn *kc)
{
    return kc->closed && kc->reqs == 0 && kc->holds == 0 && kc->wait == NULL;
}

static void kc_release(struct kconn *kc)
{
    kc->holds--;
    if (kc_unused(kc))
        kconn_free(kc);
}

static void req_back(void *result, void *ctx)
{
    (void)ctx;
    struct req *q = result;
    if (q == NULL)
        return; /* it waits where it went; send_back brings it */
    struct kconn *kc = q->kc;
    kc->reqs--;
    if (q->txn != NULL)
        txn_back(q);
    else
        req_done(q);
    if (kc->closed) {
        if (kc_unused(kc))
            kconn_free(kc);
        return;
    }
    flush(kc);
}

static void room_cb(void *arg);

/* Sends q to its shard; when the mesh pushes back (-EAGAIN), q waits in the connection's queue
 * (behind any that already wait, so that requests reach each shard in command order) until
 * pith_when_shard_room says there is room. Nothing fails for backpressure. */
static void req_send(struct kconn *kc, struct req *q)
{
    if (kc->wait == NULL) {
        int rc = pith_call(q->shard, req_run, q, req_back, NULL);
        if (rc == 0) {
            kc->reqs++;
            return;
        }
        if (rc != -EAGAIN && (q->phase == PH_RUN || q->phase == PH_LOCK)) {
            q->err = rc;
            if (q->txn != NULL)
                txn_back(q);
            else
                req_done(q);
            return;
        }
        /* A COMMIT or RELEASE is never dropped (its shard holds locks for it): it waits for
         * room like one the mesh pushed back. */
    }
    q->next = NULL;
    count(&kc->ks->room_waits, 1);
    if (kc->wait_tail != NULL)
        kc->wait_tail->next = q;
    else
        kc->wait = q;
    kc->wait_tail = q;
    /* With no memory even to wait for room, the tick arms it again; what waits keeps waiting,
     * in order. */
    if (!kc->room_armed && pith_when_shard_room(kc->wait->shard, room_cb, kc) == 0) {
        kc->room_armed = true;
        kc->holds++;
    }
}

/* There is room toward the first waiting request's shard: send what waits, in order, until the
 * mesh pushes back again; once none waits, the connection's input is offered again. */
static void room_cb(void *arg)
{
    struct kconn *kc = arg;
    kc->room_armed = false;
    while (kc->wait != NULL) {
        struct req *q = kc->wait;
        if (kc->closed && q->txn == NULL) {
            kc->wait = q->next;
            q->err = -ECANCELED;
            req_done(q);
            continue;
        }
        /* A transaction's steps go on for a closed connection: its shards hold locks. */
        int rc = pith_call(q->shard, req_run, q, req_back, NULL);
        if (rc == -EAGAIN) {
            if (pith_when_shard_room(q->shard, room_cb, kc) == 0) {
                kc->room_armed = true;
                kc->holds++;
            }
            break; /* else the tick arms it again */
        }
        if (rc != 0 && (q->phase == PH_COMMIT || q->phase == PH_RELEASE))
            break; /* never dropped: the tick tries again */
        kc->wait = q->next;
        if (kc->wait == NULL)
            kc->wait_tail = NULL;
        if (rc == 0) {
            kc->reqs++;
        } else {
            q->err = rc;
            if (q->txn != NULL)
                txn_back(q);
            else
                req_done(q);
        }
    }
    if (kc->wait == NULL)
        kc->wait_tail = NULL;
    if (!kc->closed && kc->wait == NULL) {
        flush(kc);
        if (!kc->paused && !kc->quitting && !kc->closed) {
            (void)pith_conn_pause(kc->id);
            (void)pith_conn_resume(kc->id);
        }
    }
    kc_release(kc);
}

static struct req *req_new(struct kconn *kc, struct slot *s, unsigned shard, unsigned cmd,
                           size_t argc, size_t bytes)
{
    size_t size = sizeof(struct req) + argc * sizeof(struct resp_arg) + bytes;
    struct req *q = pith_malloc(size);
    if (q == NULL)
        return NULL;
    memset(q, 0, sizeof(*q));
    /* With what the keys' locks may take where it goes (a command over several shards). */
    q->bytes = size + argc * 48;
    kc->req_bytes += q->bytes;
    q->kc = kc;
    q->slot = s;
    q->shard = shard;
    q->from = (unsigned)pith_shard_id();
    q->lnext = kc->ks->live;
    if (q->lnext != NULL)
        q->lnext->lprev = q;
    kc->ks->live = q;
    q->cmd = (uint16_t)cmd;
    q->argc = (uint32_t)argc;
    return q;
}

static void arg_copy(struct req *q, size_t at, char **p, const struct resp_arg *a)
{
    memcpy(*p, a->p, a->len);
    q->a[at].p = *p;
    q->a[at].len = a->len;
    *p += a->len;
}

/* Whether a command of kc on key k must wait on this shard (see "Commands over several
 * shards"): k is locked, or kc already has a request waiting here. */
static bool local_wait(struct kconn *kc, const struct resp_arg *k)
{
    struct kshard *ks = kc->ks;
    return busy(ks) && (held(ks, k, NULL) || kc_parked(ks, kc));
}

/* Part `part` of slot s: run here, or on the owner of its key. */
static void run_part(struct kconn *kc, struct slot *s, uint32_t part, unsigned shard, unsigned cmd,
                     const struct resp_arg *a, unsigned argc, long long n, int64_t expire_ms)
{
    s->pending++;
    /* Here, unless its key is locked or the connection already waits here (then it waits). */
    bool here = shard == (unsigned)pith_shard_id();
    bool wait = here && !shard_cmd(cmd) && local_wait(kc, &a[0]);
    if (here && !wait) {
        struct resp_out r = {0};
        int err;
        (void)aof_take_error();
        if (shard_cmd(cmd))
            err = exec_shard(kc->ks, cmd, a, argc, &n, &r);
        else
            err = exec_key(kc->ks, cmd, a, &n, expire_ms, &r);
        if (err)
            s->failed = true;
        else if (s->combine == SUM || s->combine == KILLED)
            s->sum += n;
        if (aof_take_error())
            s->jfail = true;
        part_put(s, part, &r);
        resp_out_free(&r);
        if (!local_sync(kc, s))
            s->pending--;
        return;
    }
    size_t bytes = 0;
    for (unsigned i = 0; i < argc; i++)
        bytes += a[i].len;
    struct req *q = req_new(kc, s, shard, cmd, argc, bytes);
    if (q == NULL) {
        s->failed = true;
        s->pending--;
        return;
    }
    q->part = part;
    q->n = n;
    q->expire_ms = expire_ms;
    char *p = (char *)&q->a[argc];
    for (unsigned i = 0; i < argc; i++)
        arg_copy(q, i, &p, &a[i]);
    if (wait) {
        kc->reqs++;
        park(kc->ks, q);
    } else {
        req_send(kc, q);
    }
}

/* Where the next reply goes: straight out when nothing waits ahead of it, else its own slot.
 * With no memory for a slot it cannot go in order, so the connection ends once the replies
 * before it are out (NULL). */
static struct resp_out *reply_buf(struct kconn *kc)
{
    if (kc->head == NULL)
        return &kc->out;
    struct slot *s = slot_new(kc, 1, RAW);
    if (s == NULL)
        kc->quitting = true;
    return s != NULL ? &s->one : NULL;
}

static void reply_error(struct kconn *kc, const char *msg)
{
    struct resp_out *o = reply_buf(kc);
    if (o != NULL)
        (void)resp_put_error(o, msg);
}

static void reply_simple(struct kconn *kc, const char *msg)
{
    struct resp_out *o = reply_buf(kc);
    if (o != NULL)
        (void)resp_put_simple(o, msg);
}

/* A keyed command on one key: answered at once when this shard owns the key and nothing is
 * waiting ahead of it, else through a slot. */
static void keyed(struct kconn *kc, unsigned cmd, const struct resp_arg *a, unsigned argc,
                  long long n, int64_t expire_ms)
{
    uint64_t h;
    unsigned shard = owner(&a[0], &h);
    /* Straight into the ready buffer, without a journal (whose replies may wait for it, or say
     * that a record failed). */
    if (shard == (unsigned)pith_shard_id() && kc->head == NULL && !local_wait(kc, &a[0]) &&
        aof_mode == AOF_OFF) {
        if (exec_key(kc->ks, cmd, a, &n, expire_ms, &kc->out) != 0)
            (void)resp_put_error(&kc->out, "ERR out of memory");
        return;
    }
    struct slot *s = slot_new(kc, 1, RAW);
    if (s == NULL) {
        reply_error(kc, "ERR out of memory");
        return;
    }
    run_part(kc, s, 0, shard, cmd, a, argc, n, expire_ms);
}

/* Arity errors are refusals (Redis's rejected_calls), not failures of the command. */
static void wrong_args(struct kconn *kc, const struct resp_arg *name)
{
    kc->rejected = true;
    char lower[33];
    size_t n = name->len < 32 ? name->len : 32;
    for (size_t i = 0; i < n; i++)
        lower[i] =
            (char)(name->p[i] >= 'A' && name->p[i] <= 'Z' ? name->p[i] - 'A' + 'a' : name->p[i]);
    lower[n] = 0;
    char msg[96];
    snprintf(msg, sizeof(msg), "ERR wrong number of arguments for '%s' command", lower);
    reply_error(kc, msg);
}

/* One shard's keys of a multi-key command, in one request (all of them in command order):
 * NULL when there is no memory for it. */
static struct req *keys_req(struct kconn *kc, struct slot *s, unsigned sh, unsigned cmd,
                            const struct resp_arg *a, uint32_t nparts, unsigned step,
                            const uint16_t *shard_of, uint32_t n, size_t bytes, size_t budget)
{
    struct req *q = req_new(kc, s, sh, cmd, (size_t)n * step, bytes);
    if (q == NULL)
        return NULL;
    q->nkeys = n;
    q->step = step;
    q->budget = budget;
    q->idx = pith_malloc((size_t)n * sizeof(*q->idx));
    q->outs = s->combine == ARRAY ? pith_calloc(n, sizeof(*q->outs)) : NULL;
    if (q->idx == NULL || (s->combine == ARRAY && q->outs == NULL)) {
        req_free(q);
        return NULL;
    }
    char *p = (char *)&q->a[(size_t)n * step];
    uint32_t j = 0;
    for (uint32_t i = 0; i < nparts; i++) {
        if (shard_of[i] != sh)
            continue;
        q->idx[j] = i;
        for (unsigned k = 0; k < step; k++)
            arg_copy(q, (size_t)j * step + k, &p, &a[(size_t)i * step + k]);
        j++;
    }
    return q;
}

/* The connection may go on with the commands after its command over several shards. */
static void txn_locked(struct kconn *kc)
{
    if (--kc->locking == 0 && !kc->closed && !kc->paused && !kc->quitting && kc->wait == NULL) {
        (void)pith_conn_pause(kc->id);
        (void)pith_conn_resume(kc->id);
    }
}

static void txn_send(struct txn *t, struct req *q, uint8_t phase)
{
    q->phase = phase;
    req_send(t->kc, q);
}

/* A step of a command over several shards came back (see "Commands over several shards"). */
static void txn_back(struct req *q)
{
    struct txn *t = q->txn;
    struct slot *s = t->s;
    if (q->phase == PH_LOCK) {
        if (q->err != 0) {
            /* Nothing is locked for q: the shards before it unlock, the rest never start. */
            uint32_t at = t->at;
            struct kconn *kc = t->kc;
            req_results(q);
            for (uint32_t i = at + 1; i < t->n; i++)
                req_free(t->q[i]);
            req_free(q);
            s->pending--;
            for (uint32_t i = 0; i < at; i++)
                txn_send(t, t->q[i], PH_RELEASE);
            txn_locked(kc);
            return;
        }
        if (!t->write)
            req_results(q); /* what it read, under its locks */
        if (++t->at < t->n) {
            txn_send(t, t->q[t->at], PH_LOCK);
            return;
        }
        /* Every key is locked: a write applies everywhere, a read is answered. (A COMMIT or
         * RELEASE is never freed on its way out, so t stays until they come back.) */
        if (!t->write)
            s->pending--;
        for (uint32_t i = 0; i < t->n; i++)
            txn_send(t, t->q[i], t->write ? PH_COMMIT : PH_RELEASE);
        /* Then the connection's next commands: on this shard they queue behind the COMMIT. */
        txn_locked(t->kc);
        return;
    }
    if (q->phase == PH_COMMIT) {
        req_results(q);
        if (++t->back == t->n)
            s->pending--;
    }
    req_free(q);
}

/* A transaction for slot s of kc over at most n shards; NULL with no memory. */
static struct txn *txn_new(struct kconn *kc, struct slot *s, unsigned n, bool write)
{
    struct txn *t = pith_calloc(1, sizeof(*t) + n * sizeof(t->q[0]));
    if (t != NULL) {
        t->kc = kc;
        t->s = s;
        t->write = write;
    }
    return t;
}

/* A transaction that could not be set up: its requests and it go, and its slot fails. */
static void txn_drop(struct txn *t)
{
    for (uint32_t i = 0; i < t->n; i++) {
        t->q[i]->txn = NULL;
        req_free(t->q[i]);
    }
    t->s->failed = true;
    t->s->pending--;
    pith_free(t);
}

/* Starts a transaction whose requests are all made: the first shard's LOCK. Its requests own it
 * from here (the last one freed frees it). */
static void txn_start(struct txn *t)
{
    t->live = t->n;
    t->kc->locking++;
    count(&t->kc->ks->txns, 1);
    txn_send(t, t->q[0], PH_LOCK);
}

/* A multi-key command (MGET, DEL, EXISTS, MSET): its keys grouped by the shard that owns
 * them, one request per shard with all of that shard's keys in command order. On one shard
 * it runs as one task there; over several, as a transaction (see "Commands over several
 * shards"). */
static void multi(struct kconn *kc, unsigned cmd, const struct resp_arg *a, unsigned argc,
                  unsigned step, uint8_t combine)
{
    uint32_t nparts = argc / step;
    struct slot *s = slot_new(kc, nparts, combine);
    uint16_t *shard_of = pith_malloc((size_t)nparts * sizeof(*shard_of));
    uint32_t *per = pith_calloc(nshards, sizeof(*per));
    size_t *bytes = pith_calloc(nshards, sizeof(*bytes));
    if (s == NULL || shard_of == NULL || per == NULL || bytes == NULL) {
        if (s != NULL)
            s->failed = true;
        else
            reply_error(kc, "ERR out of memory");
        goto out;
    }
    unsigned used = 0, only = 0;
    for (uint32_t i = 0; i < nparts; i++) {
        uint64_t h;
        shard_of[i] = (uint16_t)owner(&a[(size_t)i * step], &h);
        if (per[shard_of[i]]++ == 0) {
            used++;
            only = shard_of[i];
        }
        for (unsigned k = 0; k < step; k++)
            bytes[shard_of[i]] += a[(size_t)i * step + k].len;
    }
    unsigned self = (unsigned)pith_shard_id();
    size_t budget = reply_budget(), made = 0;
    s->pending++;
    if (used > 1) {
        struct txn *t = txn_new(kc, s, used, cmd == C_MSET1 || cmd == C_DEL1);
        if (t == NULL) {
            s->failed = true;
            s->pending--;
            goto out;
        }
        for (unsigned sh = 0; sh < nshards; sh++) {
            if (per[sh] == 0)
                continue;
            struct req *q =
                keys_req(kc, s, sh, cmd, a, nparts, step, shard_of, per[sh], bytes[sh], budget);
            if (q == NULL) {
                txn_drop(t);
                goto out;
            }
            q->txn = t;
            t->q[t->n++] = q;
        }
        txn_start(t);
        goto out;
    }
    if (only != self) {
        struct req *q =
            keys_req(kc, s, only, cmd, a, nparts, step, shard_of, per[only], bytes[only], budget);
        if (q == NULL) {
            s->failed = true;
            s->pending--;
        } else {
            req_send(kc, q);
        }
        goto out;
    }
    if (busy(kc->ks)) {
        /* A key of it may be locked, or the connection wait here already: as a request, it
         * waits if it must. */
        struct req *q =
            keys_req(kc, s, self, cmd, a, nparts, step, shard_of, per[self], bytes[self], budget);
        if (q == NULL) {
            s->failed = true;
            s->pending--;
        } else if (must_wait(kc->ks, q, false, false)) {
            kc->reqs++;
            park(kc->ks, q);
        } else {
            run_here(kc->ks, q);
            req_done(q);
        }
        goto out;
    }
    /* All on this shard: now, each reply straight into its part (an MSET all or nothing). */
    long long sum = 0;
    if (cmd == C_MSET1) {
        if (exec_keys(kc->ks, cmd, a, step, NULL, nparts, &sum, NULL, SIZE_MAX) != 0)
            s->failed = true;
        s->pending--;
        goto out;
    }
    for (uint32_t i = 0; i < nparts; i++) {
        if (combine == ARRAY && made > budget) {
            /* The reply would pass what the client may hold: it is closed. */
            s->failed = true;
            if (!kc->over)
                drop_client(kc, &kc->ks->out_limit_kills);
            break;
        }
        long long k = 0;
        struct resp_out discard = {0};
        int e = exec_key(kc->ks, cmd, &a[(size_t)i * step], &k, 0,
                         combine == ARRAY ? &s->parts[i] : &discard);
        made += combine == ARRAY ? s->parts[i].len : 0;
        resp_out_free(&discard);
        if (e)
            s->failed = true;
        sum += k;
    }
    if (combine == SUM)
        s->sum += sum;
    s->pending--;
out:
    pith_free(shard_of);
    pith_free(per);
    pith_free(bytes);
}

/* A command every shard does its part of, with the same arguments: its slot, or NULL (then
 * the reply says there was no memory). */
static struct slot *whole(struct kconn *kc, unsigned cmd, uint8_t combine, const struct resp_arg *a,
                          unsigned argc)
{
    struct slot *s = slot_new(kc, nshards, combine);
    if (s == NULL) {
        reply_error(kc, "ERR out of memory");
        return NULL;
    }
    if (nshards == 1 || (cmd != C_DBSIZE1 && cmd != C_FLUSH1)) {
        for (unsigned i = 0; i < nshards; i++)
            run_part(kc, s, i, i, cmd, a, argc, 0, 0);
        return s;
    }
    /* DBSIZE and FLUSHALL touch every key: a transaction that takes every shard whole, in
     * shard order, so that neither lands between the shards of an MSET or DEL (see "Commands
     * over several shards"). */
    size_t bytes = 0;
    for (unsigned i = 0; i < argc; i++)
        bytes += a[i].len;
    s->pending++;
    struct txn *t = txn_new(kc, s, nshards, cmd == C_FLUSH1);
    if (t == NULL) {
        s->failed = true;
        s->pending--;
        return s;
    }
    for (unsigned i = 0; i < nshards; i++) {
        struct req *q = req_new(kc, s, i, cmd, argc, bytes);
        if (q == NULL) {
            txn_drop(t);
            return s;
        }
        q->part = i;
        char *p = (char *)&q->a[argc];
        for (unsigned k = 0; k < argc; k++)
            arg_copy(q, k, &p, &a[k]);
        q->txn = t;
        t->q[t->n++] = q;
    }
    txn_start(t);
    return s;
}

static char run_id[41]; /* INFO's run_id: 40 hex digits, new in every process */

static void human(char *buf, size_t size, uint64_t bytes)
{
    static const char units[] = "BKMGTP";
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%lluB", (unsigned long long)bytes);
    else
        snprintf(buf, size, "%.2f%c", v, units[u]);
}

static uint64_t rss_bytes(void)
{
    unsigned long long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%llu %llu", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Appends printf-style text to o (INFO's body); errors only lose the text. */
/* Whether one of the n sections asked for is `name`. */
static bool named(const struct resp_arg *sections, unsigned n, const char *name)
{
    for (unsigned i = 0; i < n; i++)
        if (is(&sections[i], name))
            return true;
    return false;
}

/* INFO [section ...]: Redis's sections and the fields clients read, with pith-kv's own "Shards"
 * section (one line per shard). Figures are read from every shard's relaxed counters. As in
 * Redis 7: no section or "default" is the default set; "all" and "everything" add the sections
 * outside it (commandstats, latencystats, and the engine's: engine, enginememory, enginenet,
 * enginejournal, enginelatency); any other names one section. */
static void info(struct kconn *kc, const struct resp_arg *sections, unsigned n)
{
    uint64_t keys = 0, expires = 0, bytes = 0, conns = 0, cmds = 0, total = 0, expired = 0;
    uint64_t used = 0, peak = 0, cmem = 0, evicted = 0, obl_kills = 0, hits = 0, misses = 0;
    double ttl_weighted = 0;
    for (unsigned i = 0; i < nshards; i++) {
        struct kshard *ks = kshards[i];
        hits += atomic_load_explicit(&ks->hits, memory_order_relaxed);
        misses += atomic_load_explicit(&ks->misses, memory_order_relaxed);
        ttl_weighted += (double)atomic_load_explicit(&ks->st.avg_ttl, memory_order_relaxed) *
                        (double)atomic_load_explicit(&ks->st.expires, memory_order_relaxed);
        cmem += atomic_load_explicit(&ks->client_mem_pub, memory_order_relaxed);
        evicted += atomic_load_explicit(&ks->evicted, memory_order_relaxed);
        obl_kills += atomic_load_explicit(&ks->out_limit_kills, memory_order_relaxed);
        keys += atomic_load_explicit(&ks->st.keys, memory_order_relaxed);
        expires += atomic_load_explicit(&ks->st.expires, memory_order_relaxed);
        bytes += atomic_load_explicit(&ks->st.bytes, memory_order_relaxed);
        conns += atomic_load_explicit(&ks->nconns, memory_order_relaxed);
        cmds += atomic_load_explicit(&ks->commands, memory_order_relaxed);
        total += atomic_load_explicit(&ks->connections, memory_order_relaxed);
        expired += atomic_load_explicit(&ks->expired, memory_order_relaxed);
        pith_mem_stats_t ms;
        if (pith_mem_stats((int)i, &ms) == 0) {
            used += ms.in_use;
            peak += ms.peak;
        }
    }
    bool dflt = n == 0 || named(sections, n, "default");
    bool every = named(sections, n, "all") || named(sections, n, "everything");
#define SECTION(name) (every || dflt || named(sections, n, name))
#define EXTRA(name)   (every || named(sections, n, name))
    struct resp_out t = {0};
    uint64_t now = pith_now_ns();
    if (SECTION("server")) {
        struct utsname u;
        if (uname(&u) != 0)
            memset(&u, 0, sizeof(u));
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t up = (now - started_ns) / 1000000000u;
        (void)resp_put_fmt(
            &t,
            "# Server\r\nredis_version:7.0.0\r\nredis_git_sha1:00000000\r\nredis_git_dirty:0\r\n"
            "redis_build_id:0\r\nredis_mode:standalone\r\nos:%s %s %s\r\narch_bits:%d\r\n"
            "multiplexing_api:io_uring\r\nprocess_id:%d\r\nprocess_supervised:no\r\n",
            u.sysname, u.release, u.machine, (int)(sizeof(void *) * 8), (int)getpid());
        (void)resp_put_fmt(
            &t,
            "run_id:%s\r\ntcp_port:%d\r\nserver_time_usec:%lld\r\nuptime_in_seconds:%llu\r\n"
            "uptime_in_days:%llu\r\nhz:10\r\nexecutable:\r\nconfig_file:\r\n"
            "pith_kv_version:0.1.0\r\npith_version:%s\r\nshards:%u\r\n\r\n",
            run_id, opt.port, (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000,
            (unsigned long long)up, (unsigned long long)(up / 86400), pith_version(), nshards);
    }
    if (SECTION("clients"))
        (void)resp_put_fmt(
            &t,
            "# Clients\r\nconnected_clients:%llu\r\nmaxclients:%llu\r\nblocked_clients:0\r\n\r\n",
            (unsigned long long)conns, (unsigned long long)setting(&kv_cfg.maxclients));
    if (SECTION("memory")) {
        char h_used[32], h_rss[32], h_peak[32], h_max[32];
        uint64_t rss = rss_bytes();
        human(h_max, sizeof(h_max), setting(&kv_cfg.maxmemory));
        human(h_used, sizeof(h_used), used);
        human(h_rss, sizeof(h_rss), rss);
        human(h_peak, sizeof(h_peak), peak);
        (void)resp_put_fmt(
            &t,
            "# Memory\r\nused_memory:%llu\r\nused_memory_human:%s\r\nused_memory_rss:%llu\r\n"
            "used_memory_rss_human:%s\r\nused_memory_peak:%llu\r\nused_memory_peak_human:%s\r\n"
            "used_memory_dataset:%llu\r\nmaxmemory:%llu\r\nmaxmemory_human:%s\r\n"
            "maxmemory_policy:noeviction\r\nmem_clients_slaves:0\r\nmem_clients_normal:%llu\r\n"
            "maxmemory_clients:%llu\r\nmem_allocator:mimalloc (pith shard heaps)\r\n\r\n",
            (unsigned long long)used, h_used, (unsigned long long)rss, h_rss,
            (unsigned long long)peak, h_peak, (unsigned long long)bytes,
            (unsigned long long)setting(&kv_cfg.maxmemory), h_max, (unsigned long long)cmem,
            (unsigned long long)setting(&kv_cfg.maxmemory_clients));
    }
    if (SECTION("stats"))
        (void)resp_put_fmt(
            &t,
            "# Stats\r\ntotal_connections_received:%llu\r\ntotal_commands_processed:%llu\r\n"
            "rejected_connections:%llu\r\nexpired_keys:%llu\r\nevicted_keys:0\r\n"
            "evicted_clients:%llu\r\nclient_output_buffer_limit_disconnections:%llu\r\n"
            "keyspace_hits:%llu\r\nkeyspace_misses:%llu\r\n\r\n",
            (unsigned long long)total, (unsigned long long)cmds,
            (unsigned long long)atomic_load_explicit(&clients_refused, memory_order_relaxed),
            (unsigned long long)expired, (unsigned long long)evicted, (unsigned long long)obl_kills,
            (unsigned long long)hits, (unsigned long long)misses);
    if (SECTION("cpu")) {
        struct rusage ru, rc;
        if (getrusage(RUSAGE_SELF, &ru) != 0)
            memset(&ru, 0, sizeof(ru));
        if (getrusage(RUSAGE_CHILDREN, &rc) != 0)
            memset(&rc, 0, sizeof(rc));
#define SECS(tv) ((double)(tv).tv_sec + (double)(tv).tv_usec / 1e6)
        (void)resp_put_fmt(
            &t,
            "# CPU\r\nused_cpu_sys:%.6f\r\nused_cpu_user:%.6f\r\nused_cpu_sys_children:%.6f\r\n"
            "used_cpu_user_children:%.6f\r\n\r\n",
            SECS(ru.ru_stime), SECS(ru.ru_utime), SECS(rc.ru_stime), SECS(rc.ru_utime));
#undef SECS
    }
    if (SECTION("shards")) {
        (void)resp_put_fmt(&t, "# Shards\r\n");
        for (unsigned i = 0; i < nshards; i++) {
            struct kshard *ks = kshards[i];
            pith_mem_stats_t ms;
            if (pith_mem_stats((int)i, &ms) != 0)
                memset(&ms, 0, sizeof(ms));
            (void)resp_put_fmt(
                &t,
                "shard%u:keys=%llu,expires=%llu,clients=%llu,commands=%llu,expired=%llu,"
                "used_memory=%llu,buckets=%zu,room_waits=%llu,client_memory=%llu,"
                "multi_shard=%llu,lock_waits=%llu\r\n",
                i, (unsigned long long)atomic_load_explicit(&ks->st.keys, memory_order_relaxed),
                (unsigned long long)atomic_load_explicit(&ks->st.expires, memory_order_relaxed),
                (unsigned long long)atomic_load_explicit(&ks->nconns, memory_order_relaxed),
                (unsigned long long)atomic_load_explicit(&ks->commands, memory_order_relaxed),
                (unsigned long long)atomic_load_explicit(&ks->expired, memory_order_relaxed),
                (unsigned long long)ms.in_use,
                atomic_load_explicit(&ks->buckets, memory_order_relaxed),
                (unsigned long long)atomic_load_explicit(&ks->room_waits, memory_order_relaxed),
                (unsigned long long)atomic_load_explicit(&ks->client_mem_pub, memory_order_relaxed),
                (unsigned long long)atomic_load_explicit(&ks->txns, memory_order_relaxed),
                (unsigned long long)atomic_load_explicit(&ks->parked, memory_order_relaxed));
        }
        (void)resp_put_fmt(&t, "\r\n");
    }
    unsigned engine = (EXTRA("engine") ? EI_ENGINE : 0) | (EXTRA("enginememory") ? EI_MEMORY : 0) |
                      (EXTRA("enginenet") ? EI_NET : 0) |
                      (EXTRA("enginejournal") ? EI_JOURNAL : 0) |
                      (EXTRA("enginelatency") ? EI_LATENCY : 0);
    if (engine != 0)
        (void)engine_info(&t, nshards, engine);
    if (SECTION("persistence")) {
        /* Redis's names where they mean the same; the journal's own counts beside them. */
        uint64_t rewrites = 0, running = 0, records = 0, segs = 0;
        for (unsigned i = 0; i < nshards; i++) {
            rewrites += aof_rewrites(i);
            running += aof_rewriting(i);
            pith_journal_stats_t js;
            if (aof_mode != AOF_OFF && pith_journal_stats(i, &js) == 0) {
                records += js.appended;
                segs += js.segments;
            }
        }
        (void)resp_put_fmt(&t,
                           "# Persistence\r\naof_enabled:%d\r\naof_rewrite_in_progress:%d\r\n"
                           "aof_rewrites:%llu\r\naof_journal_records_appended:%llu\r\n"
                           "aof_journal_segments:%llu\r\n\r\n",
                           aof_mode != AOF_OFF, running > 0, (unsigned long long)rewrites,
                           (unsigned long long)records, (unsigned long long)segs);
    }
    if (EXTRA("commandstats"))
        (void)cmd_info_commandstats(&t, nshards);
    if (EXTRA("latencystats"))
        (void)cmd_info_latencystats(&t, nshards);
    if (SECTION("keyspace")) {
        (void)resp_put_fmt(&t, "# Keyspace\r\n");
        if (keys > 0)
            (void)resp_put_fmt(
                &t, "db0:keys=%llu,expires=%llu,avg_ttl=%llu\r\n", (unsigned long long)keys,
                (unsigned long long)expires,
                (unsigned long long)(expires > 0 ? ttl_weighted / (double)expires : 0));
    }
#undef SECTION
#undef EXTRA
    /* Redis ends the text without the last section's blank line. */
    if (t.len >= 4 && memcmp(t.p + t.len - 4, "\r\n\r\n", 4) == 0)
        t.len -= 2;
    struct resp_out *o = reply_buf(kc);
    if (o != NULL)
        (void)resp_put_bulk(o, t.p != NULL ? t.p : "", t.len);
    resp_out_free(&t);
}

/* EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT: the absolute time in ms, or false where Redis says
 * "invalid expire time" (a unit conversion or the addition of the base time overflows; a
 * negative time is allowed and deletes the key). */
static bool expire_at(long long v, bool ms, bool absolute, int64_t *at)
{
    if (!ms) {
        if (v > LLONG_MAX / 1000 || v < LLONG_MIN / 1000)
            return false;
        v *= 1000;
    }
    int64_t base = absolute ? 0 : now_ms();
    if (v > LLONG_MAX - base)
        return false;
    *at = v + base;
    return true;
}

/* SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL], as Redis 7 parses
 * it: first the words (a syntax error wins), then the time. The same expiry option may repeat
 * and the last counts; two different ones, or one with KEEPTTL, are a syntax error. */
static const char *set_options(const struct resp_arg *a, unsigned argc, long long *flags,
                               int64_t *expire_ms)
{
    static const char *const units[] = {"EX", "PX", "EXAT", "PXAT"};
    *flags = 0;
    *expire_ms = 0;
    int unit = -1;
    const struct resp_arg *when = NULL;
    for (unsigned i = 3; i < argc; i++) {
        int u = -1;
        for (int k = 0; k < 4; k++)
            if (is(&a[i], units[k]))
                u = k;
        if (is(&a[i], "NX") && !(*flags & SET_XX)) {
            *flags |= SET_NX;
        } else if (is(&a[i], "XX") && !(*flags & SET_NX)) {
            *flags |= SET_XX;
        } else if (is(&a[i], "GET")) {
            *flags |= SET_GET;
        } else if (is(&a[i], "KEEPTTL") && unit < 0) {
            *flags |= SET_KEEPTTL;
        } else if (u >= 0 && (unit < 0 || unit == u) && !(*flags & SET_KEEPTTL) && i + 1 < argc) {
            unit = u;
            when = &a[++i];
        } else {
            return "ERR syntax error";
        }
    }
    if (when == NULL)
        return NULL;
    long long v;
    if (!parse_ll(when, &v))
        return NOT_INT;
    bool secs = unit == 0 || unit == 2, relative = unit < 2;
    if (v <= 0 || (secs && v > LLONG_MAX / 1000))
        return "ERR invalid expire time in 'set' command";
    if (secs)
        v *= 1000;
    int64_t base = relative ? now_ms() : 0;
    if (v > LLONG_MAX - base)
        return "ERR invalid expire time in 'set' command";
    *expire_ms = v + base;
    return NULL;
}

/* EXPIRE-family options (a[3..]): NX, XX, GT, LT in *flags, or Redis's error (in buf when it
 * names the option). */
static const char *expire_options(const struct resp_arg *a, unsigned argc, long long *flags,
                                  char *buf, size_t size)
{
    *flags = 0;
    for (unsigned i = 3; i < argc; i++) {
        if (is(&a[i], "NX")) {
            *flags |= EXP_NX;
        } else if (is(&a[i], "XX")) {
            *flags |= EXP_XX;
        } else if (is(&a[i], "GT")) {
            *flags |= EXP_GT;
        } else if (is(&a[i], "LT")) {
            *flags |= EXP_LT;
        } else {
            snprintf(buf, size, "ERR Unsupported option %.*s",
                     (int)(a[i].len < 128 ? a[i].len : 128), a[i].p);
            return buf;
        }
    }
    if ((*flags & EXP_NX) && (*flags & (EXP_XX | EXP_GT | EXP_LT)))
        return "ERR NX and XX, GT or LT options at the same time are not compatible";
    if ((*flags & EXP_GT) && (*flags & EXP_LT))
        return "ERR GT and LT options at the same time are not compatible";
    return NULL;
}

/* EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT key time [NX | XX | GT | LT]. */
static void expire_cmd(struct kconn *kc, struct resp_arg *a, unsigned argc, bool ms, bool absolute)
{
    long long flags, v;
    int64_t at;
    char buf[160];
    const char *why = expire_options(a, argc, &flags, buf, sizeof(buf));
    if (why == NULL && !parse_ll(&a[2], &v))
        why = NOT_INT;
    if (why == NULL && !expire_at(v, ms, absolute, &at)) {
        char msg[80], lower[16];
        size_t n = a[0].len < sizeof(lower) - 1 ? a[0].len : sizeof(lower) - 1;
        for (size_t i = 0; i < n; i++)
            lower[i] = (char)(a[0].p[i] | 0x20);
        lower[n] = 0;
        snprintf(msg, sizeof(msg), "ERR invalid expire time in '%s' command", lower);
        reply_error(kc, msg);
        return;
    }
    if (why != NULL)
        reply_error(kc, why);
    else
        keyed(kc, C_EXPIRE, &a[1], 1, flags, at);
}

/* FLUSHALL / FLUSHDB [ASYNC | SYNC]: both flush at once. */
static void flush_cmd(struct kconn *kc, const struct resp_arg *a, unsigned argc)
{
    if (argc > 2 || (argc == 2 && !is(&a[1], "ASYNC") && !is(&a[1], "SYNC")))
        reply_error(kc, "ERR syntax error");
    else
        whole(kc, C_FLUSH1, OK, NULL, 0);
}

static void unknown(struct kconn *kc, const struct resp_arg *a, unsigned argc)
{
    /* Redis's wording: the name, then the first arguments, up to about 128 bytes of them. */
    char msg[400];
    int len = snprintf(msg, sizeof(msg), "ERR unknown command '%.*s', with args beginning with: ",
                       (int)(a[0].len < 128 ? a[0].len : 128), a[0].p);
    int args = 0;
    for (unsigned i = 1; i < argc && args < 128; i++) {
        int room = 128 - args;
        int n = snprintf(msg + len, sizeof(msg) - (size_t)len, "'%.*s' ",
                         (int)(a[i].len < (size_t)room ? a[i].len : (size_t)room), a[i].p);
        len += n;
        args += n;
    }
    reply_error(kc, msg);
}

/* "ERR wrong number of arguments for 'config|get' command" and the like. */
static void wrong_sub_args(struct kconn *kc, const struct resp_arg *name,
                           const struct resp_arg *sub)
{
    kc->rejected = true;
    char msg[160];
    int len = snprintf(msg, sizeof(msg), "ERR wrong number of arguments for '");
    for (size_t i = 0; i < name->len && i < 16; i++)
        msg[len++] = (char)(name->p[i] | 0x20);
    msg[len++] = '|';
    for (size_t i = 0; i < sub->len && i < 32; i++)
        msg[len++] = (char)(sub->p[i] >= 'A' && sub->p[i] <= 'Z' ? sub->p[i] | 0x20 : sub->p[i]);
    snprintf(msg + len, sizeof(msg) - (size_t)len, "' command");
    reply_error(kc, msg);
}

static void unknown_sub(struct kconn *kc, const char *cmd, const struct resp_arg *sub)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "ERR unknown subcommand '%.*s'. Try %s HELP.",
             (int)(sub->len < 128 ? sub->len : 128), sub->p, cmd);
    reply_error(kc, msg);
}

static void help(struct kconn *kc, const char *const *lines)
{
    struct resp_out *o = reply_buf(kc);
    if (o == NULL)
        return;
    unsigned n = 0;
    while (lines[n] != NULL)
        n++;
    (void)resp_put_array(o, n);
    for (unsigned i = 0; i < n; i++)
        (void)resp_put_simple(o, lines[i]);
}

/* CONFIG GET pattern [pattern ...] | SET name value [name value ...] | RESETSTAT | HELP */
static void config_cmd(struct kconn *kc, const struct resp_arg *a, unsigned argc)
{
    static const char *const lines[] = {
        "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET <pattern>",
        "    Return parameters matching the glob-like <pattern> and their values.",
        "SET <directive> <value>",
        "    Set the configuration <directive> to <value>.",
        "RESETSTAT",
        "    Reset statistics reported by the INFO command.",
        "HELP",
        "    Print this help.",
        NULL};
    if (argc < 2) {
        wrong_args(kc, &a[0]);
    } else if (is(&a[1], "GET")) {
        struct resp_out *o;
        if (argc < 3)
            wrong_sub_args(kc, &a[0], &a[1]);
        else if ((o = reply_buf(kc)) != NULL)
            (void)config_get(o, &a[2], argc - 2);
    } else if (is(&a[1], "SET")) {
        char buf[256];
        const char *why;
        if (argc < 4)
            wrong_sub_args(kc, &a[0], &a[1]);
        else if ((why = config_set(&a[2], argc - 2, buf, sizeof(buf))) != NULL)
            reply_error(kc, why);
        else
            reply_simple(kc, "OK");
    } else if (is(&a[1], "RESETSTAT") && argc == 2) {
        for (unsigned i = 0; i < nshards; i++) {
            atomic_store_explicit(&kshards[i]->commands, 0, memory_order_relaxed);
            atomic_store_explicit(&kshards[i]->connections, 0, memory_order_relaxed);
            atomic_store_explicit(&kshards[i]->expired, 0, memory_order_relaxed);
            atomic_store_explicit(&kshards[i]->hits, 0, memory_order_relaxed);
            atomic_store_explicit(&kshards[i]->misses, 0, memory_order_relaxed);
        }
        atomic_store_explicit(&clients_refused, 0, memory_order_relaxed);
        cmd_stats_reset(); /* commandstats and latencystats, as Redis's RESETSTAT */
        reply_simple(kc, "OK");
    } else if (is(&a[1], "HELP") && argc == 2) {
        help(kc, lines);
    } else if (is(&a[1], "RESETSTAT") || is(&a[1], "HELP")) {
        wrong_sub_args(kc, &a[0], &a[1]);
    } else {
        unknown_sub(kc, "CONFIG", &a[1]);
    }
}

/* CLIENT KILL addr (the old form) or CLIENT KILL [ID id] [ADDR ip:port] [LADDR ip:port]
 * [SKIPME yes|no]: every shard closes its matching connections. */
static void client_kill(struct kconn *kc, const struct resp_arg *a, unsigned argc)
{
    char spare[24];
    struct resp_arg f[4] = {{"", 0}, {"", 0}, {"", 0}, {spare, 0}};
    f[3].len = (size_t)snprintf(spare, sizeof(spare), "%llu", (unsigned long long)kc->cid);
    if (argc == 3) {
        f[1] = a[2];
        f[3].len = 0; /* the old form may kill the caller itself */
        whole(kc, C_CKILL1, KILLED, f, 4);
        return;
    }
    if (argc % 2 != 0) {
        reply_error(kc, "ERR syntax error");
        return;
    }
    for (unsigned i = 2; i < argc; i += 2) {
        long long id;
        if (is(&a[i], "ID")) {
            if (!parse_ll(&a[i + 1], &id) || id <= 0) {
                reply_error(kc, "ERR client-id should be greater than 0");
                return;
            }
            f[0] = a[i + 1];
        } else if (is(&a[i], "ADDR")) {
            f[1] = a[i + 1];
        } else if (is(&a[i], "LADDR")) {
            f[2] = a[i + 1];
        } else if (is(&a[i], "SKIPME") && (is(&a[i + 1], "yes") || is(&a[i + 1], "no"))) {
            f[3].len = is(&a[i + 1], "yes") ? strlen(spare) : 0;
        } else {
            reply_error(kc, "ERR syntax error");
            return;
        }
    }
    whole(kc, C_CKILL1, SUM, f, 4);
}

/* CLIENT ID | GETNAME | SETNAME name | INFO | LIST [TYPE t] [ID id ...] | KILL ... |
 * REPLY ON|OFF|SKIP | HELP; every other subcommand is an error. */
static void client_cmd(struct kconn *kc, const struct resp_arg *a, unsigned argc)
{
    static const char *const lines[] = {
        "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GETNAME",
        "    Return the name of the current connection.",
        "ID",
        "    Return the ID of the current connection.",
        "INFO",
        "    Return information about the current client connection.",
        "KILL <ip:port>",
        "    Kill connection made from <ip:port>.",
        "KILL <option> <value> [<option> <value> [...]]",
        "    Kill connections. Options are: ID <client-id>, ADDR <ip:port>, LADDR <ip:port>,",
        "    SKIPME (YES|NO).",
        "LIST [options ...]",
        "    Return information about client connections. Options: TYPE (NORMAL|MASTER|",
        "    REPLICA|PUBSUB), ID <id> [<id> ...].",
        "REPLY (ON|OFF|SKIP)",
        "    Control the replies sent to the current connection.",
        "SETNAME <name>",
        "    Assign the name <name> to the current connection.",
        "HELP",
        "    Print this help.",
        NULL};
    if (argc < 2) {
        wrong_args(kc, &a[0]);
        return;
    }
    const struct resp_arg *sub = &a[1];
    struct resp_out *o;
    if (is(sub, "ID") || is(sub, "GETNAME") || is(sub, "INFO") || is(sub, "HELP")) {
        if (argc != 2) {
            wrong_sub_args(kc, &a[0], sub);
        } else if (is(sub, "HELP")) {
            help(kc, lines);
        } else if ((o = reply_buf(kc)) == NULL) {
            return;
        } else if (is(sub, "ID")) {
            (void)resp_put_int(o, (long long)kc->cid);
        } else if (is(sub, "GETNAME")) {
            (void)(kc->name != NULL ? resp_put_bulk(o, kc->name, strlen(kc->name))
                                    : resp_put_null(o));
        } else {
            struct resp_out line = {0};
            if (client_line(kc, pith_now_ns(), &line) == 0)
                (void)resp_put_bulk(o, line.p, line.len);
            resp_out_free(&line);
        }
    } else if (is(sub, "SETNAME")) {
        if (argc != 3) {
            wrong_sub_args(kc, &a[0], sub);
            return;
        }
        for (size_t i = 0; i < a[2].len; i++)
            if (a[2].p[i] < '!' || a[2].p[i] > '~') {
                reply_error(kc, "ERR Client names cannot contain spaces, newlines or special "
                                "characters.");
                return;
            }
        char *name = NULL;
        if (a[2].len > 0 && (name = pith_malloc(a[2].len + 1)) == NULL) {
            reply_error(kc, "ERR out of memory");
            return;
        }
        if (name != NULL) {
            memcpy(name, a[2].p, a[2].len);
            name[a[2].len] = 0;
        }
        pith_free(kc->name);
        kc->name = name;
        reply_simple(kc, "OK");
    } else if (is(sub, "LIST")) {
        if (argc == 2) {
            whole(kc, C_CLIST1, CONCAT, NULL, 0);
        } else if (argc == 4 && is(&a[2], "TYPE")) {
            if (is(&a[3], "NORMAL")) {
                whole(kc, C_CLIST1, CONCAT, NULL, 0);
            } else if (is(&a[3], "MASTER") || is(&a[3], "REPLICA") || is(&a[3], "SLAVE") ||
                       is(&a[3], "PUBSUB")) {
                if ((o = reply_buf(kc)) != NULL)
                    (void)resp_put_bulk(o, "", 0);
            } else {
                char msg[160];
                snprintf(msg, sizeof(msg), "ERR Unknown client type '%.*s'",
                         (int)(a[3].len < 64 ? a[3].len : 64), a[3].p);
                reply_error(kc, msg);
            }
        } else if (argc >= 4 && is(&a[2], "ID")) {
            for (unsigned i = 3; i < argc; i++) {
                long long id;
                if (!parse_ll(&a[i], &id) || id <= 0) {
                    reply_error(kc, "ERR Invalid client ID");
                    return;
                }
            }
            whole(kc, C_CLIST1, CONCAT, &a[3], argc - 3);
        } else {
            reply_error(kc, "ERR syntax error");
        }
    } else if (is(sub, "KILL")) {
        if (argc < 3)
            wrong_sub_args(kc, &a[0], sub);
        else
            client_kill(kc, a, argc);
    } else if (is(sub, "REPLY")) {
        if (argc != 3) {
            wrong_sub_args(kc, &a[0], sub);
        } else if (is(&a[2], "ON")) {
            kc->reply_mode = REPLY_ON;
            kc->skip_now = false;
            reply_simple(kc, "OK");
        } else if (is(&a[2], "OFF")) {
            kc->reply_mode = REPLY_OFF;
        } else if (is(&a[2], "SKIP")) {
            kc->skip_next = kc->reply_mode != REPLY_OFF; /* as Redis: no effect under OFF */
        } else {
            reply_error(kc, "ERR syntax error");
        }
    } else {
        unknown_sub(kc, "CLIENT", sub);
    }
}

/* ---- SLOWLOG and LATENCY: each shard keeps its own (slowlog.h, latency.h); GET, LATEST,
 * HISTORY, DOCTOR and RESET ask every shard for its part (whole) and merge the parts into
 * Redis's reply (merge_parts); SLOWLOG LEN and LATENCY HISTOGRAM read counters. ---- */

/* Every shard's part of cmd, merged into the reply `merge` makes (with arg) once all came. */
static void merged(struct kconn *kc, unsigned cmd, uint8_t merge, long long arg,
                   const struct resp_arg *a, unsigned argc)
{
    struct slot *s = whole(kc, cmd, MERGED, a, argc);
    if (s != NULL) {
        s->merge = merge;
        s->arg = arg;
    }
}

/* Redis's words when a subcommand's arguments do not fit (its addReplySubcommandSyntaxError). */
static void sub_syntax(struct kconn *kc, const char *cmd, const struct resp_arg *sub)
{
    char msg[256];
    snprintf(msg, sizeof(msg),
             "ERR unknown subcommand or wrong number of arguments for '%.*s'. Try %s HELP.",
             (int)(sub->len < 128 ? sub->len : 128), sub->p, cmd);
    reply_error(kc, msg);
}

/* SLOWLOG GET [count] | LEN | RESET | HELP */
static void slowlog_cmd(struct kconn *kc, const struct resp_arg *a, unsigned argc)
{
    static const char *const lines[] = {
        "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET [<count>]",
        "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
        "    Entries are made of:",
        "    id, timestamp, time in microseconds, arguments array, client IP and port,",
        "    client name",
        "LEN",
        "    Return the length of the slowlog.",
        "RESET",
        "    Reset the slowlog.",
        "HELP",
        "    Prints this help.",
        NULL};
    if (argc < 2) {
        wrong_args(kc, &a[0]);
        return;
    }
    const struct resp_arg *sub = &a[1];
    struct resp_out *o;
    if (is(sub, "GET")) {
        long long count = 10;
        if (argc > 3) {
            sub_syntax(kc, "SLOWLOG", sub);
        } else if (argc == 3 && (!parse_ll(&a[2], &count) || count < -1)) {
            reply_error(kc, "ERR count should be greater than or equal to -1");
        } else {
            char buf[24];
            struct resp_arg n = {buf, (size_t)snprintf(buf, sizeof(buf), "%lld", count)};
            merged(kc, C_SLOWGET1, M_SLOWGET, count, &n, 1);
        }
    } else if (is(sub, "LEN") || is(sub, "RESET") || is(sub, "HELP")) {
        if (argc != 2)
            wrong_sub_args(kc, &a[0], sub);
        else if (is(sub, "RESET"))
            (void)whole(kc, C_SLOWRESET1, OK, NULL, 0);
        else if (is(sub, "HELP"))
            help(kc, lines);
        else if ((o = reply_buf(kc)) != NULL)
            (void)resp_put_int(o, (long long)slowlog_len(nshards));
    } else {
        unknown_sub(kc, "SLOWLOG", sub);
    }
}

/* LATENCY LATEST | HISTORY event | RESET [event ...] | DOCTOR | HISTOGRAM [command ...] | HELP */
static void latency_cmd(struct kconn *kc, const struct resp_arg *a, unsigned argc)
{
    static const char *const lines[] = {
        "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "DOCTOR",
        "    Return a human readable latency analysis report.",
        "HISTORY <event>",
        "    Return time-latency samples for the <event> class.",
        "LATEST",
        "    Return the latest latency samples for all events.",
        "RESET [<event> ...]",
        "    Reset latency data of one or more <event> classes.",
        "    (default: reset all data for all event classes)",
        "HISTOGRAM [COMMAND ...]",
        "    Return a cumulative distribution of latencies in the format of a histogram for the "
        "specified command names.",
        "    If no commands are specified then all histograms are replied.",
        "HELP",
        "    Prints this help.",
        NULL};
    if (argc < 2) {
        wrong_args(kc, &a[0]);
        return;
    }
    const struct resp_arg *sub = &a[1];
    struct resp_out *o;
    if (is(sub, "RESET")) {
        merged(kc, C_LATRESET1, M_LATRESET, 0, &a[2], argc - 2);
    } else if (is(sub, "HISTOGRAM")) {
        if ((o = reply_buf(kc)) != NULL)
            (void)cmd_histogram_reply(o, nshards, &a[2], argc - 2);
    } else if (is(sub, "HISTORY")) {
        int ev = argc == 3 ? latency_event(&a[2]) : -1;
        if (argc != 3)
            wrong_sub_args(kc, &a[0], sub);
        else if (ev < 0 && (o = reply_buf(kc)) != NULL)
            (void)resp_put_array(o, 0); /* an event never seen, as Redis answers it */
        else if (ev >= 0)
            merged(kc, C_LATDUMP1, M_HISTORY, ev, NULL, 0);
    } else if (is(sub, "LATEST") || is(sub, "DOCTOR") || is(sub, "HELP")) {
        if (argc != 2)
            wrong_sub_args(kc, &a[0], sub);
        else if (is(sub, "HELP"))
            help(kc, lines);
        else
            merged(kc, C_LATDUMP1, is(sub, "LATEST") ? M_LATEST : M_DOCTOR, 0, NULL, 0);
    } else {
        unknown_sub(kc, "LATENCY", sub);
    }
}

static void run_command(struct kconn *kc, struct resp_arg *a, unsigned argc);

/* The name CLIENT LIST shows as cmd=: lower case, with the subcommand after '|'. */
static void remember_name(struct kconn *kc, const struct resp_arg *a, unsigned argc)
{
    size_t n = 0;
    for (size_t i = 0; i < a[0].len && n < sizeof(kc->cmd) - 1; i++)
        kc->cmd[n++] = (char)(a[0].p[i] >= 'A' && a[0].p[i] <= 'Z' ? a[0].p[i] | 0x20 : a[0].p[i]);
    if (argc >= 2 && (is(&a[0], "CLIENT") || is(&a[0], "CONFIG")) && n < sizeof(kc->cmd) - 1) {
        kc->cmd[n++] = '|';
        for (size_t i = 0; i < a[1].len && n < sizeof(kc->cmd) - 1; i++)
            kc->cmd[n++] =
                (char)(a[1].p[i] >= 'A' && a[1].p[i] <= 'Z' ? a[1].p[i] | 0x20 : a[1].p[i]);
    }
    kc->cmd[n] = 0;
}

/* kc's "ip:port", asked of the engine once (a system call) and kept. */
static const char *client_addr(struct kconn *kc)
{
    pith_conn_info_t ci;
    if (kc->addr[0] == 0 && pith_conn_info(kc->id, &ci) == 0)
        snprintf(kc->addr, sizeof(kc->addr), "%s:%d", ci.peer, ci.peer_port);
    return kc->addr;
}

/* A command of kc (cmd: its place in cmdstats's table) ran for ns, answering with an error or
 * not: its figures, the latency monitor's command events, and the slowlog, which logs e (made
 * in advance) or, without it, an entry of a[0..argc). Takes e. */
static void timed_done(struct kconn *kc, int cmd, uint64_t ns, bool failed, struct slow_entry *e,
                       const struct resp_arg *a, unsigned argc)
{
    cmd_record(cmd, ns, failed);
    latency_add(cmd_fast(cmd) ? LAT_FAST_COMMAND : LAT_COMMAND, ns / 1000000);
    int64_t slower = signed_setting(&kv_cfg.slowlog_slower_than);
    if (slower >= 0 && ns / 1000 >= (uint64_t)slower && setting(&kv_cfg.slowlog_max_len) > 0) {
        size_t bytes;
        if (e == NULL && a != NULL)
            e = slowlog_entry_new(a, argc, kc->name, &bytes);
        if (e != NULL)
            slowlog_push(e, ns / 1000, client_addr(kc));
        return;
    }
    slowlog_entry_free(e);
}

/* Command a[0..argc) of kc (cmd in cmdstats's table) ran here for ns: counted now when its
 * reply is made (no slot of it waits), else once its slot is done (slot_timed), with what its
 * requests add on their shards. Such a command's slowlog entry is made now, while its arguments
 * are at hand (they are the input's, which goes when on_data returns): one allocation per
 * command that waits for another shard or for the journal, of at most SLOWLOG_ENTRY_MAX bytes,
 * charged to the client until the command is done. */
static void count_command(struct kconn *kc, int cmd, const struct resp_arg *a, unsigned argc,
                          struct slot *tail, size_t mark, uint64_t ns)
{
    if (kc->rejected) {
        cmd_reject(cmd);
        return;
    }
    struct slot *last = NULL;
    bool waits = false;
    for (struct slot *s = tail != NULL ? tail->next : kc->head; s != NULL; s = s->next) {
        last = s;
        waits |= s->pending > 0;
    }
    if (!waits) {
        bool failed =
            last != NULL ? slot_error(last) : kc->out.len > mark && kc->out.p[mark] == '-';
        timed_done(kc, cmd, ns, failed, NULL, a, argc);
        return;
    }
    last->timed = (uint16_t)(cmd + 1);
    last->exec_ns = ns; /* what its requests did here already is in ns */
    if (signed_setting(&kv_cfg.slowlog_slower_than) >= 0 && setting(&kv_cfg.slowlog_max_len) > 0 &&
        (last->slow = slowlog_entry_new(a, argc, kc->name, &last->slow_bytes)) != NULL)
        kc->req_bytes += last->slow_bytes;
}

/* Runs one command, whose parsing began at t0, and returns when it ended; under CLIENT REPLY
 * OFF or SKIP its reply is made and then dropped: the bytes it added to the ready buffer are
 * cut off, and the slots it opened are marked mute. (A command writes to the buffer or opens
 * slots, and a new slot first sends what the buffer held, so the mark stays right.) */
static uint64_t command(struct kconn *kc, struct resp_arg *a, unsigned argc, uint64_t t0)
{
    remember_name(kc, a, argc);
    kc->skip_now = kc->skip_next;
    kc->skip_next = false;
    kc->rejected = false;
    int cmd = cmd_find(a, argc);
    size_t mark = kc->out.len;
    struct slot *tail = kc->tail;
    run_command(kc, a, argc);
    uint64_t t1 = pith_now_ns();
    if (cmd >= 0)
        count_command(kc, cmd, a, argc, tail, mark, t1 - t0);
    if (kc->reply_mode == REPLY_ON && !kc->skip_now)
        return t1;
    struct slot *s = tail != NULL ? tail->next : kc->head;
    if (s == NULL && kc->out.len >= mark)
        kc->out.len = mark;
    for (; s != NULL; s = s->next)
        s->mute = true;
    return t1;
}

/* The data's memory over all shards (entries, tables, expiry arrays): what maxmemory bounds. */
static uint64_t data_memory(void)
{
    uint64_t used = 0;
    for (unsigned i = 0; i < nshards; i++)
        used += atomic_load_explicit(&kshards[i]->st.bytes, memory_order_relaxed) +
                atomic_load_explicit(&kshards[i]->st.overhead, memory_order_relaxed);
    return used;
}

/* The commands that may grow the data (Redis's "denyoom"), refused past maxmemory with Redis's
 * error (its noeviction policy); reads, deletes and expiry changes still run. */
static bool denied_for_memory(const struct resp_arg *name)
{
    uint64_t max = setting(&kv_cfg.maxmemory);
    if (max == 0 || data_memory() <= max)
        return false;
    static const char *const grow[] = {"SET", "MSET", "INCR", "DECR", "INCRBY", "DECRBY"};
    for (size_t i = 0; i < sizeof(grow) / sizeof(grow[0]); i++)
        if (is(name, grow[i]))
            return true;
    return false;
}

/* The commands that change the data (Redis's "write" flag). */
static bool writes(const struct resp_arg *name)
{
    static const char *const w[] = {"SET",      "MSET",      "INCR",    "DECR",     "INCRBY",
                                    "DECRBY",   "DEL",       "UNLINK",  "EXPIRE",   "PEXPIRE",
                                    "EXPIREAT", "PEXPIREAT", "PERSIST", "FLUSHALL", "FLUSHDB"};
    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++)
        if (is(name, w[i]))
            return true;
    return false;
}

static void rewrite_task(void *arg)
{
    (void)arg;
    (void)aof_rewrite_start(); /* -EALREADY: the one running will do */
}

/* BGREWRITEAOF: a rewrite on every shard. */
static void bgrewriteaof(struct kconn *kc)
{
    if (aof_mode == AOF_OFF) {
        reply_error(kc, "ERR no journal: start pith-kv with --dir");
        return;
    }
    for (unsigned i = 0; i < nshards; i++)
        if (pith_submit(i, rewrite_task, NULL) != 0) {
            reply_error(kc, "ERR Background append only file rewriting could not start");
            return;
        }
    reply_simple(kc, "Background append only file rewriting started");
}

static void run_command(struct kconn *kc, struct resp_arg *a, unsigned argc)
{
    count(&kc->ks->commands, 1);
    const struct resp_arg *name = &a[0];
    if (is(name, "BGREWRITEAOF") && argc == 1) {
        bgrewriteaof(kc);
        return;
    }
    if (denied_for_memory(name)) {
        kc->rejected = true;
        reply_error(kc, OOM_ERR);
        return;
    }
    if (aof_broken() && writes(name)) {
        kc->rejected = true;
        reply_error(kc, AOF_ERR); /* Redis's MISCONF once its AOF cannot be written */
        return;
    }
    long long n;
    int64_t exp;
    const char *why;
    switch (name->len) {
    case 3:
        if (is(name, "GET")) {
            if (argc != 2)
                break;
            keyed(kc, C_GET, &a[1], 1, 0, 0);
            return;
        }
        if (is(name, "SET")) {
            if (argc < 3)
                break;
            if ((why = set_options(a, argc, &n, &exp)) != NULL) {
                reply_error(kc, why);
                return;
            }
            keyed(kc, C_SET, &a[1], 2, n, exp);
            return;
        }
        if (is(name, "DEL")) {
            if (argc < 2)
                break;
            multi(kc, C_DEL1, &a[1], argc - 1, 1, SUM);
            return;
        }
        if (is(name, "TTL")) {
            if (argc != 2)
                break;
            keyed(kc, C_TTL, &a[1], 1, 0, 0);
            return;
        }
        goto unknown;
    case 4:
        if (is(name, "PING")) {
            if (argc > 2)
                break;
            if (argc == 1) {
                reply_simple(kc, "PONG");
            } else {
                struct resp_out *o = reply_buf(kc);
                if (o != NULL)
                    (void)resp_put_bulk(o, a[1].p, a[1].len);
            }
            return;
        }
        if (is(name, "ECHO")) {
            if (argc != 2)
                break;
            struct resp_out *o = reply_buf(kc);
            if (o != NULL)
                (void)resp_put_bulk(o, a[1].p, a[1].len);
            return;
        }
        if (is(name, "INCR") || is(name, "DECR")) {
            if (argc != 2)
                break;
            keyed(kc, C_INCRBY, &a[1], 1, is(name, "INCR") ? 1 : -1, 0);
            return;
        }
        if (is(name, "MGET")) {
            if (argc < 2)
                break;
            multi(kc, C_MGET1, &a[1], argc - 1, 1, ARRAY);
            return;
        }
        if (is(name, "MSET")) {
            if (argc < 3 || (argc - 1) % 2 != 0)
                break;
            multi(kc, C_MSET1, &a[1], argc - 1, 2, OK);
            return;
        }
        if (is(name, "PTTL")) {
            if (argc != 2)
                break;
            keyed(kc, C_PTTL, &a[1], 1, 0, 0);
            return;
        }
        if (is(name, "INFO")) {
            info(kc, &a[1], argc - 1);
            return;
        }
        if (is(name, "QUIT")) {
            reply_simple(kc, "OK");
            kc->quitting = true;
            return;
        }
        goto unknown;
    case 6:
        if (is(name, "INCRBY") || is(name, "DECRBY")) {
            if (argc != 3)
                break;
            if (!parse_ll(&a[2], &n)) {
                reply_error(kc, NOT_INT);
                return;
            }
            if (is(name, "DECRBY") && n == LLONG_MIN) {
                reply_error(kc, "ERR decrement would overflow");
                return;
            }
            keyed(kc, C_INCRBY, &a[1], 1, is(name, "DECRBY") ? -n : n, 0);
            return;
        }
        if (is(name, "EXISTS")) {
            if (argc < 2)
                break;
            multi(kc, C_EXISTS1, &a[1], argc - 1, 1, SUM);
            return;
        }
        if (is(name, "EXPIRE")) {
            if (argc < 3)
                break;
            expire_cmd(kc, a, argc, false, false);
            return;
        }
        if (is(name, "DBSIZE")) {
            if (argc != 1)
                break;
            whole(kc, C_DBSIZE1, SUM, NULL, 0);
            return;
        }
        if (is(name, "SELECT")) {
            if (argc != 2)
                break;
            if (a[1].len == 1 && a[1].p[0] == '0')
                reply_simple(kc, "OK");
            else
                reply_error(kc, "ERR DB index is out of range");
            return;
        }
        if (is(name, "CONFIG")) {
            config_cmd(kc, a, argc);
            return;
        }
        if (is(name, "CLIENT")) {
            client_cmd(kc, a, argc);
            return;
        }
        goto unknown;
    case 7:
        if (is(name, "PEXPIRE")) {
            if (argc < 3)
                break;
            expire_cmd(kc, a, argc, true, false);
            return;
        }
        if (is(name, "PERSIST")) {
            if (argc != 2)
                break;
            keyed(kc, C_PERSIST, &a[1], 1, 0, 0);
            return;
        }
        if (is(name, "COMMAND")) {
            struct resp_out *o = reply_buf(kc);
            if (o != NULL)
                (void)resp_put_array(o, 0);
            return;
        }
        if (is(name, "FLUSHDB")) {
            flush_cmd(kc, a, argc);
            return;
        }
        if (is(name, "SLOWLOG")) {
            slowlog_cmd(kc, a, argc);
            return;
        }
        if (is(name, "LATENCY")) {
            latency_cmd(kc, a, argc);
            return;
        }
        goto unknown;
    case 8:
        if (is(name, "FLUSHALL")) {
            flush_cmd(kc, a, argc);
            return;
        }
        if (is(name, "EXPIREAT")) {
            if (argc < 3)
                break;
            expire_cmd(kc, a, argc, false, true);
            return;
        }
        goto unknown;
    case 9:
        if (is(name, "PEXPIREAT")) {
            if (argc < 3)
                break;
            expire_cmd(kc, a, argc, true, true);
            return;
        }
        goto unknown;
    case 10:
    case 11:
        if (is(name, "EXPIRETIME") || is(name, "PEXPIRETIME")) {
            if (argc != 2)
                break;
            keyed(kc, is(name, "EXPIRETIME") ? C_EXPIRETIME : C_PEXPIRETIME, &a[1], 1, 0, 0);
            return;
        }
        goto unknown;
    default:
        goto unknown;
    }
    wrong_args(kc, name);
    return;
unknown:
    unknown(kc, a, argc);
}

/* ---- connections ---- */

static void *on_open(pith_conn_t c, void *ctx)
{
    (void)ctx;
    /* maxclients over all shards, with Redis's error line for the one past it. */
    if (atomic_fetch_add_explicit(&clients_now, 1, memory_order_relaxed) >=
        setting(&kv_cfg.maxclients)) {
        atomic_fetch_sub_explicit(&clients_now, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&clients_refused, 1, memory_order_relaxed);
        static const char full[] = "-ERR max number of clients reached\r\n";
        if (pith_conn_send(c, full, sizeof(full) - 1) != 0 || pith_conn_close(c) != 0)
            (void)pith_conn_abort(c);
        return NULL;
    }
    struct kconn *kc = pith_calloc(1, sizeof(*kc));
    if (kc != NULL && (kc->pk = pith_calloc(nshards, sizeof(*kc->pk))) == NULL) {
        pith_free(kc);
        kc = NULL;
    }
    if (kc == NULL) {
        atomic_fetch_sub_explicit(&clients_now, 1, memory_order_relaxed);
        (void)pith_conn_abort(c);
        return NULL;
    }
    kc->id = c;
    kc->reply_est = REPLY_EST0;
    kc->cid = atomic_fetch_add_explicit(&last_cid, 1, memory_order_relaxed) + 1;
    kc->opened_ns = kc->active_ns = pith_now_ns();
    kc->ks = me();
    kc->next = kc->ks->conns;
    if (kc->next != NULL)
        kc->next->prev = kc;
    kc->ks->conns = kc;
    count(&kc->ks->nconns, 1);
    count(&kc->ks->connections, 1);
    return kc;
}

static size_t slot_bytes(const struct slot *s)
{
    size_t n = 0;
    for (uint32_t i = 0; i < s->nparts; i++)
        n += s->parts[i].len;
    return n;
}

/* After the shard's other queued work: the connection is offered what it left unread (pausing
 * and resuming it makes the engine offer kept input again, from a task of its own; if the
 * output is over its high watermark, that waits for the drain). */
static void yield_task(void *arg)
{
    struct kconn *kc = arg;
    kc->yielding = false;
    if (!kc->closed && !kc->paused && !kc->quitting) {
        (void)pith_conn_pause(kc->id);
        (void)pith_conn_resume(kc->id);
    }
    kc_release(kc);
}

/* Queues yield_task; false when it cannot (the shard's queue is full): then the slice goes on. */
static bool yield(struct kconn *kc)
{
    if (kc->yielding)
        return true;
    if (pith_submit((unsigned)pith_shard_id(), yield_task, kc) != 0)
        return false;
    kc->yielding = true;
    kc->holds++;
    return true;
}

/* A command with more arguments than the scratch holds (but within ARGS_MAX): the scratch
 * grows to fit it once its arguments have come (each takes 6 bytes at least, "$0\r\n\r\n"),
 * so a header alone never makes the shard allocate, and the scratch (16 bytes an argument)
 * stays within a small multiple of the input the client sent, which client-query-buffer-limit
 * bounds (Redis takes as many as its query buffer holds). 1: it grew; 0: not a command it grows
 * for (or no memory: the command is refused as too large); -1: wait for more input. */
static int args_grow(struct kshard *ks, const char *buf, size_t len)
{
    const char *eol = len > 1 && buf[0] == '*' ? memchr(buf, '\r', len) : NULL;
    long long count;
    if (eol == NULL || !resp_parse_ll(buf + 1, (size_t)(eol - buf - 1), &count) ||
        count <= (long long)ks->args_cap || count > (long long)ARGS_MAX)
        return 0;
    if ((unsigned long long)len < (unsigned long long)count * 6)
        return -1;
    struct resp_arg *a = pith_malloc((size_t)count * sizeof(*a));
    if (a == NULL)
        return 0;
    pith_free(ks->args);
    ks->args = a;
    ks->args_cap = (unsigned)count;
    return 1;
}

/* After a large command, the scratch goes back to its usual size. */
static void args_shrink(struct kshard *ks)
{
    struct resp_arg *a;
    if (ks->args_cap > ARGS_CAP && (a = pith_malloc(ARGS_CAP * sizeof(*a))) != NULL) {
        pith_free(ks->args);
        ks->args = a;
        ks->args_cap = ARGS_CAP;
    }
}

static size_t on_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    (void)c;
    struct kconn *kc = cctx;
    if (kc == NULL || kc->quitting)
        return len; /* after QUIT or a protocol error, input is dropped */
    struct kshard *ks = kc->ks;
    uint64_t t0 = pith_now_ns();
    uint64_t at = t0; /* when the last command ended: the next one's parsing begins */
    kc->active_ns = t0;
    const char *buf = data;
    size_t off = 0, made = 0;
    unsigned cmds = 0;
    bool yielded = false;
    while (off < len) {
        /* Requests wait for room in the mesh: the rest of the input waits for them (room_cb
         * offers it again), so commands keep their order and nothing is refused. */
        if (kc->out_wait) {
            /* The engine's queue is full: nothing more is made until it drains (on_drain
             * offers the input again). The engine offers kept input as soon as the queue is
             * under its low watermark, before on_drain runs: without this, each such offer
             * added a reply here and kc->out grew by a reply per drain (512 MiB seen). */
            yielded = true;
            break;
        }
        if (kc->wait != NULL || kc->locking > 0) {
            /* Or a command over several shards still takes its locks: the commands after it
             * wait, so that none runs on a shard before it (txn_back offers the input). */
            yielded = true;
            break;
        }
        if (kc->nslots >= MAX_SLOTS || kc->reqs >= MAX_REMOTE || held_bytes(kc) >= MAX_HELD) {
            kc->paused = true;
            (void)pith_conn_pause(kc->id);
            break;
        }
        if (kc->out.len - kc->out_off >= OUT_CHUNK && kc->head == NULL) {
            size_t before = kc->out.len - kc->out_off;
            (void)push_out(kc);
            made += before - (kc->out.len - kc->out_off);
            at = pith_now_ns(); /* sending is not the next command's time */
        }
        /* The slice is over: the rest of the input waits, and this connection queues behind
         * the shard's other work (yield), so one pipeline cannot hold the shard, nor build
         * its whole reply before any of it leaves. */
        if (cmds >= SLICE_CMDS || made + kc->out.len - kc->out_off >= SLICE_BYTES ||
            (cmds % 32 == 31 && at - t0 >= SLICE_NS)) {
            yielded = yield(kc);
            if (yielded)
                break;
        }
        cmds++;
        struct slot *tail = kc->tail;
        unsigned argc;
        const char *err;
        ssize_t r = resp_parse(buf + off, len - off, &limits, ks->args, ks->args_cap, &argc, &err);
        int grown = r == -E2BIG ? args_grow(ks, buf + off, len - off) : 0;
        if (grown > 0)
            r = resp_parse(buf + off, len - off, &limits, ks->args, ks->args_cap, &argc, &err);
        else if (grown < 0)
            r = 0; /* its arguments are still coming */
        if (r == 0)
            break;
        if (r < 0) {
            reply_error(kc, err);
            kc->quitting = true;
            off = len;
            break;
        }
        off += (size_t)r;
        if (argc > 0)
            at = command(kc, ks->args, argc, at);
        args_shrink(ks);
        /* Replies made into slots (behind a reply still coming from another shard) count
         * toward the slice's bytes too, and from now on toward the client's memory. */
        for (struct slot *n = tail != NULL ? tail->next : kc->head; n != NULL && n != tail;
             n = n->next) {
            if (n->counted)
                continue;
            n->counted = true;
            n->held = slot_bytes(n);
            kc->slot_bytes += n->held;
            made += n->held;
        }
        if (kc->quitting) {
            off = len;
            break;
        }
    }
    if (off < len && !kc->paused && !yielded) {
        if (kc->partial_since == 0 || off > 0)
            kc->partial_since = pith_now_ns();
    } else {
        kc->partial_since = 0;
    }
    kc->qbuf = len - off; /* what the engine keeps for the next offer */
    flush(kc);
    return off;
}

/* The engine's queue for the connection fell under LOW_WATER: the replies that waited go on. */
static void on_drain(pith_conn_t c, void *cctx)
{
    (void)c;
    struct kconn *kc = cctx;
    if (kc == NULL)
        return;
    kc->out_wait = false;
    kc->unsent = LOW_WATER; /* at most that; the next look tells */
    flush(kc);
    /* Input that on_data left while the queue was full is offered again. */
    if (!kc->closed && !kc->over && !kc->out_wait && !kc->paused && !kc->quitting) {
        (void)pith_conn_pause(kc->id);
        (void)pith_conn_resume(kc->id);
    }
}

static void on_close(pith_conn_t c, void *cctx, int reason)
{
    (void)c;
    (void)reason;
    struct kconn *kc = cctx;
    if (kc == NULL)
        return;
    struct kshard *ks = kc->ks;
    if (kc->prev != NULL)
        kc->prev->next = kc->next;
    else
        ks->conns = kc->next;
    if (kc->next != NULL)
        kc->next->prev = kc->prev;
    count(&ks->nconns, -1);
    atomic_fetch_sub_explicit(&clients_now, 1, memory_order_relaxed);
    ks->client_mem -= kc->charged;
    kc->charged = 0;
    atomic_store_explicit(&ks->client_mem_pub, ks->client_mem, memory_order_relaxed);
    kc->closed = true;
    if (kc_unused(kc)) {
        kconn_free(kc);
        return;
    }
    /* Kept until its requests and callbacks come back; on the zombies list meanwhile, so that
     * what the engine's stop leaves behind is freed at exit. */
    kc->zombie = true;
    kc->prev = NULL;
    kc->next = ks->zombies;
    if (kc->next != NULL)
        kc->next->prev = kc;
    ks->zombies = kc;
}

static const pith_tcp_handler_t handler = {
    .on_open = on_open,
    .on_data = on_data,
    .on_drain = on_drain,
    .on_close = on_close,
};

/* The store's housekeeping, in slices: Redis's active expiry cycle (at most EXPIRE_SLICE) and
 * the rehash in progress (REHASH_SLICE). While either has more to do, it comes back after
 * BUSY_TICK_NS rather than at the next tick, so a million keys that expire together go within
 * about a second and no slice holds the shard's other connections for more than a millisecond. */
static void housekeeping(void *arg)
{
    struct kshard *ks = arg;
    ks->more_armed = false;
    bool more;
    uint64_t t0 = pith_now_ns();
    size_t gone = store_expire_cycle(&ks->st, now_ms(), t0 + EXPIRE_SLICE, &more);
    latency_add(LAT_EXPIRE_CYCLE, (pith_now_ns() - t0) / 1000000);
    count(&ks->expired, (int64_t)gone);
    more |= store_rehash_for(&ks->st, pith_now_ns() + REHASH_SLICE);
    atomic_store_explicit(&ks->buckets, store_buckets(&ks->st), memory_order_relaxed);
    if (more && pith_timer_add(BUSY_TICK_NS, 0, housekeeping, ks, NULL) == 0)
        ks->more_armed = true;
}

/* Closes connections idle (nothing received, nothing of their output taken) for longer than
 * the timeout setting, as Redis's `timeout` does. */
static void idle_sweep(struct kshard *ks, uint64_t now)
{
    uint64_t timeout = setting(&kv_cfg.timeout_s);
    if (timeout == 0)
        return;
    for (struct kconn *kc = ks->conns, *next; kc != NULL; kc = next) {
        next = kc->next;
        if (now - kc->active_ns <= timeout * 1000000000ull || kc->closed)
            continue;
        /* Idle on input: output the kernel took since the last look counts as activity. Only
         * candidates are asked (pith_conn_info makes a system call), so a client that stopped
         * reading goes within twice the timeout. */
        pith_conn_info_t ci;
        if (pith_conn_info(kc->id, &ci) == 0 && ci.bytes_out != kc->bytes_out) {
            kc->bytes_out = ci.bytes_out;
            kc->active_ns = now;
            continue;
        }
        (void)pith_conn_close(kc->id);
    }
}

/* Every 100 ms on each shard: housekeeping (unless a busy round is already coming), and close
 * connections whose unfinished command has waited longer than the request timeout (a client
 * that trickles a request never ties memory down for long). */
static void tick(void *arg)
{
    struct kshard *ks = arg;
    uint64_t now = pith_now_ns();
    if (!ks->more_armed)
        housekeeping(ks);
    engine_sample();
    (void)aof_rewrite_tick(&ks->st, now_ms(), REWRITE_SLICE,
                           atomic_load_explicit(&ks->st.bytes, memory_order_relaxed));
    idle_sweep(ks, now);
    /* Replies and transaction steps that found no memory even to wait for room: again. */
    struct req *back = ks->backlog;
    ks->backlog = NULL;
    while (back != NULL) {
        struct req *q = back;
        back = q->next;
        send_back(q);
    }
    for (int list = 0; list < 2; list++)
        for (struct kconn *kc = list ? ks->zombies : ks->conns; kc != NULL; kc = kc->next)
            if (kc->wait != NULL && !kc->room_armed &&
                pith_when_shard_room(kc->wait->shard, room_cb, kc) == 0) {
                kc->room_armed = true;
                kc->holds++;
            }
    for (struct kconn *kc = ks->conns, *next; kc != NULL; kc = next) {
        next = kc->next; /* the reset may end kc (on_close) before it returns */
        if (kc->drop_later) {
            kc->drop_later = false;
            (void)pith_conn_abort(kc->id);
        }
    }
    /* A client over its soft output limit is closed once it has been over for its seconds,
     * whether or not anything else happens on it. */
    for (struct kconn *kc = ks->conns; kc != NULL; kc = kc->next)
        if (kc->soft_since != 0)
            account(kc);
    for (struct kconn *kc = ks->conns, *next; kc != NULL; kc = next) {
        next = kc->next; /* flush's close may end kc before it returns */
        if (kc->partial_since != 0 && now - kc->partial_since > opt.request_timeout_ns &&
            !kc->quitting) {
            kc->quitting = true;
            reply_error(kc, "ERR request timed out");
            flush(kc);
        }
    }
}

static void *shard_up(void *arg)
{
    (void)arg;
    struct kshard *ks = pith_calloc(1, sizeof(*ks));
    if (ks == NULL || store_init(&ks->st) != 0)
        return (void *)(intptr_t)-ENOMEM;
    ks->args = pith_malloc(ARGS_CAP * sizeof(*ks->args));
    ks->args_cap = ARGS_CAP;
    if (ks->args == NULL)
        return (void *)(intptr_t)-ENOMEM;
    ks->id = (unsigned)pith_shard_id();
    kshards[ks->id] = ks;
    if (cmd_stats_init() != 0)
        return (void *)(intptr_t)-ENOMEM;
    if (aof_mode != AOF_OFF) {
        /* The shard's journal, read back into its store before any client comes. */
        uint64_t n = 0, t0 = pith_now_ns();
        int err = aof_load(&ks->st, now_ms(), &n);
        if (err != 0) {
            fprintf(stderr, "pith-kv: shard %u: reading its journal back: %s\n", ks->id,
                    pith_strerror(err));
            return (void *)(intptr_t)err;
        }
        fprintf(stderr, "pith-kv: shard %u: %llu journal records read back in %.3f s, %llu keys\n",
                ks->id, (unsigned long long)n, (double)(pith_now_ns() - t0) / 1e9,
                (unsigned long long)atomic_load(&ks->st.keys));
    }
    if (pith_timer_add(TICK_NS, TICK_NS, tick, ks, NULL) != 0)
        return (void *)(intptr_t)-ENOMEM;
    return NULL;
}

#define CONN_MARGIN    64u   /* connections past maxclients a shard takes, to refuse in words */
#define NET_BUFS       256u  /* the engine's default receive buffers per shard */
#define CQE_PER_CONN   3u    /* completions the engine keeps room for per connection */
#define MAX_IO_ENTRIES 4096u /* a CQ of 65,536, io_uring's most */

/* The io_uring size that holds `conns` connections on one shard (see pith_listen_config_t's
 * max_conns: cfg.io_entries * 16 >= net_bufs + 3 * max_conns + 64). */
static unsigned ring_entries_for(uint64_t conns)
{
    uint64_t need = (NET_BUFS + CQE_PER_CONN * conns + 64 + 15) / 16;
    unsigned e = 256;
    while (e < need && e < MAX_IO_ENTRIES)
        e *= 2;
    return e;
}

/* The most clients this process can hold, at most `want`: as Redis does, raise the soft limit
 * on open files toward what `want` needs (the hard limit caps it), and keep 32 descriptors for
 * the engine's own (rings, eventfds, listeners); the largest ring caps it too. */
static uint64_t clients_limit(uint64_t want)
{
    struct rlimit rl;
    const uint64_t reserved = 32 + CONN_MARGIN;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return want;
    uint64_t need = want + reserved;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rlim_t cur =
            rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? (rlim_t)need : rl.rlim_max;
        struct rlimit nl = {cur, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
            rl.rlim_cur = cur;
    }
    uint64_t fit = rl.rlim_cur == RLIM_INFINITY ? want
                   : rl.rlim_cur > reserved     ? rl.rlim_cur - reserved
                                                : 1;
    uint64_t ring = ((uint64_t)MAX_IO_ENTRIES * 16 - NET_BUFS - 64) / CQE_PER_CONN - CONN_MARGIN;
    fit = fit < ring ? fit : ring;
    return want < fit ? want : fit;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: pith-kv [--port N] [--host ADDR] [--shards N] [--max-bulk BYTES]\n"
            "               [--acceptor] [--request-timeout SECONDS] [--poll-us US]\n"
            "               [--timeout SECONDS] [--maxclients N] [--maxmemory BYTES]\n"
            "               [--maxmemory-clients BYTES] [--client-query-buffer-limit BYTES]\n"
            "               [--client-output-buffer-limit 'normal HARD SOFT SECONDS']\n"
            "               [--mesh-ring BATCHES] [--mesh-batch MSGS] [--mesh-backlog N]\n"
            "               [--dir PATH [--appendfsync always|everysec|no]\n"
            "                [--journal-segment-bytes BYTES]] [--metrics-port N]\n"
            "               [--slowlog-log-slower-than US] [--slowlog-max-len N]\n"
            "               [--latency-monitor-threshold MS]\n");
    exit(2);
}

/* On each shard at SIGTERM: every connection is reset now. */
static void *close_all(void *arg)
{
    (void)arg;
    for (struct kconn *kc = me()->conns, *next; kc != NULL; kc = next) {
        next = kc->next;
        kc->quitting = true;
        (void)pith_conn_abort(kc->id);
    }
    return NULL;
}

/* An integer flag in [lo, LLONG_MAX]. */
static long long ll_arg(const char *v, long long lo)
{
    long long n;
    if (!resp_parse_ll(v, strlen(v), &n) || n < lo)
        usage();
    return n;
}

static unsigned mesh_arg(const char *v)
{
    char *end;
    unsigned long m = strtoul(v, &end, 10);
    if (*end || *v == '-' || m == 0 || m > 65536)
        usage();
    return (unsigned)m;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(argv[i], "--port") == 0 && v) {
            long p = strtol(v, &end, 10);
            if (*end || p < 0 || p > 65535)
                usage();
            opt.port = (int)p;
            i++;
        } else if (strcmp(argv[i], "--metrics-port") == 0 && v) {
            long p = strtol(v, &end, 10);
            if (*end || p < 0 || p > 65535)
                usage();
            opt.metrics_port = (int)p;
            i++;
        } else if (strcmp(argv[i], "--host") == 0 && v) {
            opt.host = v;
            i++;
        } else if (strcmp(argv[i], "--shards") == 0 && v) {
            long s = strtol(v, &end, 10);
            if (*end || s < 1 || s > 4096)
                usage();
            opt.shards = (int)s;
            i++;
        } else if (strcmp(argv[i], "--max-bulk") == 0 && v) {
            unsigned long long b = strtoull(v, &end, 10);
            if (*end || b == 0 || b > (1ull << 31))
                usage();
            opt.max_bulk = (size_t)b;
            i++;
        } else if (strcmp(argv[i], "--request-timeout") == 0 && v) {
            unsigned long long t = strtoull(v, &end, 10);
            if (*end || t == 0 || t > 86400)
                usage();
            opt.request_timeout_ns = t * 1000000000ull;
            i++;
        } else if (strcmp(argv[i], "--poll-us") == 0 && v) {
            long long p = strtoll(v, &end, 10);
            if (*end || p < 0 || p > 1000000)
                usage();
            opt.poll_us = p;
            i++;
        } else if (strcmp(argv[i], "--timeout") == 0 && v) {
            unsigned long long t = strtoull(v, &end, 10);
            if (*end || *v == '-' || t > 2147483647ull)
                usage();
            opt.timeout_s = t;
            i++;
        } else if (strcmp(argv[i], "--maxclients") == 0 && v) {
            unsigned long long m = strtoull(v, &end, 10);
            if (*end || *v == '-' || m == 0 || m > 4294967295ull)
                usage();
            opt.maxclients = m;
            i++;
        } else if (strcmp(argv[i], "--maxmemory") == 0 && v) {
            if (!parse_memory(v, strlen(v), &opt.maxmemory) || opt.maxmemory > (uint64_t)LLONG_MAX)
                usage();
            i++;
        } else if (strcmp(argv[i], "--maxmemory-clients") == 0 && v) {
            if (!parse_memory(v, strlen(v), &opt.clients_mem) || opt.clients_mem == 0 ||
                opt.clients_mem > (uint64_t)LLONG_MAX)
                usage();
            i++;
        } else if (strcmp(argv[i], "--client-query-buffer-limit") == 0 && v) {
            if (!parse_memory(v, strlen(v), &opt.query_limit) || opt.query_limit < (1u << 20) ||
                opt.query_limit > (1ull << 40))
                usage();
            i++;
        } else if (strcmp(argv[i], "--client-output-buffer-limit") == 0 && v) {
            uint64_t l[3][3] = {{0}};
            if (parse_output_limit(v, strlen(v), l) != NULL)
                usage();
            opt.obl_hard = l[0][0];
            opt.obl_soft = l[0][1];
            opt.obl_secs = l[0][2];
            i++;
        } else if (strcmp(argv[i], "--mesh-ring") == 0 && v) {
            opt.mesh_ring = mesh_arg(v);
            i++;
        } else if (strcmp(argv[i], "--mesh-batch") == 0 && v) {
            opt.mesh_batch = mesh_arg(v);
            i++;
        } else if (strcmp(argv[i], "--mesh-backlog") == 0 && v) {
            opt.mesh_backlog = mesh_arg(v);
            i++;
        } else if (strcmp(argv[i], "--acceptor") == 0) {
            opt.acceptor = true;
        } else if (strcmp(argv[i], "--dir") == 0 && v && *v) {
            opt.dir = v;
            i++;
        } else if (strcmp(argv[i], "--journal-segment-bytes") == 0 && v) {
            if (!parse_memory(v, strlen(v), &opt.segment_bytes))
                usage();
            i++;
        } else if (strcmp(argv[i], "--appendfsync") == 0 && v) {
            if ((opt.appendfsync = aof_parse(v)) < 0)
                usage();
            i++;
        } else if (strcmp(argv[i], "--slowlog-log-slower-than") == 0 && v) {
            opt.slowlog_slower_than = ll_arg(v, -1);
            i++;
        } else if (strcmp(argv[i], "--slowlog-max-len") == 0 && v) {
            opt.slowlog_max_len = ll_arg(v, 0);
            i++;
        } else if (strcmp(argv[i], "--latency-monitor-threshold") == 0 && v) {
            opt.latency_threshold_ms = ll_arg(v, 0);
            i++;
        } else {
            usage();
        }
    }
    limits.max_bulk = opt.max_bulk;
    limits.max_args = ARGS_MAX;
    atomic_store(&kv_cfg.timeout_s, opt.timeout_s);
    atomic_store(&kv_cfg.max_bulk, opt.max_bulk);
    atomic_store(&kv_cfg.maxmemory, opt.maxmemory);
    if (opt.clients_mem == 0) {
        /* Redis leaves maxmemory-clients off; here client memory is always bounded, by default
         * to a quarter of the machine's memory. */
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        opt.clients_mem = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page / 4 : 1u << 30;
    }
    atomic_store(&kv_cfg.maxmemory_clients, opt.clients_mem);
    atomic_store(&kv_cfg.query_limit, opt.query_limit);
    atomic_store(&kv_cfg.obl_hard, opt.obl_hard);
    atomic_store(&kv_cfg.obl_soft, opt.obl_soft);
    atomic_store(&kv_cfg.obl_secs, opt.obl_secs);
    atomic_store(&kv_cfg.slowlog_slower_than, (uint64_t)opt.slowlog_slower_than);
    atomic_store(&kv_cfg.slowlog_max_len, (uint64_t)opt.slowlog_max_len);
    atomic_store(&kv_cfg.latency_threshold_ms, (uint64_t)opt.latency_threshold_ms);
    kv_cfg.port = opt.port;
    kv_cfg.bind = opt.host;

    /* The key of the store's hash, new in every process: nobody outside can build keys that
     * share a bucket or a shard (hash flooding). With a journal it is new in every data
     * directory instead (kv.meta), so that each key's records stay on one shard's journal. */
    unsigned char key[16];
    unsigned meta_shards = 0;
    int meta = 0;
    if (opt.dir != NULL) {
        aof_mode = opt.appendfsync;
        if (mkdir(opt.dir, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "pith-kv: %s: %s\n", opt.dir, strerror(errno));
            return 1;
        }
        if ((meta = aof_meta_read(opt.dir, key, &meta_shards)) < 0)
            return 1;
    }
    if (meta == 0 && getrandom(key, sizeof(key), 0) != (ssize_t)sizeof(key)) {
        perror("pith-kv: getrandom");
        return 1;
    }
    kv_hash_seed(key);
    unsigned char rid[20];
    if (getrandom(rid, sizeof(rid), 0) != (ssize_t)sizeof(rid)) {
        perror("pith-kv: getrandom");
        return 1;
    }
    for (int i = 0; i < 20; i++)
        snprintf(run_id + 2 * i, 3, "%02x", rid[i]);

    /* SIGINT and SIGTERM are taken by sigwait below; block them before any shard thread
     * exists so that every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = opt.shards;
    /* Room for maxclients connections on any one shard (the kernel's SO_REUSEPORT hash may
     * send them all to one), plus a margin that lets the one past maxclients be told so. */
    uint64_t limit = clients_limit(opt.maxclients);
    if (limit < opt.maxclients) {
        fprintf(stderr, "pith-kv: maxclients %llu lowered to %llu (file descriptors, rings)\n",
                (unsigned long long)opt.maxclients, (unsigned long long)limit);
        opt.maxclients = limit;
    }
    cfg.io_entries = ring_entries_for(limit + CONN_MARGIN);
    /* Mesh sizes (the engine checks them): a small mesh makes backpressure common, which the
     * tests use. */
    if (opt.mesh_ring)
        cfg.ring_batches = opt.mesh_ring;
    if (opt.mesh_batch)
        cfg.batch_msgs = opt.mesh_batch;
    if (opt.mesh_backlog)
        cfg.backlog_batches = opt.mesh_backlog;
    if (opt.poll_us >= 0)
        cfg.poll_ns = (uint64_t)opt.poll_us * 1000;
    if (opt.dir != NULL)
        aof_config(&cfg, opt.dir, opt.segment_bytes);
    int err = pith_engine_start(&cfg);
    if (err) {
        fprintf(stderr, "pith-kv: engine: %s (%s)\n", pith_strerror(err), pith_last_error());
        return 1;
    }
    nshards = pith_shard_count();
    if (meta > 0 && meta_shards != nshards) {
        fprintf(stderr,
                "pith-kv: %s holds the journals of %u shards: start it with --shards %u (this "
                "start has %u)\n",
                opt.dir, meta_shards, meta_shards, nshards);
        pith_engine_stop();
        return 1;
    }
    if (opt.dir != NULL && meta == 0 && (err = aof_meta_write(opt.dir, key, nshards)) != 0) {
        fprintf(stderr, "pith-kv: %s/kv.meta: %s\n", opt.dir, pith_strerror(err));
        pith_engine_stop();
        return 1;
    }
    started_ns = pith_now_ns();
    /* The rings and the listener were sized for this many: CONFIG SET maxclients may lower it
     * and raise it back, not past it. */
    kv_cfg.maxclients_limit = opt.maxclients;
    atomic_store(&kv_cfg.maxclients, opt.maxclients);
    for (unsigned i = 0; i < nshards; i++) {
        void *res = NULL;
        err = pith_call_wait(i, shard_up, NULL, &res);
        if (err == 0 && res != NULL)
            err = (int)(intptr_t)res;
        if (err) {
            fprintf(stderr, "pith-kv: shard %u: %s\n", i, pith_strerror(err));
            pith_engine_stop();
            return 1;
        }
    }
    pith_listen_config_t lc = {0};
    lc.host = opt.host;
    lc.port = (uint16_t)opt.port;
    lc.spread = opt.acceptor ? PITH_TCP_ACCEPTOR : PITH_TCP_REUSEPORT;
    lc.conn.handler = &handler;
    lc.max_conns = (unsigned)(opt.maxclients + CONN_MARGIN);
    /* A client's unconsumed input up to client-query-buffer-limit (past it the engine closes
     * it, as Redis does), plus the output window; replies past the window wait here. */
    lc.conn.max_buffered = opt.query_limit + OUT_WINDOW + 2 * OUT_PIECE;
    lc.conn.high_watermark = HIGH_WATER;
    lc.conn.low_watermark = LOW_WATER;
    pith_listener_t l;
    err = pith_tcp_listen(&lc, &l);
    if (err) {
        fprintf(stderr, "pith-kv: listen on %s:%d: %s\n", opt.host, opt.port, pith_strerror(err));
        pith_engine_stop();
        return 1;
    }
    printf("pith-kv: listening on %s:%d with %u shards (%s)\n", opt.host, pith_tcp_listener_port(l),
           nshards, opt.acceptor ? "acceptor" : "reuseport");
    /* The engine's metrics (pith_metrics_serve), at /metrics for Prometheus. */
    pith_listener_t ml = 0;
    if (opt.metrics_port >= 0) {
        err = pith_metrics_serve(opt.host, (uint16_t)opt.metrics_port, &ml);
        if (err) {
            fprintf(stderr, "pith-kv: metrics on %s:%d: %s\n", opt.host, opt.metrics_port,
                    pith_strerror(err));
            (void)pith_tcp_unlisten(l);
            pith_engine_stop();
            return 1;
        }
        printf("pith-kv: metrics on http://%s:%d/metrics\n", opt.host, pith_tcp_listener_port(ml));
    }
    fflush(stdout);
    int sig;
    while (sigwait(&sigs, &sig) != 0)
        ;
    /* Prompt shutdown: no new clients, every connection reset (its unsent replies dropped, as
     * when Redis exits), then the engine stops. */
    (void)pith_tcp_unlisten(l);
    if (ml != 0)
        (void)pith_tcp_unlisten(ml);
    for (unsigned i = 0; i < nshards; i++)
        (void)pith_call_wait(i, close_all, NULL, NULL);
    pith_engine_stop();
    /* The engine's threads are gone: what it released without running (requests on their way
     * between shards) is freed here. */
    for (unsigned i = 0; i < nshards; i++) {
        struct kshard *ks = kshards[i];
        while (ks->live != NULL)
            req_free(ks->live);
        while (ks->zombies != NULL)
            kconn_free(ks->zombies);
        locks_free(&ks->locks);
    }
    return 0;
}
