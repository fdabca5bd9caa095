"""MIL heads over bags of tile features, as the WSI package uses them.

The heads are model units (:mod:`medsec.models.mil`, registered in ``MIL_HEADS``) and their
training on bags is in :mod:`medsec.training.mil`; this package re-exports both under the
names the WSI pipeline has always used.
"""

from __future__ import annotations

from medsec.models.mil import GatedAttentionMIL, MaxPoolMIL, MeanPoolMIL, MILHead, TransMIL, check_bag, create_head
from medsec.training.mil import bag_metrics, evaluate_mil, predict_bags, train_mil

__all__ = ["MILHead", "GatedAttentionMIL", "TransMIL", "MeanPoolMIL", "MaxPoolMIL", "check_bag", "create_head",
           "train_mil", "evaluate_mil", "predict_bags", "bag_metrics"]
