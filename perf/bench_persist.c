/* Event-sourced virtual actors (pith/persist.h) on the journal, in the journal rows' directory:
 * one actor persisting one event at a time against the floor (write + fdatasync) measured in
 * the same run; events per second from 10,000 actors against one fdatasync per event; and
 * activation from a 1 KiB snapshot and 100 events after a restart, against vactor.activate_ns.
 * One shard each: the figures are per shard. */
#include <errno.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pith/persist.h>

#include "bench.h"

#define EV_BYTES   100u
#define ACTORS     10000u
#define SNAP_BYTES 1024u
#define AFTER      100u                /* events after the snapshot */
#define PER_KEY    (AFTER + 1 + AFTER) /* a snapshot after event 101, then 100 more */

enum { GO = 1, GET = 2 };

static sem_t fin;
static _Atomic uint64_t done_n, want_n, bad_n;
static _Atomic int first_err;
static samples_t *lat;
static uint64_t t_last;

static void note_err(int err)
{
    int zero = 0;
    if (err != 0)
        atomic_compare_exchange_strong(&first_err, &zero, err);
}

static int start_engine(char *why, size_t whylen)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    cfg.journal.dir = bench_jdir();
    return bench_engine_start(&cfg, why, whylen);
}

/* ---- one event at a time ---- */

struct ev_state {
    uint64_t n;
};

static void ev_apply(void *state, const void *event, uint32_t len)
{
    (void)event;
    (void)len;
    ((struct ev_state *)state)->n++;
}

static unsigned char ev_payload[EV_BYTES];

static void ev_done(pith_actor_t *self, void *state, int err, void *ctx)
{
    (void)state;
    (void)ctx;
    uint64_t now = pith_now_ns();
    if (err != 0 || self == NULL) {
        note_err(err != 0 ? err : -ECANCELED);
        sem_post(&fin);
        return;
    }
    if (lat != NULL)
        samples_add(lat, (int64_t)(now - t_last));
    if (atomic_fetch_add(&done_n, 1) + 1 == atomic_load(&want_n)) {
        sem_post(&fin);
        return;
    }
    if (lat != NULL) {
        /* One at a time: the next event from this one's done. */
        t_last = pith_now_ns();
        int rc = pith_persist(self, ev_payload, EV_BYTES, ev_done, NULL);
        if (rc != 0) {
            note_err(rc);
            sem_post(&fin);
        }
    }
}

static int ev_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    if (msg->type != GO)
        return 0;
    t_last = pith_now_ns();
    int rc = pith_persist(self, ev_payload, EV_BYTES, ev_done, NULL);
    if (rc != 0) {
        note_err(rc);
        sem_post(&fin);
    }
    return 0;
}

static const pith_actor_type_t ev_actor = {
    .name = "bench-event", .behaviour = ev_behaviour, .state_size = sizeof(struct ev_state)};
static const pith_persist_type_t ev_persist = {.apply = ev_apply};
static const pith_vtype_t ev_type = {
    .name = "bench-event", .actor = &ev_actor, .persist = &ev_persist};

static void reset(uint64_t want, samples_t *s)
{
    sem_init(&fin, 0, 0);
    atomic_store(&done_n, 0);
    atomic_store(&want_n, want);
    atomic_store(&bad_n, 0);
    atomic_store(&first_err, 0);
    lat = s;
}

int bench_persist_event(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    int rc = pith_vtype_register(&ev_type);
    if (rc != 0) {
        snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(rc));
        return BENCH_FAIL;
    }
    samples_t floor, s;
    if (samples_init(&floor, n) != 0 || samples_init(&s, n) != 0) {
        snprintf(why, whylen, "out of memory");
        return BENCH_FAIL;
    }
    memset(ev_payload, 0x5a, sizeof(ev_payload));
    uint64_t ns;
    rc = bench_jdir_make(why, whylen);
    const char *fs = rc == 0 ? bench_jdir_fs() : "";
    if (rc == 0 && (rc = bench_jraw_sync(n, 128, &floor, &ns)) != 0)
        snprintf(why, whylen, "write/fdatasync: %s", strerror(-rc));
    bench_jdir_drop();
    if (rc == 0 && (rc = bench_jdir_make(why, whylen)) == 0 &&
        (rc = start_engine(why, whylen)) == 0) {
        reset(n, &s);
        pith_vref_t v;
        rc = pith_vref(&ev_type, "one", 3, &v);
        if (rc == 0)
            rc = pith_client_vsend(pith_client_self(), &v, GO, NULL, 0, PITH_FOREVER);
        if (rc == 0)
            rc = bench_wait(env, &fin);
        if (rc == 0)
            rc = atomic_load(&first_err);
        bench_engine_stop(r->name);
        if (rc != 0)
            snprintf(why, whylen, "%s", pith_strerror(rc));
    }
    bench_jdir_drop();
    if (rc == 0) {
        samples_sort(&floor);
        samples_sort(&s);
        double f50 = 0, f99 = 0, p50 = 0, p99 = 0;
        samples_pct(&floor, 0.5, &f50);
        samples_pct(&floor, 0.99, &f99);
        samples_pct(&s, 0.5, &p50);
        samples_pct(&s, 0.99, &p99);
        result_set_pcts(r, &s);
        result_set_hist(r, &s, 1);
        r->value = r->p50;
        bench_note("%s: %llu events of %u B, one at a time by one virtual actor (the next "
                   "persisted from the last one's done) on 1 shard, from pith_persist to its done "
                   "(durable and applied): p50 %.0f ns, p99 %.0f ns; the floor in the same "
                   "directory (%s), pwrite + fdatasync of 128 B: p50 %.0f, p99 %.0f ns; p99 over "
                   "the floor's p99: %.2fx (the goal is <= 1.5x)",
                   r->name, (unsigned long long)n, EV_BYTES, p50, p99, fs, f50, f99, p99 / f99);
    }
    samples_free(&floor);
    samples_free(&s);
    return rc == 0 ? 0 : BENCH_FAIL;
}

/* ---- 10,000 actors ---- */

static void many_done(pith_actor_t *self, void *state, int err, void *ctx)
{
    (void)state;
    (void)ctx;
    if (err != 0) {
        note_err(err);
        sem_post(&fin);
        return;
    }
    uint64_t d = atomic_fetch_add(&done_n, 1) + 1;
    if (d == atomic_load(&want_n)) {
        t_last = pith_now_ns();
        sem_post(&fin);
        return;
    }
    /* Each actor persists its next event from its last one's done while events remain
     * (ACTORS - 1 more are always on their way from the others). */
    if (self != NULL && d + ACTORS <= atomic_load(&want_n)) {
        int rc = pith_persist(self, ev_payload, EV_BYTES, many_done, NULL);
        if (rc != 0 && rc != -EAGAIN) {
            note_err(rc);
            sem_post(&fin);
        }
    }
}

static int many_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    if (msg->type != GO)
        return 0;
    int rc = pith_persist(self, ev_payload, EV_BYTES, many_done, NULL);
    if (rc != 0) {
        note_err(rc);
        sem_post(&fin);
    }
    return 0;
}

static const pith_actor_type_t many_actor = {
    .name = "bench-many", .behaviour = many_behaviour, .state_size = sizeof(struct ev_state)};
static const pith_vtype_t many_type = {
    .name = "bench-many", .actor = &many_actor, .persist = &ev_persist};

int bench_persist_events(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen)
{
    int rc = pith_vtype_register(&many_type);
    if (rc != 0) {
        snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(rc));
        return BENCH_FAIL;
    }
    if (n < ACTORS)
        n = ACTORS;
    memset(ev_payload, 0x5a, sizeof(ev_payload));
    pith_journal_stats_t js = {0};
    pith_persist_stats_t ps = {0};
    uint64_t t0 = 0;
    if ((rc = bench_jdir_make(why, whylen)) == 0 && (rc = start_engine(why, whylen)) == 0) {
        reset(n, NULL);
        t0 = pith_now_ns();
        char key[16];
        for (unsigned i = 0; i < ACTORS && rc == 0; i++) {
            pith_vref_t v;
            snprintf(key, sizeof(key), "a%u", i);
            rc = pith_vref(&many_type, key, strlen(key), &v);
            if (rc == 0)
                rc = pith_client_vsend(pith_client_self(), &v, GO, NULL, 0, PITH_FOREVER);
        }
        if (rc == 0)
            rc = bench_wait(env, &fin);
        if (rc == 0)
            rc = atomic_load(&first_err);
        (void)pith_journal_stats(0, &js);
        (void)pith_persist_stats(0, &ps);
        bench_engine_stop(r->name);
        if (rc != 0)
            snprintf(why, whylen, "%s", pith_strerror(rc));
    }
    const char *fs = bench_jdir_fs();
    bench_jdir_drop();
    if (rc != 0)
        return BENCH_FAIL;
    double secs = (double)(t_last - t0) / 1e9;
    r->value = (double)n / secs;
    bench_note("%s: %llu events of %u B from %u virtual actors on 1 shard (each persists its "
               "next from its last one's done, pith_persist: its mailbox held meanwhile), from "
               "the first message sent to the last done, activations included; %.2f s; %llu "
               "events in %llu records, %llu group writes (%.0f events a write), %llu syncs; in "
               "%s (%s); the goal is >= 1M/s on a shard; baseline raw.fsync_each_per_s",
               r->name, (unsigned long long)n, EV_BYTES, ACTORS, secs,
               (unsigned long long)ps.events, (unsigned long long)ps.event_records,
               (unsigned long long)js.groups, js.groups ? (double)n / (double)js.groups : 0.0,
               (unsigned long long)js.syncs, bench_jdir(), fs);
    return 0;
}

/* ---- activation from a snapshot and 100 events ---- */

struct big_state {
    uint64_t n;
    unsigned char bytes[SNAP_BYTES - 8];
};

static void big_apply(void *state, const void *event, uint32_t len)
{
    struct big_state *s = state;
    s->bytes[s->n % sizeof(s->bytes)] = len > 0 ? *(const unsigned char *)event : 0;
    s->n++;
}

static uint32_t big_snapshot(const void *state, void *buf, uint32_t cap)
{
    if (cap >= sizeof(struct big_state))
        memcpy(buf, state, sizeof(struct big_state));
    return sizeof(struct big_state);
}

static int big_restore(void *state, const void *data, uint32_t len)
{
    if (len != sizeof(struct big_state))
        return -EINVAL;
    memcpy(state, data, len);
    return 0;
}

static void big_done(pith_actor_t *self, void *state, int err, void *ctx)
{
    (void)self;
    (void)state;
    (void)ctx;
    note_err(err);
    if (atomic_fetch_add(&done_n, 1) + 1 == atomic_load(&want_n))
        sem_post(&fin);
}

static int big_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    const struct big_state *s = state;
    if (msg->type == GO) {
        int rc = pith_persist(self, ev_payload, EV_BYTES, big_done, NULL);
        if (rc != 0) {
            note_err(rc);
            sem_post(&fin);
        }
    } else if (msg->type == GET) {
        if (s->n != PER_KEY)
            atomic_fetch_add(&bad_n, 1);
        if (msg->req != 0) {
            (void)pith_reply(msg, GET, NULL, 0);
            return 0;
        }
        if (atomic_fetch_add(&done_n, 1) + 1 == atomic_load(&want_n)) {
            t_last = pith_now_ns();
            sem_post(&fin);
        }
    }
    return 0;
}

static const pith_actor_type_t big_actor = {.name = "bench-snap",
                                            .behaviour = big_behaviour,
                                            .state_size = sizeof(struct big_state),
                                            .mailbox_max = 1024};
static const pith_persist_type_t big_persist = {.apply = big_apply,
                                                .snapshot = big_snapshot,
                                                .restore = big_restore,
                                                .snapshot_every = AFTER + 1};
static const pith_vtype_t big_type = {
    .name = "bench-snap", .actor = &big_actor, .persist = &big_persist};

static void *nothing(void *arg)
{
    return arg;
}

/* One message of `type` to each of keys [from, from + n), from this thread (`rounds` rounds). */
static int send_all(uint64_t from, uint64_t n, uint32_t type, unsigned rounds)
{
    char key[32];
    int rc = 0;
    for (unsigned k = 0; k < rounds && rc == 0; k++)
        for (uint64_t i = from; i < from + n && rc == 0; i++) {
            pith_vref_t v;
            snprintf(key, sizeof(key), "key-%llu", (unsigned long long)i);
            rc = pith_vref(&big_type, key, strlen(key), &v);
            if (rc == 0)
                rc = pith_client_vsend(pith_client_self(), &v, type, NULL, 0, PITH_FOREVER);
        }
    return rc;
}

int bench_vactor_activate_persisted(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                    size_t whylen)
{
    int rc = pith_vtype_register(&big_type);
    if (rc != 0) {
        snprintf(why, whylen, "pith_vtype_register: %s", pith_strerror(rc));
        return BENCH_FAIL;
    }
    memset(ev_payload, 0x5a, sizeof(ev_payload));
    samples_t one;
    if (samples_init(&one, n) != 0) {
        snprintf(why, whylen, "out of memory");
        return BENCH_FAIL;
    }
    const char *stage = "set-up";
    pith_persist_stats_t ps = {0}, made = {0};
    pith_vtype_stats_t vst = {0};
    pith_journal_stats_t js = {0};
    uint64_t t0 = 0, boot_ns = 0;
    if ((rc = bench_jdir_make(why, whylen)) == 0 && (rc = start_engine(why, whylen)) == 0) {
        /* Each key: 201 events, one a message; a snapshot after the 101st. */
        stage = "writing the keys' events";
        reset(2 * n * PER_KEY, NULL);
        rc = send_all(0, 2 * n, GO, PER_KEY);
        if (rc == 0)
            rc = bench_wait(env, &fin);
        if (rc == 0)
            rc = atomic_load(&first_err);
        for (int i = 0; rc == 0 && i < 1000 && made.snapshots < 2 * n; i++) {
            (void)pith_persist_stats(0, &made);
            if (made.snapshots < 2 * n)
                usleep(1000); /* the last snapshots are on their way: a bounded wait */
        }
        bench_engine_stop(r->name);
        if (rc == 0 && made.snapshots != 2 * n) {
            snprintf(why, whylen, "%llu snapshots for %llu keys",
                     (unsigned long long)made.snapshots, (unsigned long long)(2 * n));
            rc = -EIO;
        }
        /* A restart: the index is read back at the shard's start; then one message a key. */
        if (rc == 0) {
            stage = "restarting";
            uint64_t b0 = pith_now_ns();
            rc = start_engine(why, whylen);
            if (rc == 0) {
                stage = "activating";
                /* The index is built by a task at the shard's start: a stats call after a
                 * round trip through the shard sees it done. */
                (void)pith_call_wait(0, nothing, NULL, NULL);
                boot_ns = pith_now_ns() - b0;
                /* One key at a time, an ask each: the latency of one activation. */
                char key[32];
                for (uint64_t i = n; i < 2 * n && rc == 0; i++) {
                    pith_vref_t v;
                    pith_msg_t reply;
                    snprintf(key, sizeof(key), "key-%llu", (unsigned long long)i);
                    rc = pith_vref(&big_type, key, strlen(key), &v);
                    uint64_t a = pith_now_ns();
                    if (rc == 0)
                        rc = pith_client_vask(pith_client_self(), &v, GET, NULL, 0,
                                              5000ull * 1000 * 1000, &reply);
                    samples_add(&one, (int64_t)(pith_now_ns() - a));
                }
                /* All at once: n keys' activations overlap. */
                reset(n, NULL);
                t0 = pith_now_ns();
                if (rc == 0)
                    rc = send_all(0, n, GET, 1);
                if (rc == 0)
                    rc = bench_wait(env, &fin);
                (void)pith_persist_stats(0, &ps);
                (void)pith_vtype_stats(&big_type, &vst);
                (void)pith_journal_stats(0, &js);
                bench_engine_stop(r->name);
            }
        }
    }
    const char *fs = bench_jdir_fs();
    bench_jdir_drop();
    if (rc == 0 && atomic_load(&bad_n) != 0) {
        snprintf(why, whylen, "%llu keys came back with the wrong state",
                 (unsigned long long)atomic_load(&bad_n));
        rc = -EIO;
    }
    if (rc != 0) {
        if (why[0] == 0)
            snprintf(why, whylen, "%s: %s", stage, pith_strerror(rc));
        samples_free(&one);
        return BENCH_FAIL;
    }
    samples_sort(&one);
    result_set_pcts(r, &one);
    result_set_hist(r, &one, 1);
    r->value = r->p50;
    double bulk = (double)(t_last - t0) / (double)n;
    bench_note("%s: %llu keys, each with a %u B snapshot (after its 101st event) and %u events "
               "of %u B after it, one record each, read back after a restart (start and index "
               "read back: %.1f ms for %llu records); the records are read on the shard's ring, "
               "all of a key's at once, while its messages wait; 1 shard, the journal in %s "
               "(%s), in the page cache",
               r->name, (unsigned long long)(2 * n), SNAP_BYTES, AFTER, EV_BYTES,
               (double)boot_ns / 1e6, (unsigned long long)js.recovered, bench_jdir(), fs);
    bench_note("%s: one key at a time, an ask from this thread (its round trip included) from "
               "the send to the reply (the value): p50 %.0f ns, p99 %.0f ns; %llu keys all at "
               "once (activations overlapping), from the first send to the last behaviour call: "
               "%.0f ns a key, %.0f keys/s; %llu snapshots restored, %llu events replayed in "
               "all; baseline vactor.activate_ns (no state to read back)",
               r->name, r->p50, r->p99, (unsigned long long)n, bulk, 1e9 / bulk,
               (unsigned long long)ps.restored, (unsigned long long)ps.replayed);
    samples_free(&one);
    return 0;
}
