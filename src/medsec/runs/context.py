"""The run context every experiment kind runs in: device, seeding (once), provenance, the
run store and the executor.

:func:`run` is the one way a config becomes a run folder::

    config -> KINDS[kind] -> kind.check -> open the context (device, the store with its
    resume policy, config.resolved.yaml, the global seed) -> kind.run(ctx) -> store.finish
    -> report

**A run is seeded here and only here** (through :func:`medsec.seeding.seeded`, the one function
that seeds the global RNGs, which recipes use for model initialisation too). The global RNGs
(torch, numpy, ``random``) are seeded once from ``seed`` when the run starts (and the caller's RNG states are restored when
it ends); each cell gets its own seed from (seed, cell id) (:func:`medsec.runs.grid.cell_seed`),
used for its ``torch.Generator`` and, inside :meth:`RunContext.cell`, for the global RNGs too,
so a cell's numbers do not depend on the cells before it. The seeds go into ``results.json``
(``seeds.global``, ``seeds.cells``).
"""

from __future__ import annotations

import logging
import platform
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from medsec.errors import ConfigError
from medsec.io import atomic_write_text
from medsec.runs.executor import Executor, SequentialExecutor
from medsec.runs.grid import cell_generator, cell_seed
from medsec.runs.kind import Kind
from medsec.runs.store import RunStore
from medsec.seeding import seeded

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available) as a ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device: cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {name!r}; use cpu, cuda, cuda:N or auto") from exc


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device | str) -> dict[str, Any]:
    """Versions, git commit, device and host of this run (``started``/``finished`` are stamped
    by the run store)."""
    from medsec.version import __version__

    return {"medsec": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "git": _git_hash(), "device": str(device),
            "hostname": socket.gethostname(), "torch_threads": torch.get_num_threads()}


@dataclass
class RunContext:
    """What a kind's ``run(ctx)`` gets.

    Attributes:
        kind: the experiment kind.
        cfg: the validated config.
        out: the run folder.
        device: where models and tensors go.
        seed: the run's global seed.
        store: the run's results (:class:`~medsec.runs.store.RunStore`).
        executor: runs the kind's independent jobs.
    """

    kind: Kind
    cfg: Any
    out: Path
    device: torch.device
    seed: int
    store: RunStore
    executor: Executor = field(default_factory=SequentialExecutor)

    def cell_seed(self, cell_id: str) -> int:
        """The seed of cell ``cell_id``."""
        return cell_seed(self.seed, cell_id)

    def generator(self, cell_id: str, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded for cell ``cell_id`` (on ``device``, default the run's)."""
        return cell_generator(self.seed, cell_id, self.device if device is None else device)

    @contextmanager
    def cell(self, cell_id: str) -> Iterator[torch.Generator]:
        """Run one cell: the global RNGs seeded from the cell's seed for its duration; yields
        the cell's generator (on the run's device)."""
        with seeded(self.cell_seed(cell_id)):
            yield self.generator(cell_id)


def open_run(cfg: Any, out_dir: str | Path, kind: Kind, *, restart: bool = False,
             executor: Executor | None = None) -> RunContext:
    """The context of a run of ``cfg`` into ``out_dir``: the device resolved, the store opened
    with the one resume policy, ``config.resolved.yaml`` written."""
    from medsec.config.loader import dump_config

    device = resolve_device(cfg.device)
    out = Path(out_dir)
    store = RunStore(out, kind=kind.name, name=cfg.name, config=cfg.model_dump(mode="json"), seed=cfg.seed,
                     provenance=provenance(device), axes=kind.axes, restart=restart)
    atomic_write_text(out / "config.resolved.yaml", dump_config(cfg))
    return RunContext(kind, cfg, out, device, int(cfg.seed), store, executor or SequentialExecutor())


def run(cfg: Any, out_dir: str | Path, *, restart: bool = False, executor: Executor | None = None,
        report: bool = True) -> dict[str, Any]:
    """Run ``cfg`` (any kind) into ``out_dir`` and return its results; resumes a partial run of
    the same config (see :mod:`medsec.runs.store`)."""
    from medsec.registry import KINDS

    kind = cast(Kind, KINDS.get(cfg.kind))
    if kind.check is not None:
        kind.check(cfg)
    ctx = open_run(cfg, out_dir, kind, restart=restart, executor=executor)
    with seeded(ctx.seed):
        kind.run(ctx)
    write = None
    if report:
        from medsec.report import write_report

        def write(results: dict[str, Any], out: Path) -> None:
            write_report(results, out)

    return ctx.store.finish(write)


__all__ = ["RunContext", "open_run", "provenance", "resolve_device", "run"]
