/* SLOWLOG's entries, per shard (slowlog.h): making an entry with Redis's cuts, keeping at most
 * slowlog-max-len of them, and SLOWLOG GET's parts and their merge. */
#include "slowlog.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <pith/pith.h>

#include "config.h"

struct slow_entry {
    struct slow_entry *newer, *older;
    uint64_t id;
    int64_t time; /* Unix seconds */
    uint64_t duration_us;
    size_t bytes; /* the whole allocation */
    uint32_t argc;
    char addr[SLOWLOG_ADDR_MAX];
    uint32_t len[]; /* [argc + 1]: each argument's bytes as kept, then the name's; then them */
};

/* A shard's log, newest first; touched by that shard only but for len_pub. */
struct slowlog {
    struct slow_entry *newest, *oldest;
    uint64_t len;
    /* len for SLOWLOG LEN on any shard: written by this shard with relaxed stores, read with
     * relaxed loads; a count, nothing is published through it. */
    _Atomic uint64_t len_pub;
};

static struct slowlog logs[4096];

/* Entry ids over all shards: one relaxed fetch_add per entry logged (a slow command, so rarely
 * contended). The ids are unique and their order is the order in which the entries were logged,
 * all shards together (each shard's fetch_adds in its own order, and one total order over all
 * of them), so SLOWLOG GET merges the shards' logs by id, newest first, as Redis's one log
 * reads. Shard-interleaved ids (a counter per shard, times the shard count, plus the shard)
 * would need no shared counter but would not follow time across shards: a busy shard's ids run
 * ahead of a quiet one's. RESET keeps the counter, as Redis does. */
static _Atomic uint64_t next_id;

size_t slowlog_header_size(void)
{
    return sizeof(struct slow_entry) + (SLOWLOG_MAX_ARGC + 1) * sizeof(uint32_t);
}

static char *data_of(struct slow_entry *e)
{
    return (char *)&e->len[e->argc + 1];
}

/* What is kept of s[0..n): all of it, or its first SLOWLOG_MAX_STRING bytes and a note. */
static size_t kept(size_t n)
{
    return n <= SLOWLOG_MAX_STRING ? n : SLOWLOG_MAX_STRING + SLOWLOG_CUT_NOTE;
}

static uint32_t keep(char *to, const char *s, size_t n)
{
    if (n <= SLOWLOG_MAX_STRING) {
        memcpy(to, s, n);
        return (uint32_t)n;
    }
    memcpy(to, s, SLOWLOG_MAX_STRING);
    int note = snprintf(to + SLOWLOG_MAX_STRING, SLOWLOG_CUT_NOTE, "... (%zu more bytes)",
                        n - SLOWLOG_MAX_STRING);
    return SLOWLOG_MAX_STRING + (uint32_t)note;
}

struct slow_entry *slowlog_entry_new(const struct resp_arg *a, unsigned argc, const char *name,
                                     size_t *bytes)
{
    /* Redis's slowlogCreateEntry: past 32 arguments, the 32nd says how many more there were. */
    unsigned n = argc > SLOWLOG_MAX_ARGC ? SLOWLOG_MAX_ARGC : argc;
    size_t nl = name != NULL ? strlen(name) : 0;
    size_t size = sizeof(struct slow_entry) + (n + 1) * sizeof(uint32_t) + kept(nl);
    for (unsigned j = 0; j < n; j++)
        size += n != argc && j == n - 1 ? SLOWLOG_CUT_NOTE : kept(a[j].len);
    struct slow_entry *e = pith_malloc(size);
    if (e == NULL)
        return NULL;
    memset(e, 0, sizeof(*e));
    e->argc = n;
    e->bytes = size;
    char *p = data_of(e);
    for (unsigned j = 0; j < n; j++) {
        if (n != argc && j == n - 1)
            e->len[j] =
                (uint32_t)snprintf(p, SLOWLOG_CUT_NOTE, "... (%u more arguments)", argc - n + 1);
        else
            e->len[j] = keep(p, a[j].p, a[j].len);
        p += e->len[j];
    }
    e->len[n] = keep(p, name != NULL ? name : "", nl);
    *bytes = size;
    return e;
}

void slowlog_entry_free(struct slow_entry *e)
{
    pith_free(e);
}

static struct slowlog *mine(void)
{
    return &logs[pith_shard_id()];
}

static void drop_oldest(struct slowlog *l)
{
    struct slow_entry *e = l->oldest;
    l->oldest = e->newer;
    if (l->oldest != NULL)
        l->oldest->older = NULL;
    else
        l->newest = NULL;
    l->len--;
    pith_free(e);
}

void slowlog_push(struct slow_entry *e, uint64_t duration_us, const char *addr)
{
    struct slowlog *l = mine();
    uint64_t max = setting(&kv_cfg.slowlog_max_len);
    if (max == 0) {
        pith_free(e);
        return;
    }
    e->id = atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
    e->time = (int64_t)time(NULL);
    e->duration_us = duration_us;
    snprintf(e->addr, sizeof(e->addr), "%s", addr);
    e->older = l->newest;
    e->newer = NULL;
    if (l->newest != NULL)
        l->newest->newer = e;
    else
        l->oldest = e;
    l->newest = e;
    l->len++;
    /* The bound: never more than slowlog-max-len entries here (as Redis trims its one log). */
    while (l->len > max)
        drop_oldest(l);
    atomic_store_explicit(&l->len_pub, l->len, memory_order_relaxed);
}

uint64_t slowlog_len(unsigned nshards)
{
    uint64_t n = 0, max = setting(&kv_cfg.slowlog_max_len);
    for (unsigned i = 0; i < nshards; i++)
        n += atomic_load_explicit(&logs[i].len_pub, memory_order_relaxed);
    return n < max ? n : max;
}

void slowlog_reset(void)
{
    struct slowlog *l = mine();
    while (l->oldest != NULL)
        drop_oldest(l);
    atomic_store_explicit(&l->len_pub, 0, memory_order_relaxed);
}

/* One entry as Redis's SLOWLOG GET has it: id, time, µs, the arguments, "ip:port", name. */
static int put_entry(struct slow_entry *e, struct resp_out *o)
{
    int err = resp_put_array(o, 6);
    err = err ? err : resp_put_int(o, (long long)e->id);
    err = err ? err : resp_put_int(o, (long long)e->time);
    err = err ? err : resp_put_int(o, (long long)e->duration_us);
    err = err ? err : resp_put_array(o, e->argc);
    const char *p = data_of(e);
    for (uint32_t j = 0; j < e->argc && err == 0; j++) {
        err = resp_put_bulk(o, p, e->len[j]);
        p += e->len[j];
    }
    err = err ? err : resp_put_bulk(o, e->addr, strlen(e->addr));
    return err ? err : resp_put_bulk(o, p, e->len[e->argc]);
}

/* A part's record: the entry's id and the length of its reply, then the reply. */
struct rec {
    uint64_t id;
    uint64_t len;
};

int slowlog_dump(long long count, struct resp_out *o)
{
    struct slowlog *l = mine();
    int err = 0;
    for (struct slow_entry *e = l->newest; e != NULL && count != 0 && err == 0; e = e->older) {
        size_t at = o->len;
        struct rec r = {e->id, 0};
        err = resp_put_raw(o, &r, sizeof(r));
        err = err ? err : put_entry(e, o);
        if (err == 0) {
            r.len = o->len - at - sizeof(r);
            memcpy(o->p + at, &r, sizeof(r));
        }
        if (count > 0)
            count--;
    }
    return err;
}

/* The record at *at in part p, or false past its end. */
static bool rec_at(const struct resp_out *p, size_t at, struct rec *r)
{
    if (at + sizeof(*r) > p->len)
        return false;
    memcpy(r, p->p + at, sizeof(*r));
    return true;
}

int slowlog_merge(const struct resp_out *parts, unsigned n, long long count, struct resp_out *o)
{
    uint64_t max = setting(&kv_cfg.slowlog_max_len);
    uint64_t want = count < 0 || (uint64_t)count > max ? max : (uint64_t)count;
    uint64_t have = 0;
    for (unsigned i = 0; i < n; i++) {
        struct rec r;
        for (size_t at = 0; rec_at(&parts[i], at, &r); at += sizeof(r) + r.len)
            have++;
    }
    if (have < want)
        want = have;
    int err = resp_put_array(o, (long long)want);
    size_t small[16];
    size_t *at = n <= 16 ? small : pith_calloc(n, sizeof(*at));
    if (at == NULL)
        return -ENOMEM;
    memset(at, 0, n * sizeof(*at));
    /* Each part is newest first: the next entry is the highest id at the parts' heads. */
    for (uint64_t k = 0; k < want && err == 0; k++) {
        unsigned best = n;
        struct rec br = {0, 0}, r;
        for (unsigned i = 0; i < n; i++)
            if (rec_at(&parts[i], at[i], &r) && (best == n || r.id > br.id)) {
                best = i;
                br = r;
            }
        if (best == n)
            break;
        err = resp_put_raw(o, parts[best].p + at[best] + sizeof(br), br.len);
        at[best] += sizeof(br) + br.len;
    }
    if (at != small)
        pith_free(at);
    return err;
}
