"""Dice + cross-entropy objective for segmenters (Budathoki & Dhakal, "Adversarial
Robustness Analysis of Vision-Language Models in Medical Image Segmentation", arXiv
2505.02971, 2025: the attack maximises the fine-tuning loss against the true mask).

Threat model: any; white-box gradient attacks on mask logits (B, C, H, W). The loss is
MONAI's ``DiceCELoss`` with ``lambda_dice=1.5`` and ``lambda_ce=1.0`` (the paper's), with
``sigmoid=True`` for a one-channel binary head and ``softmax=True, to_onehot_y=True`` for a
multi-class head, evaluated per image (MONAI's loss has no per-sample reduction, so it is
called once per image, which is exact). Untargeted: maximise DiceCE(z, y) against the
true mask y. Targeted: ``y`` holds the target mask and the attack maximises
-DiceCE(z, t): a mask of zeros makes the lesion vanish, any other mask forces it.

Success per image, by a Dice-drop threshold ``drop`` (default 0.5), with Dice computed
as in :mod:`medsec.metrics.segmentation` (foreground classes, empty-vs-empty = 1):
untargeted: Dice(pred, y) <= 1 - drop, i.e. the prediction lost at least ``drop`` of
Dice against the true mask (the objective sees only the mask; the segmentation runner
also reports the drop relative to the clean prediction); targeted: Dice(pred, t) >= 1 -
drop (for an empty target: the prediction is empty).

Example:
    >>> obj = DiceCE("segmentation")
    >>> z = torch.full((1, 1, 4, 4), -5.0); y = torch.zeros(1, 4, 4, dtype=torch.long)
    >>> bool(obj.success(z, y))  # correct empty prediction: not broken
    False
"""

from __future__ import annotations

import torch

from medsec.errors import InputError
from medsec.objectives.base import Objective
from medsec.registry import OBJECTIVES
from medsec.tasks import predict_mask

LAMBDA_DICE = 1.5
LAMBDA_CE = 1.0


@OBJECTIVES.register("dice_ce")
class DiceCE(Objective):
    """MONAI DiceCE (lambda_dice 1.5, lambda_ce 1.0) against a mask; success by Dice drop.

    Args:
        task: the head type; only ``"segmentation"``.
        drop: the Dice drop that counts as success, in (0, 1] (default 0.5).
        lambda_dice: weight of the Dice term (default 1.5, the paper's).
        lambda_ce: weight of the cross-entropy term (default 1.0, the paper's).
    """

    name = "dice_ce"
    tasks = ("segmentation",)

    def __init__(self, task: str = "segmentation", *, drop: float = 0.5, lambda_dice: float = LAMBDA_DICE,
                 lambda_ce: float = LAMBDA_CE) -> None:
        super().__init__(task)
        if not 0.0 < float(drop) <= 1.0:
            raise InputError(f"drop (the Dice drop that counts as success) must lie in (0, 1], got {drop}")
        self.drop = float(drop)
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self._losses: dict[bool, torch.nn.Module] = {}

    def _monai(self, binary: bool) -> torch.nn.Module:
        if binary not in self._losses:
            from monai.losses.dice import DiceCELoss

            if binary:
                fn = DiceCELoss(sigmoid=True, lambda_dice=self.lambda_dice, lambda_ce=self.lambda_ce)
            else:
                fn = DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=self.lambda_dice, lambda_ce=self.lambda_ce)
            self._losses[binary] = fn
        return self._losses[binary]

    def dice_ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image DiceCE (B,) of mask logits (B, C, H, W) against masks (B, H, W)."""
        predict_mask(logits)  # shape check
        binary = logits.shape[1] == 1
        fn = self._monai(binary)
        target = y.reshape(y.shape[0], 1, *y.shape[-2:]).to(logits.dtype)
        return torch.stack([fn(logits[i : i + 1], target[i : i + 1]) for i in range(logits.shape[0])])

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        value = self.dice_ce(logits, y)
        return -value if targeted else value

    def success(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        from medsec.metrics.segmentation import dice

        classes = max(2, logits.shape[1])
        d = dice(predict_mask(logits.detach()), y, classes).to(logits.device)
        if targeted:
            return d >= 1.0 - self.drop - 1e-6
        return d <= 1.0 - self.drop + 1e-6

    def __repr__(self) -> str:
        return f"DiceCE(drop={self.drop}, lambda_dice={self.lambda_dice}, lambda_ce={self.lambda_ce})"
