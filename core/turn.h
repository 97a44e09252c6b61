/* A turn's steps, inline where a message is run at once: in actor.c's turns, and in the paths
 * that hand a client's message straight to an idle actor (ingress.c, and vactor.c's virtual
 * one, the market's per-tick path), where a call to them was a tenth of the engine's
 * instructions per message. */
#ifndef PITH_CORE_TURN_H
#define PITH_CORE_TURN_H

#include "core.h"

/* actor.c: what a turn's end calls when it is not the common case. */
void core_turn_task(void *arg); /* a queued turn: the stall detector names it */
void core_mailbox_drained(struct core_shard *cs, struct actor *a, pith_ref_t ref);
void core_turn_ended(struct core_shard *cs, struct actor *a, uint32_t slot, int reason);
/* persist/: set by a behaviour whose events go to the journal once the message is handled. */
extern __thread void (*core_msg_done)(void);

/* One message through the behaviour. *timed is the ticks at which the caller began timing
 * this message (one in HIST_SAMPLE on average: a stamped one, or one handled as it arrives that
 * the stamp gap picked), or 0 not to time it; a timed one's handler time is counted and *timed
 * gets the ticks at its end. */
static inline __attribute__((always_inline)) int
core_behave(struct core_shard *cs, struct actor *a, struct pith_actor *self, const pith_msg_t *msg,
            struct type_counters *c, uint64_t *timed, pith_behaviour_t own)
{
    pith_behaviour_t b = LIKELY(!(a->gen & A_BECAME))
                             ? own
                             : (pith_behaviour_t)(uintptr_t)map_get(&cs->became, self->ref);
    atomic_store_explicit(&cs->running_fn, (pith_anyfn_t)b, memory_order_relaxed);
    int status = b(self, a->state, msg);
    if (UNLIKELY(*timed != 0)) {
        uint64_t end = ticks_now();
        uint64_t took = end > *timed ? ticks_ns(end - *timed) : 0;
        core_bump(&c->hist[hist_bucket(took)], 1);
        core_bump(&c->hist_sum, took);
        *timed = end;
    }
    if (UNLIKELY(core_msg_done != NULL)) {
        /* The message's events (persist/) go to the journal together. */
        void (*fn)(void) = core_msg_done;
        core_msg_done = NULL;
        fn();
    }
    return status;
}

/* What follows a turn that handled n messages (from_mailbox of them from the mailbox) and ended
 * with `status`: waiters on the mailbox, the actor's end, or its next turn. c: core_counters of
 * the actor's type. */
static inline __attribute__((always_inline)) void
core_turn_end(struct core_shard *cs, struct actor *a, struct type_counters *c, pith_ref_t ref,
              int status, uint32_t n, uint32_t from_mailbox)
{
    core_current = PITH_REF_NONE;
    atomic_store_explicit(&cs->running, NULL, memory_order_relaxed);
    a->gen &= ~A_RUNNING;
    core_bump(&c->messages, n);
    if (from_mailbox)
        core_bump(&c->depth_now, (uint64_t)0 - from_mailbox);
    if (UNLIKELY(core_waiters(cs)))
        core_mailbox_drained(cs, a, ref);
    if (status == 0 && (a->gen & A_STOP))
        status = (int)(intptr_t)map_get(&cs->stop_reasons, ref); /* 0 when not there: normal */
    if (status != 0 || (a->gen & A_STOP)) {
        core_turn_ended(cs, a, ref_slot(ref), status);
        return;
    }
    a->gen &= ~A_SCHEDULED;
    if (a->head != NULL && !(a->gen & A_MUTED) && core_schedule(cs, a, ref) != 0) {
        /* Out of memory for the local queue: the mail waits for the next message to schedule
         * the actor again. */
    }
}

/* Runs an idle actor's behaviour now on msg, a message that never entered its mailbox (a
 * client's, still in its lane): as a turn of one, ended as any turn. false: the actor is not
 * idle (mail waits, or a turn is queued or running, or it is muted or stopping): queue msg.
 * c: core_counters of its type, which the caller has at hand. b: the behaviour to call when
 * the actor has not become another, NULL for its type's (a virtual actor's caller names the
 * application's, skipping the type's wrapper). */
static inline __attribute__((always_inline)) bool
core_run_now(struct core_shard *cs, struct actor *a, struct type_counters *c, pith_ref_t ref,
             const pith_msg_t *msg, pith_behaviour_t b)
{
    if (a->head != NULL || (a->gen & (A_SCHEDULED | A_RUNNING | A_MUTED | A_STOP)))
        return false;
    struct type_rec *r = a->rec;
    struct pith_actor self = {a, ref};
    /* Scheduled while it runs, so that a send to itself queues no turn of its own before
     * turn_end has looked at the mailbox. */
    a->gen |= A_RUNNING | A_SCHEDULED;
    core_bump(&c->turns, 1);
    core_current = ref;
    atomic_store_explicit(&cs->running, r, memory_order_release); /* see core_describe */
    /* The stall detector names this as a turn (core_describe). */
    atomic_store_explicit(cs->note, (pith_anyfn_t)core_turn_task, memory_order_relaxed);
    /* Handled as it arrives: no time in the mailbox; timed as a stamped message would be,
     * one in HIST_SAMPLE on average. */
    uint64_t t = 0;
    if (UNLIKELY(--core_stamp_gap == 0)) {
        core_stamp_gap = core_stamp_next_gap();
        core_bump(&c->mbox[0], 1);
        t = ticks_now();
    }
    uint64_t t0 = t;
    int status = core_behave(cs, a, &self, msg, c, &t, b != NULL ? b : r->type->behaviour);
    if (UNLIKELY(t0 != 0)) {
        /* The actor may have ended: its type's counters stay. */
        struct sla_shard *ss = atomic_load_explicit(&c->sla, memory_order_relaxed);
        if (ss != NULL)
            core_sla_note(ss, ref, t > t0 ? ticks_ns(t - t0) : 0);
    }
    core_turn_end(cs, a, c, ref, status, 1, 0);
    return true;
}

#endif
