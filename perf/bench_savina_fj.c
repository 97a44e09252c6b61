/* Savina's fork-join benchmarks: throughput (60 actors, n messages each, from one sender) and
 * creation (n actors, each spawned, sent one message, and ended). The harness is savina.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "savina.h"

/* Actors a creator task spawns before it yields: keeps the shard's other work running and each
 * task far below the stall threshold. */
#define CREATE_CHUNK 1000u
/* Savina's fixed size: actors of the fork-join throughput. */
#define FJ_ACTORS 60u

/* ---- fork-join throughput: FJ_ACTORS actors, n messages each, from one sender ----
 * Actor i lives on shard i % shards. As in Savina, one sender feeds them all: here an actor on
 * shard 0 that sends SV_SEND_BURST messages to each actor in turn, then yields (a message to
 * itself, turns of one message), or, in the _main row, the main thread through its client.
 * Each message computes as Savina's do. A shard's part is done when all its actors have had n.
 *
 * Flow control: the actors' mailboxes mute a sending actor when full (across shards too), and
 * push a client back in its lane; a send the mesh refuses waits for room (pith_when_room), and
 * a message that comes back undelivered is sent again. */

struct fjt_actor {
    _Alignas(64) uint64_t got; /* messages handled in this run */
    unsigned shard;
};

struct fjt_shard {
    _Alignas(64) unsigned nactors;
    unsigned done; /* its actors that had all n in this run */
};

struct fjt {
    uint64_t n;
    pith_ref_t refs[FJ_ACTORS];
    struct fjt_actor act[FJ_ACTORS];
    struct fjt_shard *sh;
    /* The sender actor's. */
    pith_ref_t sender;
    uint64_t sent[FJ_ACTORS];
    bool pending; /* a CONTINUE, or a room callback that sends one, is on its way */
    uint64_t turns, eagain, resent;
};

static struct fjt fj;

static int fjt_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    struct fjt_actor *a = *(struct fjt_actor **)state;
    sv_bump();
    if (msg->type != SV_WORK) {
        sv_failf(-EPROTO, "a fork-join actor got tag %u", msg->type);
        return 0;
    }
    int rc = sv_compute();
    if (rc != 0)
        sv_failf(rc, "the computation");
    if (++a->got == fj.n) {
        struct fjt_shard *sh = &fj.sh[a->shard];
        if (++sh->done == sh->nactors)
            sv_part_done();
    }
    return 0;
}

static const pith_actor_type_t fjt_type = {
    .name = "savina.fjthroughput",
    .behaviour = fjt_behaviour,
    .state_size = sizeof(void *),
    .init = sv_init_ptr,
    .overflow = PITH_OVERFLOW_MUTE_SENDER,
};

static void fjs_room_fn(void *arg)
{
    (void)arg;
    int rc = pith_send(fj.sender, SV_CONTINUE, NULL, 0);
    if (rc != 0)
        sv_failf(rc, "the sender's continue after room");
}

static void fjs_continue(pith_actor_t *self)
{
    if (fj.pending)
        return;
    int rc = pith_send(pith_self(self), SV_CONTINUE, NULL, 0);
    if (rc != 0)
        sv_failf(rc, "the sender's continue");
    fj.pending = true;
}

static void fjs_undelivered(pith_actor_t *self, const pith_msg_t *msg)
{
    pith_undelivered_t u;
    if (msg->len != sizeof(u)) {
        sv_failf(-EPROTO, "an undelivered notice of %u bytes", msg->len);
        return;
    }
    memcpy(&u, msg->data, sizeof(u));
    unsigned j = 0;
    while (j < FJ_ACTORS && fj.refs[j] != u.to)
        j++;
    if (j == FJ_ACTORS || u.count > fj.sent[j]) {
        sv_failf(-ENOBUFS, "%llu messages undelivered (reason %d) to no known actor",
                 (unsigned long long)u.count, (int)u.reason);
        return;
    }
    fj.sent[j] -= u.count;
    fj.resent += u.count;
    fjs_continue(self);
}

static int fjs_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    sv_bump();
    if (msg->type == PITH_MSG_UNDELIVERED) {
        fjs_undelivered(self, msg);
        return 0;
    }
    if (msg->type == SV_GO) {
        /* The sender's own counts start here, not in main's kick: the run can end (its last
         * message handled on another shard) while this turn is still counting its sends. */
        sv_started();
        memset(fj.sent, 0, sizeof(fj.sent));
    } else if (msg->type != SV_CONTINUE) {
        sv_failf(-EPROTO, "the sender got tag %u", msg->type);
        return 0;
    }
    fj.pending = false;
    fj.turns++;
    bool more = false;
    for (unsigned j = 0; j < FJ_ACTORS; j++) {
        for (unsigned b = 0; b < SV_SEND_BURST && fj.sent[j] < fj.n; b++) {
            int rc = pith_send(fj.refs[j], SV_WORK, NULL, 0);
            if (rc == -EAGAIN) {
                fj.eagain++;
                rc = pith_when_room(fj.refs[j], fjs_room_fn, NULL);
                if (rc != 0)
                    sv_failf(rc, "waiting for room at actor %u", j);
                fj.pending = true;
                return 0;
            }
            if (rc != 0) {
                sv_failf(rc, "the send to actor %u", j);
                return 0;
            }
            fj.sent[j]++;
        }
        more |= fj.sent[j] < fj.n;
    }
    if (more)
        fjs_continue(self);
    return 0;
}

static const pith_actor_type_t fjs_type = {
    .name = "savina.fjsender",
    .behaviour = fjs_behaviour,
    .turn_msgs = 1,
};

/* The actors' counts, which the run's end follows. */
static void fjt_reset(void)
{
    for (unsigned s = 0; s < sv.nshards; s++)
        fj.sh[s].done = 0;
    for (unsigned j = 0; j < FJ_ACTORS; j++)
        fj.act[j].got = 0;
}

static int fjt_kick(void *ctx)
{
    (void)ctx;
    fjt_reset();
    return pith_send(fj.sender, SV_GO, NULL, 0);
}

static int fjt_check(void *ctx, char *why, size_t whylen)
{
    (void)ctx;
    for (unsigned j = 0; j < FJ_ACTORS; j++)
        if (fj.act[j].got != fj.n) {
            snprintf(why, whylen, "actor %u handled %llu of %llu", j,
                     (unsigned long long)fj.act[j].got, (unsigned long long)fj.n);
            return -EPROTO;
        }
    return 0;
}

/* The same run driven from the calling thread, as Savina's and CAF's harnesses drive it from
 * main: its own client sends SV_SEND_BURST to each actor in turn, waiting for room when a lane
 * is full. */
static pith_client_t *fjt_client;
static uint64_t fjt_pushed;

static int fjt_kick_main(void *ctx)
{
    (void)ctx;
    fjt_reset();
    memset(fj.sent, 0, sizeof(fj.sent));
    sv.t_start = pith_now_ns();
    bool more = true;
    while (more) {
        more = false;
        for (unsigned j = 0; j < FJ_ACTORS; j++) {
            for (unsigned b = 0; b < SV_SEND_BURST && fj.sent[j] < fj.n; b++) {
                int rc = pith_client_send(fjt_client, fj.refs[j], SV_WORK, NULL, 0, 0);
                if (rc == -EAGAIN) {
                    fjt_pushed++;
                    rc = pith_client_send(fjt_client, fj.refs[j], SV_WORK, NULL, 0, 10000000000ull);
                }
                if (rc != 0)
                    return rc;
                fj.sent[j]++;
            }
            more |= fj.sent[j] < fj.n;
        }
    }
    return 0;
}

static int fjthroughput(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen,
                        bool from_main);

int bench_savina_fjthroughput(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                              size_t whylen)
{
    return fjthroughput(env, n, r, why, whylen, false);
}

int bench_savina_fjthroughput_main(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                                   size_t whylen)
{
    return fjthroughput(env, n, r, why, whylen, true);
}

static int fjthroughput(const bench_env_t *env, uint64_t n, result_t *r, char *why, size_t whylen,
                        bool from_main)
{
    int rc = sv_start(env, env->shards >= 2, why, whylen);
    if (rc != 0)
        return rc;
    memset(&fj, 0, sizeof(fj));
    fj.n = n;
    fj.sh = aligned_alloc(64, env->shards * sizeof(*fj.sh));
    if (fj.sh == NULL) {
        bench_engine_stop(r->name);
        sv_end();
        snprintf(why, whylen, "out of memory for %u shards' records", env->shards);
        return BENCH_FAIL;
    }
    memset(fj.sh, 0, env->shards * sizeof(*fj.sh));
    unsigned parts = 0;
    for (unsigned j = 0; j < FJ_ACTORS && rc == 0; j++) {
        unsigned s = j % env->shards;
        parts += fj.sh[s].nactors++ == 0;
        fj.act[j].shard = s;
        rc = sv_spawn_on(s, &fjt_type, &fj.act[j], &fj.refs[j]);
    }
    if (rc == 0 && !from_main)
        rc = sv_spawn_on(0, &fjs_type, NULL, &fj.sender);
    struct sv_times t = {0};
    fjt_pushed = 0;
    if (rc == 0 && from_main && (fjt_client = pith_client_open(NULL)) == NULL)
        rc = -errno;
    /* From main every message the run handles is one of the n per actor; the sender actor adds
     * its continues, whose number varies. */
    struct sv_row row = {.kick = from_main ? fjt_kick_main : fjt_kick,
                         .check = fjt_check,
                         .parts = parts,
                         .msgs = from_main ? (uint64_t)FJ_ACTORS * n : 0};
    if (rc == 0)
        sv_measure(env, &row, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    pith_client_close(fjt_client);
    fjt_client = NULL;
    char where[512];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t ts = {0}, tm = {0};
    uint64_t total = (uint64_t)FJ_ACTORS * n;
    sv_type_stats(&fjt_type, (uint64_t)(t.runs + 1) * total, 0, &ts);
    pith_actor_type_stats(&fjt_type, &tm);
    bench_engine_stop(r->name);
    free(fj.sh);
    fj.sh = NULL;
    rc = sv_result(&t, r, why, whylen, "messages handled, all shards");
    if (rc == 0)
        rc = sv_total_check("messages the actors handled", ts.messages,
                            (uint64_t)(t.runs + 1) * total, why, whylen);
    if (rc == 0) {
        char loc[1024];
        snprintf(loc, sizeof(loc), "%u actors round-robin (actor i on shard i %% %u), %s%s; %s",
                 FJ_ACTORS, env->shards,
                 from_main ? "all fed by the main thread through its client (the shard-side "
                             "time from main's first send to the last actor's end)"
                           : "all fed by one sender actor on shard 0 (started by a message from "
                             "main)",
                 sv.busy ? ", busy-polling" : ", default poll", where);
        sv_note_common(env, r, &t, n, 10000, loc);
        bench_note("%s: %llu empty messages (%u actors x %llu, each actor's count checked in "
                   "every run), each handler computing sin(37.2)^2 as Savina's does; the sender "
                   "sends %u to each actor in turn: %.1f M msgs/s (median run); senders muted by "
                   "full mailboxes %llu, deepest mailbox %llu",
                   r->name, (unsigned long long)total, FJ_ACTORS, (unsigned long long)n,
                   SV_SEND_BURST, (double)total / r->value / 1e3, (unsigned long long)tm.mutes,
                   (unsigned long long)tm.mailbox_max);
        if (from_main)
            bench_note("%s: main's lanes were full %llu times (it then waited for room)", r->name,
                       (unsigned long long)fjt_pushed);
        else
            bench_note("%s: sender turns %llu, sends refused with -EAGAIN %llu (it then waited "
                       "for room), messages sent again after coming back undelivered %llu (over "
                       "all runs)",
                       r->name, (unsigned long long)fj.turns, (unsigned long long)fj.eagain,
                       (unsigned long long)fj.resent);
    }
    sv_end();
    return rc;
}

/* ---- fork-join creation: n actors, each spawned, sent one message, and ended ----
 * Actor i is created on shard i % shards by a creator task on that shard, CREATE_CHUNK at a time
 * (spawn, then one empty message); its handler computes as Savina's does and stops it. Savina
 * creates them all from main; a creator per shard spreads the creation as well. */

struct fjc_shard {
    _Alignas(64) uint64_t todo;
    uint64_t created, done, chunks;
};

struct fjc {
    struct fjc_shard *sh;
};

static struct fjc fc;

static int fjc_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    sv_bump();
    if (msg->type != SV_WORK) {
        sv_failf(-EPROTO, "a created actor got tag %u", msg->type);
        return 0;
    }
    int rc = sv_compute();
    if (rc == 0)
        rc = pith_stop(pith_self(self)); /* takes effect when this returns */
    if (rc != 0)
        sv_failf(rc, "a created actor's computation or stop");
    struct fjc_shard *sh = &fc.sh[pith_shard_id()];
    if (++sh->done == sh->todo)
        sv_part_done();
    return 0;
}

static const pith_actor_type_t fjc_type = {
    .name = "savina.fjcreation",
    .behaviour = fjc_behaviour,
};

static int keeper_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    sv_failf(-EPROTO, "the idle keeper got tag %u", msg->type); /* nobody sends it anything */
    return 0;
}

/* One idle actor on each shard through the runs, as in any application that has actors at all:
 * without it a shard's actor table empties at the end of each run and is given back a few ms
 * later (the timer that does it is then still pending at the engine's stop). */
static const pith_actor_type_t keeper_type = {
    .name = "savina.keeper",
    .behaviour = keeper_behaviour,
};

static void fjc_create_fn(void *arg)
{
    struct fjc_shard *sh = arg;
    sh->chunks++;
    for (unsigned i = 0; i < CREATE_CHUNK && sh->created < sh->todo; i++) {
        pith_ref_t ref;
        int rc = pith_spawn(&fjc_type, NULL, &ref);
        if (rc == 0)
            rc = pith_send(ref, SV_WORK, NULL, 0);
        if (rc != 0) {
            sv_failf(rc, "creating actor %llu", (unsigned long long)sh->created);
            return;
        }
        sh->created++;
    }
    if (sh->created < sh->todo) {
        int rc = pith_submit((unsigned)pith_shard_id(), fjc_create_fn, sh);
        if (rc != 0)
            sv_failf(rc, "the creator's next chunk");
    }
}

static void *fjc_arg(unsigned shard)
{
    return fc.sh[shard].todo ? &fc.sh[shard] : NULL;
}

static int fjc_kick(void *ctx)
{
    (void)ctx;
    for (unsigned s = 0; s < sv.nshards; s++)
        fc.sh[s].created = fc.sh[s].done = 0;
    return sv_fanout(fjc_create_fn, fjc_arg);
}

static int fjc_check(void *ctx, char *why, size_t whylen)
{
    (void)ctx;
    for (unsigned s = 0; s < sv.nshards; s++)
        if (fc.sh[s].created != fc.sh[s].todo || fc.sh[s].done != fc.sh[s].todo) {
            snprintf(why, whylen, "shard %u created %llu and ended %llu of %llu", s,
                     (unsigned long long)fc.sh[s].created, (unsigned long long)fc.sh[s].done,
                     (unsigned long long)fc.sh[s].todo);
            return -EPROTO;
        }
    return 0;
}

int bench_savina_fjcreation(const bench_env_t *env, uint64_t n, result_t *r, char *why,
                            size_t whylen)
{
    int rc = sv_start(env, env->shards >= 2, why, whylen);
    if (rc != 0)
        return rc;
    fc.sh = aligned_alloc(64, env->shards * sizeof(*fc.sh));
    if (fc.sh == NULL) {
        bench_engine_stop(r->name);
        sv_end();
        snprintf(why, whylen, "out of memory for %u shards' records", env->shards);
        return BENCH_FAIL;
    }
    memset(fc.sh, 0, env->shards * sizeof(*fc.sh));
    unsigned parts = 0;
    for (unsigned s = 0; s < env->shards; s++) {
        fc.sh[s].todo = n / env->shards + (s < n % env->shards);
        parts += fc.sh[s].todo > 0;
    }
    rc = 0;
    for (unsigned s = 0; s < env->shards && rc == 0; s++) {
        pith_ref_t keeper;
        rc = sv_spawn_on(s, &keeper_type, NULL, &keeper);
    }
    struct sv_times t = {0};
    struct sv_row row = {.kick = fjc_kick, .check = fjc_check, .parts = parts, .msgs = n};
    if (rc == 0)
        sv_measure(env, &row, &t);
    else
        t = (struct sv_times){.rc = rc, .failed_run = SV_SETUP};
    char where[512];
    sv_where(where, sizeof(where));
    pith_actor_type_stats_t ts = {0};
    uint64_t all = (uint64_t)(t.runs + 1) * n;
    sv_type_stats(&fjc_type, all, all, &ts);
    bench_engine_stop(r->name);
    uint64_t chunks = 0;
    char made[256] = "";
    size_t off = 0;
    for (unsigned s = 0; s < env->shards && s < 8 && off < sizeof(made); s++) {
        int k = snprintf(made + off, sizeof(made) - off, "%s shard %u %llu", s ? "," : "", s,
                         (unsigned long long)fc.sh[s].todo);
        off = k < 0 ? sizeof(made) : off + (size_t)k;
    }
    for (unsigned s = 0; s < env->shards; s++)
        chunks += fc.sh[s].chunks;
    free(fc.sh);
    fc.sh = NULL;
    rc = sv_result(&t, r, why, whylen, "actors ended, all shards");
    if (rc == 0)
        rc = sv_total_check("actors spawned", ts.spawned, all, why, whylen);
    if (rc == 0)
        rc = sv_total_check("actors stopped", ts.stopped, all, why, whylen);
    if (rc == 0)
        rc = sv_total_check("messages the actors handled", ts.messages, all, why, whylen);
    if (rc == 0) {
        char loc[1024];
        snprintf(loc, sizeof(loc),
                 "actors round-robin (actor i on shard i %% %u; created a run:%s%s), each "
                 "shard's created by a task on that shard (all started by one task on shard 0), "
                 "one idle actor on each shard throughout%s; %s",
                 env->shards, made, env->shards > 8 ? ", ..." : "",
                 sv.busy ? ", busy-polling" : ", default poll", where);
        sv_note_common(env, r, &t, n, 40000, loc);
        bench_note("%s: per actor pith_spawn (no state, no init), one empty message, its handler "
                   "computes sin(37.2)^2 and stops it; creators spawn %u a task (%llu tasks over "
                   "all runs): %.0f ns an actor (median run); spawned, stopped and messages %llu "
                   "each over all runs, live %llu",
                   r->name, CREATE_CHUNK, (unsigned long long)chunks, r->value * 1e6 / (double)n,
                   (unsigned long long)all, (unsigned long long)ts.live);
    }
    sv_end();
    return rc;
}
