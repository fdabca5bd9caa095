"""Preliminary defences against whole-slide attacks (Liu et al., arXiv 2505.24141, make a
"preliminary study of defences"; which ones is not public, so medsec offers the usual set).

Threat model of the defender: sees the tiles (input purifiers) or the tile embeddings
(detector) of every slide, not which tiles were attacked; or retrains the MIL head.

The defences are registered units, used by the ``kind: wsi`` experiment by name:

* input purifiers applied to every tile before the encoder (``medsec ls defenses``):
  ``jpeg``, ``gaussian_blur`` and ``stain_normalization`` (Macenko et al., ISBI 2009, via
  torchstain; default target ``$MEDSEC_DATA/he-samples/torchstain_target.png``, the
  ``slides.macenko_target`` of a config otherwise), from
  :func:`medsec.defenses.create`;
* the ``embedding_outlier`` detector (``medsec ls detectors``,
  :class:`~medsec.defenses.embedding_outlier.EmbeddingOutlierDetector`): flagged tiles are
  dropped from the bag before the head (:func:`drop_flagged`).

What stays here is the slide-level orchestration: :func:`drop_flagged` and
:func:`adversarial_finetune` (fine-tune the MIL head on clean and attacked bags,
adversarial training of the aggregator on attacked features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from medsec.defenses.embedding_outlier import EmbeddingOutlierDetector
from medsec.errors import InputError

if TYPE_CHECKING:
    from medsec.models.mil.base import MILHead

__all__ = ["EmbeddingOutlierDetector", "adversarial_finetune", "drop_flagged"]


def drop_flagged(bag: torch.Tensor, flagged: np.ndarray) -> torch.Tensor:
    """The bag without the flagged tiles (all of them kept if every tile is flagged)."""
    keep = torch.as_tensor(~np.asarray(flagged, dtype=bool))
    return bag[keep] if bool(keep.any()) else bag


def adversarial_finetune(head: MILHead, clean: Sequence[torch.Tensor], attacked: Sequence[torch.Tensor],
                         labels: Sequence[int] | torch.Tensor, epochs: int = 5, lr: float = 1e-4,
                         generator: torch.Generator | None = None) -> MILHead:
    """Fine-tune ``head`` in place on the union of clean and attacked bags (same labels)."""
    from medsec.wsi.mil.train import train_mil

    if len(clean) != len(attacked):
        raise InputError("clean and attacked bag lists must have the same length")
    y = torch.as_tensor(labels).long()
    # the head keeps its feature statistics and its last state (no re-standardisation, no selection)
    return train_mil(head, list(clean) + list(attacked), torch.cat([y, y]), epochs=epochs, lr=lr, standardize=False,
                     val_fraction=0.0, generator=generator)
