/* pith_metrics_serve: a minimal HTTP/1.1 server for the metrics on the engine's own TCP layer.
 * It reads request heads (no bodies), answers GET and HEAD of /metrics and /metrics.json, and
 * answers anything else with an error status and a close. Everything a peer can make it hold is
 * bounded: an unfinished head by HEAD_MAX (the connection is answered 431 and closed), output
 * by OUT_MAX before another request is taken (a client that pipelines requests without reading
 * the answers is cut off), connections by MAX_CONNS per shard, idle ones by IDLE_NS. The CPU
 * a flood of requests can take is bounded too: each shard renders each form at most once per
 * REUSE_NS and answers from that rendering meanwhile. */
#include "obs.h"

#include <pith/engine.h>
#include <pith/metrics.h>
#include <pith/net.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEAD_MAX  8192
#define OUT_MAX   (4u << 20)
#define MAX_CONNS 64
#define IDLE_NS   (60ull * 1000 * 1000 * 1000)
/* A response is queued whole: it must fit under the connection's max_buffered with OUT_MAX
 * already waiting. Reading pauses only past HIGH_WATER, above OUT_MAX: a client that pipelines
 * without reading has its next request read (and is cut off) once OUT_MAX waits, rather than
 * sitting paused below it until the idle timeout. */
#define BUFFERED_MAX (64u << 20)
#define HIGH_WATER   (8u << 20)
#define LOW_WATER    (2u << 20)
/* A rendering costs about a millisecond with two shards (most of it the kernel's account of
 * the mappings): answers within this long of one reuse it, so that scrapers see figures at
 * most this old and a client that asks in a loop costs a copy per answer, not a rendering. */
#define REUSE_NS (100ull * 1000 * 1000)

/* The last rendering of each form on this shard: its thread's own (a key whose destructor
 * frees it as the shard's thread ends). */
struct rendered {
    struct obuf b[2];
    uint64_t at[2];
};
static pthread_key_t rendered_key;
static pthread_once_t rendered_once = PTHREAD_ONCE_INIT;

static void rendered_free(void *p)
{
    struct rendered *r = p;
    obuf_free(&r->b[0]);
    obuf_free(&r->b[1]);
    free(r);
}

static void rendered_init(void)
{
    if (pthread_key_create(&rendered_key, rendered_free) != 0)
        rendered_key = (pthread_key_t)-1;
}

/* The metrics in form f, rendered now or within REUSE_NS on this shard: owned by the shard's
 * cache, valid until its next call. NULL: no engine, or no memory (*err says). */
static const struct obuf *render(enum obs_format f, int *err)
{
    pthread_once(&rendered_once, rendered_init);
    struct rendered *r =
        rendered_key != (pthread_key_t)-1 ? pthread_getspecific(rendered_key) : NULL;
    if (r == NULL && rendered_key != (pthread_key_t)-1) {
        r = calloc(1, sizeof(*r));
        if (r != NULL && pthread_setspecific(rendered_key, r) != 0) {
            free(r);
            r = NULL;
        }
    }
    if (r == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    if (r->at[f] != 0 && pith_now_ns() - r->at[f] < REUSE_NS)
        return &r->b[f];
    struct obuf b = {0};
    *err = obs_render(&b, f);
    if (*err != 0) {
        obuf_free(&b);
        return NULL;
    }
    obuf_free(&r->b[f]);
    r->b[f] = b;
    r->at[f] = pith_now_ns(); /* from its end: however slow it was, the next request reuses it */
    return &r->b[f];
}

static void answer(pith_conn_t c, int status, const char *reason, const char *ctype,
                   const char *body, size_t len, bool head_only, bool keep)
{
    char hdr[512];
    int n = snprintf(hdr, sizeof(hdr),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                     status, reason, ctype, len, keep ? "" : "Connection: close\r\n",
                     status == 405 ? "Allow: GET, HEAD\r\n" : "");
    struct iovec iov[2] = {{hdr, (size_t)n}, {(void *)body, head_only ? 0 : len}};
    /* A failed send has closed the connection (or it is closing): nothing more to do. */
    if (pith_conn_sendv(c, iov, 2) == 0 && !keep)
        (void)pith_conn_close(c);
}

static void fail(pith_conn_t c, int status, const char *reason)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, reason);
    answer(c, status, reason, "text/plain; charset=utf-8", body, (size_t)n, false, false);
}

/* A token character (RFC 9110 tchar). */
static bool tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Does the comma-separated header value v[0..n) hold the token t (case-insensitive)? */
static bool has_token(const char *v, size_t n, const char *t)
{
    size_t tl = strlen(t), i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t e = j;
        while (e > i && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - i == tl && strncasecmp(v + i, t, tl) == 0)
            return true;
        i = j;
    }
    return false;
}

/* Handles the request head h[0..n) (without its blank line). Returns false when the connection
 * is now closing. */
static bool request(pith_conn_t c, const char *h, size_t n)
{
    /* The request line: method SP target SP HTTP/x.y */
    const char *eol = memmem(h, n, "\r\n", 2);
    size_t ll = eol != NULL ? (size_t)(eol - h) : n;
    size_t m = 0;
    while (m < ll && tchar(h[m]))
        m++;
    if (m == 0 || m >= ll || h[m] != ' ') {
        fail(c, 400, "Bad Request");
        return false;
    }
    size_t t0 = m + 1, t1 = t0;
    while (t1 < ll && h[t1] > ' ' && h[t1] < 0x7f)
        t1++;
    const char *v = h + t1 + 1;
    if (t1 == t0 || t1 >= ll || h[t1] != ' ' || ll - t1 - 1 != 8 || memcmp(v, "HTTP/", 5) != 0 ||
        v[5] < '0' || v[5] > '9' || v[6] != '.' || v[7] < '0' || v[7] > '9') {
        fail(c, 400, "Bad Request");
        return false;
    }
    if (v[5] != '1') {
        fail(c, 505, "HTTP Version Not Supported");
        return false;
    }
    bool keep = v[7] != '0'; /* HTTP/1.1 keeps the connection unless told; 1.0 closes */

    /* Header fields, one per CRLF-ended line: name ":" value, no line folding (a line that
     * begins with a space has no name); a bare CR or LF is a control character in the value. A
     * body is refused. */
    size_t p = ll;
    while (p < n) {
        p += 2; /* the CRLF that ended the line before */
        const char *line = h + p;
        const char *end = memmem(line, n - p, "\r\n", 2);
        size_t len = end != NULL ? (size_t)(end - line) : n - p;
        size_t k = 0;
        while (k < len && tchar(line[k]))
            k++;
        if (k == 0 || k >= len || line[k] != ':') {
            fail(c, 400, "Bad Request");
            return false;
        }
        const char *val = line + k + 1;
        size_t vl = len - k - 1;
        for (size_t i = 0; i < vl; i++)
            if ((unsigned char)val[i] < 0x20 && val[i] != '\t') {
                fail(c, 400, "Bad Request");
                return false;
            }
        while (vl > 0 && (*val == ' ' || *val == '\t')) {
            val++;
            vl--;
        }
        while (vl > 0 && (val[vl - 1] == ' ' || val[vl - 1] == '\t'))
            vl--;
        if (k == 14 && strncasecmp(line, "content-length", 14) == 0) {
            if (vl != 1 || val[0] != '0') {
                fail(c, 400, "Bad Request");
                return false;
            }
        } else if (k == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
            fail(c, 400, "Bad Request");
            return false;
        } else if (k == 10 && strncasecmp(line, "connection", 10) == 0) {
            if (has_token(val, vl, "close"))
                keep = false;
            else if (has_token(val, vl, "keep-alive"))
                keep = true;
        }
        p += len;
    }

    bool get = m == 3 && memcmp(h, "GET", 3) == 0;
    bool head = m == 4 && memcmp(h, "HEAD", 4) == 0;
    size_t pl = 0; /* the path, without a query */
    while (t0 + pl < t1 && h[t0 + pl] != '?')
        pl++;
    enum obs_format f;
    if (pl == 8 && memcmp(h + t0, "/metrics", 8) == 0)
        f = OBS_PROMETHEUS;
    else if (pl == 13 && memcmp(h + t0, "/metrics.json", 13) == 0)
        f = OBS_JSON;
    else {
        fail(c, 404, "Not Found");
        return false;
    }
    if (!get && !head) {
        fail(c, 405, "Method Not Allowed");
        return false;
    }
    int err;
    const struct obuf *b = render(f, &err);
    if (b == NULL) {
        fail(c, 503, "Service Unavailable");
        return false;
    }
    answer(c, 200, "OK",
           f == OBS_PROMETHEUS ? "text/plain; version=0.0.4; charset=utf-8" : "application/json",
           b->p, b->len, head, keep);
    return keep;
}

static size_t on_data(pith_conn_t c, void *cctx, const void *data, size_t len)
{
    (void)cctx;
    const char *d = data;
    size_t pos = 0;
    while (pos < len) {
        const char *end = memmem(d + pos, len - pos, "\r\n\r\n", 4);
        if (end == NULL) {
            if (len - pos > HEAD_MAX) {
                fail(c, 431, "Request Header Fields Too Large");
                return len;
            }
            return pos; /* the rest of the head comes later */
        }
        size_t hl = (size_t)(end - (d + pos));
        if (hl + 4 > HEAD_MAX) {
            fail(c, 431, "Request Header Fields Too Large");
            return len;
        }
        /* A client that sends requests without reading the answers gets no more of them. */
        pith_conn_info_t info;
        if (pith_conn_info(c, &info) != 0 || info.unsent > OUT_MAX) {
            (void)pith_conn_abort(c);
            return len;
        }
        if (!request(c, d + pos, hl))
            return len; /* closing: what follows is not read */
        pos += hl + 4;
    }
    return pos;
}

static const pith_tcp_handler_t handler = {.on_data = on_data};

int pith_metrics_serve(const char *host, uint16_t port, pith_listener_t *out)
{
    pith_listen_config_t cfg = {
        .host = host,
        .port = port,
        .max_conns = MAX_CONNS,
        .conn = {.handler = &handler,
                 .idle_timeout_ns = IDLE_NS,
                 .max_buffered = BUFFERED_MAX,
                 .high_watermark = HIGH_WATER,
                 .low_watermark = LOW_WATER},
    };
    return pith_tcp_listen(&cfg, out);
}
