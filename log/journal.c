/* One shard's journal on its ring: records gather in an open group; at the end of the loop's run
 * step (the shard's flush hook), or when the write before ends, the group is written with
 * RWF_DSYNC (or written and then fdatasynced: PITH_JOURNAL_FDATASYNC); acknowledgements go out in
 * sequence order once the sync is done. One write is in flight at a time (a group rewrites the
 * block the one before ended in); with separate fdatasyncs, those of earlier groups may still
 * run meanwhile. Files and reading back are in segment.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <valgrind/memcheck.h>

#include <pith/engine.h>
#include <pith/mem.h>
#include <pith/timer.h>

#include "hooks.h"
#include "log.h"

#define GROUP_MIN   (64u << 10) /* a group buffer's first size */
#define GROUP_MAX   (4u << 20)  /* past it a group is sealed and another begins */
#define JSHARDS_MAX 4096u

/* The shards' journals, made at first use on each shard and freed when the engine is gone;
 * readers off the shards (pith_journal_stats) hold shard_reader_enter. Published with release,
 * read with acquire: a reader that sees the pointer sees the journal's fields set before. */
static _Atomic(struct journal *) journals[JSHARDS_MAX];

static inline void bump(_Atomic uint64_t *c, uint64_t d)
{
    /* One writer (the shard); readers only need a value that was true at some point. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

static inline void put(_Atomic uint64_t *c, uint64_t v)
{
    atomic_store_explicit(c, v, memory_order_relaxed);
}

/* ---- groups ---- */

static void group_free(struct jgroup *g)
{
    if (g == NULL)
        return;
    pith_free(g->buf);
    pith_free(g->cbs);
    pith_free(g);
}

/* A new open group at file offset `at` of the tail segment, beginning with the bytes of its
 * block that come before `at` (j->tailblk). */
static struct jgroup *group_new(struct journal *j, uint64_t at)
{
    struct jgroup *g = pith_calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->buf = pith_aligned_alloc(JBLOCK, GROUP_MIN);
    if (g->buf == NULL) {
        pith_free(g);
        return NULL;
    }
    g->cap = GROUP_MIN;
    g->off = at & ~(uint64_t)(JBLOCK - 1);
    g->head = g->len = (uint32_t)(at - g->off);
    g->seg = j->segs_tail;
    g->state = G_OPEN;
    g->t_open = pith_now_ns();
    memcpy(g->buf, j->tailblk, g->head);
    memset(g->buf + g->head, 0, g->cap - g->head);
    g->seg->users++;
    return g;
}

/* Room in the open group for n more bytes (and the zeros after them), growing its buffer. */
static bool group_room(struct jgroup *g, uint32_t n)
{
    uint64_t need = jround((uint64_t)g->len + n + sizeof(struct jhdr));
    if (need <= g->cap)
        return true;
    if (need > GROUP_MAX && g->first_seq != 0)
        return false; /* sealed, and another begins; a record alone may take more */
    uint32_t cap = g->cap;
    while (cap < need)
        cap *= 2;
    unsigned char *b = pith_aligned_alloc(JBLOCK, cap);
    if (b == NULL)
        return false;
    memcpy(b, g->buf, g->len);
    memset(b + g->len, 0, cap - g->len);
    pith_free(g->buf);
    g->buf = b;
    g->cap = cap;
    return true;
}

/* Bytes of a group's write: whole blocks, with a zero header after its last record (where
 * reading back stops). */
static inline uint32_t group_want(const struct jgroup *g)
{
    return (uint32_t)jround((uint64_t)g->len + sizeof(struct jhdr));
}

static void seg_release(struct jseg *s)
{
    if (--s->users == 0 && s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

/* ---- acknowledgement, in order ---- */

static void fail_all(struct journal *j, int err);

/* Hands out the outcomes of the groups at the queue's head that have one. */
static void ack_ready(struct journal *j)
{
    while (j->qhead != NULL && (j->qhead->state == G_DONE || j->qhead->state == G_FAILED)) {
        struct jgroup *g = j->qhead;
        j->qhead = g->next;
        if (j->qhead == NULL)
            j->qtail = NULL;
        int err = g->state == G_DONE ? 0 : g->err;
        if (err == 0) {
            struct jseg *s = g->seg;
            if (s->first_seq == 0)
                s->first_seq = g->first_seq;
            s->last_seq = g->last_seq;
            s->end = g->off + g->len;
            j->durable_seq = g->last_seq;
            put(&j->st_durable, g->last_seq);
            bump(&j->st_acked, g->last_seq - g->first_seq + 1);
            uint64_t now = pith_now_ns();
            uint64_t commit = now - g->t_open, sync = g->t_write != 0 ? now - g->t_write : 0;
            bump(&j->h_commit[hist_bucket(commit)], 1);
            bump(&j->h_commit_sum, commit);
            bump(&j->h_sync[hist_bucket(sync)], 1);
            bump(&j->h_sync_sum, sync);
        } else {
            bump(&j->st_failed, g->last_seq - g->first_seq + 1);
        }
        bump(&j->st_pending, (uint64_t)0 - g->bytes);
        seg_release(g->seg);
        for (uint32_t i = 0; i < g->ncb; i++)
            g->cbs[i].fn(err, g->cbs[i].seq, g->cbs[i].ctx);
        g->ncb = 0;
        if (g->inflight > 0) {
            g->next = j->graves; /* freed when its operation reports */
            j->graves = g;
        } else {
            group_free(g);
        }
    }
}

/* A failed group's last operation has reported: it goes. */
static void grave_free(struct journal *j, struct jgroup *g)
{
    for (struct jgroup **p = &j->graves; *p != NULL; p = &(*p)->next) {
        if (*p == g) {
            *p = g->next;
            group_free(g);
            return;
        }
    }
}

/* An operation of g reported: false when there is nothing more to do with it. */
static bool op_back(struct journal *j, struct jgroup *g, int want_state)
{
    g->inflight--;
    if (j->closing)
        return false; /* shard_exit frees it */
    if (g->state != want_state) {
        if (g->state == G_FAILED && g->inflight == 0)
            grave_free(j, g);
        return false;
    }
    return true;
}

/* ---- the ring ---- */

struct jop {
    struct journal *j;
    struct jgroup *g;
};

static void write_next(struct journal *j);
static void seal(struct journal *j);
static void tick_arm(struct journal *j);

static int64_t fault(struct journal *j, int op, uint64_t len)
{
    return j->fault != NULL ? j->fault(op, len, j->fault_ctx) : 0;
}

static void sync_done(struct fop *f, int res)
{
    struct jop *o = (struct jop *)f->data;
    struct journal *j = o->j;
    struct jgroup *g = o->g;
    if (!op_back(j, g, G_SYNCING))
        return; /* failed meanwhile with the others */
    bump(&j->st_syncs, 1);
    if (res < 0) {
        fail_all(j, -EIO);
        return;
    }
    g->state = G_DONE;
    ack_ready(j);
}

static void submit_sync(struct journal *j, struct jgroup *g)
{
    g->state = G_SYNCING;
    int64_t fr = fault(j, PITH_JOURNAL_OP_SYNC, 0);
    struct fop *f = fr == 0 ? fop_new(shard_fops(), sizeof(struct jop), sync_done) : NULL;
    struct io_uring_sqe *sqe = f != NULL ? fop_sqe(f, false) : NULL;
    if (sqe == NULL) {
        if (f != NULL)
            fop_discard(f);
        fail_all(j, -EIO); /* no record, no SQE, or an injected fault: not durable */
        return;
    }
    *(struct jop *)f->data = (struct jop){j, g};
    io_uring_prep_fsync(sqe, g->seg->fd, IORING_FSYNC_DATASYNC);
    fop_arm(f, sqe, 0);
    g->inflight++;
}

/* ---- periodic syncs (sync_every_ns) ---- */

struct jbop {
    struct journal *j;
    struct jbatch *b;
};

static void batch_done(struct fop *f, int res)
{
    struct jbop *o = (struct jbop *)f->data;
    struct journal *j = o->j;
    struct jbatch *b = o->b;
    j->batches--;
    bool last = --b->pending == 0;
    if (j->closing) {
        if (last)
            free(b);
        return;
    }
    bump(&j->st_syncs, 1);
    if (res < 0 || fault(j, PITH_JOURNAL_OP_SYNC, 0) < 0) {
        /* Its groups fail with every other one not acknowledged; the batch goes once all its
         * syncs are back. */
        for (struct jgroup *g = j->qhead; g != NULL; g = g->next)
            if (g->batch == b)
                g->batch = NULL;
        fail_all(j, -EIO);
    }
    if (!last)
        return;
    for (struct jgroup *g = j->qhead; g != NULL; g = g->next) {
        if (g->batch == b) {
            g->batch = NULL;
            g->state = G_DONE;
        }
    }
    free(b);
    ack_ready(j);
}

/* One fdatasync of each segment that written groups wait on; they are acknowledged once all
 * are back. */
static void sync_batch(struct journal *j)
{
    struct jbatch *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        fail_all(j, -EIO);
        return;
    }
    struct jseg *last = NULL;
    for (struct jgroup *g = j->qhead; g != NULL; g = g->next) {
        if (g->state != G_WAITSYNC)
            continue;
        g->state = G_SYNCING;
        g->batch = b;
        if (g->seg == last)
            continue; /* the queue is in file order: one sync for the segment's run */
        last = g->seg;
        struct fop *f = fop_new(shard_fops(), sizeof(struct jbop), batch_done);
        struct io_uring_sqe *sqe = f != NULL ? fop_sqe(f, false) : NULL;
        if (sqe == NULL) {
            if (f != NULL)
                fop_discard(f);
            for (struct jgroup *h = j->qhead; h != NULL; h = h->next)
                if (h->batch == b)
                    h->batch = NULL;
            if (b->pending == 0)
                free(b);
            fail_all(j, -EIO);
            return;
        }
        *(struct jbop *)f->data = (struct jbop){j, b};
        io_uring_prep_fsync(sqe, g->seg->fd, IORING_FSYNC_DATASYNC);
        fop_arm(f, sqe, 0);
        b->pending++;
        j->batches++;
    }
    if (b->pending == 0)
        free(b);
}

static void tick_fn(void *arg)
{
    struct journal *j = arg;
    j->tick_armed = false;
    if (!j->closing && !j->failed)
        sync_batch(j);
}

static void tick_arm(struct journal *j)
{
    if (j->tick_armed)
        return;
    if (pith_timer_add(j->sync_every_ns, 0, tick_fn, j, NULL) == 0)
        j->tick_armed = true;
    else
        sync_batch(j); /* no timer (the engine stops): now */
}

static void submit_write(struct journal *j, struct jgroup *g);

static void write_done(struct fop *f, int res)
{
    struct jop *o = (struct jop *)f->data;
    struct journal *j = o->j;
    struct jgroup *g = o->g;
    if (!op_back(j, g, G_WRITING))
        return;
    j->writing = false;
    uint32_t want = group_want(g);
    if ((res == -EOPNOTSUPP || res == -EINVAL) && j->dsync && g->done_bytes == 0) {
        /* A kernel without RWF_DSYNC here: a write, then an fdatasync, from now on. */
        j->dsync = false;
        submit_write(j, g);
        return;
    }
    if (res <= 0) {
        fail_all(j, res == 0 ? -EIO : res == -ENOSPC ? -ENOSPC : -EIO);
        return;
    }
    g->done_bytes += (uint32_t)res;
    if (g->done_bytes < want) {
        /* Short: the rest, from where it stopped (O_DIRECT needs it block aligned). */
        if (j->direct && (g->done_bytes & (JBLOCK - 1)) != 0) {
            fail_all(j, -EIO);
            return;
        }
        submit_write(j, g);
        return;
    }
    bump(&j->st_bytes, want);
    /* Written: the buffer is not needed again (the next group has its tail block), and a
     * group that waits for a periodic sync holds no more than its callbacks. */
    pith_free(g->buf);
    g->buf = NULL;
    if (j->nosync) {
        g->state = G_DONE; /* in the page cache: as far as this mode goes */
        ack_ready(j);
    } else if (j->sync_every_ns != 0) {
        g->state = G_WAITSYNC; /* the periodic sync takes it */
        tick_arm(j);
    } else if (j->dsync) {
        /* The write was its own data sync. */
        bump(&j->st_syncs, 1);
        if (fault(j, PITH_JOURNAL_OP_SYNC, 0) < 0) {
            fail_all(j, -EIO);
            return;
        }
        g->state = G_DONE;
        ack_ready(j);
    } else {
        submit_sync(j, g);
    }
    /* What gathered while this write was out goes next, while this sync runs. */
    seal(j);
    write_next(j);
}

static void submit_write(struct journal *j, struct jgroup *g)
{
    uint32_t len = group_want(g) - g->done_bytes;
    int64_t fr = fault(j, PITH_JOURNAL_OP_WRITE, len);
    if (fr < 0) {
        fail_all(j, fr == -ENOSPC ? -ENOSPC : -EIO); /* as if the kernel had said so */
        return;
    }
    if (fr > 0 && fr < len)
        len = (uint32_t)fr;
    struct fop *f = fop_new(shard_fops(), sizeof(struct jop), write_done);
    struct io_uring_sqe *sqe = f != NULL ? fop_sqe(f, false) : NULL;
    if (sqe == NULL) {
        if (f != NULL)
            fop_discard(f);
        fail_all(j, -EIO);
        return;
    }
    *(struct jop *)f->data = (struct jop){j, g};
    g->state = G_WRITING;
    j->writing = true;
    if (g->t_write == 0)
        g->t_write = pith_now_ns();
    io_uring_prep_write(sqe, g->seg->fd, g->buf + g->done_bytes, len, g->off + g->done_bytes);
    /* The data sync in the write itself (what pwritev2's RWF_DSYNC does): one operation
     * instead of a write and then an fdatasync, half the time for one record here. Each part
     * of a short write is synced as it is written. */
    if (j->dsync)
        sqe->rw_flags = RWF_DSYNC;
    fop_arm(f, sqe, 0);
    g->inflight++;
}

/* The oldest sealed group not yet written goes, unless a write is in flight. */
static void write_next(struct journal *j)
{
    if (j->writing || j->failed)
        return;
    for (struct jgroup *g = j->qhead; g != NULL; g = g->next) {
        if (g->state == G_SEALED) {
            bump(&j->st_groups, 1);
            submit_write(j, g);
            return;
        }
    }
}

/* Seals the open group into the queue: it is written when the writes before it are. */
static void seal(struct journal *j)
{
    struct jgroup *g = j->open;
    if (g == NULL || g->first_seq == 0)
        return;
    j->open = NULL;
    g->state = G_SEALED; /* written by write_next, after the groups before it */
    /* The next group begins with the bytes of the block this one ends in. */
    uint64_t end = g->off + g->len, blk = end & ~(uint64_t)(JBLOCK - 1);
    memcpy(j->tailblk, g->buf + (blk - g->off), end - blk);
    if (j->qtail != NULL)
        j->qtail->next = g;
    else
        j->qhead = g;
    j->qtail = g;
}

/* A failed write or sync: the page cache's state is unknown, so every record not yet
 * acknowledged fails with it, and so does every later append. -ENOSPC of a write also fails
 * the journal: the file was preallocated, so the file system is out of room for metadata. */
static void fail_all(struct journal *j, int err)
{
    j->failed = true;
    atomic_store_explicit(&j->st_broken, true, memory_order_relaxed); /* for stats readers */
    j->writing = false;
    for (struct jgroup *g = j->qhead; g != NULL; g = g->next) {
        if (g->state != G_DONE) {
            g->state = G_FAILED;
            g->err = err;
        }
    }
    seal(j);
    if (j->qtail != NULL && j->qtail->state != G_DONE) {
        j->qtail->state = G_FAILED;
        j->qtail->err = err;
    }
    ack_ready(j);
}

/* ---- the next segment, made ahead on the ring ---- */

/* Spare i is gone (taken, or not to be had). */
static void spare_drop(struct journal *j, unsigned i)
{
    j->nspare--;
    memmove(j->spare + i, j->spare + i + 1, (j->nspare - i) * sizeof(j->spare[0]));
    memmove(j->spare_ready + i, j->spare_ready + i + 1,
            (j->nspare - i) * sizeof(j->spare_ready[0]));
}

struct mkop {
    struct journal *j;
    char name[32];
    char from[32]; /* MK_RENAME: the spare's name */
};

static void mk_failed(struct journal *j, int err)
{
    if (j->mk_fd >= 0)
        close(j->mk_fd);
    j->mk_fd = -1;
    j->mk_state = MK_FAILED;
    j->mk_err = err == -ENOSPC || err == -EDQUOT ? -ENOSPC : -EIO;
}

static void mk_done(struct fop *f, int res);

/* Queues the next step's operation; false when none could be queued (then failed). */
static bool mk_submit(struct journal *j, const char *name)
{
    struct fop *f = fop_new(shard_fops(), sizeof(struct mkop), mk_done);
    struct io_uring_sqe *sqe = f != NULL ? fop_sqe(f, false) : NULL;
    if (sqe == NULL) {
        if (f != NULL)
            fop_discard(f);
        mk_failed(j, -EIO);
        return false;
    }
    struct mkop *o = (struct mkop *)f->data;
    o->j = j;
    snprintf(o->name, sizeof(o->name), "%s", name);
    switch (j->mk_state) {
    case MK_RENAME:
        snprintf(o->from, sizeof(o->from), "%08llu.spare", (unsigned long long)j->spare[0]);
        io_uring_prep_renameat(sqe, j->dirfd, o->from, j->dirfd, o->name, 0);
        break;
    case MK_OPEN:
        io_uring_prep_openat(sqe, j->dirfd, o->name, jseg_open_flags(j) | O_CREAT, 0644);
        break;
    case MK_ALLOC:
        io_uring_prep_fallocate(sqe, j->mk_fd, 0, 0, (off_t)j->seg_bytes);
        break;
    case MK_ZERO: {
        uint64_t left = j->seg_bytes - j->mk_zeroed;
        io_uring_prep_write(sqe, j->mk_fd, j->zeros,
                            left < JZERO_CHUNK ? (unsigned)left : JZERO_CHUNK, j->mk_zeroed);
        break;
    }
    case MK_SYNC:
        io_uring_prep_fsync(sqe, j->mk_fd, 0);
        break;
    default: /* MK_DIRSYNC: the new name is durable too */
        io_uring_prep_fsync(sqe, j->dirfd, 0);
        break;
    }
    fop_arm(f, sqe, 0);
    return true;
}

static void mk_done(struct fop *f, int res)
{
    struct mkop *o = (struct mkop *)f->data;
    struct journal *j = o->j;
    if (j->closing) {
        if (j->mk_state == MK_OPEN && res >= 0)
            close(res);
        return;
    }
    if (res < 0 && j->mk_state == MK_RENAME) {
        /* The spare is not to be had: dropped, and the segment made as a new file. */
        spare_drop(j, 0);
        j->mk_state = MK_OPEN;
        j->mk_new = true; /* written with zeros, as any new file */
        (void)mk_submit(j, o->name);
        return;
    }
    if (res < 0) {
        mk_failed(j, res);
        return;
    }
    switch (j->mk_state) {
    case MK_RENAME:
        /* Still allocated and synced: fallocate and fsync find nothing to do. */
        spare_drop(j, 0);
        bump(&j->st_recycled, 1);
        j->mk_state = MK_OPEN;
        j->mk_new = false; /* its blocks were written as a segment before */
        break;
    case MK_OPEN:
        j->mk_fd = res;
        j->mk_state = MK_ALLOC;
        break;
    case MK_ALLOC:
        if (j->mk_new && j->zeros == NULL) {
            j->zeros = pith_aligned_alloc(JBLOCK, JZERO_CHUNK);
            if (j->zeros != NULL)
                memset(j->zeros, 0, JZERO_CHUNK);
        }
        /* Without the memory for zeros the segment is only allocated: slower syncs, no harm. */
        j->mk_state = j->mk_new && j->zeros != NULL ? MK_ZERO : MK_SYNC;
        j->mk_zeroed = 0;
        break;
    case MK_ZERO:
        if (res == 0) {
            mk_failed(j, -EIO);
            return;
        }
        /* A short write: the rest goes next (with O_DIRECT, an unaligned rest fails). */
        j->mk_zeroed += (uint64_t)res;
        if (j->mk_zeroed >= j->seg_bytes)
            j->mk_state = MK_SYNC;
        break;
    case MK_SYNC:
        j->mk_state = MK_DIRSYNC;
        break;
    default:
        j->mk_state = MK_READY;
        return;
    }
    (void)mk_submit(j, o->name);
}

/* Begins making the next segment, unless one is being made, made, or failed (next_segment
 * takes a failure and begins again: one try per append that needs it, not per append). */
static void mk_start(struct journal *j)
{
    if (j->mk_state != MK_NONE)
        return;
    j->mk_index = j->segs_tail->index + 1;
    j->mk_fd = -1;
    int64_t fr = fault(j, PITH_JOURNAL_OP_CREATE, j->seg_bytes);
    if (fr < 0) {
        mk_failed(j, (int)fr);
        return;
    }
    char name[32];
    snprintf(name, sizeof(name), "%08llu.seg", (unsigned long long)j->mk_index);
    /* A released segment's file, when one is ready: renamed, no new blocks allocated. */
    j->mk_state = j->nspare > 0 && j->spare_ready[0] ? MK_RENAME : MK_OPEN;
    j->mk_new = j->mk_state == MK_OPEN;
    (void)mk_submit(j, name);
}

/* ---- releasing records ---- */

struct relop {
    struct journal *j;
    uint64_t index;
    bool keep; /* renamed to .spare, else unlinked */
    char name[32], to[32];
};

static void release_done(struct fop *f, int res)
{
    struct relop *o = (struct relop *)f->data;
    struct journal *j = o->j;
    if (j->closing || !o->keep)
        return;
    for (unsigned i = 0; i < j->nspare; i++) {
        if (j->spare[i] != o->index)
            continue;
        if (res == 0) {
            j->spare_ready[i] = true;
        } else {
            /* The file keeps its .seg name: reading back finds its records (they are older
             * than any kept, so it stops there); no reuse. */
            spare_drop(j, i);
        }
        return;
    }
}

/* Renames (or unlinks, past JSPARES kept) a released segment's file on the ring. */
static void release_file(struct journal *j, uint64_t index)
{
    bool keep = j->nspare < JSPARES;
    struct fop *f = fop_new(shard_fops(), sizeof(struct relop), release_done);
    struct io_uring_sqe *sqe = f != NULL ? fop_sqe(f, false) : NULL;
    if (sqe == NULL) {
        if (f != NULL)
            fop_discard(f);
        return; /* the file stays: read back at the next start, from where it stops */
    }
    struct relop *o = (struct relop *)f->data;
    *o = (struct relop){.j = j, .index = index, .keep = keep};
    snprintf(o->name, sizeof(o->name), "%08llu.seg", (unsigned long long)index);
    snprintf(o->to, sizeof(o->to), "%08llu.spare", (unsigned long long)index);
    if (keep) {
        j->spare[j->nspare] = index;
        j->spare_ready[j->nspare++] = false;
        io_uring_prep_renameat(sqe, j->dirfd, o->name, j->dirfd, o->to, 0);
    } else {
        io_uring_prep_unlinkat(sqe, j->dirfd, o->name, 0);
    }
    fop_arm(f, sqe, 0);
}

/* The tail segment is full for a record of rec bytes: the next one takes over. 0, or -EAGAIN
 * (still being made), -ENOSPC / -EIO (making it failed; the next call tries again). */
static int next_segment(struct journal *j)
{
    if (j->mk_state == MK_FAILED) {
        int err = j->mk_err;
        j->mk_state = MK_NONE;
        mk_start(j);
        return err;
    }
    if (j->mk_state != MK_READY) {
        mk_start(j);
        return -EAGAIN;
    }
    struct jseg *s = calloc(1, sizeof(*s)); /* as segment.c's, freed there */
    if (s == NULL)
        return -ENOMEM;
    seal(j);
    s->index = j->mk_index;
    s->fd = j->mk_fd;
    s->rfd = -1;
    s->users = 1; /* the journal's, while it is the tail */
    j->mk_fd = -1;
    j->mk_state = MK_NONE;
    struct jseg *old = j->segs_tail;
    old->next = s;
    j->segs_tail = s;
    j->tail = 0;
    seg_release(old);
    bump(&j->st_segments, 1);
    write_next(j);
    return 0;
}

/* ---- first use ---- */

/* mkdir, and when it made the directory, an fsync of its parent. */
static int make_dir(const char *path)
{
    if (mkdir(path, 0755) != 0)
        return errno == EEXIST ? 0 : -errno;
    char parent[4096];
    snprintf(parent, sizeof(parent), "%s", path);
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        slash[1] = '\0';
    else if (slash != NULL)
        *slash = '\0';
    else
        snprintf(parent, sizeof(parent), ".");
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int err = fsync(fd) != 0 ? -errno : 0;
    close(fd);
    return err;
}

static int journal_open(struct journal *j, unsigned shard, const pith_config_t *cfg, char *why,
                        size_t whylen)
{
    const pith_journal_config_t *c = &cfg->journal;
    j->shard = shard;
    j->dirfd = j->mk_fd = -1;
    j->direct = !(c->flags & PITH_JOURNAL_BUFFERED);
    j->nosync = (c->flags & PITH_JOURNAL_NOSYNC) != 0;
    j->sync_every_ns = c->sync_every_ns;
    /* Writes carry their sync only when each group is synced as it goes. */
    j->dsync = !(c->flags & PITH_JOURNAL_FDATASYNC) && !j->nosync && j->sync_every_ns == 0;
    j->seg_bytes = c->segment_bytes;
    j->pending_max = c->pending_max;
    j->fault = c->fault;
    j->fault_ctx = c->fault_ctx;
    size_t n = strlen(c->dir) + 32;
    j->path = malloc(n);
    if (j->path == NULL)
        return -ENOMEM;
    snprintf(j->path, n, "%s/shard-%u", c->dir, shard);
    /* A directory made here is durable once its parent is synced (ALICE's list). */
    int err = make_dir(c->dir);
    if (err == 0)
        err = make_dir(j->path);
    if (err) {
        snprintf(why, whylen, "making %s: %s", j->path, strerror(-err));
        return err;
    }
    j->dirfd = open(j->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dirfd < 0) {
        snprintf(why, whylen, "opening %s: %s", j->path, strerror(errno));
        return -errno;
    }
    err = jseg_recover(j, why, whylen);
    if (err)
        return err;
    jseg_find_spares(j);
    j->segs_tail->users = 1;
    uint64_t segs = 0;
    for (struct jseg *s = j->segs; s != NULL; s = s->next)
        segs++;
    put(&j->st_segments, segs);
    put(&j->st_last, j->next_seq - 1);
    put(&j->st_durable, j->durable_seq);
    /* The tail block's bytes before the tail, for the first group. */
    uint64_t blk = j->tail & ~(uint64_t)(JBLOCK - 1);
    if (j->tail > blk) {
        char name[32];
        snprintf(name, sizeof(name), "%08llu.seg", (unsigned long long)j->segs_tail->index);
        int fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
        ssize_t got = fd >= 0 ? pread(fd, j->tailblk, j->tail - blk, (off_t)blk) : -1;
        if (fd >= 0)
            close(fd);
        if (got != (ssize_t)(j->tail - blk)) {
            snprintf(why, whylen, "reading %s: %s", j->path, got < 0 ? strerror(errno) : "short");
            return -EIO;
        }
    }
    if (j->damaged_segment != UINT64_MAX)
        fprintf(stderr,
                "pith: journal %s: read back %llu records; damage at segment %llu offset "
                "%llu, where the journal now goes on\n",
                j->path, (unsigned long long)j->recovered, (unsigned long long)j->damaged_segment,
                (unsigned long long)j->damaged_offset);
    return 0;
}

static void journal_close_files(struct journal *j)
{
    if (j->mk_fd >= 0)
        close(j->mk_fd);
    j->mk_fd = -1;
    pith_free(j->zeros);
    j->zeros = NULL;
    jseg_free_all(j);
    if (j->dirfd >= 0)
        close(j->dirfd);
    j->dirfd = -1;
}

/* The calling shard's journal, opened (and read back) at its first use here. */
static int journal_get(struct journal **out)
{
    int id = pith_shard_id();
    if (id < 0 || (unsigned)id >= JSHARDS_MAX)
        return -EPERM;
    struct journal *j = atomic_load_explicit(&journals[id], memory_order_relaxed);
    if (j == NULL) {
        if (shard_stopping())
            return -ESHUTDOWN;
        const pith_config_t *cfg = shard_config();
        if (cfg == NULL || cfg->journal.dir == NULL)
            return -ENOTCONN;
        /* Plain memory: the engine frees it off the shards, once they are all gone. */
        j = calloc(1, sizeof(*j));
        if (j == NULL)
            return -ENOMEM;
        char why[256] = "";
        int err = journal_open(j, (unsigned)id, cfg, why, sizeof(why));
        if (err) {
            journal_close_files(j);
            j->open_err = err == -ENOMEM ? -ENOMEM : -EIO;
            set_last_error("journal: %s", why);
            fprintf(stderr, "pith: journal of shard %d not opened: %s\n", id, why);
            if (err == -ENOMEM) {
                free(j->path);
                free(j);
                return -ENOMEM; /* the next call tries again */
            }
        }
        /* Release: a reader off the shard that sees the pointer sees what open set. */
        atomic_store_explicit(&journals[id], j, memory_order_release);
    }
    if (j->open_err)
        return j->open_err;
    if (j->closing)
        return -ESHUTDOWN;
    *out = j;
    return 0;
}

/* ---- the API ---- */

int log_open(void)
{
    struct journal *j;
    return journal_get(&j);
}

int log_limits(uint32_t *append_max, uint64_t *segments)
{
    struct journal *j;
    int err = journal_get(&j);
    if (err)
        return err;
    *append_max = (uint32_t)(j->seg_bytes / 4);
    *segments = atomic_load_explicit(&j->st_segments, memory_order_relaxed);
    return 0;
}

int pith_journal_append(uint64_t stream, uint32_t type, const void *data, uint32_t len,
                        pith_journal_fn_t done, void *ctx, uint64_t *seq)
{
    if (type >= LOG_TYPE_ENGINE) {
        if (seq != NULL)
            *seq = 0;
        struct journal *j;
        int err = journal_get(&j);
        return err ? err : -EINVAL;
    }
    return log_append(stream, type, data, len, done, ctx, seq, NULL);
}

int log_append(uint64_t stream, uint32_t type, const void *data, uint32_t len,
               pith_journal_fn_t done, void *ctx, uint64_t *seq, struct log_loc *loc)
{
    if (seq != NULL)
        *seq = 0;
    struct journal *j;
    int err = journal_get(&j);
    if (err)
        return err;
    if ((data == NULL && len > 0) || len > j->seg_bytes / 4)
        return -EINVAL;
    if (j->failed)
        return -EIO;
    uint32_t rec = (uint32_t)JALIGN(sizeof(struct jhdr) + len);
    /* A record larger than pending_max goes once nothing else waits. */
    uint64_t pending = atomic_load_explicit(&j->st_pending, memory_order_relaxed);
    if (pending > 0 && pending + rec > j->pending_max)
        return -EAGAIN;
    /* The record and the zero header after it fit the segment, or the next one takes over. */
    if (j->tail + rec + sizeof(struct jhdr) > j->seg_bytes && (err = next_segment(j)) != 0)
        return err;
    if (j->tail * 2 > j->seg_bytes)
        mk_start(j); /* the next segment, ahead of need */
    if (j->open != NULL && !group_room(j->open, rec))
        seal(j);
    if (j->open == NULL) {
        j->open = group_new(j, j->tail);
        if (j->open == NULL || !group_room(j->open, rec))
            return -ENOMEM;
    }
    struct jgroup *g = j->open;
    if (done != NULL && g->ncb == g->cbcap) {
        uint32_t cap = g->cbcap ? g->cbcap * 2 : 64;
        struct jcb *cbs = pith_realloc(g->cbs, cap * sizeof(*cbs));
        if (cbs == NULL)
            return -ENOMEM;
        g->cbs = cbs;
        g->cbcap = cap;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct jhdr h = {.len = len,
                     .seq = j->next_seq,
                     .stream = stream,
                     .type = type,
                     .epoch = j->epoch,
                     .time_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec};
    h.crc = jhdr_crc(&h, data);
    memcpy(g->buf + g->len, &h, sizeof(h));
    if (len > 0)
        memcpy(g->buf + g->len + sizeof(h), data, len);
    if (done != NULL)
        g->cbs[g->ncb++] = (struct jcb){done, ctx, h.seq};
    if (g->first_seq == 0)
        g->first_seq = h.seq;
    g->last_seq = h.seq;
    if (loc != NULL)
        *loc = (struct log_loc){(uint32_t)g->seg->index, (uint32_t)(g->off + g->len)};
    if (type >= LOG_TYPE_ENGINE)
        g->seg->eng_last = h.seq;
    else
        g->seg->app_last = h.seq;
    g->len += rec;
    g->bytes += rec;
    j->tail += rec;
    j->next_seq++;
    bump(&j->st_appended, 1);
    bump(&j->st_appended_bytes, rec);
    bump(&j->st_pending, rec);
    put(&j->st_last, h.seq);
    if (seq != NULL)
        *seq = h.seq;
    shard_flush_ask();
    return 0;
}

/* pith_journal_scan's callback, through log_scan's. */
struct scan_app {
    int (*fn)(const pith_journal_rec_t *rec, void *ctx);
    void *ctx;
};

static int scan_app_fn(const pith_journal_rec_t *rec, const struct log_loc *loc, void *ctx)
{
    (void)loc;
    const struct scan_app *a = ctx;
    if (rec->type >= LOG_TYPE_ENGINE)
        return 0; /* the engine's own (persist/): not the application's to read */
    return a->fn(rec, a->ctx);
}

int pith_journal_scan(uint64_t from, int (*fn)(const pith_journal_rec_t *rec, void *ctx), void *ctx)
{
    if (fn == NULL) {
        struct journal *j;
        int err = journal_get(&j);
        return err ? err : -EINVAL;
    }
    struct scan_app a = {fn, ctx};
    return log_scan(from, scan_app_fn, &a);
}

int log_scan(uint64_t from, log_scan_fn fn, void *ctx)
{
    struct journal *j;
    int err = journal_get(&j);
    if (err)
        return err;
    for (struct jseg *s = j->segs; s != NULL; s = s->next) {
        int rc = jseg_scan(j, s, from, fn, ctx);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int log_read(const struct log_loc *loc, pith_journal_rec_t *rec, unsigned char **buf, uint32_t *cap)
{
    struct journal *j;
    int err = journal_get(&j);
    if (err)
        return err;
    for (struct jseg *s = j->segs; s != NULL; s = s->next)
        if (s->index == loc->seg)
            return jseg_read(j, s, loc->off, rec, buf, cap);
    return -ENOENT;
}

/* ---- reading records on the ring ---- */

struct many {
    struct journal *j;
    const struct log_rd *rds;
    unsigned char *buf;
    log_many_fn done;
    void *ctx;
    uint32_t n, pending;
    int err;
    struct jseg **segs; /* [n]: each read's segment, held (readers) until it is back */
};

struct many_op {
    struct many *m;
    uint32_t i;
};

static void many_end(struct many *m)
{
    struct journal *j = m->j;
    for (uint32_t i = 0; i < m->n; i++)
        if (m->segs[i] != NULL)
            m->segs[i]->readers--;
    int err = m->err;
    for (uint32_t i = 0; i < m->n && err == 0; i++) {
        const struct log_rd *r = &m->rds[i];
        struct jhdr h;
        memcpy(&h, m->buf + r->at, sizeof(h));
        if (h.seq != r->seq || sizeof(h) + (uint64_t)h.len != r->len ||
            jhdr_crc(&h, m->buf + r->at + sizeof(h)) != h.crc)
            err = -EIO;
    }
    if (j->closing && err == 0)
        err = -ECANCELED;
    log_many_fn done = m->done;
    void *ctx = m->ctx;
    pith_free(m->segs);
    pith_free(m);
    done(err, ctx);
}

static void many_back(struct fop *f, int res)
{
    struct many_op *o = (struct many_op *)f->data;
    struct many *m = o->m;
    /* The kernel filled the bytes through the ring, where memcheck does not look. */
    if (res > 0)
        (void)VALGRIND_MAKE_MEM_DEFINED(m->buf + m->rds[o->i].at, (size_t)res);
    if (res != (int)m->rds[o->i].len && m->err == 0)
        m->err = res < 0 ? (res == -ECANCELED ? -ECANCELED : -EIO) : -EIO;
    if (--m->pending == 0)
        many_end(m);
}

int log_read_many(const struct log_rd *rds, uint32_t n, unsigned char *buf, log_many_fn done,
                  void *ctx)
{
    struct journal *j;
    int err = journal_get(&j);
    if (err)
        return err;
    if (n == 0 || done == NULL)
        return -EINVAL;
    struct many *m = pith_calloc(1, sizeof(*m));
    struct jseg **segs = m != NULL ? pith_calloc(n, sizeof(*segs)) : NULL;
    if (segs == NULL) {
        pith_free(m);
        return -ENOMEM;
    }
    *m = (struct many){j, rds, buf, done, ctx, n, 0, 0, segs};
    /* Find each read's segment (records come mostly in order: the search goes on from the
     * last one found) and its read descriptor. */
    struct jseg *s = j->segs;
    for (uint32_t i = 0; i < n && err == 0; i++) {
        if (s == NULL || s->index > rds[i].loc.seg)
            s = j->segs;
        while (s != NULL && s->index != rds[i].loc.seg)
            s = s->next;
        if (s == NULL || rds[i].loc.off + (uint64_t)rds[i].len > s->end) {
            err = s == NULL ? -ENOENT : -EINVAL;
            break;
        }
        if (s->rfd < 0) {
            char name[32];
            snprintf(name, sizeof(name), "%08llu.seg", (unsigned long long)s->index);
            s->rfd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
            if (s->rfd < 0)
                err = -errno;
        }
        segs[i] = s;
    }
    if (err) {
        pith_free(segs);
        pith_free(m);
        return err;
    }
    for (uint32_t i = 0; i < n; i++)
        segs[i]->readers++;
    /* One read each; the whole set counts as pending until the last is submitted, so that a
     * read that cannot be queued ends it (with what came back) without a gap. */
    m->pending = 1;
    for (uint32_t i = 0; i < n; i++) {
        struct fop *f = fop_new(shard_fops(), sizeof(struct many_op), many_back);
        struct io_uring_sqe *sqe = f != NULL ? fop_sqe(f, false) : NULL;
        if (sqe == NULL) {
            if (f != NULL)
                fop_discard(f);
            m->err = -ENOMEM;
            break;
        }
        *(struct many_op *)f->data = (struct many_op){m, i};
        io_uring_prep_read(sqe, segs[i]->rfd, buf + rds[i].at, rds[i].len, rds[i].loc.off);
        fop_arm(f, sqe, 0);
        m->pending++;
    }
    if (--m->pending == 0)
        many_end(m);
    return 0;
}

/* Segments whose records are all released, by the application and by the engine, leave: whole
 * segments only, oldest first, never the one records go to, nor one still written. */
static void release_some(struct journal *j)
{
    unsigned n = 0;
    while (j->segs != j->segs_tail && j->segs->users == 0 && j->segs->readers == 0 &&
           j->segs->app_last <= j->app_upto && j->segs->eng_last <= j->eng_upto) {
        struct jseg *s = j->segs;
        j->segs = s->next;
        release_file(j, s->index);
        if (s->fd >= 0)
            close(s->fd);
        if (s->rfd >= 0)
            close(s->rfd);
        free(s);
        n++;
    }
    bump(&j->st_segments, (uint64_t)0 - n);
    bump(&j->st_released, n);
}

int pith_journal_release(uint64_t upto)
{
    struct journal *j;
    int err = journal_get(&j);
    if (err)
        return err;
    if (upto > j->durable_seq)
        return -EINVAL;
    if (upto > j->app_upto)
        j->app_upto = upto;
    release_some(j);
    return 0;
}

int log_release_engine(uint64_t upto)
{
    struct journal *j;
    int err = journal_get(&j);
    if (err)
        return err;
    if (upto > j->durable_seq)
        return -EINVAL;
    if (upto > j->eng_upto)
        j->eng_upto = upto;
    release_some(j);
    return 0;
}

int pith_journal_stats(unsigned shard, pith_journal_stats_t *out)
{
    if (out == NULL)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    out->damaged_segment = UINT64_MAX;
    out->crc_hw = log_crc32c_hw();
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    if (shard >= pith_shard_count() || shard >= JSHARDS_MAX) {
        shard_reader_leave();
        return -EINVAL;
    }
    /* Acquire: pairs with journal_get's release, so the fields open set are seen. */
    struct journal *j = atomic_load_explicit(&journals[shard], memory_order_acquire);
    if (j != NULL && j->open_err == 0) {
        out->open = true;
        out->failed = atomic_load_explicit(&j->st_broken, memory_order_relaxed);
        out->direct = j->direct;
        out->last_seq = atomic_load_explicit(&j->st_last, memory_order_relaxed);
        out->durable_seq = atomic_load_explicit(&j->st_durable, memory_order_relaxed);
        out->appended = atomic_load_explicit(&j->st_appended, memory_order_relaxed);
        out->appended_bytes = atomic_load_explicit(&j->st_appended_bytes, memory_order_relaxed);
        out->acked = atomic_load_explicit(&j->st_acked, memory_order_relaxed);
        out->failed_records = atomic_load_explicit(&j->st_failed, memory_order_relaxed);
        out->groups = atomic_load_explicit(&j->st_groups, memory_order_relaxed);
        out->syncs = atomic_load_explicit(&j->st_syncs, memory_order_relaxed);
        out->bytes_written = atomic_load_explicit(&j->st_bytes, memory_order_relaxed);
        out->pending_bytes = atomic_load_explicit(&j->st_pending, memory_order_relaxed);
        out->segments = atomic_load_explicit(&j->st_segments, memory_order_relaxed);
        out->released = atomic_load_explicit(&j->st_released, memory_order_relaxed);
        out->recycled = atomic_load_explicit(&j->st_recycled, memory_order_relaxed);
        out->recovered = j->recovered;
        out->recovered_bytes = j->recovered_bytes;
        out->damaged_segment = j->damaged_segment;
        out->damaged_offset = j->damaged_offset;
    }
    shard_reader_leave();
    return 0;
}

int log_hists(unsigned shard, uint64_t *commit, uint64_t *commit_sum, uint64_t *sync,
              uint64_t *sync_sum)
{
    memset(commit, 0, HIST_BUCKETS * sizeof(*commit));
    memset(sync, 0, HIST_BUCKETS * sizeof(*sync));
    *commit_sum = *sync_sum = 0;
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    if (shard >= pith_shard_count() || shard >= JSHARDS_MAX) {
        shard_reader_leave();
        return -EINVAL;
    }
    /* Acquire: as pith_journal_stats's. */
    struct journal *j = atomic_load_explicit(&journals[shard], memory_order_acquire);
    if (j != NULL && j->open_err == 0) {
        for (unsigned b = 0; b < HIST_BUCKETS; b++) {
            commit[b] = atomic_load_explicit(&j->h_commit[b], memory_order_relaxed);
            sync[b] = atomic_load_explicit(&j->h_sync[b], memory_order_relaxed);
        }
        *commit_sum = atomic_load_explicit(&j->h_commit_sum, memory_order_relaxed);
        *sync_sum = atomic_load_explicit(&j->h_sync_sum, memory_order_relaxed);
    }
    shard_reader_leave();
    return 0;
}

/* ---- the shard's hooks ---- */

/* End of the loop's run step: the records appended meanwhile go in one group. */
static void journal_flush(unsigned shard)
{
    struct journal *j = atomic_load_explicit(&journals[shard], memory_order_relaxed);
    if (j == NULL || j->open_err || j->writing)
        return; /* a write in flight: its end seals what gathered meanwhile */
    seal(j);
    write_next(j);
}

static bool journal_quiet(void *arg)
{
    struct journal *j = arg;
    /* Groups written while stopping wait for no timer: synced now. */
    for (struct jgroup *g = j->qhead; g != NULL && !j->failed; g = g->next)
        if (g->state == G_WAITSYNC) {
            sync_batch(j);
            break;
        }
    return j->qhead == NULL && !j->writing && j->batches == 0 &&
           (j->mk_state == MK_NONE || j->mk_state == MK_READY || j->mk_state == MK_FAILED);
}

/* The shard has left its loop: what was appended is written and synced, for drain_ns at most;
 * what is still unacknowledged then fails with -ECANCELED. */
static void journal_ring_exit(unsigned shard)
{
    struct journal *j =
        shard < JSHARDS_MAX ? atomic_load_explicit(&journals[shard], memory_order_relaxed) : NULL;
    if (j == NULL || j->open_err)
        return;
    const pith_config_t *cfg = shard_config();
    if (!j->writing) {
        seal(j);
        write_next(j);
    }
    (void)io_ring_settle(shard_io(), cfg != NULL ? cfg->drain_ns : 0, journal_quiet, j);
    /* Closing first: appends from the callbacks below are refused, and completions that come
     * later (in fops_drain) touch nothing; a group still in flight waits in graves for
     * shard_exit. */
    j->closing = true;
    seal(j);
    for (struct jgroup *g = j->qhead; g != NULL; g = g->next) {
        if (g->state != G_DONE) {
            g->state = G_FAILED;
            g->err = -ECANCELED;
        }
    }
    ack_ready(j);
}

static void journal_shard_exit(unsigned shard)
{
    struct journal *j =
        shard < JSHARDS_MAX ? atomic_load_explicit(&journals[shard], memory_order_relaxed) : NULL;
    if (j == NULL)
        return;
    for (struct jgroup *g = j->graves, *next; g != NULL; g = next) {
        next = g->next;
        group_free(g);
    }
    j->graves = NULL;
    group_free(j->open);
    j->open = NULL;
    journal_close_files(j);
}

static void journal_engine_gone(void)
{
    for (unsigned i = 0; i < JSHARDS_MAX; i++) {
        struct journal *j = atomic_exchange_explicit(&journals[i], NULL, memory_order_relaxed);
        if (j != NULL) {
            free(j->path);
            free(j);
        }
    }
}

__attribute__((constructor)) static void journal_hooks(void)
{
    static const struct shard_hooks h = {
        .ring_exit = journal_ring_exit,
        .shard_exit = journal_shard_exit,
        .engine_gone = journal_engine_gone,
        .flush = journal_flush,
    };
    shard_hooks_add(&h);
}
