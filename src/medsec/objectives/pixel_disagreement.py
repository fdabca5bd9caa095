"""Pixel-disagreement objective for segmenters: the fooling criterion of the universal
perturbation stub of Budathoki & Dhakal (arXiv 2505.02971, ``universal_perturbed_imgs.py``),
after Moosavi-Dezfooli et al. (CVPR 2017): an image is fooled when more than
``threshold`` (default 0.2) of its pixels change class.

Threat model: any, untargeted only; ``y`` holds the reference masks, normally the
clean predictions (for the paper's fooling rate) or the true masks. The loss is the
differentiable mean disagreement: for a binary head the mean over pixels of
sigmoid(-(2y - 1) z), for a multi-class head 1 - mean softmax probability of y. It is
0 when every pixel agrees confidently and 1 when every pixel flips confidently; the
success test is the hard fraction of differing pixels > ``threshold``.

Example:
    >>> obj = PixelDisagreement("segmentation")
    >>> z = torch.full((1, 1, 4, 4), 5.0); y = torch.zeros(1, 4, 4, dtype=torch.long)
    >>> bool(obj.success(z, y))
    True
"""

from __future__ import annotations

import torch

from medsec.errors import InputError
from medsec.objectives.base import Objective
from medsec.registry import OBJECTIVES
from medsec.tasks import predict_mask


@OBJECTIVES.register("pixel_disagreement")
class PixelDisagreement(Objective):
    """Soft fraction of pixels whose class differs from the reference mask; fooled above ``threshold``.

    Args:
        task: the head type; only ``"segmentation"``.
        threshold: the fraction of changed pixels above which an image is fooled, in
            [0, 1) (default 0.2).
    """

    name = "pixel_disagreement"
    tasks = ("segmentation",)

    def __init__(self, task: str = "segmentation", *, threshold: float = 0.2) -> None:
        super().__init__(task)
        if not 0.0 <= float(threshold) < 1.0:
            raise InputError(f"threshold (the fraction of changed pixels) must lie in [0, 1), got {threshold}")
        self.threshold = float(threshold)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        if targeted:
            raise InputError("pixel_disagreement is untargeted; use dice_ce with a target mask for targeted attacks")
        predict_mask(logits)  # shape check
        y = y.reshape(y.shape[0], *y.shape[-2:]).long()
        if logits.shape[1] == 1:
            sign = 2.0 * y.to(logits.dtype) - 1.0
            flip = torch.sigmoid(-sign * logits[:, 0])
        else:
            flip = 1.0 - torch.softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
        return flip.flatten(1).mean(1)

    def disagreement(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image hard fraction of pixels whose predicted class differs from ``y``."""
        pred = predict_mask(logits.detach())
        return (pred != y.reshape(pred.shape).to(pred.device)).flatten(1).float().mean(1)

    def success(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        if targeted:
            raise InputError("pixel_disagreement is untargeted")
        return self.disagreement(logits, y) > self.threshold
