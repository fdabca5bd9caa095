"""Backdoor attacks: triggers, poisoned datasets with recorded indices, and metrics.

A backdoor is three parts (GUIDE section 3): a trigger (:mod:`medsec.backdoors.triggers`),
a label policy (all-to-one, all-to-all, clean-label) and a poison rate with the poisoned
indices recorded (:class:`PoisonedDataset`). Report clean accuracy and attack success
with and without the images whose true class is the target (:func:`backdoor_metrics`).
"""

from __future__ import annotations

from medsec.backdoors import triggers
from medsec.backdoors.metrics import backdoor_metrics
from medsec.backdoors.poisoning import POLICIES, PoisonedDataset, poison_targets

__all__ = ["triggers", "PoisonedDataset", "POLICIES", "poison_targets", "backdoor_metrics"]
