"""SNAP: sporadic, naturalistic, cell-shaped adversarial patches, one per image (Kumar,
Sharma & Narayan, "Attacking CNNs in Histopathology with SNAP: Sporadic and
Naturalistic Adversarial Patches", AAAI 2024 student abstract).

Threat model: white-box; ``ThreatModel("patch", coverage)``: the attacker REPLACES the
pixels inside a binary mask m covering at most ``coverage`` of the image with patch
content delta, ``x' = (1 - m) * x + m * delta`` (eq. 2 of the paper); pixels outside the
mask are untouched (bit-identical). Targeted (the paper: class 0) or untargeted.

Algorithm (per image): m from a mask generator (default many small nucleus-like
ellipses, see :mod:`medsec.masks`); delta starts at the image's per-channel median
colour; every step ascends the objective (cross-entropy on the logits: untargeted
CE(F(x'), y), targeted -CE(F(x'), t)) with Adam (lr 0.01) or signed steps, all blobs
together (one delta), then clamps delta per channel into the [p5, p95] percentiles of
the image's own pixels (the "naturalistic" constraint; ``colour="none"`` lifts it and
leaves only the image bounds). A sample stops at ``steps`` or when the adversarial
class reaches ``target_confidence`` (0.95, the paper's rule; untargeted: the most likely
wrong class); with ``early_stop`` (the runner's evaluation mode) it also stops as soon
as it succeeds. The returned patch is the best one evaluated (highest objective).

Open choices (the paper leaves them open; see docs/snap.md): the optimiser (Adam lr
0.01 by default, ``optimizer="sign"`` for 1/255 signed steps), the colour percentiles,
the mask design and the iteration limit (default 500).

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> snap = medsec.attacks.create("snap", steps=100)
    >>> threat = medsec.ThreatModel("patch", 0.05, targeted=True)
    >>> res = snap(model, x, y, threat=threat, target=0, generator=torch.Generator().manual_seed(0))
    >>> mask = res.extras["mask"]  # (B, 1, H, W) bool
    >>> bool(mask.float().mean(dim=(1, 2, 3)).max() <= 0.05)  # coverage
    True
    >>> bool(torch.equal(res.x_adv[~mask.expand_as(x)], x[~mask.expand_as(x)]))  # untouched outside the mask
    True
"""

from __future__ import annotations

from typing import Any

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.patch_common import (
    COLOURS_IMAGE,
    INITS,
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
from medsec.errors import InputError
from medsec.masks import MaskGenerator, resolve
from medsec.objectives import Objective
from medsec.registry import ATTACKS


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or int(steps) != steps or int(steps) < 0:
        raise InputError(f"steps must be an integer >= 0, got {steps!r}")
    return int(steps)


@ATTACKS.register("snap")
class SNAP(Attack):
    """Per-image SNAP: many small cell-shaped patches in the image's own colours.

    Args:
        mask: mask generator name (``"ellipses"``, ``"nuclei"``, ``"square"``) or instance.
        mask_params: parameters of the named generator.
        steps: iteration limit (default 500; 0 returns the initial patch).
        optimizer: ``"adam"`` (default) or ``"sign"``.
        lr: step size in input units (default 0.01 for Adam, 1/255 for signed steps).
        colour: ``"image"`` (clamp to the image's percentiles) or ``"none"``.
        percentiles: (low, high) percentiles of the colour range (default (5, 95)).
        init: ``"median"`` (the image's median colour, default) or ``"random"``
            (uniform inside the colour range, from the generator).
        target_confidence: stop a sample when the adversarial class reaches this
            probability (default 0.95; None: run all steps).
        loss: objective (``"auto"`` = CE for multiclass heads).
        early_stop: also stop a sample once it succeeds.
    """

    name = "snap"
    norms = ("patch",)
    supports_targeted = True
    needs_gradients = True
    iterative = True
    stochastic = True  # with the default (random) ellipse masks; instances say exactly

    def __init__(
        self,
        *,
        mask: str | MaskGenerator = "ellipses",
        mask_params: dict[str, Any] | None = None,
        steps: int = 500,
        optimizer: str = "adam",
        lr: float | None = None,
        colour: str = "image",
        percentiles: tuple[float, float] = (5.0, 95.0),
        init: str = "median",
        target_confidence: float | None = 0.95,
        loss: str | Objective = "auto",
        early_stop: bool = False,
    ) -> None:
        super().__init__(loss=loss, early_stop=early_stop)
        self.mask = mask if isinstance(mask, str) else mask.name
        self.mask_params = dict(mask_params or {})
        self._mask = resolve(mask, mask_params)
        self.steps = _check_steps(steps)
        self.optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
        self.lr = default_lr(self.optimizer, lr)
        self.colour = check_choice("colour", colour, COLOURS_IMAGE)
        self.percentiles = check_percentiles(percentiles)
        self.init = check_choice("init", init, INITS)
        self.target_confidence = check_confidence(target_confidence)
        self.stochastic = bool(self._mask.stochastic) or self.init == "random"

    def params(self) -> dict[str, Any]:
        out = super().params()
        out["mask_params"] = self._mask.params()
        out["percentiles"] = list(self.percentiles)
        return out

    def _colour_bounds(self, x: torch.Tensor, bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.colour == "image":
            return colour_range(x, self.percentiles, per_image=True)
        b, c = x.shape[:2]
        return (torch.full((b, c, 1, 1), bounds[0], dtype=x.dtype, device=x.device),
                torch.full((b, c, 1, 1), bounds[1], dtype=x.dtype, device=x.device))

    def _init(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
              generator: torch.Generator | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the median colour (B, C, 1, 1), or None for a random init; the full initial delta)."""
        if self.init == "median":
            start = median_colour(x, per_image=True)
            return start, start.expand_as(x).clone()
        dev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
        return None, lo + (hi - lo) * u

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        mask = self._mask(x, problem.threat.eps, generator)
        lo, hi = self._colour_bounds(x, problem.bounds)
        start, delta = self._init(x, lo, hi, generator)
        delta = torch.minimum(torch.maximum(delta, lo), hi).clamp(*problem.bounds)
        problem.extras.update({"mask": mask, "colour_low": lo, "colour_high": hi, "init": start})
        best = delta.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        opt = Ascent(self.optimizer, self.lr, delta)
        active = torch.arange(x.shape[0], device=x.device)
        task = problem.objective.task
        steps = 0
        for _ in range(self.steps):
            xa = compose(x[active], mask[active], delta[active])
            loss, grad, logits = problem.loss_and_grad(xa, active)
            steps += 1
            better = loss > best_loss[active]
            best[active[better]] = delta[active[better]]
            best_loss[active[better]] = loss[better]
            done = torch.zeros_like(better)
            conf = adversarial_confidence(logits, problem.labels[active], problem.targeted, task)
            if self.target_confidence is not None and conf is not None:
                done |= conf >= self.target_confidence
            if self.early_stop:
                done |= problem.success(logits, active)
            go = ~done
            rows = active[go]
            if rows.numel():
                g = grad[go] * mask[rows]
                new = opt.step(delta, g, rows)
                delta[rows] = torch.minimum(torch.maximum(new, lo[rows]), hi[rows]).clamp(*problem.bounds)
            active = rows
            if active.numel() == 0:
                break
        if self.steps == 0:
            best = delta
        elif active.numel():  # the last update of the still-active rows was never evaluated
            xa = compose(x[active], mask[active], delta[active])
            loss = problem.loss(problem.logits(xa, active), active)
            better = loss > best_loss[active]
            best[active[better]] = delta[active[better]]
        problem.extras["delta"] = best
        return compose(x, mask, best), max(steps, 1)
