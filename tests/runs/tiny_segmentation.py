"""A tiny segmentation run on real Kvasir-SEG images (a 1-epoch U-Net at 32 px, FGSM at two
eps, 2-step PGD and a universal perturbation): four cells in four jobs, for checking that the
executors give the same numbers."""

from __future__ import annotations

import pathlib
from typing import Any


def config(data_root: pathlib.Path) -> dict[str, Any]:
    """The raw config (``medsec.config.validate_config``) over ``data_root/kvasir-seg-256``."""
    return {
        "kind": "segmentation",
        "name": "tiny-segmentation",
        "seed": 0,
        "data": {"name": "kvasir_seg", "params": {"root": str(pathlib.Path(data_root) / "kvasir-seg-256"), "size": 32,
                                                   "limit": 48},
                 "eval_fraction": 0.25},
        "model": {"name": "monai_unet", "params": {"channels": [8, 16], "strides": [2]}},
        "train": {"epochs": 1},
        "threat": {"norm": "linf", "eps": [2 / 255, 8 / 255]},
        "attacks": [
            {"name": "fgsm"},
            {"name": "pgd", "params": {"steps": 2}, "threat": {"eps": [4 / 255]}},
            {"name": "uap_sgd", "params": {"epochs": 1, "batch_size": 8}, "threat": {"eps": [8 / 255]}},
        ],
        "eval": {"sample_limit": 8, "batch_size": 8, "universal_fit_size": 8},
        "segmentation": {"overlays": 2},
    }
