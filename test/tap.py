"""TAP for the python tests that run one program: numbered ok / not ok lines, a failure's
detail as # comments (40 lines at most), and the plan with the exit status at the end."""

import sys

_n = 0
_failed = 0


def tap(name, ok, detail=""):
    """One test point: ok when `ok` is true, else not ok with `detail` under it."""
    global _n, _failed
    _n += 1
    if ok:
        print(f"ok {_n} - {name}", flush=True)
        return
    _failed += 1
    print(f"not ok {_n} - {name}")
    for line in str(detail).splitlines()[:40]:
        print(f"# {line}")
    sys.stdout.flush()


def plan():
    """Prints the plan (1..N after the points, as TAP allows) and returns the exit status."""
    print(f"1..{_n}", flush=True)
    return 1 if _failed else 0
