/* Each shard's journal: records appended on a shard go to that shard's files through its own
 * io_uring, with group commit (every record appended in one loop iteration goes in one write
 * that carries its own data sync, RWF_DSYNC, or in one write and one fdatasync), and each is
 * acknowledged only once the sync that covers it is done. At
 * its first use on a shard the journal reads back what that shard wrote before (in an earlier
 * run) and stops at the first torn or damaged record; pith_journal_scan then reads it.
 *
 * Files: <dir>/shard-<id>/<n>.seg, segments of segment_bytes made ahead of need (fallocate,
 * then written with zeros, so that a synced write over them changes no file system metadata,
 * then an fsync of the file and of the directory; a released segment's file is reused as it
 * is). A new segment is thus written twice: once with zeros, once with records. A record is a
 * 40-byte header (CRC32C, length, sequence, stream, type, epoch, time) and its payload, 8-byte
 * aligned; sequences count from 1 on each shard without gaps, and a record of an earlier run that a
 * later run overwrote in part is told apart by its epoch (one per run that appended). */
#ifndef PITH_JOURNAL_H
#define PITH_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pith/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Writes with O_DIRECT (the default): aligned 4 KiB blocks, the page cache bypassed. This flag
 * asks for buffered writes instead; a file system that refuses O_DIRECT gets them anyway. */
#define PITH_JOURNAL_BUFFERED 1u
/* Each group's write, then an fdatasync, instead of one write with RWF_DSYNC (the default, and
 * what a kernel that refuses RWF_DSYNC gets anyway). journal.persist_ns measures both. */
#define PITH_JOURNAL_FDATASYNC 2u
/* No sync at all: a record is acknowledged once its group is written to the file (the page
 * cache). A crash of the process loses nothing acknowledged; a crash of the machine may. As
 * Redis's appendfsync no. */
#define PITH_JOURNAL_NOSYNC 4u

/* What a fault hook may be asked about (tests): */
enum {
    PITH_JOURNAL_OP_WRITE = 1, /* a group's write of len bytes */
    PITH_JOURNAL_OP_SYNC = 2,  /* its fdatasync, or the sync of its RWF_DSYNC write (len 0) */
    PITH_JOURNAL_OP_CREATE = 3 /* making a segment of len bytes */
};

/* The journal's part of pith_config_t; zeros take the defaults. */
typedef struct pith_journal_config {
    /* The directory the shards' journals live in (made if missing, one level); it is copied at
     * pith_engine_start. NULL: $PITH_JOURNAL_DIR; neither: no journal (-ENOTCONN). */
    const char *dir;
    /* Bytes of each segment file (default 64 MiB; 1 MiB..1 GiB, a multiple of 4096). A record
     * holds at most segment_bytes / 4 bytes of payload. */
    uint64_t segment_bytes;
    /* Bytes appended and not yet acknowledged on a shard past which pith_journal_append says
     * -EAGAIN (default 16 MiB, at least 64 KiB): the journal's bounded queue. */
    uint64_t pending_max;
    unsigned flags; /* PITH_JOURNAL_* */
    /* 0: each group is synced as it is written. Otherwise groups are written without a sync,
     * and one fdatasync of each segment written to covers them all at most this long after the
     * first of them was written (Redis's appendfsync everysec is 1 s); their records are
     * acknowledged after it. Not with PITH_JOURNAL_NOSYNC. */
    uint64_t sync_every_ns;
    /* For tests: called on the shard before each write, sync and segment creation. 0 lets it
     * go on; a negative errno makes it fail as if the kernel had said so; for a write, a
     * positive value below len makes the kernel write only that many bytes. */
    int64_t (*fault)(int op, uint64_t len, void *ctx);
    void *fault_ctx; /* fault's ctx */
} pith_journal_config_t;

/* Runs on the shard that appended, outside any actor's turn: err 0 once the record is durable
 * (its sequence is seq), or -errno and it is not (see pith_journal_append). */
typedef void (*pith_journal_fn_t)(int err, uint64_t seq, void *ctx);

/* Appends a record of `len` bytes of data to the calling shard's journal; data is copied.
 * stream says whose it is (an actor, a key; the journal only keeps it) and type what it is
 * (below 1u << 31; the engine's own types are above). *seq, if not NULL, gets its sequence.
 * done, if not NULL, runs later, exactly once: err 0 when the record is durable, in sequence
 * order; or -EIO (a write or sync failed: the journal then refuses appends until the engine
 * restarts, as the page cache's state is unknown; a write's -ENOSPC comes as itself), or
 * -ECANCELED (the engine stopped before it was durable; a stop waits drain_ns for writes in
 * flight first). A record that fails may or may not be read back after a restart; no later
 * record is acknowledged before it has failed.
 * Errors (nothing appended, done never runs): -EPERM not on a shard; -ENOTCONN no journal
 * configured; -EINVAL data NULL with len > 0, type reserved, or len over segment_bytes / 4;
 * -EAGAIN pending_max bytes wait already (retry when some are acknowledged), or the segment is
 * full and the next one is still being made (retry shortly); -ENOSPC no room to make the next
 * segment (the next append that needs it tries again); -EIO the journal failed earlier in
 * this run, or could not be opened (pith_last_error() says why, on the shard); -ENOMEM;
 * -ESHUTDOWN the engine is stopping. */
PITH_API int pith_journal_append(uint64_t stream, uint32_t type, const void *data, uint32_t len,
                                 pith_journal_fn_t done, void *ctx, uint64_t *seq);

/* A record as pith_journal_scan shows it; data is valid during the call only. */
typedef struct pith_journal_rec {
    uint64_t seq;     /* its sequence on the shard (1, 2, ...) */
    uint64_t stream;  /* as appended */
    uint64_t time_ns; /* when it was appended: CLOCK_REALTIME, ns since the Unix epoch */
    uint32_t type;    /* as appended */
    uint32_t len;     /* bytes of data */
    const void *data; /* the payload, valid during the call */
} pith_journal_rec_t;

/* Calls fn for each of the application's records (not the engine's own, pith/persist.h) of the
 * calling shard's journal with seq >= from, in order: those
 * read back at first use, then those acknowledged since. fn returns 0 to go on; anything else
 * stops the scan and is returned. Reads the files with plain reads on the shard, which waits
 * meanwhile: for start-up (a server loading its state) and tools, not for a hot path.
 * Errors: -EPERM not on a shard; -ENOTCONN; -EIO a read failed; -ENOMEM. */
PITH_API int pith_journal_scan(uint64_t from, int (*fn)(const pith_journal_rec_t *rec, void *ctx),
                               void *ctx);

/* The application's records of the calling shard up to sequence `upto` are not needed any more
 * (a snapshot covers them): each segment that holds only such records (and records of the
 * engine's own, event-sourced actors' (pith/persist.h), that it released itself), from the
 * oldest, leaves the journal; its
 * file is kept for reuse as a later segment (renamed <n>.spare, two at most; more are removed),
 * so that a journal whose records are released as fast as they come keeps a bounded number of
 * files and allocates no new ones. A segment that also holds later records stays whole, and
 * pith_journal_scan (now and after a restart) still shows its records up to `upto`.
 * Errors: -EINVAL upto past the last durable record; -EPERM; -ENOTCONN; -EIO (as
 * pith_journal_append). */
PITH_API int pith_journal_release(uint64_t upto);

/* A shard's journal in figures (pith_journal_stats). */
typedef struct pith_journal_stats {
    bool open;                /* the journal is open on this shard */
    bool failed;              /* a write or sync failed: appends are refused */
    bool direct;              /* writes use O_DIRECT */
    bool crc_hw;              /* CRC32C with the CPU's instruction (else tables) */
    uint64_t last_seq;        /* the last sequence given out */
    uint64_t durable_seq;     /* every record up to it is durable */
    uint64_t appended;        /* records appended in this run */
    uint64_t appended_bytes;  /* their bytes, headers included */
    uint64_t acked;           /* of those, acknowledged durable */
    uint64_t failed_records;  /* of those, failed (done got -errno) */
    uint64_t groups;          /* group writes */
    uint64_t syncs;           /* fdatasyncs completed */
    uint64_t bytes_written;   /* bytes of group writes (whole blocks, rewrites included) */
    uint64_t pending_bytes;   /* appended, not yet acknowledged or failed */
    uint64_t segments;        /* segment files of this shard holding records */
    uint64_t released;        /* segments released (pith_journal_release) in this run */
    uint64_t recycled;        /* segments made from a released one's file in this run */
    uint64_t recovered;       /* records read back at first use */
    uint64_t recovered_bytes; /* their bytes, headers included */
    /* Where reading back stopped at damage (a record whose CRC, length, sequence or epoch is
     * wrong, not the clean end): the segment's number and byte offset; damaged_segment is
     * UINT64_MAX when it stopped at the clean end. The damage and what follows it in that
     * segment are overwritten by later appends. */
    uint64_t damaged_segment;
    uint64_t damaged_offset; /* see damaged_segment */
} pith_journal_stats_t;

/* The journal's figures for `shard`, from any thread; zeros (open false) for a shard that has
 * not used it. Errors: -EINVAL shard out of range; -ESHUTDOWN no engine runs. */
PITH_API int pith_journal_stats(unsigned shard, pith_journal_stats_t *out);

/* CRC32C (Castagnoli) of len bytes, continuing crc (0 to begin), as the journal frames records
 * with: the CPU's instruction where it has one. Any thread. */
PITH_API uint32_t pith_crc32c(uint32_t crc, const void *data, size_t len);

#ifdef __cplusplus
}
#endif

#endif
