"""Cells: the unit of work of every experiment kind, with stable ids and their own seeds.

A kind plans its grid as a list of cell ids (``pgd-linf-8-untargeted``,
``resnet-square-0.01-badmatch``, ``attack/lymphocyte/abmil/pgd/random/0.001`` ...). Each cell
gets a seed derived from the run's global seed and its id alone, so a cell's numbers do not
depend on which cells ran before it, in which order, or on which worker.

Example:
    >>> cell_seed(0, "pgd-linf-8-untargeted") == cell_seed(0, "pgd-linf-8-untargeted")
    True
    >>> safe_id("pgd (adaptive)/8")
    'pgd__adaptive__8'
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import torch

from medsec.errors import ConfigError


def cell_seed(global_seed: int, cell_id: str) -> int:
    """The seed of cell ``cell_id``: CRC32 of ``"<global seed>:<id>"`` (31 bits)."""
    return zlib.crc32(f"{int(global_seed)}:{cell_id}".encode()) & 0x7FFFFFFF


def cell_generator(global_seed: int, cell_id: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`cell_seed`."""
    return torch.Generator(device=device).manual_seed(cell_seed(global_seed, cell_id))


def safe_id(text: str) -> str:
    """``text`` with every character but letters, digits, ``_`` and ``.`` replaced by ``_``
    (cell ids are also file names of per-cell artefacts)."""
    return "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in str(text))


def unique_labels(labels: list[str]) -> list[str]:
    """Labels made unique by appending the position to the repeated ones (``pgd``, ``pgd1``)."""
    return [n if labels.count(n) == 1 else f"{n}{i}" for i, n in enumerate(labels)]


def check_unique(ids: Iterable[str], what: str = "cell") -> list[str]:
    """``ids`` as a list; a :class:`ConfigError` naming the repeats when an id appears twice."""
    out = list(ids)
    seen: set[str] = set()
    dup = sorted({i for i in out if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if dup:
        raise ConfigError(f"the config gives the same {what} twice: {dup}; remove the repeat or give it a label")
    return out


__all__ = ["cell_generator", "cell_seed", "check_unique", "safe_id", "unique_labels"]
