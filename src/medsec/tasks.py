"""The prediction tasks medsec knows and how logits become predictions.

Classification heads are ``multiclass`` (softmax over C classes), ``binary`` (one logit) or
``multilabel`` (one sigmoid per label); segmentation logits (B, C, H, W) become class masks.
Datasets, models, objectives and metrics all read these from here.

Example:
    >>> import torch
    >>> predict_from_logits(torch.tensor([[0.1, 2.0], [3.0, -1.0]]), "multiclass").tolist()
    [1, 0]
    >>> predict_mask(torch.tensor([[[[1.0, -1.0]]]])).tolist()
    [[[1, 0]]]
"""

from __future__ import annotations

import torch

from medsec.errors import InputError

TASKS = ("multiclass", "binary", "multilabel")


def predict_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Labels from logits for a head type: the class index (multiclass), 0/1 (binary), a 0/1
    vector (multilabel)."""
    if task == "multiclass":
        return logits.argmax(dim=1)
    if task == "binary":
        return (logits.reshape(logits.shape[0]) > 0).long()
    return (logits > 0).long()


def predict_mask(logits: torch.Tensor) -> torch.Tensor:
    """Class masks (B, H, W) from mask logits (B, C, H, W): sigmoid > 0.5 for one channel, argmax otherwise."""
    if logits.dim() != 4:
        raise InputError(f"segmentation logits must have shape (B, C, H, W), got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


__all__ = ["TASKS", "predict_from_logits", "predict_mask"]
