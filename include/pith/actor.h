/* Actors: an actor lives on one shard and runs its behaviour for one message at a time, never
 * concurrently with itself. Refs name actors from anywhere; messages are copied at send.
 *
 * Here: spawn (here or on another shard), refs, bounded mailboxes with reject or drop-oldest
 * overflow, send, ask and reply with timeouts, actor timers, become, stop and kill, monitors
 * and links, supervisors, a registry of names, and counters per type and per shard. */
#ifndef PITH_ACTOR_H
#define PITH_ACTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/api.h>
#include <pith/mem.h>
#include <pith/timer.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A ref: the actor's shard, slot and generation in 64 bits; never 0. Copy and compare it
 * freely, on any thread. A ref whose actor has stopped is stale: sends to it fail (or are
 * counted as dead letters when they cross shards); it never reaches another actor. */
typedef uint64_t pith_ref_t;
/* No actor: a ref no actor or client ever has. */
#define PITH_REF_NONE ((pith_ref_t)0)

/* The shard a ref's actor lives on. */
PITH_API unsigned pith_ref_shard(pith_ref_t ref);

/* A reference-counted buffer of bytes that messages carry without copying (pith_buf_new). */
typedef struct pith_buf pith_buf_t;

/* A message as the behaviour (or a client's receive) sees it. */
typedef struct pith_msg {
    uint32_t type; /* the application's tag, below PITH_MSG_RESERVED (or the engine's) */
    uint32_t len;  /* bytes at data */
    /* The sending actor or client (pith/client.h; a thread outside the engine sends as its
     * own client); PITH_REF_NONE when a task sent it. */
    pith_ref_t from;
    /* Nonzero on a request made with pith_ask (answer it with pith_reply), and on the reply
     * or timeout an asker receives. */
    uint64_t req;
    /* The receiver's copy, 16-byte aligned, valid until the behaviour returns (for a client,
     * until its next receive, ask, spawn or call). */
    const void *data;
    pith_buf_t *buf; /* sent with pith_send_buf: data is this buffer's (keep it: pith_buf_ref) */
} pith_msg_t;

/* Tags from PITH_MSG_RESERVED up are the engine's: the calls that send refuse them (-EINVAL),
 * so that no application can forge one. */
#define PITH_MSG_RESERVED    0xFFFFFF00u
#define PITH_MSG_TIMEOUT     0xFFFFFF01u /* an ask of this actor got no reply in time; see req */
#define PITH_MSG_DOWN        0xFFFFFF02u /* a monitored (or linked, when trapping) actor ended */
#define PITH_MSG_UNDELIVERED 0xFFFFFF03u /* a message this actor sent was not delivered */

/* The payload of PITH_MSG_DOWN. */
typedef struct pith_down {
    pith_ref_t ref; /* the actor that ended */
    int32_t reason; /* its exit reason */
    uint32_t link;  /* 1: it was linked (and this actor traps exits), 0: monitored */
} pith_down_t;

/* The payload of PITH_MSG_UNDELIVERED, and what pith_on_undelivered's handler gets.
 *
 * The rule every path keeps: every queue is bounded, and no message is lost without its sender
 * being able to know. A send that fails at once returns -errno (same shard: a full mailbox,
 * a stopped actor; any shard: the mesh or a lane pushing back). A message that was accepted and
 * then not delivered comes back as one of these: to the sending actor as a PITH_MSG_UNDELIVERED
 * message, to a client (pith/client.h) through pith_client_receive, to an ask as its failure
 * (at once, not at its timeout), and for a message a task sent, to the handler set with
 * pith_on_undelivered on the shard that sent it. Engine messages (tags from PITH_MSG_RESERVED)
 * and replies to asks that already ended are not reported back; what an engine stop releases is
 * counted in its report instead. */
typedef struct pith_undelivered {
    pith_ref_t to; /* the receiver; PITH_REF_NONE in a summary */
    uint64_t req;  /* the message's request id (an ask or a reply), 0: none */
    uint32_t type; /* its tag; 0 in a summary */
    /* -EAGAIN: the receiver's mailbox was full and its type rejects (or mutes, and the message
     * came past the hard bound); -ESRCH: no such actor when it arrived; -ENOBUFS: pushed out of
     * a full PITH_OVERFLOW_DROP_OLDEST mailbox; -ECANCELED: the receiver ended with it still in
     * its mailbox; -EBUSY: the receiver's type missed its SLA on its shard and sheds new
     * messages (pith/sla.h). */
    int32_t reason;
    /* Messages this notice stands for: 1, or more in a summary. When notices themselves find
     * no room (the sender's mailbox is past twice its bound, or a client's inbox is full), they
     * are folded into a count and one summary (to and type 0, reason -ENOBUFS) carries it once
     * there is room, so the total stays exact. */
    uint64_t count;
} pith_undelivered_t;

/* An actor as its own behaviour, init and terminate see it: opaque, valid during the call. */
typedef struct pith_actor pith_actor_t;

/* Handles one message. 0: go on. Non-zero: the actor failed; it stops with that status as its
 * exit reason (its supervisor, when supervision arrives, decides what next). */
typedef int (*pith_behaviour_t)(pith_actor_t *self, void *state, const pith_msg_t *msg);

/* Why an actor ended, as its terminate hook sees it: PITH_EXIT_NORMAL (pith_stop), a
 * behaviour's non-zero status, or one of these. */
#define PITH_EXIT_NORMAL    0
#define PITH_EXIT_SHUTDOWN  (-100000) /* the engine stopped with the actor alive */
#define PITH_EXIT_NOPROC    (-100001) /* monitor or link of an actor that had already ended */
#define PITH_EXIT_KILLED    (-100002) /* pith_kill */
#define PITH_EXIT_ESCALATED (-100003) /* a supervisor passed its restart intensity */

/* What a full mailbox does with one more message. Under REJECT and MUTE_SENDER, a client's
 * message (a thread outside the engine) waits in its lane until the mailbox has drained to
 * half: the client is pushed back (pith_client_send), never refused by the mailbox. Under
 * DROP_OLDEST it is taken like any other, and the oldest comes back to its sender. Engine messages
 * (PITH_MSG_DOWN, PITH_MSG_TIMEOUT, replies to this actor's asks, PITH_MSG_UNDELIVERED) come in
 * past the bound: the actor asked for each of them. */
typedef enum pith_overflow {
    /* The send fails with -EAGAIN on the receiver's shard; from another shard the message
     * comes back undelivered (-EAGAIN). Counted in rejected. */
    PITH_OVERFLOW_REJECT = 0,
    /* The oldest waiting message is dropped (counted) and comes back to its sender
     * undelivered (-ENOBUFS). */
    PITH_OVERFLOW_DROP_OLDEST = 1,
    /* A message from an actor is taken and its sender muted: it handles no more messages until
     * this mailbox drains to half the bound (across shards it learns so through the mesh).
     * What a sender sends before its mute reaches it still comes in, up to 8 times the bound;
     * past that, and from tasks, as REJECT. */
    PITH_OVERFLOW_MUTE_SENDER = 2,
} pith_overflow_t;

/* An actor type. The type must outlive its actors (a static object is the usual choice);
 * counters are kept per type and shard. */
typedef struct pith_actor_type {
    const char *name;           /* for stats, stall reports and people; may be NULL */
    pith_behaviour_t behaviour; /* required */
    size_t state_size;          /* bytes of state, zeroed, 16-byte aligned; 0: none */
    /* Runs on the actor's shard before any message. Non-zero (a negative errno): the spawn
     * fails with it and terminate is not called. NULL: nothing to do. */
    int (*init)(pith_actor_t *self, void *state, void *arg);
    /* Runs on the actor's shard once, when the actor ends, with the exit reason. */
    void (*terminate)(pith_actor_t *self, void *state, int reason);
    uint32_t mailbox_max;       /* messages waiting at most; 0: 4096 */
    pith_overflow_t overflow;   /* when the mailbox is full */
    uint32_t turn_msgs;         /* messages per turn before other actors run; 0: 64 */
    pith_mem_profile_t profile; /* what backs the state (PITH_MEM_WARM by default) */
    /* Bytes each actor may hold (0: no limit, and no account of its own). With a budget the
     * state is charged to the actor's own account (owner tag = its ref), a spawn whose state
     * does not fit fails with -ENOMEM, and so does any pith_malloc_ex naming
     * pith_actor_owner(self) past it. The account goes when the actor ends. */
    size_t mem_budget;
} pith_actor_type_t;

/* Spawns an actor of `type` on the calling shard; init(self, state, arg) runs before this
 * returns. *out (may be NULL) gets its ref. Errors: -EPERM outside the engine, -EINVAL type or
 * its behaviour NULL, -ENOMEM, -ESHUTDOWN the engine is stopping, or init's error. */
PITH_API int pith_spawn(const pith_actor_type_t *type, void *arg, pith_ref_t *out);

/* Called on the spawning shard with the new ref, or PITH_REF_NONE and the error. */
typedef void (*pith_spawned_fn_t)(pith_ref_t ref, int err, void *ctx);

/* Spawns on `shard` (which may be the caller's): the request travels the mesh, init runs
 * there, and done(ref, err, ctx) runs back on the calling shard. arg stays the caller's and
 * must stay valid until done runs (init reads it on the other shard); type must outlive the
 * actor. Call from a shard; threads outside use pith_client_spawn. If the engine stops before
 * the request runs, done never runs. Errors now: as pith_call; later, through done: as
 * pith_spawn. */
PITH_API int pith_spawn_on(unsigned shard, const pith_actor_type_t *type, void *arg,
                           pith_spawned_fn_t done, void *ctx);

/* Sends a copy of data[0..len) with tag `type` to `to` (an actor or a client), from any
 * thread. From a behaviour the message carries the sender's ref; from a thread outside the
 * engine it is pith_client_send from that thread's own client without waiting (pith/client.h).
 * Order: messages from one sender to one receiver arrive in the order they were sent (a sender
 * is an actor, a shard's tasks, or a client).
 * Errors: -EINVAL to is not a ref of this engine, type is reserved (PITH_MSG_RESERVED and up),
 * or data NULL with len > 0; -ESRCH the actor (or client) is gone (known at once on the
 * receiver's shard, and for clients; otherwise the message comes back undelivered); -EAGAIN the
 * receiver's mailbox is full and its type rejects (same shard; otherwise the message comes back
 * undelivered), a client's inbox from this shard is full, or the mesh or the caller's lane
 * pushes back (pith_when_room, pith_client_send with a timeout); -EBUSY the receiver's type
 * misses its SLA on the receiver's shard and sheds new messages (pith/sla.h; same shard,
 * otherwise the message comes back undelivered with -EBUSY); -ENOMEM; -ESHUTDOWN no engine,
 * or it is stopping. On any error nothing was sent. */
PITH_API int pith_send(pith_ref_t to, uint32_t type, const void *data, uint32_t len);

/* ---- zero-copy payloads ----
 * A buffer is filled by whoever made it, then sent any number of times, to any shards, without
 * copying: receivers see its bytes as the message's data and must not write them. It counts its
 * references and goes back to the heap of the shard (or thread) that made it when the last one
 * is released. Payloads that pith_send copies, and buffers, are less than PITH_MSG_MAX bytes. */
#define PITH_MSG_MAX (UINT32_C(1) << 30)

/* A buffer of len bytes, *data where to write them; one reference, the caller's.
 * NULL with errno: EINVAL (data NULL, len >= PITH_MSG_MAX), ENOMEM. Any thread. */
PITH_API pith_buf_t *pith_buf_new(size_t len, void **data);
/* Another reference; returns buf. */
PITH_API pith_buf_t *pith_buf_ref(pith_buf_t *buf);
/* Drops a reference; the last one frees the buffer. NULL is ignored. */
PITH_API void pith_buf_release(pith_buf_t *buf);
/* The buffer's bytes (NULL for NULL). Any thread holding a reference. */
PITH_API const void *pith_buf_data(const pith_buf_t *buf);
/* The buffer's length in bytes (0 for NULL). */
PITH_API size_t pith_buf_len(const pith_buf_t *buf);
/* As pith_send, with buf's bytes as the payload, not copied: the message holds its own
 * reference (the caller keeps, and later releases, its own). Errors: as pith_send. */
PITH_API int pith_send_buf(pith_ref_t to, uint32_t type, pith_buf_t *buf);

/* The running actor's own ref. */
PITH_API pith_ref_t pith_self(const pith_actor_t *self);
/* The owner tag to pass to pith_malloc_ex for memory the actor's budget covers; 0 (the
 * shard's own account) when its type has no budget. */
PITH_API uint64_t pith_actor_owner(const pith_actor_t *self);

/* ---- backpressure: waiting for room, and hearing about losses ----
 * Runs fn(arg) once on the calling shard when a send to `to` may succeed again: for an actor
 * of this shard, when its mailbox has drained to half its bound (or it has ended); for an actor
 * of another shard, when the mesh to that shard takes more and that actor's mailbox has drained
 * to half (the request travels there and back). A callback is not a reservation: the send can
 * find the room taken again, and then waits again. Call from a shard (a behaviour or a task).
 * Errors: -EPERM outside the engine (clients wait inside pith_client_send), -EINVAL to is not an
 * actor's ref or fn NULL, -ENOMEM, -ESHUTDOWN. */
PITH_API int pith_when_room(pith_ref_t to, pith_fn_t fn, void *arg);

/* What pith_on_undelivered calls, on the shard whose task sent the message. */
typedef void (*pith_undelivered_fn_t)(const pith_undelivered_t *notice, void *ctx);
/* Where messages sent by tasks (code that is not a behaviour) come back when they are not
 * delivered: fn(notice, ctx) runs on the shard that sent the message. One handler for the
 * whole engine; NULL restores the default, which counts them (pith_core_stats) and prints at
 * most one line a second per shard on stderr. Set it before starting the engine, or from any
 * thread while it runs (a notice already on its way may still see the old one). */
PITH_API void pith_on_undelivered(pith_undelivered_fn_t fn, void *ctx);

/* Handles the next messages with `behaviour` instead (the current message is finished with
 * the old one). */
PITH_API void pith_become(pith_actor_t *self, pith_behaviour_t behaviour);

/* What pith_ask calls with the reply (valid during the call), or with NULL and the error. */
typedef void (*pith_reply_fn_t)(const pith_msg_t *reply, int err, void *ctx);
/* Asks `to` and waits, without blocking, for one reply: the request carries a request id
 * (msg.req) that the receiver answers with pith_reply. With cb NULL, called from a behaviour,
 * the reply reaches the asking actor as a message whose req is *req_out; if none came within
 * timeout_ns it gets a PITH_MSG_TIMEOUT message with that req instead. With cb, cb(reply, 0,
 * ctx) or cb(NULL, -ETIMEDOUT, ctx) runs on the calling shard (actor or task). A request that
 * is not delivered ends the ask at once with its reason (pith_undelivered_t): cb(NULL, reason,
 * ctx), or a PITH_MSG_UNDELIVERED message whose req is the ask's. A reply after the ask ended
 * is dropped and counted (pith_core_stats). Call from a shard. Threads outside the engine use
 * pith_client_ask.
 * Errors: -EPERM outside the engine, -EINVAL timeout 0 or no cb outside a behaviour, and as
 * pith_send. */
PITH_API int pith_ask(pith_ref_t to, uint32_t type, const void *data, uint32_t len,
                      uint64_t timeout_ns, pith_reply_fn_t cb, void *ctx, uint64_t *req_out);

/* Answers a request (a message with req != 0): from its behaviour, or from a client that
 * received it (pith/client.h). At most one reply counts. A reply from a client to another
 * client's ask that finds the asker gone, or its inbox full, comes back to the replying
 * client as PITH_MSG_UNDELIVERED. Errors: -EINVAL request is not a request, or type is
 * reserved; -ENOMEM; -ESHUTDOWN; -EAGAIN the mesh pushes back, the asking client's inbox from
 * this shard is full, or (from a client) its lane is full. */
PITH_API int pith_reply(const pith_msg_t *request, uint32_t type, const void *data, uint32_t len);

/* Sends the actor a copy of data[0..len) with tag `type` after delay_ns, then every period_ns
 * if period_ns > 0, until cancelled or until the actor ends (its timers end with it). A tick
 * that finds the mailbox full (and its type not dropping the oldest) is skipped and counted
 * (the type's rejected count): the next one comes at its time. From the actor's behaviour or
 * init. Errors: -EINVAL self NULL, type reserved, data NULL with len > 0; -ENOMEM; -ESHUTDOWN. */
PITH_API int pith_actor_timer(pith_actor_t *self, uint64_t delay_ns, uint64_t period_ns,
                              uint32_t type, const void *data, uint32_t len, pith_timer_id_t *id);
/* Errors: -ENOENT not a pending timer of this actor. */
PITH_API int pith_actor_timer_cancel(pith_actor_t *self, pith_timer_id_t id);

/* The actor gets a PITH_MSG_DOWN message when `target` ends (at once, with PITH_EXIT_NOPROC, if
 * it already has). Each call is a monitor of its own: monitoring twice brings two DOWNs. From
 * the actor's behaviour or init. Errors: -EINVAL, -ENOMEM, -ESHUTDOWN, -EAGAIN. */
PITH_API int pith_monitor(pith_actor_t *self, pith_ref_t target);
/* Links the actor and `target` both ways: when either ends with a reason other than
 * PITH_EXIT_NORMAL, the other ends with the same reason, unless it traps exits: then it gets a
 * PITH_MSG_DOWN message with link = 1. A link is one, however often it is made: linking an
 * actor already linked to `target` does nothing. Errors: as pith_monitor. */
PITH_API int pith_link(pith_actor_t *self, pith_ref_t target);
/* With on, the actor traps exits: a linked actor's abnormal end comes as a PITH_MSG_DOWN (link =
 * 1) instead of ending it too. From the actor's behaviour or init. */
PITH_API void pith_trap_exits(pith_actor_t *self, bool on);

/* Undoes one pith_monitor of `target` by the actor. When it returns 0, the behaviour will not
 * see a PITH_MSG_DOWN for that monitor, wherever the target lives and whenever it ends:
 *  - the target still runs: its shard forgets the monitor (across shards the request travels;
 *    a target that ends before it arrives sends its DOWN anyway, and the actor's shard drops
 *    that DOWN when it arrives);
 *  - the target has ended and its DOWN waits in the actor's mailbox: it is taken out (as
 *    Erlang's demonitor with flush does);
 *  - the DOWN was already handled by the behaviour: the monitor had done its work, -ENOENT.
 * Other messages are not touched: what the target sent before it ended still comes.
 * From the actor's behaviour (or init or terminate), on its shard.
 * Errors: -EINVAL self NULL, target not an actor's ref or the actor itself; -ENOENT no such
 * monitor (never made, already undone, or its DOWN handled); -ENOMEM (nothing changed);
 * -ESHUTDOWN the engine is stopping. */
PITH_API int pith_demonitor(pith_actor_t *self, pith_ref_t target);

/* Undoes the link between the actor and `target`, both ways. When it returns 0, the link has no
 * more effect on either: neither's end reaches the other, the actor gets no PITH_MSG_DOWN with
 * link = 1 from `target` (one waiting in its mailbox is taken out, one on its way is dropped on
 * arrival), and an exit signal of `target` already on its way to the actor is dropped too. An
 * exit signal that reached the actor before the call has had its effect (without trapping, the
 * actor has ended then, and runs no more behaviour to call this from).
 * From the actor's behaviour (or init or terminate), on its shard.
 * Errors: -EINVAL self NULL, target not an actor's ref or the actor itself; -ENOENT no such
 * link (never made, already undone, or ended with the target and its DOWN handled); -ENOMEM
 * (nothing changed); -ESHUTDOWN. */
PITH_API int pith_unlink(pith_actor_t *self, pith_ref_t target);

/* Stops the actor with reason PITH_EXIT_NORMAL: messages still in its mailbox are dropped
 * (counted), terminate runs, the ref goes stale. From the actor's own behaviour it takes
 * effect when the behaviour returns. From another shard the request travels the mesh. A
 * supervisor stops in order instead: its children first, then itself (pith_supervisor_spawn).
 * Errors: -ESRCH already stopped (same shard only), -EINVAL not a ref, -ESHUTDOWN, -ENOMEM,
 * -EAGAIN. */
PITH_API int pith_stop(pith_ref_t ref);
/* As pith_stop, with reason PITH_EXIT_KILLED: links propagate it. A supervisor ends at once. */
PITH_API int pith_kill(pith_ref_t ref);

/* ---- registry: names to refs, on every shard ----
 * Each shard keeps a replica; a name's home shard (a hash of it) orders its updates and passes
 * them to every replica, so all shards see the same sequence for a name, shortly after. The
 * last registration of a name wins; an actor's names go when it ends. Names are at most
 * PITH_NAME_MAX bytes. */
#define PITH_NAME_MAX 63
/* Registers `name` for `ref` (replacing what it named). From a shard. Errors: -EINVAL name
 * empty or too long, or ref not a ref; -ENOMEM; -ESHUTDOWN; -EAGAIN the mesh pushes back. */
PITH_API int pith_register(const char *name, pith_ref_t ref);
/* Takes `name` away, whatever it named. From a shard. Errors: as pith_register. */
PITH_API int pith_unregister(const char *name);
/* The calling shard's view: PITH_REF_NONE when the name is unknown (or outside the engine). */
PITH_API pith_ref_t pith_whereis(const char *name);

/* ---- supervisors ---- */
typedef enum pith_strategy {
    PITH_ONE_FOR_ONE = 0,  /* restart the child that failed */
    PITH_ONE_FOR_ALL = 1,  /* stop the others, restart all */
    PITH_REST_FOR_ONE = 2, /* stop and restart the failed child and those after it */
} pith_strategy_t;

/* One child of a supervisor: an actor of `type`, or a supervisor of its own (`sup`), which makes
 * a tree: a nested supervisor restarts its children by its own strategy, and when it gives up
 * (PITH_EXIT_ESCALATED) its parent's strategy treats it as any child that failed, restarting it
 * (and with it its whole subtree, with fresh state) or giving up in turn. */
typedef struct pith_child_spec {
    const pith_actor_type_t *type; /* NULL when sup is set */
    void *arg;                     /* passed to type's init at each start (not used with sup) */
    const char *name;              /* registered at each start when not NULL */
    const struct pith_supervisor_spec *sup; /* the nested supervisor's spec; type NULL */
    /* Where the child runs: on shard `shard` when on_shard is set, else on its supervisor's
     * shard (shard must then be 0). */
    bool on_shard;
    unsigned shard; /* see on_shard */
} pith_child_spec_t;

/* A supervisor: how it restarts, how often it may, and its children, started in order. */
typedef struct pith_supervisor_spec {
    pith_strategy_t strategy; /* which children a failure restarts */
    uint32_t intensity;       /* restarts allowed within period_ns (0: 3; at most 100000) */
    uint64_t period_ns;       /* (0: 5 s) */
    const pith_child_spec_t *children; /* nchildren specs */
    uint32_t nchildren;                /* entries of children */
} pith_supervisor_spec_t;

/* Spawns a supervisor on the calling shard, which starts its children in order and monitors
 * them. The spec is copied whole, nested specs and names included (at most 32 levels of
 * supervisors and 2^24 children in all, a nested spec counted at each place it is used).
 *
 * Starting: a child of the supervisor's shard starts at once; one on another shard is spawned
 * there (its init runs there) and counts as started only when the answer is back, and the
 * children after it wait for that. So pith_supervisor_spawn returns once the children up to
 * the first remote one have started; the others follow.
 *
 * Failures: a child ending with a reason other than PITH_EXIT_NORMAL or PITH_EXIT_SHUTDOWN is
 * restarted by the strategy, with fresh state through init; a child that ends normally is left
 * ended. A restart first stops the children the strategy names, in reverse start order, each
 * one's end awaited before the next is stopped and before anything starts again (a child on a
 * busy shard holds the others up; a nested supervisor's end comes after its whole subtree's),
 * then starts them in order as above. Past `intensity` restarts in `period_ns`, or when a
 * child cannot be started after this call returned (its init fails on another shard, or at a
 * restart), the supervisor stops every child that way and ends with PITH_EXIT_ESCALATED (its
 * own supervisor, or whoever monitors it, decides next).
 *
 * Stopping: pith_stop of a supervisor is orderly: it stops its children as above, nested
 * supervisors in turn theirs, and ends with PITH_EXIT_NORMAL once the whole subtree has ended;
 * until then its ref stays valid. pith_kill, a link's exit signal and the engine's stop end it
 * at once: its children are then stopped without waiting (those of its shard end before it,
 * those of other shards after, in no promised order).
 *
 * Errors: -EINVAL spec or a nested spec invalid (a child with both or neither of type and sup,
 * a shard out of range or set without on_shard, a bad strategy or intensity, too deep or
 * cyclic), and as pith_spawn; a child's init error for a child of this shard started before
 * this returns (then the children already started are stopped). */
PITH_API int pith_supervisor_spawn(const pith_supervisor_spec_t *spec, pith_ref_t *out);
/* Child i's current ref, from the supervisor's shard: its running instance, wherever it runs.
 * PITH_REF_NONE when the supervisor does not count one as running (not started yet, its start
 * still on its way, being stopped, or ended and not restarted), i is out of range, or sup is
 * not a supervisor of this shard. */
PITH_API pith_ref_t pith_supervisor_child(pith_ref_t sup, uint32_t i);

/* Counters of one actor type, summed over the shards. Each shard writes its own; a read is not
 * a snapshot of all of them at once. */
typedef struct pith_actor_type_stats {
    uint64_t spawned;     /* started (init returned 0) */
    uint64_t stopped;     /* ended for any reason */
    uint64_t failed;      /* ended with a reason other than NORMAL or SHUTDOWN */
    uint64_t live;        /* spawned - stopped */
    uint64_t messages;    /* handled by the behaviour */
    uint64_t rejected;    /* refused: mailbox full (REJECT) */
    uint64_t dropped;     /* dropped: mailbox full (DROP_OLDEST), or waiting at stop */
    uint64_t mailbox_max; /* deepest mailbox seen */
    uint64_t mailbox_now; /* messages waiting in the type's mailboxes now */
    uint64_t turns;       /* times an actor of the type was scheduled */
    uint64_t restarts;    /* restarts by a supervisor */
    uint64_t mutes;       /* senders muted by a full mailbox (MUTE_SENDER) */
    /* Time in the behaviour, from one message in 16 on average, the ones a sending thread
     * stamped with their send time at random gaps (timing every one would cost more than
     * many behaviours): samples, and percentiles as the upper edge of a log-scale bucket
     * (4 buckets per power of two, so within 19% above the true value). 0 without samples. */
    uint64_t handler_samples;
    uint64_t handler_p50_ns;  /* see handler_samples */
    uint64_t handler_p99_ns;  /* see handler_samples */
    uint64_t handler_p999_ns; /* see handler_samples */
} pith_actor_type_stats_t;

/* Errors: -EINVAL type or out NULL, -ESHUTDOWN no engine. Any thread. */
PITH_API int pith_actor_type_stats(const pith_actor_type_t *type, pith_actor_type_stats_t *out);

/* Messages for refs that had gone stale, on `shard`. Errors: -EINVAL, -ESHUTDOWN. */
PITH_API int pith_dead_letters(unsigned shard, uint64_t *out);

/* Counters of the actor layer on one shard. */
typedef struct pith_core_stats {
    uint64_t dead_letters; /* messages for actors that had ended */
    uint64_t asks;         /* asks made on this shard */
    uint64_t replies;      /* replies that reached their asker */
    uint64_t late_replies; /* replies after the timeout, dropped */
    uint64_t ask_timeouts; /* asks that got no reply in time */
    uint64_t timer_msgs;   /* messages sent by actor timers */
    /* Notices of undelivered messages made on this shard (pith_undelivered_t), and of those,
     * the ones folded into a summary because they found no room. */
    uint64_t undelivered;
    uint64_t undelivered_folded; /* see undelivered */
    /* Notices for messages this shard's tasks sent: given to the pith_on_undelivered handler,
     * or only counted and printed when there is none. */
    uint64_t undelivered_tasks;
    uint64_t undelivered_unhandled; /* see undelivered_tasks */
} pith_core_stats_t;

/* Errors: -EINVAL shard out of range or out NULL, -ESHUTDOWN no engine. Any thread. */
PITH_API int pith_core_stats(unsigned shard, pith_core_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
