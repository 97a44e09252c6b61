/* The order protocol's framing, encoding and decoding (order.h). Offsets are counted from the
 * start of the frame, length prefix included; the field order is the header's table. */
#include "order.h"

#include <errno.h>
#include <string.h>

#include "be.h"

/* Where each field lies in a frame (the same in every type that has it). */
#define OFF_TYPE    2
#define OFF_ID      3
#define OFF_ACCOUNT 11
#define OFF_REASON  15 /* 'J' */
#define OFF_LOCATE  15 /* 'O', 'F' */
#define OFF_SIDE    17
#define OFF_QTY     18
#define OFF_PRICE   22
#define OFF_TICK    26 /* 'O' */
#define OFF_SEQ     26 /* 'F' */
#define OFF_RESERVE 34 /* 'O', 'F': zeros to the frame's end */

size_t order_frame_len(char type)
{
    switch (type) {
    case 'O':
        return ORDER_LEN_NEW;
    case 'A':
        return ORDER_LEN_ACCEPT;
    case 'J':
        return ORDER_LEN_REJECT;
    case 'F':
        return ORDER_LEN_FILL;
    default:
        return 0;
    }
}

ssize_t order_encode(const struct order_msg *m, uint8_t *buf, size_t cap)
{
    size_t len = order_frame_len(m->type);
    if (len == 0)
        return -EINVAL;
    if (cap < len)
        return -ENOSPC;
    put_be(buf, len - 2, 2);
    buf[OFF_TYPE] = (uint8_t)m->type;
    put_be(buf + OFF_ID, m->id, 8);
    put_be(buf + OFF_ACCOUNT, m->account, 4);
    switch (m->type) {
    case 'J':
        buf[OFF_REASON] = (uint8_t)m->reason;
        break;
    case 'O':
    case 'F':
        put_be(buf + OFF_LOCATE, m->locate, 2);
        buf[OFF_SIDE] = (uint8_t)m->side;
        put_be(buf + OFF_QTY, m->qty, 4);
        put_be(buf + OFF_PRICE, m->price, 4);
        put_be(buf + OFF_TICK, m->type == 'O' ? m->tick_ns : m->seq, 8);
        memset(buf + OFF_RESERVE, 0, len - OFF_RESERVE);
        break;
    default:
        break;
    }
    return (ssize_t)len;
}

int order_decode(const uint8_t *p, size_t n, struct order_msg *out, size_t *used)
{
    if (n < 3) {
        *used = 3;
        return -EAGAIN;
    }
    size_t len = order_frame_len((char)p[OFF_TYPE]);
    if (len == 0 || get_be(p, 2) != len - 2) {
        *used = 0;
        return -EBADMSG;
    }
    if (n < len) {
        *used = len;
        return -EAGAIN;
    }
    memset(out, 0, sizeof *out);
    out->type = (char)p[OFF_TYPE];
    out->id = get_be(p + OFF_ID, 8);
    out->account = (uint32_t)get_be(p + OFF_ACCOUNT, 4);
    switch (out->type) {
    case 'J':
        out->reason = (char)p[OFF_REASON];
        break;
    case 'O':
    case 'F':
        out->locate = (uint16_t)get_be(p + OFF_LOCATE, 2);
        out->side = (char)p[OFF_SIDE];
        out->qty = (uint32_t)get_be(p + OFF_QTY, 4);
        out->price = (uint32_t)get_be(p + OFF_PRICE, 4);
        if (out->type == 'O')
            out->tick_ns = get_be(p + OFF_TICK, 8);
        else
            out->seq = get_be(p + OFF_SEQ, 8);
        break;
    default:
        break;
    }
    *used = len;
    return 0;
}
