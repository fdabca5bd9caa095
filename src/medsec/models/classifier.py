"""The :class:`Classifier` task wrapper: normalisation inside, logits out.

Attacks always work on images in the bounds of the model's :class:`InputSpec`; the
wrapper applies mean/std normalisation itself, which makes the classic "attacked the
normalised tensor" mistake impossible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medsec.errors import InputError
from medsec.tasks import TASKS, predict_from_logits
from medsec.types import InputSpec


class Classifier(nn.Module):
    """Wraps a network that maps normalised images to logits.

    Args:
        net: module taking normalised (B, C, H, W) images.
        spec: the input contract (channels, bounds, mean, std).
        num_classes: classes (multiclass), labels (multilabel) or 2 for a binary
            single-logit head.
        task: ``"multiclass"`` (softmax over C logits), ``"binary"`` (one logit,
            sigmoid) or ``"multilabel"`` (C independent sigmoid logits).
        classes: optional class names for reports.
        arch: optional ``{"name": ..., "params": ...}`` that rebuilds ``net`` from the
            model registry (stored in checkpoints).

    Example:
        >>> from medsec.models import create
        >>> clf = create("small_cnn", num_classes=8, in_channels=3)
        >>> clf(torch.rand(2, 3, 28, 28)).shape
        torch.Size([2, 8])
    """

    _mean: torch.Tensor  # (1, C, 1, 1) buffers of register_normalization
    _std: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        spec: InputSpec,
        num_classes: int,
        task: str = "multiclass",
        classes: list[str] | None = None,
        arch: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        if task == "binary" and num_classes != 2:
            raise InputError("a binary single-logit head has num_classes=2")
        self.net = net
        self.spec = spec
        self.num_classes = int(num_classes)
        self.task = task
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.arch = arch or {}
        register_normalization(self, spec)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the spec's bounds -> the network's normalised input, (x - mean) / std."""
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`: z * std + mean (normalised tensors back to pixels)."""
        return z * self._std.to(z.dtype) + self._mean.to(z.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.normalize(x))
        if self.task == "binary" and out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels: class index (multiclass), 0/1 (binary), 0/1 vector (multilabel)."""
        return predict_from_logits(self(x), self.task)


def register_normalization(module: nn.Module, spec: InputSpec) -> None:
    """Give ``module`` the (1, C, 1, 1) ``_mean`` / ``_std`` buffers of ``spec`` (identity
    when the spec has no mean/std); non-persistent, so checkpoints hold weights only."""
    c = spec.channels
    mean = torch.tensor(spec.mean if spec.mean is not None else (0.0,) * c).float()
    std = torch.tensor(spec.std if spec.std is not None else (1.0,) * c).float()
    module.register_buffer("_mean", mean.expand(c).reshape(1, c, 1, 1).clone(), persistent=False)
    module.register_buffer("_std", std.expand(c).reshape(1, c, 1, 1).clone(), persistent=False)
