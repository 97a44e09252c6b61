/* ITCH 5.0 framing, decoding and encoding (itch.h). Offsets are the spec's, counted from the
 * type byte; the 2-byte length prefix is handled around them. */
#include "itch.h"

#include <errno.h>
#include <string.h>

#include "be.h"

/* The common header: type, stock locate, tracking number, timestamp. */
#define HDR 11

size_t itch_msg_len(char type)
{
    switch (type) {
    case 'S':
        return ITCH_LEN_SYSTEM_EVENT;
    case 'R':
        return ITCH_LEN_STOCK_DIRECTORY;
    case 'A':
        return ITCH_LEN_ADD;
    case 'F':
        return ITCH_LEN_ADD_MPID;
    case 'E':
        return ITCH_LEN_EXECUTED;
    case 'C':
        return ITCH_LEN_EXECUTED_PRICE;
    case 'X':
        return ITCH_LEN_CANCEL;
    case 'D':
        return ITCH_LEN_DELETE;
    case 'U':
        return ITCH_LEN_REPLACE;
    case 'P':
        return ITCH_LEN_TRADE;
    default:
        return 0;
    }
}

/* Fills m's fields from the message body q, whose length the caller has checked. */
static void decode_body(const uint8_t *q, struct itch_msg *m)
{
    m->type = (char)q[0];
    m->locate = (uint16_t)get_be(q + 1, 2);
    m->tracking = (uint16_t)get_be(q + 3, 2);
    m->timestamp = get_be(q + 5, 6);
    switch (m->type) {
    case 'S':
        m->system.event_code = (char)q[11];
        break;
    case 'R':
        memcpy(m->directory.stock, q + 11, 8);
        m->directory.market_category = (char)q[19];
        m->directory.financial_status = (char)q[20];
        m->directory.round_lot_size = (uint32_t)get_be(q + 21, 4);
        m->directory.round_lots_only = (char)q[25];
        m->directory.issue_classification = (char)q[26];
        memcpy(m->directory.issue_subtype, q + 27, 2);
        m->directory.authenticity = (char)q[29];
        m->directory.short_sale_threshold = (char)q[30];
        m->directory.ipo_flag = (char)q[31];
        m->directory.luld_tier = (char)q[32];
        m->directory.etp_flag = (char)q[33];
        m->directory.etp_leverage = (uint32_t)get_be(q + 34, 4);
        m->directory.inverse = (char)q[38];
        break;
    case 'A':
    case 'F':
        m->add.ref = get_be(q + 11, 8);
        m->add.side = (char)q[19];
        m->add.shares = (uint32_t)get_be(q + 20, 4);
        memcpy(m->add.stock, q + 24, 8);
        m->add.price = (uint32_t)get_be(q + 32, 4);
        if (m->type == 'F')
            memcpy(m->add.mpid, q + 36, 4);
        else
            memset(m->add.mpid, ' ', 4);
        break;
    case 'E':
    case 'C':
        m->executed.ref = get_be(q + 11, 8);
        m->executed.shares = (uint32_t)get_be(q + 19, 4);
        m->executed.match = get_be(q + 23, 8);
        if (m->type == 'C') {
            m->executed.printable = (char)q[31];
            m->executed.price = (uint32_t)get_be(q + 32, 4);
        } else {
            m->executed.printable = 'Y';
            m->executed.price = 0;
        }
        break;
    case 'X':
        m->cancel.ref = get_be(q + 11, 8);
        m->cancel.shares = (uint32_t)get_be(q + 19, 4);
        break;
    case 'D':
        m->del.ref = get_be(q + 11, 8);
        break;
    case 'U':
        m->replace.ref = get_be(q + 11, 8);
        m->replace.new_ref = get_be(q + 19, 8);
        m->replace.shares = (uint32_t)get_be(q + 27, 4);
        m->replace.price = (uint32_t)get_be(q + 31, 4);
        break;
    case 'P':
        m->trade.ref = get_be(q + 11, 8);
        m->trade.side = (char)q[19];
        m->trade.shares = (uint32_t)get_be(q + 20, 4);
        memcpy(m->trade.stock, q + 24, 8);
        m->trade.price = (uint32_t)get_be(q + 32, 4);
        m->trade.match = get_be(q + 36, 8);
        break;
    }
}

int itch_decode(const uint8_t *p, size_t n, struct itch_msg *out, size_t *used)
{
    if (n < 2) {
        *used = 2;
        return -EAGAIN;
    }
    size_t len = (size_t)get_be(p, 2);
    if (len == 0) {
        *used = 0;
        return -EBADMSG;
    }
    if (n < 3) {
        *used = 2 + len;
        return -EAGAIN;
    }
    /* The type comes before the rest of the body, so a wrong length is reported as soon as
     * it can be, rather than after waiting for bytes that may never make sense. */
    char type = (char)p[2];
    size_t want = itch_msg_len(type);
    if (want != 0 && len != want) {
        *used = 0;
        return -EBADMSG;
    }
    if (n - 2 < len) {
        *used = 2 + len;
        return -EAGAIN;
    }
    *used = 2 + len;
    if (want == 0) {
        memset(out, 0, sizeof *out);
        out->type = type;
        return -ENOMSG;
    }
    decode_body(p + 2, out);
    return 0;
}

ssize_t itch_encode(const struct itch_msg *m, uint8_t *buf, size_t cap)
{
    size_t len = itch_msg_len(m->type);
    if (len == 0 || m->timestamp > ITCH_TIMESTAMP_MAX)
        return -EINVAL;
    if (cap < 2 + len)
        return -ENOSPC;
    put_be(buf, len, 2);
    uint8_t *q = buf + 2;
    q[0] = (uint8_t)m->type;
    put_be(q + 1, m->locate, 2);
    put_be(q + 3, m->tracking, 2);
    put_be(q + 5, m->timestamp, 6);
    switch (m->type) {
    case 'S':
        q[11] = (uint8_t)m->system.event_code;
        break;
    case 'R':
        memcpy(q + 11, m->directory.stock, 8);
        q[19] = (uint8_t)m->directory.market_category;
        q[20] = (uint8_t)m->directory.financial_status;
        put_be(q + 21, m->directory.round_lot_size, 4);
        q[25] = (uint8_t)m->directory.round_lots_only;
        q[26] = (uint8_t)m->directory.issue_classification;
        memcpy(q + 27, m->directory.issue_subtype, 2);
        q[29] = (uint8_t)m->directory.authenticity;
        q[30] = (uint8_t)m->directory.short_sale_threshold;
        q[31] = (uint8_t)m->directory.ipo_flag;
        q[32] = (uint8_t)m->directory.luld_tier;
        q[33] = (uint8_t)m->directory.etp_flag;
        put_be(q + 34, m->directory.etp_leverage, 4);
        q[38] = (uint8_t)m->directory.inverse;
        break;
    case 'A':
    case 'F':
        put_be(q + 11, m->add.ref, 8);
        q[19] = (uint8_t)m->add.side;
        put_be(q + 20, m->add.shares, 4);
        memcpy(q + 24, m->add.stock, 8);
        put_be(q + 32, m->add.price, 4);
        if (m->type == 'F')
            memcpy(q + 36, m->add.mpid, 4);
        break;
    case 'E':
    case 'C':
        put_be(q + 11, m->executed.ref, 8);
        put_be(q + 19, m->executed.shares, 4);
        put_be(q + 23, m->executed.match, 8);
        if (m->type == 'C') {
            q[31] = (uint8_t)m->executed.printable;
            put_be(q + 32, m->executed.price, 4);
        }
        break;
    case 'X':
        put_be(q + 11, m->cancel.ref, 8);
        put_be(q + 19, m->cancel.shares, 4);
        break;
    case 'D':
        put_be(q + 11, m->del.ref, 8);
        break;
    case 'U':
        put_be(q + 11, m->replace.ref, 8);
        put_be(q + 19, m->replace.new_ref, 8);
        put_be(q + 27, m->replace.shares, 4);
        put_be(q + 31, m->replace.price, 4);
        break;
    case 'P':
        put_be(q + 11, m->trade.ref, 8);
        q[19] = (uint8_t)m->trade.side;
        put_be(q + 20, m->trade.shares, 4);
        memcpy(q + 24, m->trade.stock, 8);
        put_be(q + 32, m->trade.price, 4);
        put_be(q + 36, m->trade.match, 8);
        break;
    }
    return (ssize_t)(2 + len);
}

int itch_read(const uint8_t *p, size_t n, itch_visit_fn visit, void *arg,
              struct itch_read_stats *st)
{
    struct itch_read_stats local;
    if (st == NULL)
        st = &local;
    memset(st, 0, sizeof *st);
    size_t off = 0;
    int r = 0;
    while (off < n) {
        struct itch_msg m;
        size_t used;
        r = itch_decode(p + off, n - off, &m, &used);
        if (r == -ENOMSG) {
            st->skipped++;
            off += used;
            r = 0;
            continue;
        }
        if (r < 0)
            break;
        st->messages++;
        if (visit != NULL && (r = visit(&m, off, arg)) != 0)
            break;
        off += used;
    }
    st->offset = off;
    return r;
}

const char *itch_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case -EAGAIN:
        return "truncated: more bytes needed";
    case -EBADMSG:
        return "bad length for the message type";
    case -ENOMSG:
        return "unknown message type (skippable)";
    case -EINVAL:
        return "invalid message to encode";
    case -ENOSPC:
        return "buffer too small";
    default:
        return "unknown error";
    }
}
