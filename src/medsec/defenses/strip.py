"""STRIP: input-time backdoor detection by superimposition (Gao et al., ACSAC 2019,
"STRIP: A Defence Against Trojan Attacks on Deep Neural Networks").

Threat model of the defence: a defender with the deployed model and a few clean images
who sees every query. Each query is blended with ``n_overlays`` random clean images
(x' = (1 - w) x + w x_clean, w = ``blend``); a clean query's predictions scatter over
the classes (high entropy) while a triggered one keeps predicting the target because
the trigger survives the blend (low entropy). Score = minus the mean prediction
entropy; ``detect`` thresholds it at the clean scores' (1 - ``fpr``) quantile from
``fit`` (the paper picks the threshold from the clean entropy distribution as well).

Example:
    >>> strip = STRIP(n_overlays=16).fit(model, x_clean)      # doctest: +SKIP
    >>> strip.detect(x_queries)                                # doctest: +SKIP
"""

from __future__ import annotations

import torch

from medsec.defenses.detection import Detector
from medsec.errors import InputError
from medsec.registries import DETECTORS
from medsec.validation import check_images


@DETECTORS.register("strip")
class STRIP(Detector):
    """Entropy of predictions on blends with clean images; low entropy = triggered."""

    name = "strip"
    inspects = "inputs"

    def __init__(self, n_overlays: int = 16, blend: float = 0.5, fpr: float = 0.05, seed: int = 0) -> None:
        if int(n_overlays) < 2:
            raise InputError(f"n_overlays must be >= 2, got {n_overlays}")
        if not 0 < float(blend) < 1:
            raise InputError(f"blend must be in (0, 1), got {blend}")
        if not 0 < float(fpr) < 1:
            raise InputError(f"fpr must be in (0, 1), got {fpr}")
        self.n_overlays, self.blend, self.fpr, self.seed = int(n_overlays), float(blend), float(fpr), int(seed)

    def fit(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> STRIP:
        check_images(x, name="clean images")
        if x.shape[0] < self.n_overlays:
            raise InputError(f"STRIP needs at least n_overlays={self.n_overlays} clean images, got {x.shape[0]}")
        self.model_, self.pool_ = model, x.detach()
        self.fitted_ = True
        clean = self.score(x)
        self.threshold_ = float(torch.quantile(clean, 1 - self.fpr))
        return self

    @torch.no_grad()
    def score(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._need_fit()
        check_images(x)
        g = torch.Generator().manual_seed(self.seed)
        was_training = self.model_.training
        self.model_.eval()
        try:
            out = []
            for i in range(x.shape[0]):
                idx = torch.randperm(self.pool_.shape[0], generator=g)[: self.n_overlays]
                blends = torch.lerp(x[i : i + 1].expand(self.n_overlays, -1, -1, -1), self.pool_[idx], self.blend)
                p = self.model_(blends).softmax(dim=1)
                out.append(-(-(p * p.clamp_min(1e-12).log()).sum(1)).mean())
        finally:
            self.model_.train(was_training)
        return torch.stack(out).cpu()

    def detect(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(x) > self.threshold_
