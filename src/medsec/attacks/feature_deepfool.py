"""DeepFool in feature space (after Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016), label-free:
one of the "revised" classical attacks of Liu et al. ("The Butterfly Effect in Pathology",
arXiv 2505.24141) on pathology foundation models.

Threat model: white-box on the encoder only (no label, no downstream head), untargeted,
L2 or L-inf budget eps around the clean input. It runs on an embedding model
(:class:`~medsec.objectives.EmbeddingAsLogits`, ``y = torch.arange(n)``) with the
feature-deviation objective D (:class:`~medsec.objectives.FeatureDeviation`).

DeepFool steps onto the nearest linearised class boundary; without labels there is no
boundary, so the adaptation medsec uses (the paper's is not public) puts one there: the
level set D(f(x')) = tau of the feature deviation (tau = the objective's ``threshold``,
0.5 for 1 - cos). It is medsec's DeepFool engine
(:func:`medsec.attacks.deepfool.deepfool_search`) on that level set
(:class:`~medsec.attacks.deepfool.LevelSet`): each iteration linearises D at the current
point and takes the closed-form step onto D = tau, r = (tau - D + 1e-4) / ||grad D||_2^2 *
grad D (L2) or (tau - D + 1e-4) / ||grad D||_1 * sign(grad D) (L-inf, the dual-norm step),
scaled by (1 + overshoot); a sample stops once D >= tau. Two changes for a budgeted attack:
the start is a small random point (uniform in the ball of radius 0.1 eps: D has a zero
gradient at the clean input, its minimum), and every iterate is projected onto the eps-ball
(clipped DeepFool), so the search stays inside the budget instead of returning a
minimum-norm point that the final projection would cut.

Example:
    >>> import medsec, torch
    >>> from medsec.objectives import EmbeddingAsLogits
    >>> encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))  # a tile encoder
    >>> tiles = torch.rand(4, 3, 16, 16)
    >>> attack = medsec.attacks.create("feature_deepfool", steps=50)
    >>> res = attack(EmbeddingAsLogits(encoder, len(tiles)), tiles, torch.arange(len(tiles)),
    ...              threat=medsec.ThreatModel("linf", 8 / 255),
    ...              generator=torch.Generator().manual_seed(0))
    >>> res.loss.shape, bool((res.loss > 0).all())  # per-tile 1 - cos to the clean embedding
    (torch.Size([4]), True)
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.deepfool import LevelSet, deepfool_search
from medsec.attacks.projection import random_init
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.registry import ATTACKS


@ATTACKS.register("feature_deepfool")
class FeatureDeepFool(Attack):
    """Label-free DeepFool: linearised steps onto the feature-deviation level set D = tau.

    Args:
        steps: maximum iterations (default 50).
        overshoot: relative overshoot of each step (default 0.02).
        loss: the label-free objective (``"auto"``: the feature deviation of the embedding
            model, bound to the clean embeddings of the batch; or a
            :class:`~medsec.objectives.FeatureDeviation` with its own distance, threshold and
            reference).
    """

    name = "feature_deepfool"
    stochastic = True
    supports_targeted = False
    classification = False
    segmentation = False
    label_free = True

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02, loss: str | Objective = "auto") -> None:
        super().__init__(loss=loss)
        if int(steps) < 1 or not float(overshoot) >= 0:
            raise InputError(f"steps must be >= 1 and overshoot >= 0, got {steps}, {overshoot}")
        self.steps, self.overshoot = int(steps), float(overshoot)

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        eps, norm = problem.threat.eps, problem.threat.norm
        tau = getattr(problem.objective, "threshold", None)
        if tau is None:
            raise InputError(f"feature_deepfool steps onto the objective's level set and needs an objective with a "
                             f"threshold (the feature deviation), got {problem.objective!r}")
        start = problem.project(x + random_init(x, norm, 0.1 * eps, generator), x)
        everyone = torch.arange(x.shape[0], device=x.device)
        run = deepfool_search(problem, x, everyone, LevelSet(float(tau)), steps=self.steps, overshoot=self.overshoot,
                              norm=norm, start=start, project=True, final_check=False)
        return run.x_adv, run.steps
