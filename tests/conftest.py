"""Shared fixtures: the real-data root and small models trained once per test run.

Models that effect tests need are trained once and cached under ``.medsec-cache/``
keyed by their training config, so a test run trains each at most once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MEDSEC_PROGRESS", "0")
torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

CACHE = Path(__file__).resolve().parent.parent / ".medsec-cache"


@pytest.fixture(scope="session")
def data_root() -> Path:
    from medsec.data import data_root as root

    return root()


@pytest.fixture(scope="session")
def bloodmnist_root(data_root: Path) -> Path:
    path = data_root / "bloodmnist"
    if not (path / "bloodmnist.npz").is_file():
        pytest.skip(f"BloodMNIST not found at {path} (set MEDSEC_DATA to the folder holding bloodmnist/)")
    return path


@pytest.fixture(scope="session")
def bloodmnist_test(bloodmnist_root: Path):
    import medsec.data

    return medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(bloodmnist_root))


@pytest.fixture(scope="session")
def bloodmnist_model(bloodmnist_root: Path, bloodmnist_test):
    """A small CNN trained on the BloodMNIST train split by medsec's recipe (cached)."""
    from medsec.training.recipes import bloodmnist_classifier

    return bloodmnist_classifier(bloodmnist_root, CACHE)


@pytest.fixture(scope="session")
def bloodmnist_badnets(bloodmnist_root: Path):
    """(model, PoisonedDataset): a small CNN trained on a BadNets-poisoned BloodMNIST subset (cached)."""
    from medsec.training.recipes import badnets_bloodmnist

    return badnets_bloodmnist(bloodmnist_root, CACHE)


@pytest.fixture(scope="session")
def bloodmnist_clip(bloodmnist_root: Path):
    """(ClipModel, metadata): the small CLIP-style model pretrained on BloodMNIST class captions (cached)."""
    from medsec.training.recipes import bloodmnist_clip as recipe

    return recipe(bloodmnist_root, CACHE)
