#!/usr/bin/env python3
"""A real Prometheus server scrapes a running pith-kv: pith-kv --metrics-port on a loopback
port, prometheus started here with a scrape interval of 1 s on another, and its HTTP API asked
until the target is up, scraped without error, and the figures it stored agree with what the
test did (the shards, the clients it connected, the SETs' bytes). Also: promtool checks
what pith-kv serves, and pith-kv's /metrics answers curl-like requests and errors. Both servers
are stopped at the end. TAP on stdout; not a benchmark.

    kv_prometheus.py PITH_KV PROMETHEUS PROMTOOL

prometheus and promtool (Debian package prometheus, which ./pith.sh installs) are declared
dependencies: without them the test fails rather than skips."""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kv_integration import (  # noqa: E402
    HOST, STOP_TIMEOUT, Conn, Failure, Server, Tap, check, free_port, wait_until)

SHARDS = 2
CLIENTS = 5
SETS = 200


def second_line(server):
    """pith-kv's second stdout line: where its metrics are served."""
    deadline = time.monotonic() + 20
    fd = server.proc.stdout.fileno()
    buf = server.rest
    while buf.count(b"\n") < 1:
        left = deadline - time.monotonic()
        check(left > 0, f"no metrics line (stdout so far {buf!r})")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            check(chunk, f"pith-kv exited: {server.stderr()}")
            buf += chunk
    line = buf.split(b"\n")[0].decode()
    m = re.fullmatch(rf"pith-kv: metrics on http://{re.escape(HOST)}:(\d+)/metrics", line)
    check(m is not None, f"metrics line {line!r}")
    return int(m.group(1))


def http(port, raw, timeout=10.0):
    """Sends raw bytes, returns everything read until the peer closes."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def get_metrics(port):
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        check(r.status == 200, f"status {r.status}")
        ctype = r.headers.get("Content-Type")
        check(ctype.startswith("text/plain; version=0.0.4"), f"Content-Type {ctype}")
        return r.read().decode()


def sample(text, name, labels):
    """The value of name{labels} in the text format, or None."""
    want = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split(" ")[1])
    return None


def check_promtool(promtool, port):
    text = get_metrics(port)
    p = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=60)
    check(p.returncode == 0, f"promtool: {p.returncode}: {(p.stdout + p.stderr).decode()[:2000]}")
    check(sample(text, "pith_shards", {}) is None, "pith_shards has no labels")
    check(re.search(rf"^pith_shards {SHARDS}$", text, re.M), "pith_shards")


def check_http_errors(port):
    out = http(port, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 404 "), f"404: {out[:60]!r}")
    out = http(port, b"DELETE /metrics HTTP/1.1\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in out, f"405: {out[:80]!r}")
    out = http(port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n")  # TLS hello
    check(out.startswith(b"HTTP/1.1 400 "), f"400: {out[:60]!r}")
    out = http(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 200 ") and b"pith_shards" in out, "HTTP/1.0 answered, closed")


def write_load(port):
    """CLIENTS connections, SETS SETs each."""
    for c in range(CLIENTS):
        with Conn(port) as conn:
            for i in range(SETS):
                check(conn.call("SET", f"key:{c}:{i}", "v" * 100) == ("+", "OK"), "SET")


class Prometheus:
    def __init__(self, exe, target):
        self.exe, self.target = exe, target
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="pith-prom-")
        self.log = open(os.path.join(self.dir, "log"), "w+b")

    def start(self):
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: pith-kv\n    static_configs:\n"
                    f"      - targets: ['{self.target}']\n")
        for _ in range(3):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [self.exe, f"--config.file={cfg}",
                 f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                 f"--web.listen-address={HOST}:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

            def ready():
                if self.proc.poll() is not None:
                    return "exited"
                try:
                    with urllib.request.urlopen(f"http://{HOST}:{self.port}/-/ready",
                                                timeout=1) as r:
                        return r.status == 200
                except OSError:
                    return False

            if wait_until(ready, 60.0, "prometheus ready") is True:
                return self
        raise Failure(f"prometheus did not start: {self.logtext()}")

    def logtext(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def api(self, path, **params):
        url = f"http://{HOST}:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        check(body.get("status") == "success", f"{path}: {body}")
        return body["data"]

    def value(self, query):
        """The single value of an instant query, or None while it has no result."""
        res = self.api("query", query=query)["result"]
        return float(res[0]["value"][1]) if len(res) == 1 else None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def check_scraped(prom):
    def healthy():
        t = prom.api("targets")["activeTargets"]
        return len(t) == 1 and t[0]["health"] == "up" and t[0]["lastError"] == "" and t
    t = wait_until(healthy, 30.0, "the pith-kv target up and scraped without error")
    check(t[0]["scrapeUrl"].endswith("/metrics"), f"scrape URL {t[0]['scrapeUrl']}")
    # What was stored agrees with what the test did; later scrapes see every client.
    want_bytes = CLIENTS * SETS * 100

    def stored():
        shards = prom.value('pith_shards{job="pith-kv"}')
        accepted = prom.value('sum(pith_net_accepted_total{job="pith-kv"})')
        rx = prom.value('sum(pith_net_received_bytes_total{job="pith-kv"})')
        return (shards == SHARDS and accepted is not None and accepted >= CLIENTS and
                rx is not None and rx >= want_bytes) and (shards, accepted, rx)
    wait_until(stored, 30.0, "pith_shards, the accepted clients and the bytes in Prometheus")
    # Utilisation through PromQL: a rate over two scrapes, between 0 and 1 per shard.

    def util():
        res = prom.api("query", query='rate(pith_shard_busy_seconds_total{job="pith-kv"}[5s])')
        vals = [float(r["value"][1]) for r in res["result"]]
        return len(vals) == SHARDS and vals
    vals = wait_until(util, 30.0, "a utilisation rate per shard")
    check(all(0 <= v <= 1.05 for v in vals), f"utilisation {vals}")


def main(argv):
    exe, prom_exe, promtool = argv[1], argv[2], argv[3]
    tap = Tap()
    missing = [p for p in (prom_exe, promtool) if not p or not os.path.exists(p)]
    if missing:
        tap.run("prometheus and promtool are installed (./pith.sh installs them)",
                lambda: check(False, f"missing: {missing}"))
        return tap.finish()
    kv = Server(exe, ["--shards", str(SHARDS), "--metrics-port", "0"])
    if not tap.run("pith-kv --metrics-port 0 starts", kv.start):
        return tap.finish()
    prom = None
    try:
        mport = []
        tap.run("pith-kv prints where its metrics are", lambda: mport.append(second_line(kv)))
        if mport:
            tap.run("promtool check metrics passes what pith-kv serves", check_promtool, promtool,
                    mport[0])
            tap.run("/metrics answers errors and HTTP/1.0", check_http_errors, mport[0])
            tap.run(f"{CLIENTS} clients x {SETS} SETs", write_load, kv.port)
            prom = Prometheus(prom_exe, f"{HOST}:{mport[0]}")
            if tap.run("prometheus starts on a loopback port", prom.start):
                tap.run("prometheus scrapes pith-kv and stores its figures", check_scraped, prom)
        tap.run("pith-kv is still running", kv.alive)
    finally:
        if prom is not None:
            prom.stop()
        if kv.proc is not None and kv.proc.poll() is None:
            tap.run("pith-kv: SIGTERM stops it with status 0", kv.stop)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
