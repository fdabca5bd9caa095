"""The run folder's ``results.json``: one resume policy, atomic writes, one results envelope.

Every experiment kind writes its results through a :class:`RunStore`, so every kind resumes
the same way:

* **the same config** resumes: finished cells are kept and skipped;
* **a config that only widens the grid** (a kind declares which of its config lists are grid
  axes, :class:`Axis`; a widened axis holds every old item, and an ``ordered`` axis keeps the
  old items as its prefix) keeps the finished cells that are still in the plan;
* **any other change** is refused with one message that names the changed keys; ``restart``
  (``medsec run --restart``) starts over explicitly.

``results.json`` is rewritten atomically (temp file, fsync, rename) after every finished cell,
so an interrupted run of any kind loses nothing that finished, and its status turns
``complete`` only in :meth:`RunStore.finish`, after every cell was saved.

The envelope, the same for every kind (``docs/results-schema.md``)::

    {"schema_version", "kind", "name", "status", "config", "provenance",
     "seeds": {"global", "cells": {id: seed}}, "cells": {id: record},
     "checks": [{"level", "code", "message", "cells"}], ...the kind's own sections}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsec.errors import ConfigError, DataError
from medsec.io import atomic_write_json
from medsec.report.loading import SCHEMA_VERSION
from medsec.runs.grid import cell_seed

log = logging.getLogger(__name__)

RESULTS = "results.json"
# the keys every kind's results.json has (docs/results-schema.md); the rest are the kind's own
ENVELOPE = frozenset({"schema_version", "kind", "name", "status", "config", "provenance", "seeds", "cells", "checks",
                      "failed", "shard"})
LEVELS = ("info", "warning", "error")


@dataclass(frozen=True)
class Axis:
    """A config list that is a grid axis: a rerun may add items to it and keep the cells of
    the old ones. ``path`` is dotted (``threat.eps``, ``poison.rates``); ``ordered`` axes may
    only grow at the end (the cells of an item depend on its position)."""

    path: str
    ordered: bool = False


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON-like configs differ (lists are compared whole)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append(sub)
            else:
                out += changed_keys(old[key], new[key], sub)
        return out
    return [] if old == new else [path or "(the whole config)"]


def without_executor(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config without its ``executor`` section: where the cells ran does not change their
    numbers, so a rerun under another executor resumes the same run."""
    return {k: v for k, v in config.items() if k != "executor"}


def widens(old: Any, new: Any, ordered: bool) -> bool:
    """Whether list ``new`` holds every item of list ``old`` (as its prefix when ``ordered``)."""
    if not isinstance(old, list) or not isinstance(new, list):
        return False
    if ordered:
        return new[: len(old)] == old
    return all(item in new for item in old)


def compare_configs(old: Mapping[str, Any], new: Mapping[str, Any], axes: Iterable[Axis] = ()) -> tuple[str, list[str]]:
    """``("same" | "widens" | "differs", changed keys)`` for a rerun of config ``old`` as ``new``."""
    changed = changed_keys(old, new)
    if not changed:
        return "same", []
    by_path = {a.path: a for a in axes}
    refused = []
    for key in changed:
        axis = by_path.get(key)
        if axis is None or not widens(_at(old, key), _at(new, key), axis.ordered):
            refused.append(key)
    return ("widens", changed) if not refused else ("differs", refused)


def _at(cfg: Any, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def check_record(check: Mapping[str, Any]) -> dict[str, Any]:
    """A check in the one vocabulary: ``{level, code, message, cells}`` (extra keys kept)."""
    level = check.get("level", "warning")
    if level not in LEVELS or not isinstance(check.get("code"), str) or not isinstance(check.get("message"), str):
        raise ValueError(f"a check needs level in {LEVELS}, a string code and a string message; got {dict(check)}")
    return {**check, "level": level, "cells": list(check.get("cells") or [])}


class RunStore:
    """The results of one run folder (see the module docstring).

    Args:
        out_dir: the run folder.
        kind: the experiment kind's name.
        name: the run's name (the config's ``name``).
        config: the resolved config as JSON-ready data.
        seed: the run's global seed.
        provenance: versions, device, host (:func:`medsec.runs.context.provenance`).
        axes: the config lists a rerun may widen.
        restart: start over even when the folder holds another config's run.
    """

    def __init__(self, out_dir: str | Path, *, kind: str, name: str, config: dict[str, Any], seed: int,
                 provenance: dict[str, Any], axes: Iterable[Axis] = (), restart: bool = False) -> None:
        self.out = Path(out_dir)
        self.path = self.out / RESULTS
        self.kind = kind
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {str(self.out)!r} is a file, not a folder; give a folder for the run")
        prev = {} if restart else self._previous(config, tuple(axes))
        self.resumed = bool(prev)
        self.results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "kind": kind, "name": name, "status": "running", "config": config,
            "provenance": {**provenance, "started": now(), "finished": None},
            "seeds": {"global": int(seed), "cells": dict((prev.get("seeds") or {}).get("cells") or {})},
            "cells": dict(prev.get("cells") or {}), "checks": [], "failed": {},
        }
        if prev:
            first = (prev.get("provenance") or {}).get("started")
            self.results["provenance"]["started"] = first or self.results["provenance"]["started"]
            self.results["provenance"]["resumed"] = [*(prev.get("provenance") or {}).get("resumed", []), now()]
            for key in ("merged_from", "retried"):  # what earlier attempts and merges record carries over
                if (prev.get("provenance") or {}).get(key):
                    self.results["provenance"][key] = prev["provenance"][key]
            for key, value in prev.items():  # the kind's own sections (trained models, data facts) carry over
                self.results.setdefault(key, value)
            log.info("resuming %s: %d finished cells kept", self.path, len(self.results["cells"]))
        self.out.mkdir(parents=True, exist_ok=True)
        self.save()

    def _previous(self, config: dict[str, Any], axes: tuple[Axis, ...]) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            prev = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path} cannot be read ({exc}); rerun with --restart to start over, or choose "
                            "another --out") from None
        if not isinstance(prev, dict) or prev.get("schema_version") != SCHEMA_VERSION or prev.get("kind") != self.kind:
            what = (f"a {prev.get('kind') or prev.get('task')} run" if isinstance(prev, dict) else "something else")
            raise ConfigError(f"{self.out} holds {what} (results schema {prev.get('schema_version') if isinstance(prev, dict) else '?'}), "
                              f"not a {self.kind} run of this medsec; rerun with --restart to start over, or choose "
                              "another --out")
        verdict, keys = compare_configs(without_executor(prev.get("config") or {}), without_executor(config), axes)
        if verdict == "differs":
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            raise ConfigError(f"{self.out} holds a run of another config (changed: {shown}); rerun with --restart to "
                              "start over, or choose another --out")
        if verdict == "widens":
            log.info("%s: the config widens the grid (%s); finished cells are kept", self.out, ", ".join(keys))
        return prev

    # ------------------------------------------------------------------ cells
    def done(self, cell_id: str) -> dict[str, Any] | None:
        """The record of a finished cell, or None."""
        record: dict[str, Any] | None = self.results["cells"].get(cell_id)
        return record

    def put(self, cell_id: str, record: dict[str, Any], *, attempts: int = 1) -> None:
        """Record a finished cell (and its seed, as :meth:`plan` does) and save at once;
        ``attempts`` > 1 is noted in ``provenance.retried``."""
        self.results["cells"][cell_id] = record
        self.results["seeds"]["cells"][cell_id] = cell_seed(self.results["seeds"]["global"], cell_id)
        self.results["failed"].pop(cell_id, None)
        if attempts > 1:
            self.results["provenance"].setdefault("retried", {})[cell_id] = attempts
        self.save()

    def fail(self, cell_ids: Iterable[str], error: str, attempts: int) -> None:
        """Record cells that failed after ``attempts`` tries (``failed``: their error); a rerun
        of the same config tries them again."""
        for cell_id in cell_ids:
            if cell_id not in self.results["cells"]:
                self.results["failed"][cell_id] = {"error": error, "attempts": int(attempts)}
        self.save()

    def missing(self) -> list[str]:
        """The planned cells that are not finished (failed, not run yet, or another shard's)."""
        return [c for c in self.results["seeds"]["cells"] if c not in self.results["cells"]]

    def sections(self) -> dict[str, Any]:
        """The kind's own sections (everything but the envelope), as JSON-ready data."""
        return {k: v for k, v in self.results.items() if k not in ENVELOPE}

    def plan(self, ids: Iterable[str]) -> None:
        """Fix the plan: keep only the finished cells still planned, in plan order, and record
        every planned cell's seed (:func:`medsec.runs.grid.cell_seed` of the run's seed and the id)."""
        ids = list(ids)
        cells = self.results["cells"]
        self.results["cells"] = {i: cells[i] for i in ids if i in cells}
        self.results["seeds"]["cells"] = {i: cell_seed(self.results["seeds"]["global"], i) for i in ids}
        self.save()

    def reorder(self) -> None:
        """Put the finished cells in plan order (workers finish them in any order) and save."""
        cells = self.results["cells"]
        order = [c for c in self.results["seeds"]["cells"] if c in cells]
        self.results["cells"] = {c: cells[c] for c in order + [c for c in cells if c not in order]}
        self.save()

    @property
    def cells(self) -> dict[str, Any]:
        """The finished cells by id (the store's own dict: a kind may drop a cell it must redo)."""
        cells: dict[str, Any] = self.results["cells"]
        return cells

    def update(self, **sections: Any) -> None:
        """Set the kind's own top-level sections (``data``, ``model`` ...) and save."""
        bad = (ENVELOPE - {"name", "shard"}) & set(sections)
        if bad:
            raise ValueError(f"{sorted(bad)} are part of the envelope; use put(), plan() or add_checks()")
        self.results.update(sections)
        self.save()

    def add_checks(self, checks: Iterable[Mapping[str, Any]]) -> None:
        """Append checks (``{level, code, message, cells}``)."""
        self.results["checks"] += [check_record(c) for c in checks]

    def save(self) -> None:
        atomic_write_json(self.path, self.results)

    def finish(self, report: Callable[[dict[str, Any], Path], Any] | None = None) -> dict[str, Any]:
        """Mark the run ``complete`` when every planned cell is finished (the only place that
        does), else ``incomplete`` (failed cells, or a shard's part of the grid); save, and write
        the report with ``report(results, out_dir)`` when given."""
        self.results["status"] = "incomplete" if self.missing() else "complete"
        self.results["provenance"]["finished"] = now()
        self.save()
        if report is not None:
            report(self.results, self.out)
        return self.results


__all__ = ["ENVELOPE", "Axis", "RunStore", "SCHEMA_VERSION", "changed_keys", "check_record", "compare_configs", "now", "widens",
           "without_executor"]
