"""Machinery shared by the replacement-patch attacks (SNAP, adversarial patch).

* Composition (SNAP eq. 2): ``x' = (1 - m) * x + m * delta`` with a binary mask m,
  computed as ``torch.where(m, delta, x)`` so that pixels outside the mask are
  bit-identical to the input (no floating-point round trip).
* Colour range: per-channel [p_lo, p_hi] percentiles of the image's pixels (per image)
  or of a set of images (universal); delta is clamped into it after every step.
* Init: the per-channel median colour (torch's lower median), or uniform random colours
  inside the colour range.
* Optimiser: gradient ascent on the objective with Adam (default lr 0.01) or signed
  steps (default 1/255), both on delta in input units.
* Confidence: the probability of the adversarial class (targeted: the target;
  untargeted: the most likely wrong class), for the paper's stop at 0.95.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medsec.errors import InputError

COLOURS_IMAGE = ("image", "none")
OPTIMIZERS = ("adam", "sign")
INITS = ("median", "random")
_MAX_QUANTILE = 1 << 22  # values per channel torch.quantile is given (subsampled beyond)


def compose(x: torch.Tensor, mask: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``(1 - m) * x + m * delta`` as a select: outside the mask the result is x, bit for bit.

    ``mask`` is bool (B or 1, 1, H, W); ``delta`` broadcasts to x's shape.
    """
    return torch.where(mask, delta.to(dtype=x.dtype), x)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(C, N) pixel values of a batch (subsampled with a fixed stride when very large)."""
    c = x.shape[1]
    flat = x.detach().transpose(0, 1).reshape(c, -1)
    if flat.shape[1] > _MAX_QUANTILE:
        step = math.ceil(flat.shape[1] / _MAX_QUANTILE)
        flat = flat[:, ::step]
    return flat


def colour_range(
    x: torch.Tensor, percentiles: tuple[float, float], per_image: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) percentiles of the pixels: (B, C, 1, 1) each per image,
    or (1, C, 1, 1) over the whole batch (``per_image=False``)."""
    q = torch.tensor([percentiles[0] / 100.0, percentiles[1] / 100.0], dtype=torch.float64, device=x.device)
    if per_image:
        flat = x.detach().double().flatten(2)  # (B, C, HW)
        qs = torch.quantile(flat, q, dim=2)  # (2, B, C)
        lo, hi = qs[0], qs[1]
        return lo[..., None, None].to(x.dtype), hi[..., None, None].to(x.dtype)
    qs = torch.quantile(_pixels(x).double(), q, dim=1)  # (2, C)
    return qs[0].reshape(1, -1, 1, 1).to(x.dtype), qs[1].reshape(1, -1, 1, 1).to(x.dtype)


def median_colour(x: torch.Tensor, per_image: bool = True) -> torch.Tensor:
    """The per-channel median colour (lower median), (B, C, 1, 1) or (1, C, 1, 1)."""
    if per_image:
        return x.detach().flatten(2).median(dim=2).values[..., None, None]
    return _pixels(x).median(dim=1).values.reshape(1, -1, 1, 1)


def check_percentiles(value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"percentiles must be a (low, high) pair in [0, 100], got {value!r}") from None
    if not 0 <= lo <= hi <= 100:
        raise InputError(f"percentiles must satisfy 0 <= low <= high <= 100, got {value!r}")
    return lo, hi


def check_confidence(value: Any) -> float | None:
    """Check a ``target_confidence``: a probability in (0, 1], or None (no confidence stop)."""
    if value is None:
        return None
    v = float(value)
    if not 0 < v <= 1:
        raise InputError(f"target_confidence must lie in (0, 1] or be None, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        from medsec.registry import suggest

        raise InputError(f"unknown {name} {value!r}.{suggest(str(value), choices)} Use one of {', '.join(choices)}.")
    return str(value)


def adversarial_confidence(logits: torch.Tensor, labels: torch.Tensor, targeted: bool, task: str) -> torch.Tensor | None:
    """Probability of the adversarial class per sample: p(target) (targeted) or the
    largest probability of a wrong class (untargeted); None for multi-label heads."""
    logits = logits.detach().float()
    if task == "multiclass":
        p = logits.softmax(dim=1)
        if targeted:
            return p.gather(1, labels.long()[:, None])[:, 0]
        return p.scatter(1, labels.long()[:, None], 0.0).amax(dim=1)
    if task == "binary":
        p1 = logits.reshape(-1).sigmoid()
        p_label = torch.where(labels.reshape(-1).long() == 1, p1, 1 - p1)
        return p_label if targeted else 1 - p_label
    return None


class Ascent:
    """Gradient ascent on a parameter tensor, row by row (rows = samples, or one row).

    ``adam``: Adam (Kingma & Ba 2015, betas 0.9/0.999, eps 1e-8) with a per-row step
    count (rows that stop early keep their moments); ``sign``: delta += lr * sign(g).
    """

    def __init__(self, kind: str, lr: float, like: torch.Tensor) -> None:
        self.kind, self.lr = kind, float(lr)
        if kind == "adam":
            self.m = torch.zeros_like(like)
            self.v = torch.zeros_like(like)
            self.t = torch.zeros(like.shape[0], dtype=torch.long, device=like.device)

    def step(self, param: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The updated rows ``param[rows]`` (``param`` is the full tensor; all rows if None)."""
        p = param if rows is None else param[rows]
        if self.kind == "sign":
            return p + self.lr * grad.sign()
        b1, b2 = 0.9, 0.999
        if rows is None:
            rows = torch.arange(param.shape[0], device=param.device)
        self.t[rows] += 1
        t = self.t[rows].to(grad.dtype).reshape(-1, *([1] * (grad.dim() - 1)))
        m = b1 * self.m[rows] + (1 - b1) * grad
        v = b2 * self.v[rows] + (1 - b2) * grad * grad
        self.m[rows], self.v[rows] = m, v
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return p + self.lr * m_hat / (v_hat.sqrt() + 1e-8)


def default_lr(optimizer: str, lr: float | None) -> float:
    if lr is None:
        return 0.01 if optimizer == "adam" else 1 / 255
    if not math.isfinite(float(lr)) or float(lr) <= 0:
        raise InputError(f"lr must be a positive number, got {lr!r}")
    return float(lr)
