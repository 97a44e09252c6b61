/* An application linked statically against libpith.a that defines names Pith uses inside: it
 * must link, its own definitions must be the ones it calls, and the engine must keep its own.
 * Built and run by check_link.sh; exits 0 when all of that holds. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <pith/pith.h>

/* Functions and variables libpith.a once made global (issue 13), with shapes of our own. Each
 * call counts, so that a call from inside the engine would show. */
static int own_calls;
int ring_init(int x)
{
    own_calls++;
    return x + 1;
}
const char *map_get(const char *key)
{
    own_calls++;
    return key;
}
void *mem_alloc(unsigned long n)
{
    own_calls++;
    return (void *)(uintptr_t)n;
}
int mesh_create(void)
{
    own_calls++;
    return 7;
}
int config_resolve = 11;
double tsc_per_ns = 2.5;
long shard_cur = 13;

static void *plus_one(void *arg)
{
    return (void *)((uintptr_t)arg + 1);
}

int main(void)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    int err = pith_engine_start(&cfg);
    if (err) {
        fprintf(stderr, "pith_engine_start: %s (%s)\n", pith_strerror(err), pith_last_error());
        return 1;
    }
    void *res = NULL;
    err = pith_call_wait(0, plus_one, (void *)41, &res);
    int stop = pith_engine_stop();
    if (err || res != (void *)42 || stop) {
        fprintf(stderr, "round trip: %d, result %p, stop %d\n", err, res, stop);
        return 1;
    }
    if (own_calls != 0) {
        fprintf(stderr, "the engine called %d of the application's functions\n", own_calls);
        return 1;
    }
    if (ring_init(1) != 2 || strcmp(map_get("k"), "k") != 0 || mem_alloc(5) != (void *)5 ||
        mesh_create() != 7 || own_calls != 4 || config_resolve != 11 || tsc_per_ns != 2.5 ||
        shard_cur != 13) {
        fprintf(stderr, "the application's own definitions were not the ones it reached\n");
        return 1;
    }
    if (strcmp(pith_version(), PITH_VERSION) != 0) {
        fprintf(stderr, "libpith is %s, its headers %s\n", pith_version(), PITH_VERSION);
        return 1;
    }
    printf("libpith %s: engine round trip done; the application's ring_init, map_get, mem_alloc, "
           "mesh_create and variables are its own\n",
           pith_version());
    return 0;
}
