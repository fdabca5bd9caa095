"""Training and evaluation of MIL heads on bags: :mod:`medsec.training.mil` under its WSI name."""

from __future__ import annotations

from medsec.models.mil import create_head
from medsec.training.mil import bag_metrics, evaluate_mil, predict_bags, train_mil

__all__ = ["create_head", "train_mil", "predict_bags", "bag_metrics", "evaluate_mil"]
