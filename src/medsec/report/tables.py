"""Format-independent table specs shared by the HTML and Markdown reports.

A table is a list of :class:`Column` specs applied to a list of rows (usually dicts). The
renderers (:func:`medsec.report.frame.html_table`, :func:`medsec.report.frame.md_table`)
only see plain text cells, so a new table (a defence x attack matrix, segmentation Dice,
...) is a new list of columns, not new rendering code.

Example:
    >>> cols = [Column("Attack", "label"), Column("Robust acc.", "metrics.robust_accuracy", fmt_pct, "right")]
    >>> cell_texts(cols, [{"label": "pgd", "metrics": {"robust_accuracy": 0.02}}])
    [['pgd', '2.0%']]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medsec.report.formatting import (
    dig,
    eps_255,
    fmt_float,
    fmt_list,
    fmt_pct,
    fmt_text,
    mode_text,
)


@dataclass(frozen=True)
class Badge:
    """A short marker after a cell's text (``adaptive``, ``non-adaptive``, ...).

    Args:
        text: the badge text (plain text; escaped by the renderers).
        kind: its style, one of ``"adaptive"``, ``"warn"``, ``"info"``, ``"universal"``
            (the HTML class).
        tooltip: a longer explanation (HTML ``title``; dropped in Markdown).
        compact: a symbol shown as is in plain text instead of ``[text]``.
    """

    text: str
    kind: str = "info"
    tooltip: str | None = None
    compact: bool = False

    @property
    def plain(self) -> str:
        """The badge as plain text: ``[text]``, or the bare symbol when compact."""
        return self.text if self.compact else f"[{self.text}]"


@dataclass(frozen=True)
class Column:
    """One table column.

    Args:
        header: the column heading (plain text).
        value: a dotted key path into the row (``"metrics.psnr"``) or a function row -> raw value.
        fmt: raw value -> plain text.
        align: ``"left"``, ``"right"`` or ``"center"``.
        tooltip: optional longer explanation of the header (HTML ``title``).
        badges: optional row -> :class:`Badge` list shown after the cell text.
    """

    header: str
    value: str | Callable[[Any], Any]
    fmt: Callable[[Any], str] = fmt_text
    align: str = "left"
    tooltip: str | None = None
    badges: Callable[[Any], Sequence[Badge]] | None = None

    def raw(self, row: Any) -> Any:
        """The raw value of this column for ``row`` (None when missing)."""
        if callable(self.value):
            return self.value(row)
        return dig(row, self.value)

    def text(self, row: Any) -> str:
        """The formatted text of this column for ``row``."""
        return self.fmt(self.raw(row))

    def badge_list(self, row: Any) -> list[Badge]:
        """The badges of this column for ``row`` (empty without a ``badges`` function)."""
        return list(self.badges(row)) if self.badges else []

    def plain(self, row: Any) -> str:
        """The cell as plain text: :meth:`text` followed by the badges (for Markdown)."""
        return " ".join([self.text(row)] + [b.plain for b in self.badge_list(row)])


def cell_texts(columns: list[Column], rows: Iterable[Any]) -> list[list[str]]:
    """Plain text of every cell (badges included), row by row."""
    return [[c.plain(row) for c in columns] for row in rows]


# --------------------------------------------------------------------------- standard tables
def summary_columns(
    badges: Callable[[Any], Sequence[Badge]] | None = None, defense: bool = False
) -> list[Column]:
    """Columns of the per-cell summary table (one row per evaluation record).

    Args:
        badges: optional evaluation -> badges shown after the attack label.
        defense: add a "Defence" column (the en dash for the undefended model).
    """
    num3 = fmt_float(".3g")
    cols = [
        Column("Attack", "label", badges=badges),
        Column("Norm", "threat.norm"),
        Column("eps", "threat.eps", fmt_float(".4g"), "right", "budget in input units"),
        Column("eps×255", lambda ev: eps_255(ev.get("threat") or {}), fmt_float(".3g"), "right",
               "budget in 8-bit levels"),
        Column("Mode", lambda ev: mode_text(dig(ev, "threat.targeted")), align="center"),
        Column("Robust acc.", "metrics.robust_accuracy", fmt_pct, "right",
               "accuracy on adversarial inputs over all evaluated points"),
        Column("ASR", "metrics.attack_success_rate", fmt_pct, "right",
               "attack success rate over the attacked (clean-correct) points"),
        Column("Mean L∞", "metrics.linf", fmt_float(".4g"), "right"),
        Column("Mean L2", "metrics.l2", num3, "right"),
        Column("Mean L0", "metrics.l0", fmt_float(".4g"), "right"),
        Column("PSNR", "metrics.psnr", fmt_float(".1f", "dB"), "right"),
        Column("SSIM", "metrics.ssim", fmt_float(".3f"), "right"),
        Column("Queries", "metrics.queries_mean", fmt_float(".1f"), "right", "mean model calls per attacked point"),
        Column("Runtime", "runtime_s", fmt_float(".1f", "s"), "right"),
    ]
    if defense:
        cols.insert(1, Column("Defence", lambda ev: ev.get("defense") or None,
                              tooltip="input defence in front of the model (– for none)"))
    return cols


def attack_columns() -> list[Column]:
    """Columns of the attack-configuration table (one row per evaluation record)."""
    return [
        Column("Cell", "id"),
        Column("Attack", "attack"),
        Column("Label", "label"),
        Column("Target", "target"),
        Column("Attacked points", "metrics.n_attacked", align="right"),
        Column("Seed", "seed", align="right"),
        Column("Parameters", "params"),
    ]


def _get(rec: Mapping[str, Any], key: str) -> Any:
    return rec.get(key)


def history_columns(history: list[Mapping[str, Any]]) -> list[Column]:
    """Columns for a training history: one per key seen in any epoch record, epoch first."""
    keys: list[str] = []
    for rec in history:
        for k in rec:
            if k not in keys:
                keys.append(k)
    if "epoch" in keys:
        keys.remove("epoch")
        keys.insert(0, "epoch")
    cols = []
    for k in keys:
        fmt: Callable[[Any], str]
        if "acc" in k:
            fmt = fmt_pct
        elif k == "epoch":
            fmt = fmt_text
        else:
            fmt = fmt_float(".4g")
        cols.append(Column(k.replace("_", " "), functools.partial(_get, key=k), fmt, "right"))
    return cols


def key_value_rows(pairs: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a two-column key/value table (see :func:`key_value_columns`)."""
    return [{"key": k, "value": v} for k, v in pairs]


def key_value_columns(value_fmt: Callable[[Any], str] = fmt_text) -> list[Column]:
    """Columns for a key/value table of :func:`key_value_rows`."""
    return [Column("", "key"), Column("", lambda row: row["value"], value_fmt)]


def fmt_classes(classes: Any) -> str:
    """Class names as a compact comma-separated list."""
    return fmt_list(classes, limit=40)
