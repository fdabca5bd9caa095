"""Bit-depth reduction (Xu, Evans & Qi, NDSS 2018, "Feature Squeezing").

Threat model of the defence: a preprocessing defender who quantises every pixel to
``bits`` bits before the classifier. Non-differentiable (rounding has zero gradient
almost everywhere), so plain gradient attacks see zero gradients: attack it with BPDA
(straight-through), which medsec's runner does automatically.

Example:
    >>> q = BitDepth(bits=1)
    >>> q(torch.tensor([[[[0.2, 0.8]]]])).tolist()
    [[[[0.0, 1.0]]]]
"""

from __future__ import annotations

import torch

from medsec.defenses.base import InputDefense
from medsec.errors import InputError
from medsec.registry import DEFENSES


@DEFENSES.register("bit_depth")
class BitDepth(InputDefense):
    """Quantise [0, 1] images to 2**bits levels.

    Args:
        bits: bits per pixel, 1..16 (default 4).
    """

    name = "bit_depth"
    differentiable = False
    stochastic = False

    def __init__(self, *, bits: int = 4) -> None:
        super().__init__()
        if not 1 <= int(bits) <= 16:
            raise InputError(f"bits must be in 1..16, got {bits}")
        self.bits = int(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        quantised: torch.Tensor = torch.round(x * levels) / levels
        return quantised
