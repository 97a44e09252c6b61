#!/usr/bin/env python3
"""Reply amplification against pith-kv and redis-server, in one run: victims' latency with and
without an attacker on the same server, and the server's peak RSS.

    perf/kv_amplify.py PITH_KV [REDIS_SERVER] [--value-mib N] [--gets N] [--seconds S]
                       [--victims N] [--shards N]

The attacker sets one key to a value of --value-mib MiB, then writes --gets pipelined GETs of it
in one go (a few KB of requests) and reads the replies slowly (64 KiB every 10 ms). Each victim
runs GET of a small key in a loop on its own connection. pith-kv runs with --shards 1 by
default so that every connection shares the attacker's shard (with more, the kernel's hash
decides). Prints one line per server and phase: victims' requests, p50, p99 and max latency,
and the server's peak RSS (from /proc, sampled every 10 ms). A measurement, not a test: it
asserts nothing."""

import argparse
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test"))
from kv_integration import Conn, Server, cmd  # noqa: E402
from kv_redis import Redis  # noqa: E402


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def victims(port, n, seconds, out):
    lat = []
    lock = threading.Lock()

    def run():
        mine = []
        with Conn(port) as c:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                c.call("GET", "small")
                mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.extend(sorted(lat))


def attacker(port, gets, seconds, stop):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"".join(cmd("GET", "big") for _ in range(gets)))
    s.setblocking(False)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop.is_set():
        try:
            s.recv(65536)
        except BlockingIOError:
            pass
        except OSError:
            break
        time.sleep(0.01)
    s.close()


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e3 if xs else float("nan")


def measure(name, port, pid, args):
    with Conn(port) as c:
        c.call("FLUSHALL")
        c.call("SET", "small", "v")
        c.call("SET", "big", b"x" * (args.value_mib << 20))
    for phase in ("alone", "attacked"):
        lat, peak, stop = [], [0], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        att = None
        if phase == "attacked":
            att = threading.Thread(target=attacker, args=(port, args.gets, args.seconds, stop))
            att.start()
            time.sleep(0.05)
        victims(port, args.victims, args.seconds, lat)
        stop.set()
        if att:
            att.join()
        sampler.join()
        print(f"{name:13s} {phase:9s} victims {len(lat):7d} GETs  p50 {pct(lat, .5):7.3f} ms  "
              f"p99 {pct(lat, .99):8.3f} ms  max {pct(lat, 1.0):8.1f} ms  "
              f"server peak RSS {peak[0] / 1024:7.1f} MiB", flush=True)
        time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pith_kv")
    ap.add_argument("redis_server", nargs="?")
    ap.add_argument("--value-mib", type=int, default=4)
    ap.add_argument("--gets", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--victims", type=int, default=4)
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    print(f"# value {args.value_mib} MiB, {args.gets} GETs in one write, {args.victims} victims, "
          f"{args.seconds} s per phase, pith-kv --shards {args.shards}, {os.cpu_count()} CPUs",
          flush=True)
    kv = Server(args.pith_kv, ["--shards", str(args.shards), "--max-bulk",
                               str(max(8, 2 * args.value_mib) << 20)]).start()
    try:
        measure("pith-kv", kv.port, kv.proc.pid, args)
    finally:
        kv.stop()
    if args.redis_server:
        r = Redis(args.redis_server).start()
        try:
            measure("redis-server", r.port, r.proc.pid, args)
        finally:
            r.stop()


if __name__ == "__main__":
    main()
