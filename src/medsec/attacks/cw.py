"""C&W-L2, the Carlini & Wagner L2 attack (Carlini & Wagner, "Towards Evaluating the
Robustness of Neural Networks", IEEE S&P 2017).

Threat model: white-box, minimum-norm L2 (untargeted or targeted), inside the image
bounds. The attack minimises ||delta||_2^2 + c * f(x + delta) over a tanh
reparameterisation of the box, x + delta = lo + (hi - lo) * (tanh(w) + 1) / 2 (the
model's bounds), with Adam on w only. f is the paper's f6 margin loss on the head's
signed margin (:func:`~medsec.objectives.signed_margins`: the logit margin of the label
for multiclass heads, the signed logit (2y - 1) z for single-logit binary heads and the
weakest label's signed logit for multi-label heads): untargeted
f = max(margin_y, -kappa), targeted f = max(-margin_t, -kappa). The constant c is
found per sample by binary search (up x10 while no adversarial has been found, then
bisection), and the smallest-L2 adversarial seen over all iterations is kept. A sample
for which no adversarial was found is returned unchanged. ``result.extras["cw_const"]``
holds per sample the smallest c that found an adversarial (NaN: none did). As a minimum-norm attack it
runs once per sweep; the result of a call is projected onto the eps-ball.

Success is the objective's success test (prediction differs from the label, or equals
the target), and with ``kappa > 0`` the margin must also exceed ``kappa``.

Two changes to the reference optimiser make 100 iterations per binary-search step
enough (the paper used up to 10,000). (1) ``schedule="warmup_cosine"`` warms Adam's
step size up linearly over the first ``steps // 10`` iterations and anneals it with a
cosine: Adam's first steps move every coordinate by about ``lr`` whatever the gradient,
which on a 3x28x28 image is an L2 jump of ~0.2 that overshoots nearby boundaries and
also fools the binary search into lowering c; the annealing lets the iterates settle on
the boundary. ``schedule="constant"`` is the reference (and torchattacks') optimiser; it
is better for a single, fixed c (``binary_search_steps=1``), where a large c first
throws the iterate far across the boundary and the constant step brings it back.
``"auto"`` (default) uses ``warmup_cosine`` with a binary search, ``constant`` without.
(2) ``abort_early`` is per sample: a sample leaves the batch (and costs no more
gradients) for the rest of a binary-search step when, over a window of ``steps // 10``
iterations, either it has no adversarial yet and its lowest loss fell by less than 1%
(c is too small; the search will raise it), or it has one and its smallest adversarial
L2 shrank by less than 0.1% in two windows in a row (the search will lower c); in the
last binary-search step samples with an adversarial run all ``steps``. The reference
code instead stops the whole batch when its summed loss stalls, which for one sample
(or a large c) ends the step right after the iterate first crosses the boundary, while
Adam's momentum makes the loss rise, instead of shrinking the perturbation; the
per-sample rule also keeps a sample's result independent of the rest of the batch.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> cw = medsec.attacks.create("cw", steps=20, binary_search_steps=3)  # defaults: 100 and 9
    >>> res = cw(model, x, y, threat=medsec.ThreatModel("l2", 0.5))
    >>> res.success.tolist(), bool((res.norms["l2"] <= 0.5 + 1e-6).all())
    ([True, True, True, True], True)
"""

from __future__ import annotations

import math

import torch

from medsec.attacks.base import Attack, Problem
from medsec.errors import InputError
from medsec.objectives import signed_margins
from medsec.registry import ATTACKS

_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
SCHEDULES = ("auto", "warmup_cosine", "constant")
# abort_early: per window of steps // 10 iterations, the relative decrease that keeps a
# sample going: of the loss while it has no adversarial, of its smallest adversarial L2
# (within ABORT_PATIENCE windows) once it has one
ABORT_TOL_FAILED = 1e-2
ABORT_TOL_FOUND = 1e-3
ABORT_PATIENCE = 2


@ATTACKS.register("cw")
class CarliniWagnerL2(Attack):
    """Carlini & Wagner L2 attack with a per-sample binary search on c.

    Args:
        steps: Adam iterations per binary-search step (default 100).
        binary_search_steps: binary-search steps on c (default 9).
        initial_const: the first c (default 1e-2).
        lr: Adam learning rate on w (default 0.01).
        kappa: confidence margin (default 0).
        abort_early: stop a binary-search step for samples whose loss stalls (default True).
        schedule: Adam step-size schedule, ``"auto"`` (default), ``"warmup_cosine"`` or
            ``"constant"``.
    """

    name = "cw"
    segmentation = False  # class-boundary attack: no segmentation variant
    norms = ("l2",)
    minimum_norm = True

    def __init__(
        self,
        *,
        steps: int = 100,
        binary_search_steps: int = 9,
        initial_const: float = 1e-2,
        lr: float = 0.01,
        kappa: float = 0.0,
        abort_early: bool = True,
        schedule: str = "auto",
    ) -> None:
        super().__init__()
        if int(steps) < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if int(binary_search_steps) < 1:
            raise InputError(f"binary_search_steps must be >= 1, got {binary_search_steps}")
        if not float(initial_const) > 0:
            raise InputError(f"initial_const must be > 0, got {initial_const}")
        if not float(lr) > 0:
            raise InputError(f"lr must be > 0, got {lr}")
        if not float(kappa) >= 0:
            raise InputError(f"kappa must be >= 0, got {kappa}")
        if schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.steps = int(steps)
        self.binary_search_steps = int(binary_search_steps)
        self.initial_const = float(initial_const)
        self.lr = float(lr)
        self.kappa = float(kappa)
        self.abort_early = bool(abort_early)
        self.schedule = schedule

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        n, dev, dtype = x.shape[0], x.device, x.dtype
        lo, hi = problem.bounds
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        # shrink by 1e-6 (as the reference code) so pixels on the bounds can still move
        w0 = torch.atanh(((x - mid) / half).clamp(-1.0, 1.0) * (1 - 1e-6))

        def full(value: float) -> torch.Tensor:
            return torch.full((n,), value, dtype=dtype, device=dev)

        const, lower, upper = full(self.initial_const), full(0.0), full(math.inf)
        best_l2, best_adv = full(math.inf), x.clone()
        check_every = max(self.steps // 10, 1)
        steps_run = 0
        for bs in range(self.binary_search_steps):
            last_search_step = bs == self.binary_search_steps - 1
            w = w0.clone()
            m, v = torch.zeros_like(w), torch.zeros_like(w)
            found = torch.zeros(n, dtype=torch.bool, device=dev)  # an adversarial in this step
            step_l2 = full(math.inf)  # smallest successful L2 of this step
            loss_min, loss_window = full(math.inf), full(math.inf)  # for abort_early
            l2_min, waits = full(math.inf), torch.zeros(n, dtype=torch.long, device=dev)
            active = torch.arange(n, device=dev)
            for it in range(self.steps):
                everyone = active.numel() == n
                wa = w if everyone else w[active]
                xa, l2, loss, grad, success = self._step(
                    problem, wa, x if everyone else x[active], active, const[active], mid, half
                )
                steps_run += 1
                # keep the smallest successful perturbation seen (at the pre-update iterate)
                improve = success & (l2 < best_l2[active])
                if improve.any():
                    idx = active[improve]
                    best_l2[idx] = l2[improve]
                    best_adv[idx] = xa[improve]
                found[active[success]] = True
                step_l2[active] = torch.where(success, torch.minimum(step_l2[active], l2), step_l2[active])
                # Adam on w (torch.optim.Adam's update, per coordinate)
                ma, va = (m, v) if everyone else (m[active], v[active])
                ma = ma.lerp(grad, 1 - _BETAS[0])
                va = va * _BETAS[1] + (1 - _BETAS[1]) * grad * grad
                t = it + 1
                denom = (va.sqrt() / math.sqrt(1 - _BETAS[1] ** t)) + _ADAM_EPS
                wa = wa - (self._lr(it) / (1 - _BETAS[0] ** t)) * ma / denom
                if everyone:
                    w, m, v = wa, ma, va
                else:
                    w = w.index_copy(0, active, wa)
                    m = m.index_copy(0, active, ma)
                    v = v.index_copy(0, active, va)
                if not self.abort_early:
                    continue
                loss_window[active] = torch.minimum(loss_window[active], loss)
                if it % check_every or it == 0:
                    if it == 0:
                        loss_min[active] = loss
                        loss_window[active] = math.inf
                    continue
                # no adversarial yet: stop when the lowest loss of the window is not 1%
                # below the lowest before it (c is too small; the search raises it)
                low, win = loss_min[active], loss_window[active]
                stalled = ~found[active] & (win > low - ABORT_TOL_FAILED * low.abs())
                loss_min[active] = torch.minimum(low, win)
                loss_window[active] = math.inf
                # adversarial found: stop when its smallest L2 has not shrunk by 0.1% in
                # ABORT_PATIENCE windows, unless this is the last binary-search step
                l2_now, l2_low = step_l2[active], l2_min[active]
                shrunk = l2_now < l2_low * (1 - ABORT_TOL_FOUND)
                waits[active] = torch.where(shrunk | ~found[active], 0, waits[active] + 1)
                l2_min[active] = torch.minimum(l2_low, l2_now)
                if not last_search_step:
                    stalled |= found[active] & (waits[active] >= ABORT_PATIENCE)
                if stalled.any():
                    active = active[~stalled]
                    if active.numel() == 0:
                        break
            # binary search on c: down after a success, up (x10 until bracketed) otherwise
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        problem.extras["cw_const"] = upper.where(upper < 1e9, torch.full_like(upper, math.nan)).cpu()
        return best_adv, steps_run

    def _lr(self, it: int) -> float:
        """Adam's step size at iteration ``it`` of a binary-search step."""
        schedule = self.schedule
        if schedule == "auto":
            schedule = "warmup_cosine" if self.binary_search_steps > 1 else "constant"
        if schedule == "constant":
            return self.lr
        warmup = min(1.0, (it + 1) / max(self.steps // 10, 1))
        return self.lr * warmup * 0.5 * (1.0 + math.cos(math.pi * it / self.steps))

    def _step(
        self,
        problem: Problem,
        w: torch.Tensor,
        x: torch.Tensor,
        idx: torch.Tensor,
        const: torch.Tensor,
        mid: float,
        half: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """At w: the image, squared L2 distance, C&W loss, its gradient in w and the
        success flags (all per sample; the loss and success use the EOT average)."""
        labels = problem.labels[idx]
        task = problem.objective.task
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            xa = mid + half * torch.tanh(w)
            l2 = (xa - x).flatten(1).pow(2).sum(dim=1)
            f_sum = logits_sum = None
            for _ in range(problem.eot_samples):
                logits = problem.model(xa)
                problem.count_queries(idx)
                margin = signed_margins(logits, labels, task)
                f = (-margin if problem.targeted else margin).clamp(min=-self.kappa)
                f_sum = f if f_sum is None else f_sum + f
                logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
            assert f_sum is not None and logits_sum is not None
            loss = l2 + const * (f_sum / problem.eot_samples)
            (grad,) = torch.autograd.grad(loss.sum(), w)
        logits = logits_sum / problem.eot_samples
        success = problem.success(logits, idx)
        if self.kappa > 0:
            margin = signed_margins(logits, labels, task)
            success = success & ((margin >= self.kappa) if problem.targeted else (margin <= -self.kappa))
        return xa.detach(), l2.detach(), loss.detach(), grad.detach(), success
