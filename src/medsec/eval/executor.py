"""Executors run the runner's independent (attack, eps) cells.

The runner hands an executor a function and a list of cells and consumes results as
they finish; a distributed executor (Ray, a job queue) only has to implement
:meth:`Executor.map`, without touching attacks or reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from medsec.errors import ConfigError
from medsec.registry import suggest

C = TypeVar("C")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn`` on each cell and yields ``(cell, result)`` pairs as they finish."""

    def map(self, fn: Callable[[C], R], cells: Iterable[C]) -> Iterator[tuple[C, R]]: ...


class SequentialExecutor:
    """Runs cells one after another in this process (the default)."""

    def map(self, fn: Callable[[C], R], cells: Iterable[C]) -> Iterator[tuple[C, R]]:
        for cell in cells:
            yield cell, fn(cell)


EXECUTORS: dict[str, Callable[[], Any]] = {"sequential": SequentialExecutor}


def get_executor(name: str) -> Executor:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}.{suggest(name, list(EXECUTORS))}")
    return EXECUTORS[name]()
