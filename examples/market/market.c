/* pith-market: a market-data and trading application on Pith. Reads (or generates) a day of
 * ITCH 5.0, feeds it from this thread to one book actor per instrument, whose signal actors ask
 * per-account risk actors for orders, which go out over TCP to pith-exchange; then prints what
 * happened: messages, orders, fills, rejects, losses and the latency of each stage. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "feed.h"
#include "floor.h"
#include "gen.h"
#include "itch.h"
#include "mkt.h"

struct options {
    const char *file;
    struct gen_config gen; /* with file NULL */
    uint64_t rate;
    int shards;
    const char *cpus;
    int feed_cpu;
    const char *exchange;
    const char *journal;
    int metrics_port;
    uint64_t sla_p99_us;
    const char *json;
    bool positions;
    bool progress;
    bool floor;
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: pith-market [--file DAY.itch | --gen SYMBOLS:MESSAGES[:SEED]] [--rate N]\n"
        "                   [--shards N] [--cpus LIST] [--feed-cpu N] [--accounts N]\n"
        "                   [--exchange HOST:PORT --journal DIR] [--no-signals] [--check]\n"
        "                   [--metrics-port N] [--sla-p99-us N] [--json FILE] [--progress]\n"
        "       pith-market --positions --journal DIR [--accounts N] [--shards N]\n"
        "  --file FILE       a day in Nasdaq's ITCH 5.0 binary layout (itch-gen writes one)\n"
        "  --gen S:M[:SEED]  generate a day of S symbols and M messages in memory instead\n"
        "  --rate N          book messages per second, each due at its scheduled time\n"
        "                    (default 0: as fast as the books take them)\n"
        "  --shards N        shards (default 1); --cpus LIST pins them (as $PITH_CPUS)\n"
        "  --feed-cpu N      pin the feed thread to CPU N (default: none)\n"
        "  --accounts N      risk accounts, 1..%u (default 4); locate %% N picks one\n"
        "  --exchange H:P    send orders to pith-exchange there (needs --journal)\n"
        "  --journal DIR     where the risk actors keep fills and positions\n"
        "  --no-signals      books only: no signal, risk or order stage\n"
        "  --check           check every book's top after every message against the\n"
        "                    reference book (book.c) fed the same day; exit 1 on a difference\n"
        "  --metrics-port N  serve the engine's metrics on 127.0.0.1:N while running\n"
        "  --sla-p99-us N    the book actors' SLA on their p99, mailbox and handler (default 50;\n"
        "                    0: none)\n"
        "  --json FILE       also write the summary, histograms included, as JSON\n"
        "  --positions       print the accounts' positions from the journal and exit\n"
        "  --progress        a line a second while the feed runs: messages, orders, fills\n"
        "  --book-spin-ns N  for tests: each book message takes N ns more (a slow book)\n",
        MKT_MAX_ACCOUNTS);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static int parse_gen(const char *s, struct gen_config *g)
{
    unsigned long long sym, msgs, seed = 1;
    int n = sscanf(s, "%llu:%llu:%llu", &sym, &msgs, &seed);
    if (n < 2 || sym == 0 || sym > MKT_MAX_LOCATE)
        return -1;
    g->symbols = (uint32_t)sym;
    g->messages = msgs;
    g->seed = seed;
    return 0;
}

/* ---- the day ---- */

/* A day from a file is mapped, not read: Nasdaq's files run to gigabytes, and the feed only
 * walks them once (after the check). day_mapped says how day_free gives it back. */
static bool day_mapped;

static uint8_t *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "pith-market: %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    *len = (size_t)st.st_size;
    void *p = *len > 0 ? mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0) : malloc(1);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED || p == NULL) {
        fprintf(stderr, "pith-market: %s: cannot map it: %s\n", path, strerror(err));
        return NULL;
    }
    day_mapped = *len > 0;
    if (day_mapped)
        (void)madvise(p, *len, MADV_SEQUENTIAL);
    return p;
}

static void day_free(uint8_t *day, size_t len)
{
    if (day_mapped)
        munmap(day, len);
    else
        free(day);
}

static uint8_t *generate(const struct gen_config *cfg, size_t *len)
{
    uint8_t *day = gen_day(cfg, len, NULL);
    if (day == NULL)
        fprintf(stderr, "pith-market: cannot generate the day: %s\n", strerror(errno));
    return day;
}

struct scan {
    uint16_t max_locate;
    uint64_t book_msgs;
    bool used[MKT_MAX_LOCATE + 1]; /* locates with book messages */
};

static int scan_visit(const struct itch_msg *m, size_t offset, void *arg)
{
    struct scan *s = arg;
    (void)offset;
    if (mkt_book_msg(m->type) && m->locate != 0) {
        if (m->locate > MKT_MAX_LOCATE)
            return -ERANGE;
        s->book_msgs++;
        s->used[m->locate] = true;
        if (m->locate > s->max_locate)
            s->max_locate = m->locate;
    }
    return 0;
}

/* The whole day is checked before anything runs: a corrupt or truncated file is refused with
 * the offset where it goes wrong, and nothing is fed. */
static int check_day(const char *name, const uint8_t *day, size_t len, struct scan *s)
{
    struct itch_read_stats st;
    int err = itch_read(day, len, scan_visit, s, &st);
    if (err == 0)
        return 0;
    if (err == -ERANGE)
        fprintf(stderr,
                "pith-market: %s: offset %zu: stock locate above %u, more than this build "
                "takes\n",
                name, st.offset, MKT_MAX_LOCATE);
    else
        fprintf(stderr, "pith-market: %s: offset %zu: %s\n", name, st.offset, itch_strerror(err));
    return err;
}

/* ---- the check against the reference books ---- */

struct ref_check {
    book_set_t *books;
    uint32_t digest[MKT_MAX_LOCATE + 1];
    uint64_t msgs[MKT_MAX_LOCATE + 1];
    uint64_t refused;
};

static int ref_visit(const struct itch_msg *m, size_t offset, void *arg)
{
    struct ref_check *rc = arg;
    (void)offset;
    if (!mkt_book_msg(m->type) || m->locate == 0)
        return 0;
    rc->refused += book_set_apply(rc->books, m) != 0;
    struct book_top top = {0};
    book_t *b = book_set_get(rc->books, m->locate);
    if (b != NULL)
        book_top(b, &top);
    rc->digest[m->locate] = pith_crc32c(rc->digest[m->locate], &top, sizeof top);
    rc->msgs[m->locate]++;
    return 0;
}

static int check_books(pith_client_t *c, const uint8_t *day, size_t len, uint16_t max_locate)
{
    struct ref_check *rc = calloc(1, sizeof *rc);
    if (rc == NULL ||
        (rc->books = book_set_create(max_locate, mkt_cfg.max_orders, mkt_cfg.max_levels)) == NULL) {
        free(rc);
        fprintf(stderr, "pith-market: check: no memory for the reference books\n");
        return -ENOMEM;
    }
    itch_read(day, len, ref_visit, rc, NULL);
    uint64_t books = 0, ticks = 0, differ = 0;
    for (unsigned l = 1; l <= max_locate; l++) {
        if (rc->msgs[l] == 0)
            continue;
        pith_vref_t v;
        pith_msg_t reply;
        struct book_report r;
        int err = books_vref((uint16_t)l, &v);
        if (err == 0)
            err = pith_client_vask(c, &v, MT_BOOKQ, NULL, 0, 5000000000, &reply);
        if (err != 0 || reply.len != sizeof r) {
            fprintf(stderr, "pith-market: check: book %u did not answer: %s\n", l,
                    pith_strerror(err));
            differ++;
            continue;
        }
        memcpy(&r, reply.data, sizeof r);
        books++;
        ticks += r.msgs;
        if (r.msgs != rc->msgs[l] || r.digest != rc->digest[l]) {
            if (differ < 10)
                fprintf(stderr,
                        "pith-market: check: book %u differs: %" PRIu64
                        " messages (reference %" PRIu64 "), digest %08x (reference %08x)\n",
                        l, r.msgs, rc->msgs[l], r.digest, rc->digest[l]);
            differ++;
        }
    }
    printf("check: %" PRIu64 " books, %" PRIu64 " messages: %s (the top of book after every "
           "message against the reference book; reference refused %" PRIu64 ")\n",
           books, ticks, differ == 0 ? "identical" : "DIFFERENT", rc->refused);
    book_set_destroy(rc->books);
    free(rc);
    return differ == 0 ? 0 : -EPROTO;
}

/* ---- the end of a run ---- */

struct totals {
    uint64_t ticks, refused, tobs, signals, risk_rejects, orders_sent, gw_down, accepted,
        exch_rejects, fills, fills_durable, fill_failed, undelivered, routed_late;
};

static uint64_t ld(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void sum(struct totals *t)
{
    memset(t, 0, sizeof *t);
    for (unsigned s = 0; s < mkt_cfg.shards; s++) {
        struct mkt_shard *m = &mkt_shards[s];
        t->ticks += ld(&m->ticks);
        t->refused += ld(&m->refused);
        t->tobs += ld(&m->tobs);
        t->signals += ld(&m->signals);
        t->risk_rejects += ld(&m->risk_rejects);
        t->orders_sent += ld(&m->orders_sent);
        t->gw_down += ld(&m->gw_down);
        t->accepted += ld(&m->accepted);
        t->exch_rejects += ld(&m->exch_rejects);
        t->fills += ld(&m->fills);
        t->fills_durable += ld(&m->fills_durable);
        t->fill_failed += ld(&m->fill_failed);
        t->undelivered += ld(&m->undelivered);
        t->routed_late += ld(&m->routed_late);
    }
}

/* Waits (up to timeout_ns) until the books have handled every tick and every order sent is
 * answered and its fills settled; true when they did. */
static bool settle(uint64_t fed, bool orders, uint64_t timeout_ns)
{
    uint64_t deadline = pith_now_ns() + timeout_ns;
    struct totals t;
    for (;;) {
        sum(&t);
        bool books = t.ticks >= fed;
        /* Each accepted order is filled whole (one fill, or two with --partial at the
         * exchange), so an order is settled once answered and its fills are durable. */
        bool ords =
            !orders || (t.accepted + t.exch_rejects >= t.orders_sent && t.fills >= t.accepted &&
                        t.fills_durable + t.fill_failed >= t.fills);
        /* Signals on their way to risk actors: counted when sent, settled when handled. */
        bool risk = !orders || t.risk_rejects + t.orders_sent + t.gw_down >= t.signals;
        if (books && ords && risk)
            return true;
        if (pith_now_ns() > deadline)
            return false;
        usleep(1000);
    }
}

static void progress(const struct feed_result *r)
{
    struct totals t;
    sum(&t);
    printf("progress: fed %" PRIu64 " handled %" PRIu64 " orders %" PRIu64 " fills %" PRIu64
           " durable %" PRIu64 "\n",
           r->book_msgs, t.ticks, t.orders_sent, t.fills, t.fills_durable);
    fflush(stdout);
}

static void on_undelivered(const pith_undelivered_t *u, void *ctx)
{
    (void)ctx;
    mkt_inc(&mkt_here()->undelivered, u->count);
}

static void *set_undelivered(void *arg)
{
    (void)arg;
    pith_on_undelivered(on_undelivered, NULL);
    return NULL;
}

static _Atomic uint64_t sla_reports;

static void on_sla(const pith_sla_report_t *r, void *ctx)
{
    (void)r;
    (void)ctx;
    atomic_fetch_add_explicit(&sla_reports, 1, memory_order_relaxed);
}

struct stage {
    const char *name;
    size_t off;
};

static const struct stage stages[] = {
    {"tick_to_book", offsetof(struct mkt_shard, to_book)},
    {"tick_to_signal", offsetof(struct mkt_shard, to_signal)},
    {"tick_to_risk", offsetof(struct mkt_shard, to_risk)},
    {"tick_to_order", offsetof(struct mkt_shard, to_order)},
    {"hop_book_signal", offsetof(struct mkt_shard, hop_signal)},
    {"hop_signal_risk", offsetof(struct mkt_shard, hop_risk)},
    {"hop_risk_wire", offsetof(struct mkt_shard, hop_wire)},
    {"order_to_fill", offsetof(struct mkt_shard, fill_rtt)},
};
#define NSTAGES (sizeof stages / sizeof stages[0])

static int positions(pith_client_t *c, unsigned accounts)
{
    int rc = 0;
    for (uint32_t a = 0; a < accounts; a++) {
        pith_vref_t v;
        pith_msg_t reply;
        struct risk_report r;
        int err = risk_vref(a, &v);
        if (err == 0)
            err = pith_client_vask(c, &v, MT_RISKQ, NULL, 0, 30000000000, &reply);
        if (err != 0 || reply.len != sizeof r) {
            fprintf(stderr, "pith-market: account %u: %s\n", a, pith_strerror(err));
            rc = 1;
            continue;
        }
        memcpy(&r, reply.data, sizeof r);
        printf("account %" PRIu32 " fills %" PRIu64 " last_seq %" PRIu64 " seq_gaps %" PRIu64
               " cash %" PRId64 " gross %" PRIu64 " symbols %" PRIu64 " events %" PRIu64 "\n",
               r.account, r.fills, r.last_seq, r.seq_gaps, r.cash, r.gross, r.nonzero, r.events);
        if (r.nonzero == 0)
            continue;
        /* Every symbol's position in one answer. */
        int64_t pos[MKT_MAX_LOCATE + 1];
        err = pith_client_vask(c, &v, MT_POSQ, NULL, 0, 30000000000, &reply);
        if (err != 0 || reply.len != sizeof pos) {
            fprintf(stderr, "pith-market: account %u's positions: %s\n", a, pith_strerror(err));
            rc = 1;
            continue;
        }
        memcpy(pos, reply.data, sizeof pos);
        for (unsigned l = 1; l <= MKT_MAX_LOCATE; l++)
            if (pos[l] != 0)
                printf("pos %" PRIu32 " %u %" PRId64 "\n", a, l, pos[l]);
    }
    return rc;
}

/* --floor: the day through a plain ring, no engine (floor.h). */
static int run_floor(const struct options *o, const uint8_t *day, size_t len)
{
    int book_cpu = o->cpus != NULL ? atoi(o->cpus) : -1;
    struct floor_result *r = calloc(1, sizeof *r);
    if (r == NULL)
        return 1;
    mkt_epoch_ns = pith_now_ns();
    int err = floor_run(day, len, o->rate, true, o->feed_cpu, book_cpu, r);
    if (err != 0) {
        fprintf(stderr, "pith-market: floor: %s\n", strerror(-err));
        free(r);
        return 1;
    }
    double secs = (double)(r->end_ns - r->start_ns) / 1e9;
    printf("floor: no engine, feed %s, %" PRIu64
           " book messages in %.3f s (%.0f/s), ring_full %" PRIu64 " refused %" PRIu64 "\n",
           o->rate ? "at a fixed rate" : "as fast as possible", r->msgs, secs,
           secs > 0 ? (double)r->msgs / secs : 0.0, r->ring_full, r->refused);
    lat_print(stdout, "feed_lateness", &r->late);
    lat_print(stdout, "tick_to_book", &r->to_book);
    int rc = r->refused != 0;
    if (o->json != NULL) {
        FILE *f = fopen(o->json, "w");
        if (f == NULL) {
            fprintf(stderr, "pith-market: %s: %s\n", o->json, strerror(errno));
            rc = 1;
        } else {
            fprintf(f,
                    "{\"floor\": true, \"rate\": %" PRIu64 ", \"messages\": %" PRIu64
                    ", \"seconds\": %.6f, \"ring_full\": %" PRIu64
                    ", \"stages\": {\"feed_lateness\": ",
                    o->rate, r->msgs, secs, r->ring_full);
            lat_json(f, &r->late);
            fprintf(f, ", \"tick_to_book\": ");
            lat_json(f, &r->to_book);
            fprintf(f, "}}\n");
            fclose(f);
        }
    }
    free(r);
    return rc;
}

int main(int argc, char **argv)
{
    struct options o = {.gen = {.seed = 1, .symbols = 200, .messages = 100000},
                        .shards = 1,
                        .feed_cpu = -1,
                        .sla_p99_us = 50};
    mkt_cfg = (struct mkt_config){.accounts = 4,
                                  .signals = true,
                                  .timing = true,
                                  .qty = 100,
                                  .cooldown = 256,
                                  .max_pos = 2000,
                                  .max_open_notional = UINT64_C(1000000) * 10000 * 10,
                                  .max_orders = 1u << 20,
                                  .max_levels = 1u << 16};
    enum {
        O_FILE = 256,
        O_GEN,
        O_RATE,
        O_SHARDS,
        O_CPUS,
        O_FEEDCPU,
        O_ACCOUNTS,
        O_EXCH,
        O_JOURNAL,
        O_NOSIG,
        O_CHECK,
        O_METRICS,
        O_SLA,
        O_JSON,
        O_POS,
        O_PROGRESS,
        O_SPIN,
        O_FLOOR,
        O_COOLDOWN,
        O_HELP
    };
    static const struct option longs[] = {{"file", required_argument, 0, O_FILE},
                                          {"gen", required_argument, 0, O_GEN},
                                          {"rate", required_argument, 0, O_RATE},
                                          {"shards", required_argument, 0, O_SHARDS},
                                          {"cpus", required_argument, 0, O_CPUS},
                                          {"feed-cpu", required_argument, 0, O_FEEDCPU},
                                          {"accounts", required_argument, 0, O_ACCOUNTS},
                                          {"exchange", required_argument, 0, O_EXCH},
                                          {"journal", required_argument, 0, O_JOURNAL},
                                          {"no-signals", no_argument, 0, O_NOSIG},
                                          {"check", no_argument, 0, O_CHECK},
                                          {"metrics-port", required_argument, 0, O_METRICS},
                                          {"sla-p99-us", required_argument, 0, O_SLA},
                                          {"json", required_argument, 0, O_JSON},
                                          {"positions", no_argument, 0, O_POS},
                                          {"progress", no_argument, 0, O_PROGRESS},
                                          {"book-spin-ns", required_argument, 0, O_SPIN},
                                          {"floor", no_argument, 0, O_FLOOR},
                                          {"cooldown", required_argument, 0, O_COOLDOWN},
                                          {"help", no_argument, 0, O_HELP},
                                          {0, 0, 0, 0}};
    int c;
    uint64_t v;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case O_FILE:
            o.file = optarg;
            break;
        case O_GEN:
            if (parse_gen(optarg, &o.gen) < 0)
                goto bad;
            break;
        case O_RATE:
            if (parse_u64(optarg, &o.rate) < 0)
                goto bad;
            break;
        case O_SHARDS:
            if (parse_u64(optarg, &v) < 0 || v == 0 || v > 256)
                goto bad;
            o.shards = (int)v;
            break;
        case O_CPUS:
            o.cpus = optarg;
            break;
        case O_FEEDCPU:
            if (parse_u64(optarg, &v) < 0 || v > 4095)
                goto bad;
            o.feed_cpu = (int)v;
            break;
        case O_ACCOUNTS:
            if (parse_u64(optarg, &v) < 0 || v == 0 || v > MKT_MAX_ACCOUNTS)
                goto bad;
            mkt_cfg.accounts = (unsigned)v;
            break;
        case O_EXCH:
            o.exchange = optarg;
            break;
        case O_JOURNAL:
            o.journal = optarg;
            break;
        case O_NOSIG:
            mkt_cfg.signals = false;
            break;
        case O_CHECK:
            mkt_cfg.check = true;
            break;
        case O_METRICS:
            if (parse_u64(optarg, &v) < 0 || v > 65535)
                goto bad;
            o.metrics_port = (int)v;
            break;
        case O_SLA:
            if (parse_u64(optarg, &o.sla_p99_us) < 0)
                goto bad;
            break;
        case O_JSON:
            o.json = optarg;
            break;
        case O_POS:
            o.positions = true;
            break;
        case O_PROGRESS:
            o.progress = true;
            break;
        case O_FLOOR:
            o.floor = true;
            break;
        case O_COOLDOWN:
            if (parse_u64(optarg, &v) < 0 || v > UINT32_MAX)
                goto bad;
            mkt_cfg.cooldown = (uint32_t)v;
            break;
        case O_SPIN:
            if (parse_u64(optarg, &mkt_cfg.book_spin_ns) < 0 || mkt_cfg.book_spin_ns > 1000000000)
                goto bad;
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        default:
            goto bad;
        }
    }
    if (optind != argc)
        goto bad;
    char host[64] = "";
    uint64_t port = 0;
    if (o.exchange != NULL) {
        const char *colon = strrchr(o.exchange, ':');
        if (colon == NULL || (size_t)(colon - o.exchange) >= sizeof host ||
            parse_u64(colon + 1, &port) < 0 || port == 0 || port > 65535)
            goto bad;
        memcpy(host, o.exchange, (size_t)(colon - o.exchange));
        if (o.journal == NULL) {
            fprintf(stderr, "pith-market: --exchange needs --journal DIR (fills are kept there)\n");
            return 2;
        }
    }
    if (o.positions && o.journal == NULL) {
        fprintf(stderr, "pith-market: --positions needs --journal DIR\n");
        return 2;
    }
    bool orders = o.exchange != NULL && mkt_cfg.signals;

    /* The day, checked whole before the engine starts. */
    uint8_t *day = NULL;
    size_t len = 0;
    static struct scan scan;
    if (!o.positions) {
        day = o.file != NULL ? read_file(o.file, &len) : generate(&o.gen, &len);
        if (day == NULL)
            return 2;
        if (check_day(o.file != NULL ? o.file : "generated day", day, len, &scan) != 0) {
            day_free(day, len);
            return 2;
        }
    }

    if (o.floor) {
        int rc = run_floor(&o, day, len);
        day_free(day, len);
        return rc;
    }

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    mkt_cfg.run_id = (uint64_t)ts.tv_sec & 0xffffffffu;
    int err = books_register();
    if (err == 0)
        err = risk_register();
    if (err != 0) {
        fprintf(stderr, "pith-market: cannot register the actor types: %s\n", pith_strerror(err));
        return 1;
    }
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = o.shards;
    if (o.cpus != NULL)
        setenv("PITH_CPUS", o.cpus, 1);
    cfg.journal.dir = o.journal;
    mkt_cfg.shards = (unsigned)o.shards;
    mkt_shards = aligned_alloc(64, sizeof *mkt_shards * mkt_cfg.shards);
    if (mkt_shards == NULL)
        return 1;
    memset(mkt_shards, 0, sizeof *mkt_shards * mkt_cfg.shards);
    mkt_epoch_ns = pith_now_ns();
    if (o.exchange != NULL && gateway_init(mkt_cfg.shards, host, (uint16_t)port) != 0)
        return 1;
    err = pith_engine_start(&cfg);
    if (err != 0) {
        fprintf(stderr, "pith-market: cannot start the engine: %s (%s)\n", pith_strerror(err),
                pith_last_error() != NULL ? pith_last_error() : "");
        return 1;
    }
    /* A client of its own, closed before the engine stops: the reply it holds last goes with
     * it (a thread's own client would hold it past the stop). */
    pith_client_config_t ccfg;
    pith_client_config_init(&ccfg);
    /* The feed's thread waits for lane room by polling for up to 1 ms before it sleeps: a feed
     * handler has its CPU to itself, and a futex wake-up per full lane cost the shard more
     * than the books did (a seventh of its time, measured with perf). */
    ccfg.spin_ns = 1000000;
    pith_client_t *client = pith_client_open(&ccfg);
    if (client == NULL) {
        fprintf(stderr, "pith-market: no client: %s\n", strerror(errno));
        pith_engine_stop();
        return 1;
    }
    for (unsigned s = 0; s < mkt_cfg.shards; s++)
        pith_client_call(client, s, set_undelivered, NULL, 5000000000, NULL);
    if (o.positions) {
        int rc = positions(client, mkt_cfg.accounts);
        pith_client_close(client);
        pith_engine_stop();
        return rc;
    }
    if (o.feed_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(o.feed_cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            fprintf(stderr, "pith-market: cannot pin the feed to CPU %d: %s\n", o.feed_cpu,
                    strerror(errno));
    }
    pith_listener_t metrics = 0;
    if (o.metrics_port > 0) {
        err = pith_metrics_serve("127.0.0.1", (uint16_t)o.metrics_port, &metrics);
        if (err != 0)
            fprintf(stderr, "pith-market: metrics on port %d: %s\n", o.metrics_port,
                    pith_strerror(err));
        else
            printf("metrics on 127.0.0.1:%d\n", o.metrics_port);
    }
    pith_sla_t sla = {.p99_ns = o.sla_p99_us * 1000,
                      .window_ns = 1000000000,
                      .remedies = PITH_SLA_PROFILE,
                      .on_report = on_sla};
    err = o.sla_p99_us > 0 ? pith_sla_set(pith_vtype_actor(&mkt_book_type), &sla) : 0;
    if (err != 0)
        fprintf(stderr, "pith-market: the books' SLA: %s\n", pith_strerror(err));
    if (!orders)
        mkt_cfg.accounts = mkt_cfg.signals && o.exchange != NULL ? mkt_cfg.accounts : 0;
    int rc = 0;
    if (orders) {
        for (unsigned s = 0; s < mkt_cfg.shards; s++)
            pith_client_call(client, s, gateway_connect, NULL, 5000000000, NULL);
        uint64_t deadline = pith_now_ns() + 5000000000;
        for (unsigned s = 0; s < mkt_cfg.shards; s++) {
            while (gateway_state(s) == 0 && pith_now_ns() < deadline)
                usleep(1000);
            if (gateway_state(s) != 1) {
                fprintf(stderr, "pith-market: shard %u cannot reach the exchange at %s: %s\n", s,
                        o.exchange,
                        pith_strerror(gateway_state(s) ? gateway_state(s) : -ETIMEDOUT));
                rc = 1;
            }
        }
        /* Each account's risk actor is activated, and its positions read back from the journal,
         * before the first tick, so that recovery is not charged to the first order. */
        for (uint32_t a = 0; a < mkt_cfg.accounts && rc == 0; a++) {
            pith_vref_t rv;
            pith_msg_t reply;
            err = risk_vref(a, &rv);
            if (err == 0)
                err = pith_client_vask(client, &rv, MT_RISKQ, NULL, 0, 30000000000, &reply);
            if (err != 0) {
                fprintf(stderr, "pith-market: account %u: %s\n", a, pith_strerror(err));
                rc = 1;
            }
        }
    }

    /* Every instrument of the directory gets its book (and signal actor) before the first tick,
     * as a trading system starts its day: activations are not charged to the feed. */
    for (unsigned l = 1; l <= scan.max_locate && rc == 0; l++) {
        if (!scan.used[l])
            continue;
        pith_vref_t bv;
        pith_msg_t reply;
        err = books_vref((uint16_t)l, &bv);
        if (err == 0)
            err = pith_client_vask(client, &bv, MT_BOOKQ, NULL, 0, 5000000000, &reply);
        if (err != 0) {
            fprintf(stderr, "pith-market: book %u: %s\n", l, pith_strerror(err));
            rc = 1;
        }
    }
    struct feed_result *fr = calloc(1, sizeof *fr);
    if (fr == NULL)
        rc = 1;
    if (rc == 0) {
        struct feed_config fc = {
            .day = day, .len = len, .rate = o.rate, .progress = o.progress ? progress : NULL};
        err = feed_run(client, &fc, fr);
        if (err != 0) {
            fprintf(stderr, "pith-market: the feed stopped at offset %zu: %s\n", fr->err_offset,
                    pith_strerror(err));
            rc = 1;
        }
    }
    bool settled = rc == 0 && settle(fr->book_msgs, orders, 30000000000);
    if (rc == 0 && !settled) {
        fprintf(stderr, "pith-market: the run did not settle within 30 s\n");
        rc = 1;
    }
    if (rc == 0 && mkt_cfg.check && check_books(client, day, len, scan.max_locate) != 0)
        rc = 1;
    struct totals t;
    sum(&t);
    if (orders)
        for (unsigned s = 0; s < mkt_cfg.shards; s++)
            pith_client_call(client, s, gateway_close, NULL, 5000000000, NULL);
    pith_sla_stats_t sla_st = {0};
    uint64_t sla_violations = 0, sla_evaluations = 0, sla_p99 = 0;
    for (unsigned s = 0; s < mkt_cfg.shards; s++)
        if (pith_sla_stats(pith_vtype_actor(&mkt_book_type), s, &sla_st) == 0) {
            sla_violations += sla_st.violations;
            sla_evaluations += sla_st.evaluations;
            if (sla_st.p99_ns > sla_p99)
                sla_p99 = sla_st.p99_ns;
        }
    if (metrics != 0)
        pith_tcp_unlisten(metrics);
    pith_client_close(client);
    pith_engine_stop();

    struct lat merged[NSTAGES];
    memset(merged, 0, sizeof merged);
    for (unsigned s = 0; s < mkt_cfg.shards; s++)
        for (size_t i = 0; i < NSTAGES; i++)
            lat_merge(&merged[i],
                      (const struct lat *)((const char *)&mkt_shards[s] + stages[i].off));
    uint64_t fed = fr != NULL ? fr->book_msgs : 0;
    uint64_t lost = (fed > t.ticks ? fed - t.ticks : 0) + t.undelivered + t.fill_failed;
    double secs = (double)(fr->end_ns - fr->start_ns) / 1e9;
    printf("pith-market: %u shard(s), feed %s, %" PRIu64 " book messages in %.3f s (%.0f/s)\n",
           mkt_cfg.shards, o.rate ? "at a fixed rate" : "as fast as possible", fed, secs,
           secs > 0 ? (double)fed / secs : 0.0);
    printf("messages %" PRIu64 " handled %" PRIu64 " refused %" PRIu64 " pushed_back %" PRIu64
           " tob_updates %" PRIu64 "\n",
           fed, t.ticks, t.refused, fr->pushed_back, t.tobs);
    printf("signals %" PRIu64 " risk_rejects %" PRIu64 " orders %" PRIu64 " no_gateway %" PRIu64
           " accepted %" PRIu64 " rejected %" PRIu64 " fills %" PRIu64 " durable %" PRIu64 "\n",
           t.signals, t.risk_rejects, t.orders_sent, t.gw_down, t.accepted, t.exch_rejects, t.fills,
           t.fills_durable);
    printf("losses %" PRIu64 " (unhandled ticks %" PRIu64 ", undelivered %" PRIu64
           ", fills not durable %" PRIu64 ")\n",
           lost, fed > t.ticks ? fed - t.ticks : 0, t.undelivered, t.fill_failed);
    printf("sla books p99 <= %" PRIu64 " us: evaluations %" PRIu64 " violations %" PRIu64
           " worst p99 %.2f us reports %" PRIu64 "\n",
           o.sla_p99_us, sla_evaluations, sla_violations, (double)sla_p99 / 1000,
           atomic_load(&sla_reports));
    lat_print(stdout, "feed_lateness", &fr->late);
    for (size_t i = 0; i < NSTAGES; i++)
        lat_print(stdout, stages[i].name, &merged[i]);
    if (o.json != NULL) {
        FILE *f = fopen(o.json, "w");
        if (f == NULL) {
            fprintf(stderr, "pith-market: %s: %s\n", o.json, strerror(errno));
            rc = 1;
        } else {
            fprintf(f,
                    "{\"shards\": %u, \"rate\": %" PRIu64 ", \"messages\": %" PRIu64
                    ", \"seconds\": %.6f, \"handled\": %" PRIu64 ", \"refused\": %" PRIu64
                    ", \"pushed_back\": %" PRIu64 ", \"signals\": %" PRIu64 ", \"orders\": %" PRIu64
                    ", \"risk_rejects\": %" PRIu64 ", \"fills\": %" PRIu64 ", \"losses\": %" PRIu64
                    ", \"stages\": {",
                    mkt_cfg.shards, o.rate, fed, secs, t.ticks, t.refused, fr->pushed_back,
                    t.signals, t.orders_sent, t.risk_rejects, t.fills, lost);
            fprintf(f, "\"feed_lateness\": ");
            lat_json(f, &fr->late);
            for (size_t i = 0; i < NSTAGES; i++) {
                fprintf(f, ", \"%s\": ", stages[i].name);
                lat_json(f, &merged[i]);
            }
            fprintf(f, "}}\n");
            fclose(f);
        }
    }
    if (lost != 0 || t.refused != 0)
        rc = rc ? rc : 1;
    free(fr);
    day_free(day, len);
    free(mkt_shards);
    gateway_fini();
    return rc;
bad:
    usage(stderr);
    return 2;
}
