/* libFuzzer target for pith-kv's RESP parser and writer (resp.c): parses each input as a stream
 * of requests whole and again as it grows, and checks the two agree; not a test of the server. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_CAP 64

/* Two settings per input: room for most commands, and limits small enough to hit. */
static const struct setting {
    struct resp_limits lim;
    unsigned cap;
} settings[] = {
    {{.max_bulk = 1u << 20, .max_args = 1u << 20}, MAX_CAP},
    {{.max_bulk = 16, .max_args = 8}, 4},
};

/* One call's result, with a digest of the arguments it gave. */
struct step {
    ssize_t r;
    unsigned argc;
    uint64_t digest;
    const char *err;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t digest(const struct resp_arg *args, unsigned argc)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, &argc, sizeof argc);
    for (unsigned i = 0; i < argc; i++) {
        h = fnv(h, &args[i].len, sizeof args[i].len);
        h = fnv(h, args[i].p, args[i].len);
    }
    return h;
}

static bool within(const char *p, size_t n, const char *base, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
    return a >= b && a - b <= len && n <= len - (a - b);
}

/* Checks what every call promises, whatever the input. */
static void check_step(const char *buf, size_t len, const struct setting *s, ssize_t r,
                       const struct resp_arg *args, unsigned argc, const char *err)
{
    if (r > 0) {
        CHECK((size_t)r <= len);
        CHECK(argc <= s->cap && argc <= s->lim.max_args);
        for (unsigned i = 0; i < argc; i++) {
            CHECK(buf[0] != '*' || args[i].len <= s->lim.max_bulk);
            /* Only an inline argument that needed decoding may live outside the buffer (in the
             * parser's scratch space), and it is never longer than its line. */
            if (!within(args[i].p, args[i].len, buf, (size_t)r))
                CHECK(buf[0] != '*' && args[i].len < (size_t)r);
        }
        return;
    }
    CHECK(argc == 0);
    if (r < 0) {
        CHECK(r == -EPROTO || r == -E2BIG);
        CHECK(err != NULL && strncmp(err, "ERR Protocol error: ", 20) == 0);
    }
}

/* The writer's array of bulk strings must parse back to the same arguments. */
static void check_round_trip(const struct resp_arg *args, unsigned argc, uint64_t want)
{
    struct resp_out o = {0};
    CHECK(resp_put_array(&o, argc) == 0);
    for (unsigned i = 0; i < argc; i++)
        CHECK(resp_put_bulk(&o, args[i].p, args[i].len) == 0);
    struct resp_arg back[MAX_CAP];
    unsigned n;
    const char *err;
    CHECK(resp_parse(o.p, o.len, &settings[0].lim, back, MAX_CAP, &n, &err) == (ssize_t)o.len);
    CHECK(n == argc && digest(back, n) == want);
    resp_out_free(&o);
}

/* Parses buf as a stream, command after command, until a call gives 0 or an error. */
static size_t parse_whole(const char *buf, size_t len, const struct setting *s, struct step *steps)
{
    size_t off = 0, k = 0;
    for (;;) {
        struct resp_arg args[MAX_CAP];
        unsigned argc = 7;
        const char *err = NULL;
        ssize_t r = resp_parse(buf + off, len - off, &s->lim, args, s->cap, &argc, &err);
        check_step(buf + off, len - off, s, r, args, argc, err);
        steps[k] = (struct step){r, argc, 0, err};
        if (r <= 0)
            return k + 1;
        steps[k].digest = digest(args, argc);
        if (argc > 0 && s == &settings[0])
            check_round_trip(args, argc, steps[k].digest);
        off += (size_t)r;
        k++;
    }
}

static size_t next_step(uint64_t *state)
{
    uint64_t x = *state; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return 1 + (size_t)(x % ((x >> 32) & 1 ? 4 : 64));
}

/* Parses buf as a server reading it in pieces would: after each piece, what is unconsumed, in
 * an exact-size copy (so that ASan sees a read past it), until a call says incomplete. The
 * results must be the whole-buffer parse's, in order. */
static void parse_growing(const char *buf, size_t len, const struct setting *s,
                          const struct step *steps, size_t nsteps, uint64_t seed)
{
    size_t off = 0, end = 0, k = 0;
    for (;;) {
        size_t have = end - off;
        char *view = malloc(have > 0 ? have : 1);
        CHECK(view != NULL);
        if (have > 0)
            memcpy(view, buf + off, have);
        struct resp_arg args[MAX_CAP];
        unsigned argc = 7;
        const char *err = NULL;
        ssize_t r = resp_parse(view, have, &s->lim, args, s->cap, &argc, &err);
        check_step(view, have, s, r, args, argc, err);
        uint64_t d = r > 0 ? digest(args, argc) : 0;
        free(view);

        if (r == 0) {
            if (end == len) {
                CHECK(k == nsteps - 1 && steps[k].r == 0);
                return;
            }
            size_t step = next_step(&seed);
            end = step < len - end ? end + step : len;
            continue;
        }
        CHECK(k < nsteps);
        CHECK(r == steps[k].r);
        if (r < 0) {
            CHECK(k == nsteps - 1 && strcmp(err, steps[k].err) == 0);
            return;
        }
        CHECK(argc == steps[k].argc && d == steps[k].digest);
        off += (size_t)r;
        k++;
    }
}

/* The integer writer against printf, on a value taken from the input. */
static void check_int(const uint8_t *data, size_t size)
{
    long long v = 0;
    memcpy(&v, data, size < sizeof v ? size : sizeof v);
    struct resp_out o = {0};
    CHECK(resp_put_int(&o, v) == 0);
    char want[32];
    int n = snprintf(want, sizeof want, ":%lld\r\n", v);
    CHECK(o.len == (size_t)n && memcmp(o.p, want, o.len) == 0);
    resp_out_free(&o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct step *steps = malloc((size + 1) * sizeof *steps);
    CHECK(steps != NULL);
    uint64_t seed = fnv(0xcbf29ce484222325ull, data, size) | 1;
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        size_t nsteps = parse_whole(buf, size, &settings[i], steps);
        parse_growing(buf, size, &settings[i], steps, nsteps, seed);
    }
    free(steps);
    check_int(data, size);
    return 0;
}
