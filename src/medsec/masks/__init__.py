"""Mask generators for patch attacks, registered by name (``medsec ls masks``).

Registered: ``ellipses`` (random nucleus-like ellipses, SNAP's sporadic mask),
``nuclei`` (blobs from a haematoxylin threshold of the image), ``square`` (one square,
the single-patch baseline of Brown et al. 2017). Every generator maps (images,
coverage, generator) to bool masks (B, 1, H, W) whose area never exceeds the coverage.

Example:
    >>> import medsec.masks
    >>> medsec.masks.list()
    ['ellipses', 'nuclei', 'square']
"""

from __future__ import annotations

import builtins
from typing import Any

from medsec.masks import ellipses, nuclei, square  # noqa: F401  (registration)
from medsec.masks.base import MaskGenerator, budget_pixels, check_coverage
from medsec.registry import MASKS


def create(name: str, **params: Any) -> MaskGenerator:
    """Build a registered mask generator, e.g. ``create("ellipses", count=30)``."""
    generator: MaskGenerator = MASKS.create(name, **params)
    return generator


def list() -> builtins.list[str]:  # noqa: A001
    return MASKS.list()


def resolve(mask: str | MaskGenerator, params: dict[str, Any] | None = None) -> MaskGenerator:
    """A generator from a registered name (with ``params``) or an instance (as is)."""
    if isinstance(mask, MaskGenerator):
        if params:
            from medsec.errors import ConfigError

            raise ConfigError("mask_params are only used with a mask name; configure the instance instead")
        return mask
    generator: MaskGenerator = MASKS.create(mask, **(params or {}))
    return generator


__all__ = ["MaskGenerator", "budget_pixels", "check_coverage", "create", "list", "resolve"]
