#!/usr/bin/env python3
"""pith-kv beside a real redis-server: both started here on loopback ports, both sent the same
commands, and their replies compared byte for byte (time-dependent integers within a
tolerance). Also: keys that expire go within about a second among many that do not, on both.
TAP on stdout; not a benchmark.

    kv_redis.py PITH_KV REDIS_SERVER

redis-server (Debian package redis-server, which ./pith.sh installs) is a declared dependency:
without it the test fails rather than skips."""

import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kv_integration import (  # noqa: E402
    HOST, STOP_TIMEOUT, Conn, Failure, Server, Tap, check, cmd, free_port, show, wait_until)


class Redis:
    """redis-server on a free loopback port, no persistence, stopped by stop()."""

    def __init__(self, exe):
        self.exe = exe
        self.proc = None
        self.port = None

    def start(self):
        for _ in range(3):
            self.port = free_port()
            self.dir = tempfile.TemporaryDirectory()
            self.proc = subprocess.Popen(
                [self.exe, "--port", str(self.port), "--bind", HOST, "--save", "",
                 "--appendonly", "no", "--dir", self.dir.name, "--daemonize", "no",
                 "--protected-mode", "no"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def up():
                if self.proc.poll() is not None:
                    return "exited"
                try:
                    with Conn(self.port, timeout=1.0) as c:
                        return c.call("PING") == ("+", "PONG")
                except OSError:
                    return False

            state = wait_until(up, 20.0, "redis-server answering PING")
            if state is True:
                return self
        raise Failure("redis-server did not start on a free port after 3 tries")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


# ---- the same commands to both ----

# Each case is a list of commands sent in order on one connection (after FLUSHALL), with the
# replies compared. A command may carry a tolerance for an integer reply that depends on the
# clock: ("PTTL", "k", {"tol": 1000}).
NOW_S = int(time.time())
CASES = {
    "SET's options": [
        ("SET", "k", "v"), ("SET", "k", "v", "NX"), ("SET", "k", "w", "XX"), ("GET", "k"),
        ("SET", "k", "v", "GET"), ("SET", "k", "x", "NX", "GET"), ("SET", "n", "v", "XX", "GET"),
        ("GET", "n"), ("SET", "k", "v", "GET", "GET"), ("SET", "k", "v", "NX", "XX"),
        ("SET", "k", "v", "EX", "10", "PX", "100"), ("SET", "k", "v", "EX", "10", "EXAT", "10"),
        ("SET", "k", "v", "KEEPTTL", "EX", "10"), ("SET", "k", "v", "EX", "10", "KEEPTTL"),
        ("SET", "k", "v", "EX", "abc", "NX", "XX"), ("SET", "k", "v", "EX", "abc"),
        ("SET", "k", "v", "EX", "0"), ("SET", "k", "v", "PX", "-5"),
        ("SET", "k", "v", "EX", "9223372036854775"), ("SET", "k", "v", "EX", "9223372036854776"),
        ("SET", "k", "v", "PX", "9223372036854775807"),
        ("SET", "k", "v", "EXAT", "9223372036854775"), ("SET", "k", "v", "EX"),
        ("SET", "k", "v", "EX", "10", "EX", "20"), ("TTL", "k", {"tol": 1}),
        ("SET", "k", "v", "KEEPTTL"), ("TTL", "k", {"tol": 1}),
        ("SET", "k", "v", "PXAT", str((NOW_S + 100) * 1000)), ("PEXPIRETIME", "k"),
        ("SET", "k", "v", "EXAT", "1"), ("GET", "k"), ("EXISTS", "k"),
    ],
    "EXPIRE's limits and options": [
        ("SET", "k", "v"), ("EXPIRE", "k", "9223370399119966"),
        ("EXPIRE", "k", "9223372036854776"), ("PEXPIRE", "k", "9223370399119966000"),
        ("PEXPIRE", "k", "9223372036854775807"), ("EXPIREAT", "k", "9223372036854775"),
        ("EXPIREAT", "k", "9223372036854776"), ("PEXPIREAT", "k", "9223372036854775807"),
        ("TTL", "k", {"tol": 1}), ("EXPIRE", "k", "-9223372036854776"), ("EXPIRE", "k", "abc"),
        ("EXPIRE", "k", "10", "NX", "XX"), ("EXPIRE", "k", "10", "GT", "LT"),
        ("EXPIRE", "k", "10", "FOO"), ("EXPIRE", "k", "abc", "FOO"),
        ("EXPIRE", "k", "abc", "NX"), ("EXPIRE", "k", "100", "GT"), ("EXPIRE", "k", "100", "XX"),
        ("EXPIRE", "k", "100", "LT"), ("TTL", "k", {"tol": 1}), ("EXPIRE", "k", "200", "LT"),
        ("EXPIRE", "k", "200", "GT"), ("TTL", "k", {"tol": 1}), ("EXPIRE", "k", "50", "NX"),
        ("EXPIRE", "k", "50", "NX", "NX"), ("PERSIST", "k"), ("PERSIST", "k"), ("TTL", "k"),
        ("EXPIRE", "k", "50", "NX"), ("PTTL", "k", {"tol": 1000}), ("EXPIRETIME", "k", {"tol": 2}),
        ("PEXPIRETIME", "k", {"tol": 2000}), ("EXPIRETIME", "nokey"), ("PERSIST", "nokey"),
        ("EXPIRE", "nokey", "10"), ("EXPIREAT", "k", str(NOW_S + 1000)),
        ("EXPIRETIME", "k"), ("PEXPIREAT", "k", str((NOW_S + 2000) * 1000)), ("PEXPIRETIME", "k"),
        ("EXPIREAT", "k", "1"), ("EXISTS", "k"), ("SET", "k", "v"),
        ("EXPIRE", "k", "-9223372036854775"), ("EXISTS", "k"), ("SET", "k", "v"),
        ("PEXPIRE", "k", "0"), ("GET", "k"), ("EXPIRE", "k"), ("EXPIREAT", "k"),
        ("PERSIST",), ("PERSIST", "a", "b"), ("EXPIRETIME", "a", "b"),
    ],
    "CONFIG": [
        ("CONFIG", "GET", "timeout"), ("CONFIG", "GET", "maxclients"), ("CONFIG", "GET", "TIMEOUT"),
        ("CONFIG", "GET", "save"), ("CONFIG", "GET", "appendonly"), ("CONFIG", "GET", "nomatch"),
        ("CONFIG", "GET", "timeout", "nomatch"), ("CONFIG", "GET", "maxmemory-policy"),
        ("CONFIG", "SET", "timeout", "abc"), ("CONFIG", "SET", "timeout", "-1"),
        ("CONFIG", "SET", "timeout", "2147483648"), ("CONFIG", "SET", "foo", "bar"),
        ("CONFIG", "SET", "timeout"), ("CONFIG", "GET"), ("CONFIG",), ("CONFIG", "foo"),
        ("CONFIG", "SET", "timeout", "1", "timeout", "2"),
        ("CONFIG", "SET", "timeout", "1", "TIMEOUT", "2"), ("CONFIG", "SET", "timeout", "10", "foo"),
        ("CONFIG", "SET", "databases", "3"), ("CONFIG", "SET", "maxclients", "0"),
        ("CONFIG", "SET", "timeout", "7", "maxclients", "0"), ("CONFIG", "GET", "timeout"),
        ("CONFIG", "SET", "timeout", "7", "maxclients", "5000"), ("CONFIG", "GET", "timeout"),
        ("CONFIG", "GET", "maxclients"),
        ("CONFIG", "SET", "timeout", "0", "maxclients", "10000"), ("CONFIG", "RESETSTAT"),
        ("CONFIG", "RESETSTAT", "x"),
    ],
    "CLIENT": [
        ("CLIENT",), ("CLIENT", "foo"), ("CLIENT", "GETNAME"), ("CLIENT", "SETNAME", "a b"),
        ("CLIENT", "SETNAME", "a\nb"), ("CLIENT", "SETNAME", "a", "b"),
        ("CLIENT", "SETNAME", "worker-1"), ("CLIENT", "GETNAME"), ("CLIENT", "SETNAME", ""),
        ("CLIENT", "GETNAME"), ("CLIENT", "ID", "x"), ("CLIENT", "KILL"),
        ("CLIENT", "KILL", "1.2.3.4:5"), ("CLIENT", "KILL", "ID", "99999"),
        ("CLIENT", "KILL", "ID", "abc"), ("CLIENT", "KILL", "ID", "0"), ("CLIENT", "KILL", "foo", "bar"),
        ("CLIENT", "KILL", "ID", "1", "SKIPME"), ("CLIENT", "KILL", "ADDR", "1.2.3.4:5"),
        ("CLIENT", "KILL", "SKIPME", "maybe"), ("CLIENT", "REPLY", "foo"), ("CLIENT", "REPLY"),
        ("CLIENT", "REPLY", "ON"), ("CLIENT", "LIST", "TYPE", "pubsub"),
        ("CLIENT", "LIST", "TYPE", "bogus"), ("CLIENT", "LIST", "ID", "abc"),
        ("CLIENT", "LIST", "ID", "99999"), ("CLIENT", "LIST", "foo"), ("CLIENT", "INFO", "x"),
    ],
    "maxmemory": [
        ("SET", "k", "v"), ("CONFIG", "SET", "maxmemory", "1"), ("SET", "a", "b"), ("INCR", "c"),
        ("DECRBY", "c", "2"), ("MSET", "a", "1", "b", "2"), ("GET", "k"), ("EXPIRE", "k", "100"),
        ("PERSIST", "k"), ("DEL", "k"), ("EXISTS", "k"), ("CONFIG", "SET", "maxmemory", "abc"),
        ("CONFIG", "SET", "maxmemory", "-1"), ("CONFIG", "SET", "maxmemory", "1x"),
        ("CONFIG", "GET", "maxmemory"), ("CONFIG", "SET", "maxmemory", "1gb"),
        ("CONFIG", "GET", "maxmemory"), ("SET", "a", "b"), ("CONFIG", "SET", "maxmemory", "5MB"),
        ("CONFIG", "GET", "maxmemory"), ("CONFIG", "SET", "maxmemory", "0"), ("SET", "a", "b"),
    ],
    "client limits": [
        ("CONFIG", "GET", "client-output-buffer-limit"), ("CONFIG", "GET", "proto-max-bulk-len"),
        ("CONFIG", "GET", "client-query-buffer-limit"),
        ("CONFIG", "SET", "client-output-buffer-limit", "normal 1mb 512kb 5"),
        ("CONFIG", "GET", "client-output-buffer-limit"),
        ("CONFIG", "SET", "client-output-buffer-limit", "normal 1mb 512kb"),
        ("CONFIG", "SET", "client-output-buffer-limit", "normal 1mb 512kb x"),
        ("CONFIG", "SET", "client-output-buffer-limit", "bogus 1mb 512kb 5"),
        ("CONFIG", "SET", "client-output-buffer-limit", "pubsub 1mb 512kb 5"),
        ("CONFIG", "GET", "client-output-buffer-limit"),
        ("CONFIG", "SET", "client-output-buffer-limit", "normal 0 0 0 pubsub 32mb 8mb 60"),
        ("CONFIG", "GET", "client-output-buffer-limit"),
        ("CONFIG", "SET", "maxmemory-clients", "abc"),
    ],
    "counters keep their expiry": [
        ("SET", "c", "1", "EX", "100"), ("INCR", "c"), ("TTL", "c", {"tol": 1}),
        ("INCRBY", "c", "10"), ("DECR", "c"), ("PTTL", "c", {"tol": 1000}),
    ],
}


def same_replies(a_port, b_port, script):
    """Runs the script on both servers and compares each reply."""
    with Conn(a_port) as a, Conn(b_port) as b:
        for c in (a, b):
            check(c.call("FLUSHALL") == ("+", "OK"), "FLUSHALL")
        for step in script:
            opts = step[-1] if step and isinstance(step[-1], dict) else {}
            args = step[:-1] if opts else step
            want, got = a.call(*args), b.call(*args)
            tol = opts.get("tol")
            if tol is not None and want[0] == ":" and got[0] == ":":
                check(abs(want[1] - got[1]) <= tol,
                      f"{args}: redis {want[1]}, pith-kv {got[1]} (tolerance {tol})")
            else:
                check(got == want, f"{args}: redis {show(want)}, pith-kv {show(got)}")


def raw_exchange(port, payload, end=b"+PONG\r\n"):
    """Sends payload, then reads until the bytes end with `end`: the exact byte stream."""
    with Conn(port) as c:
        c.send(payload)
        while not c.buf.endswith(end):
            c._fill()
        return bytes(c.buf)


def protocol_errors(a_port, b_port):
    """Malformed requests: the same error bytes from both (then both close)."""
    for payload in (b"*1\r\nfoo\r\n", b"*1\r\n\r\n", b"*2\r\n$3\r\nGET\r\n:1\r\n",
                    b"*abc\r\n", b"*1\r\n$abc\r\n", b"*1\r\n$-5\r\n"):
        got = []
        for port in (a_port, b_port):
            with socket.create_connection((HOST, port), timeout=10) as s:
                s.sendall(payload)
                data = b""
                while not data.endswith(b"\r\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                got.append(data)
        check(got[0] == got[1], f"{payload!r}: redis {got[0]!r}, pith-kv {got[1]!r}")


def client_reply_modes(a_port, b_port):
    """CLIENT REPLY OFF / SKIP / ON in one pipeline: the same bytes come back from both."""
    script = [("FLUSHALL",), ("SET", "r", "1"), ("CLIENT", "REPLY", "OFF"), ("SET", "r", "2"), ("GET", "r"),
              ("MGET", "r", "x", "y"), ("CLIENT", "REPLY", "SKIP"), ("CLIENT", "REPLY", "ON"),
              ("GET", "r"), ("CLIENT", "REPLY", "SKIP"), ("GET", "r"), ("DBSIZE",),
              ("CLIENT", "REPLY", "SKIP"), ("MGET", "r", "a", "b", "c"), ("INCR", "r"),
              ("CLIENT", "REPLY", "OFF"), ("CLIENT", "REPLY", "SKIP"), ("GET", "r"),
              ("CLIENT", "REPLY", "ON"), ("GET", "r"), ("PING",)]
    payload = b"".join(cmd(*c) for c in script)
    want, got = raw_exchange(a_port, payload), raw_exchange(b_port, payload)
    check(got == want, f"redis sent {want!r}, pith-kv sent {got!r}")


def clients_by_name(port):
    """CLIENT ID is unique, SETNAME shows in CLIENT LIST and INFO across shards, CLIENT KILL by
    ID and by ADDR closes that connection and counts it, and SKIPME spares the caller."""
    conns = [Conn(port) for _ in range(6)]
    try:
        ids = [c.call("CLIENT", "ID")[1] for c in conns]
        check(len(set(ids)) == 6 and all(i > 0 for i in ids), f"ids {ids}")
        for n, c in enumerate(conns):
            check(c.call("CLIENT", "SETNAME", f"c{n}") == ("+", "OK"), "SETNAME")
        listing = conns[0].call("CLIENT", "LIST")
        check(listing[0] == "$", f"CLIENT LIST: {show(listing)}")
        lines = listing[1].decode().splitlines()
        fields = [dict(f.split("=", 1) for f in line.split(" ")) for line in lines]
        mine = {int(f["id"]): f["name"] for f in fields}
        for n, i in enumerate(ids):
            check(mine.get(i) == f"c{n}", f"id {i} named {mine.get(i)!r} in {lines}")
        check(all(f["cmd"] in ("client|setname", "client|list") for f in fields
                  if int(f["id"]) in ids), f"cmd= fields: {[f['cmd'] for f in fields]}")
        info = conns[2].call("CLIENT", "INFO")[1].decode()
        check(f"id={ids[2]} " in info and " name=c2 " in info and info.endswith("\n"),
              f"CLIENT INFO: {info!r}")
        only = conns[0].call("CLIENT", "LIST", "ID", str(ids[3]), str(ids[4]))[1].decode()
        check(sorted(int(dict(f.split("=", 1) for f in l.split(" "))["id"])
                     for l in only.splitlines()) == sorted([ids[3], ids[4]]),
              f"CLIENT LIST ID: {only!r}")
        check(conns[0].call("CLIENT", "KILL", "ID", str(ids[1])) == (":", 1), "KILL ID")
        conns[1].expect_close()
        addr = next(f["addr"] for f in fields if int(f["id"]) == ids[2])
        check(conns[0].call("CLIENT", "KILL", "ADDR", addr) == (":", 1), "KILL ADDR")
        conns[2].expect_close()
        check(conns[3].call("CLIENT", "KILL", addr) == ("-", "ERR No such client"),
              "the old form for a client gone")
        own = next(f["addr"] for f in fields if int(f["id"]) == ids[3])
        check(conns[3].call("CLIENT", "KILL", "ADDR", own) == (":", 0), "SKIPME yes by default")
        check(conns[3].call("PING") == ("+", "PONG"), "the caller is spared")
        check(conns[3].call("CLIENT", "KILL", "ADDR", own, "SKIPME", "no") == (":", 1),
              "SKIPME no")
        conns[3].expect_close()
        for sub in (("NO-EVICT", "on"), ("PAUSE", "10"), ("TRACKING", "on")):
            got = conns[0].call("CLIENT", *sub)
            check(got[0] == "-" and "unknown subcommand" in got[1], f"CLIENT {sub}: {got}")
    finally:
        for c in conns:
            c.close()


def maxclients_line(port, limit):
    """With `limit` clients connected, the next one reads Redis's error line and is closed."""
    conns = []
    try:
        for _ in range(limit):
            conns.append(Conn(port))
            check(conns[-1].call("PING") == ("+", "PONG"), "a client within maxclients")
        extra = Conn(port)
        conns.append(extra)
        check(extra.reply() == ("-", "ERR max number of clients reached"), "the error line")
        extra.expect_close()
        conns.pop().close()
        # A place freed is a place taken again.
        conns.pop().close()
        wait_until(lambda: connected(port, conns[0]) == limit - 1, 5.0, "the close counted")
        again = Conn(port)
        conns.append(again)
        check(again.call("PING") == ("+", "PONG"), "a client after one left")
        stats = again.call("INFO", "stats")[1].decode()
        check("rejected_connections:1\r\n" in stats, f"INFO stats: {stats!r}")
    finally:
        for c in conns:
            c.close()


def connected(port, via):
    text = via.call("INFO", "clients")[1].decode()
    return int(text.split("connected_clients:")[1].split("\r\n")[0])


def many_idle_clients(port, n=1500):
    """More connections on one shard than the engine's default bound fits there (1,258 on a
    2-CPU box): with maxclients 10000 each is taken and answers."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 200), hard))
    conns = []
    try:
        for _ in range(n):
            conns.append(Conn(port))
        for c in conns:
            c.send(cmd("PING"))
        for c in conns:
            check(c.reply() == ("+", "PONG"), "PING on an idle connection")
    finally:
        for c in conns:
            c.close()


def idle_timeout(port, via_config):
    """An idle client is closed after `timeout` seconds; one that keeps talking is not."""
    with Conn(port) as admin:
        if via_config:
            check(admin.call("CONFIG", "SET", "timeout", "1") == ("+", "OK"), "CONFIG SET")
        idle, busy = Conn(port), Conn(port)
        try:
            check(idle.call("PING") == ("+", "PONG") and busy.call("PING") == ("+", "PONG"), "up")
            start = time.monotonic()
            while time.monotonic() - start < 2.5:
                check(busy.call("PING") == ("+", "PONG"), "the busy client")
                time.sleep(0.2)
            idle.expect_close(timeout=3.0)
            check(busy.call("PING") == ("+", "PONG"), "the busy client after 2.5 s")
        finally:
            idle.close()
            busy.close()
        if via_config:
            with Conn(port) as again:
                check(again.call("CONFIG", "SET", "timeout", "0") == ("+", "OK"), "reset")


def dbsize(port):
    with Conn(port) as c:
        return c.call("DBSIZE")[1]


def expire_among_many(port, plain=200000, soon=1000):
    """plain keys without expiry, then `soon` with PX 100: DBSIZE drops back to plain within
    about a second of their expiry (Redis's active expiry; nothing reads those keys)."""
    with Conn(port) as c:
        check(c.call("FLUSHALL") == ("+", "OK"), "FLUSHALL")
        batch = 1000
        for start in range(0, plain, batch):
            c.send(b"".join(cmd("SET", f"plain:{i}", "v") for i in range(start, start + batch)))
            for _ in range(batch):
                check(c.reply() == ("+", "OK"), "SET plain")
        c.send(b"".join(cmd("SET", f"soon:{i}", "v", "PX", "100") for i in range(soon)))
        for _ in range(soon):
            check(c.reply() == ("+", "OK"), "SET soon")
        set_at = time.monotonic()
    check(dbsize(port) <= plain + soon, "DBSIZE")
    wait_until(lambda: dbsize(port) == plain, 3.0,
               f"DBSIZE back to {plain} after {soon} keys with PX 100 expired")
    return time.monotonic() - set_at


def info_stat(c, section, name):
    for line in c.call("INFO", section)[1].decode().split("\r\n"):
        if line.startswith(name + ":"):
            return line.split(":", 1)[1]
    raise Failure(f"INFO {section} has no {name}")


def keyspace_stats(a_port, b_port):
    """keyspace_hits and keyspace_misses count as Redis counts them (the keys of GET, MGET,
    EXISTS, TTL and its kin, SET ... GET; not INCR, EXPIRE, SET NX, PERSIST), and
    avg_ttl estimates the keys' remaining TTL as Redis does, from the expiry cycle's samples."""
    got = {}
    for port in (a_port, b_port):
        with Conn(port) as c:
            check(c.call("FLUSHALL") == ("+", "OK"), "FLUSHALL")
            check(c.call("CONFIG", "RESETSTAT") == ("+", "OK"), "RESETSTAT")
            for args in [("SET", "a", "1"), ("GET", "a"), ("GET", "b"), ("MGET", "a", "b", "c"),
                         ("INCR", "n"), ("EXISTS", "a", "zz"), ("TTL", "a"), ("PTTL", "zz"),
                         ("SET", "a", "2", "GET"), ("SET", "q", "2", "GET"), ("EXPIRE", "a", "9"),
                         ("SET", "a", "3", "NX"), ("PERSIST", "a"), ("EXPIRETIME", "a")]:
                c.call(*args)
            got[port] = (info_stat(c, "stats", "keyspace_hits"),
                         info_stat(c, "stats", "keyspace_misses"))
            # avg_ttl from a fresh start (FLUSHALL zeroes it on both servers): an expiry cycle
            # that sampled "a" in its 9 s between EXPIRE and PERSIST above would start the
            # running average near 9 s, and it moves a fiftieth a cycle from there.
            check(c.call("FLUSHALL") == ("+", "OK"), "FLUSHALL")
            for i in range(100):
                c.call("SET", f"t{i}", "v", "EX", "1000")

            def avg_ttl():
                db0 = dict(f.split("=") for f in info_stat(c, "keyspace", "db0").split(","))
                return int(db0["avg_ttl"])

            wait_until(lambda: 900000 <= avg_ttl() <= 1000000, 5.0,
                       "avg_ttl near the keys' 1000 s")
    check(got[a_port] == got[b_port], f"hits, misses: redis {got[a_port]}, pith-kv {got[b_port]}")


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    exe, redis_exe = argv[1], argv[2]
    tap = Tap()
    found = bool(redis_exe) and os.access(redis_exe, os.X_OK)
    tap.run("redis-server is installed (Debian package redis-server)", check, found,
            f"redis-server not found ({redis_exe!r}): install it (./pith.sh deps)")
    if not found:
        return tap.finish()
    redis = Redis(redis_exe)
    if not tap.run("redis-server starts on a loopback port", redis.start):
        return tap.finish()
    kv = Server(exe, ["--shards", "2"])
    try:
        if tap.run("pith-kv starts on a loopback port", kv.start):
            for name, script in CASES.items():
                tap.run(f"same replies as redis-server: {name}", same_replies, redis.port,
                        kv.port, script)
            times = {}

            def timed(which, port):
                times[which] = expire_among_many(port)
                print(f"# {which}: 1000 PX 100 keys among 200000 gone "
                      f"{times[which] * 1000:.0f} ms after they were set", flush=True)

            tap.run("redis-server: expired keys go within about a second among 200,000",
                    timed, "redis-server", redis.port)
            tap.run("pith-kv: expired keys go within about a second among 200,000",
                    timed, "pith-kv", kv.port)
            tap.run("same bytes as redis-server: protocol errors", protocol_errors, redis.port,
                    kv.port)
            tap.run("same bytes as redis-server: CLIENT REPLY OFF, SKIP and ON in a pipeline",
                    client_reply_modes, redis.port, kv.port)
            tap.run("same as redis-server: keyspace_hits, keyspace_misses, avg_ttl",
                    keyspace_stats, redis.port, kv.port)
            tap.run("CLIENT ID, SETNAME, LIST, INFO and KILL across shards", clients_by_name,
                    kv.port)
            tap.run("CONFIG SET timeout 1 closes idle clients at run time", idle_timeout,
                    kv.port, True)
            tap.run("pith-kv is still running after the checks", kv.alive)
    finally:
        if kv.proc is not None:
            tap.run("pith-kv: SIGTERM stops it with status 0", kv.stop)
        redis.stop()

    # Connection limits, each on a server of its own.
    for tag, args, fn, fargs in [
        ("--maxclients 5: the sixth client reads Redis's error line",
         ["--shards", "2", "--maxclients", "5"], maxclients_line, (5,)),
        ("1,500 idle connections on one shard are all served", ["--shards", "1"],
         many_idle_clients, ()),
        ("--timeout 1 closes idle clients", ["--shards", "2", "--timeout", "1"], idle_timeout,
         (False,)),
    ]:
        server = Server(exe, args)
        if not tap.run(f"pith-kv {' '.join(args)} starts", server.start):
            continue
        try:
            tap.run(tag, fn, server.port, *fargs)
            tap.run(f"pith-kv {' '.join(args)} is still running", server.alive)
        finally:
            tap.run(f"pith-kv {' '.join(args)}: SIGTERM stops it", server.stop)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
