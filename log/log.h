/* The journal's private parts: the record header on disk, one shard's journal, and what the
 * files (segment.c) and the writer (journal.c) share. log/ sits between core/ and shard/. */
#ifndef PITH_LOG_H
#define PITH_LOG_H

#include <pith/journal.h>

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fop.h"
#include "hist.h"

/* A record's header on disk, little-endian; the payload follows, then zeros to 8 bytes. The CRC
 * covers the header from `len` on and the payload. */
struct jhdr {
    uint32_t crc;
    uint32_t len; /* payload bytes */
    uint64_t seq;
    uint64_t stream;
    uint32_t type;
    uint32_t epoch;   /* the run that wrote it (1, 2, ...): never less than the record before */
    uint64_t time_ns; /* CLOCK_REALTIME when it was appended */
};
_Static_assert(sizeof(struct jhdr) == 40, "a record header is 40 bytes");

#define JBLOCK    4096u /* write unit and alignment */
#define JALIGN(n) (((n) + 7u) & ~(uint64_t)7u)

static inline uint64_t jround(uint64_t n)
{
    return (n + JBLOCK - 1) & ~(uint64_t)(JBLOCK - 1);
}

uint32_t log_crc32c_sw(uint32_t crc, const void *data, size_t len);
bool log_crc32c_hw(void);

/* The CRC a header should carry for its payload. */
uint32_t jhdr_crc(const struct jhdr *h, const void *payload);

/* A segment file. */
struct jseg {
    uint64_t index; /* <index>.seg */
    int fd;         /* for writes (O_DIRECT when the journal is); -1 closed */
    unsigned users; /* groups still to write or sync to it, and the journal while current */
    uint64_t first_seq, last_seq; /* records it holds (durable), 0 0: none */
    uint64_t end;                 /* bytes of records durable in it */
    /* The last record in it of the application's types and of the engine's (0: none): it
     * leaves the journal once both are released (pith_journal_release, log_release_engine). */
    uint64_t app_last, eng_last;
    int rfd;           /* for log_read, opened at its first use; -1 none */
    unsigned readers;  /* log_read_many reads in flight: it stays until they are back */
    struct jseg *next; /* the shard's segments, oldest first */
};

/* The next segment, made ahead of need on the ring: a released one's file renamed, or a new
 * file allocated and then written with zeros (MK_ZERO), so that the blocks records go to are
 * already written: a data-synced write over written blocks changes no file system metadata, so
 * it needs no file system journal commit (about a third less time per sync on ext4 here). */
enum { MK_NONE, MK_RENAME, MK_OPEN, MK_ALLOC, MK_ZERO, MK_SYNC, MK_DIRSYNC, MK_READY, MK_FAILED };
#define JZERO_CHUNK (1u << 20) /* bytes of zeros per write while making a segment */

/* Released segment files kept for reuse (renamed to <index>.spare), at most: */
#define JSPARES 2

struct jcb {
    pith_journal_fn_t fn;
    void *ctx;
    uint64_t seq;
};

/* Records bound for one write and one sync: buf holds the file from `off` (block aligned);
 * its first `head` bytes are the tail block of the group before, already written. */
enum { G_OPEN, G_WRITING, G_SEALED, G_SYNCING, G_WAITSYNC, G_DONE, G_FAILED };

/* One periodic sync: an fdatasync of each segment its groups were written to. */
struct jbatch {
    unsigned pending; /* syncs not yet back */
};

struct jgroup {
    struct jgroup *next;
    struct jseg *seg;
    unsigned char *buf;
    uint32_t cap, head, len; /* buffer bytes; the earlier tail; bytes up to the last record */
    uint32_t done_bytes;     /* of the write, done so far (short writes go on) */
    uint64_t off;
    uint64_t first_seq, last_seq, bytes; /* bytes: of its records, for pending_bytes */
    struct jcb *cbs;
    uint32_t ncb, cbcap;
    int state, err;
    unsigned inflight;    /* its operations on the ring */
    struct jbatch *batch; /* the periodic sync that covers it (G_SYNCING then) */
    uint64_t t_open;      /* when it was made (its first record came) */
    uint64_t t_write;     /* when its write was first submitted */
};

struct journal {
    unsigned shard;
    int dirfd;
    char *path; /* <dir>/shard-<id> */
    bool direct, failed;
    bool dsync;             /* writes carry RWF_DSYNC (else each is followed by an fdatasync) */
    bool nosync;            /* PITH_JOURNAL_NOSYNC */
    uint64_t sync_every_ns; /* periodic syncs (see pith_journal_config_t) */
    bool tick_armed;        /* the periodic sync's timer is armed */
    unsigned batches;       /* periodic syncs in flight */
    uint32_t epoch;
    uint64_t seg_bytes, pending_max;
    int64_t (*fault)(int op, uint64_t len, void *ctx);
    void *fault_ctx;
    struct jseg *segs, *segs_tail; /* all of them, in order; segs_tail is where records go */
    uint64_t tail;                 /* offset in segs_tail for the next record */
    /* The segment after segs_tail, made ahead: its state and file. */
    int mk_state, mk_err, mk_fd;
    uint64_t mk_index;
    bool mk_new;                  /* a new file (not a released one's): written with zeros */
    uint64_t mk_zeroed;           /* MK_ZERO: bytes written so far */
    unsigned char *zeros;         /* JZERO_CHUNK zero bytes, block aligned, made at first need */
    struct jgroup *open;          /* taking records; NULL: none yet */
    struct jgroup *qhead, *qtail; /* sealed, in order: writing, written, syncing, done */
    bool writing;                 /* one write in flight at a time: groups share blocks */
    uint64_t next_seq, durable_seq;
    uint64_t app_upto, eng_upto; /* released up to: the application's records, the engine's */
    /* Figures for pith_journal_stats (written here, read by any thread). */
    _Atomic uint64_t st_appended, st_acked, st_failed, st_groups, st_syncs, st_bytes, st_pending,
        st_segments, st_last, st_durable, st_released, st_recycled, st_appended_bytes;
    _Atomic bool st_broken; /* failed, for readers off the shard */
    /* Per group made durable (log_hists): from its first record to its acknowledgement, and
     * from its write's submission to its durability; with their sums in ns. */
    _Atomic uint64_t h_commit[HIST_BUCKETS], h_sync[HIST_BUCKETS], h_commit_sum, h_sync_sum;
    uint64_t recovered, recovered_bytes, damaged_segment, damaged_offset;
    /* Released segments' files: spare[0..nspare) can be renamed into the next segment once
     * their own rename to .spare is done (spare_ready). */
    uint64_t spare[JSPARES];
    bool spare_ready[JSPARES];
    unsigned nspare;
    int open_err;          /* first use failed: every call says it (-EIO) */
    bool closing;          /* the shard left its loop: completions still to come are ignored */
    struct jgroup *graves; /* groups failed at stop whose operations may still report */
    /* The bytes of the tail block before `tail`: the next group begins with them. */
    alignas(64) unsigned char tailblk[JBLOCK];
};

/* segment.c: reading back at first use, and files. */
int jseg_recover(struct journal *j, char *why, size_t whylen);
/* The .spare files of the directory, for reuse (first use). */
void jseg_find_spares(struct journal *j);
/* Makes segment `index` now, with plain system calls (first use only). */
int jseg_make_now(struct journal *j, uint64_t index, int *fd);
int jseg_open_flags(const struct journal *j);
/* Where a record lies: its segment's number and the byte offset of its header. */
struct log_loc {
    uint32_t seg, off;
};

/* What jseg_scan and log_scan call for each record. */
typedef int (*log_scan_fn)(const pith_journal_rec_t *rec, const struct log_loc *loc, void *ctx);

/* Reads the records of seg with seq >= from, up to its durable end, calling fn. */
int jseg_scan(struct journal *j, struct jseg *seg, uint64_t from, log_scan_fn fn, void *ctx);
/* Reads the record at loc of seg (a read descriptor opened at first use) into *buf (grown with
 * pith_realloc to *cap), checked against its CRC; rec->data points into *buf. */
int jseg_read(struct journal *j, struct jseg *seg, uint32_t off, pith_journal_rec_t *rec,
              unsigned char **buf, uint32_t *cap);
void jseg_free_all(struct journal *j);

/* ---- for the layers above (persist/): the engine's own records ---- */

/* Record types from here up are the engine's (the application's are below). */
#define LOG_TYPE_ENGINE (1u << 31)

/* Opens the calling shard's journal if it is not (reading it back): 0 or as
 * pith_journal_append's errors. */
int log_open(void);
/* As pith_journal_append, for any type, and *loc (if not NULL) gets where the record will lie
 * once written. */
int log_append(uint64_t stream, uint32_t type, const void *data, uint32_t len,
               pith_journal_fn_t done, void *ctx, uint64_t *seq, struct log_loc *loc);
/* As pith_journal_scan, for every record, with where each lies. */
int log_scan(uint64_t from, log_scan_fn fn, void *ctx);
/* The durable record at loc, as jseg_read: -ENOENT no such segment any more. */
int log_read(const struct log_loc *loc, pith_journal_rec_t *rec, unsigned char **buf,
             uint32_t *cap);
/* One record for log_read_many: where, its bytes (header included) and its sequence, and
 * where in the caller's buffer it goes. */
struct log_rd {
    struct log_loc loc;
    uint32_t len;
    uint32_t at;
    uint64_t seq;
};
typedef void (*log_many_fn)(int err, void *ctx);
/* Reads n durable records into buf (at rds[i].at, rds[i].len bytes each) through the shard's
 * ring, without waiting: done(err, ctx) runs on the shard once every read is back, each record
 * checked (CRC, length, sequence): err 0, -EIO (a read failed or was short, or a record is not
 * what was asked), -ENOENT (a segment has left), -ECANCELED (the engine stopped). rds and buf
 * stay the caller's and must stay until done. Returns 0, or -errno and done never runs. */
int log_read_many(const struct log_rd *rds, uint32_t n, unsigned char *buf, log_many_fn done,
                  void *ctx);
/* The engine's records up to seq `upto` are not needed any more: as pith_journal_release for
 * the application's (a segment leaves once both are released). */
int log_release_engine(uint64_t upto);
/* The shard's journal's bounds: records append_max bytes of payload at most; segments held. */
int log_limits(uint32_t *append_max, uint64_t *segments);
/* The journal's latency histograms on `shard` (HIST_BUCKETS each, hist.h), one sample per group
 * made durable: commit, from the group's first record to its acknowledgement (the longest an
 * appender of it waited); sync, from its write's submission to its durability (the write with
 * its data sync, or the periodic sync that covered it). Zeros where the journal is not open.
 * Any thread. Errors: -EINVAL shard out of range, -ESHUTDOWN. */
int log_hists(unsigned shard, uint64_t *commit, uint64_t *commit_sum, uint64_t *sync,
              uint64_t *sync_sum);

#endif
