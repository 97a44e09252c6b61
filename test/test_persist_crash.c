/* Event-sourced virtual actors under kill -9: a child process runs 2 shards and 4 threads that
 * ask ADD +1 of 8 keys of a persistent type in a loop (the reply goes once the event is durable;
 * a snapshot every 7 events, 2 kept). Each thread writes a "sent" marker to a pipe before each
 * ask and the new balance after each reply. The child is killed with SIGKILL 10 to 150 ms after
 * its first reply, 20 times over on one journal directory, and after each kill an engine in this
 * process asks each key for its balance. Every acknowledged event must be there, nothing past
 * what was sent (each balance lies between the last round's plus the replies and the last
 * round's plus the asks sent), and each event applied once (balance = events applied = the
 * key's event number; no two replies with the same balance).
 * PITH_PERSIST_KILLS=100 build/test/test-shard --filter 'persist_crash/ *' runs it longer;
 * PITH_PERSIST_SEED sets the seed of the kill delays. */
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pith/persist.h>

#include "util.h"

#define KEYS    8u
#define THREADS 4u
#define ROUNDS  20

enum { ADD = 1, GET };

struct ledger {
    int64_t balance;
    uint64_t applied;
};

struct answer {
    int64_t balance;
    uint64_t applied;
    uint64_t events; /* pith_persist_events */
    int err;
    int pad;
};

/* What the child writes to the pipe: 16 bytes, so that each write is whole (under PIPE_BUF). */
enum { SENT = 1, ACKED, FAILED };
struct note {
    uint32_t kind;
    uint32_t key;
    int64_t value; /* ACKED: the balance replied; FAILED: the error */
};

static char dir[64];
static int note_fd = -1; /* the child's end of the pipe */
static pith_vref_t refs[KEYS];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- the ledger type ---- */

static void apply(void *state, const void *event, uint32_t len)
{
    struct ledger *l = state;
    int64_t x;
    if (len != sizeof(x))
        return;
    memcpy(&x, event, sizeof(x));
    l->balance += x;
    l->applied++;
}

static uint32_t snapshot(const void *state, void *buf, uint32_t cap)
{
    if (cap >= sizeof(struct ledger))
        memcpy(buf, state, sizeof(struct ledger));
    return sizeof(struct ledger);
}

static int restore(void *state, const void *data, uint32_t len)
{
    if (len != sizeof(struct ledger))
        return -EINVAL;
    memcpy(state, data, len);
    return 0;
}

static void answer(pith_actor_t *self, const struct ledger *l, const pith_msg_t *req, int err)
{
    struct answer r = {.err = err, .balance = l->balance, .applied = l->applied};
    r.events = pith_persist_events(self);
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

static int ledger_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct ledger *l = state;
    if (msg->type == GET) {
        answer(self, l, msg, 0);
    } else if (msg->type == ADD && msg->len == sizeof(int64_t)) {
        pith_msg_t *req = malloc(sizeof(*req)); /* what added replies to */
        if (req != NULL)
            *req = *msg;
        int err = req != NULL ? pith_persist(self, msg->data, msg->len, added, req) : -ENOMEM;
        if (err) {
            free(req);
            answer(self, l, msg, err);
        }
    }
    return 0;
}

static const pith_actor_type_t ledger_actor = {
    .name = "ledger",
    .behaviour = ledger_behaviour,
    .state_size = sizeof(struct ledger),
};

static const pith_persist_type_t ledger_persist = {
    .apply = apply,
    .snapshot = snapshot,
    .restore = restore,
    .snapshot_every = 7,
    .keep = 2,
};

static const pith_vtype_t ledger = {
    .name = "ledger", .actor = &ledger_actor, .persist = &ledger_persist};

/* Registers the type (again in the child: 0, it already is) and names the keys. */
static int setup_keys(void)
{
    int rc = pith_vtype_register(&ledger);
    for (unsigned k = 0; rc == 0 && k < KEYS; k++) {
        char name[16];
        int n = snprintf(name, sizeof(name), "ledger-%u", k);
        rc = pith_vref(&ledger, name, (size_t)n, &refs[k]);
    }
    return rc;
}

static pith_config_t crash_config(void)
{
    pith_config_t cfg = test_config(2);
    cfg.journal.dir = dir;
    cfg.journal.segment_bytes = 1 << 20;
    return cfg;
}

/* ---- the child ---- */

static void put(uint32_t kind, unsigned key, int64_t value)
{
    struct note n = {.kind = kind, .key = key, .value = value};
    ssize_t w = write(note_fd, &n, sizeof(n));
    (void)w;
}

/* One thread: ADD +1 to each key in turn, from its own client; stops at the first failure. */
static void *child_thread(void *arg)
{
    unsigned t = (unsigned)(uintptr_t)arg;
    pith_client_t *c = pith_client_self();
    uint64_t timeout = (uint64_t)(10000 * MS * test_timeout_multiplier());
    for (unsigned n = 2 * t;; n++) {
        unsigned k = n % KEYS;
        int64_t one = 1;
        pith_msg_t reply;
        put(SENT, k, 0);
        int rc = c != NULL ? pith_client_vask(c, &refs[k], ADD, &one, sizeof(one), timeout, &reply)
                           : -ENOMEM;
        struct answer a = {0};
        if (rc == 0 && reply.len != sizeof(a))
            rc = -EBADMSG;
        if (rc == 0) {
            memcpy(&a, reply.data, sizeof(a));
            rc = a.err;
        }
        if (rc == 0 && (a.applied != (uint64_t)a.balance || a.events != (uint64_t)a.balance))
            rc = -EILSEQ; /* an event applied twice or skipped, in the child's recovery */
        if (rc != 0) {
            put(FAILED, k, rc);
            return NULL;
        }
        put(ACKED, k, a.balance);
    }
}

static void child_main(int fd)
{
    note_fd = fd;
    if (setup_keys() != 0)
        _exit(2);
    pith_config_t cfg = crash_config();
    if (pith_engine_start(&cfg) != 0)
        _exit(3);
    for (unsigned t = 0; t < THREADS; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, child_thread, (void *)(uintptr_t)t) != 0)
            _exit(4);
    }
    for (;;)
        pause();
}

/* ---- the parent ---- */

struct tally {
    uint64_t sent[KEYS], acked[KEYS];
    int64_t *balances[KEYS]; /* the balances replied, acked[k] of them */
    uint64_t cap[KEYS];
    int failed, failed_key;
    int64_t failed_err;
};

static void take(struct tally *tl, const struct note *n)
{
    cr_assert_lt(n->key, KEYS);
    unsigned k = n->key;
    if (n->kind == SENT) {
        tl->sent[k]++;
    } else if (n->kind == ACKED) {
        if (tl->acked[k] == tl->cap[k]) {
            tl->cap[k] = tl->cap[k] != 0 ? 2 * tl->cap[k] : 1024;
            tl->balances[k] = realloc(tl->balances[k], tl->cap[k] * sizeof(int64_t));
            cr_assert_not_null(tl->balances[k]);
        }
        tl->balances[k][tl->acked[k]++] = n->value;
    } else {
        cr_assert_eq(n->kind, FAILED);
        if (tl->failed++ == 0) {
            tl->failed_key = (int)k;
            tl->failed_err = n->value;
        }
    }
}

/* Reads what the pipe holds (until EOF when `all`), whole notes at a time; false at EOF. */
static bool drain(int fd, struct tally *tl, unsigned char *buf, size_t *have, bool all)
{
    for (;;) {
        ssize_t r = read(fd, buf + *have, 4096 - *have);
        if (r <= 0)
            return false;
        *have += (size_t)r;
        size_t whole = *have / sizeof(struct note) * sizeof(struct note);
        for (size_t off = 0; off < whole; off += sizeof(struct note)) {
            struct note n;
            memcpy(&n, buf + off, sizeof(n));
            take(tl, &n);
        }
        memmove(buf, buf + whole, *have - whole);
        *have -= whole;
        if (!all)
            return true;
    }
}

static struct answer get(unsigned k)
{
    pith_msg_t reply;
    uint64_t timeout = (uint64_t)(10000 * MS * test_timeout_multiplier());
    int rc = pith_client_vask(pith_client_self(), &refs[k], GET, NULL, 0, timeout, &reply);
    cr_assert_eq(rc, 0, "GET of key %u: %d (%s)", k, rc, pith_strerror(rc));
    cr_assert_eq(reply.len, sizeof(struct answer));
    struct answer a;
    memcpy(&a, reply.data, sizeof(a));
    cr_assert_eq(a.err, 0);
    return a;
}

Test(persist_crash, acknowledged_events_survive_kill_9_at_random_moments, .timeout = 300)
{
    snprintf(dir, sizeof(dir), "/tmp/pith-pcrash-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(setup_keys(), 0);
    const char *env = getenv("PITH_PERSIST_SEED");
    unsigned seed =
        env != NULL && *env != '\0' ? (unsigned)strtoul(env, NULL, 10) : (unsigned)pith_now_ns();
    srand(seed);
    cr_log_info("persist_crash: seed %u (PITH_PERSIST_SEED)", seed);
    env = getenv("PITH_PERSIST_KILLS");
    int rounds = env != NULL && atoi(env) > 0 ? atoi(env) : ROUNDS;
    int64_t balance[KEYS] = {0}; /* each key's balance as recovered after the last round */
    uint64_t total_acked = 0, kept = 0, restored = 0;
    static struct tally tl;
    for (int round = 0; round < rounds; round++) {
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            close(p[0]);
            child_main(p[1]);
        }
        close(p[1]);
        /* Wait for the first reply, then kill after 10 to 150 ms more (stretched under
         * sanitizers and valgrind). */
        for (unsigned k = 0; k < KEYS; k++)
            free(tl.balances[k]);
        memset(&tl, 0, sizeof(tl));
        unsigned char buf[4096];
        size_t have = 0;
        uint64_t delay_ms = 10 + (uint64_t)(rand() % 141);
        uint64_t kill_at = 0,
                 deadline = pith_now_ns() + (uint64_t)(60e9 * test_timeout_multiplier());
        for (;;) {
            struct pollfd pf = {.fd = p[0], .events = POLLIN};
            uint64_t now = pith_now_ns();
            if ((kill_at != 0 && now >= kill_at) || now >= deadline)
                break;
            if (poll(&pf, 1, 1) > 0 && !drain(p[0], &tl, buf, &have, false))
                break;
            uint64_t acked = 0;
            for (unsigned k = 0; k < KEYS; k++)
                acked += tl.acked[k];
            if (kill_at == 0 && acked > 0)
                kill_at = now + delay_ms * MS * (uint64_t)test_timeout_multiplier();
        }
        kill(pid, SIGKILL);
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status), "round %d: the child ended by itself (%d)", round, status);
        (void)drain(p[0], &tl, buf, &have, true); /* what was written before the kill */
        close(p[0]);
        cr_assert_eq(tl.failed, 0, "round %d: a child's ADD of key %d failed: %lld (%s)", round,
                     tl.failed_key, (long long)tl.failed_err, pith_strerror((int)tl.failed_err));

        pith_config_t cfg = crash_config();
        test_start(&cfg);
        uint64_t acked_round = 0;
        for (unsigned k = 0; k < KEYS; k++) {
            struct answer a = get(k);
            int64_t lo = balance[k] + (int64_t)tl.acked[k], hi = balance[k] + (int64_t)tl.sent[k];
            cr_assert_leq(tl.sent[k] - tl.acked[k], THREADS,
                          "round %d key %u: %llu sent, %llu acknowledged", round, k,
                          (unsigned long long)tl.sent[k], (unsigned long long)tl.acked[k]);
            cr_assert(a.balance >= lo && a.balance <= hi,
                      "round %d (kill after %llu ms) key %u: balance %lld, want %lld to %lld "
                      "(%lld before, %llu acknowledged, %llu sent)",
                      round, (unsigned long long)delay_ms, k, (long long)a.balance, (long long)lo,
                      (long long)hi, (long long)balance[k], (unsigned long long)tl.acked[k],
                      (unsigned long long)tl.sent[k]);
            cr_assert(a.applied == (uint64_t)a.balance && a.events == (uint64_t)a.balance,
                      "round %d key %u: balance %lld, %llu events applied, event number %llu",
                      round, k, (long long)a.balance, (unsigned long long)a.applied,
                      (unsigned long long)a.events);
            /* Each reply showed its own event: distinct balances after the last round's, none
             * past what is there now. */
            uint64_t span = tl.sent[k] + 1;
            unsigned char *seen = calloc(span, 1);
            cr_assert_not_null(seen);
            for (uint64_t i = 0; i < tl.acked[k]; i++) {
                int64_t b = tl.balances[k][i];
                cr_assert(b > balance[k] && b <= a.balance,
                          "round %d key %u: a reply said %lld, recovered %lld (before: %lld)",
                          round, k, (long long)b, (long long)a.balance, (long long)balance[k]);
                cr_assert_not(seen[b - balance[k]], "round %d key %u: two replies said %lld", round,
                              k, (long long)b);
                seen[b - balance[k]] = 1;
            }
            free(seen);
            acked_round += tl.acked[k];
            kept += (uint64_t)(a.balance - lo);
            balance[k] = a.balance;
        }
        cr_assert_gt(acked_round, 0, "round %d: the child acknowledged nothing", round);
        total_acked += acked_round;
        for (unsigned s = 0; s < 2; s++) {
            pith_persist_stats_t ps;
            cr_assert_eq(pith_persist_stats(s, &ps), 0);
            restored += ps.restored;
        }
        test_stop(NULL);
    }
    for (unsigned k = 0; k < KEYS; k++)
        free(tl.balances[k]);
    cr_log_info("persist_crash: %d kills; %llu events acknowledged, %llu more sent and kept; %llu "
                "snapshots restored",
                rounds, (unsigned long long)total_acked, (unsigned long long)kept,
                (unsigned long long)restored);
    cr_assert_gt(restored, 0, "recoveries should start from snapshots");
    (void)nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
