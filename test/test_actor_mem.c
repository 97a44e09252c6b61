/* Memory of actors: a type's budget covers each actor's state and what it allocates under its
 * own account, refuses past it, and the account goes with the actor; the type's mailbox_now
 * counts what waits. Actor code runs on shard 0 and reports back through a struct. */
#include <string.h>

#include "util.h"

#define BUDGET 4096

static struct {
    int big_alloc_errno; /* a block past the budget */
    bool small_ok;       /* one within it */
    size_t in_use_held;  /* the actor's account while it held both */
    int owner_rc_alive;  /* pith_mem_owner_stats of the actor while it runs */
    uint64_t owner_tag;
} am;

static int spender(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    am.owner_tag = pith_actor_owner(self);
    void *small = pith_malloc_ex(1000, 0, PITH_MEM_WARM, am.owner_tag);
    am.small_ok = small != NULL;
    errno = 0;
    void *big = pith_malloc_ex(BUDGET, 0, PITH_MEM_WARM, am.owner_tag);
    am.big_alloc_errno = big == NULL ? errno : 0;
    pith_mem_owner_stats_t os;
    am.owner_rc_alive = pith_mem_owner_stats(am.owner_tag, &os);
    am.in_use_held = os.in_use;
    pith_free(big);
    pith_free(small);
    return 0;
}

static const pith_actor_type_t spender_type = {
    .name = "mem.spender",
    .behaviour = spender,
    .state_size = 512,
    .mem_budget = BUDGET,
};

static const pith_actor_type_t too_big_type = {
    .name = "mem.too_big",
    .behaviour = spender,
    .state_size = 2 * BUDGET,
    .mem_budget = BUDGET,
};

struct job {
    pith_ref_t ref;
    int spawn_rc, too_big_rc, send_rc;
    int owner_rc_after;
};

static void *spawn_fn(void *arg)
{
    struct job *j = arg;
    j->spawn_rc = pith_spawn(&spender_type, NULL, &j->ref);
    pith_ref_t r;
    j->too_big_rc = pith_spawn(&too_big_type, NULL, &r);
    j->send_rc = pith_send(j->ref, 1, NULL, 0);
    return NULL;
}

static void *stop_fn(void *arg)
{
    struct job *j = arg;
    pith_stop(j->ref);
    pith_mem_owner_stats_t os;
    j->owner_rc_after = pith_mem_owner_stats(j->ref, &os);
    return NULL;
}

static int owner_probe(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    am.owner_tag = pith_actor_owner(self);
    return 0;
}

static const pith_actor_type_t probe_type = {.name = "mem.probe", .behaviour = owner_probe};

static void *probe_fn(void *arg)
{
    struct job *j = arg;
    pith_ref_t r;
    j->spawn_rc = pith_spawn(&probe_type, NULL, &r);
    if (j->spawn_rc == 0)
        j->send_rc = pith_send(r, 1, NULL, 0);
    return NULL;
}

Test(actor_mem, a_budget_covers_state_and_own_allocations_and_goes_with_the_actor, .timeout = 30)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    test_start(&cfg);
    struct job j = {0};
    cr_assert_eq(pith_call_wait(0, spawn_fn, &j, NULL), 0);
    cr_assert_eq(j.spawn_rc, 0);
    cr_assert_eq(j.too_big_rc, -ENOMEM, "a state larger than the budget spawned: %d", j.too_big_rc);
    cr_assert_eq(j.send_rc, 0);
    test_sync_shard(0); /* the message's turn ran */
    cr_assert_eq(am.owner_tag, j.ref, "the actor's owner tag is its ref");
    cr_assert(am.small_ok, "1000 B within a %d B budget was refused", BUDGET);
    cr_assert_eq(am.big_alloc_errno, ENOMEM, "a block past the budget: errno %d",
                 am.big_alloc_errno);
    cr_assert_eq(am.owner_rc_alive, 0);
    /* the state (512 + header) and the 1000 B block (+ header) */
    cr_assert_eq(am.in_use_held, 512 + 16 + 1000 + 16, "account %zu", am.in_use_held);
    cr_assert_eq(pith_call_wait(0, stop_fn, &j, NULL), 0);
    cr_assert_eq(j.owner_rc_after, -ENOENT, "the account outlived the actor: %d", j.owner_rc_after);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&too_big_type, &st), 0);
    cr_assert_eq(st.spawned, 0);
    /* Without a budget the tag is 0: the shard's own account. */
    am.owner_tag = 12345;
    cr_assert_eq(pith_call_wait(0, probe_fn, &j, NULL), 0);
    cr_assert_eq(j.spawn_rc, 0);
    cr_assert_eq(j.send_rc, 0);
    test_sync_shard(0); /* the message's turn, queued before this, ran */
    cr_assert_eq(am.owner_tag, 0);
    test_stop(NULL);
}

/* ---- mailbox_now ---- */

static int idle_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    (void)msg;
    return 0;
}

static const pith_actor_type_t queue_type = {
    .name = "mem.queue", .behaviour = idle_behaviour, .mailbox_max = 1000};

struct fill {
    pith_ref_t a, b;
    uint64_t now_while_full;
    int rc;
};

static void *fill_fn(void *arg)
{
    struct fill *f = arg;
    f->rc = pith_spawn(&queue_type, NULL, &f->a);
    if (f->rc == 0)
        f->rc = pith_spawn(&queue_type, NULL, &f->b);
    for (int i = 0; i < 300 && f->rc == 0; i++)
        f->rc = pith_send(i % 3 ? f->a : f->b, 1, &i, sizeof(i));
    /* Still inside this task: nothing has run, all 300 wait. */
    pith_actor_type_stats_t st;
    if (f->rc == 0 && pith_actor_type_stats(&queue_type, &st) == 0)
        f->now_while_full = st.mailbox_now;
    return NULL;
}

Test(actor_mem, mailbox_now_counts_what_waits, .timeout = 30)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 1;
    test_start(&cfg);
    struct fill f = {0};
    cr_assert_eq(pith_call_wait(0, fill_fn, &f, NULL), 0);
    cr_assert_eq(f.rc, 0);
    cr_assert_eq(f.now_while_full, 300);
    /* The turns requeue themselves behind other work: wait until the 300 are handled. */
    pith_actor_type_stats_t st;
    TEST_WAIT_FOR(pith_actor_type_stats(&queue_type, &st) == 0 && st.messages == 300);
    cr_assert_eq(st.messages, 300);
    cr_assert_eq(st.mailbox_now, 0);
    cr_assert_geq(st.mailbox_max, 200);
    test_stop(NULL);
}
