"""``kind: backdoor_defense``: backdoored classifiers (a registered trigger poisoning the
training set, or a BAPLe / BadMatch backdoored CLIP-style model, ``victims.py``) x detectors
(AUROC, TPR at 5% FPR, Neural Cleanse) and repairs (CA/ASR before and after)."""

from __future__ import annotations

from medsec.experiments.backdoor_defense import run as runner
from medsec.experiments.backdoor_defense.config import BackdoorDefenseConfig
from medsec.experiments.backdoor_defense.report import render, summary
from medsec.experiments.backdoor_defense.results import BackdoorDefenseResults
from medsec.runs.kind import Kind
from medsec.runs.store import Axis

KIND = Kind(
    name="backdoor_defense", config=BackdoorDefenseConfig, run=runner.run, plan=runner.plan, render=render, summary=summary,
    check=runner.check, axes=(Axis("detectors"), Axis("repairs"), Axis("backdoors")),
    results=BackdoorDefenseResults,
    description="backdoored classifiers x detectors (AUROC, TPR@5%FPR, Neural Cleanse) and repairs",
)

__all__ = ["KIND", "BackdoorDefenseConfig"]
