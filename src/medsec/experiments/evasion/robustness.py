"""Defences, adaptive attacks, worst cases and cascades: the rows of the robustness tables.

Everything here reads a results dict and returns plain rows (dicts) and
:class:`~medsec.report.tables.Badge` lists; :mod:`medsec.report.tables` turns them into
columns and the HTML/Markdown renderers into markup. Older results lack the defence fields:
a missing ``defense`` is the undefended model, a missing ``adaptive`` is false.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from medsec.report.formatting import (
    MISSING,
    dig,
    eps_255,
    eps_axis_value,
    fmt_eps_short,
    fmt_float,
    fmt_list,
    fmt_pct,
    fmt_text,
    mode_text,
)
from medsec.report.tables import Badge, Column

NO_DEFENSE = "none"
UNDEFENDED_KEY = None


# --------------------------------------------------------------------------- record fields
def evaluations_of(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The finished cells of an evasion (or segmentation) run, in plan order."""
    cells = results.get("cells") or {}
    return [ev for ev in (cells.values() if isinstance(cells, Mapping) else cells) if isinstance(ev, Mapping)]


def defense_of(ev: Mapping[str, Any]) -> str | None:
    """The defence label of an evaluation or worst-case record (None: undefended)."""
    d = ev.get("defense")
    return None if d is None or d == "" else str(d)


def is_adaptive(ev: Mapping[str, Any]) -> bool:
    """Whether the cell was attacked adaptively (BPDA/EOT); false when the field is missing."""
    return ev.get("adaptive") is True


def defense_text(label: str | None) -> str:
    """A defence label for a table cell: the en dash for the undefended model."""
    return MISSING if label is None else label


def cell_name(ev: Mapping[str, Any] | None, fallback: Any = None) -> str:
    """An evaluation's display label, with `` (adaptive)`` for adaptive cells."""
    if ev is None:
        return fmt_text(fallback)
    name = str(ev.get("label") or ev.get("attack") or ev.get("id") or "?")
    return f"{name} (adaptive)" if is_adaptive(ev) else name


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _eps(ev: Mapping[str, Any]) -> float | None:
    return _number(dig(ev, "threat.eps"))


# --------------------------------------------------------------------------- defences
def defense_order(results: Mapping[str, Any], evaluations: Sequence[Mapping[str, Any]]) -> list[str | None]:
    """Defence labels in display order: the undefended model (if evaluated), then the
    declared defences, then any other label met in the evaluations or worst cases."""
    seen = {defense_of(ev) for ev in evaluations}
    seen |= {defense_of(wc) for wc in results.get("worst_case") or [] if isinstance(wc, Mapping)}
    order: list[str | None] = [None] if None in seen else []
    for d in results.get("defenses") or []:
        if isinstance(d, Mapping) and d.get("label") is not None and str(d["label"]) not in order:
            order.append(str(d["label"]))
    for ev in evaluations:
        label = defense_of(ev)
        if label not in order:
            order.append(label)
    for label in sorted((s for s in seen if s not in order), key=str):
        order.append(label)
    return order


def defense_infos(results: Mapping[str, Any], evaluations: Sequence[Mapping[str, Any]]) -> dict[str | None, dict[str, Any]]:
    """Facts about every defence label, keyed by label (None: the undefended model).

    Each value holds ``label``, ``name``, ``params``, ``differentiable``, ``stochastic``
    (None when unknown), ``needs_adaptive`` (not differentiable, stochastic, or attacked
    adaptively in this run) and ``clean_accuracy`` (from the evaluations' metrics).
    """
    declared = {str(d["label"]): d for d in results.get("defenses") or []
                if isinstance(d, Mapping) and d.get("label") is not None}
    infos: dict[str | None, dict[str, Any]] = {}
    for label in defense_order(results, evaluations):
        d = declared.get(label, {}) if label is not None else {}
        diff = d.get("differentiable") if isinstance(d.get("differentiable"), bool) else None
        stoch = d.get("stochastic") if isinstance(d.get("stochastic"), bool) else None
        mine = [ev for ev in evaluations if defense_of(ev) == label]
        clean = next((c for c in (_number(dig(ev, "metrics.clean_accuracy")) for ev in mine) if c is not None), None)
        if clean is None and label is None:
            clean = _number(dig(results, "clean.accuracy"))
        infos[label] = {
            "label": label, "name": d.get("name"), "params": d.get("params"),
            "differentiable": diff, "stochastic": stoch,
            "needs_adaptive": diff is False or stoch is True or any(is_adaptive(ev) for ev in mine),
            "clean_accuracy": clean,
        }
    return infos


def _why_adaptive(info: Mapping[str, Any] | None) -> str:
    if not info:
        return "needs an adaptive attack"
    parts = []
    if info.get("differentiable") is False:
        parts.append("not differentiable (needs BPDA)")
    if info.get("stochastic") is True:
        parts.append("stochastic (needs EOT)")
    return " and ".join(parts) or "was attacked adaptively in this run"


def overstates(ev: Mapping[str, Any], infos: Mapping[str | None, Mapping[str, Any]]) -> bool:
    """True for a plain gradient attack on a defence that needs BPDA/EOT (robustness may be overstated)."""
    label = defense_of(ev)
    info = infos.get(label)
    return (label is not None and bool(info and info.get("needs_adaptive")) and not is_adaptive(ev)
            and ev.get("gradient_free") is not True)


def non_adaptive_badge(ev: Mapping[str, Any], infos: Mapping[str | None, Mapping[str, Any]],
                       compact: bool = False) -> Badge:
    """The warning badge of :func:`overstates` cells."""
    label = defense_of(ev)
    tip = (f"plain gradient attack (no BPDA/EOT) against defence {label}, which is "
           f"{_why_adaptive(infos.get(label))}: this robust accuracy may overstate robustness")
    return Badge("⚠" if compact else "non-adaptive", "warn", tip, compact=compact)


def evaluation_badges(ev: Mapping[str, Any], infos: Mapping[str | None, Mapping[str, Any]]) -> list[Badge]:
    """Badges of one summary row: adaptive / non-adaptive, universal, gradient-free, min-norm sweep."""
    badges = []
    info = infos.get(defense_of(ev)) or {}
    if is_adaptive(ev):
        parts = []
        if info.get("differentiable") is False:
            parts.append("BPDA")
        n = _number(ev.get("eot_samples"))
        if n is not None and n > 1:
            parts.append(f"EOT×{int(n)}")
        tip = ("adaptive attack: gradients through a differentiable approximation of the defence (BPDA)"
               " and/or averaged over random draws of it (EOT)")
        badges.append(Badge(f"adaptive ({' + '.join(parts)})" if parts else "adaptive", "adaptive", tip))
    elif overstates(ev, infos):
        badges.append(non_adaptive_badge(ev, infos))
    if ev.get("universal") is True:
        size = dig(ev, "metrics.fit_size")
        rate = dig(ev, "metrics.fit_fooling_rate")
        text = f"universal (fit on {fmt_text(size)}, fooling rate {fmt_pct(rate)})" if size is not None else "universal"
        badges.append(Badge(text, "universal", "one input-agnostic perturbation per eps, fitted on training images "
                            "(fooling rate measured on them) and applied unchanged to every evaluated image"))
    if ev.get("gradient_free") is True:
        badges.append(Badge("no gradients", "info", "gradient-free (black-box) attack: immune to masked gradients"))
    sweep = ev.get("sweep")
    if isinstance(sweep, Mapping):
        total = fmt_text(sweep.get("runtime_s_total"))
        badges.append(Badge("min-norm sweep", "info", f"one minimum-norm run evaluated at {fmt_text(sweep.get('cells'))} "
                            f"eps values; its runtime ({total} s in all) is split evenly over them"))
    return badges


# --------------------------------------------------------------------------- worst case
def worst_case_rows(results: Mapping[str, Any], evaluations: Sequence[Mapping[str, Any]],
                    infos: Mapping[str | None, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``worst_case`` records in display order (defence, norm, mode, eps), with
    ``best_label`` (the best attack's display label) and ``attack_labels`` added."""
    by_id = {str(ev.get("id")): ev for ev in evaluations}
    order = {label: i for i, label in enumerate(defense_order(results, evaluations))}
    rows = []
    for wc in results.get("worst_case") or []:
        if not isinstance(wc, Mapping):
            continue
        cells = [by_id.get(str(c)) for c in wc.get("attacks") or []]
        label = defense_of(wc)
        info = infos.get(label) or {}
        rows.append({
            **wc, "defense": label,
            "best_label": cell_name(by_id.get(str(wc.get("best_attack"))), wc.get("best_attack")),
            "attack_labels": [cell_name(ev, c) for ev, c in zip(cells, wc.get("attacks") or [])],
            "no_adaptive": label is not None and bool(info.get("needs_adaptive"))
            and not any(ev is not None and (is_adaptive(ev) or ev.get("gradient_free") is True) for ev in cells),
        })
    rows.sort(key=lambda r: (order.get(r["defense"], len(order)), str(r.get("norm")), bool(r.get("targeted")),
                             _number(r.get("eps")) or 0.0))
    return rows


def worst_case_badges(row: Mapping[str, Any], infos: Mapping[str | None, Mapping[str, Any]]) -> list[Badge]:
    """A warning on worst cases of a defence that needs BPDA/EOT but met no adaptive attack."""
    if not row.get("no_adaptive"):
        return []
    return [Badge("no adaptive attack", "warn",
                  f"defence {row.get('defense')} is {_why_adaptive(infos.get(row.get('defense')))}, but no adaptive or "
                  "gradient-free attack was run at this budget: the worst case may overstate robustness")]


# --------------------------------------------------------------------------- defence x attack matrix
def matrix_spec(evaluations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The attack columns of the defence x attack matrix, in first-seen order.

    One column per (label, norm, targeted), followed by its adaptive twin when adaptive
    cells exist. Each is ``{"key", "label", "norm", "targeted", "adaptive", "eps", "threat",
    "gradient_free"}``
    where ``eps`` is the largest eps of the attack over all defences and ``threat`` the
    threat record at that eps.
    """
    cols: dict[tuple[str, str, bool, bool], dict[str, Any]] = {}
    bases: list[tuple[str, str, bool]] = []
    for ev in evaluations:
        t = ev.get("threat") or {}
        base = (str(ev.get("label") or ev.get("attack") or "?"), str(t.get("norm") or "?"), bool(t.get("targeted")))
        if base not in bases:
            bases.append(base)
        key = (*base, is_adaptive(ev))
        eps = _eps(ev)
        cur = cols.get(key)
        if cur is None or (eps is not None and (cur["eps"] is None or eps > cur["eps"])):
            cols[key] = {"key": key, "label": base[0], "norm": base[1], "targeted": base[2], "adaptive": key[3],
                         "eps": eps, "threat": dict(t), "gradient_free": ev.get("gradient_free") is True}
    return [cols[(*b, a)] for b in bases for a in (False, True) if (*b, a) in cols]


def matrix_header(col: Mapping[str, Any]) -> str:
    """``"pgd (adaptive) @ linf 8/255"`` (plus ``", targeted"``)."""
    name = f"{col['label']} (adaptive)" if col["adaptive"] else col["label"]
    mode = ", targeted" if col["targeted"] else ""
    return f"{name} @ {col['norm']} {fmt_eps_short(col['threat'])}{mode}"


def matrix_rows(evaluations: Sequence[Mapping[str, Any]], infos: Mapping[str | None, Mapping[str, Any]],
                cols: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per defence: its facts plus ``cells`` ({column key: evaluation at the column's eps})."""
    rows = []
    for label, info in infos.items():
        cells: dict[Any, Mapping[str, Any]] = {}
        for ev in evaluations:
            if defense_of(ev) != label:
                continue
            t = ev.get("threat") or {}
            key = (str(ev.get("label") or ev.get("attack") or "?"), str(t.get("norm") or "?"), bool(t.get("targeted")),
                   is_adaptive(ev))
            col = next((c for c in cols if c["key"] == key), None)
            eps = _eps(ev)
            if col is not None and eps is not None and col["eps"] is not None and math.isclose(eps, col["eps"],
                                                                                                rel_tol=1e-9):
                cells[key] = ev
        rows.append({**info, "defense_text": NO_DEFENSE if label is None else label, "cells": cells})
    return rows


def matrix_record(results: Mapping[str, Any]) -> dict[str, Any]:
    """The defence x attack matrix as results.json stores it (the same cells as the report's).

    ``{"columns": [{"header", "attack", "norm", "targeted", "adaptive", "eps"}],
    "rows": [{"defense", "differentiable", "stochastic", "needs_adaptive", "cells": {header:
    {"id", "robust_accuracy", "adaptive", "non_adaptive_warning"}}}]}``; a cell's
    ``non_adaptive_warning`` is true for a plain gradient attack on a defence that needs
    BPDA/EOT (its robust accuracy may overstate robustness). Columns come from the
    evaluations, so a newly registered attack listed in the config is one more column.
    """
    evaluations = evaluations_of(results)
    infos = defense_infos(results, evaluations)
    cols = matrix_spec(evaluations)
    heads = {c["key"]: matrix_header(c) for c in cols}
    out_rows = []
    for row in matrix_rows(evaluations, infos, cols):
        cells = {}
        for key, ev in row["cells"].items():
            cells[heads[key]] = {"id": ev.get("id"), "robust_accuracy": dig(ev, "metrics.robust_accuracy"),
                                 "adaptive": is_adaptive(ev), "non_adaptive_warning": overstates(ev, infos)}
        out_rows.append({"defense": row.get("label"), "differentiable": row.get("differentiable"),
                         "stochastic": row.get("stochastic"), "needs_adaptive": row.get("needs_adaptive"),
                         "cells": cells})
    return {"columns": [{"header": heads[c["key"]], "attack": c["label"], "norm": c["norm"], "targeted": c["targeted"],
                         "adaptive": c["adaptive"], "eps": c["eps"]} for c in cols], "rows": out_rows}


# --------------------------------------------------------------------------- cascades
def stage_title(ev: Mapping[str, Any]) -> str:
    """``"autoattack · defence jpeg · linf 8/255, untargeted"`` for a cascade cell."""
    t = ev.get("threat") or {}
    d = defense_of(ev)
    where = f"defence {d}" if d is not None else "no defence"
    mode = "targeted" if t.get("targeted") else "untargeted"
    return f"{cell_name(ev)} · {where} · {t.get('norm')} {fmt_eps_short(t)}, {mode}"


def stage_rows(ev: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a cascade's stage table: the clean start (untargeted only), then each stage."""
    stages = [s for s in ev.get("stages") or [] if isinstance(s, Mapping)]
    rows: list[dict[str, Any]] = []
    if not dig(ev, "threat.targeted"):
        rows.append({"stage": "start", "attack": "(clean)", "broken": None,
                     "robust_accuracy_after": dig(ev, "metrics.clean_accuracy")})
    rows += [{"stage": i + 1, "attack": s.get("attack"), "broken": s.get("broken"),
              "robust_accuracy_after": s.get("robust_accuracy_after")} for i, s in enumerate(stages)]
    return rows


def cascade_cells(evaluations: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The evaluations that recorded cascade stages."""
    return [ev for ev in evaluations if any(isinstance(s, Mapping) for s in ev.get("stages") or [])]


# --------------------------------------------------------------------------- curves
def worst_case_points(results: Mapping[str, Any]) -> dict[tuple[str, str | None], dict[bool, list[tuple[float, float]]]]:
    """{(norm, defence): {targeted: [(eps axis value, worst-case robust accuracy %), ...]}}."""
    out: dict[tuple[str, str | None], dict[bool, list[tuple[float, float]]]] = {}
    for wc in results.get("worst_case") or []:
        if not isinstance(wc, Mapping):
            continue
        threat = {"norm": wc.get("norm"), "eps": wc.get("eps"), "eps_255": wc.get("eps_255")}
        x = eps_axis_value(threat)
        ra = _number(wc.get("robust_accuracy"))
        if x is None or ra is None:
            continue
        out.setdefault((str(wc.get("norm") or "?"), defense_of(wc)), {}).setdefault(bool(wc.get("targeted")), []).append(
            (x, 100.0 * ra))
    return {k: {t: sorted(p) for t, p in v.items()} for k, v in out.items()}


# --------------------------------------------------------------------------- columns
def defense_columns() -> list[Column]:
    """Columns of the table of declared defences (rows: ``results["defenses"]`` records)."""
    return [
        Column("Defence", "label"),
        Column("Registry name", "name"),
        Column("Parameters", "params"),
        Column("Differentiable", "differentiable", align="center",
               tooltip="no: plain gradients are useless, attack with BPDA"),
        Column("Stochastic", "stochastic", align="center", tooltip="yes: gradients must be averaged (EOT)"),
    ]


def worst_case_columns(infos: Mapping[str | None, Mapping[str, Any]]) -> list[Column]:
    """Columns of the worst-case table (rows from :func:`worst_case_rows`)."""
    return [
        Column("Defence", lambda r: defense_text(r.get("defense")),
               badges=lambda r: worst_case_badges(r, infos)),
        Column("Norm", "norm"),
        Column("eps", "eps", fmt_float(".4g"), "right", "budget in input units"),
        Column("eps×255", lambda r: eps_255({"norm": r.get("norm"), "eps": r.get("eps"), "eps_255": r.get("eps_255")}),
               fmt_float(".3g"), "right", "budget in 8-bit levels"),
        Column("Mode", lambda r: mode_text(r.get("targeted")), align="center"),
        Column("Worst-case robust acc.", "robust_accuracy", fmt_pct, "right",
               "a point counts as robust only if every attack at this budget failed on it"),
        Column("Best attack", "best_label", tooltip="the single attack with the lowest robust accuracy"),
        Column("Attacks combined", "attack_labels", lambda v: fmt_list(v or [], limit=12)),
    ]


def matrix_columns(cols: Sequence[Mapping[str, Any]], infos: Mapping[str | None, Mapping[str, Any]]) -> list[Column]:
    """Columns of the defence x attack matrix (rows from :func:`matrix_rows`)."""

    def cell(key: Any) -> Any:
        return lambda row: dig(row["cells"].get(key) or {}, "metrics.robust_accuracy")

    def badges(key: Any) -> Any:
        def f(row: Mapping[str, Any]) -> list[Badge]:
            ev = row["cells"].get(key)
            return [non_adaptive_badge(ev, infos, compact=True)] if ev is not None and overstates(ev, infos) else []
        return f

    out = [
        Column("Defence", "defense_text"),
        Column("Clean acc.", "clean_accuracy", fmt_pct, "right", "accuracy of the defended model on clean inputs"),
        Column("Differentiable", "differentiable", align="center"),
        Column("Stochastic", "stochastic", align="center"),
    ]
    for c in cols:
        if c["adaptive"]:
            how = "adaptive: BPDA/EOT through the defence"
        elif c["gradient_free"]:
            how = "gradient-free attack"
        else:
            how = "plain gradient attack (⚠: the defence needs BPDA/EOT)"
        out.append(Column(matrix_header(c), cell(c["key"]), fmt_pct, "right",
                          f"robust accuracy at the attack's largest budget ({c['norm']}, eps "
                          f"{fmt_eps_short(c['threat'])}); {how}", badges=badges(c["key"])))
    return out


def stage_columns() -> list[Column]:
    """Columns of a cascade's stage table (rows from :func:`stage_rows`)."""
    return [
        Column("Stage", "stage", align="right"),
        Column("Attack", "attack"),
        Column("Points broken", "broken", align="right", tooltip="points first broken by this stage"),
        Column("Robust acc. after", "robust_accuracy_after", fmt_pct, "right",
               "robust accuracy once this stage and all before it have run"),
    ]
