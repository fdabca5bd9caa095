"""Evasion attacks, registered by name.

Example:
    >>> import medsec
    >>> {"fgsm", "pgd", "snap"} <= set(medsec.attacks.list())
    True
    >>> pgd = medsec.attacks.create("pgd", steps=10)
"""

from __future__ import annotations

import builtins
from typing import Any

from medsec.attacks import (  # noqa: F401  (registration)
    adversarial_patch,
    apgd,
    autoattack,
    cw,
    deepfool,
    feature_cw,
    feature_deepfool,
    fgsm,
    fgsm_rs,
    mifgsm,
    pgd,
    snap,
    snap_universal,
    square,
    uap,
    uap_seg,
    uap_sgd,
)
from medsec.attacks.adaptive import adaptive, needs_adaptive
from medsec.attacks.base import Attack, Problem, attack_mode
from medsec.registry import ATTACKS


def create(name: str, **params: Any) -> Attack:
    """Build a registered attack, e.g. ``create("pgd", steps=20, random_start=False)``."""
    attack: Attack = ATTACKS.create(name, **params)
    return attack


def list() -> builtins.list[str]:  # noqa: A001
    return ATTACKS.list()


def get(name: str) -> type[Attack]:
    return ATTACKS.get(name)  # type: ignore[return-value]


def label_free() -> builtins.list[str]:
    """The attacks that run label-free, on an embedding model with the feature-deviation
    objective (capability ``label_free``), sorted."""
    return [n for n in ATTACKS.list() if getattr(ATTACKS.get(n), "label_free", False)]


__all__ = ["Attack", "Problem", "adaptive", "attack_mode", "create", "get", "label_free", "list", "needs_adaptive"]
