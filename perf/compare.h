/* pith-bench --compare (compare.c): a saved run beside this one, or two saved runs. */
#ifndef PITH_PERF_COMPARE_H
#define PITH_PERF_COMPARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "report.h"

/* Prints base_path's rows beside rows[0..n) of this run (cpu_model and quick: this run's, to
 * warn when they differ). Returns 0, or -errno with why[] filled (the file unreadable or not a
 * pith-bench --json run). */
int compare_with_results(FILE *out, const char *base_path, const result_t *rows, size_t n,
                         const char *cpu_model, bool quick, char *why, size_t whylen);

/* As compare_with_results, for two saved runs. */
int compare_files(FILE *out, const char *base_path, const char *new_path, char *why, size_t whylen);

/* The verdict on a row that went from base to now: "better", "worse" or "same", with the noise
 * it allowed (noise: the fraction both sides' spreads allow; NAN when unknown, then 10% and a
 * question mark). */
const char *compare_verdict(double base, double now, bool higher, double noise, char *buf,
                            size_t len);

#endif
