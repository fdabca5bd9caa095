"""Shared fixtures: the real-data root and small models trained once per test run.

Models that effect tests need are trained once and cached under ``.medsec-cache/``
keyed by their training config, so a test run trains each at most once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MEDSEC_PROGRESS", "0")
torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

CACHE = Path(__file__).resolve().parent.parent / ".medsec-cache"

# The BloodMNIST recipe the effect tests use (stated in docs/attacks.md).
BLOOD_RECIPE = {"model": "small_cnn", "width": 32, "epochs": 6, "lr": 0.005, "batch_size": 128, "seed": 0}


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


def _key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


@pytest.fixture(scope="session")
def bloodmnist_test(bloodmnist_root: Path):
    import medsec.data

    return medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(bloodmnist_root))


@pytest.fixture(scope="session")
def bloodmnist_model(bloodmnist_root: Path, bloodmnist_test):
    """A small CNN trained on the BloodMNIST train split by medsec's recipe (cached)."""
    import medsec
    import medsec.data
    from medsec.training import evaluate, train_classifier

    path = CACHE / f"bloodmnist-{_key(BLOOD_RECIPE)}.safetensors"
    if path.is_file():
        return medsec.models.load_checkpoint(path)
    r = BLOOD_RECIPE
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(bloodmnist_root))
    model = medsec.models.create("small_cnn", num_classes=8, width=r["width"], classes=train.classes)
    train_classifier(model, train, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], seed=r["seed"])
    acc = evaluate(model, bloodmnist_test)
    medsec.models.save_checkpoint(model, path, extra={"recipe": r, "test_accuracy": acc})
    return model.eval()
