"""The MIL head contract: a bag of tile features (N, D) -> slide logits (C,).

Heads also give per-tile attention scores (``attention``) that the grey-box,
attention-guided tile selection reads. Heads take the bag as (N, D) or (1, N, D).

Every head standardises its input features with per-dimension statistics held as
buffers (``feat_mean``, ``feat_std``; identity until :meth:`MILHead.set_feature_stats`
is called, which :func:`~medsec.wsi.mil.train.train_mil` does with the training tiles).
The statistics live in the head (and its state dict) so that the raw cached features,
clean or attacked, are what every caller passes.

Every head also records its builder arguments (:attr:`MILHead.arch`, ``{"name", "params"}``
of the ``MIL_HEADS`` registry), so :func:`medsec.models.save_checkpoint` can store it and
:func:`medsec.models.load_checkpoint` rebuild it.

Threat model: not applicable (victim models).
"""

from __future__ import annotations

from typing import Any

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
    """Base class: ``forward(bag) -> (C,) logits``; ``attention(bag) -> (N,)`` scores.

    Args:
        in_dim: the tile-feature size D.
        num_classes: slide classes C (>= 2).

    Subclasses set ``name`` (their registry name) and ``hparams`` (their keyword-only
    hyper-parameters), which make up :attr:`arch`.
    """

    name = "mil"
    feat_mean: torch.Tensor  # (D,) buffers: the input standardisation (set_feature_stats)
    feat_std: torch.Tensor

    def __init__(self, in_dim: int, num_classes: int = 2) -> None:
        super().__init__()
        if int(in_dim) < 1 or int(num_classes) < 2:
            raise InputError(f"in_dim must be >= 1 and num_classes >= 2, got {in_dim}, {num_classes}")
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        self.hparams: dict[str, Any] = {}
        self.register_buffer("feat_mean", torch.zeros(self.in_dim))
        self.register_buffer("feat_std", torch.ones(self.in_dim))

    @property
    def arch(self) -> dict[str, Any]:
        """``{"name", "params"}`` that rebuild this head from the ``MIL_HEADS`` registry."""
        return {"name": self.name, "params": {"in_dim": self.in_dim, "num_classes": self.num_classes, **self.hparams}}

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor, floor: float = 1e-3) -> MILHead:
        """Standardise inputs as (x - mean) / max(std, floor) from now on (per dimension)."""
        mean, std = torch.as_tensor(mean).flatten(), torch.as_tensor(std).flatten()
        if mean.shape != (self.in_dim,) or std.shape != (self.in_dim,):
            raise InputError(f"feature statistics must have shape ({self.in_dim},), got {tuple(mean.shape)}, {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise InputError("feature statistics hold NaN/Inf")
        self.feat_mean.copy_(mean.to(self.feat_mean))
        self.feat_std.copy_(std.clamp_min(floor).to(self.feat_std))
        return self

    def standardize(self, feats: torch.Tensor) -> torch.Tensor:
        """(feats - feat_mean) / feat_std, per dimension."""
        return (feats - self.feat_mean.to(feats.dtype)) / self.feat_std.to(feats.dtype)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(self.standardize(check_bag(feats, self.in_dim)))[0]

    @torch.no_grad()
    def attention(self, feats: torch.Tensor) -> torch.Tensor:
        """(N,) non-negative per-tile importance (the head's own attention)."""
        was = self.training
        self.eval()
        try:
            return self.forward_with_attention(self.standardize(check_bag(feats, self.in_dim)))[1].detach()
        finally:
            self.train(was)

    def forward_with_attention(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
