/* A shard's segment files: reading them back at the journal's first use (where the records
 * end, where damage stops them), making one with plain system calls, and reading records for
 * pith_journal_scan. What runs on the ring is in journal.c. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pith/mem.h>

#include "log.h"

#define READ_CHUNK (1u << 20)

uint32_t jhdr_crc(const struct jhdr *h, const void *payload)
{
    uint32_t c = pith_crc32c(0, (const unsigned char *)h + 4, sizeof(*h) - 4);
    return pith_crc32c(c, payload, h->len);
}

int jseg_open_flags(const struct journal *j)
{
    return O_WRONLY | O_CLOEXEC | (j->direct ? O_DIRECT : 0);
}

static void seg_name(uint64_t index, char *out, size_t n)
{
    snprintf(out, n, "%08llu.seg", (unsigned long long)index);
}

/* Writes len bytes of zeros from the file's start (buffered: the fsync after makes them
 * durable). 0 or -errno. */
static int write_zeros(int fd, uint64_t len)
{
    unsigned char *z = calloc(1, JZERO_CHUNK);
    if (z == NULL)
        return 0; /* only allocated, then: slower syncs, no harm */
    int err = 0;
    for (uint64_t off = 0; off < len && err == 0;) {
        size_t n = len - off < JZERO_CHUNK ? (size_t)(len - off) : JZERO_CHUNK;
        ssize_t w = pwrite(fd, z, n, (off_t)off);
        if (w > 0)
            off += (uint64_t)w;
        else if (w == 0 || errno != EINTR)
            err = w == 0 ? -EIO : -errno;
    }
    free(z);
    return err;
}

int jseg_make_now(struct journal *j, uint64_t index, int *fd)
{
    char name[32];
    seg_name(index, name, sizeof(name));
    int f = openat(j->dirfd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0)
        return -errno;
    struct stat st;
    int err = fstat(f, &st) != 0 || fallocate(f, 0, 0, (off_t)j->seg_bytes) != 0 ? -errno : 0;
    /* A new file is written with zeros, as journal.c makes the next ones (log.h, MK_ZERO);
     * one that holds records already is left as it is. */
    bool fresh = err == 0 && st.st_size == 0;
    if (fresh)
        err = write_zeros(f, j->seg_bytes);
    if (err == 0 && (fsync(f) != 0 || fsync(j->dirfd) != 0))
        err = -errno;
    /* The zeros leave the page cache: an O_DIRECT write over cached pages has the kernel drop
     * them first, a cost on every group's write. */
    if (err == 0 && fresh)
        (void)posix_fadvise(f, 0, (off_t)j->seg_bytes, POSIX_FADV_DONTNEED);
    close(f);
    if (err)
        return err;
    f = openat(j->dirfd, name, jseg_open_flags(j));
    if (f < 0 && errno == EINVAL && j->direct) {
        j->direct = false; /* the file system refuses O_DIRECT */
        f = openat(j->dirfd, name, jseg_open_flags(j));
    }
    if (f < 0)
        return -errno;
    *fd = f;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The segment numbers in the directory, sorted. */
static int list_segments(struct journal *j, uint64_t **out, size_t *n)
{
    int dfd = dup(j->dirfd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (d == NULL) {
        if (dfd >= 0)
            close(dfd);
        return -errno;
    }
    rewinddir(d);
    size_t cap = 16, k = 0;
    uint64_t *v = malloc(cap * sizeof(*v));
    struct dirent *de;
    while (v != NULL && (de = readdir(d)) != NULL) {
        char *end;
        unsigned long long x = strtoull(de->d_name, &end, 10);
        if (end == de->d_name || strcmp(end, ".seg") != 0)
            continue;
        if (k == cap) {
            uint64_t *w = realloc(v, 2 * cap * sizeof(*v));
            if (w == NULL) {
                free(v);
                v = NULL;
                break;
            }
            v = w;
            cap *= 2;
        }
        v[k++] = x;
    }
    closedir(d);
    if (v == NULL)
        return -ENOMEM;
    qsort(v, k, sizeof(*v), cmp_u64);
    *out = v;
    *n = k;
    return 0;
}

/* How reading a segment back ended. */
enum { R_ZEROS, R_STALE, R_DAMAGE, R_EOF };

struct reader {
    int fd;
    uint64_t size;
    unsigned char *buf; /* cap bytes: READ_CHUNK, or the largest record met */
    size_t cap;
    uint64_t buf_off; /* file offset of buf[0] */
    uint32_t buf_len;
};

/* Makes [off, off + len) of the file lie in r->buf; false past the end or on a read error
 * (*err; -ENOMEM when a record is larger than the buffer and it cannot grow). */
static bool reader_at(struct reader *r, uint64_t off, uint32_t len, int *err)
{
    if (off + len > r->size)
        return false;
    if (off >= r->buf_off && off + len <= r->buf_off + r->buf_len)
        return true;
    if (len > r->cap) {
        unsigned char *b = realloc(r->buf, len);
        if (b == NULL) {
            *err = -ENOMEM;
            return false;
        }
        r->buf = b;
        r->cap = len;
        r->buf_len = 0; /* what it held is not kept */
    }
    uint64_t want = r->size - off < r->cap ? r->size - off : r->cap;
    ssize_t got = pread(r->fd, r->buf, want, (off_t)off);
    if (got < (ssize_t)len) {
        *err = got < 0 ? -errno : -EIO;
        return false;
    }
    r->buf_off = off;
    r->buf_len = (uint32_t)got;
    return true;
}

/* The record at off, checked: R_EOF with *h filled and the payload at *payload when it is a
 * good record that follows (expect, epoch); else why not. */
static int read_record(struct journal *j, struct reader *r, uint64_t off, uint64_t expect,
                       uint32_t epoch, struct jhdr *h, const unsigned char **payload, int *err)
{
    if (!reader_at(r, off, sizeof(*h), err))
        return *err ? R_DAMAGE : R_ZEROS; /* the file's end: no room for a record */
    memcpy(h, r->buf + (off - r->buf_off), sizeof(*h));
    if (h->crc == 0 && h->len == 0 && h->seq == 0 && h->epoch == 0)
        return R_ZEROS;
    if (h->len > j->seg_bytes / 4 || !reader_at(r, off, sizeof(*h) + h->len, err))
        return R_DAMAGE;
    *payload = r->buf + (off - r->buf_off) + sizeof(*h);
    if (jhdr_crc(h, *payload) != h->crc)
        return R_DAMAGE;
    if (h->epoch < epoch)
        return R_STALE; /* an earlier run's: a segment file made again for reuse */
    if (expect != 0 && h->seq != expect)
        return h->seq < expect ? R_STALE : R_DAMAGE; /* older: a segment made again from a spare */
    return R_EOF;
}

int jseg_recover(struct journal *j, char *why, size_t whylen)
{
    uint64_t *idx = NULL;
    size_t n = 0;
    int err = list_segments(j, &idx, &n);
    if (err) {
        snprintf(why, whylen, "listing %s: %s", j->path, strerror(-err));
        return err;
    }
    struct reader r = {.fd = -1, .buf = malloc(READ_CHUNK), .cap = READ_CHUNK};
    if (r.buf == NULL) {
        free(idx);
        return -ENOMEM;
    }
    uint64_t expect = 0, end_off = 0;
    uint32_t epoch = 0;
    struct jseg *end_seg = NULL;
    j->damaged_segment = UINT64_MAX;
    for (size_t i = 0; i < n && err == 0; i++) {
        char name[32];
        seg_name(idx[i], name, sizeof(name));
        r.fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (r.fd < 0 || fstat(r.fd, &st) != 0) {
            err = -errno;
            snprintf(why, whylen, "opening %s/%s: %s", j->path, name, strerror(errno));
            break;
        }
        r.size = (uint64_t)st.st_size;
        r.buf_off = r.buf_len = 0;
        struct jseg *s = calloc(1, sizeof(*s));
        if (s == NULL) {
            err = -ENOMEM;
            break;
        }
        s->index = idx[i];
        s->fd = s->rfd = -1;
        uint64_t off = 0;
        int how;
        for (;;) {
            struct jhdr h;
            const unsigned char *p;
            int rerr = 0;
            how = read_record(j, &r, off, expect, epoch, &h, &p, &rerr);
            if (rerr) {
                err = rerr;
                snprintf(why, whylen, "reading %s/%s: %s", j->path, name, strerror(-rerr));
            }
            if (how != R_EOF)
                break;
            if (s->first_seq == 0)
                s->first_seq = h.seq;
            s->last_seq = h.seq;
            if (h.type >= LOG_TYPE_ENGINE)
                s->eng_last = h.seq;
            else
                s->app_last = h.seq;
            expect = h.seq + 1;
            epoch = h.epoch;
            off += JALIGN(sizeof(h) + h.len);
            j->recovered++;
            j->recovered_bytes += sizeof(h) + h.len;
        }
        close(r.fd);
        r.fd = -1;
        s->end = off;
        /* A segment that does not go on from the last one (it is an earlier run's, made for
         * reuse): the records ended with the last one. */
        if (off == 0 && end_seg != NULL) {
            free(s);
            if (how == R_DAMAGE && err == 0 && expect != 0) {
                j->damaged_segment = idx[i];
                j->damaged_offset = 0;
            }
            break;
        }
        if (j->segs_tail != NULL)
            j->segs_tail->next = s;
        else
            j->segs = s;
        j->segs_tail = s;
        end_seg = s;
        end_off = off;
        if (how == R_DAMAGE && err == 0) {
            j->damaged_segment = s->index;
            j->damaged_offset = off;
        }
        if (how != R_ZEROS)
            break; /* damage or an earlier run's records: nothing after counts */
    }
    free(r.buf);
    free(idx);
    if (err)
        return err;
    j->epoch = epoch + 1;
    j->next_seq = expect != 0 ? expect : 1;
    j->durable_seq = j->next_seq - 1;
    j->tail = end_off;
    if (end_seg == NULL) {
        struct jseg *s = calloc(1, sizeof(*s));
        if (s == NULL)
            return -ENOMEM;
        s->fd = s->rfd = -1;
        j->segs = j->segs_tail = s;
    }
    /* The records go on in the last segment that holds some, on a descriptor for writing. */
    struct jseg *t = j->segs_tail;
    err = jseg_make_now(j, t->index, &t->fd);
    if (err)
        snprintf(why, whylen, "making %s segment %llu: %s", j->path, (unsigned long long)t->index,
                 strerror(-err));
    return err;
}

int jseg_scan(struct journal *j, struct jseg *seg, uint64_t from, log_scan_fn fn, void *ctx)
{
    if (seg->end == 0 || seg->last_seq < from)
        return 0;
    char name[32];
    seg_name(seg->index, name, sizeof(name));
    struct reader r = {.fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC), .size = seg->end};
    if (r.fd < 0)
        return -errno;
    r.buf = malloc(READ_CHUNK);
    r.cap = READ_CHUNK;
    int rc = r.buf == NULL ? -ENOMEM : 0;
    for (uint64_t off = 0; rc == 0 && off < seg->end;) {
        struct jhdr h;
        const unsigned char *p;
        int err = 0;
        if (read_record(j, &r, off, 0, 0, &h, &p, &err) != R_EOF) {
            rc = err ? err : -EIO; /* it was good when it was written or read back */
            break;
        }
        struct log_loc loc = {(uint32_t)seg->index, (uint32_t)off};
        off += JALIGN(sizeof(h) + h.len);
        if (h.seq < from)
            continue;
        pith_journal_rec_t rec = {.seq = h.seq,
                                  .stream = h.stream,
                                  .time_ns = h.time_ns,
                                  .type = h.type,
                                  .len = h.len,
                                  .data = p};
        rc = fn(&rec, &loc, ctx);
    }
    free(r.buf);
    close(r.fd);
    return rc;
}

int jseg_read(struct journal *j, struct jseg *seg, uint32_t off, pith_journal_rec_t *rec,
              unsigned char **buf, uint32_t *cap)
{
    if (off + sizeof(struct jhdr) > seg->end)
        return -EINVAL;
    if (seg->rfd < 0) {
        char name[32];
        seg_name(seg->index, name, sizeof(name));
        seg->rfd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
        if (seg->rfd < 0)
            return -errno;
    }
    /* One read of the header and, usually, the payload (the engine's records are mostly
     * small); a longer one is read again whole. */
    uint32_t want = 512;
    if (off + (uint64_t)want > seg->end)
        want = (uint32_t)(seg->end - off);
    for (int pass = 0; pass < 2; pass++) {
        if (*cap < want) {
            unsigned char *b = pith_realloc(*buf, want);
            if (b == NULL)
                return -ENOMEM;
            *buf = b;
            *cap = want;
        }
        ssize_t got = pread(seg->rfd, *buf, want, (off_t)off);
        if (got < (ssize_t)sizeof(struct jhdr))
            return got < 0 ? -errno : -EIO;
        struct jhdr h;
        memcpy(&h, *buf, sizeof(h));
        if (h.len > j->seg_bytes / 4 || off + sizeof(h) + h.len > seg->end)
            return -EIO;
        if ((size_t)got < sizeof(h) + h.len) {
            want = (uint32_t)(sizeof(h) + h.len);
            continue;
        }
        if (jhdr_crc(&h, *buf + sizeof(h)) != h.crc)
            return -EIO;
        *rec = (pith_journal_rec_t){.seq = h.seq,
                                    .stream = h.stream,
                                    .time_ns = h.time_ns,
                                    .type = h.type,
                                    .len = h.len,
                                    .data = *buf + sizeof(h)};
        return 0;
    }
    return -EIO;
}

void jseg_find_spares(struct journal *j)
{
    int dfd = dup(j->dirfd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (d == NULL) {
        if (dfd >= 0)
            close(dfd);
        return; /* none found: new segments are made as they would be */
    }
    rewinddir(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL && j->nspare < JSPARES) {
        char *end;
        unsigned long long x = strtoull(de->d_name, &end, 10);
        if (end == de->d_name || strcmp(end, ".spare") != 0)
            continue;
        j->spare[j->nspare] = x;
        j->spare_ready[j->nspare++] = true;
    }
    closedir(d);
}

void jseg_free_all(struct journal *j)
{
    for (struct jseg *s = j->segs, *next; s != NULL; s = next) {
        next = s->next;
        if (s->fd >= 0)
            close(s->fd);
        if (s->rfd >= 0)
            close(s->rfd);
        free(s);
    }
    j->segs = j->segs_tail = NULL;
}
