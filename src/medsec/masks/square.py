"""One square patch: the single-patch baseline (Brown, Mane, Roy, Abadi & Gilmer,
"Adversarial Patch", NeurIPS 2017 workshop), at a coverage equal to SNAP's.

Threat model: the attacker replaces one axis-aligned square of side
floor(sqrt(coverage * H * W)) pixels (so its area never exceeds the budget), at a
random position from the generator (``position="random"``) or in the centre.

Example:
    >>> import torch, medsec.masks
    >>> m = medsec.masks.create("square", position="center")(torch.rand(1, 3, 20, 20), 0.04)
    >>> int(m.sum())
    16
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medsec.errors import InputError
from medsec.masks.base import MaskGenerator, budget_pixels, uniform
from medsec.registry import MASKS

POSITIONS = ("random", "center")


@MASKS.register("square")
class Square(MaskGenerator):
    """A single square patch of the largest side that fits the coverage budget.

    Args:
        position: ``"random"`` (default) or ``"center"``.
    """

    name = "square"
    image_dependent = False

    def __init__(self, *, position: str = "random") -> None:
        if position not in POSITIONS:
            from medsec.registry import suggest

            raise InputError(f"unknown position {position!r}.{suggest(str(position), POSITIONS)} Use random or center.")
        self.position = position
        self.stochastic = position == "random"

    def _generate(self, x: torch.Tensor, coverage: float, generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        side = min(h, w, int(math.isqrt(budget_pixels(coverage, h, w))))
        masks = np.zeros((b, 1, h, w), dtype=bool)
        if self.position == "random":
            u = uniform(generator, b, 2)
            tops = np.floor(u[:, 0] * (h - side + 1)).astype(int)
            lefts = np.floor(u[:, 1] * (w - side + 1)).astype(int)
        else:
            tops = np.full(b, (h - side) // 2)
            lefts = np.full(b, (w - side) // 2)
        for i in range(b):
            masks[i, 0, tops[i] : tops[i] + side, lefts[i] : lefts[i] + side] = True
        return torch.from_numpy(masks)
