/* A row's latency distribution: log buckets, 4 per power of two, the layout of the engine's
 * shard/hist.h (kept apart: perf/ builds only on include/pith/). Filled after a row from its
 * sorted samples, never on a measured path. No engine code here. */
#ifndef PITH_PERF_HIST_H
#define PITH_PERF_HIST_H

#include <stdbool.h>
#include <stdint.h>

#define HIST_BUCKETS 256 /* the last one ends at 2^64: every value has a bucket */

/* Bucket b covers [hist_lower(b), hist_upper(b)): 0..3 hold one value each, 4..7 are never
 * used, and from 8 on each power of two [2^e, 2^(e+1)) is cut in four equal parts, so a
 * bucket's upper edge is within 25% of its samples. */
typedef struct hist {
    bool present;   /* the row attached one */
    unsigned per;   /* operations per sample: a sample timed `per` of them and was divided by it */
    uint64_t total; /* samples, those below 0 included */
    uint64_t below; /* samples below 0 (a timer that fired before its deadline) */
    uint64_t count[HIST_BUCKETS];
} hist_t;

static inline unsigned hist_bucket(uint64_t v)
{
    if (v < 4)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* v in [2^e, 2^(e+1)) */
    return e * 4 + (unsigned)((v >> (e - 2)) & 3);
}

static inline uint64_t hist_lower(unsigned b)
{
    if (b < 8)
        return b < 4 ? b : 4;
    unsigned e = b / 4;
    return (UINT64_C(1) << e) + ((uint64_t)(b & 3) << (e - 2));
}

/* The upper edge of b, exclusive; UINT64_MAX for the last bucket (its edge, 2^64, has no
 * uint64_t). */
static inline uint64_t hist_upper(unsigned b)
{
    if (b < 4)
        return b + 1;
    if (b < 8)
        return 4;
    return b + 1 < HIST_BUCKETS ? hist_lower(b + 1) : UINT64_MAX;
}

/* The first and last buckets with samples; false when there are none (at or above 0). */
static inline bool hist_span(const hist_t *h, unsigned *first, unsigned *last)
{
    unsigned f = HIST_BUCKETS, l = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        if (h->count[b] == 0)
            continue;
        if (f == HIST_BUCKETS)
            f = b;
        l = b;
    }
    *first = f;
    *last = l;
    return f < HIST_BUCKETS;
}

#endif
