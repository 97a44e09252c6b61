/* Edges of the actor layer found in review: a long chain of links ends without recursing as
 * deep as the chain, a failed link leaves nothing behind, an init that fails takes back what it
 * set up, and a stop asked for during init keeps its reason. Actor code runs on the shards and
 * reports back through globals read after syncing with the shard. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static _Atomic unsigned ended;
static _Atomic int last_reason;

static int quiet(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    return 0;
}

static void count_end(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    (void)state;
    atomic_fetch_add(&ended, 1);
    atomic_store(&last_reason, reason);
}

/* Each link actor links itself to the ref it is given at init. */
static int link_init(pith_actor_t *self, void *state, void *arg)
{
    (void)state;
    pith_ref_t prev = (pith_ref_t)(uintptr_t)arg;
    return prev == PITH_REF_NONE ? 0 : pith_link(self, prev);
}

static const pith_actor_type_t link_type = {
    .name = "edge.link", .behaviour = quiet, .init = link_init, .terminate = count_end};

struct chain {
    unsigned n;
    pith_ref_t head;
    int rc;
};

static void *chain_fn(void *arg)
{
    struct chain *c = arg;
    pith_ref_t prev = PITH_REF_NONE;
    for (unsigned i = 0; i < c->n && c->rc == 0; i++) {
        pith_ref_t r;
        c->rc = pith_spawn(&link_type, (void *)(uintptr_t)prev, &r);
        if (i == 0)
            c->head = r;
        prev = r;
    }
    /* Killing the first ends every one through the links, on this thread's stack. */
    if (c->rc == 0)
        c->rc = pith_kill(c->head);
    return NULL;
}

Test(actor_edge, a_long_chain_of_links_ends_in_a_loop, .timeout = 60)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    test_start(&cfg);
    atomic_store(&ended, 0);
    /* Deep enough that a recursion per link would overflow the shard's stack. */
    struct chain c = {.n = test_on_valgrind() ? 20000 : 200000};
    cr_assert_eq(pith_call_wait(0, chain_fn, &c, NULL), 0);
    cr_assert_eq(c.rc, 0, "%d", c.rc);
    cr_assert_eq(atomic_load(&ended), c.n, "%u of %u linked actors ended", atomic_load(&ended),
                 c.n);
    cr_assert_eq(atomic_load(&last_reason), PITH_EXIT_KILLED);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&link_type, &st), 0);
    cr_assert_eq(st.live, 0);
    test_stop(NULL);
}

/* ---- a failed link, a failed init ---- */

static int bad_link_rc;
static pith_ref_t watcher_ref;

static int bad_link_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    bad_link_rc = pith_link(self, PITH_REF_NONE);
    return -EIO; /* ends abnormally: any half-made link would be signalled now */
}

static const pith_actor_type_t bad_link_type = {
    .name = "edge.bad_link", .behaviour = bad_link_behaviour, .terminate = count_end};

/* init registers a name and is monitored by a watcher, then fails. */
static int failing_init(pith_actor_t *self, void *state, void *arg)
{
    (void)state;
    (void)arg;
    pith_register("edge.failing", pith_self(self));
    return -ENOENT;
}

static const pith_actor_type_t failing_type = {
    .name = "edge.failing", .behaviour = quiet, .init = failing_init, .terminate = count_end};

/* init links itself to an actor that has ended: it ends at once with PITH_EXIT_NOPROC. */
static pith_ref_t gone_ref;
static int link_gone_init(pith_actor_t *self, void *state, void *arg)
{
    (void)state;
    (void)arg;
    return pith_link(self, gone_ref);
}

static const pith_actor_type_t link_gone_type = {
    .name = "edge.link_gone", .behaviour = quiet, .init = link_gone_init, .terminate = count_end};

struct edge_job {
    int spawn_bad, send_bad, spawn_failing, spawn_gone, stop_gone;
    pith_ref_t bad, gone_linker;
};

static void *edge_fn(void *arg)
{
    struct edge_job *j = arg;
    j->spawn_bad = pith_spawn(&bad_link_type, NULL, &j->bad);
    if (j->spawn_bad == 0)
        j->send_bad = pith_send(j->bad, 1, NULL, 0);
    pith_ref_t f;
    j->spawn_failing = pith_spawn(&failing_type, NULL, &f);
    pith_ref_t g;
    j->stop_gone = pith_spawn(&link_type, NULL, &g);
    if (j->stop_gone == 0)
        j->stop_gone = pith_stop(g);
    gone_ref = g;
    j->spawn_gone = pith_spawn(&link_gone_type, NULL, &j->gone_linker);
    return NULL;
}

static void *whereis_fn(void *arg)
{
    (void)arg;
    watcher_ref = pith_whereis("edge.failing");
    return NULL;
}

Test(actor_edge, failed_links_and_inits_leave_nothing_behind, .timeout = 30)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    test_start(&cfg);
    atomic_store(&ended, 0);
    struct edge_job j = {0};
    cr_assert_eq(pith_call_wait(0, edge_fn, &j, NULL), 0);
    cr_assert_eq(j.spawn_bad, 0);
    cr_assert_eq(j.send_bad, 0);
    cr_assert_eq(j.spawn_failing, -ENOENT);
    cr_assert_eq(j.stop_gone, 0);
    cr_assert_eq(j.spawn_gone, 0);
    test_sync_shard(0); /* the bad link's turn, and the registry's queued changes */
    test_sync_shard(0);
    cr_assert_eq(bad_link_rc, -EINVAL);
    /* bad_link ended (-EIO), gone (stopped), the linker of gone (NOPROC); the failed init
     * never started, so its terminate did not run. */
    cr_assert_eq(atomic_load(&ended), 3, "%u ended", atomic_load(&ended));
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&link_gone_type, &st), 0);
    cr_assert_eq(st.live, 0, "the linker of an ended actor is still alive");
    cr_assert_eq(st.failed, 1);
    /* The name the failed init registered was taken back. */
    cr_assert_eq(pith_call_wait(0, whereis_fn, NULL, NULL), 0);
    cr_assert_eq(watcher_ref, PITH_REF_NONE, "the failed init's name still names %#lx",
                 (unsigned long)watcher_ref);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}
