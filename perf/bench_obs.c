/* What reading the metrics costs: the kernel's account of the mappings that every reading
 * includes (the baseline), pith_metrics_text from a thread outside the engine, and a GET of
 * /metrics over loopback from pith_metrics_serve, which renders at most once per 100 ms per
 * shard and answers from that rendering meanwhile. Each sample is one call or one request. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pith/metrics.h>

#include "bench.h"

/* Room for a rendering: it is some hundreds of KiB with a few types. */
#define TEXT_CAP (8u << 20)

static int start(const bench_env_t *env, char *why, size_t whylen)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = (int)env->shards;
    return bench_engine_start(&cfg, why, whylen);
}

static int finish(result_t *r, samples_t *s, int err, char *why, size_t whylen, const char *what)
{
    if (err == 0 && s->n == 0)
        err = -EIO;
    if (err != 0) {
        snprintf(why, whylen, "%s: %s", what, pith_strerror(err));
        samples_free(s);
        return BENCH_FAIL;
    }
    samples_sort(s);
    result_set_pcts(r, s);
    result_set_hist(r, s, 1);
    r->value = r->p50;
    samples_free(s);
    return 0;
}

/* /proc/self/smaps read whole, as pith_mem_stats reads it once per shard for a reading. */
int bench_raw_smaps_read(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    if (start(env, why, whylen) != 0)
        return BENCH_FAIL;
    samples_t s = {0};
    int err = samples_init(&s, n) == 0 ? 0 : -ENOMEM;
    static char buf[1 << 16];
    size_t bytes = 0;
    for (uint64_t i = 0; i < n && err == 0; i++) {
        uint64_t t0 = bench_clock_ns();
        int fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            err = -errno;
            break;
        }
        ssize_t k;
        bytes = 0;
        while ((k = read(fd, buf, sizeof(buf))) > 0)
            bytes += (size_t)k;
        close(fd);
        samples_add(&s, (int64_t)(bench_clock_ns() - t0));
    }
    bench_engine_stop(r->name);
    bench_note("%s: %zu bytes of /proc/self/smaps with %u shards running", r->name, bytes,
               env->shards);
    return finish(r, &s, err, why, whylen, "smaps");
}

int bench_obs_metrics_text(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                           size_t whylen)
{
    char *text = malloc(TEXT_CAP);
    if (text == NULL) {
        snprintf(why, whylen, "no memory for the text");
        return BENCH_FAIL;
    }
    if (start(env, why, whylen) != 0) {
        free(text);
        return BENCH_FAIL;
    }
    samples_t s = {0};
    int err = samples_init(&s, n) == 0 ? 0 : -ENOMEM;
    long len = 0;
    for (uint64_t i = 0; i < n && err == 0; i++) {
        uint64_t t0 = bench_clock_ns();
        len = pith_metrics_text(text, TEXT_CAP);
        samples_add(&s, (int64_t)(bench_clock_ns() - t0));
        if (len < 0)
            err = (int)len;
        else if ((size_t)len >= TEXT_CAP)
            err = -ENOSPC;
    }
    bench_engine_stop(r->name);
    free(text);
    bench_note("%s: %ld bytes of text with %u shards, from a thread outside the engine", r->name,
               len, env->shards);
    return finish(r, &s, err, why, whylen, "pith_metrics_text");
}

/* One keep-alive request and its whole answer (by Content-Length). */
static int get_once(int fd, char *buf, size_t cap, size_t *body)
{
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n";
    if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof(req) - 1))
        return -EIO;
    size_t have = 0, want = 0, head = 0;
    for (;;) {
        ssize_t k = recv(fd, buf + have, cap - 1 - have, 0);
        if (k <= 0)
            return -EIO;
        have += (size_t)k;
        buf[have] = '\0';
        if (head == 0) {
            char *end = strstr(buf, "\r\n\r\n");
            char *cl = strstr(buf, "Content-Length: ");
            if (end == NULL || cl == NULL)
                continue;
            head = (size_t)(end - buf) + 4;
            want = head + strtoull(cl + 16, NULL, 10);
            if (want >= cap)
                return -ENOSPC;
        }
        if (have >= want) {
            *body = want - head;
            return have == want ? 0 : -EPROTO;
        }
    }
}

int bench_obs_metrics_get(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    char *buf = malloc(TEXT_CAP);
    if (buf == NULL) {
        snprintf(why, whylen, "no memory for the answers");
        return BENCH_FAIL;
    }
    if (start(env, why, whylen) != 0) {
        free(buf);
        return BENCH_FAIL;
    }
    pith_listener_t l;
    int err = pith_metrics_serve("127.0.0.1", 0, &l);
    int fd = -1;
    if (err == 0) {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)pith_tcp_listener_port(l))};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        int one = 1;
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
            err = -errno;
        else
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    samples_t s = {0};
    if (err == 0 && samples_init(&s, n) != 0)
        err = -ENOMEM;
    size_t body = 0;
    uint64_t t_all = bench_clock_ns();
    for (uint64_t i = 0; i < n && err == 0; i++) {
        uint64_t t0 = bench_clock_ns();
        err = get_once(fd, buf, TEXT_CAP, &body);
        samples_add(&s, (int64_t)(bench_clock_ns() - t0));
    }
    t_all = bench_clock_ns() - t_all;
    if (fd >= 0)
        close(fd);
    (void)pith_tcp_unlisten(l);
    bench_engine_stop(r->name);
    free(buf);
    bench_note("%s: %llu requests on one keep-alive connection over %.2f s, %zu-byte answers; "
               "the shard renders at most once per 100 ms (%.0f renderings at most), so most "
               "answers are copies of the last rendering",
               r->name, (unsigned long long)n, (double)t_all / 1e9, body, (double)t_all / 1e8 + 1);
    return finish(r, &s, err, why, whylen, "GET /metrics");
}
