"""Difference of Logits Ratio (DLR) objective (Croce & Hein, ICML 2020, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", section 4).

Threat model: any; white-box gradient attacks (APGD-DLR, APGD-T). With the logits
sorted decreasingly, z_pi1 >= z_pi2 >= ..., the untargeted loss to maximise is

    DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)

and the targeted one (true class y, target t)

    DLR_T(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

Both are invariant to shifting and (positive) rescaling of the logits, so they do not
reward the attacker for merely inflating or shrinking the logits, which masks
gradients of cross-entropy on some defences. A targeted objective only receives the
target (``y`` holds the target, as for every medsec objective), so :meth:`Dlr.loss`
with ``targeted=True`` uses the largest non-target logit for z_y; that is exactly z_y
while the sample is still classified as y (the points APGD-T attacks).
:meth:`Dlr.targeted_loss` takes the true class explicitly (the paper's formula).

DLR needs a softmax head with at least 3 classes (4 when targeted); for binary
single-logit and multi-label heads, or too few classes, it raises an
:class:`~medsec.errors.InputError` that suggests ``"margin"``.

Example:
    >>> z = torch.tensor([[4.0, 3.0, 1.0, 0.0]])
    >>> Dlr().loss(z, torch.tensor([0]))  # -(4 - 3) / (4 - 1)
    tensor([-0.3333])
"""

from __future__ import annotations

import torch

from medsec.errors import InputError
from medsec.objectives.base import Objective
from medsec.registry import OBJECTIVES

_TINY = 1e-12


@OBJECTIVES.register("dlr")
class Dlr(Objective):
    """Difference of Logits Ratio (untargeted and targeted), multiclass heads only.

    Args:
        task: the head type; only ``"multiclass"`` (others raise with a hint to ``"margin"``).
    """

    name = "dlr"
    tasks = ("multiclass",)

    def __init__(self, task: str = "multiclass") -> None:
        if task not in self.tasks:
            raise InputError(
                f"objective 'dlr' (difference of logits ratio) needs a multiclass softmax head with at "
                f"least 3 classes (4 targeted); a {task!r} head has no third logit to normalise by. "
                f"Use loss='margin' (or 'bce') instead."
            )
        self.task = task

    @staticmethod
    def _check(logits: torch.Tensor, targeted: bool) -> None:
        need = 4 if targeted else 3
        if logits.dim() != 2 or logits.shape[1] < need:
            classes = logits.shape[1] if logits.dim() == 2 else 1
            kind = "targeted" if targeted else "untargeted"
            raise InputError(
                f"the {kind} DLR loss needs at least {need} classes, the model has {classes}; "
                f"use loss='margin' instead."
            )

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        """Per-sample DLR; ``y`` is the true class (untargeted) or the target (targeted)."""
        self._check(logits, targeted)
        y = y.long()[:, None]
        top = logits.topk(4 if targeted else 3, dim=1).values
        z_label = logits.gather(1, y)[:, 0]
        z_other = logits.scatter(1, y, float("-inf")).max(dim=1).values
        if not targeted:
            return -(z_label - z_other) / (top[:, 0] - top[:, 2] + _TINY)
        # y is the target t; the largest non-target logit stands in for z_y
        return -(z_other - z_label) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)

    def targeted_loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The paper's targeted DLR with the true class ``y`` and the ``target`` given."""
        self._check(logits, True)
        top = logits.topk(4, dim=1).values
        z_y = logits.gather(1, y.long()[:, None])[:, 0]
        z_t = logits.gather(1, target.long()[:, None])[:, 0]
        return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)
