/* Actors that the actor suites drive from the test's main thread through a client
 * (pith/client.h): kids that log their starts and ends, an agent that monitors and links on
 * command and reports to the client, an echo; and the client calls around them. Each test
 * begins and ends its engine with agents_begin and agents_end. Public API only; nothing here
 * sleeps. */
#ifndef PITH_TEST_AGENTS_H
#define PITH_TEST_AGENTS_H

#include "util.h"

#define SEC  (1000 * MS)
#define WAIT (20 * SEC) /* a client call's bound: reached only when something is wrong */

/* The test's client, open between agents_begin and agents_end. */
extern pith_client_t *cl;

/* Starts the engine with cfg, clears the kids' log and opens cl. */
void agents_begin(pith_config_t *cfg);
/* Closes cl and stops the engine: nothing leaked, nothing held by the shards' heaps, and no
 * kid found its state not zeroed. */
void agents_end(void);

/* fn(arg) on `shard` through cl; its result. */
void *on_shard(unsigned shard, pith_call_fn_t fn, void *arg);

/* ---- kids: each logs its starts and ends under its init's arg, KID(i), i < NKIDS ---- */

#define NKIDS   8
#define KID(i)  ((void *)(uintptr_t)(i))
#define K_NOP   1 /* nothing */
#define K_CRASH 2 /* the behaviour returns -EIO */
#define K_INC   3 /* count one more */
#define K_GET   4 /* an ask: the reply carries the count */
#define K_QUIT  5 /* pith_stop(self): ends normally */

struct kid_log {
    atomic_uint starts, ends;
    atomic_int reason;            /* of the last end */
    _Atomic uint64_t self;        /* the ref of the last start */
    atomic_uint start_at, end_at; /* the log's clock at the last start and end */
};
extern struct kid_log kid[NKIDS];
#define AT(i, what) atomic_load(&kid[i].what)

extern const pith_actor_type_t kid_type;
extern const pith_actor_type_t refusing_type; /* a kid whose init fails with -EPERM */

/* Kid ends so far, all kids together. */
unsigned kid_ends_total(void);
/* Sends a message of no bytes with tag `type` from cl. */
void tell(pith_ref_t to, uint32_t type);
/* A kid's count, through K_GET. */
uint64_t kid_count(pith_ref_t ref);
/* Whether an actor (any: a kid, a supervisor) lives: a send from its own shard says. */
bool alive(pith_ref_t ref);
/* pith_client_spawn through cl, asserted. */
pith_ref_t spawn(unsigned shard, const pith_actor_type_t *type, void *arg);

/* ---- the agent: runs monitor and link commands, forwards every DOWN to cl ---- */

enum {
    A_MONITOR = 10,
    A_DEMONITOR,
    A_LINK,
    A_UNLINK,
    A_TRAP,      /* trap exits when cmd.ref is not 0 */
    A_CRASH,     /* the behaviour returns -EIO */
    A_DRAIN,     /* answered once a round trip through cmd.ref (an echo) is back */
    A_IN_FLIGHT, /* the kid cmd.ref ends, stopped for cmd.undo A_DEMONITOR or killed for A_UNLINK,
                  * and the agent undoes before this shard can have handled what that end sent:
                  * it spins, running this command, until the kid's ends (kid[cmd.idx]) pass
                  * cmd.ends. It ends the kid itself when it is of its own shard; else it sets
                  * agent_spins and the test ends the kid. */
    R_DONE = 30, /* to cl: struct done */
    R_DOWN,      /* to cl: struct down_seen */
    R_ENDED,     /* to cl: the agent's exit reason (int32_t) */
    E_PING = 40,
};

struct cmd {
    pith_ref_t ref;
    uint32_t undo, idx, ends, pad;
};

struct done {
    uint32_t op;
    int32_t rc;
};

struct down_seen {
    pith_down_t down;
    uint32_t kid_ends; /* kid_ends_total() when the agent handled it */
};

extern atomic_bool agent_spins;
extern const pith_actor_type_t echo_type;

pith_ref_t spawn_agent(unsigned shard);
/* The next message for cl; notices of undelivered messages are passed over (only an agent that
 * dies in a race leaves some: its other messages say what happened). */
pith_msg_t next_msg(void);
/* The next message, which must have tag `type`. */
pith_msg_t expect(uint32_t type);
/* The next message, which must be a DOWN of `of`. */
struct down_seen expect_down(pith_ref_t of);
void send_cmd(pith_ref_t agent, uint32_t op, struct cmd c);
/* Runs one command on the agent and returns its result. */
int agent_do(pith_ref_t agent, uint32_t op, struct cmd c);
/* Waits until whatever echo_ref's shard sent the agent before now has arrived and been handled:
 * a DOWN among it comes to cl ahead of the answer. */
void drain(pith_ref_t agent, pith_ref_t echo_ref);

#endif
