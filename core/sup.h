/* Private to core/: supervisors. supervisor.c is the supervisor itself (an actor type of the
 * library, its strategy and its children's states); sup_child.c keeps the copied spec and
 * starts and stops one child on the supervisor's shard or on another. */
#ifndef PITH_CORE_SUP_H
#define PITH_CORE_SUP_H

#include "core.h"

/* A supervisor spec copied whole (nested specs, children, names) into one block, immutable once
 * made. Every supervisor of the tree and every start on its way holds a reference: the tree's
 * supervisors live on several shards, and a start may outlive the supervisor that sent it. */
struct sup_spec;

/* Checks spec (and what it nests) and copies it; *root is spec's copy in *out, which holds one
 * reference, the caller's. Errors: -EINVAL (see pith_supervisor_spawn), -ENOMEM. Any shard. */
int core_sup_spec_copy(const pith_supervisor_spec_t *spec, struct sup_spec **out,
                       const pith_supervisor_spec_t **root);
void core_sup_spec_hold(struct sup_spec *b);
void core_sup_spec_drop(struct sup_spec *b); /* the last reference frees it */

/* What a supervisor's init gets: its own node of the tree's block. */
struct sup_arg {
    struct sup_spec *blk;
    const pith_supervisor_spec_t *spec;
};

/* Engine messages a supervisor gets (tags no application can send). */
#define SUP_MSG_STARTED (PITH_MSG_RESERVED + 0x40u) /* payload: struct sup_started */
#define SUP_MSG_STOP    (PITH_MSG_RESERVED + 0x41u) /* pith_stop: stop in order, then end */

/* The answer to a start on another shard. */
struct sup_started {
    pith_ref_t ref; /* the child, when err is 0 */
    int32_t err;    /* its spawn's error */
    uint32_t idx;   /* which child */
    bool gone;      /* it ended during its init: no DOWN will come for it */
};

/* Spawns child c on this shard for the supervisor `sup` (of any shard): the actor or nested
 * supervisor, sup's monitor of it, its name; counted as a restart when `restart`. *out: its
 * ref. A child that ended during its own init is watched all the same when sup lives here (its
 * DOWN, PITH_EXIT_NOPROC, then waits in sup's mailbox); for a sup of another shard it is left
 * unwatched and *gone says so, since a DOWN would overtake the answer. Errors: the spawn's,
 * pith_register's, -ENOMEM (then no child runs). */
int core_sup_spawn_here(struct core_shard *cs, pith_ref_t sup, struct sup_spec *blk,
                        const pith_child_spec_t *c, bool restart, pith_ref_t *out, bool *gone);

/* Spawns child c (index idx) on shard dst for `sup`, a supervisor of this shard: the answer
 * comes back to sup's mailbox as SUP_MSG_STARTED, ahead of any DOWN of the child (the mesh
 * keeps the pair's order). If sup has ended by then, the child is stopped. Errors: -ENOMEM. */
int core_sup_start_remote(unsigned dst, pith_ref_t sup, struct sup_spec *blk,
                          const pith_child_spec_t *c, uint32_t idx, bool restart);

/* Has ref (an actor of another shard) stopped with PITH_EXIT_NORMAL, in order when it is a
 * supervisor. Forced past the mesh's backlog: one per child, and none may be lost. Errors:
 * -ENOMEM. */
int core_sup_stop_remote(pith_ref_t ref);

#endif
