/* pith_mem_pin and pith_mem_unpin: an application's pins on ranges of memory, kept per shard,
 * each until unpinned or until its time to live runs out. A pin locks the whole pages of its
 * range (mlock: faulted in and kept resident); an unpin unlocks only the pages no other pin of
 * the shard holds and that are not in an extent the engine keeps locked itself (the hot
 * profile, the warm one where mlock was allowed), since the kernel keeps no count of locks. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <pith/mem.h>

#include "core.h"
#include "mem.h"

#define PINS_MAX 64u /* pins per shard at once */
#define EXCL_MAX 80u /* ranges an unpin leaves alone: locked extents and the other pins */

struct pin {
    uintptr_t lo, hi;
    uint64_t id;
    pith_timer_id_t timer;
    bool timed;
};

struct pins {
    struct pin p[PINS_MAX];
    unsigned n;
    uint64_t next_id;
};

/* Adds [b, e) to the n ranges in ex, kept sorted by their start (a handful: insertion). */
static void range_add(uintptr_t *ex, unsigned *n, uintptr_t b, uintptr_t e)
{
    unsigned k = (*n)++;
    while (k > 0 && ex[2 * (k - 1)] > b) {
        ex[2 * k] = ex[2 * (k - 1)];
        ex[2 * k + 1] = ex[2 * (k - 1) + 1];
        k--;
    }
    ex[2 * k] = b;
    ex[2 * k + 1] = e;
}

/* Unlocks the pages of [lo, hi) outside the engine's locked extents and the shard's other pins
 * (all of ps's pins: the caller has taken this one out). */
static void unlock_free_pages(const struct pins *ps, uintptr_t lo, uintptr_t hi)
{
    uintptr_t found[2 * (EXCL_MAX - PINS_MAX)], ex[2 * EXCL_MAX];
    unsigned nx = mem_locked_extents(lo, hi, found, EXCL_MAX - PINS_MAX), n = 0;
    if (nx > EXCL_MAX - PINS_MAX)
        return; /* more locked extents than it can step around: it unlocks nothing */
    for (unsigned i = 0; i < nx; i++)
        range_add(ex, &n, found[2 * i], found[2 * i + 1]);
    for (unsigned i = 0; ps != NULL && i < ps->n; i++)
        if (ps->p[i].hi > lo && ps->p[i].lo < hi)
            range_add(ex, &n, ps->p[i].lo, ps->p[i].hi);
    /* The gaps between the sorted ranges left alone (which may overlap one another). */
    uintptr_t at = lo;
    for (unsigned k = 0; k < n && at < hi; k++) {
        uintptr_t b = ex[2 * k] > lo ? ex[2 * k] : lo, e = ex[2 * k + 1] < hi ? ex[2 * k + 1] : hi;
        if (b > at)
            (void)munlock((void *)at, b - at);
        if (e > at)
            at = e;
    }
    if (at < hi)
        (void)munlock((void *)at, hi - at);
}

static void pin_drop(struct core_shard *cs, unsigned i)
{
    struct pins *ps = cs->pins;
    struct pin p = ps->p[i];
    ps->p[i] = ps->p[--ps->n];
    if (p.timed)
        (void)pith_timer_cancel(p.timer);
    unlock_free_pages(ps, p.lo, p.hi);
}

static void pin_expire(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    struct core_shard *cs = core_self;
    struct pins *ps = cs != NULL ? cs->pins : NULL;
    for (unsigned i = 0; ps != NULL && i < ps->n; i++) {
        if (ps->p[i].id == id) {
            ps->p[i].timed = false; /* it fired: nothing to cancel */
            pin_drop(cs, i);
            return;
        }
    }
}

int pith_mem_pin(const void *p, size_t len, uint64_t ttl_ns, size_t *granted)
{
    if (granted != NULL)
        *granted = 0;
    if (p == NULL)
        return -EINVAL;
    if (pith_shard_id() < 0)
        return -EPERM;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL)
        return -ENOMEM;
    uintptr_t lo, hi;
    if (!mem_whole_pages(p, len, &lo, &hi))
        return 0;
    if (cs->pins == NULL && (cs->pins = calloc(1, sizeof(*cs->pins))) == NULL)
        return -ENOMEM;
    struct pins *ps = cs->pins;
    if (ps->n == PINS_MAX)
        return -ENOSPC;
    /* The whole range, inside locked extents too: their pages are locked on fault, and this
     * faults them in now. */
    if (mlock((void *)lo, hi - lo) != 0) {
        int err = -errno;
        unlock_free_pages(ps, lo, hi); /* a part may have been locked */
        return err;
    }
    struct pin *pn = &ps->p[ps->n];
    *pn = (struct pin){.lo = lo, .hi = hi, .id = ++ps->next_id};
    if (ttl_ns > 0) {
        int err = pith_timer_add(ttl_ns, 0, pin_expire, (void *)(uintptr_t)pn->id, &pn->timer);
        if (err) {
            unlock_free_pages(ps, lo, hi);
            return err;
        }
        pn->timed = true;
    }
    ps->n++;
    if (granted != NULL)
        *granted = hi - lo;
    return 0;
}

int pith_mem_unpin(const void *p, size_t len)
{
    if (p == NULL)
        return -EINVAL;
    if (pith_shard_id() < 0)
        return -EPERM;
    struct core_shard *cs = core_self;
    struct pins *ps = cs != NULL ? cs->pins : NULL;
    uintptr_t lo, hi;
    if (!mem_whole_pages(p, len, &lo, &hi))
        return -ENOENT;
    for (unsigned i = 0; ps != NULL && i < ps->n; i++) {
        if (ps->p[i].lo == lo && ps->p[i].hi == hi) {
            pin_drop(cs, i);
            return 0;
        }
    }
    return -ENOENT;
}

void core_pins_free(struct core_shard *cs)
{
    while (cs->pins != NULL && cs->pins->n > 0)
        pin_drop(cs, cs->pins->n - 1);
    free(cs->pins);
    cs->pins = NULL;
}
