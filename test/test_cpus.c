/* Which CPUs the shards get: by default the CPUs the process was allowed to run on when it
 * started (its affinity mask, as taskset sets it, within hwloc's allowed set), and an explicit
 * CPU outside them is refused. The mask is read once, when the library loads, so each case runs
 * cpus_child with the mask set before exec. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

/* PITH_TEST_CPUS_CHILD: the path of cpus_child, given by test/meson.build. */

/* What cpus_child printed. */
struct child_result {
    int start;
    char error[256];
    unsigned shards;
    int cpu[64];
    unsigned ncpu;
};

/* The CPUs this process may use, in order; returns how many (at most cap). */
static unsigned allowed_cpus(int *cpus, unsigned cap)
{
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof(set), &set), 0);
    unsigned n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < cap; c++)
        if (CPU_ISSET(c, &set))
            cpus[n++] = c;
    return n;
}

/* Runs cpus_child with argv[1..] under the affinity mask `mask`, and parses what it printed. */
static struct child_result run_child(const cpu_set_t *mask, const char *mode, const char *arg)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        if (sched_setaffinity(0, sizeof(*mask), mask) != 0 || dup2(fds[1], 1) < 0)
            _exit(126);
        char *argv[] = {(char *)PITH_TEST_CPUS_CHILD, (char *)mode, (char *)arg, NULL};
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    char text[4096];
    size_t len = 0;
    ssize_t got;
    while (len < sizeof(text) - 1 && (got = read(fds[0], text + len, sizeof(text) - 1 - len)) > 0)
        len += (size_t)got;
    text[len] = '\0';
    close(fds[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "cpus_child %s %s ended with status 0x%x; it printed:\n%s", mode, arg ? arg : "",
              status, text);

    struct child_result r = {.start = 1};
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (sscanf(line, "start=%d", &r.start) == 1)
            continue;
        if (strncmp(line, "error=", 6) == 0)
            snprintf(r.error, sizeof(r.error), "%s", line + 6);
        else if (sscanf(line, "shards=%u", &r.shards) == 1)
            continue;
        else if (r.ncpu < 64 && sscanf(line, "cpu=%d", &r.cpu[r.ncpu]) == 1)
            r.ncpu++;
    }
    return r;
}

static cpu_set_t only(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return set;
}

/* A mask of one CPU, as taskset -c N gives: one shard, on that CPU. */
static void expect_one_shard_on(int cpu)
{
    cpu_set_t mask = only(cpu);
    struct child_result r = run_child(&mask, "default", NULL);
    cr_assert_eq(r.start, 0, "start under mask {%d}: %d (%s)", cpu, r.start, r.error);
    cr_assert_eq(r.shards, 1u, "under mask {%d}: %u shards", cpu, r.shards);
    cr_assert_eq(r.ncpu, 1u);
    cr_assert_eq(r.cpu[0], cpu, "under mask {%d} the shard is on CPU %d", cpu, r.cpu[0]);
}

Test(cpus, default_shard_runs_on_the_one_cpu_of_the_start_mask, .timeout = 60)
{
    int cpus[1];
    cr_assert_eq(allowed_cpus(cpus, 1), 1u);
    expect_one_shard_on(cpus[0]);
}

/* The CPUs after the first are where a default that ignored the mask would show: it would put
 * the shard on the first. */
Test(cpus, default_shards_stay_inside_a_start_mask_without_the_first_cpu, .timeout = 60)
{
    int cpus[4];
    unsigned n = allowed_cpus(cpus, 4);
    if (n < 2)
        cr_skip_test("needs 2 CPUs: this process may use only CPU %d", cpus[0]);
    for (unsigned i = 1; i < n; i++)
        expect_one_shard_on(cpus[i]);
    /* All but the first: every shard inside the mask, each on its own CPU. */
    if (n >= 3) {
        cpu_set_t mask;
        CPU_ZERO(&mask);
        for (unsigned i = 1; i < n; i++)
            CPU_SET(cpus[i], &mask);
        struct child_result r = run_child(&mask, "default", NULL);
        cr_assert_eq(r.start, 0, "%s", r.error);
        cr_assert(r.shards >= 1 && r.shards <= n - 1, "%u shards for %u CPUs", r.shards, n - 1);
        for (unsigned i = 0; i < r.ncpu; i++) {
            cr_assert(r.cpu[i] >= 0 && CPU_ISSET(r.cpu[i], &mask), "shard %u on CPU %d", i,
                      r.cpu[i]);
            for (unsigned j = 0; j < i; j++)
                cr_assert_neq(r.cpu[i], r.cpu[j], "shards %u and %u share CPU %d", j, i, r.cpu[i]);
        }
    }
}

Test(cpus, an_explicit_cpu_outside_the_start_mask_is_einval, .timeout = 60)
{
    int cpus[2];
    if (allowed_cpus(cpus, 2) < 2)
        cr_skip_test("needs 2 CPUs: this process may use only CPU %d", cpus[0]);
    cpu_set_t mask = only(cpus[1]);
    char outside[16], inside[16], want[128];
    snprintf(outside, sizeof(outside), "%d", cpus[0]);
    snprintf(inside, sizeof(inside), "%d", cpus[1]);

    struct child_result r = run_child(&mask, "cpu", outside);
    cr_assert_eq(r.start, -EINVAL, "cfg.cpus = {%d} under mask {%d}: %d", cpus[0], cpus[1],
                 r.start);
    snprintf(want, sizeof(want), "cpus: CPU %d is outside the CPUs this process may use (%d)",
             cpus[0], cpus[1]);
    cr_assert_str_eq(r.error, want);

    r = run_child(&mask, "env", outside);
    cr_assert_eq(r.start, -EINVAL, "PITH_CPUS=%d under mask {%d}: %d", cpus[0], cpus[1], r.start);
    snprintf(want, sizeof(want), "PITH_CPUS: CPU %d is outside the CPUs this process may use (%d)",
             cpus[0], cpus[1]);
    cr_assert_str_eq(r.error, want);

    r = run_child(&mask, "cpu", inside);
    cr_assert_eq(r.start, 0, "cfg.cpus = {%d} under mask {%d}: %d (%s)", cpus[1], cpus[1], r.start,
                 r.error);
    cr_assert_eq(r.cpu[0], cpus[1]);
}

/* The default comes from the mask the process started with, not from the starting thread's
 * mask: an application may pin its own threads before it starts the engine. */
Test(cpus, pinning_the_starting_thread_does_not_change_the_default, .timeout = 60)
{
    int cpus[2];
    if (allowed_cpus(cpus, 2) < 2)
        cr_skip_test("needs 2 CPUs: this process may use only CPU %d", cpus[0]);
    cpu_set_t start_mask;
    cr_assert_eq(sched_getaffinity(0, sizeof(start_mask), &start_mask), 0);

    pith_config_t cfg = test_config(PITH_AUTO);
    unsetenv("PITH_CPUS");
    unsetenv("PITH_SHARDS");
    cr_assert_eq(pith_engine_start(&cfg), 0, "%s", pith_last_error());
    unsigned before = pith_shard_count();
    int before_cpu[64];
    for (unsigned i = 0; i < before && i < 64; i++) {
        pith_shard_stats_t st;
        cr_assert_eq(pith_shard_stats(i, &st), 0);
        before_cpu[i] = st.cpu;
    }
    test_stop(NULL);

    cpu_set_t mine = only(cpus[0]);
    cr_assert_eq(sched_setaffinity(0, sizeof(mine), &mine), 0);
    cr_assert_eq(pith_engine_start(&cfg), 0, "%s", pith_last_error());
    cr_assert_eq(pith_shard_count(), before, "%u shards after the pin, %u before",
                 pith_shard_count(), before);
    for (unsigned i = 0; i < before && i < 64; i++) {
        pith_shard_stats_t st;
        cr_assert_eq(pith_shard_stats(i, &st), 0);
        cr_assert_eq(st.cpu, before_cpu[i], "shard %u: CPU %d after the pin, %d before", i, st.cpu,
                     before_cpu[i]);
    }
    test_stop(NULL);
    cr_assert_eq(sched_setaffinity(0, sizeof(start_mask), &start_mask), 0);
}
