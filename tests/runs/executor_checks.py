"""What "the same numbers" means when two runs of one config are compared across executors."""

from __future__ import annotations

from typing import Any

TIMING = {"runtime_s", "runtime_s_total", "seconds", "time"}
ENVELOPE = {"provenance", "status", "config", "checks", "cells", "seeds", "failed", "shard"}


def numbers(obj: Any) -> Any:
    """``obj`` without its timing fields (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: numbers(v) for k, v in obj.items()
                if str(k) not in TIMING and not str(k).endswith(("_s", "_seconds"))}
    if isinstance(obj, list):
        return [numbers(v) for v in obj]
    return obj


def same_numbers(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Every cell (in plan order), every section of the kind, the seeds and the checks equal,
    timing aside."""
    assert list(a["cells"]) == list(b["cells"])
    for cell in a["cells"]:
        assert numbers(a["cells"][cell]) == numbers(b["cells"][cell]), cell
    assert set(a) == set(b)
    assert numbers({k: v for k, v in a.items() if k not in ENVELOPE}) == numbers(
        {k: v for k, v in b.items() if k not in ENVELOPE})
    assert a["seeds"] == b["seeds"]
    assert [(c["code"], c["cells"]) for c in a["checks"]] == [(c["code"], c["cells"]) for c in b["checks"]]
