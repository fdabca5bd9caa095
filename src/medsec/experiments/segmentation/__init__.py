"""``kind: segmentation``: a segmenter (U-Net, CLIPSeg-style text-prompted; trained, loaded or
built) against a grid of attacks x threat models, scored by Dice, IoU, HD95 and lesion-miss
rate, in pixel mode or the paper's normalised-input mode (``paper_mode.py``)."""

from __future__ import annotations

from medsec.experiments.segmentation import run as runner
from medsec.experiments.segmentation.config import SegmentationConfig
from medsec.experiments.segmentation.report import render, summary
from medsec.experiments.segmentation.results import SegmentationResults
from medsec.runs.kind import Kind
from medsec.runs.store import Axis

KIND = Kind(
    name="segmentation", config=SegmentationConfig, run=runner.run, plan=runner.plan, render=render, summary=summary, check=runner.check,
    axes=(Axis("attacks"), Axis("threat.eps")),
    results=SegmentationResults,
    description="a segmenter against attacks x threat models (Dice, IoU, HD95, lesion miss)",
)

__all__ = ["KIND", "SegmentationConfig"]
