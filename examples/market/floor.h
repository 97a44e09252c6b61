/* The floor under pith-market's latencies: the same day, paced and stamped as the feed does,
 * handed through a plain single-producer ring to a thread that spins on it and applies each
 * message to the reference books (book.c). No engine: what the machine alone costs between a
 * tick's due time and its book, at the same rate, measured the same way. */
#ifndef MARKET_FLOOR_H
#define MARKET_FLOOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lat.h"

struct floor_result {
    uint64_t msgs;      /* book messages applied */
    uint64_t refused;   /* of those, refused by a book: must be 0 */
    uint64_t ring_full; /* pushes that found the ring full and waited */
    uint64_t start_ns, end_ns;
    struct lat to_book; /* due time -> applied */
    struct lat late;    /* due time -> handed over */
};

/* Runs the day at `rate` messages a second (0: as fast as possible): the calling thread pinned
 * to feed_cpu and the applying thread to book_cpu (each -1: not pinned). timed false: no clock
 * is read per message and to_book and late stay empty (pith-bench's hand-off floor under
 * market.book_update_ns, which reads none either); start_ns and end_ns (the first and the last
 * hand-over) are still set. 0, or -errno when a thread or memory could not be had. */
int floor_run(const uint8_t *day, size_t len, uint64_t rate, bool timed, int feed_cpu, int book_cpu,
              struct floor_result *r);

#endif
