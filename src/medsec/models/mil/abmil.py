"""Gated attention MIL (Ilse, Tomczak & Welling, "Attention-based Deep Multiple
Instance Learning", ICML 2018).

Threat model: not applicable (victim head). h_i = ReLU(W x_i); a_i = softmax_i(w^T
(tanh(V h_i) * sigmoid(U h_i))); z = sum_i a_i h_i; logits = C z. The paper's sizes
(L = 500, attention 128) are the defaults' shape; medsec defaults to hidden 128 and
attention 64 for the small offline features, configurable.

Example:
    >>> head = GatedAttentionMIL(128)
    >>> head(torch.rand(50, 128)).shape
    torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn

from medsec.models.mil.base import MILHead
from medsec.registry import MIL_HEADS


@MIL_HEADS.register("abmil")
class GatedAttentionMIL(MILHead):
    """Gated attention pooling + linear classifier (Ilse, Tomczak & Welling, ICML 2018, Sec. 2.4).

    Threat model: not applicable (a victim head; attacks perturb the tiles under it).

    Args:
        in_dim: the tile-feature size D.
        num_classes: slide classes.
        hidden: width L of the tile embedding h_i (paper: 500).
        attn_dim: width of the gated attention's hidden layer (paper: 128).
        dropout: dropout after the tile embedding.
    """

    name = "abmil"

    def __init__(self, in_dim: int, num_classes: int = 2, *, hidden: int = 128, attn_dim: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__(in_dim, num_classes)
        self.hparams = {"hidden": int(hidden), "attn_dim": int(attn_dim), "dropout": float(dropout)}
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Linear(hidden, attn_dim)
        self.attn_u = nn.Linear(hidden, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_with_attention(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(feats)
        a = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))[:, 0]
        a = torch.softmax(a, dim=0)
        return self.classifier(a @ h), a
