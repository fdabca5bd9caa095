"""Objectives: what an attack maximises and when it has succeeded.

Example:
    >>> from medsec import objectives
    >>> {'bce', 'ce', 'margin', 'feature_deviation'} <= set(objectives.list())
    True
"""

from __future__ import annotations

import builtins
from typing import Any

from medsec.objectives import (  # noqa: F401  (registration)
    bce,
    cross_entropy,
    dice_ce,
    dlr,
    feature_deviation,
    margin,
    pixel_disagreement,
)
from medsec.objectives.base import Objective, signed_margins
from medsec.objectives.feature_deviation import EmbeddingAsLogits, FeatureDeviation, deviation
from medsec.registry import OBJECTIVES

DEFAULT_FOR_TASK = {"multiclass": "ce", "binary": "bce", "multilabel": "bce", "segmentation": "dice_ce",
                    "embedding": "feature_deviation"}


def create(name: str, **params: Any) -> Objective:
    """Build a registered objective, e.g. ``create("margin", task="binary")``."""
    objective: Objective = OBJECTIVES.create(name, **params)
    return objective


def list() -> builtins.list[str]:  # noqa: A001  (mirrors torchattacks/timm naming)
    return OBJECTIVES.list()


def resolve(spec: str | Objective | None, task: str) -> Objective:
    """An objective from a name (``"auto"`` picks CE or BCE by head type, Dice+CE for
    segmenters, the feature deviation for embedding models) or an instance."""
    if isinstance(spec, Objective):
        return spec
    name = DEFAULT_FOR_TASK[task] if spec in (None, "auto") else spec
    objective: Objective = OBJECTIVES.create(name, task=task)
    return objective


__all__ = ["DEFAULT_FOR_TASK", "EmbeddingAsLogits", "FeatureDeviation", "Objective", "create", "deviation", "list",
           "resolve", "signed_margins"]
