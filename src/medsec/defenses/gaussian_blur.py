"""Gaussian blur as an input purifier (a low-pass preprocessing defence; Li & Li, ICCV
2017, "Adversarial Examples Detection in Deep Networks with Convolutional Filter
Statistics", and the input-transformation studies of Guo et al., ICLR 2018).

Threat model of the defence: a preprocessing defender who blurs every query with a
Gaussian of standard deviation ``sigma`` pixels (torchvision's ``gaussian_blur``,
kernel 2 ceil(3 sigma) + 1, reflect padding). Differentiable: plain gradient attacks
apply, and no adaptive attack is needed for it.

Example:
    >>> import torch
    >>> GaussianBlur(sigma=1.0)(torch.rand(1, 3, 16, 16)).shape
    torch.Size([1, 3, 16, 16])
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.functional import gaussian_blur

from medsec.defenses.base import InputDefense
from medsec.errors import InputError
from medsec.registry import DEFENSES


@DEFENSES.register("gaussian_blur")
class GaussianBlur(InputDefense):
    """Blur with a Gaussian of ``sigma`` pixels.

    Args:
        sigma: the standard deviation in pixels, in (0, 10] (default 1); the kernel side
            is 2 ceil(3 sigma) + 1, capped by the image size.
    """

    name = "gaussian_blur"
    differentiable = True
    stochastic = False

    def __init__(self, *, sigma: float = 1.0) -> None:
        super().__init__()
        if not 0 < float(sigma) <= 10:
            raise InputError(f"sigma must be in (0, 10] pixels, got {sigma}")
        self.sigma = float(sigma)
        self.kernel = 2 * math.ceil(3 * self.sigma) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = min(self.kernel, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
        blurred: torch.Tensor = gaussian_blur(x, [k, k], [self.sigma, self.sigma])
        return blurred
