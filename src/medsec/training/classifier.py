"""Supervised training of a :class:`~medsec.models.Classifier` (the `medsec train` recipe).

AdamW with a one-cycle learning-rate schedule, optional flip augmentation, cross-entropy
(multiclass) or BCE (binary / multi-label) on logits. Deterministic given a
``torch.Generator`` seed on CPU.

Example:
    >>> import medsec.data, medsec.models
    >>> model = medsec.models.create("small_cnn", num_classes=2, width=8)
    >>> train_ds = medsec.data.create("synthetic_he", n=16, size=16)
    >>> val_ds = medsec.data.create("synthetic_he", n=8, size=16, split="test")
    >>> result = train_classifier(model, train_ds, val_ds, epochs=2, batch_size=8)
    >>> 0.0 <= result.history[-1]["val_accuracy"] <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medsec.metrics.accuracy import correct
from medsec.models.classifier import Classifier
from medsec.tasks import predict_from_logits
from medsec.training.loop import TrainResult, TrainTask, dataset_tensors, fit

if TYPE_CHECKING:
    from medsec.training.adversarial import AdversarialTraining


def classifier_loss(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (multiclass) or BCE on logits (binary, multi-label) of ``model(x)``."""
    logits = model(x)
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


def evaluate(model: Classifier, ds: Dataset[Any], batch_size: int = 512, device: str | torch.device = "cpu") -> float:
    """Accuracy of ``model`` on a dataset."""
    images, labels = dataset_tensors(ds)
    return float(correct(predict(model, images, batch_size, device), labels).float().mean())


def classification_task() -> TrainTask[Classifier]:
    """The :func:`~medsec.training.loop.fit` hooks of classifier training (loss, PGD-AT/TRADES
    loss, ``val_accuracy``)."""
    return TrainTask(
        loss=classifier_loss,
        adversarial_loss=lambda adv, model, x, y, gen: adv.classifier_loss(model, x, y, gen),
        validate=lambda model, val, device: {"val_accuracy": evaluate(model, val, device=device)},
    )


def train_classifier(
    model: Classifier,
    train: Dataset[Any],
    val: Dataset[Any] | None = None,
    *,
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
    """Train ``model`` in place and return its history (:func:`~medsec.training.loop.fit` with
    the classification hooks and the one-cycle schedule).

    Args:
        augment: random horizontal and vertical flips (label-preserving for the
            microscopy, histology and endoscopy images medsec ships configs for).
        on_epoch: called with each epoch's record (for progress display).
        adversarial: train on PGD-AT or TRADES points instead of clean images
            (:mod:`medsec.training.adversarial`).
    """
    return fit(model, train, val, task=classification_task(), epochs=epochs, lr=lr, batch_size=batch_size,
               weight_decay=weight_decay, schedule="one_cycle", augment=augment, seed=seed, device=device,
               on_epoch=on_epoch, adversarial=adversarial)


__all__ = ["TrainResult", "train_classifier", "classification_task", "classifier_loss", "evaluate", "predict"]
