#!/usr/bin/env python3
"""pith-exchange end to end (examples/market/exchange.c) on loopback ports, with plain sockets
speaking the order protocol (examples/market/order.h): accepts and fills with their fields,
per-account fill numbers without gaps over connections and shards, rejects with their reasons,
--partial and --reject-every, a bad frame closing only its own connection, a client that sends
and never reads, and at SIGTERM the summary's counts and a fill log that matches what the
clients received. TAP on stdout; every wait has a deadline, and the test stops every exchange
it starts.

    market_exchange.py PITH_EXCHANGE [--no-rss]

--no-rss skips the memory bound (sanitizer builds, whose allocators hold freed memory) and
gives every wait more time."""

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import plan, tap  # noqa: E402

MIB = 1 << 20

# The frames, length prefix included; '>' is big-endian, as order.h's fields are.
NEW = struct.Struct(">HcQIHcIIQ2x")  # 'O' id account locate side qty price tick_ns, 2 reserved
ACCEPT = struct.Struct(">HcQI")  # 'A' id account
REJECT = struct.Struct(">HcQIc")  # 'J' id account reason
FILL = struct.Struct(">HcQIHcIIQ6x")  # 'F' id account locate side qty price seq, 6 reserved
FRAMES = {b"O": NEW, b"A": ACCEPT, b"J": REJECT, b"F": FILL}
assert (NEW.size, ACCEPT.size, REJECT.size, FILL.size) == (36, 15, 16, 40)

ACCOUNTS = 1024
MAX_QTY = 1000000


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def new_order(oid, account, locate, side, qty, price, tick_ns=0):
    return NEW.pack(NEW.size - 2, b"O", oid, account, locate, side, qty, price, tick_ns)


def accept_frame(oid, account):
    return ACCEPT.pack(ACCEPT.size - 2, b"A", oid, account)


def parse(buf):
    """Splits buf into frames: a list of tuples (type, fields...) and the bytes left over."""
    out, off = [], 0
    while len(buf) - off >= 3:
        length, kind = struct.unpack_from(">Hc", buf, off)
        st = FRAMES.get(kind)
        if st is None or length != st.size - 2:
            raise Failure(f"bad frame from the exchange: type {kind!r} length {length}")
        if len(buf) - off < st.size:
            break
        out.append((kind.decode(),) + st.unpack_from(buf, off)[2:])
        off += st.size
    return out, buf[off:]


class Exchange:
    """One pith-exchange on 127.0.0.1, port 0; stop() sends SIGTERM and waits."""

    def __init__(self, binary, args, wait):
        self.wait = wait
        self.proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", "0"] + args,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        line = self.proc.stdout.readline() if ready else ""
        prefix = "pith-exchange: listening on 127.0.0.1:"
        if not line.startswith(prefix):
            self.kill()
            raise Failure(f"no listening line within {wait} s: {line!r}")
        self.port = int(line[len(prefix):])
        self.pid = self.proc.pid

    def connect(self):
        return Client(self.port, self.wait)

    def stop(self):
        """SIGTERM; returns (exit status, stdout after the listening line, stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=self.wait)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure(f"still running {self.wait} s after SIGTERM")
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


class Client:
    """A plain socket and the frames it has read."""

    def __init__(self, port, wait, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(wait)
        self.sock.connect(("127.0.0.1", port))
        self.wait = wait
        self.rest = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def read(self, n):
        """Reads until n frames have come (or the peer closed); returns those read."""
        frames = []
        deadline = time.monotonic() + self.wait
        while len(frames) < n and not self.eof:
            left = deadline - time.monotonic()
            check(left > 0, f"{len(frames)} of {n} frames within {self.wait} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            got, self.rest = parse(self.rest + chunk)
            frames += got
        return frames

    def expect(self, n):
        frames = self.read(n)
        check(len(frames) == n, f"{len(frames)} of {n} frames before the exchange closed")
        return frames

    def closed_by_peer(self):
        """Whether the exchange closes the connection within the wait, sending nothing more."""
        deadline = time.monotonic() + self.wait
        while not self.eof and time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            except socket.timeout:
                break
            if chunk:
                raise Failure(f"{len(chunk)} bytes more on a connection that should close")
            self.eof = True
        return self.eof

    def close(self):
        self.sock.close()


class Ledger:
    """What the clients of one exchange received, to hold its summary and fill log to."""

    def __init__(self):
        self.orders = self.accepted = self.rejected = 0
        self.conns = self.protocol_errors = 0
        self.fills = {}  # (account, seq) -> (id, locate, side, qty, price)

    def connect(self, ex, **kw):
        self.conns += 1
        return Client(ex.port, ex.wait, **kw)

    def take(self, frames):
        for f in frames:
            if f[0] == "A":
                self.accepted += 1
            elif f[0] == "J":
                self.rejected += 1
            elif f[0] == "F":
                _, oid, account, locate, side, qty, price, seq = f
                check((account, seq) not in self.fills, f"fill {account}/{seq} came twice")
                self.fills[(account, seq)] = (oid, locate, side.decode(), qty, price)
        return frames


def check_filled(frames, orders, fills_per_order=1):
    """frames answer orders (tuples of new_order's arguments) in order, each with 'A' then its
    fills; returns the fills' seqs by account."""
    seqs = {}
    i = 0
    for o in orders:
        oid, account, locate, side, qty, price = o
        check(frames[i] == ("A", oid, account), f"accept of {oid}: {frames[i]}")
        i += 1
        parts = [qty] if fills_per_order == 1 or qty < 2 else [qty // 2, qty - qty // 2]
        for part in parts:
            f = frames[i]
            check(f[:7] == ("F", oid, account, locate, side, part, price),
                  f"fill of {oid}: {f}, want qty {part}")
            seqs.setdefault(account, []).append(f[7])
            i += 1
    check(i == len(frames), f"{len(frames) - i} frames past the replies")
    return seqs


def check_gapless(seqs, what):
    for account, s in seqs.items():
        check(sorted(s) == list(range(1, len(s) + 1)),
              f"{what}: account {account} seqs are not 1..{len(s)}: {sorted(s)[:20]}...")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise Failure("no VmRSS")


def point(name, fn, *args):
    """One TAP point: fn's Failure or any exception makes it not ok, with the detail."""
    try:
        fn(*args)
        tap(name, True)
    except Failure as e:
        tap(name, False, str(e))
    except Exception:
        tap(name, False, traceback.format_exc())


def batch(ex, led):
    """One write of 60 orders of three accounts, both sides: 'A' and 'F' each, in order, with the
    order's fields, and each account's fills numbered 1..20."""
    orders = []
    for i in range(60):
        account = 1 + i % 3
        side = b"BS"[i % 2:i % 2 + 1]
        orders.append((1000 + i, account, 1 + i % 7, side, 100 + i, 10000 + 25 * i))
    c = led.connect(ex)
    try:
        c.send(b"".join(new_order(*o) for o in orders))
        led.orders += len(orders)
        frames = led.take(c.expect(2 * len(orders)))
        seqs = check_filled(frames, orders)
        check_gapless(seqs, "batch")
        check(sorted(seqs) == [1, 2, 3] and all(len(s) == 20 for s in seqs.values()),
              f"fills per account: { {a: len(s) for a, s in seqs.items()} }")
        for s in seqs.values():
            check(s == sorted(s), "one connection's fills of an account come in seq order")
    finally:
        c.close()


def rejects(ex, led):
    """Each check's reason, the first failing one when several fail, and a good order after them
    still accepted on the same connection."""
    cases = [
        ((2001, 4, 1, b"B", 0, 100), b"Q"),
        ((2002, 4, 1, b"B", MAX_QTY + 1, 100), b"Q"),
        ((2003, 4, 1, b"S", 5, 0), b"P"),
        ((2004, 4, 1, b"X", 5, 100), b"S"),
        ((2005, 4, 0, b"B", 5, 100), b"L"),
        ((2006, ACCOUNTS, 1, b"B", 5, 100), b"A"),
        ((2007, 0xFFFFFFFF, 1, b"S", 5, 100), b"A"),
        ((2008, 4, 0, b"?", 0, 0), b"Q"),
        ((2009, 4, 0, b"?", 5, 0), b"P"),
        ((2010, 4, 0, b"?", 5, 1), b"S"),
    ]
    c = led.connect(ex)
    try:
        c.send(b"".join(new_order(*o) for o, _ in cases))
        led.orders += len(cases)
        frames = led.take(c.expect(len(cases)))
        for (o, reason), f in zip(cases, frames):
            check(f == ("J", o[0], o[1], reason), f"order {o}: {f}, want reason {reason}")
        good = (2011, 4, 9, b"S", MAX_QTY, 1)
        c.send(new_order(*good))
        led.orders += 1
        seqs = check_filled(led.take(c.expect(2)), [good])
        check(seqs == {4: [1]}, f"account 4's first fill: {seqs}")
    finally:
        c.close()


def interleaved(ex, led):
    """Four connections at once (spread over the exchange's two shards by the kernel), each
    sending 400 orders of one account in 20 writes: each connection's fills come in increasing
    seq order, and together they are 1..1600."""
    account, conns, per = 7, 4, 400
    clients = [led.connect(ex) for _ in range(conns)]
    results, errors = [None] * conns, []

    def run(k):
        try:
            c = clients[k]
            orders = [(30000 + k * per + i, account, 2, b"BS"[k % 2:k % 2 + 1], 10 + i, 500 + k)
                      for i in range(per)]
            for j in range(0, per, 20):
                c.send(b"".join(new_order(*o) for o in orders[j:j + 20]))
            frames = c.expect(2 * per)
            results[k] = (orders, frames)
        except Exception as e:
            errors.append(f"connection {k}: {e}")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in clients:
            c.close()
    led.orders += conns * per
    for r in results:
        if r is not None:
            led.take(r[1])
    check(not errors, "; ".join(errors))
    every = []
    for orders, frames in results:
        s = check_filled(frames, orders)[account]
        check(s == sorted(s), "one connection's fills come in increasing seq order")
        every += s
    check(sorted(every) == list(range(1, conns * per + 1)),
          f"account {account}: {len(every)} fills, not 1..{conns * per} once each")


def bad_frames(ex, led):
    """A frame with a wrong length, and a well-formed frame of a type a client must not send:
    each closes its own connection (after the replies to the orders before it), and a
    connection opened before them is still served."""
    other = led.connect(ex)
    try:
        for bad in (struct.pack(">Hc", 5, b"O") + b"\0" * 5, accept_frame(1, 9)):
            c = led.connect(ex)
            try:
                o = (4000 + len(bad), 9, 3, b"B", 10, 77)
                c.send(new_order(*o) + bad + new_order(4100, 9, 3, b"B", 10, 77))
                led.orders += 1
                led.protocol_errors += 1
                frames = led.take(c.read(3))
                check_filled(frames[:2], [o])
                check(len(frames) == 2, f"{len(frames) - 2} replies past the bad frame")
                check(c.closed_by_peer(), "the exchange kept the connection open")
            finally:
                c.close()
        o = (4200, 9, 3, b"S", 1, 78)
        other.send(new_order(*o))
        led.orders += 1
        check_filled(led.take(other.expect(2)), [o])
    finally:
        other.close()


def flood(binary, check_rss, wait):
    """On an exchange of one shard, a client sends 2,000,000 orders (72 MB; 110 MB of replies)
    and reads nothing for 3 s: the exchange stops reading it instead of holding its replies (RSS
    grows by less than 64 MiB and stays under 200 MiB), unless it closes that connection; a new
    client on the same shard is served meanwhile. Then the client reads, and every reply comes,
    numbered 1..n. No fill log here, so that the RSS is the buffering alone."""
    account, n = 100, 2000000
    order = (777, account, 5, b"B", 3, 1234)
    pair = struct.Struct(">HcQI" + "HcQIHcIIQ6x")  # 'A' then 'F'
    ex = Exchange(binary, [], wait)
    try:
        c = Client(ex.port, wait, rcvbuf=64 * 1024)
        sent, send_error = [False], []

        def sender():
            try:
                c.sock.sendall(new_order(*order) * n)
                sent[0] = True
            except OSError as e:
                send_error.append(e)

        base = peak = rss(ex.pid)
        t = threading.Thread(target=sender)
        t.start()
        try:
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                peak = max(peak, rss(ex.pid))
                time.sleep(0.01)
            print(f"# flood: RSS {base / MIB:.1f} MiB before, peak {peak / MIB:.1f} MiB while "
                  f"not read; all sent: {sent[0]}", flush=True)
            if check_rss:
                check(peak < 200 * MIB, f"RSS reached {peak / MIB:.0f} MiB")
                check(peak - base < 64 * MIB, f"RSS grew by {(peak - base) / MIB:.0f} MiB")
            other = ex.connect()
            try:
                o = (600000, 11, 5, b"S", 3, 99)
                other.send(new_order(*o))
                check_filled(other.expect(2), [o])
            finally:
                other.close()
            stream = bytearray()
            deadline = time.monotonic() + wait
            closed = False
            while len(stream) < n * pair.size:
                check(time.monotonic() < deadline,
                      f"{len(stream) // pair.size} of {n} replies within {wait} s")
                c.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    chunk = c.sock.recv(1 << 20)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    closed = True
                    break
                stream += chunk
            t.join(wait)
            check(not t.is_alive(), f"the sender still blocked {wait} s after reading began")
            whole = len(stream) // pair.size
            expect = (ACCEPT.size - 2, b"A", 777, account, FILL.size - 2, b"F", 777, account, 5,
                      b"B", 3, 1234)
            for i, r in enumerate(pair.iter_unpack(stream[:whole * pair.size])):
                if r[:-1] != expect or r[-1] != i + 1:
                    raise Failure(f"reply {i}: {r}")
            if closed:
                # The exchange closed it (over max_buffered): what it answered still holds.
                print(f"# flood: closed by the exchange after {whole} orders", flush=True)
            else:
                check(sent[0] and whole == n, f"{whole} of {n} answered: {send_error}")
        finally:
            c.close()
            t.join(wait)
        again = ex.connect()
        try:
            o = (600001, 11, 5, b"B", 4, 98)
            again.send(new_order(*o))
            check_filled(again.expect(2), [o])
        finally:
            again.close()
        rc, out, err = ex.stop()
        check(rc == 0, f"exit status {rc}: {err}")
        if not closed:
            want = (f"pith-exchange: orders {n + 2} accepted {n + 2} rejected 0 fills {n + 2} "
                    f"protocol_errors 0 connections 3")
            check(out.splitlines() == [want], f"summary {out!r}")
    finally:
        ex.kill()


def shutdown(ex, led, fills_path, wait):
    """SIGTERM: exit 0, the summary's counts are what the clients saw, and the fill log holds
    exactly the fills they received, sorted by account then seq."""
    rc, out, err = ex.stop()
    check(rc == 0, f"exit status {rc}: {err}")
    with open(fills_path) as f:
        text = f.read().splitlines()
    rows, log = [], {}
    for line in text:
        a, s, oid, loc, side, q, p = line.split()
        rows.append((int(a), int(s)))
        log[(int(a), int(s))] = (int(oid), int(loc), side, int(q), int(p))
    check(rows == sorted(rows), "the fill log is sorted by account then seq")
    check(len(log) == len(rows), "a fill appears twice in the log")
    want = (f"pith-exchange: orders {led.orders} accepted {led.accepted} rejected "
            f"{led.rejected} fills {len(led.fills)} protocol_errors {led.protocol_errors} "
            f"connections {led.conns}")
    lines = out.splitlines()
    check(lines == [want], f"stdout {lines}, want [{want!r}]")
    missing = set(led.fills) - set(log)
    extra = set(log) - set(led.fills)
    check(not missing and not extra,
          f"{len(missing)} fills received but not logged, {len(extra)} logged but not received")
    for k, v in led.fills.items():
        check(log[k] == v, f"fill {k}: logged {log[k]}, received {v}")


def partial_and_halted(binary, wait, tmp):
    """--partial splits each fill in two (qty/2, then the rest; a qty of 1 is one fill), each
    with its own seq; --reject-every 3 refuses every third order that passed its checks with
    'H', counting over the exchange, not the bad orders."""
    ex = Exchange(binary, ["--partial", "--reject-every", "3"], wait)
    try:
        c = ex.connect()
        try:
            orders = [(1, 20, 4, b"B", 101, 10), (2, 20, 4, b"S", 1, 11),
                      (3, 20, 4, b"B", 10, 12), (4, 20, 0, b"B", 10, 12),
                      (5, 21, 4, b"S", 7, 13), (6, 20, 4, b"S", 2, 14),
                      (7, 20, 4, b"B", 8, 15)]
            c.send(b"".join(new_order(*o) for o in orders))
            frames = c.expect(3 + 2 + 1 + 1 + 3 + 1 + 3)
            seqs = check_filled(frames[0:3], [orders[0]], 2)
            seqs2 = check_filled(frames[3:5], [orders[1]], 2)
            check(frames[5] == ("J", 3, 20, b"H"), f"third good order: {frames[5]}")
            check(frames[6] == ("J", 4, 20, b"L"), f"bad order: {frames[6]}")
            seqs3 = check_filled(frames[7:10], [orders[4]], 2)
            seqs4 = check_filled(frames[10:13], [orders[5]], 2)
            check(frames[13] == ("J", 7, 20, b"H"), f"sixth good order: {frames[13]}")
            check(seqs[20] + seqs2[20] + seqs4[20] == [1, 2, 3, 4, 5], "account 20's seqs")
            check(seqs3 == {21: [1, 2]}, f"account 21's seqs: {seqs3}")
        finally:
            c.close()
        rc, out, err = ex.stop()
        check(rc == 0, f"exit status {rc}: {err}")
        want = ("pith-exchange: orders 7 accepted 4 rejected 3 fills 7 protocol_errors 0 "
                "connections 1")
        check(out.splitlines() == [want], f"summary {out!r}")
    finally:
        ex.kill()


def log_bound(binary, wait, tmp):
    """--max-log 5 and 8 fills: 5 logged, and the summary and the log's last line say that 3
    were not."""
    path = os.path.join(tmp, "bounded.fills")
    ex = Exchange(binary, ["--fills", path, "--max-log", "5"], wait)
    try:
        c = ex.connect()
        try:
            orders = [(i, 30, 1, b"B", 1, 1) for i in range(8)]
            c.send(b"".join(new_order(*o) for o in orders))
            check_filled(c.expect(16), orders)
        finally:
            c.close()
        rc, out, err = ex.stop()
        check(rc == 0, f"exit status {rc}: {err}")
        want = ("pith-exchange: orders 8 accepted 8 rejected 0 fills 8 protocol_errors 0 "
                "connections 1 unlogged 3 (--max-log 5)")
        check(out.splitlines() == [want], f"summary {out!r}")
        with open(path) as f:
            lines = f.read().splitlines()
        check(len(lines) == 6, f"{len(lines)} lines: {lines}")
        check(all(len(x.split()) == 7 for x in lines[:5]), f"fill lines: {lines[:5]}")
        check(lines[5] == "# log full: 3 fills past --max-log 5 not logged", f"last: {lines[5]}")
    finally:
        ex.kill()


def usage_errors(binary, wait):
    """Bad arguments: a message on stderr and exit status 2, nothing listening."""
    for args in (["--port"], ["--port", "65536"], ["--shards", "0"], ["--max-qty", "x"],
                 ["--reject-every", "-1"], ["--nonsense"], ["--fills"]):
        p = subprocess.run([binary] + args, capture_output=True, text=True, timeout=wait)
        check(p.returncode == 2, f"{args}: exit status {p.returncode}")
        check("usage: pith-exchange" in p.stderr, f"{args}: stderr {p.stderr!r}")
        check(p.stdout == "", f"{args}: stdout {p.stdout!r}")


def main():
    if len(sys.argv) < 2:
        print("usage: market_exchange.py PITH_EXCHANGE [--no-rss]", file=sys.stderr)
        return 2
    binary = sys.argv[1]
    check_rss = "--no-rss" not in sys.argv[2:]
    wait = 10.0 if check_rss else 60.0
    with tempfile.TemporaryDirectory(prefix="market-exchange-") as tmp:
        fills_path = os.path.join(tmp, "exchange.fills")
        ex = None
        try:
            ex = Exchange(binary, ["--shards", "2", "--fills", fills_path], wait)
            led = Ledger()
            point("a batch of orders gets 'A' and 'F' each, gapless per account", batch, ex, led)
            point("invalid orders get 'J' with the reason of their first failed check", rejects,
                  ex, led)
            point("four connections on one account get 1..n between them", interleaved, ex, led)
            point("a bad frame closes its connection and no other", bad_frames, ex, led)
            point("SIGTERM: exit 0, the summary's counts, the fill log as received", shutdown, ex,
                  led, fills_path, wait)
        except Exception:
            tap("pith-exchange starts", False, traceback.format_exc())
        finally:
            if ex is not None:
                ex.kill()
        point("--partial fills in two, --reject-every refuses with 'H'", partial_and_halted,
              binary, wait, tmp)
        point("--max-log bounds the log and says so", log_bound, binary, wait, tmp)
        point("a client that never reads is not read, others are served", flood, binary,
              check_rss, wait)
        point("usage errors exit 2", usage_errors, binary, wait)
    return plan()


if __name__ == "__main__":
    sys.exit(main())
