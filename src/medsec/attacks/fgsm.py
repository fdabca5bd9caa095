"""FGSM, the fast gradient sign method (Goodfellow, Shlens & Szegedy, ICLR 2015).

Threat model: white-box, one gradient step of size eps: x' = clip(x + eps * sign(g))
for L-inf, x' = clip(x + eps * g / ||g||_2) for L2 (the "fast gradient method").
Untargeted ascends the objective on the true label; targeted ascends the objective's
targeted loss (descends CE to the target).

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> attack = medsec.attacks.create("fgsm")
    >>> res = attack(model, x, y, threat=medsec.ThreatModel("linf", 4 / 255))
    >>> bool((res.x_adv - x).abs().max() <= 4 / 255 + 1e-6), res.queries.tolist()
    (True, [2, 2, 2, 2])
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.projection import project, steepest_step
from medsec.registry import ATTACKS


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast gradient sign method (one step of size eps).

    Args:
        loss, early_stop: see :class:`~medsec.attacks.base.Attack`.
    """

    name = "fgsm"

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        _, grad, _ = problem.loss_and_grad(x)
        eps, norm = problem.threat.eps, problem.threat.norm
        x_adv = problem.clamp(x + eps * steepest_step(grad, norm))
        # clamping keeps the L-inf ball; the L2 step has norm eps before clamping
        return problem.clamp(x + project(x_adv - x, norm, eps)), 1
