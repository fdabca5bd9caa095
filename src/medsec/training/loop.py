"""The one supervised epoch loop that classifier and segmenter training share (:func:`fit`).

What differs between tasks is given as hooks (:class:`TrainTask`): how a batch's targets are
made from the labels, the loss, the adversarial-training loss, whether flips apply to the
targets too (masks) and the validation metric. The loop owns everything else, in this order
per step: a seeded permutation, batches of ``batch_size`` (a last batch of one sample is
skipped: BatchNorm needs two), random horizontal then vertical flips drawn from the same
generator, the loss (clean, or PGD-AT / TRADES), AdamW over the trainable parameters, optional
gradient-norm clipping, and one scheduler step. Deterministic given ``seed`` on CPU.

Schedules (``schedule``): ``"one_cycle"`` (Smith & Topin, "Super-Convergence", 2019, as
``torch.optim.lr_scheduler.OneCycleLR`` with ``max_lr=lr``) or ``"warmup_cosine"`` (linear
warm-up over ``warmup_epochs`` then cosine down to 0.01 x lr, the schedule of Budathoki &
Dhakal, arXiv 2505.02971).

Example:
    >>> import medsec.data, medsec.models
    >>> from medsec.training.classifier import classification_task
    >>> model = medsec.models.create("small_cnn", num_classes=2, width=8)
    >>> train_ds = medsec.data.create("synthetic_he", n=16, size=16)
    >>> result = fit(model, train_ds, task=classification_task(), epochs=2, batch_size=8)
    >>> [record["epoch"] for record in result.history]
    [1, 2]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch import nn

from medsec.errors import ConfigError, DataError, InputError

if TYPE_CHECKING:
    from medsec.training.adversarial import AdversarialTraining

log = logging.getLogger(__name__)

SCHEDULES = ("one_cycle", "warmup_cosine")

ModelT = TypeVar("ModelT", bound=nn.Module)


@dataclass
class TrainResult:
    """History (one dict per epoch) and wall time of a training run."""

    history: list[dict[str, Any]] = field(default_factory=list)
    runtime_s: float = 0.0


@dataclass(frozen=True)
class TrainTask(Generic[ModelT]):
    """The task hooks of :func:`fit`.

    Args:
        loss: ``(model, x, y) -> scalar`` clean training loss of a batch.
        adversarial_loss: ``(adversarial, model, x, y, generator) -> scalar``, the loss of
            PGD-AT / TRADES (:class:`~medsec.training.adversarial.AdversarialTraining`).
        targets: ``labels[idx] -> y`` (e.g. masks to (B, 1, H, W) floats); default identity.
        spatial_targets: flip the targets with the images (segmentation masks).
        validate: ``(model, val, device) -> {name: value}`` added to each epoch's record.
    """

    loss: Callable[[ModelT, torch.Tensor, torch.Tensor], torch.Tensor]
    adversarial_loss: Callable[..., torch.Tensor] | None = None
    targets: Callable[[torch.Tensor], torch.Tensor] | None = None
    spatial_targets: bool = False
    validate: Callable[[ModelT, Any, Any], dict[str, float]] | None = None


def dataset_tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a dataset: its ``images``/``labels`` tensors, else stacked items."""
    images, labels = getattr(ds, "images", None), getattr(ds, "labels", None)
    if images is None or labels is None:
        xs, ys = zip(*[ds[i] for i in range(len(ds))]) if len(ds) else ((), ())
        if not xs:
            raise DataError("cannot train on an empty dataset")
        images, labels = torch.stack(list(xs)), torch.as_tensor(list(ys))
    if len(images) == 0:
        raise DataError("cannot train on an empty dataset")
    return images, labels


def make_schedule(name: str, opt: torch.optim.Optimizer, lr: float, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule ``name`` (see the module docstring)."""
    if name == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    if name == "warmup_cosine":
        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    raise ConfigError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")


def fit(
    model: ModelT,
    train: Any,
    val: Any | None = None,
    *,
    task: TrainTask[ModelT],
    epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    schedule: str = "one_cycle",
    warmup_epochs: int = 0,
    grad_clip: float | None = None,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    adversarial: AdversarialTraining | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train`` (``images`` and ``labels``) and return its history.

    Args:
        task: the task hooks (:class:`TrainTask`).
        epochs, lr, batch_size, weight_decay: AdamW training over ``epochs`` passes.
        schedule: ``"one_cycle"`` or ``"warmup_cosine"`` (with ``warmup_epochs``).
        grad_clip: clip the gradient norm of the trainable parameters to this (None: no clipping).
        augment: random horizontal and vertical flips (of the targets too for
            ``task.spatial_targets``).
        seed: seeds the permutation, the flips and the adversarial inner loop (CPU generator).
        on_epoch: called with each epoch's record (for progress display).
        adversarial: train on PGD-AT or TRADES points (:mod:`medsec.training.adversarial`).
    """
    images, labels = dataset_tensors(train)
    if int(epochs) < 1 or int(batch_size) < 1:
        raise InputError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if adversarial is not None and task.adversarial_loss is None:
        raise InputError("this task has no adversarial-training loss")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters (everything is frozen)")
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    sched = make_schedule(schedule, opt, lr, max(1, epochs * steps_per_epoch), warmup_epochs * steps_per_epoch)
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
            if task.targets is not None:
                yb = task.targets(yb)
            if augment:
                flip_h = (torch.rand(len(idx), generator=gen) < 0.5).to(device)[:, None, None, None]
                flip_v = (torch.rand(len(idx), generator=gen) < 0.5).to(device)[:, None, None, None]
                xb = torch.where(flip_h, xb.flip(3), xb)
                xb = torch.where(flip_v, xb.flip(2), xb)
                if task.spatial_targets:
                    yb = torch.where(flip_h, yb.flip(3), yb)
                    yb = torch.where(flip_v, yb.flip(2), yb)
            if adversarial is not None and task.adversarial_loss is not None:  # (raised above if it had none)
                loss = task.adversarial_loss(adversarial, model, xb, yb, gen)
            else:
                loss = task.loss(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        record: dict[str, Any] = {"epoch": epoch, "loss": total / max(n, 1)}
        if val is not None and task.validate is not None:
            record.update(task.validate(model, val, device))
        log.info("epoch %d: %s", epoch, record)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    opt.zero_grad(set_to_none=True)  # leave no parameter gradients behind
    model.eval()
    result.runtime_s = time.perf_counter() - start
    return result


__all__ = ["fit", "TrainTask", "TrainResult", "dataset_tensors", "make_schedule", "SCHEDULES"]
