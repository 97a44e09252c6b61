#!/bin/sh
# libpith.so must export exactly the functions the public headers declare with PITH_API.
# Usage: check_exports.sh LIBPITH_SO INCLUDE_DIR
set -eu
lib=$1
inc=$2
want=$(grep -ho '^PITH_API [^(]*(' "$inc"/pith/*.h | sed 's/($//; s/.*[ *]//' | sort -u)
have=$(nm -D --defined-only "$lib" | awk '$2 == "T" { print $3 }' | sort -u)
echo "1..1"
if [ "$want" = "$have" ]; then
    echo "ok 1 - libpith exports the $(echo "$want" | wc -l) functions its headers declare"
else
    echo "not ok 1 - exports differ from the headers"
    echo "# declared but not exported: $(echo "$want" | grep -vxF "$have" | tr '\n' ' ')"
    echo "# exported but not declared: $(echo "$have" | grep -vxF "$want" | tr '\n' ' ')"
    exit 1
fi
