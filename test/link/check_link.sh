#!/bin/sh
# Links app.c statically against libpith.a the way an application outside meson would, and runs
# it. Two ways (TAP, one test each):
#   check_link.sh names SRC ARCHIVE INCLUDE_DIR... -- LIBS...
#       cc SRC -I... ARCHIVE LIBS: the archive by name, then what pith.pc's Libs.private names.
#   check_link.sh pkg-config SRC PC_DIR
#       exactly cc SRC $(pkg-config --cflags --static --libs pith), with PKG_CONFIG_PATH=PC_DIR
#       (meson-uninstalled/, where -lpith is the archive); the program must not need libpith.so.
# $CC is the compiler command (default cc); $SANITIZE the -fsanitize= flag of the build, if any.
set -eu
mode=$1
src=$2
shift 2
cc=${CC:-cc}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "1..1"
case $mode in
names)
    archive=$1
    shift
    incs=""
    while [ "$1" != "--" ]; do
        incs="$incs -I$1"
        shift
    done
    shift
    what="an application defining ring_init, map_get, mem_alloc, mesh_create links libpith.a"
    # shellcheck disable=SC2086
    set -- $cc ${SANITIZE:-} "$src" $incs "$archive" "$@" -o "$out/app"
    ;;
pkg-config)
    export PKG_CONFIG_PATH="$1"
    what="cc app.c \$(pkg-config --cflags --static --libs pith) links libpith.a"
    # shellcheck disable=SC2046,SC2086
    set -- $cc ${SANITIZE:-} "$src" $(pkg-config --cflags --static --libs pith) -o "$out/app"
    ;;
*)
    echo "usage: $0 names|pkg-config ..." >&2
    exit 2
    ;;
esac

echo "# $*"
if ! "$@" >"$out/log" 2>&1; then
    echo "not ok 1 - $what: the link failed"
    sed 's/^/# /' "$out/log"
    exit 1
fi
if readelf -d "$out/app" | grep -q 'NEEDED.*libpith'; then
    echo "not ok 1 - $what: the program needs libpith.so instead"
    exit 1
fi
if ! "$out/app" >"$out/log" 2>&1; then
    echo "not ok 1 - $what: the program failed"
    sed 's/^/# /' "$out/log"
    exit 1
fi
echo "ok 1 - $what and runs: $(cat "$out/log")"
