"""Label-free attacks on tile encoders and the whole-slide attack built on them."""

from __future__ import annotations

from medsec.wsi.attacks.cw import FeatureCW
from medsec.wsi.attacks.deepfool import FeatureDeepFool
from medsec.wsi.attacks.feature_attack import FEATURE_ATTACKS, EmbeddingAsLogits, build_attack, feature_attack
from medsec.wsi.attacks.objective import FeatureDeviation, deviation

__all__ = ["FEATURE_ATTACKS", "EmbeddingAsLogits", "FeatureCW", "FeatureDeepFool", "FeatureDeviation",
           "build_attack", "deviation", "feature_attack"]
