"""Cross-entropy objective (Goodfellow et al. 2015; Madry et al. 2018).

Threat model: any; untargeted maximises CE(z, y), targeted maximises -CE(z, t).
Multiclass heads only (use ``bce`` for single-logit and multi-label heads).

Example:
    >>> obj = CrossEntropy()
    >>> obj.loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).shape
    torch.Size([1])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsec.objectives.base import Objective
from medsec.registry import OBJECTIVES


@OBJECTIVES.register("ce")
class CrossEntropy(Objective):
    """Softmax cross-entropy on logits.

    Args:
        task: the head type; only ``"multiclass"``.
    """

    name = "ce"
    tasks = ("multiclass",)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        ce = F.cross_entropy(logits, y.long(), reduction="none")
        return -ce if targeted else ce
