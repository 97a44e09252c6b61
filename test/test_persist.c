/* Event-sourced virtual actors (pith/persist.h): state rebuilt from the journal after a
 * deactivation and after a restart, a message's events written as one record, pith_persist
 * holding the mailbox until durable, snapshots by count and on deactivation with keep K,
 * compaction keeping the journal's segments bounded under a steady load, time-travel replay
 * (by event and by time) equal to the state at that point, reminders that fire after a restart,
 * and errors (no journal, a failed write, bad calls). An "account" type: each event adds an
 * amount to a balance; the state also folds every amount into a check word, so that a replay
 * that skipped, repeated or reordered an event would show. */
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pith/persist.h>

#include "util.h"

enum { ADD = 1, ADD3, ADD_ASYNC, GET, DEACT, REMIND, UNREMIND, TICK, ORDER, BIG };

struct account {
    int64_t balance;
    uint64_t check;
    uint64_t applied;
};

struct answer {
    int64_t balance;
    uint64_t check;
    uint64_t applied;
    uint64_t events; /* pith_persist_events */
    int err;
    int pad;
};

static char dir[64];
static _Atomic uint64_t ticks[8];   /* reminder messages per key index */
static _Atomic uint64_t order_bad;  /* a message handled before its predecessor's event */
static _Atomic uint64_t async_done; /* pith_persist_async callbacks */
static _Atomic int64_t fault_res;   /* what the journal's next writes get */
static _Atomic int fault_times;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void dir_make(void)
{
    snprintf(dir, sizeof(dir), "/tmp/pith-persist-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void dir_remove(void)
{
    (void)nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int64_t fault_fn(int op, uint64_t len, void *ctx)
{
    (void)ctx;
    (void)len;
    if (op != PITH_JOURNAL_OP_WRITE || atomic_load(&fault_times) <= 0)
        return 0;
    atomic_fetch_sub(&fault_times, 1);
    return atomic_load(&fault_res);
}

/* ---- the account type ---- */

static void apply(void *state, const void *event, uint32_t len)
{
    struct account *a = state;
    int64_t x;
    if (len < sizeof(x))
        return; /* the first 8 bytes are the amount; the rest is ballast */
    memcpy(&x, event, sizeof(x));
    a->balance += x;
    a->check = a->check * 1099511628211ull + (uint64_t)x;
    a->applied++;
}

static uint32_t snapshot(const void *state, void *buf, uint32_t cap)
{
    if (cap >= sizeof(struct account))
        memcpy(buf, state, sizeof(struct account));
    return sizeof(struct account);
}

static int restore(void *state, const void *data, uint32_t len)
{
    if (len != sizeof(struct account))
        return -EINVAL;
    memcpy(state, data, len);
    return 0;
}

static void answer(pith_actor_t *self, const struct account *a, const pith_msg_t *req, int err)
{
    struct answer r = {.err = err};
    if (a != NULL) {
        r.balance = a->balance;
        r.check = a->check;
        r.applied = a->applied;
    }
    r.events = self != NULL ? pith_persist_events(self) : 0;
    (void)pith_reply(req, GET, &r, sizeof(r));
}

/* done of an ADD: the reply goes once the event is durable and applied. */
static void added(pith_actor_t *self, void *state, int err, void *ctx)
{
    pith_msg_t *req = ctx;
    if (self != NULL)
        answer(self, state, req, err);
    free(req);
}

static void async_added(pith_actor_t *self, void *state, int err, void *ctx)
{
    (void)self;
    (void)state;
    (void)ctx;
    if (err == 0)
        atomic_fetch_add(&async_done, 1);
}

static pith_msg_t *keep_req(const pith_msg_t *msg)
{
    pith_msg_t *req = malloc(sizeof(*req));
    if (req != NULL)
        *req = *msg;
    return req;
}

static int account_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct account *a = state;
    int64_t x = 0;
    if (msg->len >= sizeof(x))
        memcpy(&x, msg->data, sizeof(x));
    switch (msg->type) {
    case ADD: {
        pith_msg_t *req = keep_req(msg);
        int err = pith_persist(self, &x, sizeof(x), added, req);
        if (err) {
            free(req);
            answer(self, a, msg, err);
        }
        break;
    }
    case ADD3: {
        /* Three events of one message: one record; the reply comes with the last. */
        int64_t y = x + 1, z = x + 2;
        pith_msg_t *req = keep_req(msg);
        int err = pith_persist(self, &x, sizeof(x), NULL, NULL);
        if (err == 0)
            err = pith_persist(self, &y, sizeof(y), NULL, NULL);
        if (err == 0)
            err = pith_persist(self, &z, sizeof(z), added, req);
        if (err) {
            free(req);
            answer(self, a, msg, err);
        }
        break;
    }
    case ADD_ASYNC:
        (void)pith_persist_async(self, &x, sizeof(x), async_added, NULL);
        break;
    case BIG:
        /* The message's bytes as the event: an amount and ballast. */
        (void)pith_persist(self, msg->data, msg->len, NULL, NULL);
        break;
    case ORDER: {
        /* x is this message's index: the balance must show every earlier ORDER's event. */
        if (a->applied != (uint64_t)x)
            atomic_fetch_add(&order_bad, 1);
        int64_t one = 1;
        (void)pith_persist(self, &one, sizeof(one), NULL, NULL);
        break;
    }
    case GET:
        answer(self, a, msg, 0);
        break;
    case DEACT:
        (void)pith_vactor_deactivate(self);
        answer(self, a, msg, 0);
        break;
    case REMIND: {
        uint64_t period = msg->len >= 16 ? ((const uint64_t *)msg->data)[1] : 0;
        int err = pith_reminder_set(self, 1, (uint64_t)x, period, TICK);
        answer(self, a, msg, err);
        break;
    }
    case UNREMIND:
        answer(self, a, msg, pith_reminder_cancel(self, 1));
        break;
    case TICK: {
        uint32_t klen;
        const char *key = pith_vactor_key(self, &klen);
        unsigned i = klen > 0 ? (unsigned)(key[klen - 1] - '0') % 8 : 0;
        atomic_fetch_add(&ticks[i], 1);
        break;
    }
    default:
        break;
    }
    return 0;
}

static const pith_actor_type_t account_actor = {
    .name = "account",
    .behaviour = account_behaviour,
    .state_size = sizeof(struct account),
    .mailbox_max = 65536,
};

/* Each test registers the types it needs with the policy it wants (a type registered once
 * lives for the process; each test runs in its own process). */
static pith_persist_type_t account_persist = {.apply = apply};
static pith_vtype_t account = {
    .name = "account", .actor = &account_actor, .persist = &account_persist};

static void start_with(unsigned shards, uint64_t seg_bytes)
{
    cr_assert_eq(pith_vtype_register(&account), 0);
    pith_config_t cfg = test_config((int)shards);
    cfg.journal.dir = dir;
    cfg.journal.segment_bytes = seg_bytes;
    cfg.journal.fault = fault_fn;
    test_start(&cfg);
}

static pith_vref_t key_of(const char *key)
{
    pith_vref_t v;
    cr_assert_eq(pith_vref(&account, key, strlen(key), &v), 0);
    return v;
}

static struct answer ask(const char *key, uint32_t type, int64_t x)
{
    pith_vref_t v = key_of(key);
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), &v, type, &x, sizeof(x), 10000 * MS, &reply);
    cr_assert_eq(rc, 0, "ask %s type %u: %d (%s)", key, type, rc, pith_strerror(rc));
    cr_assert_eq(reply.len, sizeof(struct answer));
    struct answer r;
    memcpy(&r, reply.data, sizeof(r));
    return r;
}

static uint64_t fold(uint64_t check, int64_t x)
{
    return check * 1099511628211ull + (uint64_t)x;
}

static pith_persist_stats_t pstats(unsigned shards)
{
    pith_persist_stats_t sum = {0};
    for (unsigned i = 0; i < shards; i++) {
        pith_persist_stats_t s;
        cr_assert_eq(pith_persist_stats(i, &s), 0);
        sum.keys += s.keys;
        sum.events += s.events;
        sum.event_records += s.event_records;
        sum.failed += s.failed;
        sum.snapshots += s.snapshots;
        sum.snapshot_failed += s.snapshot_failed;
        sum.recoveries += s.recoveries;
        sum.replayed += s.replayed;
        sum.restored += s.restored;
        sum.carried += s.carried;
        sum.reminders += s.reminders;
        sum.reminders_fired += s.reminders_fired;
    }
    return sum;
}

#define SUITE .init = dir_make, .fini = dir_remove, .timeout = 120

Test(persist, state_comes_back_after_deactivation_and_restart, SUITE)
{
    start_with(2, 0);
    const char *keys[] = {"acct-0", "acct-1", "acct-2", "acct-3"};
    int64_t want[4] = {0};
    uint64_t check[4] = {0};
    for (int round = 0; round < 25; round++)
        for (int k = 0; k < 4; k++) {
            int64_t x = round * 7 + k - 30;
            struct answer r = ask(keys[k], ADD, x);
            want[k] += x;
            check[k] = fold(check[k], x);
            cr_assert_eq(r.err, 0);
            cr_assert_eq(r.balance, want[k], "the reply shows its own event applied");
            cr_assert_eq(r.events, (uint64_t)round + 1);
        }
    /* Deactivated, then activated again by the next message: rebuilt from the journal. */
    for (int k = 0; k < 4; k++)
        (void)ask(keys[k], DEACT, 0);
    for (int k = 0; k < 4; k++) {
        struct answer r = ask(keys[k], GET, 0);
        cr_assert_eq(r.balance, want[k]);
        cr_assert_eq(r.check, check[k]);
        cr_assert_eq(r.applied, 25);
        cr_assert_eq(r.events, 25);
    }
    pith_persist_stats_t s = pstats(2);
    cr_assert_eq(s.events, 100);
    cr_assert_geq(s.recoveries, 4);
    test_stop(NULL);

    /* A restart: the same states, on their home shards. */
    pith_config_t cfg = test_config(2);
    cfg.journal.dir = dir;
    test_start(&cfg);
    for (int k = 0; k < 4; k++) {
        struct answer r = ask(keys[k], GET, 0);
        cr_assert_eq(r.balance, want[k], "key %d after the restart", k);
        cr_assert_eq(r.check, check[k]);
        cr_assert_eq(r.events, 25);
        r = ask(keys[k], ADD, 1000);
        cr_assert_eq(r.balance, want[k] + 1000);
        cr_assert_eq(r.events, 26, "numbers go on across restarts");
    }
    s = pstats(2);
    cr_assert_eq(s.keys, 4);
    cr_assert_eq(s.replayed, 100);
    test_stop(NULL);
}

Test(persist, another_shard_count_is_refused, SUITE)
{
    start_with(2, 0);
    (void)ask("x1", ADD, 5);
    test_stop(NULL);
    pith_config_t cfg = test_config(1);
    cfg.journal.dir = dir;
    test_start(&cfg);
    pith_vref_t v = key_of("x1");
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), &v, GET, NULL, 0, 5000 * MS, &reply);
    cr_assert_eq(rc, -EXDEV, "activation with another shard count: %d", rc);
    test_stop(NULL);
}

Test(persist, no_journal_fails_activation, SUITE)
{
    cr_assert_eq(pith_vtype_register(&account), 0);
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    pith_vref_t v = key_of("nowhere");
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), &v, GET, NULL, 0, 5000 * MS, &reply);
    cr_assert_eq(rc, -ENOTCONN);
    struct account st;
    cr_assert_eq(pith_replay(&account, "nowhere", 7, UINT64_MAX, PITH_REPLAY_EVENT, &st, NULL),
                 -ENOTCONN);
    test_stop(NULL);
}

Test(persist, one_message_events_are_one_record_and_the_mailbox_waits, SUITE)
{
    start_with(1, 0);
    struct answer r = ask("multi", ADD3, 10);
    cr_assert_eq(r.balance, 33);
    cr_assert_eq(r.events, 3);
    pith_persist_stats_t s = pstats(1);
    cr_assert_eq(s.events, 3);
    cr_assert_eq(s.event_records, 1, "three events of one message: one record");
    /* pith_persist holds the mailbox: each ORDER sees every earlier one's event applied. */
    pith_vref_t v = key_of("order");
    for (int64_t i = 0; i < 200; i++)
        cr_assert_eq(pith_client_vsend(pith_client_self(), &v, ORDER, &i, sizeof(i), PITH_FOREVER),
                     0);
    r = ask("order", GET, 0);
    cr_assert_eq(r.applied, 200);
    cr_assert_eq(atomic_load(&order_bad), 0,
                 "a message ran before the event before it was durable");
    /* pith_persist_async: the mailbox goes on; the events all land. */
    for (int64_t i = 0; i < 100; i++)
        cr_assert_eq(
            pith_client_vsend(pith_client_self(), &v, ADD_ASYNC, &i, sizeof(i), PITH_FOREVER), 0);
    TEST_WAIT_FOR(atomic_load(&async_done) == 100);
    r = ask("order", GET, 0);
    cr_assert_eq(r.applied, 300);
    cr_assert_eq(r.balance, 200 + 99 * 100 / 2);
    test_stop(NULL);
}

Test(persist, a_failed_write_fails_the_event_and_applies_nothing, SUITE)
{
    start_with(1, 0);
    struct answer r = ask("f", ADD, 5);
    cr_assert_eq(r.balance, 5);
    atomic_store(&fault_res, -EIO);
    atomic_store(&fault_times, 1);
    r = ask("f", ADD, 7);
    cr_assert_eq(r.err, -EIO, "the event's done gets the write's error: %d", r.err);
    cr_assert_eq(r.balance, 5, "a failed event is not applied");
    r = ask("f", ADD, 9);
    cr_assert_eq(r.err, -EIO, "the journal refuses appends after a failed write");
    cr_assert_eq(pstats(1).failed, 2, "both events failed: %llu",
                 (unsigned long long)pstats(1).failed);
    test_stop(NULL);
    /* After a restart: 5, and what the failed write may have left is not invented past it. */
    pith_config_t cfg = test_config(1);
    cfg.journal.dir = dir;
    test_start(&cfg);
    r = ask("f", GET, 0);
    cr_assert(r.balance == 5 || r.balance == 12, "balance %lld", (long long)r.balance);
    test_stop(NULL);
}

Test(persist, bad_calls_are_refused, SUITE)
{
    start_with(1, 0);
    static struct account st;
    cr_assert_eq(pith_replay(NULL, "k", 1, 0, PITH_REPLAY_EVENT, &st, NULL), -EINVAL);
    cr_assert_eq(pith_replay(&account, "k", 1, 0, 7, &st, NULL), -EINVAL);
    cr_assert_eq(pith_replay(&account, "k", 1, 0, PITH_REPLAY_EVENT, NULL, NULL), -EINVAL);
    cr_assert_eq(pith_replay(&account, "never", 5, UINT64_MAX, PITH_REPLAY_EVENT, &st, NULL),
                 -ENODATA);
    static pith_vtype_t plain = {.name = "plain", .actor = &account_actor};
    cr_assert_eq(pith_vtype_register(&plain), 0);
    cr_assert_eq(pith_replay(&plain, "k", 1, 0, PITH_REPLAY_EVENT, &st, NULL), -ENOENT);
    /* A persistent type cannot be a worker pool, placed elsewhere, or rebalanced. */
    static pith_persist_type_t p = {.apply = apply};
    static pith_vtype_t w = {.name = "w", .actor = &account_actor, .persist = &p, .workers = 2};
    static pith_vtype_t l = {
        .name = "l", .actor = &account_actor, .persist = &p, .placement = PITH_PLACE_LOCAL};
    static pith_vtype_t rb = {
        .name = "rb", .actor = &account_actor, .persist = &p, .flags = PITH_VTYPE_REBALANCE};
    static pith_persist_type_t half = {.apply = apply, .snapshot = snapshot};
    static pith_vtype_t h = {.name = "h", .actor = &account_actor, .persist = &half};
    static pith_persist_type_t none = {.snapshot = snapshot, .restore = restore};
    static pith_vtype_t n = {.name = "n", .actor = &account_actor, .persist = &none};
    cr_assert_eq(pith_vtype_register(&w), -EINVAL);
    cr_assert_eq(pith_vtype_register(&l), -EINVAL);
    cr_assert_eq(pith_vtype_register(&rb), -EINVAL);
    cr_assert_eq(pith_vtype_register(&h), -EINVAL);
    cr_assert_eq(pith_vtype_register(&n), -EINVAL);
    pith_persist_stats_t s;
    cr_assert_eq(pith_persist_stats(99, &s), -EINVAL);
    cr_assert_eq(pith_persist_stats(0, NULL), -EINVAL);
    test_stop(NULL);
}

static struct answer get_once(const char *key)
{
    return ask(key, GET, 0);
}

/* As restart, asserting on nothing that takes time: the stop, then the start. */
static void stop_then_start(unsigned shards)
{
    test_stop(NULL);
    pith_config_t cfg = test_config((int)shards);
    cfg.journal.dir = dir;
    test_start(&cfg);
}

static void restart(unsigned shards, uint64_t seg_bytes)
{
    test_stop(NULL);
    pith_config_t cfg = test_config((int)shards);
    cfg.journal.dir = dir;
    cfg.journal.segment_bytes = seg_bytes;
    test_start(&cfg);
}

Test(persist, snapshots_by_count_keep_the_last_k_and_shorten_recovery, SUITE)
{
    account_persist.snapshot = snapshot;
    account_persist.restore = restore;
    account_persist.snapshot_every = 10;
    account_persist.keep = 2;
    start_with(1, 0);
    int64_t want = 0;
    uint64_t check = 0;
    for (int64_t i = 1; i <= 95; i++) {
        struct answer r = ask("s", ADD, i);
        want += i;
        check = fold(check, i);
        cr_assert_eq(r.balance, want);
    }
    TEST_WAIT_FOR(pstats(1).snapshots == 9);
    cr_assert_eq(pstats(1).snapshot_failed, 0);
    restart(1, 0);
    struct answer r = get_once("s");
    cr_assert_eq(r.balance, want);
    cr_assert_eq(r.check, check);
    cr_assert_eq(r.events, 95);
    pith_persist_stats_t s = pstats(1);
    cr_assert_eq(s.restored, 1, "the latest snapshot restored");
    cr_assert_eq(s.replayed, 5, "only the events after it replayed");
    /* Two snapshots kept: event 80 can still be rebuilt, event 70 no longer (keep 2 of 10,
     * 20, ..., 90 leaves 80 and 90, and the events after 80). */
    struct account a;
    uint64_t n = 0;
    cr_assert_eq(pith_replay(&account, "s", 1, 85, PITH_REPLAY_EVENT, &a, &n), 0);
    cr_assert_eq(n, 85);
    cr_assert_eq(a.balance, 85 * 86 / 2);
    cr_assert_eq(pith_replay(&account, "s", 1, 70, PITH_REPLAY_EVENT, &a, &n), -ENODATA);
    test_stop(NULL);
}

Test(persist, a_snapshot_on_deactivation, SUITE)
{
    account_persist.snapshot = snapshot;
    account_persist.restore = restore;
    account_persist.flags = PITH_SNAPSHOT_ON_DEACTIVATE;
    start_with(1, 0);
    for (int64_t i = 1; i <= 7; i++)
        (void)ask("d", ADD, i);
    cr_assert_eq(pstats(1).snapshots, 0);
    (void)ask("d", DEACT, 0);
    TEST_WAIT_FOR(pstats(1).snapshots == 1);
    struct answer r = get_once("d");
    cr_assert_eq(r.balance, 28);
    cr_assert_eq(r.events, 7);
    pith_persist_stats_t s = pstats(1);
    cr_assert_eq(s.restored, 1);
    cr_assert_eq(s.replayed, 0);
    /* Nothing new since: deactivating again takes no snapshot. */
    (void)ask("d", DEACT, 0);
    (void)get_once("d");
    test_sync_all();
    cr_assert_eq(pstats(1).snapshots, 1);
    /* The engine stopping ends the activation too: three more events, then a stop, and the
     * next run restores them from that snapshot without replaying any. */
    for (int64_t i = 8; i <= 10; i++)
        (void)ask("d", ADD, i);
    restart(1, 0);
    r = get_once("d");
    cr_assert_eq(r.balance, 55);
    cr_assert_eq(r.events, 10);
    s = pstats(1);
    cr_assert_eq(s.restored, 1);
    cr_assert_eq(s.replayed, 0, "the stop's snapshot covered the last events: %llu replayed",
                 (unsigned long long)s.replayed);
    test_stop(NULL);
}

Test(persist, replay_rebuilds_the_state_at_an_event_or_a_time, SUITE)
{
    account_persist.snapshot = snapshot;
    account_persist.restore = restore;
    account_persist.snapshot_every = 10;
    account_persist.keep = 100;
    start_with(2, 0);
    uint64_t t30 = 0;
    uint64_t checks[61] = {0};
    for (int64_t i = 1; i <= 60; i++) {
        (void)ask("tt", ADD, i);
        checks[i] = fold(checks[i - 1], i);
        if (i == 30) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            t30 = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        }
    }
    TEST_WAIT_FOR(pstats(2).snapshots == 6);
    uint64_t points[] = {1, 9, 10, 11, 20, 35, 59, 60};
    for (unsigned k = 0; k < sizeof(points) / sizeof(points[0]); k++) {
        struct account a = {.balance = 12345};
        uint64_t n = 0;
        int rc = pith_replay(&account, "tt", 2, points[k], PITH_REPLAY_EVENT, &a, &n);
        cr_assert_eq(rc, 0, "replay until %llu: %d", (unsigned long long)points[k], rc);
        cr_assert_eq(n, points[k]);
        cr_assert_eq(a.balance, (int64_t)(points[k] * (points[k] + 1) / 2));
        cr_assert_eq(a.check, checks[points[k]], "the state at event %llu",
                     (unsigned long long)points[k]);
    }
    struct account a;
    uint64_t n = 0;
    cr_assert_eq(pith_replay(&account, "tt", 2, t30, PITH_REPLAY_TIME, &a, &n), 0);
    cr_assert_eq(n, 30, "the state at the time after event 30: %llu", (unsigned long long)n);
    cr_assert_eq(a.check, checks[30]);
    cr_assert_eq(pith_replay(&account, "tt", 2, UINT64_MAX, PITH_REPLAY_EVENT, &a, &n), 0);
    cr_assert_eq(n, 60);
    cr_assert_eq(pith_replay(&account, "tt", 2, 1000, PITH_REPLAY_TIME, &a, &n), -ENODATA,
                 "nothing was made by then");
    /* The live activation is not touched. */
    struct answer r = get_once("tt");
    cr_assert_eq(r.events, 60);
    cr_assert_eq(r.check, checks[60]);
    /* After a restart, from the journal alone. */
    restart(2, 0);
    cr_assert_eq(pith_replay(&account, "tt", 2, 35, PITH_REPLAY_EVENT, &a, &n), 0);
    cr_assert_eq(a.check, checks[35]);
    test_stop(NULL);
}

enum { BIG_LEN = 1000 };

static void send_big(const char *key, int64_t x)
{
    unsigned char buf[BIG_LEN];
    memset(buf, 0x5a, sizeof(buf));
    memcpy(buf, &x, sizeof(x));
    pith_vref_t v = key_of(key);
    cr_assert_eq(pith_client_vsend(pith_client_self(), &v, BIG, buf, sizeof(buf), PITH_FOREVER), 0);
}

Test(persist, compaction_keeps_the_journal_bounded_under_a_steady_load, SUITE)
{
    account_persist.snapshot = snapshot;
    account_persist.restore = restore;
    account_persist.snapshot_every = 50;
    start_with(1, 1 << 20);
    /* An idle key whose records sit in the first segment: they must move for it to go. */
    for (int64_t i = 1; i <= 3; i++)
        (void)ask("idle", ADD, i);
    enum { KEYS = 20, PER = 1000 };
    int64_t want[KEYS] = {0};
    char name[KEYS][16];
    for (int k = 0; k < KEYS; k++)
        snprintf(name[k], sizeof(name[k]), "load-%d", k);
    uint64_t most = 0;
    for (int round = 0; round < PER; round++) {
        for (int k = 0; k < KEYS; k++) {
            send_big(name[k], round + k);
            want[k] += round + k;
        }
        if (round % 20 == 19) {
            (void)get_once(name[0]); /* lets the load drain now and then */
            pith_journal_stats_t js;
            cr_assert_eq(pith_journal_stats(0, &js), 0);
            if (js.segments > most)
                most = js.segments;
        }
    }
    for (int k = 0; k < KEYS; k++)
        cr_assert_eq(get_once(name[k]).balance, want[k]);
    /* About 20 MiB of events went through 1 MiB segments (21 of them without compaction).
     * While they poured in, compaction (every 100 ms at most) kept the journal at a fraction of
     * that; once they stop, it comes down to what the keys need: their last snapshots and the
     * events after them (about 1 MiB), the idle key's records carried forward, and the tail. */
    cr_assert_leq(most, 9, "the journal held %llu segments at most", (unsigned long long)most);
    pith_journal_stats_t js;
    TEST_WAIT_FOR(pith_journal_stats(0, &js) == 0 && js.segments <= 5);
    cr_assert_geq(js.released, 16, "segments released: %llu", (unsigned long long)js.released);
    cr_assert_geq(pstats(1).carried, 1, "the idle key's records moved forward");
    restart(1, 1 << 20);
    cr_assert_eq(get_once("idle").balance, 6);
    for (int k = 0; k < KEYS; k++)
        cr_assert_eq(get_once(name[k]).balance, want[k]);
    test_stop(NULL);
}

static void remind(const char *key, uint64_t delay_ns, uint64_t period_ns)
{
    uint64_t arg[2] = {delay_ns, period_ns};
    pith_vref_t v = key_of(key);
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), &v, REMIND, arg, sizeof(arg), 5000 * MS, &reply);
    cr_assert_eq(rc, 0);
    struct answer r;
    memcpy(&r, reply.data, sizeof(r));
    cr_assert_eq(r.err, 0, "pith_reminder_set: %d", r.err);
}

Test(persist, reminders_fire_after_a_restart_and_stop_when_cancelled, SUITE)
{
    start_with(2, 0);
    /* Due in 300 ms (stretched under sanitizers and valgrind, whose restarts take longer); the
     * engine stops before then and starts again. */
    uint64_t delay = (uint64_t)(300.0 * test_timeout_multiplier()) * MS;
    remind("r1", delay, 0);
    TEST_WAIT_FOR(pstats(2).reminders == 1);
    stop_then_start(2);
    cr_assert_eq(atomic_load(&ticks[1]), 0,
                 "it fired before the stop: the test needs a longer delay");
    /* Read back from the journal, it fires in this run (it may have already: no count of it
     * pending is checked here, only the message). */
    TEST_WAIT_FOR(atomic_load(&ticks[1]) == 1);
    /* Once: it went, durably. */
    TEST_WAIT_FOR(pstats(2).reminders == 0);
    restart(2, 0);
    cr_assert_eq(pstats(2).reminders, 0);
    /* Every 20 ms until cancelled. */
    remind("r2", 10 * MS, 20 * MS);
    TEST_WAIT_FOR(atomic_load(&ticks[2]) >= 5);
    pith_vref_t v = key_of("r2");
    pith_msg_t reply;
    cr_assert_eq(pith_client_vask(pith_client_self(), &v, UNREMIND, NULL, 0, 5000 * MS, &reply), 0);
    struct answer r;
    memcpy(&r, reply.data, sizeof(r));
    cr_assert_eq(r.err, 0);
    uint64_t at = atomic_load(&ticks[2]);
    /* Nothing says "it did not fire": give it five periods to show that it does not. */
    usleep(100 * 1000);
    test_sync_all();
    cr_assert_leq(atomic_load(&ticks[2]), at + 1);
    cr_assert_eq(pith_client_vask(pith_client_self(), &v, UNREMIND, NULL, 0, 5000 * MS, &reply), 0);
    memcpy(&r, reply.data, sizeof(r));
    cr_assert_eq(r.err, -ENOENT);
    restart(2, 0);
    /* As above: a cancelled reminder shows only by not firing, so five periods pass. */
    usleep(100 * 1000);
    test_sync_all();
    cr_assert_leq(atomic_load(&ticks[2]), at + 1, "a cancelled reminder stays cancelled");
    test_stop(NULL);
}
