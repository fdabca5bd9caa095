"""The whole-slide attack: perturb k = max(1, ceil(rho N)) tiles label-free, re-encode
only those, and splice their embeddings into the cached bag.

"Local perturbation with global impact" (Liu et al., arXiv 2505.24141). Threat model:
white-box on the tile encoder, no label and no MIL head (``random`` and
``vulnerability`` selection); the ``attention`` strategy is a grey-box upper bound that
reads the head's attention. The cost is in proportion to the attack, not the slide:
the untouched N - k tiles are never read nor re-encoded (their cached features are
reused bit for bit), and only the k selected tiles are read, attacked (forward + backward
through the encoder) and re-encoded. (``vulnerability`` ranking is the exception: it
spends one forward+backward pass on every tile.)

Example:
    >>> from medsec.wsi import TensorTiles, create_encoder
    >>> encoder = create_encoder("uni", pretrained=False, overrides={"depth": 1, "img_size": 32})
    >>> tiles = torch.rand(200, 3, 32, 32)  # a "slide" of 200 tiles, with their cached features
    >>> res = attack_slide(encoder, TensorTiles(tiles), encoder.encode(tiles), WSIBudget(0.01, 8 / 255),
    ...                    generator=torch.Generator().manual_seed(0))
    >>> res.indices.shape, res.features_adv.shape  # k = 2 tiles attacked, their rows replaced
    (torch.Size([2]), torch.Size([200, 1024]))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medsec.errors import InputError
from medsec.objectives.feature_deviation import deviation
from medsec.wsi.attacks.feature_attack import feature_attack
from medsec.wsi.budget import WSIBudget, select_tiles

if TYPE_CHECKING:
    from medsec.models.mil.base import MILHead


@dataclass
class SlideAttack:
    """What :func:`attack_slide` returns.

    Attributes:
        indices: (k,) the attacked tiles.
        tiles_clean, tiles_adv: (k, C, H, W) their pixels before and after.
        features_adv: (N, D) the bag with the k rows replaced (others are the input rows).
        deviation: (k,) 1 - cos between clean and attacked embeddings.
        seconds: wall time of the attack (selection excluded).
    """

    indices: torch.Tensor
    tiles_clean: torch.Tensor
    tiles_adv: torch.Tensor
    features_adv: torch.Tensor
    deviation: torch.Tensor
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)


def attack_slide(
    encoder: nn.Module,
    tiles: Any,
    features: torch.Tensor,
    budget: WSIBudget,
    attack: str = "pgd",
    strategy: str = "random",
    head: MILHead | None = None,
    generator: torch.Generator | None = None,
    distance: str = "cosine",
    indices: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    **attack_params: Any,
) -> SlideAttack:
    """Attack one slide (a bag of N cached tile features).

    Args:
        encoder: the frozen tile encoder (the FM).
        tiles: random access to the N tiles (``SlideTiles``, ``TensorTiles``); only the
            selected ones are read.
        features: (N, D) cached clean features of the same tiles.
        budget: (rho, eps, norm).
        attack: a label-free registered attack (``fgsm_rs``, ``pgd``, ``mifgsm``, ``feature_cw``,
            ``feature_deepfool``; :func:`~medsec.wsi.attacks.feature_attack`).
        strategy: ``random``, ``vulnerability`` or ``attention`` (needs ``head``).
        head: the MIL head, read only by ``attention``.
        generator: randomness of the selection and the attack.
        distance: the deviation, ``cosine`` or ``l2``.
        indices: attack these tiles instead of selecting (their count must be k).
        scores: precomputed vulnerability scores (N,).
    """
    if not isinstance(budget, WSIBudget):
        raise InputError(f"budget must be a medsec.wsi.WSIBudget, got {type(budget).__name__}")
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise InputError(f"features must be an (N, D) tensor, got {getattr(features, 'shape', type(features).__name__)}")
    n = features.shape[0]
    if len(tiles) != n:
        raise InputError(f"the slide has {len(tiles)} tiles but {n} feature rows; use the features of these tiles")
    k = budget.n_attacked(n)
    if indices is None:
        attention = None
        if strategy == "attention":
            if head is None:
                raise InputError("strategy 'attention' (grey-box) needs the MIL head; pass head=...")
            attention = head.attention(features.to(next(head.parameters()).device)).cpu()
        indices = select_tiles(strategy, n, k, generator, encoder=encoder, tiles=tiles, threat=budget.threat,
                               attention=attention, scores=scores)
    else:
        indices = torch.as_tensor(indices).long().flatten()
        if indices.numel() != k or len(set(indices.tolist())) != k or int(indices.min()) < 0 or int(indices.max()) >= n:
            raise InputError(f"indices must be {k} distinct tiles in 0..{n - 1} (k = max(1, ceil(rho N)))")
    dev = next(encoder.parameters()).device
    t0 = time.perf_counter()
    x = tiles[indices.numpy()].to(dev)
    with torch.no_grad():
        was = encoder.training
        encoder.eval()
        ref = encoder(x).detach()
        encoder.train(was)
    res = feature_attack(attack, encoder, x, budget.threat, generator=generator, distance=distance, reference=ref,
                         **attack_params)
    z_adv = res.logits.detach().to(features.dtype).cpu()  # type: ignore[union-attr]
    seconds = time.perf_counter() - t0
    feats_adv = features.clone()
    feats_adv[indices] = z_adv
    return SlideAttack(indices, x.detach().cpu(), res.x_adv.detach().cpu(), feats_adv,
                       deviation(z_adv, ref.cpu().to(z_adv.dtype)), seconds,
                       {"k": k, "n_tiles": n, "attack": attack, "strategy": strategy})


def k_for(n_tiles: int, rho: float) -> int:
    """max(1, ceil(rho N)), the number of tiles a budget of rho attacks."""
    return WSIBudget(rho=rho).n_attacked(n_tiles)


__all__ = ["SlideAttack", "attack_slide", "k_for"]
