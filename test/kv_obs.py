#!/usr/bin/env python3
"""pith-kv's observability beside a real redis-server: INFO commandstats and latencystats, LATENCY
HISTOGRAM, SLOWLOG and the latency monitor (LATENCY LATEST, HISTORY, RESET, DOCTOR) give the same
counts and reply shapes as Redis 7 for the same commands (times, ids and addresses aside); the
slowlog's bounds (slowlog-max-len entries per shard, Redis's cuts of arguments) hold under a
flood; the slowlog merges every shard's entries by id; INFO's engine sections read every shard.
TAP on stdout; not a benchmark.

    kv_obs.py PITH_KV REDIS_SERVER

redis-server is a declared dependency: without it the test fails rather than skips."""

import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kv_integration import Conn, Failure, Server, Tap, check, cmd, show  # noqa: E402
from kv_redis import Redis, same_replies  # noqa: E402

# Replies compared byte for byte with Redis's (after FLUSHALL on both).
ERRORS = [
    ("CONFIG", "GET", "slowlog-log-slower-than"), ("CONFIG", "GET", "slowlog-max-len"),
    ("CONFIG", "GET", "latency-monitor-threshold"), ("CONFIG", "GET", "latency-tracking"),
    ("CONFIG", "GET", "latency-tracking-info-percentiles"),
    ("CONFIG", "SET", "slowlog-log-slower-than", "-2"),
    ("CONFIG", "SET", "slowlog-log-slower-than", "abc"),
    ("CONFIG", "SET", "slowlog-max-len", "-1"),
    ("CONFIG", "SET", "latency-monitor-threshold", "-1"),
    ("CONFIG", "SET", "slowlog-log-slower-than", "-1"),
    ("CONFIG", "GET", "slowlog-log-slower-than"),
    ("CONFIG", "SET", "slowlog-log-slower-than", "10000"),
    ("SLOWLOG",), ("SLOWLOG", "FOO"), ("SLOWLOG", "GET", "-2"), ("SLOWLOG", "GET", "abc"),
    ("SLOWLOG", "GET", "1", "2"), ("SLOWLOG", "LEN", "x"), ("SLOWLOG", "RESET", "x"),
    ("SLOWLOG", "HELP"), ("SLOWLOG", "HELP", "x"), ("SLOWLOG", "RESET"), ("SLOWLOG", "GET", "0"),
    ("LATENCY",), ("LATENCY", "FOO"), ("LATENCY", "HISTORY"), ("LATENCY", "HISTORY", "nosuch"),
    ("LATENCY", "LATEST", "x"), ("LATENCY", "DOCTOR", "x"), ("LATENCY", "HELP", "x"),
    ("LATENCY", "RESET", "nosuch"), ("LATENCY", "HISTOGRAM", "nosuch"),
    ("INFO", "nosuchsection"),
]

# A script whose counts INFO commandstats shows the same on both: calls, rejected calls (arity),
# failed calls (an error from the command), and nothing for unknown commands and subcommands.
# Twenty keys land on both shards: commands answered here and on the other shard alike.
STATS_SCRIPT = (
    [("SET", f"key:{i}", str(i)) for i in range(20)] + [("GET", f"key:{i}") for i in range(20)]
    + [("GET",), ("INCR", "key:0"), ("INCR", "text"), ("SET", "text", "x"), ("INCR", "text"),
       ("SET", "k", "v", "EX", "abc"), ("CONFIG", "GET"), ("CLIENT",), ("CONFIG", "FOO"),
       ("NOSUCH", "x"), ("MGET", "key:1", "key:2", "key:3"), ("DEL", "key:1", "nokey"),
       ("EXISTS", "key:2"), ("SLOWLOG", "GET", "1", "2"), ("LATENCY", "HISTORY"), ("PING",),
       ("ECHO", "x"), ("SLOWLOG", "LEN"), ("LATENCY", "HISTOGRAM", "nosuch"), ("DBSIZE",),
       ("MSET", "a", "1", "b", "2"), ("EXPIRE", "a", "100"), ("TTL", "a")]
)


def info(c, *sections):
    """INFO's text as {section title: [lines]}."""
    text = c.call("INFO", *sections)[1].decode()
    out, title = {}, None
    for line in text.split("\r\n"):
        if line.startswith("# "):
            title = line[2:]
            out[title] = []
        elif line and title is not None:
            out[title].append(line)
    return out


def fields(line):
    """'name:k=v,k=v' as (name, {k: v})."""
    name, rest = line.split(":", 1)
    return name, dict(f.split("=", 1) for f in rest.split(","))


def commandstats(c):
    got = {}
    for line in info(c, "commandstats").get("Commandstats", []):
        name, f = fields(line)
        got[name] = {k: float(v) if "." in v else int(v) for k, v in f.items()}
    return got


def run_script(c, script):
    for args in script:
        c.call(*args)


def same_counts(r_port, k_port):
    """After CONFIG RESETSTAT and the same script, commandstats has the same commands with the
    same calls, rejected_calls and failed_calls on both; latencystats has a line for each command
    called, with p50 <= p99 <= p99.9."""
    got = {}
    for port in (r_port, k_port):
        with Conn(port) as c:
            check(c.call("FLUSHALL") == ("+", "OK"), "FLUSHALL")
            check(c.call("CONFIG", "RESETSTAT") == ("+", "OK"), "RESETSTAT")
            run_script(c, STATS_SCRIPT)
            stats = commandstats(c)
            got[port] = {n: (s["calls"], s["rejected_calls"], s["failed_calls"])
                         for n, s in stats.items()}
            if port == k_port:
                for n, s in stats.items():
                    want = s["usec"] / s["calls"] if s["calls"] else 0
                    check(abs(s["usec_per_call"] - want) <= 0.01 + want * 0.01 + 1,
                          f"{n}: usec_per_call {s['usec_per_call']} against usec/calls {want}")
                lat = info(c, "latencystats").get("Latencystats", [])
                names = set()
                for line in lat:
                    name, f = fields(line)
                    check(name.startswith("latency_percentiles_usec_"), f"latencystats: {line}")
                    p = [float(f[k]) for k in ("p50", "p99", "p99.9")]
                    check(0 < p[0] <= p[1] <= p[2], f"percentiles out of order: {line}")
                    names.add(name[len("latency_percentiles_usec_"):])
                called = {n[len("cmdstat_"):] for n, s in stats.items() if s["calls"] > 0}
                called.add("info")  # the INFO commandstats above, counted once it answered
                check(names == called, f"latencystats {sorted(names)}, called {sorted(called)}")
    want = got[r_port]
    check(want.get("cmdstat_get") == (20, 1, 0) and want.get("cmdstat_incr") == (3, 0, 1),
          f"redis-server counted {want}")
    check(got[k_port] == want, f"commandstats: redis {sorted(want.items())}, "
                               f"pith-kv {sorted(got[k_port].items())}")


def histogram_shape(r_port, k_port):
    """LATENCY HISTOGRAM set get config: the same commands, calls and shape as Redis's; the
    cumulative counts grow with the edges and end at the calls."""
    got = {}
    for port in (r_port, k_port):
        with Conn(port) as c:
            check(c.call("CONFIG", "RESETSTAT") == ("+", "OK"), "RESETSTAT")
            for i in range(10):
                c.call("SET", f"h{i}", "v")
            for i in range(7):
                c.call("GET", f"h{i}")
            c.call("CONFIG", "GET", "timeout")
            reply = c.call("LATENCY", "HISTOGRAM", "set", "get", "config", "nosuch")
            check(reply[0] == "*" and len(reply[1]) % 2 == 0, f"LATENCY HISTOGRAM: {show(reply)}")
            items = reply[1]
            shape = {}
            for name, body in zip(items[::2], items[1::2]):
                b = body[1]
                check(body[0] == "*" and len(b) == 4 and b[0] == ("$", b"calls")
                      and b[2] == ("$", b"histogram_usec") and b[3][0] == "*",
                      f"{name}: {show(body)}")
                calls, pairs = b[1][1], b[3][1]
                edges, counts = [p[1] for p in pairs[::2]], [p[1] for p in pairs[1::2]]
                check(edges == sorted(set(edges)) and counts == sorted(set(counts))
                      and counts[-1] == calls, f"{name}: edges {edges}, counts {counts}")
                check(all(e in EDGES for e in edges), f"{name}: edges {edges} not Redis's")
                shape[name[1].decode()] = calls
            got[port] = shape
    check(got[r_port] == {"set": 10, "get": 7, "config|resetstat": 1, "config|get": 1},
          f"redis-server: {got[r_port]}")
    check(got[k_port] == got[r_port], f"redis {got[r_port]}, pith-kv {got[k_port]}")


# The edges Redis's LATENCY HISTOGRAM shows: the top of its bucket at each power of two of ns.
EDGES = {((1 << e) + (1 << (e - 7)) - 1) // 1000 for e in range(10, 40)}


def info_sections(r_port, k_port):
    """Commandstats and Latencystats are outside the default set and inside all and everything,
    on both; pith-kv's engine sections likewise, and its existing sections stay where they
    were."""
    default_want = ["Server", "Clients", "Memory", "Stats", "CPU", "Shards", "Persistence",
                    "Keyspace"]
    for port in (r_port, k_port):
        with Conn(port) as c:
            c.call("GET", "x")
            default, every, both = info(c), info(c, "everything"), info(c, "all")
            for name in ("Commandstats", "Latencystats"):
                check(name not in default and name in every and name in both,
                      f"{port}: {name} in default {list(default)}, everything {list(every)}")
            two = info(c, "clients", "commandstats")
            check(list(two) == ["Clients", "Commandstats"],
                  f"INFO clients commandstats: {list(two)}")
            if port == k_port:
                check(list(default) == default_want, f"INFO: {list(default)}")
                engine = ["Engine", "Enginememory", "Enginenet", "Enginejournal", "Enginelatency"]
                check(all(e not in default and e in every for e in engine),
                      f"INFO everything: {list(every)}")


def engine_sections(port, shards):
    """INFO's engine sections: a line per shard, with figures that agree with each other."""
    with Conn(port) as c:
        c.call("SET", "e", "v")
        got = info(c, "engine", "enginememory", "enginenet", "enginejournal", "enginelatency")
        check(list(got) == ["Engine", "Enginememory", "Enginenet", "Enginejournal",
                            "Enginelatency"], f"sections {list(got)}")
        for title, lines in got.items():
            check([fields(line)[0] for line in lines] == [f"shard{i}" for i in range(shards)],
                  f"{title}: {lines}")
        for line in got["Engine"]:
            f = fields(line)[1]
            check(0 <= float(f["utilisation"]) <= 1 and 0 <= float(f["utilisation_1s"]) <= 1
                  and int(f["busy_ns"]) <= int(f["elapsed_ns"]) and int(f["loops"]) > 0
                  and int(f["timers_pending"]) >= 1, f"Engine: {line}")
        for line in got["Enginememory"]:
            f = {k: int(v) for k, v in fields(line)[1].items()}
            check(f["reserved"] >= f["committed"] >= f["locked"] and f["in_use"] <= f["peak"]
                  and f["reserved_hot"] + f["reserved_warm"] + f["reserved_cold"] == f["reserved"]
                  and f["in_use"] > 0, f"Enginememory: {line}")
        conns = sum(int(fields(line)[1]["connections"]) for line in got["Enginenet"])
        check(conns >= 1, f"Enginenet: {got['Enginenet']}")
        for line in got["Enginejournal"]:
            check(fields(line)[1]["open"] == "0", f"no --dir, yet {line}")
        for line in got["Enginelatency"]:
            f = fields(line)[1]
            check(set(f) == {f"{h}{s}" for h in ("stall", "journal_commit", "journal_write_sync")
                             for s in ("s", "_p50_usec", "_p99_usec", "_p999_usec")},
                  f"Enginelatency: {line}")


def journal_latency(exe):
    """With --appendfsync always, the journal's commits show in Enginejournal and their
    percentiles in Enginelatency."""
    with tempfile.TemporaryDirectory() as d:
        s = Server(exe, ["--shards", "2", "--dir", d, "--appendfsync", "always",
                         "--journal-segment-bytes", "1mb"]).start()
        try:
            with Conn(s.port) as c:
                for i in range(50):
                    check(c.call("SET", f"j{i}", "v") == ("+", "OK"), "SET")
                got = info(c, "enginejournal", "enginelatency")
                appended = sum(int(fields(line)[1]["appended"]) for line in got["Enginejournal"])
                check(appended >= 50, f"Enginejournal: {got['Enginejournal']}")
                commits = 0
                for line in got["Enginelatency"]:
                    f = fields(line)[1]
                    n = int(f["journal_commits"])
                    commits += n
                    p = [float(f[f"journal_commit_{q}_usec"]) for q in ("p50", "p99", "p999")]
                    check(n == 0 or 0 < p[0] <= p[1] <= p[2], f"Enginelatency: {line}")
                check(commits >= 1, f"Enginelatency: {got['Enginelatency']}")
            s.alive()
        finally:
            s.stop()


def slowlog_entries(c, count="-1"):
    reply = c.call("SLOWLOG", "GET", count)
    check(reply[0] == "*", f"SLOWLOG GET: {show(reply)}")
    out = []
    for e in reply[1]:
        check(e[0] == "*" and len(e[1]) == 6, f"entry {show(e)}")
        eid, ts, us, argv, addr, name = e[1]
        check(eid[0] == ":" and ts[0] == ":" and us[0] == ":" and argv[0] == "*"
              and addr[0] == "$" and name[0] == "$", f"entry {show(e)}")
        check(all(a[0] == "$" for a in argv[1]), f"arguments {show(argv)}")
        out.append((eid[1], ts[1], us[1], [a[1] for a in argv[1]], addr[1], name[1]))
    return out


def slowlog_shapes(r_port, k_port):
    """With slowlog-log-slower-than 0, the same commands leave the same entries on both: the
    same arguments, cut as Redis cuts them (32 at most, 128 bytes each), the same client name,
    ids one apart, newest first, a time of now and an ip:port."""
    big = "v" * 300
    script = [("SET", "k", "v"), ("GET", "k"), ("GET", "missing"), ("MGET", "k", "a", "b"),
              ("MSET", *[x for i in range(20) for x in (f"m{i}", str(i))]),
              ("EXISTS", *[f"e{i}" for i in range(40)]), ("SET", "big", big), ("ECHO", "e" * 1000),
              ("INCR", "k"), ("CLIENT", "SETNAME", "other"), ("PING",)]
    got = {}
    for port in (r_port, k_port):
        with Conn(port) as c:
            for args in [("FLUSHALL",), ("CONFIG", "SET", "slowlog-max-len", "128"),
                         ("CLIENT", "SETNAME", "worker-1"),
                         ("CONFIG", "SET", "slowlog-log-slower-than", "0"), ("SLOWLOG", "RESET")]:
                c.call(*args)
            run_script(c, script)
            check(c.call("CONFIG", "SET", "slowlog-log-slower-than", "-1") == ("+", "OK"), "off")
            entries = slowlog_entries(c)
            check(c.call("SLOWLOG", "LEN") == (":", len(entries)), "SLOWLOG LEN")
            check(slowlog_entries(c, "2") == entries[:2], "SLOWLOG GET 2: the two newest")
            now = time.time()
            for i, (eid, ts, us, argv, addr, name) in enumerate(entries):
                check(abs(ts - now) < 60 and us >= 0 and re.fullmatch(rb"127\.0\.0\.1:\d+", addr),
                      f"{port}: entry {entries[i]}")
                if i > 0:
                    check(eid == entries[i - 1][0] - 1, f"{port}: ids {[e[0] for e in entries]}")
            got[port] = [(e[3], e[5]) for e in entries]
            check(c.call("SLOWLOG", "RESET") == ("+", "OK")
                  and c.call("SLOWLOG", "LEN") == (":", 0), "SLOWLOG RESET empties it")
            c.call("CONFIG", "SET", "slowlog-log-slower-than", "10000")
    want = got[r_port]
    mset = next(argv for argv, _ in want if argv[0] == b"MSET")
    check(len(mset) == 32 and mset[-1] == b"... (10 more arguments)", f"redis: MSET {mset}")
    check(got[k_port] == want, "entries:\n" + "\n".join(
        f"redis {show(a, 200)}\npith  {show(b, 200)}" for a, b in zip(want, got[k_port])
        if a != b) + f"\n({len(want)} against {len(got[k_port])} entries)")


def latency_shapes(r_port, k_port):
    """A 50,000-key MSET (a command) and MGET (a fast one) over latency-monitor-threshold 1 show
    in LATENCY LATEST as Redis shows them, in HISTORY, in DOCTOR; RESET counts the events it
    cleared."""
    mset = ["MSET"] + [x for i in range(50000) for x in (f"lat:{i}", "v")]
    mget = ["MGET"] + [f"lat:{i}" for i in range(50000)]
    for port in (r_port, k_port):
        with Conn(port) as c:
            check(c.call("FLUSHALL") == ("+", "OK"), "FLUSHALL")
            c.call("LATENCY", "RESET")
            check(c.call("CONFIG", "SET", "latency-monitor-threshold", "1") == ("+", "OK"), "on")
            check(c.call(*mset) == ("+", "OK"), "MSET")
            check(len(c.call(*mget)[1]) == 50000, "MGET")
            c.call("CONFIG", "SET", "latency-monitor-threshold", "0")
            latest = c.call("LATENCY", "LATEST")
            check(latest[0] == "*", f"LATEST {show(latest)}")
            events = {}
            for e in latest[1]:
                check(e[0] == "*" and len(e[1]) == 4 and e[1][0][0] == "$"
                      and all(x[0] == ":" for x in e[1][1:]), f"{port}: LATEST entry {show(e)}")
                events[e[1][0][1]] = [x[1] for x in e[1][1:]]
            now = time.time()
            for ev in (b"command", b"fast-command"):
                check(ev in events, f"{port}: LATEST {show(latest, 400)}")
                ts, last, most = events[ev]
                check(abs(ts - now) < 60 and 1 <= last <= most, f"{port}: {ev} {events[ev]}")
            hist = c.call("LATENCY", "HISTORY", "command")
            check(hist[0] == "*" and len(hist[1]) >= 1 and all(
                p[0] == "*" and len(p[1]) == 2 and p[1][0][0] == ":" and p[1][1][1] >= 1
                for p in hist[1]), f"{port}: HISTORY {show(hist)}")
            check(hist[1][-1][1][0][1] == events[b"command"][0], "HISTORY ends with LATEST's")
            doctor = c.call("LATENCY", "DOCTOR")
            check(doctor[0] == "$" and b"command" in doctor[1], f"{port}: DOCTOR {show(doctor)}")
            check(c.call("LATENCY", "RESET", "command", "nosuch") == (":", 1), "RESET command")
            left = [e[1][0][1] for e in c.call("LATENCY", "LATEST")[1]]
            check(b"command" not in left and b"fast-command" in left, f"{port}: after RESET {left}")
            check(c.call("LATENCY", "HISTORY", "command") == ("*", []), "HISTORY after RESET")
            check(c.call("LATENCY", "RESET")[1] >= 1, "RESET all")
            check(c.call("LATENCY", "LATEST") == ("*", []), "LATEST after RESET")
            check(c.call("FLUSHALL") == ("+", "OK"), "FLUSHALL")


def on_every_shard(port, shards):
    """Connections until each shard holds one of them (INFO shards' clients=): they are
    returned, the caller closes them."""
    conns = []
    while len(conns) < 64:
        conns.append(Conn(port))
        lines = info(conns[0], "shards")["Shards"]
        if all(int(fields(line)[1]["clients"]) > 0 for line in lines) and len(lines) == shards:
            return conns
    raise Failure("64 connections and a shard still has none")


def slowlog_merged(port, shards):
    """Commands from connections on every shard are in one SLOWLOG GET, newest first, by id: the
    order they ran in, one after the other; LEN counts them all."""
    conns = on_every_shard(port, shards)
    try:
        a = conns[0]
        for args in [("CONFIG", "SET", "slowlog-max-len", "1000"),
                     ("CONFIG", "SET", "slowlog-log-slower-than", "0"), ("SLOWLOG", "RESET")]:
            check(a.call(*args) == ("+", "OK"), f"{args}")
        sent = []
        for j in range(5):
            for n, c in enumerate(conns):
                check(c.call("ECHO", f"c{n}-{j}")[0] == "$", "ECHO")
                sent.append(f"c{n}-{j}".encode())
        check(a.call("CONFIG", "SET", "slowlog-log-slower-than", "-1") == ("+", "OK"), "off")
        entries = slowlog_entries(a)
        ids = [e[0] for e in entries]
        check(ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids), f"ids {ids}")
        echoed = [e[3][1] for e in entries if e[3][0] == b"ECHO"]
        check(echoed == sent[::-1], f"ECHOs {echoed[:8]}..., sent {sent[::-1][:8]}...")
        check(a.call("SLOWLOG", "LEN") == (":", len(entries)), "LEN")
        check(len(entries) == len(sent) + 1, f"{len(entries)} entries for {len(sent)} ECHOs "
                                             "and the SLOWLOG RESET")
    finally:
        for c in conns:
            c.close()


def used_memory(c):
    return int(dict(line.split(":", 1) for line in info(c, "memory")["Memory"])["used_memory"])


def slowlog_bounds(port, shards):
    """A flood of slow commands keeps SLOWLOG LEN at slowlog-max-len; an entry keeps 32
    arguments of 128 bytes and a name of 128, whatever the command carried; 200 commands (or a
    few more) of 65 arguments of 1 KiB (13 MiB) leave the shards' memory within slowlog-max-len
    entries of under 6 KiB per shard (SLOWLOG_ENTRY_MAX)."""
    conns = on_every_shard(port, shards)
    try:
        a = conns[0]
        for args in [("CONFIG", "SET", "slowlog-max-len", "5"),
                     ("CONFIG", "SET", "slowlog-log-slower-than", "0")]:
            check(a.call(*args) == ("+", "OK"), f"{args}")
        for c in conns:
            c.send(b"".join(cmd("ECHO", str(i)) for i in range(300)))
        for c in conns:
            for _ in range(300):
                check(c.reply()[0] == "$", "ECHO")
        check(a.call("SLOWLOG", "LEN") == (":", 5), "SLOWLOG LEN after the flood")
        check(len(slowlog_entries(a)) == 5 and len(slowlog_entries(a, "100")) == 5,
              "SLOWLOG GET: slowlog-max-len entries")
        check(a.call("CONFIG", "SET", "slowlog-max-len", "128") == ("+", "OK"), "max-len")
        named = conns[-1]
        check(named.call("CLIENT", "SETNAME", "n" * 300) == ("+", "OK"), "SETNAME")
        keys = [f"{i:04}".encode() + b"k" * 1020 for i in range(64)]
        check(named.call("EXISTS", *keys) == (":", 0), "EXISTS")
        entry = slowlog_entries(named, "1")[0]
        argv = entry[3]
        check(len(argv) == 32 and argv[0] == b"EXISTS" and argv[-1] == b"... (34 more arguments)"
              and argv[1] == keys[0][:128] + b"... (896 more bytes)"
              and all(x[:128] == k[:128] for x, k in zip(argv[1:31], keys)),
              f"arguments {show(argv, 300)}")
        check(entry[5] == b"n" * 128 + b"... (172 more bytes)", f"name {show(entry[5])}")
        for c in conns:
            c.call("SLOWLOG", "RESET")
        before = used_memory(a)
        senders = conns[:4]
        each = -(-200 // len(senders))  # 200 commands at least, however many connections
        for c in senders:
            c.send(b"".join(cmd("EXISTS", *keys) for _ in range(each)))
        for c in senders:
            for _ in range(each):
                check(c.reply() == (":", 0), "EXISTS")
        got = a.call("SLOWLOG", "LEN")
        check(got == (":", 128), f"SLOWLOG LEN {got} after {each * len(senders)} commands")
        grew = used_memory(a) - before
        bound = 128 * shards * 6144
        check(grew <= bound + (1 << 20), f"used_memory grew {grew} bytes; the slowlog's bound is "
                                         f"{bound} bytes")
        check(a.call("CONFIG", "SET", "slowlog-log-slower-than", "10000") == ("+", "OK"), "off")
        check(a.call("SLOWLOG", "RESET") == ("+", "OK") and a.call("SLOWLOG", "LEN") == (":", 0),
              "RESET")
    finally:
        for c in conns:
            c.close()


def flags(exe):
    """--slowlog-log-slower-than, --slowlog-max-len and --latency-monitor-threshold set what
    CONFIG GET shows, and work from the start (one shard: SLOWLOG's parts made in place);
    values out of range stop pith-kv with its usage."""
    s = Server(exe, ["--shards", "1", "--slowlog-log-slower-than", "0", "--slowlog-max-len", "3",
                     "--latency-monitor-threshold", "7"]).start()
    try:
        with Conn(s.port) as c:
            for name, value in (("slowlog-log-slower-than", b"0"), ("slowlog-max-len", b"3"),
                                ("latency-monitor-threshold", b"7")):
                check(c.call("CONFIG", "GET", name) == ("*", [("$", name.encode()), ("$", value)]),
                      f"CONFIG GET {name}")
            for i in range(10):
                c.call("ECHO", str(i))
            check(c.call("SLOWLOG", "LEN") == (":", 3), "SLOWLOG LEN")
            echoed = [e[3][1] for e in slowlog_entries(c) if e[3][0] == b"ECHO"]
            check(echoed[:2] == [b"9", b"8"], f"newest first: {echoed}")
        s.alive()
    finally:
        s.stop()
    for bad in (["--slowlog-max-len", "-1"], ["--slowlog-log-slower-than", "-2"],
                ["--latency-monitor-threshold", "x"]):
        p = subprocess.run([exe, "--port", "0"] + bad, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=20)
        check(p.returncode == 2 and b"usage" in p.stderr, f"{bad}: status {p.returncode}")


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
        if tap.run("pith-kv --shards 2 starts", kv.start):
            r, k = redis.port, kv.port
            tap.run("same replies as redis-server: SLOWLOG, LATENCY and their settings",
                    same_replies, r, k, ERRORS)
            tap.run("same commandstats as redis-server: calls, rejected and failed calls",
                    same_counts, r, k)
            tap.run("same LATENCY HISTOGRAM as redis-server: commands, calls, edges",
                    histogram_shape, r, k)
            tap.run("INFO: new sections outside the default set, inside all and everything",
                    info_sections, r, k)
            tap.run("same SLOWLOG entries as redis-server: arguments, cuts, names, ids",
                    slowlog_shapes, r, k)
            tap.run("same LATENCY LATEST, HISTORY, DOCTOR and RESET as redis-server",
                    latency_shapes, r, k)
            tap.run("SLOWLOG GET merges the shards' entries by id, in the order they ran",
                    slowlog_merged, k, 2)
            tap.run("SLOWLOG keeps slowlog-max-len entries per shard, cut as Redis cuts them",
                    slowlog_bounds, k, 2)
            tap.run("INFO engine, enginememory, enginenet, enginejournal, enginelatency",
                    engine_sections, k, 2)
            tap.run("pith-kv is still running after the checks", kv.alive)
    finally:
        if kv.proc is not None:
            tap.run("pith-kv: SIGTERM stops it with status 0", kv.stop)
        redis.stop()
    tap.run("--appendfsync always: the journal's commits in Enginejournal and Enginelatency",
            journal_latency, exe)
    tap.run("the flags set the slowlog and the latency monitor; bad values are refused", flags,
            exe)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
