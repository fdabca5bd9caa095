"""Universal adversarial perturbation for segmenters in the style of Moosavi-Dezfooli,
Fawzi, Fawzi & Frossard (CVPR 2017, "Universal adversarial perturbations"), with the
pixel-disagreement fooling criterion of Budathoki & Dhakal's unfinished UAP stub
(arXiv 2505.02971, ``universal_perturbed_imgs.py``: an image is fooled when more than 20%
of its mask pixels differ; delta = 0.2, xi = eps, overshoot 0.02, 10 DeepFool steps).

Threat model: white-box, untargeted; ONE perturbation v in the L-inf or L2 ball of radius
eps, added as clamp(x + v). Algorithm 1 of the paper as in :class:`~medsec.attacks.uap.UAP`
(passes over the fit set; for each not-yet-fooled image a minimal step dv that fools
clamp(x + v) is added and v is projected; stop when the fit-set fooling rate reaches
``fooling_target`` = 1 - delta). The per-image step is DeepFool on the one scalar
boundary of a segmenter's fooling criterion: with the soft disagreement s(x) (objective
``pixel_disagreement``: the mean probability mass of flipped pixels against the
reference masks ``y``, normally the clean predictions) and threshold tau, the boundary
is f(x) = tau - s(x) = 0; because the hard fraction of changed pixels lags the soft one,
each DeepFool iteration aims at tau + ``margin`` and adds
r = max(tau + margin - s, margin / 2) / ||grad s||^2 * grad s, until the hard
disagreement exceeds tau.

Batching as in ``uap`` (DeepFool on a mini-batch at a fixed v, sequential updates).
The paper reports that it could not find a universal perturbation; medsec reports the
fooling rate reached on the fit set and on held-out images.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> seg = torch.nn.Conv2d(3, 1, 3, padding=1)  # any module returning (B, C, H, W) mask logits
    >>> x_train = torch.rand(8, 3, 16, 16)
    >>> clean = (seg(x_train) > 0).long()  # the clean predictions (a medsec Segmenter: seg.predict(x_train))
    >>> uap = medsec.attacks.create("uap_seg", max_epochs=2)
    >>> v = uap.fit(seg, x_train, clean, medsec.ThreatModel("linf", 8 / 255), generator=torch.Generator().manual_seed(0))
    >>> v.shape, uap.steps_
    (torch.Size([1, 3, 16, 16]), 2)
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Problem
from medsec.attacks.uap import UAP
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.registry import ATTACKS


@ATTACKS.register("uap_seg")
class UAPSeg(UAP):
    """Moosavi-Dezfooli universal perturbation with a pixel-disagreement fooling criterion.

    Args:
        fooling_target: stop once this fraction of the fit set is fooled (default 0.8).
        max_epochs: passes over the fit set at most (default 10).
        deepfool_steps: DeepFool iterations per image (default 10).
        overshoot: DeepFool overshoot (default 0.02).
        batch_size: images per mini-batch (default 32).
        shuffle: a new random visit order each pass (default True). These five as in
            :class:`~medsec.attacks.uap.UAP`.
        loss: an objective with a ``threshold`` (default ``"pixel_disagreement"``, tau = 0.2).
        margin: how far past tau the linearised step aims (default 0.1).
        early_stop: accepted for the common interface and ignored.
    """

    name = "uap_seg"
    supports_targeted = False
    segmentation = True
    classification = False  # for classifiers use 'uap'

    def __init__(
        self,
        *,
        fooling_target: float = 0.8,
        max_epochs: int = 10,
        deepfool_steps: int = 10,
        overshoot: float = 0.02,
        batch_size: int = 32,
        shuffle: bool = True,
        loss: str | Objective = "pixel_disagreement",
        margin: float = 0.1,
        early_stop: bool = False,
    ) -> None:
        super().__init__(fooling_target=fooling_target, max_epochs=max_epochs, deepfool_steps=deepfool_steps,
                         overshoot=overshoot, num_classes=2, batch_size=batch_size, shuffle=shuffle, loss=loss,
                         early_stop=early_stop)
        if not float(margin) > 0:
            raise InputError(f"margin must be > 0, got {margin}")
        self.margin = float(margin)

    def _deepfool(self, problem: Problem, x0: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tau = getattr(problem.objective, "threshold", None)
        if tau is None:
            raise InputError("uap_seg needs an objective with a fooling threshold, e.g. loss='pixel_disagreement'")
        scale = 1.0 + self.overshoot
        r_tot = torch.zeros_like(x0)
        active = torch.arange(x0.shape[0], device=x0.device)
        for _ in range(self.deepfool_steps):
            xa = problem.clamp(x0[active] + scale * r_tot[active])
            s, grad, logits = problem.loss_and_grad(xa, idx[active])
            keep = ~problem.success(logits, idx[active])
            active, s, grad = active[keep], s[keep], grad[keep]
            if active.numel() == 0:
                break
            # aim the soft disagreement past tau (the hard fraction lags the soft one), always step
            f = (tau + self.margin - s).clamp_min(self.margin / 2)
            g2 = grad.flatten(1).pow(2).sum(1).clamp_min(1e-24)
            coef = (f + 1e-4) / g2
            r_tot[active] += coef.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype) * grad
        r = scale * r_tot
        ok = self._fooled(problem, x0, r, idx)
        return r, ok
