"""Reports of a run: a self-contained ``report.html`` and a ``report.md`` summary.

Example:
    >>> from medsec.report import write_report
    >>> paths = write_report("runs/demo/results.json")  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['html', 'md']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsec.errors import ConfigError
from medsec.io import atomic_write_text
from medsec.report.html import render_html
from medsec.report.loading import check_schema, load_results
from medsec.report.markdown import render_markdown

log = logging.getLogger(__name__)


def write_report(results: Mapping[str, Any] | str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` atomically.

    Args:
        results: a results dict, or the path of a ``results.json`` (or of its run folder).
        out_dir: where to write; defaults to the folder of ``results.json`` when given a
            path. Example ``.npz`` paths in the results are resolved relative to it.

    Returns:
        ``{"html": path, "md": path}``.

    Raises:
        DataError: when the results file is missing or not valid JSON.
        ConfigError: when ``schema_version`` is missing or unsupported, or when a results
            dict is given without ``out_dir``.
    """
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
    from medsec.experiments import kind_of_results

    kind = kind_of_results(data)
    if kind is not None and kind.render is not None:
        html, md = kind.render(data, out)
    elif data.get("task") == "segmentation":
        from medsec.report.segmentation import render_segmentation_html, render_segmentation_markdown

        html, md = render_segmentation_html(data, out), render_segmentation_markdown(data)
    else:
        html, md = render_html(data, out), render_markdown(data)
    paths = {
        "html": atomic_write_text(out / "report.html", html),
        "md": atomic_write_text(out / "report.md", md),
    }
    log.info("wrote %s and %s", paths["html"], paths["md"])
    return paths


__all__ = ["write_report", "load_results", "render_html", "render_markdown"]
