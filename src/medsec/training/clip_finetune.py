"""Full fine-tuning (FT) of a CLIP image encoder with a linear head, the FT training mode of
the BAPLe comparison (Hanif et al., "BAPLe: Backdoor Attacks on Medical Foundational Models
using Prompt Learning", MICCAI 2024, Tables 1-2, rows ``*_FT``).

Threat model: not applicable by itself (a training mode); a data-poisoning attacker
controls a fraction of the images and labels it trains on.

The head is a linear layer on the normalised image feature, initialised from the zero-shot
classifier (``logit_scale`` x the normalised mean caption feature of each class, or of
the plain class name), so FT starts where zero-shot CLIP is; the image tower and the head
are then trained together with AdamW and a cosine schedule. The paper gives only the FT
learning rate (5e-5); the optimiser, the head initialisation and the schedule are medsec's
choices, stated here and in docs/baple.md.

Example:
    >>> from medsec.models.clip import SMALL_CONFIGS, open_clip_model
    >>> clip = open_clip_model(config=SMALL_CONFIGS["ViT-B-32"], image_size=32)
    >>> text_features = clip.encode_text(clip.tokenize(["a basophil", "an eosinophil"]), normalize=True)
    >>> ft = ClipFinetuned(clip, text_features)
    >>> record = train_finetune(ft, torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4), epochs=1)
    >>> ft.predict(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2])
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsec.errors import InputError
from medsec.models.clip import ClipModel

log = logging.getLogger(__name__)


class ClipFinetuned(nn.Module):
    """A copy of ``clip``'s image tower with a linear head; ``forward(x in [0, 1]) -> logits``.

    Args:
        clip: the CLIP-style model (copied: the original is never changed).
        text_features: normalised class text features (C, D) that initialise the head.
    """

    def __init__(self, clip: ClipModel, text_features: torch.Tensor) -> None:
        super().__init__()
        if text_features.dim() != 2:
            raise InputError(f"text_features must be (classes, dim), got {tuple(text_features.shape)}")
        self.clip = copy.deepcopy(clip)
        c, d = text_features.shape
        self.head = nn.Linear(d, c)
        with torch.no_grad():
            self.head.weight.copy_(float(clip.logit_scale) * F.normalize(text_features.float(), dim=-1))
            self.head.bias.zero_()

    def parameters_to_train(self) -> list[nn.Parameter]:
        return [*self.clip.image_parameters(), *self.head.parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.clip.encode_image(x, normalize=True))
        return logits

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        was = self.training
        self.eval()
        out = torch.cat([self(images[i : i + batch_size].float()).argmax(1) for i in range(0, len(images), batch_size)])
        self.train(was)
        return out


def train_finetune(model: ClipFinetuned, images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 50,
                   batch_size: int = 16, lr: float = 5e-5, weight_decay: float = 0.01,
                   generator: torch.Generator | None = None) -> dict[str, Any]:
    """Train the image tower and head on (possibly poisoned) ``images``/``labels``; AdamW, cosine."""
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise InputError(f"images (N, C, H, W) and labels (N,) must match, got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    params = model.parameters_to_train()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    n = len(labels)
    steps = epochs * math.ceil(n / batch_size)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    t0 = time.perf_counter()
    history = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(images[idx].float()), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / n})
    model.eval()
    return {"history": history, "runtime_s": time.perf_counter() - t0}


__all__ = ["ClipFinetuned", "train_finetune"]
