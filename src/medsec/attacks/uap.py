"""Universal adversarial perturbations (Moosavi-Dezfooli, Fawzi, Fawzi & Frossard,
CVPR 2017, "Universal adversarial perturbations"), with DeepFool (Moosavi-Dezfooli,
Fawzi & Frossard, CVPR 2016) as the per-image step.

Threat model: white-box, untargeted; ONE perturbation v, shared by every image, in the
L-inf or L2 ball of radius eps (``xi`` in the paper) and added to any image as
clamp(x + v) inside the image bounds. ``fit`` computes v on a fit set (e.g. training
images); the interesting number is its fooling rate on held-out images (transfer).

Algorithm 1 of the paper: pass over the fit set in random order; for each point x_i that
v does not fool yet, compute the minimal (L2) DeepFool perturbation dv_i of x_i + v and
set v <- P_{p,eps}(v + dv_i) (only when dv_i does fool x_i + v); stop after the pass on
which the fooling rate on the fit set reaches ``fooling_target`` (1 - delta in the
paper) or after ``max_epochs`` passes. DeepFool is the L2 version of the paper for both
norms; the L-inf constraint comes from the projection P, as in the paper and in ART.

Batching (a deliberate approximation, for speed): points are taken ``batch_size`` at a
time; DeepFool runs on the whole mini-batch of not-yet-fooled points at x + v with v
fixed, then the per-sample updates v <- P(v + dv_i) are applied one after another in
the pass order. Each dv_i is thus computed at the v of the start of its mini-batch, not
at the v left by the previous point. ``batch_size=1`` is the exact sequential algorithm
of the paper. The trade-off, measured on BloodMNIST (the shipped small CNN of the test
suite, L-inf 8/255, 300 fit images, ``num_classes=3``, 500 test images, one CPU thread on
a shared machine): one pass with ``batch_size=1`` fools 20.3% of the fit set (test
accuracy 94.8% -> 79.6%) in 16 s; with ``batch_size=32`` one pass fools 21.0% (-> 79.6%)
in 7.5 s and three passes 38.7% (-> 62.8%) in 17.5 s: per second of compute the batched
variant is stronger here (and much faster on a GPU).

"Fooled" is the objective's success test against the labels given: pass the clean
predictions as ``y`` for the paper's fooling rate (prediction changed); with the true
labels, points the model already gets wrong count as fooled (robust accuracy).

DeepFool is medsec's one DeepFool engine (:func:`medsec.attacks.deepfool.deepfool_search`,
the same as the ``deepfool`` attack, L2 steps): every iterate is clamped to the image
bounds, and dv_i is the last iterate minus x_i + v, so an update never pushes a pixel of
x_i outside the bounds (ART's clip(x_i + v + dv) - x_i). Heads as in
:mod:`medsec.attacks.deepfool`: multiclass heads use DeepFool over the ``num_classes``
most likely classes (those with the highest logits at x_i + v); a binary single-logit
head uses the closed-form one-logit step r = -(m + 1e-4) / ||grad m||^2 * grad m on the
signed logit m = (2y - 1) z; a multi-label head flips one label: the step goes to the
label whose linearised distance to its boundary, |m_k| / ||grad m_k||, is smallest among
the ``num_classes`` labels with the smallest margins, re-chosen at every DeepFool
iteration (success = any label flipped, the objective's test). With ``eot_samples`` > 1
(:func:`medsec.attacks.adaptive.adaptive`) DeepFool's boundaries and gradients are EOT
averages, as in ``deepfool``.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(24, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions: the paper's fooling rate
    >>> (x_train, y_train), x_test = (x[:16], y[:16]), x[16:]
    >>> uap = medsec.attacks.create("uap", max_epochs=5, batch_size=8)
    >>> threat = medsec.ThreatModel("linf", 8 / 255)
    >>> delta = uap.fit(model, x_train, y_train, threat, generator=torch.Generator().manual_seed(0))
    >>> x_adv = uap.apply(x_test, delta)  # the same delta on unseen images
    >>> delta.shape, uap.fooling_rate_ >= uap.fooling_target  # on the fit set
    (torch.Size([1, 3, 28, 28]), True)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from medsec.attacks.base import Attack, Problem, attack_mode, model_task
from medsec.attacks.deepfool import ClassBoundaries, deepfool_search
from medsec.attacks.projection import project
from medsec.errors import InputError
from medsec.objectives import Objective, resolve
from medsec.registry import ATTACKS
from medsec.types import ThreatModel
from medsec.validation import check_images, check_positive_int

_EVAL_CHUNK = 512  # images per forward pass when measuring the fooling rate


class UniversalAttack(Attack):
    """Base class of universal attacks: one perturbation for a whole set of images.

    Besides the normal call (which fits on the given batch and returns
    clamp(x + delta), "universal over this batch"), a universal attack has
    :meth:`fit` (compute delta on a fit set, scikit-learn style) and :meth:`apply`.
    After a fit (or a call) the attack holds ``delta_`` (shape (1, C, H, W)),
    ``fooling_rate_`` (success rate on the fit set) and ``steps_``.

    Subclasses implement ``_fit(problem, x, generator) -> (delta, steps)``. The fitted state
    is private (``_fitted``), so :meth:`params` reports the constructor parameters only.
    """

    universal: ClassVar[bool] = True
    iterative: ClassVar[bool] = False
    _fitted: dict[str, Any]  # the state of the last fit (set by fit or a call)

    # ------------------------------------------------------------------ fitted state
    @property
    def delta_(self) -> torch.Tensor:
        """The universal perturbation of the last fit, (1, C, H, W)."""
        state: dict[str, Any] | None = getattr(self, "_fitted", None)
        if state is None:
            raise AttributeError(f"{type(self).__name__} is not fitted yet; call fit(model, x, y, threat) first")
        delta: torch.Tensor = state["delta"]
        return delta

    @property
    def fooling_rate_(self) -> float:
        """Fraction of the fit set that ``delta_`` fools (the objective's success test)."""
        state = getattr(self, "_fitted", None)
        if state is None:
            raise AttributeError(f"{type(self).__name__} is not fitted yet; call fit(model, x, y, threat) first")
        return float(state["fooling_rate"])

    @property
    def steps_(self) -> int:
        """Passes (uap) or updates (uap_sgd) the last fit ran."""
        state = getattr(self, "_fitted", None)
        if state is None:
            raise AttributeError(f"{type(self).__name__} is not fitted yet; call fit(model, x, y, threat) first")
        return int(state["steps"])

    # ------------------------------------------------------------------ API
    @staticmethod
    def apply(x: torch.Tensor, delta: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """clamp(x + delta) to ``bounds``: the universal perturbation added to every image.

        ``delta`` may be (1, C, H, W) or (C, H, W); it is moved to x's device and dtype.
        """
        if delta.dim() == x.dim() - 1:
            delta = delta.unsqueeze(0)
        return (x + delta.to(device=x.device, dtype=x.dtype)).clamp(*bounds)

    def fit(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel | None = None,
        generator: torch.Generator | None = None,
        target: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Compute the universal perturbation on the fit set ``x, y``.

        The model runs in eval mode with frozen parameters and is restored afterwards.

        Args:
            model: the classifier (a medsec Classifier or a plain multiclass module).
            x: fit images (N, C, H, W) in the model's bounds.
            y: their labels (true labels, or clean predictions for the paper's
                fooling rate).
            threat: norm and eps of the perturbation (default L-inf 8/255).
            generator: the source of randomness (visit order, random init).
            target: for a targeted threat (attacks with ``supports_targeted``): target
                labels (N,) or one class index for all points.

        Returns:
            delta, shape (1, C, H, W), dtype and device of ``x``; also stored as
            ``self.delta_`` with ``self.fooling_rate_`` on the fit set.
        """
        threat = threat if threat is not None else ThreatModel()
        if not isinstance(threat, ThreatModel):
            raise InputError(f"threat must be a medsec.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise InputError(f"attack {self.name!r} supports norms {', '.join(self.norms)}, not {threat.norm!r}")
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(x)
        with attack_mode(model):
            task, num_classes, spec = model_task(model, x)
            check_images(x, spec)
            self._check_task(task)
            labels = self._labels(x, y, threat.targeted, target, task, num_classes)
            x_in = x.detach()
            objective = resolve(self.loss, task).prepare(model, x_in)
            self._check_inputs(x_in, task, num_classes)
            problem = Problem(model, objective, labels, threat.targeted, threat, spec.bounds, eot_samples=self.eot_samples)
            if threat.eps == 0:
                delta, steps = torch.zeros_like(x_in[:1]), 0
            else:
                delta, steps = self._fit(problem, x_in, generator)
            delta = project(delta.detach(), threat.norm, threat.eps).to(dtype=x.dtype)
            rate = float(self._fooled(problem, x_in, delta).float().mean())
        self._fitted = {"delta": delta, "fooling_rate": rate, "steps": steps}
        return delta.clone()

    # ------------------------------------------------------------------ machinery
    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """The normal call: universal over this batch (fit on it, return clamp(x + delta))."""
        delta, steps = self._fit(problem, x, generator)
        delta = project(delta.detach(), problem.threat.norm, problem.threat.eps).to(dtype=x.dtype)
        self._fitted = {
            "delta": delta,
            "fooling_rate": float(self._fooled(problem, x, delta).float().mean()),
            "steps": steps,
        }
        return problem.clamp(x + delta), max(steps, 1)

    def _fit(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    @staticmethod
    def _fooled(problem: Problem, x: torch.Tensor, delta: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Per-point success of clamp(x + delta) (x: the points at ``idx``, or all;
        delta: one perturbation (1, C, H, W) or one per point)."""
        n = x.shape[0]
        if idx is None:
            idx = torch.arange(n, device=x.device)
        out = []
        for s in range(0, n, _EVAL_CHUNK):
            sl = idx[s : s + _EVAL_CHUNK]
            d = delta if delta.shape[0] == 1 else delta[s : s + _EVAL_CHUNK]
            logits = problem.logits(problem.clamp(x[s : s + _EVAL_CHUNK] + d), sl)
            out.append(problem.success(logits, sl))
        return torch.cat(out)

    @staticmethod
    def _order(n: int, shuffle: bool, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        if not shuffle:
            return torch.arange(n, device=device)
        dev = generator.device if generator is not None else torch.device("cpu")
        return torch.randperm(n, generator=generator, device=dev).to(device)


@ATTACKS.register("uap")
class UAP(UniversalAttack):
    """Universal adversarial perturbation by iterated DeepFool (Moosavi-Dezfooli et al. 2017).

    Args:
        fooling_target: stop once this fraction of the fit set is fooled (1 - delta;
            default 0.8, i.e. delta = 0.2 as in the paper).
        max_epochs: passes over the fit set at most (default 10).
        deepfool_steps: DeepFool iterations per point (default 10).
        overshoot: DeepFool overshoot (default 0.02, as in the paper).
        num_classes: candidate classes (or labels) DeepFool considers (default 10).
        batch_size: points per mini-batch (default 32; 1 = the exact sequential algorithm).
        shuffle: visit the fit set in a new random order (from the generator) each pass,
            as in the paper (default True); False keeps the given order (deterministic).
        loss: objective; only its success test ("fooled") is used.
        early_stop: accepted for the common interface and ignored (one perturbation serves
            all points).
    """

    name = "uap"
    supports_targeted = False
    segmentation = False  # DeepFool on class boundaries; segmenters: uap_seg
    stochastic = True  # with the default shuffle; instances say exactly

    def __init__(
        self,
        *,
        fooling_target: float = 0.8,
        max_epochs: int = 10,
        deepfool_steps: int = 10,
        overshoot: float = 0.02,
        num_classes: int = 10,
        batch_size: int = 32,
        shuffle: bool = True,
        loss: str | Objective = "auto",
        early_stop: bool = False,
    ) -> None:
        super().__init__(loss=loss, early_stop=early_stop)
        if not 0.0 <= float(fooling_target) <= 1.0:
            raise InputError(f"fooling_target must lie in [0, 1], got {fooling_target}")
        if not float(overshoot) >= 0:
            raise InputError(f"overshoot must be >= 0, got {overshoot}")
        self.fooling_target = float(fooling_target)
        self.max_epochs = check_positive_int("max_epochs", max_epochs)
        self.deepfool_steps = check_positive_int("deepfool_steps", deepfool_steps)
        self.overshoot = float(overshoot)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.shuffle = bool(shuffle)
        self.stochastic = self.shuffle

    def _fit(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        norm, eps = problem.threat.norm, problem.threat.eps
        n = x.shape[0]
        v = torch.zeros_like(x[:1])
        passes = 0
        for _ in range(self.max_epochs):
            order = self._order(n, self.shuffle, generator, x.device)
            for s in range(0, n, self.batch_size):
                idx = order[s : s + self.batch_size]
                fooled = self._fooled(problem, x[idx], v, idx)
                todo = idx[~fooled]
                if todo.numel() == 0:
                    continue
                dv, ok = self._deepfool(problem, problem.clamp(x[todo] + v), todo)
                for i in ok.nonzero()[:, 0].tolist():  # sequential updates, in pass order
                    v = project(v + dv[i : i + 1], norm, eps)
            passes += 1
            rate = float(self._fooled(problem, x, v).float().mean())
            if rate >= self.fooling_target:
                break
        return v, passes

    # ------------------------------------------------------------------ DeepFool
    def _deepfool(self, problem: Problem, x0: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2 DeepFool (:func:`~medsec.attacks.deepfool.deepfool_search`, the engine of
        ``deepfool``) at the points ``x0`` = clamp(x_i + v), not fooled yet (``idx``: their
        positions in the problem). Returns the perturbations dv_i (the last DeepFool iterate
        minus x0, inside the bounds) and whether each one fools its point."""
        run = deepfool_search(problem, x0, idx, ClassBoundaries(self.num_classes), steps=self.deepfool_steps,
                              overshoot=self.overshoot, norm="l2")
        ok = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
        ok[run.unfooled] = False
        return run.x_adv - x0, ok
