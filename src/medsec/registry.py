"""A small typed registry with "did you mean" errors.

Every pluggable unit of medsec (attacks, objectives, models, datasets, metrics) is
registered by name so that configs can refer to it without import paths or ``eval``.

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
import inspect
from collections.abc import Callable, Iterator
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
    """Maps names to factories (classes or functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name``."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = factory
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``."""
        if not isinstance(name, str):
            raise RegistryError(f"{self.kind} name must be a string, got {type(name).__name__}")
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
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._items)
