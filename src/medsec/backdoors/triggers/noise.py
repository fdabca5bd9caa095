"""A learnable additive noise trigger with an L-inf bound, as BAPLe learns it (Hanif et
al., "BAPLe: Backdoor Attacks on Medical Foundational Models using Prompt Learning",
MICCAI 2024).

Threat model: the attacker adds the same imperceptible perturbation delta,
||delta||_inf <= eps (default 8/255), to every image it triggers; delta is a parameter
it optimises (with the prompt, in BAPLe) rather than a fixed pattern. ``init`` is
``"zeros"`` or ``"uniform"`` in [-eps, eps]. :meth:`project` keeps a learnt delta inside
the ball.

Example:
    >>> import torch
    >>> t = NoiseTrigger(eps=8 / 255, init="uniform")
    >>> x = torch.rand(2, 3, 28, 28)
    >>> p = t.sample_params(x.shape, torch.Generator().manual_seed(0))
    >>> float((t.apply(x, p) - x).abs().max()) <= 8 / 255 + 1e-6
    True
"""

from __future__ import annotations

import torch

from medsec.backdoors.triggers.base import Params, Trigger
from medsec.errors import InputError
from medsec.registry import TRIGGERS


@TRIGGERS.register("noise")
class NoiseTrigger(Trigger):
    """x + delta with ||delta||_inf <= eps, delta shared by all triggered images.

    Args:
        eps: the L-inf bound of delta, in input units (default 8/255).
        init: the drawn delta, ``"zeros"`` (default) or ``"uniform"`` in [-eps, eps].
        bounds: the valid pixel range of the images (default (0, 1)).
    """

    name = "noise"
    param_keys = ("delta",)

    def __init__(self, *, eps: float = 8 / 255, init: str = "zeros", bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds=bounds)
        if not 0.0 <= float(eps) <= self.bounds[1] - self.bounds[0]:
            raise InputError(f"eps must be in [0, {self.bounds[1] - self.bounds[0]:g}], got {eps}")
        if init not in ("zeros", "uniform"):
            raise InputError(f"init must be 'zeros' or 'uniform', got {init!r}")
        self.eps, self.init = float(eps), init

    def _sample(self, c: int, h: int, w: int, generator: torch.Generator | None) -> Params:
        if self.init == "zeros":
            return {"delta": torch.zeros(c, h, w)}
        return {"delta": (torch.rand((c, h, w), generator=generator) * 2 - 1) * self.eps}

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """delta clipped to the L-inf ball of radius eps."""
        return delta.clamp(-self.eps, self.eps)

    def add(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Differentiable x + project(delta) clamped to the bounds (for learning delta)."""
        return (x + self.project(delta)).clamp(*self.bounds)

    def _apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        delta = self._param(params, "delta", x)
        if tuple(delta.shape) != tuple(x.shape[1:]):
            raise InputError(f"delta has shape {tuple(delta.shape)}, images are {tuple(x.shape[1:])}")
        return x + self.project(delta)
