"""Evaluation: the experiment runner and its executors."""

from __future__ import annotations

from medsec.eval.executor import Executor, SequentialExecutor, get_executor
from medsec.eval.runner import Cell, run_experiment

__all__ = ["Cell", "Executor", "SequentialExecutor", "get_executor", "run_experiment"]
