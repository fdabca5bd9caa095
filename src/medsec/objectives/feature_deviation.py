"""The label-free feature-deviation objective (Liu et al., "The Butterfly Effect in
Pathology", arXiv 2505.24141): push an embedding away from the clean embedding of the
same input.

Threat model: white-box on an embedding model (a frozen foundation model or tile
encoder), untargeted, no label and no downstream head. The loss of a perturbed input is
D = 1 - cos(f(x'), f(x)) (``distance="cosine"``, default) or ||f(x') - f(x)||_2
(``"l2"``) against its clean embedding f(x); success is D > ``threshold`` (default 0.5
for cosine, i.e. cos < 0.5; for L2, half the mean norm of the clean embeddings).

The protocol that lets medsec's attacks (PGD, MI-FGSM, FGSM-RS, the feature C&W and
DeepFool) run it unchanged, early stop on subsets included: the model declares
``task = "embedding"`` (wrap an encoder in :class:`EmbeddingAsLogits`), the embedding
plays the role of the logits, and the "label" of sample i is its own index i
(``y = torch.arange(n)``), which selects its row of the clean embeddings
``reference``. Without a ``reference`` the attack binds the objective to the clean
embeddings of the batch it attacks (one forward pass, :meth:`FeatureDeviation.prepare`).

D has its minimum, hence a zero gradient, at the clean input: an attack that takes its
first gradient at x itself does not move (plain FGSM); the label-free attacks start at
a random point of the ball.

Example:
    >>> ref = torch.eye(2)
    >>> FeatureDeviation(reference=ref).loss(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    tensor([1., 0.])
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from medsec.errors import InputError
from medsec.objectives.base import Objective
from medsec.registry import OBJECTIVES
from medsec.types import InputSpec

DISTANCES = ("cosine", "l2")


def deviation(z: torch.Tensor, ref: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Per-row 1 - cos(z, ref) or ||z - ref||_2."""
    d: torch.Tensor
    if distance == "cosine":
        d = 1.0 - torch.nn.functional.cosine_similarity(z, ref, dim=1, eps=1e-8)
        return d
    if distance == "l2":
        d = (z - ref).flatten(1).norm(dim=1)
        return d
    raise InputError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


@OBJECTIVES.register("feature_deviation")
class FeatureDeviation(Objective):
    """1 - cosine (or L2) distance of the embedding to the clean embedding of the same input.

    Args:
        task: the head type; only ``"embedding"``.
        distance: ``"cosine"`` (1 - cos, default) or ``"l2"``.
        threshold: the deviation that counts as success (and the level set of the feature
            DeepFool); default 0.5 for cosine, half the mean reference norm for L2.
        reference: the clean embeddings (B, D) of the batch, row i for sample i; default:
            computed by the attack from the clean inputs.
    """

    name = "feature_deviation"
    tasks = ("embedding",)

    def __init__(self, task: str = "embedding", *, distance: str = "cosine", threshold: float | None = None,
                 reference: torch.Tensor | None = None) -> None:
        super().__init__(task)
        if distance not in DISTANCES:
            raise InputError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if threshold is not None and not float(threshold) > 0:
            raise InputError(f"threshold (the deviation that counts as success) must be > 0, got {threshold}")
        self.distance = distance
        self.threshold = None if threshold is None else float(threshold)
        self.reference: torch.Tensor | None = None
        if reference is not None:
            self.bind(reference)

    def bind(self, reference: torch.Tensor) -> None:
        """Bind this objective to the clean embeddings ``reference`` (B, D), in place."""
        if not isinstance(reference, torch.Tensor) or reference.dim() != 2 or not torch.isfinite(reference).all():
            raise InputError("reference must be a finite (B, D) tensor of clean embeddings")
        self.reference = reference.detach()
        if self.threshold is None:
            self.threshold = 0.5 if self.distance == "cosine" else float(0.5 * self.reference.norm(dim=1).mean())

    def prepare(self, model: nn.Module, x: torch.Tensor) -> FeatureDeviation:
        """This objective if it holds a reference for ``x``; otherwise a copy bound to the
        clean embeddings ``model(x)`` (one forward pass, no gradient)."""
        if self.reference is not None:
            if self.reference.shape[0] != x.shape[0]:
                raise InputError(f"the reference holds {self.reference.shape[0]} clean embeddings for a batch of "
                                 f"{x.shape[0]}; pass one row per input (or none: the attack computes them)")
            return self
        with torch.no_grad():
            ref = model(x)
        bound = copy.copy(self)
        bound.bind(ref.flatten(1))
        return bound

    def _ref(self) -> torch.Tensor:
        if self.reference is None:
            raise InputError("the feature-deviation objective has no reference embeddings yet; pass reference=... "
                             "or let an attack bind it (prepare(model, x))")
        return self.reference

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        if targeted:
            raise InputError("the feature-deviation objective is untargeted (label-free)")
        return deviation(logits.flatten(1), self._ref().to(logits.device, logits.dtype)[y.long()], self.distance)

    def success(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        value = self.loss(logits.detach(), y)
        assert self.threshold is not None  # bind() sets it with the reference that loss() needs
        return value > self.threshold

    def __repr__(self) -> str:
        threshold = "auto" if self.threshold is None else f"{self.threshold:g}"
        return f"FeatureDeviation(distance={self.distance!r}, threshold={threshold})"


class EmbeddingAsLogits(nn.Module):
    """An embedding model as the label-free attacks see it: ``task = "embedding"``, the
    embedding in place of the logits, one "class" per sample of a batch of ``batch``
    (sample i's label is i).

    Args:
        encoder: the module mapping inputs to (B, D) embeddings (normalisation inside).
        batch: the batch size the attack will be called with.
    """

    task = "embedding"

    def __init__(self, encoder: nn.Module, batch: int) -> None:
        super().__init__()
        if int(batch) < 1:
            raise InputError(f"batch must be >= 1, got {batch}")
        self.encoder = encoder
        self.num_classes = int(batch)
        spec = getattr(encoder, "spec", None)
        self.spec = spec if isinstance(spec, InputSpec) else InputSpec()
        # a fresh Module is in train mode; mirror the encoder's mode so that the attack's
        # mode restore (attack_mode) leaves a frozen eval-mode encoder in eval mode
        self.train(encoder.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding: torch.Tensor = self.encoder(x)
        return embedding
