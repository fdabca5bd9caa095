"""A tiny ``kind: wsi`` config on real data (BloodMNIST bags, the shipped BloodMNIST CNN as the
frozen encoder) for the executor checks: content, clean, two attack jobs and the outlier
defence, in five jobs."""

from __future__ import annotations

import pathlib

CACHE = pathlib.Path(__file__).resolve().parents[2] / ".medsec-cache"


def config(data_root: pathlib.Path) -> dict:
    return {
        "kind": "wsi", "name": "tiny-wsi", "seed": 0, "cache_dir": str(CACHE),
        "encoder": {"name": "medsec_bloodmnist"},
        "bags": {"root": str(data_root / "bloodmnist"), "tasks": [{"name": "platelet", "positive": [7]}],
                 "n_train": 6, "n_test": 4, "size_min": 100, "size_max": 120, "key_min": 1, "key_max": 1},
        "heads": [{"name": "abmil"}],
        "train": {"epochs": 1},
        "attack": {"names": ["pgd"], "rhos": [0.01], "strategies": ["random", "attention"],
                   "params": {"pgd": {"steps": 1}}},
        "defenses": {"enabled": True, "rho": 0.01, "outlier_k": 5, "jpeg_quality": None, "blur_sigma": None,
                     "finetune_epochs": None},
    }
