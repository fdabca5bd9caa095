"""The ``process`` executor: a pool of local worker processes, for one big machine without Ray.

Workers are forked from a fork server that imported medsec once (``forkserver``, where the
platform has it) or spawned (``spawn``); never forked from the driver, whose torch threads make
``fork`` unsafe.

Each worker process builds its state once (:class:`medsec.runs.executor.Worker`: data and
models loaded from the config and the run folder) and then takes one job at a time over its
own pipe, so the driver always knows which job a worker held when it died. The standard
library pools cannot tell that (``concurrent.futures`` marks every pending future broken when
one worker dies; ``multiprocessing.Pool`` waits forever), which is why the few lines of
scheduling here are medsec's own.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from medsec.errors import ConfigError
from medsec.runs.executor import Attempts, Job, JobResult, Outcome, Work, serve, start_worker

log = logging.getLogger(__name__)


def worker_main(conn: Connection, work: Work, threads: int | None, device: str | None) -> None:
    """A worker process: build the state, then answer jobs until the driver sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    status, value = start_worker(work, threads, device)
    if status != "ready":
        conn.send((status, None, value))
        return
    conn.send(("ready", None, os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        answer, payload = serve(value, job)
        conn.send((answer, job.id, payload))


def death_text(code: int | None) -> str:
    """Why a worker process ended, in words."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed, or out of memory)" if name == "SIGKILL" else ""
        return f"the worker process died from {name}{hint}"
    return f"the worker process exited with status {code}"


START_HINT = ("; a worker process imports the main module again, so a script that calls medsec.runs.run must "
              "do so under if __name__ == '__main__': (see the multiprocessing docs, 'Safe importing of main module')")


@dataclass
class Slot:
    """One worker process and the job it holds."""

    index: int
    proc: Any
    conn: Connection
    job: Job | None = None
    ready: bool = False


class ProcessExecutor:
    """A pool of local worker processes, for one big machine without Ray.

    Each worker prepares the data and models once and then runs many cells; a worker that dies
    (killed, out of memory) is replaced and its cell rerun. With ``device: cuda`` on a machine
    with several GPUs, worker k uses GPU k mod the GPU count.

    Args:
        workers: worker processes (default: the CPU count divided by ``num_cpus_per_cell``, at
            most the number of jobs).
        num_cpus_per_cell: torch threads of each worker.
        num_gpus_per_cell: GPU share of each worker; with GPUs, limits the default worker count
            to GPUs / share.
        max_retries: reruns of a cell whose worker died or raised, before it is recorded failed.
        start_method: ``forkserver`` (the default where the platform has it: one server process
            imports medsec and torch once and every worker is forked from it, so a worker starts
            in a fraction of a second) or ``spawn`` (each worker imports everything again).
    """

    name = "process"

    def __init__(self, *, workers: int | None = None, num_cpus_per_cell: float = 1, num_gpus_per_cell: float = 0,
                 max_retries: int = 2, start_method: str | None = None) -> None:
        self.workers = workers
        self.num_cpus_per_cell = float(num_cpus_per_cell)
        self.num_gpus_per_cell = float(num_gpus_per_cell)
        self.max_retries = int(max_retries)
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        if start_method not in ("forkserver", "spawn"):
            raise ConfigError(f"start_method must be forkserver or spawn, not {start_method!r} (fork is unsafe with "
                              "torch threads)")
        self.start_method = start_method
        self.pids: list[int] = []  # every worker process started, for monitoring

    def pool_size(self, n_jobs: int) -> int:
        """How many workers a run of ``n_jobs`` jobs gets."""
        n = self.workers or max(1, int((os.cpu_count() or 1) // max(self.num_cpus_per_cell, 1e-9)))
        if self.workers is None and self.num_gpus_per_cell > 0:
            import torch

            if torch.cuda.is_available():
                n = min(n, max(1, int(torch.cuda.device_count() / self.num_gpus_per_cell)))
        return max(1, min(n, n_jobs))

    def device_of(self, work: Work, index: int) -> str:
        """Worker ``index``'s device: one of several GPUs in turn for ``device: cuda``."""
        if work.device == "cuda":
            import torch

            count = torch.cuda.device_count()
            if count > 1:
                return f"cuda:{index % count}"
        return work.device

    def run(self, work: Work, jobs: Sequence[Job], local: Callable[[Job], JobResult]) -> Iterator[Outcome]:
        if not jobs:
            return
        ctx: Any = mp.get_context(self.start_method)
        if self.start_method == "forkserver":  # imported once by the server, before it forks any worker
            ctx.set_forkserver_preload(["__main__", "medsec.runs.executor", f"medsec.experiments.{work.kind}"])
        threads = max(1, int(self.num_cpus_per_cell))
        pending: deque[Job] = deque(jobs)
        attempts = Attempts(max_retries=self.max_retries)
        slots: dict[int, Slot] = {}

        def start(index: int) -> None:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, work, threads, self.device_of(work, index)),
                               name=f"medsec-worker-{index}", daemon=True)
            proc.start()
            child.close()
            self.pids.append(int(proc.pid or 0))
            slots[index] = Slot(index, proc, parent)

        def assign(slot: Slot) -> None:
            if pending:
                slot.job = pending.popleft()
                attempts.started(slot.job)
                slot.conn.send(slot.job)
            else:
                slot.job = None
                stop(slot)

        def stop(slot: Slot) -> None:
            try:
                slot.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            slots.pop(slot.index, None)
            slot.proc.join(timeout=5)
            if slot.proc.is_alive():
                slot.proc.kill()
            slot.conn.close()

        def lost(slot: Slot, error: str) -> Iterator[Outcome]:
            """The slot's worker is gone: retry or fail its job, and start a replacement."""
            job, slot.job = slot.job, None
            slots.pop(slot.index, None)
            slot.conn.close()
            if not slot.ready:  # it never took its job: the job goes back untouched
                attempts.start_failed(error + START_HINT)
                if job is not None:
                    attempts.unstart(job)
                    pending.appendleft(job)
            elif job is not None:
                outcome = attempts.failed(job, error, pending)
                if outcome is not None:
                    yield outcome
            if pending:
                log.warning("worker %d lost (%s); starting a new one", slot.index, error.splitlines()[0])
                start(slot.index)
                assign(slots[slot.index])

        try:
            for i in range(self.pool_size(len(jobs))):
                start(i)
            for slot in list(slots.values()):
                assign(slot)
            while slots:
                ready = set(wait([s.conn for s in slots.values()] + [s.proc.sentinel for s in slots.values()]))
                for slot in list(slots.values()):
                    if slot.conn not in ready and slot.proc.sentinel not in ready:
                        continue
                    try:
                        message = slot.conn.recv() if slot.conn.poll() else None
                    except (EOFError, OSError):
                        message = None
                    if message is None:
                        if not slot.proc.is_alive():
                            slot.proc.join()
                            yield from lost(slot, death_text(slot.proc.exitcode))
                        continue
                    status, _job_id, value = message
                    if status == "ready":
                        slot.ready = True
                        continue
                    if status == "abort":
                        raise value
                    job = slot.job
                    if not slot.ready:  # the worker could not start: its job never ran
                        slot.proc.join(timeout=5)
                        yield from lost(slot, value)
                        continue
                    assert job is not None
                    if status == "ok":
                        yield attempts.done(job, value)
                    else:
                        outcome = attempts.failed(job, value, pending)
                        if outcome is not None:
                            yield outcome
                    assign(slot)
        finally:
            for slot in list(slots.values()):
                if slot.proc.is_alive():
                    slot.proc.kill()
                slot.proc.join(timeout=5)
                slot.conn.close()


__all__ = ["ProcessExecutor", "death_text", "worker_main"]
