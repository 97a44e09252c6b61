/* pith-kv's SLOWLOG: Redis's log of the commands that ran longer than slowlog-log-slower-than
 * µs, one per shard (the connection's shard logs its commands), merged by id when read. Not the
 * timing itself (cmdstats.h says what a command's duration is) nor the command's parsing.
 *
 * Memory is bounded: an entry keeps at most SLOWLOG_MAX_ARGC arguments (the last of them then
 * says "... (N more arguments)") of at most SLOWLOG_MAX_STRING bytes each (then "... (N more
 * bytes)"), as Redis keeps them, and the client's name cut the same way (Redis keeps it whole),
 * so an entry takes at most SLOWLOG_ENTRY_MAX bytes (5,928 on x86-64), and a shard holds at
 * most slowlog-max-len entries: at most slowlog-max-len * SLOWLOG_ENTRY_MAX bytes per shard (741
 * KiB at the default 128), whatever its clients send. Entries come from the shard's heap
 * (pith_malloc): they count against its memory cap, and one that finds no memory is not kept. */
#ifndef PITH_KV_SLOWLOG_H
#define PITH_KV_SLOWLOG_H

#include <stddef.h>
#include <stdint.h>

#include "resp.h"

#define SLOWLOG_MAX_ARGC   32
#define SLOWLOG_MAX_STRING 128
/* " ... (18446744073709551615 more bytes)" and the like: what a cut adds, at most. */
#define SLOWLOG_CUT_NOTE 40
#define SLOWLOG_ADDR_MAX 64 /* "ip:port", NUL included */

/* An entry's most bytes: its header, SLOWLOG_MAX_ARGC arguments and the client's name, each
 * with its length and at most SLOWLOG_MAX_STRING + SLOWLOG_CUT_NOTE bytes. */
#define SLOWLOG_ENTRY_MAX                                                                          \
    (slowlog_header_size() +                                                                       \
     (SLOWLOG_MAX_ARGC + 1) * (sizeof(uint32_t) + SLOWLOG_MAX_STRING + SLOWLOG_CUT_NOTE))

struct slow_entry;

size_t slowlog_header_size(void);

/* An entry for the command a[0..argc) of a client named `name` (NULL: none), not yet logged:
 * its arguments and name copied (cut as above). NULL with no memory. *bytes: its size. Any
 * shard; its memory belongs to the calling shard's heap. */
struct slow_entry *slowlog_entry_new(const struct resp_arg *a, unsigned argc, const char *name,
                                     size_t *bytes);
void slowlog_entry_free(struct slow_entry *e);

/* On the connection's shard: e (from slowlog_entry_new on this shard) is logged with its
 * duration and the client's address, then the oldest entries past slowlog-max-len go. Takes e. */
void slowlog_push(struct slow_entry *e, uint64_t duration_us, const char *addr);

/* Entries logged on all shards (any thread): at most slowlog-max-len, as SLOWLOG LEN says. */
uint64_t slowlog_len(unsigned nshards);

/* SLOWLOG RESET's part on this shard: its entries go. */
void slowlog_reset(void);

/* SLOWLOG GET's part on this shard: its newest `count` entries (-1: all), newest first, into o
 * as [id, length, then the entry as Redis's reply has it]; 0 or -ENOMEM. */
int slowlog_dump(long long count, struct resp_out *o);
/* SLOWLOG GET's reply from every shard's part: the newest `count` entries (-1: all) of them
 * together, at most slowlog-max-len, newest (highest id) first. 0 or -ENOMEM. */
int slowlog_merge(const struct resp_out *parts, unsigned n, long long count, struct resp_out *o);

#endif
