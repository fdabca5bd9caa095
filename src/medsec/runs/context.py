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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from medsec.errors import ConfigError
from medsec.io import atomic_write_bytes, atomic_write_text
from medsec.progress import task
from medsec.runs.executor import Executor, Job, JobResult, Record, Work, build_executor
from medsec.runs.executors.sequential import SequentialExecutor
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
class CellContext:
    """What a cell runs in, on the driver or on a worker: the config, the run folder, the
    device and the seeds.

    Attributes:
        kind: the experiment kind.
        cfg: the validated config.
        out: the run folder (read the driver's artefacts here; write per-cell files with
            :meth:`save_npz`, which the driver writes for a worker).
        device: where models and tensors go.
        seed: the run's global seed.
        sections: the kind's sections of ``results.json`` (what the driver prepared).
        files: on a worker, the files the current job made (path -> bytes), handed to the
            driver with its records; None on the driver, which writes at once.
    """

    kind: Kind
    cfg: Any
    out: Path
    device: torch.device
    seed: int
    sections: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] | None = None

    def section(self, name: str) -> Any:
        """A section of ``results.json`` as the driver left it (``model``, ``data`` ...), or None."""
        return self.sections.get(name)

    @property
    def on_worker(self) -> bool:
        """True in a worker process or actor (the driver prepared everything already)."""
        return self.files is not None

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

    def save_file(self, rel: str, data: bytes) -> str:
        """Save a cell's file as ``rel`` (relative to the run folder) and return ``rel``: at once
        on the driver, through the driver on a worker (workers never write the run folder)."""
        if self.files is None:
            atomic_write_bytes(self.out / rel, data)
        else:
            self.files[rel] = data
        return rel

    def save_npz(self, rel: str, **arrays: Any) -> str:
        """Save a cell's arrays as ``rel`` (relative to the run folder) and return ``rel``: at
        once on the driver, through the driver on a worker (workers never write the run folder)."""
        from medsec.io import npz_bytes

        return self.save_file(rel, npz_bytes(**arrays))


@dataclass
class Shard:
    """``--shard i/n``: this run takes every n-th job, starting at the i-th (in plan order)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"0/2"`` -> Shard(0, 2); anything else is one clear error."""
        i, _, n = str(text).partition("/")
        if not (i.strip().isdigit() and n.strip().isdigit()) or not 0 <= int(i) < int(n):
            raise ConfigError(f"--shard takes I/N with 0 <= I < N (e.g. --shard 0/4), not {text!r}")
        return cls(int(i), int(n))

    def owns(self, position: int) -> bool:
        return position % self.count == self.index


@dataclass
class RunContext(CellContext):
    """What a kind's ``run(ctx)`` gets on the driver: a :class:`CellContext` plus the store,
    the executor and the shard.

    Attributes:
        store: the run's results (:class:`~medsec.runs.store.RunStore`).
        executor: runs the kind's jobs (:mod:`medsec.runs.executor`).
        shard: run only this part of the jobs (``medsec run --shard``), or None.
    """

    store: RunStore = field(default=None)  # type: ignore[assignment]
    executor: Executor = field(default_factory=SequentialExecutor)
    shard: Shard | None = None

    def section(self, name: str) -> Any:
        return self.store.results.get(name)

    @property
    def results(self) -> dict[str, Any]:
        """The run's ``results.json`` as it stands."""
        return self.store.results

    def execute(self, jobs: Sequence[Job], *, setup: Callable[[CellContext], Any],
                work: Callable[[Any, Any, CellContext], list[Record]], state: Any) -> None:
        """Run the jobs whose cells are not finished (this shard's share of them) through the
        executor and save every finished cell at once.

        ``state`` is what ``setup(ctx)`` returns, already built by the driver (the
        ``sequential`` executor runs on it); workers of the other executors build their own
        with ``setup`` from the config and the run folder. ``work(state, job.payload, ctx)``
        returns one ``(cell id, record)`` per cell of the job. A job that fails after its
        retries is recorded in ``failed`` with its error; the run goes on. The finished cells
        are in plan order when it returns.
        """
        jobs = list(jobs)
        if self.shard is not None:
            jobs = [j for i, j in enumerate(jobs) if self.shard.owns(i)]
        todo = [j for j in jobs if any(self.store.done(c) is None for c in j.cells)]
        if len(todo) < len(jobs):
            log.info("resuming: %d of %d jobs already done", len(jobs) - len(todo), len(jobs))
        if todo:
            self._dispatch(jobs, todo, setup, work, state)
        self.store.reorder()

    def _dispatch(self, jobs: list[Job], todo: list[Job], setup: Callable[[CellContext], Any],
                  work: Callable[[Any, Any, CellContext], list[Record]], state: Any) -> None:
        """Send ``todo`` to the executor and save each outcome as it comes back (progress over
        all of ``jobs``)."""
        spec = Work(kind=self.kind.name, config=self.cfg.model_dump(mode="json"), out=str(self.out.resolve()),
                    seed=self.seed, device=str(self.device), sections=self.store.sections(), setup=setup, work=work)

        def local(job: Job) -> JobResult:
            return JobResult(list(work(state, job.payload, self)))

        total = sum(len(j.cells) for j in jobs)
        with task(f"cells ({self.executor.name})", total, eta=True) as bar:
            bar.advance(sum(1 for j in jobs for c in j.cells if self.store.done(c) is not None))
            for outcome in self.executor.run(spec, todo, local):
                for rel, data in outcome.files.items():
                    atomic_write_bytes(self.out / rel, data)
                if outcome.error is not None:
                    log.error("%s failed after %d attempts: %s", outcome.job.id, outcome.attempts,
                              outcome.error.splitlines()[0])
                    self.store.fail(outcome.job.cells, outcome.error, outcome.attempts)
                for cell_id, record in outcome.records:
                    self.store.put(cell_id, record, attempts=outcome.attempts)
                bar.advance(len(outcome.job.cells))


def open_run(cfg: Any, out_dir: str | Path, kind: Kind, *, restart: bool = False,
             executor: Executor | None = None, shard: Shard | None = None) -> RunContext:
    """The context of a run of ``cfg`` into ``out_dir``: the device resolved, the store opened
    with the one resume policy, ``config.resolved.yaml`` written; the executor is the config's
    ``executor`` unless one is given."""
    from medsec.config.loader import dump_config

    device = resolve_device(cfg.device)
    ex = executor if executor is not None else build_executor(getattr(cfg, "executor", "sequential"))
    out = Path(out_dir)
    store = RunStore(out, kind=kind.name, name=cfg.name, config=cfg.model_dump(mode="json"), seed=cfg.seed,
                     provenance={**provenance(device), "executor": ex.name}, axes=kind.axes, restart=restart)
    store.update(shard={"index": shard.index, "count": shard.count} if shard else None)
    atomic_write_text(out / "config.resolved.yaml", dump_config(cfg))
    return RunContext(kind=kind, cfg=cfg, out=out, device=device, seed=int(cfg.seed), store=store, executor=ex,
                      shard=shard)


def run(cfg: Any, out_dir: str | Path, *, restart: bool = False, executor: Executor | None = None,
        shard: Shard | None = None, report: bool = True) -> dict[str, Any]:
    """Run ``cfg`` (any kind) into ``out_dir`` and return its results; resumes a partial run of
    the same config (see :mod:`medsec.runs.store`). ``executor`` overrides the config's;
    ``shard`` runs only that part of the cells (merge the shards with :func:`medsec.runs.merge.merge`)."""
    from medsec.registry import KINDS

    kind = cast(Kind, KINDS.get(cfg.kind))
    if kind.check is not None:
        kind.check(cfg)
    ctx = open_run(cfg, out_dir, kind, restart=restart, executor=executor, shard=shard)
    with seeded(ctx.seed):
        kind.run(ctx)
    write = None
    if report:
        from medsec.report import write_report

        def write(results: dict[str, Any], out: Path) -> None:
            write_report(results, out)

    return ctx.store.finish(write)


__all__ = ["CellContext", "RunContext", "Shard", "open_run", "provenance", "resolve_device", "run"]
