"""MI-FGSM, the momentum iterative fast gradient sign method (Dong et al., "Boosting
Adversarial Attacks with Momentum", CVPR 2018).

Threat model: white-box, L-inf or L2 ball of radius eps around x, inside the image
bounds. The gradient of the objective is normalised per sample by its mean absolute
value over (C, H, W) (the L1 normalisation of the paper, scaled as torchattacks does)
and accumulated with decay mu, g <- mu * g + grad / mean(|grad|); the step is
x <- Proj(x + alpha * sign(g)) for L-inf and x <- Proj(x + alpha * g / ||g||_2) for L2.
With ``step_size=eps/steps``, ``decay=1`` and no random start the L-inf attack is
torchattacks' ``MIFGSM`` step for step. ``early_stop=True`` (evaluation mode) stops
updating a sample, and computing its gradient, as soon as it is broken.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> mi = medsec.attacks.create("mifgsm", steps=10, decay=1.0)
    >>> res = mi(model, x, y, threat=medsec.ThreatModel("linf", 8 / 255))
    >>> robust = (~res.success).float().mean()
    >>> bool((res.x_adv - x).abs().max() <= 8 / 255 + 1e-6), mi.stochastic
    (True, False)
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.projection import project, random_init, steepest_step
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.registry import ATTACKS


@ATTACKS.register("mifgsm")
class MIFGSM(Attack):
    """Momentum iterative FGSM with optional random start and early stop.

    Args:
        steps: iterations (default 10).
        step_size: alpha in input units; default eps / steps (the paper's choice).
        decay: momentum factor mu (default 1.0; 0 gives BIM with L1-normalised gradients).
        random_start: start at a uniform random point of the ball (default False).
        loss, early_stop: see :class:`~medsec.attacks.base.Attack`.
    """

    name = "mifgsm"
    iterative = True
    stochastic = False  # with the default (no random start); instances say exactly
    label_free = True  # runs on the feature deviation of an embedding model (with a random start)

    def __init__(
        self,
        *,
        steps: int = 10,
        step_size: float | None = None,
        decay: float = 1.0,
        random_start: bool = False,
        loss: str | Objective = "auto",
        early_stop: bool = False,
    ) -> None:
        super().__init__(loss=loss, early_stop=early_stop)
        if int(steps) < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if step_size is not None and not float(step_size) > 0:
            raise InputError(f"step_size must be > 0, got {step_size}")
        if not float(decay) >= 0:
            raise InputError(f"decay must be >= 0, got {decay}")
        self.steps = int(steps)
        self.step_size = None if step_size is None else float(step_size)
        self.decay = float(decay)
        self.random_start = bool(random_start)
        self.stochastic = self.random_start

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        eps, norm = problem.threat.eps, problem.threat.norm
        alpha = self.step_size if self.step_size is not None else eps / self.steps
        x_adv = problem.clamp(x + random_init(x, norm, eps, generator)) if self.random_start else x.clone()
        momentum = torch.zeros_like(x)
        active = torch.arange(x.shape[0], device=x.device)  # samples still updated
        reduce_dims = tuple(range(1, x.dim()))
        steps = 0
        for _ in range(self.steps):
            xa, mom = x_adv[active], momentum[active]
            _, grad, logits = problem.loss_and_grad(xa, active)
            if self.early_stop:
                keep = ~problem.success(logits, active)
                if not keep.all():
                    active, xa, mom, grad = active[keep], xa[keep], mom[keep], grad[keep]
                    if active.numel() == 0:
                        break
            steps += 1
            scale = torch.mean(torch.abs(grad), dim=reduce_dims, keepdim=True)
            # a zero gradient (saturated output) gives a zero update, not NaN
            grad = grad / torch.where(scale > 0, scale, torch.ones_like(scale))
            mom = grad + mom * self.decay
            x_new = xa + alpha * steepest_step(mom, norm)
            x_new = problem.clamp(x[active] + project(x_new - x[active], norm, eps))
            if active.numel() == x.shape[0]:
                x_adv, momentum = x_new, mom
            else:
                x_adv = x_adv.index_copy(0, active, x_new)
                momentum = momentum.index_copy(0, active, mom)
        return x_adv, steps
