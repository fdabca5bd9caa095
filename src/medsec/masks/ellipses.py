"""Random nucleus-like ellipses: the "sporadic" mask of SNAP (Kumar, Sharma & Narayan,
AAAI 2024, "Attacking CNNs in Histopathology with SNAP").

Threat model: the patch attack may replace the pixels of many small, non-overlapping
ellipses spread over the image, of total area at most the coverage budget.

The paper gives no count, size or coverage; medsec's default follows the implementers'
notes: radii 3-8 px at 224 x 224 (scaled with the image side, never below 1 px),
random orientation, minor/major axis ratio 0.6-1, and as many ellipses as fit under the
coverage cap (``count=None``); with ``count=N`` at most N are placed. Ellipses are drawn
one after another (centre, radius, aspect, angle from the generator) and kept only when
they do not overlap an earlier one (unless ``allow_overlap``) and keep the total within
the budget; placement stops at ``count`` or after ``max_rejections`` consecutive
rejections.

Example:
    >>> import torch, medsec.masks
    >>> gen = medsec.masks.create("ellipses", count=30)
    >>> m = gen(torch.rand(1, 3, 224, 224), 0.03, torch.Generator().manual_seed(0))
    >>> float(m.float().mean()) <= 0.03
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import torch

from medsec.errors import InputError
from medsec.masks.base import MaskGenerator, budget_pixels, uniform
from medsec.registry import MASKS


def ellipse_pixels(h: int, w: int, cy: float, cx: float, a: float, b: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the pixels whose centres lie inside the ellipse
    (semi-axes a >= b, rotated by theta radians) centred at (cy, cx), clipped to the image."""
    r = int(math.ceil(a)) + 1
    y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 2)
    x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return yy[inside], xx[inside]


def _pair(name: str, value: object, low: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in cast("Iterable[Any]", value))  # not iterable: the TypeError below
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < low or hi < lo:
        raise InputError(f"{name} must satisfy {low:g} <= min <= max, got {value!r}")
    return lo, hi


@MASKS.register("ellipses")
class Ellipses(MaskGenerator):
    """Many small random ellipses (nucleus-like blobs) under a coverage cap.

    Args:
        count: the most ellipses per image (None: as many as fit under the coverage cap).
        radius: (min, max) semi-major axis in pixels at the reference size ``radius_at``.
        radius_at: the image side the radii refer to (default 224, the paper's input); the
            radii scale by side / radius_at. None: radii are pixels at any size.
        aspect: (min, max) minor/major axis ratio.
        orientation: fixed angle in degrees, or None for a uniformly random angle per ellipse.
        allow_overlap: let ellipses overlap (default False: separate blobs, like nuclei).
        max_rejections: consecutive rejected draws after which placement stops.
    """

    name = "ellipses"
    image_dependent = False

    def __init__(
        self,
        *,
        count: int | None = None,
        radius: tuple[float, float] = (3.0, 8.0),
        radius_at: int | None = 224,
        aspect: tuple[float, float] = (0.6, 1.0),
        orientation: float | None = None,
        allow_overlap: bool = False,
        max_rejections: int = 200,
    ) -> None:
        if count is not None and (isinstance(count, bool) or int(count) != count or int(count) < 1):
            raise InputError(f"count must be an integer >= 1 or None, got {count!r}")
        self.count = None if count is None else int(count)
        self.radius = _pair("radius", radius, 1e-6)
        if radius_at is not None and (isinstance(radius_at, bool) or int(radius_at) < 1):
            raise InputError(f"radius_at must be a positive image side or None, got {radius_at!r}")
        self.radius_at = None if radius_at is None else int(radius_at)
        self.aspect = _pair("aspect", aspect, 1e-6)
        if self.aspect[1] > 1:
            raise InputError(f"aspect is minor/major and must be <= 1, got {aspect!r}")
        if orientation is not None and not math.isfinite(float(orientation)):
            raise InputError(f"orientation must be an angle in degrees or None, got {orientation!r}")
        self.orientation = None if orientation is None else float(orientation)
        self.allow_overlap = bool(allow_overlap)
        if int(max_rejections) < 1:
            raise InputError(f"max_rejections must be >= 1, got {max_rejections!r}")
        self.max_rejections = int(max_rejections)

    def _one(self, h: int, w: int, k: int, generator: torch.Generator | None) -> np.ndarray:
        scale = 1.0 if self.radius_at is None else min(h, w) / self.radius_at
        rmin, rmax = (max(1.0, r * scale) for r in self.radius)
        mask = np.zeros((h, w), dtype=bool)
        used, placed, rejected = 0, 0, 0
        limit = self.count if self.count is not None else h * w
        chunk = 64
        while placed < limit and rejected < self.max_rejections and used < k:
            draws = uniform(generator, chunk, 5)
            for uy, ux, ur, ua, ut in draws:
                a = rmin + (rmax - rmin) * ur
                b = max(1.0, a * (self.aspect[0] + (self.aspect[1] - self.aspect[0]) * ua))
                a = max(a, b)
                theta = math.radians(self.orientation) if self.orientation is not None else math.pi * ut
                ys, xs = ellipse_pixels(h, w, uy * h, ux * w, a, b, theta)
                new = ~mask[ys, xs]
                n_new = int(new.sum())
                if n_new == 0 or used + n_new > k or (not self.allow_overlap and n_new < len(ys)):
                    rejected += 1
                else:
                    mask[ys, xs] = True
                    used += n_new
                    placed += 1
                    rejected = 0
                if placed >= limit or rejected >= self.max_rejections or used >= k:
                    break
        return mask

    def _generate(self, x: torch.Tensor, coverage: float, generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        k = budget_pixels(coverage, h, w)
        masks = np.stack([self._one(h, w, k, generator) for _ in range(b)])
        if not masks.reshape(b, -1).any(1).all():
            raise InputError(
                f"no ellipse of the smallest radius fits a coverage of {coverage:g} on a {h}x{w} image "
                "(an impossible budget); raise the coverage or lower the radius"
            )
        return torch.from_numpy(masks)[:, None]
