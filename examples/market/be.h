/* Big-endian fields, as ITCH and the order protocol lay them out: reads and writes of 1 to 8
 * bytes at any alignment. */
#ifndef MARKET_BE_H
#define MARKET_BE_H

#include <stdint.h>

static inline uint64_t get_be(const uint8_t *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

static inline void put_be(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = bytes; i-- > 0;) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

#endif
