"""Binary cross-entropy objective for single-logit binary and multi-label heads.

Threat model: any. Untargeted maximises BCE(z, y) (mean over labels); targeted
maximises -BCE(z, t). For multi-label heads the success test is "any label flipped"
(untargeted) or "every label equals the target" (targeted).

Example:
    >>> Bce("binary").loss(torch.tensor([3.0]), torch.tensor([1])).item() < 0.1
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsec.objectives.base import Objective
from medsec.registry import OBJECTIVES


@OBJECTIVES.register("bce")
class Bce(Objective):
    """Sigmoid binary cross-entropy on logits.

    Args:
        task: the head type, ``"binary"`` (one logit) or ``"multilabel"``.
    """

    name = "bce"
    tasks = ("binary", "multilabel")

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        if self.task == "binary":
            z = logits.reshape(logits.shape[0])
            value = F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none")
        else:
            value = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none").mean(dim=1)
        return -value if targeted else value
