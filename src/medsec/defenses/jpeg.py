"""JPEG compression as an input purifier (Dziugaite, Ghahramani & Roy, 2016, "A study of
the effect of JPG compression on adversarial images"; Guo et al., ICLR 2018,
"Countering Adversarial Images using Input Transformations").

Threat model of the defence: a preprocessing defender who JPEG-encodes and decodes
every query at ``quality`` (torchvision's libjpeg codec, 8-bit) before the classifier.
Non-differentiable (quantisation of DCT coefficients and of pixels), so plain gradient
attacks see zero gradients; the runner attacks it with BPDA (straight-through), which
Athalye et al. 2018 showed breaks it.

Example:
    >>> import torch
    >>> j = JPEG(quality=75)
    >>> j(torch.rand(2, 3, 28, 28)).shape
    torch.Size([2, 3, 28, 28])
"""

from __future__ import annotations

import torch
from torchvision.io import decode_jpeg, encode_jpeg

from medsec.defenses.base import InputDefense
from medsec.errors import InputError
from medsec.registry import DEFENSES


@DEFENSES.register("jpeg")
class JPEG(InputDefense):
    """Encode to JPEG at ``quality`` and decode (per image, 8-bit).

    Args:
        quality: the JPEG quality, 1..100 (default 75).
    """

    name = "jpeg"
    differentiable = False
    stochastic = False

    def __init__(self, *, quality: int = 75) -> None:
        super().__init__()
        if not 1 <= int(quality) <= 100:
            raise InputError(f"quality must be in 1..100, got {quality}")
        self.quality = int(quality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] not in (1, 3):
            raise InputError(f"JPEG needs 1 or 3 channels, got {x.shape[1]}")
        u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        out = torch.stack([decode_jpeg(encode_jpeg(img, quality=self.quality)) for img in u8])
        # stay on the autograd graph with an exactly zero gradient (like rounding), so a
        # plain gradient attack sees what a non-differentiable defence gives it
        return out.to(device=x.device, dtype=x.dtype) / 255.0 + 0.0 * x
