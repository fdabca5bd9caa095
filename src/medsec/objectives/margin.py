"""Margin objective in the style of Carlini & Wagner (IEEE S&P 2017), loss f6.

Threat model: any. Untargeted maximises min(max_{j!=y} z_j - z_y, kappa); targeted
maximises min(z_t - max_{j!=t} z_j, kappa). For binary heads the margin is the signed
logit (2y-1)z; for multi-label heads it is the smallest per-label signed logit, so
the attack flips (untargeted) or fixes (targeted) the weakest label. Unlike DLR it
needs no third class, so it works on every head.

Example:
    >>> Margin().loss(torch.tensor([[2.0, 0.5]]), torch.tensor([0]))
    tensor([-1.5000])
"""

from __future__ import annotations

import torch

from medsec.objectives.base import Objective, signed_margins
from medsec.registry import OBJECTIVES


@OBJECTIVES.register("margin")
class Margin(Objective):
    """C&W margin loss, capped at ``kappa`` (the confidence).

    Args:
        task: the head type, ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        kappa: the cap of the loss (default inf: no cap).
    """

    name = "margin"

    def __init__(self, task: str = "multiclass", *, kappa: float = float("inf")) -> None:
        super().__init__(task)
        self.kappa = float(kappa)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        m = signed_margins(logits, y, self.task)
        value = m if targeted else -m
        return value.clamp(max=self.kappa)
