#!/usr/bin/env bash
# The engine's cost per market message in instructions, which a noisy machine does not move
# (issue 18): pith-market-cg's day under callgrind, once with the books alone on one thread
# (raw) and once through the engine (engine: a feed thread and a shard thread), the same day
# both times. Prints per book message the instructions (Ir) and simulated L1 data and
# last-level misses of the raw run and of each engine thread, the shard thread less the raw
# run, and the shard thread's functions that execute the most.
#   perf/market_cg.sh [MESSAGES] [BUILD_DIR] [SYMBOLS]     (defaults: 200000, build, 3000)
# Fewer symbols (300) keep every book and activation in the caches: what is left of the
# difference is then the path's own work, not its per-symbol memory.
# Needs valgrind (./pith.sh deps installs it) and a build with pith-market-cg in it. The cache
# model is callgrind's (one cache for all threads, sized from this CPU's), so the miss columns
# are a rough guide; the instruction counts are exact and barely move from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
build=${2:-build}
symbols=${3:-3000}
bin=$build/perf/pith-market-cg
if [ ! -x "$bin" ]; then
    echo "market_cg.sh: $bin is missing (meson builds it where valgrind/callgrind.h is)" >&2
    exit 1
fi
# The simulated caches: this CPU's L1 data cache and its L2 (the per-core last level a shard's
# working set competes for), read from sysfs; valgrind's own choice where sysfs lacks them.
cache() { # level type -> size,ways,line
    for d in /sys/devices/system/cpu/cpu0/cache/index*; do
        if [ "$(cat "$d/level")" = "$1" ] && [ "$(cat "$d/type")" = "$2" ]; then
            local size=$(($(sed 's/K$//' "$d/size") * 1024))
            echo "$size,$(cat "$d/ways_of_associativity"),$(cat "$d/coherency_line_size")"
            return
        fi
    done
}
sim=()
d1=$(cache 1 Data 2>/dev/null || true)
l2=$(cache 2 Unified 2>/dev/null || true)
[ -n "$d1" ] && sim+=("--D1=$d1")
[ -n "$l2" ] && sim+=("--LL=$l2")
if [ ${#sim[@]} -gt 0 ]; then echo "simulated caches: ${sim[*]}"; else echo "simulated caches: as valgrind picks them"; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for mode in raw engine; do
    valgrind --tool=callgrind --cache-sim=yes "${sim[@]}" --instr-atstart=no --separate-threads=yes \
        --callgrind-out-file="$out/$mode.cg" "$bin" "$mode" "$n" "$symbols" >"$out/$mode.txt" 2>"$out/$mode.err" ||
        {
            cat "$out/$mode.err" >&2
            exit 1
        }
done
python3 - "$out" "$symbols" <<'EOF'
import glob, re, subprocess, sys
out = sys.argv[1]

def msgs(mode):
    for line in open(f"{out}/{mode}.txt"):
        m = re.match(r"book messages (\d+)", line)
        if m:
            return int(m.group(1))
    sys.exit(f"market_cg.sh: {mode} printed no message count")

def threads(mode):
    """(file, totals, whether it ran the shard loop) for each counted thread of a run."""
    res = []
    for f in sorted(glob.glob(f"{out}/{mode}.cg-*")):
        events, tot, shard = None, None, False
        for line in open(f):
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                tot = dict(zip(events, (int(x) for x in line.split()[1:])))
            elif "shard_main" in line:
                shard = True
        if tot is not None and tot.get("Ir", 0) > 0:
            res.append((f, tot, shard))
    return res

def per(t, n):
    return (t.get("Ir", 0) / n, (t.get("D1mr", 0) + t.get("D1mw", 0)) / n,
            (t.get("DLmr", 0) + t.get("DLmw", 0)) / n)

n_raw, n_eng = msgs("raw"), msgs("engine")
raw, eng = threads("raw"), threads("engine")
shard = [t for t in eng if t[2]]
if len(raw) != 1 or len(shard) != 1 or n_raw != n_eng:
    sys.exit("market_cg.sh: expected one counted raw thread, one shard thread, the same day")
rows = [("raw: the books alone", per(raw[0][1], n_raw)),
        ("engine: the shard thread", per(shard[0][1], n_eng))]
rows += [("engine: the feed thread", per(t, n_eng)) for f, t, s in eng if not s]
print(f"per book message ({n_eng} messages over {sys.argv[2]} symbols; callgrind, the same day in both runs):")
print(f"  {'':28s} {'Ir':>8s} {'D1 miss':>8s} {'LL miss':>8s}")
for name, (ir, d1, ll) in rows:
    print(f"  {name:28s} {ir:8.1f} {d1:8.2f} {ll:8.3f}")
d = [a - b for a, b in zip(rows[1][1], rows[0][1])]
print(f"  {'shard thread - raw':28s} {d[0]:8.1f} {d[1]:8.2f} {d[2]:8.3f}")
print("the shard thread's functions (Ir per message, their own instructions):")
ann = subprocess.run(["callgrind_annotate", "--threshold=99", shard[0][0]], capture_output=True,
                     text=True).stdout
shown = 0
for line in ann.splitlines():
    m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?.*?\s(\S+:\S+)", line)
    if m and shown < 20 and int(m.group(1).replace(",", "")) >= n_eng:
        print(f"  {int(m.group(1).replace(',', '')) / n_eng:8.1f}  {m.group(2)}")
        shown += 1
EOF
