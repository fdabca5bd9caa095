"""What an experiment kind is: the one interface every ``kind:`` of a config implements.

A kind is a folder under ``medsec/experiments/`` (``config.py``, ``run.py``, ``report.py``)
whose package exposes ``KIND``, a :class:`Kind`, plus one line in the ``KINDS`` registry
(:mod:`medsec.registry`). ``medsec run``, ``validate`` and ``report`` find it there and nowhere
else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsec.runs.store import Axis

if TYPE_CHECKING:
    from medsec.runs.context import RunContext


@dataclass(frozen=True)
class Kind:
    """One experiment family.

    Attributes:
        name: the ``kind:`` value.
        config: the strict pydantic model of the whole YAML (``kind``, ``name``, ``seed``,
            ``device`` and the kind's own sections).
        run: ``run(ctx)`` prepares what the cells share (trained models, caches) in the run
            folder and hands its jobs to ``ctx.execute`` (which skips finished cells and runs
            the rest on the run's executor, :mod:`medsec.runs.executor`); the run services open
            the context and finish the store around it.
        plan: ``plan(cfg)`` the cell ids the config asks for (for ``medsec validate``).
        render: ``render(results, out_dir) -> (html, markdown)``, the report.
        summary: ``summary(results, out_dir) -> lines``, what ``medsec run`` prints.
        axes: the config lists a rerun may widen while keeping finished cells.
        check: ``check(cfg)`` refuses bad component names or parameters before any work
            (``medsec validate`` and ``medsec run`` call it).
        description: one line for ``medsec ls kinds``.
        results: the pydantic model of the kind's ``results.json`` (its JSON Schema is generated
            from it, :mod:`medsec.runs.schema`).
    """

    name: str
    config: type[Any]
    run: Callable[[RunContext], None]
    plan: Callable[[Any], list[str]]
    render: Callable[[dict[str, Any], Path], tuple[str, str]]
    summary: Callable[[dict[str, Any], Path], list[str]]
    axes: tuple[Axis, ...] = field(default=())
    check: Callable[[Any], None] | None = None
    description: str = ""
    results: type[Any] | None = None


__all__ = ["Kind"]
