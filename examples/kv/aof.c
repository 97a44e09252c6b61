/* pith-kv's persistence on the engine's journal: the records (a key's state, or FLUSHALL), the
 * meta file, reading back at start, and the replies that wait for durability (always). */
#include "aof.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "latency.h"

int aof_mode = AOF_OFF;

enum { R_PUT = 1, R_DEL = 2, R_FLUSH = 3 };

/* A record's payload: expiry (ms, 0: none), key length, then the key and (PUT) the value. */
struct rec {
    int64_t expire_ms;
    uint32_t klen;
};

struct waiter {
    struct waiter *next;
    uint64_t since; /* when it began to wait (pith_now_ns) */
    uint64_t seq;   /* runs once this is durable */
    void (*fn)(void *arg, int err);
    void *arg;
};

/* Each shard's part, touched by that shard only (but for the atomics INFO reads). */
struct aof_shard {
    /* A rewrite: scanning from cursor, its records from first_seq on; scanned up to end_seq. */
    bool rw_active, rw_scanned;
    uint64_t rw_cursor, rw_first, rw_end;
    uint64_t rw_bytes_at; /* the journal's bytes_written when the last one ended */
    _Atomic uint64_t rw_done;
    _Atomic bool rw_running;
    uint64_t appended, durable; /* the last sequence appended, and acknowledged */
    int failed;                 /* the error of a failed record, if one failed */
    bool error;                 /* for aof_take_error */
    struct waiter *head, *tail;
};

static struct aof_shard shards[4096];

static struct aof_shard *mine(void)
{
    return &shards[pith_shard_id()];
}

int aof_parse(const char *s)
{
    if (strcmp(s, "always") == 0)
        return AOF_ALWAYS;
    if (strcmp(s, "everysec") == 0)
        return AOF_EVERYSEC;
    if (strcmp(s, "no") == 0)
        return AOF_NO;
    return -1;
}

void aof_config(pith_config_t *cfg, const char *dir, uint64_t segment_bytes)
{
    cfg->journal.dir = dir;
    cfg->journal.segment_bytes = segment_bytes; /* 0: the engine's default, 64 MiB */
    if (aof_mode == AOF_EVERYSEC)
        cfg->journal.sync_every_ns = 1000000000ull;
    else if (aof_mode == AOF_NO)
        cfg->journal.flags |= PITH_JOURNAL_NOSYNC;
    /* A second of writes may wait for everysec's sync: room for it, and for always's
     * pipelines. The bytes are counted, not held (groups free their buffers once written). */
    cfg->journal.pending_max = 1ull << 30;
}

/* ---- kv.meta ---- */

int aof_meta_read(const char *dir, unsigned char key[16], unsigned *nshards)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/kv.meta", dir);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        fprintf(stderr, "pith-kv: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char hex[40] = "";
    unsigned n = 0;
    int got = fscanf(f, "pith-kv 1\nshards %u\nkey %32s\n", &n, hex);
    fclose(f);
    if (got != 2 || strlen(hex) != 32 || n == 0) {
        fprintf(stderr, "pith-kv: %s is not a pith-kv meta file\n", path);
        return -1;
    }
    for (int i = 0; i < 16; i++) {
        unsigned b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1) {
            fprintf(stderr, "pith-kv: %s: a bad key\n", path);
            return -1;
        }
        key[i] = (unsigned char)b;
    }
    *nshards = n;
    return 1;
}

int aof_meta_write(const char *dir, const unsigned char key[16], unsigned nshards)
{
    char path[4200], tmp[4200];
    snprintf(path, sizeof(path), "%s/kv.meta", dir);
    snprintf(tmp, sizeof(tmp), "%s/kv.meta.tmp", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    char text[128];
    int len = snprintf(text, sizeof(text), "pith-kv 1\nshards %u\nkey ", nshards);
    for (int i = 0; i < 16; i++)
        len += snprintf(text + len, sizeof(text) - (size_t)len, "%02x", key[i]);
    len += snprintf(text + len, sizeof(text) - (size_t)len, "\n");
    int err = 0;
    if (write(fd, text, (size_t)len) != len || fsync(fd) != 0)
        err = errno ? -errno : -EIO;
    close(fd);
    if (err == 0 && rename(tmp, path) != 0)
        err = -errno;
    int dfd = err == 0 ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (err == 0 && (dfd < 0 || fsync(dfd) != 0))
        err = -errno;
    if (dfd >= 0)
        close(dfd);
    return err;
}

/* ---- reading back ---- */

struct load {
    struct store *st;
    int64_t now;
    uint64_t n;
    int err;
};

static int apply(const pith_journal_rec_t *r, void *ctx)
{
    struct load *l = ctx;
    struct rec h;
    l->n++;
    if (r->type == R_FLUSH) {
        (void)store_clear(l->st);
        return 0;
    }
    if (r->len < sizeof(h))
        return -EPROTO;
    memcpy(&h, r->data, sizeof(h));
    if (h.klen > r->len - sizeof(h))
        return -EPROTO;
    const char *k = (const char *)r->data + sizeof(h);
    uint64_t hash = kv_hash(k, h.klen);
    if (r->type == R_DEL || (h.expire_ms != 0 && h.expire_ms <= l->now)) {
        (void)store_del(l->st, k, h.klen, hash, l->now);
        return 0;
    }
    if (r->type != R_PUT)
        return -EPROTO;
    const char *v = k + h.klen;
    size_t vl = r->len - sizeof(h) - h.klen;
    return store_set(l->st, k, h.klen, hash, v, vl, h.expire_ms) != NULL ? 0 : -ENOMEM;
}

int aof_load(struct store *st, int64_t now_ms, uint64_t *records)
{
    struct load l = {st, now_ms, 0, 0};
    int rc = pith_journal_scan(1, apply, &l);
    *records = l.n;
    struct aof_shard *a = mine();
    pith_journal_stats_t js;
    if (pith_journal_stats((unsigned)pith_shard_id(), &js) == 0)
        a->appended = a->durable = js.durable_seq;
    return rc;
}

/* ---- writing ---- */

/* Every record's acknowledgement: in sequence order. */
static void acked(int err, uint64_t seq, void *ctx)
{
    (void)ctx;
    struct aof_shard *a = mine();
    if (err != 0 && a->failed == 0)
        a->failed = err;
    a->durable = seq;
    /* The oldest waiter waited longest: the latency monitor's aof-fsync-always event. */
    if (a->head != NULL && a->head->seq <= seq)
        latency_add(LAT_AOF_FSYNC_ALWAYS, (pith_now_ns() - a->head->since) / 1000000);
    while (a->head != NULL && a->head->seq <= seq) {
        struct waiter *w = a->head;
        a->head = w->next;
        if (a->head == NULL)
            a->tail = NULL;
        w->fn(w->arg, err != 0 ? err : 0);
        free(w);
    }
}

static int append(uint32_t type, const void *payload, uint32_t len)
{
    struct aof_shard *a = mine();
    uint64_t seq;
    int rc = pith_journal_append(0, type, payload, len, acked, NULL, &seq);
    if (rc != 0) {
        a->error = true;
        if (rc == -EIO)
            a->failed = rc;
        return rc;
    }
    a->appended = seq;
    return 0;
}

/* A key's state as a record: PUT with e's value and expiry, or DEL when e is NULL. An append
 * that fails is remembered for aof_take_error. */
static int append_state(const char *k, size_t kl, const struct entry *e)
{
    size_t vl = e != NULL ? e->vlen : 0;
    size_t len = sizeof(struct rec) + kl + vl;
    char small[512];
    char *buf = len > UINT32_MAX ? NULL : len <= sizeof(small) ? small : pith_malloc(len);
    if (buf == NULL) {
        mine()->error = true;
        return len > UINT32_MAX ? -EINVAL : -ENOMEM;
    }
    struct rec r = {e != NULL ? e->expire_ms : 0, (uint32_t)kl};
    memcpy(buf, &r, sizeof(r));
    memcpy(buf + sizeof(r), k, kl);
    if (e != NULL)
        memcpy(buf + sizeof(r) + kl, e->data + e->klen, vl);
    int rc = append(e != NULL ? R_PUT : R_DEL, buf, (uint32_t)len);
    if (buf != small)
        pith_free(buf);
    return rc;
}

int aof_key(struct store *st, const char *k, size_t kl, uint64_t h, int64_t now_ms)
{
    if (aof_mode == AOF_OFF)
        return 0;
    return append_state(k, kl, store_get(st, k, kl, h, now_ms));
}

int aof_flushall(void)
{
    return aof_mode == AOF_OFF ? 0 : append(R_FLUSH, NULL, 0);
}

bool aof_pending(void)
{
    struct aof_shard *a = mine();
    return a->durable < a->appended;
}

bool aof_take_error(void)
{
    struct aof_shard *a = mine();
    bool e = a->error;
    a->error = false;
    return e;
}

bool aof_broken(void)
{
    return aof_mode != AOF_OFF && mine()->failed != 0;
}

int aof_when_durable(void (*fn)(void *arg, int err), void *arg)
{
    struct aof_shard *a = mine();
    if (a->durable >= a->appended)
        return -EALREADY;
    struct waiter *w = malloc(sizeof(*w));
    if (w == NULL)
        return -ENOMEM;
    *w = (struct waiter){NULL, pith_now_ns(), a->appended, fn, arg};
    if (a->tail != NULL)
        a->tail->next = w;
    else
        a->head = w;
    a->tail = w;
    return 0;
}

/* ---- rewriting ---- */

static void put_entry(struct entry *e, void *ctx)
{
    int *err = ctx;
    if (*err == 0)
        *err = append_state(e->data, e->klen, e);
}

int aof_rewrite_start(void)
{
    if (aof_mode == AOF_OFF)
        return -ENOTCONN;
    struct aof_shard *a = mine();
    if (a->rw_active)
        return -EALREADY;
    a->rw_active = true;
    a->rw_scanned = false;
    a->rw_cursor = 0;
    a->rw_first = a->appended + 1; /* every record from here on is kept */
    atomic_store_explicit(&a->rw_running, true, memory_order_relaxed);
    return 0;
}

static void rewrite_end(struct aof_shard *a, bool released)
{
    a->rw_active = false;
    atomic_store_explicit(&a->rw_running, false, memory_order_relaxed);
    pith_journal_stats_t js;
    if (pith_journal_stats((unsigned)pith_shard_id(), &js) == 0)
        a->rw_bytes_at = js.appended_bytes;
    if (released)
        atomic_fetch_add_explicit(&a->rw_done, 1, memory_order_relaxed);
}

bool aof_rewrite_tick(struct store *st, int64_t now_ms, uint64_t slice_ns, uint64_t data_bytes)
{
    if (aof_mode == AOF_OFF)
        return false;
    struct aof_shard *a = mine();
    if (!a->rw_active) {
        pith_journal_stats_t js;
        uint64_t floor = 2 * data_bytes > (64ull << 20) ? 2 * data_bytes : 64ull << 20;
        if (pith_journal_stats((unsigned)pith_shard_id(), &js) != 0 ||
            js.appended_bytes - a->rw_bytes_at <= floor || aof_rewrite_start() != 0)
            return false;
    }
    uint64_t t0 = pith_now_ns();
    while (!a->rw_scanned && pith_now_ns() - t0 < slice_ns) {
        int err = 0;
        store_scan(st, &a->rw_cursor, 256, now_ms, put_entry, &err);
        if (err != 0) {
            rewrite_end(a, false); /* an append failed: nothing released; tried again later */
            return false;
        }
        if (a->rw_cursor == 0) {
            a->rw_scanned = true;
            a->rw_end = a->appended;
        }
    }
    if (a->rw_scanned && a->failed != 0) {
        rewrite_end(a, false);
    } else if (a->rw_scanned && a->durable >= a->rw_end) {
        /* Durable: what came before the rewrite's first record is not needed any more. */
        int rc = a->rw_first > 1 ? pith_journal_release(a->rw_first - 1) : 0;
        rewrite_end(a, rc == 0);
    }
    return a->rw_active;
}

uint64_t aof_rewrites(unsigned shard)
{
    return atomic_load_explicit(&shards[shard].rw_done, memory_order_relaxed);
}

bool aof_rewriting(unsigned shard)
{
    return atomic_load_explicit(&shards[shard].rw_running, memory_order_relaxed);
}
