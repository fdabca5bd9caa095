"""AutoAttack-style ensemble run as a cascade (Croce & Hein, ICML 2020, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks").

Threat model: white-box plus score-based black-box, L-inf or L2, untargeted. The
standard version runs APGD-CE, APGD-T (targeted DLR over the top 9 classes), a
minimum-norm attack and Square, each only on the points still robust after the
previous ones; a point counts as broken as soon as one attack breaks it, so the result
is the worst case over the ensemble. medsec has no FAB: the minimum-norm stage is C&W
(L2 threats) or DeepFool (L-inf threats), projected onto the eps-ball.

``result.extras["broken_by"]`` gives, per sample, the index of the stage that broke it
(-1: robust), and ``extras["stages"]`` the stage names; the runner turns them into the
robust accuracy after each stage.

Example:
    >>> import medsec, torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))  # any module returning logits
    >>> x = torch.rand(4, 3, 28, 28)
    >>> y = model(x).argmax(1)  # the clean predictions
    >>> aa = medsec.attacks.create("autoattack", steps=20, square_queries=200)  # paper: steps=100, 5000 queries
    >>> res = aa(model, x, y, threat=medsec.ThreatModel("linf", 8 / 255), generator=torch.Generator().manual_seed(0))
    >>> res.extras["stages"]
    ['apgd', 'apgd_t', 'deepfool', 'square']
    >>> res.extras["broken_by"].tolist()  # every point falls to the first stage, APGD-CE
    [0, 0, 0, 0]
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from medsec.attacks.base import Attack, Problem
from medsec.errors import InputError
from medsec.registry import ATTACKS

log = logging.getLogger(__name__)


def standard_stages(norm: str, steps: int, square_queries: int) -> list[tuple[str, dict[str, Any]]]:
    """The stages of the standard version for a norm."""
    return [
        ("apgd", {"loss": "auto", "steps": steps}),
        ("apgd_t", {"steps": steps}),
        ("cw", {}) if norm == "l2" else ("deepfool", {}),
        ("square", {"queries": square_queries}),
    ]


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """Cascade of attacks; each stage only attacks the points still robust.

    Args:
        version: ``"standard"`` (APGD-CE, APGD-T, C&W/DeepFool, Square) or ``"fast"``
            (APGD-CE and APGD-T only).
        steps: APGD iterations per stage (paper: 100).
        square_queries: Square's query budget (paper: 5000).
        stages: explicit ``[[name, {params}], ...]`` instead of a version.
    """

    name = "autoattack"
    segmentation = False  # class-boundary attack: no segmentation variant
    supports_targeted = False
    iterative = True
    stochastic = True

    def __init__(self, *, version: str = "standard", steps: int = 100, square_queries: int = 5000,
                 stages: list[Any] | None = None) -> None:
        super().__init__(loss="auto", early_stop=True)
        if version not in ("standard", "fast"):
            raise InputError(f"version must be 'standard' or 'fast', got {version!r}")
        self.version = version
        self.steps = int(steps)
        self.square_queries = int(square_queries)
        self.stages = [(str(n), dict(p)) for n, p in stages] if stages else None
        for n, _ in self.stages or []:
            ATTACKS.get(n)

    def stage_list(self, norm: str) -> list[tuple[str, dict[str, Any]]]:
        if self.stages:
            return self.stages
        stages = standard_stages(norm, self.steps, self.square_queries)
        return stages[:2] if self.version == "fast" else stages

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        x_adv = x.clone()
        broken_by = torch.full((x.shape[0],), -1, dtype=torch.long)
        remaining = torch.arange(x.shape[0], device=x.device)
        names: list[str] = []
        steps = 0
        assert problem.queries is not None
        for k, (name, params) in enumerate(self.stage_list(problem.threat.norm)):
            names.append(name)
            if remaining.numel() == 0:
                continue
            attack = ATTACKS.create(name, **params)
            if getattr(attack, "iterative", False):
                attack.early_stop = True
            attack.eot_samples = self.eot_samples
            if problem.threat.norm not in attack.norms:
                log.info("autoattack: skipping %s (no %s version)", name, problem.threat.norm)
                continue
            try:
                res = attack(problem.model, x[remaining], problem.labels[remaining], threat=problem.threat,
                             generator=generator)
            except InputError as exc:  # e.g. DLR on a binary head
                log.info("autoattack: skipping %s: %s", name, exc)
                continue
            problem.queries[remaining.cpu()] += res.queries.cpu() if res.queries is not None else 0
            steps += res.steps
            hit = res.success.to(remaining.device)
            x_adv[remaining[hit]] = res.x_adv[hit]
            broken_by[remaining[hit].cpu()] = k
            remaining = remaining[~hit]
        problem.extras["broken_by"] = broken_by
        problem.extras["stages"] = names
        return x_adv, steps
