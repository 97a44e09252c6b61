/* pith-bench's results: sample arrays with nearest-rank percentiles, the result rows, and their
 * text table and JSON output. Knows nothing about the engine or the machine. */
#ifndef PITH_PERF_REPORT_H
#define PITH_PERF_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hist.h"

/* Samples of one row, preallocated so that recording never allocates on a measured path. */
typedef struct samples {
    int64_t *v;
    size_t n;
    size_t cap;
} samples_t;

/* Allocates room for cap samples. Returns 0 or -ENOMEM. */
int samples_init(samples_t *s, size_t cap);
void samples_free(samples_t *s);

/* Records one sample; samples past the capacity are counted in n but not stored, so a caller's
 * miscount cannot corrupt memory. Percentiles use the stored ones. */
static inline void samples_add(samples_t *s, int64_t x)
{
    if (s->n < s->cap)
        s->v[s->n] = x;
    s->n++;
}

/* Sorts the samples; call once after recording, before samples_pct(). */
void samples_sort(samples_t *s);

/* Nearest-rank percentile q (0 < q < 1) of sorted samples. A percentile is reported only when
 * there are enough samples for it to be more than the maximum: at least 1 / (1 - q), i.e. 100
 * for p99 and 1000 for p999. Returns false (and leaves *out) otherwise. */
bool samples_pct(const samples_t *s, double q, double *out);

/* One row of the output. p50/p99/p999 hold NAN where they do not apply. */
typedef struct result {
    const char *name;      /* "layer.figure_unit"; the unit is what follows the last '_' */
    const char *baseline;  /* name of the row this one is compared with, or NULL */
    double value;          /* with repetitions: the median of theirs */
    double p50, p99, p999; /* of the repetition whose value is the median */
    size_t samples;        /* samples behind the percentiles, 0 when the value is a single figure */
    double ratio;          /* value / baseline's value, NAN when there is none */
    /* Over the repetitions (reps of them; 1: mad 0, min = max = value): the median absolute
     * deviation, the extremes, and noisy when the MAD passes 5% of the median. */
    unsigned reps;
    double mad, min, max;
    bool noisy;
    /* The share of the machine's CPU time that other processes (and a hypervisor's steal)
     * took while the row ran, the largest over its repetitions; busy past 10%. NAN unknown. */
    double others_pct;
    bool busy;
    double values[16]; /* each repetition's value, in run order (the first 16) */
    /* The distribution of the samples behind the percentiles (the same repetition's), where the
     * row attached one (result_set_hist); hist.present is false otherwise. */
    hist_t hist;
} result_t;

/* Is a higher value better for this row (rates: mps, rps, kops, gbps, per_s)? Else lower is. */
bool result_higher_better(const char *name);

/* Fills r's percentiles and sample count from sorted samples. */
void result_set_pcts(result_t *r, const samples_t *s);

/* Attaches the distribution of sorted samples s to r. per: operations each sample timed; a
 * sample is divided by it (rounded to nearest), as the row divides its percentiles. For rows
 * whose samples are per operation (per = 1) or means of a few (per > 1, said in the output). */
void result_set_hist(result_t *r, const samples_t *s, unsigned per);

/* The unit of a row: the suffix of its name after the last '_'. */
const char *result_unit(const char *name);

/* A row that was selected but has no figure: it could not run here (skipped) or tried and
 * failed, and why. */
typedef struct skipped {
    const char *name;
    bool failed;
    char reason[200];
} skipped_t;

void report_table(FILE *f, const result_t *rows, size_t nrows);
/* r's histogram as text: a head (samples, unit, percentiles, which repetition), then one line
 * per bucket from the first with samples to the last (a run of empty ones as one line): edges
 * [from, to), count, cumulative %, a bar of '#' scaled to the fullest bucket ('.' for a count too
 * small for one '#'); samples below 0 on a line of their own first. r->hist must be present. */
void report_hist_text(FILE *f, const result_t *r);
void report_json_results(FILE *f, const result_t *rows, size_t nrows, const skipped_t *skips,
                         size_t nskips);

/* JSON helpers shared with the machine facts. */
void json_string(FILE *f, const char *s);
void json_number(FILE *f, double x); /* null when x is NAN or infinite */

#endif
