"""Reports of a run: a self-contained ``report.html`` and a ``report.md`` summary.

The frame every kind fills is :mod:`medsec.report.frame`; each kind renders its own sections
(``medsec/experiments/<kind>/report.py``), found through the ``KINDS`` registry by the
results' ``kind``.

Usage (re-render a finished run's report from its ``results.json``)::

    from medsec.report import write_report
    paths = write_report("runs/demo/results.json")   # {"html": .../report.html, "md": .../report.md}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsec.errors import ConfigError
from medsec.io import atomic_write_text
from medsec.report.loading import check_schema, load_results

log = logging.getLogger(__name__)


def write_report(results: Mapping[str, Any] | str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` atomically, rendered by the results' kind.

    Args:
        results: a results dict, or the path of a ``results.json`` (or of its run folder).
        out_dir: where to write; defaults to the folder of ``results.json`` when given a
            path. Example ``.npz`` paths in the results are resolved relative to it.

    Returns:
        ``{"html": path, "md": path}``.

    Raises:
        DataError: when the results file is missing or not valid JSON.
        ConfigError: when ``schema_version`` is missing or unsupported, the kind is unknown, or
            a results dict is given without ``out_dir``.
    """
    from medsec.registry import KINDS

    if isinstance(results, (str, Path)):
        path = Path(results)
        data = load_results(path)
        if out_dir is None:
            out_dir = path if path.is_dir() else path.parent
    else:
        data = check_schema(dict(results))
        if out_dir is None:
            raise ConfigError("write_report needs out_dir when given a results dict instead of a results.json path")
    out = Path(out_dir)
    kind: Any = KINDS.get(data["kind"])  # a medsec.runs.kind.Kind
    html, md = kind.render(data, out)
    paths = {
        "html": atomic_write_text(out / "report.html", html),
        "md": atomic_write_text(out / "report.md", md),
    }
    log.info("wrote %s and %s", paths["html"], paths["md"])
    return paths


__all__ = ["write_report", "load_results", "check_schema"]
