#!/bin/sh
# Pith's developer entry point: installs what is missing (Debian 12), builds, runs.
#   ./pith.sh run    install, build, run pith-bench --quick (the main job)
#   ./pith.sh test   install, build, run the whole test suite
#   ./pith.sh deps   install only
# BUILD_DIR (default: build) and MESON_ARGS pass through to meson.
set -eu
cd "$(dirname "$0")"

# redis-tools: redis-cli for the pith-kv integration test; redis-server: the kv-redis test
# compares pith-kv's replies with it (the test starts its own on a loopback port and stops it);
# clang and libclang-rt-14-dev: the libFuzzer target of the RESP parser (.ci/run); libck-dev: Concurrency Kit, for the ck_ring row of
# pith-bench that the ingress lanes are measured against; doxygen: the API reference and its check;
# prometheus: promtool checks the metrics text, and a prometheus server scrapes pith-kv in a test
# (which starts it on a loopback port and stops it).
PACKAGES="gcc libc6-dev meson ninja-build pkg-config python3 liburing-dev libhwloc-dev libmimalloc-dev libcriterion-dev libck-dev doxygen valgrind redis-tools redis-server clang libclang-rt-14-dev prometheus"
BUILD_DIR=${BUILD_DIR:-build}

deps() {
    missing=""
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "pith.sh: installing:$missing"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
    # Debian starts redis-server (port 6379) and prometheus (port 9090) as
    # system services when systemd runs; the tests start their own, so the services this install
    # started are stopped and disabled again.
    for svc in redis-server prometheus; do
        case " $missing " in
        *" $svc "*)
            if [ -d /run/systemd/system ]; then
                $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
                echo "pith.sh: $svc installed for the tests; its system service is left off"
            fi
            ;;
        esac
    done
}

build() {
    if [ ! -f "$BUILD_DIR/build.ninja" ]; then
        # shellcheck disable=SC2086
        meson setup "$BUILD_DIR" -Dwerror=true ${MESON_ARGS:-}
    fi
    ninja -C "$BUILD_DIR"
}

case "${1:-}" in
deps) deps ;;
run)
    deps
    build
    shift
    exec "$BUILD_DIR/perf/pith-bench" --quick "$@"
    ;;
test)
    deps
    build
    meson test -C "$BUILD_DIR" --print-errorlogs
    ;;
*)
    echo "usage: $0 run|test|deps" >&2
    exit 2
    ;;
esac
