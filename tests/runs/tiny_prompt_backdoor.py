"""A tiny prompt_backdoor run on real BloodMNIST images with the shipped BloodMNIST CLIP:
Clean PL (prepared by the driver), BadNets-PL and BAPLe for two targets, 4 shots, 2 epochs,
64 test images: five cells in five jobs, for checking that the executors give the same
numbers."""

from __future__ import annotations

import pathlib
from typing import Any


def config(data_root: pathlib.Path) -> dict[str, Any]:
    """The raw config (``medsec.config.validate_config``) over ``data_root/bloodmnist``."""
    return {
        "kind": "prompt_backdoor",
        "name": "tiny-prompt-backdoor",
        "seed": 0,
        "model": {"recipe": "bloodmnist_clip"},
        "data": {"name": "bloodmnist", "root": str(pathlib.Path(data_root) / "bloodmnist"), "test_size": 64},
        "methods": ["badnets_pl", "baple"],
        "targets": [0, 1],
        "baple": {"shots": 4, "epochs": 2, "rate": 0.1},
    }
