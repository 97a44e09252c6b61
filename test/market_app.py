#!/usr/bin/env python3
"""pith-market end to end: its books against the reference book after every message of a
generated day; a corrupt or truncated day refused with the offset and nothing fed; orders out to
pith-exchange over loopback and every one answered, filled and made durable; positions after a
kill -9 equal to what the exchange's fills add up to; a feed faster than slow books pushed back
and nothing lost; the metrics endpoint while it runs. TAP on stdout.

    market_app.py PITH_MARKET PITH_EXCHANGE ITCH_GEN"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import plan, tap  # noqa: E402

MARKET, EXCHANGE, ITCH_GEN = sys.argv[1:4]
TIMEOUT = 300


def run(args, timeout=TIMEOUT):
    return subprocess.run([MARKET] + args, capture_output=True, text=True, timeout=timeout)


def field(out, name):
    """The integer after `name ` in the summary (first match)."""
    m = re.search(r"\b%s (\d+)" % re.escape(name), out)
    return int(m.group(1)) if m else None


class Exchange:
    """pith-exchange on 127.0.0.1, a kernel-picked port, with its fill log in d."""

    def __init__(self, d, *extra):
        self.fills = os.path.join(d, "fills.txt")
        self.p = subprocess.Popen([EXCHANGE, "--port", "0", "--fills", self.fills] + list(extra),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        m = re.search(r"listening on ([0-9.]+):(\d+)", line)
        if not m:
            self.p.kill()
            raise RuntimeError("pith-exchange did not start: %r %s" % (line, self.p.stderr.read()))
        self.addr = "%s:%s" % (m.group(1), m.group(2))

    def stop(self):
        """SIGTERM; returns (exit status, summary line, fills as tuples)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            out, _ = self.p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, _ = self.p.communicate()
        fills = []
        if os.path.exists(self.fills):
            with open(self.fills) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 7 and parts[0].isdigit():
                        a, seq, oid, loc, side, qty, px = parts
                        fills.append((int(a), int(seq), int(loc), side, int(qty), int(px)))
        return self.p.returncode, out, fills


def check_books():
    r = run(["--gen", "300:200000:5", "--check", "--no-signals"])
    ok = r.returncode == 0 and "identical" in r.stdout and field(r.stdout, "losses") == 0
    tap("every book's top after every message equals the reference book's", ok,
        r.stdout + r.stderr)
    r = run(["--gen", "300:100000:6", "--check", "--shards", "3"])
    ok = (r.returncode == 0 and "identical" in r.stdout and field(r.stdout, "losses") == 0
          and field(r.stdout, "handled") == field(r.stdout, "messages"))
    tap("on 3 shards with signals too, the books stay identical and nothing is lost", ok,
        r.stdout + r.stderr)


def check_corrupt(d):
    day = os.path.join(d, "day.itch")
    subprocess.run([ITCH_GEN, "-n", "50", "-m", "5000", "-o", day], check=True)
    data = open(day, "rb").read()
    cut = os.path.join(d, "cut.itch")
    # Cut inside the message that starts at some offset past the directory.
    at = 0
    starts = []
    while at < len(data):
        starts.append(at)
        at += 2 + int.from_bytes(data[at:at + 2], "big")
    victim = starts[len(starts) // 2]
    with open(cut, "wb") as f:
        f.write(data[:victim + 5])
    r = run(["--file", cut, "--no-signals"])
    ok = (r.returncode == 2 and ("offset %d" % victim) in r.stderr and "truncated" in r.stderr
          and "handled" not in r.stdout)
    tap("a truncated day is refused with the offset of the cut message, nothing fed", ok,
        "rc %d\n%s%s" % (r.returncode, r.stdout, r.stderr))
    bad = bytearray(data)
    bad[victim:victim + 2] = (7).to_bytes(2, "big")  # no known type has length 7
    badf = os.path.join(d, "bad.itch")
    with open(badf, "wb") as f:
        f.write(bad)
    r = run(["--file", badf, "--no-signals"])
    ok = r.returncode == 2 and ("offset %d" % victim) in r.stderr and "handled" not in r.stdout
    tap("a corrupt length is refused with its offset, nothing fed", ok,
        "rc %d\n%s%s" % (r.returncode, r.stdout, r.stderr))
    r = run(["--file", os.path.join(d, "missing.itch")])
    tap("a missing file is a clear error", r.returncode == 2 and "missing.itch" in r.stderr,
        r.stderr)
    r = run(["--file", day, "--check"])
    ok = r.returncode == 0 and "identical" in r.stdout and field(r.stdout, "losses") == 0
    tap("the same file whole runs and checks", ok, r.stdout + r.stderr)


def check_orders(d):
    ex = Exchange(d, "--partial")
    try:
        r = run(["--gen", "500:300000:7", "--exchange", ex.addr, "--journal",
                 os.path.join(d, "journal"), "--shards", "2"])
    finally:
        rc, summary, fills = ex.stop()
    out = r.stdout
    orders, accepted, f, durable = (field(out, "orders"), field(out, "accepted"),
                                    field(out, "fills"), field(out, "durable"))
    ok = (r.returncode == 0 and orders and orders > 10 and accepted == orders
          and f == 2 * orders and durable == f and field(out, "losses") == 0)
    tap("orders go out over TCP, each accepted, filled in two parts and made durable", ok,
        out + r.stderr)
    ok = rc == 0 and field(summary, "orders") == orders and len(fills) == f
    tap("the exchange saw every order and logged every fill", ok,
        "rc %d %s (%d fills logged)" % (rc, summary, len(fills)))


def positions_of(out):
    accts, pos = {}, {}
    for line in out.splitlines():
        m = re.match(r"account (\d+) fills (\d+) last_seq (\d+) seq_gaps (\d+)", line)
        if m:
            accts[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
        m = re.match(r"pos (\d+) (\d+) (-?\d+)$", line)
        if m:
            pos[(int(m.group(1)), int(m.group(2)))] = int(m.group(3))
    return accts, pos


def check_kill(d):
    journal = os.path.join(d, "kj")
    ex = Exchange(d)
    durable_seen = 0
    try:
        p = subprocess.Popen([MARKET, "--gen", "800:4000000:9", "--rate", "200000", "--progress",
                              "--exchange", ex.addr, "--journal", journal],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            m = re.search(r"durable (\d+)", line)
            if m and line.startswith("progress:"):
                durable_seen = int(m.group(1))
                if durable_seen >= 20:
                    break
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        rc, summary, fills = ex.stop()
    tap("the run was killed with fills made durable", durable_seen >= 20 and p.returncode == -9,
        "durable %d, rc %s" % (durable_seen, p.returncode))
    r = run(["--positions", "--journal", journal])
    accts, pos = positions_of(r.stdout)
    want = {}
    total = 0
    problems = []
    for a, (nfills, last, gaps) in accts.items():
        mine = sorted(x for x in fills if x[0] == a)
        upto = [x for x in mine if x[1] <= last]
        if len(upto) != nfills or gaps != 0:
            problems.append("account %d: %d fills up to seq %d at the exchange, %d in the journal,"
                            " %d gaps" % (a, len(upto), last, nfills, gaps))
        total += nfills
        for (_, _, loc, side, qty, _) in upto:
            want[(a, loc)] = want.get((a, loc), 0) + (qty if side == "B" else -qty)
    want = {k: v for k, v in want.items() if v != 0}
    ok = (r.returncode == 0 and len(accts) == 4 and not problems and pos == want
          and total >= durable_seen)
    tap("after kill -9 the positions are the exchange's fills up to the last durable one", ok,
        "rc %d, %d fills restored, %d seen durable before the kill\n%s\n%s%s" %
        (r.returncode, total, durable_seen, "\n".join(problems), r.stdout[-2000:], r.stderr))


def check_backpressure():
    r = run(["--gen", "100:30000:3", "--no-signals", "--book-spin-ns", "5000", "--check"])
    out = r.stdout
    pushed = field(out, "pushed_back")
    ok = (r.returncode == 0 and pushed is not None and pushed > 0
          and field(out, "handled") == field(out, "messages") == 30000
          and field(out, "losses") == 0 and "identical" in out)
    tap("a feed faster than the books is pushed back and loses nothing", ok, out + r.stderr)


def check_metrics():
    port = 0
    # A port the kernel gives us now, then handed to pith-market (a race only with other
    # programs binding it in between).
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([MARKET, "--gen", "200:600000:4", "--rate", "200000",
                          "--metrics-port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    body = ""
    try:
        deadline = time.time() + 20
        while time.time() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2) as f:
                    body = f.read().decode()
                if 'type="market.book"' in body:
                    break
            except OSError:
                time.sleep(0.1)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    ok = ('type="market.book"' in body and "pith_sla_p99_target_seconds" in body
          and p.returncode == 0)
    tap("metrics are served while it runs, with the books' SLA", ok,
        "rc %s\n%s" % (p.returncode, body[:1000]))


def main():
    d = tempfile.mkdtemp(prefix="pith-market-")
    try:
        check_books()
        check_corrupt(d)
        check_orders(d)
        check_kill(d)
        check_backpressure()
        check_metrics()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return plan()


if __name__ == "__main__":
    sys.exit(main())
