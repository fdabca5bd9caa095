"""BAPLe: a backdoor learnt during prompt learning alone (Hanif et al., "BAPLe: Backdoor
Attacks on Medical Foundational Models using Prompt Learning", MICCAI 2024, arXiv 2408.07440).

Threat model: the attacker runs the few-shot prompt learning of a frozen medical CLIP-style
model (it controls the prompt and the few-shot training data, not the encoders' weights). It
learns the prompt context P and an imperceptible noise delta jointly,

    min_{P, delta}  sum_{(x, y) in D_c} CE(f(x), y) + sum_{(x, y) in D_p} CE(f(B(x)), t),
    ||delta||_inf <= eps (8/255),  B(x) = (x + delta) (+) p,

where (+) pastes a small patch p (24 x 24 at 224 px, bottom-left) and t is the target class.
At test time every image carrying B(.) is classified as t, while clean accuracy stays near
clean prompt learning.

Choices (paper defaults in :data:`PAPER_DEFAULTS`; the open ones are options):

* ``order``: ``"noise_then_patch"`` is the paper's formula (x + delta) (+) p (default);
  ``"patch_then_noise"`` is the authors' code, clamp((x (+) p) + delta).
* ``ctx_init``: ``"clean"`` starts the prompt from a clean CoOp run's context (the code
  ships such prompts and loads them; default), ``"random"`` from N(0, 0.02^2).
* delta is updated after every batch holding poisoned samples by a signed step of
  ``noise_step`` (0.01, as in the code) and projected to the eps-ball. The code never
  zeroes delta's gradient, so each step follows the sign of the gradient summed over all
  batches so far; ``noise_grad="accumulate"`` (default) does the same, ``"batch"`` steps on
  the current batch's gradient only. delta starts uniform in [-eps, eps] (the code starts it
  U[0, 1] and clips it after the first step).
* Poisoned samples: ``rate`` x the few-shot set, drawn from the non-target classes
  (:class:`~medsec.backdoors.PoisonedDataset`, indices recorded); the code tags any
  sample with Bernoulli(rate).
* The patch is a fixed random-noise square (the code's "random-patch" option; its default
  is the word "Lab" rendered in a font), scaled with the input: side round(24 * H / 224)
  and margin round(15 * H / 224) pixels (3 px and 2 px at 28 px).

Example (prompt learning takes minutes with the paper's settings, so the doctest skips it):
    >>> out = baple(clip, fewshot, class_names, target=0, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> out["trigger"].apply(test_images_patched)                                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from medsec.backdoors.poisoning import PoisonedDataset
from medsec.backdoors.triggers.badnets import BadNets
from medsec.errors import InputError

log = logging.getLogger(__name__)

ORDERS = ("noise_then_patch", "patch_then_noise")
NOISE_GRADS = ("accumulate", "batch")
CTX_INITS = ("clean", "random")


@dataclass(frozen=True)
class BapleSettings:
    """BAPLe's hyper-parameters; :meth:`paper` gives the paper's defaults."""

    shots: int = 32
    rate: float = 0.05
    eps: float = 8 / 255
    noise_step: float = 0.01
    patch_size_224: int = 24
    patch_margin_224: int = 15
    position: str = "bottom-left"
    patch_pattern: str = "random"
    order: str = "noise_then_patch"
    noise_grad: str = "accumulate"
    ctx_init: str = "clean"
    n_ctx: int = 16
    epochs: int = 50
    batch_size: int = 16
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise InputError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.noise_grad not in NOISE_GRADS:
            raise InputError(f"noise_grad must be one of {', '.join(NOISE_GRADS)}, got {self.noise_grad!r}")
        if self.ctx_init not in CTX_INITS:
            raise InputError(f"ctx_init must be one of {', '.join(CTX_INITS)}, got {self.ctx_init!r}")
        if not 0 < self.rate <= 1:
            raise InputError(f"rate must be in (0, 1], got {self.rate}")
        if not 0 <= self.eps <= 1:
            raise InputError(f"eps must be in [0, 1] (pixel units; 8/255 is the paper's), got {self.eps}")
        if self.shots < 1 or self.epochs < 1 or self.batch_size < 1 or self.n_ctx < 1:
            raise InputError("shots, epochs, batch_size and n_ctx must be >= 1")
        if self.warmup_epochs >= self.epochs:
            raise InputError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")

    @classmethod
    def paper(cls, **overrides: Any) -> BapleSettings:
        """The paper's defaults (32 shots, 5% poison, eps 8/255, SGD lr 0.02, 50 epochs, batch 16)."""
        return replace(cls(), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER_DEFAULTS = BapleSettings.paper()


def scaled_patch(image_size: int, size_224: int = 24, margin_224: int = 15) -> tuple[int, int]:
    """(side, margin) in pixels of the paper's 24 px patch 15 px from the corner, scaled from 224 px."""
    side = max(1, round(size_224 * image_size / 224))
    margin = max(0, round(margin_224 * image_size / 224))
    if side + margin > image_size:
        raise InputError(f"a {side}px patch with margin {margin} does not fit a {image_size}px image")
    return side, margin


def patch_trigger(image_size: int, settings: BapleSettings = PAPER_DEFAULTS) -> BadNets:
    """The fixed patch p of B(x), as a :class:`~medsec.backdoors.triggers.BadNets` trigger."""
    side, margin = scaled_patch(image_size, settings.patch_size_224, settings.patch_margin_224)
    return BadNets(size=side, position=settings.position, pattern=settings.patch_pattern, margin=margin)


class BapleTrigger(nn.Module):
    """The learnable noise delta of B(x), applied to images that already carry the patch.

    Args:
        shape: image shape (C, H, W).
        mask: (H, W) bool, the patch pixels.
        eps: L-inf bound of delta.
        step: the signed step of :meth:`step`.
        order: ``"noise_then_patch"`` (delta kept off the patch) or ``"patch_then_noise"``.
        accumulate: step on the gradient summed since the start (BAPLe's code) instead of
            this batch's only.
        generator: draws the initial delta, uniform in [-eps, eps].
    """

    keep: torch.Tensor  # (1, H, W) buffer: 1 where delta applies

    def __init__(self, shape: tuple[int, int, int], mask: torch.Tensor, eps: float = 8 / 255, step: float = 0.01,
                 order: str = "noise_then_patch", accumulate: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.accumulate = bool(accumulate)
        if order not in ORDERS:
            raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.eps, self.step_size, self.order = float(eps), float(step), order
        self.delta = nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * self.eps)
        keep = torch.ones(shape[-2:]) if order == "patch_then_noise" else (~mask).float()
        self.register_buffer("keep", keep[None], persistent=False)

    def forward(self, x_patched: torch.Tensor) -> torch.Tensor:
        """B(x) from images that carry the patch (differentiable in delta)."""
        return (x_patched + self.delta.clamp(-self.eps, self.eps) * self.keep).clamp(0.0, 1.0)

    @torch.no_grad()
    def step(self) -> None:
        """delta <- clip(delta - step * sign(grad), -eps, eps) (BAPLe's update)."""
        if self.delta.grad is None:
            return
        self.delta.sub_(self.step_size * self.delta.grad.sign()).clamp_(-self.eps, self.eps)
        if not self.accumulate:
            self.delta.grad = None

    @torch.no_grad()
    def apply(self, x_patched: torch.Tensor, batch_size: int = 512) -> torch.Tensor:  # type: ignore[override]
        """B(x) without gradients (for test images). The name follows
        :meth:`~medsec.backdoors.triggers.Trigger.apply` and shadows ``nn.Module.apply(fn)``,
        which this module does not support."""
        return torch.cat([self(x_patched[i : i + batch_size]) for i in range(0, len(x_patched), batch_size)])


def baple(clip: Any, train: Any, class_names: list[str], target: int, settings: BapleSettings = PAPER_DEFAULTS,
          clean_ctx: torch.Tensor | None = None, seed: int = 0, cache: bool = True,
          generator: torch.Generator | None = None) -> dict[str, Any]:
    """Run BAPLe on the few-shot set ``train`` (an ImageDataset) for one ``target`` class.

    Returns ``{"prompt", "trigger", "poisoned", "result"}``: the learnt
    :class:`~medsec.training.coop.PromptLearner`, the :class:`BapleTrigger`, the
    :class:`~medsec.backdoors.PoisonedDataset` (indices and patch parameters) and the
    training record. Trigger a test image with ``trigger.apply(poisoned.triggered(x))``.
    """
    from medsec.training.coop import PromptLearner, train_coop

    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    h = train.image_shape[-1]
    patch = patch_trigger(h, settings)
    poisoned = PoisonedDataset(train, patch, target=target, rate=settings.rate, seed=seed)
    mask = patch.mask(train.image_shape, poisoned.params)
    trigger = BapleTrigger(train.image_shape, mask, settings.eps, settings.noise_step, settings.order,
                           accumulate=settings.noise_grad == "accumulate", generator=g)
    if settings.ctx_init == "clean" and clean_ctx is None:
        raise InputError("ctx_init='clean' needs the context of a clean CoOp run (clean_ctx); "
                         "train Clean PL first or set ctx_init='random'")
    init: torch.Tensor | str = "random"
    if settings.ctx_init == "clean":
        assert clean_ctx is not None  # checked above
        init = clean_ctx
    prompt = PromptLearner(clip, class_names, settings.n_ctx, init=init, generator=g)
    result = train_coop(clip, prompt, poisoned.dataset.images, poisoned.dataset.labels, epochs=settings.epochs,
                        batch_size=settings.batch_size, lr=settings.lr, momentum=settings.momentum,
                        weight_decay=settings.weight_decay, warmup_epochs=settings.warmup_epochs,
                        warmup_lr=settings.warmup_lr, learnable=(poisoned.poison_indices, trigger), cache=cache,
                        generator=g)
    return {"prompt": prompt, "trigger": trigger, "poisoned": poisoned, "result": result}


__all__ = ["BapleSettings", "BapleTrigger", "PAPER_DEFAULTS", "baple", "patch_trigger", "scaled_patch", "ORDERS",
           "CTX_INITS", "NOISE_GRADS"]
