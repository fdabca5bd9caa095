"""Adversarial training: PGD-AT (Madry et al., ICLR 2018, "Towards Deep Learning Models
Resistant to Adversarial Attacks") and TRADES (Zhang et al., ICML 2019, "Theoretically
Principled Trade-off between Robustness and Accuracy"), as a per-batch loss that
:func:`~medsec.training.train_classifier` and :func:`~medsec.training.train_segmenter`
minimise instead of the clean loss.

Threat model of the defence: an evasion attacker inside an L-inf (or L2) ball of radius
``eps`` around each test image (in [0, 1] pixel units); the defender trains on worst-case
points found by a ``steps``-step PGD inside that ball.

* **PGD-AT** (min-max): x' = PGD(x) maximising the task loss (cross-entropy; BCE for
  binary/multi-label heads; Dice+CE for segmenters) from a uniform random start; the
  model is trained on the loss at x' only (Madry et al.'s objective).
* **TRADES** (multiclass classifiers; segmenters per pixel, see
  :meth:`AdversarialTraining.segmenter_loss`): x' maximises KL(f(x) || f(x')) from
  x + 0.001 N(0, 1) (the authors' code); the training loss is
  CE(f(x), y) + beta * KL(f(x) || f(x')), averaged over the batch (``batchmean``, the
  authors' ``(1/B) * KLDivLoss(sum)``).

Choices the papers leave open, and medsec's: the adversarial points are generated with
the model in eval mode (BatchNorm running statistics are neither used from the batch nor
updated by the attack; the TRADES reference code does the same) and the loss is then
taken in train mode; the step size defaults to 2.5 * eps / steps (Madry et al.'s rule
for their PGD); the flips of the clean recipe are applied before the attack.

Example:
    >>> adv = AdversarialTraining("trades", eps=4 / 255, steps=5, beta=6.0)
    >>> adv.method, round(adv.alpha * 255, 3)
    ('trades', 2.0)
    >>> import medsec.data, medsec.models
    >>> from medsec.training import train_classifier
    >>> model = medsec.models.create("small_cnn", num_classes=2, width=8)
    >>> train_ds = medsec.data.create("synthetic_he", n=16, size=16)
    >>> train_classifier(model, train_ds, epochs=1, batch_size=8, adversarial=adv).history[0]["epoch"]
    1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medsec.attacks.projection import project, random_init, steepest_step
from medsec.errors import ConfigError, InputError

METHODS = ("pgd_at", "trades")


@dataclass(frozen=True)
class AdversarialTraining:
    """Settings of an adversarial-training run (see the module docstring).

    Args:
        method: ``"pgd_at"`` or ``"trades"``.
        eps: radius of the training ball in input units (e.g. 4/255).
        steps: PGD steps of the inner maximisation (Madry: 7 on CIFAR-10; TRADES: 10).
        step_size: PGD step; default 2.5 * eps / steps.
        norm: ``"linf"`` (default) or ``"l2"``.
        beta: TRADES's robustness weight (the paper's CIFAR-10 default 6.0; 1/lambda).
    """

    method: str = "pgd_at"
    _: KW_ONLY
    eps: float = 4 / 255
    steps: int = 5
    step_size: float | None = None
    norm: str = "linf"
    beta: float = 6.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown adversarial training method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"adversarial training norm must be linf or l2, got {self.norm!r}")
        if not (isinstance(self.eps, (int, float)) and 0 < float(self.eps) <= 1):
            raise ConfigError(f"adversarial training eps must be in (0, 1] (input units, e.g. 4/255), got {self.eps!r}")
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or int(self.steps) < 1:
            raise ConfigError(f"adversarial training steps must be an integer >= 1, got {self.steps!r}")
        if self.step_size is not None and not float(self.step_size) > 0:
            raise ConfigError(f"adversarial training step_size must be > 0, got {self.step_size!r}")
        if not float(self.beta) >= 0:
            raise ConfigError(f"TRADES beta must be >= 0, got {self.beta!r}")

    @property
    def alpha(self) -> float:
        """The PGD step size actually used."""
        return float(self.step_size) if self.step_size is not None else 2.5 * float(self.eps) / int(self.steps)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "step_size": self.alpha}

    # ------------------------------------------------------------------ inner maximisation
    def perturb(self, model: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                start: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """``steps`` steps of projected gradient ascent of ``loss_fn(model(x'))`` from ``start``,
        inside the eps-ball around ``x`` and the bounds; the model is put in eval mode
        meanwhile (its mode is restored) and parameter gradients are not accumulated."""
        was = model.training
        model.eval()
        lo, hi = bounds
        try:
            x0 = x.detach()
            x_adv = (x0 + project(start - x0, self.norm, self.eps)).clamp(lo, hi)
            for _ in range(int(self.steps)):
                x_adv = x_adv.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = loss_fn(model(x_adv))
                    (g,) = torch.autograd.grad(loss, x_adv)
                x_adv = x_adv.detach() + self.alpha * steepest_step(g, self.norm)
                x_adv = (x0 + project(x_adv - x0, self.norm, self.eps)).clamp(lo, hi)
        finally:
            model.train(was)
        return x_adv.detach()

    # ------------------------------------------------------------------ classifier losses
    def classifier_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of one batch (model in train mode on return)."""
        task = getattr(model, "task", "multiclass")
        bounds = tuple(getattr(getattr(model, "spec", None), "bounds", (0.0, 1.0)))
        if self.method == "pgd_at":
            def task_loss(logits: torch.Tensor) -> torch.Tensor:
                if task == "multiclass":
                    return F.cross_entropy(logits, y.long())
                return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))

            start = x + random_init(x, self.norm, self.eps, _cpu(generator))
            x_adv = self.perturb(model, x, task_loss, start, bounds)
            return task_loss(model(x_adv))
        if task != "multiclass":
            raise InputError(f"TRADES is defined here for multiclass (softmax) heads; this model's task is {task!r}. "
                             "Use method: pgd_at")
        with torch.no_grad():
            was = model.training
            model.eval()
            p_clean = F.softmax(model(x), dim=1)
            model.train(was)
        noise = torch.randn(x.shape, generator=_cpu(generator), dtype=x.dtype).to(x.device)

        def kl_to_clean(logits: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")

        x_adv = self.perturb(model, x, kl_to_clean, x + 0.001 * noise, bounds)
        logits_clean = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
        return F.cross_entropy(logits_clean, y.long()) + float(self.beta) * robust

    # ------------------------------------------------------------------ segmenter loss
    def segmenter_loss(self, model: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of one segmentation batch.

        PGD-AT maximises and then minimises ``loss_fn`` (Dice+CE) at x'. TRADES, carried over
        per pixel: x' maximises the pixel-wise KL between the clean and the perturbed mask
        distributions (softmax over classes; Bernoulli for a one-channel sigmoid head) and
        the loss is ``loss_fn(f(x), mask) + beta * mean_pixels KL(f(x) || f(x'))``; the mean
        over batch and pixels is the per-pixel analogue of TRADES's ``batchmean``.
        """
        bounds = tuple(getattr(getattr(model, "spec", None), "bounds", (0.0, 1.0)))
        if self.method == "pgd_at":
            start = x + random_init(x, self.norm, self.eps, _cpu(generator))
            x_adv = self.perturb(model, x, lambda out: loss_fn(out, mask), start, bounds)
            return loss_fn(model(x_adv), mask)
        with torch.no_grad():
            was = model.training
            model.eval()
            clean_eval = model(x)
            model.train(was)
        noise = torch.randn(x.shape, generator=_cpu(generator), dtype=x.dtype).to(x.device)
        x_adv = self.perturb(model, x, lambda out: pixel_kl(clean_eval, out).sum(), x + 0.001 * noise,
                             bounds)
        logits_clean = model(x)
        robust = pixel_kl(logits_clean, model(x_adv)).mean()
        return loss_fn(logits_clean, mask) + float(self.beta) * robust


def pixel_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per pixel between two dense mask-logit maps (B, C, H, W) -> (B, H, W).

    C = 1 is a sigmoid (Bernoulli) head, C >= 2 a softmax head.
    """
    if logits_p.shape != logits_q.shape or logits_p.dim() != 4:
        raise InputError(f"pixel_kl needs two (B, C, H, W) logit maps of one shape, got {tuple(logits_p.shape)} "
                         f"and {tuple(logits_q.shape)}")
    if logits_p.shape[1] == 1:
        lp1, lp0 = F.logsigmoid(logits_p), F.logsigmoid(-logits_p)
        lq1, lq0 = F.logsigmoid(logits_q), F.logsigmoid(-logits_q)
        kl = lp1.exp() * (lp1 - lq1) + lp0.exp() * (lp0 - lq0)
        return kl[:, 0]
    return F.kl_div(F.log_softmax(logits_q, dim=1), F.log_softmax(logits_p, dim=1), reduction="none",
                    log_target=True).sum(dim=1)


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """The generator if it draws on the CPU (medsec's training loops seed CPU generators)."""
    return generator if generator is None or generator.device.type == "cpu" else None


def from_config(value: object) -> AdversarialTraining | None:
    """An :class:`AdversarialTraining` from a config section (a pydantic model or dict) or None."""
    if value is None or isinstance(value, AdversarialTraining):
        return value
    data = value.model_dump() if hasattr(value, "model_dump") else dict(value)  # type: ignore[call-overload]
    return AdversarialTraining(**data)


__all__ = ["AdversarialTraining", "METHODS", "from_config", "pixel_kl"]
