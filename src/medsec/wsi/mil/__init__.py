"""MIL heads over bags of tile features: gated attention (ABMIL), TransMIL, mean/max pooling."""

from __future__ import annotations

from medsec.wsi.mil import abmil, pooling, transmil  # noqa: F401  (registration)
from medsec.wsi.mil.abmil import GatedAttentionMIL
from medsec.wsi.mil.base import MILHead, check_bag
from medsec.wsi.mil.pooling import MaxPoolMIL, MeanPoolMIL
from medsec.wsi.mil.train import bag_metrics, create_head, evaluate_mil, predict_bags, train_mil
from medsec.wsi.mil.transmil import TransMIL

__all__ = ["MILHead", "GatedAttentionMIL", "TransMIL", "MeanPoolMIL", "MaxPoolMIL", "check_bag", "create_head",
           "train_mil", "evaluate_mil", "predict_bags", "bag_metrics"]
