"""Sanity checks on finished evaluations, reported as structured warnings.

A warning is ``{"level", "code", "message", "cells"}``; the report highlights them.
These guard against a false sense of robustness (Carlini et al. 2019, "On Evaluating
Adversarial Robustness"; Croce & Hein 2020).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def robust_accuracy_rises_with_eps(evaluations: list[dict[str, Any]], tol: float = 0.01) -> list[dict[str, Any]]:
    """Warn when an attack's robust accuracy increases with eps (a broken or masked attack)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for ev in evaluations:
        t = ev["threat"]
        groups[(ev["label"], t["norm"], t["targeted"], ev.get("defense"), ev.get("adaptive"))].append(ev)
    out = []
    for (label, norm, targeted, _, _), evs in groups.items():
        evs = sorted(evs, key=lambda e: e["threat"]["eps"])
        for a, b in zip(evs, evs[1:]):
            ra, rb = a["metrics"].get("robust_accuracy"), b["metrics"].get("robust_accuracy")
            if ra is not None and rb is not None and rb > ra + tol:
                out.append({
                    "level": "warning",
                    "code": "robust-accuracy-rises-with-eps",
                    "message": (f"{label} ({norm}{', targeted' if targeted else ''}): robust accuracy rises from "
                                f"{100 * ra:.1f}% at eps {a['threat']['eps_255']:.3g}/255 to {100 * rb:.1f}% at "
                                f"{b['threat']['eps_255']:.3g}/255; the attack is not converging or gradients are masked"),
                    "cells": [a["id"], b["id"]],
                })
    return out


def non_finite_losses(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Warn when a cell saw NaN/inf losses or gradients (recorded by the runner)."""
    return [
        {"level": "warning", "code": "non-finite-loss", "cells": [ev["id"]],
         "message": f"{ev['label']}: {ev['metrics']['non_finite']} attacked points had a NaN/inf final loss"}
        for ev in evaluations if ev["metrics"].get("non_finite")
    ]


def run_checks(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All checks over the finished evaluations."""
    return (robust_accuracy_rises_with_eps(evaluations) + non_finite_losses(evaluations)
            + black_box_beats_white_box(evaluations))


def _warn(code: str, message: str, cells: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"level": "warning", "code": code, "message": message, "cells": cells or [], **extra}


def model_checks(model: Any, x: Any, y: Any, label: str = "model") -> list[dict[str, Any]]:
    """Checks on the model itself, before any attack (Carlini et al. 2019, sec. 4-5).

    * ``gradient-zero`` / ``gradient-nan``: input gradients of the loss that vanish or are
      not finite for many points (shattered gradients: use BPDA);
    * ``randomised-outputs``: two identical calls give different outputs (use EOT);
    * ``outputs-look-like-probabilities``: outputs in [0, 1] that sum to one (or all in
      [0, 1] for sigmoid heads): attacks and objectives expect logits.
    """
    import torch

    from medsec.attacks.base import attack_mode
    from medsec.objectives import resolve

    out: list[dict[str, Any]] = []
    task = getattr(model, "task", "multiclass")
    with attack_mode(model):
        with torch.no_grad():
            a, b = model(x), model(x)
        if not torch.equal(a, b):
            out.append(_warn("randomised-outputs",
                             f"{label}: two identical calls give different outputs (max difference "
                             f"{float((a - b).abs().max()):.3g}); plain gradient attacks underestimate it: use EOT",
                             model=label))
        if task == "multiclass" and a.dim() == 2 and a.shape[1] > 1:
            looks = bool(((a >= 0) & (a <= 1)).all()) and bool(torch.allclose(a.sum(1), torch.ones(len(a)), atol=1e-3))
        else:
            looks = bool(((a >= 0) & (a <= 1)).all())
        if looks:
            out.append(_warn("outputs-look-like-probabilities",
                             f"{label}: outputs lie in [0, 1]{' and sum to 1' if task == 'multiclass' else ''}; "
                             "medsec expects logits (remove the final softmax/sigmoid)", model=label))
        xx = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = resolve("auto", task).loss(model(xx), y, False)
            (g,) = torch.autograd.grad(loss.sum(), xx, allow_unused=True)
    if g is None:
        g = torch.zeros_like(x)
    flat = g.flatten(1)
    nan = (~torch.isfinite(flat)).any(1)
    zero = (flat == 0).all(1) & ~nan
    if nan.any():
        out.append(_warn("gradient-nan", f"{label}: input gradients are NaN/inf for {int(nan.sum())} of {len(x)} points",
                         model=label))
    if zero.float().mean() > 0.1:
        out.append(_warn("gradient-zero",
                         f"{label}: input gradients are exactly zero for {int(zero.sum())} of {len(x)} points "
                         "(shattered or masked gradients): gradient attacks will look weak, use BPDA", model=label))
    return out


def black_box_beats_white_box(evaluations: list[dict[str, Any]], tol: float = 0.01) -> list[dict[str, Any]]:
    """Warn when a gradient-free attack finds more errors than every plain gradient attack at
    the same threat: the gradients are probably masked.

    Adaptive cells (BPDA/EOT) are not counted as the white-box side: a black-box attack that
    beats plain PGD is the masking signal even when an adaptive attack then closes the gap;
    the warning then names the best adaptive number, which is the one to trust.
    """
    groups: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: {"bb": [], "wb": [], "ad": []})
    for ev in evaluations:
        t = ev["threat"]
        key = (ev.get("defense"), t["norm"], t["eps"], t["targeted"])
        side = "bb" if ev.get("gradient_free") else ("ad" if ev.get("adaptive") else "wb")
        groups[key][side].append(ev)
    out = []
    for (defense, norm, eps, _), g in groups.items():
        if not g["bb"] or not g["wb"]:
            continue
        bb = min(g["bb"], key=lambda e: e["metrics"]["robust_accuracy"])
        wb = min(g["wb"], key=lambda e: e["metrics"]["robust_accuracy"])
        if bb["metrics"]["robust_accuracy"] < wb["metrics"]["robust_accuracy"] - tol:
            cells = [bb["id"], wb["id"]]
            tail = ": gradients are likely masked"
            if g["ad"]:
                ad = min(g["ad"], key=lambda e: e["metrics"]["robust_accuracy"])
                cells.append(ad["id"])
                tail += (f"; the adaptive (BPDA/EOT) run of {ad['label']} reaches {100 * ad['metrics']['robust_accuracy']:.1f}%, "
                         "trust the adaptive numbers")
            out.append(_warn("black-box-beats-white-box",
                             f"{bb['label']} (no gradients) reaches {100 * bb['metrics']['robust_accuracy']:.1f}% robust "
                             f"accuracy, below the best plain gradient attack {wb['label']} "
                             f"({100 * wb['metrics']['robust_accuracy']:.1f}%) at {norm} eps {eps:.4g}"
                             f"{' with defence ' + str(defense) if defense else ''}{tail}",
                             cells))
    return out
