/* Actors that the actor suites drive through a client, and the client calls around them (see
 * agents.h). */
#include "agents.h"

#include <inttypes.h>
#include <string.h>

pith_client_t *cl;

void *on_shard(unsigned shard, pith_call_fn_t fn, void *arg)
{
    void *res = NULL;
    int rc = pith_client_call(cl, shard, fn, arg, WAIT, &res);
    cr_assert_eq(rc, 0, "pith_client_call(%u): %d (%s)", shard, rc, pith_strerror(rc));
    return res;
}

/* ---- kids ---- */

struct kid_log kid[NKIDS];
static atomic_uint ticks;     /* orders every start and end, across the shards */
static atomic_uint bad_state; /* inits that found a state that was not zeroed */

struct kid_state {
    uint64_t count;
    unsigned idx;
};

static int kid_init(pith_actor_t *self, void *state, void *arg)
{
    struct kid_state *s = state;
    if (s->count != 0 || s->idx != 0)
        atomic_fetch_add(&bad_state, 1);
    s->idx = (unsigned)(uintptr_t)arg;
    atomic_store(&kid[s->idx].self, pith_self(self));
    atomic_store(&kid[s->idx].start_at, atomic_fetch_add(&ticks, 1) + 1);
    atomic_fetch_add(&kid[s->idx].starts, 1);
    return 0;
}

static int kid_behaviour(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct kid_state *s = state;
    switch (msg->type) {
    case K_CRASH:
        return -EIO;
    case K_INC:
        s->count++;
        return 0;
    case K_GET:
        return pith_reply(msg, K_GET, &s->count, sizeof(s->count));
    case K_QUIT:
        return pith_stop(pith_self(self));
    default:
        return 0;
    }
}

static void kid_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    struct kid_state *s = state;
    atomic_store(&kid[s->idx].end_at, atomic_fetch_add(&ticks, 1) + 1);
    atomic_store(&kid[s->idx].reason, reason);
    atomic_fetch_add(&kid[s->idx].ends, 1);
}

const pith_actor_type_t kid_type = {
    .name = "agents.kid",
    .behaviour = kid_behaviour,
    .state_size = sizeof(struct kid_state),
    .init = kid_init,
    .terminate = kid_terminate,
};

static int refusing_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    (void)state;
    (void)arg;
    return -EPERM;
}

const pith_actor_type_t refusing_type = {
    .name = "agents.refusing", .behaviour = kid_behaviour, .init = refusing_init};

unsigned kid_ends_total(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < NKIDS; i++)
        n += atomic_load(&kid[i].ends);
    return n;
}

void tell(pith_ref_t to, uint32_t type)
{
    int rc = pith_client_send(cl, to, type, NULL, 0, WAIT);
    cr_assert_eq(rc, 0, "pith_client_send(%#" PRIx64 ", %u): %d", to, type, rc);
}

uint64_t kid_count(pith_ref_t ref)
{
    pith_msg_t reply;
    int rc = pith_client_ask(cl, ref, K_GET, NULL, 0, WAIT, &reply);
    cr_assert_eq(rc, 0, "K_GET of %#" PRIx64 ": %d (%s)", ref, rc, pith_strerror(rc));
    uint64_t v;
    cr_assert_eq(reply.len, sizeof(v));
    memcpy(&v, reply.data, sizeof(v));
    return v;
}

struct probe {
    pith_ref_t ref;
    int rc;
};

static void *probe_fn(void *arg)
{
    struct probe *p = arg;
    p->rc = pith_send(p->ref, K_NOP, NULL, 0);
    return NULL;
}

/* A send from the actor's own shard is 0 or -ESRCH. */
bool alive(pith_ref_t ref)
{
    struct probe p = {.ref = ref, .rc = 12345};
    on_shard(pith_ref_shard(ref), probe_fn, &p);
    cr_assert(p.rc == 0 || p.rc == -ESRCH, "a send to %#" PRIx64 ": %d", ref, p.rc);
    return p.rc == 0;
}

/* ---- the agent ---- */

struct agent_state {
    pith_ref_t owner;
};

atomic_bool agent_spins;

static int agent(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    struct agent_state *s = state;
    struct cmd c = {0};
    if (msg->len == sizeof(c))
        memcpy(&c, msg->data, sizeof(c));
    struct done d = {.op = msg->type};
    switch (msg->type) {
    case PITH_MSG_DOWN: {
        struct down_seen seen = {.kid_ends = kid_ends_total()};
        memcpy(&seen.down, msg->data, sizeof(seen.down));
        return pith_send(s->owner, R_DOWN, &seen, sizeof(seen));
    }
    case A_MONITOR:
        d.rc = pith_monitor(self, c.ref);
        break;
    case A_DEMONITOR:
        d.rc = pith_demonitor(self, c.ref);
        break;
    case A_LINK:
        d.rc = pith_link(self, c.ref);
        break;
    case A_UNLINK:
        d.rc = pith_unlink(self, c.ref);
        break;
    case A_TRAP:
        pith_trap_exits(self, c.ref != 0);
        break;
    case A_CRASH:
        return -EIO;
    case A_DRAIN:
        /* The pong comes back behind whatever that shard sent here before it. */
        return pith_ask(c.ref, E_PING, NULL, 0, WAIT, NULL, NULL, NULL);
    case E_PING:
        d.op = A_DRAIN;
        break;
    case A_IN_FLIGHT: {
        /* The kid ends (by this agent's hand on its own shard, else by the test's) and the
         * agent undoes while what that end sent here cannot have been handled yet: this shard
         * is busy running this behaviour. */
        if (pith_ref_shard(c.ref) == (unsigned)pith_shard_id())
            d.rc = c.undo == A_DEMONITOR ? pith_stop(c.ref) : pith_kill(c.ref);
        else
            atomic_store(&agent_spins, true);
        uint64_t deadline = test_wait_deadline();
        while (atomic_load(&kid[c.idx].ends) == c.ends && pith_now_ns() < deadline)
            ;
        atomic_store(&agent_spins, false);
        if (d.rc == 0)
            d.rc = c.undo == A_DEMONITOR ? pith_demonitor(self, c.ref) : pith_unlink(self, c.ref);
        break;
    }
    default:
        return 0;
    }
    return pith_send(s->owner, R_DONE, &d, sizeof(d));
}

static int agent_init(pith_actor_t *self, void *state, void *arg)
{
    (void)self;
    ((struct agent_state *)state)->owner = (pith_ref_t)(uintptr_t)arg;
    return 0;
}

static void agent_terminate(pith_actor_t *self, void *state, int reason)
{
    (void)self;
    int32_t r = reason;
    (void)pith_send(((struct agent_state *)state)->owner, R_ENDED, &r, sizeof(r));
}

static const pith_actor_type_t agent_type = {
    .name = "agents.agent",
    .behaviour = agent,
    .state_size = sizeof(struct agent_state),
    .init = agent_init,
    .terminate = agent_terminate,
};

/* The echo answers an agent's drain. */
static int echo(pith_actor_t *self, void *state, const pith_msg_t *msg)
{
    (void)self;
    (void)state;
    return msg->type == E_PING ? pith_reply(msg, E_PING, NULL, 0) : 0;
}

const pith_actor_type_t echo_type = {.name = "agents.echo", .behaviour = echo};

pith_ref_t spawn(unsigned shard, const pith_actor_type_t *type, void *arg)
{
    pith_ref_t r = PITH_REF_NONE;
    int rc = pith_client_spawn(cl, shard, type, arg, WAIT, &r);
    cr_assert_eq(rc, 0, "pith_client_spawn(%s): %d (%s)", type->name, rc, pith_strerror(rc));
    return r;
}

pith_ref_t spawn_agent(unsigned shard)
{
    return spawn(shard, &agent_type, (void *)(uintptr_t)pith_client_ref(cl));
}

pith_msg_t next_msg(void)
{
    pith_msg_t m;
    do {
        int rc = pith_client_receive(cl, &m, WAIT);
        cr_assert_eq(rc, 0, "pith_client_receive: %d (%s)", rc, pith_strerror(rc));
    } while (m.type == PITH_MSG_UNDELIVERED);
    return m;
}

pith_msg_t expect(uint32_t type)
{
    pith_msg_t m = next_msg();
    cr_assert_eq(m.type, type, "got message %u where %u was due (R_DOWN is %u)", m.type, type,
                 R_DOWN);
    return m;
}

struct down_seen expect_down(pith_ref_t of)
{
    struct down_seen d;
    pith_msg_t m = expect(R_DOWN);
    memcpy(&d, m.data, sizeof(d));
    cr_assert_eq(d.down.ref, of, "a DOWN of %#" PRIx64 ", not %#" PRIx64, d.down.ref, of);
    return d;
}

void send_cmd(pith_ref_t a, uint32_t op, struct cmd c)
{
    int rc = pith_client_send(cl, a, op, &c, sizeof(c), WAIT);
    cr_assert_eq(rc, 0, "pith_client_send(%u): %d", op, rc);
}

int agent_do(pith_ref_t a, uint32_t op, struct cmd c)
{
    send_cmd(a, op, c);
    struct done d;
    pith_msg_t m = expect(R_DONE);
    memcpy(&d, m.data, sizeof(d));
    cr_assert_eq(d.op, op);
    return d.rc;
}

void agents_begin(pith_config_t *cfg)
{
    memset(kid, 0, sizeof(kid));
    atomic_store(&ticks, 0);
    atomic_store(&bad_state, 0);
    test_start(cfg);
    cl = pith_client_open(NULL);
    cr_assert_not_null(cl, "pith_client_open: errno %d", errno);
}

void agents_end(void)
{
    cr_assert_eq(atomic_load(&bad_state), 0, "an init found its state not zeroed");
    pith_client_close(cl);
    cl = NULL;
    pith_stop_report_t rep;
    test_stop(&rep);
    cr_assert_eq(rep.mem_in_use, 0, "%" PRIu64 " bytes still held at stop", rep.mem_in_use);
}

void drain(pith_ref_t agent_ref, pith_ref_t echo_ref)
{
    cr_assert_eq(agent_do(agent_ref, A_DRAIN, (struct cmd){.ref = echo_ref}), 0);
}
