"""The MIL head contract: a bag of tile features (N, D) -> slide logits (C,).

Heads also give per-tile attention scores (``attention``) that the grey-box,
attention-guided tile selection reads. Heads take the bag as (N, D) or (1, N, D).

Threat model: not applicable (victim models).
"""

from __future__ import annotations

import torch
from torch import nn

from medsec.errors import InputError


def check_bag(feats: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, D) from (N, D) or (1, N, D); InputError for other shapes, an empty bag or NaNs."""
    if not isinstance(feats, torch.Tensor):
        raise InputError(f"a bag must be a torch.Tensor (N, D), got {type(feats).__name__}")
    if feats.dim() == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.dim() != 2 or feats.shape[1] != dim:
        raise InputError(f"a bag must have shape (N, {dim}) (features of N tiles), got {tuple(feats.shape)}")
    if feats.shape[0] == 0:
        raise InputError("the bag is empty (0 tiles)")
    if not torch.isfinite(feats).all():
        raise InputError("the bag holds NaN/Inf features")
    return feats


class MILHead(nn.Module):
    """Base class: ``forward(bag) -> (C,) logits``; ``attention(bag) -> (N,)`` scores."""

    name = "mil"

    def __init__(self, in_dim: int, num_classes: int = 2) -> None:
        super().__init__()
        if int(in_dim) < 1 or int(num_classes) < 2:
            raise InputError(f"in_dim must be >= 1 and num_classes >= 2, got {in_dim}, {num_classes}")
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(check_bag(feats, self.in_dim))[0]

    @torch.no_grad()
    def attention(self, feats: torch.Tensor) -> torch.Tensor:
        """(N,) non-negative per-tile importance (the head's own attention)."""
        was = self.training
        self.eval()
        try:
            return self.forward_with_attention(check_bag(feats, self.in_dim))[1].detach()
        finally:
            self.train(was)

    def forward_with_attention(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
