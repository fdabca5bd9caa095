"""Accuracy-type metrics: clean accuracy, robust accuracy and attack success rate.

For multi-label heads a prediction is correct only when every label matches (exact
match). Robust accuracy is the accuracy on adversarial inputs, counted over *all*
evaluated points (clean mistakes count as non-robust), as in RobustBench/AutoAttack.

Example:
    >>> accuracy(torch.tensor([1, 0, 2]), torch.tensor([1, 1, 2]))  # a float32 mean
    0.66666...
"""

from __future__ import annotations

import torch

from medsec.registry import METRICS


def correct(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample bool: prediction equals the label (all labels for multi-label)."""
    eq = pred.long() == y.long()
    return eq.all(dim=1) if eq.dim() == 2 else eq


@METRICS.register("accuracy")
def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct predictions."""
    if pred.shape[0] == 0:
        return float("nan")
    return float(correct(pred, y).float().mean())


@METRICS.register("robust_accuracy")
def robust_accuracy(pred_adv: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy on adversarial inputs over all evaluated points."""
    acc: float = accuracy(pred_adv, y)  # (the registry's decorator types the function as returning Any)
    return acc


@METRICS.register("attack_success_rate")
def attack_success_rate(
    pred_clean: torch.Tensor,
    pred_adv: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
) -> float:
    """Untargeted: the fraction of clean-correct points the attack turns wrong.
    Targeted: the fraction of points whose true class is not the target that end up
    predicted as the target."""
    if target is None:
        base = correct(pred_clean, y)
        if not base.any():
            return float("nan")
        return float((~correct(pred_adv[base], y[base])).float().mean())
    eligible = ~correct(target, y)
    if not eligible.any():
        return float("nan")
    return float(correct(pred_adv[eligible], target[eligible]).float().mean())
