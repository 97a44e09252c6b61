/* The engine's cheap clock: the TSC where the CPU has an invariant one (calibrated once per
 * process by tsc.c, before the first engine runs), else CLOCK_MONOTONIC's nanoseconds. Reading
 * the TSC costs ~10 ns here, CLOCK_MONOTONIC ~22 (the vDSO): the loop's idle accounting and the
 * messages' send stamps read it. Ticks from different threads compare: an invariant TSC runs
 * at one rate on every CPU. */
#ifndef PITH_SHARD_TICKS_H
#define PITH_SHARD_TICKS_H

#include <stdint.h>

#include <pith/engine.h>

/* tsc.c: 0 when there is no usable TSC. tsc_per_ns is 1% under the measured rate (the timer
 * gate opens early, never late); tsc_rate_ns is the measured rate, for turning ticks into
 * time. */
extern double tsc_per_ns;
extern double tsc_rate_ns;

static inline uint64_t tsc_now(void)
{
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    return 0;
#endif
}

/* Now, in ticks. */
static inline uint64_t ticks_now(void)
{
    return tsc_per_ns != 0 ? tsc_now() : pith_now_ns();
}

/* A number of ticks in nanoseconds. */
static inline uint64_t ticks_ns(uint64_t ticks)
{
    return tsc_per_ns != 0 ? (uint64_t)((double)ticks / tsc_rate_ns) : ticks;
}

#endif
