"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate
method to fool deep neural networks", CVPR 2016), and the one DeepFool engine that
``deepfool``, ``uap`` and ``feature_deepfool`` share (:func:`deepfool_search`).

Threat model: white-box, minimum-norm L2 or L-inf, untargeted only (there is no
targeted variant: a targeted threat is refused), inside the image bounds.

The engine. Each iteration linearises the boundaries around the current point x_i and
steps onto the nearest one: with f_k the boundary function of candidate k (negative
while the point is not fooled, 0 on the boundary) and w_k its input gradient, the step
is r = (|f_l| + 1e-4) / ||w_l||_2^2 * w_l (L2) or r = (|f_l| + 1e-4) / ||w_l||_1 *
sign(w_l) (L-inf), l = argmin_k |f_k| / ||w_k||_p* (the dual norm), and
x_{i+1} = clamp(x_i + (1 + overshoot) r) inside the bounds (or, for a budgeted search,
also projected onto the eps-ball around x). Without clamping this is the original's
x + (1 + overshoot) * sum of the steps; clamping every iterate is what torchattacks and
ART do. A sample leaves the batch once it is fooled (one forward pass and one backward
pass per candidate boundary per iteration, for the samples still in). The boundaries
come from :class:`ClassBoundaries` (a classifier's decision boundaries) or
:class:`LevelSet` (the level set D = tau of a label-free loss, for ``feature_deepfool``).

Heads (:class:`ClassBoundaries`): multiclass heads use f_k = z_k - z_y over the
``num_classes`` - 1 other classes with the largest logits at the start point (like the
original's top-k classes). A single-logit binary head has one boundary,
f = -(2y - 1) z (-z for label 1, z for label 0), so each step is the closed-form
projection onto z = 0. **Multi-label heads** are fooled by flipping one label (the
objective's success test: any label differs from y), so every label k is a boundary
f_k = -(2y_k - 1) z_k = -m_k with m_k the signed margin of label k; the candidates are
the ``num_classes`` labels with the smallest margin m_k at the start point (while no
label is flipped, the smallest |z_k|), fixed for the run, and each iteration steps onto
the nearest *linearised* one, argmin_k |m_k| / ||grad m_k||_p* (re-chosen at every
iteration): the label whose boundary is closest in input space, not the one with the
smallest logit (a small |z_k| with a tiny gradient is far away).

``deepfool``: the whole batch is attacked at once; as a minimum-norm attack it runs
once per sweep and the result of a call is projected onto the eps-ball. Samples not
fooled after ``steps`` iterations are returned unchanged.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> df = medsec.attacks.create("deepfool", steps=50, overshoot=0.02)
    >>> res = df(model, x, y, threat=medsec.ThreatModel("l2", 1.0))
    >>> res.success.tolist(), res.steps  # a linear head is fooled in one step
    ([True, True, True, True], 1)
    >>> median_l2 = res.norms["l2"][res.success].median()  # the typical distance to the boundary
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from medsec.attacks.base import Attack, Problem
from medsec.errors import InputError
from medsec.registry import ATTACKS


class Boundaries(Protocol):
    """What :func:`deepfool_search` steps onto: boundary values and their gradients."""

    def __call__(self, problem: Problem, x: torch.Tensor, idx: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At ``x`` (the samples ``idx`` of the problem): f (A, K), negative while not
        fooled; w (A, K, *x.shape[1:]), the input gradients of f; done (A,) bool, fooled."""
        ...

    def check(self, problem: Problem, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(A,) bool: whether the samples ``idx`` at ``x`` are fooled (one forward pass)."""
        ...


class ClassBoundaries:
    """The decision boundaries of a classifier head (multiclass, binary, multi-label),
    candidates chosen at the first call (the start point) and fixed afterwards; EOT
    averages f, w and the logits over ``problem.eot_samples`` forward passes.

    Args:
        num_classes: candidate classes (labels, for multi-label heads), clamped to the
            head's size; multiclass heads use ``num_classes - 1`` other classes (at least 1).
    """

    def __init__(self, num_classes: int = 10) -> None:
        if int(num_classes) < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.candidates: torch.Tensor | None = None  # (problem size, K) once chosen

    def __call__(self, problem: Problem, x: torch.Tensor, idx: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        task = problem.objective.task
        labels = problem.labels[idx]
        f_sum = w_sum = logits_sum = None
        cand = None if self.candidates is None else self.candidates[idx]
        for _ in range(problem.eot_samples):
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = problem.model(xg)
                problem.count_queries(idx)
                if cand is None:
                    cand = self.choose(logits.detach(), labels, task)
                f = self.values(logits, labels, cand, task)
                grads = [
                    torch.autograd.grad(f[:, k].sum(), xg, retain_graph=k < f.shape[1] - 1)[0]
                    for k in range(f.shape[1])
                ]
            w = torch.stack(grads, dim=1)
            f_sum = f.detach() if f_sum is None else f_sum + f.detach()
            w_sum = w if w_sum is None else w_sum + w
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        assert f_sum is not None and w_sum is not None and logits_sum is not None and cand is not None
        if self.candidates is None:
            full = torch.zeros((problem.labels.shape[0], cand.shape[1]), dtype=cand.dtype, device=cand.device)
            self.candidates = full.index_copy(0, idx.to(cand.device), cand)
        k = problem.eot_samples
        return f_sum / k, w_sum / k, problem.success(logits_sum / k, idx)

    def check(self, problem: Problem, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return problem.success(problem.logits(x, idx), idx)

    def choose(self, logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
        """Indices of the candidate boundaries per sample: (B, K)."""
        n = logits.shape[0]
        if task == "binary":
            return torch.zeros((n, 1), dtype=torch.long, device=logits.device)
        if task == "multilabel":  # the smallest signed margins m_k = (2y_k - 1) z_k
            k = min(self.num_classes, logits.shape[1])
            margins = (2.0 * labels.to(logits.dtype) - 1.0) * logits
            return margins.topk(k, dim=1, largest=False).indices
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise InputError(f"DeepFool needs a multiclass head with at least 2 outputs, got {tuple(logits.shape)}")
        k = max(1, min(self.num_classes, logits.shape[1]) - 1)  # num_classes counts the label's class
        others = logits.clone()
        others.scatter_(1, labels.long()[:, None], float("-inf"))
        return others.topk(k, dim=1).indices

    @staticmethod
    def values(logits: torch.Tensor, labels: torch.Tensor, cand: torch.Tensor, task: str) -> torch.Tensor:
        """Boundary functions, negative while the label is kept: (A, K)."""
        if task == "binary":
            z = logits.reshape(logits.shape[0], 1)
            return -(2.0 * labels.to(z.dtype)[:, None] - 1.0) * z
        if task == "multilabel":
            sign = 2.0 * labels.to(logits.dtype).gather(1, cand) - 1.0
            return -sign * logits.gather(1, cand)
        return logits.gather(1, cand) - logits.gather(1, labels.long()[:, None])


class LevelSet:
    """The level set D = tau of the objective's per-sample loss D, a label-free
    "boundary" (one per sample, f = D - tau): a sample is done once D >= tau.

    Args:
        tau: the level (the feature-deviation objective's ``threshold``).
    """

    def __init__(self, tau: float) -> None:
        self.tau = float(tau)

    def __call__(self, problem: Problem, x: torch.Tensor, idx: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, grad, _ = problem.loss_and_grad(x, idx)
        return (loss - self.tau)[:, None], grad[:, None], ~(loss < self.tau)

    def check(self, problem: Problem, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return ~(problem.loss(problem.logits(x, idx), idx) < self.tau)


@dataclass
class DeepFoolRun:
    """What :func:`deepfool_search` returns.

    Attributes:
        x_adv: the last iterate of every sample (those fooled early: their fooling point).
        unfooled: positions (into ``x``) of the samples not known to be fooled.
        steps: iterations run (the most any sample took).
    """

    x_adv: torch.Tensor
    unfooled: torch.Tensor
    steps: int


def deepfool_step(f: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """The step onto the nearest linearised boundary: f (A, K), w (A, K, *shape) -> (A, *shape)."""
    flat = w.flatten(2)
    dual = flat.abs().sum(dim=2) if norm == "linf" else flat.norm(dim=2)
    best = (f.abs() / dual.clamp_min(1e-12)).argmin(dim=1)
    rows = torch.arange(f.shape[0], device=f.device)
    gap, w_l = f[rows, best].abs() + 1e-4, w[rows, best]
    dims = (-1,) + (1,) * (w_l.dim() - 1)
    if norm == "linf":
        return (gap / w_l.flatten(1).abs().sum(1).clamp_min(1e-20)).reshape(dims) * w_l.sign()
    return (gap / w_l.flatten(1).pow(2).sum(1).clamp_min(1e-20)).reshape(dims) * w_l


def deepfool_search(
    problem: Problem,
    x: torch.Tensor,
    idx: torch.Tensor,
    boundaries: Boundaries,
    *,
    steps: int,
    overshoot: float,
    norm: str,
    start: torch.Tensor | None = None,
    project: bool = False,
    final_check: bool = True,
) -> DeepFoolRun:
    """Run DeepFool on the samples ``x`` (the samples ``idx`` of ``problem``).

    Args:
        problem: the attack problem (model, objective, labels, bounds, threat).
        x: the points to fool (A, ...), the centre of the eps-ball when ``project``.
        idx: their positions in the problem (labels, query counts).
        boundaries: :class:`ClassBoundaries`, :class:`LevelSet` or any :class:`Boundaries`.
        steps: maximum iterations.
        overshoot: each step is scaled by 1 + overshoot.
        norm: ``"l2"`` or ``"linf"`` (the step's geometry).
        start: the first iterate (default ``x``).
        project: keep every iterate inside the threat's eps-ball around ``x`` (a budgeted
            search) besides the bounds.
        final_check: after the last iteration, test which samples the last step fooled
            (one forward pass); otherwise those stay in ``unfooled``.
    """
    n = x.shape[0]
    x_adv = (x if start is None else start).clone()
    active = torch.arange(n, device=x.device)  # positions in x not fooled yet
    done_steps = 0
    for _ in range(steps):
        xa = x_adv[active]
        f, w, done = boundaries(problem, xa, idx[active])
        if done.any():
            keep = ~done
            active, xa, f, w = active[keep], xa[keep], f[keep], w[keep]
        if active.numel() == 0:
            break
        done_steps += 1
        x_new = xa + (1 + overshoot) * deepfool_step(f, w, norm)
        x_new = problem.project(x_new, x[active]) if project else problem.clamp(x_new)
        x_adv = x_new if active.numel() == n else x_adv.index_copy(0, active, x_new)
    else:
        if final_check and active.numel():
            active = active[~boundaries.check(problem, x_adv[active], idx[active])]
    return DeepFoolRun(x_adv, active, done_steps)


@ATTACKS.register("deepfool")
class DeepFool(Attack):
    """Batched DeepFool (L2 and L-inf) for multiclass, binary and multi-label heads.

    Args:
        steps: maximum iterations (default 50).
        overshoot: relative overshoot of each step (default 0.02).
        num_classes: candidate classes (labels, for multi-label heads) considered, clamped
            to the head's size (default 10).
    """

    name = "deepfool"
    segmentation = False  # class-boundary attack: no segmentation variant
    norms = ("l2", "linf")
    supports_targeted = False
    minimum_norm = True

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02, num_classes: int = 10) -> None:
        super().__init__()
        if int(steps) < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if not float(overshoot) >= 0:
            raise InputError(f"overshoot must be >= 0, got {overshoot}")
        if int(num_classes) < 2:
            raise InputError(f"num_classes must be >= 2, got {num_classes}")
        self.steps = int(steps)
        self.overshoot = float(overshoot)
        self.num_classes = int(num_classes)

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        everyone = torch.arange(x.shape[0], device=x.device)
        run = deepfool_search(problem, x, everyone, ClassBoundaries(self.num_classes), steps=self.steps,
                              overshoot=self.overshoot, norm=problem.threat.norm)
        x_adv = run.x_adv
        if run.unfooled.numel():
            x_adv[run.unfooled] = x[run.unfooled]  # not fooled: minimum-norm semantics, no perturbation
        return x_adv, run.steps
