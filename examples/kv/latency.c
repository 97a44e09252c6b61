/* The latency monitor's samples, per shard (latency.h), and LATENCY's replies merged over the
 * shards: LATEST, HISTORY, RESET and DOCTOR. */
#include "latency.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pith/pith.h>

#include "config.h"

static const char *const names[LAT_EVENTS] = {"command", "fast-command", "expire-cycle",
                                              "aof-fsync-always"};

struct sample {
    int64_t time; /* Unix seconds; 0: none */
    uint64_t ms;
};

/* One event's samples on one shard, as Redis keeps them: a ring of the latest LAT_SAMPLES
 * seconds that had one (the largest of each second), and the largest ever. */
struct series {
    bool live;    /* it had a sample since the start or its last reset */
    uint32_t idx; /* where the next second's sample goes */
    uint64_t max;
    struct sample s[LAT_SAMPLES];
};

/* A shard's, touched by that shard only (LATENCY's readings are parts made there). */
struct monitor {
    struct series ev[LAT_EVENTS];
};

static struct monitor *monitors[4096];

int latency_event(const struct resp_arg *a)
{
    for (int i = 0; i < LAT_EVENTS; i++)
        if (a->len == strlen(names[i]) && memcmp(a->p, names[i], a->len) == 0)
            return i;
    return -1;
}

static struct monitor *mine(void)
{
    int id = pith_shard_id();
    if (id < 0)
        return NULL;
    if (monitors[id] == NULL)
        monitors[id] = pith_calloc(1, sizeof(struct monitor)); /* NULL: no samples kept */
    return monitors[id];
}

void latency_add(enum lat_event ev, uint64_t ms)
{
    uint64_t threshold = setting(&kv_cfg.latency_threshold_ms);
    if (threshold == 0 || ms < threshold)
        return;
    struct monitor *m = mine();
    if (m == NULL)
        return;
    /* Redis's latencyAddSample: one sample a second, the largest in it. */
    struct series *s = &m->ev[ev];
    int64_t now = (int64_t)time(NULL);
    s->live = true;
    if (ms > s->max)
        s->max = ms;
    struct sample *prev = &s->s[(s->idx + LAT_SAMPLES - 1) % LAT_SAMPLES];
    if (prev->time == now) {
        if (ms > prev->ms)
            prev->ms = ms;
        return;
    }
    s->s[s->idx] = (struct sample){now, ms};
    s->idx = (s->idx + 1) % LAT_SAMPLES;
}

int latency_reset(const struct resp_arg *a, unsigned n, struct resp_out *o)
{
    struct monitor *m = mine();
    uint64_t mask = 0;
    for (int i = 0; m != NULL && i < LAT_EVENTS; i++) {
        bool named = n == 0;
        for (unsigned k = 0; k < n && !named; k++)
            named = latency_event(&a[k]) == i;
        if (named && m->ev[i].live) {
            mask |= 1ull << i;
            memset(&m->ev[i], 0, sizeof(m->ev[i]));
        }
    }
    return resp_put_raw(o, &mask, sizeof(mask));
}

/* A part: for each live event, its number, its sample count, its largest, then its samples
 * oldest first. */
struct head {
    uint32_t ev, n;
    uint64_t max;
};

int latency_dump(struct resp_out *o)
{
    struct monitor *m = mine();
    int err = 0;
    for (int i = 0; m != NULL && i < LAT_EVENTS && err == 0; i++) {
        struct series *s = &m->ev[i];
        if (!s->live)
            continue;
        struct head h = {(uint32_t)i, 0, s->max};
        for (unsigned k = 0; k < LAT_SAMPLES; k++)
            h.n += s->s[k].time != 0;
        err = resp_put_raw(o, &h, sizeof(h));
        for (unsigned k = 0; k < LAT_SAMPLES && err == 0; k++) {
            const struct sample *x = &s->s[(s->idx + k) % LAT_SAMPLES];
            if (x->time != 0)
                err = resp_put_raw(o, x, sizeof(*x));
        }
    }
    return err;
}

/* An event over all shards: its samples merged (one a second, the largest; the latest
 * LAT_SAMPLES of them), and its largest. */
struct merged {
    bool live;
    uint64_t max;
    unsigned n;
    struct sample s[LAT_SAMPLES];
};

static int by_time(const void *a, const void *b)
{
    const struct sample *x = a, *y = b;
    return (x->time > y->time) - (x->time < y->time);
}

/* Every event of the parts into out[LAT_EVENTS]; -ENOMEM. */
static int merge(const struct resp_out *parts, unsigned n, struct merged *out)
{
    memset(out, 0, LAT_EVENTS * sizeof(*out));
    /* All samples of one event from every shard, sorted, then folded by second. */
    size_t cap = (size_t)n * LAT_SAMPLES;
    struct sample *all = pith_malloc(cap * sizeof(*all) + 1);
    if (all == NULL)
        return -ENOMEM;
    for (int ev = 0; ev < LAT_EVENTS; ev++) {
        size_t got = 0;
        for (unsigned i = 0; i < n; i++) {
            const struct resp_out *p = &parts[i];
            struct head h;
            for (size_t at = 0; at + sizeof(h) <= p->len;) {
                memcpy(&h, p->p + at, sizeof(h));
                at += sizeof(h);
                size_t bytes = (size_t)h.n * sizeof(struct sample);
                if (at + bytes > p->len || h.n > LAT_SAMPLES)
                    break; /* not a part this file made */
                if ((int)h.ev == ev) {
                    out[ev].live = true;
                    if (h.max > out[ev].max)
                        out[ev].max = h.max;
                    memcpy(all + got, p->p + at, bytes);
                    got += h.n;
                }
                at += bytes;
            }
        }
        qsort(all, got, sizeof(*all), by_time);
        size_t folded = 0;
        for (size_t k = 0; k < got; k++) {
            if (folded > 0 && all[folded - 1].time == all[k].time) {
                if (all[k].ms > all[folded - 1].ms)
                    all[folded - 1].ms = all[k].ms;
            } else {
                all[folded++] = all[k];
            }
        }
        size_t from = folded > LAT_SAMPLES ? folded - LAT_SAMPLES : 0;
        out[ev].n = (unsigned)(folded - from);
        memcpy(out[ev].s, all + from, out[ev].n * sizeof(struct sample));
    }
    pith_free(all);
    return 0;
}

int latency_reset_reply(const struct resp_out *parts, unsigned n, struct resp_out *o)
{
    uint64_t mask = 0, m;
    for (unsigned i = 0; i < n; i++)
        if (parts[i].len >= sizeof(m)) {
            memcpy(&m, parts[i].p, sizeof(m));
            mask |= m;
        }
    return resp_put_int(o, __builtin_popcountll(mask));
}

int latency_latest_reply(const struct resp_out *parts, unsigned n, struct resp_out *o)
{
    struct merged *m = pith_malloc(LAT_EVENTS * sizeof(*m));
    if (m == NULL || merge(parts, n, m) != 0) {
        pith_free(m);
        return -ENOMEM;
    }
    /* Redis's: for each event, [name, time of the latest sample, its ms, the largest ms]. */
    long long live = 0;
    for (int ev = 0; ev < LAT_EVENTS; ev++)
        live += m[ev].live && m[ev].n > 0;
    int err = resp_put_array(o, live);
    for (int ev = 0; ev < LAT_EVENTS && err == 0; ev++) {
        if (!m[ev].live || m[ev].n == 0)
            continue;
        const struct sample *last = &m[ev].s[m[ev].n - 1];
        err = resp_put_array(o, 4);
        err = err ? err : resp_put_bulk(o, names[ev], strlen(names[ev]));
        err = err ? err : resp_put_int(o, last->time);
        err = err ? err : resp_put_int(o, (long long)last->ms);
        err = err ? err : resp_put_int(o, (long long)m[ev].max);
    }
    pith_free(m);
    return err;
}

int latency_history_reply(const struct resp_out *parts, unsigned n, int ev, struct resp_out *o)
{
    if (ev < 0)
        return resp_put_array(o, 0); /* Redis: an unknown event has no samples */
    struct merged *m = pith_malloc(LAT_EVENTS * sizeof(*m));
    if (m == NULL || merge(parts, n, m) != 0) {
        pith_free(m);
        return -ENOMEM;
    }
    int err = resp_put_array(o, m[ev].n);
    for (unsigned k = 0; k < m[ev].n && err == 0; k++) {
        err = resp_put_array(o, 2);
        err = err ? err : resp_put_int(o, m[ev].s[k].time);
        err = err ? err : resp_put_int(o, (long long)m[ev].s[k].ms);
    }
    pith_free(m);
    return err;
}

/* What to look at for each event. */
static const char *const advice[LAT_EVENTS] = {
    "command, fast-command: SLOWLOG GET names the slow commands. A command runs on the shards "
    "that own its keys: one that holds a shard delays that shard's clients, not the others'.",
    NULL,
    "expire-cycle: a round of active expiry is cut at 1 ms; a longer one means the shard was "
    "preempted or freeing large values (many keys expiring at once).",
    "aof-fsync-always: the journal's disk syncs slowly; --appendfsync everysec does not hold "
    "replies for the sync.",
};

int latency_doctor_reply(const struct resp_out *parts, unsigned n, struct resp_out *o)
{
    struct merged *m = pith_malloc(LAT_EVENTS * sizeof(*m));
    if (m == NULL || merge(parts, n, m) != 0) {
        pith_free(m);
        return -ENOMEM;
    }
    struct resp_out t = {0};
    uint64_t threshold = setting(&kv_cfg.latency_threshold_ms);
    int events = 0, err = 0;
    for (int ev = 0; ev < LAT_EVENTS; ev++)
        events += m[ev].live && m[ev].n > 0;
    if (threshold == 0 && events == 0) {
        err = resp_put_fmt(&t, "The latency monitor is off: CONFIG SET latency-monitor-threshold "
                               "<milliseconds> turns it on.\n");
    } else if (events == 0) {
        err =
            resp_put_fmt(&t,
                         "No latency spike of %llu ms or more was seen since the start or the last "
                         "LATENCY RESET, on any of the %u shards.\n",
                         (unsigned long long)threshold, n);
    } else {
        err = resp_put_fmt(&t, "Latency spikes of %llu ms or more, over all %u shards:\n\n",
                           (unsigned long long)threshold, n);
        int k = 0;
        int64_t now = (int64_t)time(NULL);
        for (int ev = 0; ev < LAT_EVENTS && err == 0; ev++) {
            const struct merged *x = &m[ev];
            if (!x->live || x->n == 0)
                continue;
            /* Redis's analysis: the mean, the mean absolute deviation, and the period (the time
             * since the oldest sample over the samples). */
            double sum = 0, dev = 0;
            for (unsigned s = 0; s < x->n; s++)
                sum += (double)x->s[s].ms;
            double avg = sum / x->n;
            for (unsigned s = 0; s < x->n; s++)
                dev +=
                    (double)x->s[s].ms > avg ? (double)x->s[s].ms - avg : avg - (double)x->s[s].ms;
            int64_t span = now - x->s[0].time;
            err = resp_put_fmt(
                &t,
                "%d. %s: %u latency spikes (average %.0fms, mean deviation %.0fms, period "
                "%.2f sec). Worst all time event %llums.\n",
                ++k, names[ev], x->n, avg, dev / x->n, (double)(span > 0 ? span : 1) / x->n,
                (unsigned long long)x->max);
        }
        err = err ? err : resp_put_fmt(&t, "\nAdvice:\n");
        for (int ev = 0; ev < LAT_EVENTS && err == 0; ev++) {
            int about = ev == LAT_FAST_COMMAND ? LAT_COMMAND : ev;
            bool seen = m[ev].live && m[ev].n > 0;
            bool told = ev == LAT_FAST_COMMAND && m[LAT_COMMAND].live && m[LAT_COMMAND].n > 0;
            if (seen && !told)
                err = resp_put_fmt(&t, "- %s\n", advice[about]);
        }
    }
    pith_free(m);
    if (err == 0)
        err = resp_put_bulk(o, t.p != NULL ? t.p : "", t.len);
    resp_out_free(&t);
    return err;
}
