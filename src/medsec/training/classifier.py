"""Supervised training of a :class:`~medsec.models.Classifier` (the `medsec train` recipe).

AdamW with a one-cycle learning-rate schedule, optional flip augmentation, cross-entropy
(multiclass) or BCE (binary / multi-label) on logits. Deterministic given a
``torch.Generator`` seed on CPU.

Example:
    >>> result = train_classifier(model, train_ds, val_ds, epochs=5)  # doctest: +SKIP
    >>> result.history[-1]["val_accuracy"]                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medsec.errors import DataError
from medsec.metrics.accuracy import correct
from medsec.models.classifier import Classifier, predict_from_logits

if TYPE_CHECKING:
    from medsec.training.adversarial import AdversarialTraining

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """History (one dict per epoch) and wall time of a training run."""

    history: list[dict[str, Any]] = field(default_factory=list)
    runtime_s: float = 0.0


def _tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = getattr(ds, "images", None), getattr(ds, "labels", None)
    if images is None or labels is None:
        xs, ys = zip(*[ds[i] for i in range(len(ds))])  # type: ignore[arg-type]
        images, labels = torch.stack(list(xs)), torch.as_tensor(list(ys))
    if len(images) == 0:
        raise DataError("cannot train on an empty dataset")
    return images, labels


def _loss(model: Classifier, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if model.task == "multiclass":
        return F.cross_entropy(logits, y.long())
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu") -> torch.Tensor:
    """Predicted labels for a tensor of images, in eval mode (mode restored)."""
    was = model.training
    model.eval()
    try:
        out = [predict_from_logits(model(images[i : i + batch_size].to(device)), model.task).cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def evaluate(model: Classifier, ds: Dataset, batch_size: int = 512, device: str | torch.device = "cpu") -> float:
    """Accuracy of ``model`` on a dataset."""
    images, labels = _tensors(ds)
    return float(correct(predict(model, images, batch_size, device), labels).float().mean())


def train_classifier(
    model: Classifier,
    train: Dataset,
    val: Dataset | None = None,
    epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    adversarial: AdversarialTraining | None = None,
) -> TrainResult:
    """Train ``model`` in place and return its history.

    Args:
        augment: random horizontal and vertical flips (label-preserving for the
            microscopy, histology and endoscopy images medsec ships configs for).
        on_epoch: called with each epoch's record (for progress display).
        adversarial: train on PGD-AT or TRADES points instead of clean images
            (:mod:`medsec.training.adversarial`).
    """
    images, labels = _tensors(train)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
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
            xb, yb = images[idx].to(device), labels[idx].to(device)
            if augment:
                flip_h = torch.rand(len(idx), generator=gen) < 0.5
                flip_v = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip_h.to(device)[:, None, None, None], xb.flip(3), xb)
                xb = torch.where(flip_v.to(device)[:, None, None, None], xb.flip(2), xb)
            if adversarial is not None:
                loss = adversarial.classifier_loss(model, xb, yb, gen)
            else:
                loss = _loss(model, model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        record: dict[str, Any] = {"epoch": epoch, "loss": total / max(n, 1)}
        if val is not None:
            record["val_accuracy"] = evaluate(model, val, device=device)
        log.info("epoch %d: %s", epoch, record)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    opt.zero_grad(set_to_none=True)  # leave no parameter gradients behind
    model.eval()
    result.runtime_s = time.perf_counter() - start
    return result
