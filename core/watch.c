/* Monitors and links, and undoing them. A watched actor keeps its watchers in a list on its own
 * shard; when it ends, each monitor gets a PITH_MSG_DOWN message and each linked actor an exit
 * signal, which ends it with the same reason unless it traps exits (then it gets PITH_MSG_DOWN,
 * link = 1). The watcher's shard keeps what its actors' monitors and undone watches still owe
 * (struct watching), so that pith_demonitor and pith_unlink answer at once and a DOWN or exit
 * signal already on its way when they were called is dropped where it arrives. */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* On the target's shard: one watcher of it, in core_shard.watchers. A link has one of these on
 * each side: the other actor's entry in each one's list. */
struct watch {
    struct watch *next;
    pith_ref_t watcher;
    bool link;
};

/* On the watcher's shard, in core_shard.watching (watcher ref -> list): its monitors of one
 * target whose DOWN has not arrived (pith_monitor adds one, the arrival or pith_demonitor takes
 * it), and the DOWNs and exit signals of undone watches that may still arrive, to drop. Gone
 * when all three are 0. */
struct watching {
    struct watching *next;
    pith_ref_t target;
    uint32_t monitors;
    uint32_t mon_drops;
    uint32_t link_drops;
};

enum {
    W_MONITOR = 1, /* at the target's shard: add a monitor */
    W_LINK,        /* at the target's shard: add a link's side */
    W_EXIT,        /* at the watcher's shard: a linked target ended (any reason) */
    W_DOWN,        /* at the watcher's shard: a monitored target ended */
    W_UNMONITOR,   /* at the target's shard: forget one monitor; answered with W_UNMONITORED */
    W_UNLINK,      /* at the target's shard: forget the link's side; answered with W_UNLINKED */
    W_UNMONITORED, /* at the watcher's shard; reason: 1 found (no DOWN will come), 0 not */
    W_UNLINKED,
};

/* Travels between the shards. */
struct watch_req {
    pith_ref_t target, watcher;
    int32_t reason;
    uint32_t op;
};

/* ---- the watcher's side ---- */

static struct watching *watching_find(const struct core_shard *cs, pith_ref_t watcher,
                                      pith_ref_t target)
{
    struct watching *r = cs->watching.len ? map_get(&cs->watching, watcher) : NULL;
    while (r != NULL && r->target != target)
        r = r->next;
    return r;
}

/* The record of watcher's watches of target, made when there is none. NULL: out of memory. */
static struct watching *watching_get(struct core_shard *cs, pith_ref_t watcher, pith_ref_t target)
{
    struct watching *r = watching_find(cs, watcher, target);
    if (r != NULL)
        return r;
    r = pith_malloc(sizeof(*r));
    if (r == NULL)
        return NULL;
    *r = (struct watching){.target = target, .next = map_get(&cs->watching, watcher)};
    if (map_put(&cs->watching, watcher, r) != 0) {
        pith_free(r);
        return NULL;
    }
    return r;
}

/* Frees r when it owes nothing more. */
static void watching_tidy(struct core_shard *cs, pith_ref_t watcher, struct watching *r)
{
    if (r == NULL || r->monitors != 0 || r->mon_drops != 0 || r->link_drops != 0)
        return;
    struct watching *head = map_get(&cs->watching, watcher), *prev = NULL;
    for (struct watching *x = head; x != NULL; prev = x, x = x->next) {
        if (x != r)
            continue;
        if (prev != NULL)
            prev->next = x->next;
        else if (x->next != NULL)
            map_put(&cs->watching, watcher, x->next); /* replaces: cannot fail */
        else
            map_del(&cs->watching, watcher);
        pith_free(x);
        return;
    }
}

/* Takes one drop of an undone watch: true when this DOWN or exit signal is to be dropped. */
static bool take_drop(struct core_shard *cs, pith_ref_t watcher, pith_ref_t target, bool link)
{
    struct watching *r = watching_find(cs, watcher, target);
    uint32_t *drops = r == NULL ? NULL : link ? &r->link_drops : &r->mon_drops;
    if (drops == NULL || *drops == 0)
        return false;
    (*drops)--;
    watching_tidy(cs, watcher, r);
    return true;
}

static void send_down(pith_ref_t watcher, pith_ref_t target, int reason, bool link)
{
    pith_down_t d = {.ref = target, .reason = reason, .link = link};
    struct amsg *m = core_msg_make(watcher, target, PITH_MSG_DOWN, &d, sizeof(d));
    if (m == NULL)
        return;
    m->len |= AMSG_ADMIT;         /* the watcher asked for it: past its mailbox's bound */
    (void)core_send_msg(m, true); /* a watcher that has ended: nothing to tell */
}

/* A monitor's DOWN, on the watcher's shard. */
static void down_here(struct core_shard *cs, pith_ref_t watcher, pith_ref_t target, int reason)
{
    if (take_drop(cs, watcher, target, false))
        return;
    struct watching *r = watching_find(cs, watcher, target);
    if (r != NULL && r->monitors > 0) {
        r->monitors--;
        watching_tidy(cs, watcher, r);
    }
    send_down(watcher, target, reason, false);
}

static bool unwatch(struct core_shard *cs, pith_ref_t target, pith_ref_t watcher, bool link);

/* An exit signal from `target` (ended with `reason`) for a linked actor of this shard. */
static void link_exit_here(struct core_shard *cs, pith_ref_t watcher, pith_ref_t target, int reason)
{
    if (take_drop(cs, watcher, target, true))
        return;
    struct actor *a = core_lookup(cs, watcher);
    if (a == NULL)
        return;
    /* The link ends with the target: the watcher's side of it goes. */
    (void)unwatch(cs, watcher, target, true);
    if (reason == PITH_EXIT_NORMAL)
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

/* ---- the target's side ---- */

/* Sends a request to `shard`. force: past the mesh's backlog, for every request but a new
 * monitor or link: each of those answers or follows one that was itself bounded, or tells of an
 * end, and a lost one would leave a watcher's counts wrong for good. Errors: as pith_submit. */
static int req_send(unsigned shard, struct watch_req r, bool force)
{
    struct watch_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    *q = r;
    int err = force ? shard_submit_force(shard, core_watch_task, q)
                    : pith_submit(shard, core_watch_task, q);
    if (err)
        pith_free(q);
    return err;
}

static void signal_watcher(struct core_shard *cs, pith_ref_t watcher, pith_ref_t target, int reason,
                           bool link)
{
    if (ref_shard(watcher) == cs->id) {
        if (link)
            link_exit_here(cs, watcher, target, reason);
        else
            down_here(cs, watcher, target, reason);
        return;
    }
    /* At the engine's stop the other shards run no more tasks: it would only be released. */
    if (cs->closing)
        return;
    /* Across shards an exit signal goes even for a normal end: the watcher's shard drops its
     * side of the link, and counts it against an unlink on its way. */
    struct watch_req r = {
        .target = target, .watcher = watcher, .reason = reason, .op = link ? W_EXIT : W_DOWN};
    (void)req_send(ref_shard(watcher), r, true); /* out of memory: nobody left to tell */
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

int core_watch_add(struct core_shard *cs, pith_ref_t target, pith_ref_t watcher)
{
    return watch_here(cs, target, watcher, false);
}

static struct watch *watch_find(const struct core_shard *cs, pith_ref_t target, pith_ref_t watcher,
                                bool link)
{
    struct watch *w = cs->watchers.len ? map_get(&cs->watchers, target) : NULL;
    while (w != NULL && (w->watcher != watcher || w->link != link))
        w = w->next;
    return w;
}

/* Takes one of watcher's entries (of that kind) off target's list; false when there is none. */
static bool unwatch(struct core_shard *cs, pith_ref_t target, pith_ref_t watcher, bool link)
{
    struct watch *head = map_get(&cs->watchers, target), *prev = NULL;
    for (struct watch *w = head; w != NULL; prev = w, w = w->next) {
        if (w->watcher != watcher || w->link != link)
            continue;
        if (prev != NULL)
            prev->next = w->next;
        else if (w->next != NULL)
            map_put(&cs->watchers, target, w->next); /* replaces: cannot fail */
        else
            map_del(&cs->watchers, target);
        pith_free(w);
        return true;
    }
    return false;
}

void core_watch_task(void *arg)
{
    struct watch_req *q = arg;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->closing) {
        pith_free(q);
        return;
    }
    switch (q->op) {
    case W_MONITOR:
    case W_LINK:
        (void)watch_here(cs, q->target, q->watcher, q->op == W_LINK);
        break;
    case W_EXIT:
        link_exit_here(cs, q->watcher, q->target, q->reason);
        break;
    case W_DOWN:
        down_here(cs, q->watcher, q->target, q->reason);
        break;
    case W_UNMONITOR:
    case W_UNLINK:
        /* The answer follows, on the same mesh pair, any DOWN or exit signal the target's end
         * sent before: when it says "not found", that one has arrived and taken the drop. */
        q->reason = unwatch(cs, q->target, q->watcher, q->op == W_UNLINK);
        q->op = q->op == W_UNLINK ? W_UNLINKED : W_UNMONITORED;
        (void)req_send(ref_shard(q->watcher), *q, true);
        break;
    case W_UNMONITORED:
    case W_UNLINKED:
        if (q->reason)
            (void)take_drop(cs, q->watcher, q->target, q->op == W_UNLINKED);
        break;
    default:
        break;
    }
    pith_free(q);
}

/* ---- the API ---- */

/* The checks of the calls below; *out: the calling shard's actors. */
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
    struct watch_req r = {.target = target, .watcher = self->ref, .op = link ? W_LINK : W_MONITOR};
    return req_send(ref_shard(target), r, false);
}

int pith_monitor(pith_actor_t *self, pith_ref_t target)
{
    struct core_shard *cs;
    int err = watch_check(self, target, &cs);
    if (err)
        return err;
    /* Counted first: a target that has ended answers at once. */
    struct watching *r = watching_get(cs, self->ref, target);
    if (r == NULL)
        return -ENOMEM;
    r->monitors++;
    err = watch(cs, self, target, false);
    if (err) {
        r->monitors--;
        watching_tidy(cs, self->ref, r);
    }
    return err;
}

int pith_link(pith_actor_t *self, pith_ref_t target)
{
    struct core_shard *cs;
    int err = watch_check(self, target, &cs);
    if (err)
        return err;
    if (watch_find(cs, self->ref, target, true) != NULL)
        return 0; /* linked already */
    /* Our side first: if the target has ended, its side signals us at once. */
    err = watch_here(cs, self->ref, target, true);
    if (err == 0 && (err = watch(cs, self, target, true)) != 0)
        unwatch(cs, self->ref, target, true);
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

/* Takes the first DOWN of target (of that kind) out of the actor's mailbox; false: none. */
static bool flush_down(struct core_shard *cs, struct actor *a, pith_ref_t target, bool link)
{
    for (struct amsg *m = a->head, *prev = NULL; m != NULL; prev = m, m = m->next) {
        pith_down_t d;
        if (m->type != PITH_MSG_DOWN || (m->len & (AMSG_BUF | AMSG_LEN_MASK)) != sizeof(d))
            continue;
        memcpy(&d, m + 1, sizeof(d));
        if (d.ref != target || (d.link != 0) != link)
            continue;
        core_mailbox_take(cs, a, prev, m);
        core_msg_free(m);
        return true;
    }
    return false;
}

int pith_demonitor(pith_actor_t *self, pith_ref_t target)
{
    struct core_shard *cs;
    int err = watch_check(self, target, &cs);
    if (err)
        return err;
    struct watching *r = watching_find(cs, self->ref, target);
    if (r == NULL || r->monitors == 0)
        return flush_down(cs, self->a, target, false) ? 0 : -ENOENT;
    if (ref_shard(target) == cs->id) {
        /* Here a DOWN is in the mailbox as soon as the target ends: none is, so it runs. */
        (void)unwatch(cs, target, self->ref, false);
    } else {
        struct watch_req q = {.target = target, .watcher = self->ref, .op = W_UNMONITOR};
        if ((err = req_send(ref_shard(target), q, true)) != 0)
            return err;
        r->mon_drops++;
    }
    r->monitors--;
    watching_tidy(cs, self->ref, r);
    return 0;
}

int pith_unlink(pith_actor_t *self, pith_ref_t target)
{
    struct core_shard *cs;
    int err = watch_check(self, target, &cs);
    if (err)
        return err;
    if (watch_find(cs, self->ref, target, true) == NULL)
        return flush_down(cs, self->a, target, true) ? 0 : -ENOENT;
    if (ref_shard(target) == cs->id) {
        (void)unwatch(cs, target, self->ref, true);
    } else {
        struct watching *r = watching_get(cs, self->ref, target);
        if (r == NULL)
            return -ENOMEM;
        struct watch_req q = {.target = target, .watcher = self->ref, .op = W_UNLINK};
        if ((err = req_send(ref_shard(target), q, true)) != 0) {
            watching_tidy(cs, self->ref, r);
            return err;
        }
        r->link_drops++;
    }
    (void)unwatch(cs, self->ref, target, true);
    return 0;
}

/* ---- ends ---- */

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

void core_watching_end(struct core_shard *cs, pith_ref_t ref)
{
    struct watching *r = map_del(&cs->watching, ref);
    while (r != NULL) {
        struct watching *next = r->next;
        pith_free(r);
        r = next;
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
    for (uint32_t i = 0; i < cs->watching.cap; i++) {
        struct watching *r = cs->watching.ents[i].key ? cs->watching.ents[i].val : NULL;
        while (r != NULL) {
            struct watching *next = r->next;
            pith_free(r);
            r = next;
        }
    }
    map_free(&cs->watching);
}
