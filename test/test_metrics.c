/* Metrics (pith/metrics.h): the Prometheus text checked line by line here and by Debian's
 * promtool, the JSON form parsed by python3, the counts against what the test did, histogram
 * buckets cumulative and equal to _count, snprintf-style lengths, the HTTP endpoint (keep-alive,
 * HEAD, every error status, a head too long, many connections at once), and the shards'
 * utilisation counters (busy while a task spins, idle while nothing runs, never going back). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define MSGS 1000

/* ---- an actor type to count ---- */

static int count_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)msg;
    ++*(uint64_t *)state;
    return 0;
}

static const pith_actor_type_t counted = {
    .name = "metrics \"quoted\"\\type",
    .behaviour = count_behaviour,
    .state_size = sizeof(uint64_t),
};

/* On a shard: spawns one `counted` actor and sends it MSGS messages. */
static void *spawn_and_send(void *arg)
{
    (void)arg;
    pith_ref_t r;
    int rc = pith_spawn(&counted, NULL, &r);
    for (int i = 0; i < MSGS && rc == 0; i++) {
        rc = pith_send(r, 1, &i, sizeof(i));
        if (rc == -EAGAIN)
            return (void *)(intptr_t)rc;
    }
    return (void *)(intptr_t)rc;
}

/* A virtual type too, for its families. */
static const pith_actor_type_t vcounted = {
    .name = "metrics-vactor",
    .behaviour = count_behaviour,
    .state_size = sizeof(uint64_t),
};
static const pith_vtype_t vtype = {.name = "metrics-vtype", .actor = &vcounted};

static void load_vtype(void)
{
    int rc = pith_vtype_register(&vtype);
    cr_assert(rc == 0, "pith_vtype_register: %d", rc);
    for (int i = 0; i < 100; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i % 10);
        pith_vref_t v;
        cr_assert_eq(pith_vref(&vtype, key, strlen(key), &v), 0);
        int err;
        uint64_t deadline = test_wait_deadline();
        while ((err = pith_vsend(&v, 1, &i, sizeof(i))) == -EAGAIN && pith_now_ns() < deadline)
            test_sync_all();
        cr_assert_eq(err, 0, "pith_vsend: %d", err);
    }
    pith_vtype_stats_t vs;
    TEST_WAIT_FOR(pith_vtype_stats(&vtype, &vs) == 0 && vs.messages == 100);
}

static void load_both_shards(void)
{
    for (unsigned s = 0; s < 2; s++) {
        void *res = NULL;
        cr_assert_eq(pith_call_wait(s, spawn_and_send, NULL, &res), 0);
        cr_assert_eq((intptr_t)res, 0, "spawn and send on shard %u: %d", s, (int)(intptr_t)res);
    }
    pith_actor_type_stats_t st;
    TEST_WAIT_FOR(pith_actor_type_stats(&counted, &st) == 0 && st.messages == 2 * MSGS);
}

static char *metrics_text(void)
{
    long n = pith_metrics_text(NULL, 0);
    cr_assert_gt(n, 0, "pith_metrics_text: %ld", n);
    size_t cap = (size_t)n + 65536; /* the figures move between the calls */
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    long m = pith_metrics_text(buf, cap);
    cr_assert(m > 0 && (size_t)m < cap, "pith_metrics_text: %ld (room %zu)", m, cap);
    cr_assert_eq(strlen(buf), (size_t)m);
    return buf;
}

/* ---- a checker for the text format (0.0.4) ---- */

struct family {
    char name[128];
    char kind[16];
    int samples;
};

/* The histogram series being checked: its labels without le, the last cumulative count. */
struct series {
    char family[128];
    char labels[512];
    double last;
    bool have_inf;
    double inf;
};

static bool name_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                  (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

/* Parses `{k="v",...}` at *p into out (without the braces, le removed, into le). Returns false
 * on a syntax error. */
static bool parse_labels(const char **p, char *out, size_t cap, char *le, size_t lecap)
{
    out[0] = '\0';
    le[0] = '\0';
    if (**p != '{')
        return true;
    (*p)++;
    size_t o = 0;
    while (**p != '}') {
        const char *k = *p;
        while (name_ok(k, (size_t)(*p - k + 1)) && **p != '=')
            (*p)++;
        size_t kl = (size_t)(*p - k);
        if (kl == 0 || **p != '=' || (*p)[1] != '"')
            return false;
        *p += 2;
        char val[256];
        size_t vl = 0;
        while (**p != '"') {
            if (**p == '\0' || **p == '\n')
                return false;
            if (**p == '\\') {
                (*p)++;
                if (**p != '\\' && **p != '"' && **p != 'n')
                    return false;
            }
            if (vl + 1 < sizeof(val))
                val[vl++] = **p;
            (*p)++;
        }
        val[vl] = '\0';
        (*p)++;
        if (kl == 2 && strncmp(k, "le", 2) == 0) {
            snprintf(le, lecap, "%.*s", (int)(lecap - 1), val);
        } else {
            int w = snprintf(out + o, cap - o, "%s%.*s=%s", o > 0 ? "," : "", (int)kl, k, val);
            if (w < 0 || (size_t)w >= cap - o)
                return false;
            o += (size_t)w;
        }
        if (**p == ',')
            (*p)++;
        else if (**p != '}')
            return false;
    }
    (*p)++;
    return true;
}

/* Checks the whole text; returns the value of the sample `want` (name and labels, as
 * "name{k=v,...}" with labels in their order), or -1 when absent. */
static double check_text(const char *text, const char *want)
{
    static struct family fams[512];
    static struct series ser[4096];
    int nf = 0, ns = 0;
    double found = -1;
    const char *p = text;
    int line = 0;
    while (*p != '\0') {
        line++;
        const char *eol = strchr(p, '\n');
        cr_assert_not_null(eol, "line %d does not end with a newline", line);
        if (*p == '#') {
            char what[8], name[128];
            int off = 0;
            cr_assert_eq(sscanf(p, "# %7s %127s %n", what, name, &off), 2, "line %d: %.*s", line,
                         (int)(eol - p), p);
            cr_assert(name_ok(name, strlen(name)), "line %d: bad name %s", line, name);
            if (strcmp(what, "TYPE") == 0) {
                for (int i = 0; i < nf; i++)
                    cr_assert_str_neq(fams[i].name, name, "family %s declared twice", name);
                cr_assert_lt(nf, 512);
                snprintf(fams[nf].name, sizeof(fams[nf].name), "%s", name);
                sscanf(p + off, "%15s", fams[nf].kind);
                cr_assert(strcmp(fams[nf].kind, "counter") == 0 ||
                              strcmp(fams[nf].kind, "gauge") == 0 ||
                              strcmp(fams[nf].kind, "histogram") == 0,
                          "line %d: type %s", line, fams[nf].kind);
                if (strcmp(fams[nf].kind, "counter") == 0) {
                    size_t l = strlen(name);
                    cr_assert(l > 6 && strcmp(name + l - 6, "_total") == 0,
                              "counter %s does not end in _total", name);
                }
                nf++;
            } else {
                cr_assert_str_eq(what, "HELP", "line %d", line);
                cr_assert_gt(eol - (p + off), 0, "line %d: empty HELP", line);
            }
            p = eol + 1;
            continue;
        }
        /* A sample: it belongs to the last family declared. */
        cr_assert_gt(nf, 0, "line %d: a sample before any TYPE", line);
        struct family *f = &fams[nf - 1];
        const char *n0 = p;
        while (*p != '{' && *p != ' ' && p < eol)
            p++;
        char name[160];
        snprintf(name, sizeof(name), "%.*s", (int)(p - n0), n0);
        char labels[512], le[64];
        cr_assert(parse_labels(&p, labels, sizeof(labels), le, sizeof(le)), "line %d: labels",
                  line);
        cr_assert_eq(*p, ' ', "line %d: no value", line);
        char *end;
        double v = strtod(p + 1, &end);
        cr_assert_eq(end, eol, "line %d: value %.*s", line, (int)(eol - p - 1), p + 1);
        cr_assert(v >= 0, "line %d: negative", line);
        bool hist = strcmp(f->kind, "histogram") == 0;
        size_t fl = strlen(f->name);
        if (!hist) {
            cr_assert_str_eq(name, f->name, "line %d: sample of another family", line);
            cr_assert_eq(le[0], '\0', "line %d: le outside a histogram", line);
        } else {
            cr_assert(strncmp(name, f->name, fl) == 0, "line %d: %s in %s", line, name, f->name);
            const char *suf = name + fl;
            /* The series: found by family and labels. */
            int s = ns - 1;
            while (s >= 0 &&
                   !(strcmp(ser[s].family, f->name) == 0 && strcmp(ser[s].labels, labels) == 0))
                s--;
            if (strcmp(suf, "_bucket") == 0) {
                cr_assert_neq(le[0], '\0', "line %d: a bucket without le", line);
                if (s < 0) {
                    cr_assert_lt(ns, 4096);
                    s = ns++;
                    snprintf(ser[s].family, sizeof(ser[s].family), "%s", f->name);
                    snprintf(ser[s].labels, sizeof(ser[s].labels), "%s", labels);
                    ser[s].last = 0;
                    ser[s].have_inf = false;
                }
                cr_assert(!ser[s].have_inf, "line %d: a bucket after +Inf", line);
                cr_assert_geq(v, ser[s].last, "line %d: buckets not cumulative", line);
                ser[s].last = v;
                if (strcmp(le, "+Inf") == 0) {
                    ser[s].have_inf = true;
                    ser[s].inf = v;
                }
            } else if (strcmp(suf, "_count") == 0) {
                cr_assert(s >= 0 && ser[s].have_inf, "line %d: _count without +Inf", line);
                cr_assert_eq(v, ser[s].inf, "line %d: _count %g, +Inf %g", line, v, ser[s].inf);
            } else {
                cr_assert_str_eq(suf, "_sum", "line %d: %s", line, name);
                cr_assert(s >= 0, "line %d: _sum without buckets", line);
            }
        }
        f->samples++;
        char key[700];
        if (le[0] != '\0')
            snprintf(key, sizeof(key), "%s{%s%sle=%s}", name, labels, labels[0] ? "," : "", le);
        else
            snprintf(key, sizeof(key), "%s{%s}", name, labels);
        if (want != NULL && strcmp(key, want) == 0)
            found = v;
        p = eol + 1;
    }
    for (int i = 0; i < nf; i++)
        cr_assert_gt(fams[i].samples, 0, "family %s has no samples", fams[i].name);
    cr_assert_gt(nf, 50, "only %d families", nf);
    return found;
}

static double read_one(const char *want)
{
    char *text = metrics_text();
    double v = check_text(text, want);
    free(text);
    return v;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    cr_assert_eq(fputs(text, f) >= 0, true);
    cr_assert_eq(fclose(f), 0);
}

/* Runs cmd with sh; returns its exit status (or -1). */
static int run(const char *cmd)
{
    int st = system(cmd);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* docs/metrics.md names every family the text has, and has no family the text lacks (every
 * source has samples here: actor and virtual types included). */
static void docs_list_every_family(const char *text)
{
    FILE *f = fopen(PITH_TEST_DOCS_METRICS, "r");
    cr_assert_not_null(f, "%s", PITH_TEST_DOCS_METRICS);
    static char doc[1 << 16];
    size_t n = fread(doc, 1, sizeof(doc) - 1, f);
    fclose(f);
    doc[n] = '\0';
    int families = 0;
    for (const char *p = strstr(text, "# TYPE "); p != NULL; p = strstr(p + 1, "# TYPE ")) {
        char name[128], quoted[132];
        cr_assert_eq(sscanf(p, "# TYPE %127s", name), 1);
        snprintf(quoted, sizeof(quoted), "`%s`", name);
        cr_assert_not_null(strstr(doc, quoted), "docs/metrics.md does not list %s", name);
        families++;
    }
    int listed = 0;
    for (const char *p = strstr(doc, "\n| `pith_"); p != NULL; p = strstr(p + 1, "\n| `pith_")) {
        char name[128], line[140];
        cr_assert_eq(sscanf(p + 4, "%127[a-z0-9_]", name), 1);
        snprintf(line, sizeof(line), "# TYPE %s ", name);
        cr_assert_not_null(strstr(text, line), "docs/metrics.md lists %s, which is not written",
                           name);
        listed++;
    }
    cr_assert_eq(listed, families);
}

#define TYPE_LABEL "metrics \\\"quoted\\\"\\\\type"

Test(metrics, the_text_is_prometheus_format_and_counts_what_happened, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    load_both_shards();
    load_vtype();
    /* An SLA, for its families. */
    cr_assert_eq(pith_sla_set(&counted, &(pith_sla_t){.p99_ns = 1000 * MS}), 0);
    char *text = metrics_text();
    /* The escaped name reads back, with the messages each shard handled. */
    for (unsigned s = 0; s < 2; s++) {
        char want[256];
        snprintf(want, sizeof(want), "pith_actor_type_messages_total{shard=%u,type=%s}", s,
                 "metrics \"quoted\"\\type");
        double v = check_text(text, want);
        cr_assert_eq(v, MSGS, "%s: %g", want, v);
    }
    cr_assert_not_null(strstr(text, "type=\"" TYPE_LABEL "\""), "the label is escaped");
    cr_assert_eq(check_text(text, "pith_shards{}"), 2);
    cr_assert_eq(check_text(text, "pith_actor_type_live{shard=1,type=metrics \"quoted\"\\type}"),
                 1);
    /* The handler histogram counts one message in 16. */
    double c0 = check_text(text, "pith_actor_type_handler_seconds_count{shard=0,type=metrics "
                                 "\"quoted\"\\type}");
    /* The handler histogram counts the stamped messages: gaps drawn from 1 to 32, so about 61
     * of 1000 (a standard deviation near 4: 40 to 85 is more than 4 of them). */
    cr_assert(c0 >= 40 && c0 <= 85, "sampled %g of %d", c0, MSGS);
    /* Time in the mailbox: the stamped messages, as the handler's; the 1000 sent in one task
     * joined a mailbox that grew to 1000 before the actor ran, so the depths counted
     * (every 16th enqueue) pass 511. */
    for (unsigned s = 0; s < 2; s++) {
        char want[256];
        snprintf(want, sizeof(want), "pith_actor_type_mailbox_seconds_count{shard=%u,type=%s}", s,
                 "metrics \"quoted\"\\type");
        double mc = check_text(text, want);
        cr_assert(mc >= 40 && mc <= 85, "%s: %g", want, mc);
        snprintf(want, sizeof(want), "pith_actor_type_enqueue_depth_count{shard=%u,type=%s}", s,
                 "metrics \"quoted\"\\type");
        double dc = check_text(text, want);
        cr_assert(dc >= MSGS / 16 - 2 && dc <= MSGS / 16 + 4, "%s: %g", want, dc);
        snprintf(want, sizeof(want),
                 "pith_actor_type_enqueue_depth_bucket{shard=%u,type=%s,le=511}", s,
                 "metrics \"quoted\"\\type");
        double d511 = check_text(text, want);
        cr_assert(d511 >= 0 && d511 < dc, "%s: %g of %g", want, d511, dc);
    }
    double busy = check_text(text, "pith_shard_busy_seconds_total{shard=0}");
    double elapsed = check_text(text, "pith_shard_elapsed_seconds_total{shard=0}");
    cr_assert(busy > 0 && elapsed > 0 && busy <= elapsed, "busy %g elapsed %g", busy, elapsed);

    cr_assert_eq(check_text(text, "pith_vactor_activations_total{shard=0,type=metrics-vtype}") +
                     check_text(text, "pith_vactor_activations_total{shard=1,type=metrics-vtype}"),
                 10);
    docs_list_every_family(text);

    /* Debian's promtool: the format and its lint rules. */
    char path[] = "/tmp/pith-metrics-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    write_file(path, text);
    cr_assert_eq(run("command -v promtool >/dev/null"), 0,
                 "promtool is missing: ./pith.sh installs it (Debian package prometheus)");
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
    int st = run(cmd);
    cr_assert_eq(st, 0, "promtool check metrics: exit %d (%s kept)", st, path);
    unlink(path);
    free(text);
    test_stop(NULL);
}

Test(metrics, lengths_are_as_snprintf_gives_them, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    char small[16];
    memset(small, 'x', sizeof(small));
    long n = pith_metrics_text(small, sizeof(small));
    cr_assert_gt(n, (long)sizeof(small));
    cr_assert_eq(strlen(small), sizeof(small) - 1, "cut and ended with a NUL");
    cr_assert_eq(strncmp(small, "# HELP ", 7), 0);
    cr_assert_eq(pith_metrics_text(NULL, 8), -EINVAL);
    cr_assert_eq(pith_metrics_json(NULL, 8), -EINVAL);
    cr_assert_gt(pith_metrics_json(NULL, 0), 0);
    test_stop(NULL);
    cr_assert_eq(pith_metrics_text(small, sizeof(small)), -ESHUTDOWN);
    cr_assert_eq(pith_metrics_json(NULL, 0), -ESHUTDOWN);
}

Test(metrics, the_json_form_parses_and_agrees_with_the_text, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    load_both_shards();
    long n = pith_metrics_json(NULL, 0);
    cr_assert_gt(n, 0);
    size_t cap = (size_t)n + 65536;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    long m = pith_metrics_json(buf, cap);
    cr_assert(m > 0 && (size_t)m < cap);
    char path[] = "/tmp/pith-metrics-json-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    write_file(path, buf);
    /* Every family has samples; each histogram's buckets add up to its count; the counted
     * type's messages are there. */
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "python3 -c 'import json,sys\n"
             "d=json.load(open(sys.argv[1]))\n"
             "assert d[\"shards\"]==2\n"
             "fams={f[\"name\"]:f for f in d[\"families\"]}\n"
             "assert len(fams)==len(d[\"families\"])>50\n"
             "for f in d[\"families\"]:\n"
             "  assert f[\"samples\"], f[\"name\"]\n"
             "  if f[\"type\"]==\"histogram\":\n"
             "    for s in f[\"samples\"]: assert sum(b[1] for b in s[\"buckets\"])==s[\"count\"]\n"
             "m=[s[\"value\"] for s in fams[\"pith_actor_type_messages_total\"][\"samples\"] if "
             "s[\"labels\"][\"type\"]==sys.argv[2]]\n"
             "assert m==[%d,%d], m\n' %s 'metrics \"quoted\"\\type'",
             MSGS, MSGS, path);
    int st = run(cmd);
    cr_assert_eq(st, 0, "the JSON check: exit %d (%s kept)", st, path);
    unlink(path);
    free(buf);
    test_stop(NULL);
}

/* ---- HTTP ---- */

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        cr_assert_gt(k, 0, "send: %s", strerror(errno));
        s += k;
        n -= (size_t)k;
    }
}

/* Reads from fd into buf until `done` says a whole answer is there or the peer closes;
 * bounded by 20 s (times the multiplier). Returns the bytes read. */
static size_t recv_some(int fd, char *buf, size_t cap, size_t want_at_least)
{
    size_t len = 0;
    uint64_t deadline = pith_now_ns() + (uint64_t)(20e9 * test_timeout_multiplier());
    while (len < want_at_least && len + 1 < cap && pith_now_ns() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t k = recv(fd, buf + len, cap - 1 - len, 0);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    buf[len] = '\0';
    return len;
}

struct answer {
    int status;
    long length; /* Content-Length */
    bool close;  /* Connection: close */
    size_t head; /* bytes of the head, blank line included */
    size_t next; /* where the next answer begins in the buffer */
};

/* Reads one whole answer (head, then Content-Length bytes unless head_only) from fd into buf.
 * *have: bytes of buf already read (what came after the last answer), and on return what came
 * after this one (moved to buf's front once the caller is done with this answer: next_answer). */
static struct answer read_answer_at(int fd, char *buf, size_t cap, bool head_only, size_t *have)
{
    size_t len = *have;
    buf[len] = '\0';
    char *end;
    while ((end = strstr(buf, "\r\n\r\n")) == NULL) {
        size_t got = recv_some(fd, buf + len, cap - len, 1);
        cr_assert_gt(got, 0, "the connection closed before an answer");
        len += got;
    }
    struct answer a = {0};
    a.head = (size_t)(end + 4 - buf);
    cr_assert_eq(sscanf(buf, "HTTP/1.1 %d", &a.status), 1, "status line: %.40s", buf);
    const char *cl = strcasestr(buf, "\r\nContent-Length: ");
    cr_assert(cl != NULL && cl < end);
    a.length = strtol(cl + 18, NULL, 10);
    const char *cn = strcasestr(buf, "\r\nConnection: close");
    a.close = cn != NULL && cn < end;
    size_t want = a.head + (head_only ? 0 : (size_t)a.length);
    while (len < want) {
        size_t got = recv_some(fd, buf + len, cap - len, want - len);
        cr_assert_gt(got, 0, "the body stopped at %zu of %zu", len, want);
        len += got;
    }
    *have = len - want;
    a.next = want;
    return a;
}

/* Moves what came after answer a to buf's front. */
static void next_answer(char *buf, const struct answer *a, size_t have)
{
    memmove(buf, buf + a->next, have);
    buf[have] = '\0';
}

/* Reads exactly one answer: nothing may follow it. */
static struct answer read_answer(int fd, char *buf, size_t cap, bool head_only)
{
    size_t have = 0;
    struct answer a = read_answer_at(fd, buf, cap, head_only, &have);
    cr_assert_eq(have, 0, "%zu bytes more than one answer came", have);
    return a;
}

/* Waits for the peer to close fd (recv returns 0 or a reset). */
static void assert_closed(int fd)
{
    char b[4096];
    uint64_t deadline = pith_now_ns() + (uint64_t)(20e9 * test_timeout_multiplier());
    for (;;) {
        cr_assert_lt(pith_now_ns(), deadline, "the connection stayed open");
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t k = recv(fd, b, sizeof(b), 0);
        if (k <= 0)
            return;
    }
}

/* Sends req on a fresh connection and expects `status`, then a close. */
static void expect_error(int port, const char *req, size_t len, int status)
{
    int fd = connect_to(port);
    send_all(fd, req, len);
    static char buf[1 << 16];
    buf[0] = '\0';
    struct answer a = read_answer(fd, buf, sizeof(buf), false);
    cr_assert_eq(a.status, status, "%.30s...: %d, not %d", req, a.status, status);
    cr_assert(a.close, "%d without Connection: close", status);
    assert_closed(fd);
    close(fd);
}

Test(metrics, the_http_endpoint_keeps_alive_and_refuses_what_it_must, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    load_both_shards();
    pith_listener_t l;
    cr_assert_eq(pith_metrics_serve("127.0.0.1", 0, &l), 0);
    int port = pith_tcp_listener_port(l);
    cr_assert_gt(port, 0);

    static char buf[4 << 20];
    /* Two GETs and a HEAD on one connection, the second with a query. */
    int fd = connect_to(port);
    const char *get = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
    send_all(fd, get, strlen(get));
    buf[0] = '\0';
    struct answer a = read_answer(fd, buf, sizeof(buf), false);
    cr_assert_eq(a.status, 200);
    cr_assert(!a.close);
    cr_assert_not_null(strstr(buf, "Content-Type: text/plain; version=0.0.4"));
    cr_assert_eq(check_text(buf + a.head, "pith_shards{}"), 2);
    const char *get2 = "GET /metrics?x=1 HTTP/1.1\r\nConnection: keep-alive\r\n\r\n";
    send_all(fd, get2, strlen(get2));
    buf[0] = '\0';
    a = read_answer(fd, buf, sizeof(buf), false);
    cr_assert_eq(a.status, 200);
    const char *head = "HEAD /metrics.json HTTP/1.1\r\n\r\n";
    send_all(fd, head, strlen(head));
    buf[0] = '\0';
    a = read_answer(fd, buf, sizeof(buf), true);
    cr_assert_eq(a.status, 200);
    cr_assert_gt(a.length, 100, "HEAD tells the body's length");
    cr_assert_not_null(strstr(buf, "application/json"));
    /* Two pipelined in one write: two answers, the second from the first's rendering (the
     * shard renders at most once per 100 ms: the elapsed time in it would differ). */
    char two[256];
    snprintf(two, sizeof(two), "%s%s", get, get);
    send_all(fd, two, strlen(two));
    size_t have = 0;
    static char bodies[2][1 << 20];
    for (int i = 0; i < 2; i++) {
        a = read_answer_at(fd, buf, sizeof(buf), false, &have);
        cr_assert_eq(a.status, 200);
        char keep = buf[a.next];
        buf[a.next] = '\0'; /* the text alone, without the next answer */
        cr_assert_eq(check_text(buf + a.head, "pith_shards{}"), 2);
        cr_assert_lt(strlen(buf + a.head), sizeof(bodies[i]));
        snprintf(bodies[i], sizeof(bodies[i]), "%s", buf + a.head);
        buf[a.next] = keep;
        next_answer(buf, &a, have);
    }
    cr_assert_eq(have, 0);
    cr_assert_str_eq(bodies[0], bodies[1], "the second answer rendered again");
    /* Later, a fresh one. A sleep, not an engine primitive: what is tested is the wall-clock
     * reuse period (100 ms) passing, and no event of the engine marks it. */
    struct timespec pause = {0, 150 * 1000 * 1000};
    nanosleep(&pause, NULL);
    send_all(fd, get, strlen(get));
    buf[0] = '\0';
    a = read_answer(fd, buf, sizeof(buf), false);
    cr_assert_eq(a.status, 200);
    cr_assert_str_neq(buf + a.head, bodies[0], "an answer 150 ms later is a new rendering");
    /* Connection: close is honoured. */
    const char *last = "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n";
    send_all(fd, last, strlen(last));
    buf[0] = '\0';
    a = read_answer(fd, buf, sizeof(buf), false);
    cr_assert_eq(a.status, 200);
    cr_assert(a.close);
    assert_closed(fd);
    close(fd);
    /* HTTP/1.0 closes unless asked. */
    fd = connect_to(port);
    const char *old = "GET /metrics HTTP/1.0\r\n\r\n";
    send_all(fd, old, strlen(old));
    buf[0] = '\0';
    a = read_answer(fd, buf, sizeof(buf), false);
    cr_assert_eq(a.status, 200);
    assert_closed(fd);
    close(fd);

    /* Errors, each answered and closed. */
    const char *bad[] = {
        "garbage\r\n\r\n",
        "GET /metrics\r\n\r\n",
        "GET  /metrics HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        "GET /metrics HTTP/1.1\r\n folded: line\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_error(port, bad[i], strlen(bad[i]), 400);
    const char *nf = "GET /other HTTP/1.1\r\n\r\n";
    expect_error(port, nf, strlen(nf), 404);
    const char *post = "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    expect_error(port, post, strlen(post), 405);
    const char *v2 = "GET /metrics HTTP/2.0\r\n\r\n";
    expect_error(port, v2, strlen(v2), 505);
    /* A head that never ends: answered 431 once it passes 8 KiB. */
    size_t big = 9000;
    char *huge = malloc(big);
    cr_assert_not_null(huge);
    memcpy(huge, "GET /metrics HTTP/1.1\r\nX: ", 26);
    memset(huge + 26, 'a', big - 26);
    expect_error(port, huge, big, 431);
    free(huge);

    /* 40 connections at once, each answered. */
    int fds[40];
    for (int i = 0; i < 40; i++)
        fds[i] = connect_to(port);
    for (int i = 0; i < 40; i++)
        send_all(fds[i], get, strlen(get));
    for (int i = 0; i < 40; i++) {
        buf[0] = '\0';
        a = read_answer(fds[i], buf, sizeof(buf), false);
        cr_assert_eq(a.status, 200, "connection %d", i);
        close(fds[i]);
    }
    cr_assert_eq(pith_tcp_unlisten(l), 0);
    test_stop(NULL);
}

/* A client that pipelines 2000 requests in one write and never reads the answers: cut off
 * once 4 MiB of them wait, not answered 2000 times (about 200 MB). */
Test(metrics, a_client_that_pipelines_and_never_reads_is_cut_off, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    load_both_shards();
    pith_listener_t l;
    cr_assert_eq(pith_metrics_serve("127.0.0.1", 0, &l), 0);
    int port = pith_tcp_listener_port(l);
    int fd = connect_to(port);
    int small = 4096;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    const char *get = "GET /metrics HTTP/1.1\r\n\r\n";
    size_t one = strlen(get), n = 2000;
    char *many = malloc(one * n);
    cr_assert_not_null(many);
    for (size_t i = 0; i < n; i++)
        memcpy(many + i * one, get, one);
    send_all(fd, many, one * n);
    free(many);
    pith_net_stats_t s0, s1;
    TEST_WAIT_FOR(pith_net_stats(0, &s0) == 0 && pith_net_stats(1, &s1) == 0 &&
                  s0.accepted + s1.accepted == 1 && s0.conns_open + s1.conns_open == 0);
    /* What the kernel took for it: the socket buffers' worth, not 2000 answers. */
    cr_assert_lt(s0.bytes_out + s1.bytes_out, (uint64_t)16 << 20, "%llu bytes went out",
                 (unsigned long long)(s0.bytes_out + s1.bytes_out));
    close(fd);
    cr_assert_eq(pith_tcp_unlisten(l), 0);
    test_stop(NULL);
}

/* Each connection that ended is one sample of each per-connection histogram, on its shard:
 * with every one closed, the counts are the connections accepted, the sums the bytes each way,
 * and the buckets put a silent connection and one that sent 25 bytes where they belong. */
static double both_shards(const char *fmt, const char *le)
{
    double v = 0;
    for (int i = 0; i < 2; i++) {
        char want[160];
        snprintf(want, sizeof(want), fmt, i, le);
        double x = read_one(want);
        cr_assert_geq(x, 0, "%s is missing", want);
        v += x;
    }
    return v;
}

Test(metrics, each_connection_that_ended_is_counted_once_with_its_bytes, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    test_start(&cfg);
    pith_listener_t l;
    cr_assert_eq(pith_metrics_serve("127.0.0.1", 0, &l), 0);
    int port = pith_tcp_listener_port(l);
    const char *get = "GET /metrics HTTP/1.0\r\n\r\n"; /* 25 bytes; answered, then closed */
    cr_assert_eq(strlen(get), 25u);
    for (int i = 0; i < 6; i++) {
        int fd = connect_to(port);
        send_all(fd, get, strlen(get));
        assert_closed(fd);
        close(fd);
    }
    close(connect_to(port)); /* one that says nothing */
    pith_net_stats_t s0, s1;
    TEST_WAIT_FOR(pith_net_stats(0, &s0) == 0 && pith_net_stats(1, &s1) == 0 &&
                  s0.accepted + s1.accepted == 7 && s0.conns_open + s1.conns_open == 0);
    cr_assert_eq(pith_tcp_unlisten(l), 0);
    cr_assert_eq(both_shards("pith_net_conn_received_bytes_count{shard=%d}", ""), 7);
    cr_assert_eq(both_shards("pith_net_conn_sent_bytes_count{shard=%d}", ""), 7);
    cr_assert_eq(both_shards("pith_net_conn_lifetime_seconds_count{shard=%d}", ""), 7);
    cr_assert_eq(both_shards("pith_net_conn_received_bytes_sum{shard=%d}", ""), 6 * 25);
    cr_assert_eq(both_shards("pith_net_conn_received_bytes_sum{shard=%d}", ""),
                 (double)(s0.bytes_in + s1.bytes_in));
    cr_assert_eq(both_shards("pith_net_conn_sent_bytes_sum{shard=%d}", ""),
                 (double)(s0.bytes_out + s1.bytes_out));
    /* Buckets [2^(b-1), 2^b): 0 bytes under le=1, 25 bytes in [16, 32). */
    cr_assert_eq(both_shards("pith_net_conn_received_bytes_bucket{shard=%d,le=%s}", "1"), 1);
    cr_assert_eq(both_shards("pith_net_conn_received_bytes_bucket{shard=%d,le=%s}", "15"), 1);
    cr_assert_eq(both_shards("pith_net_conn_received_bytes_bucket{shard=%d,le=%s}", "31"), 7);
    double life = both_shards("pith_net_conn_lifetime_seconds_sum{shard=%d}", "");
    cr_assert(life > 0 && life < 60, "the connections lived %g s in all", life);
    test_stop(NULL);
}

/* ---- utilisation ---- */

static void *spin_ms(void *arg)
{
    uint64_t until = pith_now_ns() + (uint64_t)(uintptr_t)arg * MS;
    while (pith_now_ns() < until)
        ;
    return NULL;
}

static void spin_task(void *arg)
{
    (void)spin_ms(arg);
}

Test(metrics, utilisation_counts_busy_and_idle_time_and_never_goes_back, .timeout = 120)
{
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = 0; /* the 200 ms spin is on purpose */
    test_start(&cfg);
    pith_shard_stats_t a, b;
    /* Busy: a task spins 200 ms on shard 1. */
    cr_assert_eq(pith_shard_stats(1, &a), 0);
    cr_assert_eq(pith_call_wait(1, spin_ms, (void *)(uintptr_t)200, NULL), 0);
    cr_assert_eq(pith_shard_stats(1, &b), 0);
    uint64_t busy = b.busy_ns - a.busy_ns, el = b.elapsed_ns - a.elapsed_ns;
    cr_assert_geq(busy, 190 * MS, "busy %llu ns of %llu while spinning", (unsigned long long)busy,
                  (unsigned long long)el);
    cr_assert_leq(busy, el);
    /* Idle: nothing to do for 300 ms; the shard polls a little, then sleeps. A sleep here,
     * not a wait on the engine: the figure under test is time during which nothing happens,
     * and nothing signals its end. */
    cr_assert_eq(pith_shard_stats(1, &a), 0);
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    cr_assert_eq(pith_shard_stats(1, &b), 0);
    busy = b.busy_ns - a.busy_ns;
    el = b.elapsed_ns - a.elapsed_ns;
    cr_assert_geq(el, 290 * MS);
    cr_assert_lt(busy, el / 2, "busy %llu ns of %llu while idle", (unsigned long long)busy,
                 (unsigned long long)el);
    /* Read as fast as possible while the shard goes busy and idle: busy never goes down and
     * never passes elapsed. */
    uint64_t last_busy = 0, last_el = 0;
    for (int i = 0; i < 20000; i++) {
        if (i % 2000 == 0)
            cr_assert_eq(pith_submit(1, spin_task, (void *)(uintptr_t)1), 0);
        cr_assert_eq(pith_shard_stats(1, &a), 0);
        cr_assert_geq(a.busy_ns, last_busy, "busy went back at read %d", i);
        cr_assert_geq(a.elapsed_ns, last_el);
        cr_assert_leq(a.busy_ns, a.elapsed_ns);
        last_busy = a.busy_ns;
        last_el = a.elapsed_ns;
    }
    test_stop(NULL);
}

/* ---- stalls and the journal ---- */

/* The stall threshold: long enough that nothing else the test makes a shard do passes it,
 * under sanitizers and valgrind too; the staller spins four times that. */
static uint64_t stall_ms(void)
{
    return (uint64_t)(30 * test_timeout_multiplier());
}

static int stall_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    (void)spin_ms((void *)(uintptr_t)(4 * stall_ms()));
    return 0;
}

static const pith_actor_type_t staller = {.name = "metrics-staller", .behaviour = stall_behaviour};

static void *spawn_staller(void *arg)
{
    (void)arg;
    pith_ref_t r;
    int rc = pith_spawn(&staller, NULL, &r);
    if (rc == 0)
        rc = pith_send(r, 1, NULL, 0);
    return (void *)(intptr_t)rc;
}

static void quiet_stall(const pith_stall_t *st, void *ctx)
{
    (void)st;
    atomic_fetch_add((atomic_int *)ctx, 1);
}

/* The value of `want` in a fresh reading (-1 when absent). */
Test(metrics, a_stall_is_counted_for_its_type_and_timed_on_its_shard, .timeout = 120)
{
    static atomic_int reports;
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = stall_ms() * MS;
    cfg.on_stall = quiet_stall;
    cfg.stall_ctx = &reports;
    test_start(&cfg);
    void *res = NULL;
    cr_assert_eq(pith_call_wait(1, spawn_staller, NULL, &res), 0);
    cr_assert_eq((intptr_t)res, 0);
    /* The behaviour spins four thresholds: one stall, counted for its type once it is seen,
     * and timed on its shard once it has ended. */
    TEST_WAIT_FOR(read_one("pith_shard_stall_seconds_count{shard=1}") == 1);
    cr_assert_eq(read_one("pith_actor_type_stalls_total{shard=1,type=metrics-staller}"), 1);
    cr_assert_eq(read_one("pith_actor_type_stalls_total{shard=0,type=metrics-staller}"), 0);
    cr_assert_eq(read_one("pith_shard_stalls_total{shard=1}"), 1);
    cr_assert_eq(read_one("pith_shard_stall_seconds_count{shard=0}"), 0);
    double sum = read_one("pith_shard_stall_seconds_sum{shard=1}");
    cr_assert(sum >= 1e-3 * (double)stall_ms() && sum < 100,
              "the stall lasted %g s as the watchdog saw it", sum);
    cr_assert_eq(atomic_load(&reports), 1);
    test_stop(NULL);
}

static void on_durable(int err, uint64_t seq, void *ctx)
{
    (void)seq;
    if (err == 0)
        atomic_fetch_add((atomic_int *)ctx, 1);
}

struct jload {
    atomic_int *acked;
    int err;
};

static void *append_100(void *arg)
{
    struct jload *l = arg;
    for (int i = 0; i < 100 && l->err == 0; i++)
        l->err = pith_journal_append((uint64_t)i, 1, &i, sizeof(i), on_durable, l->acked, NULL);
    return NULL;
}

Test(metrics, the_journal_times_each_group_it_makes_durable, .timeout = 120)
{
    char dir[] = "/tmp/pith-metrics-journal-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    static atomic_int acked;
    pith_config_t cfg = test_config(2);
    cfg.journal.dir = dir;
    cfg.journal.segment_bytes = 1 << 20;
    test_start(&cfg);
    /* Ten tasks of 100 records each: ten groups or more, each written and synced. */
    for (int k = 0; k < 10; k++) {
        struct jload l = {.acked = &acked};
        cr_assert_eq(pith_call_wait(0, append_100, &l, NULL), 0);
        cr_assert_eq(l.err, 0, "append: %d", l.err);
        TEST_WAIT_FOR(atomic_load(&acked) == 100 * (k + 1));
    }
    pith_journal_stats_t js;
    cr_assert_eq(pith_journal_stats(0, &js), 0);
    double commits = read_one("pith_journal_commit_seconds_count{shard=0}");
    double syncs = read_one("pith_journal_write_sync_seconds_count{shard=0}");
    cr_assert(commits >= 10 && commits <= (double)js.groups, "%g groups timed of %llu", commits,
              (unsigned long long)js.groups);
    cr_assert_eq(syncs, commits);
    cr_assert_eq(read_one("pith_journal_commit_seconds_count{shard=1}"), 0);
    double csum = read_one("pith_journal_commit_seconds_sum{shard=0}");
    double ssum = read_one("pith_journal_write_sync_seconds_sum{shard=0}");
    cr_assert(csum >= ssum && ssum > 0, "commit %g s, write and sync %g s", csum, ssum);
    cr_assert_eq(read_one("pith_journal_acked_total{shard=0}"), 1000);
    test_stop(NULL);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(run(cmd), 0);
}
