"""Norm-ball geometry shared by the gradient attacks: steps and projections."""

from __future__ import annotations

import torch


def _bnorm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm broadcast to t's shape."""
    norms: torch.Tensor = t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))
    return norms


def normalize_l2(g: torch.Tensor, tiny: float = 1e-12) -> torch.Tensor:
    """g / ||g||_2 per sample (zero where g is zero)."""
    return g / _bnorm(g).clamp_min(tiny)


def steepest_step(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit steepest-ascent direction for the norm: sign(g) (L-inf) or g/||g|| (L2)."""
    return g.sign() if norm == "linf" else normalize_l2(g)


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project a perturbation onto the eps-ball of the norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    factor = (eps / _bnorm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * factor


def random_init(
    x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None
) -> torch.Tensor:
    """A random perturbation inside the ball: uniform per pixel (L-inf) or a uniform
    direction with a uniform radius (L2)."""
    dev = generator.device if generator is not None else x.device
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
        return (2 * u - 1) * eps
    d = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    r = torch.rand((x.shape[0],), generator=generator, device=dev, dtype=x.dtype).to(x.device)
    return normalize_l2(d) * (r * eps).reshape(-1, *([1] * (x.dim() - 1)))
