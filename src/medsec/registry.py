"""Every registry of medsec, and the small typed registry they are made of.

Every pluggable unit (attacks, objectives, models, datasets, metrics, defences, triggers,
detectors, repairs, masks, tile encoders, MIL heads), every experiment kind and every
executor is registered by name, so that configs refer to it without import paths or ``eval``
and ``medsec ls`` lists it. Units register themselves when their package is imported; kinds
and executors are listed here by module (imported on first use, so ``medsec --help`` stays
light): adding a kind is one folder plus one line in :data:`KINDS`.

Example:
    >>> from medsec.registry import Registry
    >>> shapes = Registry("shapes")
    >>> @shapes.register("square")
    ... class Square:
    ...     def __init__(self, side=1):
    ...         self.side = side
    >>> shapes.create("square", side=2).side
    2
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from medsec.errors import ConfigError, RegistryError

T = TypeVar("T")


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a " Did you mean ...?" hint (or an empty string)."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def check_params(factory: Callable[..., Any], params: dict[str, Any], what: str) -> None:
    """Raise :class:`ConfigError` when ``params`` holds a key ``factory`` does not take."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = [
        n
        for n, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n != "self"
    ]
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"{what} has no parameter {key!r}.{suggest(key, valid)} "
                f"Valid parameters: {', '.join(valid) or '(none)'}."
            )


class Registry(Generic[T]):
    """Maps names to factories (classes or functions).

    Args:
        kind: what the registry holds, for messages (``attack`` -> "unknown attack ...").
        lazy: ``{name: "module:attribute"}`` entries imported on first use.
        providers: modules whose import registers units; imported once before the first
            lookup (``get``, ``create``, ``list``, ``in``, ``len``, iteration), so listing the
            registry needs no import of its package first. Registering imports nothing.
    """

    def __init__(
        self, kind: str, lazy: Mapping[str, str] | None = None, providers: tuple[str, ...] = ()
    ) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = dict(lazy or {})
        self.providers = providers
        self._loaded = not providers

    def load(self) -> None:
        """Import the providers once (their imports register the units)."""
        if self._loaded:
            return
        self._loaded = True
        for module in self.providers:
            importlib.import_module(module)

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name``."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if (name in self._items and self._items[name] is not factory) or name in self._lazy:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = factory
            return factory

        return deco

    def unregister(self, name: str) -> None:
        """Remove a unit registered with :meth:`register` (a plugin's or a test's); the
        built-in lazy entries cannot be removed."""
        if name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is built in and cannot be unregistered")
        if name not in self._items:
            raise RegistryError(f"{self.kind} {name!r} is not registered")
        del self._items[name]

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``."""
        if not isinstance(name, str):
            raise RegistryError(f"{self.kind} name must be a string, got {type(name).__name__}")
        self.load()
        if name not in self._items and name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            self._items[name] = getattr(importlib.import_module(module), attr)
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{suggest(name, self.list())} "
                f"Available: {', '.join(self.list())}. "
                f"(List them with `medsec ls {self.kind}s`.)"
            )
        return self._items[name]

    def create(self, name: str, **params: Any) -> T:
        """Build the unit ``name`` with ``params``; unknown params are errors."""
        factory = self.get(name)
        check_params(factory, params, f"{self.kind} {name!r}")
        return factory(**params)

    def list(self) -> list[str]:
        """Sorted registered names."""
        self.load()
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        self.load()
        return len(set(self._items) | set(self._lazy))

# the units: they register themselves when their package is imported, which the first lookup
# does (so `medsec ls` and configs see every unit without importing anything first)
ATTACKS: Registry[Any] = Registry("attack", providers=("medsec.attacks",))
OBJECTIVES: Registry[Any] = Registry("objective", providers=("medsec.objectives",))
MODELS: Registry[Any] = Registry("model", providers=("medsec.models",))
DATASETS: Registry[Any] = Registry("dataset", providers=("medsec.data",))
METRICS: Registry[Any] = Registry("metric", providers=("medsec.metrics", "medsec.metrics.naturalness"))
DEFENSES: Registry[Any] = Registry("defense", providers=("medsec.defenses",))
TRIGGERS: Registry[Any] = Registry("trigger", providers=("medsec.backdoors.triggers",))
DETECTORS: Registry[Any] = Registry("detector", providers=("medsec.defenses",))
REPAIRS: Registry[Any] = Registry("repair", providers=("medsec.defenses",))
MASKS: Registry[Any] = Registry("mask", providers=("medsec.masks",))
ENCODERS: Registry[Any] = Registry("encoder", providers=("medsec.wsi.encoders",))
MIL_HEADS: Registry[Any] = Registry("mil_head", providers=("medsec.models.mil",))

# experiment kinds: one line each (the folder medsec/experiments/<kind>/ exposes KIND)
KINDS: Registry[Any] = Registry("kind", lazy={  # medsec.runs.kind.Kind objects
    "evasion": "medsec.experiments.evasion:KIND",
    "segmentation": "medsec.experiments.segmentation:KIND",
    "backdoor_defense": "medsec.experiments.backdoor_defense:KIND",
    "prompt_backdoor": "medsec.experiments.prompt_backdoor:KIND",
    "badmatch": "medsec.experiments.badmatch:KIND",
    "wsi": "medsec.experiments.wsi:KIND",
})

# recipes whose checkpoints ship with medsec (medsec.recipes.shipped; `make checkpoints`
# retrains them): name -> (data root, cache folder) -> model(s)
RECIPES: Registry[Any] = Registry("recipe", lazy={
    "bloodmnist_cnn": "medsec.recipes.builtin:shipped_bloodmnist_cnn",
    "bloodmnist_pgd_at": "medsec.recipes.builtin:shipped_bloodmnist_pgd_at",
    "bloodmnist_trades": "medsec.recipes.builtin:shipped_bloodmnist_trades",
    "bloodmnist64_snap": "medsec.recipes.builtin:shipped_bloodmnist64_snap",
    "bloodmnist_badnets": "medsec.recipes.builtin:shipped_bloodmnist_badnets",
    "kvasir_unet": "medsec.recipes.builtin:shipped_kvasir_unet",
    "bloodmnist_clip": "medsec.recipes.builtin:shipped_bloodmnist_clip",
    "medical_clip": "medsec.recipes.builtin:shipped_medical_clip",
    "bloodmnist_badmatch": "medsec.experiments.badmatch.recipe:shipped",
})

# executors: run a kind's jobs (medsec.runs.executor)
EXECUTORS: Registry[Any] = Registry("executor", lazy={  # medsec.runs.executor.Executor classes
    "sequential": "medsec.runs.executors.sequential:SequentialExecutor",
    "process": "medsec.runs.executors.process:ProcessExecutor",
    "ray": "medsec.runs.executors.ray:RayExecutor",
})

__all__ = ["ATTACKS", "DATASETS", "DEFENSES", "DETECTORS", "ENCODERS", "EXECUTORS", "KINDS", "MASKS", "METRICS",
           "MIL_HEADS", "MODELS", "OBJECTIVES", "RECIPES", "REPAIRS", "TRIGGERS", "Registry", "check_params", "suggest"]
