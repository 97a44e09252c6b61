/* The journal under kill -9: a child process appends records as fast as it is acknowledged and
 * reports each acknowledgement on a pipe; it is killed with SIGKILL at a random moment, 20
 * times over, and after each kill an engine in this process reads the journal back. Every
 * acknowledged record must be there, and nothing but records the child appended, whole and in
 * sequence. Small segments, so that kills also land while a segment is being made.
 * PITH_JOURNAL_KILLS=100 build/test/test-shard --filter 'journal_crash/ *' runs it longer. */
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

#define INFLIGHT 16u
#define ROUNDS   20

static char dir[64];
static int ack_fd = -1; /* the child's end of the pipe */
static uint64_t next_stream;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* The payload of the record whose stream is i: its length and bytes follow from i. */
static uint32_t payload(uint64_t i, unsigned char *buf)
{
    uint32_t len = (uint32_t)(100 + i * 131 % 3000); /* about 300 to a 1 MiB segment */
    for (uint32_t k = 0; k < len; k++)
        buf[k] = (unsigned char)(i * 11 + k * 3);
    return len;
}

static pith_config_t crash_config(void)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    cfg.journal.dir = dir;
    cfg.journal.segment_bytes = 1 << 20;
    return cfg;
}

/* ---- the child ---- */

static void child_append(void);

static void child_acked(int err, uint64_t seq, void *ctx)
{
    (void)ctx;
    if (err == 0) {
        ssize_t w = write(ack_fd, &seq, sizeof(seq));
        (void)w;
    }
    child_append();
}

static void child_retry(void *arg)
{
    (void)arg;
    child_append();
}

static void child_append(void)
{
    unsigned char buf[4096];
    uint64_t i = next_stream;
    uint32_t len = payload(i, buf);
    int rc = pith_journal_append(i, 7, buf, len, child_acked, NULL, NULL);
    if (rc == 0)
        next_stream++;
    else
        (void)pith_submit(0, child_retry, NULL); /* a segment being made: again shortly */
}

static void child_start(void *arg)
{
    (void)arg;
    for (unsigned k = 0; k < INFLIGHT; k++)
        child_append();
}

static void child_main(int fd, uint64_t first_stream)
{
    ack_fd = fd;
    next_stream = first_stream;
    pith_config_t cfg = crash_config();
    if (pith_engine_start(&cfg) != 0)
        _exit(3);
    if (pith_submit(0, child_start, NULL) != 0)
        _exit(4);
    for (;;)
        pause();
}

/* ---- the parent: reading back ---- */

struct check {
    uint64_t n, last, bad, max_stream;
};

static int check_rec(const pith_journal_rec_t *r, void *ctx)
{
    struct check *c = ctx;
    unsigned char buf[4096];
    uint32_t len = payload(r->stream, buf);
    if (r->type != 7 || r->len != len || memcmp(r->data, buf, len) != 0 || r->seq != c->last + 1)
        c->bad++;
    c->last = r->seq;
    c->n++;
    if (r->stream + 1 > c->max_stream)
        c->max_stream = r->stream + 1;
    return 0;
}

static void *check_fn(void *arg)
{
    struct check *c = arg;
    if (pith_journal_scan(1, check_rec, c) != 0)
        c->bad = UINT64_MAX;
    return NULL;
}

Test(journal_crash, acknowledged_records_survive_kill_9_at_random_moments, .timeout = 600)
{
    snprintf(dir, sizeof(dir), "/tmp/pith-jcrash-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    srand((unsigned)pith_now_ns());
    uint64_t streams = 0, total_acked = 0;
    const char *env = getenv("PITH_JOURNAL_KILLS");
    int rounds = env != NULL && atoi(env) > 0 ? atoi(env) : ROUNDS;
    for (int round = 0; round < rounds; round++) {
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            close(p[0]);
            child_main(p[1], streams);
        }
        close(p[1]);
        /* Wait for the first acknowledgement, then kill after 0 to 30 ms more (stretched under
         * sanitizers and valgrind). */
        uint64_t max_acked = 0, got = 0;
        uint64_t kill_at = 0,
                 deadline = pith_now_ns() + (uint64_t)(60e9 * test_timeout_multiplier());
        for (;;) {
            struct pollfd pf = {.fd = p[0], .events = POLLIN};
            uint64_t now = pith_now_ns();
            if ((kill_at != 0 && now >= kill_at) || now >= deadline)
                break;
            if (poll(&pf, 1, 1) > 0) {
                uint64_t seq;
                if (read(p[0], &seq, sizeof(seq)) != (ssize_t)sizeof(seq))
                    break;
                max_acked = seq > max_acked ? seq : max_acked;
                if (got++ == 0)
                    kill_at =
                        now + (uint64_t)(rand() % 30) * MS * (uint64_t)test_timeout_multiplier();
            }
        }
        cr_assert_gt(got, 0, "round %d: the child acknowledged nothing", round);
        kill(pid, SIGKILL);
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status), "round %d: the child ended by itself (%d)", round, status);
        /* Acknowledgements written before the kill. */
        uint64_t seq;
        while (read(p[0], &seq, sizeof(seq)) == (ssize_t)sizeof(seq))
            max_acked = seq > max_acked ? seq : max_acked;
        close(p[0]);

        pith_config_t cfg = crash_config();
        test_start(&cfg);
        struct check c = {0};
        cr_assert_eq(pith_call_wait(0, check_fn, &c, NULL), 0);
        cr_assert_eq(c.bad, 0, "round %d: %llu records read back wrong", round,
                     (unsigned long long)c.bad);
        cr_assert_geq(c.last, max_acked, "round %d: acknowledged up to %llu, read back %llu", round,
                      (unsigned long long)max_acked, (unsigned long long)c.last);
        test_stop(NULL);
        streams = c.max_stream; /* the next child goes on after what is there */
        total_acked = max_acked;
    }
    pith_journal_stats_t st;
    pith_config_t cfg = crash_config();
    test_start(&cfg);
    struct check c = {0};
    cr_assert_eq(pith_call_wait(0, check_fn, &c, NULL), 0); /* opens it */
    cr_assert_eq(pith_journal_stats(0, &st), 0);
    test_stop(NULL);
    cr_log_info("%d kills; %llu records acknowledged in all, in %llu segments", rounds,
                (unsigned long long)total_acked, (unsigned long long)st.segments);
    cr_assert_gt(st.segments, 2, "the kills should land across segment changes");
    (void)nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
