/* The order protocol between pith-market's gateway and pith-exchange: fixed-size binary frames
 * over TCP, big-endian as OUCH's are. Each frame is a 2-byte length (of what follows it), a
 * 1-byte type and the type's fields; the lengths are fixed per type, so a reader checks the
 * length before it trusts a field.
 *
 *   'O' new order   client -> exchange   id, account, locate, side, qty, price, tick time
 *   'A' accepted    exchange -> client   id, account
 *   'J' rejected    exchange -> client   id, account, reason
 *   'F' fill        exchange -> client   id, account, locate, side, qty, price, fill seq
 *
 * No I/O and no engine here: bytes in, structs out. */
#ifndef MARKET_ORDER_H
#define MARKET_ORDER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Frame lengths with the 2-byte prefix. */
#define ORDER_LEN_NEW    36 /* 2 + 1 + 8 + 4 + 2 + 1 + 4 + 4 + 8 + 2 reserved */
#define ORDER_LEN_ACCEPT 15 /* 2 + 1 + 8 + 4 */
#define ORDER_LEN_REJECT 16 /* 2 + 1 + 8 + 4 + 1 */
#define ORDER_LEN_FILL   40 /* 2 + 1 + 8 + 4 + 2 + 1 + 4 + 4 + 8 + 6 reserved */
#define ORDER_MAX_FRAME  40

/* Reject reasons ('J'). */
#define ORDER_REJ_QTY     'Q' /* quantity 0 or above the exchange's limit */
#define ORDER_REJ_PRICE   'P' /* price 0 */
#define ORDER_REJ_SIDE    'S' /* side neither 'B' nor 'S' */
#define ORDER_REJ_SYMBOL  'L' /* locate 0 */
#define ORDER_REJ_ACCOUNT 'A' /* account past the exchange's table (1024 accounts) */
#define ORDER_REJ_HALTED  'H' /* the exchange refuses this order by its test switch */

/* One decoded frame. Which fields mean something depends on type (see above). */
struct order_msg {
    char type;        /* 'O', 'A', 'J', 'F' */
    char side;        /* 'B' or 'S' ('O', 'F') */
    char reason;      /* ORDER_REJ_* ('J') */
    uint16_t locate;  /* the instrument's ITCH stock locate ('O', 'F') */
    uint32_t account; /* ('O', 'A', 'J', 'F') */
    uint32_t qty;     /* shares ('O', 'F') */
    uint32_t price;   /* ITCH's 4-decimal fixed point ('O', 'F') */
    uint64_t id;      /* the client's order id (every type) */
    uint64_t tick_ns; /* 'O': the scheduled time of the tick that caused it, carried back
                         nowhere: for the exchange's own latency view; 0 when unknown */
    uint64_t seq;     /* 'F': the exchange's fill number for this account, from 1, no gaps */
};

/* The frame length (prefix included) of a type, 0 for an unknown type. */
size_t order_frame_len(char type);

/* Writes m as a frame to buf[0..cap). Returns its length, -EINVAL for an unknown type,
 * -ENOSPC when cap is too small (nothing written). */
ssize_t order_encode(const struct order_msg *m, uint8_t *buf, size_t cap);

/* Decodes the frame at p[0..n). Returns 0 with *used its length, or:
 *   -EAGAIN   n is too short; *used is the bytes needed (3 while the header is incomplete)
 *   -EBADMSG  the length is not the one its type has, or the type is unknown; *used is 0:
 *             the stream cannot be trusted from here (the reader closes the connection) */
int order_decode(const uint8_t *p, size_t n, struct order_msg *out, size_t *used);

#endif
