/* The SLA monitor (pith/sla.h). Each shard keeps, per actor type with an SLA, a window of
 * SLA_SLOTS histograms of the latencies it saw (send to the end of handling, one message in 16:
 * the ones stamped with their send time), judged by a timer every slot: the percentiles over
 * the slots, the verdict, the remedy. For the remedies that act on activations it also counts
 * which actors the timed messages went to (the busiest). Everything here runs on the shard
 * that owns the window, but for the figures readers take (atomics). */
#include "core.h"
#include "mem.h"

#include <pith/sla.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLA_SLOTS       8
#define SLA_MIN         16 /* samples in a window for a verdict */
#define SLA_WINDOW_MIN  (8ull * 1000 * 1000)
#define SLA_WINDOW_MAX  (3600ull * 1000 * 1000 * 1000)
#define SLA_WINDOW_DEF  (10ull * 1000 * 1000 * 1000)
#define SLA_REMEDIES_OK (PITH_SLA_PROFILE | PITH_SLA_PREWARM | PITH_SLA_SHED | PITH_SLA_MIGRATE)
/* The remedies that act on the busiest activations. */
#define SLA_PER_ACT (PITH_SLA_PROFILE | PITH_SLA_PREWARM | PITH_SLA_MIGRATE)
/* Actors counted as the busiest (a space-saving count over the timed messages, halved at each
 * evaluation so that it follows the recent load), and how many of them a remedy takes. */
#define SLA_TOP  16
#define SLA_TAKE 4
/* A move goes to the least-loaded shard only when its utilisation over the last slot is this
 * many points (of 100) below this shard's: else it would move the load, not relieve it. */
#define SLA_MOVE_GAP 10

/* The order the remedies are tried in, one per evaluation while the SLA is missed. */
static const unsigned ladder[] = {PITH_SLA_PROFILE, PITH_SLA_PREWARM, PITH_SLA_SHED,
                                  PITH_SLA_MIGRATE};
#define LADDER (sizeof(ladder) / sizeof(ladder[0]))

struct sla_top {
    pith_ref_t ref;
    uint64_t n;
};

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
    struct sla_top top[SLA_TOP];            /* the busiest actors (SLA_PER_ACT only) */
    unsigned step;                          /* the ladder's next remedy */
    unsigned calm;                          /* evaluations since the last miss */
    /* Each shard's busy and elapsed ns at the last evaluation (MIGRATE only): [2 * shards]. */
    uint64_t *load;
    /* For readers (pith_sla_stats, metrics): written by the shard, relaxed. */
    _Atomic uint64_t p99, p999, samples, evaluations, violations, recoveries, t99, t999;
    _Atomic uint64_t upgraded, prewarmed, migrated, guarantee;
    uint64_t misses_seen; /* the memory guarantee's misses at the last evaluation */
    _Atomic bool set, violated, shedding;
};

/* PITH_SLA_SHED on or off: the flag core_enqueue reads (the shard's own), and its copy for
 * readers. */
static void shed(struct sla_shard *ss, bool on)
{
    ss->c->shedding = on;
    atomic_store_explicit(&ss->shedding, on, memory_order_relaxed);
}

/* Space-saving: an actor not in the table takes the place of the least counted, with that
 * count plus one, so that one which keeps coming climbs past those that came once. */
static void top_note(struct sla_shard *ss, pith_ref_t ref)
{
    unsigned min = 0;
    for (unsigned i = 0; i < SLA_TOP; i++) {
        if (ss->top[i].ref == ref) {
            ss->top[i].n++;
            return;
        }
        if (ss->top[i].n < ss->top[min].n)
            min = i;
    }
    ss->top[min].ref = ref;
    ss->top[min].n++;
}

void core_sla_note(struct sla_shard *ss, pith_ref_t ref, uint64_t ns)
{
    if (!ss->on)
        return;
    ss->hist[ss->cur][hist_bucket(ns)]++;
    if (ss->cfg.remedies & SLA_PER_ACT)
        top_note(ss, ref);
}

static void put(_Atomic uint64_t *a, uint64_t v)
{
    atomic_store_explicit(a, v, memory_order_relaxed);
}

static const char *remedy_name(unsigned action)
{
    switch (action) {
    case PITH_SLA_PROFILE:
        return "profile";
    case PITH_SLA_PREWARM:
        return "prewarm";
    case PITH_SLA_SHED:
        return "shed";
    case PITH_SLA_MIGRATE:
        return "migrate";
    default:
        return "";
    }
}

static void report(struct sla_shard *ss, bool met, unsigned action, unsigned acted, unsigned to)
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
        .acted = acted,
        .to_shard = to,
        .mem_guarantee = ss->cfg.mem_bytes,
    };
    if (ss->cfg.mem_bytes > 0) {
        uint64_t misses;
        vactor_sla_mem(core_shard_get(), ss->type, &r.mem_hot, &misses);
        r.mem_misses = misses - ss->misses_seen;
    }
    if (ss->cfg.on_report != NULL) {
        ss->cfg.on_report(&r, ss->cfg.ctx);
        return;
    }
    char what[96] = "";
    if (action == PITH_SLA_SHED)
        snprintf(what, sizeof(what), "; %s", met ? "shedding stops" : "shedding new messages");
    else if (action == PITH_SLA_MIGRATE)
        snprintf(what, sizeof(what), "; migrating %u of the busiest activations to shard %u", acted,
                 to);
    else if (action != 0)
        snprintf(what, sizeof(what), "; %s: %u of the busiest activations", remedy_name(action),
                 acted);
    else if (r.mem_misses > 0)
        snprintf(what, sizeof(what),
                 "; memory guarantee: %llu activations found no hot memory (%llu of %llu bytes "
                 "held)",
                 (unsigned long long)r.mem_misses, (unsigned long long)r.mem_hot,
                 (unsigned long long)r.mem_guarantee);
    fprintf(stderr,
            "pith: sla: actor type \"%s\" on shard %u %s: p99 %.1f us (target %.1f), p999 %.1f us "
            "(target %.1f), %llu samples%s\n",
            ss->type->name != NULL ? ss->type->name : "", ss->shard, met ? "met again" : "missed",
            (double)r.p99_ns / 1e3, (double)r.p99_target_ns / 1e3, (double)r.p999_ns / 1e3,
            (double)r.p999_target_ns / 1e3, (unsigned long long)r.samples, what);
}

/* The busiest actors counted, most first, into refs[0..SLA_TAKE): how many. */
static unsigned busiest(const struct sla_shard *ss, pith_ref_t *refs)
{
    struct sla_top t[SLA_TOP];
    memcpy(t, ss->top, sizeof(t));
    unsigned k = 0;
    for (; k < SLA_TAKE; k++) {
        unsigned best = SLA_TOP;
        for (unsigned i = 0; i < SLA_TOP; i++)
            if (t[i].n > 0 && (best == SLA_TOP || t[i].n > t[best].n))
                best = i;
        if (best == SLA_TOP)
            break;
        refs[k] = t[best].ref;
        t[best].n = 0;
    }
    return k;
}

/* The least-loaded shard over the last slot, if it is SLA_MOVE_GAP points below this one;
 * else UINT_MAX. Takes every shard's figures for the next time. */
static unsigned least_loaded(struct sla_shard *ss)
{
    unsigned n = pith_shard_count(), best = UINT_MAX;
    uint64_t mine = 0, low = UINT64_MAX;
    for (unsigned i = 0; i < n; i++) {
        pith_shard_stats_t st;
        if (pith_shard_stats(i, &st) != 0)
            continue;
        uint64_t db = st.busy_ns - ss->load[2 * i], de = st.elapsed_ns - ss->load[2 * i + 1];
        bool known = ss->load[2 * i + 1] != 0 && de > 0;
        ss->load[2 * i] = st.busy_ns;
        ss->load[2 * i + 1] = st.elapsed_ns;
        if (!known)
            continue;
        uint64_t pct = db * 100 / de;
        if (i == ss->shard)
            mine = pct;
        else if (pct < low)
            low = pct, best = i;
    }
    return best != UINT_MAX && low + SLA_MOVE_GAP <= mine ? best : UINT_MAX;
}

/* Takes `remedy` for the busiest activations: how many it acted on (for PITH_SLA_MIGRATE, *to
 * is where they go). */
static unsigned act(struct sla_shard *ss, unsigned remedy, unsigned *to)
{
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return 0;
    if (remedy == PITH_SLA_MIGRATE) {
        *to = least_loaded(ss);
        if (*to == UINT_MAX)
            return 0;
    }
    pith_ref_t refs[SLA_TAKE];
    unsigned k = busiest(ss, refs), done = 0;
    for (unsigned i = 0; i < k; i++) {
        int n = remedy == PITH_SLA_PROFILE   ? vactor_sla_profile(cs, refs[i], ss->type)
                : remedy == PITH_SLA_PREWARM ? vactor_sla_prewarm(cs, refs[i], ss->type)
                                             : vactor_sla_migrate(cs, refs[i], ss->type, *to);
        if (n > 0)
            done += (unsigned)n;
    }
    _Atomic uint64_t *c = remedy == PITH_SLA_PROFILE   ? &ss->upgraded
                          : remedy == PITH_SLA_PREWARM ? &ss->prewarmed
                                                       : &ss->migrated;
    put(c, atomic_load_explicit(c, memory_order_relaxed) + done);
    return done;
}

/* A miss: the ladder's next remedy that does something now, if any (SHED always does, the
 * first time; MIGRATE stays the last step and is tried again at each miss). */
static unsigned escalate(struct sla_shard *ss, unsigned *acted, unsigned *to)
{
    while (ss->step < LADDER) {
        unsigned remedy = ladder[ss->step];
        if (!(ss->cfg.remedies & remedy)) {
            ss->step++;
            continue;
        }
        if (remedy == PITH_SLA_SHED) {
            ss->step++;
            if (ss->c->shedding)
                continue;
            shed(ss, true);
            return remedy;
        }
        if (remedy != PITH_SLA_MIGRATE)
            ss->step++;
        *acted = act(ss, remedy, to);
        if (*acted > 0)
            return remedy;
        if (remedy == PITH_SLA_MIGRATE)
            return 0;
    }
    return 0;
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
    if (ss->load != NULL && !missed)
        (void)least_loaded(ss); /* keeps each shard's figures one slot old for a move */
    if (missed) {
        unsigned acted = 0, to = UINT_MAX;
        ss->calm = 0;
        unsigned action = escalate(ss, &acted, &to);
        if (!violated) {
            atomic_store_explicit(&ss->violated, true, memory_order_relaxed);
            put(&ss->violations, atomic_load_explicit(&ss->violations, memory_order_relaxed) + 1);
        }
        if (!violated || action != 0)
            report(ss, false, action, acted, to);
    } else {
        /* A whole window without a miss: the next one starts the remedies from the first. */
        if (++ss->calm >= SLA_SLOTS)
            ss->step = 0;
        if (violated && (judged || ss->c->shedding)) {
            /* Met again: over a window with enough samples, or, while shedding, one whose
             * backlog is gone. Only shedding is undone: what moved stays where it went. */
            unsigned action = ss->c->shedding ? PITH_SLA_SHED : 0;
            shed(ss, false);
            atomic_store_explicit(&ss->violated, false, memory_order_relaxed);
            put(&ss->recoveries, atomic_load_explicit(&ss->recoveries, memory_order_relaxed) + 1);
            report(ss, true, action, 0, UINT_MAX);
        }
    }
    if (ss->cfg.mem_bytes > 0) {
        /* The guarantee broken since the last evaluation: told once with its figures. */
        uint64_t hot, misses;
        vactor_sla_mem(core_shard_get(), ss->type, &hot, &misses);
        if (misses > ss->misses_seen)
            report(ss, false, 0, 0, UINT_MAX);
        ss->misses_seen = misses;
    }
    for (unsigned i = 0; i < SLA_TOP; i++)
        ss->top[i].n /= 2;
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
    put(&ss->guarantee, 0);
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
    /* The memory guarantee first: one that cannot be reserved sets nothing. A type that is
     * not a virtual type's has none to give back. */
    size_t bytes = q->remove ? 0 : q->cfg.mem_bytes;
    int err = vactor_sla_guarantee(cs, q->type, bytes);
    if (err != 0 && (bytes > 0 || err != -EINVAL))
        return err;
    if (q->remove)
        return 0;
    /* PROFILE moves states to hot memory when the SLA is already missing: the hot profile's
     * first extent is made here, when the SLA is set, not then, on the shard's loop, where
     * prefaulting and locking it stalled the shard for tens of milliseconds (pith-market saw
     * 75 ms). Without it the remedy still works, making the extent when it runs. */
    if (q->cfg.remedies & PITH_SLA_PROFILE)
        (void)mem_self_hot_ready();
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
    memset(ss->top, 0, sizeof(ss->top));
    ss->cur = 0;
    ss->step = 0;
    ss->calm = 0;
    free(ss->load);
    ss->load = NULL;
    if (ss->cfg.remedies & PITH_SLA_MIGRATE) {
        ss->load = calloc(2 * (size_t)pith_shard_count(), sizeof(*ss->load));
        if (ss->load == NULL)
            return -ENOMEM;
    }
    put(&ss->p99, 0);
    put(&ss->p999, 0);
    put(&ss->samples, 0);
    put(&ss->guarantee, q->cfg.mem_bytes);
    uint64_t hot;
    vactor_sla_mem(cs, q->type, &hot, &ss->misses_seen);
    uint64_t slot = ss->cfg.window_ns / SLA_SLOTS;
    err = pith_timer_add(slot, slot, sla_tick, ss, &ss->timer);
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
        if ((q.cfg.p99_ns == 0 && q.cfg.p999_ns == 0 && q.cfg.mem_bytes == 0) ||
            q.cfg.window_ns < SLA_WINDOW_MIN || q.cfg.window_ns > SLA_WINDOW_MAX)
            return -EINVAL;
        if (q.cfg.remedies & ~SLA_REMEDIES_OK)
            return -EINVAL;
        if (((q.cfg.remedies & SLA_PER_ACT) || q.cfg.mem_bytes > 0) &&
            vactor_sla_check(type, q.cfg.remedies) != 0)
            return -EINVAL;
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
            if (err != 0) {
                /* None or all: the shards that took it give it up. */
                struct sla_req off = {.type = type, .remove = true};
                for (unsigned j = 0; j <= i && !q.remove; j++)
                    (void)pith_call_wait(j, apply_call, &off, NULL);
                return err;
            }
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
            out->upgraded = RD(upgraded);
            out->prewarmed = RD(prewarmed);
            out->migrated = RD(migrated);
            out->mem_guarantee = RD(guarantee);
#undef RD
            /* Acquire: pairs with the release that published the shard's part. */
            struct core_shard *cs = atomic_load_explicit(&ce->shards[shard], memory_order_acquire);
            if (out->mem_guarantee > 0 && cs != NULL)
                vactor_sla_mem(cs, type, &out->mem_hot, &out->mem_misses);
        }
    }
    shard_reader_leave();
    return err;
}

void core_sla_exit(struct core_shard *cs)
{
    struct core_engine *ce = atomic_load_explicit(&core_eng, memory_order_acquire);
    for (struct type_rec *r = ce != NULL ? atomic_load_explicit(&ce->types, memory_order_acquire)
                                         : NULL;
         r != NULL; r = r->next) {
        struct sla_shard *ss =
            atomic_load_explicit(&r->per_shard[cs->id].sla, memory_order_relaxed);
        if (ss != NULL && ss->timer != 0) {
            (void)pith_timer_cancel(ss->timer);
            ss->timer = 0;
            ss->on = false;
        }
    }
}

void core_sla_free(struct sla_shard *ss)
{
    if (ss != NULL)
        free(ss->load);
    free(ss);
}

bool core_sla_release(pith_fn_t fn, void *arg)
{
    if (fn != apply_task)
        return false;
    free(arg); /* a request the engine's stop released before it ran */
    return true;
}
