"""The whole-slide perturbation budget (rho, eps, norm) and the tile-selection strategies.

Liu et al. (arXiv 2505.24141) "redefine the perturbation budget based on the
characteristics of WSI": a fraction rho of the N tiles of a slide (0.1% in the paper) is
perturbed, each within a per-pixel bound eps. medsec counts k = max(1, ceil(rho N))
tiles (at least one: rho = 0.001 of a 500-tile slide is still one tile).

Selection strategies (which k tiles):

* ``random`` (default; the label-free attacker): k distinct tiles drawn with the given
  generator. Reads nothing but N: no label, no feature, no MIL head.
* ``vulnerability``: a cheap one-step attack (``fgsm_rs``, FGSM with a random start) on every tile, then
  the k tiles whose embedding moved most. White-box on the encoder, still label-free
  and head-free; costs one forward+backward pass per tile of the slide.
* ``attention`` (grey-box upper bound): the k tiles the MIL head attends to most; needs
  the head, which the label-free threat model does not have.

Threat model: as above; eps in [0, 1] pixel units.

Example:
    >>> WSIBudget(rho=0.001, eps=8 / 255).n_attacked(2500)
    3
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsec.errors import InputError
from medsec.types import ThreatModel

STRATEGIES = ("random", "vulnerability", "attention")


@dataclass(frozen=True)
class WSIBudget:
    """rho: fraction of tiles attacked (0, 1]; eps, norm: the per-tile pixel budget."""

    rho: float = 0.001
    eps: float = 8 / 255
    norm: str = "linf"

    def __post_init__(self) -> None:
        rho = float(self.rho)
        if not (math.isfinite(rho) and 0 < rho <= 1):
            raise InputError(f"rho is the fraction of tiles attacked and must lie in (0, 1], got {self.rho!r}")
        if self.norm not in ("linf", "l2"):
            raise InputError(f"the WSI budget norm must be 'linf' or 'l2', got {self.norm!r}")
        object.__setattr__(self, "rho", rho)
        self.threat  # validates eps  # noqa: B018

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)

    def n_attacked(self, n_tiles: int) -> int:
        """k = max(1, ceil(rho * N)) (with a 1e-9 tolerance so 0.001 * 1000 is 1, not 2)."""
        if isinstance(n_tiles, bool) or int(n_tiles) != n_tiles or int(n_tiles) < 1:
            raise InputError(f"a slide needs at least one tile, got {n_tiles!r}")
        return min(int(n_tiles), max(1, math.ceil(self.rho * int(n_tiles) - 1e-9)))

    def to_dict(self) -> dict[str, Any]:
        return {"rho": self.rho, "eps": self.eps, "eps_255": self.eps * 255, "norm": self.norm}


def select_random(n_tiles: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k distinct tile indices uniformly at random (sorted)."""
    return torch.randperm(int(n_tiles), generator=generator)[:k].sort().values


def select_attention(attention: torch.Tensor, k: int) -> torch.Tensor:
    """The k tiles with the largest attention (sorted indices)."""
    a = torch.as_tensor(attention).flatten()
    return torch.topk(a, k).indices.sort().values


def vulnerability_scores(encoder: torch.nn.Module, tiles: Any, threat: ThreatModel, generator: torch.Generator | None,
                         batch_size: int = 256, distance: str = "cosine") -> torch.Tensor:
    """(N,) feature deviation of every tile after a one-step ``fgsm_rs`` (the ranking of ``vulnerability``)."""
    from medsec.wsi.attacks.feature_attack import feature_attack

    n = len(tiles)
    dev = next(encoder.parameters()).device
    out = []
    for i in range(0, n, batch_size):
        x = tiles[np.arange(i, min(n, i + batch_size))].to(dev)
        out.append(feature_attack("fgsm_rs", encoder, x, threat, generator=generator, distance=distance).loss.detach().cpu())
    return torch.cat(out)


def select_tiles(strategy: str, n_tiles: int, k: int, generator: torch.Generator | None = None, *,
                 encoder: torch.nn.Module | None = None, tiles: Any = None, threat: ThreatModel | None = None,
                 attention: torch.Tensor | None = None, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the k tiles to attack by ``strategy`` (see the module docstring)."""
    if not 1 <= int(k) <= int(n_tiles):
        raise InputError(f"cannot attack {k} of {n_tiles} tiles")
    if strategy == "random":
        return select_random(n_tiles, k, generator)
    if strategy == "attention":
        if attention is None:
            raise InputError("strategy 'attention' (grey-box) needs the MIL head's attention; pass head=...")
        if attention.numel() != n_tiles:
            raise InputError(f"attention has {attention.numel()} entries for {n_tiles} tiles")
        return select_attention(attention, k)
    if strategy == "vulnerability":
        if scores is None:
            if encoder is None or tiles is None or threat is None:
                raise InputError("strategy 'vulnerability' needs the encoder, the tiles and the threat")
            scores = vulnerability_scores(encoder, tiles, threat, generator)
        return torch.topk(torch.as_tensor(scores).flatten(), k).indices.sort().values
    from medsec.registry import suggest

    raise InputError(f"unknown tile-selection strategy {strategy!r}.{suggest(str(strategy), STRATEGIES)} "
                     f"Use one of {', '.join(STRATEGIES)}.")
