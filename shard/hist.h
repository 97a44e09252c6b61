/* Log-scale latency histograms, as every layer keeps them: bucket b covers [lo(b), lo(b + 1))
 * ns, 4 buckets per power of two (so a bucket's upper edge is within 19% of its samples), one
 * relaxed counter per bucket written by one shard and read by any thread. */
#ifndef PITH_SHARD_HIST_H
#define PITH_SHARD_HIST_H

#include <stdint.h>

#define HIST_BUCKETS 256

static inline unsigned hist_bucket(uint64_t ns)
{
    if (ns < 4)
        return (unsigned)ns;
    unsigned e = 63u - (unsigned)__builtin_clzll(ns); /* ns in [2^e, 2^(e+1)) */
    unsigned b = e * 4 + (unsigned)((ns >> (e - 2)) & 3);
    return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

/* The smallest value of the next bucket: the upper edge of b. */
static inline uint64_t hist_upper(unsigned b)
{
    if (b < 8)
        return b < 4 ? b + 1 : 4; /* 0..3 hold one value each; 4..7 are never used */
    if (b >= HIST_BUCKETS - 1)
        return UINT64_MAX;
    b++;
    unsigned e = b / 4;
    return (UINT64_C(1) << e) + ((uint64_t)(b & 3) << (e - 2));
}

/* The upper edge of the bucket of h that holds the q-quantile (q in thousandths) of its total
 * samples; 0 without samples. */
static inline uint64_t hist_quantile(const uint64_t *h, uint64_t total, unsigned q)
{
    uint64_t want = (total * q + 999) / 1000, seen = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        seen += h[b];
        if (seen >= want && want > 0)
            return hist_upper(b);
    }
    return 0;
}

#endif
