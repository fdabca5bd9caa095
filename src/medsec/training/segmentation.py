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
    >>> res = train_segmenter(seg, train_ds, epochs=8)  # doctest: +SKIP
    >>> evaluate_segmenter(seg, test_ds)["dice"]        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from medsec.errors import DataError, InputError
from medsec.training.classifier import TrainResult

if TYPE_CHECKING:
    from medsec.training.adversarial import AdversarialTraining

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Predicted class masks (N, H, W) in eval mode (mode restored)."""
    from medsec.objectives.dice_ce import predict_mask

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


def train_segmenter(
    model: torch.nn.Module,
    train: Any,
    val: Any | None = None,
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
    """Train ``model`` in place with DiceCE and AdamW; return the per-epoch history.

    ``adversarial`` (method ``pgd_at``) trains on PGD points that maximise the same
    Dice+CE loss (:mod:`medsec.training.adversarial`).
    """
    from monai.losses import DiceCELoss

    images, masks = getattr(train, "images", None), getattr(train, "labels", None)
    if images is None or masks is None or len(images) == 0:
        raise DataError("train_segmenter needs a non-empty segmentation dataset (images + masks)")
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters (everything is frozen)")
    binary = getattr(model, "num_classes", 2) == 2
    loss_fn = (DiceCELoss(sigmoid=True, lambda_dice=1.5, lambda_ce=1.0) if binary
               else DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=1.5, lambda_ce=1.0))
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    total_steps, warm = max(1, epochs * steps_per_epoch), warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    result = TrainResult()
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(images), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(images), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            xb, yb = images[idx].to(device), masks[idx].to(device)[:, None].float()
            if augment:
                fh = (torch.rand(len(idx), generator=gen) < 0.5).to(device)[:, None, None, None]
                fv = (torch.rand(len(idx), generator=gen) < 0.5).to(device)[:, None, None, None]
                xb, yb = torch.where(fh, xb.flip(3), xb), torch.where(fh, yb.flip(3), yb)
                xb, yb = torch.where(fv, xb.flip(2), xb), torch.where(fv, yb.flip(2), yb)
            if adversarial is not None:
                loss = adversarial.segmenter_loss(model, xb, yb, loss_fn, gen)
            else:
                loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        record: dict[str, Any] = {"epoch": epoch, "loss": total / max(n, 1)}
        if val is not None:
            record["val_dice"] = evaluate_segmenter(model, val, device=device)["dice"]
        log.info("epoch %d: %s", epoch, record)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    opt.zero_grad(set_to_none=True)  # leave no parameter gradients behind
    model.eval()
    result.runtime_s = time.perf_counter() - start
    return result
