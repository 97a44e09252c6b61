/* pith-kv's RESP2 parser and reply writer (examples/kv/resp.c) on their own: arrays and inline
 * commands, streams cut anywhere, every malformed form with its reply, and the writer's bytes. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "resp.h"

#define CAP 64

static const struct resp_limits redis_limits = {
    .max_bulk = 512u * 1024 * 1024,
    .max_args = 1024 * 1024,
};

/* One resp_parse call with redis_limits and CAP argument slots. */
struct parsed {
    ssize_t r;
    unsigned argc;
    struct resp_arg args[CAP];
    const char *err;
};

static void parse_with(struct parsed *p, const char *buf, size_t len, const struct resp_limits *lim,
                       unsigned cap)
{
    memset(p, 0, sizeof *p);
    p->argc = 12345;
    p->r = resp_parse(buf, len, lim, p->args, cap, &p->argc, &p->err);
    if (p->r <= 0)
        cr_assert_eq(p->argc, 0, "argc %u after a result of %zd", p->argc, p->r);
}

static void parse(struct parsed *p, const char *buf, size_t len)
{
    parse_with(p, buf, len, &redis_limits, CAP);
}

static void assert_arg(const struct parsed *p, unsigned i, const void *want, size_t n)
{
    cr_assert_lt(i, p->argc, "argument %u of %u", i, p->argc);
    cr_assert_eq(p->args[i].len, n, "argument %u: %zu bytes, expected %zu", i, p->args[i].len, n);
    cr_assert_eq(memcmp(p->args[i].p, want, n), 0, "argument %u: \"%.*s\"", i, (int)n,
                 p->args[i].p);
}

/* A string literal's bytes, NULs included. */
#define LIT(s)                s, sizeof(s) - 1
#define ASSERT_ARG(p, i, lit) assert_arg((p), (i), LIT(lit))
#define PARSE_LIT(p, lit)     parse((p), LIT(lit))
#define ASSERT_WHOLE(p, lit)  cr_assert_eq((p)->r, (ssize_t)(sizeof(lit) - 1), "result %zd", (p)->r)

Test(resp, array_of_bulk_strings_gives_each_argument_and_its_length)
{
    static const char req[] = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    ASSERT_WHOLE(&p, req);
    cr_assert_eq(p.argc, 3);
    ASSERT_ARG(&p, 0, "SET");
    ASSERT_ARG(&p, 1, "key");
    ASSERT_ARG(&p, 2, "value");
    cr_assert_eq(p.args[0].p, req + 8, "arguments point into the buffer");
}

Test(resp, array_parse_stops_at_the_end_of_the_first_command)
{
    static const char req[] = "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    cr_assert_eq(p.r, 14);
    cr_assert_eq(p.argc, 1);
    ASSERT_ARG(&p, 0, "PING");
}

Test(resp, bulk_payload_is_binary_safe_with_nul_and_crlf_inside)
{
    static const char req[] = "*2\r\n$3\r\nSET\r\n$7\r\na\0\r\n\r\nb\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    ASSERT_WHOLE(&p, req);
    cr_assert_eq(p.argc, 2);
    ASSERT_ARG(&p, 1, "a\0\r\n\r\nb");
}

Test(resp, empty_bulk_string_is_an_empty_argument)
{
    static const char req[] = "*2\r\n$3\r\nGET\r\n$0\r\n\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    ASSERT_WHOLE(&p, req);
    cr_assert_eq(p.argc, 2);
    ASSERT_ARG(&p, 1, "");
}

Test(resp, zero_and_negative_counts_are_consumed_as_empty_commands)
{
    static const char *const reqs[] = {"*0\r\n", "*-1\r\n", "*-9223372036854775808\r\n"};
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        struct parsed p;
        parse(&p, reqs[i], strlen(reqs[i]));
        cr_assert_eq(p.r, (ssize_t)strlen(reqs[i]), "%s: result %zd", reqs[i], p.r);
        cr_assert_eq(p.argc, 0, "%s", reqs[i]);
    }
}

Test(resp, inline_command_splits_on_spaces_and_tabs)
{
    static const char req[] = "  SET\tkey \t value  \r\nGET key\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    cr_assert_eq(p.r, 21);
    cr_assert_eq(p.argc, 3);
    ASSERT_ARG(&p, 0, "SET");
    ASSERT_ARG(&p, 1, "key");
    ASSERT_ARG(&p, 2, "value");
}

Test(resp, inline_command_may_end_in_a_bare_newline)
{
    struct parsed p;
    PARSE_LIT(&p, "PING\nPING\r\n");
    cr_assert_eq(p.r, 5);
    cr_assert_eq(p.argc, 1);
    ASSERT_ARG(&p, 0, "PING");
}

Test(resp, blank_inline_lines_are_consumed_with_no_arguments)
{
    static const char *const reqs[] = {"\n", "\r\n", "   \t\r\n", " \v\f \n"};
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        struct parsed p;
        parse(&p, reqs[i], strlen(reqs[i]));
        cr_assert_eq(p.r, (ssize_t)strlen(reqs[i]), "line %zu: result %zd", i, p.r);
        cr_assert_eq(p.argc, 0, "line %zu", i);
    }
}

Test(resp, inline_double_quotes_decode_every_escape)
{
    static const char req[] = "SET \"hello world\" \"q\\\" b\\\\ n\\n r\\r t\\t x\\x41\\x7a\\xFf\" "
                              "\"\\b\\a\\q\\xZZ\"\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    ASSERT_WHOLE(&p, req);
    cr_assert_eq(p.argc, 4);
    ASSERT_ARG(&p, 0, "SET");
    ASSERT_ARG(&p, 1, "hello world");
    ASSERT_ARG(&p, 2, "q\" b\\ n\n r\r t\t xAz\xff");
    ASSERT_ARG(&p, 3, "\b\aqxZZ");
}

Test(resp, inline_single_quotes_keep_backslashes_but_for_an_escaped_quote)
{
    static const char req[] = "SET 'it\\'s' 'a \"b\" \\n' ''\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    ASSERT_WHOLE(&p, req);
    cr_assert_eq(p.argc, 4);
    ASSERT_ARG(&p, 1, "it's");
    ASSERT_ARG(&p, 2, "a \"b\" \\n");
    ASSERT_ARG(&p, 3, "");
}

Test(resp, inline_quotes_inside_a_word_join_its_parts)
{
    static const char req[] = "foo\"bar baz\" x'y z' \"\"\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    ASSERT_WHOLE(&p, req);
    cr_assert_eq(p.argc, 3);
    ASSERT_ARG(&p, 0, "foobar baz");
    ASSERT_ARG(&p, 1, "xy z");
    ASSERT_ARG(&p, 2, "");
}

Test(resp, inline_arguments_without_escapes_point_into_the_buffer)
{
    static const char req[] = "SET \"hello world\" plain\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    cr_assert_eq(p.argc, 3);
    cr_assert_eq(p.args[1].p, req + 5);
    cr_assert_eq(p.args[1].len, 11);
    cr_assert_eq(p.args[2].p, req + 18);
}

Test(resp, inline_line_of_exactly_the_limit_is_accepted)
{
    size_t n = RESP_MAX_INLINE;
    char *req = malloc(n + 1);
    cr_assert_not_null(req);
    memset(req, 'a', n);
    req[n] = '\n';
    struct parsed p;
    parse(&p, req, n + 1);
    cr_assert_eq(p.r, (ssize_t)n + 1);
    cr_assert_eq(p.argc, 1);
    cr_assert_eq(p.args[0].len, n);
    free(req);
}

/* A stream of pipelined commands, every kind of request in it, and what it parses to. */
static const char stream[] = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"
                             "PING\r\n"
                             "*2\r\n$3\r\nGET\r\n$0\r\n\r\n"
                             "set \"a b\" 'c\\'d' \"\\x41\\n\"\n"
                             "\r\n"
                             "*0\r\n"
                             "*1\r\n$4\r\na\0\r\n\r\n"
                             "*-1\r\n"
                             "ECHO x\n";

struct want_arg {
    const char *p;
    size_t n;
};

#define W(s)                                                                                       \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }

static const struct {
    unsigned argc;
    struct want_arg a[4];
} stream_cmds[] = {
    {3, {W("SET"), W("key"), W("value")}},
    {1, {W("PING")}},
    {2, {W("GET"), W("")}},
    {4, {W("set"), W("a b"), W("c'd"), W("A\n")}},
    {0, {{NULL, 0}}},
    {0, {{NULL, 0}}},
    {1, {W("a\0\r\n")}},
    {0, {{NULL, 0}}},
    {2, {W("ECHO"), W("x")}},
};

#define NCMDS (sizeof stream_cmds / sizeof stream_cmds[0])

/* Commands as parsed, copied out (an inline argument may live in scratch space only until the
 * next parse): each as its argc, then each argument's length and bytes. */
struct log {
    char bytes[1024];
    size_t len;
    size_t ncmds;
    size_t cmd_end[NCMDS + 1]; /* log length after each command */
};

static void log_put(struct log *l, const void *p, size_t n)
{
    cr_assert_leq(n, sizeof l->bytes - l->len, "the log is full");
    if (n > 0)
        memcpy(l->bytes + l->len, p, n);
    l->len += n;
}

static void log_cmd(struct log *l, const struct resp_arg *args, unsigned argc)
{
    cr_assert_lt(l->ncmds, NCMDS, "more commands than the stream holds");
    log_put(l, &argc, sizeof argc);
    for (unsigned i = 0; i < argc; i++) {
        log_put(l, &args[i].len, sizeof args[i].len);
        log_put(l, args[i].p, args[i].len);
    }
    l->cmd_end[l->ncmds++] = l->len;
}

static void expected_log(struct log *l)
{
    memset(l, 0, sizeof *l);
    for (size_t c = 0; c < NCMDS; c++) {
        struct resp_arg args[4];
        for (unsigned i = 0; i < stream_cmds[c].argc; i++) {
            args[i].p = stream_cmds[c].a[i].p;
            args[i].len = stream_cmds[c].a[i].n;
        }
        log_cmd(l, args, stream_cmds[c].argc);
    }
}

/* Parses buf[0..len) command by command, as a server would, until a call says incomplete; each
 * call sees an exact-size copy of what is unconsumed, so that ASan catches a read past it.
 * Fails on any error; returns the bytes consumed. */
static size_t parse_all(const char *buf, size_t len, struct log *l)
{
    size_t done = 0;
    for (;;) {
        size_t n = len - done;
        char *view = malloc(n > 0 ? n : 1);
        cr_assert_not_null(view);
        if (n > 0)
            memcpy(view, buf + done, n);
        struct parsed p;
        parse(&p, view, n);
        cr_assert_geq(p.r, 0, "error at offset %zu: %s", done, p.err);
        cr_assert_leq((size_t)p.r, n);
        if (p.r > 0)
            log_cmd(l, p.args, p.argc);
        free(view);
        if (p.r == 0)
            return done;
        done += (size_t)p.r;
    }
}

static void assert_same_log(const struct log *got, const struct log *want)
{
    cr_assert_eq(got->ncmds, want->ncmds, "%zu commands, expected %zu", got->ncmds, want->ncmds);
    cr_assert_eq(got->len, want->len);
    cr_assert_eq(memcmp(got->bytes, want->bytes, want->len), 0, "the commands differ");
}

Test(resp, pipelined_stream_parses_to_each_of_its_commands)
{
    struct log want, got = {.len = 0};
    expected_log(&want);
    size_t done = parse_all(stream, sizeof stream - 1, &got);
    cr_assert_eq(done, sizeof stream - 1);
    assert_same_log(&got, &want);
}

Test(resp, every_prefix_of_a_stream_parses_its_whole_commands_and_waits_for_the_rest)
{
    struct log want, whole = {.len = 0};
    expected_log(&want);
    /* Where each command ends in the stream. */
    size_t ends[NCMDS], done = 0;
    for (size_t c = 0; c < NCMDS; c++) {
        struct parsed p;
        parse(&p, stream + done, sizeof stream - 1 - done);
        cr_assert_gt(p.r, 0, "command %zu", c);
        done += (size_t)p.r;
        ends[c] = done;
        log_cmd(&whole, p.args, p.argc);
    }
    assert_same_log(&whole, &want);

    for (size_t len = 0; len <= sizeof stream - 1; len++) {
        size_t complete = 0;
        while (complete < NCMDS && ends[complete] <= len)
            complete++;
        struct log got = {.len = 0};
        size_t consumed = parse_all(stream, len, &got);
        cr_assert_eq(consumed, complete > 0 ? ends[complete - 1] : 0, "prefix of %zu bytes", len);
        cr_assert_eq(got.ncmds, complete, "prefix of %zu bytes", len);
        cr_assert_eq(memcmp(got.bytes, want.bytes, got.len), 0, "prefix of %zu bytes", len);
    }
}

/* Feeds the stream to a server-like loop in chunks of sizes from next(), parsing after each. */
static void feed(size_t (*next)(uint64_t *), uint64_t seed, struct log *l)
{
    size_t total = sizeof stream - 1, have = 0, done = 0;
    char acc[sizeof stream];
    while (have < total) {
        size_t k = next(&seed);
        if (k > total - have)
            k = total - have;
        memcpy(acc + have, stream + have, k);
        have += k;
        struct log part = {.len = 0};
        done += parse_all(acc + done, have - done, &part);
        for (size_t c = 0; c < part.ncmds; c++) {
            size_t from = c == 0 ? 0 : part.cmd_end[c - 1];
            cr_assert_lt(l->ncmds, NCMDS);
            log_put(l, part.bytes + from, part.cmd_end[c] - from);
            l->cmd_end[l->ncmds++] = l->len;
        }
    }
    cr_assert_eq(done, total, "bytes left over");
}

static size_t one_byte(uint64_t *state)
{
    (void)state;
    return 1;
}

static size_t random_chunk(uint64_t *state)
{
    /* xorshift64 */
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return 1 + (size_t)(x % (x & 1 ? 7 : 40));
}

Test(resp, stream_fed_byte_by_byte_parses_to_the_same_commands)
{
    struct log want, got = {.len = 0};
    expected_log(&want);
    feed(one_byte, 0, &got);
    assert_same_log(&got, &want);
}

Test(resp, stream_fed_in_random_splits_parses_to_the_same_commands)
{
    struct log want;
    expected_log(&want);
    for (uint64_t seed = 1; seed <= 200; seed++) {
        struct log got = {.len = 0};
        feed(random_chunk, seed * 0x9e3779b97f4a7c15ull, &got);
        assert_same_log(&got, &want);
    }
}

Test(resp, incomplete_requests_wait_for_more_bytes)
{
    static const char *const reqs[] = {
        "*",
        "*2",
        "*2\r",
        "*2\r\n",
        "*2\r\n$3\r\nGET\r\n",
        "*1\r\n$",
        "*1\r\n$5",
        "*1\r\n$5\r",
        "*1\r\n$5\r\n",
        "*1\r\n$5\r\nhel",
        "*1\r\n$5\r\nhello",
        "*1\r\n$5\r\nhello\r",
        "GET key",
        "GET key\r",
        "\"unterminated quote",
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        struct parsed p;
        parse(&p, reqs[i], strlen(reqs[i]));
        cr_assert_eq(p.r, 0, "\"%s\": result %zd (%s)", reqs[i], p.r, p.err ? p.err : "");
    }
}

#define BAD_MBULK       "ERR Protocol error: invalid multibulk length"
#define BAD_BULK        "ERR Protocol error: invalid bulk length"
#define NO_DOLLAR       "ERR Protocol error: expected '$', got 'G'"
#define NO_DOLLAR_COLON "ERR Protocol error: expected '$', got ':'"
#define NO_DOLLAR_CR    "ERR Protocol error: expected '$', got '\r'"
#define NO_CRLF         "ERR Protocol error: expected CRLF after bulk data"
#define UNBALANCED      "ERR Protocol error: unbalanced quotes in request"
#define TOO_MANY        "ERR Protocol error: too many arguments in request"

static const struct {
    const char *req;
    size_t len;
    int rc;
    const char *err;
} malformed[] = {
    /* the count */
    {LIT("*abc\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*1x\r\n"), -EPROTO, BAD_MBULK},
    {LIT("* 1\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*+1\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*01\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*-0\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*1\rX"), -EPROTO, BAD_MBULK},
    {LIT("*9223372036854775808\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*99999999999999999999999\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*-9223372036854775809\r\n"), -EPROTO, BAD_MBULK},
    {LIT("*1048577\r\n"), -E2BIG, BAD_MBULK},
    {LIT("*9223372036854775807\r\n"), -E2BIG, BAD_MBULK},
    {LIT("*65\r\n"), -E2BIG, TOO_MANY},
    /* each element's type */
    {LIT("*1\r\nGET\r\n"), -EPROTO, NO_DOLLAR},
    {LIT("*2\r\n$3\r\nGET\r\n:1\r\n"), -EPROTO, NO_DOLLAR_COLON},
    {LIT("*1\r\n\r\n"), -EPROTO, NO_DOLLAR_CR},
    /* bulk lengths */
    {LIT("*1\r\n$-1\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$-5\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$abc\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$3x\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$03\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$3\n\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$9223372036854775808\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$18446744073709551616\r\n"), -EPROTO, BAD_BULK},
    {LIT("*1\r\n$536870913\r\n"), -E2BIG, BAD_BULK},
    {LIT("*1\r\n$9223372036854775807\r\n"), -E2BIG, BAD_BULK},
    /* the CRLF after a payload */
    {LIT("*1\r\n$3\r\nGETXX"), -EPROTO, NO_CRLF},
    {LIT("*1\r\n$3\r\nGET\n\r"), -EPROTO, NO_CRLF},
    {LIT("*1\r\n$3\r\nGET\rX"), -EPROTO, NO_CRLF},
    {LIT("*1\r\n$0\r\nX\r\n"), -EPROTO, NO_CRLF},
    /* inline quoting */
    {LIT("SET \"abc\r\n"), -EPROTO, UNBALANCED},
    {LIT("SET 'abc\n"), -EPROTO, UNBALANCED},
    {LIT("SET \"a\"b\n"), -EPROTO, UNBALANCED},
    {LIT("SET 'a'b\n"), -EPROTO, UNBALANCED},
    {LIT("\"\\\"\n"), -EPROTO, UNBALANCED},
    {LIT("'\\'\n"), -EPROTO, UNBALANCED},
    {LIT("\"abc\\\n"), -EPROTO, UNBALANCED},
};

Test(resp, malformed_requests_fail_with_the_reply_redis_gives)
{
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        struct parsed p;
        parse(&p, malformed[i].req, malformed[i].len);
        cr_assert_eq(p.r, malformed[i].rc, "case %zu: result %zd, expected %d", i, p.r,
                     malformed[i].rc);
        cr_assert_not_null(p.err, "case %zu", i);
        cr_assert_str_eq(p.err, malformed[i].err, "case %zu", i);
    }
}

Test(resp, error_after_a_good_command_is_reported_at_its_own_offset)
{
    static const char req[] = "*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n";
    struct parsed p;
    PARSE_LIT(&p, req);
    cr_assert_eq(p.r, 14);
    parse(&p, req + 14, sizeof req - 1 - 14);
    cr_assert_eq(p.r, -EPROTO);
    cr_assert_str_eq(p.err, BAD_BULK);
}

Test(resp, arguments_over_the_callers_slots_or_max_args_are_too_big)
{
    struct parsed p;
    parse_with(&p, LIT("*5\r\n"), &redis_limits, 4);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, TOO_MANY);
    parse_with(&p, LIT("*1048576\r\n"), &redis_limits, 4);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, TOO_MANY);
    parse_with(&p, LIT("a b c d e\n"), &redis_limits, 4);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, TOO_MANY);

    const struct resp_limits two = {.max_bulk = 100, .max_args = 2};
    parse_with(&p, LIT("*3\r\n"), &two, CAP);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, BAD_MBULK);
    parse_with(&p, LIT("a b c\n"), &two, CAP);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, TOO_MANY);

    /* At the limits exactly, all is well. */
    parse_with(&p, LIT("*2\r\n$1\r\na\r\n$1\r\nb\r\n"), &two, 2);
    cr_assert_eq(p.r, 18);
    cr_assert_eq(p.argc, 2);
    parse_with(&p, LIT("a b\n"), &two, 2);
    cr_assert_eq(p.r, 4);
    cr_assert_eq(p.argc, 2);
}

Test(resp, bulk_over_max_bulk_is_too_big_and_at_max_bulk_is_accepted)
{
    const struct resp_limits small = {.max_bulk = 4, .max_args = 8};
    struct parsed p;
    parse_with(&p, LIT("*1\r\n$5\r\nhello\r\n"), &small, CAP);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, BAD_BULK);
    parse_with(&p, LIT("*1\r\n$4\r\nhell\r\n"), &small, CAP);
    cr_assert_eq(p.r, 14);
    cr_assert_eq(p.argc, 1);
}

/* len bytes of c, then tail (may be NULL), in an exact-size allocation. */
static char *filled(char first, char c, size_t len, const char *tail, size_t *total)
{
    size_t tn = tail != NULL ? strlen(tail) : 0;
    char *buf = malloc(len + tn);
    cr_assert_not_null(buf);
    memset(buf, c, len);
    buf[0] = first;
    if (tn > 0)
        memcpy(buf + len, tail, tn);
    *total = len + tn;
    return buf;
}

Test(resp, inline_line_over_the_limit_is_too_big_with_or_without_its_newline)
{
    struct parsed p;
    size_t n;
    char *buf = filled('a', 'a', RESP_MAX_INLINE + 1, NULL, &n);
    parse(&p, buf, n);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, "ERR Protocol error: too big inline request");
    parse(&p, buf, n - 1);
    cr_assert_eq(p.r, 0, "a line of the limit's length may still be whole");
    free(buf);

    buf = filled('a', 'a', RESP_MAX_INLINE + 1, "\r\n", &n);
    parse(&p, buf, n);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, "ERR Protocol error: too big inline request");
    free(buf);
}

Test(resp, header_line_over_the_limit_is_too_big)
{
    struct parsed p;
    size_t n;
    char *buf = filled('*', '1', RESP_MAX_INLINE + 1, NULL, &n);
    parse(&p, buf, n);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, "ERR Protocol error: too big mbulk count string");
    free(buf);

    static const char head[] = "*1\r\n";
    buf = filled('$', '1', RESP_MAX_INLINE + 1, NULL, &n);
    char *req = malloc(sizeof head - 1 + n);
    cr_assert_not_null(req);
    memcpy(req, head, sizeof head - 1);
    memcpy(req + sizeof head - 1, buf, n);
    parse(&p, req, sizeof head - 1 + n);
    cr_assert_eq(p.r, -E2BIG);
    cr_assert_str_eq(p.err, "ERR Protocol error: too big bulk count string");
    free(req);
    free(buf);
}

/* Pages around a payload the parser must not read: [header][payload: PROT_NONE][tail]. Returns
 * where the request starts; *len its length. */
static char *guarded(const char *header, size_t payload, const char *tail, size_t *len, void **map,
                     size_t *maplen)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    cr_assert_eq(payload % page, 0);
    size_t total = page + payload + page;
    char *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(m, MAP_FAILED);
    size_t hn = strlen(header), tn = strlen(tail);
    char *start = m + page - hn;
    memcpy(start, header, hn);
    memcpy(m + page + payload, tail, tn);
    cr_assert_eq(mprotect(m + page, payload, PROT_NONE), 0);
    *len = hn + payload + tn;
    *map = m;
    *maplen = total;
    return start;
}

Test(resp, known_payloads_are_skipped_without_being_read)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char header[64];
    snprintf(header, sizeof header, "*2\r\n$%zu\r\n", 4 * page);
    void *map;
    size_t maplen, len;
    char *req = guarded(header, 4 * page, "\r\n$3\r\nGET\r\n", &len, &map, &maplen);

    struct parsed p;
    parse(&p, req, strlen(header) + 4 * page);
    cr_assert_eq(p.r, 0, "a partial payload waits");
    parse(&p, req, len - 3);
    cr_assert_eq(p.r, 0, "a partial second argument waits");
    parse(&p, req, len);
    cr_assert_eq(p.r, (ssize_t)len);
    cr_assert_eq(p.argc, 2);
    cr_assert_eq(p.args[0].p, req + strlen(header));
    cr_assert_eq(p.args[0].len, 4 * page);
    ASSERT_ARG(&p, 1, "GET");
    cr_assert_eq(munmap(map, maplen), 0);
}

/* The writer. */

static void assert_out(const struct resp_out *o, const void *want, size_t n)
{
    cr_assert_eq(o->len, n, "%zu bytes: \"%.*s\", expected %zu", o->len, (int)o->len, o->p, n);
    cr_assert_leq(o->len, o->cap);
    cr_assert_eq(memcmp(o->p, want, n), 0, "wrote \"%.*s\"", (int)o->len, o->p);
}

#define ASSERT_OUT(o, lit) assert_out((o), LIT(lit))

Test(resp, writer_emits_each_type_exactly)
{
    struct resp_out o = {0};
    cr_assert_eq(resp_put_simple(&o, "OK"), 0);
    cr_assert_eq(resp_put_error(&o, "ERR unknown command"), 0);
    cr_assert_eq(resp_put_int(&o, 42), 0);
    cr_assert_eq(resp_put_bulk(&o, "foo", 3), 0);
    cr_assert_eq(resp_put_bulk(&o, "", 0), 0);
    cr_assert_eq(resp_put_bulk(&o, NULL, 0), 0);
    cr_assert_eq(resp_put_bulk(&o, "a\0\r\nb", 5), 0);
    cr_assert_eq(resp_put_null(&o), 0);
    cr_assert_eq(resp_put_array(&o, 2), 0);
    cr_assert_eq(resp_put_array(&o, -1), 0);
    cr_assert_eq(resp_put_raw(&o, "+PONG\r\n", 7), 0);
    cr_assert_eq(resp_put_raw(&o, NULL, 0), 0);
    ASSERT_OUT(&o, "+OK\r\n-ERR unknown command\r\n:42\r\n$3\r\nfoo\r\n$0\r\n\r\n$0\r\n\r\n"
                   "$5\r\na\0\r\nb\r\n$-1\r\n*2\r\n*-1\r\n+PONG\r\n");
    resp_out_free(&o);
}

Test(resp, writer_formats_integer_extremes)
{
    struct resp_out o = {0};
    cr_assert_eq(resp_put_int(&o, LLONG_MIN), 0);
    ASSERT_OUT(&o, ":-9223372036854775808\r\n");
    o.len = 0;
    cr_assert_eq(resp_put_int(&o, LLONG_MAX), 0);
    ASSERT_OUT(&o, ":9223372036854775807\r\n");
    o.len = 0;
    cr_assert_eq(resp_put_int(&o, 0), 0);
    ASSERT_OUT(&o, ":0\r\n");
    o.len = 0;
    cr_assert_eq(resp_put_int(&o, -1), 0);
    ASSERT_OUT(&o, ":-1\r\n");
    o.len = 0;
    cr_assert_eq(resp_put_array(&o, LLONG_MIN), 0);
    ASSERT_OUT(&o, "*-9223372036854775808\r\n");
    resp_out_free(&o);
}

Test(resp, writer_integers_match_printf_around_every_power_of_ten)
{
    struct resp_out o = {0};
    char want[64];
    for (int e = 0; e <= 18; e++) {
        long long p = 1;
        for (int i = 0; i < e; i++)
            p *= 10;
        for (long long d = -2; d <= 2; d++) {
            long long vs[] = {p + d, -(p + d)};
            for (int s = 0; s < 2; s++) {
                o.len = 0;
                cr_assert_eq(resp_put_int(&o, vs[s]), 0);
                int n = snprintf(want, sizeof want, ":%lld\r\n", vs[s]);
                assert_out(&o, want, (size_t)n);
            }
        }
    }
    resp_out_free(&o);
}

Test(resp, writer_bulk_header_carries_the_payload_length)
{
    struct resp_out o = {0};
    size_t n = 123456;
    char *payload = malloc(n);
    cr_assert_not_null(payload);
    memset(payload, 'z', n);
    cr_assert_eq(resp_put_bulk(&o, payload, n), 0);
    cr_assert_eq(o.len, 9 + n + 2);
    cr_assert_eq(memcmp(o.p, "$123456\r\n", 9), 0);
    cr_assert_eq(memcmp(o.p + 9, payload, n), 0);
    cr_assert_eq(memcmp(o.p + 9 + n, "\r\n", 2), 0);
    free(payload);
    resp_out_free(&o);
}

Test(resp, writer_replaces_line_breaks_in_simple_strings_and_errors)
{
    struct resp_out o = {0};
    cr_assert_eq(resp_put_simple(&o, "a\r\nb\n"), 0);
    cr_assert_eq(resp_put_error(&o, "ERR x\ry"), 0);
    ASSERT_OUT(&o, "+a  b \r\n-ERR x y\r\n");
    resp_out_free(&o);
}

Test(resp, writer_grows_across_many_values_and_keeps_them_all)
{
    struct resp_out o = {0};
    struct resp_out want = {0};
    for (int i = 0; i < 20000; i++) {
        cr_assert_eq(resp_put_int(&o, (long long)i * 7919 - 50000), 0);
        char line[32];
        int n = snprintf(line, sizeof line, ":%lld\r\n", (long long)i * 7919 - 50000);
        cr_assert_eq(resp_put_raw(&want, line, (size_t)n), 0);
    }
    assert_out(&o, want.p, want.len);
    resp_out_free(&o);
    resp_out_free(&want);
}

Test(resp, formatted_text_goes_in_whole_however_long)
{
    struct resp_out o = {0};
    char big[3000];
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cr_assert_eq(resp_put_fmt(&o, "# A\r\nn:%d\r\n", 42), 0);
    cr_assert_eq(resp_put_fmt(&o, "long:%s\r\n", big), 0);
    cr_assert_eq(resp_put_fmt(&o, "%s", ""), 0);
    cr_assert_eq(o.len, 11 + 5 + sizeof(big) - 1 + 2, "nothing cut: %zu bytes", o.len);
    cr_assert_eq(memcmp(o.p, "# A\r\nn:42\r\nlong:kkk", 19), 0);
    cr_assert_eq(memcmp(o.p + o.len - 3, "k\r\n", 3), 0);
    resp_out_free(&o);
}

Test(resp, writer_failure_leaves_the_buffer_unchanged)
{
    struct resp_out o = {0};
    cr_assert_eq(resp_put_simple(&o, "OK"), 0);
    struct resp_out before = o;
    cr_assert_eq(resp_put_raw(&o, "x", SIZE_MAX), -ENOMEM);
    cr_assert_eq(resp_put_raw(&o, "x", (size_t)PTRDIFF_MAX), -ENOMEM);
    cr_assert_eq(resp_put_bulk(&o, "x", SIZE_MAX), -ENOMEM);
    cr_assert_eq(resp_put_bulk(&o, "x", (size_t)PTRDIFF_MAX - 8), -ENOMEM);
    cr_assert_eq(o.p, before.p);
    cr_assert_eq(o.len, before.len);
    cr_assert_eq(o.cap, before.cap);
    ASSERT_OUT(&o, "+OK\r\n");
    resp_out_free(&o);
}

Test(resp, out_free_releases_and_resets_and_ignores_null)
{
    struct resp_out o = {0};
    cr_assert_eq(resp_put_simple(&o, "OK"), 0);
    cr_assert_not_null(o.p);
    resp_out_free(&o);
    cr_assert_null(o.p);
    cr_assert_eq(o.len, 0);
    cr_assert_eq(o.cap, 0);
    resp_out_free(NULL);
    cr_assert_eq(resp_put_int(&o, 1), 0, "a freed buffer is reusable");
    ASSERT_OUT(&o, ":1\r\n");
    resp_out_free(&o);
}

Test(resp, written_array_of_bulks_parses_back_to_the_same_arguments)
{
    static const struct want_arg argv[] = {W("SET"), W("k\r\n"), W(""), W("\0\0\xff")};
    struct resp_out o = {0};
    cr_assert_eq(resp_put_array(&o, 4), 0);
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(resp_put_bulk(&o, argv[i].p, argv[i].n), 0);
    struct parsed p;
    parse(&p, o.p, o.len);
    cr_assert_eq(p.r, (ssize_t)o.len);
    cr_assert_eq(p.argc, 4);
    for (unsigned i = 0; i < 4; i++)
        assert_arg(&p, i, argv[i].p, argv[i].n);
    resp_out_free(&o);
}
