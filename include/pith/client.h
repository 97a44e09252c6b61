/* Clients: threads outside the engine as first-class senders and receivers. A client has a ref
 * that actors send and reply to, an inbox it receives from with a timeout, and blocking ask,
 * spawn and call. A program's main drives the engine through one without semaphores of its own.
 *
 * Every thread outside the engine already is a client: pith_send, pith_submit and
 * pith_call_wait from such a thread go through its own client (pith_client_self), made on first
 * use and closed when the thread exits. pith_client_open makes more, e.g. one per feed handler.
 *
 * Flow control: a client reaches each shard through its own bounded lane (cfg.lane_slots of the
 * engine, FIFO per client and shard). A message for an actor whose mailbox is full waits in the
 * lane (for a REJECT or MUTE_SENDER type; a DROP_OLDEST mailbox takes it and drops its oldest),
 * so a client's message is not refused by a mailbox: the client is pushed back instead, and a
 * send waits for room (up to its timeout) or fails with -EAGAIN. What comes back undelivered
 * (the actor had gone, or its oldest message was dropped) arrives in the inbox as a
 * PITH_MSG_UNDELIVERED message (pith/actor.h). Each shard may queue inbox_max messages for a
 * client; a shard that finds that inbox full gets -EAGAIN at once. The engine's answers to the
 * client's own spawns, calls and failed asks come past that bound (one per call). A client that
 * closes (or a thread that exits) with records still in its lanes leaves them to run; a shard
 * holds at most 64 such lanes, and past that a new lane to it waits for room like a full one,
 * so that opening and closing clients does not get around the bound.
 *
 * Threads: a client is used by one thread at a time (handing it over needs the caller's own
 * synchronisation). None of these calls may be made from a shard: they return -EDEADLK (or NULL
 * with errno EDEADLK). */
#ifndef PITH_CLIENT_H
#define PITH_CLIENT_H

#include <stdint.h>

#include <pith/actor.h>
#include <pith/api.h>
#include <pith/engine.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A timeout that never ends. 0 means "do not wait". */
#define PITH_FOREVER UINT64_MAX

/* The shard field of every client's ref (pith_ref_shard): no shard has this index. */
#define PITH_CLIENT_SHARD 4095u

/* A client: opaque, the opener's (or, for pith_client_self, its thread's). */
typedef struct pith_client pith_client_t;

/* How a client behaves: pith_client_config_init fills the defaults, pith_client_open copies it. */
typedef struct pith_client_config {
    /* Messages each shard may queue for this client before its sends to it fail with -EAGAIN
     * (default 1024; rounded up to a power of two, 4..65536). */
    uint32_t inbox_max;
    /* How long a blocking call polls before it sleeps, in ns (default 0: sleep at once): a
     * receive, ask, spawn or call waiting for its answer, and a send waiting for room in a full
     * lane. A client on a CPU of its own trades that CPU for latency here: a sleeping client
     * costs a futex wake-up, several microseconds on most machines, and a sender that sleeps on
     * a full lane costs the shard a wake-up each time it frees room. */
    uint64_t spin_ns;
} pith_client_config_t;

/* Fills *cfg with the defaults. */
PITH_API void pith_client_config_init(pith_client_config_t *cfg);

/* Opens a client of the running engine; cfg NULL takes the defaults (it is copied). The client
 * is the caller's to close. NULL with errno: EDEADLK on a shard, ESHUTDOWN no engine runs or it
 * is stopping, EINVAL a bad config value, ENOMEM, EMFILE 65536 clients are open. */
PITH_API pith_client_t *pith_client_open(const pith_client_config_t *cfg);

/* Closes a client: its ref goes stale (sends to it fail with -ESRCH), messages waiting in its
 * inbox are freed, and messages it sent are still delivered. Waits until every shard has
 * finished what it was running when the ref went stale (a shard stuck in a long task holds it
 * up). NULL is ignored. Do not close pith_client_self()'s client: its thread's exit does. Works
 * after the engine stopped too. */
PITH_API void pith_client_close(pith_client_t *c);

/* The calling thread's own client, made on first use (with the defaults), closed when the
 * thread exits. NULL with errno: EDEADLK on a shard, ESHUTDOWN, ENOMEM, EMFILE. */
PITH_API pith_client_t *pith_client_self(void);

/* The client's ref: what actors send and reply to. PITH_REF_NONE for NULL. */
PITH_API pith_ref_t pith_client_ref(const pith_client_t *c);

/* Sends a copy of data[0..len) with tag `type` to `to` (an actor, or another client), as
 * pith_send does from a behaviour: the message carries the client's ref. When the lane to the
 * actor's shard is full, waits for room for up to timeout_ns (0: not at all; PITH_FOREVER).
 * Errors: -EINVAL c NULL, to not a ref of this engine, type reserved, data NULL with len > 0;
 * -EAGAIN no room and timeout_ns 0; -ETIMEDOUT no room in time; -ESRCH a client `to` is gone;
 * -ENOMEM; -ESHUTDOWN no engine, or it is stopping; -EDEADLK on a shard. On any error nothing
 * was sent. */
PITH_API int pith_client_send(pith_client_t *c, pith_ref_t to, uint32_t type, const void *data,
                              uint32_t len, uint64_t timeout_ns);

/* One message of pith_client_send_batch. */
typedef struct pith_client_msg {
    pith_ref_t to;    /* an actor or a client */
    uint32_t type;    /* below PITH_MSG_RESERVED */
    uint32_t len;     /* bytes at data */
    const void *data; /* copied at send */
} pith_client_msg_t;

/* Sends msgs[0..n) in order, each as pith_client_send would, waiting for room up to timeout_ns
 * for the whole batch (0: not at all). The messages to one shard are published with one check
 * of whether that shard sleeps (a full barrier, whose cost is most of a small send's) instead
 * of one each: the way for a feed handler to pass on what one packet carried. Returns how many
 * were sent, from the first: n, or fewer when one failed (the rest are not sent); the first's
 * -errno when none was. Errors: as pith_client_send (-ETIMEDOUT when room did not come in
 * time), and -EINVAL msgs NULL with n > 0; -ENOMEM. */
PITH_API int pith_client_send_batch(pith_client_t *c, const pith_client_msg_t *msgs, unsigned n,
                                    uint64_t timeout_ns);

/* As pith_client_send with buf's bytes as the payload, not copied (pith_send_buf): the message
 * holds its own reference; the caller keeps its own. Errors: as pith_client_send, and -EINVAL
 * buf NULL. */
PITH_API int pith_client_send_buf(pith_client_t *c, pith_ref_t to, uint32_t type, pith_buf_t *buf,
                                  uint64_t timeout_ns);

/* Takes the next message from the client's inbox, waiting up to timeout_ns (0: not at all;
 * PITH_FOREVER). *out describes it; its data stays valid until the client's next receive, ask,
 * spawn or call, or its close. Messages from one shard come in the order that shard sent them;
 * the client takes from each shard in turn. Replies that come late to an ask that timed out
 * are dropped (and an actor spawned too late for a pith_client_spawn that gave up is stopped).
 * Errors: -EINVAL c or out NULL; -EAGAIN nothing and timeout_ns 0; -ETIMEDOUT nothing in time;
 * -ESHUTDOWN no engine, or it is stopping (what waited in the inbox is then freed by the stop);
 * -EDEADLK on a shard. */
PITH_API int pith_client_receive(pith_client_t *c, pith_msg_t *out, uint64_t timeout_ns);

/* Asks `to` and waits for its reply (pith_reply) for up to timeout_ns in all (> 0; the wait for
 * lane room included). *reply describes it, valid as a received message. Messages that arrive
 * meanwhile wait in the inbox for pith_client_receive (at most inbox_max of them are set aside;
 * past that the ask stops reading and its reply can time out behind them).
 * Errors: as pith_client_send, and -EINVAL timeout_ns 0 or reply NULL; -ETIMEDOUT no reply in
 * time; the reason of pith_undelivered_t (-ESRCH, -EAGAIN, ...) when the request came back
 * undelivered. */
PITH_API int pith_client_ask(pith_client_t *c, pith_ref_t to, uint32_t type, const void *data,
                             uint32_t len, uint64_t timeout_ns, pith_msg_t *reply);

/* Spawns an actor of `type` on `shard` (init(self, state, arg) runs there) and waits for up to
 * timeout_ns (> 0). *out (may be NULL) gets its ref. If the wait times out, the spawn may still
 * happen: the client stops that actor when its late answer comes in. arg must stay valid until
 * init has run, which is after this returns when it timed out. Errors: -EINVAL c or type NULL,
 * shard out of range, timeout_ns 0; -ETIMEDOUT; init's error or pith_spawn's; -ESHUTDOWN;
 * -EDEADLK on a shard. */
PITH_API int pith_client_spawn(pith_client_t *c, unsigned shard, const pith_actor_type_t *type,
                               void *arg, uint64_t timeout_ns, pith_ref_t *out);

/* Runs result = fn(arg) on `shard` and waits for up to timeout_ns (> 0) for it; *result (may
 * be NULL) gets it. If the wait times out, fn may still run later (arg must stay valid until
 * then, or fn must not need it) and its result is dropped. Errors: -EINVAL c or fn NULL, shard
 * out of range, timeout_ns 0; -ETIMEDOUT; -ESHUTDOWN; -EDEADLK on a shard. */
PITH_API int pith_client_call(pith_client_t *c, unsigned shard, pith_call_fn_t fn, void *arg,
                              uint64_t timeout_ns, void **result);

/* Counters of one client, read from its own thread. */
typedef struct pith_client_stats {
    uint64_t sent;        /* messages and calls accepted into its lanes */
    uint64_t pushed_back; /* sends that found a lane full (then waited, or failed) */
    uint64_t received;    /* messages taken from its inbox, replies included */
    uint64_t late;        /* replies and spawn answers that came after their call gave up */
    uint64_t undelivered; /* messages of this client reported back undelivered */
} pith_client_stats_t;

/* Errors: -EINVAL c or out NULL. */
PITH_API int pith_client_stats(const pith_client_t *c, pith_client_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
