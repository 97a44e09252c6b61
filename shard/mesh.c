/* The N x N mesh of SPSC rings between shards: batches, publishing, draining, giving batches
 * back to their owner. What a task does once it arrives is loop.c's business. */
#include "shard.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

int mesh_create(struct engine *e)
{
    size_t n = e->n;
    e->pairs = aligned_alloc(CACHE_LINE, n * n * sizeof(struct pair));
    if (e->pairs == NULL)
        return -ENOMEM;
    memset(e->pairs, 0, n * n * sizeof(struct pair));
    for (size_t i = 0; i < n * n; i++) {
        struct pair *p = &e->pairs[i];
        if (i / n == i % n)
            continue; /* a shard sends to itself through its local queue */
        if (ring_init(&p->ring, e->cfg.ring_batches) != 0)
            return -ENOMEM;
        atomic_init(&p->consumed, 0);
    }
    return 0;
}

static size_t batch_bytes(const struct engine *e)
{
    return sizeof(struct batch) + (size_t)e->cfg.batch_msgs * sizeof(struct task);
}

static struct batch *batch_get(struct shard *s)
{
    struct batch *b = s->free_batches;
    if (b != NULL) {
        s->free_batches = b->next;
    } else {
        size_t bytes = (batch_bytes(s->eng) + CACHE_LINE - 1) & ~(size_t)(CACHE_LINE - 1);
        b = pith_aligned_alloc(CACHE_LINE, bytes); /* from this shard's heap */
        if (b == NULL)
            return NULL;
    }
    b->next = NULL;
    b->count = 0;
    return b;
}

static void batch_put(struct shard *s, struct batch *b)
{
    b->next = s->free_batches;
    s->free_batches = b;
}

static void fifo_push(struct batch_fifo *f, struct batch *b)
{
    b->next = NULL;
    if (f->tail)
        f->tail->next = b;
    else
        f->head = b;
    f->tail = b;
}

static struct batch *fifo_pop(struct batch_fifo *f)
{
    struct batch *b = f->head;
    f->head = b->next;
    if (f->head == NULL)
        f->tail = NULL;
    return b;
}

/* Tasks that will never run: tell their owners (task_released) and count them. */
static void release_tasks(const struct task *t, uint32_t n, uint64_t *released)
{
    for (uint32_t i = 0; i < n; i++)
        task_released(&t[i]);
    *released += n;
}

static void free_list(struct batch *b, uint64_t *released)
{
    while (b != NULL) {
        struct batch *next = b->next;
        if (released != NULL)
            release_tasks(b->tasks, b->count, released);
        pith_free(b);
        b = next;
    }
}

int mesh_shard_init(struct shard *s)
{
    unsigned n = s->eng->n;
    s->out = calloc(n, sizeof(*s->out));
    s->dirty = calloc(n, sizeof(*s->dirty));
    if (s->out == NULL || s->dirty == NULL)
        return -ENOMEM;
    return 0;
}

/* Gives back to the free list the batches that dst has finished with. */
static void reclaim(struct shard *s, struct outbound *o, unsigned dst)
{
    if (o->sent.head == NULL)
        return;
    struct pair *p = mesh_pair(s->eng, s->id, dst);
    /* Acquire pairs with the consumer's release store in mesh_drain: its reads of these
     * batches are complete before we write into them again. */
    uint64_t done = atomic_load_explicit(&p->consumed, memory_order_acquire);
    while (o->sent.head != NULL && o->sent.head->seq < done)
        batch_put(s, fifo_pop(&o->sent));
}

static void mark_dirty(struct shard *s, struct outbound *o, unsigned dst)
{
    if (!o->dirty) {
        o->dirty = true;
        s->dirty[s->ndirty++] = dst;
    }
}

/* Pushes waiting batches into the ring, oldest first, until it is full. A batch of at most
 * ENVELOPE_TASKS tasks goes inline in its ring slot and straight back to the free list. */
static unsigned push_waiting(struct shard *s, struct outbound *o, unsigned dst)
{
    struct pair *p = mesh_pair(s->eng, s->id, dst);
    unsigned pushed = 0, msgs = 0;
    while (o->wait.head != NULL) {
        struct envelope *slot = ring_reserve(&p->ring);
        if (slot == NULL) {
            stat_add(&s->st.ring_full, 1);
            break;
        }
        struct batch *b = fifo_pop(&o->wait);
        o->waiting--;
        msgs += b->count;
        if (b->count <= ENVELOPE_TASKS) {
            slot->batch = NULL;
            slot->count = b->count;
            for (uint32_t i = 0; i < b->count; i++)
                slot->tasks[i] = b->tasks[i];
            batch_put(s, b);
        } else {
            slot->batch = b;
            b->seq = o->published;
            fifo_push(&o->sent, b);
        }
        /* Everything this shard wrote before the commit (the slot, the batch, whatever the
         * tasks point to) happens before dst's acquire of the slot (ring.h). */
        ring_commit(&p->ring, slot);
        o->published++;
        pushed++;
    }
    if (pushed) {
        stat_add(&s->st.batches_out, pushed);
        stat_add(&s->st.msgs_out, msgs);
    }
    return pushed;
}

static void wait_append(struct outbound *o, struct batch *b)
{
    fifo_push(&o->wait, b);
    o->waiting++;
}

/* Moves the open batch (if it holds anything) behind the waiting ones and pushes what fits. */
void mesh_flush(struct shard *s, struct outbound *o, unsigned dst)
{
    if (o->open != NULL && o->open->count > 0) {
        wait_append(o, o->open);
        o->open = NULL;
    }
    reclaim(s, o, dst);
    push_waiting(s, o, dst);
    if (o->room != NULL && o->waiting <= s->eng->cfg.backlog_batches / 2)
        room_fire(s, &o->room);
}

void room_fire(struct shard *s, struct room_wait **list)
{
    /* Oldest first: the list is newest first. */
    struct room_wait *fifo = NULL;
    for (struct room_wait *w = *list, *next; w != NULL; w = next) {
        next = w->next;
        w->next = fifo;
        fifo = w;
    }
    *list = NULL;
    while (fifo != NULL) {
        struct room_wait *w = fifo;
        if (lq_push(s, &w->task, true) != 0)
            break; /* out of memory: the rest wait for the next look */
        fifo = w->next;
        pith_free(w);
    }
    for (struct room_wait *w = fifo, *next; w != NULL; w = next) {
        next = w->next;
        w->next = *list;
        *list = w;
    }
}

/* At stop: callbacks that will never run are released (their owners told) and counted. */
void room_free(struct room_wait **list, uint64_t *released)
{
    for (struct room_wait *w = *list, *next; w != NULL; w = next) {
        next = w->next;
        task_released(&w->task);
        (*released)++;
        pith_free(w);
    }
    *list = NULL;
}

int pith_when_shard_room(unsigned shard, pith_fn_t fn, void *arg)
{
    struct shard *s = shard_cur;
    if (s == NULL)
        return atomic_load(&pith_engine.state) == ENGINE_OFF ? -ESHUTDOWN : -EPERM;
    if (fn == NULL || shard >= s->eng->n)
        return -EINVAL;
    if (atomic_load_explicit(&s->eng->state, memory_order_relaxed) != ENGINE_RUNNING)
        return -ESHUTDOWN;
    struct task t = {.fn = fn, .arg = arg};
    struct room_wait **list;
    if (shard == s->id) {
        if (lq_len(s) <= s->eng->cfg.local_queue_max / 2)
            return lq_push(s, &t, true);
        list = &s->lq_room;
    } else {
        struct outbound *o = &s->out[shard];
        if (o->waiting <= s->eng->cfg.backlog_batches / 2)
            return lq_push(s, &t, true);
        list = &o->room;
    }
    struct room_wait *w = pith_malloc(sizeof(*w));
    if (w == NULL)
        return -ENOMEM;
    w->task = t;
    w->next = *list;
    *list = w;
    return 0;
}

int mesh_open_batch(struct shard *s, unsigned dst, bool force)
{
    struct outbound *o = &s->out[dst];
    if (o->open != NULL && o->open->count >= s->eng->cfg.batch_msgs) {
        wait_append(o, o->open);
        o->open = NULL;
    }
    if (o->open != NULL)
        return 0;
    if (o->waiting > 0) {
        reclaim(s, o, dst);
        push_waiting(s, o, dst);
    }
    if (o->waiting >= s->eng->cfg.backlog_batches && !force) {
        stat_add(&s->st.backpressure, 1);
        return -EAGAIN;
    }
    if (s->free_batches == NULL)
        reclaim(s, o, dst);
    struct batch *b = batch_get(s);
    if (b == NULL)
        return -ENOMEM;
    o->open = b;
    mark_dirty(s, o, dst);
    return 0;
}

/* Step 3 of the loop: publish every destination's batches, then wake the ones that sleep. */
unsigned mesh_publish(struct shard *s)
{
    struct engine *e = s->eng;
    unsigned woke_candidates[64];
    unsigned ncand = 0, published = 0, keep = 0;
    bool overflow = false;

    for (unsigned i = 0; i < s->ndirty; i++) {
        unsigned dst = s->dirty[i];
        struct outbound *o = &s->out[dst];
        mesh_flush(s, o, dst);
        /* Batches pushed by shard_send when they filled up count too: compare with the last
         * check, not with the start of this flush. */
        if (o->published != o->wake_checked) {
            o->wake_checked = o->published;
            published++;
            if (ncand < 64)
                woke_candidates[ncand++] = dst;
            else
                overflow = true;
        }
        if (o->waiting > 0 || o->open != NULL)
            s->dirty[keep++] = dst;
        else
            o->dirty = false;
    }
    s->ndirty = keep;
    if (published == 0)
        return 0;

    /* Dekker with the sleeper in loop.c: we stored each slot's sequence (ring_commit, a
     * release store), it stored sleep_state = ASLEEP with a seq_cst exchange. Each side then
     * loads the other's variable. The full fence here keeps our load of sleep_state from
     * passing our sequence store, so at least one side sees the other:
     * either the sleeper finds the batch when it re-checks its rings, or we find it asleep. */
    atomic_thread_fence(memory_order_seq_cst);
    unsigned limit = overflow ? e->n : ncand;
    for (unsigned i = 0; i < limit; i++) {
        unsigned dst = overflow ? i : woke_candidates[i];
        if (dst == s->id)
            continue;
        struct shard *d = e->shards[dst];
        uint32_t st = atomic_load_explicit(&d->sleep_state, memory_order_seq_cst);
        if (st != ASLEEP)
            continue;
        /* One wake-up per sleep: only the waker that moves ASLEEP to WOKEN sends it. */
        uint32_t expect = ASLEEP;
        if (atomic_compare_exchange_strong(&d->sleep_state, &expect, WOKEN)) {
            if (io_ring_queue_wake(&s->io, d->ring_fd) == 0)
                stat_add(&s->st.wakes_sent, 1);
        }
    }
    return published;
}

/* Step 2 of the loop: run the tasks of inbound batches, starting where the last drain stopped
 * so that no source is favoured, until `budget` tasks ran. Returns the tasks run. */
unsigned mesh_drain(struct shard *s, unsigned budget)
{
    struct engine *e = s->eng;
    unsigned n = e->n, ran = 0, batches = 0;
    unsigned src = s->next_src;
    for (unsigned k = 0; k < n && ran < budget; k++, src = (src + 1 == n) ? 0 : src + 1) {
        if (src == s->id)
            continue;
        struct pair *p = mesh_pair(e, src, s->id);
        bool took = false;
        while (ran < budget) {
            const struct envelope *slot = ring_peek(&p->ring);
            if (slot == NULL)
                break;
            /* Past ring_advance the slot stays ours until ring_release: its tasks run from where
             * they lie. */
            struct batch *b = slot->batch;
            const struct task *tasks = b ? b->tasks : slot->tasks;
            uint32_t count = b ? b->count : slot->count;
            ring_advance(&p->ring);
            for (uint32_t i = 0; i < count; i++)
                run_task(s, &tasks[i]);
            took = true;
            batches++;
            ran += count;
            stat_add(&s->remote_run, count);
            /* Release pairs with the owner's acquire in reclaim(): every read of b above
             * happens before the owner reuses it. Inline entries have nothing to return. */
            if (b != NULL)
                atomic_store_explicit(&p->consumed, b->seq + 1, memory_order_release);
        }
        if (took)
            ring_release(&p->ring);
    }
    s->next_src = src;
    if (batches) {
        tasks_done(s);
        stat_add(&s->st.batches_in, batches);
        stat_add(&s->st.msgs_in, ran);
    }
    return ran;
}

bool mesh_inbound_pending(struct shard *s)
{
    struct engine *e = s->eng;
    for (unsigned src = 0; src < e->n; src++) {
        if (src == s->id)
            continue;
        if (ring_pending(&mesh_pair(e, src, s->id)->ring))
            return true;
    }
    return false;
}

/* After the shard threads are joined: count the tasks still sitting in the rings. Call before
 * mesh_shard_fini frees the batches those entries point to. */
void mesh_release_unrun(struct engine *e, uint64_t *released)
{
    for (size_t i = 0; i < (size_t)e->n * e->n; i++) {
        struct pair *p = &e->pairs[i];
        if (p->ring.slots == NULL)
            continue;
        for (const struct envelope *env; (env = ring_peek(&p->ring)) != NULL;) {
            if (env->batch == NULL)
                release_tasks(env->tasks, env->count, released);
            else
                release_tasks(env->batch->tasks, env->batch->count, released);
            ring_advance(&p->ring);
        }
    }
}

/* On the shard's thread as it leaves its loop: free the batches nobody can still read, into the
 * heap they came from. What other shards may still hold waits for mesh_shard_fini. */
void mesh_shard_exit(struct shard *s)
{
    if (s->out != NULL)
        for (unsigned d = 0; d < s->eng->n; d++)
            reclaim(s, &s->out[d], d);
    free_list(s->free_batches, NULL);
    s->free_batches = NULL;
}

/* After the shard threads are joined: count the tasks never published, free every batch. */
void mesh_shard_fini(struct shard *s, uint64_t *released)
{
    room_free(&s->lq_room, released);
    if (s->out != NULL) {
        for (unsigned d = 0; d < s->eng->n; d++) {
            struct outbound *o = &s->out[d];
            room_free(&o->room, released);
            free_list(o->open, released);
            free_list(o->wait.head, released);
            free_list(o->sent.head, NULL);
        }
    }
    free_list(s->free_batches, NULL);
    free(s->out);
    free(s->dirty);
    s->out = NULL;
    s->dirty = NULL;
    s->free_batches = NULL;
}

void mesh_destroy(struct engine *e)
{
    if (e->pairs == NULL)
        return;
    for (size_t i = 0; i < (size_t)e->n * e->n; i++)
        ring_fini(&e->pairs[i].ring);
    free(e->pairs);
    e->pairs = NULL;
}
