/* See vtest.h. */
#include "vtest.h"

#include <stdio.h>

pith_vref_t test_vkey_on(const pith_vtype_t *t, const char *prefix, unsigned dir)
{
    for (unsigned i = 0; i < 100000; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "%s%u", prefix, i);
        pith_vref_t v;
        cr_assert_eq(pith_vref(t, key, (size_t)kl, &v), 0);
        if (pith_vref_shard(&v) == dir)
            return v;
    }
    cr_assert_fail("no key of directory shard %u", dir);
    return (pith_vref_t){0};
}

uint64_t test_flick_t0;

static uint64_t flick_wait(const struct test_flick *q)
{
    uint64_t shared = ((uint64_t)q->round * 2654435761u >> 7) % (8 * MS);
    uint64_t own = ((uint64_t)(q->round + 1) * (q->sender + 1) * 40503u) % q->own_ns;
    uint64_t at = test_flick_t0 + q->round * TEST_FLICK_SLOT + shared + own, now = pith_now_ns();
    return at > now ? at - now : 1000;
}

void test_flick_fn(void *arg)
{
    struct test_flick *q = arg;
    for (uint32_t i = 0; i < q->burst; i++) {
        uint64_t x = (uint64_t)q->sender << 32 | q->seq;
        int rc = pith_vsend(q->v, q->seq_type, &x, sizeof(x));
        if (rc == 0)
            q->seq++;
        else if (rc == -EAGAIN)
            break; /* pushed back: the same number goes next time */
        else
            TEST_NOTE(q->err, rc);
    }
    if (++q->round < q->rounds) {
        int rc = pith_timer_add(flick_wait(q), 0, test_flick_fn, q, NULL);
        if (rc == 0)
            return;
        TEST_NOTE(q->err, rc);
    }
    atomic_store(&q->done, 1);
}

void *test_flick_outside(void *arg)
{
    struct test_flick *q = arg;
    pith_client_t *c = pith_client_self();
    for (q->round = 0; q->round < q->rounds; q->round++) {
        /* The wait: nothing comes to this client, so the receive waits out its timeout. */
        pith_msg_t m;
        int rc = pith_client_receive(c, &m, flick_wait(q));
        if (rc != -ETIMEDOUT)
            TEST_NOTE(q->err, rc == 0 ? -EPROTO : rc);
        for (uint32_t i = 0; i < q->burst; i++, q->seq++) {
            uint64_t x = (uint64_t)q->sender << 32 | q->seq;
            rc = pith_client_vsend(c, q->v, q->seq_type, &x, sizeof(x), PITH_FOREVER);
            if (rc != 0) {
                TEST_NOTE(q->err, rc);
                return NULL;
            }
        }
        if (q->off_type != 0 && q->round % 9 == 8 &&
            pith_client_vsend(c, q->v, q->off_type, NULL, 0, PITH_FOREVER) != 0)
            TEST_NOTE(q->err, -EPROTO);
    }
    atomic_store(&q->done, 1);
    return NULL;
}
