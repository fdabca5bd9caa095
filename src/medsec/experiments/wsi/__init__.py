"""``kind: wsi``: label-free whole-slide attacks on a frozen tile encoder (Liu et al., "The
Butterfly Effect in Pathology", arXiv 2505.24141), on BloodMNIST MIL bags (Ilse et al. 2018)
and on real slides.

Threat model: white-box on the encoder, label-free and head-free (``random``,
``vulnerability`` tile selection), with a grey-box upper bound that uses the MIL head's
attention (``attention``); a fraction rho of each bag's tiles, each within eps.

The slide machinery (tiling, tissue, feature cache, bags, budget, splicing) is
:mod:`medsec.wsi`; the attacks, the feature-deviation objective, the purifiers, the
embedding outlier detector, the tile encoders and the MIL heads are registered units. This
folder holds the experiment only: its config, its run over the shared run services, its
results model and its report.

Example (configs/bloodmnist_bags_wsi.yaml)::

    kind: wsi
    name: bloodmnist_bags_wsi
    encoder: {name: medsec_bloodmnist}
    bags:
      tasks: [{name: lymphocyte, positive: [4]}, {name: basophil, positive: [0]}]
    heads: [{name: abmil}, {name: mean}, {name: transmil}]
    attack: {names: [pgd], rhos: [0.001, 0.005, 0.01], eps: 8/255}
"""

from __future__ import annotations

from medsec.experiments.wsi import run as runner
from medsec.experiments.wsi.config import WSIConfig
from medsec.experiments.wsi.report import render, summary
from medsec.experiments.wsi.results import WSIResults
from medsec.runs.kind import Kind
from medsec.runs.store import Axis

KIND = Kind(
    name="wsi", config=WSIConfig, run=runner.run, plan=runner.plan, render=render, summary=summary, check=runner.check,
    axes=(Axis("attack.names", ordered=True), Axis("attack.rhos"), Axis("attack.strategies"), Axis("heads", ordered=True), Axis("bags.tasks", ordered=True),
          Axis("slides.paths")),
    results=WSIResults,
    description="label-free whole-slide attacks on tile encoders and MIL heads (the Butterfly effect)",
)

__all__ = ["KIND", "WSIConfig"]
