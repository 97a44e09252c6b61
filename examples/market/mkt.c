/* What pith-market's pieces share (mkt.h): the run's settings, the shards' counters and the
 * clock's origin, set by whoever drives a run (pith-market's main, or pith-bench's market row). */
#include "mkt.h"

struct mkt_config mkt_cfg;
struct mkt_shard *mkt_shards;
uint64_t mkt_epoch_ns;
