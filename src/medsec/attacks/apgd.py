"""APGD and APGD-T, Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks").

Threat model: white-box, L-inf or L2 ball of radius eps around x, inside the image
bounds; APGD untargeted or targeted, APGD-T untargeted (it uses targeted losses
internally) or targeted with the given target.

APGD is PGD without a step-size parameter (Algorithm 1 of the paper). Per sample:

* the step size starts at eta = 2 eps; the first step is plain steepest ascent, every
  later one adds momentum: z = P(x_k + eta * sign(g)) (L2: eta * g / ||g||_2) and
  x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})) with alpha = 0.75;
* the best point and loss are tracked; at the checkpoints w_j = ceil(p_j N) (p_0 = 0,
  p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), see
  :func:`apgd_checkpoints`) the step size is halved and the iterate restarts from the
  best point when the loss increased in fewer than a fraction rho of the steps since
  the last checkpoint (condition 1), or when neither the step size nor the best loss
  changed since the last checkpoint (condition 2);
* the run starts at a random point of the ball's surface (L-inf: a uniform draw scaled
  to L-inf norm eps; L2: a Gaussian direction of norm eps), as the reference code.

The result per sample is the successful iterate with the highest loss, or the
highest-loss iterate when none succeeded. Restarts keep a success first, then the
highest loss. ``early_stop=True`` drops a sample from the batch as soon as it is broken.

APGD-T (``"apgd_t"``) runs APGD once per target class (the ``n_target_classes`` classes
with the highest clean logits other than the true one; the paper uses 9), maximising
the targeted DLR loss, and keeps per sample the first target that breaks it: a point
broken for one target is not attacked for the next one. It is an untargeted attack
overall (success = the prediction leaves the true class); with a targeted threat it
runs once with the given target. Heads with fewer than 4 classes have no targeted DLR;
APGD-T then uses the targeted margin loss and logs that it did. On binary and
multi-label heads the "target classes" are the labels flipped one at a time (those
with the smallest clean margin first).

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> threat, gen = medsec.ThreatModel("linf", 8 / 255), torch.Generator().manual_seed(0)
    >>> apgd = medsec.attacks.create("apgd", steps=20)
    >>> res = apgd(model, x, y, threat=threat, generator=gen)
    >>> bool((res.x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
    >>> apgd_t = medsec.attacks.create("apgd_t", steps=20, n_target_classes=3)
    >>> res_t = apgd_t(model, x, y, threat=threat, generator=gen)
    >>> res_t.extras["target_loss"]  # 4 classes: the targeted DLR applies
    'dlr'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.projection import normalize_l2, steepest_step
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.objectives.dlr import Dlr
from medsec.objectives.margin import Margin
from medsec.registry import ATTACKS

log = logging.getLogger(__name__)

MOMENTUM = 0.75  # alpha of the paper


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The checkpoints w_j = ceil(p_j * n_iter) <= n_iter of APGD, w_0 = 0 included.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06). The p_j are
    computed exactly (in hundredths) so that e.g. p_3 * 100 = 57 does not round up to 58;
    checkpoints that coincide for small ``n_iter`` appear once.

    Example:
        >>> apgd_checkpoints(100)
        [0, 22, 41, 57, 70, 80, 87, 93, 99]
    """
    if int(n_iter) < 1:
        raise InputError(f"n_iter must be >= 1, got {n_iter}")
    n_iter = int(n_iter)
    points = [0]
    p_prev, p = 0, 22  # p_0, p_1 in hundredths
    while True:
        w = -(-p * n_iter // 100)  # ceil(p / 100 * n_iter), exact
        if w > n_iter:
            return points
        if w > points[-1]:
            points.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)


def _view(x: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (x.dim() - 1)


def random_start(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """APGD's random start perturbation: on the surface of the eps-ball.

    L-inf: u ~ U[-1, 1]^d scaled to ||u||_inf = 1, times eps; L2: a Gaussian direction
    of norm eps (as the reference implementation of the paper).
    """
    dev = generator.device if generator is not None else x.device
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device) - 1
        scale = t.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
        return eps * t / scale.reshape(_view(x))
    d = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    return eps * normalize_l2(d)


@dataclass
class RunResult:
    """The outcome of APGD on a batch: result points, success, the run objective's loss
    and the logits at the result points, and the iterations run."""

    x: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    logits: torch.Tensor
    steps: int


def apgd_run(
    problem: Problem,
    x0: torch.Tensor,
    idx: torch.Tensor,
    *,
    steps: int,
    rho: float = 0.75,
    random: bool = True,
    early_stop: bool = False,
    generator: torch.Generator | None = None,
) -> RunResult:
    """One APGD run (Algorithm 1) on the clean images ``x0`` (labels ``problem.labels[idx]``)."""
    eps, norm = problem.threat.eps, problem.threat.norm
    n, view = x0.shape[0], _view(x0)
    dev = x0.device
    x = problem.clamp(x0 + random_start(x0, norm, eps, generator)) if random else x0.clone()
    loss, grad, logits = problem.loss_and_grad(x, idx)
    succ = problem.success(logits, idx)

    # the result per sample (all n): the best successful iterate so far
    out_x, out_loss, out_logits, out_succ = x.clone(), loss.clone(), logits.clone(), succ.clone()

    # the state of the samples still iterated; pos holds their positions in 0..n-1
    pos = torch.arange(n, device=dev)
    x_prev = x
    best_x, best_loss, best_grad, best_logits = x.clone(), loss.clone(), grad.clone(), logits.clone()
    eta = torch.full((n,), 2.0 * eps, dtype=x.dtype, device=dev)
    prev_loss = loss.clone()
    n_up = torch.zeros(n, dtype=torch.long, device=dev)  # loss increases since the last checkpoint
    reduced = torch.zeros(n, dtype=torch.bool, device=dev)  # eta halved at the last checkpoint
    best_at_check = loss.clone()

    def keep_only(keep: torch.Tensor) -> None:
        nonlocal pos, x, x_prev, grad, best_x, best_loss, best_grad, best_logits
        nonlocal eta, prev_loss, n_up, reduced, best_at_check
        pos, x, x_prev, grad = pos[keep], x[keep], x_prev[keep], grad[keep]
        best_x, best_loss, best_grad, best_logits = best_x[keep], best_loss[keep], best_grad[keep], best_logits[keep]
        eta, prev_loss, n_up = eta[keep], prev_loss[keep], n_up[keep]
        reduced, best_at_check = reduced[keep], best_at_check[keep]

    if early_stop and succ.any():
        keep_only(~succ)
    checkpoints = set(apgd_checkpoints(steps)[1:])
    last_check = 0
    steps_run = 0
    for k in range(steps):  # iteration k computes x^(k+1)
        if pos.numel() == 0:
            break
        xo = x0[pos]
        a = 1.0 if k == 0 else MOMENTUM
        z = problem.project(x + eta.reshape(view) * steepest_step(grad, norm), xo)
        x_new = problem.project(x + a * (z - x) + (1.0 - a) * (x - x_prev), xo)
        x_prev, x = x, x_new
        loss, grad, logits = problem.loss_and_grad(x, idx[pos])
        steps_run += 1
        succ = problem.success(logits, idx[pos])

        n_up += (loss > prev_loss).long()
        prev_loss = loss
        up = loss > best_loss
        best_x = torch.where(up.reshape(view), x, best_x)
        best_grad = torch.where(up.reshape(view), grad, best_grad)
        best_logits = torch.where(up.reshape(-1, *([1] * (logits.dim() - 1))), logits, best_logits)
        best_loss = torch.where(up, loss, best_loss)

        better = succ & (~out_succ[pos] | (loss > out_loss[pos]))
        if better.any():
            j = pos[better]
            out_x[j], out_loss[j], out_logits[j] = x[better], loss[better], logits[better]
            out_succ[j] = True

        if k + 1 in checkpoints:
            cond1 = n_up.to(loss.dtype) < rho * (k + 1 - last_check)
            cond2 = ~reduced & (best_loss <= best_at_check)
            halve = cond1 | cond2
            eta = torch.where(halve, eta / 2, eta)
            x = torch.where(halve.reshape(view), best_x, x)
            grad = torch.where(halve.reshape(view), best_grad, grad)
            prev_loss = torch.where(halve, best_loss, prev_loss)  # x^(k+1) is now the best point
            reduced, best_at_check = halve, best_loss.clone()
            n_up = torch.zeros_like(n_up)
            last_check = k + 1

        if early_stop and succ.any():
            keep_only(~succ)

    # samples that never succeeded return their highest-loss iterate
    never = ~out_succ[pos]
    j = pos[never]
    out_x[j], out_loss[j], out_logits[j] = best_x[never], best_loss[never], best_logits[never]
    return RunResult(out_x, out_succ, out_loss, out_logits, steps_run)


def _merge(best: RunResult, res: RunResult, at: torch.Tensor, score_best: torch.Tensor, score: torch.Tensor) -> None:
    """Copy the samples of ``res`` (positions ``at`` of ``best``) that are better: a
    success first, then a higher score."""
    better = (res.success & ~best.success[at]) | ((res.success == best.success[at]) & (score > score_best[at]))
    j = at[better]
    best.x[j], best.success[j], best.logits[j] = res.x[better], res.success[better], res.logits[better]
    best.loss[j] = res.loss[better]
    score_best[j] = score[better]


def sub_problem(problem: Problem, objective: Objective, labels: torch.Tensor, targeted: bool) -> Problem:
    """A problem with another objective and labels that shares ``problem``'s query count."""
    sub = Problem(
        problem.model,
        objective,
        labels,
        targeted,
        problem.threat,
        problem.bounds,
        eot_samples=problem.eot_samples,
        extras=problem.extras,
    )
    sub.queries = problem.queries
    return sub


class TowardsTarget(Objective):
    """An untargeted problem attacked through a targeted loss (APGD-T).

    The labels are ``stack([y, t], dim=1)``: the loss is ``target_loss(logits, y, t)``,
    success is the judge's untargeted success against the true label ``y``.
    """

    name = "towards_target"

    def __init__(
        self, judge: Objective, target_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    ):
        super().__init__(judge.task)
        self.judge = judge
        self.target_loss = target_loss

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        return self.target_loss(logits, y[:, 0], y[:, 1])

    def success(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        return self.judge.success(logits, y[:, 0], False)


@ATTACKS.register("apgd")
class APGD(Attack):
    """Auto-PGD: momentum PGD with a step size adapted per sample at checkpoints.

    Args:
        steps: iterations N per run (paper: 100).
        restarts: runs per sample (each one starts at a new random point).
        loss: objective to maximise: ``"auto"`` (CE for multiclass heads, i.e. APGD-CE;
            BCE for binary and multi-label heads), ``"ce"``, ``"dlr"`` (APGD-DLR),
            ``"margin"``, any objective.
        rho: the condition-1 threshold (paper: 0.75).
        random_start: start at a random point (paper); ``False`` starts at x.
        early_stop: see :class:`~medsec.attacks.base.Attack`.
    """

    name = "apgd"
    iterative = True
    stochastic = True  # with the default random start; instances say exactly

    def __init__(
        self,
        *,
        steps: int = 100,
        restarts: int = 1,
        loss: str | Objective = "auto",
        rho: float = 0.75,
        random_start: bool = True,
        early_stop: bool = False,
    ) -> None:
        super().__init__(loss=loss, early_stop=early_stop)
        if int(steps) < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if int(restarts) < 1:
            raise InputError(f"restarts must be >= 1, got {restarts}")
        if not 0.0 < float(rho) <= 1.0:
            raise InputError(f"rho must be in (0, 1], got {rho}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.rho = float(rho)
        self.random_start = bool(random_start)
        self.stochastic = self.random_start or self.restarts > 1

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        res = self._restarts(problem, x, torch.arange(x.shape[0], device=x.device), generator)
        return res.x, res.steps

    def _restarts(
        self, problem: Problem, x0: torch.Tensor, idx: torch.Tensor, generator: torch.Generator | None
    ) -> RunResult:
        """``restarts`` APGD runs on ``x0`` (labels ``problem.labels[idx]``); per sample a
        success first, then the highest loss. Steps add up over the runs."""
        best: RunResult | None = None
        todo = torch.arange(x0.shape[0], device=x0.device)
        steps = 0
        for r in range(self.restarts):
            if best is not None and self.early_stop:
                todo = todo[~best.success[todo]]
                if todo.numel() == 0:
                    break
            res = apgd_run(
                problem,
                x0[todo],
                idx[todo],
                steps=self.steps,
                rho=self.rho,
                random=self.random_start or r > 0,
                early_stop=self.early_stop,
                generator=generator,
            )
            steps += res.steps
            if best is None:
                best = res
            else:
                _merge(best, res, todo, best.loss, res.loss)
        assert best is not None
        best.steps = steps
        return best


@ATTACKS.register("apgd_t")
class APGDT(APGD):
    """APGD-T: APGD with the targeted DLR loss over the top target classes.

    Args:
        steps: iterations N per run and target class (paper: 100).
        restarts: runs per sample and target class (each one starts at a new random point).
        n_target_classes: how many target classes to try (paper: 9).
        loss: the objective whose targeted form is maximised: ``"auto"`` (default: the
            targeted DLR of the paper, the targeted margin where DLR does not apply),
            ``"dlr"``, or any objective.
        rho: the condition-1 threshold (paper: 0.75).
        random_start: start at a random point (paper); ``False`` starts at x.
        early_stop: see :class:`~medsec.attacks.base.Attack`.
    """

    name = "apgd_t"
    segmentation = False  # targeted DLR needs class logits

    def __init__(
        self,
        *,
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        loss: str | Objective = "auto",
        rho: float = 0.75,
        random_start: bool = True,
        early_stop: bool = False,
    ) -> None:
        super().__init__(
            steps=steps, restarts=restarts, loss=loss, rho=rho, random_start=random_start, early_stop=early_stop
        )
        if int(n_target_classes) < 1:
            raise InputError(f"n_target_classes must be >= 1, got {n_target_classes}")
        self.n_target_classes = int(n_target_classes)

    def _target_objective(self, problem: Problem, num_classes: int) -> Objective:
        """The objective whose targeted form APGD-T maximises: the targeted DLR for
        ``"auto"`` and ``"dlr"``, the targeted margin where DLR does not apply (binary or
        multi-label heads, fewer than 4 classes), else the given objective."""
        obj, task = problem.objective, problem.objective.task
        auto = isinstance(self.loss, str) and self.loss == "auto"
        chosen: Objective = obj
        if auto or isinstance(obj, Dlr):
            if task == "multiclass" and num_classes >= 4:
                chosen = obj if isinstance(obj, Dlr) else Dlr(task)
            else:
                chosen = Margin(task)
                why = (
                    f"the targeted DLR loss needs >= 4 classes and the model has {num_classes}"
                    if task == "multiclass"
                    else f"DLR does not apply to {task} heads"
                )
                level = logging.INFO if task != "multiclass" else logging.WARNING
                log.log(level, "apgd_t: %s; using the targeted margin loss instead", why)
        problem.extras["target_loss"] = chosen.name
        return chosen

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        n = x.shape[0]
        everyone = torch.arange(n, device=x.device)
        task = problem.objective.task
        clean = problem.logits(x, everyone)  # picks the target classes (one query)
        num_classes = clean.shape[1] if task == "multiclass" else 2  # (only DLR's class count matters)
        chosen = self._target_objective(problem, num_classes)
        if problem.targeted:  # the given target, one targeted APGD
            sub = problem if chosen is problem.objective else sub_problem(problem, chosen, problem.labels, True)
            res = self._restarts(sub, x, everyone, generator)
            return res.x, res.steps

        target_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
        if isinstance(chosen, Dlr):
            target_loss = chosen.targeted_loss
        else:

            def targeted_form(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return chosen.loss(logits, t, True)

            target_loss = targeted_form

        pair = TowardsTarget(problem.objective, target_loss)
        y = problem.labels
        best = RunResult(
            x.clone(),
            torch.zeros(n, dtype=torch.bool, device=x.device),
            torch.full((n,), float("-inf"), device=x.device),
            clean.clone(),
            0,
        )
        score = torch.full((n,), float("-inf"), device=x.device)  # the problem's own loss
        steps = 0
        for t in self._targets(clean, y, task):
            todo = everyone[~best.success]  # the first success per sample is kept
            if todo.numel() == 0:
                break
            sub = sub_problem(problem, pair, torch.stack([y, t], dim=1), False)
            res = self._restarts(sub, x[todo], todo, generator)
            steps += res.steps
            _merge(best, res, todo, score, problem.loss(res.logits, todo).to(score.dtype))
        return best.x, steps

    def _targets(self, clean: torch.Tensor, y: torch.Tensor, task: str) -> list[torch.Tensor]:
        """The target labels, one tensor per run: the classes with the highest clean
        logits except the true one (multiclass), or the labels flipped one at a time,
        smallest clean margin first (binary, multi-label)."""
        if task == "multiclass":
            others = clean.scatter(1, y.long()[:, None], float("-inf"))
            k = min(self.n_target_classes, clean.shape[1] - 1)
            order = others.argsort(dim=1, descending=True)[:, :k]
            return [order[:, j] for j in range(k)]
        if task == "binary":
            return [1 - y]
        margins = (2 * y.to(clean.dtype) - 1) * clean
        k = min(self.n_target_classes, clean.shape[1])
        order = margins.argsort(dim=1)[:, :k]
        rows = torch.arange(y.shape[0], device=y.device)
        targets = []
        for j in range(k):
            t = y.clone()
            t[rows, order[:, j]] = 1 - t[rows, order[:, j]]
            targets.append(t)
        return targets
