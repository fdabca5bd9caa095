"""STRIP: input-time backdoor detection by superimposition (Gao et al., ACSAC 2019,
"STRIP: A Defence Against Trojan Attacks on Deep Neural Networks").

Threat model of the defence: a defender with the deployed model and a few clean images
who sees every query. Each query is superimposed on ``n_overlays`` random clean images;
a clean query's predictions scatter over the classes (high entropy) while a triggered one
keeps predicting the target because the trigger survives the superimposition (low
entropy). Score = minus the mean prediction entropy; ``detect`` thresholds it at the
clean scores' (1 - ``fpr``) quantile from ``fit`` (the paper picks the threshold from the
clean entropy distribution as well).

How the two images are combined (``mode``):

* ``"superimpose"`` (default, the paper's): x' = clip(x + x_clean) to the valid range,
  as the reference code's ``cv2.addWeighted(background, 1, overlay, 1, 0)`` on 8-bit
  images (which saturates at 255). The trigger keeps its full strength, but on bright
  images (bright-field microscopy: BloodMNIST's mean intensity is 0.72) the sum
  saturates to white and a dark trigger is filled in.
* ``"blend"``: x' = (1 - w) x + w x_clean (w = ``blend``), a convex combination in
  intensity; it scales the trigger's contrast by (1 - w).
* ``"optical_density"``: the convex combination in optical density OD = -log(I)
  (Beer-Lambert: stacking two stained, transmitted-light specimens adds their optical
  densities), x' = x^(1 - w) x_clean^w, intensities floored at 1/255 (8 bits). Dark trigger
  pixels stay dark and the images do not saturate; the mode medsec uses for bright-field
  images (docs/defenses.md: STRIP on the BadNets BloodMNIST model).

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any classifier module
    >>> x_clean, x_queries = torch.rand(32, 3, 28, 28), torch.rand(4, 3, 28, 28)
    >>> strip = STRIP(n_overlays=16).fit(model, x_clean)
    >>> strip.detect(x_queries).shape  # one flag per query (True: low entropy, triggered)
    torch.Size([4])
"""

from __future__ import annotations

import torch

from medsec.defenses.detection import Detector
from medsec.errors import InputError
from medsec.registry import DETECTORS
from medsec.validation import check_images

MODES = ("superimpose", "blend", "optical_density")
_OD_FLOOR = 1.0 / 255.0


def superimpose(x: torch.Tensor, overlay: torch.Tensor, mode: str = "superimpose", weight: float = 0.5) -> torch.Tensor:
    """Combine queries ``x`` with clean ``overlay`` images (same shape, in [0, 1]) by ``mode``."""
    if mode == "superimpose":
        return (x + overlay).clamp(0.0, 1.0)
    if mode == "blend":
        return torch.lerp(x, overlay, weight)
    if mode == "optical_density":
        od = torch.lerp(-x.clamp_min(_OD_FLOOR).log(), -overlay.clamp_min(_OD_FLOOR).log(), weight)
        return (-od).exp()
    raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


@DETECTORS.register("strip")
class STRIP(Detector):
    """Entropy of predictions on superimpositions with clean images; low entropy = triggered.

    Args:
        n_overlays: clean images superimposed on every query, >= 2 (default 16).
        mode: how query and clean image are combined: ``"superimpose"`` (default, the
            paper's), ``"blend"`` or ``"optical_density"`` (see the module docstring).
        blend: the weight w of the clean image in ``"blend"`` and ``"optical_density"``
            modes, in (0, 1) (default 0.5).
        fpr: the false-positive rate on clean images that sets ``threshold_`` (default 0.05).
        seed: seeds the choice of the overlays.
    """

    name = "strip"
    inspects = "inputs"
    #: queries per forward pass (each with its ``n_overlays`` superimpositions)
    chunk = 32

    def __init__(self, *, n_overlays: int = 16, mode: str = "superimpose", blend: float = 0.5, fpr: float = 0.05,
                 seed: int = 0) -> None:
        if int(n_overlays) < 2:
            raise InputError(f"n_overlays must be >= 2, got {n_overlays}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 < float(blend) < 1:
            raise InputError(f"blend must be in (0, 1), got {blend}")
        if not 0 < float(fpr) < 1:
            raise InputError(f"fpr must be in (0, 1), got {fpr}")
        self.n_overlays, self.mode, self.blend = int(n_overlays), mode, float(blend)
        self.fpr, self.seed = float(fpr), int(seed)

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
    def entropy(self, x: torch.Tensor) -> torch.Tensor:
        """Mean prediction entropy (nats) of each query over its ``n_overlays`` superimpositions."""
        self._need_fit()
        check_images(x)
        g = torch.Generator().manual_seed(self.seed)
        was_training = self.model_.training
        self.model_.eval()
        try:
            out = []
            for start in range(0, x.shape[0], self.chunk):
                xs = x[start : start + self.chunk]
                idx = torch.stack([torch.randperm(self.pool_.shape[0], generator=g)[: self.n_overlays]
                                   for _ in range(xs.shape[0])])
                mixed = superimpose(xs[:, None].expand(-1, self.n_overlays, -1, -1, -1), self.pool_[idx], self.mode,
                                    self.blend)
                p = self.model_(mixed.flatten(0, 1)).float().softmax(dim=1)
                h = -(p * p.clamp_min(1e-12).log()).sum(1)
                out.append(h.view(xs.shape[0], self.n_overlays).mean(1))
        finally:
            self.model_.train(was_training)
        return torch.cat(out).cpu()

    def score(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return -self.entropy(x)

    def detect(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(x) > self.threshold_
