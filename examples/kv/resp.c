/* RESP2 request parsing and reply writing for pith-kv (resp.h). The parser is stateless: it
 * re-walks the headers of a partial command on every call and jumps over known payloads. */
#include "resp.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

/* Redis's own wording where Redis has one, so that clients see the errors they know. */
#define MSG_BAD_MBULK  "ERR Protocol error: invalid multibulk length"
#define MSG_BAD_BULK   "ERR Protocol error: invalid bulk length"
#define MSG_BIG_MBULK  "ERR Protocol error: too big mbulk count string"
#define MSG_BIG_BULK   "ERR Protocol error: too big bulk count string"
#define MSG_BIG_INLINE "ERR Protocol error: too big inline request"
/* Reply buffers: from the shard's heap in pith-kv (built with RESP_PITH_ALLOC), so that they
 * count against the shard's memory cap; plain malloc for the parser's tests and fuzz target,
 * which run without an engine. */
#ifdef RESP_PITH_ALLOC
#include <pith/mem.h>
#define resp_realloc pith_realloc
#define resp_free    pith_free
#else
#define resp_realloc realloc
#define resp_free    free
#endif

#define MSG_NO_DOLLAR  "ERR Protocol error: expected '$', got '%c'"
#define MSG_NO_CRLF    "ERR Protocol error: expected CRLF after bulk data"
#define MSG_TOO_MANY   "ERR Protocol error: too many arguments in request"
#define MSG_UNBALANCED "ERR Protocol error: unbalanced quotes in request"

/* Redis names the byte it found instead of '$'; one message per byte value, made once before
 * main, so that *err stays a static string. A '\r' or '\n' shows as ' ' once the reply writer
 * has cleaned the line, as in Redis; a NUL ends the text early (Redis sends the byte). */
static char no_dollar[256][sizeof(MSG_NO_DOLLAR)];

__attribute__((constructor)) static void no_dollar_init(void)
{
    for (int c = 0; c < 256; c++)
        snprintf(no_dollar[c], sizeof(no_dollar[c]), MSG_NO_DOLLAR, c);
}

static const struct resp_limits default_limits = {
    .max_bulk = 512u * 1024 * 1024,
    .max_args = 1024 * 1024,
};

/* Where inline arguments that need decoding are assembled. A line holds at most
 * RESP_MAX_INLINE bytes and no argument decodes to more bytes than it spans, so one line's
 * arguments always fit. */
static _Thread_local char scratch[RESP_MAX_INLINE];

static ssize_t fail(const char **err, int code, const char *msg)
{
    if (err != NULL)
        *err = msg;
    return -code;
}

bool resp_parse_ll(const char *p, size_t n, long long *out)
{
    if (n == 1 && p[0] == '0') {
        *out = 0;
        return true;
    }
    size_t i = 0;
    bool neg = n > 0 && p[0] == '-';
    if (neg)
        i = 1;
    /* 19 digits hold every long long; anything longer overflows or is malformed. */
    if (i == n || n - i > 19 || p[i] < '1' || p[i] > '9')
        return false;
    unsigned long long v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)p[i] - '0';
        if (d > 9)
            return false;
        v = v * 10 + d; /* 19 digits cannot wrap an unsigned 64-bit value */
    }
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return false;
        *out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return false;
        *out = (long long)v;
    }
    return true;
}

/* Reads the "*N\r\n" or "$L\r\n" line at buf[*pos] into *val and moves *pos past it. Returns 1,
 * 0 while its "\r\n" has not arrived, or < 0. Looks at most RESP_MAX_INLINE + 2 bytes, so that
 * a header never makes the parser scan a payload. */
static ssize_t read_header(const char *buf, size_t len, size_t *pos, long long *val,
                           const char *too_big, const char *invalid, const char **err)
{
    size_t avail = len - *pos;
    size_t window = avail < (size_t)RESP_MAX_INLINE + 1 ? avail : (size_t)RESP_MAX_INLINE + 1;
    const char *line = buf + *pos;
    const char *cr = memchr(line, '\r', window);
    if (cr == NULL)
        return avail > RESP_MAX_INLINE ? fail(err, E2BIG, too_big) : 0;
    size_t n = (size_t)(cr - line);
    if (n + 1 == avail)
        return 0;
    if (cr[1] != '\n' || !resp_parse_ll(line + 1, n - 1, val))
        return fail(err, EPROTO, invalid);
    *pos += n + 2;
    return 1;
}

static ssize_t parse_array(const char *buf, size_t len, const struct resp_limits *lim,
                           struct resp_arg *args, unsigned cap, unsigned *argc, const char **err)
{
    size_t pos = 0;
    long long count;
    ssize_t r = read_header(buf, len, &pos, &count, MSG_BIG_MBULK, MSG_BAD_MBULK, err);
    if (r <= 0)
        return r;
    /* Redis takes any count <= 0 as an empty command. */
    if (count <= 0)
        return (ssize_t)pos;
    if ((unsigned long long)count > lim->max_args)
        return fail(err, E2BIG, MSG_BAD_MBULK);
    if ((unsigned long long)count > cap)
        return fail(err, E2BIG, MSG_TOO_MANY);

    for (unsigned i = 0; i < (unsigned)count; i++) {
        if (pos == len)
            return 0;
        if (buf[pos] != '$')
            return fail(err, EPROTO, no_dollar[(unsigned char)buf[pos]]);
        long long n;
        r = read_header(buf, len, &pos, &n, MSG_BIG_BULK, MSG_BAD_BULK, err);
        if (r <= 0)
            return r;
        if (n < 0)
            return fail(err, EPROTO, MSG_BAD_BULK);
        if ((unsigned long long)n > lim->max_bulk)
            return fail(err, E2BIG, MSG_BAD_BULK);
        size_t avail = len - pos;
        if (avail < 2 || avail - 2 < (unsigned long long)n)
            return 0;
        if (buf[pos + (size_t)n] != '\r' || buf[pos + (size_t)n + 1] != '\n')
            return fail(err, EPROTO, MSG_NO_CRLF);
        args[i].p = buf + pos;
        args[i].len = (size_t)n;
        pos += (size_t)n + 2;
    }
    *argc = (unsigned)count;
    return (ssize_t)pos;
}

/* isspace in the C locale: what sdssplitargs skips between arguments. */
static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* What ends an unquoted argument in sdssplitargs (it also stops at NUL; here NUL is a byte). */
static bool ends_word(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* An argument being decoded. It stays a view of buf while its bytes are buf's bytes in order;
 * the first escape or skipped quote moves it to the scratch area at *spare. */
struct word {
    const char *p;
    size_t len;
    bool copied;
};

static void word_take(struct word *w, const char *src, char *spare)
{
    if (!w->copied && (w->len == 0 || w->p + w->len == src)) {
        if (w->len == 0)
            w->p = src;
        w->len++;
        return;
    }
    if (!w->copied) {
        memcpy(spare, w->p, w->len);
        w->p = spare;
        w->copied = true;
    }
    spare[w->len++] = *src;
}

static void word_put(struct word *w, char c, char *spare)
{
    if (!w->copied) {
        memcpy(spare, w->p, w->len);
        w->p = spare;
        w->copied = true;
    }
    spare[w->len++] = c;
}

/* Splits line[0..end) as sdssplitargs does. */
static ssize_t split_line(const char *line, size_t end, unsigned limit, struct resp_arg *args,
                          unsigned *argc, const char **err)
{
    char *spare = scratch;
    unsigned n = 0;
    size_t i = 0;
    for (;;) {
        while (i < end && is_blank(line[i]))
            i++;
        if (i == end)
            break;
        if (n == limit)
            return fail(err, E2BIG, MSG_TOO_MANY);

        struct word w = {line + i, 0, false};
        enum { PLAIN, DOUBLE, SINGLE } mode = PLAIN;
        bool done = false;
        while (!done) {
            if (i == end) {
                if (mode != PLAIN)
                    return fail(err, EPROTO, MSG_UNBALANCED);
                break;
            }
            char c = line[i];
            if (mode == PLAIN) {
                if (ends_word(c))
                    done = true;
                else if (c == '"')
                    mode = DOUBLE;
                else if (c == '\'')
                    mode = SINGLE;
                else
                    word_take(&w, line + i, spare);
                i++;
            } else if (c == (mode == DOUBLE ? '"' : '\'')) {
                /* A closing quote must end the argument. */
                if (i + 1 < end && !is_blank(line[i + 1]))
                    return fail(err, EPROTO, MSG_UNBALANCED);
                done = true;
                i++;
            } else if (c == '\\' && mode == SINGLE) {
                if (i + 1 < end && line[i + 1] == '\'') {
                    word_take(&w, line + i + 1, spare);
                    i += 2;
                } else {
                    word_take(&w, line + i, spare);
                    i++;
                }
            } else if (c == '\\' && i + 3 < end && line[i + 1] == 'x' &&
                       hex_value(line[i + 2]) >= 0 && hex_value(line[i + 3]) >= 0) {
                word_put(&w, (char)(hex_value(line[i + 2]) * 16 + hex_value(line[i + 3])), spare);
                i += 4;
            } else if (c == '\\' && i + 1 < end) {
                char e = line[i + 1];
                switch (e) {
                case 'n':
                    e = '\n';
                    break;
                case 'r':
                    e = '\r';
                    break;
                case 't':
                    e = '\t';
                    break;
                case 'b':
                    e = '\b';
                    break;
                case 'a':
                    e = '\a';
                    break;
                default:
                    break;
                }
                word_put(&w, e, spare);
                i += 2;
            } else {
                word_take(&w, line + i, spare);
                i++;
            }
        }
        if (w.copied)
            spare += w.len;
        args[n].p = w.p;
        args[n].len = w.len;
        n++;
    }
    *argc = n;
    return 0;
}

static ssize_t parse_inline(const char *buf, size_t len, const struct resp_limits *lim,
                            struct resp_arg *args, unsigned cap, unsigned *argc, const char **err)
{
    size_t window = len < (size_t)RESP_MAX_INLINE + 1 ? len : (size_t)RESP_MAX_INLINE + 1;
    const char *nl = memchr(buf, '\n', window);
    if (nl == NULL)
        return len > RESP_MAX_INLINE ? fail(err, E2BIG, MSG_BIG_INLINE) : 0;
    size_t n = (size_t)(nl - buf);
    size_t end = n > 0 && buf[n - 1] == '\r' ? n - 1 : n;
    unsigned limit = cap < lim->max_args ? cap : lim->max_args;
    ssize_t r = split_line(buf, end, limit, args, argc, err);
    if (r < 0) {
        *argc = 0;
        return r;
    }
    return (ssize_t)(n + 1);
}

ssize_t resp_parse(const char *buf, size_t len, const struct resp_limits *lim,
                   struct resp_arg *args, unsigned cap, unsigned *argc, const char **err)
{
    *argc = 0;
    if (len == 0)
        return 0;
    if (lim == NULL)
        lim = &default_limits;
    if (buf[0] == '*')
        return parse_array(buf, len, lim, args, cap, argc, err);
    return parse_inline(buf, len, lim, args, cap, argc, err);
}

/* Makes room for n more bytes; 0 or -ENOMEM with o unchanged. No object may exceed
 * PTRDIFF_MAX bytes, so larger sizes fail here rather than in the allocator (which under ASan
 * would abort instead of returning NULL). */
static int reserve(struct resp_out *o, size_t n)
{
    if (o->cap - o->len >= n)
        return 0;
    if (n > (size_t)PTRDIFF_MAX - o->len)
        return -ENOMEM;
    /* Doubling, for replies that grow a little at a time; but one append past twice the room
     * gets just what it needs (a 2 MiB value in a new buffer took 4 MiB). */
    size_t need = o->len + n;
    size_t cap = o->cap > 0 ? o->cap : 256;
    cap = cap > (size_t)PTRDIFF_MAX / 2 || cap * 2 < need ? need : cap * 2;
    char *p = resp_realloc(o->p, cap);
    if (p == NULL)
        return -ENOMEM;
    o->p = p;
    o->cap = cap;
    return 0;
}

static const char digit_pairs[201] = "00010203040506070809101112131415161718192021222324"
                                     "25262728293031323334353637383940414243444546474849"
                                     "50515253545556575859606162636465666768697071727374"
                                     "75767778798081828384858687888990919293949596979899";

/* Writes u's decimal digits so that they end just before end; returns where they start. */
static char *put_digits(char *end, unsigned long long u)
{
    char *p = end;
    while (u >= 100) {
        unsigned i = (unsigned)(u % 100) * 2;
        u /= 100;
        *--p = digit_pairs[i + 1];
        *--p = digit_pairs[i];
    }
    if (u >= 10) {
        unsigned i = (unsigned)u * 2;
        *--p = digit_pairs[i + 1];
        *--p = digit_pairs[i];
    } else {
        *--p = (char)('0' + u);
    }
    return p;
}

/* Formats "<type><v>\r\n" so that it ends at end; returns where it starts. */
static char *format_line(char *end, char type, bool negative, unsigned long long magnitude)
{
    end[-2] = '\r';
    end[-1] = '\n';
    char *p = put_digits(end - 2, magnitude);
    if (negative)
        *--p = '-';
    *--p = type;
    return p;
}

/* Long enough for a type byte, a sign, 20 digits and "\r\n". */
#define LINE_MAX_BYTES 24

static int put_number(struct resp_out *o, char type, long long v)
{
    char tmp[LINE_MAX_BYTES];
    /* Negated in unsigned arithmetic, so LLONG_MIN has a magnitude too. */
    unsigned long long magnitude = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    char *p = format_line(tmp + sizeof tmp, type, v < 0, magnitude);
    size_t n = (size_t)(tmp + sizeof tmp - p);
    if (reserve(o, n) != 0)
        return -ENOMEM;
    memcpy(o->p + o->len, p, n);
    o->len += n;
    return 0;
}

static int put_line(struct resp_out *o, char type, const char *s)
{
    size_t n = strlen(s);
    if (reserve(o, n + 3) != 0)
        return -ENOMEM;
    char *w = o->p + o->len;
    w[0] = type;
    memcpy(w + 1, s, n);
    for (const char *q = strpbrk(s, "\r\n"); q != NULL; q = strpbrk(q + 1, "\r\n"))
        w[1 + (q - s)] = ' ';
    w[n + 1] = '\r';
    w[n + 2] = '\n';
    o->len += n + 3;
    return 0;
}

int resp_put_simple(struct resp_out *o, const char *s)
{
    return put_line(o, '+', s);
}

int resp_put_error(struct resp_out *o, const char *msg)
{
    return put_line(o, '-', msg);
}

int resp_put_int(struct resp_out *o, long long v)
{
    return put_number(o, ':', v);
}

int resp_put_array(struct resp_out *o, long long n)
{
    return put_number(o, '*', n);
}

int resp_put_null(struct resp_out *o)
{
    return resp_put_raw(o, "$-1\r\n", 5);
}

int resp_put_bulk(struct resp_out *o, const void *p, size_t n)
{
    char tmp[LINE_MAX_BYTES];
    char *h = format_line(tmp + sizeof tmp, '$', false, n);
    size_t hn = (size_t)(tmp + sizeof tmp - h);
    if (n > (size_t)PTRDIFF_MAX - hn - 2 || reserve(o, hn + n + 2) != 0)
        return -ENOMEM;
    char *w = o->p + o->len;
    memcpy(w, h, hn);
    if (n > 0)
        memcpy(w + hn, p, n);
    w[hn + n] = '\r';
    w[hn + n + 1] = '\n';
    o->len += hn + n + 2;
    return 0;
}

int resp_put_raw(struct resp_out *o, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (reserve(o, n) != 0)
        return -ENOMEM;
    memcpy(o->p + o->len, p, n);
    o->len += n;
    return 0;
}

int resp_put_fmt(struct resp_out *o, const char *fmt, ...)
{
    /* Measured first, then written in place: no line is cut, and nothing is copied twice. */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return n < 0 ? -EINVAL : 0;
    if (reserve(o, (size_t)n + 1) != 0) /* vsnprintf writes a NUL after the text */
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(o->p + o->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    o->len += (size_t)n;
    return 0;
}

void resp_out_free(struct resp_out *o)
{
    if (o == NULL)
        return;
    resp_free(o->p);
    o->p = NULL;
    o->len = 0;
    o->cap = 0;
}
