#!/bin/sh
# meson install into a temporary DESTDIR, then check what landed: the public headers (the
# generated version.h among them, and no meson.build or version.h.in), and app.c built against
# the install through its pith.pc and run. Usage:
#   check_install.sh BUILD_DIR SOURCE_INCLUDE_DIR APP_C PREFIX INCLUDEDIR LIBDIR
# $CC is the compiler command (default cc); $SANITIZE the -fsanitize= flag of the build, if any.
set -eu
build=$1
src_inc=$2
app=$3
prefix=$4
includedir=$5
libdir=$6
case $includedir in /*) ;; *) includedir=$prefix/$includedir ;; esac
case $libdir in /*) ;; *) libdir=$prefix/$libdir ;; esac
cc=${CC:-cc}
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT

echo "1..2"
if ! meson install -C "$build" --no-rebuild --destdir "$dest" >"$dest/log" 2>&1; then
    echo "Bail out! meson install failed"
    sed 's/^/# /' "$dest/log"
    exit 1
fi

want=$( (cd "$src_inc/pith" && ls -- *.h) | sort)
want=$(printf '%s\nversion.h\n' "$want" | sort -u)
have=$( (cd "$dest$includedir/pith" && ls) | sort)
if [ "$want" = "$have" ]; then
    echo "ok 1 - the install holds the public headers and the generated version.h: $(echo "$have" | tr '\n' ' ')"
else
    echo "not ok 1 - installed headers differ"
    echo "# want: $(echo "$want" | tr '\n' ' ')"
    echo "# have: $(echo "$have" | tr '\n' ' ')"
    exit 1
fi

# pkg-config prepends the sysroot to the -I and -L paths of the installed pith.pc.
export PKG_CONFIG_PATH="$dest$libdir/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$dest"
# shellcheck disable=SC2046,SC2086
set -- $cc ${SANITIZE:-} "$app" $(pkg-config --cflags --static --libs pith) -o "$dest/app"
echo "# $*"
if ! "$@" >"$dest/log" 2>&1; then
    echo "not ok 2 - app.c does not build against the install"
    sed 's/^/# /' "$dest/log"
    exit 1
fi
if ! LD_LIBRARY_PATH="$dest$libdir" "$dest/app" >"$dest/log" 2>&1; then
    echo "not ok 2 - app.c built against the install fails"
    sed 's/^/# /' "$dest/log"
    exit 1
fi
echo "ok 2 - app.c builds against the install through its pith.pc and runs: $(cat "$dest/log")"
