"""MIL heads over bags of tile features: gated attention (ABMIL), TransMIL, mean/max pooling.

Registered in ``medsec.registry.MIL_HEADS``; :func:`create_head` builds one by name.
Training and evaluation on bags live in :mod:`medsec.training.mil`; the WSI package
(:mod:`medsec.wsi.mil`) re-exports both.

Example:
    >>> head = create_head("abmil", 16, hidden=32)
    >>> head(torch.rand(10, 16)).shape
    torch.Size([2])
"""

from __future__ import annotations

from typing import Any

import torch  # noqa: F401  (doctest namespace)

from medsec.models.mil import abmil, pooling, transmil  # noqa: F401  (registration)
from medsec.models.mil.abmil import GatedAttentionMIL
from medsec.models.mil.base import MILHead, check_bag
from medsec.models.mil.pooling import MaxPoolMIL, MeanPoolMIL
from medsec.models.mil.transmil import TransMIL
from medsec.registry import MIL_HEADS


def create_head(name: str, in_dim: int, num_classes: int = 2, **params: Any) -> MILHead:
    """A registered MIL head (``abmil``, ``transmil``, ``mean``, ``max``)."""
    head: MILHead = MIL_HEADS.create(name, in_dim=in_dim, num_classes=num_classes, **params)
    return head


__all__ = ["MILHead", "GatedAttentionMIL", "TransMIL", "MeanPoolMIL", "MaxPoolMIL", "check_bag", "create_head"]
