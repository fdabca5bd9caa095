"""Core value types: :class:`ThreatModel`, :class:`InputSpec`, :class:`AttackResult`.

The threat model is passed to every attack call (Foolbox style), so sweeping eps is a
loop and an attack object never hides its budget. eps is always stated in input units
(the image bounds of :class:`InputSpec`, usually [0, 1]); reports also give eps*255.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from medsec.errors import InputError

NORMS = ("linf", "l2", "patch")


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker may change.

    Args:
        norm: ``"linf"`` or ``"l2"`` (additive perturbation in input units), or
            ``"patch"`` (eps is the fraction of pixels that may be replaced).
        eps: the budget, >= 0, in input units (for ``"patch"``: coverage in [0, 1]).
        targeted: whether the attacker aims at a chosen target instead of any error.

    Example:
        >>> ThreatModel("linf", 8 / 255).eps_255
        8.0
    """

    norm: str = "linf"
    eps: float = 8 / 255
    targeted: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            from medsec.registry import suggest

            raise InputError(
                f"unknown norm {self.norm!r}.{suggest(str(self.norm), NORMS)} Use one of {', '.join(NORMS)}."
            )
        eps = float(self.eps)
        if not math.isfinite(eps) or eps < 0:
            raise InputError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.norm == "patch" and eps > 1:
            raise InputError(f"patch eps is a pixel fraction and must be <= 1, got {eps}")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "targeted", bool(self.targeted))

    @property
    def eps_255(self) -> float:
        """eps in 8-bit levels (eps * 255), as reports state it."""
        return self.eps * 255.0

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps, "eps_255": self.eps_255, "targeted": self.targeted}


@dataclass(frozen=True)
class InputSpec:
    """How a model expects its input; normalisation happens inside the model wrapper.

    Args:
        channels: number of image channels.
        bounds: (low, high) of valid pixel values for attacks.
        mean, std: per-channel normalisation applied inside the model.
        size: optional (H, W) the model was trained on.

    Example:
        >>> InputSpec(channels=3, mean=(0.5,) * 3, std=(0.5,) * 3).bounds
        (0.0, 1.0)
    """

    channels: int = 3
    bounds: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        lo, hi = (float(b) for b in self.bounds)
        if not lo < hi:
            raise InputError(f"bounds must satisfy low < high, got {self.bounds}")
        object.__setattr__(self, "bounds", (lo, hi))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(float(v) for v in value)
            if len(value) not in (1, self.channels):
                raise InputError(
                    f"{name} has {len(value)} values but the model has {self.channels} channels"
                )
            object.__setattr__(self, name, value)
        if self.std is not None and any(s <= 0 for s in self.std):
            raise InputError(f"std must be positive, got {self.std}")
        if self.size is not None:
            object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "bounds": list(self.bounds),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "size": list(self.size) if self.size is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        return cls(
            channels=int(d["channels"]),
            bounds=tuple(d.get("bounds", (0.0, 1.0))),
            mean=tuple(d["mean"]) if d.get("mean") is not None else None,
            std=tuple(d["std"]) if d.get("std") is not None else None,
            size=tuple(d["size"]) if d.get("size") is not None else None,
        )


@dataclass
class AttackResult:
    """What an attack call returns.

    Attributes:
        x_adv: adversarial images, same shape/dtype/device as the input.
        success: bool per sample, the objective's success test on ``x_adv``.
        loss: the objective's final per-sample loss (higher = stronger attack).
        norms: per-sample perturbation norms ``{"linf", "l2", "l0"}``.
        queries: model forward passes spent per sample.
        steps: iterations run (the maximum over samples).
        logits: model output on ``x_adv`` (detached).
        extras: attack-specific details (e.g. per-stage results of a cascade).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    norms: dict[str, torch.Tensor] = field(default_factory=dict)
    queries: torch.Tensor | None = None
    steps: int = 0
    logits: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")
