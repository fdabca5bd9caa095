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
        groups[(ev["label"], t["norm"], t["targeted"])].append(ev)
    out = []
    for (label, norm, targeted), evs in groups.items():
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
    return robust_accuracy_rises_with_eps(evaluations) + non_finite_losses(evaluations)
