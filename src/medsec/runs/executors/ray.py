"""The ``ray`` executor: cells on Ray actors, on a cluster or on a local Ray started for the run.

One actor per worker slot holds the prepared state (data and models loaded once from the config
and the run folder) and runs many cells; each actor asks Ray for ``num_cpus_per_cell`` CPUs
and ``num_gpus_per_cell`` GPUs (fractions share a GPU; Ray sets ``CUDA_VISIBLE_DEVICES``, so
``device: cuda`` is the actor's GPU). Results come back to the driver as Ray objects; the
driver alone writes the run folder. A dead actor (its process or node lost) is replaced and
its cell rerun up to ``max_retries`` times. Ray's own task retries are off so that each
attempt is counted here and the error of the last one lands in ``results.json``.

The run folder must be on storage the worker nodes can read (the usual shared file system of a
cluster): workers load the models the driver trained from it. See ``docs/scale.md``.
Ray: https://docs.ray.io/en/latest/ray-core/actors.html
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from medsec.errors import ConfigError
from medsec.runs.executor import Attempts, Job, JobResult, Outcome, Work, Worker, serve, start_worker

log = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError("executor ray needs Ray, which is not installed; install it with "
                          "pip install 'medsec[ray]' (or use executor: process:N)") from None
    return ray


class RayWorker:
    """The actor: a :class:`~medsec.runs.executor.Worker` built by :meth:`setup`, answering
    jobs as data (errors included), so that a Ray exception always means a lost actor."""

    def __init__(self, work: Work, threads: int | None) -> None:
        self.work, self.threads = work, threads
        self.worker: Worker | None = None

    def setup(self) -> tuple[str, Any]:
        status, value = start_worker(self.work, self.threads, None)
        if status != "ready":
            return status, value
        self.worker = value
        return "ready", os.getpid()

    def run(self, job: Job) -> tuple[str, Any]:
        assert self.worker is not None
        return serve(self.worker, job)


class RayExecutor:
    """Ray actors on a cluster (``address`` / ``RAY_ADDRESS``) or on a local Ray for the run.

    Without an address, a local Ray is started for the run and shut down at its end.

    Args:
        address: the cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); default
            ``RAY_ADDRESS``, else a local Ray on this machine's CPUs.
        workers: actors (default: the cluster's CPUs / ``num_cpus_per_cell``, and GPUs /
            ``num_gpus_per_cell`` when that is set; at most the number of jobs).
        num_cpus_per_cell: CPUs (and torch threads) each actor asks for.
        num_gpus_per_cell: GPUs each actor asks for (0.25: four actors share a GPU).
        max_retries: reruns of a cell whose actor died or raised, before it is recorded failed.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, num_cpus_per_cell: float = 1,
                 num_gpus_per_cell: float = 0, max_retries: int = 2) -> None:
        self.address = address
        self.workers = workers
        self.num_cpus_per_cell = float(num_cpus_per_cell)
        self.num_gpus_per_cell = float(num_gpus_per_cell)
        self.max_retries = int(max_retries)
        self.pids: list[int] = []

    def connect(self, ray: Any) -> bool:
        """Join the configured cluster or start a local one; True when this call started Ray."""
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:
            log.info("joining the Ray cluster at %s", address)
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot join the Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start "
                                  "one with `ray start --head`, or leave address and RAY_ADDRESS unset to start a "
                                  "local Ray for the run") from None
        else:
            log.info("starting a local Ray for this run")
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        return True

    def pool_size(self, ray: Any, n_jobs: int) -> int:
        """Actors for ``n_jobs`` jobs on this cluster."""
        if self.workers:
            return max(1, min(self.workers, n_jobs))
        res = ray.cluster_resources()
        n = int(res.get("CPU", 1) // max(self.num_cpus_per_cell, 1e-9))
        if self.num_gpus_per_cell > 0:
            n = min(n, int(res.get("GPU", 0) / self.num_gpus_per_cell))
            if n < 1:
                raise ConfigError(f"num_gpus_per_cell is {self.num_gpus_per_cell} but the Ray cluster has "
                                  f"{res.get('GPU', 0)} GPUs; set num_gpus_per_cell: 0 or join a cluster with GPUs")
        return max(1, min(n, n_jobs))

    def run(self, work: Work, jobs: Sequence[Job], local: Callable[[Job], JobResult]) -> Iterator[Outcome]:
        if not jobs:
            return
        ray = import_ray()
        from ray.exceptions import RayError

        started = self.connect(ray)
        actor_class = ray.remote(RayWorker).options(num_cpus=self.num_cpus_per_cell, num_gpus=self.num_gpus_per_cell,
                                                    max_restarts=0, max_task_retries=0)
        threads = max(1, int(self.num_cpus_per_cell))
        pending: deque[Job] = deque(jobs)
        attempts = Attempts(max_retries=self.max_retries)
        actors: dict[int, Any] = {}
        ready: set[int] = set()
        inflight: dict[Any, tuple[int, str, Job | None]] = {}  # ref -> (slot, "setup" | "run", job)

        def start(slot: int) -> None:
            actor = actor_class.remote(work, threads)
            actors[slot] = actor
            ready.discard(slot)
            inflight[actor.setup.remote()] = (slot, "setup", None)

        def assign(slot: int) -> None:
            if pending:
                job = pending.popleft()
                attempts.started(job)
                inflight[actors[slot].run.remote(job)] = (slot, "run", job)
            else:
                ray.kill(actors.pop(slot))

        try:
            for slot in range(self.pool_size(ray, len(jobs))):
                start(slot)
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1)
                ref = done[0]
                slot, what, job = inflight.pop(ref)
                try:
                    status, value = ray.get(ref)
                except RayError as exc:  # the actor (its process or its node) is gone
                    error = f"the Ray worker died: {str(exc).splitlines()[0]}"
                    if what == "setup" or slot not in ready:
                        attempts.start_failed(error)
                    elif job is not None:
                        outcome = attempts.failed(job, error, pending)
                        if outcome is not None:
                            yield outcome
                    actors.pop(slot, None)
                    if pending:
                        log.warning("Ray worker %d lost; starting a new one", slot)
                        start(slot)
                    continue
                if status == "abort":
                    raise value
                if what == "setup":
                    if status == "ready":
                        ready.add(slot)
                        self.pids.append(int(value))
                        assign(slot)
                    else:
                        attempts.start_failed(value)
                        ray.kill(actors.pop(slot))
                        if pending:
                            start(slot)
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
            for actor in actors.values():
                try:
                    ray.kill(actor)
                except RayError:
                    pass
            if started:
                ray.shutdown()


__all__ = ["RayExecutor", "RayWorker", "import_ray"]
