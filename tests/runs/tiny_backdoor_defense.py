"""A tiny ``kind: backdoor_defense`` config on real BloodMNIST: two backdoors (BadNets and
Blended) on small CNNs trained on 600 images, x STRIP, Spectral Signatures and Fine-Pruning:
6 cells (6 jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def config(data_root: Path) -> dict[str, Any]:
    return {
        "kind": "backdoor_defense", "name": "tiny-backdoor-defense", "seed": 0, "device": "cpu",
        "data": {"name": "medmnist", "params": {"flag": "bloodmnist", "root": str(Path(data_root) / "bloodmnist")},
                 "val_split": "val"},
        "model": {"name": "small_cnn", "params": {"width": 8}},
        "train": {"epochs": 2, "limit": 600},
        "backdoors": [{"name": "badnets", "params": {"size": 3, "position": "bottom-right"}, "target": 0, "rate": 0.1},
                      {"name": "blended", "target": 1, "rate": 0.1}],
        "detectors": [{"name": "strip", "params": {"n_overlays": 4}}, {"name": "spectral"}],
        "repairs": [{"name": "fine_pruning", "params": {"epochs": 1}}],
        "eval": {"test_limit": 100, "clean_size": 64, "detector_queries": 32},
    }
