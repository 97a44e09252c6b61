#!/usr/bin/env python3
"""pith-bench --histogram and --plot on real runs of short rows: the text's buckets add up to the
row's samples and its cumulative % ends at 100, the JSON's hist member (docs/bench-json.md)
agrees with the text, the SVG parses as XML and has a bar per bucket with samples; a row without
a histogram, an unknown row and --plot without --histogram are errors with a message; and
--plot-market draws a stage of pith-market's --json the same way. TAP on stdout.

    bench_histogram.py PITH_BENCH"""

import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from tap import plan, tap

SVG = "{http://www.w3.org/2000/svg}"
# "        from           to      count      cum%  bar"
LINE = re.compile(r"^\s*(-inf|\d+)\s+(\d+|inf)\s+(\d+)\s+(\d+\.\d+)%\s*([#.]*)$")


def run(bench, *args, timeout=300):
    return subprocess.run([bench, *args], capture_output=True, text=True, timeout=timeout)


def parse_hist(text, name):
    """The histogram of `name` in pith-bench's output: (head, [(from, to, count, cum%, bar)])."""
    lines = text.splitlines()
    head = next((i for i, l in enumerate(lines) if l.startswith(name + ": ")), None)
    if head is None:
        return None, []
    buckets = []
    for l in lines[head + 3:]:
        m = LINE.match(l)
        if not m:
            break
        buckets.append((m.group(1), m.group(2), int(m.group(3)), float(m.group(4)),
                        m.group(5)))
    return lines[head], buckets


def check_text(label, head, buckets, samples):
    m = re.match(r"^\S+: (\d+) samples in (\S+),", head or "")
    tap(f"{label}: the head gives the sample count and the unit",
        m is not None and int(m.group(1)) == samples, head)
    total = sum(b[2] for b in buckets)
    tap(f"{label}: the buckets' counts add up to the row's {samples} samples",
        buckets and total == samples, buckets)
    cums = [b[3] for b in buckets]
    tap(f"{label}: the cumulative % never falls and ends at 100",
        cums and cums == sorted(cums) and abs(cums[-1] - 100.0) < 1e-9, cums)
    edges = all(buckets[i][1] == buckets[i + 1][0] for i in range(len(buckets) - 1)
                if buckets[i][0] != "-inf")
    tap(f"{label}: the buckets are contiguous ([from, to) meets the next from)", edges, buckets)
    tap(f"{label}: every bucket with samples has a bar, empty ones none",
        buckets and all((b[2] > 0) == (b[4] != "") for b in buckets), buckets)


def main(argv):
    bench = argv[1]
    with tempfile.TemporaryDirectory() as d:
        out, svg = os.path.join(d, "h.json"), os.path.join(d, "h.svg")
        p = run(bench, "--quick", "--filter", "mesh.rtt_ns", "--histogram", "mesh.rtt_ns",
                "--plot", svg, "--out", out)
        tap("--histogram mesh.rtt_ns --plot --out runs", p.returncode == 0,
            p.stdout[-2000:] + p.stderr[-2000:])
        try:
            doc = json.load(open(out))
        except (OSError, ValueError) as e:
            doc = {}
            tap("--out wrote JSON", False, e)
        rows = {r["name"]: r for r in doc.get("results", [])}
        r = rows.get("mesh.rtt_ns", {})
        samples = r.get("samples", -1)
        head, buckets = parse_hist(p.stdout, "mesh.rtt_ns")
        check_text("mesh.rtt_ns", head, buckets, samples)
        tap("the baseline's histogram is not printed, only the row named",
            parse_hist(p.stdout, "raw.c2c_rtt_ns")[0] is None, p.stdout[-3000:])

        h = r.get("hist", {})
        jb = h.get("buckets", [])
        tap("the JSON row has a hist: total = samples = its buckets' counts + below_zero",
            h.get("per_sample") == 1 and h.get("total") == samples
            and sum(c for _, _, c in jb) + h.get("below_zero", -1) == samples, h)
        tap("the JSON buckets are the text's buckets with samples",
            [(str(lo), str(hi), c) for lo, hi, c in jb]
            == [(b[0], b[1], b[2]) for b in buckets if b[2] > 0], (jb, buckets))
        tap("the JSON buckets' edges rise", all(lo < hi for lo, hi, _ in jb if hi is not None)
            and all(jb[i][1] <= jb[i + 1][0] for i in range(len(jb) - 1)), jb)
        tap("the baseline raw.c2c_rtt_ns has its own hist in the JSON",
            rows.get("raw.c2c_rtt_ns", {}).get("hist", {}).get("total")
            == rows.get("raw.c2c_rtt_ns", {}).get("samples"), rows.get("raw.c2c_rtt_ns"))

        try:
            root = ET.parse(svg).getroot()
        except (OSError, ET.ParseError) as e:
            root = None
            tap("the SVG parses as XML", False, e)
        else:
            tap("the SVG parses as XML", root.tag == SVG + "svg", root.tag)
        if root is not None:
            bars = [e for e in root.iter(SVG + "rect") if e.get("class") == "bar"]
            tap("the SVG has a bar per bucket with samples",
                len(bars) == len(jb) and all(float(b.get("height")) > 0 for b in bars),
                f"{len(bars)} bars, {len(jb)} buckets")
            text = " ".join("".join(t.itertext()) for t in root.iter(SVG + "text"))
            tap("the SVG names the row, its unit, its percentiles and the machine",
                all(w in text for w in ("mesh.rtt_ns", "ns (log scale)", "p50", "p99",
                                        "samples in the bucket", doc["machine"]["cpu_model"])),
                text)

        # A row whose sample is the mean of 100 round trips says so; with --json the
        # histogram goes to stderr and stdout stays one JSON object.
        p = run(bench, "--quick", "--json", "--histogram", "actor.ask_rtt_ns")
        try:
            doc = json.loads(p.stdout)
        except ValueError as e:
            doc = {}
            tap("--json --histogram: stdout is one JSON object", False, e)
        else:
            tap("--json --histogram: stdout is one JSON object", p.returncode == 0, p.stderr)
        names = [r["name"] for r in doc.get("results", [])]
        tap("--histogram without --filter runs the row and its baseline only",
            names == ["raw.local_oneshot_ns", "actor.ask_rtt_ns"], names)
        r = next((r for r in doc.get("results", []) if r["name"] == "actor.ask_rtt_ns"), {})
        head, buckets = parse_hist(p.stderr, "actor.ask_rtt_ns")
        check_text("actor.ask_rtt_ns", head, buckets, r.get("samples", -1))
        tap("a sample of 100 round trips is said in the text and the JSON",
            "a sample is the mean of 100 operations" in (head or "")
            and r.get("hist", {}).get("per_sample") == 100, head)

        # Errors.
        one = os.path.join(d, "one.json")
        p = run(bench, "--quick", "--histogram", "raw.malloc_free_ns", "--out", one)
        tap("a row that reports one figure: status 1 and why, after its results",
            p.returncode == 1 and "raw.malloc_free_ns has no histogram" in p.stderr
            and "raw.malloc_free_ns" in p.stdout, f"status {p.returncode}: {p.stderr[-500:]}")
        try:
            r = json.load(open(one))["results"][0]
        except (OSError, ValueError, KeyError, IndexError) as e:
            r = {"error": str(e)}
        tap("its JSON row has no hist member", r.get("name") == "raw.malloc_free_ns"
            and "hist" not in r, r)
        for name, args, want in [
            ("an unknown row", ["--histogram", "no.such_row_ns"],
             "no row is named 'no.such_row_ns'"),
            ("--plot without --histogram", ["--plot", svg], "--plot draws the row"),
            ("--histogram with --with", ["--histogram", "mesh.rtt_ns", "--compare", out,
                                         "--with", out], "--histogram needs a run"),
        ]:
            p = run(bench, *args, timeout=60)
            tap(f"{name}: status 2, a message, nothing run",
                p.returncode == 2 and want in p.stderr and p.stdout == "",
                f"status {p.returncode}: {p.stderr[-500:]}")

        # --plot-market: a stage of pith-market --json (lat_json's layout), drawn without a run.
        market = os.path.join(d, "market.json")
        buckets = [[640, 3], [768, 40], [1024, 7], [40960, 2], [1048576, 1]]
        stage = {"count": 53, "sum_ns": 99999, "max_ns": 900000, "p50_ns": 768, "p99_ns": 40960,
                 "p999_ns": 900000, "p9999_ns": 900000, "buckets": buckets}
        with open(market, "w") as f:
            json.dump({"rate": 1000, "stages": {"feed_lateness": {"count": 1, "buckets": [[4, 1]]},
                                                "tick_to_book": stage}}, f)
        msvg = os.path.join(d, "market.svg")
        p = run(bench, "--plot-market", market + ":tick_to_book", "--plot", msvg, timeout=60)
        ok = p.returncode == 0 and p.stdout == ""
        bars, title = [], ""
        try:
            root = ET.parse(msvg).getroot()
            bars = [e for e in root.iter(SVG + "rect") if e.get("class") == "bar"]
            title = "".join(root.itertext())
        except (OSError, ET.ParseError) as e:
            ok, title = False, str(e)
        tap("--plot-market draws a bar per bucket of the stage, its name and count in the title",
            ok and len(bars) == len(buckets) and "market.tick_to_book_ns" in title
            and "53 samples" in title, f"status {p.returncode} {p.stderr[-300:]} bars "
            f"{len(bars)} {title[:200]}")
        for name, args, want in [
            ("--plot-market without --plot", ["--plot-market", market + ":tick_to_book"],
             "--plot-market goes with --plot"),
            ("--plot-market of a stage the file lacks",
             ["--plot-market", market + ":tick_to_order", "--plot", msvg], "no samples"),
            ("--plot-market of a missing file",
             ["--plot-market", os.path.join(d, "none.json") + ":x", "--plot", msvg],
             "cannot read"),
        ]:
            p = run(bench, *args, timeout=60)
            tap(f"{name}: status 2 and a message",
                p.returncode == 2 and want in p.stderr and p.stdout == "",
                f"status {p.returncode}: {p.stderr[-500:]}")
    return plan()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
