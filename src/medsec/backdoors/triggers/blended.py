"""Blended: the image alpha-blended with a pattern (Chen et al., "Targeted Backdoor
Attacks on Deep Learning Systems Using Data Poisoning", 2017).

Threat model: data poisoning with a whole-image, low-visibility trigger:
x' = (1 - alpha) x + alpha p, with p uniform noise drawn once from the generator (the
paper's "random pattern", default alpha 0.2) or a given image (C, H, W) resized to the
input size.

Example:
    >>> import torch
    >>> t = Blended(alpha=0.1)
    >>> x = torch.rand(2, 3, 28, 28)
    >>> p = t.sample_params(x.shape, torch.Generator().manual_seed(0))
    >>> bool(((t.apply(x, p) - x).abs() <= 0.1 + 1e-6).all())
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsec.backdoors.triggers.base import Params, Trigger
from medsec.errors import InputError
from medsec.registry import TRIGGERS


@TRIGGERS.register("blended")
class Blended(Trigger):
    """Alpha blend with a fixed noise or image pattern.

    Args:
        alpha: the blend weight of the pattern, in (0, 1] (default 0.2).
        pattern: ``"random"`` (uniform noise drawn once from the generator, default) or an
            image tensor (C, H, W), resized to the input size.
        bounds: the valid pixel range of the images (default (0, 1)).
    """

    name = "blended"
    param_keys = ("pattern",)

    def __init__(self, *, alpha: float = 0.2, pattern: str | torch.Tensor = "random",
                 bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds=bounds)
        if not 0.0 < float(alpha) <= 1.0:
            raise InputError(f"alpha must be in (0, 1], got {alpha}")
        if isinstance(pattern, str) and pattern != "random":
            raise InputError(f"pattern must be 'random' or an image tensor (C, H, W), got {pattern!r}")
        self.alpha = float(alpha)
        self.pattern = pattern if isinstance(pattern, str) else "image"
        self._image = None if isinstance(pattern, str) else torch.as_tensor(pattern, dtype=torch.float32)

    def _sample(self, c: int, h: int, w: int, generator: torch.Generator | None) -> Params:
        lo, hi = self.bounds
        if self._image is None:
            pattern = lo + (hi - lo) * torch.rand((c, h, w), generator=generator)
        else:
            img = self._image if self._image.dim() == 3 else self._image[None]
            if img.shape[0] not in (1, c):
                raise InputError(f"pattern has {img.shape[0]} channels; the images have {c}")
            pattern = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0].expand(c, h, w)
        return {"pattern": pattern.clamp(lo, hi).contiguous()}

    def _apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        pattern = self._param(params, "pattern", x)
        if tuple(pattern.shape) != tuple(x.shape[1:]):
            raise InputError(f"params were sampled for shape {tuple(pattern.shape)}, images are {tuple(x.shape[1:])}")
        return torch.lerp(x, pattern.expand_as(x), self.alpha)
