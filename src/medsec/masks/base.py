"""The mask-generator contract shared by the patch attacks (SNAP, adversarial patch).

A mask generator turns a batch of images and a coverage budget into binary masks: the
pixels a patch attack may replace. Coverage (the fraction of an image's pixels inside
the mask) is the threat budget of ``ThreatModel("patch", eps)``; every generator
guarantees ``mask.mean() <= coverage`` per image, and :class:`MaskGenerator` checks it
before returning.

Threat model: the attacker replaces the pixels inside the mask (all channels) and
nothing else; the mask's area is at most ``coverage`` of the image.

Reference: Kumar, Sharma & Narayan, "Attacking CNNs in Histopathology with SNAP:
Sporadic and Naturalistic Adversarial Patches", AAAI 2024 (student abstract).

Example:
    >>> import torch, medsec.masks
    >>> m = medsec.masks.create("square")(torch.rand(2, 3, 32, 32), 0.05, torch.Generator().manual_seed(0))
    >>> m.shape, m.dtype, bool((m.float().mean((1, 2, 3)) <= 0.05).all())
    (torch.Size([2, 1, 32, 32]), torch.bool, True)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from medsec.errors import InputError
from medsec.validation import check_images


def budget_pixels(coverage: float, height: int, width: int) -> int:
    """The largest number of pixels a mask of ``coverage`` may hold (floor, exact for
    fractions such as 0.05 of 64 x 64)."""
    return int(math.floor(float(coverage) * height * width + 1e-9))


def check_coverage(coverage: Any, height: int, width: int) -> float:
    """Validate a coverage budget: a finite number in [0, 1], and > 0 budgets must allow
    at least one pixel of an ``height`` x ``width`` image."""
    try:
        c = float(coverage)
    except (TypeError, ValueError):
        raise InputError(f"coverage must be a number in [0, 1], got {coverage!r}") from None
    if not math.isfinite(c) or c < 0 or c > 1:
        raise InputError(f"coverage is a pixel fraction and must lie in [0, 1], got {coverage!r}")
    if c > 0 and budget_pixels(c, height, width) < 1:
        raise InputError(
            f"coverage {c:g} of a {height}x{width} image is less than one pixel (an impossible budget); "
            f"use coverage >= {1 / (height * width):.3g} or larger images"
        )
    return c


class MaskGenerator:
    """Base class of mask generators; subclasses implement :meth:`_generate`.

    Class attributes: ``image_dependent`` (the mask depends on the pixels, e.g. nuclei
    found in the image) and ``stochastic`` (the mask uses the generator; an instance
    may refine it, e.g. a centred square is deterministic).
    """

    name: ClassVar[str] = "mask"
    image_dependent: ClassVar[bool] = False
    stochastic: bool = True

    def __call__(self, x: torch.Tensor, coverage: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masks for the images ``x`` (B, C, H, W): a bool tensor (B, 1, H, W) on x's device.

        Raises:
            InputError: x is not an image batch (shape, NaN), or the coverage is not in
                [0, 1] or allows less than one pixel.
        """
        check_images(x)
        b, _, h, w = x.shape
        c = check_coverage(coverage, h, w)
        if c == 0:
            return torch.zeros(b, 1, h, w, dtype=torch.bool, device=x.device)
        masks = self._generate(x.detach(), c, generator)
        if masks.shape != (b, 1, h, w) or masks.dtype != torch.bool:
            raise RuntimeError(f"{type(self).__name__} returned masks {tuple(masks.shape)} {masks.dtype}")
        k = budget_pixels(c, h, w)
        if int(masks.flatten(1).sum(1).max()) > k:  # the guarantee every caller relies on
            raise RuntimeError(f"{type(self).__name__} exceeded the coverage budget {c}")
        return masks.to(x.device)

    def _generate(self, x: torch.Tensor, coverage: float, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        simple = (int, float, str, bool, type(None))
        return {k: (v if isinstance(v, simple) else repr(v)) for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


def uniform(generator: torch.Generator | None, *shape: int) -> np.ndarray:
    """Uniform [0, 1) draws from ``generator`` (CPU or not) as a float64 numpy array."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=dev, dtype=torch.float64).cpu().numpy()
