"""Label-free attacks on a tile encoder, the entry point of the whole-slide attack: the
registered label-free attacks (``medsec.attacks.label_free()``: ``fgsm_rs``, ``pgd``,
``mifgsm``, ``feature_cw``, ``feature_deepfool``) run on the feature-deviation objective
with the defaults of the "revised" classical white-box attacks of Liu et al.
(arXiv 2505.24141).

Threat model: white-box on the frozen encoder f only (no label, no MIL head), per-tile
L-inf (default) or L2 budget eps in [0, 1] pixel units. Every attack maximises the
feature deviation D(f(x'), f(x)) (:class:`~medsec.objectives.FeatureDeviation`, 1 - cos by
default); the encoder is wrapped in :class:`~medsec.objectives.EmbeddingAsLogits` so its
embedding plays the role of the logits and each tile's "label" is its own index into the
clean embeddings. Nothing here re-implements an attack: the names resolve through the
attack registry (``medsec ls attacks``), and :data:`LABEL_FREE_DEFAULTS` is the one place
that holds the label-free defaults that differ from a unit's own:

* D has its minimum, hence a zero gradient, at the clean tile, so a gradient step from x
  itself goes nowhere: ``pgd`` and ``mifgsm`` start at a random point of the ball
  (``fgsm_rs``, ``feature_cw`` and ``feature_deepfool`` do by construction; plain ``fgsm``
  is not label-free).
* ``pgd``: 10 steps of eps/4 (the design Liu et al., arXiv 2505.24141, recommend); ``mifgsm``: its own
  defaults (10 steps of eps/10, decay 1); ``fgsm_rs``: one step of 1.25 eps (Wong, Rice &
  Kolter, ICLR 2020); ``feature_cw``, ``feature_deepfool``: see their docstrings.

Example:
    >>> from medsec.wsi.encoders import create_encoder
    >>> encoder = create_encoder("uni", pretrained=False, overrides={"depth": 1, "img_size": 32})
    >>> tiles = torch.rand(4, 3, 32, 32)
    >>> res = feature_attack("pgd", encoder, tiles, ThreatModel("linf", 8 / 255),
    ...                      generator=torch.Generator().manual_seed(0))
    >>> res.loss.shape  # per-tile 1 - cos
    torch.Size([4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medsec.errors import InputError
from medsec.objectives.feature_deviation import EmbeddingAsLogits, FeatureDeviation
from medsec.types import AttackResult, InputSpec, ThreatModel

# the names the kind: wsi experiment used before its attacks became registered units
RENAMED = {"fgsm": "fgsm_rs", "cw": "feature_cw", "deepfool": "feature_deepfool"}


@dataclass(frozen=True)
class PerEps:
    """A parameter given as a multiple of the threat's eps (resolved at call time)."""

    factor: float

    def at(self, eps: float) -> float:
        return self.factor * eps


#: The label-free defaults of the revised attacks (Liu et al., arXiv 2505.24141)
#: that differ from the units' own defaults, per registered attack name; a :class:`PerEps`
#: value is a multiple of the threat's eps. Parameters given by the caller (or in the
#: ``attack.params`` of a ``kind: wsi`` config) override them.
LABEL_FREE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 10, "step_size": PerEps(0.25), "random_start": True},
    "mifgsm": {"random_start": True},
}


def label_free_params(name: str, eps: float, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters attack ``name`` runs with label-free at ``eps``: the defaults of
    :data:`LABEL_FREE_DEFAULTS`, then ``params``."""
    out = {k: (v.at(eps) if isinstance(v, PerEps) else v) for k, v in LABEL_FREE_DEFAULTS.get(name, {}).items()}
    out.update(params or {})
    return out


def check_label_free(name: str) -> str:
    """``name`` if it is a registered label-free attack; otherwise an :class:`InputError`
    that names the label-free attacks (and the new name of a renamed one)."""
    import medsec.attacks
    from medsec.registry import suggest

    free = medsec.attacks.label_free()
    if name in free:
        return name
    if name in RENAMED:
        raise InputError(f"attack {name!r} is not label-free; the label-free variant is {RENAMED[name]!r} "
                         f"(label-free attacks: {', '.join(free)})")
    if name in medsec.attacks.list():
        raise InputError(f"attack {name!r} needs class labels and cannot run label-free; "
                         f"label-free attacks: {', '.join(free)}")
    raise InputError(f"unknown feature attack {name!r}.{suggest(str(name), free)} Use one of {', '.join(free)}.")


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
        name: a label-free registered attack (``fgsm_rs``, ``pgd``, ``mifgsm``,
            ``feature_cw``, ``feature_deepfool``).
        encoder: the tile encoder (normalisation inside).
        x: tiles in the encoder's bounds.
        threat: L-inf or L2 budget (untargeted).
        generator: randomness of the start points.
        distance: ``cosine`` (1 - cos) or ``l2``.
        reference: clean embeddings of ``x`` (default: computed, one forward pass).
        threshold: deviation counted as success (and the feature DeepFool's level set).
        params: the attack's own parameters (steps, step_size, decay, c, lr, overshoot),
            over :data:`LABEL_FREE_DEFAULTS`.

    Returns:
        an :class:`AttackResult` whose ``loss`` is the per-tile deviation and ``logits``
        the perturbed embeddings.
    """
    import medsec.attacks

    check_label_free(name)
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
    objective = FeatureDeviation(distance=distance, threshold=threshold, reference=reference)
    attack = medsec.attacks.create(name, loss=objective, **label_free_params(name, threat.eps, params))
    model = EmbeddingAsLogits(encoder, x.shape[0])
    idx = torch.arange(x.shape[0], device=x.device)
    return attack(model, x, idx, threat=threat, generator=generator)
