/* The feed handler: walks a day of ITCH 5.0 messages on a thread outside the engine (as a
 * NIC-facing thread would) and hands each book message to its instrument's book actor through
 * the thread's lane, at a fixed rate or as fast as the books take them. */
#ifndef MARKET_FEED_H
#define MARKET_FEED_H

#include <stddef.h>
#include <stdint.h>

#include <pith/client.h>

#include "lat.h"
#include "mkt.h"

struct feed_result;

struct feed_config {
    const uint8_t *day; /* the day's bytes, framed as Nasdaq's files (checked beforehand) */
    size_t len;
    uint64_t rate; /* book messages per second; 0: as fast as the books take them */
    /* Called about once a second from the feed's thread (NULL: never), between two sends. */
    void (*progress)(const struct feed_result *r);
};

struct feed_result {
    uint64_t book_msgs;               /* handed to books */
    uint64_t other;                   /* system events, directory, unknown: not handed over */
    uint64_t pushed_back;             /* sends that found the lane full and waited */
    uint64_t start_ns, end_ns;        /* first and last hand-over (ns since mkt_epoch_ns) */
    uint64_t fed[MKT_MAX_LOCATE + 1]; /* book messages per locate */
    /* How late each hand-over was against its due time (0 as fast as possible): the feed's own
     * queueing, which the stages' latencies include. */
    struct lat late;
    int err;           /* 0, or the send's error that stopped it */
    size_t err_offset; /* where it stopped, with err */
};

/* Runs the feed on the calling thread through client c; returns 0 or the error in r->err. */
int feed_run(pith_client_t *c, const struct feed_config *cfg, struct feed_result *r);

#endif
