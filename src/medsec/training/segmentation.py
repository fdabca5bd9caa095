"""Supervised training of a :class:`~medsec.models.segmenter.Segmenter` (the fine-tuning
recipe of Budathoki & Dhakal, arXiv 2505.02971, after VLSM-Adapter, arXiv 2405.06196).

Loss: MONAI ``DiceCELoss(lambda_dice=1.5, lambda_ce=1.0)`` on mask logits (sigmoid for a
binary head, softmax for multi-class). Optimiser: AdamW (lr 1e-3, weight decay 1e-3)
over the parameters that require gradients only (so a CLIPSeg with a frozen backbone
trains its adapters only), gradient clipping at 0.5, and the paper's warm-up + cosine
schedule (linear warm-up over ``warmup_epochs``, then cosine down to 0.01 x lr).
Augmentation: random horizontal and vertical flips applied to image and mask together.
Deterministic given ``seed`` on CPU. The paper's 16-bit mixed precision and 352 px
inputs are left to the caller (medsec validates on CPU at 96-128 px).

Example:
    >>> import medsec.data, medsec.models
    >>> seg = medsec.models.create("monai_unet", channels=[8, 16], strides=[2])
    >>> train_ds = medsec.data.create("kvasir_seg", size=32, limit=16)
    >>> res = train_segmenter(seg, train_ds, epochs=1, batch_size=8)
    >>> 0.0 <= evaluate_segmenter(seg, train_ds)["dice"] <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from medsec.errors import DataError
from medsec.training.loop import TrainResult, TrainTask, fit

if TYPE_CHECKING:
    from medsec.training.adversarial import AdversarialTraining


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Predicted class masks (N, H, W) in eval mode (mode restored)."""
    from medsec.tasks import predict_mask

    was = model.training
    model.eval()
    try:
        out = [predict_mask(model(images[i : i + batch_size].to(device))).cpu().to(torch.uint8)
               for i in range(0, len(images), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def evaluate_segmenter(model: torch.nn.Module, ds: Any, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean Dice, IoU, HD95 and lesion-miss rate of ``model`` on a segmentation dataset."""
    from medsec.metrics.segmentation import segmentation_summary

    pred = predict_masks(model, ds.images, batch_size, device)
    return segmentation_summary(pred, ds.labels, getattr(model, "num_classes", 2))


def dice_ce_loss(num_classes: int = 2) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """MONAI ``DiceCELoss(lambda_dice=1.5, lambda_ce=1.0)`` on mask logits: sigmoid for a binary
    (one-logit) head, softmax over one-hot targets otherwise."""
    from monai.losses.dice import DiceCELoss

    if num_classes == 2:
        return DiceCELoss(sigmoid=True, lambda_dice=1.5, lambda_ce=1.0)
    return DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=1.5, lambda_ce=1.0)


def segmentation_task(num_classes: int = 2) -> TrainTask[torch.nn.Module]:
    """The :func:`~medsec.training.loop.fit` hooks of segmenter training: masks as (B, 1, H, W)
    float targets flipped with the images, Dice+CE (:func:`dice_ce_loss`), the PGD-AT/TRADES
    segmentation loss, ``val_dice``."""
    loss_fn = dice_ce_loss(num_classes)
    return TrainTask(
        loss=lambda model, x, y: loss_fn(model(x), y),
        adversarial_loss=lambda adv, model, x, y, gen: adv.segmenter_loss(model, x, y, loss_fn, gen),
        targets=lambda masks: masks[:, None].float(),
        spatial_targets=True,
        validate=lambda model, val, device: {"val_dice": evaluate_segmenter(model, val, device=device)["dice"]},
    )


def train_segmenter(
    model: torch.nn.Module,
    train: Any,
    val: Any | None = None,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 16,
    weight_decay: float = 1e-3,
    warmup_epochs: int = 0,
    grad_clip: float | None = 0.5,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    adversarial: AdversarialTraining | None = None,
) -> TrainResult:
    """Train ``model`` in place with DiceCE and AdamW; return the per-epoch history
    (:func:`~medsec.training.loop.fit` with the segmentation hooks and the warm-up + cosine
    schedule).

    ``adversarial`` (method ``pgd_at``) trains on PGD points that maximise the same
    Dice+CE loss (:mod:`medsec.training.adversarial`).
    """
    images, masks = getattr(train, "images", None), getattr(train, "labels", None)
    if images is None or masks is None or len(images) == 0:
        raise DataError("train_segmenter needs a non-empty segmentation dataset (images + masks)")
    return fit(model, train, val, task=segmentation_task(getattr(model, "num_classes", 2)), epochs=epochs, lr=lr,
               batch_size=batch_size, weight_decay=weight_decay, schedule="warmup_cosine",
               warmup_epochs=warmup_epochs, grad_clip=grad_clip, augment=augment, seed=seed, device=device,
               on_epoch=on_epoch, adversarial=adversarial)


__all__ = ["train_segmenter", "segmentation_task", "dice_ce_loss", "evaluate_segmenter", "predict_masks"]
