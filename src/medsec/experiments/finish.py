"""The end of every ``medsec run``: mark the results complete, save them, write the report.

Every experiment kind (and the robustness and segmentation runners) finished the same way;
this is that tail, once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsec.io import atomic_write_json


def finish_run(results: dict[str, Any], path: str | Path, report: bool = True) -> dict[str, Any]:
    """Mark ``results`` complete with a ``provenance.finished`` UTC timestamp, write it
    atomically to ``path`` (the run's ``results.json``) and, when ``report``, write
    ``report.html`` and ``report.md`` next to it (through the results' experiment kind).

    The status is set only here, after every cell was saved, so an interrupted run is never
    marked complete and a rerun resumes it.
    """
    results["status"] = "complete"
    results.setdefault("provenance", {})["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(path, results)
    if report:
        from medsec.report import write_report

        write_report(results, Path(path).parent)
    return results
