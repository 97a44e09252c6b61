/* Sample percentiles and the output of result rows (text table, JSON). No engine code here. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "report.h"

int samples_init(samples_t *s, size_t cap)
{
    s->n = 0;
    s->cap = cap;
    s->v = calloc(cap ? cap : 1, sizeof(*s->v));
    return s->v ? 0 : -ENOMEM;
}

void samples_free(samples_t *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void samples_sort(samples_t *s)
{
    size_t n = s->n < s->cap ? s->n : s->cap;
    qsort(s->v, n, sizeof(*s->v), cmp_i64);
}

bool samples_pct(const samples_t *s, double q, double *out)
{
    size_t n = s->n < s->cap ? s->n : s->cap;
    /* 1 / (1 - q) rounded, so that 0.999 asks for 1000 samples despite binary rounding. */
    size_t need = (size_t)llround(1.0 / (1.0 - q));
    if (n == 0 || n < need)
        return false;
    /* Nearest rank: the smallest sample with at least q of all samples at or below it. */
    size_t rank = (size_t)ceil(q * (double)n);
    if (rank < 1)
        rank = 1;
    *out = (double)s->v[rank - 1];
    return true;
}

void result_set_pcts(result_t *r, const samples_t *s)
{
    r->p50 = r->p99 = r->p999 = NAN;
    samples_pct(s, 0.50, &r->p50);
    samples_pct(s, 0.99, &r->p99);
    samples_pct(s, 0.999, &r->p999);
    r->samples = s->n < s->cap ? s->n : s->cap;
}

void result_set_hist(result_t *r, const samples_t *s, unsigned per)
{
    hist_t *h = &r->hist;
    memset(h, 0, sizeof(*h));
    h->present = true;
    h->per = per ? per : 1;
    size_t n = s->n < s->cap ? s->n : s->cap;
    for (size_t i = 0; i < n; i++) {
        int64_t v = s->v[i];
        if (v < 0) {
            h->below++;
            continue;
        }
        uint64_t x = ((uint64_t)v + h->per / 2) / h->per;
        h->count[hist_bucket(x)]++;
    }
    h->total = n;
}

/* The unit is the name's last word ("ns", "mps", "faults"); a "bytes_per_X" row is in bytes, an
 * "X_per_s" row in X a second. */
const char *result_unit(const char *name)
{
    if (strstr(name, "bytes_per_") != NULL)
        return "bytes";
    if (strstr(name, "_us_per_") != NULL)
        return "us";
    if (strstr(name, "_per_s") != NULL)
        return "/s";
    const char *u = strrchr(name, '_');
    return u ? u + 1 : "";
}

bool result_higher_better(const char *name)
{
    const char *u = result_unit(name);
    return strcmp(u, "mps") == 0 || strcmp(u, "rps") == 0 || strcmp(u, "kops") == 0 ||
           strcmp(u, "gbps") == 0 || strcmp(u, "/s") == 0;
}

/* Enough digits to read, few enough to line up: integers for large figures (nanoseconds),
 * decimals for small ones (ratios, percentages, millions per second). */
static void fmt_num(char *buf, size_t len, double x)
{
    if (isnan(x))
        snprintf(buf, len, "-");
    else if (fabs(x) >= 100.0)
        snprintf(buf, len, "%.0f", x);
    else if (fabs(x) >= 1.0)
        snprintf(buf, len, "%.2f", x);
    else
        snprintf(buf, len, "%.3f", x);
}

void report_table(FILE *f, const result_t *rows, size_t nrows)
{
    size_t wname = strlen("name");
    for (size_t i = 0; i < nrows; i++) {
        size_t l = strlen(rows[i].name);
        if (l > wname)
            wname = l;
    }
    size_t wbase = strlen("baseline");
    for (size_t i = 0; i < nrows; i++) {
        size_t l = rows[i].baseline ? strlen(rows[i].baseline) : 1;
        if (l > wbase)
            wbase = l;
    }

    fprintf(f, "%-*s %12s %-5s %12s %12s %12s %9s  %-*s %8s %7s %4s  %s\n", (int)wname, "name",
            "value", "unit", "p50", "p99", "p999", "n", (int)wbase, "baseline", "ratio", "mad",
            "reps", "flags");
    for (size_t i = 0; i < nrows; i++) {
        const result_t *r = &rows[i];
        char v[32], p50[32], p99[32], p999[32], n[32], ratio[32];
        fmt_num(v, sizeof(v), r->value);
        fmt_num(p50, sizeof(p50), r->p50);
        fmt_num(p99, sizeof(p99), r->p99);
        fmt_num(p999, sizeof(p999), r->p999);
        if (r->samples)
            snprintf(n, sizeof(n), "%zu", r->samples);
        else
            snprintf(n, sizeof(n), "-");
        if (isnan(r->ratio))
            snprintf(ratio, sizeof(ratio), "-");
        else
            snprintf(ratio, sizeof(ratio), "%.2fx", r->ratio);
        char mad[32], flags[64] = "";
        if (r->reps > 1 && r->value != 0)
            snprintf(mad, sizeof(mad), "%.1f%%", 100.0 * r->mad / fabs(r->value));
        else
            snprintf(mad, sizeof(mad), "-");
        if (r->noisy)
            strcat(flags, "noisy ");
        if (r->busy)
            snprintf(flags + strlen(flags), sizeof(flags) - strlen(flags), "busy(%.0f%%)",
                     r->others_pct);
        fprintf(f, "%-*s %12s %-5s %12s %12s %12s %9s  %-*s %8s %7s %4u  %s\n", (int)wname, r->name,
                v, result_unit(r->name), p50, p99, p999, n, (int)wbase,
                r->baseline ? r->baseline : "-", ratio, mad, r->reps, flags);
    }
}

#define HIST_BAR 50 /* '#'s of the fullest bucket */

static void hist_line(FILE *f, const char *from, const char *to, uint64_t c, uint64_t seen,
                      uint64_t total, uint64_t max)
{
    char bar[HIST_BAR + 1];
    size_t w = max ? (size_t)llround((double)HIST_BAR * (double)c / (double)max) : 0;
    memset(bar, '#', w);
    if (w == 0 && c > 0)
        bar[w++] = '.';
    bar[w] = '\0';
    fprintf(f, "%12s %12s %10" PRIu64 " %8.3f%%  %s\n", from, to, c,
            total ? 100.0 * (double)seen / (double)total : 0.0, bar);
}

void report_hist_text(FILE *f, const result_t *r)
{
    const hist_t *h = &r->hist;
    const char *unit = result_unit(r->name);
    char p50[32], p99[32], p999[32];
    fmt_num(p50, sizeof(p50), r->p50);
    fmt_num(p99, sizeof(p99), r->p99);
    fmt_num(p999, sizeof(p999), r->p999);
    fprintf(f, "%s: %" PRIu64 " samples in %s, p50 %s, p99 %s, p999 %s", r->name, h->total, unit,
            p50, p99, p999);
    if (h->per > 1)
        fprintf(f, "; a sample is the mean of %u operations", h->per);
    if (r->reps > 1)
        fprintf(f, "; the repetition nearest the median of %u", r->reps);
    fprintf(f, "\n(log buckets, 4 per power of two: [from, to) %s)\n", unit);
    fprintf(f, "%12s %12s %10s %9s\n", "from", "to", "count", "cum%");
    uint64_t max = h->below;
    for (unsigned b = 0; b < HIST_BUCKETS; b++)
        if (h->count[b] > max)
            max = h->count[b];
    uint64_t seen = h->below;
    if (h->below > 0)
        hist_line(f, "-inf", "0", h->below, seen, h->total, max);
    unsigned first, last;
    if (!hist_span(h, &first, &last))
        return;
    for (unsigned b = first; b <= last; b++) {
        /* A run of empty buckets is one line: a long tail stays readable. */
        unsigned e = b;
        while (h->count[e] == 0 && e + 1 <= last && h->count[e + 1] == 0)
            e++;
        char from[24], to[24];
        snprintf(from, sizeof(from), "%" PRIu64, hist_lower(b));
        if (hist_upper(e) == UINT64_MAX)
            snprintf(to, sizeof(to), "inf");
        else
            snprintf(to, sizeof(to), "%" PRIu64, hist_upper(e));
        seen += h->count[b];
        hist_line(f, from, to, h->count[b], seen, h->total, max);
        b = e;
    }
}

void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

void json_number(FILE *f, double x)
{
    if (isnan(x) || isinf(x))
        fputs("null", f);
    else
        fprintf(f, "%.10g", x);
}

/* ,"hist":{...}: the buckets with samples, each [lower, upper, count] (upper null for the last
 * bucket, which ends at 2^64). */
static void json_hist(FILE *f, const hist_t *h)
{
    fprintf(f,
            ",\"hist\":{\"per_sample\":%u,\"total\":%" PRIu64 ",\"below_zero\":%" PRIu64
            ",\"buckets\":[",
            h->per, h->total, h->below);
    bool any = false;
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        if (h->count[b] == 0)
            continue;
        fprintf(f, "%s[%" PRIu64 ",", any ? "," : "", hist_lower(b));
        if (hist_upper(b) == UINT64_MAX)
            fputs("null", f);
        else
            fprintf(f, "%" PRIu64, hist_upper(b));
        fprintf(f, ",%" PRIu64 "]", h->count[b]);
        any = true;
    }
    fputs("]}", f);
}

void report_json_results(FILE *f, const result_t *rows, size_t nrows, const skipped_t *skips,
                         size_t nskips)
{
    fputs("\"results\":[", f);
    for (size_t i = 0; i < nrows; i++) {
        const result_t *r = &rows[i];
        fputs(i ? ",{\"name\":" : "{\"name\":", f);
        json_string(f, r->name);
        fputs(",\"value\":", f);
        json_number(f, r->value);
        fputs(",\"unit\":", f);
        json_string(f, result_unit(r->name));
        fputs(",\"p50\":", f);
        json_number(f, r->p50);
        fputs(",\"p99\":", f);
        json_number(f, r->p99);
        fputs(",\"p999\":", f);
        json_number(f, r->p999);
        fprintf(f, ",\"samples\":%zu,\"baseline\":", r->samples);
        if (r->baseline)
            json_string(f, r->baseline);
        else
            fputs("null", f);
        fputs(",\"ratio\":", f);
        json_number(f, r->ratio);
        fprintf(f, ",\"higher_is_better\":%s,\"reps\":%u,\"median\":",
                result_higher_better(r->name) ? "true" : "false", r->reps);
        json_number(f, r->value);
        fputs(",\"mad\":", f);
        json_number(f, r->mad);
        fputs(",\"min\":", f);
        json_number(f, r->min);
        fputs(",\"max\":", f);
        json_number(f, r->max);
        fprintf(f, ",\"noisy\":%s,\"others_cpu_pct\":", r->noisy ? "true" : "false");
        json_number(f, r->others_pct);
        fprintf(f, ",\"busy\":%s,\"values\":[", r->busy ? "true" : "false");
        for (unsigned k = 0; k < r->reps && k < 16; k++) {
            if (k)
                fputc(',', f);
            json_number(f, r->values[k]);
        }
        fputc(']', f);
        if (r->hist.present)
            json_hist(f, &r->hist);
        fputc('}', f);
    }
    fputs("],\"skipped\":[", f);
    for (size_t i = 0; i < nskips; i++) {
        fputs(i ? ",{\"name\":" : "{\"name\":", f);
        json_string(f, skips[i].name);
        fprintf(f, ",\"failed\":%s,\"reason\":", skips[i].failed ? "true" : "false");
        json_string(f, skips[i].reason);
        fputc('}', f);
    }
    fputc(']', f);
}
