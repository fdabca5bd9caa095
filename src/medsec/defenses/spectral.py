"""Spectral Signatures: finding poisoned training samples from the top singular vector
of their representations (Tran, Li & Madry, NeurIPS 2018, "Spectral Signatures in
Backdoor Attacks").

Threat model of the defence: a defender who holds the (possibly poisoned) training set
and the model trained on it. Per class, the penultimate features R (n x d) are centred
and the score of each sample is its squared projection on the top right singular vector
of the centred matrix; poisoned samples of the target class share a direction of large
variance and score high. ``detect`` flags the top ``1.5 * expected_rate`` fraction of
every class (the paper removes 1.5 times the assumed poisoning rate).

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any classifier module
    >>> x_train, y_train = torch.rand(40, 3, 28, 28), torch.arange(40) % 4  # the (possibly poisoned) training set
    >>> spec = SpectralSignatures(expected_rate=0.05).fit(model, x_train, y_train)
    >>> suspicious = spec.detect(x_train, y_train)
    >>> int(suspicious.sum())  # round(1.5 * 0.05 * 10) = 1 flagged in each of the 4 classes
    4
"""

from __future__ import annotations

import torch

from medsec.defenses.detection import Detector
from medsec.errors import InputError
from medsec.models.features import features
from medsec.registry import DETECTORS
from medsec.validation import check_images


@DETECTORS.register("spectral")
class SpectralSignatures(Detector):
    """Per-class outlier score along the top singular direction of the features.

    Args:
        expected_rate: the assumed poisoning rate, in (0, 0.5) (default 0.05); ``detect``
            flags the top 1.5 times that fraction of every class.
        layer: the module whose output are the features (default: the input of the last
            ``nn.Linear``, :func:`medsec.models.features`).
    """

    name = "spectral"

    def __init__(self, *, expected_rate: float = 0.05, layer: str | None = None) -> None:
        if not 0 < float(expected_rate) < 0.5:
            raise InputError(f"expected_rate must be in (0, 0.5), got {expected_rate}")
        self.expected_rate, self.layer = float(expected_rate), layer

    def fit(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> SpectralSignatures:
        check_images(x, name="training images")
        if y is None or y.shape != (x.shape[0],):
            raise InputError("Spectral Signatures needs the training labels y of shape (N,)")
        self.model_ = model
        feats = features(model, x, self.layer)
        self.means_, self.directions_ = {}, {}
        for c in y.unique().tolist():
            r = feats[y == c]
            if r.shape[0] < 2:
                continue
            mean = r.mean(0)
            _, _, vh = torch.linalg.svd(r - mean, full_matrices=False)
            self.means_[c], self.directions_[c] = mean, vh[0]
        self.fitted_ = True
        return self

    def score(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._need_fit()
        if y is None or y.shape != (x.shape[0],):
            raise InputError("score needs the labels y of shape (N,) (the classes the samples claim)")
        feats = features(self.model_, x, self.layer)
        out = torch.zeros(x.shape[0])
        for c, v in self.directions_.items():
            sel = y == c
            out[sel] = ((feats[sel] - self.means_[c]) @ v) ** 2
        return out

    def detect(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        s = self.score(x, y)
        assert y is not None
        flags = torch.zeros(x.shape[0], dtype=torch.bool)
        for c in y.unique().tolist():
            idx = (y == c).nonzero().flatten()
            k = int(round(1.5 * self.expected_rate * len(idx)))
            if k:
                flags[idx[s[idx].topk(k).indices]] = True
        return flags
