/* Supervisors' children: the spec a tree is started from, copied once and shared, and starting
 * or stopping one child on the supervisor's shard or, through the mesh, on another. What to
 * start or stop when, and in which order, is supervisor.c's business. */
#include "sup.h"

#include <errno.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#define SPEC_DEPTH_MAX    32         /* levels of nested supervisors */
#define SPEC_CHILDREN_MAX (1u << 24) /* children of the whole tree, counted as copied */
#define MAX_INTENSITY     100000     /* restart times a supervisor keeps: 8 bytes each */

struct sup_spec {
    _Atomic uint32_t refs;
    /* Then the tree's nodes (root first), their children, and the names. */
    pith_supervisor_spec_t nodes[];
};

struct spec_size {
    size_t nodes, children, names;
};

/* Checks one node and what it nests, adding up what the copy needs. A spec that nests itself
 * fails as too deep; one that nests the same spec many times is copied as many times, within
 * SPEC_CHILDREN_MAX, which also bounds the time this takes. */
static int spec_measure(const pith_supervisor_spec_t *spec, unsigned depth, unsigned nshards,
                        struct spec_size *z)
{
    if (depth >= SPEC_DEPTH_MAX || (spec->nchildren > 0 && spec->children == NULL) ||
        (unsigned)spec->strategy > PITH_REST_FOR_ONE || spec->intensity > MAX_INTENSITY ||
        spec->nchildren > SPEC_CHILDREN_MAX - z->children)
        return -EINVAL;
    z->nodes++;
    z->children += spec->nchildren;
    for (uint32_t i = 0; i < spec->nchildren; i++) {
        const pith_child_spec_t *c = &spec->children[i];
        if ((c->type == NULL) == (c->sup == NULL) ||
            (c->type != NULL && c->type->behaviour == NULL))
            return -EINVAL;
        if (c->on_shard ? c->shard >= nshards : c->shard != 0)
            return -EINVAL;
        if (c->name != NULL) {
            size_t len = strnlen(c->name, PITH_NAME_MAX + 1);
            if (len == 0 || len > PITH_NAME_MAX)
                return -EINVAL;
            z->names += len + 1;
        }
        int err = c->sup != NULL ? spec_measure(c->sup, depth + 1, nshards, z) : 0;
        if (err)
            return err;
    }
    return 0;
}

struct spec_cursor {
    pith_supervisor_spec_t *node;
    pith_child_spec_t *child;
    char *name;
};

static const pith_supervisor_spec_t *spec_put(const pith_supervisor_spec_t *src,
                                              struct spec_cursor *at)
{
    pith_supervisor_spec_t *dst = at->node++;
    pith_child_spec_t *kids = at->child;
    at->child += src->nchildren;
    *dst = *src;
    dst->children = src->nchildren > 0 ? kids : NULL;
    for (uint32_t i = 0; i < src->nchildren; i++) {
        kids[i] = src->children[i];
        if (kids[i].name != NULL) {
            size_t len = strlen(kids[i].name) + 1;
            memcpy(at->name, kids[i].name, len);
            kids[i].name = at->name;
            at->name += len;
        }
        if (kids[i].sup != NULL)
            kids[i].sup = spec_put(kids[i].sup, at);
    }
    return dst;
}

int core_sup_spec_copy(const pith_supervisor_spec_t *spec, struct sup_spec **out,
                       const pith_supervisor_spec_t **root)
{
    struct spec_size z = {0};
    int err = spec == NULL ? -EINVAL : spec_measure(spec, 0, pith_shard_count(), &z);
    if (err)
        return err;
    _Static_assert(alignof(pith_child_spec_t) <= alignof(pith_supervisor_spec_t) &&
                       sizeof(pith_supervisor_spec_t) % alignof(pith_child_spec_t) == 0,
                   "children follow the nodes aligned");
    size_t bytes = sizeof(struct sup_spec) + z.nodes * sizeof(pith_supervisor_spec_t) +
                   z.children * sizeof(pith_child_spec_t) + z.names;
    /* malloc, not a shard's heap: the last reference may go on any shard, or at stop. */
    struct sup_spec *b = malloc(bytes);
    if (b == NULL)
        return -ENOMEM;
    atomic_init(&b->refs, 1);
    struct spec_cursor at = {.node = b->nodes};
    at.child = (pith_child_spec_t *)(b->nodes + z.nodes);
    at.name = (char *)(at.child + z.children);
    *root = spec_put(spec, &at);
    *out = b;
    return 0;
}

void core_sup_spec_hold(struct sup_spec *b)
{
    /* Relaxed: the caller holds a reference, so the block stays; the one it takes travels on
     * with a task or an actor's init, which order it for whoever uses it next. */
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

void core_sup_spec_drop(struct sup_spec *b)
{
    /* acq_rel: each drop releases its holder's reads of the block, and the last one acquires
     * them all before it frees it (an acquire fence after a release decrement would do the
     * same, but ThreadSanitizer does not model fences and gcc refuses them under it). */
    if (b != NULL && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        free(b);
}

/* ---- one child, here ---- */

int core_sup_spawn_here(struct core_shard *cs, pith_ref_t sup, struct sup_spec *blk,
                        const pith_child_spec_t *c, bool restart, pith_ref_t *out, bool *gone)
{
    pith_ref_t ref;
    *out = PITH_REF_NONE;
    *gone = false;
    int err;
    if (c->sup != NULL) {
        struct sup_arg arg = {.blk = blk, .spec = c->sup};
        err = pith_spawn(&core_sup_type, &arg, &ref);
    } else {
        err = pith_spawn(c->type, c->arg, &ref);
    }
    if (err)
        return err;
    struct actor *a = core_lookup(cs, ref);
    if (restart && a != NULL)
        core_bump(&core_counters(cs, a->rec)->restarts, 1);
    if (a == NULL && ref_shard(sup) != cs->id) {
        *gone = true;
        *out = ref;
        return 0;
    }
    err = core_watch_add(cs, ref, sup);
    if (err == 0 && a != NULL && c->name != NULL)
        err = pith_register(c->name, ref);
    if (err) {
        (void)core_end_now(cs, ref, PITH_EXIT_NORMAL);
        return err;
    }
    *out = ref;
    return 0;
}

/* ---- one child, on another shard ---- */

/* A start: made on the supervisor's shard, run on the child's, and back with the answer. */
struct start_req {
    pith_ref_t sup;
    struct sup_spec *blk; /* a reference of its own */
    const pith_child_spec_t *child;
    bool restart;
    struct sup_started r;
};

static void start_free(struct start_req *q)
{
    core_sup_spec_drop(q->blk);
    pith_free(q);
}

static void stop_task(void *arg)
{
    struct core_shard *cs = core_shard_get();
    if (cs != NULL && !cs->closing)
        (void)core_stop_here(cs, (pith_ref_t)(uintptr_t)arg, PITH_EXIT_NORMAL);
}

int core_sup_stop_remote(pith_ref_t ref)
{
    return shard_submit_force(ref_shard(ref), stop_task, (void *)(uintptr_t)ref);
}

/* Back on the supervisor's shard: the answer joins its mailbox, behind what came before it and
 * ahead of the child's DOWN, which left the child's shard after it. */
static void started_task(void *arg)
{
    struct start_req *q = arg;
    struct core_shard *cs = core_shard_get();
    if (cs != NULL && !cs->closing) {
        struct actor *a = core_lookup(cs, q->sup);
        struct amsg *m = a == NULL ? NULL
                                   : core_msg_make_for(-1, q->sup, PITH_REF_NONE, SUP_MSG_STARTED,
                                                       &q->r, sizeof(q->r));
        if (m != NULL)
            m->len |= AMSG_ADMIT; /* the supervisor asked for it */
        if (m == NULL || core_enqueue(cs, a, m) != 0) {
            if (m != NULL)
                core_msg_free(m);
            /* The supervisor has ended (or cannot hear of it): the child would be nobody's. */
            if (q->r.err == 0 && !q->r.gone)
                (void)core_sup_stop_remote(q->r.ref);
        }
    }
    start_free(q);
}

static void start_task(void *arg)
{
    struct start_req *q = arg;
    struct core_shard *cs = core_shard_get();
    if (cs != NULL && cs->closing) {
        start_free(q); /* the engine stops: the supervisor ends with it */
        return;
    }
    q->r.err = cs == NULL ? -ENOMEM
                          : core_sup_spawn_here(cs, q->sup, q->blk, q->child, q->restart, &q->r.ref,
                                                &q->r.gone);
    /* Forced: the answer to a start that was itself bounded (one per supervisor at a time). */
    if (shard_submit_force(ref_shard(q->sup), started_task, q) != 0) {
        if (q->r.err == 0 && !q->r.gone)
            (void)core_end_now(cs, q->r.ref, PITH_EXIT_NORMAL);
        start_free(q);
    }
}

int core_sup_start_remote(unsigned dst, pith_ref_t sup, struct sup_spec *blk,
                          const pith_child_spec_t *c, uint32_t idx, bool restart)
{
    struct start_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    *q = (struct start_req){
        .sup = sup, .blk = blk, .child = c, .restart = restart, .r = {.idx = idx}};
    core_sup_spec_hold(blk);
    int err = shard_submit_force(dst, start_task, q);
    if (err)
        start_free(q);
    return err;
}

bool core_sup_release(pith_fn_t fn, void *arg)
{
    if (fn == start_task || fn == started_task) {
        start_free(arg);
        return true;
    }
    return fn == stop_task;
}
