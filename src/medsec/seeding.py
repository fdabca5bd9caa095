"""The one place medsec seeds the global random number generators.

Runs (:mod:`medsec.runs.context`: once per run, once per cell) and recipes
(:func:`medsec.recipes.builtin.seeded_init`: a model's initial weights) seed through
:func:`seeded`, which seeds torch (CPU and CUDA), numpy and ``random`` from one integer and
restores the caller's states on exit, so what ran before never leaks into the numbers and
the numbers never leak out. Everything else draws from explicit ``torch.Generator`` objects.

Example:
    >>> import torch
    >>> with seeded(3):
    ...     a = torch.rand(2)
    >>> with seeded(3):
    ...     b = torch.rand(2)
    >>> bool(torch.equal(a, b))
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and ``random`` with ``seed``."""
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % (2**32))
    random.seed(int(seed))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with every global RNG seeded from ``seed``; the caller's RNG states (torch
    CPU and CUDA, numpy, ``random``) are restored on exit."""
    states = (np.random.get_state(), random.getstate())
    with torch.random.fork_rng():
        try:
            seed_everything(seed)
            yield
        finally:
            np.random.set_state(states[0])
            random.setstate(states[1])


__all__ = ["seed_everything", "seeded"]
