/* What virtual actors (vactor.c) ask of persistence (persist/), which sits above core/: the
 * persist layer fills vactor_persist from a constructor, and core/ calls through it for types
 * with a persist part. Private to libpith. */
#ifndef PITH_CORE_VPERSIST_H
#define PITH_CORE_VPERSIST_H

#include <stdbool.h>
#include <stdint.h>

#include <pith/vactor.h>

struct vpersist_hooks {
    /* The shard a persistent key's activation lives on (its journal's), given the number of
     * shards; out of range: the directory shard. Runs on the key's directory shard. */
    unsigned (*home)(const pith_vtype_t *vt, const unsigned char *key, uint32_t klen,
                     unsigned shards);
    /* Before on_activate, on the activation's shard: rebuilds the state from the journal. 0;
     * a negative errno (the activation fails with it); or PITH_VACT_LATER: it finishes with
     * vactor_persist_ready. */
    int (*activate)(pith_actor_t *self, void *state, const pith_vtype_t *vt, const void *key,
                    uint32_t klen);
    /* When an activation of a persistent type ends (after on_deactivate, before terminate);
     * active: it had begun (else it failed to). */
    void (*ended)(pith_actor_t *self, void *state, const pith_vtype_t *vt, int why, bool active);
};

extern const struct vpersist_hooks *vactor_persist;

/* A recovery that answered PITH_VACT_LATER is done: err 0 runs on_activate (and the activation
 * begins unless that answers PITH_VACT_LATER too), else the activation fails with err. */
void vactor_persist_ready(pith_ref_t act, int err);

/* The directory's jump consistent hash: h over n shards (meta.c places keys with it too). */
unsigned vactor_jump(uint64_t h, unsigned n);

/* The i-th registered virtual type (0, 1, ...), NULL past the last. Any thread. */
const pith_vtype_t *vactor_type_at(uint32_t i);

/* The type of self's activation (NULL: not a virtual actor's, or a stateless worker's). */
const pith_vtype_t *vactor_type_of(const pith_actor_t *self);

/* What persist/ calls after each message a behaviour handled (set while it has events of the
 * message to write; cleared by the call). Per shard thread. */
extern __thread void (*core_msg_done)(void);

#endif
