/* The SLA monitor (pith/sla.h). Each shard keeps, per actor type with an SLA, a window of
 * SLA_SLOTS histograms of the latencies it saw (send to the end of handling, one message in 16:
 * the ones stamped with their send time), judged by a timer every slot: the percentiles over
 * the slots, the verdict, the remedy. Everything here runs on the shard that owns the window,
 * but for the figures readers take (atomics). */
#include "core.h"

#include <pith/sla.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLA_SLOTS       8
#define SLA_MIN         16 /* samples in a window for a verdict */
#define SLA_WINDOW_MIN  (8ull * 1000 * 1000)
#define SLA_WINDOW_MAX  (3600ull * 1000 * 1000 * 1000)
#define SLA_WINDOW_DEF  (10ull * 1000 * 1000 * 1000)
#define SLA_REMEDIES_OK PITH_SLA_SHED

/* One type's SLA on one shard: made, used and freed there (but for the engine's end, which
 * frees what the shards left). */
struct sla_shard {
    pith_sla_t cfg;
    const pith_actor_type_t *type;
    struct type_counters *c; /* the type's counters on this shard */
    unsigned shard;
    bool on;
    pith_timer_id_t timer;
    unsigned cur;                           /* the slot being filled */
    uint64_t hist[SLA_SLOTS][HIST_BUCKETS]; /* the shard's alone */
    /* For readers (pith_sla_stats, metrics): written by the shard, relaxed. */
    _Atomic uint64_t p99, p999, samples, evaluations, violations, recoveries, t99, t999;
    _Atomic bool set, violated, shedding;
};

/* PITH_SLA_SHED on or off: the flag core_enqueue reads (the shard's own), and its copy for
 * readers. */
static void shed(struct sla_shard *ss, bool on)
{
    ss->c->shedding = on;
    atomic_store_explicit(&ss->shedding, on, memory_order_relaxed);
}

void core_sla_note(struct sla_shard *ss, uint64_t ns)
{
    if (ss->on)
        ss->hist[ss->cur][hist_bucket(ns)]++;
}

static void put(_Atomic uint64_t *a, uint64_t v)
{
    atomic_store_explicit(a, v, memory_order_relaxed);
}

static void report(struct sla_shard *ss, bool met, unsigned action)
{
    pith_sla_report_t r = {
        .type = ss->type,
        .shard = ss->shard,
        .met = met,
        .p99_ns = atomic_load_explicit(&ss->p99, memory_order_relaxed),
        .p999_ns = atomic_load_explicit(&ss->p999, memory_order_relaxed),
        .samples = atomic_load_explicit(&ss->samples, memory_order_relaxed),
        .p99_target_ns = ss->cfg.p99_ns,
        .p999_target_ns = ss->cfg.p999_ns,
        .action = action,
    };
    if (ss->cfg.on_report != NULL) {
        ss->cfg.on_report(&r, ss->cfg.ctx);
        return;
    }
    fprintf(stderr,
            "pith: sla: actor type \"%s\" on shard %u %s: p99 %.1f us (target %.1f), p999 %.1f us "
            "(target %.1f), %llu samples%s\n",
            ss->type->name != NULL ? ss->type->name : "", ss->shard, met ? "met again" : "missed",
            (double)r.p99_ns / 1e3, (double)r.p99_target_ns / 1e3, (double)r.p999_ns / 1e3,
            (double)r.p999_target_ns / 1e3, (unsigned long long)r.samples,
            action == PITH_SLA_SHED ? (met ? "; shedding stops" : "; shedding new messages") : "");
}

/* The timer: judge the window, then start the next slot. */
static void sla_tick(void *arg)
{
    struct sla_shard *ss = arg;
    if (!ss->on)
        return;
    uint64_t h[HIST_BUCKETS] = {0}, total = 0;
    for (unsigned s = 0; s < SLA_SLOTS; s++)
        for (unsigned b = 0; b < HIST_BUCKETS; b++)
            h[b] += ss->hist[s][b];
    for (unsigned b = 0; b < HIST_BUCKETS; b++)
        total += h[b];
    /* With few samples the quantiles are the largest ones: a p99 of 50 samples is their
     * maximum. */
    uint64_t p99 = total >= SLA_MIN ? hist_quantile(h, total, 990) : 0;
    uint64_t p999 = total >= SLA_MIN ? hist_quantile(h, total, 999) : 0;
    put(&ss->p99, p99);
    put(&ss->p999, p999);
    put(&ss->samples, total);
    put(&ss->evaluations, atomic_load_explicit(&ss->evaluations, memory_order_relaxed) + 1);
    ss->cur = (ss->cur + 1) % SLA_SLOTS;
    memset(ss->hist[ss->cur], 0, sizeof(ss->hist[ss->cur]));

    bool missed = (ss->cfg.p99_ns != 0 && p99 > ss->cfg.p99_ns) ||
                  (ss->cfg.p999_ns != 0 && p999 > ss->cfg.p999_ns);
    bool judged = total >= SLA_MIN;
    bool violated = atomic_load_explicit(&ss->violated, memory_order_relaxed);
    if (missed) {
        unsigned action = 0;
        if ((ss->cfg.remedies & PITH_SLA_SHED) && !ss->c->shedding) {
            shed(ss, true);
            action = PITH_SLA_SHED;
        }
        if (!violated) {
            atomic_store_explicit(&ss->violated, true, memory_order_relaxed);
            put(&ss->violations, atomic_load_explicit(&ss->violations, memory_order_relaxed) + 1);
        }
        if (!violated || action != 0)
            report(ss, false, action);
    } else if (violated && (judged || ss->c->shedding)) {
        /* Met again: over a window with enough samples, or, while shedding, one whose backlog
         * is gone. */
        unsigned action = ss->c->shedding ? PITH_SLA_SHED : 0;
        shed(ss, false);
        atomic_store_explicit(&ss->violated, false, memory_order_relaxed);
        put(&ss->recoveries, atomic_load_explicit(&ss->recoveries, memory_order_relaxed) + 1);
        report(ss, true, action);
    }
}

/* Stops ss (its timer, its shedding), on its shard. */
static void sla_off(struct sla_shard *ss)
{
    if (ss->timer != 0)
        (void)pith_timer_cancel(ss->timer);
    ss->timer = 0;
    ss->on = false;
    shed(ss, false);
    atomic_store_explicit(&ss->set, false, memory_order_relaxed);
    atomic_store_explicit(&ss->violated, false, memory_order_relaxed);
}

/* What a shard is asked to take: the type and a copy of the SLA (NULL: remove it). */
struct sla_req {
    const pith_actor_type_t *type;
    bool remove;
    pith_sla_t cfg;
};

static int apply(struct sla_req *q)
{
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ESHUTDOWN;
    struct type_rec *r = core_type_rec(cs, q->type);
    if (r == NULL)
        return -ENOMEM;
    struct type_counters *c = core_counters(cs, r);
    struct sla_shard *ss = atomic_load_explicit(&c->sla, memory_order_relaxed);
    if (ss != NULL)
        sla_off(ss);
    if (q->remove)
        return 0;
    if (ss == NULL) {
        ss = calloc(1, sizeof(*ss));
        if (ss == NULL)
            return -ENOMEM;
        ss->type = q->type;
        ss->c = c;
        ss->shard = cs->id;
        /* Release: a reader that finds it sees it made. */
        atomic_store_explicit(&c->sla, ss, memory_order_release);
    }
    ss->cfg = q->cfg;
    put(&ss->t99, q->cfg.p99_ns);
    put(&ss->t999, q->cfg.p999_ns);
    memset(ss->hist, 0, sizeof(ss->hist));
    ss->cur = 0;
    put(&ss->p99, 0);
    put(&ss->p999, 0);
    put(&ss->samples, 0);
    uint64_t slot = ss->cfg.window_ns / SLA_SLOTS;
    int err = pith_timer_add(slot, slot, sla_tick, ss, &ss->timer);
    if (err != 0)
        return err;
    ss->on = true;
    atomic_store_explicit(&ss->set, true, memory_order_relaxed);
    return 0;
}

static void *apply_call(void *arg)
{
    return (void *)(intptr_t)apply(arg);
}

static void apply_task(void *arg)
{
    struct sla_req *q = arg;
    (void)apply(q);
    free(q);
}

int pith_sla_set(const pith_actor_type_t *type, const pith_sla_t *sla)
{
    if (type == NULL)
        return -EINVAL;
    struct sla_req q = {.type = type, .remove = sla == NULL};
    if (sla != NULL) {
        q.cfg = *sla;
        if (q.cfg.window_ns == 0)
            q.cfg.window_ns = SLA_WINDOW_DEF;
        if ((q.cfg.p99_ns == 0 && q.cfg.p999_ns == 0) || q.cfg.window_ns < SLA_WINDOW_MIN ||
            q.cfg.window_ns > SLA_WINDOW_MAX)
            return -EINVAL;
        if (q.cfg.remedies & ~SLA_REMEDIES_OK)
            return -EOPNOTSUPP;
    }
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    if (shard_count_here() == 0) {
        /* Outside: each shard in turn, waiting for it. */
        for (unsigned i = 0; i < n; i++) {
            void *res = NULL;
            int err = pith_call_wait(i, apply_call, &q, &res);
            if (err == 0)
                err = (int)(intptr_t)res;
            if (err != 0)
                return err;
        }
        return 0;
    }
    for (unsigned i = 0; i < n; i++) {
        struct sla_req *c = malloc(sizeof(*c));
        if (c == NULL)
            return -ENOMEM;
        *c = q;
        int err = shard_submit_force(i, apply_task, c);
        if (err != 0) {
            free(c);
            return err;
        }
    }
    return 0;
}

int pith_sla_stats(const pith_actor_type_t *type, unsigned shard, pith_sla_stats_t *out)
{
    if (type == NULL || out == NULL)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (!shard_reader_enter())
        return -ESHUTDOWN;
    int err = 0;
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    if (shard >= pith_shard_count()) {
        err = -EINVAL;
    } else if (ce != NULL) {
        for (struct type_rec *r = atomic_load_explicit(&ce->types, memory_order_acquire); r != NULL;
             r = r->next) {
            if (r->type != type)
                continue;
            const struct type_counters *c = &r->per_shard[shard];
            out->shed += atomic_load_explicit(&c->shed, memory_order_relaxed);
            /* Acquire: pairs with apply's release. */
            const struct sla_shard *ss = atomic_load_explicit(&c->sla, memory_order_acquire);
            if (ss == NULL)
                continue;
#define RD(f) atomic_load_explicit(&ss->f, memory_order_relaxed)
            out->set = RD(set);
            out->violated = RD(violated);
            out->shedding = RD(shedding);
            out->p99_ns = RD(p99);
            out->p999_ns = RD(p999);
            out->p99_target_ns = RD(t99);
            out->p999_target_ns = RD(t999);
            out->samples = RD(samples);
            out->evaluations = RD(evaluations);
            out->violations = RD(violations);
            out->recoveries = RD(recoveries);
#undef RD
        }
    }
    shard_reader_leave();
    return err;
}

void core_sla_free(struct sla_shard *ss)
{
    free(ss);
}

bool core_sla_release(pith_fn_t fn, void *arg)
{
    if (fn != apply_task)
        return false;
    free(arg); /* a request the engine's stop released before it ran */
    return true;
}
