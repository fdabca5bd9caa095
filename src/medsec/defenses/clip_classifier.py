"""A CLIP-style zero-shot / prompt-learned classifier as an ordinary ``nn.Module``, so that
the backdoor detectors and repairs run on it unchanged.

The classifier is ``logits = head(normalize(encoder(x)))`` where ``head`` is a bias-free
``nn.Linear`` whose weight is ``logit_scale * T`` and T (C x D) holds the L2-normalised
class text features (a learnt CoOp prompt's, or a zero-shot prompt ensemble's): exactly
CLIP's ``logit_scale * cos(image, text)``. The input of that last ``nn.Linear`` is the
normalised image embedding, so :func:`medsec.models.features` (the default layer of
Spectral Signatures and Activation Clustering) reads the image encoder's embedding, STRIP
and Neural Cleanse see the class logits, and Fine-Pruning prunes embedding dimensions.

Threat model: none (a wrapper); the defender holds the image encoder and the class text
features of the deployed classifier.

Example:
    >>> import torch
    >>> enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))
    >>> clf = TextHeadClassifier(enc, torch.nn.functional.normalize(torch.randn(3, 8), dim=1), logit_scale=10.0)
    >>> clf(torch.rand(2, 3, 4, 4)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medsec.errors import InputError


class EncodeImage(nn.Module):
    """``fn(model, x)`` as a module holding ``model`` (e.g. a CLIP's ``encode_image``)."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


class TextHeadClassifier(nn.Module):
    """Image encoder + fixed class text features: CLIP's zero-shot classifier.

    Args:
        encoder: maps images (B, C, H, W) in [0, 1] to embeddings (B, D).
        text_features: (C, D) class text features (normalised here).
        logit_scale: CLIP's temperature multiplier (``exp`` of the stored log-scale).
        classes: optional class names.
        normalize_text: L2-normalise the rows of ``text_features`` (False keeps them as
            given, e.g. a MedCLIP prompt ensemble's mean of unit vectors).
    """

    task = "multiclass"

    def __init__(self, encoder: nn.Module, text_features: torch.Tensor, logit_scale: float = 100.0,
                 classes: list[str] | None = None, normalize_text: bool = True) -> None:
        super().__init__()
        t = torch.as_tensor(text_features).detach().float()
        if t.dim() != 2 or not torch.isfinite(t).all():
            raise InputError(f"text_features must be a finite (classes, dim) matrix, got shape {tuple(t.shape)}")
        if not float(logit_scale) > 0:
            raise InputError(f"logit_scale must be > 0, got {logit_scale}")
        self.encoder = encoder
        self.head = nn.Linear(t.shape[1], t.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(float(logit_scale) * (nn.functional.normalize(t, dim=1) if normalize_text else t))
        self.num_classes = t.shape[0]
        self.classes = list(classes) if classes is not None else None
        self.logit_scale = float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(nn.functional.normalize(self.encoder(x).float(), dim=-1))
        return logits

    def describe(self) -> dict[str, Any]:
        return {"classes": self.num_classes, "dim": self.head.in_features, "logit_scale": self.logit_scale}


__all__ = ["EncodeImage", "TextHeadClassifier"]
