#!/usr/bin/env python3
"""pith-kv end to end: starts the server on a loopback port and checks it against Redis 7's
replies, through the real redis-cli and through raw sockets (pipelined order across shards,
malformed input, slow requests, large values, many connections). TAP on stdout; not a benchmark.

    kv_integration.py PITH_KV REDIS_CLI
    kv_integration.py --reference PORT REDIS_CLI

--reference runs the checks whose expectations are Redis's own against a Redis 7 already
listening on 127.0.0.1:PORT, to confirm that they are (a developer's aid; nothing runs it)."""

import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # until the ready line
STOP_TIMEOUT = 5.0  # from SIGTERM to exit
IO_TIMEOUT = 15.0  # any one socket read or write
POLL = 0.02  # the polling interval of waits that have a deadline

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
NOT_INT = "ERR value is not an integer or out of range"


class Failure(Exception):
    """A check's expectation did not hold; the message says what was expected and what came."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def wait_until(pred, timeout, what):
    """Polls pred every POLL seconds until it is true; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Failure(f"{what}: not within {timeout} s")
        time.sleep(POLL)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- RESP over a raw socket ----

OK = ("+", "OK")
PONG = ("+", "PONG")
NIL = ("$", None)


def bulk(b):
    return ("$", b if isinstance(b, bytes) else str(b).encode())


def integer(n):
    return (":", n)


def err(msg):
    return ("-", msg)


def array(items):
    return ("*", list(items))


def cmd(*args):
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def show(reply, limit=120):
    text = repr(reply)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class Conn:
    """A client connection that reads RESP2 replies, each read bounded by IO_TIMEOUT."""

    def __init__(self, port, timeout=IO_TIMEOUT):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        if self.pos > (1 << 20):
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos : i])
                self.pos = i + 2
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = bytes(self.buf[self.pos : self.pos + n])
        check(self.buf[self.pos + n : self.pos + n + 2] == b"\r\n", "bulk reply without CRLF")
        self.pos += n + 2
        return data

    def reply(self):
        line = self._line()
        kind, rest = chr(line[0]), line[1:]
        if kind in "+-":
            return (kind, rest.decode(errors="replace"))
        if kind == ":":
            return (":", int(rest))
        if kind == "$":
            n = int(rest)
            return ("$", None) if n < 0 else ("$", self._exact(n))
        if kind == "*":
            n = int(rest)
            return ("*", None) if n < 0 else ("*", [self.reply() for _ in range(n)])
        raise Failure(f"not a RESP reply: {show(line)}")

    def call(self, *args):
        self.send(cmd(*args))
        return self.reply()

    def expect(self, args, want):
        got = self.call(*args)
        check(got == want, f"{show(args)}: expected {show(want)}, got {show(got)}")

    def expect_close(self, timeout=5.0):
        """The server closes the connection within timeout seconds and sends nothing more."""
        self.sock.settimeout(timeout)
        extra = bytes(self.buf[self.pos :])
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                extra += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise Failure(f"connection still open {timeout} s later") from None
        check(extra == b"", f"bytes after the last reply: {show(extra)}")


# ---- the server under test ----


class Server:
    """One pith-kv process on a free loopback port."""

    def __init__(self, exe, args):
        self.exe, self.args = exe, list(args)
        self.proc = None
        self.port = None

    def start(self):
        for _ in range(3):  # another process may take the port between the probe and the bind
            self.port = free_port()
            self.err = tempfile.TemporaryFile()
            argv = [self.exe, "--port", str(self.port)] + self.args
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=self.err)
            try:
                line = self._ready_line()
            except Failure:
                if self.proc.poll() is not None and "in use" in self.stderr():
                    continue
                self.kill()
                raise
            a = self.args
            shards = a[a.index("--shards") + 1] if "--shards" in a else r"\d+"
            spread = "acceptor" if "--acceptor" in a else "reuseport"
            want = (rf"pith-kv: listening on {re.escape(HOST)}:{self.port} "
                    rf"with {shards} shards? \({spread}\)")
            check(re.fullmatch(want, line) is not None, f"ready line {line!r} is not {want!r}")
            return self
        raise Failure("no free port after 3 tries")

    def _ready_line(self):
        deadline = time.monotonic() + START_TIMEOUT
        fd = self.proc.stdout.fileno()
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"no ready line within {START_TIMEOUT} s (stdout so far {buf!r})")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    rc = self.proc.wait(timeout=STOP_TIMEOUT)
                    raise Failure(f"exited with {rc} before its ready line: {self.stderr()}")
                buf += chunk
        line, self.rest = buf.split(b"\n", 1)  # rest: what followed it (kv_prometheus.py)
        return line.decode(errors="replace")

    def stderr(self):
        """The server's stderr: from a sanitizer's report where there is one, else its end."""
        self.err.seek(0)
        text = self.err.read().decode(errors="replace").strip()
        report = re.search(r"^.*(ERROR|WARNING): \w+Sanitizer", text, re.M)
        if report is not None:
            return text[report.start() : report.start() + 4000]
        return text[-2000:] if text else "(no stderr)"

    def alive(self):
        """Running, and no memory error reported so far (by the engine's allocator, which
        names a double free, or by a sanitizer)."""
        rc = self.proc.poll()
        check(rc is None, f"pith-kv {' '.join(self.args)} died with {rc}: {self.stderr()}")
        self.err.seek(0)
        text = self.err.read().decode(errors="replace")
        bad = re.search(r"^.*(double free|Sanitizer|runtime error).*$", text, re.M)
        check(bad is None, f"pith-kv {' '.join(self.args)} reported: {bad and bad.group(0)}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM; the server must exit 0 within STOP_TIMEOUT."""
        if self.proc.poll() is not None:
            raise Failure(f"died before SIGTERM with {self.proc.returncode}: {self.stderr()}")
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure(f"still running {STOP_TIMEOUT} s after SIGTERM") from None
        finally:
            self.proc.stdout.close()
        check(rc == 0, f"exit status {rc} after SIGTERM: {self.stderr()}")


# ---- redis-cli checks: the expected text is what redis-cli --no-raw prints for Redis 7 ----


def cli_arr(items):
    """redis-cli's array: indexes right-aligned to the widest."""
    w = len(str(len(items)))
    return "\n".join(f"{n:>{w}}) {v}" for n, v in enumerate(items, 1)) or "(empty array)"


def q(s):
    """redis-cli's quoted form of a printable string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def i(n):
    return f"(integer) {n}"


def e(msg):
    return f"(error) {msg}"


def between(lo, hi):
    """An integer reply in [lo, hi]."""

    def ok(out):
        m = re.fullmatch(r"\(integer\) (-?\d+)", out)
        return m is not None and lo <= int(m.group(1)) <= hi

    ok.text = f"(integer) in [{lo}, {hi}]"
    return ok


def matches(pattern):
    """Output that matches the regular expression (INFO is printed raw, its CRLFs included)."""

    def ok(out):
        return re.fullmatch(pattern, out) is not None

    ok.text = f"a match for {pattern!r}"
    return ok


def arity(name):
    return e(f"ERR wrong number of arguments for '{name}' command")


def unknown(*args):
    tail = "".join(f"'{a}' " for a in args[1:])
    return e(f"ERR unknown command '{args[0]}', with args beginning with: {tail}")


BINARY = bytes(range(256)) + b"\r\n\x00end"


def binary_text(b):
    """redis-cli's quoted form of any bytes (sdscatrepr)."""
    out = []
    for c in b:
        ch = chr(c)
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch in "\n\r\t\a\b":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\a": "\\a", "\b": "\\b"}[ch])
        elif 32 <= c < 127:
            out.append(ch)
        else:
            out.append(f"\\x{c:02x}")
    return '"' + "".join(out) + '"'


MANY = 200  # keys in the MSET/MGET checks: both shards own some of them

CLI_GROUPS = {
    "strings": [
        (["FLUSHALL"], "OK"),
        (["PING"], "PONG"),
        (["PING", "hello world"], q("hello world")),
        (["ECHO", "hi there"], q("hi there")),
        (["SET", "k", "v"], "OK"),
        (["GET", "k"], q("v")),
        (["set", "k", "v2"], "OK"),
        (["GeT", "k"], q("v2")),
        (["GET", "missing"], "(nil)"),
        (["SET", "empty", ""], "OK"),
        (["GET", "empty"], q("")),
        (["SET", "", "empty key"], "OK"),
        (["GET", ""], q("empty key")),
        (["SET", "key with spaces", 'a "quoted" \\ value'], "OK"),
        (["GET", "key with spaces"], q('a "quoted" \\ value')),
        (["SET", "utf8", "h\u00e9llo \u2713"], "OK"),
        (["GET", "utf8"], '"h\\xc3\\xa9llo \\xe2\\x9c\\x93"'),
        (["SET", "crlf", "a\r\nb\r\n"], "OK"),
        (["GET", "crlf"], '"a\\r\\nb\\r\\n"'),
        (["-x", "SET", "bin"], "OK", BINARY),
        (["GET", "bin"], binary_text(BINARY)),
        (["-x", "SET", BINARY[:40].replace(b"\x00", b"0").decode("latin-1")], "OK", b"binkey"),
        (["EXISTS", "bin", "k", "missing"], i(2)),
    ],
    "multi-key": [
        (["FLUSHALL"], "OK"),
        (["MSET"] + [x for n in range(MANY) for x in (f"key:{n}", f"value:{n}")], "OK"),
        (["DBSIZE"], i(MANY)),
        (["MGET"] + [f"key:{n}" if n % 7 else f"nokey:{n}" for n in range(MANY)],
         cli_arr([q(f"value:{n}") if n % 7 else "(nil)" for n in range(MANY)])),
        (["MGET", "key:1"], cli_arr([q("value:1")])),
        (["MSET", "dup", "1", "dup", "2", "other", "3"], "OK"),
        (["MGET", "dup", "other", "dup"], cli_arr([q("2"), q("3"), q("2")])),
        (["DEL"] + [f"key:{n}" for n in range(0, MANY, 2)] + ["nokey", "key:0"], i(MANY // 2)),
        (["DEL", "key:0"], i(0)),
        (["EXISTS"] + [f"key:{n}" for n in range(MANY)] + ["key:1", "nokey"], i(MANY // 2 + 1)),
        (["EXISTS", "nokey"], i(0)),
        (["DBSIZE"], i(MANY // 2 + 2)),
        (["MGET", "key:0", "key:1", "key:2", "key:3"],
         cli_arr(["(nil)", q("value:1"), "(nil)", q("value:3")])),
    ],
    "integers": [
        (["FLUSHALL"], "OK"),
        (["INCR", "n"], i(1)),
        (["INCR", "n"], i(2)),
        (["DECR", "n"], i(1)),
        (["DECR", "fresh"], i(-1)),
        (["INCRBY", "n", "41"], i(42)),
        (["INCRBY", "n", "-50"], i(-8)),
        (["DECRBY", "n", "-10"], i(2)),
        (["DECRBY", "n", "3"], i(-1)),
        (["GET", "n"], q("-1")),
        (["SET", "n", "10"], "OK"),
        (["INCR", "n"], i(11)),
        (["GET", "n"], q("11")),
        (["SET", "s", "abc"], "OK"),
        (["INCR", "s"], e(NOT_INT)),
        (["GET", "s"], q("abc")),
        (["SET", "s", " 5"], "OK"),
        (["INCR", "s"], e(NOT_INT)),
        (["SET", "s", "05"], "OK"),
        (["INCR", "s"], e(NOT_INT)),
        (["SET", "s", "+5"], "OK"),
        (["INCR", "s"], e(NOT_INT)),
        (["SET", "s", "1.5"], "OK"),
        (["DECR", "s"], e(NOT_INT)),
        (["SET", "s", ""], "OK"),
        (["INCRBY", "s", "1"], e(NOT_INT)),
        (["SET", "s", "99999999999999999999"], "OK"),
        (["INCR", "s"], e(NOT_INT)),
        (["INCRBY", "n", "abc"], e(NOT_INT)),
        (["INCRBY", "n", "1.5"], e(NOT_INT)),
        (["INCRBY", "n", ""], e(NOT_INT)),
        (["DECRBY", "n", "9223372036854775808"], e(NOT_INT)),
        (["GET", "n"], q("11")),
        (["SET", "max", str(LLONG_MAX)], "OK"),
        (["INCR", "max"], e("ERR increment or decrement would overflow")),
        (["INCRBY", "max", "1"], e("ERR increment or decrement would overflow")),
        (["DECR", "max"], i(LLONG_MAX - 1)),
        (["INCR", "max"], i(LLONG_MAX)),
        (["SET", "min", str(LLONG_MIN)], "OK"),
        (["DECR", "min"], e("ERR increment or decrement would overflow")),
        (["DECRBY", "min", "1"], e("ERR increment or decrement would overflow")),
        (["INCRBY", "min", str(LLONG_MAX)], i(-1)),
        (["INCRBY", "zero", str(LLONG_MIN)], i(LLONG_MIN)),
        (["INCRBY", "n", str(LLONG_MAX)], e("ERR increment or decrement would overflow")),
        (["SET", "z", "0"], "OK"),
        (["DECRBY", "z", str(LLONG_MIN)], e("ERR decrement would overflow")),
        (["GET", "z"], q("0")),
        (["SET", "neg", "-0"], "OK"),
        (["INCR", "neg"], e(NOT_INT)),
    ],
    "expire": [
        (["FLUSHALL"], "OK"),
        (["TTL", "nokey"], i(-2)),
        (["PTTL", "nokey"], i(-2)),
        (["EXPIRE", "nokey", "100"], i(0)),
        (["PEXPIRE", "nokey", "100"], i(0)),
        (["EXISTS", "nokey"], i(0)),
        (["SET", "p", "v"], "OK"),
        (["TTL", "p"], i(-1)),
        (["PTTL", "p"], i(-1)),
        (["EXPIRE", "p", "100"], i(1)),
        (["TTL", "p"], between(99, 100)),
        (["PTTL", "p"], between(90000, 100000)),
        (["SET", "p", "v2"], "OK"),
        (["TTL", "p"], i(-1)),
        (["SET", "p", "v3", "EX", "100"], "OK"),
        (["SET", "p", "v4", "KEEPTTL"], "OK"),
        (["TTL", "p"], between(99, 100)),
        (["GET", "p"], q("v4")),
        (["SET", "c", "5", "EX", "100"], "OK"),
        (["INCR", "c"], i(6)),
        (["TTL", "c"], between(99, 100)),
        (["MSET", "c", "7"], "OK"),
        (["TTL", "c"], i(-1)),
        (["PEXPIRE", "p", "1500"], i(1)),
        (["PTTL", "p"], between(1, 1500)),
        (["TTL", "p"], between(1, 2)),
        (["EXPIRE", "p", "0"], i(1)),
        (["EXISTS", "p"], i(0)),
        (["TTL", "p"], i(-2)),
        (["SET", "p", "v"], "OK"),
        (["EXPIRE", "p", "-10"], i(1)),
        (["GET", "p"], "(nil)"),
        (["SET", "p", "v"], "OK"),
        (["PEXPIRE", "p", "-1"], i(1)),
        (["DBSIZE"], i(1)),
        (["SET", "p", "v"], "OK"),
        (["EXPIRE", "p", "abc"], e(NOT_INT)),
        (["EXPIRE", "p", "1.5"], e(NOT_INT)),
        (["PEXPIRE", "p", ""], e(NOT_INT)),
        (["EXPIRE", "p", str(LLONG_MAX)], e("ERR invalid expire time in 'expire' command")),
        (["EXPIRE", "p", str(LLONG_MIN)], e("ERR invalid expire time in 'expire' command")),
        (["PEXPIRE", "p", str(LLONG_MAX)], e("ERR invalid expire time in 'pexpire' command")),
        (["TTL", "p"], i(-1)),
        (["EXPIRE", "p", "5000000000000000"], i(1)),
        (["TTL", "p"], between(4999999999999999, 5000000000000000)),
    ],
    "set-options": [
        (["FLUSHALL"], "OK"),
        (["SET", "x", "1", "NX"], "OK"),
        (["SET", "x", "2", "NX"], "(nil)"),
        (["GET", "x"], q("1")),
        (["SET", "y", "1", "XX"], "(nil)"),
        (["EXISTS", "y"], i(0)),
        (["SET", "x", "3", "xx"], "OK"),
        (["GET", "x"], q("3")),
        (["SET", "x", "4", "NX", "XX"], e("ERR syntax error")),
        (["SET", "x", "4", "XX", "NX"], e("ERR syntax error")),
        (["SET", "x", "4", "EX", "0"], e("ERR invalid expire time in 'set' command")),
        (["SET", "x", "4", "EX", "-1"], e("ERR invalid expire time in 'set' command")),
        (["SET", "x", "4", "PX", "0"], e("ERR invalid expire time in 'set' command")),
        (["SET", "x", "4", "EX", str(LLONG_MAX)], e("ERR invalid expire time in 'set' command")),
        (["SET", "x", "4", "PX", str(LLONG_MAX)], e("ERR invalid expire time in 'set' command")),
        (["SET", "x", "4", "EX", "abc"], e(NOT_INT)),
        (["SET", "x", "4", "PX", "1.5"], e(NOT_INT)),
        (["SET", "x", "4", "EX"], e("ERR syntax error")),
        (["SET", "x", "4", "FOO"], e("ERR syntax error")),
        (["SET", "x", "4", "KEEPTTL", "EX", "10"], e("ERR syntax error")),
        (["SET", "x", "4", "EX", "10", "KEEPTTL"], e("ERR syntax error")),
        (["SET", "x", "4", "EX", "10", "PX", "100"], e("ERR syntax error")),
        (["SET", "x", "4", "PX", "100", "EX", "10"], e("ERR syntax error")),
        (["GET", "x"], q("3")),
        (["TTL", "x"], i(-1)),
        (["SET", "x", "5", "EX", "100", "NX"], "(nil)"),
        (["TTL", "x"], i(-1)),
        (["SET", "nx1", "5", "ex", "100", "nx"], "OK"),
        (["TTL", "nx1"], between(99, 100)),
        (["SET", "x", "6", "px", "100000", "xx"], "OK"),
        (["PTTL", "x"], between(90000, 100000)),
        (["SET", "x", "7", "XX", "XX"], "OK"),
        (["SET", "x", "8", "NX", "NX"], "(nil)"),
        (["SET", "x", "9", "KEEPTTL", "KEEPTTL"], "OK"),
        (["SET", "far", "1", "EX", "5000000000000000"], "OK"),
        (["TTL", "far"], between(4999999999999999, 5000000000000000)),
        (["SET", "x", "10", "EX", "10", "EX", "20"], "OK"),
        (["TTL", "x"], between(19, 20)),
        (["GET", "x"], q("10")),
    ],
    "keyspace": [
        (["FLUSHALL"], "OK"),
        (["DBSIZE"], i(0)),
        (["MSET"] + [x for n in range(50) for x in (f"ks:{n}", "v")], "OK"),
        (["SET", "ttl1", "v", "EX", "1000"], "OK"),
        (["SET", "ttl2", "v", "PX", "1000000"], "OK"),
        (["DBSIZE"], i(52)),
        (["INFO", "keyspace"], matches(r"# Keyspace\r\ndb0:keys=52,expires=2,avg_ttl=\d+\r\n?")),
        (["DEL", "ttl1", "ks:0"], i(2)),
        (["SET", "ttl2", "w"], "OK"),
        (["INFO", "keyspace"], matches(r"# Keyspace\r\ndb0:keys=50,expires=0,avg_ttl=\d+\r\n?")),
        (["FLUSHALL"], "OK"),
        (["DBSIZE"], i(0)),
        (["INFO", "keyspace"], matches(r"# Keyspace\r\n?")),
        (["EXISTS", "ks:1"], i(0)),
        (["SET", "a", "1"], "OK"),
        (["FLUSHDB"], "OK"),
        (["DBSIZE"], i(0)),
        (["SET", "a", "1"], "OK"),
        (["FLUSHALL", "ASYNC"], "OK"),
        (["SET", "a", "1"], "OK"),
        (["FLUSHDB", "SYNC"], "OK"),
        (["SET", "a", "1"], "OK"),
        (["FLUSHALL", "bogus"], e("ERR syntax error")),
        (["DBSIZE"], i(1)),
        (["FLUSHALL"], "OK"),
    ],
    "errors": [
        (["FOOBAR"], unknown("FOOBAR")),
        (["foobar", "a", "b"], unknown("foobar", "a", "b")),
        (["GETX", "k"], unknown("GETX", "k")),
        (["GET"], arity("get")),
        (["GeT", "a", "b"], arity("get")),
        (["SET", "k"], arity("set")),
        (["DEL"], arity("del")),
        (["EXISTS"], arity("exists")),
        (["MGET"], arity("mget")),
        (["MSET"], arity("mset")),
        (["MSET", "a"], arity("mset")),
        (["MSET", "a", "1", "b"], arity("mset")),
        (["INCR"], arity("incr")),
        (["INCR", "a", "b"], arity("incr")),
        (["DECR"], arity("decr")),
        (["INCRBY", "a"], arity("incrby")),
        (["DECRBY", "a", "1", "2"], arity("decrby")),
        (["TTL"], arity("ttl")),
        (["PTTL", "a", "b"], arity("pttl")),
        (["EXPIRE", "a"], arity("expire")),
        (["PEXPIRE"], arity("pexpire")),
        (["DBSIZE", "x"], arity("dbsize")),
        (["ECHO"], arity("echo")),
        (["ECHO", "a", "b"], arity("echo")),
        (["PING", "a", "b"], arity("ping")),
        (["SELECT"], arity("select")),
        (["SELECT", "0"], "OK"),
        (["QUIT"], "OK"),
        (["PING"], "PONG"),
    ],
}

# What pith-kv answers by design where Redis answers otherwise (one database, no command table,
# no configuration): checked on pith-kv only.
CLI_PITH_ONLY = [
    (["SELECT", "1"], e("ERR DB index is out of range")),
    (["CONFIG", "GET", "save"], '1) "save"\n2) ""'),  # as Redis with persistence off
    (["COMMAND"], "(empty array)"),
    (["INFO", "server"], matches(r"# Server\r\nredis_version:[0-9.]+\r\n(?s:.*)")),
    (["INFO", "nosuchsection"], ""),
]


def run_cli(cli, port, args, stdin=None):
    argv = [cli, "-h", HOST, "-p", str(port), "--no-raw"] + args
    r = subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True,
                       timeout=IO_TIMEOUT)
    out = r.stdout.decode("latin-1")
    out = out[:-1] if out.endswith("\n") else out
    if r.returncode != 0:
        out += f" [redis-cli exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}]"
    return out


def cli_group(cli, port, cases):
    bad = []
    for case in cases:
        args, want = case[0], case[1]
        stdin = case[2] if len(case) > 2 else None
        got = run_cli(cli, port, args, stdin)
        ok = want(got) if callable(want) else got == want
        if not ok:
            shown = " ".join(repr(a) if " " in a or not a else a for a in args)
            bad.append(f"redis-cli {shown[:100]}\n    expected: "
                       f"{getattr(want, 'text', 'a match') if callable(want) else want!r}"
                       f"\n    got:      {got[:300]!r}")
    check(not bad, f"{len(bad)} of {len(cases)} replies differ:\n" + "\n".join(bad))


# ---- raw-socket checks ----


def check_inline_and_quit(port):
    """Inline commands, empty requests, and QUIT after pipelined work on both shards."""
    with Conn(port) as c:
        c.send(b"PING\r\nSET ik 'a b'\nGET ik\r\n\r\n*0\r\n*-1\r\nECHO \"x\\x41\\n\"\r\n"
               b"  get   ik  \r\n")
        for want in (PONG, OK, bulk("a b"), bulk(b"xA\n"), bulk("a b")):
            got = c.reply()
            check(got == want, f"inline: expected {show(want)}, got {show(got)}")
    with Conn(port) as c:
        keys = [f"quit:{n}" for n in range(20)]
        data = b"".join(cmd("SET", k, k) for k in keys) + b"".join(cmd("GET", k) for k in keys)
        c.send(data + cmd("QUIT") + cmd("SET", "after-quit", "1") + cmd("PING"))
        for want in [OK] * 20 + [bulk(k) for k in keys] + [OK]:
            got = c.reply()
            check(got == want, f"before QUIT: expected {show(want)}, got {show(got)}")
        c.expect_close()
    with Conn(port) as c:
        c.expect(["EXISTS", "after-quit"], integer(0))


def check_split_writes(port):
    """A command that arrives one byte per write is parsed as one command."""
    with Conn(port) as c:
        for b in cmd("SET", "split", "byte by byte") + cmd("GET", "split"):
            c.send(bytes([b]))
        for want in (OK, bulk("byte by byte")):
            got = c.reply()
            check(got == want, f"expected {show(want)}, got {show(got)}")


def check_expiry(port):
    """Keys with a TTL disappear: on access, and by the background sweep without any access."""
    with Conn(port) as c:
        c.expect(["SET", "exp:read", "v", "PX", "100"], OK)
        wait_until(lambda: c.call("GET", "exp:read") == NIL, 5, "GET of a key with PX 100 is nil")
        c.expect(["TTL", "exp:read"], integer(-2))
        c.expect(["EXISTS", "exp:read"], integer(0))
        base = c.call("DBSIZE")[1]
        for n in range(40):
            c.expect(["SET", f"exp:sweep:{n}", "v", "PX", "50"], OK)
        wait_until(lambda: c.call("DBSIZE")[1] == base, 10,
                   f"DBSIZE back to {base} after 40 keys with PX 50 expire untouched")


def pipeline_script(cid, n):
    """n commands for connection cid, and the replies Redis gives them, from a model."""
    rnd = random.Random(1000 + cid)
    strings = [f"pipe:{cid}:s:{k}" for k in range(32)]
    counters = [f"pipe:{cid}:c:{k}" for k in range(16)]
    model = {}
    cmds, want = [], []

    def value(k):
        return bulk(model[k]) if k in model else NIL

    for seq in range(n):
        r = rnd.random()
        if r < 0.25:
            k = rnd.choice(strings)
            model[k] = f"v{seq}"
            cmds.append(("SET", k, model[k]))
            want.append(OK)
        elif r < 0.45:
            k = rnd.choice(strings)
            cmds.append(("GET", k))
            want.append(value(k))
        elif r < 0.60:
            k = rnd.choice(counters)
            model[k] = str(int(model.get(k, "0")) + 1)
            cmds.append(("INCR", k))
            want.append(integer(int(model[k])))
        elif r < 0.62:
            k = rnd.choice(strings)
            cmds.append(("INCR", k))
            if k in model:
                want.append(err(NOT_INT))
            else:
                model[k] = "1"
                want.append(integer(1))
        elif r < 0.72:
            cmds.append(("PING",))
            want.append(PONG)
        elif r < 0.82:
            cmds.append(("ECHO", f"seq:{seq}"))
            want.append(bulk(f"seq:{seq}"))
        elif r < 0.88:
            ks = rnd.sample(strings + counters, 4)
            cmds.append(("MGET",) + tuple(ks))
            want.append(array(value(k) for k in ks))
        elif r < 0.92:
            ks = rnd.sample(strings, 3)
            cmds.append(("EXISTS",) + tuple(ks))
            want.append(integer(sum(k in model for k in ks)))
        elif r < 0.95:
            k = rnd.choice(strings)
            cmds.append(("DEL", k))
            want.append(integer(1 if model.pop(k, None) is not None else 0))
        elif r < 0.98:
            ks = rnd.sample(strings, 2)
            for k in ks:
                model[k] = f"m{seq}"
            cmds.append(("MSET", ks[0], model[ks[0]], ks[1], model[ks[1]]))
            want.append(OK)
        else:
            cmds.append(("ECHO", seq, "extra"))
            want.append(err("ERR wrong number of arguments for 'echo' command"))
    if cid == 0:
        cmds.append(("QUIT",))
        want.append(OK)
    return cmds, want


def pipeline_one(port, cid, n, errors):
    cmds, want = pipeline_script(cid, n)
    payload = b"".join(cmd(*a) for a in cmds)
    try:
        with Conn(port) as c:
            # One write of the whole pipeline, from its own thread, while this one reads: a
            # server that answers as it reads must not be stalled by a client that only writes.
            failed = []

            def write():
                try:
                    c.send(payload)
                except OSError as exc:
                    failed.append(exc)

            writer = threading.Thread(target=write)
            writer.start()
            bad = []
            try:
                # Every reply is read even after a mismatch: a client that leaves replies
                # unread is a different check (check_close_mid_pipeline).
                for k in range(len(cmds)):
                    got = c.reply()
                    if got != want[k] and len(bad) < 5:
                        bad.append(f"conn {cid} reply {k} to {show(cmds[k], 60)}: "
                                   f"expected {show(want[k])}, got {show(got)}")
            finally:
                writer.join(IO_TIMEOUT)
            if failed:
                bad.append(f"conn {cid}: the write failed: {failed[0]!r}")
            elif not bad and cmds[-1] == ("QUIT",):
                try:
                    c.expect_close()
                except Failure as exc:
                    bad.append(f"conn {cid} after QUIT: {exc}")
            errors.extend(bad)
    except (OSError, EOFError, Failure, ValueError) as exc:
        errors.append(f"conn {cid}: {exc!r}")


def check_pipeline(port, conns=4, n=10000):
    """conns connections at once, each sending n mixed commands in one write; every reply is
    exactly the expected one, in request order."""
    with Conn(port) as c:
        c.expect(["FLUSHALL"], OK)
    errors = []
    threads = [threading.Thread(target=pipeline_one, args=(port, cid, n, errors))
               for cid in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, "\n".join(errors[:20]))


def check_close_mid_pipeline(port):
    """Clients that close with most of their pipeline's replies unread (the server is still
    sending, and waiting for replies owed by other shards) do not disturb the server: new
    connections, whichever shard takes them, are served."""
    for nth, n in enumerate((500, 10000, 10000, 10000, 10000, 10000)):
        try:
            with Conn(port) as c:
                c.send(b"".join(cmd("GET", f"close:{k}") for k in range(n)))
                got = c.reply()
                check(got == NIL, f"first of {n} pipelined GETs: {show(got)}")
        except (OSError, EOFError) as exc:
            raise Failure(f"client {nth} ({n} pipelined GETs, closes after the first reply), "
                          f"before its first reply: {exc!r}") from None
    for k in range(8):
        try:
            with Conn(port) as c:
                c.expect(["PING"], PONG)
                c.expect(["SET", f"after-close:{k}", "v"], OK)
                c.expect(["GET", f"after-close:{k}"], bulk("v"))
        except (OSError, EOFError) as exc:
            raise Failure(f"connection {k} after clients closed mid-pipeline: {exc!r}") from None


def check_large_values(port):
    """512 KiB values, pipelined SETs and GETs and one MGET, come back byte for byte."""
    rnd = random.Random(512)
    values = {f"large:{n}": rnd.randbytes(512 * 1024) for n in range(8)}
    with Conn(port) as c:
        c.send(b"".join(cmd("SET", k, v) for k, v in values.items()))
        for k in values:
            got = c.reply()
            check(got == OK, f"SET {k} <512 KiB>: got {show(got)}")
        for k, v in values.items():
            got = c.call("GET", k)
            check(got == bulk(v), f"GET {k}: {show(got)} is not the 512 KiB value set")
        got = c.call("MGET", *values)
        check(got == array(bulk(v) for v in values.values()), "MGET of the large values differs")


def check_many_clients(port, clients=200, reference=False):
    """clients connections open at once, each doing SET/GET/INCR/DEL on its own keys."""
    barrier = threading.Barrier(clients + 1, timeout=60)
    errors = []

    def client(n):
        try:
            with Conn(port) as c:
                v = f"value of client {n} " * (n % 5 + 1)
                c.expect(["SET", f"client:{n}", v], OK)
                c.expect(["GET", f"client:{n}"], bulk(v))
                barrier.wait()  # every connection is open (it has had a reply) here
                barrier.wait()  # the main thread has counted them
                c.expect(["INCRBY", f"client:{n}:ctr", n], integer(n))
                c.expect(["GET", f"client:{n}"], bulk(v))
                c.expect(["DEL", f"client:{n}", f"client:{n}:ctr"], integer(2))
        except (OSError, EOFError, Failure, ValueError, threading.BrokenBarrierError) as exc:
            errors.append(f"client {n}: {exc!r}")
            barrier.abort()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
        if not reference:
            with Conn(port) as c:
                info = c.call("INFO", "clients")[1].decode()
                m = re.search(r"connected_clients:(\d+)", info)
                check(m is not None and int(m.group(1)) >= clients + 1,
                      f"INFO clients with {clients + 1} connections open: {info!r}")
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    finally:
        for t in threads:
            t.join()
    check(not errors, f"{len(errors)} clients failed:\n" + "\n".join(errors[:10]))
    if not reference:
        connections_drain(port)


def connected_clients(port):
    with Conn(port) as c:
        info = c.call("INFO", "clients")[1].decode()
    return int(re.search(r"connected_clients:(\d+)", info).group(1))


def connections_drain(port):
    """Every connection the client side closed is gone on the server (only the asking one)."""
    wait_until(lambda: connected_clients(port) == 1, 10, "INFO connected_clients back to 1")


# ---- malformed input (a server started with --max-bulk 1024) ----

BAD_INPUT = [
    ("non-numeric multibulk length", b"*abc\r\n", "ERR Protocol error: invalid multibulk length"),
    ("multibulk length over the argument cap (268,435,456)", b"*268435457\r\n",
     "ERR Protocol error: invalid multibulk length"),
    ("multibulk header over 64 KiB", b"*" + b"1" * 70000,
     "ERR Protocol error: too big mbulk count string"),
    ("negative bulk length", b"*1\r\n$-5\r\n", "ERR Protocol error: invalid bulk length"),
    ("non-numeric bulk length", b"*1\r\n$x1\r\n", "ERR Protocol error: invalid bulk length"),
    ("bulk length over --max-bulk", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n",
     "ERR Protocol error: invalid bulk length"),
    ("bulk without '$'", b"*1\r\nPING\r\n", "ERR Protocol error: expected '$', got 'P'"),
    ("bulk data without its CRLF", b"*1\r\n$4\r\nPINGxx", "ERR Protocol error:"),
    ("inline line over 64 KiB, no newline", b"A" * 70000,
     "ERR Protocol error: too big inline request"),
    ("inline line over 64 KiB", b"SET k " + b"x" * 70000 + b"\r\n",
     "ERR Protocol error: too big inline request"),
    ("inline unbalanced quotes", b'SET k "abc\r\n',
     "ERR Protocol error: unbalanced quotes in request"),
]


def check_bad_input(port, name, payload, want_prefix):
    """Commands before the bad request are answered in order, then one error line, then the
    server closes the connection; what followed the bad request is never run."""
    keys = [f"bad:{n}" for n in range(16)]
    with Conn(port) as c:
        c.call("DEL", *keys, "bad:after")
        good = b"".join(cmd("SET", k, k) for k in keys) + b"".join(cmd("GET", k) for k in keys)
        after = cmd("SET", "bad:after", "1")
        c.send(good + payload + after)
        for want in [OK] * len(keys) + [bulk(k) for k in keys]:
            got = c.reply()
            check(got == want, f"{name}: before the bad request expected {show(want)}, "
                  f"got {show(got)}")
        try:
            got = c.reply()
        except EOFError:
            raise Failure(f"{name}: closed without an error reply") from None
        check(got[0] == "-" and got[1].startswith(want_prefix),
              f"{name}: expected an error starting {want_prefix!r}, got {show(got)}")
        c.expect_close()
    with Conn(port) as c:
        c.expect(["EXISTS", "bad:after"], integer(0))
        c.expect(["PING"], PONG)


def check_max_bulk_boundary(port):
    """A bulk of exactly --max-bulk bytes is taken."""
    v = bytes(random.Random(7).randbytes(1024))
    with Conn(port) as c:
        c.expect(["SET", "edge", v], OK)
        c.expect(["GET", "edge"], bulk(v))


def check_garbage(port, conns=50):
    """Random bytes on conns connections at once: the server survives and, once each client
    has sent its garbage and shut down its side, closes every connection."""
    rnd = random.Random(20240607)
    payloads = []
    for n in range(conns):
        parts = []
        for _ in range(rnd.randint(1, 8)):
            kind = rnd.random()
            if kind < 0.3:
                parts.append(rnd.randbytes(rnd.randint(1, 2048)))
            elif kind < 0.5:  # plausible headers with random numbers and bodies
                parts.append(b"*%d\r\n$%d\r\n" % (rnd.randint(-3, 5), rnd.randint(-3, 3000))
                             + rnd.randbytes(rnd.randint(0, 64)))
            elif kind < 0.7:  # a valid command with random bytes flipped
                raw = bytearray(cmd("SET", f"g:{n}", rnd.randbytes(rnd.randint(0, 100))))
                for _ in range(rnd.randint(1, 3)):
                    raw[rnd.randrange(len(raw))] = rnd.randrange(256)
                parts.append(bytes(raw))
            elif kind < 0.85:  # inline noise
                parts.append(bytes(rnd.choice(b" \t\"'\\xAZaz09\r\n") for _ in range(200)))
            else:
                parts.append(cmd("PING"))
        payloads.append(b"".join(parts))
    errors = []

    def client(n):
        try:
            with Conn(port) as c:
                try:
                    c.send(payloads[n])
                    c.sock.shutdown(socket.SHUT_WR)
                except (BrokenPipeError, ConnectionResetError):
                    return  # closed on a protocol error while we wrote: as good as a close
                c.sock.settimeout(10)
                while c.sock.recv(65536):
                    pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            errors.append(f"garbage client {n}: not closed 10 s after it shut down its side")
        except OSError as exc:
            errors.append(f"garbage client {n}: {exc!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, "\n".join(errors[:10]))
    with Conn(port) as c:
        c.expect(["PING"], PONG)
        c.expect(["SET", "after-garbage", "ok"], OK)
        c.expect(["GET", "after-garbage"], bulk("ok"))
    connections_drain(port)


# ---- slow requests (a server started with --request-timeout 1) ----


def check_slowloris(port):
    """A half-sent command is answered "-ERR request timed out" and closed about a second
    later; a connection that stalls after trickling bytes too; idle and busy well-behaved
    connections carry on."""
    idle = Conn(port)
    busy = Conn(port)
    busy.expect(["PING"], PONG)
    slow = Conn(port)
    slow.send(b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$5\r\nhe")
    start = time.monotonic()
    slow.sock.setblocking(False)
    got = b""
    pings = 0
    while True:  # the busy client keeps working while the slow one waits for its verdict
        busy.expect(["PING"], PONG)
        pings += 1
        try:
            chunk = slow.sock.recv(4096)
            got += chunk
            if not chunk:
                break
        except BlockingIOError:
            pass
        except ConnectionResetError:
            break
        check(time.monotonic() - start < 10, f"stalled request not closed in 10 s (got {got!r})")
        time.sleep(POLL)
    elapsed = time.monotonic() - start
    check(got == b"-ERR request timed out\r\n",
          f"stalled request: expected '-ERR request timed out' and a close, got {got!r}")
    check(0.9 <= elapsed <= 5, f"stalled request closed after {elapsed:.2f} s (timeout 1 s)")
    slow.close()

    # One byte every 200 ms: progress on a command is not progress on a request.
    trickle = Conn(port)
    trickle.sock.settimeout(0.2)
    start = time.monotonic()
    data = cmd("SET", "trickle", "x" * 64)
    got = b""
    closed = False
    for b in data:
        try:
            trickle.send(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        try:
            chunk = trickle.sock.recv(4096)
            got += chunk
            if not chunk:
                closed = True
                break
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed = True
            break
    elapsed = time.monotonic() - start
    trickle.close()
    check(closed and got == b"-ERR request timed out\r\n",
          f"trickled request: expected '-ERR request timed out' and a close, got {got!r} "
          f"(closed: {closed}) after {elapsed:.2f} s")
    check(elapsed <= 5, f"trickled request closed after {elapsed:.2f} s (timeout 1 s)")

    idle.expect(["PING"], PONG)
    busy.expect(["SET", "busy", "1"], OK)
    busy.expect(["EXISTS", "slow", "trickle", "busy"], integer(1))
    idle.close()
    busy.close()


# ---- the run ----


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def run(self, name, fn, *args):
        self.n += 1
        try:
            fn(*args)
        except Failure as exc:
            self.fail(name, str(exc))
        except Exception:
            self.fail(name, traceback.format_exc())
        else:
            print(f"ok {self.n} - {name}", flush=True)
            return True
        return False

    def fail(self, name, text):
        self.failed += 1
        print(f"not ok {self.n} - {name}")
        for line in text.rstrip().splitlines():
            print(f"# {line}")
        sys.stdout.flush()

    def skip(self, name, why):
        self.n += 1
        print(f"ok {self.n} - {name} # SKIP {why}", flush=True)

    def finish(self):
        print(f"1..{self.n}", flush=True)
        return 1 if self.failed else 0


def protocol_checks(tap, tag, port, cli, reference=False):
    """The checks that hold for Redis 7 as much as for pith-kv. cli None: no redis-cli (a
    failure reported once, by the caller)."""
    if cli is None:
        tap.skip(f"{tag}: redis-cli checks", "no redis-cli (failed above)")
    else:
        for group, cases in CLI_GROUPS.items():
            tap.run(f"{tag}: redis-cli {group}", cli_group, cli, port, cases)
        if not reference:
            tap.run(f"{tag}: redis-cli pith-kv specifics", cli_group, cli, port, CLI_PITH_ONLY)
    tap.run(f"{tag}: inline commands and QUIT after a pipeline", check_inline_and_quit, port)
    tap.run(f"{tag}: a command split over one-byte writes", check_split_writes, port)
    tap.run(f"{tag}: expiry on access and by the sweep", check_expiry, port)
    tap.run(f"{tag}: 4 connections x 10000 pipelined commands, replies in order",
            check_pipeline, port)
    tap.run(f"{tag}: 512 KiB values byte-exact", check_large_values, port)
    tap.run(f"{tag}: 200 concurrent connections", check_many_clients, port, 200, reference)
    # Last: when it fails, the server it leaves behind may no longer serve the checks above.
    tap.run(f"{tag}: clients closing mid-pipeline leave the server serving",
            check_close_mid_pipeline, port)


def with_server(tap, exe, tag, args, body):
    server = Server(exe, args)
    if not tap.run(f"{tag}: pith-kv {' '.join(args)} starts and prints its ready line",
                   server.start):
        return
    try:
        body(server)
        tap.run(f"{tag}: the server is still running after the checks", server.alive)
    finally:
        tap.run(f"{tag}: SIGTERM stops it with status 0 within {STOP_TIMEOUT:.0f} s", server.stop)
        for c in getattr(server, "held", []):
            c.close()


def main(argv):
    tap = Tap()
    if len(argv) == 4 and argv[1] == "--reference":
        protocol_checks(tap, "redis", int(argv[2]), argv[3], reference=True)
        return tap.finish()
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    exe, cli = argv[1], argv[2]
    started = time.monotonic()
    # redis-cli is a declared dependency (redis-tools): without it the test fails, not skips.
    cli_found = bool(cli) and os.access(cli, os.X_OK)
    tap.run("redis-cli is installed (Debian package redis-tools)", check, cli_found,
            f"redis-cli not found ({cli!r}): install redis-tools (./pith.sh deps)")

    configs = [
        ("2 shards", ["--shards", "2"]),
        ("1 shard", ["--shards", "1"]),
        ("acceptor", ["--shards", "2", "--acceptor"]),
    ]
    for tag, args in configs:
        with_server(tap, exe, tag, args, lambda s, tag=tag: protocol_checks(
            tap, tag, s.port, cli if cli_found else None))

    def bad_input(s):
        for name, payload, want in BAD_INPUT:
            tap.run(f"bad input: {name}", check_bad_input, s.port, name, payload, want)
        tap.run("bad input: a bulk of exactly --max-bulk bytes is taken",
                check_max_bulk_boundary, s.port)
        tap.run("bad input: random bytes on 50 connections", check_garbage, s.port)

    with_server(tap, exe, "bad input", ["--shards", "2", "--max-bulk", "1024"], bad_input)

    def slow(s):
        tap.run("slow requests: stalled and trickled requests time out, others carry on",
                check_slowloris, s.port)
        # Stopped below with connections still open: shutdown must not wait for clients.
        s.held = [Conn(s.port), Conn(s.port)]
        s.held[1].send(b"*2\r\n$4\r\nECHO\r\n$3\r\nab")

    with_server(tap, exe, "slow requests", ["--shards", "2", "--request-timeout", "1"], slow)
    print(f"# total {time.monotonic() - started:.1f} s", flush=True)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
