/* Undoing monitors and links (pith_demonitor, pith_unlink, pith/actor.h): on one shard and across,
 * with the target's end already in the watcher's mailbox, on its way, or racing the undo. The
 * test's main thread drives an agent (agents.h) that watches kids and forwards every DOWN it
 * handles to the test's client, so the client sees the order: a DOWN after an undo returned 0 is
 * a failure. */
#include <inttypes.h>
#include <string.h>

#include "agents.h"

/* The agent ends a kid on `shard` and undoes a monitor or link of it while what the kid's end
 * sent is on its way (cross-shard) or waits in its mailbox (same shard). */
static int undo_in_flight(pith_ref_t w, pith_ref_t t, unsigned idx, uint32_t undo)
{
    send_cmd(w, A_IN_FLIGHT,
             (struct cmd){.ref = t, .undo = undo, .idx = idx, .ends = AT(idx, ends)});
    if (pith_ref_shard(t) != pith_ref_shard(w)) {
        while (!atomic_load(&agent_spins))
            ;
        cr_assert_eq(undo == A_DEMONITOR ? pith_stop(t) : pith_kill(t), 0);
    }
    struct done d;
    memcpy(&d, expect(R_DONE).data, sizeof(d));
    cr_assert_eq(d.op, A_IN_FLIGHT);
    return d.rc;
}

/* The agent on shard 0 undoes monitors and links of kids on `shard`. */
static void undo_run(unsigned shard)
{
    pith_config_t cfg = test_config(2);
    agents_begin(&cfg);
    pith_ref_t w = spawn_agent(0), e = spawn(shard, &echo_type, NULL);
    cr_assert_eq(agent_do(w, A_DEMONITOR, (struct cmd){.ref = PITH_REF_NONE}), -EINVAL);
    cr_assert_eq(agent_do(w, A_DEMONITOR, (struct cmd){.ref = w}), -EINVAL);
    cr_assert_eq(agent_do(w, A_UNLINK, (struct cmd){.ref = PITH_REF_NONE}), -EINVAL);
    cr_assert_eq(agent_do(w, A_UNLINK, (struct cmd){.ref = w}), -EINVAL);

    /* Monitors: one undone tells nothing; of two, one undone leaves one DOWN. */
    pith_ref_t t = spawn(shard, &kid_type, KID(0));
    struct cmd c = {.ref = t};
    cr_assert_eq(agent_do(w, A_DEMONITOR, c), -ENOENT);
    cr_assert_eq(agent_do(w, A_UNLINK, c), -ENOENT);
    cr_assert_eq(agent_do(w, A_MONITOR, c), 0);
    cr_assert_eq(agent_do(w, A_DEMONITOR, c), 0);
    cr_assert_eq(agent_do(w, A_DEMONITOR, c), -ENOENT);
    cr_assert_eq(agent_do(w, A_MONITOR, c), 0);
    cr_assert_eq(agent_do(w, A_MONITOR, c), 0);
    cr_assert_eq(agent_do(w, A_DEMONITOR, c), 0);
    /* The monitors travel the mesh from the agent's shard, the crash from the test's lane: a
     * round trip on the mesh first, or the crash may come before them and the DOWN say
     * -ESRCH. */
    drain(w, e);
    tell(t, K_CRASH);
    cr_assert_eq(expect_down(t).down.reason, -EIO);
    drain(w, e);
    cr_assert_eq(agent_do(w, A_DEMONITOR, c), -ENOENT, "the monitor whose DOWN came is undone");

    /* Links, made once however often they are made, and undone from one side, are gone both
     * ways. */
    c.ref = t = spawn(shard, &kid_type, KID(1));
    cr_assert_eq(agent_do(w, A_LINK, c), 0);
    cr_assert_eq(agent_do(w, A_LINK, c), 0);
    cr_assert_eq(agent_do(w, A_UNLINK, c), 0);
    cr_assert_eq(agent_do(w, A_UNLINK, c), -ENOENT);
    drain(w, e); /* as above: the unlink is in before the crash */
    tell(t, K_CRASH);
    TEST_WAIT_FOR(AT(1, ends) == 1);
    drain(w, e); /* the agent lives, and got no DOWN */
    c.ref = t = spawn(shard, &kid_type, KID(2));
    cr_assert_eq(agent_do(w, A_LINK, c), 0);
    cr_assert_eq(agent_do(w, A_UNLINK, c), 0);
    send_cmd(w, A_CRASH, c);
    cr_assert_eq(*(const int32_t *)expect(R_ENDED).data, -EIO);
    cr_assert(alive(t), "the kid followed the agent through an undone link");

    /* Undone while the target's end is on its way, or already in the agent's mailbox. */
    w = spawn_agent(0);
    c.ref = t = spawn(shard, &kid_type, KID(3));
    cr_assert_eq(agent_do(w, A_MONITOR, c), 0);
    cr_assert_eq(undo_in_flight(w, t, 3, A_DEMONITOR), 0);
    drain(w, e);
    if (shard != 0) { /* on one shard the exit reaches a linked agent at once */
        c.ref = t = spawn(shard, &kid_type, KID(4));
        cr_assert_eq(agent_do(w, A_LINK, c), 0);
        cr_assert_eq(undo_in_flight(w, t, 4, A_UNLINK), 0);
        drain(w, e);
        cr_assert_eq(AT(4, reason), PITH_EXIT_KILLED);
    }
    cr_assert_eq(agent_do(w, A_TRAP, (struct cmd){.ref = 1}), 0);
    c.ref = t = spawn(shard, &kid_type, KID(5));
    cr_assert_eq(agent_do(w, A_LINK, c), 0);
    cr_assert_eq(undo_in_flight(w, t, 5, A_UNLINK), 0);
    drain(w, e);
    agents_end();
}

Test(actor_unwatch, demonitor_and_unlink_on_one_shard, .timeout = 60)
{
    undo_run(0);
}

Test(actor_unwatch, demonitor_and_unlink_across_shards, .timeout = 60)
{
    undo_run(1);
}

/* The kid crashes on its shard while the agent undoes: whichever wins, no DOWN is handled after
 * the undo returned, and none was before unless the undo found nothing (-ENOENT). Monitors,
 * trapped links and plain links (the agent may then die first), here and across. */
Test(actor_unwatch, demonitor_and_unlink_race_the_target_ending, .timeout = 300)
{
    pith_config_t cfg = test_config(2);
    agents_begin(&cfg);
    pith_ref_t e[2] = {spawn(0, &echo_type, NULL), spawn(1, &echo_type, NULL)};
    pith_ref_t w = spawn_agent(0);
    unsigned outcome[3][3] = {{0}}; /* [mode][undone, DOWN first, agent died] */
    uint64_t rounds = scaled(600);
    for (uint64_t i = 0; i < rounds; i++) {
        unsigned mode = (unsigned)(i % 3), shard = (unsigned)(i / 3) % 2;
        bool crash_first = (i / 6) % 2;
        uint32_t undo = mode == 0 ? A_DEMONITOR : A_UNLINK;
        pith_ref_t t = spawn(shard, &kid_type, KID(0));
        unsigned ends = AT(0, ends);
        cr_assert_eq(agent_do(w, A_TRAP, (struct cmd){.ref = mode == 1}), 0);
        cr_assert_eq(agent_do(w, mode == 0 ? A_MONITOR : A_LINK, (struct cmd){.ref = t}), 0);
        if (crash_first)
            tell(t, K_CRASH);
        send_cmd(w, undo, (struct cmd){.ref = t});
        if (!crash_first)
            tell(t, K_CRASH);
        TEST_WAIT_FOR(AT(0, ends) == ends + 1);
        send_cmd(w, A_DRAIN, (struct cmd){.ref = e[shard]});
        int rc = 1;
        unsigned downs = 0;
        bool died = false;
        for (bool drained = false; !drained && !died;) {
            pith_msg_t m = next_msg();
            struct done d;
            switch (m.type) {
            case R_DOWN:
                cr_assert_eq(rc, 1, "round %" PRIu64 ": a DOWN after the undo returned %d", i, rc);
                downs++;
                break;
            case R_DONE:
                memcpy(&d, m.data, sizeof(d));
                if (d.op == undo)
                    rc = d.rc;
                drained = d.op == A_DRAIN;
                break;
            case R_ENDED:
                cr_assert_eq(mode, 2, "round %" PRIu64 ": the agent ended", i);
                cr_assert_eq(rc, 1, "round %" PRIu64 ": the agent died after its unlink", i);
                died = true;
                break;
            default:
                cr_assert_fail("round %" PRIu64 ": message %u", i, m.type);
            }
        }
        if (died) {
            outcome[mode][2]++;
            w = spawn_agent(0);
            continue;
        }
        cr_assert(rc == 0 || rc == -ENOENT, "round %" PRIu64 ": the undo returned %d", i, rc);
        cr_assert_eq(downs, rc == 0 ? 0u : 1u, "round %" PRIu64 ": %u DOWNs, undo %d", i, downs,
                     rc);
        outcome[mode][rc != 0]++;
    }
    for (unsigned m = 0; m < 3; m++)
        cr_log_info("mode %u: undone first %u, DOWN first %u, agent died %u", m, outcome[m][0],
                    outcome[m][1], outcome[m][2]);
    agents_end();
}
