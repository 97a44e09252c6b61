/* The shard's multi-producer inbox for threads outside the engine, and their eventfd wake-up. */
#include "shard.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

void shard_wake_external(struct shard *s)
{
    /* Dekker with the sleeper (see loop.c): our push above was a seq_cst-or-stronger RMW and
     * this fence keeps the load of sleep_state after it; the sleeper exchanges ASLEEP in and
     * then re-checks the inbox. One of us sees the other. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->sleep_state, memory_order_relaxed) != ASLEEP)
        return;
    uint32_t expect = ASLEEP;
    if (atomic_compare_exchange_strong(&s->sleep_state, &expect, WOKEN)) {
        uint64_t one = 1;
        ssize_t r = write(s->efd, &one, sizeof(one));
        (void)r; /* eventfd writes fail only on counter overflow, which still wakes */
    }
}

int inbox_push(struct shard *s, const struct task *t)
{
    struct inbox_node *node = malloc(sizeof(*node));
    if (node == NULL)
        return -ENOMEM;
    node->task = *t;
    /* Counted before it can be seen, so the stop protocol never finds a task it has not
     * counted. */
    atomic_fetch_add(&s->eng->ext_pushed, 1);
    struct inbox_node *head = atomic_load_explicit(&s->inbox, memory_order_relaxed);
    do {
        node->next = head;
        /* Release: the node's contents are visible to the shard's acquire exchange. */
    } while (!atomic_compare_exchange_weak_explicit(&s->inbox, &head, node, memory_order_release,
                                                    memory_order_relaxed));
    shard_wake_external(s);
    return 0;
}

bool inbox_pending(struct shard *s)
{
    return atomic_load_explicit(&s->inbox, memory_order_relaxed) != NULL;
}

/* Takes the whole stack and returns it oldest first. */
static struct inbox_node *take_all(struct shard *s)
{
    /* Acquire pairs with the pushers' release CAS: node contents are visible. */
    struct inbox_node *n = atomic_exchange_explicit(&s->inbox, NULL, memory_order_acquire);
    struct inbox_node *fifo = NULL;
    while (n != NULL) {
        struct inbox_node *next = n->next;
        n->next = fifo;
        fifo = n;
        n = next;
    }
    return fifo;
}

unsigned inbox_drain(struct shard *s)
{
    if (!inbox_pending(s))
        return 0;
    unsigned ran = 0;
    for (struct inbox_node *n = take_all(s); n != NULL; ran++) {
        struct inbox_node *next = n->next;
        struct task t = n->task;
        free(n);
        run_task(s, &t);
        n = next;
    }
    tasks_done(s);
    stat_add(&s->external_run, ran);
    stat_add(&s->st.external_in, ran);
    return ran;
}

void inbox_release(struct shard *s, uint64_t *released)
{
    for (struct inbox_node *n = take_all(s); n != NULL;) {
        struct inbox_node *next = n->next;
        task_released(&n->task);
        free(n);
        (*released)++;
        n = next;
    }
}
