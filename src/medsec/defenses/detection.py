"""The backdoor-detector interface and detection metrics.

Detectors use scikit-learn verbs (GUIDE section 3): ``fit`` on what the defender has
(clean held-out images for input-time detectors such as STRIP; the possibly poisoned
training set for data-inspection detectors such as Spectral Signatures), then
``score`` (higher = more suspicious) and ``detect`` (a boolean flag per sample).
Detection is measured by AUROC and by the true-positive rate at 5% false positives.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from medsec.errors import InputError


class Detector:
    """Base class of detectors (backdoor detectors and the embedding outlier detector)."""

    name: ClassVar[str] = "detector"
    #: what the detector inspects: "training_set" (the possibly poisoned training data;
    #: scored per training sample), "inputs" (test-time queries; fitted on clean data),
    #: "model" (the model itself, with a clean set; scored per class) or "embeddings"
    #: (an encoder's embeddings, fitted on clean ones: ``fit(z)``, ``score(z)``, ``detect(z)``)
    inspects: ClassVar[str] = "training_set"

    def fit(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> Detector:
        raise NotImplementedError

    def score(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def detect(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _need_fit(self) -> None:
        if not getattr(self, "fitted_", False):
            raise InputError(f"{self.name}: call fit(...) before score/detect")

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")}


def detection_metrics(scores: torch.Tensor, is_poisoned: torch.Tensor, fpr: float = 0.05) -> dict[str, float]:
    """AUROC and TPR at ``fpr`` of suspicion scores against the ground truth (torchmetrics)."""
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    scores, truth = scores.flatten().double(), is_poisoned.flatten().long()
    if scores.shape != truth.shape:
        raise InputError(f"scores {tuple(scores.shape)} and labels {tuple(truth.shape)} differ in length")
    if truth.min() == truth.max():
        raise InputError("detection metrics need both poisoned and clean samples")
    if not torch.isfinite(scores).all():
        raise InputError("detector scores contain NaN/Inf")
    f, t, _ = binary_roc(scores, truth)
    ok = f <= fpr + 1e-12
    return {"auroc": float(binary_auroc(scores, truth)), f"tpr_at_{int(round(fpr * 100))}pct_fpr": float(t[ok].max()),
            "n_poisoned": int(truth.sum()), "n_clean": int((1 - truth).sum())}
