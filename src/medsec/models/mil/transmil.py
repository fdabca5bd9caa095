"""TransMIL, a compact faithful version (Shao et al., "TransMIL: Transformer based
Correlated Multiple Instance Learning for Whole Slide Image Classification", NeurIPS 2021).

Threat model: not applicable (victim head). As in the paper: a linear+ReLU projection,
the token sequence padded to a square number by repeating its first tokens, a class
token, a Transformer layer, the PPEG position encoder (depthwise 7x7, 5x5 and 3x3
convolutions on the 2-D token grid added to it), a second Transformer layer, LayerNorm
and a linear classifier on the class token. Difference from the paper, on purpose: the
attention is exact softmax attention (``nn.MultiheadAttention``) instead of the Nystrom
approximation (Xiong et al. 2021), which it approximates; exact attention on bags of a
few thousand tiles fits memory, and removes an approximation parameter. The attention
returned is the class token's attention to the (unpadded) tiles in the last layer,
averaged over heads.

Example:
    >>> TransMIL(32, dim=32, heads=2)(torch.rand(20, 32)).shape
    torch.Size([2])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medsec.models.mil.base import MILHead
from medsec.registry import MIL_HEADS


class _TransLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm(x)
        out, w = self.attn(y, y, y, need_weights=True, average_attn_weights=True)
        return x + out, w


class _PPEG(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls, tokens = x[:, :1], x[:, 1:]
        b, n, c = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, c, side, side)
        grid = grid + self.proj7(grid) + self.proj5(grid) + self.proj3(grid)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


@MIL_HEADS.register("transmil")
class TransMIL(MILHead):
    """TransMIL with exact attention (Shao et al., NeurIPS 2021; see the module docstring).

    Threat model: not applicable (a victim head).

    Args:
        in_dim: the tile-feature size D.
        num_classes: slide classes.
        dim: the token width (paper: 512).
        heads: attention heads per Transformer layer (paper: 8).
        dropout: attention dropout.
    """

    name = "transmil"

    def __init__(self, in_dim: int, num_classes: int = 2, *, dim: int = 128, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__(in_dim, num_classes)
        self.hparams = {"dim": int(dim), "heads": int(heads), "dropout": float(dropout)}
        self.fc1 = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = _TransLayer(dim, heads, dropout)
        self.ppeg = _PPEG(dim)
        self.layer2 = _TransLayer(dim, heads, dropout)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward_with_attention(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = feats.shape[0]
        h = self.fc1(feats)[None]
        side = int(math.ceil(math.sqrt(n)))
        pad = side * side - n
        if pad:
            h = torch.cat([h, h[:, :pad]], dim=1)
        h = torch.cat([self.cls_token.to(h.dtype), h], dim=1)
        h, _ = self.layer1(h)
        h = self.ppeg(h, side)
        h, w = self.layer2(h)
        logits = self.classifier(self.norm(h)[0, 0])
        attn = w[0, 0, 1:1 + n]
        return logits, attn / attn.sum().clamp_min(1e-12)
