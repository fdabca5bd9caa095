"""``medsec run`` on a segmentation config: results.json, report.html with curves and
overlays, resumption, and one clear error for bad configs and data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import medsec
from medsec.config.loader import load_config
from medsec.errors import ConfigError, DataError, MedsecError

pytestmark = pytest.mark.unit

CONFIG = """
kind: segmentation
name: seg-smoke
seed: 0
data: {name: kvasir_seg, params: {size: 32, limit: 60}, eval_fraction: 0.2}
model: {name: monai_unet, params: {channels: [8, 16, 32], strides: [2, 2]}}
train: {epochs: 1}
threat: {norm: linf, eps: [2/255, 8/255]}
attacks:
  - {name: pgd, params: {steps: 3}}
  - {name: fgsm, label: fgsm_paper, mode: paper, threat: {eps: [0.01, 0.5]}}
  - {name: pgd, label: vanish, params: {steps: 3}, threat: {eps: [8/255], targeted: true, target: 0}}
  - {name: uap_sgd, params: {epochs: 1, batch_size: 16}, threat: {eps: [8/255]}}
  - {name: uap_seg, params: {max_epochs: 1, deepfool_steps: 2}, threat: {eps: [8/255]}}
eval: {sample_limit: 8, batch_size: 8, universal_fit_size: 16}
segmentation: {drop: 0.5, overlays: 2}
"""


@pytest.fixture(scope="module")
def kvasir_root() -> Path:
    from medsec.data import data_root

    root = data_root() / "kvasir-seg-256"
    if not (root / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found at {root}")
    return root


def _cfg(tmp_path: Path, text: str = CONFIG, sets: list[str] | None = None):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return load_config(path, sets or [])


@pytest.fixture(scope="module")
def run(kvasir_root, tmp_path_factory):
    from medsec.runs import run as run_experiment

    tmp = tmp_path_factory.mktemp("segrun")
    out = tmp / "run"
    torch.set_num_threads(1)
    return run_experiment(_cfg(tmp), out), out


@pytest.mark.effect
def test_results_json_and_report(run) -> None:
    results, out = run
    assert results["kind"] == "segmentation" and results["status"] == "complete"
    on_disk = json.loads((out / "results.json").read_text())
    ids = [ev["id"] for ev in list(on_disk["cells"].values())]
    assert len(ids) == 2 + 2 + 1 + 1 + 1
    for key in ("dice", "iou", "hd95", "lesion_miss_rate", "clean_dice", "dice_drop", "attack_success_rate",
                "drop_success_rate", "linf"):
        assert all(key in ev["metrics"] for ev in list(on_disk["cells"].values())), key
    paper = [ev for ev in list(on_disk["cells"].values()) if ev["mode"] == "paper"]
    assert paper and all(ev["metrics"]["quantized"] for ev in paper)
    big = max(paper, key=lambda e: e["threat"]["eps"])
    assert big["metrics"]["linf"] > 0.1  # eps 0.5 std units ~ 0.11 pixels
    uni = [ev for ev in list(on_disk["cells"].values()) if ev["universal"]]
    assert {ev["attack"] for ev in uni} == {"uap_sgd", "uap_seg"}
    assert all("fit_fooling_rate" in ev["metrics"] and "test_fooling_rate" in ev["metrics"] for ev in uni)
    vanish = next(ev for ev in list(on_disk["cells"].values()) if ev["label"] == "vanish")
    assert "target_dice" in vanish["metrics"]
    html = (out / "report.html").read_text()
    assert "Dice and IoU vs eps" in html and "Overlays" in html and html.count("data:image/png;base64") >= 4
    assert "<script" not in html
    assert (out / "report.md").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.effect
def test_resume_does_not_recompute(run, tmp_path) -> None:
    from medsec.runs import run as run_experiment

    results, out = run
    again = run_experiment(load_config(out / "config.resolved.yaml", []), out, report=False)
    assert [ev["runtime_s"] for ev in list(again["cells"].values())] == [ev["runtime_s"] for ev in list(results["cells"].values())]


@pytest.mark.parametrize(
    "sets,error,match",
    [
        (["segmentation.dorp=0.5"], ConfigError, "dorp"),
        (["attacks=[{name: pgd, threat: {eps: [0.1], targeted: true, target: next}}]"], ConfigError, "class index"),
        (["attacks=[{name: deepfool}]"], MedsecError, "no segmentation variant"),
        (["data.params.root=/nonexistent/kvasir"], DataError, "not found"),
        (["model={name: small_cnn}"], ConfigError, "not a segmenter"),
    ],
    ids=["unknown-key", "target-next", "deepfool", "missing-folder", "classifier"],
)
def test_bad_configs_one_clear_error(kvasir_root, tmp_path, sets, error, match) -> None:
    from medsec.runs import run as run_experiment

    with pytest.raises(error, match=match):
        run_experiment(_cfg(tmp_path, sets=sets), tmp_path / "out", report=False)


def test_paper_mode_refused_for_classification(tmp_path) -> None:
    from medsec.runs import run as run_experiment

    text = """
name: c
data: {name: synthetic_he, params: {n: 16, size: 16}}
attacks: [{name: fgsm, mode: paper}]
"""
    with pytest.raises(ConfigError, match="segmentation experiments only"):
        run_experiment(_cfg(tmp_path, text), tmp_path / "out", report=False)


def test_segmentation_folder_errors(tmp_path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="masks folder not found"):
        medsec.data.create("segmentation_folder", root=str(tmp_path))
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "b.png")
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DataError, match="without a mask"):
        medsec.data.create("segmentation_folder", root=str(tmp_path))
    Image.new("L", (8, 8), color=255).save(tmp_path / "masks" / "b.png")
    ds = medsec.data.create("segmentation_folder", root=str(tmp_path), size=8)
    assert ds.labels.tolist()[1][0][0] == 1 and ds.labels[0].sum() == 0 and ds.task == "segmentation"
    with pytest.raises(DataError, match="classes"):
        medsec.data.create("segmentation_folder", root=str(tmp_path), threshold=None)
