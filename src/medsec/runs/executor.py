"""Executors: where a run's cells execute. The driver plans, the executor runs, the driver
alone writes.

Every kind splits its run the same way (``docs/scale.md``):

* the **driver** (the ``medsec run`` process) prepares what every cell needs once (trains the
  models, builds the feature caches) and saves it in the run folder;
* a **worker** builds its state once from the resolved config and the run folder with the
  kind's ``setup(ctx)`` (:class:`Work`), then runs many jobs with ``work(state, job, ctx)``;
  a job (:class:`Job`) is one cell or a few cells that share one attack call;
* results stream back to the driver, which saves each finished cell in ``results.json`` at
  once (and the files a cell made, :class:`~medsec.runs.context.CellContext.save_npz`), so
  resume works the same whatever executor produced the finished cells.

A cell's numbers depend only on the config, its id (its seed) and the prepared models, never
on which worker ran it or in which order. Executors (``medsec ls executors``): ``sequential``
(in the driver, the default), ``process`` (a pool of local worker processes) and ``ray``
(Ray actors, locally or on a cluster).

Faults: a job whose worker died (killed, out of memory) or raised is run again, up to
``max_retries`` times, then recorded as failed with the error (:class:`Outcome`); the other
jobs go on. A :class:`~medsec.errors.MedsecError` (bad input or config) stops the run at once:
it would fail the same way in every cell.

Example:
    >>> jobs = [Job(id="a", cells=("a",), payload=1), Job(id="b", cells=("b",), payload=2)]
    >>> [o.records for o in run_local(lambda j: [(j.id, {"x": j.payload})], jobs, max_retries=0)]
    [[('a', {'x': 1})], [('b', {'x': 2})]]
"""

from __future__ import annotations

import logging
import os
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medsec.errors import MedsecError

log = logging.getLogger(__name__)

Record = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Job:
    """A unit of work: the cells it finishes and the kind's own (picklable) description."""

    id: str
    cells: tuple[str, ...]
    payload: Any = None


@dataclass
class JobResult:
    """What a job hands back: one ``(cell id, record)`` per finished cell, and the files it
    made (run-folder-relative path -> bytes), which the driver writes."""

    records: list[Record]
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Outcome:
    """A job's end: its records and files, or the error of its last attempt."""

    job: Job
    records: list[Record] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1


@dataclass(frozen=True)
class Work:
    """Everything a worker needs to build its state, and nothing live: picklable, so it
    travels to a process or a Ray actor.

    Attributes:
        kind: the experiment kind's name.
        config: the resolved config as JSON-ready data.
        out: the run folder (absolute; workers read the driver's artefacts there).
        seed: the run's global seed.
        device: the device name workers use (``cpu``, ``cuda`` ...).
        sections: the kind's sections of ``results.json`` when the cells were dispatched
            (what the driver prepared: trained models, data facts).
        setup: ``setup(ctx) -> state``, a module-level function of the kind.
        work: ``work(state, payload, ctx) -> [(cell id, record)]``, a module-level function.
        cwd: the driver's working directory (relative paths in the config resolve there).
        env: ``MEDSEC_*`` environment variables of the driver (data roots).
    """

    kind: str
    config: dict[str, Any]
    out: str
    seed: int
    device: str
    sections: dict[str, Any]
    setup: Callable[[Any], Any]
    work: Callable[[Any, Any, Any], list[Record]]
    cwd: str = field(default_factory=os.getcwd)
    env: dict[str, str] = field(default_factory=lambda: {k: v for k, v in os.environ.items()
                                                         if k.startswith("MEDSEC_")})


class Worker:
    """A worker's side of :class:`Work`: the state built once, then any number of jobs.

    Used by the ``process`` and ``ray`` executors (the ``sequential`` one runs jobs on the
    driver's own state). Progress bars are off in workers; the driver shows cells done / total.

    Args:
        work: what to build.
        threads: torch intra-op threads of this worker (``num_cpus_per_cell``).
        device: the device of this worker (default ``work.device``).
    """

    def __init__(self, work: Work, *, threads: int | None = None, device: str | None = None) -> None:
        import torch

        from medsec.registry import KINDS
        from medsec.runs.context import CellContext, resolve_device

        os.environ.update(work.env)
        os.environ["MEDSEC_PROGRESS"] = "0"
        if Path(work.cwd).is_dir():
            os.chdir(work.cwd)
        if not Path(work.out).is_dir():
            import socket

            raise MedsecError(f"the run folder {work.out} is not visible on worker host {socket.gethostname()}; put "
                              "--out on storage every node shares")
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        kind: Any = KINDS.get(work.kind)
        cfg = kind.config.model_validate(work.config)
        self.work = work
        self.ctx = CellContext(kind=kind, cfg=cfg, out=Path(work.out), device=resolve_device(device or work.device),
                               seed=work.seed, sections=dict(work.sections), files={})
        self.state = work.setup(self.ctx)

    def __call__(self, job: Job) -> JobResult:
        files = self.ctx.files
        assert files is not None
        files.clear()
        records = list(self.work.work(self.state, job.payload, self.ctx))
        return JobResult(records, dict(files))

    def pid(self) -> int:
        """This worker's process id."""
        return os.getpid()


def serve(worker: Worker, job: Job) -> tuple[str, Any]:
    """A worker's answer to one job, as data (so a transport carries it unchanged):
    ``("ok", JobResult)``, ``("error", text)`` or ``("abort", MedsecError)``."""
    try:
        return "ok", worker(job)
    except MedsecError as exc:
        return "abort", exc
    except Exception as exc:  # reported to the driver, which retries or records the failure
        return "error", error_text(exc)


def start_worker(work: Work, threads: int | None, device: str | None) -> tuple[str, Any]:
    """Build a :class:`Worker` as data: ``("ready", Worker)``, ``("error", text)`` or
    ``("abort", MedsecError)``."""
    try:
        return "ready", Worker(work, threads=threads, device=device)
    except MedsecError as exc:
        return "abort", exc
    except Exception as exc:
        return "error", error_text(exc)


class Attempts:
    """The retry bookkeeping of a distributed executor: a job that failed (its worker died or
    it raised) goes back to the queue until it has been tried ``1 + max_retries`` times, then it
    ends as a failed :class:`Outcome`; a worker that dies while it starts counts against a
    limit of its own, so a broken environment stops the run instead of looping.

    Args:
        max_retries: reruns of a failed job.
        max_start_failures: workers that may die or fail while starting, in a row.
    """

    def __init__(self, *, max_retries: int, max_start_failures: int = 3) -> None:
        self.max_retries = max_retries
        self.max_start_failures = max_start_failures
        self.tries: dict[str, int] = {}
        self.start_failures = 0
        self.worker_deaths = 0

    def started(self, job: Job) -> None:
        self.tries[job.id] = self.tries.get(job.id, 0) + 1

    def unstart(self, job: Job) -> None:
        """Take back the attempt of a job that never ran (its worker failed to start)."""
        self.tries[job.id] = max(0, self.tries.get(job.id, 1) - 1)

    def failed(self, job: Job, error: str, pending: deque[Job]) -> Outcome | None:
        """``job`` failed: put it back at the front of ``pending`` (None), or, when it is out of
        retries, its failed :class:`Outcome`."""
        n = self.tries.get(job.id, 1)
        if n <= self.max_retries:
            log.warning("%s failed (%s); retrying (%d of %d)", job.id, error.splitlines()[0], n, self.max_retries)
            pending.appendleft(job)
            return None
        return Outcome(job, error=error, attempts=n)

    def start_failed(self, error: str) -> None:
        """Count a worker that could not start; raise when too many did in a row."""
        self.start_failures += 1
        if self.start_failures >= self.max_start_failures:
            raise MedsecError(f"{self.start_failures} workers in a row failed to start; the last error: {error}")

    def done(self, job: Job, result: JobResult) -> Outcome:
        self.start_failures = 0
        return Outcome(job, result.records, result.files, attempts=self.tries.get(job.id, 1))


class Executor(Protocol):
    """Runs jobs and yields an :class:`Outcome` per job as it ends.

    ``local(job)`` runs a job on the driver's own state (what ``sequential`` uses); a
    distributed executor builds :class:`Worker` s from ``work`` instead.
    """

    name: str
    max_retries: int

    def run(self, work: Work, jobs: Sequence[Job], local: Callable[[Job], JobResult]) -> Iterator[Outcome]: ...


def error_text(exc: BaseException) -> str:
    """A job's error for ``results.json``: the exception and the last frames of its traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
    return f"{type(exc).__name__}: {exc}\n{tb}"[-4000:]


def run_local(fn: Callable[[Job], list[Record] | JobResult], jobs: Sequence[Job], *,
              max_retries: int) -> Iterator[Outcome]:
    """Run jobs one after another in this process, each tried up to ``1 + max_retries`` times
    (a :class:`~medsec.errors.MedsecError` is raised at once)."""
    attempts = Attempts(max_retries=max_retries)
    pending = deque(jobs)
    while pending:
        job = pending.popleft()
        attempts.started(job)
        try:
            res = fn(job)
        except MedsecError:
            raise
        except Exception as exc:  # a failing cell must not lose the others
            outcome = attempts.failed(job, error_text(exc), pending)
            if outcome is not None:
                yield outcome
            continue
        yield attempts.done(job, res if isinstance(res, JobResult) else JobResult(list(res)))


def build_executor(spec: Any) -> Executor:
    """The executor of a config's ``executor`` section (an ``ExecutorConfig``, a mapping or a
    string such as ``process:2``); unknown names and parameters an executor does not take are
    refused with one message."""
    from medsec.config.schema import ExecutorConfig
    from medsec.registry import EXECUTORS, check_params

    cfg = spec if isinstance(spec, ExecutorConfig) else ExecutorConfig.model_validate(spec)
    params = cfg.model_dump(exclude={"name"}, exclude_unset=True, exclude_defaults=True)
    factory = EXECUTORS.get(cfg.name)
    check_params(factory, params, f"executor {cfg.name!r}")
    executor: Executor = factory(**params)
    return executor


__all__ = ["Attempts", "Executor", "Job", "JobResult", "Outcome", "Record", "Work", "Worker", "build_executor", "error_text",
           "run_local", "serve", "start_worker"]
