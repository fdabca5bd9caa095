"""The services every experiment kind shares: the run context (device, seeding once,
provenance), the run store (one resume policy, atomic writes, the results envelope), the
grid (cell ids and per-cell seeds) and the executors.

Example (a tiny evasion run on synthetic data, into a temporary folder):
    >>> import tempfile
    >>> from medsec.config import validate_config
    >>> from medsec.runs import run
    >>> cfg = validate_config({"name": "tiny", "data": {"name": "synthetic_he", "params": {"n": 64, "size": 16}},
    ...                        "model": {"name": "small_cnn", "params": {"width": 4}}, "train": {"epochs": 1},
    ...                        "threat": {"eps": ["8/255"]}, "attacks": [{"name": "fgsm"}],
    ...                        "eval": {"sample_limit": 8, "examples": 0}})
    >>> with tempfile.TemporaryDirectory() as out:
    ...     results = run(cfg, out, report=False)
    >>> results["kind"], results["status"], list(results["cells"])
    ('evasion', 'complete', ['fgsm-linf-8-untargeted'])
"""

from __future__ import annotations

from medsec.runs.context import CellContext, RunContext, Shard, open_run, run
from medsec.runs.executor import Executor, Job, build_executor
from medsec.runs.executors.sequential import SequentialExecutor
from medsec.runs.kind import Kind
from medsec.runs.store import Axis, RunStore

__all__ = ["Axis", "CellContext", "Executor", "Job", "Kind", "RunContext", "RunStore", "SequentialExecutor", "Shard",
           "build_executor", "open_run", "run"]
