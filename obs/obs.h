/* obs/: the metrics registry (metrics.c) and the HTTP endpoint that serves it (http.c). It
 * sits above every other layer and reads them through their stats calls (and core/metrics.h
 * for the histograms). */
#ifndef PITH_OBS_H
#define PITH_OBS_H

#include <stdbool.h>
#include <stddef.h>

/* A growing text buffer (malloc). After an allocation fails, `failed` is set and nothing more
 * is added. */
struct obuf {
    char *p;
    size_t len, cap;
    bool failed;
};
void obuf_put(struct obuf *b, const char *s, size_t n);
void obuf_puts(struct obuf *b, const char *s);
__attribute__((format(printf, 2, 3))) void obuf_printf(struct obuf *b, const char *fmt, ...);
void obuf_free(struct obuf *b);

enum obs_format { OBS_PROMETHEUS, OBS_JSON };

/* Appends every metric the engine keeps to b, in format f. Any thread while the engine runs.
 * Returns 0, -ENOMEM (b->failed), -ESHUTDOWN no engine. */
int obs_render(struct obuf *b, enum obs_format f);

#endif
