"""Random Gaussian noise on the input (a randomised-preprocessing defence; cf. Cohen et
al., ICML 2019 for its certified use, and Athalye et al. 2018 for why it must be
attacked with EOT).

Threat model of the defence: the defender adds fresh N(0, sigma^2) noise to every query
and clamps to the bounds. Stochastic, so a single gradient is a noisy estimate: attack
it with EOT (gradients averaged over draws), which medsec's runner does automatically.

Example:
    >>> noisy = RandomNoise(sigma=0.1)
    >>> x = torch.rand(1, 3, 8, 8)
    >>> bool((noisy(x) != noisy(x)).any())
    True
"""

from __future__ import annotations

import torch

from medsec.defenses.base import InputDefense
from medsec.errors import InputError
from medsec.registry import DEFENSES


@DEFENSES.register("random_noise")
class RandomNoise(InputDefense):
    """x + N(0, sigma^2), clamped to [0, 1].

    Args:
        sigma: the noise standard deviation in input units, > 0 (default 0.1).
    """

    name = "random_noise"
    differentiable = True
    stochastic = True

    def __init__(self, *, sigma: float = 0.1) -> None:
        super().__init__()
        if not float(sigma) > 0:
            raise InputError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp(0.0, 1.0)
