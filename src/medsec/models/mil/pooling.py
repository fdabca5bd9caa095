"""Mean and max pooling MIL baselines (the instance-embedding poolings of Ilse et al.,
ICML 2018, Sec. 2; Wang et al., "Revisiting MIL neural networks", Pattern Recognition 2018).

Threat model: not applicable (victim heads). h_i = ReLU(W x_i); z = mean_i h_i or
max_i h_i (per dimension); logits = C z. The "attention" of mean pooling is uniform; of
max pooling, the share of dimensions whose maximum tile i holds.

Example:
    >>> MaxPoolMIL(16)(torch.rand(10, 16)).shape
    torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn

from medsec.models.mil.base import MILHead
from medsec.registry import MIL_HEADS


class _PoolMIL(MILHead):
    def __init__(self, in_dim: int, num_classes: int = 2, *, hidden: int = 128) -> None:
        super().__init__(in_dim, num_classes)
        self.hparams = {"hidden": int(hidden)}
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)


@MIL_HEADS.register("mean")
class MeanPoolMIL(_PoolMIL):
    """Mean of the tile embeddings (Ilse et al., ICML 2018, Sec. 2.3).

    Threat model: not applicable (a victim head).

    Args:
        in_dim: the tile-feature size D.
        num_classes: slide classes.
        hidden: width of the tile embedding.
    """

    name = "mean"

    def forward_with_attention(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(feats)
        return self.classifier(h.mean(0)), torch.full((feats.shape[0],), 1.0 / feats.shape[0], device=feats.device)


@MIL_HEADS.register("max")
class MaxPoolMIL(_PoolMIL):
    """Per-dimension max of the tile embeddings (Ilse et al., ICML 2018, Sec. 2.3).

    Threat model: not applicable (a victim head).

    Args:
        in_dim: the tile-feature size D.
        num_classes: slide classes.
        hidden: width of the tile embedding.
    """

    name = "max"

    def forward_with_attention(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(feats)
        z, arg = h.max(0)
        share = torch.bincount(arg, minlength=feats.shape[0]).to(h.dtype) / h.shape[1]
        return self.classifier(z), share
