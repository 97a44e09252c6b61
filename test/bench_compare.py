#!/usr/bin/env python3
"""pith-bench as a comparison tool: --repetitions, --out and the JSON schema (docs/bench-json.md)
on a real run of one short row; the mesh throughput rows beside raw.spsc_ring_mps; --compare of
two saved runs, with verdicts checked on runs written here with known figures (better, worse,
within the noise, no spread, rows on one side only, a lower-is-better row); and the errors for
bad arguments and files. TAP on stdout.

    bench_compare.py PITH_BENCH"""

import json
import os
import subprocess
import sys
import tempfile

from tap import plan, tap

def run(bench, *args, timeout=300):
    return subprocess.run([bench, *args], capture_output=True, text=True, timeout=timeout)


def saved(rows, reps=5, quick=True, model="test CPU"):
    """A run as pith-bench --out writes it, with the figures given: (name, median, mad)."""
    return {
        "pith_bench": 2, "version": "0.1.0", "git": "test", "build_type": "release",
        "compiler": "test", "sanitize": "none", "date": "2026-01-01T00:00:00Z", "quick": quick,
        "repetitions": reps, "shards_asked": 2, "machine": {"cpu_model": model},
        "results": [{"name": n, "value": med, "median": med, "mad": mad, "reps": reps,
                     "higher_is_better": n.endswith(("_mps", "_rps", "_kops", "_gbps", "_per_s"))}
                    for n, med, mad in rows],
        "skipped": [],
    }


def verdicts(out):
    """name -> verdict text, from the comparison's table."""
    v = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and "." in parts[0] and not line.startswith("compare:"):
            v[parts[0]] = " ".join(parts[5:]) if parts[3].endswith("x") else " ".join(parts[4:])
    return v


def main(argv):
    bench = argv[1]
    with tempfile.TemporaryDirectory() as d:
        # A real run: three repetitions of a short row, saved.
        a = os.path.join(d, "a.json")
        p = run(bench, "--quick", "--filter", "raw.malloc_free_ns", "--repetitions", "3",
                "--out", a)
        tap("pith-bench --repetitions 3 --out runs", p.returncode == 0, p.stderr[-2000:])
        try:
            doc = json.load(open(a))
        except (OSError, ValueError) as e:
            doc = {}
            tap("--out wrote JSON", False, e)
        else:
            tap("--out wrote JSON", True)
        m = doc.get("machine", {})
        head = all(k in doc for k in ("version", "git", "build_type", "compiler", "date",
                                      "quick", "repetitions"))
        tap("the run says what built it and when (schema 2)",
            doc.get("pith_bench") == 2 and head and doc.get("repetitions") == 3, doc.keys())
        tap("the machine facts: CPU model, SMT, governor, VM, load before and after",
            all(k in m for k in ("cpu_model", "smt", "governor", "vm", "load1_start",
                                 "load1_end")), m.keys())
        rows = doc.get("results", [])
        r = rows[0] if rows else {}
        vals = r.get("values", [])
        tap("a row has its median, MAD, min, max, values and flags",
            r.get("name") == "raw.malloc_free_ns" and r.get("reps") == 3 and len(vals) == 3
            and r.get("min") <= r.get("median") <= r.get("max")
            and sorted(vals)[1] == r.get("median") and r.get("mad") >= 0
            and r.get("higher_is_better") is False and "noisy" in r and "busy" in r
            and "others_cpu_pct" in r, r)
        # The run beside itself: the same, within the noise.
        p = run(bench, "--compare", a, "--with", a)
        v = verdicts(p.stdout)
        tap("a run compared with itself is the same",
            p.returncode == 0 and v.get("raw.malloc_free_ns", "").startswith("same"), p.stdout)
        # A run compared at the end of a new one.
        p = run(bench, "--quick", "--filter", "raw.malloc_free_ns", "--compare", a)
        tap("--compare after a run prints the comparison",
            p.returncode == 0 and "compare: base" in p.stdout and "raw.malloc_free_ns" in
            verdicts(p.stdout), p.stdout[-2000:] + p.stderr[-1000:])

        # The mesh's throughput beside the raw SPSC ring between the same two CPUs: the
        # baseline runs first and the ratio is the two values'.
        p = run(bench, "--quick", "--json", "--filter", "mesh.throughput_mps")
        try:
            rows = json.loads(p.stdout).get("results", [])
        except ValueError:
            rows = []
        names = [r["name"] for r in rows]
        ok = names == ["raw.spsc_ring_mps", "mesh.throughput_mps"]
        if ok:
            base, mesh = rows
            ok = (mesh["baseline"] == "raw.spsc_ring_mps" and base["value"] > 0
                  and abs(mesh["ratio"] - mesh["value"] / base["value"]) < 1e-6 * mesh["ratio"])
        tap("mesh.throughput_mps is quoted beside raw.spsc_ring_mps, run before it", ok,
            p.stdout[-2000:] + p.stderr[-1000:])
        h = run(bench, "--help", timeout=60).stdout
        tap("--help lists raw.spsc_ring_mps as the baseline of both mesh throughput rows",
            "mesh.throughput_batch1_mps   (baseline raw.spsc_ring_mps)" in h
            and "mesh.throughput_mps          (baseline raw.spsc_ring_mps)" in h
            and h.index("  raw.spsc_ring_mps") < h.index("mesh.throughput_batch1_mps"), h)

        # Known figures: each verdict.
        base = saved([("mesh.throughput_mps", 100, 1), ("mesh.rtt_ns", 100, 1),
                      ("actor.spawn_ns", 100, 1), ("idle.cpu_pct", 2.0, 0.01),
                      ("net.echo_rps", 1000, 100), ("gone.row_ns", 5, 0)])
        new = saved([("mesh.throughput_mps", 120, 1), ("mesh.rtt_ns", 120, 1),
                      ("actor.spawn_ns", 101, 1), ("idle.cpu_pct", 1.0, 0.01),
                      ("net.echo_rps", 1200, 100), ("added.row_mps", 7, 0)])
        fb, fn = os.path.join(d, "base.json"), os.path.join(d, "new.json")
        json.dump(base, open(fb, "w"))
        json.dump(new, open(fn, "w"))
        p = run(bench, "--compare", fb, "--with", fn)
        v = verdicts(p.stdout)
        tap("a higher-is-better row that went up is better",
            v.get("mesh.throughput_mps", "").startswith("better"), p.stdout)
        tap("a lower-is-better row that went up is worse",
            v.get("mesh.rtt_ns", "").startswith("worse"), p.stdout)
        tap("1% on a 1%-MAD row is within the noise",
            v.get("actor.spawn_ns", "").startswith("same (within noise"), p.stdout)
        tap("a lower-is-better row that halved is better",
            v.get("idle.cpu_pct", "").startswith("better"), p.stdout)
        tap("+20% on a row with a 10% MAD is within its noise (3 MADs)",
            v.get("net.echo_rps", "").startswith("same"), p.stdout)
        tap("rows on one side only are named", "only in base" in v.get("gone.row_ns", "")
            and "only in new" in v.get("added.row_mps", ""), p.stdout)
        # One repetition: no spread, the verdict is marked unsure.
        b1 = saved([("mesh.rtt_ns", 100, 0)], reps=1)
        n1 = saved([("mesh.rtt_ns", 150, 0)], reps=1)
        json.dump(b1, open(fb, "w"))
        json.dump(n1, open(fn, "w"))
        p = run(bench, "--compare", fb, "--with", fn)
        tap("without repetitions the verdict says it knows no spread",
            verdicts(p.stdout).get("mesh.rtt_ns", "").startswith("worse? (no spread"), p.stdout)
        # Another machine and another size are said.
        json.dump(saved([("mesh.rtt_ns", 100, 1)], model="other CPU", quick=False), open(fn, "w"))
        json.dump(saved([("mesh.rtt_ns", 100, 1)]), open(fb, "w"))
        p = run(bench, "--compare", fb, "--with", fn)
        tap("another CPU model and another size are pointed out",
            "other CPUs" in p.stdout and "sizes differ" in p.stdout, p.stdout)

        # Errors: a clear message and status 2, nothing run.
        bad = os.path.join(d, "bad.json")
        open(bad, "w").write('{"results": [1, 2,')
        for name, args, want in [
            ("a missing base file", ["--compare", os.path.join(d, "none.json"), "--with", a],
             "none.json"),
            ("a file that is not JSON", ["--compare", bad, "--with", a], "not a JSON object"),
            ("JSON that is not a pith-bench run", ["--compare", fn + ".x", "--with", a], ""),
            ("--with without --compare", ["--with", a], "--with goes with --compare"),
            ("--repetitions 0", ["--repetitions", "0"], "--repetitions wants"),
            ("--repetitions 17", ["--repetitions", "17"], "--repetitions wants"),
        ]:
            if name.startswith("JSON that"):
                open(fn + ".x", "w").write('{"a": 1}')
                want = "not a pith-bench --json run"
            p = run(bench, *args, timeout=60)
            tap(f"{name}: status 2 and a message", p.returncode == 2 and want in p.stderr,
                f"status {p.returncode}: {p.stderr[-500:]}")
    return plan()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
