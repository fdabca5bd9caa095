"""``kind: prompt_backdoor``: the BAPLe table (Hanif et al., "BAPLe: Backdoor Attacks
on Medical Foundational Models using Prompt Learning", MICCAI 2024, Tables 1-2) with ``medsec run``.

Threat model: data poisoning of few-shot adaptation (FT and PL rows) and BAPLe's
prompt-and-trigger learning on a frozen CLIP-style model; see
:mod:`medsec.backdoors.prompt_harness`.

A config names the CLIP-style model (a medsec-pretrained recipe: ``bloodmnist_clip``, or
``medical_clip`` from BUSI, Kvasir-SEG and BloodMNIST captions; or an open_clip /
transformers name), the dataset (``bloodmnist``, or ``busi`` with medsec's fixed stratified
split, :func:`medsec.data.captioned.busi_split`), the methods and the targets; each
(method, target) cell is one training run, written to ``results.json`` as soon as it
finishes, so a rerun of the same config resumes (Clean PL's context, which later prompt
runs start from, is saved beside it in ``clean_ctx.npz``). The report has the paper-layout
table (rows = method, cells = CA / BA averaged over targets), a CA/BA bar chart and
triggered example images.

Example YAML::

    kind: prompt_backdoor
    name: bloodmnist_baple
    model: {recipe: bloodmnist_clip}
    data: {name: bloodmnist}
    targets: all
"""

from __future__ import annotations

from medsec.experiments.prompt_backdoor import run as runner
from medsec.experiments.prompt_backdoor.config import PromptBackdoorConfig
from medsec.experiments.prompt_backdoor.report import render, summary
from medsec.experiments.prompt_backdoor.results import PromptBackdoorResults
from medsec.runs.kind import Kind
from medsec.runs.store import Axis

KIND = Kind(
    name="prompt_backdoor", config=PromptBackdoorConfig, run=runner.run, plan=runner.plan, render=render, summary=summary,
    axes=(Axis("methods"), Axis("targets")),
    results=PromptBackdoorResults,
    description="BAPLe and the FT/PL backdoor baselines on a CLIP-style model (CA / BA per method)",
)

__all__ = ["KIND", "PromptBackdoorConfig"]
