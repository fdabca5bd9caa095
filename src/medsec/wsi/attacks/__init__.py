"""The entry point of label-free attacks on tile encoders (the attacks and the objective
are registered units: :mod:`medsec.attacks`, :mod:`medsec.objectives.feature_deviation`)."""

from __future__ import annotations

import medsec.attacks
from medsec.objectives.feature_deviation import EmbeddingAsLogits, FeatureDeviation, deviation
from medsec.wsi.attacks.feature_attack import (
    LABEL_FREE_DEFAULTS,
    RENAMED,
    PerEps,
    check_label_free,
    feature_attack,
    label_free_params,
)

#: the registered label-free attacks (``medsec.attacks.label_free()``)
FEATURE_ATTACKS = tuple(medsec.attacks.label_free())

__all__ = ["FEATURE_ATTACKS", "LABEL_FREE_DEFAULTS", "RENAMED", "EmbeddingAsLogits", "FeatureDeviation", "PerEps",
           "check_label_free", "deviation", "feature_attack", "label_free_params"]
