/* Each shard's networking state: made on the shard's first use of TCP, ended when the shard
 * leaves its loop (ring_exit hook), freed once the engine is gone. The connection table, and
 * pith_net_stats. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net.h"

/* Published by each shard with a release store when it makes its state, read with acquire by
 * other shards (the acceptor's load count) and by pith_net_stats; cleared after every shard has
 * been joined. */
static _Atomic(struct net_shard *) shards[4096];

/* Where each shard's connection generations stopped, so that an id kept from one engine names
 * nothing in the next (io/slots.h). Written by the stopping thread once every shard is joined
 * (net_engine_gone), read by the next engine's shard on its first TCP use: the stop returns
 * before the next start begins, which orders the two. */
static uint32_t gen_keep[SLOTS_OWNERS];

struct net_shard *net_shard_peek(unsigned shard)
{
    return shard < 4096 ? atomic_load_explicit(&shards[shard], memory_order_acquire) : NULL;
}

struct net_shard *net_shard_get(void)
{
    int me = pith_shard_id();
    if (me < 0)
        return NULL;
    struct net_shard *ns = atomic_load_explicit(&shards[me], memory_order_relaxed);
    if (ns != NULL)
        return ns;
    const pith_config_t *cfg = shard_config();
    ns = calloc(1, sizeof(*ns));
    if (ns == NULL)
        return NULL;
    ns->shard = (unsigned)me;
    ns->ring = shard_io();
    ns->nbufs = cfg->net_bufs;
    ns->buf_size = cfg->net_buf_size;
    slots_init(&ns->conns, (unsigned)me, SLOTS_MAX, &gen_keep[me]);
    /* The CQ holds io_entries * 16 (io/ring.c). Leave room for the receive buffers (each
     * completion that carries data holds one until it is handled), a margin for the shard's
     * other work, and NET_CQE_PER_CONN per connection. */
    unsigned cq = cfg->io_entries * 16;
    unsigned reserve = ns->nbufs + 64;
    ns->max_conns_fit = cq > reserve ? (cq - reserve) / NET_CQE_PER_CONN : 1;
    if (ns->max_conns_fit == 0)
        ns->max_conns_fit = 1;
    int err = bufring_open(ns);
    if (err) {
        bufring_close(ns);
        free(ns);
        errno = -err;
        return NULL;
    }
    atomic_store_explicit(&shards[me], ns, memory_order_release);
    return ns;
}

struct conn *conn_alloc(struct net_shard *ns)
{
    struct conn *c = pith_malloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    memset(c, 0, sizeof(*c));
    if (slots_add(&ns->conns, c, &c->id) != 0) {
        pith_free(c);
        return NULL;
    }
    c->ns = ns;
    c->fd = -1;
    return c;
}

void conn_release_slot(struct conn *c)
{
    slots_remove(&c->ns->conns, c->id);
}

struct conn *conn_find(struct net_shard *ns, uint64_t id)
{
    return ns != NULL ? slots_find(&ns->conns, id) : NULL;
}

struct conn *conn_by_id(uint64_t id)
{
    return conn_find(net_shard_peek(pith_conn_shard(id)), id);
}

unsigned pith_conn_shard(pith_conn_t c)
{
    return slots_owner(c);
}

int pith_net_stats(unsigned shard, pith_net_stats_t *out)
{
    if (out == NULL)
        return -EINVAL;
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    int err = 0;
    if (shard >= pith_shard_count()) {
        err = -EINVAL;
    } else {
        memset(out, 0, sizeof(*out));
        struct net_shard *ns = net_shard_peek(shard);
        if (ns != NULL) {
            const struct net_counters *s = &ns->st;
#define RD(f) out->f = atomic_load_explicit(&s->f, memory_order_relaxed)
            RD(conns_open);
            RD(accepted);
            RD(connected);
            RD(refused);
            RD(over_limit);
            RD(idle_closed);
            RD(resets);
            RD(bytes_in);
            RD(bytes_out);
            RD(recv_nobufs);
            RD(recv_rearms);
            RD(accept_rearms);
            RD(partial_sends);
            RD(paused);
#undef RD
        }
    }
    shard_reader_leave();
    return err;
}

int net_conn_hists(unsigned shard, struct net_conn_hists *out)
{
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    int err = 0;
    if (shard >= pith_shard_count()) {
        err = -EINVAL;
    } else {
        memset(out, 0, sizeof(*out));
        struct net_shard *ns = net_shard_peek(shard);
        const struct net_counters *s = ns != NULL ? &ns->st : NULL;
#define RD(f) atomic_load_explicit(&s->f, memory_order_relaxed)
        for (unsigned b = 0; s != NULL && b < HIST_BUCKETS; b++)
            out->life[b] = RD(life[b]);
        for (unsigned b = 0; s != NULL && b < NET_POW2; b++) {
            out->in[b] = RD(in[b]);
            out->out[b] = RD(out[b]);
        }
        if (s != NULL) {
            out->life_sum = RD(life_sum);
            out->in_sum = RD(in_sum);
            out->out_sum = RD(out_sum);
        }
#undef RD
    }
    shard_reader_leave();
    return err;
}

/* Every socket of the shard has had its last completion: connections and listeners are freed. */
static bool sockets_gone(void *arg)
{
    struct net_shard *ns = arg;
    return ns->conns.live == 0 && ns->parts == NULL;
}

static void net_ring_exit(unsigned shard)
{
    struct net_shard *ns = net_shard_peek(shard);
    if (ns == NULL)
        return;
    ns->exiting = true;
    listen_exit_all(ns);
    conn_exit_all(ns);
    (void)io_ring_settle(ns->ring, UINT64_C(2000000000), sockets_gone, ns);
    /* The buffers go only when no receive can still write into them. */
    if (ns->conns.live == 0)
        bufring_close(ns);
}

static void net_engine_gone(void)
{
    for (unsigned i = 0; i < 4096; i++) {
        struct net_shard *ns = atomic_load_explicit(&shards[i], memory_order_relaxed);
        if (ns == NULL)
            continue;
        atomic_store_explicit(&shards[i], NULL, memory_order_relaxed);
        /* Connections the kernel never answered for stay allocated: it may write into them. */
        bool left = ns->conns.live > 0;
        slots_fini(&ns->conns);
        if (!left)
            free(ns);
    }
}

static bool net_release(pith_fn_t fn, void *arg)
{
    if (fn == adopt_task) {
        /* A connection handed to a shard that stopped first: its descriptor is closed here. */
        close((int)((uintptr_t)arg & 0xFFFFFFFFu));
        return true;
    }
    return fn == listen_install_task || fn == unlisten_task || fn == net_actor_retry ||
           net_conn_task(fn);
}

static void net_gone(void)
{
    net_engine_gone();
    net_listeners_gone();
}

__attribute__((constructor)) static void net_hooks(void)
{
    static const struct shard_hooks h = {
        .ring_exit = net_ring_exit,
        .engine_gone = net_gone,
        .release = net_release,
    };
    shard_hooks_add(&h);
}
