/* How the layers above the shards (core/, net/) plug into them without the shards knowing it.
 * Private to libpith; each layer adds its hooks once, from a constructor, before any engine
 * starts. */
#ifndef PITH_SHARD_HOOKS_H
#define PITH_SHARD_HOOKS_H

#include <stdbool.h>

#include <pith/engine.h>

struct shard_hooks {
    /* On each shard's thread when it has left its loop for good, before the ring's file
     * operations are drained: what keeps operations on the ring (sockets) ends them here and
     * reaps their completions itself. */
    void (*ring_exit)(unsigned shard);
    /* On each shard's thread when it has left its loop for good, before its memory closes:
     * what it owns must end here. Work it queues then never runs. */
    void (*shard_exit)(unsigned shard);
    /* On the stopping thread once every shard is joined and no reader is left: free what the
     * upper layer kept for this engine. */
    void (*engine_gone)(void);
    /* A task that will never run, at stop: true when the hook knew fn and released arg. */
    bool (*release)(pith_fn_t fn, void *arg);
    /* On the stopping thread once threads outside are refused (shards still run): wake what
     * outside threads wait on, so that they return -ESHUTDOWN. */
    void (*stopping)(void);
    /* From the stall detector's thread: what runs on `shard` when the task it sees is the
     * layer's (an actor's turn): the label (an actor type's name) and the function to name
     * (its behaviour) through *fn. NULL: not the layer's. */
    const char *(*describe)(unsigned shard, pith_anyfn_t *fn);
    /* From the stall detector's thread, once per stall it counts on `shard`, while the task
     * still runs: the layer whose task it is counts it (an actor type's stalls). */
    void (*stalled)(unsigned shard, pith_anyfn_t fn);
    /* On the shard, after the run step of a loop iteration in which shard_flush_ask was called,
     * before the ring is entered: what gathered during the step (a journal's group of records)
     * goes out with the iteration's submissions. */
    void (*flush)(unsigned shard);
    /* On each shard's thread once it is set up, before its loop's first iteration (tasks it
     * submits to itself run in that iteration). */
    void (*start)(unsigned shard);
    /* On each shard's thread when it has left its loop for good, before ring_exit: actors
     * still live, and what is appended to the journal now is written and synced by its
     * ring_exit (within drain_ns). */
    void (*leaving)(unsigned shard);
};

/* Adds a layer's hooks (at most 8 layers); members left NULL are skipped. Each event calls
 * the layers in the order they were added; `release` stops at the first that knew the task. */
void shard_hooks_add(const struct shard_hooks *h);
void shard_hooks_ring_exit(unsigned shard);
void shard_hooks_shard_exit(unsigned shard);
void shard_hooks_engine_gone(void);
bool shard_hooks_release(pith_fn_t fn, void *arg);
void shard_hooks_stopping(void);
const char *shard_hooks_describe(unsigned shard, pith_anyfn_t *fn);
void shard_hooks_stalled(unsigned shard, pith_anyfn_t fn);
void shard_hooks_flush(unsigned shard);
void shard_hooks_start(unsigned shard);
void shard_hooks_leaving(unsigned shard);

/* On a shard: the flush hooks run in this loop iteration (or the next, when asked after its
 * run step). */
void shard_flush_ask(void);

/* Sets what pith_last_error() says on the calling thread. */
void set_last_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* On a shard: tells the stall detector that fn runs now (until the task that called this
 * returns). */
void shard_note_running(pith_anyfn_t fn);
/* On a shard: the word shard_note_running writes (a relaxed store there does the same), for a
 * caller that notes at every message. */
_Atomic(pith_anyfn_t) *shard_running_slot(void);

/* Off the shards, while the engine runs: returns once every shard has finished the loop
 * iteration it was in when this was called (it began another, or it sleeps). What a shard
 * found through shared state before then, and uses only within an iteration, is no longer in
 * use after, provided the caller changed that state with a seq_cst store and the shard reads
 * it with a seq_cst load (the Dekker in loop.c). A shard stuck in a long task holds it up. */
void shard_quiesce(void);

/* Whether the running engine has begun to stop (or none runs). Any thread. */
bool shard_engine_stopping(void);

/* pith_submit from a shard without the backpressure bounds (local_queue_max, backlog_batches):
 * for work the upper layer must not lose and whose amount it bounds itself (an actor's one
 * queued turn, a mute or unmute, a registry update). Errors: -EPERM not on a shard, -EINVAL,
 * -ENOMEM. */
int shard_submit_force(unsigned shard, pith_fn_t fn, void *arg);

/* On a shard: the NUMA node of `shard`'s CPU, or -1 (not pinned, out of range, unknown). */
int shard_numa_node(unsigned shard);

/* Readers of per-shard state from any thread: between enter (true) and leave, the engine's
 * memory stays; enter fails once the engine stops. On shard threads both cost nothing. */
bool shard_reader_enter(void);
void shard_reader_leave(void);

/* The calling shard's table of ring operations (io/fop.h), or NULL off the shards. The
 * operations report on this shard. */
struct fops *shard_fops(void);

/* Whether the calling shard's engine has begun to stop: new operations are then refused. */
bool shard_stopping(void);

/* The calling shard's ring and the running engine's resolved configuration; NULL off the
 * shards. */
struct io_ring *shard_io(void);
const pith_config_t *shard_config(void);
/* On a shard: the number of shards of its engine (known before pith_shard_count is, at start). */
unsigned shard_count_here(void);

/* How long the stalls the detector saw on `shard` lasted, as the watchdog measured them (to
 * within its sampling period, a quarter of stall_ns and at least 1 ms): a log histogram of
 * HIST_BUCKETS (hist.h) and the sum in ns. A stall still running is not in it. Any thread while
 * the engine runs; -EINVAL shard out of range, -ESHUTDOWN. */
int shard_stall_hist(unsigned shard, uint64_t *hist, uint64_t *sum_ns);

#endif
