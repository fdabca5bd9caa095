"""Defences: input transformations (declaring differentiability and randomness).

Example:
    >>> import medsec
    >>> medsec.defenses.list()
    ['bit_depth', 'gaussian_blur', 'jpeg', 'median_filter', 'random_noise']
"""

from __future__ import annotations

from typing import Any

from medsec.defenses import bit_depth, gaussian_blur, jpeg, median_filter, random_noise  # noqa: F401  (registration)
from medsec.defenses.base import Defended, InputDefense
from medsec.defenses.smoothing import SmoothedClassifier, certified_accuracy_curve
from medsec.registries import DEFENSES


def create(name: str, **params: Any) -> InputDefense:
    """Build a registered defence."""
    return DEFENSES.create(name, **params)


def list() -> list[str]:  # noqa: A001
    return DEFENSES.list()


__all__ = ["Defended", "InputDefense", "SmoothedClassifier", "certified_accuracy_curve", "create", "list"]
