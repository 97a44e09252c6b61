/* The market example's latency histograms: log buckets, 4 per power of two of nanoseconds (the
 * layout of pith-bench's, so its plotting draws them), one writer each (a shard, or the feed
 * thread), merged once the writers are done. Recording is a few instructions and no atomics. */
#ifndef MARKET_LAT_H
#define MARKET_LAT_H

#include <stdint.h>
#include <stdio.h>

#define LAT_BUCKETS 256

struct lat {
    uint64_t count;
    uint64_t sum;
    uint64_t max;
    uint64_t bucket[LAT_BUCKETS];
};

/* Bucket b holds [lat_lower(b), lat_upper(b)): 0..3 one value each, 4..7 unused, then each power
 * of two [2^e, 2^(e+1)) in four equal parts. */
static inline unsigned lat_bucket(uint64_t v)
{
    if (v < 4)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    return e * 4 + (unsigned)((v >> (e - 2)) & 3);
}

static inline void lat_add(struct lat *h, uint64_t ns)
{
    h->count++;
    h->sum += ns;
    if (ns > h->max)
        h->max = ns;
    h->bucket[lat_bucket(ns)]++;
}

uint64_t lat_lower(unsigned b);
/* The upper edge of bucket b, exclusive. */
uint64_t lat_upper(unsigned b);

/* Adds src's samples to dst. */
void lat_merge(struct lat *dst, const struct lat *src);

/* The q-quantile (0 < q <= 1) as the upper edge of its bucket, capped at the largest sample
 * seen (so within 25% above the true value); 0 without samples. */
uint64_t lat_quantile(const struct lat *h, double q);

/* One line: "NAME n=.. p50=.. p99=.. p99.9=.. p99.99=.. max=.." with times in microseconds. */
void lat_print(FILE *f, const char *name, const struct lat *h);

/* h as a JSON object: {"count", "sum_ns", "max_ns", "p50_ns", ..., "buckets": [[upper edge
 * ns, samples], ...]} with empty buckets left out. */
void lat_json(FILE *f, const struct lat *h);

#endif
