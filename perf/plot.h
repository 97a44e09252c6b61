/* pith-bench --plot: a row's histogram (report.h, hist.h) drawn as an SVG written by hand, so
 * that a plot needs nothing but the binary. Knows nothing about the engine or the machine. */
#ifndef PITH_PERF_PLOT_H
#define PITH_PERF_PLOT_H

#include <stddef.h>
#include <stdio.h>

#include "report.h"

/* Writes r's histogram to f as one SVG document: a bar per log bucket on a log x axis in the
 * row's unit, a linear count axis, the row's name and sample count as title, p50/p99/p999 as
 * marked lines, and the ncaption lines of caption (the machine, the build, the date) under the
 * axes. Text is escaped for XML. r->hist must be present. Returns 0, or -EIO when a write
 * failed. */
int plot_svg(FILE *f, const result_t *r, const char *const *caption, size_t ncaption);

#endif
