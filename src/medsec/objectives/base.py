"""The objective contract: a per-sample loss to maximise and a per-sample success test.

An objective is independent of the attack: the same PGD maximises cross-entropy for a
classifier, BCE for a multi-label head, Dice+CE for a segmenter or the label-free
feature deviation for a foundation model. For a targeted attack ``y`` holds the target
and the loss rewards reaching it.
"""

from __future__ import annotations

import torch
from torch import nn

from medsec.errors import InputError
from medsec.tasks import TASKS, predict_from_logits


class Objective:
    """Base class of objectives.

    Args:
        task: the head type, ``"multiclass"``, ``"binary"`` or ``"multilabel"`` (or
            ``"segmentation"``, ``"embedding"`` for the objectives that support them).

    ``task`` is the head the objective is built for, the one positional parameter; the
    hyper-parameters of every objective are keyword-only.
    """

    name: str = "objective"
    tasks: tuple[str, ...] = TASKS

    def __init__(self, task: str = "multiclass") -> None:
        if task not in self.tasks:
            raise InputError(
                f"objective {self.name!r} does not support {task!r} heads; it supports {', '.join(self.tasks)}"
            )
        self.task = task

    def prepare(self, model: nn.Module, x: torch.Tensor) -> Objective:
        """The objective for one attack call on the clean inputs ``x`` (the model in eval
        mode): itself, or a copy bound to what it needs from the clean point (the label-free
        feature deviation binds the clean embeddings). Called once per call, before any loss."""
        return self

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        """Per-sample loss (shape (B,)) that the attacker maximises."""
        raise NotImplementedError

    def success(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        """Per-sample bool: untargeted = prediction differs from ``y`` (any label for
        multi-label); targeted = prediction equals the target ``y`` (all labels)."""
        pred = predict_from_logits(logits.detach(), self.task)
        if self.task == "multilabel":
            equal = (pred == y.long()).all(dim=1)
        else:
            equal = pred == y.long()
        return equal if targeted else ~equal

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r})"


def signed_margins(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample margin of the label ``y``: positive when ``y`` is predicted.

    multiclass: z_y - max_{j != y} z_j; binary: (2y - 1) z; multilabel: the smallest
    per-label margin min_k (2y_k - 1) z_k.
    """
    if task == "multiclass":
        z_y = logits.gather(1, y.long()[:, None])[:, 0]
        other = logits.clone()
        other.scatter_(1, y.long()[:, None], float("-inf"))
        return z_y - other.max(dim=1).values
    sign = 2.0 * y.to(logits.dtype) - 1.0
    if task == "binary":
        return sign * logits.reshape(logits.shape[0])
    return (sign * logits).min(dim=1).values
