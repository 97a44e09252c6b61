/* Timer lateness on a loaded shard: 100000 far-future timers armed on shard 0, then a one-shot
 * timer re-armed every period; how late each firing is. The raw baseline (clock_nanosleep on a
 * plain thread, same CPU, same schedule) is in bench_raw.c. */
#include <errno.h>
#include <semaphore.h>
#include <stdlib.h>

#include "bench.h"

#define LOAD_TIMERS     100000u
#define LOAD_DELAY_NS   (3600ull * 1000000000ull) /* an hour: never fires during the run */
#define TIMERS_PER_TURN 4096u /* arms or cancels per task, so no task runs near the stall limit */

struct jitter {
    pith_timer_id_t *load_ids;
    unsigned armed, cancelled, cancel_failed;
    uint64_t n, fired;
    uint64_t deadline; /* the firing in flight is due at this instant */
    int64_t early;
    uint64_t pending_measuring; /* shard 0's timers_pending at the first recorded firing */
    samples_t s;
    int err;
    sem_t step_done;
};

static void load_fn(void *arg)
{
    (void)arg; /* never runs: an hour is past the end of the run */
}

static void post_err(struct jitter *j, int rc)
{
    j->err = rc;
    sem_post(&j->step_done);
}

static void tick_fn(void *arg);

static int arm_next(struct jitter *j, uint64_t now)
{
    /* Absolute schedule, as the raw baseline: the next deadline is one period after the last
     * deadline, not after the late firing, so lateness does not accumulate into later samples. */
    j->deadline += BENCH_TIMER_PERIOD_NS;
    uint64_t delay = j->deadline > now ? j->deadline - now : 0;
    return pith_timer_add(delay, 0, tick_fn, j, NULL);
}

static void tick_fn(void *arg)
{
    struct jitter *j = arg;
    uint64_t now = pith_now_ns();
    int64_t late = (int64_t)(now - j->deadline);
    if (j->fired == BENCH_TIMER_WARMUP) {
        /* Read after `now`, so the stats call is not in this sample; shows the load is armed. */
        pith_shard_stats_t st;
        if (pith_shard_stats(0, &st) == 0)
            j->pending_measuring = st.timers_pending;
    }
    if (j->fired++ >= BENCH_TIMER_WARMUP) {
        samples_add(&j->s, late);
        j->early += late < 0;
    }
    bench_progress(j->fired, BENCH_TIMER_WARMUP + j->n); /* a store a millisecond */
    if (j->fired == BENCH_TIMER_WARMUP + j->n) {
        sem_post(&j->step_done);
        return;
    }
    int rc = arm_next(j, pith_now_ns());
    if (rc != 0)
        post_err(j, rc);
}

/* Arms the load in turns, then the first measured timer. */
static void arm_fn(void *arg)
{
    struct jitter *j = arg;
    for (unsigned i = 0; i < TIMERS_PER_TURN && j->armed < LOAD_TIMERS; i++, j->armed++) {
        int rc = pith_timer_add(LOAD_DELAY_NS, 0, load_fn, NULL, &j->load_ids[j->armed]);
        if (rc != 0) {
            post_err(j, rc);
            return;
        }
    }
    int rc;
    if (j->armed < LOAD_TIMERS) {
        rc = pith_submit(0, arm_fn, j);
    } else {
        uint64_t now = pith_now_ns();
        j->deadline = now;
        rc = arm_next(j, now);
    }
    if (rc != 0)
        post_err(j, rc);
}

static void cancel_fn(void *arg)
{
    struct jitter *j = arg;
    for (unsigned i = 0; i < TIMERS_PER_TURN && j->cancelled < j->armed; i++, j->cancelled++)
        j->cancel_failed += pith_timer_cancel(j->load_ids[j->cancelled]) != 0;
    if (j->cancelled < j->armed) {
        int rc = pith_submit(0, cancel_fn, j);
        if (rc != 0)
            post_err(j, rc);
        return;
    }
    sem_post(&j->step_done);
}

int bench_timer_jitter(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    struct jitter j = {.n = n};
    j.load_ids = calloc(LOAD_TIMERS, sizeof(*j.load_ids));
    if (!j.load_ids || samples_init(&j.s, n) != 0) {
        free(j.load_ids);
        snprintf(why, whylen, "out of memory");
        return BENCH_FAIL;
    }
    sem_init(&j.step_done, 0, 0);

    /* Default poll: the shard sleeps between firings, as the raw thread does in
     * clock_nanosleep, so both rows include a wake-up. */
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    int rc = bench_engine_start(&cfg, why, whylen);
    if (rc != 0) {
        sem_destroy(&j.step_done);
        samples_free(&j.s);
        free(j.load_ids);
        return BENCH_FAIL;
    }
    rc = pith_submit(0, arm_fn, &j);
    if (rc == 0)
        rc = bench_wait(env, &j.step_done);
    if (rc == 0)
        rc = j.err;
    const char *step = "measuring";
    if (rc == 0) {
        step = "cancelling";
        rc = pith_submit(0, cancel_fn, &j);
        if (rc == 0)
            rc = bench_wait(env, &j.step_done);
        if (rc == 0)
            rc = j.err;
    }
    bench_stats_t after = bench_stats(0);
    bench_engine_stop(r->name);

    if (rc != 0) {
        snprintf(why, whylen, "%s while %s (%u load timers armed, %llu firings)",
                 rc == -ETIMEDOUT ? "timed out" : pith_strerror(rc), step, j.armed,
                 (unsigned long long)j.fired);
    } else {
        bench_note("%s: %u load timers; shard 0 had %llu pending while measuring, %llu after "
                   "cancelling (%u cancels failed)",
                   r->name, j.armed, (unsigned long long)j.pending_measuring,
                   (unsigned long long)after.timers_pending, j.cancel_failed);
        if (j.early)
            bench_note("%s: %lld of %llu firings came before their deadline", r->name,
                       (long long)j.early, (unsigned long long)n);
        samples_sort(&j.s);
        result_set_pcts(r, &j.s);
        result_set_hist(r, &j.s, 1);
        r->value = r->p99;
    }
    sem_destroy(&j.step_done);
    samples_free(&j.s);
    free(j.load_ids);
    return rc ? BENCH_FAIL : 0;
}
