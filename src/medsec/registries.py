"""The registries of medsec's pluggable units (one per kind).

Units register themselves on import of their package; ``medsec.attacks.create``,
``medsec.models.create`` and friends are thin views of these.
"""

from __future__ import annotations

from typing import Any

from medsec.registry import Registry

ATTACKS: Registry[Any] = Registry("attack")
OBJECTIVES: Registry[Any] = Registry("objective")
MODELS: Registry[Any] = Registry("model")
DATASETS: Registry[Any] = Registry("dataset")
METRICS: Registry[Any] = Registry("metric")
DEFENSES: Registry[Any] = Registry("defense")
TRIGGERS: Registry[Any] = Registry("trigger")
DETECTORS: Registry[Any] = Registry("detector")
REPAIRS: Registry[Any] = Registry("repair")
MASKS: Registry[Any] = Registry("mask")
ENCODERS: Registry[Any] = Registry("encoder")
MIL_HEADS: Registry[Any] = Registry("mil_head")
