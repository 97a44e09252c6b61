/* Engine lifecycle: start (config, shards, mesh, threads), the stop protocol (drain, detect
 * quiescence, halt, release, free), and the read-only queries on a running engine. */
#include "shard.h"

#include <pith/error.h>

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct engine pith_engine;

/* Serialises start and stop; never taken by a shard thread. */
static pthread_mutex_t lifecycle = PTHREAD_MUTEX_INITIALIZER;

uint64_t pith_now_ns(void)
{
    return io_now_ns();
}

unsigned pith_shard_count(void)
{
    return atomic_load(&pith_engine.nshards);
}

int pith_shard_id(void)
{
    return shard_cur ? (int)shard_cur->id : -1;
}

#define MAX_HOOK_LAYERS 8
static struct shard_hooks hook_layers[MAX_HOOK_LAYERS];
static unsigned n_hook_layers;

void shard_hooks_add(const struct shard_hooks *h)
{
    if (n_hook_layers < MAX_HOOK_LAYERS) /* constructors only: no engine runs yet */
        hook_layers[n_hook_layers++] = *h;
}

void shard_hooks_ring_exit(unsigned shard)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].ring_exit != NULL)
            hook_layers[i].ring_exit(shard);
}

void shard_hooks_shard_exit(unsigned shard)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].shard_exit != NULL)
            hook_layers[i].shard_exit(shard);
}

void shard_hooks_start(unsigned shard)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].start != NULL)
            hook_layers[i].start(shard);
}

void shard_hooks_leaving(unsigned shard)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].leaving != NULL)
            hook_layers[i].leaving(shard);
}

void shard_hooks_flush(unsigned shard)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].flush != NULL)
            hook_layers[i].flush(shard);
}

void shard_hooks_engine_gone(void)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].engine_gone != NULL)
            hook_layers[i].engine_gone();
}

void shard_hooks_stopping(void)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].stopping != NULL)
            hook_layers[i].stopping();
}

const char *shard_hooks_describe(unsigned shard, pith_anyfn_t *fn)
{
    for (unsigned i = 0; i < n_hook_layers; i++) {
        const char *label =
            hook_layers[i].describe != NULL ? hook_layers[i].describe(shard, fn) : NULL;
        if (label != NULL)
            return label;
    }
    return NULL;
}

void shard_hooks_stalled(unsigned shard, pith_anyfn_t fn)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].stalled != NULL)
            hook_layers[i].stalled(shard, fn);
}

void shard_quiesce(void)
{
    struct engine *e = &pith_engine;
    unsigned n = e->n;
    if (shard_cur != NULL || n == 0)
        return;
    for (unsigned i = 0; i < n; i++) {
        struct shard *s = e->shards[i];
        /* seq_cst, in the Dekker the loop's increment of loops describes (loop.c); it also
         * acquires that increment (and the exchange that announces sleep), so whatever the
         * shard did in the iteration we waited out happens before our return. */
        uint64_t seen = atomic_load(&s->st.loops);
        while (atomic_load(&s->st.loops) == seen && atomic_load(&s->sleep_state) == AWAKE &&
               atomic_load(&e->state) != ENGINE_HALT)
            sched_yield();
    }
}

bool shard_hooks_release(pith_fn_t fn, void *arg)
{
    for (unsigned i = 0; i < n_hook_layers; i++)
        if (hook_layers[i].release != NULL && hook_layers[i].release(fn, arg))
            return true;
    return false;
}

static void shard_free(struct shard *s, pith_stop_report_t *rep)
{
    if (s == NULL)
        return;
    /* Tasks a shard gave itself and never ran. */
    for (uint32_t i = s->lq_head; i != s->lq_tail; i++) {
        task_released(&s->lq[i & s->lq_mask]);
        rep->released_tasks++;
    }
    lanes_release(s, &rep->released_tasks);
    mesh_shard_fini(s, &rep->released_tasks);
    /* The ring first: operations the stop could not reap may still write into this shard's
     * memory until the ring is gone. */
    if (s->ring_fd >= 0)
        io_ring_exit(&s->io);
    rep->mem_in_use += mem_home_release(s->mem);
    rep->released_timers += s->timers.len;
    timers_fini(&s->timers);
    free(s->lq);
    if (s->efd >= 0)
        close(s->efd);
    free(s);
}

/* Frees everything of an engine whose shard threads are gone. */
static void engine_teardown(struct engine *e, pith_stop_report_t *rep)
{
    if (e->shards != NULL) {
        if (e->pairs != NULL)
            mesh_release_unrun(e, &rep->released_tasks);
        for (unsigned i = 0; i < e->n; i++)
            shard_free(e->shards[i], rep);
        free(e->shards);
        e->shards = NULL;
    }
    mesh_destroy(e);
    free(e->scan);
    e->scan = NULL;
    free(e->cpu_list);
    e->cpu_list = NULL;
    free((char *)(uintptr_t)e->cfg.journal.dir); /* config.c's copy */
    e->cfg.journal.dir = NULL;
    topo_close(e);
    e->n = 0;
}

static int shards_create(struct engine *e)
{
    e->shards = calloc(e->n, sizeof(*e->shards));
    e->scan = calloc(e->n, sizeof(*e->scan));
    if (e->shards == NULL || e->scan == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < e->n; i++) {
        struct shard *s = aligned_alloc(CACHE_LINE, sizeof(*s));
        if (s == NULL)
            return -ENOMEM;
        memset(s, 0, sizeof(*s));
        s->id = i;
        s->eng = e;
        s->ring_fd = -1;
        s->efd = -1;
        s->cpu = (e->cfg.flags & PITH_CFG_NO_PIN) ? -1 : (int)e->cpu_list[i % e->cfg.ncpus];
        s->node = s->cpu >= 0 ? topo_cpu_node(e, (unsigned)s->cpu) : -1;
        e->shards[i] = s;
    }
    return mesh_create(e);
}

int pith_engine_start(const pith_config_t *cfg)
{
    tsc_calibrate(); /* once per process, before any shard reads tsc_per_ns */
    struct engine *e = &pith_engine;
    if (shard_cur != NULL) {
        set_last_error("pith_engine_start called from a shard of the running engine");
        return -EALREADY;
    }
    pthread_mutex_lock(&lifecycle);
    if (atomic_load(&e->state) != ENGINE_OFF) {
        pthread_mutex_unlock(&lifecycle);
        set_last_error("the engine is already running");
        return -EALREADY;
    }
    set_last_error("%s", "");
    atomic_fetch_add(&e->epoch, 1);
    atomic_store(&e->wd_parked, 0);
    atomic_store(&e->wd_stop, 0);

    int err = topo_open(e);
    if (err == 0)
        err = config_resolve(e, cfg);
    if (err == 0) {
        atomic_store(&e->state, ENGINE_STARTING);
        err = shards_create(e);
    }
    unsigned created = 0;
    if (err == 0) {
        sem_init(&e->ready, 0, 0);
        sem_init(&e->go, 0, 0);
        for (; created < e->n; created++) {
            struct shard *s = e->shards[created];
            int rc = pthread_create(&s->thread, NULL, shard_main, s);
            if (rc != 0) {
                err = -rc;
                set_last_error("could not create the thread of shard %u", created);
                break;
            }
        }
        for (unsigned i = 0; i < created; i++)
            while (sem_wait(&e->ready) != 0)
                ;
        for (unsigned i = 0; err == 0 && i < e->n; i++) {
            if (e->shards[i]->init_err) {
                err = e->shards[i]->init_err;
                set_last_error("shard %u: memory, io_uring or eventfd set-up failed: %s", i,
                               pith_strerror(err));
            }
        }
        atomic_store(&e->state, err == 0 ? ENGINE_RUNNING : ENGINE_HALT);
        for (unsigned i = 0; i < created; i++)
            sem_post(&e->go);
    }
    if (err == 0 && e->cfg.stall_ns > 0) {
        err = stall_start(e);
        if (err) {
            set_last_error("could not start the stall detector thread");
            atomic_store(&e->state, ENGINE_HALT);
            for (unsigned i = 0; i < e->n; i++)
                shard_wake_external(e->shards[i]);
        }
    }
    if (err != 0) {
        for (unsigned i = 0; i < created; i++) {
            uint64_t one = 1;
            if (e->shards[i]->efd >= 0 && write(e->shards[i]->efd, &one, sizeof(one)) < 0)
                perror("pith: eventfd write");
            pthread_join(e->shards[i]->thread, NULL);
        }
        if (created > 0) {
            sem_destroy(&e->ready);
            sem_destroy(&e->go);
        }
        pith_stop_report_t ignored = {0};
        engine_teardown(e, &ignored);
        shard_hooks_engine_gone();
        atomic_store(&e->state, ENGINE_OFF);
        pthread_mutex_unlock(&lifecycle);
        return err;
    }
    atomic_store(&e->nshards, e->n);
    pthread_mutex_unlock(&lifecycle);
    return 0;
}

/* True when every shard slept through the whole scan and every task ever sent has run. A
 * sleeping shard has an empty local queue and has found its ingress lanes empty, but for those
 * it parked (lanes_held); sleep_epoch moves whenever it wakes up to work and sleeps again, so
 * equal epochs before and after the counter reads mean nobody ran anything in between, and
 * balanced counters mean nothing is left in a ring or a batch. No producer pushes to a lane
 * once producers_stop has returned. */
static bool quiescent(struct engine *e)
{
    /* WOKEN counts as awake: a producer that pushed to a lane woke the shard, which will run
     * the record before it sleeps again. */
    for (unsigned i = 0; i < e->n; i++) {
        struct shard *s = e->shards[i];
        if (atomic_load(&s->sleep_state) != ASLEEP)
            return false;
        e->scan[i] = atomic_load(&s->sleep_epoch);
    }
    uint64_t sent = 0, ran = 0, held = 0;
    for (unsigned i = 0; i < e->n; i++) {
        sent += atomic_load(&e->shards[i]->remote_sent);
        ran += atomic_load(&e->shards[i]->remote_run);
        held += atomic_load(&e->shards[i]->lanes_held);
    }
    if (sent != ran || held != 0)
        return false;
    for (unsigned i = 0; i < e->n; i++) {
        struct shard *s = e->shards[i];
        if (atomic_load(&s->sleep_state) != ASLEEP || atomic_load(&s->sleep_epoch) != e->scan[i])
            return false;
    }
    return true;
}

static void pause_briefly(void)
{
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
}

int pith_engine_stop(void)
{
    struct engine *e = &pith_engine;
    if (shard_cur != NULL)
        return -EDEADLK;
    pthread_mutex_lock(&lifecycle);
    if (atomic_load(&e->state) != ENGINE_RUNNING) {
        pthread_mutex_unlock(&lifecycle);
        return -ESHUTDOWN;
    }
    pith_stop_report_t rep = {0};

    /* 1. Refuse outside submissions; wait for those already inside (see producer_enter). */
    atomic_store(&e->state, ENGINE_DRAINING);
    producers_stop();
    shard_hooks_stopping();

    /* 2. Let queued work run until the engine is quiet or the deadline passes. Shards that
     * sleep with a timer pending wake, find DRAINING and sleep without one. */
    for (unsigned i = 0; i < e->n; i++)
        shard_wake_external(e->shards[i]);
    uint64_t t0 = pith_now_ns();
    for (;;) {
        if (quiescent(e)) {
            rep.quiescent = true;
            break;
        }
        if (pith_now_ns() - t0 >= e->cfg.drain_ns)
            break;
        pause_briefly();
    }
    rep.drain_ns = pith_now_ns() - t0;

    /* 3. Halt: every shard leaves its loop at the top of its next iteration. The eventfd is
     * written unconditionally so a sleeper cannot miss it. */
    atomic_store(&e->state, ENGINE_HALT);
    for (unsigned i = 0; i < e->n; i++) {
        uint64_t one = 1;
        if (write(e->shards[i]->efd, &one, sizeof(one)) < 0)
            perror("pith: eventfd write");
    }
    for (unsigned i = 0; i < e->n; i++)
        pthread_join(e->shards[i]->thread, NULL);
    stall_stop(e);
    atomic_store(&e->nshards, 0);
    while (atomic_load(&e->stat_users) > 0)
        sched_yield();

    /* 4. Single-threaded from here: release what never ran and free everything. */
    sem_destroy(&e->ready);
    sem_destroy(&e->go);
    /* Producers first: once they are detached, a producer that closes no longer touches the
     * shards that engine_teardown frees. */
    producers_teardown();
    engine_teardown(e, &rep);
    shard_hooks_engine_gone();
    if (rep.released_tasks > 0)
        fprintf(stderr, "pith: stop released %llu tasks that had not run after %.1f ms\n",
                (unsigned long long)rep.released_tasks, (double)rep.drain_ns / 1e6);
    e->last_stop = rep;
    e->have_last_stop = true;
    atomic_store(&e->state, ENGINE_OFF);
    pthread_mutex_unlock(&lifecycle);
    return 0;
}

int pith_engine_stop_report(pith_stop_report_t *out)
{
    if (out == NULL)
        return -EINVAL;
    pthread_mutex_lock(&lifecycle);
    int err = pith_engine.have_last_stop ? 0 : -ENOENT;
    if (err == 0)
        *out = pith_engine.last_stop;
    pthread_mutex_unlock(&lifecycle);
    return err;
}

/* Outside readers of a running engine's shards: the Dekker with stop of pith_shard_stats. */
static bool reader_enter(struct engine *e, bool outside)
{
    if (!outside)
        return true;
    atomic_fetch_add(&e->stat_users, 1);
    int st = atomic_load(&e->state);
    if (st != ENGINE_RUNNING && st != ENGINE_DRAINING) {
        atomic_fetch_sub(&e->stat_users, 1);
        return false;
    }
    return true;
}

static void reader_leave(struct engine *e, bool outside)
{
    if (outside)
        atomic_fetch_sub(&e->stat_users, 1);
}

bool shard_reader_enter(void)
{
    return reader_enter(&pith_engine, shard_cur == NULL);
}

void shard_reader_leave(void)
{
    reader_leave(&pith_engine, shard_cur == NULL);
}

/* Busy and elapsed time of a shard's loop, from its utilisation counters: the seqlock's reader
 * side (loop.c says how they are written). The acquire load of the count pairs with the
 * writer's release store of the even count; the acquire loads of the data keep the second load
 * of the count after them, and pair with the writer's release stores of the data. A count that
 * is odd or changed means a write overlapped: read again. */
static void util_read(struct shard_counters *c, uint64_t *busy, uint64_t *elapsed)
{
    uint64_t start = atomic_load_explicit(&c->util_start, memory_order_relaxed);
    uint64_t idle, from, now;
    for (;;) {
        uint32_t q0 = atomic_load_explicit(&c->idle_seq, memory_order_acquire);
        idle = atomic_load_explicit(&c->idle, memory_order_acquire);
        from = atomic_load_explicit(&c->idle_from, memory_order_acquire);
        now = ticks_now(); /* inside: the pair held at this time */
        uint32_t q1 = atomic_load_explicit(&c->idle_seq, memory_order_relaxed);
        if (q0 == q1 && (q0 & 1) == 0)
            break;
        sched_yield();
    }
    *busy = *elapsed = 0;
    if (start == 0)
        return; /* the loop has not begun */
    if (from != 0 && now > from)
        idle += now - from;
    uint64_t all = now > start ? now - start : 0;
    uint64_t b = all > idle ? all - idle : 0;
    /* A reading taken just as the shard went idle may have counted a little of that idle time
     * as busy (the shard notes the time, then writes it): what readers have been told is kept
     * (a CAS on the highest), and no reading goes below it, so busy never goes back. */
    uint64_t seen = atomic_load_explicit(&c->busy_seen, memory_order_relaxed);
    while (b > seen && !atomic_compare_exchange_weak_explicit(
                           &c->busy_seen, &seen, b, memory_order_relaxed, memory_order_relaxed))
        ;
    if (b < seen)
        b = seen < all ? seen : all;
    *elapsed = ticks_ns(all);
    *busy = ticks_ns(b);
}

int pith_shard_stats(unsigned shard, pith_shard_stats_t *out)
{
    struct engine *e = &pith_engine;
    if (out == NULL)
        return -EINVAL;
    bool outside = shard_cur == NULL;
    if (!reader_enter(e, outside))
        return -ESHUTDOWN;
    int err = 0;
    if (shard >= e->n) {
        err = -EINVAL;
    } else {
        struct shard *s = e->shards[shard];
        struct shard_counters *c = &s->st;
        memset(out, 0, sizeof(*out));
        out->shard = shard;
        out->cpu = s->pinned ? s->cpu : -1;
        out->pinned = s->pinned;
        out->ring_flags = s->io.flags;
        out->ring_features = s->io.features;
        out->loops = atomic_load_explicit(&c->loops, memory_order_relaxed);
        out->sleeps = atomic_load_explicit(&c->sleeps, memory_order_relaxed);
        out->tasks_run = atomic_load_explicit(&s->task_seq, memory_order_relaxed);
        out->msgs_out = atomic_load_explicit(&c->msgs_out, memory_order_relaxed);
        out->msgs_in = atomic_load_explicit(&c->msgs_in, memory_order_relaxed);
        out->batches_out = atomic_load_explicit(&c->batches_out, memory_order_relaxed);
        out->batches_in = atomic_load_explicit(&c->batches_in, memory_order_relaxed);
        out->ring_full = atomic_load_explicit(&c->ring_full, memory_order_relaxed);
        out->backpressure = atomic_load_explicit(&c->backpressure, memory_order_relaxed);
        out->wakes_sent = atomic_load_explicit(&c->wakes_sent, memory_order_relaxed);
        out->wake_failures = atomic_load_explicit(&s->io.wake_failures, memory_order_relaxed);
        out->external_in = atomic_load_explicit(&c->external_in, memory_order_relaxed);
        out->timers_fired = atomic_load_explicit(&c->timers_fired, memory_order_relaxed);
        out->timers_pending = atomic_load_explicit(&c->timers_pending, memory_order_relaxed);
        out->stalls = atomic_load_explicit(&c->stalls, memory_order_relaxed);
        out->lanes = atomic_load_explicit(&c->lanes, memory_order_relaxed);
        out->lanes_dormant = atomic_load_explicit(&c->lanes_dormant, memory_order_relaxed);
        out->lanes_orphaned = atomic_load_explicit(&s->orphans, memory_order_relaxed);
        util_read(c, &out->busy_ns, &out->elapsed_ns);
    }
    reader_leave(e, outside);
    return err;
}

int shard_stall_hist(unsigned shard, uint64_t *hist, uint64_t *sum_ns)
{
    struct engine *e = &pith_engine;
    bool outside = shard_cur == NULL;
    if (!reader_enter(e, outside))
        return -ESHUTDOWN;
    int err = 0;
    if (shard >= e->n) {
        err = -EINVAL;
    } else {
        const struct shard_counters *c = &e->shards[shard]->st;
        for (unsigned b = 0; b < HIST_BUCKETS; b++)
            hist[b] = atomic_load_explicit(&c->stall_hist[b], memory_order_relaxed);
        *sum_ns = atomic_load_explicit(&c->stall_sum, memory_order_relaxed);
    }
    reader_leave(e, outside);
    return err;
}

int pith_mem_stats(int shard, pith_mem_stats_t *out)
{
    struct engine *e = &pith_engine;
    if (out == NULL || shard < PITH_MEM_OUTSIDE)
        return -EINVAL;
    if (shard == PITH_MEM_OUTSIDE) {
        mem_outside_stats(out);
        return 0;
    }
    bool outside = shard_cur == NULL;
    if (!reader_enter(e, outside))
        return -ESHUTDOWN;
    int err = (unsigned)shard >= e->n ? -EINVAL : mem_home_stats(e->shards[shard]->mem, out);
    reader_leave(e, outside);
    return err;
}

int pith_mem_extent_info(int shard, unsigned i, pith_mem_extent_t *out)
{
    struct engine *e = &pith_engine;
    if (out == NULL || shard < 0)
        return -EINVAL;
    bool outside = shard_cur == NULL;
    if (!reader_enter(e, outside))
        return -ESHUTDOWN;
    int err = (unsigned)shard >= e->n ? -EINVAL : mem_home_extent(e->shards[shard]->mem, i, out);
    reader_leave(e, outside);
    return err;
}
