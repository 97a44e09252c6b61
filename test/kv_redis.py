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
        ("TTL", "k"), ("EXPIRE", "k", "-9223372036854776"), ("EXPIRE", "k", "abc"),
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
            tap.run("pith-kv is still running after the checks", kv.alive)
    finally:
        if kv.proc is not None:
            tap.run("pith-kv: SIGTERM stops it with status 0", kv.stop)
        redis.stop()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
