/* A deterministic synthetic ITCH 5.0 day: the same seed and sizes give the same messages, byte
 * for byte. Not a model of any real market; a load with real shape for the market example. */
#ifndef MARKET_GEN_H
#define MARKET_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "itch.h"

typedef struct gen gen_t;

struct gen_config {
    uint64_t seed;
    uint32_t symbols;  /* 1..65535, locates 1..symbols, named "SYM0001" and on */
    uint64_t messages; /* order and trade messages between the open and the close */
};

#define GEN_DEFAULT_SYMBOLS  3000
#define GEN_DEFAULT_MESSAGES 1000000

/* A generator for cfg's day. NULL with errno EINVAL (symbols out of range) or ENOMEM. The
 * caller owns it and frees it with gen_destroy (NULL is a no-op).
 *
 * The day: system event 'O' (start of messages), a stock directory 'R' per symbol, 'S' (start
 * of system hours), 'Q' (start of market hours), then cfg->messages messages, symbols drawn
 * with Zipf popularity (s = 1, locate 1 the busiest), about 45% adds ('A', a tenth 'F'), 20%
 * cancels 'X', 20% deletes 'D', 8% executions ('E', a fifth 'C'), 5% replaces 'U' and 2%
 * trades 'P', then 'M' (end of market hours), 'E' (end of system hours), 'C' (end of
 * messages). Timestamps strictly increase. Cancels, executions, deletes and replaces only name
 * resting orders (an action with none resting on its symbol becomes an add), and no book is
 * ever crossed or locked: each price walks in ticks of 100 (one cent) and new orders are kept
 * off the far side's best price. */
gen_t *gen_create(const struct gen_config *cfg);
void gen_destroy(gen_t *g);

/* The day's next message into *m: returns 1, or 0 once the day is over, or -ENOMEM. */
int gen_next(gen_t *g, struct itch_msg *m);

/* cfg's whole day in one buffer, framed as Nasdaq's files are (itch_encode): *len bytes and,
 * if count is not NULL, *count messages. The caller frees it. NULL with errno EINVAL or
 * ENOMEM. */
uint8_t *gen_day(const struct gen_config *cfg, size_t *len, uint64_t *count);

#endif
