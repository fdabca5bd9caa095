"""PGD, projected gradient descent (Madry et al., ICLR 2018; BIM of Kurakin et al. 2017
when the random start is off).

Threat model: white-box, L-inf or L2 ball of radius eps around x, inside the image
bounds. Each step x <- Proj(x + alpha * dir(grad)) with dir = sign (L-inf) or
grad / ||grad||_2 (L2). Options: random start (uniform in the ball), restarts (the
strongest result per sample is kept: a success first, then the highest loss), and an
evaluation mode (``early_stop=True``) that stops updating a sample once it is broken
and stops computing gradients for it, which the runner uses to measure robust accuracy.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> pgd = medsec.attacks.create("pgd", steps=10)
    >>> res = pgd(model, x, y, threat=medsec.ThreatModel("linf", 8 / 255), generator=torch.Generator().manual_seed(0))
    >>> robust = (~res.success).float().mean()  # the fraction of predictions the attack did not change
    >>> bool((res.x_adv - x).abs().max() <= 8 / 255 + 1e-6), res.steps
    (True, 10)
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.projection import project, random_init, steepest_step
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.registry import ATTACKS


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected gradient descent with random start, restarts and early stop.

    Args:
        steps: iterations per restart (default 10).
        step_size: alpha in input units; default 2.5 * eps / steps (Madry et al.).
        random_start: start at a uniform random point of the ball (default True).
        restarts: number of runs; each one after the first restarts at random.
        loss, early_stop: see :class:`~medsec.attacks.base.Attack`.
    """

    name = "pgd"
    iterative = True
    stochastic = True  # with the default random start; instances say exactly
    label_free = True  # runs on the feature deviation of an embedding model (with a random start)

    def __init__(
        self,
        *,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str | Objective = "auto",
        early_stop: bool = False,
    ) -> None:
        super().__init__(loss=loss, early_stop=early_stop)
        if int(steps) < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if int(restarts) < 1:
            raise InputError(f"restarts must be >= 1, got {restarts}")
        if step_size is not None and not float(step_size) > 0:
            raise InputError(f"step_size must be > 0, got {step_size}")
        self.steps = int(steps)
        self.step_size = None if step_size is None else float(step_size)
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.stochastic = self.random_start or self.restarts > 1

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        n = x.shape[0]
        if self.restarts == 1:  # nothing to select: skip the bookkeeping forward pass
            everyone = torch.arange(n, device=x.device)
            return self._one_run(problem, x, everyone, random=self.random_start, generator=generator)
        best = x.clone()
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        todo = torch.arange(n, device=x.device)
        steps_run = 0
        for r in range(self.restarts):
            if r > 0 and self.early_stop:
                todo = todo[~best_success[todo]]
                if todo.numel() == 0:
                    break
            x_adv, steps = self._one_run(problem, x[todo], todo, random=self.random_start or r > 0, generator=generator)
            steps_run = max(steps_run, steps)
            logits = problem.logits(x_adv, todo)
            loss, success = problem.loss(logits, todo), problem.success(logits, todo)
            better = (success & ~best_success[todo]) | ((success == best_success[todo]) & (loss > best_loss[todo]))
            if r == 0:
                better = torch.ones_like(better)
            idx = todo[better]
            best[idx] = x_adv[better]
            best_loss[idx] = loss[better].to(best_loss.dtype)
            best_success[idx] = success[better]
        return best, steps_run

    def _one_run(
        self,
        problem: Problem,
        x0: torch.Tensor,
        idx: torch.Tensor,
        random: bool,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, int]:
        eps, norm = problem.threat.eps, problem.threat.norm
        alpha = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        x_adv = problem.clamp(x0 + random_init(x0, norm, eps, generator)) if random else x0.clone()
        active = torch.arange(x0.shape[0], device=x0.device)  # positions in x0 still updated
        steps = 0
        n = x0.shape[0]
        for _ in range(self.steps):
            full = active.numel() == n
            xa = x_adv if full else x_adv[active]
            _, grad, logits = problem.loss_and_grad(xa, None if full and idx.numel() == problem.labels.shape[0] else idx[active])
            if self.early_stop:
                keep = ~problem.success(logits, idx[active])
                if not keep.all():
                    active, xa, grad = active[keep], xa[keep], grad[keep]
                    if active.numel() == 0:
                        break
            steps += 1
            x_new = xa + alpha * steepest_step(grad, norm)
            base = x0 if active.numel() == n else x0[active]
            x_new = problem.clamp(base + project(x_new - base, norm, eps))
            if active.numel() == n:
                x_adv = x_new
            else:
                x_adv = x_adv.index_copy(0, active, x_new)
        return x_adv, steps
