"""``kind: evasion``: a classifier (trained, loaded or built) against a grid of attacks x
threat models x input defences, clean first, with worst cases over attacks, adaptive
(BPDA/EOT) cells for defences that need them, and sanity checks.

Files: ``config.py`` (the schema), ``run.py`` (prepare, plan, run the cells), ``report.py``
(the report sections and the printed table), ``checks.py``, ``robustness.py``, ``figures.py``
and ``patch_figures.py`` (what the report reads and draws).
"""

from __future__ import annotations

from medsec.experiments.evasion import run as runner
from medsec.experiments.evasion.config import EvasionConfig
from medsec.experiments.evasion.report import render, summary
from medsec.experiments.evasion.results import EvasionResults
from medsec.runs.kind import Kind
from medsec.runs.store import Axis

KIND = Kind(
    name="evasion", config=EvasionConfig, run=runner.run, plan=runner.plan, render=render, summary=summary, check=runner.check,
    axes=(Axis("attacks"), Axis("threat.eps"), Axis("defenses")), results=EvasionResults,
    description="a classifier against attacks x threat models x input defences (robust accuracy, worst case)",
)

__all__ = ["KIND", "EvasionConfig"]
