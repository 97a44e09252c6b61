/* Virtual actors (pith/vactor.h): an ask to an active virtual actor on the asker's shard and
 * across shards, beside the same loop to a plain actor in the same row; the first message to a
 * new key through to its behaviour; the engine bytes an idle activation holds; and what a
 * million live activations with their idle sweep running cost a round trip between two shards.
 * Each row measures its own plain figure in the same run and names it in a note. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

enum { PING = 1, GO = 2 };

#define TIMEOUT_NS (30ull * 1000 * 1000 * 1000)

static int echo_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->req != 0)
        (void)pith_reply(msg, PING, msg->data, msg->len);
    return 0;
}

static const pith_actor_type_t echo_type = {.name = "bench-echo", .behaviour = echo_behaviour};
static const pith_vtype_t vecho_type = {.name = "bench-vecho", .actor = &echo_type};

/* ---- ask round trips ---- */

struct call_run {
    bool virt;        /* ask the virtual actor, else the plain one */
    pith_vref_t v;    /* the virtual actor */
    pith_ref_t plain; /* the plain actor, on the virtual one's shard */
    unsigned k;       /* round trips per sample */
    uint64_t total;   /* round trips in the phase */
    uint64_t seq, t0; /* done, and the start of the sample in flight */
    uint64_t req;     /* the ask in flight */
    samples_t *s;     /* NULL: warm-up */
    int err;
    sem_t done;
};

static struct call_run crun;

static int ask_next(struct call_run *c)
{
    if (c->virt)
        return pith_vask(&c->v, PING, &c->seq, sizeof(c->seq), TIMEOUT_NS, NULL, NULL, &c->req);
    return pith_ask(c->plain, PING, &c->seq, sizeof(c->seq), TIMEOUT_NS, NULL, NULL, &c->req);
}

static int asker_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    struct call_run *c = &crun;
    if (msg->type == GO) {
        c->seq = 0;
        c->t0 = pith_now_ns();
    } else if (msg->req != 0 && msg->req == c->req && msg->type == PING) {
        c->seq++;
        if (c->seq % c->k == 0) {
            uint64_t now = pith_now_ns();
            if (c->s != NULL)
                samples_add(c->s, (int64_t)(now - c->t0));
            c->t0 = now;
        }
        if (c->seq == c->total) {
            sem_post(&c->done);
            return 0;
        }
    } else {
        c->err = msg->type == PITH_MSG_TIMEOUT ? -ETIMEDOUT : -EPROTO;
        sem_post(&c->done);
        return 0;
    }
    int err = ask_next(c);
    if (err) {
        c->err = err;
        sem_post(&c->done);
    }
    return 0;
}

static const pith_actor_type_t asker_type = {.name = "bench-vasker", .behaviour = asker_behaviour};

/* A round trip to a shard: what it did before is done. */
static void *noop_fn(void *arg)
{
    return arg;
}

struct spawn_req {
    const pith_actor_type_t *type;
    pith_ref_t ref;
    int err;
};

static void *spawn_fn(void *arg)
{
    struct spawn_req *q = arg;
    q->err = pith_spawn(q->type, NULL, &q->ref);
    return NULL;
}

/* A key whose directory shard is `shard`. */
static int key_on(unsigned shard, const char *prefix, unsigned from, pith_vref_t *out,
                  unsigned *next)
{
    for (unsigned i = from; i < from + 100000; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "%s%012u", prefix, i);
        int rc = pith_vref(&vecho_type, key, (size_t)kl, out);
        if (rc != 0)
            return rc;
        pith_vactor_info_t info;
        if ((rc = pith_vactor_info(out, TIMEOUT_NS, &info)) != 0)
            return rc;
        if (info.dir_shard == shard) {
            if (next != NULL)
                *next = i + 1;
            return 0;
        }
    }
    return -ENOENT;
}

static int call_phase(const bench_env_t *env, pith_ref_t asker, bool virt, uint64_t total,
                      samples_t *s)
{
    crun.virt = virt;
    crun.total = total;
    crun.s = s;
    crun.err = 0;
    int rc = pith_send(asker, GO, NULL, 0);
    if (rc == 0)
        rc = bench_wait(env, &crun.done);
    return rc != 0 ? rc : crun.err;
}

static double p50_of(samples_t *s, unsigned k)
{
    samples_sort(s);
    double v = 0;
    if (s->n > 0)
        v = (double)s->v[(s->n < s->cap ? s->n : s->cap) / 2] / k;
    return v;
}

static int run_call(const bench_env_t *env, bool remote, uint64_t n, result_t *r, char *why,
                    size_t whylen)
{
    if (remote && env->shards < 2) {
        snprintf(why, whylen, "needs 2 shards");
        return BENCH_SKIP;
    }
    int err = pith_vtype_register(&vecho_type);
    if (err) {
        snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(err));
        return BENCH_FAIL;
    }
    unsigned k = remote ? 1 : 100, ashard = remote ? 1 : 0;
    uint64_t nsamples = n / k;
    samples_t sv[2] = {{0}}, sp[2] = {{0}};
    for (int i = 0; i < 2; i++)
        if (samples_init(&sv[i], nsamples) != 0 || samples_init(&sp[i], nsamples) != 0) {
            snprintf(why, whylen, "out of memory for samples");
            return BENCH_FAIL;
        }
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    if (remote)
        cfg.poll_ns = 200000; /* as actor.remote_ask_rtt_ns: both shards busy-poll */
    const char *stage = "start";
    if (bench_engine_start(&cfg, why, whylen) != 0)
        return BENCH_FAIL;
    sem_init(&crun.done, 0, 0);
    crun.k = k;
    stage = "key";
    int rc = key_on(0, "sym", 0, &crun.v, NULL);
    struct spawn_req sa = {.type = &asker_type}, se = {.type = &echo_type};
    if (rc == 0) {
        stage = "spawn";
        rc = pith_call_wait(ashard, spawn_fn, &sa, NULL);
        if (rc == 0 && (rc = sa.err) == 0 && (rc = pith_call_wait(0, spawn_fn, &se, NULL)) == 0)
            rc = se.err;
        crun.plain = se.ref;
    }
    /* Warm-up both ways (activates the virtual actor), then plain, virtual, plain, virtual. */
    if (rc == 0) {
        stage = "warm-up";
        uint64_t w = n / 10 ? n / 10 : 1;
        rc = call_phase(env, sa.ref, false, w, NULL);
        if (rc == 0)
            rc = call_phase(env, sa.ref, true, w, NULL);
    }
    for (int i = 0; i < 2 && rc == 0; i++) {
        stage = "measured phase";
        rc = call_phase(env, sa.ref, false, nsamples * k, &sp[i]);
        if (rc == 0)
            rc = call_phase(env, sa.ref, true, nsamples * k, &sv[i]);
    }
    pith_vtype_stats_t vst = {0};
    (void)pith_vtype_stats(&vecho_type, &vst);
    int cpu_a = -1, cpu_v = -1;
    pith_shard_stats_t st;
    if (pith_shard_stats(ashard, &st) == 0)
        cpu_a = st.cpu;
    if (pith_shard_stats(0, &st) == 0)
        cpu_v = st.cpu;
    bench_engine_stop(r->name);
    sem_destroy(&crun.done);
    if (rc != 0) {
        snprintf(why, whylen, "%s: %s", stage, bench_wait_strerror(rc));
        for (int i = 0; i < 2; i++) {
            samples_free(&sv[i]);
            samples_free(&sp[i]);
        }
        return BENCH_FAIL;
    }
    double v[2], p[2];
    for (int i = 0; i < 2; i++) {
        p[i] = p50_of(&sp[i], k);
        v[i] = p50_of(&sv[i], k);
    }
    /* The row: both virtual phases' samples together. */
    samples_t all = {0};
    if (samples_init(&all, 2 * nsamples) == 0) {
        for (int i = 0; i < 2; i++)
            for (size_t j = 0; j < sv[i].n && j < sv[i].cap; j++)
                samples_add(&all, sv[i].v[j]);
        samples_sort(&all);
        result_set_pcts(r, &all);
        result_set_hist(r, &all, k);
        r->p50 /= k;
        r->p99 /= k;
        r->p999 /= k;
        r->value = r->p50;
        samples_free(&all);
    }
    bench_note("%s: %llu round trips of an 8 B pith_vask (cb NULL) to an active virtual actor "
               "answered by pith_reply, one in flight; asker on shard %u (CPU %d), the virtual "
               "actor's directory and activation on shard 0 (CPU %d) of %u shards; sample = %u "
               "round trip%s; %llu activation(s), %llu directory lookups",
               r->name, (unsigned long long)(2 * nsamples * k), ashard, cpu_a, cpu_v, env->shards,
               k, k == 1 ? "" : "s", (unsigned long long)vst.activations,
               (unsigned long long)vst.lookups);
    bench_note("%s: in this row, alternating phases: plain pith_ask to an actor on shard 0 p50 "
               "%.0f then %.0f ns, pith_vask %.0f then %.0f ns: virtual / plain %.2fx (the goal "
               "is <= 1.15x; the baseline row is %s)",
               r->name, p[0], p[1], v[0], v[1], (v[0] + v[1]) / (p[0] + p[1]),
               remote ? "actor.remote_ask_rtt_ns" : "actor.ask_rtt_ns");
    for (int i = 0; i < 2; i++) {
        samples_free(&sv[i]);
        samples_free(&sp[i]);
    }
    return 0;
}

int bench_vactor_call(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    return run_call(env, false, n, r, why, whylen);
}

int bench_vactor_remote_call(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                             size_t whylen)
{
    return run_call(env, true, n, r, why, whylen);
}

/* ---- activation: the first message to new keys ---- */

static _Atomic uint64_t counted;

enum { OFF = 3 };

static int count_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    atomic_store_explicit(&counted, atomic_load_explicit(&counted, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (msg->type == OFF)
        (void)pith_vactor_deactivate(self);
    return 0;
}

static const pith_actor_type_t count_type = {.name = "bench-count", .behaviour = count_behaviour};
static const pith_vtype_t vcount_type = {.name = "bench-vcount", .actor = &count_type};

/* Keys sent to per task: the shard runs the turns of one batch before it takes the next. */
#define ACT_BATCH 1000u

struct act_run {
    pith_vref_t *refs;
    uint64_t n;
    uint32_t type;   /* PING, or OFF: the activation deactivates itself after it */
    uint64_t t_send; /* ns inside the tasks that sent the first messages */
    int err;
};

static void *send_all(void *arg)
{
    struct act_run *a = arg;
    uint64_t t0 = pith_now_ns();
    for (uint64_t i = 0; i < a->n; i++) {
        int rc = pith_vsend(&a->refs[i], a->type, NULL, 0);
        if (rc != 0) {
            a->err = rc;
            break;
        }
    }
    a->t_send += pith_now_ns() - t0;
    return NULL;
}

/* Sends to refs[0..n) in batches, each from a task of its own, and waits until the behaviour
 * has been called `want` times in all. */
static int send_batches(const bench_env_t *env, pith_vref_t *refs, uint64_t n, uint32_t type,
                        uint64_t want, uint64_t *t_send)
{
    uint64_t t0 = bench_clock_ns();
    for (uint64_t i = 0; i < n; i += ACT_BATCH) {
        struct act_run a = {
            .refs = refs + i, .n = n - i < ACT_BATCH ? n - i : ACT_BATCH, .type = type};
        int rc = pith_call_wait(0, send_all, &a, NULL);
        if (rc == 0)
            rc = a.err;
        if (rc != 0)
            return rc;
        if (t_send != NULL)
            *t_send += a.t_send;
    }
    while (atomic_load(&counted) < want) {
        if (bench_clock_ns() - t0 > (uint64_t)(env->wait_s * 1e9))
            return -ETIMEDOUT;
        (void)pith_call_wait(0, noop_fn, NULL, NULL);
    }
    return 0;
}

/* n vrefs of 16-byte keys whose directory shard is 0 (with several shards each key is checked
 * with pith_vactor_info, before the timed part). */
static int refs_on_shard0(const pith_vtype_t *t, pith_vref_t *refs, uint64_t n, unsigned shards)
{
    uint64_t got = 0;
    for (uint64_t i = 0; got < n && i < n * shards * 4 + 1000; i++) {
        char key[17];
        snprintf(key, sizeof(key), "%016llx", (unsigned long long)i);
        int rc = pith_vref(t, key, 16, &refs[got]);
        if (rc != 0)
            return rc;
        if (shards > 1) {
            pith_vactor_info_t info;
            if ((rc = pith_vactor_info(&refs[got], TIMEOUT_NS, &info)) != 0)
                return rc;
            if (info.dir_shard != 0)
                continue;
        }
        got++;
    }
    return got == n ? 0 : -ENOENT;
}

/* Waits until the type has no live activation (deactivations run after the turns that asked). */
static int wait_none_live(const bench_env_t *env, const pith_vtype_t *t)
{
    uint64_t t0 = bench_clock_ns();
    pith_vtype_stats_t v;
    int rc;
    while ((rc = pith_vtype_stats(t, &v)) == 0 && v.live != 0) {
        if (bench_clock_ns() - t0 > (uint64_t)(env->wait_s * 1e9))
            return -ETIMEDOUT;
        (void)pith_call_wait(0, noop_fn, NULL, NULL);
    }
    return rc;
}

/* One timed pass: n new keys, one message each. */
struct act_pass {
    uint64_t ns, t_send; /* first send to last behaviour call; inside the sending tasks */
    uint64_t activations;
};

static int act_pass(const bench_env_t *env, pith_vref_t *refs, uint64_t n, uint64_t want,
                    struct act_pass *o)
{
    pith_vtype_stats_t v0 = {0}, v1 = {0};
    (void)pith_vtype_stats(&vcount_type, &v0);
    uint64_t t0 = bench_clock_ns();
    int rc = send_batches(env, refs, n, PING, want, &o->t_send);
    o->ns = bench_clock_ns() - t0;
    (void)pith_vtype_stats(&vcount_type, &v1);
    o->activations = v1.activations - v0.activations;
    return rc;
}

int bench_vactor_activate(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    int err = pith_vtype_register(&vcount_type);
    if (err) {
        snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(err));
        return BENCH_FAIL;
    }
    pith_vref_t *refs = malloc(2 * n * sizeof(*refs));
    if (refs == NULL) {
        snprintf(why, whylen, "out of memory for %llu refs", (unsigned long long)(2 * n));
        return BENCH_FAIL;
    }
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1; /* one shard: every key's directory shard is 0, and nothing else runs */
    if (bench_engine_start(&cfg, why, whylen) != 0) {
        free(refs);
        return BENCH_FAIL;
    }
    int rc = refs_on_shard0(&vcount_type, refs, 2 * n, 1);
    atomic_store(&counted, 0);
    /* Cold: n keys on a fresh engine (the directory doubles as it goes, the shard's memory is
     * touched for the first time). They then deactivate, each on a second message, and once
     * all have, warm: n other keys, in the directory and memory the first ones left. */
    struct act_pass cold = {0}, warm = {0};
    const char *stage = "cold pass";
    if (rc == 0)
        rc = act_pass(env, refs, n, n, &cold);
    if (rc == 0) {
        stage = "deactivation of the cold pass";
        rc = send_batches(env, refs, n, OFF, 2 * n, NULL);
        if (rc == 0)
            rc = wait_none_live(env, &vcount_type);
    }
    if (rc == 0) {
        stage = "warm pass";
        rc = act_pass(env, refs + n, n, 3 * n, &warm);
    }
    pith_vtype_stats_t vst = {0};
    (void)pith_vtype_stats(&vcount_type, &vst);
    bench_engine_stop(r->name);
    free(refs);
    if (rc != 0) {
        snprintf(why, whylen, "%s: %s", stage, pith_strerror(rc));
        return BENCH_FAIL;
    }
    r->value = (double)warm.ns / (double)n;
    bench_note("%s: %llu new keys of 16 B (no state, no on_activate), one message each from "
               "tasks on shard 0 (1 shard), %u keys a task; per key from the first send to the "
               "last behaviour call (the test thread's round trips included), then the part "
               "inside the sending tasks (directory, spawn, mailbox): cold pass (fresh engine) "
               "%.1f ns, %.1f ns, %.2f M/s; warm pass (the value: as many other keys after the "
               "cold ones all deactivated) %.1f ns, %.1f ns, %.2f M/s; %llu and %llu "
               "activations; the goal is <= 500 ns and >= 1M/s; baseline actor.spawn_ns (spawn, "
               "one message, stop)",
               r->name, (unsigned long long)n, ACT_BATCH, (double)cold.ns / (double)n,
               (double)cold.t_send / (double)n, (double)n / ((double)cold.ns / 1e3), r->value,
               (double)warm.t_send / (double)n, (double)n / ((double)warm.ns / 1e3),
               (unsigned long long)cold.activations, (unsigned long long)warm.activations);
    bench_note("%s: the engine's own sampled figure (pith_vtype_stats, both passes): first "
               "message at the directory to the first behaviour call p50 <= %llu ns, p99 <= %llu "
               "ns (log buckets' upper bounds; each waits behind the rest of its task's keys "
               "and their turns), %llu samples (one timed at a time per shard)",
               r->name, (unsigned long long)vst.first_p50_ns, (unsigned long long)vst.first_p99_ns,
               (unsigned long long)vst.first_samples);
    return 0;
}

/* ---- bytes per idle activation ---- */

/* The process's resident bytes (/proc/self/statm). */
static uint64_t rss_bytes(void)
{
    unsigned long long size = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &res) != 2)
        res = 0;
    fclose(f);
    return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

int bench_vactor_bytes(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    int err = pith_vtype_register(&vcount_type);
    if (err) {
        snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(err));
        return BENCH_FAIL;
    }
    pith_vref_t *refs = malloc(n * sizeof(*refs));
    if (refs == NULL) {
        snprintf(why, whylen, "out of memory for %llu refs", (unsigned long long)n);
        return BENCH_FAIL;
    }
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    if (bench_engine_start(&cfg, why, whylen) != 0) {
        free(refs);
        return BENCH_FAIL;
    }
    int rc = refs_on_shard0(&vcount_type, refs, n, 1);
    atomic_store(&counted, 0);
    /* One activation first, so the shard's first-use tables are in the before figures. */
    if (rc == 0)
        rc = send_batches(env, refs, 1, PING, 1, NULL);
    pith_mem_stats_t m0 = {0}, m1 = {0};
    uint64_t rss0 = 0, rss1 = 0;
    if (rc == 0) {
        pith_mem_stats(0, &m0);
        rss0 = rss_bytes();
        rc = send_batches(env, refs + 1, n - 1, PING, n, NULL);
        pith_mem_stats(0, &m1);
        rss1 = rss_bytes();
    }
    pith_vtype_stats_t vst = {0};
    (void)pith_vtype_stats(&vcount_type, &vst);
    bench_engine_stop(r->name);
    free(refs);
    if (rc != 0) {
        snprintf(why, whylen, "%s", pith_strerror(rc));
        return BENCH_FAIL;
    }
    double per_heap = ((double)m1.in_use - (double)m0.in_use) / (double)(n - 1);
    double per_rss = ((double)rss1 - (double)rss0) / (double)(n - 1);
    /* The directory's buckets are the shard's memory too (8 B each: 64, doubled whenever the
     * entries reach twice the buckets, as core/vactor.c grows it); their share is derived
     * here only to name it in the note. */
    uint64_t buckets = 64;
    while (2 * buckets <= vst.live)
        buckets *= 2;
    double per_dir = 8.0 * (double)buckets / (double)vst.live;
    r->value = per_heap;
    bench_note("%s: %llu idle activations (keys of 16 B, no state) on shard 0 (1 shard), %llu "
               "live after: %.1f B each (the value: the shard's heap, pith_mem_stats in_use: "
               "actor record, directory entry and key, and the directory's buckets, of which "
               "%llu of 8 B are %.1f B an activation); the process's RSS grew %.1f B per "
               "activation meanwhile (it reuses pages earlier rows freed, so it can be less); "
               "the goal is <= 128 B; no baseline (actor.bytes_per_actor is a plain actor's)",
               r->name, (unsigned long long)(n - 1), (unsigned long long)vst.live, r->value,
               (unsigned long long)buckets, per_dir, per_rss);
    return 0;
}

/* ---- idle tracking with a million live activations ----
 * A ping-pong of tasks between shards 0 and 1 (as mesh.rtt_ns), first with no activation, then
 * with a million idle ones on shard 0 whose idle sweep is armed (idle time 30 s, a tick every
 * 7.5 s: none is due during the run, and a tick looks at the cold end of the list and stops). */

struct vping {
    samples_t s;
    uint64_t n, done, t_sent;
    int err;
    sem_t finished;
};

static void vping_fn(void *arg);

static void vpong_fn(void *arg)
{
    struct vping *pp = arg;
    int rc = pith_submit(0, vping_fn, pp);
    if (rc != 0) {
        pp->err = rc;
        sem_post(&pp->finished);
    }
}

static void vping_fn(void *arg)
{
    struct vping *pp = arg;
    if (pp->t_sent) {
        samples_add(&pp->s, (int64_t)(pith_now_ns() - pp->t_sent));
        pp->done++;
    }
    if (pp->done == pp->n) {
        sem_post(&pp->finished);
        return;
    }
    pp->t_sent = pith_now_ns();
    int rc = pith_submit(1, vpong_fn, pp);
    if (rc != 0) {
        pp->err = rc;
        sem_post(&pp->finished);
    }
}

static int vping_run(const bench_env_t *env, uint64_t n, double *p50, uint64_t *ns)
{
    struct vping pp = {.n = n};
    if (samples_init(&pp.s, n) != 0)
        return -ENOMEM;
    sem_init(&pp.finished, 0, 0);
    uint64_t t0 = bench_clock_ns();
    int rc = pith_submit(0, vping_fn, &pp);
    if (rc == 0)
        rc = bench_wait(env, &pp.finished);
    if (rc == 0)
        rc = pp.err;
    *ns = bench_clock_ns() - t0;
    if (rc == 0) {
        samples_sort(&pp.s);
        *p50 = (double)pp.s.v[(pp.s.n < pp.s.cap ? pp.s.n : pp.s.cap) / 2];
    }
    sem_destroy(&pp.finished);
    samples_free(&pp.s);
    return rc;
}

static const pith_vtype_t vidle_type = {
    .name = "bench-vidle", .actor = &count_type, .idle_ns = 30000ull * 1000 * 1000};

int bench_vactor_sweep(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    if (env->shards < 2) {
        snprintf(why, whylen, "needs 2 shards");
        return BENCH_SKIP;
    }
    int err = pith_vtype_register(&vidle_type);
    if (err) {
        snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(err));
        return BENCH_FAIL;
    }
    const uint64_t live = 1000000;
    pith_vref_t *refs = malloc(live * sizeof(*refs));
    if (refs == NULL) {
        snprintf(why, whylen, "out of memory for refs");
        return BENCH_FAIL;
    }
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    /* The default poll window (not mesh.rtt_ns's 10 s): a round trip is far inside it, so the
     * shards do not sleep during the ping-pong, and the test thread is not starved while it
     * makes the activations (with both shards spinning on 2 CPUs that took 22-29 s). */
    if (bench_engine_start(&cfg, why, whylen) != 0) {
        free(refs);
        return BENCH_FAIL;
    }
    /* Keys whose directory shard is 0. */
    uint64_t got = 0;
    for (uint64_t i = 0; got < live && i < live * env->shards * 4; i++) {
        char key[17];
        snprintf(key, sizeof(key), "%016llx", (unsigned long long)i);
        if (pith_vref(&vidle_type, key, 16, &refs[got]) == 0 && pith_vref_shard(&refs[got]) == 0)
            got++;
    }
    double base = 0, with = 0;
    uint64_t base_ns = 0, with_ns = 0;
    const char *stage = "keys";
    int rc = got == live ? 0 : -ENOENT;
    if (rc == 0) {
        stage = "ping-pong without activations";
        rc = vping_run(env, n, &base, &base_ns);
    }
    uint64_t t_act = bench_clock_ns();
    if (rc == 0) {
        /* From one task, then the turns. */
        stage = "activations";
        atomic_store(&counted, 0);
        struct act_run a = {.refs = refs, .n = live, .type = PING};
        rc = pith_call_wait(0, send_all, &a, NULL);
        if (rc == 0)
            rc = a.err;
        while (rc == 0 && atomic_load(&counted) < live)
            (void)pith_call_wait(0, noop_fn, NULL, NULL);
    }
    t_act = bench_clock_ns() - t_act;
    pith_vtype_stats_t v0 = {0}, v1 = {0};
    if (rc == 0) {
        stage = "ping-pong with a million activations";
        (void)pith_vtype_stats(&vidle_type, &v0);
        rc = vping_run(env, n, &with, &with_ns);
        (void)pith_vtype_stats(&vidle_type, &v1);
    }
    bench_engine_stop(r->name);
    free(refs);
    if (rc != 0) {
        snprintf(why, whylen, "%s: %s", stage, pith_strerror(rc));
        return BENCH_FAIL;
    }
    r->value = with;
    bench_note("%s: a task ping-pong between shards 0 and 1 (default poll window), %llu round "
               "trips: "
               "p50 %.0f ns with no activation (%.2f s), %.0f ns with %llu idle activations on "
               "shard 0 (made in %.2f s; the run %.2f s) with their sweep armed (idle time 30 s, "
               "none due): %.3fx; %llu deactivated meanwhile; the goal is no measurable change "
               "against mesh.rtt_ns",
               r->name, (unsigned long long)n, base, (double)base_ns / 1e9, with,
               (unsigned long long)v0.live, (double)t_act / 1e9, (double)with_ns / 1e9, with / base,
               (unsigned long long)(v1.deactivations[PITH_VDEACT_IDLE] -
                                    v0.deactivations[PITH_VDEACT_IDLE]));
    return 0;
}
