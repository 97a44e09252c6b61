#!/bin/sh
# libpith.so and libpith.a make global exactly the functions the public headers declare with
# PITH_API: an application can define any name that does not start with pith_.
# Usage: check_exports.sh LIBPITH_SO|'' LIBPITH_A HEADER_DIR... ('' when no shared library is
# built, -Ddefault_library=static). Each HEADER_DIR holds a pith/ folder of headers.
set -eu
so=$1
archive=$2
shift 2
for f in $so $archive; do
    [ -f "$f" ] || { echo "Bail out! $f does not exist"; exit 1; }
done
want=$(for d in "$@"; do cat "$d"/pith/*.h; done | grep -o '^PITH_API [^(]*(' |
    sed 's/($//; s/.*[ *]//' | sort -u)
# Every global symbol the archive defines, whatever its kind (text, data, weak, common).
archive_all=$(nm -g --defined-only -P "$archive" | awk 'NF >= 2 && $1 !~ /:$/ { print $1 }' | sort -u)

fails=0
# compare N WHAT HAVE: one TAP line; HAVE against $want.
compare() {
    if [ "$want" = "$3" ]; then
        echo "ok $1 - $2 the $(echo "$want" | wc -l) functions its headers declare"
    else
        echo "not ok $1 - $2 other symbols than its headers declare"
        echo "# declared but missing: $(echo "$want" | grep -vxF "$3" | tr '\n' ' ')"
        echo "# present but not declared: $(echo "$3" | grep -vxF "$want" | tr '\n' ' ')"
        fails=$((fails + 1))
    fi
}

echo "1..3"
if [ -n "$so" ]; then
    compare 1 "libpith.so exports" "$(nm -D --defined-only "$so" | awk '$2 == "T" { print $3 }' | sort -u)"
else
    echo "ok 1 # skip no libpith.so in this build (default_library=static)"
fi
foreign=$(echo "$archive_all" | grep -v '^pith_' || true)
if [ -z "$foreign" ]; then
    echo "ok 2 - every global symbol libpith.a defines starts with pith_"
else
    echo "not ok 2 - libpith.a defines $(echo "$foreign" | wc -l) global symbols without pith_"
    echo "# $(echo "$foreign" | tr '\n' ' ')"
    fails=$((fails + 1))
fi
compare 3 "libpith.a makes global" "$archive_all"
[ "$fails" -eq 0 ]
