/* SipHash (Aumasson and Bernstein), a keyed hash: without the 128-bit key, nobody can choose
 * keys that collide. For tables whose keys come from outside (a server's clients, a feed):
 * pith-kv hashes its keys with SipHash-1-3, as Redis does (one compression round per word and
 * three at the end), and so does the virtual actors' directory (pith/vactor.h). The round
 * counts are parameters so that the tests can check the code against the published SipHash-2-4
 * vectors; the compiler folds them. Header-only: nothing here is exported from libpith. */
#ifndef PITH_HASH_H
#define PITH_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t pith_sip_rotl(uint64_t x, unsigned b)
{
    return (x << b) | (x >> (64 - b));
}

/* A little-endian 64-bit word from 8 bytes (x86 and arm64 load it as it is). */
static inline uint64_t pith_sip_le64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* One SipRound over the state words. */
#define PITH_SIP_ROUND(v0, v1, v2, v3)                                                             \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = pith_sip_rotl(v1, 13);                                                                \
        v1 ^= v0;                                                                                  \
        v0 = pith_sip_rotl(v0, 32);                                                                \
        v2 += v3;                                                                                  \
        v3 = pith_sip_rotl(v3, 16);                                                                \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = pith_sip_rotl(v3, 21);                                                                \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = pith_sip_rotl(v1, 17);                                                                \
        v1 ^= v2;                                                                                  \
        v2 = pith_sip_rotl(v2, 32);                                                                \
    } while (0)

/* SipHash-c-d of the n bytes at p under the 16-byte key k (c = 1, d = 3: SipHash-1-3). */
static inline uint64_t pith_siphash(const unsigned char k[16], const void *p, size_t n, int c,
                                    int d)
{
    const uint64_t k0 = pith_sip_le64(k), k1 = pith_sip_le64(k + 8);
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull;
    uint64_t v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull;
    uint64_t v3 = k1 ^ 0x7465646279746573ull;
    const unsigned char *s = p;
    const uint64_t b = (uint64_t)n << 56;
    for (; n >= 8; n -= 8, s += 8) {
        uint64_t m = pith_sip_le64(s);
        v3 ^= m;
        for (int i = 0; i < c; i++)
            PITH_SIP_ROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    /* The last 0 to 7 bytes, little-endian, under the length's low byte. */
    uint64_t m = b;
    for (size_t i = 0; i < n; i++)
        m |= (uint64_t)s[i] << (8 * i);
    v3 ^= m;
    for (int i = 0; i < c; i++)
        PITH_SIP_ROUND(v0, v1, v2, v3);
    v0 ^= m;
    v2 ^= 0xff;
    for (int i = 0; i < d; i++)
        PITH_SIP_ROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

#endif
