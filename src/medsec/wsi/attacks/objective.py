"""The label-free feature-deviation objective (Liu et al., "The Butterfly Effect in
Pathology", arXiv 2505.24141): push a tile's embedding away from its clean embedding.

Threat model: white-box on the tile encoder only; no label, no downstream head. The
"label" of tile i is its own index: the objective holds the clean embeddings
``reference`` (B, D) and the loss of a perturbed tile is 1 - cos(f(x'), f(x)) (default)
or ||f(x') - f(x)||_2 against ``reference[y]``. Indices instead of embeddings let the
medsec attacks (PGD, MI-FGSM, ...) run it unchanged, early stop on subsets included.
Success: the deviation exceeds ``threshold`` (default 0.5 for cosine, i.e. cos < 0.5;
for L2, half the reference norm).

Example:
    >>> ref = torch.eye(2)
    >>> FeatureDeviation(ref).loss(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    tensor([1., 0.])
"""

from __future__ import annotations

import torch

from medsec.errors import InputError
from medsec.objectives.base import Objective

DISTANCES = ("cosine", "l2")


def deviation(z: torch.Tensor, ref: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Per-row 1 - cos(z, ref) or ||z - ref||_2."""
    if distance == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(z, ref, dim=1, eps=1e-8)
    if distance == "l2":
        return (z - ref).flatten(1).norm(dim=1)
    raise InputError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


class FeatureDeviation(Objective):
    """1 - cosine (or L2) distance of the embedding to the clean embedding of the same tile."""

    name = "feature_deviation"
    tasks = ("multiclass",)

    def __init__(self, reference: torch.Tensor, distance: str = "cosine", threshold: float | None = None,
                 task: str = "multiclass") -> None:
        super().__init__(task)
        if distance not in DISTANCES:
            raise InputError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if not isinstance(reference, torch.Tensor) or reference.dim() != 2 or not torch.isfinite(reference).all():
            raise InputError("reference must be a finite (B, D) tensor of clean embeddings")
        self.reference = reference.detach()
        self.distance = distance
        if threshold is None:
            threshold = 0.5 if distance == "cosine" else float(0.5 * reference.norm(dim=1).mean())
        self.threshold = float(threshold)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        if targeted:
            raise InputError("the feature-deviation objective is untargeted (label-free)")
        return deviation(logits.flatten(1), self.reference.to(logits.device, logits.dtype)[y.long()], self.distance)

    def success(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        return self.loss(logits.detach(), y) > self.threshold

    def __repr__(self) -> str:
        return f"FeatureDeviation(distance={self.distance!r}, threshold={self.threshold:g})"
