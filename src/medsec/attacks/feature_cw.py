"""C&W in feature space (after Carlini & Wagner, IEEE S&P 2017), label-free: one of the
"revised" classical attacks of Liu et al. ("The Butterfly Effect in Pathology", arXiv
2505.24141) on pathology foundation models.

Threat model: white-box on the encoder only (no label, no downstream head), untargeted,
L-inf or L2 budget eps around the clean input. It runs on an embedding model
(:class:`~medsec.objectives.EmbeddingAsLogits`, ``y = torch.arange(n)``) with the
feature-deviation objective D (:class:`~medsec.objectives.FeatureDeviation`).

The classification margin f6 of C&W has no meaning without labels, so the feature version
minimises ||delta||_2^2 - c * D(f(x + delta), f(x)) over the tanh box reparameterisation
x + delta = lo + (hi - lo)(tanh(w) + 1)/2 with Adam on w, a fixed c (no binary search:
there is no decision boundary to search for), and keeps the iterate with the largest
deviation after projection onto the eps-ball. w starts at a small random offset (uniform
in the ball of radius 0.1 eps: the deviation has a zero gradient at the clean input).

Example:
    >>> import medsec, torch
    >>> from medsec.objectives import EmbeddingAsLogits
    >>> encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))  # a tile encoder
    >>> tiles = torch.rand(4, 3, 16, 16)
    >>> attack = medsec.attacks.create("feature_cw", steps=20, c=10.0)
    >>> res = attack(EmbeddingAsLogits(encoder, len(tiles)), tiles, torch.arange(len(tiles)),
    ...              threat=medsec.ThreatModel("linf", 8 / 255),
    ...              generator=torch.Generator().manual_seed(0))
    >>> bool((res.loss > 0).all())  # per-tile 1 - cos to the clean embedding
    True
"""

from __future__ import annotations

import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.projection import random_init
from medsec.errors import InputError
from medsec.objectives import Objective
from medsec.registry import ATTACKS


@ATTACKS.register("feature_cw")
class FeatureCW(Attack):
    """Label-free C&W: Adam on a tanh box, ||delta||^2 - c * deviation, best projected iterate.

    Args:
        steps: Adam iterations (default 100).
        c: weight of the deviation (default 10).
        lr: Adam learning rate on w (default 0.01).
        loss: the label-free objective (``"auto"``: the feature deviation of the embedding
            model, bound to the clean embeddings of the batch; or a
            :class:`~medsec.objectives.FeatureDeviation` with its own distance, threshold and
            reference).
    """

    name = "feature_cw"
    stochastic = True
    supports_targeted = False
    classification = False
    segmentation = False
    label_free = True

    def __init__(self, *, steps: int = 100, c: float = 10.0, lr: float = 0.01, loss: str | Objective = "auto") -> None:
        super().__init__(loss=loss)
        if int(steps) < 1 or not float(c) > 0 or not float(lr) > 0:
            raise InputError(f"steps >= 1, c > 0 and lr > 0 are needed, got {steps}, {c}, {lr}")
        self.steps, self.c, self.lr = int(steps), float(c), float(lr)

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        lo, hi = problem.bounds
        eps, norm = problem.threat.eps, problem.threat.norm
        start = problem.clamp(x + random_init(x, norm, 0.1 * eps, generator))
        u = ((start - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
        w = torch.atanh(u).detach().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        labels = problem.labels
        best, best_loss = x.clone(), torch.full((x.shape[0],), -1.0, device=x.device)
        for _ in range(self.steps):
            with torch.enable_grad():
                xa = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
                dev = problem.objective.loss(problem.model(xa), labels, False)
                total = ((xa - x).flatten(1).pow(2).sum(1) - self.c * dev).sum()
                opt.zero_grad(set_to_none=True)
                total.backward()
            opt.step()
            problem.count_queries(None)
            with torch.no_grad():
                xp = problem.project(lo + (hi - lo) * (torch.tanh(w) + 1) / 2, x)
                loss = problem.loss(problem.logits(xp))
                better = loss > best_loss
                best[better], best_loss[better] = xp[better], loss[better]
        return best, self.steps
