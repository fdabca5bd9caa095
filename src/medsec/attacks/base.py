"""The attack contract and the machinery every attack shares.

An attack is called as ``attack(model, x, y, threat=ThreatModel(...), target=None,
generator=None)`` and returns an :class:`~medsec.types.AttackResult`. The base class
enforces the call contract that the registry contract test checks for every attack:

* the input is never mutated; shape, dtype and device are kept;
* the model's train/eval mode and ``requires_grad`` flags are restored (the attack runs
  the model in eval mode, so BatchNorm statistics are untouched) and only input
  gradients are computed;
* the result lies inside the bounds and the eps-ball; eps = 0 returns the input;
* the same ``torch.Generator`` state gives the same result.

Subclasses implement :meth:`Attack._run` on a :class:`Problem`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from medsec.errors import InputError
from medsec.metrics.perturbation import perturbation_norms
from medsec.objectives import Objective, resolve
from medsec.types import AttackResult, InputSpec, ThreatModel
from medsec.validation import check_images, check_labels


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with frozen parameters; restore both on exit."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def model_task(model: nn.Module, x: torch.Tensor) -> tuple[str, int, InputSpec]:
    """The head type, class count and input spec of a model (plain modules: multiclass,
    classes inferred from one forward pass, bounds [0, 1]; a plain module whose output is
    (B, C, H, W) at the input size is a segmenter, one channel = binary sigmoid)."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, InputSpec):
        spec = InputSpec(channels=x.shape[1])
    task = getattr(model, "task", None)
    num_classes = getattr(model, "num_classes", None)
    if task is None or num_classes is None:
        try:
            with torch.no_grad():
                out = model(x[:1])
        except RuntimeError as exc:
            raise InputError(
                f"the model could not run on x of shape {tuple(x.shape)} (wrong channel count or size?): {exc}"
            ) from exc
        if out.dim() == 4 and tuple(out.shape[-2:]) == tuple(x.shape[-2:]):  # dense (B, C, H, W) mask logits
            task, num_classes = "segmentation", max(2, int(out.shape[1]))
        else:
            task, num_classes = "multiclass", int(out.shape[1])
    return str(task), int(num_classes), spec


@dataclass
class Problem:
    """One attack problem: the model, the objective and the labels it is judged on.

    ``labels`` holds the true labels (untargeted) or the targets (targeted); all
    methods take ``idx`` to work on a subset of the batch (early stop, restarts).
    """

    model: nn.Module
    objective: Objective
    labels: torch.Tensor
    targeted: bool
    threat: ThreatModel
    bounds: tuple[float, float]
    queries: torch.Tensor | None = None
    eot_samples: int = 1
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queries = torch.zeros(self.labels.shape[0], dtype=torch.long)

    def count_queries(self, idx: torch.Tensor | None) -> None:
        """Count one model query for every sample of ``idx`` (all samples when None).

        Attacks that call ``problem.model`` directly (e.g. for several gradients from one
        forward pass) call this once per forward so that ``AttackResult.queries`` stays exact.
        """
        assert self.queries is not None
        if idx is None:
            self.queries += 1
        else:
            self.queries[idx.cpu()] += 1

    def logits(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Model output at ``x`` without gradients (counts one query per sample)."""
        self.count_queries(idx)
        with torch.no_grad():
            out: torch.Tensor = self.model(x)
        return out

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Clamp to the bounds and project onto the threat's eps-ball around ``x``."""
        from medsec.attacks.projection import project

        x_adv = self.clamp(x_adv)
        if self.threat.norm in ("linf", "l2"):
            x_adv = self.clamp(x + project(x_adv - x, self.threat.norm, self.threat.eps))
        return x_adv

    def loss_and_grad(
        self, x: torch.Tensor, idx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss, its input gradient and the logits at ``x``."""
        labels = self.labels if idx is None else self.labels[idx]
        x = x.detach().requires_grad_(True)
        loss_sum: torch.Tensor | None = None
        grad_sum: torch.Tensor | None = None
        logits_sum: torch.Tensor | None = None
        for _ in range(self.eot_samples):  # EOT: average over the model's randomness
            with torch.enable_grad():
                logits = self.model(x)
                loss = self.objective.loss(logits, labels, self.targeted)
                (grad,) = torch.autograd.grad(loss.sum(), x)
            self.count_queries(idx)
            if self.eot_samples == 1:
                return loss.detach(), grad.detach(), logits.detach()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            grad_sum = grad if grad_sum is None else grad_sum + grad
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        assert loss_sum is not None and grad_sum is not None and logits_sum is not None
        n = self.eot_samples
        return loss_sum / n, grad_sum / n, logits_sum / n

    def loss(self, logits: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        labels = self.labels if idx is None else self.labels[idx]
        return self.objective.loss(logits, labels, self.targeted).detach()

    def success(self, logits: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        labels = self.labels if idx is None else self.labels[idx]
        return self.objective.success(logits, labels, self.targeted)

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(*self.bounds)


class Attack:
    """Base class of all evasion attacks.

    Class attributes state the capabilities: ``norms`` (supported threat norms),
    ``supports_targeted``, ``needs_gradients``, ``stochastic`` (uses randomness; the class
    states its default, and an instance whose parameters decide it, e.g. PGD without a
    random start, sets its own value in ``__init__``), ``iterative`` (honours
    ``early_stop``), ``minimum_norm`` (finds the smallest perturbation it can; one run is
    evaluated at every eps of a sweep, and the result of a call is projected onto the
    eps-ball) and ``universal`` (one perturbation for a set of images, fitted with ``fit``;
    see :class:`~medsec.attacks.uap.UniversalAttack`). The settings an attack runs in:
    ``classification`` (classifier heads), ``segmentation`` (segmenters) and
    ``label_free`` (embedding models, ``task = "embedding"``, with the label-free
    :class:`~medsec.objectives.FeatureDeviation` objective and ``y = torch.arange(n)``;
    see :class:`~medsec.objectives.EmbeddingAsLogits`). ``eot_samples`` > 1 averages every loss and
    gradient over that many forward passes (EOT, for randomised models); set it through
    :func:`medsec.attacks.adaptive.adaptive`.

    Args:
        loss: objective name (``"ce"``, ``"margin"``, ``"bce"``), an
            :class:`~medsec.objectives.Objective`, or ``"auto"`` (CE for multiclass
            heads, BCE for binary and multi-label heads).
        early_stop: evaluation mode: stop updating samples as soon as they are broken
            (off by default; the runner switches it on to measure robust accuracy).

    The parameters are keyword-only, here and in every attack.
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    supports_targeted: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = True
    stochastic: bool = False  # a class default; an instance may set its own value (see above)
    iterative: ClassVar[bool] = False
    minimum_norm: ClassVar[bool] = False
    universal: ClassVar[bool] = False
    segmentation: ClassVar[bool] = True  # False: needs class decision boundaries (DeepFool, C&W, ...)
    classification: ClassVar[bool] = True  # False: segmenters only (uap_seg) or label-free only (feature_cw)
    label_free: ClassVar[bool] = False  # True: runs on embedding models with the feature-deviation objective
    eot_samples: int = 1

    def __init__(self, *, loss: str | Objective = "auto", early_stop: bool = False) -> None:
        self.loss = loss
        self.early_stop = bool(early_stop)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({params})"

    def _settings(self) -> dict[str, Any]:
        """The public instance attributes: the constructor parameters (and ``eot_samples``
        once :func:`~medsec.attacks.adaptive.adaptive` set it), not an instance's own
        ``stochastic`` value, which is a capability, not a parameter."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "stochastic"}

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel | None = None,
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        return self.sweep(model, x, y, [threat if threat is not None else ThreatModel()], target, generator)[0]

    def sweep(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threats: list[ThreatModel],
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> list[AttackResult]:
        """Attack once per threat model (same norm and mode) and return one result each.

        Minimum-norm attacks (``minimum_norm = True``) run once and are evaluated at every
        eps by projecting their perturbation onto each eps-ball; the others run per eps.
        """
        if not threats:
            raise InputError("sweep needs at least one threat model")
        for threat in threats:
            if not isinstance(threat, ThreatModel):
                raise InputError(f"threat must be a medsec.ThreatModel, got {type(threat).__name__}")
            if threat.norm not in self.norms:
                raise InputError(f"attack {self.name!r} supports norms {', '.join(self.norms)}, not {threat.norm!r}")
            if (threat.norm, threat.targeted) != (threats[0].norm, threats[0].targeted):
                raise InputError("a sweep needs one norm and one targeted mode; call it once per combination")
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(x)
        results = []
        with attack_mode(model):
            task, num_classes, spec = model_task(model, x)
            check_images(x, spec)
            self._check_task(task)
            targeted = threats[0].targeted
            labels = self._labels(x, y, targeted, target, task, num_classes)
            x_in = x.detach()
            objective = resolve(self.loss, task).prepare(model, x_in)
            self._check_inputs(x_in, task, num_classes)
            if self.minimum_norm:
                largest = max(threats, key=lambda t: t.eps)
                problem = Problem(model, objective, labels, targeted, largest, spec.bounds, eot_samples=self.eot_samples)
                x_min, steps = (x_in.clone(), 0) if largest.eps == 0 else self._run(problem, x_in, generator)
                for threat in threats:
                    problem.threat = threat
                    results.append(self._finish(problem, x_in, problem.project(x_min.detach(), x_in), steps))
            else:
                for threat in threats:
                    problem = Problem(model, objective, labels, targeted, threat, spec.bounds, eot_samples=self.eot_samples)
                    if threat.eps == 0:
                        x_adv, steps = x_in.clone(), 0
                    else:
                        x_adv, steps = self._run(problem, x_in, generator)
                        x_adv = problem.project(x_adv.detach(), x_in)
                    results.append(self._finish(problem, x_in, x_adv, steps))
        return results

    def _labels(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, target: torch.Tensor | int | None,
                task: str, num_classes: int) -> torch.Tensor:
        """Check the labels (and target) and return what the objective is judged on:
        the true labels (untargeted) or the targets (targeted; an int means all-to-one)."""
        spatial = tuple(x.shape[-2:]) if task == "segmentation" else None
        y = check_labels(y, x.shape[0], task, num_classes, spatial=spatial)
        if task == "embedding":
            if targeted:
                raise InputError(f"attack {self.name!r} on an embedding model is label-free and untargeted; "
                                 "use an untargeted ThreatModel")
            if not torch.equal(y.cpu(), torch.arange(x.shape[0])):
                raise InputError("a label-free attack on an embedding model takes y = torch.arange(n): each input's "
                                 "'label' is its own index into the clean embeddings")
        if not targeted:
            if target is not None:
                raise InputError("target was given but the threat model is untargeted; set targeted=True")
            return y.to(x.device)
        if not self.supports_targeted:
            raise InputError(f"attack {self.name!r} has no targeted variant")
        if target is None:
            raise InputError("a targeted threat model needs target=... (the target labels)")
        if isinstance(target, int) and not isinstance(target, bool):
            # all-to-one; for segmentation one class everywhere (0: make the lesion vanish)
            size = (x.shape[0], *x.shape[-2:]) if task == "segmentation" else (x.shape[0],)
            target = torch.full(size, target, dtype=torch.long)
        return check_labels(target, x.shape[0], task, num_classes, name="target", spatial=spatial).to(x.device)

    def _check_task(self, task: str) -> None:
        if task == "embedding":
            if not self.label_free:
                from medsec.registry import ATTACKS

                free = [n for n in ATTACKS.list() if getattr(ATTACKS.get(n), "label_free", False)]
                raise InputError(f"attack {self.name!r} has no label-free variant and cannot attack an embedding model; "
                                 f"label-free attacks: {', '.join(free)}")
            return
        if not self.classification and not self.segmentation:
            raise InputError(f"attack {self.name!r} is label-free: it attacks embedding models (wrap the encoder in "
                             f"medsec.objectives.EmbeddingAsLogits, y = torch.arange(n)), not a {task!r} head")
        if task != "segmentation" and not self.classification:
            raise InputError(f"attack {self.name!r} attacks segmenters only; this is a {task!r} model")
        if task == "segmentation" and not self.segmentation:
            raise InputError(
                f"attack {self.name!r} works on class decision boundaries and has no segmentation variant; "
                "for segmenters use fgsm, pgd, mifgsm, apgd, square (loss='dice_ce'), uap_sgd or uap_seg"
            )

    def _check_inputs(self, x: torch.Tensor, task: str, num_classes: int) -> None:
        """Hook for attack-specific input checks (e.g. a minimum image size)."""

    def _finish(self, problem: Problem, x_in: torch.Tensor, x_adv: torch.Tensor, steps: int) -> AttackResult:
        x_adv = x_adv.to(dtype=x_in.dtype)
        logits = problem.logits(x_adv)
        assert problem.queries is not None
        return AttackResult(
            x_adv=x_adv,
            success=problem.success(logits),
            loss=problem.loss(logits),
            norms=perturbation_norms(x_in, x_adv),
            queries=problem.queries.clone(),
            steps=steps,
            logits=logits,
            extras=dict(problem.extras),
        )

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """Return (x_adv, steps run). ``x`` is detached; do not modify it in place."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The constructor parameters (for results.json)."""
        return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                for k, v in self._settings().items()}
