/* test_cpus.c's child: started with an affinity mask set before exec, so that Pith's snapshot of
 * the CPUs the process may use is that mask. Starts an engine as argv says and prints what came
 * of it, one "key=value" line each, for the test to check:
 *   cpus_child default      shards and CPUs chosen by default (PITH_CPUS, PITH_SHARDS unset)
 *   cpus_child cpu N        cfg.cpus = {N}
 *   cpus_child env LIST     PITH_CPUS=LIST
 * Output: start=<rc> error=<pith_last_error()>, then, if it started, shards=<n> and one
 * cpu=<c> line per shard. Exits 0 unless the engine could not be stopped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pith/pith.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    unsetenv("PITH_CPUS");
    unsetenv("PITH_SHARDS");
    pith_config_t cfg;
    pith_config_init(&cfg);
    unsigned cpu;
    if (strcmp(argv[1], "cpu") == 0 && argc == 3) {
        cpu = (unsigned)strtoul(argv[2], NULL, 10);
        cfg.cpus = &cpu;
        cfg.ncpus = 1;
    } else if (strcmp(argv[1], "env") == 0 && argc == 3) {
        setenv("PITH_CPUS", argv[2], 1);
    } else if (strcmp(argv[1], "default") != 0) {
        return 2;
    }
    int rc = pith_engine_start(&cfg);
    printf("start=%d\nerror=%s\n", rc, pith_last_error());
    if (rc != 0)
        return 0;
    unsigned n = pith_shard_count();
    printf("shards=%u\n", n);
    for (unsigned i = 0; i < n; i++) {
        pith_shard_stats_t st;
        if (pith_shard_stats(i, &st) == 0)
            printf("cpu=%d\n", st.cpu);
    }
    fflush(stdout);
    return pith_engine_stop() == 0 ? 0 : 1;
}
