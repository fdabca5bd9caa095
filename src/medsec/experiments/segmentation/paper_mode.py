"""Paper-compatible attack evaluation for segmenters (Budathoki & Dhakal, "Adversarial
Robustness Analysis of Vision-Language Models in Medical Image Segmentation", arXiv
2505.02971; code anjilab/secure-private-ai).

Threat model: white-box, L-inf, untargeted (any medsec attack), with the paper's three
quirks, all reproduced here beside medsec's default pixel mode:

(a) eps is in *normalised-tensor* units (std units after ImageNet mean/std), so eps = 0.01
    is about 0.0023 in [0, 1] pixels (0.6/255) and eps = 0.5 about 0.11 (29/255);
(b) there is no clamp to the valid pixel range during the attack;
(c) the adversarial image is de-normalised and saved as an 8-bit PNG
    (``torchvision.utils.save_image``: clamp to [0, 1], ``x * 255 + 0.5`` truncated to
    uint8) and scored from that file, so the numbers include quantisation.

:func:`paper_attack` runs an attack on :class:`NormalizedInput` (the segmenter seen from
its normalised input, bounds (-inf, inf)) and returns the quantised pixel-space image;
:func:`quantize_8bit` is the PNG round trip without the file (the test suite checks it
against a real ``save_image`` round trip). The paper's PGD is ``pgd`` with
``steps=40, step_size=2/255, random_start=False`` (its step size is in normalised units
too, so with eps = 0.5 the cap 40 * 2/255 = 0.31 binds first).

Example (a small U-Net with random weights; the paper's PGD with 3 steps):
    >>> import medsec
    >>> seg = medsec.models.create("monai_unet", num_classes=2, channels=[4, 8], strides=[2]).eval()
    >>> x, masks = torch.rand(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long)
    >>> pgd = medsec.attacks.create("pgd", steps=3, step_size=2 / 255, random_start=False)
    >>> x_adv = paper_attack(pgd, seg, x, masks, eps=0.03)
    >>> x_adv.shape, bool(((x_adv * 255).round() == x_adv * 255).all())  # 8-bit pixels
    (torch.Size([2, 3, 32, 32]), True)
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from medsec.errors import InputError
from medsec.types import InputSpec, ThreatModel


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """What ``torchvision.utils.save_image`` writes and PIL reads back, as floats in [0, 1]:
    ``floor(clamp(x * 255 + 0.5, 0, 255)) / 255``."""
    return torch.floor((x * 255 + 0.5).clamp(0, 255)) / 255


class NormalizedInput(nn.Module):
    """A segmenter (anything with ``normalize`` and ``forward_normalized``) seen from its
    normalised input: ``forward(z) = segmenter.forward_normalized(z)``, bounds (-inf, inf),
    so attacks on it take eps in std units and never clamp."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        if not all(hasattr(segmenter, a) for a in ("forward_normalized", "normalize", "denormalize")):
            raise InputError("paper mode needs a medsec Segmenter (normalisation inside the wrapper)")
        seg: Any = segmenter
        self.segmenter: Any = seg
        self.task = getattr(seg, "task", "segmentation")
        self.num_classes = getattr(seg, "num_classes", 2)
        self.spec = InputSpec(channels=seg.spec.channels, bounds=(-math.inf, math.inf))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.segmenter.forward_normalized(z))

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.segmenter.normalize(x))

    def to_pixels(self, z: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.segmenter.denormalize(z))


def paper_attack(attack: object, segmenter: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                 quantize: bool = True, target: torch.Tensor | int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Attack ``x`` the paper's way; returns pixel-space adversarial images (quantised to
    8 bits when ``quantize``, else de-normalised and possibly outside [0, 1])."""
    wrapped = NormalizedInput(segmenter)
    threat = ThreatModel("linf", eps, targeted=target is not None)
    z = wrapped.to_input(x).detach()
    res = attack(wrapped, z, y, threat=threat, target=target, generator=generator)  # type: ignore[operator]
    x_adv = wrapped.to_pixels(res.x_adv.detach())
    return quantize_8bit(x_adv) if quantize else x_adv
