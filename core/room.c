/* pith_when_room: a callback on the caller's shard for when a send to an actor may succeed
 * again. For an actor of another shard the request first waits for the mesh to that shard to
 * take more (pith_when_shard_room), then travels there, waits (if need be) for the mailbox to
 * drain to half, and comes back. */
#include "core.h"

#include <errno.h>

enum { R_REGISTER = 1, R_FIRE = 2 };

struct room_req {
    struct room_req *next; /* the actor's waiters, in core_shard.room */
    pith_fn_t fn;
    void *arg;
    pith_ref_t to;
    unsigned origin; /* the shard fn runs on */
    uint32_t op;
};

/* On the actor's shard: the mailbox has room (or the actor is gone); fn runs on its origin. */
static void fire(struct core_shard *cs, struct room_req *q)
{
    if (q->origin == cs->id) {
        /* A task of its own, not a call from inside whatever drained the mailbox. */
        if (shard_submit_force(cs->id, q->fn, q->arg) != 0)
            q->fn(q->arg); /* out of memory for the queue: now, then */
        pith_free(q);
        return;
    }
    q->op = R_FIRE;
    if (shard_submit_force(q->origin, core_room_task, q) != 0)
        pith_free(q); /* out of memory: the caller hears nothing, as after any ENOMEM */
}

static void room_register(struct core_shard *cs, struct room_req *q)
{
    struct actor *a = core_find(cs, q->to);
    if (a == NULL || a->depth <= a->rec->mailbox_max / 2) {
        fire(cs, q);
        return;
    }
    q->next = map_get(&cs->room, q->to);
    if (map_put(&cs->room, q->to, q) != 0)
        fire(cs, q); /* out of memory to wait: let the caller try (and wait) again */
}

void core_room_task(void *arg)
{
    struct room_req *q = arg;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->closing) {
        pith_free(q);
        return;
    }
    if (q->op == R_REGISTER) {
        room_register(cs, q);
        return;
    }
    q->fn(q->arg);
    pith_free(q);
}

/* On the caller's shard once the mesh to the actor's shard takes more. */
void core_room_send(void *arg)
{
    struct room_req *q = arg;
    /* Forced: one small request per call the caller made. */
    if (shard_submit_force(ref_shard(q->to), core_room_task, q) != 0) {
        q->fn(q->arg);
        pith_free(q);
    }
}

int pith_when_room(pith_ref_t to, pith_fn_t fn, void *arg)
{
    int me = pith_shard_id();
    unsigned n = pith_shard_count();
    if (me < 0)
        return n == 0 ? -ESHUTDOWN : -EPERM;
    if (fn == NULL || ref_gen(to) == 0 || ref_shard(to) >= n)
        return -EINVAL;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ENOMEM;
    if (cs->closing)
        return -ESHUTDOWN;
    struct room_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    *q = (struct room_req){.fn = fn, .arg = arg, .to = to, .origin = cs->id, .op = R_REGISTER};
    if (ref_shard(to) == cs->id) {
        room_register(cs, q);
        return 0;
    }
    int err = pith_when_shard_room(ref_shard(to), core_room_send, q);
    if (err)
        pith_free(q);
    return err;
}

void core_room_fire(struct core_shard *cs, pith_ref_t ref)
{
    struct room_req *q = map_del(&cs->room, ref);
    /* Newest first in the list: give them back oldest first. */
    struct room_req *fifo = NULL;
    while (q != NULL) {
        struct room_req *next = q->next;
        q->next = fifo;
        fifo = q;
        q = next;
    }
    while (fifo != NULL) {
        struct room_req *next = fifo->next;
        fire(cs, fifo);
        fifo = next;
    }
}

void core_room_free(struct core_shard *cs)
{
    for (uint32_t i = 0; i < cs->room.cap; i++) {
        struct room_req *q = cs->room.ents[i].key ? cs->room.ents[i].val : NULL;
        while (q != NULL) {
            struct room_req *next = q->next;
            pith_free(q);
            q = next;
        }
    }
    map_free(&cs->room);
}
