/* The market example's latency histograms: merging, quantiles and printing (lat.h). */
#include "lat.h"

#include <inttypes.h>

uint64_t lat_lower(unsigned b)
{
    if (b < 8)
        return b < 4 ? b : 4;
    unsigned e = b / 4;
    return (UINT64_C(1) << e) + ((uint64_t)(b & 3) << (e - 2));
}

uint64_t lat_upper(unsigned b)
{
    if (b < 4)
        return b + 1;
    if (b < 8)
        return 4;
    return b + 1 < LAT_BUCKETS ? lat_lower(b + 1) : UINT64_MAX;
}

void lat_merge(struct lat *dst, const struct lat *src)
{
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->max > dst->max)
        dst->max = src->max;
    for (unsigned b = 0; b < LAT_BUCKETS; b++)
        dst->bucket[b] += src->bucket[b];
}

uint64_t lat_quantile(const struct lat *h, double q)
{
    if (h->count == 0)
        return 0;
    /* The rank of the q-quantile among count samples, from 1: ceil(q * count). */
    double want = q * (double)h->count;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < LAT_BUCKETS; b++) {
        seen += h->bucket[b];
        if (seen >= rank) {
            uint64_t up = lat_upper(b);
            return up > h->max ? h->max : up;
        }
    }
    return h->max;
}

static void us(FILE *f, const char *label, uint64_t ns)
{
    fprintf(f, " %s=%.2f", label, (double)ns / 1000.0);
}

void lat_print(FILE *f, const char *name, const struct lat *h)
{
    fprintf(f, "%-16s n=%-9" PRIu64, name, h->count);
    if (h->count > 0) {
        us(f, "p50", lat_quantile(h, 0.5));
        us(f, "p99", lat_quantile(h, 0.99));
        us(f, "p99.9", lat_quantile(h, 0.999));
        us(f, "p99.99", lat_quantile(h, 0.9999));
        us(f, "max", h->max);
        fprintf(f, " us");
    }
    fputc('\n', f);
}

void lat_json(FILE *f, const struct lat *h)
{
    fprintf(f,
            "{\"count\": %" PRIu64 ", \"sum_ns\": %" PRIu64 ", \"max_ns\": %" PRIu64
            ", \"p50_ns\": %" PRIu64 ", \"p99_ns\": %" PRIu64 ", \"p999_ns\": %" PRIu64
            ", \"p9999_ns\": %" PRIu64 ", \"buckets\": [",
            h->count, h->sum, h->max, lat_quantile(h, 0.5), lat_quantile(h, 0.99),
            lat_quantile(h, 0.999), lat_quantile(h, 0.9999));
    const char *sep = "";
    for (unsigned b = 0; b < LAT_BUCKETS; b++) {
        if (h->bucket[b] == 0)
            continue;
        fprintf(f, "%s[%" PRIu64 ", %" PRIu64 "]", sep, lat_upper(b), h->bucket[b]);
        sep = ", ";
    }
    fprintf(f, "]}");
}
