/* Supervisors: an actor type of the library. It starts its children (on its own shard or on
 * others, supervisors among them), monitors them, and restarts them by its strategy when one
 * fails, within a restart intensity; it stops them in reverse start order. How one child is
 * started or stopped, here or through the mesh, is sup_child.c's. */
#include "sup.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_INTENSITY 3
#define DEFAULT_PERIOD_NS (UINT64_C(5) * 1000000000)

/* A child's state as its supervisor counts it. Only RUNNING children have a ref that
 * pith_supervisor_child gives out. */
enum {
    K_IDLE = 0, /* not running */
    K_STARTING, /* its start travels to its shard and back */
    K_RUNNING,
    K_STOPPING, /* asked to stop; its DOWN will say when it has ended */
};

struct kid {
    pith_ref_t ref; /* RUNNING and STOPPING: the instance */
    uint8_t st;
    bool start;   /* to be started (again) */
    bool stop;    /* its instance to be stopped, for a restart */
    bool started; /* started before: the next start is a restart */
};

/* The supervisor drives its children toward what the flags ask, one step at a time: it stops
 * the flagged children from the last to the first, then starts the flagged ones from the first
 * to the last, and waits while any child is STARTING or STOPPING (one at a time: a child's end
 * comes before anything else moves, and each start after the one before it). */
struct sup_state {
    struct sup_spec *blk;
    const pith_supervisor_spec_t *spec;
    uint32_t intensity;
    uint64_t period_ns;
    uint32_t n;
    struct kid *kids;   /* [n] */
    uint64_t *restarts; /* ring of the last `intensity` restart times */
    uint32_t nrestarts; /* restarts recorded, up to intensity */
    uint32_t ring_pos;
    uint32_t busy;     /* children STARTING or STOPPING */
    uint32_t stop_hi;  /* no child from here on has a stop to make */
    uint32_t start_lo; /* no child before this has a start to make */
    bool ending;       /* stopping every child, then ending with end_reason */
    bool in_init;      /* a start that fails fails the spawn */
    int end_reason;
};

static int sup_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg);
static int sup_init(pith_actor_t *self, void *state, void *arg);
static void sup_terminate(pith_actor_t *self, void *state, int reason);

const pith_actor_type_t core_sup_type = {
    .name = "pith.supervisor",
    .behaviour = sup_behaviour,
    .state_size = sizeof(struct sup_state),
    .init = sup_init,
    .terminate = sup_terminate,
};

/* Records a restart now; false when that makes more than `intensity` within the period. */
static bool within_intensity(struct sup_state *s)
{
    uint64_t now = pith_now_ns();
    /* The ring holds the last `intensity` restart times; the oldest is where we write. */
    if (s->nrestarts == s->intensity) {
        uint64_t oldest = s->restarts[s->ring_pos];
        if (now - oldest < s->period_ns)
            return false;
    } else {
        s->nrestarts++;
    }
    s->restarts[s->ring_pos] = now;
    s->ring_pos = (s->ring_pos + 1) % s->intensity;
    return true;
}

static void begin_end(struct sup_state *s, int reason)
{
    if (!s->ending) {
        s->ending = true;
        s->end_reason = reason;
    }
    s->stop_hi = s->n;
}

/* Child i failed: flag what the strategy restarts, or give up past the intensity. */
static void fail(struct sup_state *s, uint32_t i)
{
    if (!within_intensity(s)) {
        begin_end(s, PITH_EXIT_ESCALATED);
        return;
    }
    uint32_t from = i, to = i + 1;
    if (s->spec->strategy == PITH_ONE_FOR_ALL)
        from = 0;
    if (s->spec->strategy != PITH_ONE_FOR_ONE)
        to = s->n;
    for (uint32_t j = from; j < to; j++) {
        s->kids[j].start = true;
        if (j != i && s->kids[j].st != K_IDLE)
            s->kids[j].stop = true;
    }
    if (from < s->start_lo)
        s->start_lo = from;
    if (to > s->stop_hi)
        s->stop_hi = to;
}

static void set_state(struct sup_state *s, struct kid *k, uint8_t st)
{
    bool was_busy = k->st == K_STARTING || k->st == K_STOPPING;
    bool busy = st == K_STARTING || st == K_STOPPING;
    s->busy += (uint32_t)busy - (uint32_t)was_busy;
    k->st = st;
    if (st == K_IDLE)
        k->ref = PITH_REF_NONE;
}

/* Stops child i: one of this shard that is no supervisor ends now; any other is asked to stop
 * (a supervisor stops its own children first) and counted STOPPING until its DOWN. */
static void stop_kid(struct core_shard *cs, struct sup_state *s, uint32_t i)
{
    struct kid *k = &s->kids[i];
    pith_ref_t ref = k->ref;
    k->stop = false;
    if (ref_shard(ref) == cs->id) {
        (void)core_stop_here(cs, ref, PITH_EXIT_NORMAL);
        /* Ended: its DOWN, still to come, names no child any more and is passed over. */
        set_state(s, k, core_lookup(cs, ref) == NULL ? K_IDLE : K_STOPPING);
        return;
    }
    /* Out of memory: it is let go rather than waited for forever. */
    set_state(s, k, core_sup_stop_remote(ref) == 0 ? K_STOPPING : K_IDLE);
}

static int start_kid(pith_actor_t *self, struct core_shard *cs, struct sup_state *s, uint32_t i)
{
    const pith_child_spec_t *c = &s->spec->children[i];
    struct kid *k = &s->kids[i];
    bool restart = k->started;
    unsigned dst = c->on_shard ? c->shard : cs->id;
    int err;
    if (dst != cs->id) {
        err = core_sup_start_remote(dst, self->ref, s->blk, c, i, restart);
        if (err == 0)
            set_state(s, k, K_STARTING);
    } else {
        bool gone; /* never here: a child of this shard that ended sends its DOWN all the same */
        err = core_sup_spawn_here(cs, self->ref, s->blk, c, restart, &k->ref, &gone);
        if (err == 0)
            set_state(s, k, K_RUNNING);
    }
    if (err == 0) {
        k->start = false;
        k->started = true;
    }
    return err;
}

/* One step after another until the supervisor must wait. 0: go on; otherwise the reason to end
 * with (in init, a start's error). */
static int sweep(pith_actor_t *self, struct sup_state *s)
{
    struct core_shard *cs = core_self;
    while (s->busy == 0) {
        if (s->stop_hi > 0) {
            struct kid *k = &s->kids[s->stop_hi - 1];
            if (k->st == K_RUNNING && (k->stop || s->ending)) {
                stop_kid(cs, s, s->stop_hi - 1);
            } else {
                k->stop = false;
                s->stop_hi--;
            }
            continue;
        }
        if (s->ending) {
            if (s->end_reason != PITH_EXIT_NORMAL)
                return s->end_reason;
            (void)pith_stop(self->ref); /* ends when this behaviour returns */
            return 0;
        }
        if (s->start_lo == s->n)
            return 0;
        struct kid *k = &s->kids[s->start_lo];
        if (k->start && k->st == K_IDLE) {
            int err = start_kid(self, cs, s, s->start_lo);
            if (err && s->in_init)
                return err;
            if (err) /* a child that cannot start: give up */
                begin_end(s, PITH_EXIT_ESCALATED);
        } else {
            k->start = false;
            s->start_lo++;
        }
    }
    return 0;
}

static int on_down(pith_actor_t *self, struct sup_state *s, const pith_down_t *d)
{
    uint32_t i = 0;
    while (i < s->n && !(s->kids[i].ref == d->ref &&
                         (s->kids[i].st == K_RUNNING || s->kids[i].st == K_STOPPING)))
        i++;
    if (i == s->n)
        return 0; /* a child stopped at once, or an older life of one */
    struct kid *k = &s->kids[i];
    bool failed = k->st == K_RUNNING && !k->stop && !s->ending && d->reason != PITH_EXIT_NORMAL &&
                  d->reason != PITH_EXIT_SHUTDOWN;
    set_state(s, k, K_IDLE);
    if (failed)
        fail(s, i);
    return sweep(self, s);
}

static int on_started(pith_actor_t *self, struct sup_state *s, const struct sup_started *r)
{
    if (r->idx >= s->n || s->kids[r->idx].st != K_STARTING)
        return 0;
    struct kid *k = &s->kids[r->idx];
    if (r->err != 0) {
        set_state(s, k, K_IDLE);
        begin_end(s, PITH_EXIT_ESCALATED); /* a child that cannot start: give up */
    } else if (r->gone) {
        /* It ended in its init: as a DOWN with PITH_EXIT_NOPROC would say. */
        set_state(s, k, K_IDLE);
        if (!k->stop && !s->ending)
            fail(s, r->idx);
    } else {
        set_state(s, k, K_RUNNING);
        k->ref = r->ref;
    }
    return sweep(self, s);
}

static int sup_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct sup_state *s = state;
    if (msg->type == PITH_MSG_DOWN && msg->len == sizeof(pith_down_t)) {
        pith_down_t d;
        memcpy(&d, msg->data, sizeof(d));
        return on_down(self, s, &d);
    }
    if (msg->type == SUP_MSG_STARTED && msg->len == sizeof(struct sup_started)) {
        struct sup_started r;
        memcpy(&r, msg->data, sizeof(r));
        return on_started(self, s, &r);
    }
    if (msg->type == SUP_MSG_STOP) {
        begin_end(s, PITH_EXIT_NORMAL);
        return sweep(self, s);
    }
    return 0;
}

static void free_state(struct sup_state *s)
{
    free(s->kids);
    free(s->restarts);
    core_sup_spec_drop(s->blk);
    s->kids = NULL;
    s->restarts = NULL;
    s->blk = NULL;
}

static int sup_init(pith_actor_t *self, void *state, void *arg)
{
    const struct sup_arg *a = arg;
    struct sup_state *s = state;
    s->spec = a->spec;
    s->intensity = a->spec->intensity ? a->spec->intensity : DEFAULT_INTENSITY;
    s->period_ns = a->spec->period_ns ? a->spec->period_ns : DEFAULT_PERIOD_NS;
    s->n = a->spec->nchildren;
    s->kids = calloc(s->n ? s->n : 1, sizeof(*s->kids));
    s->restarts = calloc(s->intensity, sizeof(*s->restarts));
    if (s->kids == NULL || s->restarts == NULL) {
        free_state(s);
        return -ENOMEM;
    }
    s->blk = a->blk;
    core_sup_spec_hold(s->blk);
    for (uint32_t i = 0; i < s->n; i++)
        s->kids[i].start = true;
    s->in_init = true;
    int err = sweep(self, s);
    s->in_init = false;
    if (err) {
        /* Every child started so far runs here: a remote start is the last step of init. */
        struct core_shard *cs = core_self;
        for (uint32_t i = s->n; i-- > 0;)
            if (s->kids[i].st == K_RUNNING)
                (void)core_end_now(cs, s->kids[i].ref, PITH_EXIT_NORMAL);
        free_state(s);
    }
    return err;
}

/* Ended at once (pith_kill, a link, an escalation or the end of an orderly stop, the engine's
 * stop): what still runs is stopped without waiting, the last started first. Children being
 * started are stopped when their answer finds this supervisor gone. */
static void sup_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)reason;
    struct sup_state *s = state;
    struct core_shard *cs = core_self;
    for (uint32_t i = s->n; s->kids != NULL && i-- > 0;) {
        pith_ref_t ref = s->kids[i].ref;
        if (ref == PITH_REF_NONE || cs->closing)
            continue; /* at the engine's stop every shard ends its own actors */
        if (ref_shard(ref) == cs->id)
            (void)core_end_now(cs, ref, PITH_EXIT_NORMAL);
        else
            (void)core_sup_stop_remote(ref);
    }
    free_state(s);
}

int core_sup_stop(struct core_shard *cs, struct actor *a, pith_ref_t ref)
{
    if (cs->closing)
        return -ESHUTDOWN;
    struct amsg *m = core_msg_make_for(-1, ref, PITH_REF_NONE, SUP_MSG_STOP, NULL, 0);
    if (m == NULL)
        return -ENOMEM;
    m->len |= AMSG_ADMIT; /* past the mailbox's bound: a stop is never refused */
    int err = core_enqueue(cs, a, m);
    if (err)
        core_msg_free(m);
    return err;
}

int pith_supervisor_spawn(const pith_supervisor_spec_t *spec, pith_ref_t *out)
{
    if (out != NULL)
        *out = PITH_REF_NONE;
    struct sup_arg arg;
    int err = core_sup_spec_copy(spec, &arg.blk, &arg.spec);
    if (err)
        return err;
    err = pith_spawn(&core_sup_type, &arg, out);
    core_sup_spec_drop(arg.blk); /* the supervisor holds its own */
    return err;
}

pith_ref_t pith_supervisor_child(pith_ref_t sup, uint32_t i)
{
    if (pith_shard_id() < 0 || (unsigned)pith_shard_id() != ref_shard(sup))
        return PITH_REF_NONE;
    struct core_shard *cs = core_shard_get();
    struct actor *a = cs != NULL ? core_lookup(cs, sup) : NULL;
    if (a == NULL || a->rec->type != &core_sup_type)
        return PITH_REF_NONE;
    struct sup_state *s = a->state;
    return i < s->n && s->kids[i].st == K_RUNNING ? s->kids[i].ref : PITH_REF_NONE;
}
