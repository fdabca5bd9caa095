"""A small VGG-style CNN for low-resolution medical images (MedMNIST, tiles).

Threat model: not applicable (a victim architecture). Three conv-BN-ReLU stages with
max-pooling, global average pooling and a linear head; ~0.3 M parameters, trains on
BloodMNIST to about 90% test accuracy in a few CPU minutes.

Example:
    >>> from medsec.models import create
    >>> create("small_cnn", num_classes=8).spec.channels
    3
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medsec.models.classifier import Classifier
from medsec.registry import MODELS
from medsec.types import InputSpec


class SmallCNNNet(nn.Module):
    """conv(w)x2 - pool - conv(2w)x2 - pool - conv(4w) - GAP - linear (w = ``width``; VGG-style,
    Simonyan & Zisserman, ICLR 2015). Threat model: not applicable (a victim network).

    Args:
        in_channels: image channels.
        num_outputs: logits.
        width: channels of the first stage (32 gives 32/64/128).
        stem_pool: average-pool the input by this factor first (1: none).
    """

    def __init__(self, in_channels: int = 3, num_outputs: int = 10, *, width: int = 32, stem_pool: int = 1) -> None:
        super().__init__()
        self.stem = nn.AvgPool2d(stem_pool) if stem_pool > 1 else nn.Identity()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.features = nn.Sequential(
            *block(in_channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(self.stem(x)))
        return logits


@MODELS.register("small_cnn")
def small_cnn(
    num_classes: int = 2,
    in_channels: int = 3,
    width: int = 32,
    task: str = "multiclass",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    classes: list[str] | None = None,
    stem_pool: int = 1,
) -> Classifier:
    """Build a :class:`SmallCNNNet` inside a :class:`Classifier` (mean/std default 0.5).

    ``stem_pool`` > 1 average-pools the input by that factor first (cheap training on
    upsampled images, e.g. BloodMNIST at 64 px seen at 32 px inside the network).
    """
    if isinstance(stem_pool, bool) or int(stem_pool) != stem_pool or int(stem_pool) < 1:
        from medsec.errors import ConfigError

        raise ConfigError(f"stem_pool must be an integer >= 1, got {stem_pool!r}")
    outputs = 1 if task == "binary" else num_classes
    spec = InputSpec(
        channels=in_channels,
        mean=tuple(mean) if mean is not None else (0.5,) * in_channels,
        std=tuple(std) if std is not None else (0.5,) * in_channels,
    )
    arch: dict[str, Any] = {"name": "small_cnn", "params": {"num_classes": num_classes, "in_channels": in_channels, "width": width, "task": task,
                                              "mean": list(spec.mean or ()), "std": list(spec.std or ())}}
    if stem_pool > 1:  # only then, so earlier checkpoints' metadata is unchanged
        arch["params"]["stem_pool"] = int(stem_pool)
    net = SmallCNNNet(in_channels, outputs, width=width, stem_pool=int(stem_pool))
    return Classifier(net, spec, num_classes, task, classes, arch)
