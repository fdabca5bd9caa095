"""``medsec demo``: the whole pipeline offline in minutes on built-in data.

With no arguments it generates synthetic H&E-like patches (two nuclear morphologies on
stroma texture), trains a small CNN, evaluates FGSM and PGD at L-inf eps in
{1, 2, 4, 8}/255 and writes results.json and report.html. ``--data bloodmnist`` runs
the same on the real BloodMNIST file from a local folder.
"""

from __future__ import annotations

from typing import Any

from medsec.config.loader import validate_config
from medsec.experiments.evasion.config import EvasionConfig

EPS = ["1/255", "2/255", "4/255", "8/255"]


def demo_config(data: str = "synthetic", data_root: str | None = None, device: str = "cpu") -> EvasionConfig:
    """The demo experiment for ``data`` in {"synthetic", "bloodmnist"}."""
    attacks = [{"name": "fgsm"}, {"name": "pgd", "params": {"steps": 10}}]
    raw: dict[str, Any]
    if data == "synthetic":
        raw = {
            "name": "demo-synthetic-he",
            "data": {"name": "synthetic_he", "params": {"n": 2000, "size": 32}},
            "model": {"name": "small_cnn", "params": {"width": 16}},
            "train": {"epochs": 4, "lr": 0.005, "batch_size": 64},
            "eval": {"sample_limit": 400},
        }
    elif data == "bloodmnist":
        params: dict[str, Any] = {"flag": "bloodmnist"}
        if data_root:
            params["root"] = data_root
        raw = {
            "name": "demo-bloodmnist",
            "data": {"name": "medmnist", "params": params, "val_split": "val"},
            "model": {"name": "small_cnn", "params": {"width": 32}},
            "train": {"epochs": 4, "lr": 0.005, "batch_size": 128},
            "eval": {"sample_limit": 500},
        }
    else:
        from medsec.errors import ConfigError

        raise ConfigError(f"unknown demo data {data!r}; use synthetic or bloodmnist")
    raw.update({"seed": 0, "device": device, "threat": {"norm": "linf", "eps": EPS}, "attacks": attacks})
    cfg: EvasionConfig = validate_config(raw)
    return cfg
