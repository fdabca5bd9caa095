"""Plain-text formatting of results.json values for reports.

Every formatter takes a raw JSON value and returns plain text (never markup): the HTML
renderer escapes it and the Markdown renderer escapes pipes. Undefined numbers (``null``,
NaN) become an en dash, the string ``"inf"`` becomes the infinity sign.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

MISSING = "–"
INFINITY = {"inf": "∞", "+inf": "∞", "infinity": "∞", "-inf": "−∞", "-infinity": "−∞"}


def dig(obj: Any, path: str, default: Any = None) -> Any:
    """Follow a dotted ``path`` through nested mappings, returning ``default`` when a step is missing.

    Args:
        obj: a (nested) mapping, e.g. one evaluation record.
        path: keys separated by dots, e.g. ``"metrics.robust_accuracy"``.
        default: what to return when a key is missing or a step is not a mapping.

    Returns:
        The value found, or ``default``.
    """
    for key in path.split("."):
        if not isinstance(obj, Mapping) or key not in obj:
            return default
        obj = obj[key]
    return obj


def _special(value: Any) -> str | None:
    """The text for null/NaN/infinite values, or None for an ordinary value."""
    if value is None:
        return MISSING
    if isinstance(value, str) and value.strip().lower() in INFINITY:
        return INFINITY[value.strip().lower()]
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
    return None


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_text(value: Any) -> str:
    """Any value as compact text: numbers with 4 significant digits, containers as JSON."""
    special = _special(value)
    if special is not None:
        return special
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str, ensure_ascii=False)
    return str(value)


def fmt_pct(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal (``0.912 -> "91.2%"``)."""
    special = _special(value)
    if special is not None:
        return special
    if not _is_number(value):
        return fmt_text(value)
    return f"{100 * float(value):.1f}%"


def fmt_float(spec: str = ".4g", unit: str = "") -> Callable[[Any], str]:
    """A formatter for numbers with the format ``spec`` and an optional ``unit`` suffix.

    Args:
        spec: a format spec such as ``".1f"`` or ``".3g"``.
        unit: text appended after a space when the value is a finite number.

    Returns:
        A function value -> text.
    """

    def fmt(value: Any) -> str:
        special = _special(value)
        if special is not None:
            return special
        if not _is_number(value):
            return fmt_text(value)
        text = format(float(value), spec)
        return f"{text} {unit}" if unit else text

    return fmt


def fmt_bool(value: Any) -> str:
    """``True -> "yes"``, ``False -> "no"``."""
    return fmt_text(value)


def fmt_list(values: Any, limit: int = 40) -> str:
    """A list as comma-separated text, eliding after ``limit`` items."""
    if not isinstance(values, (list, tuple)):
        return fmt_text(values)
    items = [fmt_text(v) for v in values[:limit]]
    more = len(values) - limit
    return ", ".join(items) + (f", … ({more} more)" if more > 0 else "")


def eps_255(threat: Mapping[str, Any]) -> float | None:
    """eps in 8-bit levels for an additive threat (None for patch threats or a missing eps)."""
    if threat.get("norm") == "patch":
        return None
    value = threat.get("eps_255")
    if _is_number(value):
        return float(value)
    eps = threat.get("eps")
    return float(eps) * 255.0 if _is_number(eps) else None


def eps_axis_value(threat: Mapping[str, Any]) -> float | None:
    """The x coordinate of a threat on an eps axis: eps*255, or the pixel fraction for patches."""
    if threat.get("norm") == "patch":
        eps = threat.get("eps")
        return float(eps) if _is_number(eps) else None
    return eps_255(threat)


def fmt_eps_short(threat: Mapping[str, Any]) -> str:
    """A threat's budget as people state it: ``"8/255"``, or ``"5% of pixels"`` for patches."""
    if threat.get("norm") == "patch":
        eps = threat.get("eps")
        return f"{100 * float(eps):.3g}% of pixels" if _is_number(eps) else MISSING
    e = eps_255(threat)
    return f"{e:.3g}/255" if e is not None else MISSING


def mode_text(targeted: Any) -> str:
    """``"targeted"`` or ``"untargeted"``."""
    return "targeted" if targeted else "untargeted"


def provenance_line(prov: Mapping[str, Any]) -> str:
    """One line of provenance: versions, git hash, device and run times (plain text)."""
    git = prov.get("git")
    parts = [f"medsec {prov['medsec']}" if prov.get("medsec") else None,
             f"torch {prov['torch']}" if prov.get("torch") else None,
             f"git {str(git)[:10]}" if git else "git unknown",
             f"device {prov['device']}" if prov.get("device") else None,
             f"started {prov['started']}" if prov.get("started") else None,
             f"finished {prov['finished']}" if prov.get("finished") else "not finished"]
    return " · ".join(p for p in parts if p)
