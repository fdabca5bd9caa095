"""Executors run a kind's independent jobs (one or more cells each) and hand back results as
they finish; the kind's driver alone writes ``results.json``.

A distributed executor only has to implement :meth:`Executor.map`, without touching
attacks, kinds or reports. ``sequential`` (in this process, in plan order) is the default.

Example:
    >>> list(SequentialExecutor().map(lambda job: job * 2, [1, 2]))
    [(1, 2), (2, 4)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

C = TypeVar("C")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn`` on each job and yields ``(job, result)`` pairs as they finish."""

    def map(self, fn: Callable[[C], R], jobs: Iterable[C]) -> Iterator[tuple[C, R]]: ...


class SequentialExecutor:
    """Runs jobs one after another in this process (the default)."""

    name = "sequential"

    def map(self, fn: Callable[[C], R], jobs: Iterable[C]) -> Iterator[tuple[C, R]]:
        for job in jobs:
            yield job, fn(job)


__all__ = ["Executor", "SequentialExecutor"]
