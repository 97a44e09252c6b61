/* The loop's cheap clock for one question: has the next timer come due? Reading
 * CLOCK_MONOTONIC costs ~22 ns here (tsc clocksource through the vDSO), the TSC alone ~10 ns;
 * with timers pending the loop asked on every iteration. The deadline is turned into TSC ticks
 * with a rate 1% under the measured one, so the gate opens a little early, never late, and the
 * loop then reads the real clock. Without an invariant TSC the gate is off (rate 0) and the
 * loop reads the clock as before. */
#include "shard.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

double tsc_per_ns;
double tsc_rate_ns;

static bool invariant_tsc(void)
{
#if defined(__x86_64__)
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL)
        return false;
    char line[4096];
    bool constant = false, nonstop = false;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        constant = strstr(line, " constant_tsc") != NULL;
        nonstop = strstr(line, " nonstop_tsc") != NULL;
        break;
    }
    fclose(f);
    return constant && nonstop;
#else
    return false;
#endif
}

static void calibrate(void)
{
    if (!invariant_tsc())
        return;
    /* Two readings 2 ms apart. */
    uint64_t n0 = pith_now_ns(), t0 = tsc_now();
    struct timespec ts = {0, 2 * 1000 * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
    uint64_t n1 = pith_now_ns(), t1 = tsc_now();
    if (n1 <= n0 || t1 <= t0)
        return;
    tsc_rate_ns = (double)(t1 - t0) / (double)(n1 - n0);
    tsc_per_ns = tsc_rate_ns * 0.99;
}

void tsc_calibrate(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, calibrate);
}
