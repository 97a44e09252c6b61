/* pith-kv's RESP2 wire format: a request parser (arrays of bulk strings and inline commands) and
 * a growable reply writer. No I/O and no command semantics: the server owns both. */
#ifndef PITH_KV_RESP_H
#define PITH_KV_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The longest inline command line (its bytes before the '\n', a '\r' included) and the longest
 * `*` or `$` header line (its bytes before the "\r\n"). The fuzz build lowers it so that
 * libFuzzer's short inputs reach it. */
#ifndef RESP_MAX_INLINE
#define RESP_MAX_INLINE (64 * 1024)
#endif

/* What resp_parse accepts: bulk strings of at most max_bulk bytes, commands of at most max_args
 * arguments (Redis's proto-max-bulk-len and its multibulk cap: 512 MiB and 1024 * 1024). */
struct resp_limits {
    size_t max_bulk;
    unsigned max_args;
};

/* One argument of a parsed command: len bytes at p (not NUL-terminated; may hold any byte). */
struct resp_arg {
    const char *p;
    size_t len;
};

/* Parses the one command at the start of buf[0..len), with limits lim (NULL: 512 MiB and
 * 1024 * 1024). A request is a RESP array of bulk strings ("*N\r\n$L\r\n<L bytes>\r\n..."), or,
 * when buf does not start with '*', an inline command: one line ending in "\n" or "\r\n", split
 * on blanks, with "double-quoted" (escapes \" \\ \n \r \t \b \a \xHH) and 'single-quoted'
 * (escape \') arguments as redis-cli and Redis's sdssplitargs take them.
 *
 * Returns
 *  > 0: the command spans that many bytes. args[0..*argc) describe its arguments; *argc may be 0
 *       (an empty inline line, "*0" or "*-1"), which the caller consumes and skips. Arguments
 *       point into buf, except an inline argument whose quoted form needs decoding (an escape,
 *       or quotes in the middle of a word): that one points into a per-thread scratch area, good
 *       until this thread's next resp_parse call. Either way, use them before parsing again.
 *  0:   incomplete: call again with more bytes after the same prefix. The cost of a call is
 *       O(arguments), not O(bytes): payloads whose length is known are skipped, never scanned,
 *       so the caller may re-offer its whole unconsumed buffer after every read.
 *  < 0: -EPROTO (malformed) or -E2BIG (over a limit: max_bulk, max_args, cap arguments, or
 *       RESP_MAX_INLINE bytes of line). *err points to a static message fit for an error reply
 *       ("ERR Protocol error: ..."); the server replies with it and closes the connection, as
 *       Redis does. The result for a prefix of a stream, when not 0, is the result for the
 *       whole stream: nothing after the bytes examined changes it.
 * At most cap arguments are written to args; a command with more is -E2BIG. *argc is 0 unless
 * the result is > 0; *err is written only when it is < 0. Any thread; keeps no state between
 * calls but the scratch area above. */
ssize_t resp_parse(const char *buf, size_t len, const struct resp_limits *lim,
                   struct resp_arg *args, unsigned cap, unsigned *argc, const char **err);

/* Redis's string2ll: n bytes at p that are an optional '-', then "0" or digits without a
 * leading zero, nothing else, within long long's range ("-0" is not). True and *out set, or
 * false. The "*N" and "$L" headers are read with it; commands read their integers with it. */
bool resp_parse_ll(const char *p, size_t n, long long *out);

/* A growing reply buffer: len bytes at p are ready to send; cap is the allocation's size.
 * Zero-initialise it before the first write; resp_out_free releases it. Owned by its caller;
 * not safe to share between threads without a lock. */
struct resp_out {
    char *p;
    size_t len, cap;
};

/* Each writer appends one RESP2 value and returns 0, or -ENOMEM (allocation failed, or the size
 * would not fit in memory) leaving o unchanged. A '\r' or '\n' in a simple string or error
 * message becomes ' ', as Redis does for errors, so that no text can end the line early. */
int resp_put_simple(struct resp_out *o, const char *s);         /* +s\r\n */
int resp_put_error(struct resp_out *o, const char *msg);        /* -msg\r\n */
int resp_put_int(struct resp_out *o, long long v);              /* :v\r\n */
int resp_put_bulk(struct resp_out *o, const void *p, size_t n); /* $n\r\n<n bytes>\r\n */
int resp_put_null(struct resp_out *o);                          /* $-1\r\n */
int resp_put_array(struct resp_out *o, long long n);            /* *n\r\n (then n values) */
int resp_put_raw(struct resp_out *o, const void *p, size_t n);  /* n bytes as they are */
/* printf-style text as it is, however long (INFO's lines): -EINVAL a format error. */
__attribute__((format(printf, 2, 3))) int resp_put_fmt(struct resp_out *o, const char *fmt, ...);

/* Frees o's buffer and zeroes it, ready for reuse. NULL is a no-op. */
void resp_out_free(struct resp_out *o);

#endif
