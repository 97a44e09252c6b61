/* The market example's ITCH 5.0 codec (examples/market/itch.c): every message type's fields
 * against the spec's byte layout, framing errors at every cut, unknown types skipped, and
 * arbitrary bytes read without harm. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "itch.h"

/* One message of each type with every field set to something distinguishable. */
static size_t sample(char type, struct itch_msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = type;
    m->locate = 0x1234;
    m->tracking = 0x5678;
    m->timestamp = UINT64_C(0x0000A1B2C3D4E5F6);
    switch (type) {
    case 'S':
        m->system.event_code = 'Q';
        break;
    case 'R':
        memcpy(m->directory.stock, "AAPL    ", 8);
        m->directory.market_category = 'Q';
        m->directory.financial_status = 'N';
        m->directory.round_lot_size = 100;
        m->directory.round_lots_only = 'N';
        m->directory.issue_classification = 'C';
        memcpy(m->directory.issue_subtype, "Z ", 2);
        m->directory.authenticity = 'P';
        m->directory.short_sale_threshold = 'N';
        m->directory.ipo_flag = ' ';
        m->directory.luld_tier = '1';
        m->directory.etp_flag = 'N';
        m->directory.etp_leverage = 0x01020304;
        m->directory.inverse = 'N';
        break;
    case 'A':
    case 'F':
        m->add.ref = UINT64_C(0x0102030405060708);
        m->add.side = 'S';
        m->add.shares = 0x0A0B0C0D;
        memcpy(m->add.stock, "MSFT    ", 8);
        m->add.price = 0x11223344;
        memcpy(m->add.mpid, type == 'F' ? "GSCO" : "    ", 4);
        break;
    case 'E':
    case 'C':
        m->executed.ref = UINT64_C(0x1112131415161718);
        m->executed.shares = 0x21222324;
        m->executed.match = UINT64_C(0x3132333435363738);
        m->executed.printable = 'Y';
        m->executed.price = type == 'C' ? 0x41424344 : 0;
        break;
    case 'X':
        m->cancel.ref = 77;
        m->cancel.shares = 300;
        break;
    case 'D':
        m->del.ref = UINT64_C(0xFFFFFFFFFFFFFFFF);
        break;
    case 'U':
        m->replace.ref = 5;
        m->replace.new_ref = 6;
        m->replace.shares = 700;
        m->replace.price = 1234500;
        break;
    case 'P':
        m->trade.ref = 0;
        m->trade.side = 'B';
        m->trade.shares = 1000;
        memcpy(m->trade.stock, "SPY     ", 8);
        m->trade.price = 4500000;
        m->trade.match = 99;
        break;
    }
    return itch_msg_len(type);
}

static const char types[] = "SRAFECXDUP";

Test(itch, lengths_are_the_spec_s)
{
    static const size_t want[] = {12, 39, 36, 40, 31, 36, 23, 19, 35, 44};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert_eq(itch_msg_len(types[i]), want[i], "type %c", types[i]);
    cr_assert_eq(itch_msg_len('H'), 0);
    cr_assert_eq(itch_msg_len('\0'), 0);
}

Test(itch, every_type_round_trips_through_encode_and_decode)
{
    for (const char *t = types; *t; t++) {
        struct itch_msg m, d;
        size_t len = sample(*t, &m);
        uint8_t buf[ITCH_MAX_FRAME];
        ssize_t n = itch_encode(&m, buf, sizeof buf);
        cr_assert_eq(n, (ssize_t)(2 + len), "type %c: %zd bytes", *t, n);
        cr_assert_eq(buf[0] << 8 | buf[1], (int)len, "type %c: length prefix", *t);
        cr_assert_eq(buf[2], (uint8_t)*t);
        memset(&d, 0x5A, sizeof d);
        size_t used = 0;
        cr_assert_eq(itch_decode(buf, (size_t)n, &d, &used), 0, "type %c", *t);
        cr_assert_eq(used, (size_t)n);
        cr_assert_eq(d.type, *t);
        cr_assert_eq(d.locate, m.locate);
        cr_assert_eq(d.tracking, m.tracking);
        cr_assert_eq(d.timestamp, m.timestamp);
        /* Every field of the type's member came back: encoding it again gives the same bytes. */
        uint8_t again[ITCH_MAX_FRAME];
        cr_assert_eq(itch_encode(&d, again, sizeof again), n);
        cr_assert_eq(memcmp(buf, again, (size_t)n), 0, "type %c re-encodes the same", *t);
    }
}

Test(itch, add_order_matches_the_spec_layout_byte_for_byte)
{
    static const uint8_t wire[] = {
        0x00, 0x24,                                     /* length 36 */
        'A',                                            /* message type */
        0x00, 0x2A,                                     /* stock locate 42 */
        0x00, 0x03,                                     /* tracking number 3 */
        0x00, 0x00, 0x1E, 0x07, 0xFA, 0x41,             /* timestamp 0x1E07FA41 ns */
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x39, /* order reference 12345 */
        'B',                                            /* buy/sell */
        0x00, 0x00, 0x01, 0x2C,                         /* shares 300 */
        'A',  'A',  'P',  'L',  ' ',  ' ',  ' ',  ' ',  /* stock */
        0x00, 0x1B, 0x7D, 0x68,                         /* price 1,801,576 = $180.1576 */
    };
    struct itch_msg m;
    size_t used;
    cr_assert_eq(itch_decode(wire, sizeof wire, &m, &used), 0);
    cr_assert_eq(used, sizeof wire);
    cr_assert_eq(m.type, 'A');
    cr_assert_eq(m.locate, 42);
    cr_assert_eq(m.tracking, 3);
    cr_assert_eq(m.timestamp, UINT64_C(0x1E07FA41));
    cr_assert_eq(m.add.ref, 12345);
    cr_assert_eq(m.add.side, 'B');
    cr_assert_eq(m.add.shares, 300);
    cr_assert_eq(memcmp(m.add.stock, "AAPL    ", 8), 0);
    cr_assert_eq(m.add.price, 1801576);
    uint8_t out[ITCH_MAX_FRAME];
    cr_assert_eq(itch_encode(&m, out, sizeof out), (ssize_t)sizeof wire);
    cr_assert_eq(memcmp(out, wire, sizeof wire), 0);
}

Test(itch, order_replace_and_executed_with_price_match_the_spec_layout)
{
    static const uint8_t wire[] = {
        /* U: original reference at 11, new reference at 19, shares at 27, price at 31 */
        0x00, 0x23, 'U', 0x00, 0x07, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0B, 0x00,
        0x00, 0x00, 0xC8, 0x00, 0x01, 0x86, 0xA0,
        /* C: reference at 11, shares at 19, match at 23, printable at 31, price at 32 */
        0x00, 0x24, 'C', 0x00, 0x07, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x0B, 0x00, 0x00, 0x00, 0x32, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10, 0x01, 'N', 0x00, 0x01, 0x86, 0x9F};
    struct itch_msg m;
    size_t used;
    cr_assert_eq(itch_decode(wire, sizeof wire, &m, &used), 0);
    cr_assert_eq(used, 37);
    cr_assert_eq(m.type, 'U');
    cr_assert_eq(m.locate, 7);
    cr_assert_eq(m.timestamp, UINT64_C(0x010203040506));
    cr_assert_eq(m.replace.ref, 10);
    cr_assert_eq(m.replace.new_ref, 11);
    cr_assert_eq(m.replace.shares, 200);
    cr_assert_eq(m.replace.price, 100000);
    cr_assert_eq(itch_decode(wire + used, sizeof wire - used, &m, &used), 0);
    cr_assert_eq(used, 38);
    cr_assert_eq(m.type, 'C');
    cr_assert_eq(m.tracking, 1);
    cr_assert_eq(m.timestamp, 9);
    cr_assert_eq(m.executed.ref, 11);
    cr_assert_eq(m.executed.shares, 50);
    cr_assert_eq(m.executed.match, 0x1001);
    cr_assert_eq(m.executed.printable, 'N');
    cr_assert_eq(m.executed.price, 99999);
}

Test(itch, every_cut_of_every_type_is_truncated_with_the_bytes_needed)
{
    for (const char *t = types; *t; t++) {
        struct itch_msg m;
        size_t len = sample(*t, &m);
        uint8_t buf[ITCH_MAX_FRAME];
        cr_assert_eq(itch_encode(&m, buf, sizeof buf), (ssize_t)(2 + len));
        for (size_t cut = 0; cut < 2 + len; cut++) {
            /* A copy of exactly cut bytes, so that ASan sees any read past it. */
            uint8_t *p = malloc(cut ? cut : 1);
            memcpy(p, buf, cut);
            size_t used = 0;
            int r = itch_decode(p, cut, &m, &used);
            free(p);
            cr_assert_eq(r, -EAGAIN, "type %c cut at %zu: %d", *t, cut, r);
            cr_assert_eq(used, cut < 2 ? 2 : 2 + len, "type %c cut at %zu", *t, cut);
        }
    }
}

Test(itch, a_length_wrong_for_its_type_is_a_bad_length)
{
    struct itch_msg m;
    uint8_t buf[ITCH_MAX_FRAME + 1];
    sample('D', &m);
    cr_assert_eq(itch_encode(&m, buf, sizeof buf), 21);
    buf[1] = 20; /* one more than a delete has */
    buf[21] = 0;
    size_t used = 99;
    cr_assert_eq(itch_decode(buf, 22, &m, &used), -EBADMSG);
    cr_assert_eq(used, 0);
    /* Known as soon as the type byte is in, before the rest of the message. */
    cr_assert_eq(itch_decode(buf, 3, &m, &used), -EBADMSG);
    buf[1] = 0;
    cr_assert_eq(itch_decode(buf, 2, &m, &used), -EBADMSG, "length 0");
}

Test(itch, reader_reports_the_offset_of_a_corrupt_length)
{
    uint8_t buf[4 * ITCH_MAX_FRAME];
    size_t off = 0;
    struct itch_msg m;
    sample('S', &m);
    off += (size_t)itch_encode(&m, buf + off, sizeof buf - off);
    sample('A', &m);
    off += (size_t)itch_encode(&m, buf + off, sizeof buf - off);
    size_t bad = off;
    sample('X', &m);
    off += (size_t)itch_encode(&m, buf + off, sizeof buf - off);
    buf[bad + 1] = 22;
    struct itch_read_stats st;
    cr_assert_eq(itch_read(buf, off, NULL, NULL, &st), -EBADMSG);
    cr_assert_eq(st.offset, bad);
    cr_assert_eq(st.offset, 14 + 38);
    cr_assert_eq(st.messages, 2);
}

static int count_types(const struct itch_msg *m, size_t offset, void *arg)
{
    (void)offset;
    char *seen = arg;
    strncat(seen, &m->type, 1);
    return 0;
}

Test(itch, reader_skips_unknown_types_by_their_length)
{
    uint8_t buf[256];
    size_t off = 0;
    struct itch_msg m;
    sample('A', &m);
    off += (size_t)itch_encode(&m, buf + off, sizeof buf - off);
    /* A trading action 'H' (25 bytes in ITCH 5.0), which this codec does not decode. */
    buf[off] = 0;
    buf[off + 1] = 25;
    buf[off + 2] = 'H';
    memset(buf + off + 3, 'x', 24);
    size_t used;
    cr_assert_eq(itch_decode(buf + off, 27, &m, &used), -ENOMSG);
    cr_assert_eq(used, 27);
    cr_assert_eq(m.type, 'H');
    off += 27;
    sample('D', &m);
    off += (size_t)itch_encode(&m, buf + off, sizeof buf - off);
    char seen[8] = "";
    struct itch_read_stats st;
    cr_assert_eq(itch_read(buf, off, count_types, seen, &st), 0);
    cr_assert_str_eq(seen, "AD");
    cr_assert_eq(st.messages, 2);
    cr_assert_eq(st.skipped, 1);
    cr_assert_eq(st.offset, off);
}

Test(itch, reader_stops_at_a_message_cut_by_the_end_of_the_buffer)
{
    uint8_t buf[2 * ITCH_MAX_FRAME];
    struct itch_msg m;
    sample('P', &m);
    size_t one = (size_t)itch_encode(&m, buf, sizeof buf);
    itch_encode(&m, buf + one, sizeof buf - one);
    struct itch_read_stats st;
    cr_assert_eq(itch_read(buf, one + 10, NULL, NULL, &st), -EAGAIN);
    cr_assert_eq(st.offset, one);
    cr_assert_eq(st.messages, 1);
}

static int stop_at_second(const struct itch_msg *m, size_t offset, void *arg)
{
    (void)m;
    (void)arg;
    return offset > 0 ? 7 : 0;
}

Test(itch, reader_returns_what_the_visitor_stops_with)
{
    uint8_t buf[2 * ITCH_MAX_FRAME];
    struct itch_msg m;
    sample('D', &m);
    size_t one = (size_t)itch_encode(&m, buf, sizeof buf);
    itch_encode(&m, buf + one, sizeof buf - one);
    struct itch_read_stats st;
    cr_assert_eq(itch_read(buf, 2 * one, stop_at_second, NULL, &st), 7);
    cr_assert_eq(st.offset, one);
}

Test(itch, encode_refuses_unknown_types_wide_timestamps_and_small_buffers)
{
    struct itch_msg m;
    uint8_t buf[ITCH_MAX_FRAME];
    sample('A', &m);
    memset(buf, 0xEE, sizeof buf);
    cr_assert_eq(itch_encode(&m, buf, 37), -ENOSPC);
    cr_assert_eq(buf[0], 0xEE, "nothing written");
    cr_assert_eq(itch_encode(&m, buf, 38), 38);
    m.timestamp = ITCH_TIMESTAMP_MAX + 1;
    cr_assert_eq(itch_encode(&m, buf, sizeof buf), -EINVAL);
    m.timestamp = ITCH_TIMESTAMP_MAX;
    cr_assert_eq(itch_encode(&m, buf, sizeof buf), 38);
    m.type = 'H';
    cr_assert_eq(itch_encode(&m, buf, sizeof buf), -EINVAL);
}

Test(itch, arbitrary_bytes_are_read_without_harm)
{
    uint64_t x = 42;
    for (int round = 0; round < 2000; round++) {
        size_t n = 1 + (size_t)(round % 300);
        uint8_t *p = malloc(n);
        for (size_t i = 0; i < n; i++) {
            x = x * 6364136223846793005u + 1442695040888963407u;
            p[i] = (uint8_t)(x >> 56);
            /* Plausible lengths and known types now and then, to get past the framing. */
            if (i % 40 == 0 && round % 2)
                p[i] = 0;
            if (i % 40 == 2 && round % 3)
                p[i] = (uint8_t)types[(x >> 8) % 10];
        }
        struct itch_read_stats st;
        int r = itch_read(p, n, NULL, NULL, &st);
        cr_assert(r == 0 || r == -EAGAIN || r == -EBADMSG, "round %d: %d", round, r);
        cr_assert_leq(st.offset, n);
        cr_assert_neq(itch_strerror(r)[0], '\0');
        free(p);
    }
}
