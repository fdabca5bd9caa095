"""Label-free attacks on a tile encoder: FGSM, PGD, MI-FGSM, C&W and DeepFool in feature
space (the "revised" classical white-box attacks of Liu et al., arXiv 2505.24141).

Threat model: white-box on the frozen encoder f only (no label, no MIL head), per-tile
L-inf (default) or L2 budget eps in [0, 1] pixel units. Every attack maximises the
feature deviation D(f(x'), f(x)) (:class:`~medsec.wsi.attacks.objective.FeatureDeviation`,
1 - cosine by default). PGD and MI-FGSM are medsec's own attacks
(:mod:`medsec.attacks.pgd`, :mod:`medsec.attacks.mifgsm`) run through the objective; the
encoder is wrapped so its embedding plays the role of the logits and each tile's "label"
is its own index into the clean embeddings. Label-free specifics:

* D has its minimum, hence a zero gradient, at the clean tile, so a step from x itself
  goes nowhere: ``fgsm`` is FGSM with a random start (Wong, Rice & Kolter, ICLR 2020:
  uniform start in the ball, one step of 1.25 eps, projection), ``pgd`` and ``mifgsm``
  start at a random point of the ball, C&W and DeepFool at a small random offset.
* PGD defaults: 10 steps, step eps/4 (PAPERS.md's recommended design); MI-FGSM: 10 steps,
  step eps/10, decay 1.
* ``cw`` and ``deepfool``: :class:`FeatureCW`, :class:`FeatureDeepFool` (their docstrings
  state the adaptations).

Example:
    >>> res = feature_attack("pgd", encoder, tiles, ThreatModel("linf", 8 / 255),
    ...                      generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> res.loss  # per-tile 1 - cos  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medsec.attacks.mifgsm import MIFGSM
from medsec.attacks.pgd import PGD
from medsec.errors import InputError
from medsec.types import AttackResult, InputSpec, ThreatModel
from medsec.wsi.attacks.cw import FeatureCW
from medsec.wsi.attacks.deepfool import FeatureDeepFool
from medsec.wsi.attacks.objective import FeatureDeviation

FEATURE_ATTACKS = ("fgsm", "pgd", "mifgsm", "cw", "deepfool")


class EmbeddingAsLogits(nn.Module):
    """The encoder seen by medsec's attacks: "logits" = embedding, one "class" per tile."""

    task = "multiclass"

    def __init__(self, encoder: nn.Module, batch: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = int(batch)
        spec = getattr(encoder, "spec", None)
        self.spec = spec if isinstance(spec, InputSpec) else InputSpec()
        # a fresh Module is in train mode; mirror the encoder's mode so that the attack's
        # mode restore (attack_mode) leaves a frozen eval-mode encoder in eval mode
        self.train(encoder.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def build_attack(name: str, eps: float, **params: Any) -> Any:
    """The medsec attack object behind a feature-space attack name."""
    if name == "fgsm":
        return PGD(steps=1, step_size=params.pop("step_size", 1.25 * eps), random_start=True, **params)
    if name == "pgd":
        params.setdefault("steps", 10)
        params.setdefault("step_size", eps / 4)
        params.setdefault("random_start", True)
        return PGD(**params)
    if name == "mifgsm":
        params.setdefault("random_start", True)
        return MIFGSM(**params)
    if name == "cw":
        return FeatureCW(**params)
    if name == "deepfool":
        return FeatureDeepFool(**params)
    from medsec.registry import suggest

    raise InputError(f"unknown feature attack {name!r}.{suggest(name, FEATURE_ATTACKS)} Use one of {', '.join(FEATURE_ATTACKS)}.")


def feature_attack(
    name: str,
    encoder: nn.Module,
    x: torch.Tensor,
    threat: ThreatModel,
    generator: torch.Generator | None = None,
    distance: str = "cosine",
    reference: torch.Tensor | None = None,
    threshold: float | None = None,
    **params: Any,
) -> AttackResult:
    """Attack tiles ``x`` (k, C, H, W) on ``encoder`` label-free.

    Args:
        name: ``fgsm``, ``pgd``, ``mifgsm``, ``cw`` or ``deepfool``.
        encoder: the tile encoder (normalisation inside).
        x: tiles in the encoder's bounds.
        threat: L-inf or L2 budget (untargeted).
        generator: randomness of the start points.
        distance: ``cosine`` (1 - cos) or ``l2``.
        reference: clean embeddings of ``x`` (default: computed, one forward pass).
        threshold: deviation counted as success (and DeepFool's level set).
        params: the attack's own parameters (steps, step_size, decay, c, lr, overshoot).

    Returns:
        an :class:`AttackResult` whose ``loss`` is the per-tile deviation and ``logits``
        the perturbed embeddings.
    """
    if not isinstance(threat, ThreatModel) or threat.norm not in ("linf", "l2") or threat.targeted:
        raise InputError("a label-free feature attack needs an untargeted ThreatModel with norm 'linf' or 'l2'")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InputError(f"tiles must be a (k, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    from medsec.validation import check_images

    spec = getattr(encoder, "spec", None)
    check_images(x, spec if isinstance(spec, InputSpec) else None, name="tiles")
    if reference is None:
        with torch.no_grad():
            was = encoder.training
            encoder.eval()
            reference = encoder(x).detach()
            encoder.train(was)
    objective = FeatureDeviation(reference, distance=distance, threshold=threshold)
    attack = build_attack(name, threat.eps, **params)
    attack.loss = objective
    model = EmbeddingAsLogits(encoder, x.shape[0])
    idx = torch.arange(x.shape[0], device=x.device)
    return attack(model, x, idx, threat=threat, generator=generator)
