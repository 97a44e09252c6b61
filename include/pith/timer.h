/* Per-shard timers: one-shot and periodic, nanosecond API, cancellable. Timers belong to the
 * shard that created them and fire on it; the structure holds millions per shard. */
#ifndef PITH_TIMER_H
#define PITH_TIMER_H

#include <stdint.h>

#include <pith/engine.h>

#include <pith/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Names a timer for pith_timer_cancel. 0 is never a valid id. An id carries its shard, its slot
 * and a 28-bit arming sequence, so cancelling a timer that already fired is detected, not
 * misapplied to a newer one, until 2^28 more timers have been armed on that shard. */
typedef uint64_t pith_timer_id_t;

/* Arms a timer on the calling shard: fn(arg) runs on this shard once delay_ns has passed, and
 * then every period_ns if period_ns > 0, until cancelled. Timers due at the same instant fire in
 * the order they were armed. *id (if not NULL) receives the timer's id.
 * Errors: -EPERM not called on a shard; -EINVAL fn NULL; -ESHUTDOWN the engine is stopping;
 * -ENOMEM. */
PITH_API int pith_timer_add(uint64_t delay_ns, uint64_t period_ns, pith_fn_t fn, void *arg,
                            pith_timer_id_t *id);

/* Cancels a timer of the calling shard; a periodic timer may cancel itself from its callback.
 * Errors: -EPERM not called on a shard; -ENOENT no such pending timer on this shard (it fired,
 * was cancelled, or belongs to another shard). */
PITH_API int pith_timer_cancel(pith_timer_id_t id);

#ifdef __cplusplus
}
#endif

#endif
