"""Progress bars for long loops: rich on a terminal, silent in CI or when piped."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def progress_enabled() -> bool:
    """True on an interactive terminal outside CI (``CI`` unset) unless MEDSEC_PROGRESS=0."""
    if os.environ.get("MEDSEC_PROGRESS") == "0" or os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **kwargs: Any) -> None:
        pass


class _RichTask:
    def __init__(self, bar: Any, task_id: Any) -> None:
        self.bar, self.task_id = bar, task_id

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task_id, n)

    def update(self, **kwargs: Any) -> None:
        self.bar.update(self.task_id, **kwargs)


@contextmanager
def task(description: str, total: int | None, enabled: bool | None = None, eta: bool = False) -> Iterator[Any]:
    """A progress bar context: ``with task("training", 5) as t: t.advance()``; ``eta`` adds
    the time remaining."""
    if not (progress_enabled() if enabled is None else enabled):
        yield _NullTask()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        yield _RichTask(bar, bar.add_task(description, total=total))
