"""``kind: badmatch``: BadMatch and BadDist-assisted BadMatch against MedCLIP-style unpaired
contrastive training, swept over poison rate x trigger x vision tower (Jin et al., SaTML 2024).
A rerun that only adds poison rates or methods, or appends backbones, keeps the finished cells."""

from __future__ import annotations

from medsec.experiments.badmatch import run as runner
from medsec.experiments.badmatch.config import BadMatchConfig
from medsec.experiments.badmatch.report import render, summary
from medsec.experiments.badmatch.results import BadMatchResults
from medsec.runs.kind import Kind
from medsec.runs.store import Axis

KIND = Kind(
    name="badmatch", config=BadMatchConfig, run=runner.run, plan=runner.plan, render=render, summary=summary,
    axes=(Axis("poison.rates"), Axis("methods"), Axis("backbones", ordered=True)),
    results=BadMatchResults,
    description="BadMatch / BadDist poisoning of MedCLIP-style unpaired training (CA / ASR per cell)",
)

__all__ = ["KIND", "BadMatchConfig"]
