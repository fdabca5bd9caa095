"""Universal SNAP: one patch content delta and one mask, trained on a set of images and
applied to unseen ones (Kumar, Sharma & Narayan, AAAI 2024, "Attacking CNNs in
Histopathology with SNAP"; the paper "trains SNAP" and attacks "using the trained
patch", which suggests this mode).

Threat model: white-box; ``ThreatModel("patch", coverage)``; ONE delta shared by every
image, composed by replacement ``x' = (1 - m) * x + m * delta`` inside a mask m of
coverage at most the budget. With an image-independent mask generator (``ellipses``,
``square``) one mask is drawn once and shared; with ``nuclei`` each image gets the mask
of its own nuclei and shares delta. Targeted (the paper: class 0) or untargeted.

Algorithm: delta starts at the fit set's per-channel median colour; each epoch visits
the fit set in mini-batches (random order from the generator) and ascends the mean
objective (CE on the logits) over the batch with Adam (lr 0.01) or signed steps, then
clamps delta per channel into the [p5, p95] percentiles of the fit set's pixels
(``colour="dataset"``; ``"none"``: only the bounds). Training stops after ``epochs`` or
at the end of the first epoch whose mean adversarial-class probability over the fit
set reaches ``target_confidence`` (0.95).

Besides the normal call (fit on the batch, attack the same batch), :meth:`fit` trains
on a fit set and :meth:`apply` composes the fitted patch into any images; the runner
fits on the training split and evaluates on the held-out split.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x_train, x_test = torch.rand(16, 3, 28, 28), torch.rand(8, 3, 28, 28)
    >>> y_train = model(x_train).argmax(1)
    >>> usnap = medsec.attacks.create("snap_universal", epochs=10, batch_size=8)
    >>> threat = medsec.ThreatModel("patch", 0.05, targeted=True)
    >>> delta = usnap.fit(model, x_train, y_train, threat, torch.Generator().manual_seed(0), target=0)
    >>> x_adv = usnap.apply(x_test)  # the fitted patch on unseen images
    >>> delta.shape, usnap.mask_.shape
    (torch.Size([1, 3, 28, 28]), torch.Size([1, 1, 28, 28]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medsec.attacks.base import Problem, attack_mode, model_task
from medsec.attacks.patch_common import (
    OPTIMIZERS,
    Ascent,
    adversarial_confidence,
    check_choice,
    check_confidence,
    check_percentiles,
    colour_range,
    compose,
    default_lr,
    median_colour,
)
from medsec.attacks.uap import UniversalAttack
from medsec.errors import InputError
from medsec.masks import MaskGenerator, resolve
from medsec.objectives import Objective
from medsec.objectives import resolve as resolve_objective
from medsec.registry import ATTACKS
from medsec.types import ThreatModel
from medsec.validation import check_images, check_positive_int

COLOURS_DATASET = ("dataset", "none")
_CHUNK = 256


@ATTACKS.register("snap_universal")
class SNAPUniversal(UniversalAttack):
    """Universal SNAP: one delta and mask trained on a fit set, applied to unseen images.

    Args:
        mask: mask generator name or instance (default ``"ellipses"``).
        mask_params: parameters of the named generator.
        epochs: passes over the fit set (default 20).
        batch_size: images per step (default 64).
        optimizer: ``"adam"`` (default) or ``"sign"``.
        lr: step size (default 0.01 for Adam, 1/255 for signed steps).
        colour: ``"dataset"`` (default) or ``"none"``.
        percentiles: (low, high) percentiles of the colour range (default (5, 95)).
        target_confidence: stop when the mean adversarial-class probability reaches it
            (default 0.95; None: all epochs).
        shuffle: a new random visit order each epoch (default True).
        loss: objective (``"auto"`` = CE for multiclass heads).
        early_stop: accepted for the common interface and ignored.
    """

    name = "snap_universal"
    norms = ("patch",)
    supports_targeted = True
    needs_gradients = True
    stochastic = True  # with the default shuffle; instances say exactly

    def __init__(
        self,
        *,
        mask: str | MaskGenerator = "ellipses",
        mask_params: dict[str, Any] | None = None,
        epochs: int = 20,
        batch_size: int = 64,
        optimizer: str = "adam",
        lr: float | None = None,
        colour: str = "dataset",
        percentiles: tuple[float, float] = (5.0, 95.0),
        target_confidence: float | None = 0.95,
        shuffle: bool = True,
        loss: str | Objective = "auto",
        early_stop: bool = False,
    ) -> None:
        super().__init__(loss=loss, early_stop=early_stop)
        self.mask = mask if isinstance(mask, str) else mask.name
        self.mask_params = dict(mask_params or {})
        self._mask = resolve(mask, mask_params)
        self.epochs = check_positive_int("epochs", epochs)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
        self.lr = default_lr(self.optimizer, lr)
        self.colour = check_choice("colour", colour, COLOURS_DATASET)
        self.percentiles = check_percentiles(percentiles)
        self.target_confidence = check_confidence(target_confidence)
        self.shuffle = bool(shuffle)
        self.stochastic = bool(self._mask.stochastic) or self.shuffle

    def params(self) -> dict[str, Any]:
        out = super().params()
        out["mask_params"] = self._mask.params()
        out["percentiles"] = list(self.percentiles)
        return out

    # ------------------------------------------------------------------ fitted state
    @property
    def mask_(self) -> torch.Tensor | None:
        """The fitted mask (1, 1, H, W), or None for an image-dependent generator."""
        mask: torch.Tensor | None = self._state()["mask"]
        return mask

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] | None = getattr(self, "_fitted", None)
        if state is None:
            raise AttributeError(f"{type(self).__name__} is not fitted yet; call fit(model, x, y, threat) first")
        return state

    def masks_for(self, x: torch.Tensor) -> torch.Tensor:
        """The masks the fitted patch uses on images ``x``: the shared mask, or each
        image's own (image-dependent generators)."""
        state = self._state()
        if state["mask"] is not None:
            shared: torch.Tensor = state["mask"].to(x.device)
            return shared
        return self._mask(x, state["coverage"])

    def apply(self, x: torch.Tensor, delta: torch.Tensor | None = None,  # type: ignore[override]
              bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Compose the fitted patch into ``x`` (B, C, H, W): ``where(m, delta, x)``.

        ``delta`` defaults to the fitted one; pixels outside the mask are untouched.
        """
        check_images(x)
        state = self._state()
        d = state["delta"] if delta is None else delta
        if d.dim() == x.dim() - 1:
            d = d.unsqueeze(0)
        if d.shape[1:] != x.shape[1:]:
            raise InputError(f"the patch was fitted on images {tuple(d.shape[1:])}, got images {tuple(x.shape[1:])}")
        out = []
        for s in range(0, x.shape[0], _CHUNK):
            xb = x[s : s + _CHUNK]
            out.append(compose(xb, self.masks_for(xb), d.to(device=x.device, dtype=x.dtype).clamp(*bounds)))
        return torch.cat(out)

    def fitted_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function x -> attacked x bound to the current fit (kept across later fits)."""
        state = dict(self._state())

        def transform(x: torch.Tensor) -> torch.Tensor:
            saved = self._fitted
            self._fitted = state
            try:
                return self.apply(x)
            finally:
                self._fitted = saved

        return transform

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel | None = None,
        generator: torch.Generator | None = None,
        target: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Train the universal patch on ``x, y`` (see the module docstring).

        Returns:
            delta (1, C, H, W); the mask is ``self.mask_`` (None when image-dependent),
            the fit set's success rate ``self.fooling_rate_``.
        """
        threat = threat if threat is not None else ThreatModel("patch", 0.05)
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
            labels = self._labels(x, y, threat.targeted, target, task, num_classes)
            objective = resolve_objective(self.loss, task)
            problem = Problem(model, objective, labels, threat.targeted, threat, spec.bounds,
                              eot_samples=self.eot_samples)
            self._fit(problem, x.detach(), generator)
        delta: torch.Tensor = self._fitted["delta"]
        return delta.clone()

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """The normal call: fit on this batch and attack it."""
        self._fit(problem, x, generator)
        return self.apply(x, bounds=problem.bounds), max(self._fitted["steps"], 1)

    def _fit(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        eps = problem.threat.eps
        n = x.shape[0]
        if eps == 0:
            self._fitted = {"delta": torch.zeros_like(x[:1]), "mask": torch.zeros_like(x[:1, :1], dtype=torch.bool),
                            "coverage": 0.0, "fooling_rate": 0.0, "steps": 0, "mean_confidence": None}
            return self._fitted["delta"], 0
        if self._mask.image_dependent:
            shared = None
            masks = torch.cat([self._mask(x[s : s + _CHUNK], eps) for s in range(0, n, _CHUNK)])
        else:
            shared = self._mask(x[:1], eps, generator)
            masks = None
        if self.colour == "dataset":
            lo, hi = colour_range(x, self.percentiles, per_image=False)
        else:
            c = x.shape[1]
            lo = torch.full((1, c, 1, 1), problem.bounds[0], dtype=x.dtype, device=x.device)
            hi = torch.full((1, c, 1, 1), problem.bounds[1], dtype=x.dtype, device=x.device)
        start = median_colour(x, per_image=False)
        delta = torch.minimum(torch.maximum(start.expand_as(x[:1]).clone(), lo), hi).clamp(*problem.bounds)
        opt = Ascent(self.optimizer, self.lr, delta)
        task = problem.objective.task
        steps, mean_conf = 0, None
        for _ in range(self.epochs):
            order = self._order(n, self.shuffle, generator, x.device)
            conf_sum, conf_n = 0.0, 0
            for s in range(0, n, self.batch_size):
                idx = order[s : s + self.batch_size]
                m = shared if shared is not None else masks[idx]  # type: ignore[index]
                _, grad, logits = problem.loss_and_grad(compose(x[idx], m, delta), idx)
                g = (grad * m).sum(dim=0, keepdim=True) / idx.numel()
                delta = torch.minimum(torch.maximum(opt.step(delta, g), lo), hi).clamp(*problem.bounds)
                steps += 1
                conf = adversarial_confidence(logits, problem.labels[idx], problem.targeted, task)
                if conf is not None:
                    conf_sum += float(conf.sum())
                    conf_n += idx.numel()
            mean_conf = conf_sum / conf_n if conf_n else None
            if self.target_confidence is not None and mean_conf is not None and mean_conf >= self.target_confidence:
                break
        self._fitted = {"delta": delta.detach(), "mask": shared, "coverage": eps, "fooling_rate": 0.0,
                        "steps": steps, "mean_confidence": mean_conf, "colour_low": lo, "colour_high": hi,
                        "init": start}
        fooled = []
        for s in range(0, n, _CHUNK):
            sl = torch.arange(s, min(n, s + _CHUNK), device=x.device)
            logits = problem.logits(self.apply(x[sl], bounds=problem.bounds), sl)
            fooled.append(problem.success(logits, sl))
        self._fitted["fooling_rate"] = float(torch.cat(fooled).float().mean())
        return delta, steps
