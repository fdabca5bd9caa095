"""SNAP through the runner and the report (synthetic H&E data), the PCam/HCD loader on
tiny files generated here, and the shipped SNAP configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import medsec.data
from medsec.config import load_config, validate_config
from medsec.errors import ConfigError, DataError
from medsec.runs import run as run_experiment

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]

RAW = {
    "name": "snap-tiny",
    "seed": 0,
    "data": {"name": "synthetic_he", "params": {"n": 160, "size": 32}},
    "model": {"name": "small_cnn", "params": {"width": 8}},
    "train": {"epochs": 1, "lr": 0.01, "batch_size": 32},
    "threat": {"norm": "patch", "eps": [0.05], "targeted": True, "target": 0},
    "attacks": [
        {"name": "snap", "params": {"steps": 5}},
        {"name": "snap", "label": "snap-unconstrained", "params": {"steps": 5, "colour": "none"}},
        {"name": "adversarial_patch", "params": {"steps": 5}},
        {"name": "snap_universal", "params": {"epochs": 1, "batch_size": 16}},
    ],
    "eval": {"sample_limit": 16, "examples": 2, "universal_fit_size": 32, "model_checks": False},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("snap-run")
        return out, run_experiment(validate_config(RAW), out)
    finally:
        torch.set_num_threads(before)


def test_results_hold_naturalness_metrics(finished) -> None:
    out, res = finished
    saved = json.loads((out / "results.json").read_text())
    assert [ev["label"] for ev in list(saved["cells"].values())] == ["snap", "snap-unconstrained", "adversarial_patch",
                                                            "snap_universal"]
    for ev in list(saved["cells"].values()):
        m = ev["metrics"]
        assert ev["threat"]["norm"] == "patch" and ev["threat"]["targeted"]
        assert 0 < m["coverage"] <= 0.05 and m["coverage_max"] <= 0.05
        for key in ("colour_w1_lab", "colour_w1_od", "delta_e_lab", "ssim", "psnr", "blobs_mean",
                    "attack_success_rate"):
            assert isinstance(m[key], float), key
        hist = m["patch_area_histogram"]
        assert len(hist["counts"]) == len(hist["edges"]) and sum(hist["counts"]) > 0
    universal = list(saved["cells"].values())[3]
    assert universal["universal"] and universal["metrics"]["fit_size"] == 32
    assert list(saved["cells"].values())[2]["metrics"]["blobs_mean"] == 1.0  # one square
    assert list(saved["cells"].values())[0]["metrics"]["blobs_mean"] > 1.0  # sporadic blobs


def test_report_shows_patch_figures(finished) -> None:
    out, _ = finished
    html = (out / "report.html").read_text()
    assert "Patch naturalness" in html and "Patch-area histogram" in html
    assert "mask outlined" in html
    assert html.count("data:image/png;base64") >= 6


def test_patch_eps_over_one_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="pixel fraction"):
        validate_config({**RAW, "threat": {"norm": "patch", "eps": [1.5]}})
    with pytest.raises(ConfigError, match="Did you mean 'ellipses'"):  # at validation or run
        bad = validate_config({**RAW, "attacks": [{"name": "snap", "params": {"mask": "elipses"}}]})
        run_experiment(bad, tmp_path / "bad", report=False)
    assert not (tmp_path / "bad" / "results.json").exists(), "a refused config leaves no results"


@pytest.mark.parametrize("name", ["bloodmnist_snap.yaml", "snap_pcam_paper.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    from medsec.experiments.evasion.run import plan_cells

    cfg = load_config(ROOT / "configs" / name)
    cells = plan_cells(cfg)
    assert all(c.threat.norm == "patch" for c in cells)
    if name == "snap_pcam_paper.yaml":
        assert cfg.model.name == "torchvision" and cfg.model.params["arch"] == "resnet50"
        assert cfg.data.params["size"] == 224
        assert all(c.threat.targeted and c.target == 0 for c in cells)


# ----------------------------------------------------------------------------- PCam / HCD loader
def _h5(folder: Path, split: str, n: int) -> None:
    import h5py

    g = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
        f["x"] = g.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
        f["y"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)


def test_pcam_h5_layout(tmp_path: Path) -> None:
    _h5(tmp_path / "pcam", "valid", 6)
    ds = medsec.data.create("pcam", root=str(tmp_path), split="val")
    assert len(ds) == 6 and ds.image_shape == (3, 96, 96) and ds.classes == ["no metastasis", "metastasis"]
    assert ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    small = medsec.data.create("pcam", root=str(tmp_path / "pcam"), split="val", size=32, limit=4, layout="h5")
    assert len(small) == 4 and small.image_shape == (3, 32, 32)
    with pytest.raises(DataError, match="camelyonpatch_level_2_split_train_x.h5"):
        medsec.data.create("pcam", root=str(tmp_path), split="train")


def test_pcam_kaggle_layout(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "train").mkdir()
    g = np.random.default_rng(1)
    rows = []
    for i in range(10):
        tid = f"{i:04x}abcd"
        Image.fromarray(g.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "train" / f"{tid}.tif")
        rows.append({"id": tid, "label": i % 2})
    with (tmp_path / "train_labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "label"])
        w.writeheader()
        w.writerows(rows)
    train = medsec.data.create("pcam", root=str(tmp_path), split="train", holdout=0.3)
    test = medsec.data.create("pcam", root=str(tmp_path), split="test", holdout=0.3)
    assert len(train) == 7 and len(test) == 3
    assert not set(train.ids) & set(test.ids)
    assert train.image_shape == (3, 96, 96)
    (tmp_path / "train" / f"{rows[0]['id']}.tif").unlink()
    with pytest.raises(DataError, match="missing"):
        medsec.data.create("pcam", root=str(tmp_path), split="train", holdout=0.01)


def test_pcam_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        medsec.data.create("pcam", root=str(tmp_path / "absent"))
    with pytest.raises(DataError, match="expected camelyonpatch"):
        medsec.data.create("pcam", root=str(tmp_path))
    with pytest.raises(DataError, match="split"):
        medsec.data.create("pcam", root=str(tmp_path), split="validation")
    with pytest.raises(DataError, match="layout"):
        medsec.data.create("pcam", root=str(tmp_path), layout="zip")
    (tmp_path / "camelyonpatch_level_2_split_test_x.h5").write_bytes(b"not an h5 file")
    (tmp_path / "camelyonpatch_level_2_split_test_y.h5").write_bytes(b"not an h5 file")
    with pytest.raises(DataError, match="could not read"):
        medsec.data.create("pcam", root=str(tmp_path), split="test")
