/* Metrics: every counter, gauge and histogram the engine keeps (per shard; per actor type and
 * virtual type; memory, network, journal, persistence), as text an operator can scrape.
 *
 * Each figure is written by its shard alone and read here without stopping it: a reading is
 * consistent per figure, not across figures. Every sample has a `shard` label; the per-type
 * ones a `type` label (the type's name; "unnamed", or "name#2" where two types share a name).
 * Times are in seconds, sizes in bytes. Histograms (log-scale, sampled: their HELP says how)
 * give, in the text format, cumulative buckets at every power of two of nanoseconds from 128 ns
 * to 2^35 ns (a sample of exactly an edge's whole nanoseconds counts in the bucket above it),
 * `_sum` and `_count`; in JSON, the engine's own buckets (4 per power of two) as
 * [upper edge in seconds, samples] pairs, empty ones left out, with "count" and "sum".
 *
 * docs/metrics.md lists the families. */
#ifndef PITH_METRICS_H
#define PITH_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <pith/api.h>
#include <pith/net.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the metrics in the Prometheus text format (version 0.0.4) to buf[0..cap), ending
 * with a NUL, as snprintf does: returns the whole text's length (without the NUL), which may be
 * cap or more, in which case buf holds its first cap - 1 bytes: call again with more room
 * (the figures move, so allow some). cap 0 (buf may then be NULL) only measures. Any thread
 * while the engine runs; a call reads every shard's figures (and memory's from the kernel:
 * /proc/self/smaps), so it takes some milliseconds: keep it off a latency-critical shard.
 * Errors: -EINVAL buf NULL with cap > 0, -ESHUTDOWN no engine, -ENOMEM. */
PITH_API long pith_metrics_text(char *buf, size_t cap);

/* As pith_metrics_text, as JSON: {"version", "shards", "families": [{"name", "type", "help",
 * "samples": [{"labels": {...}, "value"} or, for a histogram, {"labels", "count", "sum",
 * "buckets": [[le, n], ...]}]}]} with the text format's names and labels. */
PITH_API long pith_metrics_json(char *buf, size_t cap);

/* Serves the metrics over HTTP/1.1 on host:port (numeric; NULL: every IPv4 address; port 0:
 * the kernel picks one, see pith_tcp_listener_port) from the engine's own TCP layer, on every
 * shard: GET /metrics answers the text format (Content-Type text/plain; version=0.0.4),
 * GET /metrics.json the JSON form; HEAD as GET without the body. Each shard renders each form
 * at most once per 100 ms and answers from that rendering meanwhile: figures up to 100 ms old,
 * and a client asking in a loop costs a copy per answer. Connections are kept alive
 * (HTTP/1.0: only when asked); a request is answered 400 when malformed or when it carries a
 * body, 404 for another path, 405 for another method, 431 when its head passes 8 KiB, 505 for
 * another HTTP major version, and the connection is closed after any of those. At most 64
 * connections per shard; one idle for 60 s is closed; a client that pipelines requests and does
 * not read the answers is cut off once 4 MiB of them wait for it (reading pauses only past
 * 8 MiB, so its next request is seen). *out names the listener: pith_tcp_unlisten stops it.
 * Errors: as pith_tcp_listen. */
PITH_API int pith_metrics_serve(const char *host, uint16_t port, pith_listener_t *out);

#ifdef __cplusplus
}
#endif

#endif
