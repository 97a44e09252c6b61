#!/usr/bin/env python3
"""pith-bench's progress inside rows: on a terminal (a pty here) one line redrawn with \\r that
gives the row and, once it has run a second, its % done and time; with --progress and no
terminal whole lines and no \\r; without either (CI logs) no progress at all; --no-progress
silences a terminal. stdout carries none of it. TAP on stdout.

    bench_progress.py PITH_BENCH"""

import os
import pty
import re
import select
import subprocess
import sys

from tap import plan, tap



def run(bench, *args, timeout=120):
    return subprocess.run([bench, *args], capture_output=True, text=True, timeout=timeout)


def run_tty(bench, *args, timeout=120):
    """Runs with stderr on a pty: (status, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([bench, *args], stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    got = b""
    while True:
        r, _, _ = select.select([master], [], [], timeout)
        if not r:
            p.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        got += chunk
    out = p.stdout.read()
    p.wait(timeout=timeout)
    os.close(master)
    return p.returncode, out, got.decode(errors="replace")


def main(argv):
    bench = argv[1]
    # A row past a second that says how far it is: the nanosleep baseline, 3000 firings a
    # millisecond apart (its full size).
    rc, out, term = run_tty(bench, "--filter", "raw.nanosleep_jitter_p99_ns")
    tap("on a terminal: the run works", rc == 0 and "raw.nanosleep_jitter_p99_ns" in out, term)
    tap("on a terminal: the row's line as it starts", "\r\033[K[1/1] raw.nanosleep_jitter_p99_ns ..."
        in term, repr(term[-800:]))
    pct = [int(m) for m in re.findall(r"raw\.nanosleep_jitter_p99_ns \.\.\. +(\d+)% \d+ s", term)]
    tap("on a terminal: % done and seconds while the row runs, never falling",
        len(pct) >= 2 and pct == sorted(pct) and 0 < pct[-1] <= 100, repr(term[-1500:]))
    tap("on a terminal: the line is cleared at the end",
        term.rfind("\r\033[K") > term.rfind("[1/1]"), repr(term[-300:]))
    tap("on a terminal: stdout carries no progress", "\r" not in out and "[1/1]" not in out,
        out[-500:])

    # A row without a count of its own (idle.cpu_pct measures a 2 s window): seconds only.
    rc, out, term = run_tty(bench, "--quick", "--filter", "idle.cpu_pct")
    tap("a row that gives no count shows its seconds only",
        rc == 0 and re.search(r"\[1/1\] idle\.cpu_pct \.\.\. [12] s", term) is not None
        and "%" not in term, repr(term[-600:]))

    rc, out, term = run_tty(bench, "--quick", "--no-progress", "--filter", "idle.cpu_pct")
    tap("--no-progress: nothing on the terminal but notes", rc == 0 and "\033[K" not in term
        and "[1/1]" not in term, repr(term[-600:]))

    p = run(bench, "--quick", "--filter", "raw.c2c_rtt_ns")
    tap("no terminal: no progress in the log", p.returncode == 0 and "\r" not in p.stderr
        and "progress" not in p.stderr and "[1/1]" not in p.stderr, repr(p.stderr[-600:]))

    p = run(bench, "--quick", "--progress", "--filter", "mesh.rtt_ns")
    lines = [l for l in p.stderr.splitlines() if l.startswith("progress: ")]
    tap("--progress without a terminal: whole lines, one as each row starts, no \\r",
        p.returncode == 0 and "\r" not in p.stderr
        and lines[:2] == ["progress: [1/2] raw.c2c_rtt_ns", "progress: [2/2] mesh.rtt_ns"],
        repr(p.stderr[-600:]))
    return plan()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
