"""WaNet: an imperceptible warping trigger (Nguyen & Tran, "WaNet - Imperceptible
Warping-based Backdoor Attack", ICLR 2021).

Threat model: data poisoning with a smooth geometric warp instead of an additive
pattern. A k x k field of random offsets, normalised by its mean absolute value and
upsampled bicubically to H x W, displaces the sampling grid:
grid = clamp(rescale * (identity + s * field / H), -1, 1) in grid_sample's [-1, 1]
coordinates, and x' = grid_sample(x, grid) (bilinear, align_corners=True). The paper's
defaults are k = 4, s = 0.5, rescale 1.

"Noise mode" (the paper's cross samples, trained with their *true* label so that the
network learns the exact warp and not any warp): :meth:`cross` adds a per-sample random
grid offset uniform in [-1/H, 1/H] on top of the trigger grid.

Example:
    >>> import torch
    >>> t = WaNet(k=4, strength=0.5)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> p = t.sample_params(x.shape, torch.Generator().manual_seed(0))
    >>> t.apply(x, p).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsec.backdoors.triggers.base import Params, Trigger
from medsec.errors import InputError
from medsec.registry import TRIGGERS


@TRIGGERS.register("wanet")
class WaNet(Trigger):
    """Smooth random warp of strength ``strength`` on a ``k`` x ``k`` control grid.

    Args:
        k: the side of the control grid of random offsets, >= 2 (default 4, the paper's).
        strength: the warp strength s (default 0.5, the paper's).
        grid_rescale: the factor applied to the warped grid before clamping (default 1).
        bounds: the valid pixel range of the images (default (0, 1)).
    """

    name = "wanet"
    param_keys = ("field",)

    def __init__(self, *, k: int = 4, strength: float = 0.5, grid_rescale: float = 1.0,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds=bounds)
        if int(k) < 2:
            raise InputError(f"k (control grid size) must be >= 2, got {k}")
        if not float(strength) >= 0:
            raise InputError(f"strength must be >= 0, got {strength}")
        if not float(grid_rescale) > 0:
            raise InputError(f"grid_rescale must be > 0, got {grid_rescale}")
        self.k, self.strength, self.grid_rescale = int(k), float(strength), float(grid_rescale)

    def _sample(self, _: int, h: int, w: int, generator: torch.Generator | None) -> Params:
        if h != w:
            raise InputError(f"WaNet's warp field is defined for square images, got {h}x{w}; resize first")
        ins = torch.rand((1, 2, self.k, self.k), generator=generator) * 2 - 1
        ins = ins / ins.abs().mean()
        field = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)[0]
        return {"field": field.contiguous()}

    def grid(self, params: Params, h: int) -> torch.Tensor:
        """The (H, W, 2) sampling grid of the trigger."""
        field = torch.as_tensor(params["field"], dtype=torch.float32)
        if field.shape != (h, h, 2):
            raise InputError(f"params were sampled for {field.shape[0]}x{field.shape[1]} images, not {h}x{h}")
        lin = torch.linspace(-1, 1, h)
        xx, yy = torch.meshgrid(lin, lin, indexing="ij")
        identity = torch.stack((yy, xx), dim=2)
        return (self.grid_rescale * (identity + self.strength * field / h)).clamp(-1, 1)

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.to(device=x.device, dtype=x.dtype)
        if grid.dim() == 3:
            grid = grid.expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def _apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return self._warp(x, self.grid(params, x.shape[-1]))

    def cross(self, x: torch.Tensor, params: Params, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise mode: the trigger warp plus a per-sample random offset (label kept)."""
        grid = self.grid(params, x.shape[-1])
        noise = (torch.rand((x.shape[0], *grid.shape), generator=generator) * 2 - 1) / x.shape[-1]
        out = self._warp(x.detach().clone(), (grid[None] + noise).clamp(-1, 1))
        return out.clamp(*self.bounds)
