/* The registry: every shard keeps a replica of name -> ref. A change goes to the name's home
 * shard (a hash of the name), which applies it and passes it on to every other shard; the
 * mesh keeps each (home, shard) pair in order, so every replica sees the same sequence of
 * changes for a name. The shard of the ref keeps, per actor, the names it has (names_of), so
 * that they go when it ends. */
#include "core.h"

#include <errno.h>
#include <string.h>

enum {
    R_SET = 1,   /* at home: name -> ref */
    R_DEL,       /* at home: drop name */
    R_DEL_IF,    /* at home: drop name if it still names ref */
    R_APPLY_SET, /* at a replica */
    R_APPLY_DEL, /* at a replica */
};

struct reg_req {
    uint32_t op;
    uint32_t len;
    pith_ref_t ref;
    char name[PITH_NAME_MAX + 1];
};

struct reg_ent {
    struct reg_ent *next;
    pith_ref_t ref;
    uint32_t len;
    char name[PITH_NAME_MAX + 1];
};

struct name_of {
    struct name_of *next;
    uint32_t len;
    char name[PITH_NAME_MAX + 1];
};

/* The replica's current ref for name (PITH_REF_NONE), and the entry. */
static struct reg_ent *ent_get(struct core_shard *cs, const char *name, uint32_t len)
{
    for (struct reg_ent *e = map_get(&cs->registry, core_hash(name, len)); e != NULL; e = e->next)
        if (e->len == len && memcmp(e->name, name, len) == 0)
            return e;
    return NULL;
}

static void ent_del(struct core_shard *cs, const char *name, uint32_t len)
{
    uint64_t h = core_hash(name, len);
    struct reg_ent *head = map_get(&cs->registry, h), *prev = NULL;
    for (struct reg_ent *e = head; e != NULL; prev = e, e = e->next) {
        if (e->len != len || memcmp(e->name, name, len) != 0)
            continue;
        if (prev != NULL)
            prev->next = e->next;
        else if (e->next != NULL)
            map_put(&cs->registry, h, e->next); /* replaces: cannot fail */
        else
            map_del(&cs->registry, h);
        pith_free(e);
        return;
    }
}

static int ent_set(struct core_shard *cs, const char *name, uint32_t len, pith_ref_t ref)
{
    struct reg_ent *e = ent_get(cs, name, len);
    if (e != NULL) {
        e->ref = ref;
        return 0;
    }
    e = pith_malloc(sizeof(*e));
    if (e == NULL)
        return -ENOMEM;
    e->ref = ref;
    e->len = len;
    memcpy(e->name, name, len);
    e->name[len] = '\0';
    uint64_t h = core_hash(name, len);
    e->next = map_get(&cs->registry, h);
    if (map_put(&cs->registry, h, e) != 0) {
        pith_free(e);
        return -ENOMEM;
    }
    return 0;
}

/* Sends a change to shard dst's replica (or home), always through a queue, never run
 * nested in the caller: changes then reach each shard in the order they were made. From a
 * shard the send is forced past the mesh's bounds (a lost change would leave a replica wrong
 * for good); user calls (pith_register/unregister) come with force false and may see -EAGAIN. */
static int req_send(unsigned dst, uint32_t op, const char *name, uint32_t len, pith_ref_t ref,
                    bool force)
{
    struct reg_req *q = pith_malloc(sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    q->op = op;
    q->len = len;
    q->ref = ref;
    memcpy(q->name, name, len);
    q->name[len] = '\0';
    int err = force && pith_shard_id() >= 0 ? shard_submit_force(dst, core_reg_task, q)
                                            : pith_submit(dst, core_reg_task, q);
    if (err)
        pith_free(q);
    return err;
}

static unsigned home_of(const char *name, uint32_t len, unsigned n)
{
    return (unsigned)(core_hash(name, len) % n);
}

/* On the ref's shard: remember (or forget) that the actor has this name. */
static void name_note(struct core_shard *cs, const char *name, uint32_t len, pith_ref_t ref,
                      bool add)
{
    struct actor *a = core_lookup(cs, ref);
    struct name_of *head = map_get(&cs->names_of, ref), *prev = NULL;
    for (struct name_of *n = head; n != NULL; prev = n, n = n->next) {
        if (n->len != len || memcmp(n->name, name, len) != 0)
            continue;
        if (add)
            return;
        if (prev != NULL)
            prev->next = n->next;
        else if (n->next != NULL)
            map_put(&cs->names_of, ref, n->next);
        else
            map_del(&cs->names_of, ref);
        pith_free(n);
        return;
    }
    if (!add)
        return;
    if (a == NULL) {
        /* It ended before its name reached it: take the name back. */
        req_send(home_of(name, len, pith_shard_count()), R_DEL_IF, name, len, ref, true);
        return;
    }
    struct name_of *n = pith_malloc(sizeof(*n));
    if (n == NULL)
        return;
    n->len = len;
    memcpy(n->name, name, len);
    n->name[len] = '\0';
    n->next = head;
    if (map_put(&cs->names_of, ref, n) != 0) {
        pith_free(n);
        return;
    }
}

/* Applies a change to this shard's replica; the shard of a ref losing or gaining the name
 * hears of it. */
static void apply(struct core_shard *cs, const char *name, uint32_t len, pith_ref_t ref, bool set)
{
    struct reg_ent *e = ent_get(cs, name, len);
    pith_ref_t old = e != NULL ? e->ref : PITH_REF_NONE;
    if (set)
        (void)ent_set(cs, name, len, ref);
    else
        ent_del(cs, name, len);
    if (old != PITH_REF_NONE && old != ref) {
        if (ref_shard(old) == cs->id)
            name_note(cs, name, len, old, false);
    }
    if (set && old != ref && ref_shard(ref) == cs->id)
        name_note(cs, name, len, ref, true);
}

/* Only the home passes changes on; a replica that is not the old or new ref's shard still
 * tells those shards through its own apply: each shard is some replica. */
void core_reg_task(void *arg)
{
    struct reg_req *q = arg;
    struct core_shard *cs = core_shard_get();
    if (cs == NULL || cs->closing) {
        pith_free(q);
        return;
    }
    unsigned n = pith_shard_count();
    switch (q->op) {
    case R_SET:
    case R_DEL:
    case R_DEL_IF: {
        struct reg_ent *e = ent_get(cs, q->name, q->len);
        if (q->op == R_DEL_IF && (e == NULL || e->ref != q->ref))
            break;
        bool set = q->op == R_SET;
        apply(cs, q->name, q->len, q->ref, set);
        for (unsigned s = 0; s < n; s++)
            if (s != cs->id)
                (void)req_send(s, set ? R_APPLY_SET : R_APPLY_DEL, q->name, q->len, q->ref, true);
        break;
    }
    case R_APPLY_SET:
    case R_APPLY_DEL:
        apply(cs, q->name, q->len, q->ref, q->op == R_APPLY_SET);
        break;
    default:
        break;
    }
    pith_free(q);
}

static int name_check(const char *name, uint32_t *len)
{
    if (name == NULL)
        return -EINVAL;
    size_t n = strnlen(name, PITH_NAME_MAX + 1);
    if (n == 0 || n > PITH_NAME_MAX)
        return -EINVAL;
    *len = (uint32_t)n;
    return 0;
}

int pith_register(const char *name, pith_ref_t ref)
{
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    uint32_t len;
    if (name_check(name, &len) != 0 || ref_gen(ref) == 0 || ref_shard(ref) >= n)
        return -EINVAL;
    return req_send(home_of(name, len, n), R_SET, name, len, ref, false);
}

int pith_unregister(const char *name)
{
    unsigned n = pith_shard_count();
    if (n == 0)
        return -ESHUTDOWN;
    uint32_t len;
    if (name_check(name, &len) != 0)
        return -EINVAL;
    return req_send(home_of(name, len, n), R_DEL, name, len, PITH_REF_NONE, false);
}

pith_ref_t pith_whereis(const char *name)
{
    uint32_t len;
    if (pith_shard_id() < 0 || name_check(name, &len) != 0)
        return PITH_REF_NONE;
    struct core_shard *cs = core_shard_get();
    struct reg_ent *e = cs != NULL ? ent_get(cs, name, len) : NULL;
    return e != NULL ? e->ref : PITH_REF_NONE;
}

void core_names_end(struct core_shard *cs, pith_ref_t ref)
{
    struct name_of *n = map_del(&cs->names_of, ref);
    while (n != NULL) {
        struct name_of *next = n->next;
        if (!cs->closing)
            (void)req_send(home_of(n->name, n->len, pith_shard_count()), R_DEL_IF, n->name, n->len,
                           ref, true);
        pith_free(n);
        n = next;
    }
}

void core_registry_free(struct core_shard *cs)
{
    for (uint32_t i = 0; i < cs->registry.cap; i++) {
        struct reg_ent *e = cs->registry.ents[i].key ? cs->registry.ents[i].val : NULL;
        while (e != NULL) {
            struct reg_ent *next = e->next;
            pith_free(e);
            e = next;
        }
    }
    map_free(&cs->registry);
    for (uint32_t i = 0; i < cs->names_of.cap; i++) {
        struct name_of *x = cs->names_of.ents[i].key ? cs->names_of.ents[i].val : NULL;
        while (x != NULL) {
            struct name_of *next = x->next;
            pith_free(x);
            x = next;
        }
    }
    map_free(&cs->names_of);
}
