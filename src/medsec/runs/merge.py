"""``medsec merge``: the run folders of ``medsec run --shard i/n`` (or any partial runs of one
config) become one run folder with one report.

The shards must hold runs of the same config (the executor aside) and the same seed, with
disjoint cells that together cover the plan. The merged folder gets every file of the shards
(the first copy of a file several shards made, such as the trained model, wins) and the union of
the cells, and is then finished as a resumed run of the config: the kind loads the data and
the models the shards saved, finds every cell done, computes its aggregates (worst case,
matrices, checks) over all cells and writes the report. Nothing is trained and no cell runs
again.

Example:
    >>> from medsec.runs.merge import overlaps
    >>> overlaps({"a": {"x": 1}, "b": {"y": 1}, "c": {"x": 1, "z": 1}})
    {'x': ['a', 'c']}
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from medsec.errors import ConfigError, DataError
from medsec.io import atomic_write_json
from medsec.runs.store import RESULTS, compare_configs, without_executor

SKIP = {RESULTS, "report.html", "report.md"}


def load_results(folder: Path) -> dict[str, Any]:
    """A run folder's ``results.json``, or one clear error."""
    path = folder / RESULTS
    if not path.is_file():
        raise DataError(f"{folder} holds no {RESULTS}; give the --out folders of the shard runs")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise DataError(f"{path} is not a medsec results file")
    return data


def overlaps(cells_by_shard: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """The cells that more than one shard holds: cell id -> the shards holding it."""
    seen: dict[str, list[str]] = {}
    for shard, cells in cells_by_shard.items():
        for cell in cells:
            seen.setdefault(cell, []).append(shard)
    return {c: s for c, s in seen.items() if len(s) > 1}


def merge(shards: Sequence[str | Path], out: str | Path, *, report: bool = True) -> dict[str, Any]:
    """Merge shard run folders into ``out`` (a new or empty folder) and finish it; returns the
    merged results. Refuses shards of different configs, overlapping cells and missing cells,
    each with one message naming them."""
    from medsec.registry import KINDS
    from medsec.runs.context import run
    from medsec.runs.executors.sequential import SequentialExecutor
    from medsec.runs.kind import Kind

    folders = [Path(s) for s in shards]
    if len(folders) < 2:
        raise ConfigError("medsec merge needs two or more shard folders")
    if len({f.resolve() for f in folders}) < len(folders):
        raise ConfigError("a shard folder is given twice; give each shard once")
    target = Path(out)
    if target.resolve() in {f.resolve() for f in folders}:
        raise ConfigError(f"--out {target} is one of the shards; merge into a new folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"--out {target} exists and is not an empty folder; merge into a new folder")
    runs = [load_results(f) for f in folders]
    first = runs[0]
    for folder, res in zip(folders[1:], runs[1:]):
        if res.get("kind") != first.get("kind") or res.get("schema_version") != first.get("schema_version"):
            raise ConfigError(f"{folder} holds a {res.get('kind')} run and {folders[0]} a {first.get('kind')} run; "
                              "merge shards of one config")
        verdict, keys = compare_configs(without_executor(first.get("config") or {}),
                                        without_executor(res.get("config") or {}))
        if verdict != "same":
            raise ConfigError(f"{folder} ran another config than {folders[0]} (changed: {', '.join(keys[:8])}); "
                              "merge shards of one config")
    both = overlaps({str(f): r["cells"] for f, r in zip(folders, runs)})
    if both:
        cell, where = next(iter(both.items()))
        raise ConfigError(f"{len(both)} cells are in more than one shard (e.g. {cell!r} in {' and '.join(where)}); "
                          "give each shard of the run once, with disjoint --shard i/n")
    plan: list[str] = []
    for res in runs:
        plan += [c for c in (res.get("seeds") or {}).get("cells", {}) if c not in plan]
    cells = {c: rec for res in runs for c, rec in res["cells"].items()}
    missing = [c for c in plan if c not in cells]
    if missing:
        counts = sorted({int(r["shard"]["count"]) for r in runs if r.get("shard")})
        hint = f" (the shards say the run has {counts[0]} parts)" if len(counts) == 1 else ""
        raise ConfigError(f"the shards hold {len(cells)} of the {len(plan)} planned cells{hint}; missing "
                          f"{len(missing)}, e.g. {missing[0]!r}: run the missing shards (or rerun a shard whose "
                          "cells failed) and merge again")
    target.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if not path.is_file() or rel.as_posix() in SKIP or path.name.endswith(".tmp"):
                continue
            dest = target / rel
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
    merged = {**first, "cells": {c: cells[c] for c in plan}, "status": "running", "failed": {}, "shard": None}
    merged["seeds"] = {**(first.get("seeds") or {}), "cells": {c: s for r in runs for c, s in
                                                              (r.get("seeds") or {}).get("cells", {}).items()}}
    prov = dict(first.get("provenance") or {})
    prov["merged_from"] = [str(f) for f in folders]
    prov["retried"] = {c: n for r in runs for c, n in ((r.get("provenance") or {}).get("retried") or {}).items()}
    merged["provenance"] = prov
    atomic_write_json(target / RESULTS, merged)
    kind = cast(Kind, KINDS.get(first["kind"]))
    cfg = kind.config.model_validate(first["config"])
    return run(cfg, target, executor=SequentialExecutor(max_retries=0), report=report)


__all__ = ["load_results", "merge", "overlaps"]
