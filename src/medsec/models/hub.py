"""Architecture loaders by name: timm and torchvision classifiers.

``timm`` accepts every timm model name, including hub ids such as
``hf-hub:MahmoodLab/UNI`` (loading pretrained weights needs network access to the
hub; with ``pretrained=False`` the same architecture is built with random weights,
which is how medsec tests these loaders offline). The InputSpec comes from the
model's own pretrained config (mean/std), so attacks still work in [0, 1].

Example:
    >>> import torch, medsec.models
    >>> clf = medsec.models.create("timm", arch="resnet18", num_classes=8)
    >>> clf = medsec.models.create("timm:resnet18", num_classes=8)  # the same model
    >>> clf(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from typing import Any

from medsec.errors import ConfigError
from medsec.models.classifier import Classifier
from medsec.registry import MODELS
from medsec.types import InputSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _spec(in_channels: int, mean: Any, std: Any) -> InputSpec:
    mean = tuple(mean)[:in_channels] if len(tuple(mean)) >= in_channels else (float(sum(mean) / len(mean)),) * in_channels
    std = tuple(std)[:in_channels] if len(tuple(std)) >= in_channels else (float(sum(std) / len(std)),) * in_channels
    return InputSpec(channels=in_channels, mean=mean, std=std)


@MODELS.register("timm")
def timm_classifier(
    arch: str,
    num_classes: int = 2,
    pretrained: bool = False,
    in_channels: int = 3,
    task: str = "multiclass",
    classes: list[str] | None = None,
    checkpoint_path: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Classifier:
    """A timm model (any name or ``hf-hub:`` id) as a :class:`Classifier`."""
    import timm

    try:
        net = timm.create_model(
            arch, pretrained=pretrained, num_classes=1 if task == "binary" else num_classes,
            in_chans=in_channels, **(model_kwargs or {}),
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            from medsec.registry import suggest

            raise ConfigError(f"unknown timm model {arch!r}.{suggest(arch, timm.list_models())}") from exc
        raise
    if checkpoint_path:
        from medsec.models.checkpoint import load_state_dict

        net.load_state_dict(load_state_dict(checkpoint_path))
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    spec = _spec(in_channels, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    arch_meta = {"name": "timm", "params": {"arch": arch, "num_classes": num_classes, "in_channels": in_channels,
                                            "task": task, "model_kwargs": model_kwargs or {}}}
    return Classifier(net, spec, num_classes, task, classes, arch_meta)


@MODELS.register("torchvision")
def torchvision_classifier(
    arch: str,
    num_classes: int = 2,
    pretrained: bool = False,
    task: str = "multiclass",
    classes: list[str] | None = None,
) -> Classifier:
    """A torchvision classification model (ImageNet mean/std inside) as a :class:`Classifier`."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        from medsec.registry import suggest

        raise ConfigError(f"unknown torchvision model {arch!r}.{suggest(arch, torchvision.models.list_models())}")
    outputs = 1 if task == "binary" else num_classes
    if pretrained:
        net = torchvision.models.get_model(arch, weights="DEFAULT")
        _replace_head(net, outputs)
    else:
        net = torchvision.models.get_model(arch, weights=None, num_classes=outputs)
    spec = InputSpec(channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    arch_meta = {"name": "torchvision", "params": {"arch": arch, "num_classes": num_classes, "task": task}}
    return Classifier(net, spec, num_classes, task, classes, arch_meta)


def _replace_head(net: Any, outputs: int) -> None:
    from torch import nn

    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Linear(head.in_features, outputs))
            return
        if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            head[-1] = nn.Linear(head[-1].in_features, outputs)
            return
    raise ConfigError("could not find the classification head to resize; use num_classes=1000 or a timm model")
