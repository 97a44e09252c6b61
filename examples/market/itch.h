/* NASDAQ TotalView-ITCH 5.0 codec for the messages the market example uses, each behind the
 * 2-byte big-endian length of Nasdaq's binary files. No I/O and no engine: bytes in, structs out.
 */
#ifndef MARKET_ITCH_H
#define MARKET_ITCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Lengths without the 2-byte prefix, as ITCH 5.0 gives them. */
#define ITCH_LEN_SYSTEM_EVENT    12
#define ITCH_LEN_STOCK_DIRECTORY 39
#define ITCH_LEN_ADD             36
#define ITCH_LEN_ADD_MPID        40
#define ITCH_LEN_EXECUTED        31
#define ITCH_LEN_EXECUTED_PRICE  36
#define ITCH_LEN_CANCEL          23
#define ITCH_LEN_DELETE          19
#define ITCH_LEN_REPLACE         35
#define ITCH_LEN_TRADE           44

/* The longest message this codec writes, with its length prefix. */
#define ITCH_MAX_FRAME (2 + ITCH_LEN_TRADE)

/* Timestamps are 6 bytes: nanoseconds since midnight, below 2^48. */
#define ITCH_TIMESTAMP_MAX ((UINT64_C(1) << 48) - 1)

/* One decoded message. The common header is always set; of the union, the member named for
 * the type: 'S' system, 'R' directory, 'A' and 'F' add (mpid only for 'F'), 'E' and 'C'
 * executed (printable and price only for 'C'), 'X' cancel, 'D' del, 'U' replace, 'P' trade.
 * Stock names and MPIDs are the wire's bytes, space padded, not NUL terminated. Prices are
 * ITCH's 4-decimal fixed point (1 dollar is 10000). */
struct itch_msg {
    char type;
    uint16_t locate;
    uint16_t tracking;
    uint64_t timestamp;
    union {
        struct {
            char event_code;
        } system;
        struct {
            char stock[8];
            char market_category;
            char financial_status;
            uint32_t round_lot_size;
            char round_lots_only;
            char issue_classification;
            char issue_subtype[2];
            char authenticity;
            char short_sale_threshold;
            char ipo_flag;
            char luld_tier;
            char etp_flag;
            uint32_t etp_leverage;
            char inverse;
        } directory;
        struct {
            uint64_t ref;
            char side; /* 'B' or 'S' */
            uint32_t shares;
            char stock[8];
            uint32_t price;
            char mpid[4];
        } add;
        struct {
            uint64_t ref;
            uint32_t shares;
            uint64_t match;
            char printable;
            uint32_t price;
        } executed;
        struct {
            uint64_t ref;
            uint32_t shares;
        } cancel;
        struct {
            uint64_t ref;
        } del;
        struct {
            uint64_t ref;
            uint64_t new_ref;
            uint32_t shares;
            uint32_t price;
        } replace;
        struct {
            uint64_t ref;
            char side;
            uint32_t shares;
            char stock[8];
            uint32_t price;
            uint64_t match;
        } trade;
    };
};

/* The length (without prefix) ITCH 5.0 gives a type this codec knows, or 0 for any other. */
size_t itch_msg_len(char type);

/* Decodes the message at p[0..n), prefix first, into *out. Returns 0 with *used the bytes
 * taken (prefix included), or:
 *   -EAGAIN   truncated: n is too short; *used is the bytes needed, 2 while the length itself
 *             is incomplete, else 2 + the length; nothing was decoded
 *   -EBADMSG  the length is 0, or is not the one ITCH 5.0 gives the (known) type; *used is 0:
 *             the stream cannot be trusted from here
 *   -ENOMSG   a complete message of a type this codec does not know; *used is its size with
 *             the prefix, so the caller can skip it; out->type is its type
 * Reads at most n bytes whatever p holds. */
int itch_decode(const uint8_t *p, size_t n, struct itch_msg *out, size_t *used);

/* Writes m with its length prefix to buf[0..cap). Returns the bytes written, or -EINVAL for a
 * type this codec does not know or a timestamp past 48 bits, -ENOSPC when cap is too small
 * (nothing written). */
ssize_t itch_encode(const struct itch_msg *m, uint8_t *buf, size_t cap);

/* What itch_read saw. offset is where it stopped: n after a whole buffer, else the start of
 * the message that stopped it. */
struct itch_read_stats {
    uint64_t messages; /* decoded and given to the visitor */
    uint64_t skipped;  /* complete messages of unknown types */
    size_t offset;
};

/* Called with each decoded message and its offset in the buffer; nonzero stops the walk. */
typedef int (*itch_visit_fn)(const struct itch_msg *m, size_t offset, void *arg);

/* Walks p[0..n), a file's worth of framed messages, giving each known message to visit (which
 * may be NULL) and skipping unknown types. Returns 0 when it reached n exactly, -EAGAIN when
 * the buffer ends inside a message, -EBADMSG at a corrupt length, or the visitor's nonzero
 * value; st->offset says where. st may be NULL. */
int itch_read(const uint8_t *p, size_t n, itch_visit_fn visit, void *arg,
              struct itch_read_stats *st);

/* A short English name for the codes above ("truncated", "bad length for the type", ...). */
const char *itch_strerror(int err);

#endif
