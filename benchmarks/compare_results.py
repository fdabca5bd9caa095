"""Compare the numbers of two evasion ``results.json`` files, e.g. of the same config run by
two versions of medsec (results schema 1, where cells are the ``evaluations`` list, or 2, where
they are the ``cells`` dict).

Compared: the cell ids, each cell's ``metrics`` and per-sample ``robust`` bits, and the
``clean``, ``worst_case`` and ``matrix`` sections. Exit status 0 when all are equal.

Usage (the measurement behind benchmarks/same-numbers.md)::

    git worktree add /tmp/medsec-before <commit>          # with its own venv: make -C /tmp/medsec-before install
    /tmp/medsec-before/.venv/bin/medsec demo --out /tmp/before-demo
    .venv/bin/medsec demo --out /tmp/after-demo
    python benchmarks/compare_results.py /tmp/before-demo/results.json /tmp/after-demo/results.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def cells(results: dict[str, Any]) -> dict[str, Any]:
    """The cells by id, from either results schema."""
    if isinstance(results.get("cells"), dict):
        return dict(results["cells"])
    return {e["id"]: e for e in results["evaluations"]}


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two runs' numbers (empty when they are the same)."""
    b, a = cells(before), cells(after)
    if set(b) != set(a):
        return [f"cell ids differ: {sorted(set(b) ^ set(a))}"]
    out = [f"{k}: {field} differ" for k in b for field in ("metrics", "robust") if b[k].get(field) != a[k].get(field)]
    out += [f"section {s} differs" for s in ("clean", "worst_case", "matrix") if before.get(s) != after.get(s)]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python benchmarks/compare_results.py BEFORE/results.json AFTER/results.json", file=sys.stderr)
        return 2
    before, after = (json.loads(open(p, encoding="utf-8").read()) for p in argv)
    diff = differences(before, after)
    print(f"{len(cells(before))} cells compared; {len(diff)} differences")
    for line in diff:
        print("  " + line)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
