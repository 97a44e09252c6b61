/* The per-shard memory layer (pith/mem.h): what backs the extents and how that falls back, growth
 * up to the cap, remote frees from every shard, owner budgets, the accounts' invariants, the
 * malloc family's edge cases, allocation outside the engine, frees that outlive the engine,
 * mesh batches from the shard heap, reclaim, and extents pooled across restarts.
 * Work meant for a shard runs there through pith_call_wait and reports back in a struct: nothing
 * asserts on a shard thread. */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

#define MiB ((size_t)1 << 20)
#define HDR ((size_t)16) /* what the accounts add to each block */

/* What an account counts for a warm, 16-byte aligned block of `size` bytes: a small block
 * (size + header <= 256) its 16-byte class, at least 32 bytes; any other size + header. */
static size_t charged(size_t size)
{
    if (size + HDR > 256)
        return size + HDR;
    return size <= 16 ? 32 : (size + HDR + 15) & ~(size_t)15;
}

/* ---- helpers ---- */

static const char *const mem_env[] = {
    "PITH_MEM_INITIAL", "PITH_MEM_GROW", "PITH_MEM_CAP",  "PITH_MEM_HUGETLB",
    "PITH_MEM_THP",     "PITH_MEM_LOCK", "PITH_MEM_BIND",
};

/* A config with `shards` shards and no PITH_MEM_* from the environment to override it. */
static pith_config_t mem_config(int shards)
{
    for (size_t i = 0; i < sizeof(mem_env) / sizeof(mem_env[0]); i++)
        unsetenv(mem_env[i]);
    return test_config(shards);
}

static pith_mem_stats_t stats_of(int shard)
{
    pith_mem_stats_t st;
    memset(&st, 0xa5, sizeof(st));
    int rc = pith_mem_stats(shard, &st);
    cr_assert_eq(rc, 0, "pith_mem_stats(%d): %d (%s)", shard, rc, pith_strerror(rc));
    cr_assert_eq(st.shard, shard);
    return st;
}

static pith_mem_extent_t extent_of(int shard, unsigned i)
{
    pith_mem_extent_t x;
    memset(&x, 0xa5, sizeof(x));
    int rc = pith_mem_extent_info(shard, i, &x);
    cr_assert_eq(rc, 0, "pith_mem_extent_info(%d, %u): %d (%s)", shard, i, rc, pith_strerror(rc));
    return x;
}

static void *call_on(unsigned shard, pith_call_fn_t fn, void *arg)
{
    void *res = NULL;
    int rc = pith_call_wait(shard, fn, arg, &res);
    cr_assert_eq(rc, 0, "pith_call_wait(%u): %d (%s)", shard, rc, pith_strerror(rc));
    return res;
}

static void *malloc_fn(void *arg)
{
    return pith_malloc((size_t)(uintptr_t)arg);
}

static void *free_fn(void *arg)
{
    pith_free(arg);
    return NULL;
}

/* The first line of a small file, "" when it cannot be read. */
static void read_line(const char *path, char *buf, size_t len)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    if (fgets(buf, (int)len, f) == NULL)
        buf[0] = '\0';
    fclose(f);
}

static size_t hugetlb_free_bytes(void)
{
    char line[64];
    read_line("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", line, sizeof(line));
    return (size_t)strtoul(line, NULL, 10) << 21;
}

static bool thp_enabled(void)
{
    char line[128];
    read_line("/sys/kernel/mm/transparent_hugepage/enabled", line, sizeof(line));
    return line[0] != '\0' && strstr(line, "[never]") == NULL;
}

/* As root mlock cannot be refused. (valgrind 3.19 lacks mlock2: extents are locked whole there.) */
static bool lock_expected(void)
{
    return geteuid() == 0;
}

/* AnonHugePages, in bytes, of the /proc/self/smaps entries that overlap [base, base + size). */
static size_t smaps_huge_bytes(const void *base, size_t size)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL)
        return 0;
    uintptr_t lo = (uintptr_t)base, hi = lo + size;
    char line[512];
    bool in = false;
    size_t total = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long a, b;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) == 3) {
            in = a < hi && b > lo;
            continue;
        }
        size_t kb;
        if (in && sscanf(line, "AnonHugePages: %zu kB", &kb) == 1)
            total += kb * 1024;
    }
    fclose(f);
    return total;
}

static void fill(void *p, size_t n, unsigned seed)
{
    unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        c[i] = (unsigned char)(i * 31u + seed);
}

static bool check(const void *p, size_t n, unsigned seed)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != (unsigned char)(i * 31u + seed))
            return false;
    return true;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* ---- 1. modes and their fallbacks ---- */

/* Allocates 1 MiB on the shard and touches every byte, so that the extent has resident pages. */
static void *touch_fn(void *arg)
{
    (void)arg;
    void *p = pith_malloc(MiB);
    if (p != NULL)
        memset(p, 0x5a, MiB);
    return p;
}

Test(mem, default_mode_is_the_best_the_machine_grants, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    size_t huge_free = hugetlb_free_bytes();
    test_start(&cfg);
    void *blk[2];
    for (int s = 0; s < 2; s++) {
        blk[s] = call_on((unsigned)s, touch_fn, NULL);
        cr_assert_not_null(blk[s]);
    }
    for (int s = 0; s < 2; s++) {
        pith_mem_extent_t x = extent_of(s, 0);
        pith_mem_stats_t st = stats_of(s);
        cr_assert_eq(x.profile, PITH_MEM_WARM);
        cr_assert_eq(x.size, 32 * MiB, "extent 0 is cfg.mem.initial (32 MiB), not %zu", x.size);
        cr_assert_eq((uintptr_t)x.base % (32 * MiB), 0, "extent at %p is not 32 MiB-aligned",
                     x.base);
        if (huge_free >= 2 * 32 * MiB) {
            cr_assert_eq(x.backing, PITH_MEM_HUGETLB,
                         "shard %d: %zu MiB of free hugepages, backing %d", s, huge_free >> 20,
                         x.backing);
        } else if (huge_free < 32 * MiB) {
            pith_mem_backing_t want = thp_enabled() ? PITH_MEM_THP : PITH_MEM_PLAIN;
            cr_assert_eq(x.backing, want, "shard %d: no hugetlb pool, THP %s: backing %d", s,
                         thp_enabled() ? "on" : "off", x.backing);
        } else {
            cr_assert_leq(x.backing, PITH_MEM_PLAIN); /* enough for one shard only: either */
        }
        cr_assert_eq(st.extents, 1u);
        cr_assert_eq(st.reserved, 32 * MiB);
        cr_assert_eq(st.profile_reserved[PITH_MEM_WARM], 32 * MiB);
        cr_assert_geq(st.committed, MiB, "1 MiB was touched, %zu bytes resident", st.committed);
        cr_assert_eq(st.arena_failures, 0);
        if (lock_expected()) {
            cr_assert(x.locked, "shard %d: root, yet extent 0 is not locked", s);
            cr_assert_eq(st.lock_failures, 0);
            cr_assert_eq(
                st.locked, st.committed,
                "every resident byte of a locked extent is locked: locked %zu, committed %zu",
                st.locked, st.committed);
        } else {
            cr_log_info("not root: lock state not checked");
        }
        cr_assert_eq(pith_mem_extent_info(s, 1, &x), -ENOENT);
    }
    for (int s = 0; s < 2; s++)
        call_on((unsigned)s, free_fn, blk[s]);
    test_stop(NULL);
}

Test(mem, no_hugetlb_no_thp_gives_plain_pages, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    cfg.mem.flags = PITH_MEM_NO_HUGETLB | PITH_MEM_NO_THP;
    test_start(&cfg);
    for (int s = 0; s < 2; s++) {
        void *p = call_on((unsigned)s, touch_fn, NULL);
        cr_assert_not_null(p);
        pith_mem_extent_t x = extent_of(s, 0);
        cr_assert_eq(x.backing, PITH_MEM_PLAIN, "shard %d: backing %d", s, x.backing);
        cr_assert_not(x.prefaulted);
        pith_mem_stats_t st = stats_of(s);
        cr_assert_eq(st.huge, 0, "plain pages, yet %zu huge bytes", st.huge);
        cr_assert_geq(st.committed, MiB);
        call_on((unsigned)s, free_fn, p);
    }
    test_stop(NULL);
}

static void assert_unlocked(unsigned shards)
{
    for (unsigned s = 0; s < shards; s++) {
        void *p = call_on(s, touch_fn, NULL);
        cr_assert_not_null(p);
        pith_mem_extent_t x = extent_of((int)s, 0);
        cr_assert_not(x.locked, "shard %u: extent locked although locking is off", s);
        pith_mem_stats_t st = stats_of((int)s);
        cr_assert_geq(st.lock_failures, 1, "shard %u: an unlocked warm extent is a lock failure",
                      s);
        /* Under valgrind blocks come from libc: nothing of the extent need be resident. */
        if (!test_on_valgrind())
            cr_assert_geq(st.committed, MiB);
        cr_assert_eq(st.locked, 0, "shard %u: %zu bytes locked", s, st.locked);
        call_on(s, free_fn, p);
    }
}

Test(mem, no_lock_flag_leaves_extents_unlocked_and_counts_it, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    cfg.mem.flags = PITH_MEM_NO_LOCK;
    test_start(&cfg);
    assert_unlocked(2);
    test_stop(NULL);
}

Test(mem, env_pith_mem_lock_0_is_the_no_lock_flag, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    setenv("PITH_MEM_LOCK", "0", 1);
    int rc = pith_engine_start(&cfg);
    unsetenv("PITH_MEM_LOCK");
    cr_assert_eq(rc, 0, "pith_engine_start: %d: %s", rc, pith_last_error());
    assert_unlocked(2);
    test_stop(NULL);
    /* Without it the next engine locks again, on the very extents that were unlocked. */
    test_start(&cfg);
    pith_mem_extent_t x = extent_of(0, 0);
    pith_mem_stats_t st = stats_of(0);
    if (lock_expected()) {
        cr_assert(x.locked, "a pooled extent was not locked again");
        cr_assert_eq(st.lock_failures, 0);
    }
    test_stop(NULL);
}

static void assert_start_einval(const pith_config_t *cfg, const char *needle, const char *what)
{
    int rc = pith_engine_start(cfg);
    cr_assert_eq(rc, -EINVAL, "%s: pith_engine_start returned %d (%s)", what, rc,
                 pith_strerror(rc));
    cr_assert_eq(pith_shard_count(), 0u);
    const char *msg = pith_last_error();
    cr_assert_not_null(msg);
    cr_assert_not_null(strstr(msg, needle), "%s: the error should mention %s: \"%s\"", what, needle,
                       msg);
}

Test(mem, bad_memory_settings_are_einval_and_named, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    setenv("PITH_MEM_CAP", "lots", 1);
    assert_start_einval(&cfg, "PITH_MEM_CAP", "PITH_MEM_CAP=lots");
    setenv("PITH_MEM_CAP", "12X", 1);
    assert_start_einval(&cfg, "PITH_MEM_CAP", "PITH_MEM_CAP=12X");
    unsetenv("PITH_MEM_CAP");
    setenv("PITH_MEM_LOCK", "yes", 1);
    assert_start_einval(&cfg, "PITH_MEM_LOCK", "PITH_MEM_LOCK=yes");
    unsetenv("PITH_MEM_LOCK");

    cfg = mem_config(1);
    cfg.mem.initial = 64 * MiB;
    cfg.mem.cap = 32 * MiB;
    assert_start_einval(&cfg, "cap", "cap below initial");
    cfg = mem_config(1);
    cfg.mem.flags = 1u << 9;
    assert_start_einval(&cfg, "flags", "unknown mem.flags bit");

    cfg = mem_config(1);
    test_start(&cfg);
    test_stop(NULL);
}

Test(mem, sizes_round_up_to_32_mib_and_the_environment_overrides_them, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    cfg.mem.initial = 1;
    test_start(&cfg);
    pith_mem_stats_t st = stats_of(0);
    cr_assert_eq(extent_of(0, 0).size, 32 * MiB);
    /* The default cap: half the RAM shared among the shards, at least 64 MiB. */
    size_t ram = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
    size_t cap = (ram / 2 / 2) & ~(32 * MiB - 1);
    if (cap < 64 * MiB)
        cap = 64 * MiB;
    cr_assert_eq(st.cap, cap, "default cap %zu MiB, expected %zu MiB", st.cap >> 20, cap >> 20);
    test_stop(NULL);

    cfg = mem_config(1);
    cfg.mem.initial = 32 * MiB;
    cfg.mem.cap = 256 * MiB;
    setenv("PITH_MEM_INITIAL", "40M", 1);
    setenv("PITH_MEM_CAP", "1G", 1);
    int rc = pith_engine_start(&cfg);
    unsetenv("PITH_MEM_INITIAL");
    unsetenv("PITH_MEM_CAP");
    cr_assert_eq(rc, 0, "pith_engine_start: %d: %s", rc, pith_last_error());
    st = stats_of(0);
    cr_assert_eq(st.cap, 1024 * MiB, "PITH_MEM_CAP=1G gave a cap of %zu MiB", st.cap >> 20);
    cr_assert_eq(extent_of(0, 0).size, 64 * MiB, "PITH_MEM_INITIAL=40M rounds up to 64 MiB");
    cr_assert_eq(st.reserved, 64 * MiB);
    test_stop(NULL);
}

static struct {
    pith_mem_stats_t before, after;
    int err;
} hi;

static void *hot_cold_first_fn(void *arg)
{
    (void)arg;
    hi.before = stats_of(0);
    void *h = pith_malloc_ex(4096, 0, PITH_MEM_HOT, 0);
    void *c = pith_malloc_ex(4096, 0, PITH_MEM_COLD, 0);
    hi.after = stats_of(0);
    hi.err = h != NULL && c != NULL ? 0 : errno;
    pith_free(h);
    pith_free(c);
    return NULL;
}

Test(mem, hot_and_cold_initial_make_their_extents_at_start, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    cfg.mem.hot_initial = 1; /* rounds up to 32 MiB */
    setenv("PITH_MEM_COLD_INITIAL", "40M", 1);
    int rc = pith_engine_start(&cfg);
    unsetenv("PITH_MEM_COLD_INITIAL");
    cr_assert_eq(rc, 0, "pith_engine_start: %d: %s", rc, pith_last_error());
    for (int s = 0; s < 2; s++) {
        pith_mem_stats_t st = stats_of(s);
        cr_assert_eq(st.extents, 3, "shard %d has %u extents", s, st.extents);
        cr_assert_eq(st.profile_reserved[PITH_MEM_WARM], 32 * MiB);
        cr_assert_eq(st.profile_reserved[PITH_MEM_HOT], 32 * MiB);
        cr_assert_eq(st.profile_reserved[PITH_MEM_COLD], 64 * MiB, "PITH_MEM_COLD_INITIAL=40M");
        pith_mem_extent_t hot = extent_of(s, 1), cold = extent_of(s, 2);
        cr_assert_eq(hot.profile, PITH_MEM_HOT);
        cr_assert(hot.prefaulted, "shard %d: the hot extent was not prefaulted at start", s);
        if (lock_expected())
            cr_assert(hot.locked, "shard %d: the hot extent is not locked", s);
        cr_assert_eq(cold.profile, PITH_MEM_COLD);
        cr_assert_not(cold.locked);
    }
    /* The first allocations in those profiles find their extents made. */
    call_on(0, hot_cold_first_fn, NULL);
    cr_assert_eq(hi.err, 0);
    cr_assert_eq(hi.after.extents, hi.before.extents);
    cr_assert_eq(hi.after.grows, hi.before.grows);
    cr_assert_eq(hi.after.reserved, hi.before.reserved);
    test_stop(NULL);

    cfg = mem_config(1);
    cfg.mem.cap = 64 * MiB;
    cfg.mem.hot_initial = 64 * MiB;
    assert_start_einval(&cfg, "hot_initial", "initial + hot_initial above the cap");
    cfg = mem_config(1);
    cfg.mem.cold_initial = SIZE_MAX - 16 * MiB;
    assert_start_einval(&cfg, "cold_initial", "a cold_initial that wraps");
}

/* ---- 2. growth up to the cap ---- */

#define GROW_MAX 1000

static struct grow_run {
    void *blk[GROW_MAX];
    unsigned n;
    int err;
    bool refused;
    void *again;
    int again_err;
} gr;

static void *grow_fill_fn(void *arg)
{
    size_t size = (size_t)(uintptr_t)arg;
    gr.refused = false;
    for (gr.n = 0; gr.n < GROW_MAX; gr.n++) {
        errno = 0;
        void *p = pith_malloc(size);
        if (p == NULL) {
            gr.err = errno;
            gr.refused = true;
            break;
        }
        ((volatile char *)p)[0] = 1;
        ((volatile char *)p)[size - 1] = 2;
        gr.blk[gr.n] = p;
    }
    return NULL;
}

static void *grow_free_fn(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < gr.n; i++)
        pith_free(gr.blk[i]);
    errno = 0;
    gr.again = pith_malloc(MiB);
    gr.again_err = errno;
    return NULL;
}

Test(mem, growth_doubles_up_to_the_cap_then_enomem, .timeout = 60)
{
    pith_config_t cfg = mem_config(1);
    cfg.mem.initial = 32 * MiB;
    cfg.mem.grow = 32 * MiB;
    cfg.mem.cap = 128 * MiB;
    test_start(&cfg);
    pith_mem_stats_t before = stats_of(0);
    cr_assert_eq(before.cap, 128 * MiB);
    cr_assert_eq(before.reserved, 32 * MiB);

    call_on(0, grow_fill_fn, (void *)(uintptr_t)MiB);
    cr_assert(gr.refused, "%u blocks of 1 MiB and no refusal under a 128 MiB cap", gr.n);
    cr_assert_eq(gr.err, ENOMEM, "errno %d", gr.err);
    cr_assert_gt(gr.n, 64u, "only %u MiB allocated under a 128 MiB cap", gr.n);
    pith_mem_stats_t st = stats_of(0);
    cr_assert_eq(st.reserved, 128 * MiB, "reserved %zu MiB", st.reserved >> 20);
    cr_assert_eq(st.profile_reserved[PITH_MEM_WARM], 128 * MiB);
    cr_assert_geq(st.cap_refusals, 1);
    cr_assert_eq(st.extents, 3u, "32 + 32 + 64 MiB: 3 extents, not %u", st.extents);
    cr_assert_eq(st.grows, 2);
    cr_assert_eq(st.arena_failures, 0);
    cr_assert_eq(extent_of(0, 0).size, 32 * MiB);
    cr_assert_eq(extent_of(0, 1).size, 32 * MiB);
    cr_assert_eq(extent_of(0, 2).size, 64 * MiB);
    cr_assert_eq(st.in_use, before.in_use + gr.n * (MiB + HDR));
    cr_assert_geq(st.peak, st.in_use);

    /* Refused again: no growth past the cap. */
    void *p = call_on(0, malloc_fn, (void *)(uintptr_t)MiB);
    cr_assert_null(p);
    pith_mem_stats_t st2 = stats_of(0);
    cr_assert_eq(st2.cap_refusals, st.cap_refusals + 1);
    cr_assert_eq(st2.extents, 3u);

    call_on(0, grow_free_fn, NULL);
    cr_assert_not_null(gr.again, "no 1 MiB block after everything was freed (errno %d)",
                       gr.again_err);
    st = stats_of(0);
    cr_assert_eq(st.in_use, before.in_use + MiB + HDR);
    call_on(0, free_fn, gr.again);
    st = stats_of(0);
    cr_assert_eq(st.in_use, before.in_use);
    cr_assert_eq(st.reserved, 128 * MiB);
    test_stop(NULL);
}

static struct {
    void *big;
    void *huge;
    int huge_err;
    size_t usable;
    bool intact;
} gb;

static void *big_block_fn(void *arg)
{
    (void)arg;
    size_t n = 40 * MiB;
    gb.big = pith_malloc(n);
    if (gb.big != NULL) {
        gb.usable = pith_malloc_usable_size(gb.big);
        memset(gb.big, 0x33, n);
        gb.intact =
            ((unsigned char *)gb.big)[0] == 0x33 && ((unsigned char *)gb.big)[n - 1] == 0x33;
    }
    errno = 0;
    gb.huge = pith_malloc(300 * MiB);
    gb.huge_err = errno;
    return NULL;
}

Test(mem, a_block_larger_than_the_grow_step_gets_an_extent_that_fits, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    cfg.mem.cap = 256 * MiB;
    test_start(&cfg);
    pith_mem_stats_t before = stats_of(0);
    call_on(0, big_block_fn, NULL);
    cr_assert_not_null(gb.big, "a 40 MiB block under a 256 MiB cap");
    cr_assert(gb.intact);
    cr_assert_geq(gb.usable, 40 * MiB);
    cr_assert_null(gb.huge, "a 300 MiB block under a 256 MiB cap");
    cr_assert_eq(gb.huge_err, ENOMEM);
    pith_mem_stats_t st = stats_of(0);
    cr_assert_eq(st.in_use, before.in_use + 40 * MiB + HDR);
    cr_assert_leq(st.reserved, 256 * MiB);
    cr_assert_geq(st.reserved, 32 * MiB + 40 * MiB);
    cr_assert_geq(st.cap_refusals, 1);
    call_on(0, free_fn, gb.big);
    cr_assert_eq(stats_of(0).in_use, before.in_use);
    test_stop(NULL);
}

/* ---- 3. remote frees from every shard ---- */

#define RF_SHARDS 4
#define RF_CHUNK  32
#define RF_TAG    UINT64_C(0x5eed)

struct rf_chunk {
    unsigned from;
    unsigned n;
    void *blk[RF_CHUNK];
};

struct rf_shard {
    unsigned id;
    uint64_t rng;
    uint64_t chunks_left;
    uint64_t seq;
    unsigned next_dst;
    struct rf_chunk *pending;
    unsigned pending_dst;
    /* written by this shard only; read after the run */
    uint64_t chunks, tagged_chunks, local_frees;
};

static struct {
    struct rf_shard sh[RF_SHARDS];
    uint64_t chunks_total;
    _Atomic uint64_t chunks_done;
    _Atomic uint64_t freed_for[RF_SHARDS]; /* blocks of shard i freed by the others */
    _Atomic uint64_t bad_blocks;
    test_error_t err;
    sem_t done;
} rf;

/* Each block starts with what the receiver checks: its owner's id and its own size. */
struct rf_head {
    uint32_t from;
    uint32_t size;
    uint64_t check;
};

static void rf_fail(int code, int line)
{
    test_error_note(&rf.err, code, line);
    sem_post(&rf.done);
}

static void rf_free_chunk(void *arg)
{
    struct rf_chunk *c = arg;
    if ((unsigned)pith_shard_id() == c->from)
        rf_fail(TEST_ERR_WRONG_SHARD, __LINE__);
    for (unsigned i = 0; i < c->n; i++) {
        struct rf_head *h = c->blk[i];
        if (h->from != c->from || h->check != ((uint64_t)h->from << 32 | h->size) ||
            (h->size > sizeof(*h) && ((unsigned char *)h)[h->size - 1] != (unsigned char)h->size) ||
            pith_malloc_usable_size(h) < h->size)
            atomic_fetch_add(&rf.bad_blocks, 1);
        pith_free(h);
    }
    unsigned from = c->from, n = c->n;
    pith_free(c);
    atomic_fetch_add(&rf.freed_for[from], n + 1);
    if (atomic_fetch_add(&rf.chunks_done, 1) + 1 == rf.chunks_total)
        sem_post(&rf.done);
}

static void *rf_alloc(size_t size, bool tagged)
{
    return tagged ? pith_malloc_ex(size, 0, PITH_MEM_WARM, RF_TAG) : pith_malloc(size);
}

static struct rf_chunk *rf_build(struct rf_shard *s)
{
    bool tagged = (s->seq++ & 1) != 0;
    struct rf_chunk *c = rf_alloc(sizeof(*c), tagged);
    if (c == NULL)
        return NULL;
    c->from = s->id;
    c->n = RF_CHUNK;
    for (unsigned i = 0; i < RF_CHUNK; i++) {
        uint32_t size = 16 + (uint32_t)(xorshift(&s->rng) % (4096 - 16 + 1));
        struct rf_head *h = rf_alloc(size, tagged);
        if (h == NULL)
            return NULL; /* the test fails; what was allocated stays */
        h->from = s->id;
        h->size = size;
        h->check = (uint64_t)s->id << 32 | size;
        if (size > sizeof(*h))
            ((unsigned char *)h)[size - 1] = (unsigned char)size;
        c->blk[i] = h;
    }
    /* A block of its own, freed here at once. */
    size_t ln = 16 + xorshift(&s->rng) % 4081;
    void *l = pith_malloc(ln);
    if (l == NULL)
        return NULL;
    memset(l, 0x77, ln);
    pith_free(l);
    s->local_frees++;
    s->chunks++;
    s->tagged_chunks += tagged;
    return c;
}

static void rf_produce(void *arg)
{
    struct rf_shard *s = arg;
    for (int k = 0; k < 4 && s->chunks_left > 0; k++) {
        if (s->pending == NULL) {
            s->pending = rf_build(s);
            if (s->pending == NULL) {
                rf_fail(-ENOMEM, __LINE__);
                return;
            }
            s->next_dst = (s->next_dst + 1) % RF_SHARDS;
            if (s->next_dst == s->id)
                s->next_dst = (s->next_dst + 1) % RF_SHARDS;
            s->pending_dst = s->next_dst;
        }
        int rc = pith_submit(s->pending_dst, rf_free_chunk, s->pending);
        if (rc == -EAGAIN)
            break; /* the ring is full: come back after the others ran */
        if (rc != 0) {
            rf_fail(rc, __LINE__);
            return;
        }
        s->pending = NULL;
        s->chunks_left--;
    }
    if (s->chunks_left > 0) {
        int rc = pith_submit(s->id, rf_produce, s);
        if (rc != 0)
            rf_fail(rc, __LINE__);
    }
}

static void *rf_owner_fn(void *arg)
{
    pith_mem_owner_stats_t *out = arg;
    return (void *)(intptr_t)pith_mem_owner_stats(RF_TAG, out);
}

Test(mem, remote_frees_from_every_shard_keep_exact_accounts, .timeout = 120)
{
    pith_config_t cfg = mem_config(RF_SHARDS);
    test_start(&cfg);
    memset(&rf, 0, sizeof(rf));
    cr_assert_eq(sem_init(&rf.done, 0, 0), 0);
    uint64_t per_shard = scaled(1500);
    rf.chunks_total = per_shard * RF_SHARDS;
    pith_mem_stats_t before[RF_SHARDS], after[RF_SHARDS];
    for (int i = 0; i < RF_SHARDS; i++) {
        before[i] = stats_of(i);
        rf.sh[i].id = (unsigned)i;
        rf.sh[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        rf.sh[i].chunks_left = per_shard;
        rf.sh[i].next_dst = (unsigned)i;
    }
    for (unsigned i = 0; i < RF_SHARDS; i++)
        cr_assert_eq(pith_submit(i, rf_produce, &rf.sh[i]), 0);
    while (sem_wait(&rf.done) != 0)
        cr_assert_eq(errno, EINTR);
    test_assert_no_error(&rf.err);
    for (unsigned i = 0; i < RF_SHARDS; i++)
        test_sync_shard(i);
    cr_assert_eq(atomic_load(&rf.chunks_done), rf.chunks_total);
    cr_assert_eq(atomic_load(&rf.bad_blocks), 0, "blocks arrived damaged");

    size_t batch_size = 0;
    for (int i = 0; i < RF_SHARDS; i++) {
        after[i] = stats_of(i);
        const struct rf_shard *s = &rf.sh[i];
        cr_assert_eq(s->chunks, per_shard);
        uint64_t sent = s->chunks * (RF_CHUNK + 1); /* blocks and the chunk arrays */
        uint64_t d_allocs = after[i].allocs - before[i].allocs;
        uint64_t d_frees = after[i].frees - before[i].frees;
        uint64_t d_remote = after[i].remote_frees - before[i].remote_frees;
        cr_assert_eq(d_remote, sent,
                     "shard %d: %" PRIu64 " remote frees, %" PRIu64 " blocks freed by the others",
                     i, d_remote, sent);
        cr_assert_eq(atomic_load(&rf.freed_for[i]), sent);
        cr_assert_eq(d_frees, s->local_frees,
                     "shard %d: %" PRIu64 " local frees, expected %" PRIu64, i, d_frees,
                     s->local_frees);
        cr_assert_geq(d_allocs, sent + s->local_frees);
        /* What else the shard allocated meanwhile is mesh batches, kept for reuse while it
         * runs: all of one size. Everything the test allocated is gone from the accounts. */
        uint64_t batches = d_allocs - sent - s->local_frees;
        cr_assert_eq(after[i].allocs - after[i].frees - after[i].remote_frees,
                     before[i].allocs - before[i].frees - before[i].remote_frees + batches);
        size_t grown = after[i].in_use - before[i].in_use;
        if (batches == 0) {
            cr_assert_eq(after[i].in_use, before[i].in_use, "shard %d: in_use %zu, before %zu", i,
                         after[i].in_use, before[i].in_use);
        } else {
            cr_assert_eq(grown % batches, 0, "shard %d: in_use grew by %zu for %" PRIu64 " batches",
                         i, grown, batches);
            if (batch_size == 0)
                batch_size = grown / batches;
            cr_assert_eq(grown / batches, batch_size,
                         "shard %d: batches of %zu bytes, others of %zu", i, grown / batches,
                         batch_size);
        }
        cr_assert_geq(after[i].peak, after[i].in_use);
        cr_assert_eq(after[i].bad_frees, 0);
        pith_mem_owner_stats_t os;
        intptr_t rc = (intptr_t)call_on((unsigned)i, rf_owner_fn, &os);
        cr_assert_eq(rc, 0, "owner stats on shard %d: %ld", i, (long)rc);
        cr_assert_eq(os.in_use, 0, "shard %d: the tagged owner still holds %zu bytes", i,
                     os.in_use);
        cr_assert_eq(os.allocs, s->tagged_chunks * (RF_CHUNK + 1));
        cr_assert_gt(os.peak, 0);
    }
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0, "%" PRIu64 " bytes still live at stop", rep.mem_in_use);
    sem_destroy(&rf.done);
}

/* ---- 4. owner budgets ---- */

static struct {
    int budget_rc;
    unsigned n;
    int err;
    pith_mem_owner_stats_t full, freed;
    int full_rc, freed_rc;
    pith_mem_stats_t st_before, st_full;
    void *other, *untagged;
    int forget_busy_rc, forget_rc, forgotten_rc, forget_unknown_rc, stats_null_rc;
    void *blk[64];
} ob;

static void *owner_budget_fn(void *arg)
{
    (void)arg;
    int me = pith_shard_id();
    pith_mem_stats(me, &ob.st_before);
    ob.budget_rc = pith_mem_owner_budget(7, 10000);
    for (ob.n = 0; ob.n < 64; ob.n++) {
        errno = 0;
        void *p = pith_malloc_ex(1000, 0, PITH_MEM_WARM, 7);
        if (p == NULL) {
            ob.err = errno;
            break;
        }
        ob.blk[ob.n] = p;
    }
    ob.full_rc = pith_mem_owner_stats(7, &ob.full);
    pith_mem_stats(me, &ob.st_full);
    ob.other = pith_malloc_ex(1000, 0, PITH_MEM_WARM, 8);
    ob.untagged = pith_malloc(20000);
    ob.forget_busy_rc = pith_mem_owner_forget(7);
    for (unsigned i = 0; i < ob.n; i++)
        pith_free(ob.blk[i]);
    ob.freed_rc = pith_mem_owner_stats(7, &ob.freed);
    ob.forget_rc = pith_mem_owner_forget(7);
    pith_mem_owner_stats_t gone;
    ob.forgotten_rc = pith_mem_owner_stats(7, &gone);
    ob.forget_unknown_rc = pith_mem_owner_forget(123456);
    ob.stats_null_rc = pith_mem_owner_stats(8, NULL);
    pith_free(ob.other);
    pith_free(ob.untagged);
    return NULL;
}

Test(mem, owner_budget_refuses_past_it_and_forget_needs_it_empty, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    call_on(0, owner_budget_fn, NULL);
    cr_assert_eq(ob.budget_rc, 0);
    cr_assert_eq(ob.n, 9u, "9 blocks of 1000 + 16 bytes fit in 10000, not %u", ob.n);
    cr_assert_eq(ob.err, ENOMEM);
    cr_assert_eq(ob.full_rc, 0);
    cr_assert_eq(ob.full.in_use, 9 * (1000 + HDR));
    cr_assert_leq(ob.full.in_use, 10000);
    cr_assert_eq(ob.full.budget, 10000);
    cr_assert_eq(ob.full.allocs, 9);
    cr_assert_eq(ob.full.refusals, 1);
    cr_assert_eq(ob.full.peak, 9 * (1000 + HDR));
    cr_assert_eq(ob.st_full.budget_refusals, ob.st_before.budget_refusals + 1);
    cr_assert_eq(ob.st_full.cap_refusals, ob.st_before.cap_refusals);
    cr_assert_not_null(ob.other, "another owner is not held to owner 7's budget");
    cr_assert_not_null(ob.untagged, "untagged blocks are not held to owner 7's budget");
    cr_assert_eq(ob.forget_busy_rc, -EBUSY);
    cr_assert_eq(ob.freed_rc, 0);
    cr_assert_eq(ob.freed.in_use, 0);
    cr_assert_eq(ob.freed.refusals, 1);
    cr_assert_eq(ob.forget_rc, 0);
    cr_assert_eq(ob.forgotten_rc, -ENOENT);
    cr_assert_eq(ob.forget_unknown_rc, -ENOENT);
    cr_assert_eq(ob.stats_null_rc, -EINVAL);
    pith_mem_stats_t st = stats_of(0);
    cr_assert_eq(st.in_use, ob.st_before.in_use);

    /* Owners belong to shards: outside the engine every owner call is refused. */
    pith_mem_owner_stats_t os;
    cr_assert_eq(pith_mem_owner_budget(7, 100), -EPERM);
    cr_assert_eq(pith_mem_owner_stats(7, &os), -EPERM);
    cr_assert_eq(pith_mem_owner_forget(7), -EPERM);
    test_stop(NULL);
    cr_assert_eq(pith_mem_owner_budget(7, 100), -EPERM);
    cr_assert_eq(pith_mem_owner_stats(7, &os), -EPERM);
    cr_assert_eq(pith_mem_owner_forget(7), -EPERM);
}

/* ---- 5. the accounts' invariants ---- */

#define MIX_N 200

static struct mix {
    void *warm[MIX_N], *hot[MIX_N], *cold[MIX_N];
    unsigned failed;
    size_t bytes;
} mix[3];

static void *mix_alloc_fn(void *arg)
{
    struct mix *m = arg;
    for (unsigned i = 0; i < MIX_N; i++) {
        m->warm[i] = pith_malloc(1000);
        m->hot[i] = pith_malloc_ex(512, 0, PITH_MEM_HOT, 0);
        m->cold[i] = pith_malloc_ex(2000, 0, PITH_MEM_COLD, 0);
        if (m->warm[i] == NULL || m->hot[i] == NULL || m->cold[i] == NULL) {
            m->failed++;
            continue;
        }
        memset(m->warm[i], 1, 1000);
        memset(m->hot[i], 2, 512);
        memset(m->cold[i], 3, 2000);
        m->bytes += 1000 + 512 + 2000 + 3 * HDR;
    }
    return NULL;
}

static void *mix_free_fn(void *arg)
{
    struct mix *m = arg;
    for (unsigned i = 0; i < MIX_N; i++) {
        pith_free(m->warm[i]);
        pith_free(m->hot[i]);
        pith_free(m->cold[i]);
    }
    return NULL;
}

Test(mem, stats_are_consistent_across_profiles, .timeout = 60)
{
    const int n = 3;
    pith_config_t cfg = mem_config(n);
    test_start(&cfg);
    pith_mem_stats_t before[3];
    for (int s = 0; s < n; s++) {
        before[s] = stats_of(s);
        call_on((unsigned)s, mix_alloc_fn, &mix[s]);
        cr_assert_eq(mix[s].failed, 0);
    }
    for (int s = 0; s < n; s++) {
        pith_mem_stats_t st = stats_of(s);
        cr_assert_leq(st.locked, st.committed, "shard %d", s);
        cr_assert_leq(st.committed, st.reserved, "shard %d", s);
        cr_assert_leq(st.huge, st.committed, "shard %d", s);
        cr_assert_leq(st.in_use, st.peak, "shard %d", s);
        cr_assert_eq(st.in_use, before[s].in_use + mix[s].bytes);
        cr_assert_leq(st.reserved, st.cap);
        cr_assert_eq(st.grows, st.extents - 1, "every extent after the first is a growth");
        cr_assert_eq(st.arena_failures, 0);
        cr_assert_eq(st.bad_frees, 0);
        size_t sum = 0, per_profile[PITH_MEM_PROFILES] = {0};
        for (int p = 0; p < PITH_MEM_PROFILES; p++) {
            sum += st.profile_reserved[p];
            cr_assert_gt(st.profile_reserved[p], 0, "shard %d: profile %d has no extent", s, p);
        }
        cr_assert_eq(sum, st.reserved);
        unsigned count = 0;
        pith_mem_extent_t x;
        for (; pith_mem_extent_info(s, count, &x) == 0; count++) {
            cr_assert_lt(count, 64u);
            cr_assert_eq(x.size % (32 * MiB), 0);
            cr_assert_eq((uintptr_t)x.base % (32 * MiB), 0);
            per_profile[x.profile] += x.size;
            switch (x.profile) {
            case PITH_MEM_HOT:
                cr_assert(x.prefaulted, "shard %d: hot extent %u not prefaulted", s, count);
                cr_assert_geq(st.committed, x.size, "a hot extent is resident whole");
                if (lock_expected())
                    cr_assert(x.locked, "shard %d: hot extent %u not locked as root", s, count);
                if (thp_enabled())
                    cr_assert_neq(x.backing, PITH_MEM_PLAIN, "hot extent %u on base pages", count);
                break;
            case PITH_MEM_COLD:
                cr_assert_not(x.locked, "shard %d: cold extent %u is locked", s, count);
                cr_assert_eq(x.backing, PITH_MEM_PLAIN);
                break;
            case PITH_MEM_WARM:
                if (lock_expected())
                    cr_assert(x.locked);
                break;
            default:
                cr_assert(false, "extent %u: profile %d", count, x.profile);
            }
        }
        cr_assert_eq(count, st.extents, "shard %d: %u extents listed, stats say %u", s, count,
                     st.extents);
        cr_assert_eq(pith_mem_extent_info(s, st.extents, &x), -ENOENT);
        for (int p = 0; p < PITH_MEM_PROFILES; p++)
            cr_assert_eq(per_profile[p], st.profile_reserved[p]);
        cr_assert_eq(extent_of(s, 0).profile, PITH_MEM_WARM, "extent 0 is the warm one");
    }
    for (int s = 0; s < n; s++) {
        call_on((unsigned)s, mix_free_fn, &mix[s]);
        pith_mem_stats_t st = stats_of(s);
        cr_assert_eq(st.in_use, before[s].in_use);
        cr_assert_geq(st.peak, before[s].in_use + mix[s].bytes);
    }

    /* Arguments. */
    pith_mem_stats_t st;
    pith_mem_extent_t x;
    cr_assert_eq(pith_mem_stats(n, &st), -EINVAL);
    cr_assert_eq(pith_mem_stats(-2, &st), -EINVAL);
    cr_assert_eq(pith_mem_stats(0, NULL), -EINVAL);
    cr_assert_eq(pith_mem_extent_info(n, 0, &x), -EINVAL);
    cr_assert_eq(pith_mem_extent_info(-1, 0, &x), -EINVAL);
    cr_assert_eq(pith_mem_extent_info(0, 0, NULL), -EINVAL);
    test_stop(NULL);
    cr_assert_eq(pith_mem_stats(0, &st), -ESHUTDOWN);
    cr_assert_eq(pith_mem_extent_info(0, 0, &x), -ESHUTDOWN);
    cr_assert_eq(pith_mem_stats(PITH_MEM_OUTSIDE, &st), 0);
}

/* ---- 6. the malloc family's edge cases ---- */

static struct {
    void *zero;
    size_t zero_usable;
    void *overflow;
    int overflow_err;
    void *aligned;
    void *aligned_big;
    void *bad_align;
    int bad_align_err;
    void *zero_align;
    int zero_align_err;
    void *bad_ex_align;
    int bad_ex_align_err;
    void *bad_profile;
    int bad_profile_err;
    size_t usable_short[6];
    int prof_of[4]; /* pith_mem_profile_of: small warm, big warm, hot, cold */
    int prof_freed;
    pith_mem_stats_t s0, s1;
} ed;

static const size_t usable_sizes[6] = {1, 17, 100, 4095, 65537, 3 * MiB};

static void *edges_fn(void *arg)
{
    (void)arg;
    int me = pith_shard_id();
    pith_mem_stats(me, &ed.s0);
    ed.zero = pith_malloc(0);
    ed.zero_usable = pith_malloc_usable_size(ed.zero);
    pith_free(ed.zero);

    errno = 0;
    ed.overflow = pith_calloc(SIZE_MAX / 2, 4);
    ed.overflow_err = errno;

    ed.aligned = pith_aligned_alloc(4096, 100);
    if (ed.aligned != NULL)
        memset(ed.aligned, 1, 100);
    ed.aligned_big = pith_aligned_alloc(65536, 70000);
    if (ed.aligned_big != NULL)
        memset(ed.aligned_big, 1, 70000);
    errno = 0;
    ed.bad_align = pith_aligned_alloc(3, 100);
    ed.bad_align_err = errno;
    errno = 0;
    ed.zero_align = pith_aligned_alloc(0, 100);
    ed.zero_align_err = errno;
    errno = 0;
    ed.bad_ex_align = pith_malloc_ex(100, 48, PITH_MEM_WARM, 0);
    ed.bad_ex_align_err = errno;
    errno = 0;
    ed.bad_profile = pith_malloc_ex(100, 0, (pith_mem_profile_t)7, 0);
    ed.bad_profile_err = errno;
    for (int i = 0; i < 6; i++) {
        void *p = pith_malloc(usable_sizes[i]);
        ed.usable_short[i] = p == NULL ? 0 : pith_malloc_usable_size(p);
        pith_free(p);
    }
    void *by[4] = {pith_malloc(24), pith_malloc(100000), pith_malloc_ex(100, 0, PITH_MEM_HOT, 0),
                   pith_malloc_ex(5000, 0, PITH_MEM_COLD, 0)};
    for (int i = 0; i < 4; i++) {
        ed.prof_of[i] = pith_mem_profile_of(by[i]);
        pith_free(by[i]);
    }
    ed.prof_freed = pith_mem_profile_of(ed.aligned_big); /* still live here: freed below */
    pith_free(ed.aligned);
    pith_free(ed.aligned_big);
    pith_free(NULL);
    pith_mem_stats(me, &ed.s1);
    return NULL;
}

Test(mem, malloc_family_edge_cases, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    call_on(0, edges_fn, NULL);
    cr_assert_not_null(ed.zero, "pith_malloc(0) is a unique block, not NULL");
    cr_assert_eq(pith_malloc_usable_size(NULL), 0);
    cr_assert_null(ed.overflow);
    cr_assert_eq(ed.overflow_err, ENOMEM);
    cr_assert_not_null(ed.aligned);
    cr_assert_eq((uintptr_t)ed.aligned % 4096, 0, "%p", ed.aligned);
    cr_assert_not_null(ed.aligned_big);
    cr_assert_eq((uintptr_t)ed.aligned_big % 65536, 0, "%p", ed.aligned_big);
    cr_assert_null(ed.bad_align);
    cr_assert_eq(ed.bad_align_err, EINVAL);
    cr_assert_null(ed.zero_align);
    cr_assert_eq(ed.zero_align_err, EINVAL);
    cr_assert_null(ed.bad_ex_align);
    cr_assert_eq(ed.bad_ex_align_err, EINVAL);
    cr_assert_null(ed.bad_profile);
    cr_assert_eq(ed.bad_profile_err, EINVAL);
    for (int i = 0; i < 6; i++)
        cr_assert_geq(ed.usable_short[i], usable_sizes[i], "usable size %zu for %zu bytes",
                      ed.usable_short[i], usable_sizes[i]);
    /* Each block says the profile it was made in. */
    cr_assert_eq(ed.prof_of[0], PITH_MEM_WARM);
    cr_assert_eq(ed.prof_of[1], PITH_MEM_WARM);
    cr_assert_eq(ed.prof_of[2], PITH_MEM_HOT);
    cr_assert_eq(ed.prof_of[3], PITH_MEM_COLD);
    cr_assert_eq(ed.prof_freed, PITH_MEM_WARM);
    cr_assert_eq(pith_mem_profile_of(NULL), -EINVAL);
    /* Everything was freed; pith_free(NULL) counted nothing. */
    cr_assert_eq(ed.s1.in_use, ed.s0.in_use);
    cr_assert_eq(ed.s1.allocs - ed.s0.allocs, ed.s1.frees - ed.s0.frees);
    cr_assert_eq(ed.s1.bad_frees, ed.s0.bad_frees);
    cr_assert_eq(ed.s1.remote_frees, ed.s0.remote_frees);
    test_stop(NULL);
}

/* Blocks of every small size, as the default alignment (16) promises. */
static struct {
    unsigned misaligned[3];
    size_t example_size[3];
    uintptr_t example[3];
} al;

static void *align16_fn(void *arg)
{
    (void)arg;
    void *blk[3][64];
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 64; i++) {
            size_t size = 8 + 16 * (size_t)(i % 4); /* 8, 24, 40, 56 */
            void *p = k == 0   ? pith_malloc(size)
                      : k == 1 ? pith_malloc_ex(size, 0, PITH_MEM_WARM, 0)
                               : pith_aligned_alloc(16, size);
            blk[k][i] = p;
            if (p != NULL && (uintptr_t)p % 16 != 0) {
                if (al.misaligned[k]++ == 0) {
                    al.example[k] = (uintptr_t)p;
                    al.example_size[k] = size;
                }
            }
        }
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 64; i++)
            pith_free(blk[k][i]);
    return NULL;
}

Test(mem, default_alignment_is_16_bytes, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    call_on(0, align16_fn, NULL);
    static const char *const what[3] = {"pith_malloc", "pith_malloc_ex(align 0)",
                                        "pith_aligned_alloc(16)"};
    for (int k = 0; k < 3; k++)
        cr_assert_eq(al.misaligned[k], 0,
                     "%s: %u of 64 small blocks not 16-byte aligned, e.g. %#" PRIxPTR
                     " for %zu bytes",
                     what[k], al.misaligned[k], al.example[k], al.example_size[k]);
    test_stop(NULL);
}

static struct {
    void *p, *q;
    bool grown_intact, shrunk_intact, moved_intact, failed_intact;
    void *fail;
    int fail_err;
    pith_mem_stats_t s_before, s_grown, s_shrunk, s_zero;
    void *from_null;
} rs;

static void *realloc_local_fn(void *arg)
{
    (void)arg;
    int me = pith_shard_id();
    pith_mem_stats(me, &rs.s_before);
    void *p = pith_malloc(100);
    if (p == NULL)
        return NULL;
    fill(p, 100, 1);
    p = pith_realloc(p, 100000);
    if (p == NULL)
        return NULL;
    rs.grown_intact = check(p, 100, 1);
    pith_mem_stats(me, &rs.s_grown);
    fill(p, 100000, 2);
    p = pith_realloc(p, 50);
    if (p == NULL)
        return NULL;
    rs.shrunk_intact = check(p, 50, 2);
    pith_mem_stats(me, &rs.s_shrunk);
    errno = 0;
    rs.fail = pith_realloc(p, SIZE_MAX / 2);
    rs.fail_err = errno;
    rs.failed_intact = check(p, 50, 2);
    rs.p = pith_realloc(p, 0);
    pith_mem_stats(me, &rs.s_zero);
    rs.from_null = pith_realloc(NULL, 64);
    pith_free(rs.from_null);
    return NULL;
}

static void *realloc_alloc_fn(void *arg)
{
    (void)arg;
    rs.p = pith_malloc(1000);
    if (rs.p != NULL)
        fill(rs.p, 1000, 3);
    return NULL;
}

static void *realloc_remote_fn(void *arg)
{
    size_t size = (size_t)(uintptr_t)arg;
    rs.q = pith_realloc(rs.p, size);
    if (rs.q != NULL)
        rs.moved_intact = check(rs.q, size < 1000 ? size : 1000, 3);
    return NULL;
}

Test(mem, realloc_grows_shrinks_moves_and_frees, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    test_start(&cfg);
    call_on(0, realloc_local_fn, NULL);
    cr_assert(rs.grown_intact, "realloc to a larger size lost the contents");
    cr_assert_eq(rs.s_grown.in_use, rs.s_before.in_use + 100000 + HDR);
    cr_assert(rs.shrunk_intact);
    cr_assert_eq(rs.s_shrunk.in_use, rs.s_before.in_use + 50 + HDR);
    cr_assert_null(rs.fail);
    cr_assert_eq(rs.fail_err, ENOMEM);
    cr_assert(rs.failed_intact, "a failed realloc touched the block");
    cr_assert_null(rs.p, "pith_realloc(p, 0) returns NULL");
    cr_assert_eq(rs.s_zero.in_use, rs.s_before.in_use, "pith_realloc(p, 0) did not free p");
    cr_assert_not_null(rs.from_null);

    /* A block of shard 0 resized by shard 1 moves to shard 1, its contents with it. */
    for (int k = 0; k < 2; k++) {
        size_t size = k == 0 ? 3000 : 200;
        pith_mem_stats_t a0 = stats_of(0), a1 = stats_of(1);
        call_on(0, realloc_alloc_fn, NULL);
        cr_assert_not_null(rs.p);
        cr_assert_eq(stats_of(0).in_use, a0.in_use + 1000 + HDR);
        call_on(1, realloc_remote_fn, (void *)(uintptr_t)size);
        cr_assert_not_null(rs.q);
        cr_assert(rs.moved_intact, "realloc to %zu on another shard lost the contents", size);
        pith_mem_stats_t b0 = stats_of(0), b1 = stats_of(1);
        cr_assert_eq(b0.in_use, a0.in_use, "shard 0 still holds %zd bytes",
                     (ssize_t)(b0.in_use - a0.in_use));
        cr_assert_eq(b0.remote_frees, a0.remote_frees + 1);
        cr_assert_eq(b1.in_use, a1.in_use + charged(size));
        call_on(1, free_fn, rs.q);
        cr_assert_eq(stats_of(1).in_use, a1.in_use);
        cr_assert_eq(stats_of(1).frees, b1.frees + 1);
    }
    test_stop(NULL);
}

static struct {
    pith_mem_stats_t a, b, c, d;
    void *r;
    int r_err;
    size_t usable_dead;
} df;

static void *double_free_fn(void *arg)
{
    (void)arg;
    int me = pith_shard_id();
    void *p = pith_malloc(48);
    if (p == NULL)
        return NULL;
    memset(p, 9, 48);
    pith_mem_stats(me, &df.a);
    pith_free(p);
    pith_mem_stats(me, &df.b);
    pith_free(p); /* refused */
    pith_mem_stats(me, &df.c);
    errno = 0;
    df.r = pith_realloc(p, 100); /* refused too */
    df.r_err = errno;
    pith_mem_stats(me, &df.d);
    return p;
}

Test(mem, double_free_is_refused_and_counted, .timeout = 30)
{
    /* There blocks come from libc, and reading a freed block's header is an error of its own. */
    if (test_on_valgrind())
        cr_skip_test("a double free cannot be looked at under valgrind");
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    void *p = call_on(0, double_free_fn, NULL);
    cr_assert_not_null(p);
    cr_assert_eq(df.b.frees, df.a.frees + 1);
    cr_assert_eq(df.b.in_use, df.a.in_use - 48 - HDR);
    cr_assert_eq(df.c.bad_frees, df.b.bad_frees + 1, "the second free was not counted");
    cr_assert_eq(df.c.frees, df.b.frees, "the second free was taken");
    cr_assert_eq(df.c.in_use, df.b.in_use);
    cr_assert_null(df.r);
    cr_assert_eq(df.r_err, EINVAL);
    cr_assert_eq(df.d.bad_frees, df.c.bad_frees + 1);
    cr_assert_eq(df.d.in_use, df.c.in_use);
    /* The engine goes on as before. */
    void *q = call_on(0, malloc_fn, (void *)(uintptr_t)48);
    cr_assert_not_null(q);
    call_on(0, free_fn, q);

    /* Outside the engine the same, counted under PITH_MEM_OUTSIDE. */
    pith_mem_stats_t o0 = stats_of(PITH_MEM_OUTSIDE);
    void *o = pith_malloc(32);
    cr_assert_not_null(o);
    pith_free(o);
    pith_free(o);
    pith_mem_stats_t o1 = stats_of(PITH_MEM_OUTSIDE);
    cr_assert_eq(o1.bad_frees, o0.bad_frees + 1);
    cr_assert_eq(o1.frees, o0.frees + 1);
    cr_assert_eq(o1.in_use, o0.in_use);
    test_stop(NULL);
}

/* ---- 7. outside the engine ---- */

static void *outside_realloc_fn(void *arg)
{
    return pith_realloc(arg, 5000);
}

Test(mem, allocation_outside_the_engine_uses_the_process_heap, .timeout = 30)
{
    pith_mem_stats_t st;
    cr_assert_eq(pith_mem_stats(0, &st), -ESHUTDOWN);
    pith_mem_extent_t x;
    cr_assert_eq(pith_mem_extent_info(0, 0, &x), -ESHUTDOWN);

    pith_mem_stats_t o0 = stats_of(PITH_MEM_OUTSIDE);
    cr_assert_eq(o0.node, -1);
    void *p = pith_malloc(1000);
    cr_assert_not_null(p, "pith_malloc with no engine");
    memset(p, 4, 1000);
    cr_assert_geq(pith_malloc_usable_size(p), 1000);
    cr_assert_eq(pith_mem_profile_of(p), -ENOENT, "the process heap's: no profile");
    pith_mem_stats_t o1 = stats_of(PITH_MEM_OUTSIDE);
    cr_assert_eq(o1.allocs, o0.allocs + 1);
    cr_assert_eq(o1.in_use, o0.in_use + 1000 + HDR);
    cr_assert_geq(o1.peak, o1.in_use);
    void *a = pith_aligned_alloc(256, 10);
    cr_assert_not_null(a);
    cr_assert_eq((uintptr_t)a % 256, 0);
    void *z = pith_calloc(10, 10);
    cr_assert_not_null(z);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(((unsigned char *)z)[i], 0);
    pith_free(a);
    pith_free(z);
    pith_free(p);
    pith_mem_stats_t o2 = stats_of(PITH_MEM_OUTSIDE);
    cr_assert_eq(o2.frees, o0.frees + 3);
    cr_assert_eq(o2.in_use, o0.in_use);

    /* With an engine running: the test thread is still outside it. */
    pith_config_t cfg = mem_config(2);
    test_start(&cfg);
    pith_mem_stats_t s0 = stats_of(0);
    p = pith_malloc(2000);
    cr_assert_not_null(p);
    fill(p, 2000, 5);
    o1 = stats_of(PITH_MEM_OUTSIDE);
    cr_assert_eq(o1.allocs, o2.allocs + 1);
    cr_assert_eq(o1.in_use, o2.in_use + 2000 + HDR);
    cr_assert_eq(stats_of(0).allocs, s0.allocs, "a block made outside was charged to shard 0");
    /* Freed by a shard: the outside account gets it back, the shard's are untouched. */
    call_on(0, free_fn, p);
    o2 = stats_of(PITH_MEM_OUTSIDE);
    cr_assert_eq(o2.in_use, o1.in_use - 2000 - HDR);
    cr_assert_eq(o2.frees, o1.frees + 1);
    pith_mem_stats_t s1 = stats_of(0);
    cr_assert_eq(s1.frees, s0.frees);
    cr_assert_eq(s1.remote_frees, s0.remote_frees);
    cr_assert_eq(s1.in_use, s0.in_use);
    /* Resized by a shard: it moves to that shard. */
    p = pith_malloc(2000);
    cr_assert_not_null(p);
    fill(p, 2000, 6);
    void *q = call_on(1, outside_realloc_fn, p);
    cr_assert_not_null(q);
    cr_assert(check(q, 2000, 6));
    cr_assert_eq(stats_of(PITH_MEM_OUTSIDE).in_use, o2.in_use);
    cr_assert_eq(stats_of(1).in_use, s0.in_use + 5000 + HDR);
    call_on(1, free_fn, q);
    /* A shard's block freed here, outside: a remote free for the shard. */
    pith_mem_stats_t t0 = stats_of(1);
    q = call_on(1, malloc_fn, (void *)(uintptr_t)700);
    cr_assert_not_null(q);
    pith_free(q);
    pith_mem_stats_t t1 = stats_of(1);
    cr_assert_eq(t1.in_use, t0.in_use);
    cr_assert_eq(t1.remote_frees, t0.remote_frees + 1);
    cr_assert_eq(stats_of(PITH_MEM_OUTSIDE).in_use, o2.in_use);
    test_stop(NULL);
}

/* ---- 8. blocks that outlive the engine ---- */

Test(mem, a_block_freed_after_stop_is_kept_valid_and_accounted, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    test_start(&cfg);
    unsigned char *p = call_on(0, malloc_fn, (void *)(uintptr_t)5000);
    cr_assert_not_null(p);
    fill(p, 5000, 7);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 5000 + HDR, "stop report: %" PRIu64 " bytes live", rep.mem_in_use);
    cr_assert(check(p, 5000, 7), "a live block changed when its engine stopped");
    cr_assert_geq(pith_malloc_usable_size(p), 5000);
    pith_mem_stats_t o0 = stats_of(PITH_MEM_OUTSIDE);
    pith_free(p);
    pith_mem_stats_t o1 = stats_of(PITH_MEM_OUTSIDE);
    cr_assert_eq(o1.bad_frees, o0.bad_frees, "the late free was refused");
    cr_assert_eq(o1.in_use, o0.in_use);

    /* The next engine works, on the same extents. */
    test_start(&cfg);
    void *q = call_on(0, malloc_fn, (void *)(uintptr_t)5000);
    cr_assert_not_null(q);
    call_on(1, free_fn, q);
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

Test(mem, a_block_of_a_stopped_engine_is_freed_while_the_next_one_runs, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    test_start(&cfg);
    void *late[2];
    for (int i = 0; i < 2; i++) {
        late[i] = call_on(0, malloc_fn, (void *)(uintptr_t)(3000 + i));
        cr_assert_not_null(late[i]);
        fill(late[i], 3000, 8);
    }
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 2 * HDR + 6001);

    test_start(&cfg);
    pith_mem_stats_t s0 = stats_of(0), s1 = stats_of(1);
    void *fresh = call_on(0, malloc_fn, (void *)(uintptr_t)3000);
    cr_assert_not_null(fresh);
    cr_assert(check(late[0], 3000, 8) && check(late[1], 3000, 8));
    pith_free(late[0]);           /* from outside */
    call_on(1, free_fn, late[1]); /* from a shard of the new engine */
    call_on(0, free_fn, fresh);
    /* The late frees went to the old engine's accounts, not to the new shards'. */
    pith_mem_stats_t t0 = stats_of(0), t1 = stats_of(1);
    cr_assert_eq(t0.in_use, s0.in_use);
    cr_assert_eq(t0.remote_frees, s0.remote_frees);
    cr_assert_eq(t0.frees, s0.frees + 1);
    cr_assert_eq(t1.remote_frees, s1.remote_frees);
    cr_assert_eq(t1.bad_frees, 0);
    cr_assert_eq(stats_of(PITH_MEM_OUTSIDE).bad_frees, 0);
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

#define LS_BLOCKS 256

static struct {
    void *blk[LS_BLOCKS];
    unsigned n;
    atomic_bool freed_while_stopping;
    atomic_uint hops;
    test_error_t err;
    sem_t seen;
    atomic_uint outside_freed;
} ls;

static void *ls_alloc_fn(void *arg)
{
    (void)arg;
    for (ls.n = 0; ls.n < LS_BLOCKS; ls.n++) {
        size_t size = 32 + ls.n * 97 % 8000;
        ls.blk[ls.n] = pith_malloc(size);
        if (ls.blk[ls.n] == NULL)
            break;
        memset(ls.blk[ls.n], 0x44, size);
    }
    return NULL;
}

static void ls_dummy(void *arg)
{
    (void)arg;
}

/* On shard 1: hops on itself until pith_timer_add says the engine is stopping, then frees shard
 * 0's blocks (all of them, or the first half when `arg` is set, leaving the rest to an outside
 * thread). */
static void ls_hop(void *arg)
{
    atomic_fetch_add(&ls.hops, 1);
    pith_timer_id_t id = 0;
    int rc = pith_timer_add(3600000 * MS, 0, ls_dummy, NULL, &id);
    if (rc == 0) {
        rc = pith_timer_cancel(id);
        if (rc != 0)
            TEST_NOTE(&ls.err, rc);
        rc = pith_submit((unsigned)pith_shard_id(), ls_hop, arg);
        if (rc != 0)
            TEST_NOTE(&ls.err, rc);
        return;
    }
    if (rc != -ESHUTDOWN) {
        TEST_NOTE(&ls.err, rc);
        return;
    }
    unsigned upto = arg != NULL ? ls.n / 2 : ls.n;
    for (unsigned i = 0; i < upto; i++)
        pith_free(ls.blk[i]);
    atomic_store(&ls.freed_while_stopping, true);
    if (arg != NULL)
        sem_post(&ls.seen);
}

Test(mem, another_shard_frees_the_blocks_of_a_stopping_one, .timeout = 30)
{
    memset(&ls, 0, sizeof(ls));
    pith_config_t cfg = mem_config(2);
    test_start(&cfg);
    call_on(0, ls_alloc_fn, NULL);
    cr_assert_eq(ls.n, LS_BLOCKS);
    cr_assert_gt(stats_of(0).in_use, 0);
    cr_assert_eq(pith_submit(1, ls_hop, NULL), 0);
    while (atomic_load(&ls.hops) < 10)
        sched_yield();
    pith_stop_report_t rep;
    test_stop(&rep);
    test_assert_no_error(&ls.err);
    cr_assert(atomic_load(&ls.freed_while_stopping), "shard 1 never saw the engine stopping");
    cr_assert(rep.quiescent);
    cr_assert_eq(rep.mem_in_use, 0, "%" PRIu64 " bytes live at stop", rep.mem_in_use);
    cr_assert_eq(stats_of(PITH_MEM_OUTSIDE).bad_frees, 0);
}

static void *ls_outside_freer(void *arg)
{
    (void)arg;
    while (sem_wait(&ls.seen) != 0)
        ;
    for (unsigned i = ls.n / 2; i < ls.n; i++) {
        pith_free(ls.blk[i]);
        atomic_fetch_add(&ls.outside_freed, 1);
        if (i % 8 == 0)
            sched_yield();
    }
    return NULL;
}

Test(mem, an_outside_thread_frees_while_the_engine_stops, .timeout = 30)
{
    memset(&ls, 0, sizeof(ls));
    cr_assert_eq(sem_init(&ls.seen, 0, 0), 0);
    pith_config_t cfg = mem_config(2);
    test_start(&cfg);
    call_on(0, ls_alloc_fn, NULL);
    cr_assert_eq(ls.n, LS_BLOCKS);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, ls_outside_freer, NULL), 0);
    cr_assert_eq(pith_submit(1, ls_hop, (void *)&ls), 0);
    while (atomic_load(&ls.hops) < 10)
        sched_yield();
    pith_stop_report_t rep;
    int rc = pith_engine_stop();
    cr_assert_eq(rc, 0);
    pthread_join(t, NULL);
    cr_assert_eq(pith_engine_stop_report(&rep), 0);
    test_assert_no_error(&ls.err);
    cr_assert(atomic_load(&ls.freed_while_stopping));
    cr_assert_eq(atomic_load(&ls.outside_freed), LS_BLOCKS - LS_BLOCKS / 2);
    cr_assert_eq(stats_of(PITH_MEM_OUTSIDE).bad_frees, 0);
    test_assert_no_leaks();
    sem_destroy(&ls.seen);
}

/* ---- 9. mesh batches come from the sending shard's heap ---- */

static struct {
    atomic_uint run;
    unsigned want;
    int submit_rc;
    sem_t done;
} mb;

static void mb_task(void *arg)
{
    (void)arg;
    if (atomic_fetch_add(&mb.run, 1) + 1 == mb.want)
        sem_post(&mb.done);
}

static void *mb_burst_fn(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < mb.want; i++) {
        int rc = pith_submit(1, mb_task, NULL);
        if (rc != 0) {
            mb.submit_rc = rc;
            break;
        }
    }
    return NULL;
}

Test(mem, mesh_batches_come_from_the_sending_shard, .timeout = 30)
{
    pith_config_t cfg = mem_config(2);
    test_start(&cfg);
    cr_assert_eq(sem_init(&mb.done, 0, 0), 0);
    mb.want = cfg.batch_msgs * 8;
    pith_mem_stats_t a0 = stats_of(0), a1 = stats_of(1);
    call_on(0, mb_burst_fn, NULL);
    cr_assert_eq(mb.submit_rc, 0, "pith_submit: %d", mb.submit_rc);
    while (sem_wait(&mb.done) != 0)
        cr_assert_eq(errno, EINTR);
    test_sync_shard(0);
    test_sync_shard(1);
    pith_mem_stats_t b0 = stats_of(0), b1 = stats_of(1);
    cr_assert_gt(b0.allocs, a0.allocs, "the sender allocated no batch");
    cr_assert_gt(b0.peak, 0);
    cr_assert_gt(b0.in_use, a0.in_use, "batches are kept for reuse while the shard runs");
    cr_assert_eq(b1.allocs, a1.allocs, "the receiver allocated %" PRIu64 " blocks",
                 b1.allocs - a1.allocs);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0, "batches still live at stop: %" PRIu64, rep.mem_in_use);
    sem_destroy(&mb.done);
}

/* ---- 10. reclaim ---- */

#define RC_BLOCKS 64
#define RC_SIZE   (64 * 1024)

static struct {
    void *blk[RC_BLOCKS];
    unsigned made;
    int rc;
    bool intact;
    pith_mem_stats_t before, after;
} rcl;

static void *reclaim_fn(void *arg)
{
    (void)arg;
    int me = pith_shard_id();
    for (rcl.made = 0; rcl.made < RC_BLOCKS; rcl.made++) {
        void *p = pith_malloc_ex(RC_SIZE, 0, PITH_MEM_COLD, 0);
        if (p == NULL)
            break;
        fill(p, RC_SIZE, rcl.made);
        rcl.blk[rcl.made] = p;
    }
    pith_mem_stats(me, &rcl.before);
    rcl.rc = pith_mem_reclaim();
    pith_mem_stats(me, &rcl.after);
    rcl.intact = true;
    for (unsigned i = 0; i < rcl.made; i++) {
        rcl.intact &= check(rcl.blk[i], RC_SIZE, i);
        pith_free(rcl.blk[i]);
    }
    return NULL;
}

Test(mem, reclaim_pages_out_the_cold_profile_and_keeps_contents, .timeout = 30)
{
    cr_assert_eq(pith_mem_reclaim(), -EPERM);
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    call_on(0, reclaim_fn, NULL);
    cr_assert_eq(rcl.made, RC_BLOCKS);
    cr_assert_eq(rcl.rc, 0);
    cr_assert(rcl.intact, "cold blocks changed after pith_mem_reclaim");
    cr_assert_eq(rcl.before.cold_advice, 0, "advised cold far from the cap");
    cr_assert_gt(rcl.after.cold_advice, rcl.before.cold_advice);
    cr_assert_gt(rcl.before.profile_reserved[PITH_MEM_COLD], 0);
    cr_assert_eq(pith_mem_reclaim(), -EPERM, "pith_mem_reclaim from outside the engine");
    test_stop(NULL);
}

/* Near the cap the cold profile is advised cold, once the shard is idle. */
static struct {
    void *cold;
    void *blk[256];
    unsigned n;
    size_t reserved;
    uint64_t advice_at_fill;
    uint64_t sleeps_at_fill;
} pr;

static void *pressure_fill_fn(void *arg)
{
    (void)arg;
    int me = pith_shard_id();
    pith_mem_stats_t st;
    pr.cold = pith_malloc_ex(1000, 0, PITH_MEM_COLD, 0);
    if (pr.cold == NULL)
        return NULL;
    memset(pr.cold, 1, 1000);
    for (pr.n = 0; pr.n < 256; pr.n++) {
        pith_mem_stats(me, &st);
        if (st.reserved >= st.cap / 8 * 7)
            break;
        pr.blk[pr.n] = pith_malloc(MiB);
        if (pr.blk[pr.n] == NULL)
            break;
    }
    pith_mem_stats(me, &st);
    pr.reserved = st.reserved;
    pr.advice_at_fill = st.cold_advice;
    pith_shard_stats_t ss;
    pith_shard_stats((unsigned)me, &ss);
    pr.sleeps_at_fill = ss.sleeps;
    return NULL;
}

static void *pressure_free_fn(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < pr.n; i++)
        pith_free(pr.blk[i]);
    pith_free(pr.cold);
    return NULL;
}

Test(mem, nearing_the_cap_advises_the_cold_profile_when_idle, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    cfg.mem.cap = 128 * MiB;
    test_start(&cfg);
    call_on(0, pressure_fill_fn, NULL);
    cr_assert_not_null(pr.cold);
    cr_assert_geq(pr.reserved, 112 * MiB, "reserved %zu MiB, wanted 7/8 of the cap",
                  pr.reserved >> 20);
    cr_assert_eq(pr.advice_at_fill, 0, "advised while busy");
    /* A shard passes through its idle step (mem_home_idle) before every sleep it counts, so
     * the first sleep after the fill must find the advice given. The engine has no event for
     * "a shard went to sleep", and the usual wait (round trips to the shard) would keep it
     * awake: poll its sleep counter from here, a millisecond apart, bounded. */
    uint64_t t0 = pith_now_ns();
    pith_shard_stats_t ss;
    cr_assert_eq(pith_shard_stats(0, &ss), 0);
    while (ss.sleeps == pr.sleeps_at_fill && pith_now_ns() - t0 < 5000 * MS) {
        usleep(1000);
        cr_assert_eq(pith_shard_stats(0, &ss), 0);
    }
    cr_assert_gt(ss.sleeps, pr.sleeps_at_fill, "shard 0 never slept after the fill");
    pith_mem_stats_t st = stats_of(0);
    cr_assert_gt(st.cold_advice, 0, "an idle shard at %zu of %zu MiB never advised its cold extent",
                 st.reserved >> 20, st.cap >> 20);
    call_on(0, pressure_free_fn, NULL);
    cr_assert_eq(stats_of(0).in_use, 0);
    test_stop(NULL);
}

/* Owners in numbers: the table grows, forgotten slots are reused, nothing is lost. */
#define OT_N 3000

static struct {
    void *blk[OT_N + 1];
    unsigned wrong;
    unsigned first_wrong;
} ot;

static void ot_wrong(unsigned tag)
{
    if (ot.wrong++ == 0)
        ot.first_wrong = tag;
}

static void ot_check(unsigned tag, bool known, size_t in_use, uint64_t allocs)
{
    pith_mem_owner_stats_t os;
    int rc = pith_mem_owner_stats(tag, &os);
    if (!known) {
        if (rc != -ENOENT)
            ot_wrong(tag);
    } else if (rc != 0 || os.in_use != in_use || os.allocs != allocs) {
        ot_wrong(tag);
    }
}

static void *owner_table_fn(void *arg)
{
    (void)arg;
    for (unsigned t = 1; t <= OT_N; t++) {
        ot.blk[t] = pith_malloc_ex(t % 100, 0, PITH_MEM_WARM, t);
        if (ot.blk[t] == NULL)
            ot_wrong(t);
    }
    for (unsigned t = 1; t <= OT_N; t += 2) {
        pith_free(ot.blk[t]);
        if (pith_mem_owner_forget(t) != 0)
            ot_wrong(t);
    }
    for (unsigned t = 1; t <= OT_N; t++)
        ot_check(t, t % 2 == 0, charged(t % 100), 1);
    for (unsigned t = 1; t <= OT_N; t += 2) {
        ot.blk[t] = pith_malloc_ex(8, 0, PITH_MEM_WARM, t);
        if (ot.blk[t] == NULL)
            ot_wrong(t);
    }
    for (unsigned t = 1; t <= OT_N; t++)
        ot_check(t, true, t % 2 ? charged(8) : charged(t % 100), 1);
    for (unsigned t = 1; t <= OT_N; t++) {
        pith_free(ot.blk[t]);
        if (pith_mem_owner_forget(t) != 0)
            ot_wrong(t);
    }
    for (unsigned t = 1; t <= OT_N; t++)
        ot_check(t, false, 0, 0);
    return NULL;
}

Test(mem, thousands_of_owners_come_and_go, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    pith_mem_stats_t before = stats_of(0);
    call_on(0, owner_table_fn, NULL);
    cr_assert_eq(ot.wrong, 0, "%u owner checks failed, the first for tag %u", ot.wrong,
                 ot.first_wrong);
    cr_assert_eq(stats_of(0).in_use, before.in_use);
    test_stop(NULL);
}

/* mimalloc takes 64 arenas a process. 22 shards with at least 3 extents each (warm, cold, and
 * 70 MiB of warm blocks that outgrow the first 64 MiB) ask for 66 or more: the shards that find
 * the table full count it and allocate from their thread's heap instead (home.c: "a full arena
 * table is not fatal"). */
#define AF_SHARDS 22
#define AF_BIG    70

static struct af {
    void *warm, *cold, *big[AF_BIG];
    unsigned failed;
    size_t bytes;
} af[AF_SHARDS];

static void *af_alloc_fn(void *arg)
{
    struct af *a = arg;
    a->warm = pith_malloc(1000);
    a->cold = pith_malloc_ex(1000, 0, PITH_MEM_COLD, 0);
    a->failed = (a->warm == NULL) + (a->cold == NULL);
    a->bytes = 2 * (1000 + HDR);
    for (int i = 0; i < AF_BIG; i++) {
        a->big[i] = pith_malloc(MiB);
        a->failed += a->big[i] == NULL;
        a->bytes += MiB + HDR;
    }
    return NULL;
}

static void *af_free_fn(void *arg)
{
    struct af *a = arg;
    pith_free(a->warm);
    pith_free(a->cold);
    for (int i = 0; i < AF_BIG; i++)
        pith_free(a->big[i]);
    return NULL;
}

Test(mem, a_full_arena_table_falls_back_to_the_thread_heap, .timeout = 60)
{
    pith_config_t cfg = mem_config(AF_SHARDS);
    cfg.mem.cap = 256 * MiB;
    /* (Under valgrind blocks come from libc and plain_alloc, in alloc.c, returns NULL when
     * mem_prof_grow fails, -ENOSPC included: there a full arena table is fatal.) */
    cfg.poll_ns = 0; /* 22 shards on a few CPUs: sleep at once rather than spin */
    cfg.mem.flags = PITH_MEM_NO_THP | PITH_MEM_NO_LOCK; /* each block's header touches 4 KiB */
    test_start(&cfg);
    pith_mem_stats_t before[AF_SHARDS];
    for (int s = 0; s < AF_SHARDS; s++) {
        before[s] = stats_of(s);
        call_on((unsigned)s, af_alloc_fn, &af[s]);
    }
    uint64_t failures = 0;
    unsigned extents = 0;
    for (int s = 0; s < AF_SHARDS; s++) {
        pith_mem_stats_t st = stats_of(s);
        failures += st.arena_failures;
        extents += st.extents;
        cr_assert_eq(af[s].failed, 0,
                     "shard %d: %u allocations failed (%" PRIu64 " arena failures)", s,
                     af[s].failed, st.arena_failures);
        cr_assert_eq(st.in_use, before[s].in_use + af[s].bytes);
    }
    cr_assert_leq(extents, 64u);
    cr_assert_geq(failures, 2, "%u extents made, %" PRIu64 " arena failures", extents, failures);
    for (int s = 0; s < AF_SHARDS; s++) {
        call_on((unsigned)s, af_free_fn, &af[s]);
        cr_assert_eq(stats_of(s).in_use, before[s].in_use);
    }
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

/* ---- 11. extents are pooled across restarts ---- */

static void *churn_fn(void *arg)
{
    bool cold = arg != NULL;
    void *blk[512];
    uint64_t rng = 88172645463325252ull;
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 512; i++) {
            size_t size = 16 + xorshift(&rng) % 8000;
            blk[i] = cold && i % 2 ? pith_malloc_ex(size, 0, PITH_MEM_COLD, 0) : pith_malloc(size);
            if (blk[i] == NULL)
                return (void *)(intptr_t)-ENOMEM;
            memset(blk[i], i, size);
        }
        void *big = pith_malloc(2 * MiB);
        if (big == NULL)
            return (void *)(intptr_t)-ENOMEM;
        pith_free(big);
        for (int i = 0; i < 512; i++)
            pith_free(blk[i]);
    }
    return NULL;
}

static void restarts(unsigned rounds, bool cold)
{
    enum { N = 2, MAXX = 8 };
    void *bases[N * MAXX];
    unsigned nbases = 0;
    size_t reserved0[N] = {0};
    for (unsigned round = 0; round < rounds; round++) {
        pith_config_t cfg = mem_config(N);
        test_start(&cfg);
        for (int s = 0; s < N; s++) {
            intptr_t rc = (intptr_t)call_on((unsigned)s, churn_fn, cold ? (void *)1 : NULL);
            cr_assert_eq(rc, 0, "round %u shard %d: an allocation failed", round, s);
            pith_mem_stats_t st = stats_of(s);
            cr_assert_eq(st.arena_failures, 0, "round %u shard %d", round, s);
            cr_assert_eq(st.in_use, 0, "round %u shard %d: %zu bytes in use", round, s, st.in_use);
            cr_assert_leq(st.extents, (unsigned)MAXX);
            if (round == 0)
                reserved0[s] = st.reserved;
            else
                cr_assert_eq(st.reserved, reserved0[s],
                             "round %u shard %d: %zu MiB reserved, %zu MiB the first time", round,
                             s, st.reserved >> 20, reserved0[s] >> 20);
            for (unsigned i = 0; i < st.extents; i++) {
                void *b = extent_of(s, i).base;
                bool known = false;
                for (unsigned k = 0; k < nbases; k++)
                    known |= bases[k] == b;
                if (round == 0) {
                    cr_assert_not(known);
                    bases[nbases++] = b;
                } else {
                    cr_assert(known,
                              "round %u shard %d: extent %u at %p is new: extents are not reused",
                              round, s, i, b);
                }
            }
        }
        pith_stop_report_t rep;
        test_stop(&rep);
        cr_assert_eq(rep.mem_in_use, 0);
    }
}

Test(mem, restarts_reuse_the_extents, .timeout = 60)
{
    restarts(5, false);
}

/* Two shards with two profiles each make 4 extents an engine: without the pool, 40 engines
 * would need 160 mimalloc arenas, past its limit of 64 a process. */
Test(mem, many_restarts_stay_within_mimallocs_arena_limit, .timeout = 120)
{
    restarts((unsigned)(scaled(40) < 3 ? 3 : scaled(40)), true);
}

/* ---- regressions, and what remains wrong ---- */

static void *hot_fn(void *arg)
{
    (void)arg;
    return pith_malloc_ex(4096, 0, PITH_MEM_HOT, 0);
}

/* stats.c once recognised a smaps mapping line by the absence of ':', which its device field
 * ("00:00") always has: THP extents then reported no huge bytes (fixed in dc8a7bb). */
Test(mem, thp_extents_count_their_hugepages, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    cfg.mem.flags = PITH_MEM_NO_HUGETLB;
    test_start(&cfg);
    void *p = call_on(0, hot_fn, NULL);
    cr_assert_not_null(p);
    pith_mem_extent_t hot = {0};
    pith_mem_stats_t st = stats_of(0);
    for (unsigned i = 0; i < st.extents; i++)
        if (extent_of(0, i).profile == PITH_MEM_HOT)
            hot = extent_of(0, i);
    cr_assert_eq(hot.profile, PITH_MEM_HOT);
    size_t kernel = smaps_huge_bytes(hot.base, hot.size);
    if (hot.backing != PITH_MEM_THP || kernel == 0) {
        call_on(0, free_fn, p);
        test_stop(NULL);
        cr_skip_test("the kernel gave the hot extent no transparent hugepage");
        return;
    }
    st = stats_of(0);
    cr_assert_gt(st.huge, 0,
                 "smaps shows %zu bytes of AnonHugePages in the hot extent, stats.huge is %zu",
                 kernel, st.huge);
    cr_assert_leq(st.huge, st.committed);
    call_on(0, free_fn, p);
    test_stop(NULL);
}

/* An extent made under PITH_MEM_NO_THP is pooled as PLAIN and handed to the next engine as it
 * is, although that engine allows transparent hugepages: extent.c pool_take skips pooled extents
 * whose backing the new flags forbid, never ones that are worse than the flags allow, and relock
 * brings back only the lock state (no MADV_HUGEPAGE). */
Test(mem, a_restart_without_no_thp_gets_hugepages_again, .timeout = 30)
{
    if (hugetlb_free_bytes() >= 32 * MiB || !thp_enabled())
        cr_skip_test("needs THP and no hugetlb pool");
    pith_config_t cfg = mem_config(1);
    cfg.mem.flags = PITH_MEM_NO_THP | PITH_MEM_NO_HUGETLB;
    test_start(&cfg);
    cr_assert_eq(extent_of(0, 0).backing, PITH_MEM_PLAIN);
    test_stop(NULL);
    cfg = mem_config(1);
    test_start(&cfg);
    pith_mem_extent_t x = extent_of(0, 0);
    cr_assert_eq(x.backing, PITH_MEM_THP,
                 "a default engine after a NO_THP one got backing %d (extent %p)", x.backing,
                 x.base);
    test_stop(NULL);
}

/* PITH_MEM_NO_LOCK: a new extent counts a lock failure (lock_range), a pooled one that is
 * already unlocked does not (extent.c relock: nothing to do, so no EV_LOCK_REFUSED), so the same
 * unlocked extent is a failure on the first start and none on the next. */
Test(mem, no_lock_counts_a_lock_failure_on_every_start, .timeout = 30)
{
    for (int round = 0; round < 2; round++) {
        pith_config_t cfg = mem_config(1);
        cfg.mem.flags = PITH_MEM_NO_LOCK;
        test_start(&cfg);
        pith_mem_stats_t st = stats_of(0);
        cr_assert_not(extent_of(0, 0).locked);
        cr_assert_geq(st.lock_failures, 1,
                      "start %d: an unlocked warm extent, %" PRIu64 " lock failures", round + 1,
                      st.lock_failures);
        test_stop(NULL);
    }
}

/* A block written, freed, and handed out again by pith_calloc reads as zeros. Under ASan it
 * does not get that far: pith_free poisons the block (alloc.c, asan_poison in pith_free), and
 * mi_heap_zalloc clears the recycled block with memset, which ASan intercepts, before finish()
 * unpoisons it: use-after-poison inside pith_calloc. */
static const size_t calloc_sizes[3] = {40, 4000, 300000};
static bool calloc_zeroed[3];

static void *calloc_fn(void *arg)
{
    (void)arg;
    for (int k = 0; k < 3; k++) {
        unsigned char *p = pith_malloc(calloc_sizes[k]);
        if (p == NULL)
            continue;
        memset(p, 0xab, calloc_sizes[k]);
        pith_free(p);
        unsigned char *q = pith_calloc(1, calloc_sizes[k]);
        if (q == NULL)
            continue;
        calloc_zeroed[k] = true;
        for (size_t i = 0; i < calloc_sizes[k]; i++)
            if (q[i] != 0) {
                calloc_zeroed[k] = false;
                break;
            }
        pith_free(q);
    }
    return NULL;
}

Test(mem, calloc_zeroes_a_recycled_block, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    call_on(0, calloc_fn, NULL);
    for (int k = 0; k < 3; k++)
        cr_assert(calloc_zeroed[k],
                  "pith_calloc(1, %zu) after a free of the same size is not zeroed",
                  calloc_sizes[k]);
    test_stop(NULL);
}

/* An owner is freed by pith_mem_owner_forget once its in-use bytes read 0. A remote pith_free
 * credits the owner with relaxed atomics (alloc.c, credit_remote: remote, then remote_frees), so
 * the owner's shard may free it between the two, or before the second lands: the free and the
 * remote thread's writes are not ordered (ThreadSanitizer reports it). Shard 0 tags a block,
 * hands it to shard 1, and forgets the tag as soon as shard 1's free lets it. */
static struct {
    _Atomic(void *) slot;
    unsigned rounds;
    atomic_uint done;
    test_error_t err;
    sem_t finished;
} fr;

static void fr_owner(void *arg)
{
    (void)arg;
    for (unsigned i = 1; i <= fr.rounds; i++) {
        uint64_t tag = 1000 + i;
        void *p = pith_malloc_ex(64, 0, PITH_MEM_WARM, tag);
        if (p == NULL) {
            TEST_NOTE(&fr.err, -ENOMEM);
            break;
        }
        atomic_store_explicit(&fr.slot, p, memory_order_release);
        int rc;
        while ((rc = pith_mem_owner_forget(tag)) == -EBUSY)
            if (test_on_valgrind())
                sched_yield();
        if (rc != 0) {
            TEST_NOTE(&fr.err, rc);
            break;
        }
    }
    if (atomic_fetch_add(&fr.done, 1) == 1)
        sem_post(&fr.finished);
}

static void fr_freer(void *arg)
{
    (void)arg;
    for (unsigned i = 1; i <= fr.rounds && atomic_load(&fr.err.code) == 0; i++) {
        void *p;
        while ((p = atomic_exchange_explicit(&fr.slot, NULL, memory_order_acquire)) == NULL)
            if (test_on_valgrind())
                sched_yield();
        pith_free(p);
    }
    if (atomic_fetch_add(&fr.done, 1) == 1)
        sem_post(&fr.finished);
}

Test(mem, forgetting_an_owner_races_no_remote_free, .timeout = 60)
{
    pith_config_t cfg = mem_config(2);
    cfg.stall_ns = 0; /* both tasks run for a while on purpose */
    test_start(&cfg);
    cr_assert_eq(sem_init(&fr.finished, 0, 0), 0);
    fr.rounds = (unsigned)scaled(20000);
    pith_mem_stats_t before = stats_of(0);
    cr_assert_eq(pith_submit(1, fr_freer, NULL), 0);
    cr_assert_eq(pith_submit(0, fr_owner, NULL), 0);
    while (sem_wait(&fr.finished) != 0)
        cr_assert_eq(errno, EINTR);
    test_assert_no_error(&fr.err);
    pith_mem_stats_t st = stats_of(0);
    cr_assert_eq(st.in_use, before.in_use);
    cr_assert_eq(st.remote_frees, before.remote_frees + fr.rounds);
    test_stop(NULL);
    sem_destroy(&fr.finished);
}

/* ---- the cache of small blocks ---- */

#define SC_LIVE 64

static struct {
    unsigned wrong, first_wrong_step;
    unsigned budget_wrong, budget_refused;
    int budget_err;
    bool hot_reused, double_free_counted, distinct_after;
} sc;

static void sc_wrong(unsigned step)
{
    if (sc.wrong++ == 0)
        sc.first_wrong_step = step;
}

/* Random small and not quite small sizes, freed in random order: after every step the shard's
 * in_use, allocs and frees move by exactly what was done, whether the cache or mimalloc
 * served the block. */
static void sc_check(const pith_mem_stats_t *a, size_t expect, uint64_t allocs, uint64_t frees,
                     unsigned step)
{
    pith_mem_stats_t b = stats_of(0);
    if (b.in_use != a->in_use + expect || b.allocs != a->allocs + allocs ||
        b.frees != a->frees + frees || b.peak < b.in_use)
        sc_wrong(step);
}

static void *small_cache_fn(void *arg)
{
    (void)arg;
    pith_mem_stats_t a = stats_of(0);
    void *live[SC_LIVE];
    size_t sizes[SC_LIVE];
    unsigned n = 0;
    size_t expect = 0;
    uint64_t allocs = 0, frees = 0;
    uint32_t x = 2463534242u;
    for (unsigned step = 0; step < 20000; step++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (n == 0 || (n < SC_LIVE && (x & 1))) {
            size_t s = (x >> 8) % 260;
            unsigned char *p = pith_malloc(s);
            if (p == NULL || pith_malloc_usable_size(p) < s) {
                sc_wrong(step);
                break;
            }
            memset(p, (int)(step & 0xFF), s);
            if (s > 0)
                p[0] = (unsigned char)n;
            live[n] = p;
            sizes[n++] = s;
            expect += charged(s);
            allocs++;
        } else {
            unsigned k = (x >> 8) % n;
            unsigned char *p = live[k];
            if (sizes[k] > 0 && p[0] != (unsigned char)k)
                sc_wrong(step); /* someone else got this block while it was live */
            pith_free(p);
            expect -= charged(sizes[k]);
            frees++;
            live[k] = live[--n];
            sizes[k] = sizes[n];
            if (k < n && sizes[k] > 0)
                ((unsigned char *)live[k])[0] = (unsigned char)k;
        }
        if (step % 97 == 0)
            sc_check(&a, expect, allocs, frees, step);
    }
    while (n > 0) {
        pith_free(live[--n]);
        expect -= charged(sizes[n]);
        frees++;
    }
    sc_check(&a, expect, allocs, frees, 20000);

    /* A freed small block reused at once; a second free of it is refused and does not put it
     * in the cache twice. */
    void *p = pith_malloc(32);
    pith_free(p);
    void *q = pith_malloc(32);
    sc.hot_reused = q == p;
    uint64_t bad = stats_of(0).bad_frees;
    pith_free(q);
    /* Under valgrind, reading a freed block's header is an error of its own. */
    if (!test_on_valgrind())
        pith_free(q);
    sc.double_free_counted = test_on_valgrind() || stats_of(0).bad_frees == bad + 1;
    void *r1 = pith_malloc(32), *r2 = pith_malloc(32);
    sc.distinct_after = r1 != NULL && r2 != NULL && r1 != r2;
    pith_free(r1);
    pith_free(r2);

    /* Owner 0's budget holds for every block, whether the cache or mimalloc serves it: random
     * sizes against a 1000 B budget are granted exactly when they fit. */
    size_t base = stats_of(0).in_use, budget = base + 1000, held = 0;
    sc.budget_err = pith_mem_owner_budget(0, budget);
    for (unsigned step = 0; step < 5000; step++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (n == 0 || (n < SC_LIVE && (x & 1))) {
            size_t s = 1 + (x >> 8) % 240;
            void *b = pith_malloc(s);
            bool fits = base + held + charged(s) <= budget;
            if ((b != NULL) != fits)
                sc.budget_wrong++;
            if (b == NULL) {
                sc.budget_refused++;
                continue;
            }
            live[n] = b;
            sizes[n++] = s;
            held += charged(s);
        } else {
            unsigned k = (x >> 8) % n;
            pith_free(live[k]);
            held -= charged(sizes[k]);
            live[k] = live[--n];
            sizes[k] = sizes[n];
        }
        if (stats_of(0).in_use != base + held)
            sc.budget_wrong++;
    }
    while (n > 0)
        pith_free(live[--n]);
    pith_mem_owner_budget(0, 0);
    return NULL;
}

Test(mem, small_block_cache_keeps_exact_accounts, .timeout = 30)
{
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    pith_mem_stats_t before = stats_of(0);
    call_on(0, small_cache_fn, NULL);
    cr_assert_eq(sc.wrong, 0, "%u checks failed, the first at step %u", sc.wrong,
                 sc.first_wrong_step);
    if (!test_on_valgrind()) {
        /* Under valgrind blocks come from libc and there is no cache. */
        cr_assert(sc.hot_reused, "a freed 32 B block was not the next one handed out");
        cr_assert(sc.distinct_after, "a double free put a block in the cache twice");
    }
    cr_assert(sc.double_free_counted, "the second free was not refused and counted");
    cr_assert_eq(sc.budget_err, 0);
    cr_assert_eq(sc.budget_wrong, 0, "%u allocations under owner 0's budget went wrong",
                 sc.budget_wrong);
    cr_assert_gt(sc.budget_refused, 0, "the budget was never reached");
    cr_assert_eq(stats_of(0).in_use, before.in_use);
    test_stop(NULL);
}

/* ---- big blocks given back to mimalloc, whose memory later starts a segment ---- */

static struct {
    unsigned grown, bad_bytes, failed;
} segs;

/* A buffer grown by pith_realloc up to 48 MiB (as a connection's input grows), freed, then
 * small blocks, and then blocks of 200 to 352 MiB: mimalloc builds new segments in the memory of
 * the freed big ones and memsets their headers there. Under ASan that used to be reported as a
 * use-after-poison inside mimalloc (the poison covered the freed block whole); here the test also
 * checks that every realloc kept the bytes. */
static void *grow_free_reuse_fn(void *arg)
{
    (void)arg;
    for (int round = 0; round < 6; round++) {
        unsigned char *p = NULL;
        size_t have = 0;
        for (size_t n = 64 << 10; n <= (48u << 20); n += n / 2) {
            unsigned char *q = pith_realloc(p, n);
            if (q == NULL) {
                segs.failed++;
                break;
            }
            p = q;
            for (size_t i = 0; i < have; i += 4093)
                segs.bad_bytes += p[i] != (unsigned char)(i * 7 + round);
            for (size_t i = (have + 4092) / 4093 * 4093; i < n; i += 4093)
                p[i] = (unsigned char)(i * 7 + round);
            have = n;
            segs.grown++;
        }
        pith_free(p);
        void *small[2000];
        for (int i = 0; i < 2000; i++)
            small[i] = pith_malloc(1000 + (size_t)i * 37);
        for (int i = 0; i < 2000; i++)
            pith_free(small[i]);
    }
    /* Huge blocks (a value of hundreds of MiB): freed, their memory may start a huge segment,
     * whose header (80 bytes per 64 KiB of it) passes 256 KiB. */
    for (int round = 0; round < 4; round++) {
        size_t n = (size_t)(200 + 40 * round) << 20;
        unsigned char *big = pith_malloc(n);
        if (big == NULL) {
            segs.failed++;
            break;
        }
        for (size_t i = 0; i < n; i += 4096)
            big[i] = (unsigned char)i;
        pith_free(big);
        big = pith_malloc(n + (32u << 20));
        if (big == NULL) {
            segs.failed++;
            break;
        }
        big[0] = 1;
        pith_free(big);
        segs.grown++;
    }
    return NULL;
}

Test(mem, big_blocks_freed_and_reused_as_segments_keep_asan_quiet, .timeout = 120)
{
    pith_config_t cfg = mem_config(1);
    test_start(&cfg);
    memset(&segs, 0, sizeof(segs));
    call_on(0, grow_free_reuse_fn, NULL);
    cr_assert_eq(segs.failed, 0, "a realloc failed");
    cr_assert_eq(segs.bad_bytes, 0, "a realloc lost bytes");
    cr_assert_geq(segs.grown, 6u * 16u + 4u, "%u reallocs and huge blocks", segs.grown);
    test_stop(NULL);
}

/* ---- pith_mem_advise ---- */

static void *advise_fn(void *arg)
{
    int *rc = arg;
    size_t big = 1u << 20, got = 0;
    char *p = pith_malloc_ex(big, 0, PITH_MEM_COLD, 0);
    if (p == NULL) {
        rc[0] = -ENOMEM;
        return NULL;
    }
    memset(p, 7, big);
    rc[0] = pith_mem_advise(p, big, PITH_MEM_DONE, &got);
    rc[1] = got >= big - 2 * 4096 && got <= big ? 0 : -1; /* whole pages inside only */
    rc[2] = pith_mem_advise(p, big, PITH_MEM_WILLNEED, NULL);
    rc[3] = pith_mem_advise(p, big, PITH_MEM_SEQUENTIAL, NULL);
    rc[4] = pith_mem_advise(p, big, PITH_MEM_NORMAL, NULL);
    rc[5] = pith_mem_advise(p + 1, 100, PITH_MEM_DONE, &got) == 0 && got == 0 ? 0 : -1;
    size_t bad = 0;
    for (size_t i = 0; i < big; i++)
        bad += p[i] != 7;
    rc[6] = bad == 0 ? 0 : -1; /* contents never change */
    pith_free(p);
    return NULL;
}

Test(mem, advice_covers_the_whole_pages_of_a_range_and_keeps_its_contents, .timeout = 30)
{
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    int rc[7] = {1, 1, 1, 1, 1, 1, 1};
    cr_assert_eq(pith_call_wait(0, advise_fn, rc, NULL), 0);
    const char *what[] = {
        "DONE", "granted", "WILLNEED", "SEQUENTIAL", "NORMAL", "a part of one page", "contents"};
    for (int i = 0; i < 7; i++)
        cr_assert_eq(rc[i], 0, "%s: %d (%s)", what[i], rc[i], pith_strerror(rc[i]));
    int x = 0;
    cr_assert_eq(pith_mem_advise(NULL, 4096, PITH_MEM_DONE, NULL), -EINVAL);
    cr_assert_eq(pith_mem_advise(&x, sizeof(x), (pith_mem_advice_t)9, NULL), -EINVAL);
    test_stop(NULL);
}

/* ---- pins ---- */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
static const bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
static const bool sanitized = true;
#else
static const bool sanitized = false;
#endif
#else
static const bool sanitized = false;
#endif

/* kB locked (smaps' Locked) in the mappings that lie wholly inside [lo, hi). */
static uint64_t locked_kb(uintptr_t lo, uintptr_t hi)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    cr_assert_not_null(f);
    char line[512];
    bool inside = false;
    uint64_t kb = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long a, b, v;
        /* A mapping's first line: "start-end perms ...", the '-' before any space. */
        char *dash = strchr(line, '-'), *space = strchr(line, ' ');
        if (dash != NULL && space != NULL && dash < space &&
            sscanf(line, "%lx-%lx ", &a, &b) == 2) {
            inside = a >= lo && b <= hi;
            continue;
        }
        if (inside && sscanf(line, "Locked: %lu kB", &v) == 1)
            kb += v;
    }
    fclose(f);
    return kb;
}

struct pin_run {
    void *cold, *warm;
    uintptr_t lo, hi;   /* the cold block's whole pages */
    uintptr_t wlo, whi; /* the warm block's */
    size_t granted[4];
    int rc[12];
};

#define PIN_SIZE (1024 * 1024)

static void whole(void *p, size_t len, uintptr_t *lo, uintptr_t *hi)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    *lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    *hi = ((uintptr_t)p + len) & ~(page - 1);
}

static void *pin_make_fn(void *arg)
{
    struct pin_run *q = arg;
    q->cold = pith_malloc_ex(PIN_SIZE, 4096, PITH_MEM_COLD, 0);
    q->warm = pith_malloc_ex(PIN_SIZE, 4096, PITH_MEM_WARM, 0);
    if (q->cold != NULL)
        whole(q->cold, PIN_SIZE, &q->lo, &q->hi);
    if (q->warm != NULL)
        whole(q->warm, PIN_SIZE, &q->wlo, &q->whi);
    return NULL;
}

static void *pin_whole_fn(void *arg)
{
    struct pin_run *q = arg;
    q->rc[0] = pith_mem_pin(q->cold, PIN_SIZE, 0, &q->granted[0]);
    return NULL;
}

static void *unpin_whole_fn(void *arg)
{
    struct pin_run *q = arg;
    q->rc[1] = pith_mem_unpin(q->cold, PIN_SIZE);
    q->rc[2] = pith_mem_unpin(q->cold, PIN_SIZE); /* gone now */
    return NULL;
}

static void *pin_ttl_fn(void *arg)
{
    struct pin_run *q = arg;
    q->rc[3] = pith_mem_pin(q->cold, PIN_SIZE, 30 * MS, &q->granted[1]);
    return NULL;
}

static void *pin_overlap_fn(void *arg)
{
    struct pin_run *q = arg;
    char *c = q->cold;
    /* The pin with a time to live ended by itself where the test waited for it (-ENOENT);
     * where it could not watch (sanitizers), it ends here. */
    int rc = pith_mem_unpin(c, PIN_SIZE);
    if (rc != 0 && rc != -ENOENT)
        q->rc[4] = rc;
    else
        q->rc[4] = pith_mem_pin(c, PIN_SIZE / 2, 0, NULL);
    q->rc[5] = pith_mem_pin(c + PIN_SIZE / 4, PIN_SIZE / 2, 0, NULL);
    q->rc[6] = pith_mem_unpin(c, PIN_SIZE / 2);
    return NULL;
}

static void *pin_overlap_end_fn(void *arg)
{
    struct pin_run *q = arg;
    q->rc[7] = pith_mem_unpin((char *)q->cold + PIN_SIZE / 4, PIN_SIZE / 2);
    q->rc[8] = pith_mem_pin(q->warm, PIN_SIZE, 0, &q->granted[2]);
    q->rc[9] = pith_mem_unpin(q->warm, PIN_SIZE);
    return NULL;
}

static void *pin_limits_fn(void *arg)
{
    struct pin_run *q = arg;
    int x = 0;
    size_t g = 1;
    q->rc[10] = pith_mem_pin(&x, sizeof(x), 0, &g) == 0 && g == 0 ? 0 : -1;
    /* 64 pins at most on a shard: one page each of the cold block. */
    int rc = 0, n = 0;
    for (; n < 65 && rc == 0; n++)
        rc = pith_mem_pin((char *)q->cold + (size_t)n * 4096, 4096, 0, NULL);
    q->rc[11] = n == 65 && rc == -ENOSPC ? 0 : rc != 0 ? rc : -1;
    for (int i = 0; i < 64; i++)
        (void)pith_mem_unpin((char *)q->cold + (size_t)i * 4096, 4096);
    return NULL;
}

static void *free_pin_fn(void *arg)
{
    struct pin_run *q = arg;
    pith_free(q->cold);
    pith_free(q->warm);
    return NULL;
}

Test(mem, pins_lock_whole_pages_until_unpinned_or_their_time_runs_out, .timeout = 60)
{
    /* The sanitizers' runtimes make mlock and munlock do nothing (their shadow memory would be
     * locked too), and valgrind does not model them: there the calls run, unchecked. */
    bool see = !test_on_valgrind() && !sanitized;
    pith_config_t cfg = test_config(1);
    test_start(&cfg);
    struct pin_run q = {.rc = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
    call_on(0, pin_make_fn, &q);
    cr_assert(q.cold != NULL && q.warm != NULL);
    uint64_t size_kb = (q.hi - q.lo) / 1024;
    cr_assert(!see || locked_kb(q.lo, q.hi) == 0, "a cold block starts unlocked");

    call_on(0, pin_whole_fn, &q);
    if (q.rc[0] == -EPERM || q.rc[0] == -ENOMEM) {
        cr_log_info("mlock refused here (%d): pins not checked", q.rc[0]);
        call_on(0, free_pin_fn, &q);
        test_stop(NULL);
        return;
    }
    cr_assert_eq(q.rc[0], 0, "pin: %d", q.rc[0]);
    cr_assert_eq(q.granted[0], q.hi - q.lo, "granted %zu of %zu", q.granted[0],
                 (size_t)(q.hi - q.lo));
    cr_assert(!see || locked_kb(q.lo, q.hi) == size_kb, "pinned: %llu of %llu kB locked",
              (unsigned long long)locked_kb(q.lo, q.hi), (unsigned long long)size_kb);
    call_on(0, unpin_whole_fn, &q);
    cr_assert_eq(q.rc[1], 0);
    cr_assert_eq(q.rc[2], -ENOENT);
    cr_assert(!see || locked_kb(q.lo, q.hi) == 0, "unpinned");

    /* A time to live: locked now, unlocked by the shard's timer. */
    call_on(0, pin_ttl_fn, &q);
    cr_assert_eq(q.rc[3], 0);
    if (see) {
        cr_assert_eq(locked_kb(q.lo, q.hi), size_kb);
        TEST_WAIT_FOR(locked_kb(q.lo, q.hi) == 0);
    }

    /* Two pins over one middle quarter: the first one's end leaves the quarter locked. */
    call_on(0, pin_overlap_fn, &q);
    cr_assert(q.rc[4] == 0 && q.rc[5] == 0 && q.rc[6] == 0, "%d %d %d", q.rc[4], q.rc[5], q.rc[6]);
    uintptr_t quarter = (uintptr_t)PIN_SIZE / 4;
    uintptr_t c = (uintptr_t)q.cold;
    cr_assert(!see || locked_kb(q.lo, c + quarter) == 0, "the first quarter is unlocked");
    cr_assert(!see || locked_kb(c + quarter, c + 3 * quarter) == 2 * quarter / 1024,
              "the second pin's half stays locked: %llu kB",
              (unsigned long long)locked_kb(c + quarter, c + 3 * quarter));

    /* The warm profile's memory: the engine keeps it locked, and an unpin leaves it so. */
    call_on(0, pin_overlap_end_fn, &q);
    cr_assert_eq(q.rc[7], 0);
    cr_assert(!see || locked_kb(q.lo, q.hi) == 0);
    cr_assert(q.rc[8] == 0 && q.rc[9] == 0, "%d %d", q.rc[8], q.rc[9]);
    pith_mem_stats_t ms;
    cr_assert_eq(pith_mem_stats(0, &ms), 0);
    if (see && ms.locked > 0) {
        /* smaps shows the whole extent as one mapping: the block's pages are in it, locked. */
        cr_assert_eq(q.granted[2], q.whi - q.wlo);
        FILE *f = fopen("/proc/self/smaps", "r");
        cr_assert_not_null(f);
        char line[512];
        bool in = false;
        uint64_t locked = 0;
        while (fgets(line, sizeof(line), f) != NULL) {
            unsigned long a, b, v;
            if (strchr(line, '-') != NULL && strchr(line, '-') < strchr(line, ' ') &&
                sscanf(line, "%lx-%lx ", &a, &b) == 2) {
                in = a <= q.wlo && b >= q.whi;
                continue;
            }
            if (in && sscanf(line, "Locked: %lu kB", &v) == 1)
                locked += v;
        }
        fclose(f);
        cr_assert_geq(locked, (q.whi - q.wlo) / 1024,
                      "the warm extent keeps the pinned pages locked after the unpin: %llu kB",
                      (unsigned long long)locked);
    }

    call_on(0, pin_limits_fn, &q);
    cr_assert_eq(q.rc[10], 0, "a range with no whole page pins nothing and succeeds");
    cr_assert_eq(q.rc[11], 0, "the 65th pin: %d", q.rc[11]);
    int x = 0;
    cr_assert_eq(pith_mem_pin(&x, sizeof(x), 0, NULL), -EPERM, "off the shards");
    cr_assert_eq(pith_mem_unpin(&x, sizeof(x)), -EPERM);
    call_on(0, free_pin_fn, &q);
    test_stop(NULL);
}
