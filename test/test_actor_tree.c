/* Supervision trees (pith/actor.h): supervisors as children of supervisors (their restarts, their
 * escalation, the order a tree stops in), children on other shards (also while that shard is held
 * busy), and specs that cannot work. The test's main thread drives the engine as a client
 * (agents.h); kids log their starts and ends, which the test reads. */
#include <inttypes.h>
#include <string.h>

#include "agents.h"

/* ---- supervisors, from tasks on their shards ---- */

struct sup_req {
    const pith_supervisor_spec_t *spec;
    pith_ref_t ref, first[2]; /* pith_supervisor_child 0 and 1 in the spawning task */
    int rc;
};

static void *sup_spawn_fn(void *arg)
{
    struct sup_req *q = arg;
    q->rc = pith_supervisor_spawn(q->spec, &q->ref);
    for (unsigned i = 0; i < 2; i++)
        q->first[i] = pith_supervisor_child(q->ref, i);
    return NULL;
}

static int sup_try(unsigned shard, const pith_supervisor_spec_t *spec, struct sup_req *q)
{
    *q = (struct sup_req){.spec = spec, .ref = 12345, .rc = 12345};
    on_shard(shard, sup_spawn_fn, q);
    return q->rc;
}

static pith_ref_t sup_spawn(unsigned shard, const pith_supervisor_spec_t *spec)
{
    struct sup_req q;
    int rc = sup_try(shard, spec, &q);
    cr_assert_eq(rc, 0, "pith_supervisor_spawn: %d (%s)", rc, pith_strerror(rc));
    cr_assert_eq(pith_ref_shard(q.ref), shard);
    return q.ref;
}

struct child_req {
    pith_ref_t sup;
    uint32_t i;
};

static void *child_fn(void *arg)
{
    struct child_req *q = arg;
    return (void *)(uintptr_t)pith_supervisor_child(q->sup, q->i);
}

/* pith_supervisor_child from a task on the supervisor's shard. */
static pith_ref_t child_of(pith_ref_t sup, uint32_t i)
{
    struct child_req q = {.sup = sup, .i = i};
    return (pith_ref_t)(uintptr_t)on_shard(pith_ref_shard(sup), child_fn, &q);
}

/* Child i of sup once the supervisor counts it as started. */
static pith_ref_t child_wait(pith_ref_t sup, uint32_t i)
{
    pith_ref_t r;
    TEST_WAIT_FOR((r = child_of(sup, i)) != PITH_REF_NONE);
    return r;
}

static void *whereis_fn(void *arg)
{
    return (void *)(uintptr_t)pith_whereis(arg);
}

static pith_ref_t whereis_on(unsigned shard, const char *name)
{
    return (pith_ref_t)(uintptr_t)on_shard(shard, whereis_fn, (void *)name);
}

/* ---- holding a shard busy: a task that spins until the test lets it go ---- */

static struct {
    atomic_bool on, release;
} hold;

static void hold_task(void *arg)
{
    (void)arg;
    atomic_store(&hold.on, true);
    uint64_t deadline = test_wait_deadline();
    while (!atomic_load(&hold.release) && pith_now_ns() < deadline)
        ;
    atomic_store(&hold.on, false);
}

static void hold_shard(unsigned shard)
{
    atomic_store(&hold.release, false);
    cr_assert_eq(pith_submit(shard, hold_task, NULL), 0);
    while (!atomic_load(&hold.on))
        ; /* the shard picks it up at once: it is idle */
}

static void release_shard(void)
{
    atomic_store(&hold.release, true);
    while (atomic_load(&hold.on))
        ;
}

/* ---- 1. a supervisor as a child: its own restarts, its escalation, its parent's strategy ---- */

/* top (strategy) on shard 0: [k0, sub on shard 1 (one-for-one, intensity 1): [k1, k2 on shard 0],
 * k3]. k1 crashes: sub restarts it alone. It crashes again: sub stops k2 and escalates, and top
 * applies its strategy to sub as to any failed child. Then top is stopped, children first. */
static void tree_run(pith_strategy_t strategy, bool k0_restarts, bool k3_restarts)
{
    pith_config_t cfg = test_config(2);
    agents_begin(&cfg);
    pith_child_spec_t sub_kids[2] = {
        {.type = &kid_type, .arg = KID(1)},
        {.type = &kid_type, .arg = KID(2), .on_shard = true, .shard = 0},
    };
    pith_supervisor_spec_t sub = {.strategy = PITH_ONE_FOR_ONE,
                                  .intensity = 1,
                                  .period_ns = 3600 * SEC,
                                  .children = sub_kids,
                                  .nchildren = 2};
    pith_child_spec_t top_kids[3] = {
        {.type = &kid_type, .arg = KID(0)},
        {.sup = &sub, .on_shard = true, .shard = 1, .name = "tree.sub"},
        {.type = &kid_type, .arg = KID(3)},
    };
    pith_supervisor_spec_t spec = {.strategy = strategy, .children = top_kids, .nchildren = 3};
    pith_ref_t top = sup_spawn(0, &spec);
    pith_ref_t s = child_wait(top, 1);
    cr_assert_eq(pith_ref_shard(s), 1);
    pith_ref_t was[4] = {child_wait(top, 0), child_wait(s, 0), child_wait(s, 1),
                         child_wait(top, 2)};
    static const unsigned where[4] = {0, 1, 0, 0};
    for (unsigned i = 0; i < 4; i++) {
        cr_assert_eq(AT(i, starts), 1, "kid %u started %u times", i, AT(i, starts));
        cr_assert_eq(was[i], AT(i, self), "kid %u: its supervisor names another ref", i);
        cr_assert_eq(pith_ref_shard(was[i]), where[i], "kid %u runs on shard %u", i,
                     pith_ref_shard(was[i]));
        tell(was[i], K_INC);
    }
    TEST_WAIT_FOR(whereis_on(0, "tree.sub") == s && whereis_on(1, "tree.sub") == s);

    /* The nested supervisor restarts its own child; nothing above it moves. */
    tell(was[1], K_CRASH);
    pith_ref_t k1;
    TEST_WAIT_FOR((k1 = child_of(s, 0)) != was[1] && k1 != PITH_REF_NONE);
    cr_assert_eq(k1, AT(1, self));
    cr_assert_eq(kid_count(k1), 0, "the restarted kid kept its state");
    cr_assert(!alive(was[1]));
    cr_assert_eq(child_of(top, 1), s);
    cr_assert_eq(child_of(s, 1), was[2]);
    for (unsigned i = 0; i < 4; i += 1 + (i == 0)) {
        cr_assert_eq(AT(i, starts), 1);
        cr_assert_eq(kid_count(was[i]), 1, "kid %u lost its state", i);
    }

    /* Past its intensity sub stops k2 and ends with PITH_EXIT_ESCALATED: top's failed child. */
    tell(k1, K_CRASH);
    pith_ref_t s2;
    TEST_WAIT_FOR((s2 = child_of(top, 1)) != s && s2 != PITH_REF_NONE);
    pith_ref_t now[4] = {child_wait(top, 0), child_wait(s2, 0), child_wait(s2, 1),
                         child_wait(top, 2)};
    cr_assert(!alive(s));
    cr_assert(!alive(k1));
    cr_assert_eq(AT(1, starts), 3);
    cr_assert_eq(AT(1, reason), -EIO);
    cr_assert_eq(AT(2, starts), 2);
    cr_assert_eq(AT(2, ends), 1);
    cr_assert_eq(AT(2, reason), PITH_EXIT_NORMAL, "the escalating supervisor stopped k2");
    cr_assert_gt(AT(2, end_at), AT(1, end_at));
    cr_assert_lt(AT(1, start_at), AT(2, start_at), "sub starts its kids in order");
    const bool restarts[4] = {k0_restarts, true, true, k3_restarts};
    for (unsigned i = 0; i < 4; i++) {
        cr_assert_eq(now[i], AT(i, self), "kid %u: its supervisor names another ref", i);
        if (!restarts[i]) {
            cr_assert_eq(AT(i, starts), 1, "kid %u restarted", i);
            cr_assert_eq(now[i], was[i]);
            cr_assert_eq(kid_count(now[i]), 1, "kid %u lost its state", i);
            continue;
        }
        cr_assert_eq(kid_count(now[i]), 0, "kid %u restarted with its old state", i);
        cr_assert(!alive(was[i]));
        if (i == 0 || i == 3) {
            cr_assert_eq(AT(i, starts), 2, "kid %u started %u times", i, AT(i, starts));
            cr_assert_eq(AT(i, reason), PITH_EXIT_NORMAL);
            cr_assert_gt(AT(i, end_at), AT(2, end_at), "kid %u stopped before sub ended", i);
            cr_assert_lt(AT(i, end_at), AT(1, start_at), "kid %u ended after a restart", i);
        }
    }
    if (k0_restarts)
        cr_assert_lt(AT(0, start_at), AT(1, start_at), "top restarts in order");
    if (k3_restarts)
        cr_assert_gt(AT(3, start_at), AT(1, start_at), "top restarts in order");
    if (k0_restarts && k3_restarts)
        cr_assert_lt(AT(3, end_at), AT(0, end_at), "top stops in reverse order");
    TEST_WAIT_FOR(whereis_on(0, "tree.sub") == s2 && whereis_on(1, "tree.sub") == s2);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&kid_type, &st), 0);
    cr_assert_eq(st.restarts, 1u + k0_restarts + k3_restarts, "restarts %" PRIu64, st.restarts);
    cr_assert_eq(st.failed, 2);

    /* Stopping top stops the whole tree: children first, in reverse start order. */
    unsigned ended = kid_ends_total();
    cr_assert_eq(pith_stop(top), 0);
    TEST_WAIT_FOR(kid_ends_total() == ended + 4);
    cr_assert_lt(AT(3, end_at), AT(2, end_at));
    cr_assert_lt(AT(2, end_at), AT(1, end_at));
    cr_assert_lt(AT(1, end_at), AT(0, end_at));
    for (unsigned i = 0; i < 4; i++)
        cr_assert_eq(AT(i, reason), PITH_EXIT_NORMAL);
    cr_assert(!alive(top));
    cr_assert(!alive(s2));
    agents_end();
}

Test(actor_tree, one_for_one_restarts_an_escalated_nested_supervisor_alone, .timeout = 60)
{
    tree_run(PITH_ONE_FOR_ONE, false, false);
}

Test(actor_tree, one_for_all_restarts_everything_when_a_nested_supervisor_escalates, .timeout = 60)
{
    tree_run(PITH_ONE_FOR_ALL, true, true);
}

Test(actor_tree, rest_for_one_restarts_an_escalated_nested_supervisor_and_those_after_it,
     .timeout = 60)
{
    tree_run(PITH_REST_FOR_ONE, false, true);
}

/* ---- 2. stopping a tree ---- */

Test(actor_tree, stopping_a_tree_ends_every_child_first_in_reverse_start_order, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    agents_begin(&cfg);
    /* top on 0: [k0, sub on 1: [k1, sub2 on 0: [k2, k3 on 1]], k4] */
    pith_child_spec_t kids2[2] = {{.type = &kid_type, .arg = KID(2)},
                                  {.type = &kid_type, .arg = KID(3), .on_shard = true, .shard = 1}};
    pith_supervisor_spec_t sub2 = {.children = kids2, .nchildren = 2};
    pith_child_spec_t kids1[2] = {{.type = &kid_type, .arg = KID(1)},
                                  {.sup = &sub2, .on_shard = true, .shard = 0}};
    pith_supervisor_spec_t sub = {.children = kids1, .nchildren = 2};
    pith_child_spec_t kids0[3] = {{.type = &kid_type, .arg = KID(0)},
                                  {.sup = &sub, .on_shard = true, .shard = 1},
                                  {.type = &kid_type, .arg = KID(4)}};
    pith_supervisor_spec_t spec = {.strategy = PITH_ONE_FOR_ALL, .children = kids0, .nchildren = 3};

    for (int kill = 0; kill < 2; kill++) {
        unsigned ended = kid_ends_total();
        pith_ref_t top = sup_spawn(0, &spec);
        pith_ref_t s = child_wait(top, 1), s2 = child_wait(s, 1);
        child_wait(s2, 1);
        pith_ref_t w = spawn_agent(0);
        const pith_ref_t sups[3] = {s2, s, top};
        for (unsigned i = 0; i < 3; i++)
            cr_assert_eq(agent_do(w, A_MONITOR, (struct cmd){.ref = sups[i]}), 0);
        if (kill) {
            /* Killed, the supervisors end at once: their children are sent their stops and
             * all end, in no promised order across shards. */
            cr_assert_eq(pith_kill(top), 0);
            cr_assert_eq(expect_down(top).down.reason, PITH_EXIT_KILLED);
            for (unsigned i = 0; i < 2; i++) { /* the DOWNs of s and s2, in either order */
                pith_msg_t m = expect(R_DOWN);
                struct down_seen d;
                memcpy(&d, m.data, sizeof(d));
                cr_assert(d.down.ref == s || d.down.ref == s2);
            }
            TEST_WAIT_FOR(kid_ends_total() == ended + 5);
            tell(w, A_CRASH);
            cr_assert_eq(*(const int32_t *)expect(R_ENDED).data, -EIO);
            break;
        }
        cr_assert_eq(pith_stop(top), 0);
        /* Each supervisor ends after its whole subtree, and reports it in that order. */
        struct down_seen d = expect_down(s2);
        cr_assert_geq(d.kid_ends, ended + 3, "sub2 ended before its kids");
        cr_assert_eq(d.down.reason, PITH_EXIT_NORMAL);
        d = expect_down(s);
        cr_assert_geq(d.kid_ends, ended + 4, "sub ended before its kids");
        d = expect_down(top);
        cr_assert_eq(d.kid_ends, ended + 5, "top ended before its kids");
        cr_assert_eq(d.down.reason, PITH_EXIT_NORMAL);
        for (unsigned i = 1; i < 5; i++)
            cr_assert_gt(AT(i - 1, end_at), AT(i, end_at), "kid %u ended before kid %u", i - 1, i);
        for (unsigned i = 0; i < 5; i++) {
            cr_assert_eq(AT(i, ends), 1);
            cr_assert_eq(AT(i, reason), PITH_EXIT_NORMAL);
        }
        tell(w, A_CRASH);
        cr_assert_eq(*(const int32_t *)expect(R_ENDED).data, -EIO);
    }
    agents_end();
}

/* ---- 3. children on other shards ---- */

Test(actor_tree, remote_children_start_restart_and_stop_with_their_current_refs, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    agents_begin(&cfg);
    pith_child_spec_t kids[3] = {
        {.type = &kid_type, .arg = KID(0), .on_shard = true, .shard = 1},
        {.type = &kid_type, .arg = KID(1)},
        {.type = &kid_type, .arg = KID(2), .on_shard = true, .shard = 1, .name = "tree.far"},
    };
    pith_supervisor_spec_t spec = {.children = kids, .nchildren = 3};
    struct sup_req q;
    cr_assert_eq(sup_try(0, &spec, &q), 0);
    pith_ref_t top = q.ref;
    cr_assert_eq(q.first[0], PITH_REF_NONE, "a remote child counted before its start came back");
    cr_assert_eq(q.first[1], PITH_REF_NONE, "a child started before the one ahead of it");
    pith_ref_t was[3];
    for (unsigned i = 0; i < 3; i++) {
        was[i] = child_wait(top, i);
        cr_assert_eq(was[i], AT(i, self));
        cr_assert_eq(pith_ref_shard(was[i]), i == 1 ? 0u : 1u);
        tell(was[i], K_INC);
    }
    cr_assert_lt(AT(0, start_at), AT(1, start_at));
    cr_assert_lt(AT(1, start_at), AT(2, start_at));
    TEST_WAIT_FOR(whereis_on(0, "tree.far") == was[2] && whereis_on(1, "tree.far") == was[2]);

    for (unsigned i = 0; i < 3; i += 2) {
        tell(was[i], K_CRASH);
        pith_ref_t now;
        TEST_WAIT_FOR((now = child_of(top, i)) != was[i] && now != PITH_REF_NONE);
        cr_assert_eq(now, AT(i, self));
        cr_assert_eq(pith_ref_shard(now), 1);
        cr_assert_gt(AT(i, start_at), AT(i, end_at));
        cr_assert(!alive(was[i]));
        cr_assert_eq(kid_count(now), 0);
        was[i] = now;
    }
    cr_assert_eq(kid_count(was[1]), 1);
    TEST_WAIT_FOR(whereis_on(0, "tree.far") == was[2] && whereis_on(1, "tree.far") == was[2]);
    /* A child that ends normally is not restarted. */
    tell(was[1], K_QUIT);
    TEST_WAIT_FOR(child_of(top, 1) == PITH_REF_NONE);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&kid_type, &st), 0);
    cr_assert_eq(st.restarts, 2);
    cr_assert_eq(st.live, 2);

    cr_assert_eq(pith_stop(top), 0);
    TEST_WAIT_FOR(!alive(top));
    cr_assert_eq(AT(0, ends), 2, "top ended before its remote children");
    cr_assert_eq(AT(2, ends), 2);
    cr_assert_lt(AT(2, end_at), AT(0, end_at));
    cr_assert(!alive(was[0]) && !alive(was[2]));
    cr_assert_eq(AT(1, starts), 1);
    agents_end();
}

Test(actor_tree, a_restart_waits_for_a_busy_shard_and_for_the_old_instance_to_end, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = 0; /* shard 1 is held on purpose */
    agents_begin(&cfg);
    pith_child_spec_t kids[3] = {
        {.type = &kid_type, .arg = KID(0)},
        {.type = &kid_type, .arg = KID(1), .on_shard = true, .shard = 1},
        {.type = &kid_type, .arg = KID(2)},
    };
    pith_supervisor_spec_t spec = {
        .strategy = PITH_ONE_FOR_ALL, .intensity = 10, .children = kids, .nchildren = 3};
    pith_ref_t top = sup_spawn(0, &spec);
    for (unsigned i = 0; i < 3; i++)
        child_wait(top, i);
    tell(child_of(top, 1), K_QUIT);
    TEST_WAIT_FOR(child_of(top, 1) == PITH_REF_NONE);

    /* Shard 1 is held while k2's crash restarts every kid: k1's start waits on the mesh, and
     * k2's behind it; neither counts as started meanwhile. */
    hold_shard(1);
    tell(child_of(top, 2), K_CRASH);
    TEST_WAIT_FOR_ON(0, AT(0, starts) == 2);
    for (unsigned r = 0; r < 20; r++) {
        test_sync_shard(0);
        cr_assert_eq(child_of(top, 1), PITH_REF_NONE, "k1 counted before it started");
        cr_assert_eq(child_of(top, 2), PITH_REF_NONE, "k2 started before k1");
        cr_assert_eq(AT(1, starts), 1);
        cr_assert_eq(AT(2, starts), 1);
    }
    cr_assert_eq(child_of(top, 0), AT(0, self));
    release_shard();
    pith_ref_t k1 = child_wait(top, 1);
    child_wait(top, 2);
    cr_assert_eq(k1, AT(1, self));
    cr_assert_lt(AT(0, start_at), AT(1, start_at));
    cr_assert_lt(AT(1, start_at), AT(2, start_at));

    /* Now k1 runs on the held shard when k0's crash makes top stop it: top starts nothing
     * before k1 has ended, and counts none of them meanwhile. */
    hold_shard(1);
    tell(child_of(top, 0), K_CRASH);
    TEST_WAIT_FOR_ON(0, AT(2, ends) == 2);
    for (unsigned r = 0; r < 20; r++) {
        test_sync_shard(0);
        for (unsigned i = 0; i < 3; i++)
            cr_assert_eq(child_of(top, i), PITH_REF_NONE, "kid %u counted while k1 ends", i);
        cr_assert_eq(AT(1, ends), 1);
        cr_assert_eq(AT(0, starts), 2, "k0 started before k1 ended");
    }
    release_shard();
    for (unsigned i = 0; i < 3; i++)
        cr_assert_eq(child_wait(top, i), AT(i, self));
    cr_assert_eq(AT(1, ends), 2);
    cr_assert_eq(AT(1, reason), PITH_EXIT_NORMAL);
    cr_assert_lt(AT(1, end_at), AT(0, start_at), "a kid started before k1 had ended");
    cr_assert_lt(AT(0, start_at), AT(1, start_at));
    cr_assert_lt(AT(1, start_at), AT(2, start_at));
    cr_assert(!alive(k1));
    agents_end();
}

Test(actor_tree, a_child_that_starts_after_its_supervisor_ended_is_stopped, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = 0;
    agents_begin(&cfg);
    pith_child_spec_t kids[1] = {{.type = &kid_type, .arg = KID(0), .on_shard = true, .shard = 1}};
    pith_supervisor_spec_t spec = {.children = kids, .nchildren = 1};
    hold_shard(1);
    pith_ref_t top = sup_spawn(0, &spec);
    cr_assert_eq(pith_kill(top), 0);
    TEST_WAIT_FOR_ON(0, !alive(top));
    release_shard();
    TEST_WAIT_FOR(AT(0, ends) == 1);
    cr_assert_eq(AT(0, starts), 1);
    cr_assert_eq(pith_ref_shard(AT(0, self)), 1, "the kid started on shard %u",
                 pith_ref_shard(AT(0, self)));
    agents_end();
}

Test(actor_tree, a_child_that_cannot_start_on_another_shard_ends_its_supervisor, .timeout = 60)
{
    pith_config_t cfg = test_config(2);
    cfg.stall_ns = 0;
    agents_begin(&cfg);
    pith_child_spec_t kids[3] = {
        {.type = &kid_type, .arg = KID(0)},
        {.type = &refusing_type, .on_shard = true, .shard = 1},
        {.type = &kid_type, .arg = KID(2)},
    };
    pith_supervisor_spec_t spec = {.children = kids, .nchildren = 3};
    hold_shard(1);
    pith_ref_t top = sup_spawn(0, &spec);
    pith_ref_t w = spawn_agent(0);
    cr_assert_eq(agent_do(w, A_MONITOR, (struct cmd){.ref = top}), 0);
    release_shard();
    cr_assert_eq(expect_down(top).down.reason, PITH_EXIT_ESCALATED);
    cr_assert_eq(AT(0, ends), 1);
    cr_assert_eq(AT(0, reason), PITH_EXIT_NORMAL);
    cr_assert_eq(AT(2, starts), 0);
    agents_end();
}

Test(actor_tree, supervisor_specs_that_cannot_work_are_einval, .timeout = 30)
{
    pith_config_t cfg = test_config(2);
    agents_begin(&cfg);
    pith_child_spec_t ok = {.type = &kid_type, .arg = KID(0)};
    pith_supervisor_spec_t nested = {.children = &ok, .nchildren = 1};
    pith_supervisor_spec_t bad_nested = {.strategy = 7, .children = &ok, .nchildren = 1};
    pith_child_spec_t self_kid;
    pith_supervisor_spec_t loop = {.children = &self_kid, .nchildren = 1};
    self_kid = (pith_child_spec_t){.sup = &loop};
    const pith_child_spec_t bad[] = {
        {.type = &kid_type, .sup = &nested}, /* both */
        {.arg = KID(0)},                     /* neither */
        {.type = &kid_type, .shard = 1},     /* a shard without on_shard */
        {.type = &kid_type, .on_shard = true, .shard = 2},
        {.sup = &bad_nested},
        {.sup = &loop},
    };
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pith_child_spec_t kids[2] = {ok, bad[i]};
        pith_supervisor_spec_t spec = {.children = kids, .nchildren = 2};
        struct sup_req q;
        cr_assert_eq(sup_try(0, &spec, &q), -EINVAL, "bad child %u: %d", i, q.rc);
        cr_assert_eq(q.ref, PITH_REF_NONE);
    }
    cr_assert_eq(AT(0, starts), 0, "a kid started for a spec that was refused");
    agents_end();
}
