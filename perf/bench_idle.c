/* What an idle engine costs: the process's CPU time while every shard has nothing to do, as a
 * percentage of one CPU. No baseline: the target is zero. */
#include <errno.h>
#include <time.h>

#include "bench.h"

/* Waited before measuring: far past the default poll period (50 us), so every shard has had
 * time to stop polling and block. */
#define SETTLE_NS 100000000ull

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                          .tv_nsec = (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* n: the measured window in milliseconds. The process's CPU time counts every thread — shards,
 * the stall detector, and this thread, which only sleeps — so nothing the engine does is left
 * out. */
int bench_idle_cpu(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    if (bench_engine_start(&cfg, why, whylen) != 0)
        return BENCH_FAIL;
    sleep_ns(SETTLE_NS);

    bench_stats_t before[2] = {bench_stats(0), bench_stats(env->shards > 1 ? 1 : 0)};
    uint64_t wall0 = bench_clock_ns(), cpu0 = cpu_ns();
    sleep_ns(n * 1000000ull);
    uint64_t wall1 = bench_clock_ns(), cpu1 = cpu_ns();
    bench_stats_t after[2] = {bench_stats(0), bench_stats(env->shards > 1 ? 1 : 0)};
    bench_engine_stop(r->name);

    r->value = (double)(cpu1 - cpu0) / (double)(wall1 - wall0) * 100.0;
    /* Shows whether the shards really blocked (few loops, about as many sleeps) or spun. */
    for (unsigned i = 0; i < env->shards && i < 2; i++) {
        bench_stats_t d = bench_stats_delta(after[i], before[i]);
        bench_note("%s: over %.2f s idle, shard %u looped %llu times and slept %llu times", r->name,
                   (double)(wall1 - wall0) / 1e9, i, (unsigned long long)d.loops,
                   (unsigned long long)d.sleeps);
    }
    return 0;
}
