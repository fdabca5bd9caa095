"""FGSM with a random start, "FGSM-RS" (Wong, Rice & Kolter, "Fast is better than free:
Revisiting adversarial training", ICLR 2020).

Threat model: white-box, L-inf or L2 ball of radius eps around x, inside the image
bounds. One gradient step from a random point of the ball: x0 = clip(x + U(ball(eps))),
x' = clip(x + Proj_eps(x0 + alpha * dir(grad at x0) - x)) with dir = sign (L-inf) or
grad / ||grad||_2 (L2) and alpha = 1.25 eps (the paper's choice). The random start is what
makes one step work where the objective has a zero gradient at x: the label-free feature
deviation (:class:`~medsec.objectives.FeatureDeviation`) has its minimum at the clean
input, so plain ``fgsm`` does not move there (medsec's WSI attacks and the
``vulnerability`` tile ranking use this one). torchattacks calls it ``FFGSM``.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> attack = medsec.attacks.create("fgsm_rs")
    >>> res = attack(model, x, y, threat=medsec.ThreatModel("linf", 8 / 255),
    ...              generator=torch.Generator().manual_seed(0))
    >>> bool((res.x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.projection import project, random_init, steepest_step
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.registry import ATTACKS


@ATTACKS.register("fgsm_rs")
class FGSMRS(Attack):
    """FGSM from a uniform random start in the ball, step 1.25 eps, projection (Wong et al. 2020).

    Args:
        step_size: alpha in input units; default 1.25 * eps (Wong et al.).
        loss: see :class:`~medsec.attacks.base.Attack` (``"auto"``: CE/BCE for classifiers,
            Dice+CE for segmenters, the feature deviation for embedding models).
    """

    name = "fgsm_rs"
    stochastic = True
    label_free = True

    def __init__(self, *, step_size: float | None = None, loss: str | Objective = "auto") -> None:
        super().__init__(loss=loss)
        if step_size is not None and not float(step_size) > 0:
            raise InputError(f"step_size must be > 0, got {step_size}")
        self.step_size = None if step_size is None else float(step_size)

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        eps, norm = problem.threat.eps, problem.threat.norm
        alpha = self.step_size if self.step_size is not None else 1.25 * eps
        x_start = problem.clamp(x + random_init(x, norm, eps, generator))
        _, grad, _ = problem.loss_and_grad(x_start)
        x_new = x_start + alpha * steepest_step(grad, norm)
        return problem.clamp(x + project(x_new - x, norm, eps)), 1
