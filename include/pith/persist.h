/* Event-sourced virtual actors: an activation records what happened as events in its shard's
 * journal (pith/journal.h) and its state is what the type's apply hook makes of them. Each
 * activation rebuilds its state before its first message: the latest snapshot (the type's
 * restore) and the events after it (apply), read back from the journal. A persistent type's
 * activations of a key always live on the key's home shard (a hash of the type's name and the
 * key under a key kept in the journal's directory, so the same shard after a restart with the
 * same number of shards), whose journal holds the key's events, snapshots and reminders.
 *
 * Events: pith_persist from the behaviour appends an event; the events one message raises go
 * to the journal as one record (all or none of them after a crash). Once that record is
 * durable, apply runs on the live state for each of them, in order, then each one's done: the
 * state only ever holds durable events, as a replay would rebuild it. With pith_persist the
 * activation takes no further message until its events are durable (its mailbox fills
 * meanwhile, bounded by its type's policy); with pith_persist_async it goes on.
 *
 * Snapshots (optional): the type's snapshot hook writes the state's bytes and restore reads
 * them back; a policy takes one every N events, once T has passed since the last, and when an
 * activation ends, keeping the last K. Records the kept snapshots cover leave the journal
 * (pith_journal_release's rule: whole segments, once nothing in them is needed), and a
 * segment holding the last records of idle keys is kept alive by copying those records
 * forward, so that a steady load keeps a bounded number of segments.
 *
 * pith_replay rebuilds a key's state as it was after a given event or at a given time, into
 * memory of the caller's, without touching the live activation. Reminders (pith_reminder_set)
 * are durable timers of a key: kept in the journal, armed again after a restart, and each
 * sends its key a message when due, which activates it.
 *
 * The journal must be configured (cfg.journal.dir or $PITH_JOURNAL_DIR); without it a
 * persistent type's activation fails with -ENOTCONN. The directory remembers its number of
 * shards: an engine started with another number fails activations with -EXDEV (keys would
 * live elsewhere). */
#ifndef PITH_PERSIST_H
#define PITH_PERSIST_H

#include <stdint.h>

#include <pith/actor.h>
#include <pith/api.h>
#include <pith/vactor.h>

#ifdef __cplusplus
extern "C" {
#endif

/* pith_persist_type_t.flags: a snapshot when an activation ends (idle, cap, pressure, its own
 * deactivation, a failure, the engine stopping), if it has events since its last. At a stop
 * they are written and synced within the config's drain_ns; one that misses it is counted in
 * snapshot_failed, and the next activation replays those events instead. */
#define PITH_SNAPSHOT_ON_DEACTIVATE (1u << 0)

/* The persistence part of a virtual actor type (pith_vtype_t.persist). */
typedef struct pith_persist_type {
    /* Applies one event to the state (required): after pith_persist once the event is
     * durable, at each activation for the events after the latest snapshot, and in
     * pith_replay. It must do the same from the same state and event each time, and cannot
     * fail. The event's bytes start at an 8-byte boundary. */
    void (*apply)(void *state, const void *event, uint32_t len);
    /* Writes the state's bytes to buf[0..cap) and returns how many it needs: called again with
     * a buffer that large when that is more than cap (at most the journal's record limit,
     * segment_bytes / 4; past it the snapshot is skipped and counted as failed). NULL: no
     * snapshots (every event is replayed at each activation, and none leaves the journal). */
    uint32_t (*snapshot)(const void *state, void *buf, uint32_t cap);
    /* Sets the state from a snapshot's bytes (at an 8-byte boundary; required with
     * snapshot): 0, or a negative errno (the activation fails with it). */
    int (*restore)(void *state, const void *data, uint32_t len);
    uint32_t snapshot_every;    /* a snapshot after this many events (0: not by count) */
    uint64_t snapshot_every_ns; /* a snapshot at the next event once this long has passed since
                                   the activation's last (0: not by time) */
    uint32_t keep;              /* snapshots kept per key (0: 1); older ones leave */
    uint32_t flags;             /* PITH_SNAPSHOT_* */
} pith_persist_type_t;

/* Runs once per event, on the activation's shard, after apply ran for it (err 0), or with a
 * negative errno when it could not be made durable (apply did not run): as the actor, so that
 * pith_reply, pith_send and pith_persist work as in its behaviour. If the activation ended
 * before (only possible with pith_persist_async), self and state are NULL. */
typedef void (*pith_persisted_fn_t)(pith_actor_t *self, void *state, int err, void *ctx);

/* Appends an event (len bytes, copied) for the running activation, from its behaviour (or
 * from a done, which runs as the actor); done (may be NULL) runs once it is durable and
 * applied. The activation takes no new message until every event it persisted this way is
 * done. The message's events become one record when it ends; a record the journal pushes back
 * then (its bounded queue is full, or its next segment is still being made) waits, in order
 * with the shard's later ones, and is tried again every millisecond.
 * Errors (nothing appended, done never runs): -EINVAL self is not an activation of a
 * persistent type, data NULL with len > 0, or the message's events would pass the journal's
 * record limit; -EPERM not from the behaviour; -EAGAIN 16 MiB of records already wait for the
 * journal on this shard; -ENOTCONN, -EXDEV, -EIO (as activation); -ENOMEM. done's err: those
 * of pith_journal_append (and of its done): -EIO, -ENOSPC, -ENOMEM, -ECANCELED. */
PITH_API int pith_persist(pith_actor_t *self, const void *event, uint32_t len,
                          pith_persisted_fn_t done, void *ctx);
/* As pith_persist, but the activation goes on taking messages meanwhile (its state shows the
 * event only once done runs). */
PITH_API int pith_persist_async(pith_actor_t *self, const void *event, uint32_t len,
                                pith_persisted_fn_t done, void *ctx);

/* The number of the running activation's last applied event: its key's events count from 1,
 * across activations and restarts (0: none yet). 0 for anything else. */
PITH_API uint64_t pith_persist_events(const pith_actor_t *self);

/* pith_replay's `how`. */
#define PITH_REPLAY_EVENT 0 /* until is an event number: the state after that event */
#define PITH_REPLAY_TIME                                                                           \
    1 /* until is a CLOCK_REALTIME time in ns: after the events made by then                       \
       */

/* Rebuilds the state of (t, key[0..len)) as it was after event `until` (or at time `until`),
 * into state (t's actor state_size bytes, zeroed first), from the latest snapshot at or before
 * that point and the events after it; the live activation, if any, is not touched. What
 * restore or apply allocate is the caller's (the type's terminate does not run). *events (may
 * be NULL) gets the number of the last event applied. Reads the journal with plain reads on the
 * key's home shard. From the home shard itself, or from a thread outside the engine (which
 * waits). Errors: -EINVAL; -ENOENT t not registered, or not persistent; -EDEADLK called from
 * another shard; -ENODATA the journal no longer holds that point (snapshots that covered it have
 * left: at least the last `keep` snapshots' points remain), or the key has no events;
 * -ENOTCONN, -EXDEV, -EIO (as activation); restore's error; -ESHUTDOWN. */
PITH_API int pith_replay(const pith_vtype_t *t, const void *key, uint32_t len, uint64_t until,
                         int how, void *state, uint64_t *events);

/* A reminder's message (type as given to pith_reminder_set): */
typedef struct pith_reminder_msg {
    uint32_t id; /* the reminder's id */
    /* Periods that passed without a message since the one before in this run (the shard was
     * busy, a send was pushed back), or since the reminder was first due when none was sent in
     * this run (so after a restart, every period since it was set, less one) */
    uint32_t missed;
    uint64_t due_ns; /* when it was due, CLOCK_REALTIME ns */
} pith_reminder_msg_t;

/* Sets (or replaces) the durable reminder `id` of the running activation's key, from its
 * behaviour: a message of type `type` (a pith_reminder_msg_t) is sent to the key after
 * delay_ns and then every period_ns (0: once), activating it if it is not active. Kept in the
 * journal: one due while the engine was down is sent once soon after the key's home shard
 * starts, with the periods it missed. Periods of a millisecond and up (Orleans's minimum is a
 * minute). The reminder is set once its record is durable; until then a crash forgets it.
 * Errors: -EINVAL self is not an activation of a persistent type, period_ns below 1 ms and not
 * 0, type reserved; -EPERM not from the behaviour; -EAGAIN, -EIO, -ENOMEM as pith_persist. */
PITH_API int pith_reminder_set(pith_actor_t *self, uint32_t id, uint64_t delay_ns,
                               uint64_t period_ns, uint32_t type);
/* Cancels reminder `id` of the running activation's key (durably: a crash before its record
 * is durable keeps the reminder). Errors: -ENOENT none with that id (or its set is not durable
 * yet); as pith_reminder_set. */
PITH_API int pith_reminder_cancel(pith_actor_t *self, uint32_t id);

/* Persistence's figures on `shard` (pith_persist_stats). */
typedef struct pith_persist_stats {
    uint64_t keys;            /* keys with events, snapshots or reminders in the journal */
    uint64_t events;          /* events made durable in this run */
    uint64_t event_records;   /* records they went in (one per message that raised some) */
    uint64_t failed;          /* events that could not be made durable */
    uint64_t snapshots;       /* snapshots made durable in this run */
    uint64_t snapshot_failed; /* snapshots that failed or were too large */
    uint64_t recoveries;      /* activations that read the journal */
    uint64_t replayed;        /* events applied by them */
    uint64_t restored;        /* snapshots restored by them */
    uint64_t carried;         /* records copied forward so that old segments could leave */
    uint64_t reminders;       /* reminders set now */
    uint64_t reminders_fired; /* reminder messages sent in this run */
} pith_persist_stats_t;

/* From any thread; zeros for a shard that has not used persistence. Errors: -EINVAL;
 * -ESHUTDOWN no engine runs. */
PITH_API int pith_persist_stats(unsigned shard, pith_persist_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
