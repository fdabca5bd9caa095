"""Deprecated location of the registries: they live in :mod:`medsec.registry`."""

from __future__ import annotations

from medsec.registry import (  # noqa: F401
    ATTACKS,
    DATASETS,
    DEFENSES,
    DETECTORS,
    ENCODERS,
    MASKS,
    METRICS,
    MIL_HEADS,
    MODELS,
    OBJECTIVES,
    REPAIRS,
    TRIGGERS,
)
