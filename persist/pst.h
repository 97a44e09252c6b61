/* Persistence's private parts: what a key's records look like in the journal, the index of each
 * shard's keys (which records rebuild a key's state), and what the files share: meta.c (the
 * directory's key and shard count), persist.c (events, recovery, snapshots, compaction),
 * reminder.c and replay.c. persist/ sits above core/ (virtual actors) and log/ (the journal). */
#ifndef PITH_PST_H
#define PITH_PST_H

#include <pith/persist.h>
#include <pith/timer.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "log.h"

/* Record types (the engine's range of the journal). */
#define PT_EVENTS (LOG_TYPE_ENGINE | 1u) /* one message's events */
#define PT_SNAP   (LOG_TYPE_ENGINE | 2u) /* a snapshot */
#define PT_REMIND (LOG_TYPE_ENGINE | 3u) /* a reminder set or cancelled */

/* Every record's payload begins with this, then the key's bytes (zeros to 8 bytes), then its
 * body, so that bodies and events lie at 8-byte boundaries:
 * PT_EVENTS: count events, each a u32 length, 4 zero bytes, and its bytes (zeros to 8) (first:
 * the first one's number);
 * PT_SNAP: the snapshot's bytes (first: the number of events it covers);
 * PT_REMIND: a struct prem_rec. */
struct phdr {
    uint32_t tag;     /* crc32c of the type's name */
    uint32_t count;   /* events (PT_EVENTS) */
    uint64_t first;   /* see above */
    uint64_t time_ns; /* CLOCK_REALTIME when first appended (copies keep it) */
    uint16_t klen;
    uint16_t pad[3];
};
_Static_assert(sizeof(struct phdr) == 32, "a record's persist header is 32 bytes");

#define PEV_HDR 8u /* an event's length word and padding */

struct prem_rec {
    uint32_t id, type;
    uint64_t due_ns;    /* CLOCK_REALTIME of its first due time */
    uint64_t period_ns; /* 0: once */
    uint32_t cancel;    /* 1: the reminder is gone */
    uint32_t pad;
};

/* A record a key needs: an event record (n = its last event's number) or a snapshot (n = the
 * events it covers). */
struct ploc {
    uint64_t seq;
    uint64_t n;
    struct log_loc loc;
    uint32_t len; /* the record's bytes, its journal header included */
    bool snap;
    bool carrying; /* a copy of it is on its way (compaction) */
};

struct pstream;

/* A reminder of a key, armed on the shard. */
struct prem {
    struct prem *next;
    struct pstream *st;
    uint32_t id, type;
    uint64_t due_ns, period_ns; /* as recorded */
    uint64_t next_due;          /* the next time it sends (CLOCK_REALTIME) */
    uint64_t seq;               /* its record */
    uint64_t ver;               /* the operation that set or cancelled it (pstream.rem_ver) */
    struct log_loc loc;
    pith_timer_id_t timer;
    bool armed;
    /* Cancelled, its record on its way: kept so that an earlier set landing after the cancel
     * was asked is not taken for a newer one. Freed when the cancel is durable. */
    bool cancelled;
};

/* A key of a persistent type on its home shard. Never freed while the shard runs. */
struct pstream {
    struct pstream *next; /* in its bucket */
    uint64_t id;          /* the journal's stream: the key's hash (meta.c) */
    uint32_t tag;
    uint16_t klen;
    uint64_t n;        /* events durable (the live state holds exactly these) */
    uint64_t next_n;   /* the next event's number */
    struct ploc *recs; /* what rebuilds it, in journal order */
    uint32_t nrecs, cap;
    uint32_t nsnaps;
    uint32_t inflight;      /* its records appended, not yet durable */
    uint64_t since_snap;    /* events since its last snapshot was taken */
    uint64_t snap_ns;       /* when that was (pith_now_ns) */
    pith_ref_t live;        /* its activation (PITH_REF_NONE: none) */
    pith_ref_t waiting;     /* an activation waiting for inflight to drain */
    bool recovering;        /* live's records are being read: its state is not whole yet */
    const pith_vtype_t *vt; /* its type, once known (an activation or reminder met it) */
    struct prem *rems;
    uint64_t rem_ver;       /* reminder operations asked in this run */
    uint32_t rem_inflight;  /* its reminder records on their way: no copies meanwhile */
    uint32_t snap_inflight; /* its snapshots on their way: no copies meanwhile */
    unsigned char key[];
};

/* One message's events, open until the message ends, then in the journal until durable. */
struct pcb {
    pith_persisted_fn_t fn;
    void *ctx;
};
struct pbatch {
    struct pbatch *next; /* waiting for the journal to take it (pshard.retry_head) */
    struct pstream *st;
    pith_ref_t act;
    unsigned char *buf; /* the record's payload: phdr, key, events */
    uint32_t len, cap;
    uint32_t count;
    struct pcb *cbs; /* [count] */
    uint32_t cbcap;
    bool muted; /* a pith_persist held the activation */
};

/* A shard's persistence. The struct is plain memory (read by pith_persist_stats off the
 * shard); what hangs off it is the shard's memory. */
struct pshard {
    unsigned shard;
    int err; /* building the index failed: every call says it */
    struct pstream **buckets;
    uint32_t nbuckets;
    uint64_t nstreams;
    struct pbatch *open;
    unsigned char *rbuf; /* for log_read */
    uint32_t rcap;
    uint64_t compact_ns;   /* the last compaction (pith_now_ns) */
    uint64_t compact_segs; /* the journal's segments after it */
    bool compact_armed, retry_armed;
    bool compact_soon; /* the compaction armed is the sooner one (the journal grew) */
    pith_timer_id_t compact_timer, retry_timer;
    struct pbatch *retry_head, *retry_tail; /* records the journal pushed back, in order */
    uint64_t retry_bytes;
    uint32_t append_max;
    _Atomic uint64_t st_keys, st_events, st_records, st_failed, st_snaps, st_snap_failed,
        st_recoveries, st_replayed, st_restored, st_carried, st_reminders, st_fired;
};

static inline void pst_bump(_Atomic uint64_t *c, int64_t d)
{
    /* One writer (the shard); readers want a value that was true at some point. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + (uint64_t)d,
                          memory_order_relaxed);
}

/* meta.c */
/* The directory's key and shard count, made at first use: 0, -ENOTCONN no journal, -EXDEV
 * another number of shards, -EIO. */
int pmeta_key(const unsigned char **key);
uint64_t pmeta_stream(const unsigned char *key16, const pith_vtype_t *vt, const void *k,
                      uint32_t klen);
uint32_t pmeta_tag(const pith_vtype_t *vt);
unsigned pmeta_jump(uint64_t h, unsigned n);
void pmeta_forget(void);

/* persist.c */
/* The calling shard's persistence, its index built at first use: 0 or a negative errno. */
int pshard_get(struct pshard **out);
struct pstream *pstream_find(struct pshard *ps, uint64_t id, uint32_t tag, const void *key,
                             uint32_t klen);
struct pstream *pstream_make(struct pshard *ps, uint64_t id, uint32_t tag, const void *key,
                             uint32_t klen);
/* Reads the record at r into ps->rbuf: its header (the persist one) and body. */
int pst_read(struct pshard *ps, const struct ploc *r, pith_journal_rec_t *rec,
             const struct phdr **h, const unsigned char **body, uint32_t *blen);
/* After one of st's event records is durable or failed: an activation that waited for them
 * recovers once none is left on its way. */
void pst_waiting_go(struct pshard *ps, struct pstream *st);
/* Snapshots kept per key of vt. */
uint32_t pst_keep(const pith_vtype_t *vt);
/* The registered type whose tag is tag (NULL: none yet). */
const pith_vtype_t *pst_type_of_tag(uint32_t tag);
/* Builds a record's payload (phdr, key, body) in pith_malloc'd memory. */
unsigned char *pst_payload(const struct pstream *st, uint32_t count, uint64_t first,
                           const void *body, uint32_t blen, uint32_t *len);

/* reminder.c */
/* The index met a reminder record (building it). */
int prem_index(struct pshard *ps, struct pstream *st, const struct prem_rec *r,
               const pith_journal_rec_t *rec, const struct log_loc *loc);
/* Arms the shard's reminders once its index is built. */
void prem_arm_all(struct pshard *ps);
/* Copies reminder records at or before seq forward (compaction). */
void prem_carry(struct pshard *ps, struct pstream *st, uint64_t upto);
void prem_free_all(struct pstream *st);
/* Cancels st's reminders' timers (the shard stops). */
void prem_disarm_all(struct pstream *st);

/* Applies the events of an event record (body, blen; first event number first) numbered after
 * *applied and up to until (how PITH_REPLAY_EVENT) to state, moving *applied on: 0, -ENODATA
 * (events between *applied and this record's are missing), -EIO (the body is damaged). *stop:
 * an event past until was met. */
int pst_apply_events(struct pshard *ps, const pith_persist_type_t *pt, void *state,
                     const unsigned char *body, uint32_t blen, uint64_t first, uint32_t count,
                     uint64_t until, int how, uint64_t *applied, bool *stop);

/* replay.c: rebuilds st's state into `state` (after its type's init or zeroed) up to `until`
 * (how: PITH_REPLAY_*; UINT64_MAX: everything); *events the last event applied. */
int pst_rebuild(struct pshard *ps, struct pstream *st, const pith_persist_type_t *pt, void *state,
                uint64_t until, int how, uint64_t *events);

#endif
