"""Macenko stain normalisation as an input purifier for H&E images (Macenko et al., ISBI
2009, "A method for normalizing histology slides for quantitative analysis"), through
torchstain's ``TorchMacenkoNormalizer`` (Barbano et al. 2022).

Threat model of the defence: a preprocessing defender who maps every H&E query onto the
stain appearance of a fixed target image (fitted once, at construction) before the
classifier, hoping that the colour changes of an attack do not survive the
re-staining.

Per image: optical density OD = -log((I + 1) / Io), pixels with any OD < ``beta`` dropped
as background, the two leading eigenvectors of the OD covariance, the ``alpha`` and
100 - ``alpha`` percentiles of the angle in their plane as the H and E stain vectors,
least-squares stain concentrations, their 99th percentile mapped to the target's, and
re-composition with the target's stain matrix.

**Not differentiable** (declared, so the runner attacks it with BPDA): torchstain works on
8-bit intensities, takes ``torch.linalg.eigh`` of a covariance (eigenvector signs and order
are not smooth), selects stain vectors with percentiles (``kthvalue``: sparse, piecewise
gradients), drops background pixels by a data-dependent index, and ends with an integer
cast (``.int()``) that cuts the autograd graph. medsec also quantises the input to 8 bits
as torchstain expects. The BPDA approximation is the identity (straight-through).

Images where fewer than ``min_tissue`` of the pixels are tissue (OD >= ``beta`` in every
channel), or where torchstain's linear algebra fails, are passed through unchanged; the
count is kept in ``passthrough_`` (a blank tile has no stain to normalise).

Example:
    >>> import torch
    >>> target = torch.rand(3, 64, 64) * 0.5 + 0.3
    >>> sn = StainNormalization(target=target)
    >>> sn(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from medsec.defenses.base import InputDefense
from medsec.errors import DataError, InputError
from medsec.registry import DEFENSES

log = logging.getLogger(__name__)

DEFAULT_TARGET = "he-samples/torchstain_target.png"


def _load_png(path: Path) -> torch.Tensor:
    from PIL import Image

    if not path.is_file():
        raise DataError(f"stain-normalisation target image not found: {path}; pass target=<path to an RGB H&E image> "
                        "or set MEDSEC_DATA to the folder holding he-samples/")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@DEFENSES.register("stain_normalization")
class StainNormalization(InputDefense):
    """Re-stain every H&E image to a fitted target (torchstain Macenko).

    Args:
        target: the target image, a (3, H, W) tensor in [0, 1] or a path to an RGB image;
            default ``$MEDSEC_DATA/he-samples/torchstain_target.png``.
        io: transmitted light intensity Io (torchstain's default 240).
        alpha: percentile of the stain-vector angles (default 1).
        beta: optical-density threshold of background pixels (default 0.15).
        min_tissue: smallest fraction of tissue pixels an image needs to be normalised.
    """

    name = "stain_normalization"
    differentiable = False
    stochastic = False

    def __init__(self, *, target: str | Path | torch.Tensor | None = None, io: float = 240.0, alpha: float = 1.0,
                 beta: float = 0.15, min_tissue: float = 0.05) -> None:
        super().__init__()
        from torchstain.torch.normalizers import TorchMacenkoNormalizer

        if not 0 < float(alpha) < 50:
            raise InputError(f"alpha (a percentile) must be in (0, 50), got {alpha}")
        if not float(beta) > 0:
            raise InputError(f"beta must be > 0, got {beta}")
        if not 0 < float(io) <= 255:
            raise InputError(f"io must be in (0, 255], got {io}")
        if not 0 <= float(min_tissue) < 1:
            raise InputError(f"min_tissue must be in [0, 1), got {min_tissue}")
        self.io, self.alpha, self.beta, self.min_tissue = float(io), float(alpha), float(beta), float(min_tissue)
        if target is None:
            from medsec.data import data_root

            target = data_root() / DEFAULT_TARGET
        self.target_path = None if isinstance(target, torch.Tensor) else str(target)
        img = target if isinstance(target, torch.Tensor) else _load_png(Path(target))
        if img.dim() != 3 or img.shape[0] != 3:
            raise InputError(f"the target must be one RGB image of shape (3, H, W), got {tuple(img.shape)}")
        if not torch.isfinite(img).all() or img.min() < 0 or img.max() > 1:
            raise InputError("the target image must be finite and in [0, 1]")
        self.normalizer = TorchMacenkoNormalizer()
        try:
            self.normalizer.fit(self._to255(img), Io=self.io, alpha=self.alpha, beta=self.beta)
        except (RuntimeError, IndexError) as exc:
            raise InputError(f"cannot fit Macenko stain vectors on the target image ({exc}); use an H&E image "
                             "with stained tissue") from exc
        self.passthrough_ = 0

    @staticmethod
    def _to255(img: torch.Tensor) -> torch.Tensor:
        return (img.detach().clamp(0, 1) * 255).round()

    def _tissue_fraction(self, u: torch.Tensor) -> float:
        od = -torch.log((u.reshape(3, -1) + 1) / self.io)
        return float((od >= self.beta).all(0).float().mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"stain normalisation needs RGB images of shape (N, 3, H, W), got {tuple(x.shape)}")
        out = []
        for img in x.detach().float().cpu():
            u = self._to255(img)
            normed = None
            if self._tissue_fraction(u) >= self.min_tissue:
                try:
                    n, _, _ = self.normalizer.normalize(u, Io=self.io, alpha=self.alpha, beta=self.beta, stains=False)
                    normed = n.permute(2, 0, 1).float().clamp(0, 255) / 255.0
                except (RuntimeError, IndexError):
                    normed = None
            if normed is None or not torch.isfinite(normed).all():
                self.passthrough_ += 1
                normed = u / 255.0
            out.append(normed)
        res = torch.stack(out).to(device=x.device, dtype=x.dtype)
        # stay on the autograd graph with an exactly zero gradient, like the other
        # non-differentiable purifiers (torchstain's integer cast cuts it)
        return res + 0.0 * x
