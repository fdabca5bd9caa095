"""Input defences and the :class:`Defended` model that applies one before a classifier.

An input defence g transforms the image before the model sees it: f(g(x)). Every
defence declares two facts that decide how it must be attacked (Athalye, Carlini &
Wagner, ICML 2018, "Obfuscated Gradients Give a False Sense of Security"):

* ``differentiable``: whether autograd gives useful gradients through g. If not
  (quantisation, JPEG, median filters), plain gradient attacks see zero or useless
  gradients, and the runner also attacks with BPDA: g in the forward pass, a
  differentiable ``approximation`` (identity by default: straight-through) backward.
* ``stochastic``: whether g is random. Then the runner also attacks with EOT
  (gradients averaged over several draws of g).

Example:
    >>> import medsec
    >>> classifier = medsec.models.create("small_cnn", num_classes=4, width=8)
    >>> defended = Defended(classifier, medsec.defenses.create("bit_depth", bits=3))
    >>> defended.differentiable, defended.stochastic
    (False, False)
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import nn


class InputDefense(nn.Module):
    """Base class of input-transformation defences (images in bounds -> images in bounds)."""

    name: ClassVar[str] = "defense"
    differentiable: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False

    def approximation(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable stand-in for BPDA's backward pass (default: identity)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Defended(nn.Module):
    """``classifier(defense(x))`` with the classifier's contract (spec, task, classes).

    Args:
        classifier: a :class:`~medsec.models.Classifier` (normalisation inside).
        defense: an :class:`InputDefense` applied to the [0, 1] image first.
        bpda: use the straight-through / approximation gradient for ``defense``.
    """

    def __init__(self, classifier: nn.Module, defense: InputDefense, bpda: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.defense = defense
        self.bpda = bool(bpda)

    # the Classifier contract (nn.Module's attribute lookup is typed Tensor | Module; these
    # attributes of a classifier are plain values)
    @property
    def spec(self) -> Any:
        return self.classifier.spec

    @property
    def task(self) -> str:
        return cast(str, self.classifier.task)

    @property
    def num_classes(self) -> int:
        return cast(int, self.classifier.num_classes)

    @property
    def classes(self) -> list[str]:
        return cast("list[str]", self.classifier.classes)

    @property
    def differentiable(self) -> bool:
        return self.bpda or self.defense.differentiable

    @property
    def stochastic(self) -> bool:
        return self.defense.stochastic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = _BPDA.apply(x, self.defense) if self.bpda else self.defense(x)
        logits: torch.Tensor = self.classifier(z)
        return logits

    def with_bpda(self) -> Defended:
        """The same model (in the same train/eval mode) whose backward pass goes through the
        defence's approximation."""
        return Defended(self.classifier, self.defense, bpda=True).train(self.training)


class _BPDA(torch.autograd.Function):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, defense: InputDefense) -> torch.Tensor:
        ctx.defense = defense
        ctx.save_for_backward(x)
        with torch.no_grad():
            out: torch.Tensor = defense(x)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        defense: InputDefense = ctx.defense
        if type(defense).approximation is InputDefense.approximation:
            return grad, None  # straight-through
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(defense.approximation(xx), xx, grad)
        return gx, None
