/* Supervisors: an actor type of the library. It starts its children on its own shard, monitors
 * them, and restarts them by its strategy when one fails, within a restart intensity. */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_INTENSITY 3
#define DEFAULT_PERIOD_NS (UINT64_C(5) * 1000000000)
#define MAX_INTENSITY     100000 /* restart times kept: 8 bytes each */

struct sup_state {
    pith_strategy_t strategy;
    uint32_t intensity;
    uint64_t period_ns;
    uint32_t n;
    pith_child_spec_t *spec; /* [n], names copied */
    pith_ref_t *refs;        /* [n]; PITH_REF_NONE: not running */
    uint64_t *restarts;      /* ring of the last `intensity` restart times */
    uint32_t nrestarts;      /* restarts recorded, up to intensity */
    uint32_t ring_pos;
};

static int sup_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg);
static int sup_init(pith_actor_t *self, void *state, void *arg);
static void sup_terminate(pith_actor_t *self, void *state, int reason);

static const pith_actor_type_t sup_type = {
    .name = "pith.supervisor",
    .behaviour = sup_behaviour,
    .state_size = sizeof(struct sup_state),
    .init = sup_init,
    .terminate = sup_terminate,
};

static int start_child(pith_actor_t *self, struct sup_state *s, uint32_t i)
{
    pith_ref_t ref;
    int err = pith_spawn(s->spec[i].type, s->spec[i].arg, &ref);
    if (err)
        return err;
    err = pith_monitor(self, ref);
    if (err == 0 && s->spec[i].name != NULL)
        err = pith_register(s->spec[i].name, ref);
    if (err) {
        pith_stop(ref);
        return err;
    }
    s->refs[i] = ref;
    return 0;
}

/* Stops child i, if it runs, without treating its end as a failure. */
static void stop_child(struct sup_state *s, uint32_t i)
{
    pith_ref_t ref = s->refs[i];
    s->refs[i] = PITH_REF_NONE; /* its DOWN then names no child and is ignored */
    if (ref != PITH_REF_NONE)
        (void)pith_stop(ref);
}

static void free_state(struct sup_state *s)
{
    for (uint32_t i = 0; s->spec != NULL && i < s->n; i++)
        free((void *)s->spec[i].name);
    free(s->spec);
    free(s->refs);
    free(s->restarts);
    s->spec = NULL;
    s->refs = NULL;
    s->restarts = NULL;
}

static int sup_init(pith_actor_t *self, void *state, void *arg)
{
    const pith_supervisor_spec_t *spec = arg;
    struct sup_state *s = state;
    s->strategy = spec->strategy;
    s->intensity = spec->intensity ? spec->intensity : DEFAULT_INTENSITY;
    if (s->intensity > MAX_INTENSITY)
        return -EINVAL;
    s->period_ns = spec->period_ns ? spec->period_ns : DEFAULT_PERIOD_NS;
    s->n = spec->nchildren;
    s->spec = calloc(s->n ? s->n : 1, sizeof(*s->spec));
    s->refs = calloc(s->n ? s->n : 1, sizeof(*s->refs));
    s->restarts = calloc(s->intensity + 1, sizeof(*s->restarts));
    if (s->spec == NULL || s->refs == NULL || s->restarts == NULL) {
        free_state(s);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->n; i++) {
        s->spec[i] = spec->children[i];
        if (spec->children[i].name != NULL &&
            (s->spec[i].name = strdup(spec->children[i].name)) == NULL) {
            free_state(s);
            return -ENOMEM;
        }
    }
    for (uint32_t i = 0; i < s->n; i++) {
        int err = start_child(self, s, i);
        if (err) {
            while (i-- > 0)
                stop_child(s, i);
            free_state(s);
            return err;
        }
    }
    return 0;
}

static void sup_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)reason;
    struct sup_state *s = state;
    for (uint32_t i = s->n; s->refs != NULL && i-- > 0;)
        stop_child(s, i); /* in reverse start order */
    free_state(s);
}

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

static int restart(pith_actor_t *self, struct sup_state *s, uint32_t i)
{
    int err = start_child(self, s, i);
    if (err == 0) {
        struct core_shard *cs = core_shard_get();
        struct actor *a = cs != NULL ? core_lookup(cs, s->refs[i]) : NULL;
        if (a != NULL)
            core_bump(&core_counters(cs, a->rec)->restarts, 1);
    }
    return err;
}

static int sup_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct sup_state *s = state;
    if (msg->type != PITH_MSG_DOWN || msg->len != sizeof(pith_down_t))
        return 0;
    pith_down_t d;
    memcpy(&d, msg->data, sizeof(d));
    uint32_t i = 0;
    while (i < s->n && s->refs[i] != d.ref)
        i++;
    if (i == s->n)
        return 0; /* a child we stopped, or an older life of one */
    s->refs[i] = PITH_REF_NONE;
    if (d.reason == PITH_EXIT_NORMAL || d.reason == PITH_EXIT_SHUTDOWN)
        return 0; /* ended by itself or by stop: not restarted */
    if (!within_intensity(s))
        return PITH_EXIT_ESCALATED; /* terminate stops the rest */
    uint32_t from = i, to = i + 1;
    if (s->strategy == PITH_ONE_FOR_ALL) {
        from = 0;
        to = s->n;
    } else if (s->strategy == PITH_REST_FOR_ONE) {
        to = s->n;
    }
    for (uint32_t j = to; j-- > from;)
        if (j != i)
            stop_child(s, j);
    for (uint32_t j = from; j < to; j++)
        if (restart(self, s, j) != 0)
            return PITH_EXIT_ESCALATED;
    return 0;
}

int pith_supervisor_spawn(const pith_supervisor_spec_t *spec, pith_ref_t *out)
{
    if (out != NULL)
        *out = PITH_REF_NONE;
    if (spec == NULL || (spec->nchildren > 0 && spec->children == NULL) ||
        (unsigned)spec->strategy > PITH_REST_FOR_ONE)
        return -EINVAL;
    for (uint32_t i = 0; i < spec->nchildren; i++)
        if (spec->children[i].type == NULL || spec->children[i].type->behaviour == NULL)
            return -EINVAL;
    return pith_spawn(&sup_type, (void *)spec, out);
}

pith_ref_t pith_supervisor_child(pith_ref_t sup, uint32_t i)
{
    if (pith_shard_id() < 0 || (unsigned)pith_shard_id() != ref_shard(sup))
        return PITH_REF_NONE;
    struct core_shard *cs = core_shard_get();
    struct actor *a = cs != NULL ? core_lookup(cs, sup) : NULL;
    if (a == NULL || a->rec->type != &sup_type)
        return PITH_REF_NONE;
    struct sup_state *s = a->state;
    return i < s->n ? s->refs[i] : PITH_REF_NONE;
}
