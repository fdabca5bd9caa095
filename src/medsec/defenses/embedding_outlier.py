"""kNN outlier detector on embeddings: flags inputs whose embedding lies far from every
clean embedding, a "preliminary" defence against the label-free whole-slide attacks of
Liu et al. ("The Butterfly Effect in Pathology", arXiv 2505.24141; which defences the paper
studies is not public, so medsec offers the usual ones). The score is the local kNN
distance of nearest-neighbour outlier detection (Ramaswamy, Rastogi & Shim, SIGMOD 2000,
averaged over the k neighbours as in Angiulli & Pizzuti, PKDD 2002), with the cosine
distance of scikit-learn's ``NearestNeighbors``.

Threat model of the defence: the defender holds the encoder's embeddings of every input
(e.g. every tile of a slide), not which ones were attacked, and a set of clean
embeddings to fit on; an attacker who does not adapt to the detector moves the attacked
embeddings away from the clean manifold. ``fit`` takes the clean embeddings (N, D),
``score`` is the mean cosine distance to the ``k`` nearest clean embeddings (leave-one-out
on the fit set itself), and ``detect`` flags scores above ``threshold_``, the ``quantile``
of the clean scores (so about 1 - quantile of clean inputs are flagged). Scores and flags
are NumPy arrays (scikit-learn's convention; the input may be a tensor or an array).

Unlike the backdoor detectors, it inspects embeddings (``inspects = "embeddings"``): it
needs no model, and ``fit`` takes the embeddings where the others take (model, x, y).

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> clean_embeddings = 1.0 + 0.1 * torch.randn(200, 16)  # embeddings of clean tiles, (N, D)
    >>> det = EmbeddingOutlierDetector(k=10, quantile=0.99).fit(clean_embeddings)
    >>> det.detect(torch.randn(3, 16))  # embeddings in other directions (e.g. encoder.encode(tiles))
    array([ True,  True,  True])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medsec.defenses.detection import Detector
from medsec.errors import InputError
from medsec.registry import DETECTORS


def _embeddings(z: Any, what: str) -> np.ndarray:
    if isinstance(z, nn.Module):
        raise InputError(f"{what} takes embeddings (N, D), not a model; encode the inputs first, e.g. encoder.encode(tiles)")
    arr = np.asarray(torch.as_tensor(z).detach().float().cpu())
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise InputError(f"{what} needs a finite (N, D) array of embeddings, got shape {arr.shape}")
    return arr


@DETECTORS.register("embedding_outlier")
class EmbeddingOutlierDetector(Detector):
    """Mean cosine distance to the k nearest clean embeddings; flagged above a clean quantile.

    Args:
        k: neighbours averaged (default 10).
        quantile: the quantile of the clean scores used as the threshold (default 0.99).
    """

    name = "embedding_outlier"
    inspects = "embeddings"

    def __init__(self, *, k: int = 10, quantile: float = 0.99) -> None:
        if isinstance(k, bool) or int(k) != k or int(k) < 1 or not 0 < float(quantile) < 1:
            raise InputError(f"k must be an integer >= 1 and quantile in (0, 1), got {k}, {quantile}")
        self.k, self.quantile = int(k), float(quantile)

    def fit(self, z: Any, y: Any = None) -> EmbeddingOutlierDetector:  # type: ignore[override]
        """Fit on clean embeddings (N, D) with N > k + 1 (``y`` is ignored)."""
        from sklearn.neighbors import NearestNeighbors

        arr = _embeddings(z, "fit")
        if arr.shape[0] <= self.k + 1:
            raise InputError(f"fit needs more than k + 1 = {self.k + 1} clean embeddings, got {arr.shape[0]}")
        self.nn_ = NearestNeighbors(n_neighbors=self.k + 1, metric="cosine").fit(arr)
        d, _ = self.nn_.kneighbors(arr)
        self.threshold_ = float(np.quantile(d[:, 1:].mean(1), self.quantile))  # leave-one-out: drop self
        self.fitted_ = True
        return self

    def score(self, z: Any, y: Any = None) -> np.ndarray:  # type: ignore[override]
        """(N,) mean cosine distance of each embedding to its k nearest clean embeddings."""
        self._need_fit()
        d, _ = self.nn_.kneighbors(_embeddings(z, "score"), n_neighbors=self.k)
        scores: np.ndarray = d.mean(1)
        return scores

    def detect(self, z: Any, y: Any = None) -> np.ndarray:  # type: ignore[override]
        """(N,) bool: the score exceeds ``threshold_``."""
        return self.score(z) > self.threshold_
