"""Poisoned training sets with fixed, recorded indices (Gu et al. 2017, BadNets; the
clean-label variant of Turner et al., "Label-Consistent Backdoor Attacks", 2019).

Threat model: the attacker may change the images (and, except clean-label, the labels)
of a chosen fraction of the training set, nothing else. Which images are poisoned is
drawn once from ``seed`` and recorded, so a poisoned set can be rebuilt exactly and
every report names the images it changed.

Label policies:

* ``all_to_one``: poisoned images are relabelled to ``target``; they are drawn from the
  images whose label is not the target (relabelling a target image changes nothing);
* ``all_to_all``: label y becomes (y + 1) mod C (Gu et al.); drawn from all images;
* ``clean_label``: poisoned images keep their label and are drawn from the target class.

The rate counts against the whole training set (``rate * N`` images, at least one), as
the papers state poison rates; ``count`` gives the number directly.

Example:
    >>> import torch
    >>> from medsec.data import ImageDataset
    >>> from medsec.backdoors import PoisonedDataset, triggers
    >>> ds = ImageDataset(torch.rand(100, 3, 28, 28), torch.arange(100) % 4, list("abcd"))
    >>> p = PoisonedDataset(ds, triggers.create("badnets"), target=0, rate=0.05, seed=0)
    >>> len(p.poison_indices), bool((p.dataset.labels[p.poison_indices] == 0).all())
    (5, True)
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from medsec.backdoors.triggers.base import Params, Trigger
from medsec.errors import InputError

log = logging.getLogger(__name__)

POLICIES = ("all_to_one", "all_to_all", "clean_label")


def poison_targets(labels: torch.Tensor, policy: str, target: int | None, num_classes: int) -> torch.Tensor:
    """The labels poisoned images get under ``policy``."""
    if policy == "all_to_one":
        return torch.full_like(labels, int(target))  # type: ignore[arg-type]
    if policy == "all_to_all":
        return (labels + 1) % num_classes
    return labels.clone()


class PoisonedDataset:
    """A training set with a trigger stamped on a recorded subset of its images.

    Args:
        dataset: the clean :class:`~medsec.data.ImageDataset` (multiclass or binary).
        trigger: a :class:`~medsec.backdoors.triggers.Trigger`.
        target: the target class (``all_to_one`` and ``clean_label``).
        rate: fraction of the training set to poison, in (0, 1]; or ``count``.
        count: number of images to poison (instead of ``rate``).
        policy: ``"all_to_one"`` (default), ``"all_to_all"`` or ``"clean_label"``.
        seed: draws the poisoned indices and the trigger's parameters.
        params: trigger parameters to reuse (default: drawn from ``seed``).

    Attributes:
        poison_indices: sorted int64 indices of the poisoned images.
        params: the trigger parameters (stamp test images with the same ones).
        dataset: the poisoned :class:`~medsec.data.ImageDataset`.
    """

    def __init__(self, dataset: Any, trigger: Trigger, target: int | None = 0, rate: float | None = None,
                 count: int | None = None, policy: str = "all_to_one", seed: int = 0,
                 params: Params | None = None) -> None:
        if not isinstance(trigger, Trigger):
            raise InputError(f"trigger must be a medsec Trigger, got {type(trigger).__name__}")
        if policy not in POLICIES:
            raise InputError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        task = getattr(dataset, "task", "multiclass")
        if task == "multilabel":
            raise InputError("poisoning multi-label datasets needs target label vectors; it is not supported")
        labels = dataset.labels
        n, k = len(labels), dataset.num_classes
        if policy != "all_to_all":
            if target is None or isinstance(target, bool) or not 0 <= int(target) < k:
                raise InputError(f"target must be a class index in 0..{k - 1} for policy {policy!r}, got {target!r}")
            target = int(target)
        if (rate is None) == (count is None):
            raise InputError("give exactly one of rate (fraction of the training set) or count (number of images)")
        if rate is not None:
            if not 0.0 < float(rate) <= 1.0:
                raise InputError(f"rate must be in (0, 1], got {rate}")
            count = max(1, int(round(float(rate) * n)))
        count = int(count)  # type: ignore[arg-type]
        if count < 1:
            raise InputError(f"count must be >= 1, got {count}")
        if policy == "all_to_one":
            candidates = (labels != target).nonzero().flatten()
        elif policy == "clean_label":
            candidates = (labels == target).nonzero().flatten()
        else:
            candidates = torch.arange(n)
        if count > len(candidates):
            raise InputError(f"cannot poison {count} images: policy {policy!r} leaves only {len(candidates)} candidates; "
                             "lower the rate")
        g = torch.Generator().manual_seed(int(seed))
        self.poison_indices = candidates[torch.randperm(len(candidates), generator=g)[:count]].sort().values
        self.trigger, self.target, self.policy, self.seed = trigger, target, policy, int(seed)
        self.rate = count / n
        self.params = params if params is not None else trigger.sample_params(dataset.image_shape, g)
        self.clean = dataset
        images = dataset.images.clone()
        idx = self.poison_indices
        for i in range(0, len(idx), 512):
            chunk = idx[i : i + 512]
            images[chunk] = trigger.apply(images[chunk], self.params)
        new_labels = labels.clone()
        new_labels[idx] = poison_targets(labels[idx], policy, target, k)
        self.dataset = dataset.derive(images, new_labels, dataset.ids, poisoned=len(idx), poison_policy=policy)
        log.info("poisoned %d of %d images (%s, target %s, trigger %s)", len(idx), n, policy, target, trigger.name)

    def __len__(self) -> int:
        return len(self.dataset)

    def triggered(self, x: torch.Tensor) -> torch.Tensor:
        """Test images with the same trigger (same parameters) stamped on them."""
        return self.trigger.apply(x, self.params)

    def test_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels the backdoor should produce on triggered test images."""
        return poison_targets(labels, "all_to_all" if self.policy == "all_to_all" else "all_to_one", self.target,
                              self.clean.num_classes)

    def record(self) -> dict[str, Any]:
        """What results.json stores about the poisoning (enough to rebuild it)."""
        return {"trigger": self.trigger.name, "trigger_config": {k: (v if isinstance(v, (int, float, str, bool, type(None)))
                                                                   else repr(v)) for k, v in self.trigger.config().items()},
                "policy": self.policy, "target": self.target, "seed": self.seed, "rate": self.rate,
                "count": len(self.poison_indices), "indices": self.poison_indices.tolist()}
