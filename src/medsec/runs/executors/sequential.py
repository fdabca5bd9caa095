"""The ``sequential`` executor: every job in the driver, one after another, in plan order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from medsec.runs.executor import Job, JobResult, Outcome, Work, run_local


class SequentialExecutor:
    """Every cell in the ``medsec run`` process, in plan order (the default).

    The cells run on the driver's own prepared state: nothing to set up, no copies of the model.

    Args:
        max_retries: reruns of a cell that raised (not a medsec input or config error) before
            it is recorded as failed and the run goes on.

    Example:
        >>> ex = SequentialExecutor(max_retries=0)
        >>> [o.records for o in ex.run(None, [Job("a", ("a",))], lambda j: JobResult([(j.id, {})]))]
        [[('a', {})]]
    """

    name = "sequential"

    def __init__(self, *, max_retries: int = 2) -> None:
        self.max_retries = int(max_retries)

    def run(self, work: Work | None, jobs: Sequence[Job], local: Callable[[Job], JobResult]) -> Iterator[Outcome]:
        return run_local(local, jobs, max_retries=self.max_retries)


__all__ = ["SequentialExecutor"]
