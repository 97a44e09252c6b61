/* A virtual type's directory (core/vactor.c) as its users see it: keys found after others in
 * their buckets went (the filter each bucket keeps of its chain's hashes), a table that grows
 * with a burst and gives its memory back after it, and a listing that returns each activation
 * living through it exactly once while the table grows and shrinks between its pages.
 * Shards count into globals (atomics); only the test thread asserts. */
#include <stdio.h>
#include <string.h>

#include "vtest.h"

enum { ADD = 1, GET, OFF };

struct dstate {
    uint64_t n;
};

static _Atomic uint64_t activations;

static int d_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct dstate *st = state;
    if (msg->type == ADD)
        st->n++;
    else if (msg->type == GET)
        (void)pith_reply(msg, GET, &st->n, sizeof(st->n));
    else if (msg->type == OFF)
        (void)pith_vactor_deactivate(self);
    return 0;
}

static int d_activate(pith_actor_t *self, void *state, const void *key, uint32_t len, int reason)
{
    (void)self;
    (void)state;
    (void)key;
    (void)len;
    (void)reason;
    atomic_fetch_add(&activations, 1);
    return 0;
}

static const pith_actor_type_t d_actor = {
    .name = "dir-counter",
    .behaviour = d_behaviour,
    .state_size = sizeof(struct dstate),
};

static const pith_vtype_t d_type = {
    .name = "dir-counter",
    .actor = &d_actor,
    .on_activate = d_activate,
};

static void start(int shards)
{
    cr_assert_eq(pith_vtype_register(&d_type), 0);
    pith_config_t cfg = test_config(shards);
    test_start(&cfg);
}

static pith_vref_t key_ref(const char *prefix, uint64_t i)
{
    char key[32];
    int kl = snprintf(key, sizeof(key), "%s%llu", prefix, (unsigned long long)i);
    pith_vref_t v;
    cr_assert_eq(pith_vref(&d_type, key, (size_t)kl, &v), 0);
    return v;
}

static pith_vtype_stats_t stats(void)
{
    pith_vtype_stats_t st;
    cr_assert_eq(pith_vtype_stats(&d_type, &st), 0);
    return st;
}

/* On shard 0: one message of `type` to each of prefix<from..to), with a stride. */
struct sends {
    const char *prefix;
    uint64_t from, to, stride;
    uint32_t type;
    int err;
};

static void *send_fn(void *arg)
{
    struct sends *s = arg;
    for (uint64_t i = s->from; i < s->to && s->err == 0; i += s->stride) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "%s%llu", s->prefix, (unsigned long long)i);
        pith_vref_t v;
        s->err = pith_vref(&d_type, key, (size_t)kl, &v);
        if (s->err == 0)
            s->err = pith_vsend(&v, s->type, NULL, 0);
    }
    return NULL;
}

/* In tasks of 2,000 keys: no one task holds the shard for long. */
static void send_on0(const char *prefix, uint64_t from, uint64_t to, uint64_t stride, uint32_t type)
{
    for (uint64_t at = from; at < to; at += 2000 * stride) {
        struct sends s = {prefix, at,   at + 2000 * stride < to ? at + 2000 * stride : to,
                          stride, type, 0};
        cr_assert_eq(pith_call_wait(0, send_fn, &s, NULL), 0);
        cr_assert_eq(s.err, 0, "pith_vsend: %d", s.err);
    }
}

static uint64_t ask(const pith_vref_t *v)
{
    pith_msg_t reply;
    int rc = pith_client_vask(pith_client_self(), v, GET, NULL, 0, 5000 * MS, &reply);
    cr_assert_eq(rc, 0, "pith_client_vask: %d", rc);
    cr_assert_eq(reply.len, sizeof(uint64_t));
    uint64_t n;
    memcpy(&n, reply.data, sizeof(n));
    return n;
}

Test(vactor_dir, keys_are_found_after_their_bucket_neighbours_went, .timeout = 60)
{
    start(1);
    uint64_t n = scaled(20000);
    send_on0("k", 0, n, 1, ADD);
    TEST_WAIT_FOR(stats().live == n);
    /* Every other key goes: the bits they leave in their buckets' filters are stale. */
    send_on0("k", 0, n, 2, OFF);
    TEST_WAIT_FOR(stats().live == n / 2);
    pith_vtype_stats_t st = stats();
    /* The keys left are each still their one activation: a second ADD reaches it. */
    send_on0("k", 1, n, 2, ADD);
    test_sync_all();
    pith_vtype_stats_t now = stats();
    cr_assert_eq(now.activations, st.activations, "%llu activations after, %llu before",
                 (unsigned long long)now.activations, (unsigned long long)st.activations);
    for (uint64_t i = 1; i < n; i += 2 * (n / 200) + 2) {
        pith_vref_t v = key_ref("k", i);
        cr_assert_eq(ask(&v), 2, "key k%llu", (unsigned long long)i);
    }
    /* And the keys that went come back new, once each: from 0. */
    for (uint64_t i = 0; i < n; i += 2 * (n / 100)) {
        pith_vref_t v = key_ref("k", i);
        cr_assert_eq(ask(&v), 0, "key k%llu", (unsigned long long)i);
    }
    test_stop(NULL);
}

/* Pages of a listing of shard 0, with the table made to double several times, then to shrink
 * back, between pages: each of the keys that live throughout comes exactly once. */
Test(vactor_dir, a_listing_returns_each_activation_once_while_the_table_resizes, .timeout = 120)
{
    start(2);
    enum { STAY = 60, PAGE = 3 }; /* few, so that even a small burst resizes the table */
    static pith_vref_t stay[STAY];
    static unsigned seen[STAY];
    /* Keys whose directory shard is 0, sent from a client: they live there. */
    for (unsigned i = 0; i < STAY; i++) {
        char prefix[16];
        snprintf(prefix, sizeof(prefix), "s%u-", i);
        stay[i] = test_vkey_on(&d_type, prefix, 0);
        cr_assert_eq(pith_client_vsend(pith_client_self(), &stay[i], ADD, NULL, 0, PITH_FOREVER),
                     0);
    }
    TEST_WAIT_FOR(stats().live == STAY);
    uint64_t burst = scaled(40000), cursor = 0;
    unsigned pages = 0, found = 0, others = 0;
    do {
        pith_vref_t page[PAGE];
        int got = pith_vactor_list(&d_type, 0, &cursor, page, PAGE);
        cr_assert_geq(got, 0, "pith_vactor_list: %d", got);
        pages++;
        for (int j = 0; j < got; j++) {
            unsigned i;
            if (sscanf((const char *)page[j].key, "s%u-", &i) == 1 && i < STAY &&
                page[j].len == stay[i].len && memcmp(page[j].key, stay[i].key, stay[i].len) == 0) {
                if (seen[i]++ == 0)
                    found++;
            } else {
                others++;
            }
        }
        /* A third of the way through: a burst grows the table (shard 0 holds a share of it);
         * two thirds: the burst goes and the table shrinks back. */
        if (pages == STAY / PAGE / 3) {
            send_on0("b", 0, burst, 1, ADD);
            TEST_WAIT_FOR(stats().live == STAY + burst);
        } else if (pages == 2 * STAY / PAGE / 3) {
            send_on0("b", 0, burst, 1, OFF);
            TEST_WAIT_FOR(stats().live == STAY);
        }
    } while (cursor != 0 && pages < 100000);
    cr_assert_eq(cursor, 0, "the listing did not end in %u pages", pages);
    cr_assert_gt(pages, 2 * STAY / PAGE / 3, "the listing ended before the table shrank");
    for (unsigned i = 0; i < STAY; i++)
        cr_assert_eq(seen[i], 1, "key %u listed %u times (%u pages, %u of the burst listed)", i,
                     seen[i], pages, others);
    cr_assert_eq(found, STAY);
    test_stop(NULL);
}

/* Keys of one hash (forced, as a 64-bit collision would be) come in one page. */
Test(vactor_dir, keys_of_one_hash_come_in_one_page, .timeout = 30)
{
    start(1);
    pith_vref_t v[3] = {key_ref("h", 0), key_ref("h", 1), key_ref("h", 2)};
    v[1].hash = v[2].hash = v[0].hash;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ask(&v[i]), 0);
    pith_vref_t filler = key_ref("f", 0);
    cr_assert_eq(ask(&filler), 0);
    /* Pages of 2: a page never splits the three; with room for them they come together. */
    uint64_t cursor = 0;
    unsigned same = 0, total = 0, pages = 0;
    do {
        pith_vref_t page[4];
        int got = pith_vactor_list(&d_type, 0, &cursor, page, pages % 2 ? 4 : 3);
        cr_assert_geq(got, 0);
        for (int j = 0; j < got; j++) {
            total++;
            same += page[j].hash == v[0].hash;
        }
        cr_assert(got == 0 || same == 0 || same == 3, "a page split the keys of one hash");
        pages++;
    } while (cursor != 0 && pages < 1000);
    cr_assert_eq(same, 3);
    cr_assert_eq(total, 4);
    /* Pages of 2: two of the three, as the header says, and the listing still ends. */
    cursor = 0;
    same = total = pages = 0;
    do {
        pith_vref_t page[2];
        int got = pith_vactor_list(&d_type, 0, &cursor, page, 2);
        cr_assert_geq(got, 0);
        for (int j = 0; j < got; j++) {
            total++;
            same += page[j].hash == v[0].hash;
        }
        pages++;
    } while (cursor != 0 && pages < 1000);
    cr_assert_eq(cursor, 0);
    cr_assert_eq(same, 2);
    cr_assert_eq(total, 3);
    test_stop(NULL);
}

/* The keys g<i> listed from shard 0 in pages of 5, each page followed by `then` (an activation
 * of a new key, or nothing); seen[i] counts each g<i>. */
static void list_g(unsigned n, unsigned *seen, unsigned *extra)
{
    uint64_t cursor = 0;
    unsigned pages = 0;
    memset(seen, 0, n * sizeof(*seen));
    do {
        pith_vref_t page[5];
        int got = pith_vactor_list(&d_type, 0, &cursor, page, 5);
        cr_assert_geq(got, 0, "pith_vactor_list: %d", got);
        for (int j = 0; j < got; j++) {
            unsigned i;
            if (page[j].key[0] == 'g' && sscanf((const char *)page[j].key, "g%u", &i) == 1 && i < n)
                seen[i]++;
        }
        if (extra != NULL) {
            pith_vref_t v = key_ref("x", (*extra)++);
            cr_assert_eq(ask(&v), 0);
        }
    } while (cursor != 0 && ++pages < 100000);
    cr_assert_eq(cursor, 0);
}

/* On one shard the table doubles as the 129th, 257th, 513th and 1025th keys come, and shrinks
 * to a quarter when 127 are left of 1,024 buckets; each time its old buckets move a few at
 * each later insertion or removal. A listing made right then finds entries in both tables. */
Test(vactor_dir, a_listing_finds_every_activation_while_the_table_empties_into_another,
     .timeout = 60)
{
    start(1);
    enum { G = 1025, LEFT = 127 };
    static unsigned seen[G];
    send_on0("g", 0, G, 1, ADD);
    TEST_WAIT_FOR(stats().live == G);
    unsigned extra = 0;
    list_g(G, seen, &extra); /* a new key after each page: the doubling's move goes on */
    for (unsigned i = 0; i < G; i++)
        cr_assert_eq(seen[i], 1, "g%u listed %u times", i, seen[i]);
    /* The extra keys go, then all but LEFT of the g keys. */
    send_on0("x", 0, extra, 1, OFF);
    send_on0("g", LEFT, G, 1, OFF);
    TEST_WAIT_FOR(stats().live == LEFT);
    list_g(G, seen, NULL);
    for (unsigned i = 0; i < G; i++)
        cr_assert_eq(seen[i], i < LEFT ? 1u : 0u, "g%u listed %u times", i, seen[i]);
    /* And every one left is found by its next message, in whichever table it is. */
    send_on0("g", 0, LEFT, 1, ADD);
    test_sync_all();
    for (unsigned i = 0; i < LEFT; i += 7) {
        pith_vref_t v = key_ref("g", i);
        cr_assert_eq(ask(&v), 2, "g%u", i);
    }
    cr_assert_eq(stats().live, LEFT);
    test_stop(NULL);
}

/* A lookup that finds its entry behind others in its chain moves it to the front. Keys sent
 * in one order, then the reverse, then a stride, with new keys coming between them (so the
 * table doubles, and its buckets move, while chains are reordered): each key is still its one
 * activation, with every message it was sent. */
Test(vactor_dir, keys_keep_their_messages_while_lookups_reorder_their_chains, .timeout = 120)
{
    start(1);
    uint64_t n = scaled(6000);
    send_on0("m", 0, n, 1, ADD);
    TEST_WAIT_FOR(stats().live == n);
    /* Reverse order, each key then a new one: at full scale the 6,000 new keys make the table
     * double (at 8,192 entries) while chains are reordered. */
    for (uint64_t hi = n, lo; hi > 0; hi = lo) {
        lo = hi > 500 ? hi - 500 : 0;
        send_on0("m", lo, hi, 1, ADD);
        send_on0("new", lo, hi, 1, ADD);
    }
    for (uint64_t s0 = 0; s0 < 7; s0++)
        send_on0("m", s0, n, 7, ADD);
    test_sync_all();
    TEST_WAIT_FOR(stats().live == 2 * n);
    cr_assert_eq(stats().activations, 2 * n);
    for (uint64_t i = 0; i < n; i += n / 150 + 1) {
        pith_vref_t v = key_ref("m", i);
        cr_assert_eq(ask(&v), 3, "key m%llu", (unsigned long long)i);
        pith_vref_t w = key_ref("new", i);
        cr_assert_eq(ask(&w), 1, "key new%llu", (unsigned long long)i);
    }
    test_stop(NULL);
}

/* Keys of every length around the inline limit (16 bytes: in the entry's block before the
 * state; longer ones after it) and the 8-, 4- and 2-byte loads of the comparison: keys that
 * differ in their first, a middle or their last byte are each their own activation, and a
 * listing gives each back byte for byte. Pairs are forced onto one hash, as a 64-bit collision
 * would be, so the comparison of the keys decides. */
Test(vactor_dir, keys_of_every_length_near_the_inline_limit_stay_apart, .timeout = 60)
{
    start(1);
    static const uint32_t lens[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 31, 64, PITH_VKEY_MAX};
    enum { L = sizeof(lens) / sizeof(lens[0]), V = 4 };
    static pith_vref_t refs[L][V];
    for (unsigned i = 0; i < L; i++) {
        unsigned char key[PITH_VKEY_MAX];
        for (uint32_t b = 0; b < lens[i]; b++)
            key[b] = (unsigned char)('a' + (b + i) % 26);
        for (unsigned k = 0; k < V; k++) {
            unsigned char kk[PITH_VKEY_MAX];
            memcpy(kk, key, lens[i]);
            /* 0: as made; 1: its first byte changed; 2: a middle one; 3: its last one. */
            if (k == 1)
                kk[0] ^= 0x40;
            else if (k == 2)
                kk[lens[i] / 2] ^= 0x01;
            else if (k == 3)
                kk[lens[i] - 1] ^= 0x20;
            if (lens[i] == 1 && k > 1)
                kk[0] ^= (unsigned char)(k * 3); /* one byte: still four different keys */
            cr_assert_eq(pith_vref(&d_type, kk, lens[i], &refs[i][k]), 0);
            if (k > 0)
                refs[i][k].hash = refs[i][0].hash; /* one chain, one hash: only the key tells */
        }
    }
    /* Key k of length i gets i * V + k + 1 messages. */
    for (unsigned i = 0; i < L; i++)
        for (unsigned k = 0; k < V; k++)
            for (unsigned m = 0; m < i * V + k + 1; m++)
                cr_assert_eq(
                    pith_client_vsend(pith_client_self(), &refs[i][k], ADD, NULL, 0, PITH_FOREVER),
                    0);
    for (unsigned i = 0; i < L; i++)
        for (unsigned k = 0; k < V; k++)
            cr_assert_eq(ask(&refs[i][k]), i * V + k + 1, "length %u, variant %u", lens[i], k);
    cr_assert_eq(stats().live, L * V);
    /* The listing's keys are the ones sent, byte for byte. */
    static unsigned seen[L][V];
    uint64_t cursor = 0;
    unsigned pages = 0;
    do {
        pith_vref_t page[8];
        int got = pith_vactor_list(&d_type, 0, &cursor, page, 8);
        cr_assert_geq(got, 0);
        for (int j = 0; j < got; j++)
            for (unsigned i = 0; i < L; i++)
                for (unsigned k = 0; k < V; k++)
                    if (page[j].len == lens[i] && memcmp(page[j].key, refs[i][k].key, lens[i]) == 0)
                        seen[i][k]++;
    } while (cursor != 0 && ++pages < 1000);
    for (unsigned i = 0; i < L; i++)
        for (unsigned k = 0; k < V; k++)
            cr_assert_eq(seen[i][k], 1, "length %u, variant %u listed %u times", lens[i], k,
                         seen[i][k]);
    test_stop(NULL);
}
