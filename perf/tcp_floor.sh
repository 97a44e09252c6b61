#!/usr/bin/env bash
# How much of a server's CPU is the kernel's TCP work, which no server design that uses kernel
# sockets can remove. Samples one CPU with perf while a command runs, then splits the samples
# (idle excluded) into:
#   tcp     inside tcp_sendmsg or tcp_recvmsg: the segment's own TCP and IP work and, on the
#           loopback, the peer's TCP input too, which the sender's system call runs;
#   kernel  the rest of the kernel: system call entry, epoll or io_uring, scheduling, wake-ups;
#   user    the server's own code and its libraries.
# A server that does one send and one receive per request needs at least the tcp share of the
# profiled server's CPU per request: 1 / tcp is the most any such server can gain over it.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: perf/tcp_floor.sh [--cpu N] [--pid PID] -- COMMAND [ARG...]

Records CPU N (default 1, where pith-bench and redis_compare.sh put the server) with
perf record -g while COMMAND runs, or only process PID when --pid is given, and prints the
tcp / kernel / user split of the samples. Needs perf (Debian: linux-perf) and root or
kernel.perf_event_paranoid <= 0.

Examples:
  perf/tcp_floor.sh -- build/perf/pith-bench --filter raw.epoll_echo_rps
  taskset -c 1 redis-server --port 16379 --save '' --appendonly no &
  perf/tcp_floor.sh --pid $! -- taskset -c 0 redis-benchmark -p 16379 -t get -n 500000 -P 1
EOF
}

CPU=1
PID=
while [ $# -gt 0 ]; do
    case "$1" in
    --cpu) CPU=${2:?--cpu wants a number}; shift 2 ;;
    --pid) PID=${2:?--pid wants a process id}; shift 2 ;;
    --) shift; break ;;
    -h | --help) usage; exit 0 ;;
    *) echo "tcp_floor.sh: unknown argument '$1'; try --help" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { usage >&2; exit 2; }
command -v perf >/dev/null || { echo "tcp_floor.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }

data=$(mktemp "${TMPDIR:-/tmp}/tcp_floor.XXXXXX")
trap 'rm -f "$data" "$data.old"' EXIT
if [ -n "$PID" ]; then
    what="process $PID"
    # perf record -p takes no workload: it records until interrupted, once COMMAND is done.
    kill -0 "$PID" 2>/dev/null || { echo "tcp_floor.sh: no process $PID" >&2; exit 1; }
    perf record -q -g -p "$PID" -o "$data" 2>/dev/null &
    rec=$!
    sleep 0.3 # perf attaches
    rc=0
    "$@" || rc=$?
    kill -INT "$rec"
    wait "$rec" || true
    [ "$rc" = 0 ] || { echo "tcp_floor.sh: the command failed ($rc)" >&2; exit 1; }
else
    what="CPU $CPU"
    perf record -q -g -C "$CPU" -o "$data" -- "$@"
fi

perf script -i "$data" -F comm,ip,sym 2>/dev/null | awk -v what="$what" '
    function flush() {
        if (!insample) return
        insample = 0
        if (comm ~ /^swapper/) return
        n++
        if (tcp) t++
        else if (kern) k++
        else u++
    }
    /^[^ \t]/ { flush(); insample = 1; comm = $1; tcp = 0; kern = 0; first = 1; next }
    /^[ \t]/ && insample {
        if (first) { kern = ($1 ~ /^ffffffff/); first = 0 }
        if ($2 ~ /^tcp_(sendmsg|recvmsg)(\+|$)/) tcp = 1
        next
    }
    /^$/ { flush() }
    END {
        flush()
        if (n == 0) { print "tcp_floor.sh: no samples on " what > "/dev/stderr"; exit 1 }
        printf "%s: %d samples (idle excluded)\n", what, n
        printf "  tcp     %5.1f%%  inside tcp_sendmsg / tcp_recvmsg\n", 100 * t / n
        printf "  kernel  %5.1f%%  the rest of the kernel\n", 100 * k / n
        printf "  user    %5.1f%%\n", 100 * u / n
        printf "a server doing the same sends and receives needs >= %.2fx this CPU per request\n",
            t / n
    }'
