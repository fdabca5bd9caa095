"""A tiny ``kind: badmatch`` config on real BloodMNIST: one tiny-resnet tower pre-trained on
96 images, BadDist on 32 shadow images, 2 poison rates x 2 methods = 4 cells (4 jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def config(data_root: Path) -> dict[str, Any]:
    return {"kind": "badmatch", "name": "tiny-badmatch", "seed": 0, "device": "cpu",
            "data": {"dataset": "bloodmnist", "root": str(Path(data_root) / "bloodmnist"), "train_limit": 96,
                     "test_limit": 48, "shadow_limit": 32, "sentence_pairs": 8},
            "backbones": [{"label": "resnet", "vision": "tiny-resnet"}],
            "pretrain": {"epochs": 1, "lr": 2e-3, "batch_size": 32},
            "finetune": {"epochs": 1, "lr": 5e-4, "batch_size": 32},
            "baddist": {"epochs": 1, "batch_size": 32},
            "triggers": [{"label": "square", "name": "badnets", "params": {"size_fraction": 0.15}}],
            "poison": {"rates": [0.1, 0.05]}, "eval": {"n_prompts": 2, "n_samplings": 2, "save_models": True}}
