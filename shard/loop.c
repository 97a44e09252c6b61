/* The shard thread: its set-up on its own CPU, and the loop that runs work, drains and publishes
 * the mesh, drives the ring, fires timers, and sleeps when there is nothing to do. */
#include "shard.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>

__thread struct shard *shard_cur;

struct fops *shard_fops(void)
{
    return shard_cur != NULL ? &shard_cur->fops : NULL;
}

struct io_ring *shard_io(void)
{
    return shard_cur != NULL ? &shard_cur->io : NULL;
}

const pith_config_t *shard_config(void)
{
    return shard_cur != NULL ? &shard_cur->eng->cfg : NULL;
}

unsigned shard_count_here(void)
{
    return shard_cur != NULL ? shard_cur->eng->n : 0;
}

void shard_flush_ask(void)
{
    if (shard_cur != NULL)
        shard_cur->flush_asked = true;
}

void shard_note_running(pith_anyfn_t fn)
{
    if (shard_cur != NULL)
        atomic_store_explicit(&shard_cur->cur_fn, fn, memory_order_relaxed);
}

_Atomic(pith_anyfn_t) *shard_running_slot(void)
{
    return shard_cur != NULL ? &shard_cur->cur_fn : NULL;
}

bool shard_engine_stopping(void)
{
    return atomic_load_explicit(&pith_engine.state, memory_order_relaxed) != ENGINE_RUNNING;
}

int shard_numa_node(unsigned shard)
{
    struct shard *s = shard_cur;
    if (s == NULL || shard >= s->eng->n || s->eng->shards[shard] == NULL)
        return -1;
    return s->eng->shards[shard]->node;
}

bool shard_stopping(void)
{
    return shard_cur == NULL ||
           atomic_load_explicit(&shard_cur->eng->state, memory_order_relaxed) != ENGINE_RUNNING;
}

#define LQ_INITIAL 1024u
/* How long a stopping shard waits for its cancelled ring operations to report. */
#define FOPS_DRAIN_NS (UINT64_C(2) * 1000 * 1000 * 1000)

int lq_grow(struct shard *s, bool force)
{
    uint32_t cap = s->lq_mask + 1;
    if (cap >= s->eng->cfg.local_queue_max && !force)
        return -EAGAIN;
    if (cap > UINT32_MAX / 2)
        return -ENOMEM;
    struct task *q = malloc((size_t)cap * 2 * sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    uint32_t len = lq_len(s);
    for (uint32_t i = 0; i < len; i++)
        q[i] = s->lq[(s->lq_head + i) & s->lq_mask];
    free(s->lq);
    s->lq = q;
    s->lq_head = 0;
    s->lq_tail = len;
    s->lq_mask = cap * 2 - 1;
    return 0;
}

static unsigned run_local(struct shard *s, unsigned budget)
{
    unsigned ran = 0;
    while (ran < budget && s->lq_head != s->lq_tail) {
        /* Copy out first: the task may push to the queue and make it grow. */
        struct task t = s->lq[s->lq_head++ & s->lq_mask];
        run_task(s, &t);
        ran++;
    }
    if (ran)
        tasks_done(s);
    if (s->lq_room != NULL && lq_len(s) <= s->eng->cfg.local_queue_max / 2)
        room_fire(s, &s->lq_room);
    return ran;
}

static void arm_efd(struct shard *s)
{
    struct io_uring_sqe *sqe = io_ring_sqe(&s->io);
    if (sqe == NULL)
        return; /* retried by the next wake; the lanes are also checked before each sleep */
    io_uring_prep_read(sqe, s->efd, &s->efd_buf, sizeof(s->efd_buf), 0);
    io_uring_sqe_set_data(sqe, &s->efd_op);
}

static void efd_done(struct io_op *op, int res, uint32_t cqe_flags)
{
    (void)res;
    (void)cqe_flags;
    struct shard *s = (struct shard *)((char *)op - offsetof(struct shard, efd_op));
    arm_efd(s);
}

/* Announce sleep, look once more, and block in the ring's wait. */
static void shard_sleep(struct shard *s, uint64_t timeout_ns)
{
    struct engine *e = s->eng;
    stat_add(&s->sleep_epoch, 1);
    /* Dekker with every waker (mesh_publish, shard_wake_external): the seq_cst exchange
     * orders our announcement before the loads below, as their fence orders their publish
     * before their load of sleep_state. Either we see their work now, or they see ASLEEP
     * and send the wake-up. */
    atomic_exchange(&s->sleep_state, ASLEEP);
    if (mesh_inbound_pending(s) || lanes_pending(s) || atomic_load(&e->state) == ENGINE_HALT) {
        atomic_store(&s->sleep_state, AWAKE);
        return;
    }
    stat_add(&s->st.sleeps, 1);
    io_ring_wait(&s->io, timeout_ns);
    atomic_exchange(&s->sleep_state, AWAKE);
    /* Pairs with the watchdog's parking (stall.c): it stores wd_parked then re-reads our
     * state; we stored AWAKE (seq_cst) and now read wd_parked. */
    if (atomic_load(&e->wd_parked))
        stall_unpark(e);
}

/* Utilisation: the loop counts the time it spends idle (polling with nothing to do, or asleep)
 * in idle spells, from 16 iterations into a run of empty ones to the one that finds work, and
 * pith_shard_stats gives busy = elapsed - idle. A reader needs the closed spells' total and the
 * open spell's start together, so the two are written under a seqlock, without fences (which TSan
 * does not model): the odd count; the data with release stores, so that a reader whose acquire load
 * sees either new value also sees the odd count when it reads the count again; then the even count
 * with a release store, so that a reader whose acquire load sees it sees both new values. Only this
 * shard writes. */
static void util_write(struct shard *s, uint64_t idle, uint64_t from)
{
    struct shard_counters *c = &s->st;
    uint32_t q = atomic_load_explicit(&c->idle_seq, memory_order_relaxed);
    atomic_store_explicit(&c->idle_seq, q + 1, memory_order_relaxed);
    atomic_store_explicit(&c->idle, idle, memory_order_release);
    atomic_store_explicit(&c->idle_from, from, memory_order_release);
    atomic_store_explicit(&c->idle_seq, q + 2, memory_order_release);
}

/* An idle spell begins (from: ticks_now()). */
__attribute__((noinline)) static void util_idle(struct shard *s)
{
    uint64_t idle = atomic_load_explicit(&s->st.idle, memory_order_relaxed);
    uint64_t from = ticks_now();
    util_write(s, idle, from != 0 ? from : 1); /* 0 means busy */
}

/* The idle spell ended at `now` (ticks_now()): its length joins the total. */
__attribute__((noinline)) static void util_busy(struct shard *s, uint64_t now)
{
    uint64_t idle = atomic_load_explicit(&s->st.idle, memory_order_relaxed);
    uint64_t from = atomic_load_explicit(&s->st.idle_from, memory_order_relaxed);
    if (from == 0)
        return;
    util_write(s, idle + (now > from ? now - from : 0), 0);
}

static void shard_loop(struct shard *s)
{
    struct engine *e = s->eng;
    const unsigned budget = e->cfg.budget;
    uint64_t idle_since = 0;
    bool spell = false;      /* an idle spell is open (util_idle) */
    uint64_t spell_last = 0; /* ticks at the end of its last empty iteration */
    unsigned idle_spins = 0;

    for (;;) {
        int state = atomic_load_explicit(&e->state, memory_order_acquire);
        if (state == ENGINE_HALT)
            break;
        /* A seq_cst read-modify-write, for shard_quiesce: its Dekker with a closer that stores
         * (seq_cst) what this iteration may look up, then reads this counter. The RMW orders
         * the increment before every load of the iteration (a release store would not: a
         * later load could pass it and still see what the closer has just taken away), so
         * either the closer sees the new count and waits for the next, or this iteration sees
         * its store. It also publishes the end of the last iteration (a release). */
        atomic_fetch_add(&s->st.loops, 1);
        unsigned work = run_local(s, budget);
        /* What that work sent leaves now, not after the drains: a reply is on its way while
         * we look at the rings. */
        if (s->ndirty > 0)
            work += mesh_publish(s);
        work += mesh_drain(s, budget);
        work += lanes_drain(s, budget);
        if (s->ndirty > 0)
            work += mesh_publish(s);
        if (s->flush_asked) {
            s->flush_asked = false;
            shard_hooks_flush(s->id);
        }
        work += io_ring_poll(&s->io);
        bool timers_live = state == ENGINE_RUNNING && s->timers.len > 0;
        if (timers_live && (tsc_per_ns == 0 || tsc_now() >= s->timer_gate)) {
            uint64_t now = pith_now_ns();
            work += timers_fire(s, now, budget * 4);
            /* Until the next deadline, the TSC says whether to look again (tsc.c). */
            uint64_t next = timers_next(&s->timers);
            if (tsc_per_ns != 0)
                s->timer_gate = next == UINT64_MAX ? UINT64_MAX
                                : next <= now
                                    ? 0
                                    : tsc_now() + (uint64_t)((double)(next - now) * tsc_per_ns);
        }
        if (work > 0 || s->ndirty > 0 || s->flush_asked) {
            /* Batches still waiting for ring space keep us polling: nobody will wake us to
             * retry them. */
            if (__builtin_expect(spell, 0)) {
                util_busy(s, spell_last);
                spell = false;
            }
            idle_since = 0;
            continue;
        }
        /* In an idle spell, each empty iteration notes when it ended: when the next finds
         * work, the spell ended there (within an iteration), before the work ran. */
        if (spell)
            spell_last = ticks_now();
        /* Reading the clock costs more than an empty iteration (tens of ns under kvm-clock)
         * and delays noticing the next message: while polling, look at it every 16th turn. */
        if (idle_since != 0 && (++idle_spins & 15) != 0)
            continue;

        uint64_t now = pith_now_ns();
        /* An idle spell opens at the second look at the clock, 16 empty iterations after the
         * first: a shorter gap between pieces of work counts as busy, and costs the loop
         * nothing (a message every few hundred nanoseconds would otherwise pay two TSC reads
         * and a seqlock write each). */
        if (idle_since == 0) {
            idle_since = now;
        } else if (!spell) {
            util_idle(s);
            spell = true;
            spell_last = ticks_now();
        }
        uint64_t next = timers_live ? timers_next(&s->timers) : UINT64_MAX;
        /* While draining for stop, sleep at once so the stopper can see quiescence. */
        uint64_t poll = state == ENGINE_RUNNING ? e->cfg.poll_ns : 0;
        bool timer_soon = next != UINT64_MAX && next <= now + poll;
        if (now - idle_since < poll || timer_soon)
            continue;
        /* Wake one poll window before the next timer and spin to it: the kernel's wake-up
         * latency (tens of microseconds on a VM) then stays out of timer jitter. */
        uint64_t timeout = UINT64_MAX;
        if (next != UINT64_MAX)
            timeout = next > now + poll ? next - now - poll : 0;
        mem_home_idle(s->mem);
        if (!spell)
            util_idle(s); /* no poll window (a stop's drain): asleep at the first look */
        shard_sleep(s, timeout);
        /* Woken: busy again until the next idle spell. */
        util_busy(s, ticks_now());
        spell = false;
        idle_since = 0;
    }
}

static enum io_mode ring_mode(unsigned flags)
{
    if (flags & PITH_CFG_RING_PLAIN)
        return IO_MODE_PLAIN;
    if (flags & PITH_CFG_RING_COOP)
        return IO_MODE_COOP;
    return IO_MODE_BEST;
}

static int shard_init(struct shard *s)
{
    struct engine *e = s->eng;
    char name[16];
    snprintf(name, sizeof(name), "pith/%u", s->id);
    pthread_setname_np(pthread_self(), name);
    if (s->cpu >= 0) {
        s->pinned = topo_pin_self(e, (unsigned)s->cpu);
        if (!s->pinned)
            fprintf(stderr, "pith: warning: shard %u could not be pinned to CPU %d\n", s->id,
                    s->cpu);
    }
    /* Timer wake-ups as precise as the kernel allows (the default slack is 50 us). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

    /* First, on this thread and after pinning: the extents are placed where it runs. */
    int err = mem_home_open(&s->mem, s->id, &e->cfg.mem, e->topo, s->pinned ? s->cpu : -1);
    if (err)
        return err;
    err = io_ring_init(&s->io, e->cfg.io_entries, ring_mode(e->cfg.flags));
    if (err)
        return err;
    s->ring_fd = s->io.ring.ring_fd;
    fops_init(&s->fops, &s->io, s->id);
    s->efd = eventfd(0, EFD_CLOEXEC);
    if (s->efd < 0)
        return -errno;
    s->efd_op.done = efd_done;
    s->lq = malloc(LQ_INITIAL * sizeof(*s->lq));
    if (s->lq == NULL)
        return -ENOMEM;
    s->lq_mask = LQ_INITIAL - 1;
    err = mesh_shard_init(s);
    if (err)
        return err;
    return timers_init(&s->timers);
}

void *shard_main(void *arg)
{
    struct shard *s = arg;
    struct engine *e = s->eng;
    shard_cur = s;
    s->init_err = shard_init(s);
    sem_post(&e->ready);
    while (sem_wait(&e->go) != 0)
        ; /* EINTR */
    /* Not `== RUNNING`: a stop may begin before this thread gets here, and the stop protocol
     * needs every shard in its loop to drain it and to see it sleep. */
    if (atomic_load(&e->state) != ENGINE_HALT) {
        arm_efd(s);
        shard_hooks_start(s->id);
        atomic_store_explicit(&s->st.util_start, ticks_now(), memory_order_relaxed);
        shard_loop(s);
        shard_hooks_leaving(s->id);
    }
    /* Sockets end first (their completions reaped by their layer), then operations still in
     * flight report (cancelled), while what they report to lives. */
    shard_hooks_ring_exit(s->id);
    unsigned stuck = fops_drain(&s->fops, FOPS_DRAIN_NS);
    if (stuck > 0)
        fprintf(stderr, "pith: shard %u: %u ring operations never completed at stop\n", s->id,
                stuck);
    shard_hooks_shard_exit(s->id);
    mesh_shard_exit(s);
    mem_home_close(s->mem);
    shard_cur = NULL;
    return NULL;
}
