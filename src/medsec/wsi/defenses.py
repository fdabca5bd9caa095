"""Preliminary defences against whole-slide attacks (Liu et al., arXiv 2505.24141, make a
"preliminary study of defences"; which ones is not public, so medsec offers the usual set).

Threat model of the defender: sees the tiles (input purifiers) or the tile embeddings
(detector) of every slide, not which tiles were attacked; or retrains the MIL head.

* Input purifiers applied to every tile before the encoder: JPEG
  (:class:`medsec.defenses.jpeg.JPEG`), Gaussian blur
  (:class:`medsec.defenses.gaussian_blur.GaussianBlur`) and Macenko stain normalisation
  (Macenko et al., ISBI 2009, via torchstain, fitted to a target H&E image; a tile where
  the stain vectors cannot be estimated, e.g. background, is left unchanged).
* :class:`EmbeddingOutlierDetector`: the mean cosine distance of a tile embedding to its
  ``k`` nearest clean embeddings (scikit-learn), flagged above the ``quantile`` of the clean
  scores; flagged tiles are dropped from the bag before the head.
* :func:`adversarial_finetune`: fine-tune the MIL head on clean and attacked bags
  (adversarial training of the aggregator on attacked features).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsec.errors import DataError, InputError

log = logging.getLogger(__name__)

PURIFIERS = ("jpeg", "gaussian_blur", "macenko")


class Macenko(nn.Module):
    """Macenko stain normalisation of tiles in [0, 1] to a target image (torchstain)."""

    def __init__(self, target: str | Path | np.ndarray) -> None:
        super().__init__()
        import torchstain

        if isinstance(target, (str, Path)):
            from PIL import Image

            if not Path(target).is_file():
                raise DataError(f"Macenko target image not found: {target}")
            target = np.asarray(Image.open(target).convert("RGB"))
        arr = np.ascontiguousarray(np.asarray(target, dtype=np.uint8))
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise InputError(f"the Macenko target must be an (H, W, 3) RGB image, got {arr.shape}")
        self.norm = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        self.norm.fit(torch.from_numpy(arr).permute(2, 0, 1))
        self.failures = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for t in x:
            try:
                img, _, _ = self.norm.normalize((t.detach().cpu().clamp(0, 1) * 255).float(), stains=False)
                out.append(img.permute(2, 0, 1).float().div(255).clamp(0, 1).to(x.device, x.dtype))
            except (RuntimeError, ValueError, IndexError, torch.linalg.LinAlgError):
                self.failures += 1
                out.append(t)
        return torch.stack(out)


def create_purifier(name: str, **params: object) -> nn.Module:
    """``jpeg`` (quality), ``gaussian_blur`` (sigma) or ``macenko`` (target)."""
    if name == "macenko":
        if "target" not in params:
            from medsec.data import data_root

            params = {"target": data_root() / "he-samples" / "torchstain_target.png", **params}
        return Macenko(**params)  # type: ignore[arg-type]
    if name in ("jpeg", "gaussian_blur"):
        import medsec.defenses

        return medsec.defenses.create(name, **params)
    from medsec.registry import suggest

    raise InputError(f"unknown tile purifier {name!r}.{suggest(name, PURIFIERS)} Use one of {', '.join(PURIFIERS)}.")


class EmbeddingOutlierDetector:
    """kNN cosine-distance outlier score of tile embeddings (fit on clean embeddings)."""

    def __init__(self, k: int = 10, quantile: float = 0.99) -> None:
        if int(k) < 1 or not 0 < float(quantile) < 1:
            raise InputError(f"k must be >= 1 and quantile in (0, 1), got {k}, {quantile}")
        self.k, self.quantile = int(k), float(quantile)
        self._nn = None
        self.threshold = float("nan")

    def fit(self, clean: torch.Tensor) -> EmbeddingOutlierDetector:
        from sklearn.neighbors import NearestNeighbors

        z = np.asarray(torch.as_tensor(clean).float())
        if z.ndim != 2 or z.shape[0] <= self.k + 1 or not np.isfinite(z).all():
            raise InputError(f"fit needs a finite (N, D) array with N > k + 1 = {self.k + 1}, got {z.shape}")
        self._nn = NearestNeighbors(n_neighbors=self.k + 1, metric="cosine").fit(z)
        d, _ = self._nn.kneighbors(z)
        self.threshold = float(np.quantile(d[:, 1:].mean(1), self.quantile))  # leave-one-out: drop self
        return self

    def score(self, z: torch.Tensor) -> np.ndarray:
        if self._nn is None:
            raise InputError("call fit(clean_embeddings) before score()")
        d, _ = self._nn.kneighbors(np.asarray(torch.as_tensor(z).float()), n_neighbors=self.k)
        return d.mean(1)

    def detect(self, z: torch.Tensor) -> np.ndarray:
        return self.score(z) > self.threshold


def drop_flagged(bag: torch.Tensor, flagged: np.ndarray) -> torch.Tensor:
    """The bag without the flagged tiles (all of them kept if every tile is flagged)."""
    keep = torch.as_tensor(~np.asarray(flagged, dtype=bool))
    return bag[keep] if bool(keep.any()) else bag


def adversarial_finetune(head: nn.Module, clean: Sequence[torch.Tensor], attacked: Sequence[torch.Tensor],
                         labels: Sequence[int] | torch.Tensor, epochs: int = 5, lr: float = 1e-4,
                         generator: torch.Generator | None = None) -> nn.Module:
    """Fine-tune ``head`` in place on the union of clean and attacked bags (same labels)."""
    from medsec.wsi.mil.train import train_mil

    if len(clean) != len(attacked):
        raise InputError("clean and attacked bag lists must have the same length")
    y = torch.as_tensor(labels).long()
    # the head keeps its feature statistics and its last state (no re-standardisation, no selection)
    return train_mil(head, list(clean) + list(attacked), torch.cat([y, y]), epochs=epochs, lr=lr, standardize=False,
                     val_fraction=0.0, generator=generator)
