/* Monitors and links. A watched actor keeps its watchers in a list on its own shard; when it
 * ends, each monitor gets a PITH_MSG_DOWN message and each linked actor an exit signal, which
 * ends it with the same reason unless it traps exits (then it gets PITH_MSG_DOWN, link = 1). */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct watch {
    struct watch *next;
    pith_ref_t watcher;
    bool link;
};

enum { W_MONITOR = 1, W_LINK = 2, W_EXIT = 3 };

/* Travels between shards: a registration at the target's shard, or an exit signal at the
 * watcher's. */
struct watch_req {
    pith_ref_t target, watcher;
    int32_t reason;
    uint32_t op;
};

static void send_down(pith_ref_t watcher, pith_ref_t target, int reason, bool link)
{
    pith_down_t d = {.ref = target, .reason = reason, .link = link};
    struct amsg *m = core_msg_make(watcher, target, PITH_MSG_DOWN, &d, sizeof(d));
    if (m == NULL)
        return;
    m->len |= AMSG_ADMIT;         /* the watcher asked for it: past its mailbox's bound */
    (void)core_send_msg(m, true); /* a watcher that has ended: nothing to tell */
}

/* An exit signal from `target` (ended with `reason`) for a linked actor of this shard. */
static void link_exit_here(struct core_shard *cs, pith_ref_t watcher, pith_ref_t target, int reason)
{
    struct actor *a = core_lookup(cs, watcher);
    if (a == NULL || reason == PITH_EXIT_NORMAL)
        return;
    if (a->gen & A_TRAP) {
        send_down(watcher, target, reason, true);
    } else if (cs->ending > 0) {
        /* Inside another actor's end: queue it, so that a long chain of links ends in a loop
         * (drained in actor_end) rather than a recursion as deep as the chain. */
        if (cs->nexits == cs->exits_cap) {
            uint32_t cap = cs->exits_cap ? cs->exits_cap * 2 : 16;
            struct core_exit *e = realloc(cs->exits, cap * sizeof(*e));
            if (e == NULL) {
                core_stop_here(cs, watcher, reason); /* out of memory: recurse after all */
                return;
            }
            cs->exits = e;
            cs->exits_cap = cap;
        }
        cs->exits[cs->nexits++] = (struct core_exit){watcher, reason};
    } else {
        core_stop_here(cs, watcher, reason);
    }
}

static void signal_watcher(struct core_shard *cs, pith_ref_t watcher, pith_ref_t target, int reason,
                           bool link)
{
    if (!link) {
        send_down(watcher, target, reason, false);
        return;
    }
    if (ref_shard(watcher) == cs->id) {
        link_exit_here(cs, watcher, target, reason);
        return;
    }
    if (reason == PITH_EXIT_NORMAL)
        return;
    struct watch_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return;
    *q = (struct watch_req){.target = target, .watcher = watcher, .reason = reason, .op = W_EXIT};
    if (shard_submit_force(ref_shard(watcher), core_watch_task, q) != 0)
        pith_free(q);
}

/* Adds a watcher to an actor of this shard, or signals at once when it has ended. */
static int watch_here(struct core_shard *cs, pith_ref_t target, pith_ref_t watcher, bool link)
{
    struct actor *a = core_lookup(cs, target);
    if (a == NULL) {
        signal_watcher(cs, watcher, target, PITH_EXIT_NOPROC, link);
        return 0;
    }
    struct watch *w = pith_malloc(sizeof(*w));
    if (w == NULL)
        return -ENOMEM;
    w->watcher = watcher;
    w->link = link;
    w->next = map_get(&cs->watchers, target);
    if (map_put(&cs->watchers, target, w) != 0) {
        pith_free(w);
        return -ENOMEM;
    }
    return 0;
}

void core_watch_task(void *arg)
{
    struct watch_req *q = arg;
    struct core_shard *cs = core_shard_get();
    if (cs != NULL && !cs->closing) {
        if (q->op == W_EXIT)
            link_exit_here(cs, q->watcher, q->target, q->reason);
        else
            (void)watch_here(cs, q->target, q->watcher, q->op == W_LINK);
    }
    pith_free(q);
}

/* The checks of pith_monitor and pith_link; *out: the calling shard's actors. */
static int watch_check(pith_actor_t *self, pith_ref_t target, struct core_shard **out)
{
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    if (self == NULL || ref_gen(target) == 0 || ref_shard(target) >= n || target == self->ref)
        return -EINVAL;
    struct core_shard *cs = *out = core_shard_get();
    if (cs == NULL)
        return -ENOMEM;
    return cs->closing ? -ESHUTDOWN : 0;
}

/* Registers self as a watcher of target, on target's shard. */
static int watch(struct core_shard *cs, pith_actor_t *self, pith_ref_t target, bool link)
{
    if (ref_shard(target) == cs->id)
        return watch_here(cs, target, self->ref, link);
    struct watch_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    *q =
        (struct watch_req){.target = target, .watcher = self->ref, .op = link ? W_LINK : W_MONITOR};
    int err = pith_submit(ref_shard(target), core_watch_task, q);
    if (err)
        pith_free(q);
    return err;
}

int pith_monitor(pith_actor_t *self, pith_ref_t target)
{
    struct core_shard *cs;
    int err = watch_check(self, target, &cs);
    return err ? err : watch(cs, self, target, false);
}

/* Takes back our side of a link that could not be made. */
static void unwatch(struct core_shard *cs, pith_ref_t target, pith_ref_t watcher)
{
    struct watch *head = map_get(&cs->watchers, target), *prev = NULL;
    for (struct watch *w = head; w != NULL; prev = w, w = w->next) {
        if (w->watcher != watcher || !w->link)
            continue;
        if (prev != NULL)
            prev->next = w->next;
        else if (w->next != NULL)
            map_put(&cs->watchers, target, w->next);
        else
            map_del(&cs->watchers, target);
        pith_free(w);
        return;
    }
}

int pith_link(pith_actor_t *self, pith_ref_t target)
{
    struct core_shard *cs;
    int err = watch_check(self, target, &cs);
    if (err)
        return err;
    /* Our side first: if the target has ended, its side signals us at once. */
    err = watch_here(cs, self->ref, target, true);
    if (err == 0 && (err = watch(cs, self, target, true)) != 0)
        unwatch(cs, self->ref, target);
    return err;
}

void pith_trap_exits(pith_actor_t *self, bool on)
{
    if (self == NULL)
        return;
    if (on)
        self->a->gen |= A_TRAP;
    else
        self->a->gen &= ~A_TRAP;
}

void core_watchers_end(struct core_shard *cs, pith_ref_t ref, int reason)
{
    struct watch *w = map_del(&cs->watchers, ref);
    while (w != NULL) {
        struct watch *next = w->next;
        signal_watcher(cs, w->watcher, ref, reason, w->link);
        pith_free(w);
        w = next;
    }
}

void core_watchers_free(struct core_shard *cs)
{
    for (uint32_t i = 0; i < cs->watchers.cap; i++) {
        struct watch *w = cs->watchers.ents[i].key ? cs->watchers.ents[i].val : NULL;
        while (w != NULL) {
            struct watch *next = w->next;
            pith_free(w);
            w = next;
        }
    }
    map_free(&cs->watchers);
}
