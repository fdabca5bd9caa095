"""Loading ``results.json`` and the per-cell example ``.npz`` files for reports."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medsec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # the results envelope written by medsec.runs.store (docs/results-schema.md)
SUPPORTED_SCHEMA_VERSIONS = (SCHEMA_VERSION,)
EXAMPLE_KEYS = ("clean", "adv", "label", "pred_clean", "pred_adv")


def check_schema(results: Any, source: str = "results") -> dict[str, Any]:
    """Check that ``results`` is a results dict of a supported schema version.

    Args:
        results: the parsed results.json content.
        source: where it came from, for error messages.

    Returns:
        ``results`` unchanged.

    Raises:
        DataError: when ``results`` is not a JSON object.
        ConfigError: when ``schema_version`` is missing or unsupported.
    """
    if not isinstance(results, dict):
        raise DataError(f"{source} must hold a JSON object, got {type(results).__name__}")
    version = results.get("schema_version")
    if version is None:
        raise ConfigError(
            f"{source} has no schema_version; it was not written by medsec run (expected schema_version "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})"
        )
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ConfigError(
            f"{source} has schema_version {version!r}, which this medsec cannot read (supported: "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); upgrade medsec or rerun the experiment"
        )
    if not isinstance(results.get("kind"), str):
        raise ConfigError(f"{source} names no experiment kind (the 'kind' field); it was not written by medsec run")
    if not isinstance(results.get("cells"), dict):
        raise DataError(f"{source} has no 'cells' object; it is truncated or hand-edited")
    return results


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and check a ``results.json`` file.

    Args:
        path: the file, or the run folder holding ``results.json``.

    Returns:
        The results dict.

    Raises:
        DataError: when the file is missing, unreadable or not valid JSON.
        ConfigError: when ``schema_version`` is missing or unsupported.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"results file {path} not found; pass the results.json of a medsec run or its folder") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read results file {path}: {exc}") from exc
    try:
        results = json.loads(text)
    except ValueError as exc:
        raise DataError(f"results file {path} is not valid JSON ({exc}); it may be truncated or hand-edited") from exc
    return check_schema(results, source=str(path))


def resolve_inside(base: Path, rel: str) -> Path | None:
    """``base / rel`` if it stays inside ``base`` (no absolute paths or ``..`` escapes), else None."""
    base = base.resolve()
    target = (base / rel).resolve()
    try:
        target.relative_to(base)
    except ValueError:
        return None
    return target


def load_examples(out_dir: Path, rel: str | None) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Load one cell's example arrays.

    Args:
        out_dir: the run folder the path is relative to.
        rel: the cell's ``examples`` entry (None when the cell saved none).

    Returns:
        ``(arrays, None)`` on success, or ``(None, note)`` with a human-readable reason.
    """
    if not rel:
        return None, "no examples were saved for this cell (no point was attacked)"
    path = resolve_inside(out_dir, rel)
    if path is None:
        return None, f"examples path {rel} points outside the run folder; skipped"
    if not path.is_file():
        return None, f"examples file {rel} not found; skipped"
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in EXAMPLE_KEYS if k not in npz.files]
            if missing:
                return None, f"examples file {rel} lacks {', '.join(missing)}; skipped"
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None, f"examples file {rel} is unreadable ({exc}); skipped"
    if len(arrays["clean"]) == 0:
        return None, f"examples file {rel} holds no examples"
    return arrays, None
