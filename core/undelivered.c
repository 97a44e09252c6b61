/* Telling a sender that its message was not delivered (the rule in pith/actor.h). A notice goes
 * where the sender can hear it: an ask's request ends its ask, an actor gets a
 * PITH_MSG_UNDELIVERED message, a client a message in its inbox, a task's shard calls the
 * pith_on_undelivered handler. Notices come in past a mailbox's bound up to twice the bound;
 * past that they are folded into a count that one summary carries once there is room. */
#include <pith/error.h>

#include "clients.h"
#include "core.h"

#include <errno.h>
#include <stdio.h>

/* The engine-wide handler for tasks' messages. Set by any thread, read by the shards: a pair
 * of relaxed atomics, so a reader may see a new function with the old context for an instant,
 * which the header allows ("a notice on its way may still see the old one"). */
static _Atomic(pith_undelivered_fn_t) task_handler;
static _Atomic(void *) task_handler_ctx;

void pith_on_undelivered(pith_undelivered_fn_t fn, void *ctx)
{
    atomic_store_explicit(&task_handler_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&task_handler, fn, memory_order_relaxed);
}

/* A notice travelling to the shard that can act on it. */
struct notice {
    pith_undelivered_t u;
    pith_ref_t from; /* the sender: an actor or a task origin of the destination shard */
};

#define NOTICE_SLACK 2 /* notices come in up to this many times the mailbox bound */

void core_notice_actor(struct core_shard *cs, struct actor *a, pith_ref_t ref,
                       const pith_undelivered_t *u)
{
    if (a->depth < (uint64_t)NOTICE_SLACK * a->rec->mailbox_max) {
        struct amsg *m =
            core_msg_make_for(-1, ref, PITH_REF_NONE, PITH_MSG_UNDELIVERED, u, sizeof(*u));
        if (m != NULL) {
            m->req = u->req;
            m->len |= AMSG_ADMIT;
            if (core_enqueue(cs, a, m) == 0)
                return;
            core_msg_free(m);
        }
    }
    uintptr_t had = (uintptr_t)map_get(&cs->folded, ref);
    if (map_put(&cs->folded, ref, (void *)(had + (uintptr_t)u->count)) != 0) {
        core_bump(&cs->dead_letters, 1); /* out of memory even for a count */
        return;
    }
    core_bump(&cs->undelivered_folded, 1);
}

void core_folded_flush(struct core_shard *cs, struct actor *a, pith_ref_t ref)
{
    if (a->depth >= a->rec->mailbox_max)
        return;
    uintptr_t count = (uintptr_t)map_del(&cs->folded, ref);
    if (count == 0)
        return;
    pith_undelivered_t u = {.reason = -ENOBUFS, .count = count};
    core_notice_actor(cs, a, ref, &u);
}

/* A notice for a message a task of this shard sent. */
static void notice_task(struct core_shard *cs, const pith_undelivered_t *u)
{
    core_bump(&cs->undelivered_tasks, 1);
    pith_undelivered_fn_t fn = atomic_load_explicit(&task_handler, memory_order_relaxed);
    if (fn != NULL) {
        fn(u, atomic_load_explicit(&task_handler_ctx, memory_order_relaxed));
        return;
    }
    core_bump(&cs->undelivered_unhandled, 1);
    uint64_t now = pith_now_ns();
    if (cs->unhandled_report_ns == 0 || now - cs->unhandled_report_ns >= 1000000000u) {
        cs->unhandled_report_ns = now;
        fprintf(stderr,
                "pith: shard %u: a message a task sent (tag %u) was not delivered: %s "
                "(pith_on_undelivered sets a handler; pith_core_stats counts them)\n",
                cs->id, u->type, pith_strerror(u->reason));
    }
}

/* On the shard that can act on it: the ask it ends, or the sending actor or task here. */
static void notice_here(struct core_shard *cs, const pith_undelivered_t *u, pith_ref_t from)
{
    if (u->req != 0 && !req_is_client(u->req) && req_shard(u->req) == cs->id &&
        core_ask_fail(cs, u))
        return;
    if (ref_is_task(from)) {
        notice_task(cs, u);
        return;
    }
    struct actor *a = core_lookup(cs, from);
    if (a != NULL)
        core_notice_actor(cs, a, from, u);
    /* else the sender has ended too: nobody is left to tell */
}

void core_undelivered_task(void *arg)
{
    struct notice *nt = arg;
    struct core_shard *cs = core_shard_get();
    if (cs != NULL && !cs->closing)
        notice_here(cs, &nt->u, nt->from);
    pith_free(nt);
}

void core_undelivered(struct core_shard *cs, const struct amsg *m, int reason)
{
    /* Engine messages are not reported back; at stop the report counts what is released. */
    if (m->type >= PITH_MSG_RESERVED || cs->closing)
        return;
    pith_ref_t from = m->from;
    pith_undelivered_t u = {
        .to = m->to, .req = m->req, .type = m->type, .reason = reason, .count = 1};
    /* Where the notice goes: a client (whose ask, if it was one, ends with it), an ask's
     * shard, or the sender's shard. */
    unsigned dst;
    if (ref_is_client(from)) {
        core_bump(&cs->undelivered, 1);
        client_notice(cs, from, &u);
        return;
    }
    if (m->req != 0 && req_shard(m->req) < pith_shard_count())
        dst = req_shard(m->req);
    else if (ref_gen(from) != 0 || ref_is_task(from))
        dst = ref_shard(from);
    else
        return; /* no sender to tell */
    core_bump(&cs->undelivered, 1);
    if (dst == cs->id) {
        notice_here(cs, &u, from);
        return;
    }
    struct notice *nt = pith_malloc(sizeof(*nt));
    if (nt == NULL)
        return;
    nt->u = u;
    nt->from = from;
    /* Forced past the mesh's backlog: each notice stands for a message that was itself bounded
     * on its way here, and whose memory is freed as the notice leaves. */
    if (shard_submit_force(dst, core_undelivered_task, nt) != 0)
        pith_free(nt);
}
