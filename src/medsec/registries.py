"""The registries of medsec's pluggable units (one per kind).

Units register themselves on import of their package; ``medsec.attacks.create``,
``medsec.models.create`` and friends are thin views of these. The registries of the
whole-slide units, :data:`ENCODERS` (tile encoders, :mod:`medsec.wsi.encoders`) and
:data:`MIL_HEADS` (:mod:`medsec.wsi.mil`), import the modules that fill them on the first
lookup, so that listing them needs no import of the package first:

    >>> {"abmil", "mean", "max", "transmil"} <= set(MIL_HEADS.list())
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from medsec.registry import Registry


class ProvidedRegistry(Registry[Any]):
    """A registry that imports its ``providers`` (module names) before the first lookup
    (``get``, ``create``, ``list``, ``in``, ``len``, iteration); registration itself
    imports nothing."""

    def __init__(self, kind: str, providers: tuple[str, ...]) -> None:
        super().__init__(kind)
        self.providers = providers
        self.loaded = False

    def load(self) -> None:
        """Import the providers once (their imports register the units)."""
        if self.loaded:
            return
        self.loaded = True
        for module in self.providers:
            importlib.import_module(module)

    def get(self, name: str) -> Callable[..., Any]:
        self.load()
        return super().get(name)

    def list(self) -> list[str]:
        self.load()
        return super().list()

    def __contains__(self, name: object) -> bool:
        self.load()
        return super().__contains__(name)

    def __len__(self) -> int:
        self.load()
        return super().__len__()


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
ENCODERS: Registry[Any] = ProvidedRegistry("encoder", ("medsec.wsi.encoders",))
MIL_HEADS: Registry[Any] = ProvidedRegistry("mil_head", ("medsec.wsi.mil",))
