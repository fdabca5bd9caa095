"""Backdoor triggers: ``sample_params(shape, generator)`` then ``apply(x, params)``.

Registered names: ``badnets``, ``blended``, ``wanet``, ``fiba``, ``noise``, ``text``.

Example:
    >>> import torch
    >>> from medsec.backdoors import triggers
    >>> t = triggers.create("badnets", size=3)
    >>> x = torch.rand(4, 3, 28, 28)
    >>> x_t = t.apply(x, t.sample_params(x.shape))
"""

from __future__ import annotations

import builtins
from typing import Any

from medsec.backdoors.triggers import badnets, blended, fiba, noise, text, wanet  # noqa: F401  (registration)
from medsec.backdoors.triggers.badnets import BadNets
from medsec.backdoors.triggers.base import Params, Trigger
from medsec.backdoors.triggers.blended import Blended
from medsec.backdoors.triggers.fiba import FIBA
from medsec.backdoors.triggers.noise import NoiseTrigger
from medsec.backdoors.triggers.text import TextTrigger
from medsec.backdoors.triggers.wanet import WaNet
from medsec.registry import TRIGGERS


def create(name: str, **params: Any) -> Trigger:
    """A registered trigger by name (``medsec ls triggers`` lists them)."""
    trigger: Trigger = TRIGGERS.create(name, **params)
    return trigger


def list() -> builtins.list[str]:  # noqa: A001  (mirrors medsec.attacks.list)
    return TRIGGERS.list()


__all__ = ["BadNets", "Blended", "FIBA", "NoiseTrigger", "TextTrigger", "WaNet", "Params", "Trigger", "create", "list"]
