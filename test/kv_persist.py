#!/usr/bin/env python3
"""pith-kv's persistence (--dir, --appendfsync): what a restart brings back after SIGTERM in each
mode, the shard count a data directory was made with, BGREWRITEAOF (the journal shrinks to the
live keys, which come back), and kill -9 under concurrent writes with
appendfsync always, 20 times: every acknowledged write is there after the restart, and nothing
that was not sent (an INCR counter is at least its acknowledged count and at most its sent
count). TAP on stdout.

    kv_persist.py PITH_KV [KILLS]"""

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kv_integration import (OK, Conn, Failure, Server, Tap, bulk, check,  # noqa: E402
                            cmd, integer, wait_until)

COUNTERS = 16


def start(exe, d, mode, shards="2"):
    return Server(exe, ["--shards", shards, "--dir", d, "--appendfsync", mode]).start()


def check_restart(exe, mode):
    d = tempfile.mkdtemp(prefix="pith-kv-persist-")
    try:
        s = start(exe, d, mode)
        with Conn(s.port) as c:
            c.expect(["SET", "a", "1"], OK)
            c.expect(["INCR", "a"], integer(2))
            c.expect(["SET", "b", "hello", "EX", "1000"], OK)
            c.expect(["SET", "gone", "x", "PX", "50"], OK)
            c.expect(["MSET", "c", "1", "d", "2", "e", "3"], OK)
            c.expect(["DEL", "c", "nothing"], integer(1))
            c.expect(["SET", "p", "v", "EX", "1000"], OK)
            c.expect(["PERSIST", "p"], integer(1))
            c.expect(["SET", "big", "x" * 200000], OK)
        s.stop()
        time.sleep(0.1)  # "gone" expires meanwhile
        s = start(exe, d, mode)
        with Conn(s.port) as c:
            c.expect(["MGET", "a", "b", "c", "d", "e", "gone", "p"],
                     ("*", [bulk("2"), bulk("hello"), ("$", None), bulk("2"), bulk("3"),
                            ("$", None), bulk("v")]))
            ttl = c.call("TTL", "b")
            check(ttl[0] == ":" and 990 <= ttl[1] <= 1000, f"TTL b after the restart: {ttl}")
            c.expect(["TTL", "p"], integer(-1))
            big = c.call("GET", "big")
            check(big == bulk("x" * 200000), "the 200 kB value came back whole")
            c.expect(["FLUSHALL"], OK)
            c.expect(["SET", "after", "flush"], OK)
        s.stop()
        s = start(exe, d, mode)
        with Conn(s.port) as c:
            c.expect(["DBSIZE"], integer(1))
            c.expect(["GET", "after"], bulk("flush"))
        s.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def check_shard_count(exe):
    d = tempfile.mkdtemp(prefix="pith-kv-persist-")
    try:
        s = start(exe, d, "always", "2")
        s.stop()
        r = subprocess.run([exe, "--port", "0", "--shards", "1", "--dir", d], capture_output=True,
                           timeout=20)
        check(r.returncode == 1, f"a start with 1 shard exited {r.returncode}")
        check(b"start it with --shards 2" in r.stderr, f"stderr: {r.stderr[-300:]!r}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def info_field(c, name):
    r = c.call("INFO", "persistence")
    for line in r[1].decode().split("\r\n"):
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    raise Failure(f"INFO persistence has no {name}: {r}")


def seg_files(d):
    n = 0
    for root, _, files in os.walk(d):
        n += sum(1 for f in files if f.endswith(".seg"))
    return n


def check_rewrite(exe, mode):
    """BGREWRITEAOF: the journal shrinks to about the live data, and every key's last value
    comes back after SIGTERM and after kill -9."""
    d = tempfile.mkdtemp(prefix="pith-kv-rewrite-")
    args = ["--shards", "2", "--dir", d, "--appendfsync", mode, "--journal-segment-bytes", "1mb"]
    try:
        s = Server(exe, args).start()
        last = {}
        with Conn(s.port) as c:
            for rnd in range(60):
                cmds = []
                for k in range(100):
                    v = f"{rnd}:{k}:" + "x" * 1000
                    last[f"key:{k}"] = v
                    cmds.append(["SET", f"key:{k}", v])
                c.send(b"".join(cmd(*a) for a in cmds))
                for _ in cmds:
                    check(c.reply() == OK, "SET")
            before = seg_files(d)
            check(before >= 6, f"{before} segment files before the rewrite")
            c.expect(["BGREWRITEAOF"], ("+", "Background append only file rewriting started"))
            wait_until(lambda: info_field(c, "aof_rewrites") >= 2 and
                       info_field(c, "aof_rewrite_in_progress") == 0, 30, "the rewrite's end")
            c.expect(["SET", "after", "rewrite"], OK)
        after = seg_files(d)
        check(after <= 4, f"{after} segment files after the rewrite ({before} before)")
        print(f"# {mode}: {before} segment files of 1 MiB before BGREWRITEAOF, {after} after",
              flush=True)
        s.stop()
        for how in ("SIGTERM", "kill -9"):
            s = Server(exe, args).start()
            with Conn(s.port) as c:
                for k, v in last.items():
                    c.expect(["GET", k], bulk(v))
                c.expect(["GET", "after"], bulk("rewrite"))
                c.expect(["DBSIZE"], integer(len(last) + 1))
            if how == "SIGTERM":
                s.stop()
            else:
                s.kill()
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Writer(threading.Thread):
    """Writes until its connection breaks: INCRs on shared counters, SETs of keys of its own.
    Records what was sent and what was acknowledged."""

    def __init__(self, port, tid, rnd):
        super().__init__(daemon=True)
        self.port, self.tid, self.rnd = port, tid, rnd
        self.sent = [0] * COUNTERS      # INCRs sent per counter
        self.acked_max = [0] * COUNTERS  # the largest INCR reply per counter
        self.acked_sets = {}            # key -> value, acknowledged
        self.sent_keys = set()
        self.n = 0

    def run(self):
        try:
            with Conn(self.port, timeout=5.0) as c:
                while True:
                    if self.rnd.random() < 0.6:
                        j = self.rnd.randrange(COUNTERS)
                        self.sent[j] += 1
                        r = c.call("INCR", f"cnt:{j}")
                        if r[0] == ":":
                            self.acked_max[j] = max(self.acked_max[j], r[1])
                    else:
                        k, v = f"s:{self.tid}:{self.n}", f"v{self.n}"
                        self.sent_keys.add(k)
                        r = c.call("SET", k, v)
                        if r == OK:
                            self.acked_sets[k] = v
                    self.n += 1
        except (OSError, EOFError, Failure):
            return  # the server was killed


def check_kill9(exe, kills, seed):
    rnd = random.Random(seed)
    d = tempfile.mkdtemp(prefix="pith-kv-kill-")
    sent = [0] * COUNTERS
    acked_sets, sent_keys = {}, set()
    total_acked = 0
    try:
        for k in range(kills):
            s = start(exe, d, "always")
            writers = [Writer(s.port, f"{k}.{t}", random.Random(rnd.random())) for t in range(8)]
            for w in writers:
                w.start()
            time.sleep(rnd.uniform(0.05, 0.3))
            s.kill()
            for w in writers:
                w.join(timeout=10)
                check(not w.is_alive(), "a writer did not stop after the kill")
            acked_max = [0] * COUNTERS
            for w in writers:
                for j in range(COUNTERS):
                    sent[j] += w.sent[j]
                    acked_max[j] = max(acked_max[j], w.acked_max[j])
                acked_sets.update(w.acked_sets)
                sent_keys |= w.sent_keys
                total_acked += len(w.acked_sets) + sum(1 for x in w.acked_max if x)
            s = start(exe, d, "always")
            with Conn(s.port) as c:
                for j in range(COUNTERS):
                    r = c.call("GET", f"cnt:{j}")
                    v = int(r[1]) if r[1] is not None else 0
                    check(acked_max[j] <= v <= sent[j],
                          f"kill {k}: counter {j} is {v}: acknowledged up to {acked_max[j]}, "
                          f"{sent[j]} INCRs sent in all")
                for key, val in acked_sets.items():
                    r = c.call("GET", key)
                    check(r == bulk(val), f"kill {k}: {key} acknowledged as {val}, now {r}")
                r = c.call("DBSIZE")
                check(r[1] <= len(sent_keys) + COUNTERS,
                      f"kill {k}: {r[1]} keys, more than the {len(sent_keys) + COUNTERS} sent")
            s.stop()
        print(f"# {kills} kills, {len(acked_sets)} acknowledged SETs checked, counters at "
              f"{sum(sent)} INCRs sent", flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    exe = argv[1]
    kills = int(argv[2]) if len(argv) > 2 else 20
    tap = Tap()
    for mode in ("always", "everysec", "no"):
        tap.run(f"appendfsync {mode}: SET, INCR, expiry, MSET, DEL, PERSIST, FLUSHALL come back "
                "after a restart", check_restart, exe, mode)
    tap.run("a data directory is refused to a start with another shard count",
            check_shard_count, exe)
    for mode in ("always", "everysec"):
        tap.run(f"appendfsync {mode}: BGREWRITEAOF shrinks the journal to the live keys, and "
                "they come back after SIGTERM and after kill -9", check_rewrite, exe, mode)
    seed = int(time.time())
    tap.run(f"appendfsync always: {kills} kills -9 under 8 writers lose no acknowledged write "
            f"(seed {seed})", check_kill9, exe, kills, seed)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
