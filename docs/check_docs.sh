#!/bin/sh
# The API reference builds, and every public function, type and macro of include/pith/ has its
# documentation: Doxygen's warnings about anything undocumented fail the test.
# Usage: check_docs.sh DOXYGEN DOXYFILE OUTDIR
set -eu
doxygen=$1
doxyfile=$2
out=$3
mkdir -p "$out"
echo "1..1"
if ! "$doxygen" "$doxyfile" >"$out/doxygen.log" 2>&1; then
    echo "not ok 1 - doxygen failed"
    sed 's/^/# /' "$out/doxygen.log"
    exit 1
fi
# Members of structs are documented where they are declared; a field without a comment of its
# own is listed here too.
bad=$(grep -E 'warning: .*(is not documented|not documented)' "$out/warnings.txt" || true)
if [ -n "$bad" ]; then
    echo "not ok 1 - $(echo "$bad" | wc -l) public declarations have no documentation"
    echo "$bad" | sed 's/^/# /'
    exit 1
fi
echo "ok 1 - the reference builds ($out/html/index.html) and documents every public declaration"
