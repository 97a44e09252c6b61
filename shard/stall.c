/* The stall detector: a watchdog thread that samples what each shard is running and reports a
 * task still running past the threshold. It parks when every shard sleeps, so an idle engine
 * costs nothing, and the first shard to wake up unparks it. */
#include "shard.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct watch {
    uint64_t seq;      /* task_seq when this task was first seen running */
    uint64_t since;    /* when it was first seen */
    bool stalled;      /* it was counted as a stall: its length goes in the histogram */
    uint64_t epoch;    /* sleep_epoch at the last sample */
    uint64_t reported; /* task_seq of the last report, to report a task once */
    uint64_t last_report_ns;
};

static void futex_wait(_Atomic uint32_t *word, uint32_t val)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

void stall_unpark(struct engine *e)
{
    uint32_t expect = 1;
    if (atomic_compare_exchange_strong(&e->wd_parked, &expect, 0))
        futex_wake(&e->wd_parked);
}

static void report(struct engine *e, unsigned shard, pith_anyfn_t fn, uint64_t ns)
{
    pith_stall_t st = {.shard = shard, .fn = fn, .ns = ns};
    /* An engine function such as an actor's turn names nothing a reader knows: the layer that
     * owns it says what really runs. */
    pith_anyfn_t inner = fn;
    const char *label = shard_hooks_describe(shard, &inner);
    if (label != NULL) {
        st.actor_type = label;
        st.fn = fn = inner;
    }
    Dl_info info;
    void *addr;
    memcpy(&addr, &fn, sizeof(addr)); /* dladdr takes an object pointer */
    if (dladdr(addr, &info) && info.dli_sname != NULL && info.dli_saddr == addr)
        st.fn_name = info.dli_sname;
    if (e->cfg.on_stall) {
        e->cfg.on_stall(&st, e->cfg.stall_ctx);
        return;
    }
    if (st.actor_type != NULL)
        fprintf(stderr,
                "pith: stall: shard %u has been running a behaviour of actor type \"%s\" "
                "(%s, %p) for %.1f ms\n",
                shard, st.actor_type, st.fn_name ? st.fn_name : "not exported", addr,
                (double)ns / 1e6);
    else
        fprintf(stderr, "pith: stall: shard %u has been running %s (%p) for %.1f ms\n", shard,
                st.fn_name ? st.fn_name : "?", addr, (double)ns / 1e6);
}

/* True when every shard slept through the last two samples without waking. */
static bool all_asleep(struct engine *e, struct watch *w)
{
    bool quiet = true;
    for (unsigned i = 0; i < e->n; i++) {
        struct shard *s = e->shards[i];
        uint64_t epoch = atomic_load(&s->sleep_epoch);
        if (atomic_load(&s->sleep_state) == AWAKE || epoch != w[i].epoch)
            quiet = false;
        w[i].epoch = epoch;
    }
    return quiet;
}

static void *watchdog_main(void *arg)
{
    struct engine *e = arg;
    struct watch *w = calloc(e->n, sizeof(*w));
    if (w == NULL)
        return NULL;
    pthread_setname_np(pthread_self(), "pith/watchdog");
    uint64_t period = e->cfg.stall_ns / 4;
    if (period < 1000000)
        period = 1000000;
    struct timespec ts = {(time_t)(period / 1000000000u), (long)(period % 1000000000u)};

    while (!atomic_load(&e->wd_stop)) {
        nanosleep(&ts, NULL);
        uint64_t now = pith_now_ns();
        for (unsigned i = 0; i < e->n; i++) {
            struct shard *s = e->shards[i];
            pith_anyfn_t fn = atomic_load_explicit(&s->cur_fn, memory_order_relaxed);
            uint64_t seq = atomic_load_explicit(&s->task_seq, memory_order_relaxed);
            if (fn == NULL || seq != w[i].seq) {
                if (w[i].stalled) {
                    /* The stalled task ended since the last sample. The watchdog alone writes
                     * these: relaxed stores for the readers. */
                    uint64_t ran = now - w[i].since;
                    _Atomic uint64_t *b = &s->st.stall_hist[hist_bucket(ran)];
                    atomic_store_explicit(b, atomic_load_explicit(b, memory_order_relaxed) + 1,
                                          memory_order_relaxed);
                    atomic_store_explicit(
                        &s->st.stall_sum,
                        atomic_load_explicit(&s->st.stall_sum, memory_order_relaxed) + ran,
                        memory_order_relaxed);
                    w[i].stalled = false;
                }
                w[i].seq = seq;
                w[i].since = now;
                continue;
            }
            uint64_t ran = now - w[i].since;
            if (ran < e->cfg.stall_ns || w[i].reported == seq)
                continue;
            w[i].reported = seq;
            w[i].stalled = true;
            stat_add(&s->st.stalls, 1);
            shard_hooks_stalled(i, fn);
            if (now - w[i].last_report_ns >= 1000000000u || w[i].last_report_ns == 0) {
                w[i].last_report_ns = now;
                report(e, i, fn, ran);
            }
        }
        if (all_asleep(e, w)) {
            /* Park. Dekker with shard_sleep's wake-up path: we store wd_parked = 1 and then
             * look at the shards again; a shard stores AWAKE and then loads wd_parked. */
            atomic_store(&e->wd_parked, 1);
            if (all_asleep(e, w) && !atomic_load(&e->wd_stop))
                futex_wait(&e->wd_parked, 1);
            atomic_store(&e->wd_parked, 0);
        }
    }
    free(w);
    return NULL;
}

int stall_start(struct engine *e)
{
    int rc = pthread_create(&e->watchdog, NULL, watchdog_main, e);
    if (rc != 0)
        return -rc;
    e->watchdog_on = true;
    return 0;
}

void stall_stop(struct engine *e)
{
    if (!e->watchdog_on)
        return;
    atomic_store(&e->wd_stop, 1);
    atomic_store(&e->wd_parked, 0);
    futex_wake(&e->wd_parked);
    pthread_join(e->watchdog, NULL);
    e->watchdog_on = false;
}
