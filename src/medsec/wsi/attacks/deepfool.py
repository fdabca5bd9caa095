"""DeepFool in feature space (after Moosavi-Dezfooli et al., CVPR 2016), label-free.

Threat model: white-box on the encoder, untargeted, L2 or L-inf budget. DeepFool steps
onto the nearest linearised class boundary; without labels there is no boundary, so the
adaptation medsec uses (the paper's is not public) puts one there: the level set
D(f(x')) = tau of the feature deviation D (:class:`FeatureDeviation`, tau = its
``threshold``). Each iteration linearises D at the current point and takes the
closed-form step onto that level set, r = (tau - D) / ||grad D||_2^2 * grad D (L2) or
r = (tau - D) / ||grad D||_1 * sign(grad D) (L-inf, the dual-norm step), scaled by
(1 + overshoot); a tile stops once D >= tau. Two changes for a budgeted attack: the start
is a small random point (D has a zero gradient at the clean tile, its minimum), and every
iterate is projected onto the eps-ball (clipped DeepFool), so the search stays inside the
budget instead of returning a minimum-norm point that the final projection would cut.

Args:
    steps: maximum iterations (default 50).
    overshoot: relative overshoot (default 0.02).
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.projection import random_init
from medsec.errors import InputError


class FeatureDeepFool(Attack):
    """Label-free DeepFool: linearised steps onto the deviation level set D = tau."""

    name = "feature_deepfool"
    stochastic = True
    supports_targeted = False

    def __init__(self, steps: int = 50, overshoot: float = 0.02, loss: object = "auto") -> None:
        super().__init__(loss=loss)  # type: ignore[arg-type]
        if int(steps) < 1 or float(overshoot) < 0:
            raise InputError(f"steps must be >= 1 and overshoot >= 0, got {steps}, {overshoot}")
        self.steps, self.overshoot = int(steps), float(overshoot)

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        eps, norm = problem.threat.eps, problem.threat.norm
        tau = float(problem.objective.threshold)  # type: ignore[attr-defined]
        x_adv = problem.project(x + random_init(x, norm, 0.1 * eps, generator), x)
        active = torch.arange(x.shape[0], device=x.device)
        steps = 0
        dims = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(self.steps):
            loss, grad, _ = problem.loss_and_grad(x_adv[active], active)
            keep = loss < tau
            active, loss, grad = active[keep], loss[keep], grad[keep]
            if active.numel() == 0:
                break
            steps += 1
            gap = (tau - loss).clamp_min(0) + 1e-4
            if norm == "l2":
                r = (gap / grad.flatten(1).pow(2).sum(1).clamp_min(1e-20)).reshape(dims) * grad
            else:
                r = (gap / grad.flatten(1).abs().sum(1).clamp_min(1e-20)).reshape(dims) * grad.sign()
            x_new = problem.project(x_adv[active] + (1 + self.overshoot) * r, x[active])
            x_adv = x_adv.index_copy(0, active, x_new)
        return x_adv, steps
