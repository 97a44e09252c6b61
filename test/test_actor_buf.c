/* Zero-copy payloads (pith_buf_t): a buffer sent to actors on both shards reaches them as the
 * very same bytes, can be kept past the behaviour, and goes back to its maker's heap once every
 * reference is gone, including those of messages that were dropped or never handled.
 * Actor code runs on shard threads and reports back through globals read after syncing. */
#include <stdatomic.h>
#include <string.h>

#include "util.h"

#define BUF_LEN (256 * 1024)

static struct {
    _Atomic unsigned handled;
    _Atomic unsigned same_bytes;  /* msg->data was the buffer's own bytes */
    _Atomic unsigned intact;      /* and they read back as written */
    _Atomic(pith_buf_t *) kept;   /* a reference kept past the behaviour */
    _Atomic unsigned kept_intact; /* checked later, from another shard */
} bt;

static const void *sent_data;

static int reader(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    if (msg->buf != NULL && msg->data == pith_buf_data(msg->buf) && msg->data == sent_data &&
        msg->len == BUF_LEN)
        atomic_fetch_add(&bt.same_bytes, 1);
    const unsigned char *p = msg->data;
    bool ok = msg->len == BUF_LEN;
    for (uint32_t i = 0; ok && i < msg->len; i += 4093)
        ok = p[i] == (unsigned char)(i * 7);
    if (ok)
        atomic_fetch_add(&bt.intact, 1);
    if (msg->type == 2) {
        pith_buf_t *none = NULL;
        atomic_compare_exchange_strong(&bt.kept, &none, pith_buf_ref(msg->buf));
    }
    atomic_fetch_add(&bt.handled, 1);
    return 0;
}

static const pith_actor_type_t reader_type = {.name = "buf.reader", .behaviour = reader};

static pith_ref_t readers[2];
static pith_ref_t stale;

static void *spawn_fn(void *arg)
{
    pith_ref_t *out = arg;
    return (void *)(intptr_t)pith_spawn(&reader_type, NULL, out);
}

static void *stop_fn(void *arg)
{
    return (void *)(intptr_t)pith_stop(*(pith_ref_t *)arg);
}

static void noop(void *arg)
{
    (void)arg;
}

static void *warm_fn(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)pith_submit(1, noop, NULL);
}

struct send_job {
    int rc[6];
};

/* On shard 0: one buffer to both readers (twice each, one asking to be kept), and to a stale
 * ref on each shard; then the maker drops its own reference. */
static void *send_fn(void *arg)
{
    struct send_job *j = arg;
    void *data;
    pith_buf_t *b = pith_buf_new(BUF_LEN, &data);
    if (b == NULL) {
        j->rc[0] = -ENOMEM;
        return NULL;
    }
    unsigned char *p = data;
    for (uint32_t i = 0; i < BUF_LEN; i++)
        p[i] = (unsigned char)(i * 7);
    sent_data = data;
    j->rc[0] = pith_send_buf(readers[0], 1, b);
    j->rc[1] = pith_send_buf(readers[1], 1, b);
    j->rc[2] = pith_send_buf(readers[1], 2, b);
    j->rc[3] = pith_send_buf(readers[0], 1, b);
    j->rc[4] = pith_send_buf(stale, 1, b); /* same shard: -ESRCH, the reference comes back */
    j->rc[5] = pith_send_buf(PITH_REF_NONE, 1, b);
    pith_buf_release(b);
    return NULL;
}

static void *check_kept_fn(void *arg)
{
    (void)arg;
    pith_buf_t *b = atomic_exchange(&bt.kept, NULL);
    const unsigned char *p = pith_buf_data(b);
    bool ok = b != NULL && pith_buf_len(b) == BUF_LEN;
    for (uint32_t i = 0; ok && i < BUF_LEN; i += 4093)
        ok = p[i] == (unsigned char)(i * 7);
    atomic_store(&bt.kept_intact, ok);
    pith_buf_release(b);
    return NULL;
}

Test(actor_buf, a_buffer_reaches_both_shards_uncopied_and_goes_home, .timeout = 60)
{
    pith_config_t cfg;
    pith_config_init(&cfg);
    cfg.shards = 2;
    test_start(&cfg);
    /* Shard 0 keeps the mesh batch it opens for shard 1 for reuse: open it before measuring. */
    cr_assert_eq(pith_call_wait(0, warm_fn, NULL, NULL), 0);
    test_sync_shard(1);
    pith_mem_stats_t before;
    cr_assert_eq(pith_mem_stats(0, &before), 0);
    for (unsigned s = 0; s < 2; s++)
        cr_assert_eq(pith_call_wait(s, spawn_fn, &readers[s], NULL), 0);
    cr_assert_eq(pith_call_wait(0, spawn_fn, &stale, NULL), 0);
    cr_assert_eq(pith_call_wait(0, stop_fn, &stale, NULL), 0);
    struct send_job j = {{0}};
    cr_assert_eq(pith_call_wait(0, send_fn, &j, NULL), 0);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(j.rc[i], 0, "send %d: %d", i, j.rc[i]);
    cr_assert_eq(j.rc[4], -ESRCH);
    cr_assert_eq(j.rc[5], -EINVAL);
    TEST_WAIT_FOR(atomic_load(&bt.handled) >= 4);
    cr_assert_eq(atomic_load(&bt.handled), 4);
    cr_assert_eq(atomic_load(&bt.same_bytes), 4, "a message saw a copy, not the buffer");
    cr_assert_eq(atomic_load(&bt.intact), 4);
    /* The kept reference outlives its message; shard 1 reads and drops it. */
    cr_assert_eq(pith_call_wait(1, check_kept_fn, NULL, NULL), 0);
    cr_assert(atomic_load(&bt.kept_intact), "the kept buffer did not read back");
    /* Every reference is gone: the buffer is back in shard 0's heap (after the actors are
     * gone and the table trimmed, as in_use counts both). */
    for (unsigned s = 0; s < 2; s++)
        cr_assert_eq(pith_call_wait(s, stop_fn, &readers[s], NULL), 0);
    pith_mem_stats_t after = {0};
    TEST_WAIT_FOR(pith_mem_stats(0, &after) == 0 && after.in_use == before.in_use);
    cr_assert_eq(after.in_use, before.in_use, "shard 0 holds %zu bytes, %zu before", after.in_use,
                 before.in_use);
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0);
}

Test(actor_buf, bad_arguments, .timeout = 30)
{
    void *data;
    errno = 0;
    cr_assert_null(pith_buf_new(16, NULL));
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(pith_buf_new((size_t)PITH_MSG_MAX, &data));
    cr_assert_eq(errno, EINVAL);
    cr_assert_eq(pith_send_buf(PITH_REF_NONE, 1, NULL), -EINVAL);
    cr_assert_null(pith_buf_ref(NULL));
    pith_buf_release(NULL);
    cr_assert_eq(pith_buf_len(NULL), 0);
    /* Outside the engine a buffer comes from the process heap and works the same. */
    pith_buf_t *b = pith_buf_new(100, &data);
    cr_assert_not_null(b);
    cr_assert_eq(pith_buf_data(b), data);
    cr_assert_eq(pith_buf_len(b), 100);
    cr_assert_eq(pith_buf_ref(b), b);
    pith_buf_release(b);
    pith_buf_release(b);
}
