/* The MUTE_SENDER overflow policy: a producer that outruns its consumer is muted (gets no turn)
 * until the consumer's mailbox drains to half its bound, on the same shard and across shards;
 * every message arrives, in order, and the mailbox stays bounded.
 * Actor code runs on shard threads and reports back through globals read after the run. */
#include <stdatomic.h>
#include <string.h>

#include "util.h"

#define BOUND 64
#define BURST 100 /* sends per producer turn: more than the bound, so each burst mutes */

enum { MSG_DATA = 1, MSG_GO = 2 };

static struct {
    _Atomic uint64_t received; /* by the consumer */
    uint64_t next_expected;
    uint64_t consumer_ns; /* time the consumer spends on each message */
    _Atomic uint64_t out_of_order;
    uint64_t total;
    _Atomic uint64_t sent; /* by the producer */
    _Atomic uint64_t rejected_sends;
    _Atomic uint64_t worst_in_flight; /* at the start of a producer turn after its first */
    _Atomic uint64_t producer_turns;
    pith_ref_t consumer;
} mt;

static int consumer(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    uint64_t v;
    memcpy(&v, msg->data, sizeof(v));
    if (v != mt.next_expected)
        atomic_fetch_add(&mt.out_of_order, 1);
    mt.next_expected = v + 1;
    atomic_fetch_add(&mt.received, 1);
    /* A slower consumer than producer, whatever the shards' speeds: the point of the test. */
    for (uint64_t t0 = pith_now_ns(); pith_now_ns() - t0 < mt.consumer_ns;)
        ;
    return 0;
}

static const pith_actor_type_t consumer_type = {
    .name = "mute.consumer",
    .behaviour = consumer,
    .mailbox_max = BOUND,
    .overflow = PITH_OVERFLOW_MUTE_SENDER,
};

/* On each turn: a burst of BURST messages (or until the mailbox refuses), then a message to
 * itself to come back; a muted producer gets that turn only once the consumer has drained. */
static int producer(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)state;
    (void)msg;
    uint64_t sent = atomic_load(&mt.sent);
    if (atomic_fetch_add(&mt.producer_turns, 1) > 0 &&
        pith_ref_shard(mt.consumer) == pith_ref_shard(pith_self(self))) {
        uint64_t in_flight = sent - atomic_load(&mt.received);
        if (in_flight > atomic_load(&mt.worst_in_flight))
            atomic_store(&mt.worst_in_flight, in_flight);
    }
    for (unsigned i = 0; i < BURST && sent < mt.total; i++) {
        int rc = pith_send(mt.consumer, MSG_DATA, &sent, sizeof(sent));
        if (rc == -EAGAIN) {
            atomic_fetch_add(&mt.rejected_sends, 1);
            break;
        }
        if (rc != 0)
            return rc;
        sent++;
    }
    atomic_store(&mt.sent, sent);
    if (sent < mt.total)
        return pith_send(pith_self(self), MSG_GO, NULL, 0);
    return 0;
}

static const pith_actor_type_t producer_type = {
    .name = "mute.producer",
    .behaviour = producer,
};

struct spawn_job {
    const pith_actor_type_t *type;
    pith_ref_t ref;
    int rc;
};

static void *spawn_fn(void *arg)
{
    struct spawn_job *j = arg;
    j->rc = pith_spawn(j->type, NULL, &j->ref);
    if (j->rc == 0 && j->type == &producer_type)
        j->rc = pith_send(j->ref, MSG_GO, NULL, 0);
    return NULL;
}

static void run(unsigned consumer_shard, unsigned producer_shard)
{
    memset(&mt, 0, sizeof(mt));
    mt.total = test_on_valgrind() ? 2000 : 50000;
    mt.consumer_ns = 500;
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 2;
    test_start(&cfg);
    struct spawn_job c = {.type = &consumer_type}, p = {.type = &producer_type};
    cr_assert_eq(pith_call_wait(consumer_shard, spawn_fn, &c, NULL), 0);
    cr_assert_eq(c.rc, 0);
    mt.consumer = c.ref;
    cr_assert_eq(pith_call_wait(producer_shard, spawn_fn, &p, NULL), 0);
    cr_assert_eq(p.rc, 0);
    TEST_WAIT_FOR(atomic_load(&mt.received) >= mt.total);
    cr_assert_eq(atomic_load(&mt.received), mt.total, "%lu of %lu messages arrived",
                 (unsigned long)atomic_load(&mt.received), (unsigned long)mt.total);
    cr_assert_eq(atomic_load(&mt.out_of_order), 0);
    pith_actor_type_stats_t st;
    cr_assert_eq(pith_actor_type_stats(&consumer_type, &st), 0);
    cr_assert_geq(st.mutes, 1, "the producer was never muted");
    /* Within the hard guard of 8 times the bound; a same-shard producer overshoots by at most
     * the rest of the burst it was muted in. */
    unsigned most = consumer_shard == producer_shard ? 2 * BOUND : 8 * BOUND;
    cr_assert_leq(st.mailbox_max, most, "the mailbox reached %lu with a bound of %u",
                  (unsigned long)st.mailbox_max, BOUND);
    cr_assert_eq(st.rejected, 0, "the consumer refused %lu messages", (unsigned long)st.rejected);
    cr_assert_eq(st.dropped, 0);
    if (consumer_shard == producer_shard) {
        /* Muted at once, the producer only ran again once the consumer was at half its bound,
         * and its bursts never overfilled the box. */
        cr_assert_leq(atomic_load(&mt.worst_in_flight), BOUND / 2,
                      "a producer turn began with %lu messages in flight",
                      (unsigned long)atomic_load(&mt.worst_in_flight));
        cr_assert_eq(atomic_load(&mt.rejected_sends), 0);
    }
    test_stop(NULL);
}

Test(actor_mute, a_muted_producer_waits_for_the_consumer_on_its_shard, .timeout = 120)
{
    run(0, 0);
}

Test(actor_mute, a_producer_on_another_shard_is_muted_through_the_mesh, .timeout = 120)
{
    run(0, 1);
}
