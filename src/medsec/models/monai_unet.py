"""MONAI UNet segmenters (Kerfoot et al., "Left-Ventricle Quantification Using Residual
U-Net", STACOM 2018, as ``monai.networks.nets.UNet``), and any torch segmentation module.

Threat model: not applicable (victim architectures). ``monai_unet`` builds a 2-D MONAI
UNet inside a :class:`~medsec.models.segmenter.Segmenter` (one output channel for a
binary mask, ``num_classes`` channels otherwise); ``seg_module`` wraps a module given
from Python (e.g. a torchvision DeepLabV3 or a segmentation_models_pytorch network).

Example:
    >>> import torch, medsec.models
    >>> seg = medsec.models.create("monai_unet", channels=[8, 16, 32], strides=[2, 2])
    >>> seg(torch.rand(1, 3, 32, 32)).shape
    torch.Size([1, 1, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medsec.errors import ConfigError
from medsec.models.segmenter import Segmenter
from medsec.registry import MODELS
from medsec.types import InputSpec


@MODELS.register("monai_unet")
def monai_unet(
    num_classes: int = 2,
    in_channels: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 1,
    dropout: float = 0.0,
    norm: str = "instance",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: list[str] | None = None,
) -> Segmenter:
    """A MONAI 2-D UNet as a :class:`Segmenter` (mean/std default 0.5 per channel; ``norm``
    is MONAI's: ``"instance"`` (its default) or ``"batch"``)."""
    from monai.networks.nets.unet import UNet

    channels, strides = [int(c) for c in channels], [int(s) for s in strides]
    if len(strides) != len(channels) - 1:
        raise ConfigError(f"monai_unet needs len(strides) == len(channels) - 1, got {len(strides)} and {len(channels)}")
    out = 1 if num_classes == 2 else int(num_classes)
    net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=out, channels=channels, strides=strides,
               num_res_units=num_res_units, dropout=dropout, norm=norm)
    spec = InputSpec(channels=in_channels, mean=tuple(mean) if mean is not None else (0.5,) * in_channels,
                     std=tuple(std) if std is not None else (0.5,) * in_channels)
    arch = {"name": "monai_unet", "params": {"num_classes": num_classes, "in_channels": in_channels, "channels": channels,
                                             "strides": strides, "num_res_units": num_res_units, "dropout": dropout, "norm": norm,
                                             "mean": list(spec.mean or ()), "std": list(spec.std or ())}}
    return Segmenter(net, spec, num_classes, classes=classes, arch=arch)


def seg_module(net: nn.Module, num_classes: int = 2, in_channels: int = 3, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> Segmenter:
    """Wrap any torch module that maps normalised images to mask logits (Python API only:
    a module object cannot come from a config)."""
    spec = InputSpec(channels=in_channels, mean=tuple(mean) if mean is not None else None,
                     std=tuple(std) if std is not None else None)
    return Segmenter(net, spec, num_classes)
