/* How the layer above the shards (core/) plugs into them without the shards knowing it. Private
 * to libpith; core/ sets the hooks once, from a constructor, before any engine starts. */
#ifndef PITH_SHARD_HOOKS_H
#define PITH_SHARD_HOOKS_H

#include <stdbool.h>

#include <pith/engine.h>

struct shard_hooks {
    /* On each shard's thread when it has left its loop for good, before its memory closes:
     * what it owns must end here. Work it queues then never runs. */
    void (*shard_exit)(unsigned shard);
    /* On the stopping thread once every shard is joined and no reader is left: free what the
     * upper layer kept for this engine. */
    void (*engine_gone)(void);
    /* A task that will never run, at stop: true when the hook knew fn and released arg. */
    bool (*release)(pith_fn_t fn, void *arg);
};

void shard_hooks_set(const struct shard_hooks *h);

/* pith_submit from a shard without the backpressure bounds (local_queue_max, backlog_batches):
 * for work the upper layer must not lose and whose amount it bounds itself (an actor's one
 * queued turn, a mute or unmute, a registry update). Errors: -EPERM not on a shard, -EINVAL,
 * -ENOMEM. */
int shard_submit_force(unsigned shard, pith_fn_t fn, void *arg);

/* Readers of per-shard state from any thread: between enter (true) and leave, the engine's
 * memory stays; enter fails once the engine stops. On shard threads both cost nothing. */
bool shard_reader_enter(void);
void shard_reader_leave(void);

/* The calling shard's table of ring operations (io/fop.h), or NULL off the shards. The
 * operations report on this shard. */
struct fops *shard_fops(void);

/* Whether the calling shard's engine has begun to stop: new operations are then refused. */
bool shard_stopping(void);

#endif
