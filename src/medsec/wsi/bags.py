"""MIL bags from real tiles: the MNIST-bags protocol (Ilse, Tomczak & Welling, ICML 2018)
on BloodMNIST.

A bag is positive when it holds at least one instance of the task's positive classes.
Ilse et al. draw bag sizes from a Gaussian and instances at random; with BloodMNIST's
class frequencies (7-20%), a random bag of a hundred tiles or more would nearly always
hold a positive, so medsec controls the witness count instead: a negative bag draws
its tiles from the other classes only, a positive bag holds between ``key_min`` and
``key_max`` positive tiles (uniform) at random positions, like a slide with a small
tumour focus among thousands of normal tiles. Bag sizes are uniform in
[``size_min``, ``size_max``] (the issue's 100 to 2,000) and half the bags are positive.

Threat model: not applicable (data).

Example:
    >>> bags = make_bags(np.array([0, 1, 2] * 400), positive=[0], n_bags=4, size_min=100, size_max=200,
    ...                  generator=torch.Generator().manual_seed(0))
    >>> bags.labels.tolist()
    [1, 0, 1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medsec.errors import InputError


@dataclass
class BagSet:
    """Bags as index arrays into an instance pool.

    Attributes:
        indices: one int64 array of pool indices per bag.
        labels: (B,) 0/1 bag labels.
        n_key: (B,) positive instances in each bag.
        positive: the positive classes of the task.
    """

    indices: list[np.ndarray]
    labels: np.ndarray
    n_key: np.ndarray
    positive: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def key_mask(self, b: int, instance_labels: np.ndarray) -> np.ndarray:
        """Boolean mask of the positive (key) instances of bag ``b``."""
        return np.isin(np.asarray(instance_labels)[self.indices[b]], self.positive)


def make_bags(instance_labels: np.ndarray, positive: list[int], n_bags: int, size_min: int = 100,
              size_max: int = 2000, key_min: int = 1, key_max: int = 4, positive_fraction: float = 0.5,
              generator: torch.Generator | None = None) -> BagSet:
    """Bags over a pool whose instance labels are ``instance_labels`` (see module docstring)."""
    y = np.asarray(instance_labels).astype(np.int64).ravel()
    pos_classes = sorted({int(c) for c in positive})
    if not pos_classes:
        raise InputError("a bag task needs at least one positive class")
    pos_pool = np.flatnonzero(np.isin(y, pos_classes))
    neg_pool = np.flatnonzero(~np.isin(y, pos_classes))
    if int(n_bags) < 1:
        raise InputError(f"n_bags must be >= 1, got {n_bags}")
    if not 1 <= int(size_min) <= int(size_max):
        raise InputError(f"bag sizes need 1 <= size_min <= size_max, got {size_min}, {size_max}")
    if not 1 <= int(key_min) <= int(key_max) <= int(size_min):
        raise InputError(f"key instances need 1 <= key_min <= key_max <= size_min, got {key_min}, {key_max}")
    if pos_pool.size < key_max or neg_pool.size < size_max:
        raise InputError(f"the pool has {pos_pool.size} positive and {neg_pool.size} negative instances; "
                         f"bags need >= {key_max} and >= {size_max}")
    if not 0 < float(positive_fraction) < 1:
        raise InputError(f"positive_fraction must lie in (0, 1), got {positive_fraction}")
    g = generator
    n_pos = int(round(n_bags * float(positive_fraction)))
    labels = np.array([1] * n_pos + [0] * (int(n_bags) - n_pos))
    # interleave so that the first bags of a set hold both classes
    order = np.argsort(np.concatenate([np.arange(n_pos) * (n_bags / max(n_pos, 1)),
                                       np.arange(n_bags - n_pos) * (n_bags / max(n_bags - n_pos, 1)) + 0.5]),
                       kind="stable")
    labels = labels[order]
    indices, n_key = [], []
    for lab in labels:
        size = int(torch.randint(int(size_min), int(size_max) + 1, (1,), generator=g))
        k = int(torch.randint(int(key_min), int(key_max) + 1, (1,), generator=g)) if lab else 0
        neg = neg_pool[torch.randperm(neg_pool.size, generator=g)[:size - k].numpy()]
        pos = pos_pool[torch.randperm(pos_pool.size, generator=g)[:k].numpy()]
        bag = np.concatenate([neg, pos])
        bag = bag[torch.randperm(bag.size, generator=g).numpy()]
        indices.append(bag.astype(np.int64))
        n_key.append(k)
    return BagSet(indices, labels.astype(np.int64), np.asarray(n_key, dtype=np.int64), pos_classes)
