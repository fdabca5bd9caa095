"""Activation Clustering: poisoned samples form a small separate cluster of their class
(Chen et al., AAAI SafeAI 2019, "Detecting Backdoor Attacks on Deep Neural Networks by
Activation Clustering").

Threat model of the defence: a defender with the (possibly poisoned) training set and
the model. Per class, the penultimate features are reduced to ``n_components``
dimensions (FastICA, as the paper) and split into two clusters by k-means
(scikit-learn). A class whose smaller cluster holds less than ``size_threshold`` of
its samples is flagged as poisoned, and that cluster's samples are the suspects. The
score of a sample is 1 when it is in the smaller cluster of a flagged class, its
cluster's relative smallness otherwise (so AUROC is defined).

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())  # 12 features
    >>> model = torch.nn.Sequential(pool, torch.nn.Linear(12, 4))  # any classifier module
    >>> x_train, y_train = 0.5 * torch.rand(200, 3, 28, 28), torch.arange(200) % 4  # the training set
    >>> x_train[0:40:4, :, 14:, 14:] = 1.0  # a trigger on 10 of the 50 images of class 0
    >>> ac = ActivationClustering(n_components=2).fit(model, x_train, y_train)
    >>> 0 in ac.poisoned_classes_, bool(ac.detect(x_train, y_train)[0:40:4].all())
    (True, True)
"""

from __future__ import annotations

import numpy as np
import torch

from medsec.defenses.detection import Detector
from medsec.errors import InputError
from medsec.models.features import features
from medsec.registry import DETECTORS
from medsec.validation import check_images


@DETECTORS.register("activation_clustering")
class ActivationClustering(Detector):
    """2-means on ICA-reduced features per class; a small cluster means poison.

    Args:
        n_components: the dimensions FastICA reduces the features of a class to (default 10;
            fewer when a class has fewer samples or live feature channels).
        size_threshold: a class whose smaller cluster holds less than this fraction of its
            samples is flagged, in (0, 0.5) (default 0.35).
        layer: the module whose output are the features (default: the input of the last
            ``nn.Linear``, :func:`medsec.models.features`).
        seed: seeds FastICA and k-means.
    """

    name = "activation_clustering"

    def __init__(self, *, n_components: int = 10, size_threshold: float = 0.35, layer: str | None = None,
                 seed: int = 0) -> None:
        if int(n_components) < 1:
            raise InputError(f"n_components must be >= 1, got {n_components}")
        if not 0 < float(size_threshold) < 0.5:
            raise InputError(f"size_threshold must be in (0, 0.5), got {size_threshold}")
        self.n_components, self.size_threshold = int(n_components), float(size_threshold)
        self.layer, self.seed = layer, int(seed)

    def fit(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> ActivationClustering:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import FastICA

        check_images(x, name="training images")
        if y is None or y.shape != (x.shape[0],):
            raise InputError("Activation Clustering needs the training labels y of shape (N,)")
        feats = features(model, x, self.layer).numpy()
        scores = torch.zeros(x.shape[0])
        self.poisoned_classes_: list[int] = []
        self.cluster_sizes_: dict[int, float] = {}
        for c in y.unique().tolist():
            idx = (y == c).nonzero().flatten()
            if len(idx) < 4:
                continue
            f = feats[idx.numpy()]
            f = f[:, f.std(0) > 1e-8]  # dead (constant) channels break ICA's whitening
            if f.shape[1] == 0:
                continue
            k = min(self.n_components, f.shape[1], len(idx) - 1)
            try:
                reduced = FastICA(n_components=k, random_state=self.seed, max_iter=400,
                                  whiten="unit-variance").fit_transform(f)
            except (ValueError, np.linalg.LinAlgError):
                reduced = None
            if reduced is None or not np.isfinite(reduced).all():  # rank-deficient features: cluster them directly
                reduced = (f - f.mean(0)) / f.std(0)
            labels = torch.from_numpy(KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit_predict(reduced))
            small = int(labels.sum() * 2 < len(labels))  # the cluster id of the smaller cluster
            frac = float((labels == small).float().mean())
            self.cluster_sizes_[c] = frac
            in_small = labels == small
            if frac < self.size_threshold:
                self.poisoned_classes_.append(c)
                scores[idx[in_small]] = 1.0
                scores[idx[~in_small]] = 0.0
            else:
                scores[idx[in_small]] = 0.5 - frac
        self.scores_, self.n_ = scores, x.shape[0]
        self.fitted_ = True
        return self

    def score(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the fitted training set (Activation Clustering inspects that set)."""
        self._need_fit()
        if x.shape[0] != self.n_:
            raise InputError("Activation Clustering scores the set it was fitted on; call fit on the new set")
        return self.scores_.clone()

    def detect(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(x, y) >= 1.0
