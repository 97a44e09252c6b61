/* The MUTE_SENDER overflow policy. A full mailbox takes a message from an actor and mutes its
 * sender: the sender gets no turn until the receiver has drained to half its bound. The
 * receiver keeps the senders it muted; a sender on another shard is muted and unmuted by a
 * task on its own shard. */
#include "core.h"

#include <errno.h>

struct muted {
    struct muted *next;
    pith_ref_t sender;
};

enum { M_MUTE = 1, M_UNMUTE = 2 };

#define MUTE_HARD_CAP 8

struct mute_req {
    pith_ref_t sender;
    uint32_t op;
};

/* A sender may be muted by several receivers: it is unmuted when the last lets it go. The
 * count lives in core_shard.mutes (sender ref -> count) while it is above 0. */
static void set_muted(struct core_shard *cs, pith_ref_t sender, bool on)
{
    struct actor *a = core_lookup(cs, sender);
    uintptr_t count = (uintptr_t)map_get(&cs->mutes, sender);
    if (a == NULL) {
        if (count != 0)
            map_del(&cs->mutes, sender);
        return;
    }
    if (on) {
        if (map_put(&cs->mutes, sender, (void *)(count + 1)) != 0 && count == 0)
            return; /* out of memory: not muted, which only costs memory bounds */
        a->gen |= A_MUTED;
        return;
    }
    if (count > 1) {
        map_put(&cs->mutes, sender, (void *)(count - 1)); /* replaces: cannot fail */
        return;
    }
    if (count == 1)
        map_del(&cs->mutes, sender);
    a->gen &= ~A_MUTED;
    if (a->head != NULL && !(a->gen & A_SCHEDULED))
        (void)core_schedule(cs, a, sender); /* on failure the next message schedules it */
}

int core_mute_hold(struct core_shard *cs, pith_ref_t ref, bool on)
{
    if (on && core_lookup(cs, ref) != NULL) {
        uintptr_t count = (uintptr_t)map_get(&cs->mutes, ref);
        if (count == 0 && map_put(&cs->mutes, ref, (void *)1) != 0)
            return -ENOMEM;
        if (count == 0) {
            core_lookup(cs, ref)->gen |= A_MUTED;
            return 0;
        }
    }
    set_muted(cs, ref, on);
    return 0;
}

static void tell(struct core_shard *cs, pith_ref_t sender, uint32_t op)
{
    if (ref_shard(sender) == cs->id) {
        set_muted(cs, sender, op == M_MUTE);
        return;
    }
    struct mute_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return;
    q->sender = sender;
    q->op = op;
    /* Forced: a lost unmute would leave the sender muted for good. */
    if (shard_submit_force(ref_shard(sender), core_mute_task, q) != 0)
        pith_free(q);
}

void core_mute_task(void *arg)
{
    struct mute_req *q = arg;
    struct core_shard *cs = core_shard_get();
    if (cs != NULL && !cs->closing)
        set_muted(cs, q->sender, q->op == M_MUTE);
    pith_free(q);
}

int core_mute_full(struct core_shard *cs, struct actor *a, struct amsg *m)
{
    /* Tasks, outside threads and the actor itself cannot be muted. What senders send before
     * their mute reaches them comes in (it is bounded by one turn each, plus what a sender on
     * another shard sends while the mute crosses the mesh); MUTE_HARD_CAP times the bound is a
     * last guard against unbounded growth. */
    if (ref_gen(m->from) == 0 || ref_is_client(m->from) || m->from == m->to ||
        a->depth >= (uint64_t)MUTE_HARD_CAP * a->rec->mailbox_max)
        return -EAGAIN;
    struct muted *head = map_get(&cs->muted, m->to);
    for (struct muted *x = head; x != NULL; x = x->next)
        if (x->sender == m->from)
            return 0; /* already muted: its turn's remaining sends come in */
    struct muted *x = pith_malloc(sizeof(*x));
    if (x == NULL)
        return -EAGAIN;
    x->sender = m->from;
    x->next = head;
    if (map_put(&cs->muted, m->to, x) != 0) {
        pith_free(x);
        return -EAGAIN;
    }
    core_bump(&core_counters(cs, a->rec)->mutes, 1);
    tell(cs, m->from, M_MUTE);
    return 0;
}

void core_mute_drained(struct core_shard *cs, pith_ref_t ref)
{
    struct muted *x = map_del(&cs->muted, ref);
    while (x != NULL) {
        struct muted *next = x->next;
        tell(cs, x->sender, M_UNMUTE);
        pith_free(x);
        x = next;
    }
}

void core_mute_free(struct core_shard *cs)
{
    for (uint32_t i = 0; i < cs->muted.cap; i++) {
        struct muted *x = cs->muted.ents[i].key ? cs->muted.ents[i].val : NULL;
        while (x != NULL) {
            struct muted *next = x->next;
            pith_free(x);
            x = next;
        }
    }
    map_free(&cs->muted);
    map_free(&cs->mutes);
}
