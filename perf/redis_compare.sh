#!/usr/bin/env bash
# pith-kv beside redis-server under redis-benchmark, in one run: SET and GET with 50 clients,
# pipelined 16 deep and not pipelined, with each server's CPU time during each test. Measures
# and prints; installs nothing and changes nothing outside the two servers it starts.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: perf/redis_compare.sh [-n N] [--shards N] [--quick] [options]

Runs redis-benchmark -t set,get -n N -c 50 -P 16, then the same with -P 1, against pith-kv and
against redis-server (persistence off), both on the loopback, and prints for each server and
test: requests/s, p50 and p99 latency, the server's CPU-seconds during that test
(utime + stime from /proc/PID/stat), requests per server CPU-second, and the ratios
pith-kv / redis.

  -n N                requests per test (default 1000000)
  --shards N          pass --shards N to pith-kv (default: pith-kv's own default); give it
                      as many --server-cpus, or its shards share them
  --quick             -n 100000
  --server-cpus LIST  CPUs for the servers, taskset -c syntax (default 1)
  --bench-cpus LIST   CPUs for redis-benchmark (default 0)
  --no-pin            no taskset
  --pith-port P       (default 16380)
  --redis-port P      (default 16379)
  --no-amplify        skip the amplification rows (perf/kv_amplify.py, last)
  --multi             also MSET4 and MGET4: MSET / MGET of 4 random keys of 100,000 (-r);
                      with pith-kv on several shards most of them span shards
  --only-multi        MSET4 and MGET4 only
  --appendfsync MODE  persistence on both sides with the same policy (always, everysec, no):
                      pith-kv --dir D --appendfsync MODE, redis-server --appendonly yes
                      --appendfsync MODE, each in a directory of its own under $TMPDIR
  -h, --help          this text

Environment:
  BUILD_DIR      where pith-kv was built (default build): $BUILD_DIR/examples/kv/pith-kv
  PITH_KV_CMD    the pith side's command instead of pith-kv, parsed with shell quoting; the
                 script appends --port P (and --shards N when given). For checking the script
                 itself: PITH_KV_CMD="redis-server --save '' --appendonly no --daemonize no"
  PITH_CPUS      passed on to pith-kv; when pinning, default: the --server-cpus list, so its
                 shards stay there
EOF
}

N=1000000
SHARDS=
SERVER_CPUS=1
BENCH_CPUS=0
PIN=1
PITH_PORT=16380
REDIS_PORT=16379
CLIENTS=50
AMPLIFY=1
TESTS="set get"
APPENDFSYNC=

while [ $# -gt 0 ]; do
    case "$1" in
    -n) N=${2:?-n wants a number}; shift 2 ;;
    --shards) SHARDS=${2:?--shards wants a number}; shift 2 ;;
    --quick) N=100000; shift ;;
    --server-cpus) SERVER_CPUS=${2:?}; shift 2 ;;
    --bench-cpus) BENCH_CPUS=${2:?}; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --no-amplify) AMPLIFY=0; shift ;;
    --multi) TESTS="set get mset4 mget4"; shift ;;
    --only-multi) TESTS="mset4 mget4"; shift ;;
    --appendfsync)
        APPENDFSYNC=${2:?--appendfsync wants always, everysec or no}
        case "$APPENDFSYNC" in always | everysec | no) ;; *)
            echo "redis_compare.sh: --appendfsync $APPENDFSYNC: always, everysec or no" >&2; exit 2 ;;
        esac
        shift 2 ;;
    --pith-port) PITH_PORT=${2:?}; shift 2 ;;
    --redis-port) REDIS_PORT=${2:?}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "redis_compare.sh: unknown argument '$1'; try --help" >&2; exit 2 ;;
    esac
done
for v in "$N" "$PITH_PORT" "$REDIS_PORT" ${SHARDS:+"$SHARDS"}; do
    case "$v" in
    '' | *[!0-9]*) echo "redis_compare.sh: '$v' is not a number" >&2; exit 2 ;;
    esac
done

missing=()
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "redis_compare.sh: missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
fi

BUILD_DIR=${BUILD_DIR:-build}
if [ -n "${PITH_KV_CMD:-}" ]; then
    eval "pith_cmd=($PITH_KV_CMD)"
    pith_label="pith-side ($PITH_KV_CMD)"
else
    pith_cmd=("$BUILD_DIR/examples/kv/pith-kv")
    pith_label=pith-kv
    if [ ! -x "${pith_cmd[0]}" ]; then
        echo "redis_compare.sh: ${pith_cmd[0]} not found; build it (BUILD_DIR=$BUILD_DIR)" >&2
        exit 1
    fi
fi
pith_cmd+=(--port "$PITH_PORT")
[ -n "$SHARDS" ] && pith_cmd+=(--shards "$SHARDS")
redis_cmd=(redis-server --save '' --appendonly no --port "$REDIS_PORT" --daemonize no)

server_pin=()
bench_pin=()
if [ "$PIN" = 1 ]; then
    if command -v taskset >/dev/null; then
        server_pin=(taskset -c "$SERVER_CPUS")
        bench_pin=(taskset -c "$BENCH_CPUS")
    else
        echo "note: no taskset; servers and redis-benchmark run unpinned" >&2
    fi
fi
TCK=$(getconf CLK_TCK)

pids=()
logdir=$(mktemp -d "${TMPDIR:-/tmp}/redis_compare.XXXXXX")
if [ -n "$APPENDFSYNC" ]; then
    mkdir -p "$logdir/pith-data" "$logdir/redis-data"
    pith_cmd+=(--dir "$logdir/pith-data" --appendfsync "$APPENDFSYNC")
    redis_cmd=(redis-server --save '' --appendonly yes --appendfsync "$APPENDFSYNC"
        --dir "$logdir/redis-data" --port "$REDIS_PORT" --daemonize no)
fi
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$logdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# start NAME PORT CMD...: starts a server in the background, waits for its port; sets STARTED.
start() {
    local name=$1 port=$2
    shift 2
    if port_open "$port"; then
        echo "redis_compare.sh: something already listens on 127.0.0.1:$port; pick another port" >&2
        exit 1
    fi
    # A simple command in the background: $! is the server itself (taskset execs it).
    if [ "$name" = pith ] && [ ${#server_pin[@]} -gt 0 ]; then
        PITH_CPUS=${PITH_CPUS:-$SERVER_CPUS} "${server_pin[@]}" "$@" >"$logdir/$name.log" 2>&1 &
    else
        "${server_pin[@]}" "$@" >"$logdir/$name.log" 2>&1 &
    fi
    STARTED=$!
    pids+=("$STARTED")
    for _ in $(seq 100); do
        if ! kill -0 "$STARTED" 2>/dev/null; then
            echo "redis_compare.sh: $name exited at start ($*):" >&2
            sed 's/^/  /' "$logdir/$name.log" >&2
            exit 1
        fi
        port_open "$port" && return 0
        sleep 0.1
    done
    echo "redis_compare.sh: $name does not listen on $port after 10 s" >&2
    exit 1
}

# CPU ticks (utime + stime of every thread) of a process; the fields after the ')' that ends
# the command name, so a name with spaces cannot shift them.
cpu_ticks() {
    local stat f
    stat=$(<"/proc/$1/stat")
    read -ra f <<<"${stat##*) }"
    echo $((f[11] + f[12]))
}

# CPU ticks of this script's waited-for descendants (redis-benchmark among them).
children_ticks() {
    local stat f
    stat=$(<"/proc/$$/stat")
    read -ra f <<<"${stat##*) }"
    echo $((f[13] + f[14]))
}

# Busy ticks of the whole machine (user nice system irq softirq steal), from /proc/stat.
machine_ticks() {
    local f
    read -ra f <<<"$(head -1 /proc/stat)"
    echo $((f[1] + f[2] + f[3] + f[6] + f[7] + f[8]))
}

# sanity NAME PORT: a SET and a GET through redis-cli, when it is there.
sanity() {
    command -v redis-cli >/dev/null || return 0
    local got
    redis-cli -p "$2" SET redis_compare:check hello >/dev/null 2>&1 || true
    got=$(redis-cli -p "$2" GET redis_compare:check 2>&1 || true)
    if [ "$got" != hello ]; then
        echo "warning: $1: GET after SET answered '$got', not 'hello'" >&2
    fi
}

start pith "$PITH_PORT" "${pith_cmd[@]}"
PITH_PID=$STARTED
start redis "$REDIS_PORT" "${redis_cmd[@]}"
REDIS_PID=$STARTED
sanity "$pith_label" "$PITH_PORT"
sanity redis "$REDIS_PORT"

echo "pith: $(printf '%q ' "${pith_cmd[@]}")(pid $PITH_PID)"
echo "redis: $(printf '%q ' "${redis_cmd[@]}")(pid $REDIS_PID, $(redis-server --version | sed 's/ sha=.*//'))"
if [ ${#server_pin[@]} -gt 0 ]; then
    echo "servers on CPUs $SERVER_CPUS, redis-benchmark on CPUs $BENCH_CPUS"
fi
echo "redis-benchmark -n $N -c $CLIENTS, each test a run of its own, servers alternating;" \
    "CPU from /proc/PID/stat at $TCK ticks/s"
echo

# bench NAME PORT PID TEST PIPELINE: one redis-benchmark run; appends a result line.
results="$logdir/results"
: >"$results"
bench() {
    local name=$1 port=$2 pid=$3 test=$4 p=$5 t0 t1 c0 c1 m0 m1 w0 w1 csv line
    kill -0 "$pid" 2>/dev/null || { echo "redis_compare.sh: $name died" >&2; exit 1; }
    m0=$(machine_ticks)
    c0=$(children_ticks)
    w0=$(date +%s%N)
    t0=$(cpu_ticks "$pid")
    local targs label=${test^^}
    case "$test" in
    mset4) targs=(-r 100000 MSET k:__rand_int__ v k:__rand_int__ v k:__rand_int__ v
        k:__rand_int__ v) ;;
    mget4) targs=(-r 100000 MGET k:__rand_int__ k:__rand_int__ k:__rand_int__ k:__rand_int__) ;;
    *) targs=(-t "$test") ;;
    esac
    csv=$("${bench_pin[@]}" redis-benchmark -p "$port" -n "$N" -c "$CLIENTS" -P "$p" \
        --csv "${targs[@]}" 2>"$logdir/bench.err") || {
        echo "redis_compare.sh: redis-benchmark against $name failed:" >&2
        cat "$logdir/bench.err" >&2
        exit 1
    }
    t1=$(cpu_ticks "$pid")
    w1=$(date +%s%N)
    c1=$(children_ticks)
    m1=$(machine_ticks)
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    # "p99_latency_ms","max_latency_ms"
    # A command of its own (MSET4, MGET4) is named by its whole line: its one row is the second.
    line=$(printf '%s\n' "$csv" | tr -d '"' | awk -F, -v t="$label" -v own="${#targs[@]}" \
        'BEGIN { OFS = "," } (own > 2 && NR == 2) { $1 = t; print } (own <= 2 && $1 == t)')
    if [ -z "$line" ]; then
        echo "redis_compare.sh: no $test line in redis-benchmark's output against $name:" >&2
        printf '%s\n' "$csv" >&2
        exit 1
    fi
    # other: what the machine ran besides this server and redis-benchmark, in % of one CPU.
    # bench: redis-benchmark's own CPU, in % of one CPU (it is one thread).
    echo "$line" | awk -F, -v name="$name" -v p="$p" -v n="$N" -v ticks=$((t1 - t0)) \
        -v tck="$TCK" -v other=$((m1 - m0 - (t1 - t0) - (c1 - c0))) -v wall=$((w1 - w0)) \
        -v bench=$((c1 - c0)) '{
            cpu = ticks / tck
            print name, $1, p, $2, $5, $7, cpu, (cpu > 0 ? n / cpu : "inf"),
                other / tck / (wall / 1e9) * 100, bench / tck / (wall / 1e9) * 100 }' >>"$results"
}

for p in 16 1; do
    for test in $TESTS; do
        bench pith "$PITH_PORT" "$PITH_PID" "$test" "$p"
        bench redis "$REDIS_PORT" "$REDIS_PID" "$test" "$p"
    done
done

awk -v pl="$pith_label" '
    { key = $2 " " $3; v[$1, key] = $0; if (!(key in seen)) { seen[key] = 1; order[++k] = key } }
    END {
        printf "%-8s %-4s %3s %12s %9s %9s %8s %14s %7s %7s\n", "server", "test", "P", "req/s",
            "p50_ms", "p99_ms", "cpu_s", "req/cpu_s", "other%", "bench%"
        for (i = 1; i <= k; i++)
            for (s = 1; s <= 2; s++) {
                name = s == 1 ? "pith" : "redis"
                split(v[name, order[i]], f, " ")
                printf "%-8s %-4s %3s %12.0f %9.3f %9.3f %8.2f %14s %7.0f %7.0f\n", name, f[2],
                    f[3], f[4], f[5], f[6], f[7], f[8] == "inf" ? "inf" : sprintf("%.0f", f[8]),
                    f[9], f[10]
                if (f[9] > 10)
                    busy = 1
                if (f[10] >= 90)
                    bound = 1
            }
        printf "\npith / redis (%s):\n", pl
        printf "%-4s %3s %8s %10s %8s\n", "test", "P", "req/s", "req/cpu_s", "p99"
        for (i = 1; i <= k; i++) {
            split(v["pith", order[i]], a, " ")
            split(v["redis", order[i]], b, " ")
            r1 = b[4] > 0 ? sprintf("%.2fx", a[4] / b[4]) : "-"
            r2 = (a[8] != "inf" && b[8] != "inf" && b[8] > 0) ? sprintf("%.2fx", a[8] / b[8]) : "-"
            r3 = b[6] > 0 ? sprintf("%.2fx", a[6] / b[6]) : "-"
            printf "%-4s %3s %8s %10s %8s\n", a[2], a[3], r1, r2, r3
        }
        if (busy)
            print "\nwarning: other work took over 10% of a CPU during some tests: their " \
                "req/s and latencies are disturbed (req/cpu_s less so)"
        if (bound)
            print "\nnote: redis-benchmark used 90% or more of its CPU in some tests: their " \
                "req/s is the client'"'"'s ceiling as much as the server'"'"'s (compare req/cpu_s)"
    }' "$results"
echo
echo "req/cpu_s: requests over the server's CPU-seconds in that test (higher is better);" \
    "p99 ratio: lower is better. CPU counts at 1/$TCK s, so short runs (-n small) are coarse." \
    "other%: the machine's busy time besides the server and redis-benchmark, in % of one CPU" \
    "(tick-sampled: a few % either way). bench%: redis-benchmark's own CPU time in % of one" \
    "CPU; it is one thread, so near 100 it, not the server, sets the pace."

# The amplification rows: the victims' latency beside one client that pipelines GETs of a large
# value, alone and attacked, on pith-kv (one shard, so all share the attacker's) and on
# redis-server; both servers started by the script itself.
if [ "$AMPLIFY" = 1 ] && [ -z "${PITH_KV_CMD:-}" ]; then
    echo
    echo "== reply amplification (perf/kv_amplify.py)"
    python3 "$(dirname "$0")/kv_amplify.py" "${pith_cmd[0]}" "$(command -v redis-server)"
fi
