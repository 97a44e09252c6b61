/* The stall detector: a task that spins past cfg.stall_ns is reported with its shard, function
 * and duration; ordinary work is not; stall_ns = 0 turns the detector off. */
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

/* After util.h: criterion/assert.h must come before criterion/redirect.h. */
#include "util.h"

#include <criterion/redirect.h>

static struct {
    atomic_uint reports;
    atomic_uint shard;
    atomic_uintptr_t fn, ctx;
    atomic_uint_fast64_t ns;
    char name[128]; /* written before `reported` is posted, read after */
    char actor_type[128];
    sem_t reported, spun;
} sl;

static void record_stall(const pith_stall_t *s, void *ctx)
{
    if (atomic_fetch_add(&sl.reports, 1) != 0)
        return;
    atomic_store(&sl.shard, s->shard);
    atomic_store(&sl.fn, (uintptr_t)s->fn);
    atomic_store(&sl.ns, s->ns);
    atomic_store(&sl.ctx, (uintptr_t)ctx);
    if (s->fn_name != NULL)
        snprintf(sl.name, sizeof sl.name, "%s", s->fn_name);
    if (s->actor_type != NULL)
        snprintf(sl.actor_type, sizeof sl.actor_type, "%s", s->actor_type);
    sem_post(&sl.reported);
}

/* Exported (the test binary links with --export-dynamic) so that the detector can name it. */
void pith_test_stall_spin(void *arg);

/* The deliberate stall: busy for arg milliseconds, as a runaway task would be; ten times as
 * long under valgrind, which runs one thread at a time and may give the watchdog no slice
 * within a short spin. */
void pith_test_stall_spin(void *arg)
{
    uint64_t end = pith_now_ns() + (uintptr_t)arg * MS * (test_on_valgrind() ? 10 : 1);
    while (pith_now_ns() < end)
        ;
    sem_post(&sl.spun);
}

static void init_sl(void)
{
    memset(&sl, 0, sizeof sl);
    cr_assert_eq(sem_init(&sl.reported, 0, 0), 0);
    cr_assert_eq(sem_init(&sl.spun, 0, 0), 0);
}

static pith_config_t stall_config(uint64_t stall_ns)
{
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = stall_ns;
    cfg.on_stall = record_stall;
    cfg.stall_ctx = &sl;
    return cfg;
}

Test(stall, spinning_task_is_reported_with_shard_fn_and_duration, .timeout = 30)
{
    init_sl();
    pith_config_t cfg = stall_config(5 * MS);
    test_start(&cfg);
    cr_assert_eq(pith_submit(1, pith_test_stall_spin, (void *)(uintptr_t)200), 0);
    sem_wait(&sl.reported);
    sem_wait(&sl.spun);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_eq(atomic_load(&sl.shard), 1);
    cr_assert_eq(atomic_load(&sl.fn), (uintptr_t)pith_test_stall_spin,
                 "the report names fn %#" PRIxPTR ", the spinning task is %p", atomic_load(&sl.fn),
                 (void *)(uintptr_t)pith_test_stall_spin);
    cr_assert_geq(atomic_load(&sl.ns), 5 * MS, "reported after %" PRIu64 " ns",
                  (uint64_t)atomic_load(&sl.ns));
    cr_assert_eq(atomic_load(&sl.ctx), (uintptr_t)&sl, "on_stall got another ctx");
    cr_assert_eq(atomic_load(&sl.reports), 1, "one 200 ms stall, rate-limited to one report");
    cr_assert_geq(st[1].stalls, 1);
    cr_assert_eq(st[0].stalls, 0);
    test_stop(NULL);
}

Test(stall, report_names_an_exported_function, .timeout = 30)
{
    init_sl();
    pith_config_t cfg = stall_config(5 * MS);
    test_start(&cfg);
    cr_assert_eq(pith_submit(0, pith_test_stall_spin, (void *)(uintptr_t)100), 0);
    sem_wait(&sl.reported);
    sem_wait(&sl.spun);
    cr_assert_str_eq(sl.name, "pith_test_stall_spin");
    test_stop(NULL);
}

/* A behaviour that stalls: the report names its type and the behaviour, not the engine's turn. */
static int stalling_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    pith_test_stall_spin((void *)(uintptr_t)100);
    return 0;
}

static const pith_actor_type_t stalling_type = {.name = "stall.slow_actor",
                                                .behaviour = stalling_behaviour};

Test(stall, report_names_the_actor_type_and_behaviour_of_a_stalling_turn, .timeout = 30)
{
    init_sl();
    pith_config_t cfg = stall_config(5 * MS);
    test_start(&cfg);
    pith_client_t *c = pith_client_self();
    pith_ref_t a;
    cr_assert_eq(pith_client_spawn(c, 1, &stalling_type, NULL, 5 * MS * 1000, &a), 0);
    cr_assert_eq(pith_client_send(c, a, 1, NULL, 0, 5 * MS * 1000), 0);
    sem_wait(&sl.reported);
    sem_wait(&sl.spun);
    cr_assert_eq(atomic_load(&sl.shard), 1);
    cr_assert_str_eq(sl.actor_type, "stall.slow_actor");
    cr_assert_eq(atomic_load(&sl.fn), (uintptr_t)stalling_behaviour,
                 "the report names the behaviour");
    test_stop(NULL);
}

static void *tiny_call(void *arg)
{
    return (void *)((uintptr_t)arg + 1);
}

Test(stall, ordinary_work_is_not_a_stall, .timeout = 30)
{
    init_sl();
    pith_config_t cfg = stall_config(20 * MS);
    test_start(&cfg);
    for (uintptr_t i = 0; i < 16; i++) {
        void *res = NULL;
        cr_assert_eq(pith_call_wait((unsigned)(i & 1), tiny_call, (void *)i, &res), 0);
        cr_assert_eq((uintptr_t)res, i + 1);
    }
    test_pingpong(0, 1, 1000);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_eq(atomic_load(&sl.reports), 0, "a stall of %" PRIu64 " ns on shard %u",
                 (uint64_t)atomic_load(&sl.ns), atomic_load(&sl.shard));
    cr_assert_eq(st[0].stalls, 0);
    cr_assert_eq(st[1].stalls, 0);
    test_stop(NULL);
}

Test(stall, zero_threshold_turns_the_detector_off, .timeout = 30)
{
    init_sl();
    pith_config_t cfg = stall_config(0);
    test_start(&cfg);
    cr_assert_eq(pith_submit(1, pith_test_stall_spin, (void *)(uintptr_t)60), 0);
    sem_wait(&sl.spun);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    test_stop(NULL);
    cr_assert_eq(atomic_load(&sl.reports), 0);
    cr_assert_eq(st[0].stalls, 0);
    cr_assert_eq(st[1].stalls, 0);
}

Test(stall, default_handler_prints_a_line_on_stderr, .init = cr_redirect_stderr, .timeout = 30)
{
    init_sl();
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = 5 * MS;
    test_start(&cfg);
    cr_assert_eq(pith_submit(1, pith_test_stall_spin, (void *)(uintptr_t)100), 0);
    sem_wait(&sl.spun);
    pith_shard_stats_t st[2];
    test_stats(st, 2);
    cr_assert_geq(st[1].stalls, 1);
    test_stop(NULL);
    fflush(stderr);
    FILE *err = cr_get_redirected_stderr();
    cr_assert_not_null(err);
    int fd = fileno(err);
    cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    cr_assert_gt(n, 0, "nothing was printed on stderr for a stall");
    buf[n] = '\0';
    cr_assert_not_null(strchr(buf, '\n'), "the stall line is not a line: \"%s\"", buf);
}
