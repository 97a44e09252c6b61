/* The market example's order protocol codec (examples/market/order.c): each type's bytes against
 * order.h's layout, round trips, framing errors at every cut, and the encoder's refusals. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <criterion/criterion.h>

#include "order.h"

static const char types[] = {'O', 'A', 'J', 'F'};

/* One frame of each type with every field it carries set to something distinguishable. */
static void sample(char type, struct order_msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = type;
    m->id = UINT64_C(0x0102030405060708);
    m->account = 0x11121314;
    switch (type) {
    case 'J':
        m->reason = ORDER_REJ_PRICE;
        break;
    case 'O':
    case 'F':
        m->locate = 0x2122;
        m->side = 'S';
        m->qty = 0x31323334;
        m->price = 0x41424344;
        if (type == 'O')
            m->tick_ns = UINT64_C(0x5152535455565758);
        else
            m->seq = UINT64_C(0x6162636465666768);
        break;
    default:
        break;
    }
}

Test(order, frame_lengths_are_the_headers)
{
    cr_assert_eq(order_frame_len('O'), ORDER_LEN_NEW);
    cr_assert_eq(order_frame_len('A'), ORDER_LEN_ACCEPT);
    cr_assert_eq(order_frame_len('J'), ORDER_LEN_REJECT);
    cr_assert_eq(order_frame_len('F'), ORDER_LEN_FILL);
    cr_assert_eq(order_frame_len('X'), 0);
    cr_assert_eq(order_frame_len('\0'), 0);
    for (size_t i = 0; i < sizeof types; i++)
        cr_assert_leq(order_frame_len(types[i]), ORDER_MAX_FRAME);
}

Test(order, every_type_round_trips_through_encode_and_decode)
{
    for (size_t i = 0; i < sizeof types; i++) {
        struct order_msg m, d;
        uint8_t buf[ORDER_MAX_FRAME], again[ORDER_MAX_FRAME];
        sample(types[i], &m);
        ssize_t n = order_encode(&m, buf, sizeof buf);
        cr_assert_eq(n, (ssize_t)order_frame_len(types[i]), "type %c: %zd bytes", types[i], n);
        cr_assert_eq(buf[0] << 8 | buf[1], (int)n - 2, "type %c: length prefix", types[i]);
        cr_assert_eq(buf[2], (uint8_t)types[i]);
        size_t used = 0;
        cr_assert_eq(order_decode(buf, (size_t)n, &d, &used), 0, "type %c", types[i]);
        cr_assert_eq(used, (size_t)n);
        cr_assert_eq(d.type, m.type);
        cr_assert_eq(d.id, m.id);
        cr_assert_eq(d.account, m.account);
        cr_assert_eq(d.reason, m.reason);
        cr_assert_eq(d.locate, m.locate);
        cr_assert_eq(d.side, m.side);
        cr_assert_eq(d.qty, m.qty);
        cr_assert_eq(d.price, m.price);
        cr_assert_eq(d.tick_ns, m.tick_ns);
        cr_assert_eq(d.seq, m.seq);
        cr_assert_eq(order_encode(&d, again, sizeof again), n);
        cr_assert_eq(memcmp(buf, again, (size_t)n), 0, "type %c re-encodes the same", types[i]);
    }
}

Test(order, new_order_matches_the_layout_byte_for_byte)
{
    const uint8_t wire[ORDER_LEN_NEW] = {
        0,   34,   'O',                                /* length of what follows, type */
        0,   0,    0,    0,    0,    0,    0x30, 0x39, /* id 12345 */
        0,   0,    0,    7,                            /* account */
        0,   42,                                       /* locate */
        'B',                                           /* side */
        0,   0,    1,    0x2C,                         /* qty 300 */
        0,   0x1B, 0x7D, 0x68,                         /* price 1801576 */
        0,   0,    0,    0,    0x1E, 0x07, 0xFA, 0x41, /* tick_ns */
        0,   0,                                        /* reserved */
    };
    struct order_msg m;
    size_t used;
    cr_assert_eq(order_decode(wire, sizeof wire, &m, &used), 0);
    cr_assert_eq(used, sizeof wire);
    cr_assert_eq(m.type, 'O');
    cr_assert_eq(m.id, 12345);
    cr_assert_eq(m.account, 7);
    cr_assert_eq(m.locate, 42);
    cr_assert_eq(m.side, 'B');
    cr_assert_eq(m.qty, 300);
    cr_assert_eq(m.price, 1801576);
    cr_assert_eq(m.tick_ns, UINT64_C(0x1E07FA41));
    uint8_t out[ORDER_MAX_FRAME];
    cr_assert_eq(order_encode(&m, out, sizeof out), (ssize_t)sizeof wire);
    cr_assert_eq(memcmp(out, wire, sizeof wire), 0);
}

Test(order, accept_reject_and_fill_match_the_layout_byte_for_byte)
{
    const uint8_t accept[ORDER_LEN_ACCEPT] = {0, 13, 'A', 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 3, 0xE8};
    const uint8_t reject[ORDER_LEN_REJECT] = {0, 14, 'J', 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 5, 'Q'};
    const uint8_t fill[ORDER_LEN_FILL] = {
        0,    38,   'F',                          /* length, type */
        0,    0,    0,    0,    0, 0, 0,    9,    /* id */
        0,    0,    0,    5,                      /* account */
        0x01, 0x02,                               /* locate */
        'S',                                      /* side */
        0,    0,    0,    100,                    /* qty */
        0,    0,    0x27, 0x10,                   /* price 10000 */
        0,    0,    0,    0,    0, 0, 0x01, 0x00, /* seq 256 */
        0,    0,    0,    0,    0, 0,             /* reserved */
    };
    struct order_msg m;
    uint8_t out[ORDER_MAX_FRAME];
    size_t used;

    memset(&m, 0, sizeof m);
    m.type = 'A';
    m.id = 9;
    m.account = 1000;
    cr_assert_eq(order_encode(&m, out, sizeof out), (ssize_t)sizeof accept);
    cr_assert_eq(memcmp(out, accept, sizeof accept), 0);

    m.type = 'J';
    m.account = 5;
    m.reason = ORDER_REJ_QTY;
    cr_assert_eq(order_encode(&m, out, sizeof out), (ssize_t)sizeof reject);
    cr_assert_eq(memcmp(out, reject, sizeof reject), 0);

    cr_assert_eq(order_decode(fill, sizeof fill, &m, &used), 0);
    cr_assert_eq(used, sizeof fill);
    cr_assert_eq(m.type, 'F');
    cr_assert_eq(m.id, 9);
    cr_assert_eq(m.account, 5);
    cr_assert_eq(m.locate, 0x0102);
    cr_assert_eq(m.side, 'S');
    cr_assert_eq(m.qty, 100);
    cr_assert_eq(m.price, 10000);
    cr_assert_eq(m.seq, 256);
    cr_assert_eq(m.tick_ns, 0, "a fill carries no tick time");
}

Test(order, reserved_bytes_are_written_as_zero)
{
    const char with_reserve[] = {'O', 'F'};
    for (size_t i = 0; i < sizeof with_reserve; i++) {
        struct order_msg m;
        uint8_t buf[ORDER_MAX_FRAME + 1];
        sample(with_reserve[i], &m);
        memset(buf, 0xFF, sizeof buf);
        ssize_t n = order_encode(&m, buf, sizeof buf);
        cr_assert_gt(n, 34);
        for (ssize_t k = 34; k < n; k++)
            cr_assert_eq(buf[k], 0, "type %c byte %zd", with_reserve[i], k);
        cr_assert_eq(buf[n], 0xFF, "type %c wrote past its frame", with_reserve[i]);
    }
}

Test(order, every_truncation_asks_for_the_bytes_it_needs)
{
    for (size_t i = 0; i < sizeof types; i++) {
        struct order_msg m;
        uint8_t buf[ORDER_MAX_FRAME];
        sample(types[i], &m);
        ssize_t n = order_encode(&m, buf, sizeof buf);
        for (size_t cut = 0; cut < (size_t)n; cut++) {
            size_t used = 12345;
            cr_assert_eq(order_decode(buf, cut, &m, &used), -EAGAIN, "type %c cut at %zu", types[i],
                         cut);
            cr_assert_eq(used, cut < 3 ? 3 : (size_t)n, "type %c cut at %zu: %zu", types[i], cut,
                         used);
        }
    }
}

Test(order, a_frame_decodes_from_the_front_of_a_longer_buffer)
{
    struct order_msg a, b, d;
    uint8_t buf[2 * ORDER_MAX_FRAME];
    sample('A', &a);
    sample('F', &b);
    ssize_t n1 = order_encode(&a, buf, sizeof buf);
    ssize_t n2 = order_encode(&b, buf + n1, sizeof buf - (size_t)n1);
    size_t used;
    cr_assert_eq(order_decode(buf, (size_t)(n1 + n2), &d, &used), 0);
    cr_assert_eq(used, (size_t)n1);
    cr_assert_eq(d.type, 'A');
    cr_assert_eq(order_decode(buf + used, (size_t)n2, &d, &used), 0);
    cr_assert_eq(used, (size_t)n2);
    cr_assert_eq(d.type, 'F');
    cr_assert_eq(d.seq, b.seq);
}

Test(order, a_wrong_length_for_its_type_is_ebadmsg)
{
    for (size_t i = 0; i < sizeof types; i++) {
        struct order_msg m;
        uint8_t buf[ORDER_MAX_FRAME];
        sample(types[i], &m);
        ssize_t n = order_encode(&m, buf, sizeof buf);
        const unsigned wrong[] = {0, 1, (unsigned)n - 3, (unsigned)n - 1, (unsigned)n, 0xFFFF};
        for (size_t k = 0; k < sizeof wrong / sizeof wrong[0]; k++) {
            buf[0] = (uint8_t)(wrong[k] >> 8);
            buf[1] = (uint8_t)wrong[k];
            /* Found on the header alone, whether the frame's bytes are there or not. */
            for (size_t have = 3; have <= (size_t)n; have += (size_t)n - 3) {
                size_t used = 12345;
                cr_assert_eq(order_decode(buf, have, &m, &used), -EBADMSG,
                             "type %c length %u with %zu bytes", types[i], wrong[k], have);
                cr_assert_eq(used, 0);
            }
        }
    }
}

Test(order, an_unknown_type_is_ebadmsg)
{
    uint8_t buf[ORDER_MAX_FRAME] = {0};
    for (int t = 0; t < 256; t++) {
        if (order_frame_len((char)t) != 0)
            continue;
        /* With the length of each known type, so that only the type is wrong. */
        for (size_t i = 0; i < sizeof types; i++) {
            size_t len = order_frame_len(types[i]);
            buf[0] = 0;
            buf[1] = (uint8_t)(len - 2);
            buf[2] = (uint8_t)t;
            struct order_msg m;
            size_t used = 12345;
            cr_assert_eq(order_decode(buf, len, &m, &used), -EBADMSG, "type 0x%02x", t);
            cr_assert_eq(used, 0);
        }
    }
}

Test(order, encode_refuses_a_short_buffer_and_writes_nothing)
{
    for (size_t i = 0; i < sizeof types; i++) {
        struct order_msg m;
        uint8_t buf[ORDER_MAX_FRAME];
        sample(types[i], &m);
        size_t len = order_frame_len(types[i]);
        for (size_t cap = 0; cap < len; cap++) {
            memset(buf, 0xA5, sizeof buf);
            cr_assert_eq(order_encode(&m, buf, cap), -ENOSPC, "type %c cap %zu", types[i], cap);
            for (size_t k = 0; k < sizeof buf; k++)
                cr_assert_eq(buf[k], 0xA5, "type %c cap %zu wrote byte %zu", types[i], cap, k);
        }
        cr_assert_eq(order_encode(&m, buf, len), (ssize_t)len);
    }
}

Test(order, encode_refuses_an_unknown_type)
{
    struct order_msg m;
    uint8_t buf[ORDER_MAX_FRAME];
    sample('O', &m);
    const char bad[] = {'X', 'o', '\0', 'S', (char)0xFF};
    for (size_t i = 0; i < sizeof bad; i++) {
        m.type = bad[i];
        cr_assert_eq(order_encode(&m, buf, sizeof buf), -EINVAL, "type 0x%02x",
                     (unsigned char)bad[i]);
        cr_assert_eq(order_encode(&m, buf, 0), -EINVAL, "type before space");
    }
}

Test(order, arbitrary_bytes_never_decode_out_of_bounds)
{
    /* A fixed pseudo-random stream walked as a reader would: every result is one of the three,
     * and a frame is only taken whole. */
    uint8_t buf[4096];
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < sizeof buf; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (uint8_t)x;
    }
    for (size_t off = 0; off < sizeof buf; off++) {
        struct order_msg m;
        size_t used = 0;
        int r = order_decode(buf + off, sizeof buf - off, &m, &used);
        cr_assert(r == 0 || r == -EAGAIN || r == -EBADMSG, "offset %zu: %d", off, r);
        if (r == 0)
            cr_assert_leq(used, sizeof buf - off);
    }
}
