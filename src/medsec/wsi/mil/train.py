"""Training and evaluation of MIL heads on cached bags (one bag per step, as in Ilse
et al. 2018 and CLAM): Adam, cross-entropy on the slide label.

Threat model: not applicable. Evaluation gives accuracy, balanced accuracy and AUROC
(scikit-learn; one-vs-rest macro AUROC for more than two classes; NaN when the labels
hold one class only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medsec.errors import InputError
from medsec.registries import MIL_HEADS


def create_head(name: str, in_dim: int, num_classes: int = 2, **params: Any) -> nn.Module:
    """A registered MIL head (``abmil``, ``transmil``, ``mean``, ``max``)."""
    import medsec.wsi.mil  # noqa: F401  (registration)

    return MIL_HEADS.create(name, in_dim=in_dim, num_classes=num_classes, **params)


def _check(bags: Sequence[torch.Tensor], labels: Sequence[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    y = torch.as_tensor(labels).long()
    if len(bags) == 0:
        raise InputError("no bags given")
    if y.shape != (len(bags),):
        raise InputError(f"labels must have one entry per bag ({len(bags)}), got shape {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise InputError(f"bag labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    return y


def train_mil(head: nn.Module, bags: Sequence[torch.Tensor], labels: Sequence[int] | torch.Tensor,
              epochs: int = 20, lr: float = 2e-4, weight_decay: float = 1e-5,
              generator: torch.Generator | None = None) -> nn.Module:
    """Train ``head`` on (bag, label) pairs in place, one bag per step, and return it in eval mode."""
    y = _check(bags, labels, head.num_classes)
    if int(epochs) < 1 or not lr > 0:
        raise InputError(f"epochs must be >= 1 and lr > 0, got {epochs}, {lr}")
    dev = next(head.parameters()).device
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    for _ in range(int(epochs)):
        for i in torch.randperm(len(bags), generator=generator).tolist():
            loss = nn.functional.cross_entropy(head(bags[i].to(dev))[None], y[i:i + 1].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def predict_bags(head: nn.Module, bags: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, C) softmax probabilities of each bag."""
    was = head.training
    head.eval()
    try:
        dev = next(head.parameters()).device
        return torch.stack([torch.softmax(head(b.to(dev)).float(), 0).cpu() for b in bags])
    finally:
        head.train(was)


def bag_metrics(probs: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> dict[str, float]:
    """accuracy, balanced accuracy and AUROC of (B, C) probabilities."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = torch.as_tensor(labels).long().numpy()
    p = probs.numpy()
    pred = p.argmax(1)
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred))}
    if len(np.unique(y)) < 2:
        out["auroc"] = math.nan
    elif p.shape[1] == 2:
        out["auroc"] = float(roc_auc_score(y, p[:, 1]))
    else:
        out["auroc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=list(range(p.shape[1]))))
    return out


def evaluate_mil(head: nn.Module, bags: Sequence[torch.Tensor], labels: Sequence[int] | torch.Tensor) -> dict[str, Any]:
    """Metrics and predictions of ``head`` on ``bags``."""
    y = _check(bags, labels, head.num_classes)
    probs = predict_bags(head, bags)
    return {**bag_metrics(probs, y), "probs": probs, "pred": probs.argmax(1)}
