"""BadNets: a small patch stamped at a fixed place (Gu, Dolan-Gavitt & Garg, "BadNets:
Identifying Vulnerabilities in the Machine Learning Model Supply Chain", 2017).

Threat model: data poisoning; the trigger is a visible patch of ``size`` x ``size``
pixels replacing the image content at one of nine positions (or a random one drawn
once in :meth:`sample_params`), with a margin from the border.

Patterns: ``"white"`` (all ones), ``"checkerboard"`` (alternating hi/lo pixels, the
BadNets paper's pattern), ``"random"`` (uniform noise drawn once from the generator) or
an image tensor (C, size, size) given as ``pattern``.

Example:
    >>> import torch
    >>> t = BadNets(size=3, position="bottom-right", pattern="white")
    >>> x = torch.zeros(2, 3, 28, 28)
    >>> p = t.sample_params(x.shape)
    >>> t.apply(x, p)[:, :, -4:-1, -4:-1].min().item()  # the patch, one pixel from the corner
    1.0
    >>> t.mask(x.shape, p).sum().item()  # it replaces 3 x 3 pixels
    9
"""

from __future__ import annotations

import torch

from medsec.backdoors.triggers.base import Params, Trigger, image_shape
from medsec.errors import InputError
from medsec.registry import TRIGGERS

POSITIONS = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right",
             "random")
PATTERNS = ("white", "checkerboard", "random")
#: the nine named positions as (vertical, horizontal) places, for :func:`place`
PLACES = {"top-left": ("top", "left"), "top": ("top", "center"), "top-right": ("top", "right"),
          "left": ("center", "left"), "center": ("center", "center"), "right": ("center", "right"),
          "bottom-left": ("bottom", "left"), "bottom": ("bottom", "center"), "bottom-right": ("bottom", "right")}


def place(position: str, h: int, w: int, ph: int, pw: int, margin: int) -> tuple[int, int]:
    """(top, left) of a ph x pw patch at one of the nine named positions of an h x w image."""
    v, hz = PLACES[position]
    top = {"top": margin, "center": (h - ph) // 2, "bottom": h - ph - margin}[v]
    left = {"left": margin, "center": (w - pw) // 2, "right": w - pw - margin}[hz]
    return top, left


@TRIGGERS.register("badnets")
class BadNets(Trigger):
    """A square patch at one of nine positions (or random), replacing the pixels there.

    Args:
        size: side of the square patch in pixels (default 3).
        position: one of the nine named positions (``"top-left"``, ``"top"``, ...,
            ``"bottom-right"``; default ``"bottom-right"``) or ``"random"`` (drawn once in
            :meth:`sample_params`).
        pattern: ``"white"``, ``"checkerboard"`` (default, the paper's), ``"random"``
            (uniform noise drawn once) or an image tensor (C, size, size).
        margin: distance of the patch from the image border in pixels (default 1).
        bounds: the valid pixel range of the images (default (0, 1)).
    """

    name = "badnets"
    param_keys = ("patch", "top", "left")

    def __init__(self, *, size: int = 3, position: str = "bottom-right", pattern: str | torch.Tensor = "checkerboard",
                 margin: int = 1, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds=bounds)
        if int(size) < 1:
            raise InputError(f"size must be >= 1 pixel, got {size}")
        if position not in POSITIONS:
            raise InputError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
        if isinstance(pattern, str) and pattern not in PATTERNS:
            raise InputError(f"pattern must be one of {', '.join(PATTERNS)} or an image tensor, got {pattern!r}")
        if int(margin) < 0:
            raise InputError(f"margin must be >= 0, got {margin}")
        self.size, self.position, self.margin = int(size), position, int(margin)
        self.pattern = pattern if isinstance(pattern, str) else "image"
        self._image = None if isinstance(pattern, str) else torch.as_tensor(pattern, dtype=torch.float32)

    def _sample(self, c: int, h: int, w: int, generator: torch.Generator | None) -> Params:
        s, m = self.size, self.margin
        if s + 2 * m > min(h, w):
            raise InputError(f"a {s}px patch with margin {m} does not fit a {h}x{w} image; use a smaller size")
        lo, hi = self.bounds
        if self._image is not None:
            patch = self._image
            if patch.dim() == 2:
                patch = patch.expand(c, -1, -1)
            if tuple(patch.shape) != (c, s, s):
                raise InputError(f"pattern image must have shape ({c}, {s}, {s}), got {tuple(patch.shape)}")
        elif self.pattern == "white":
            patch = torch.full((c, s, s), hi)
        elif self.pattern == "checkerboard":
            ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            patch = torch.where(((ii + jj) % 2 == 0), hi, lo).float().expand(c, s, s).clone()
        else:
            patch = lo + (hi - lo) * torch.rand((c, s, s), generator=generator)
        if self.position == "random":
            top = int(torch.randint(m, h - s - m + 1, (1,), generator=generator))
            left = int(torch.randint(m, w - s - m + 1, (1,), generator=generator))
        else:
            top, left = place(self.position, h, w, s, s, m)
        return {"patch": patch.clamp(lo, hi), "top": top, "left": left}

    def _apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        patch = self._param(params, "patch", x)
        top, left = int(params["top"]), int(params["left"])
        c, s = patch.shape[0], patch.shape[-1]
        if c != x.shape[1] or top + s > x.shape[2] or left + s > x.shape[3]:
            raise InputError(f"params were sampled for another image shape than {tuple(x.shape[1:])}")
        x[:, :, top : top + s, left : left + s] = patch
        return x

    def mask(self, shape: tuple[int, ...] | torch.Size, params: Params) -> torch.Tensor:
        """The (H, W) boolean mask of the pixels the trigger replaces."""
        _, h, w = image_shape(shape)
        s = torch.as_tensor(params["patch"]).shape[-1]
        m = torch.zeros(h, w, dtype=torch.bool)
        m[int(params["top"]) : int(params["top"]) + s, int(params["left"]) : int(params["left"]) + s] = True
        return m
