"""The captioned pretraining data (BUSI captions.csv, Kvasir-SEG polyps, BloodMNIST templates),
the medical CLIP recipe's zero-shot accuracy on the BUSI test split, and the prompt_backdoor
kind on BUSI (config validation)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from medsec.errors import ConfigError, DataError

pytestmark = pytest.mark.unit

CACHE = Path(__file__).resolve().parents[2] / ".medsec-cache"


@pytest.fixture(scope="module")
def busi_dir(data_root: Path) -> Path:
    path = data_root / "busi-256"
    if not (path / "captions.csv").is_file() or not (data_root / "kvasir-seg-256" / "images").is_dir():
        pytest.skip(f"BUSI or Kvasir-SEG not found under {data_root} (set MEDSEC_DATA)")
    return path


@pytest.fixture(scope="module")
def busi16(busi_dir: Path):
    """BUSI's (train, test) split at 16 px."""
    from medsec.data.captioned import busi_split

    return busi_split(busi_dir, size=16)


@pytest.fixture(scope="module")
def medical_clip(busi_dir: Path, data_root: Path):
    """(ClipModel, metadata) of the medical CLIP recipe (cached in .medsec-cache/)."""
    from medsec.recipes.clip import medical_clip as recipe

    return recipe(CACHE, root=data_root)


def test_busi_split_and_captions(busi_dir: Path, busi16) -> None:
    """The split is stratified, disjoint, fixed; each image carries its own captions.csv caption."""
    from medsec.data.captioned import busi_pairs, busi_split, concat, read_busi_captions, template_pairs

    train, test = busi16
    assert len(train) + len(test) == 780 and not set(train.ids) & set(test.ids)
    assert test.class_counts() == {"benign": 87, "malignant": 42, "normal": 27}  # round(0.2 n_c)
    assert busi_split(busi_dir, size=8, test_fraction=0.2, seed=0)[1].ids == test.ids  # fixed: the same test images every time
    with open(busi_dir / "captions.csv", newline="", encoding="utf-8") as f:
        rows = {r["image_path"]: r["text_caption"] for r in csv.DictReader(f)}
    pairs = busi_pairs(train, busi_dir)
    assert len(pairs) == len(train) and pairs.groups == ["busi/benign", "busi/malignant", "busi/normal"]
    for i in (0, 17, len(train) - 1):  # the caption text is the image's own row
        assert pairs.captions[int(pairs.caption_index[i])] == rows[train.ids[i]]
    assert torch.equal(pairs.image_group, train.labels)
    assert all("malignant" in c for c in pairs.captions_of("busi/malignant")) and len(pairs.captions) == 30
    assert pairs.images.dtype == torch.uint8 and pairs.images.shape[1:] == (3, 16, 16)
    # template pairs and concatenation keep captions and groups aligned
    tpl = template_pairs(test, "x", ["benign", "malignant", "normal"], ["a {} scan", "{} tissue"],
                         torch.Generator().manual_seed(0))
    both = concat([pairs, tpl])
    assert len(both.groups) == 6 and len(both.captions) == 36
    j = len(pairs) + 3
    assert both.captions[int(both.caption_index[j])].count(test.classes[int(test.labels[3])]) == 1
    assert int(both.image_group[j]) == 3 + int(test.labels[3])
    with pytest.raises(DataError, match="repeat"):
        concat([pairs, pairs])
    assert len(read_busi_captions(busi_dir)) == 780


def test_busi_captions_refuses_bad_rows(busi_dir: Path, tmp_path: Path) -> None:
    for c in ("benign", "malignant", "normal"):
        (tmp_path / c).mkdir()
    shutil.copy(busi_dir / "benign" / "benign (1).png", tmp_path / "benign" / "benign (1).png")
    from medsec.data.captioned import read_busi_captions

    with pytest.raises(DataError, match="captions.csv"):
        read_busi_captions(tmp_path)
    (tmp_path / "captions.csv").write_text("image_path,text_caption,label\nbenign/benign (1).png,a scan,malignant\n")
    with pytest.raises(DataError, match="label 'malignant' but the image is in benign/"):
        read_busi_captions(tmp_path)
    (tmp_path / "captions.csv").write_text("image_path,caption\nbenign/benign (1).png,a scan\n")
    with pytest.raises(DataError, match="lacks the column"):
        read_busi_captions(tmp_path)


@pytest.mark.effect
def test_medical_clip_zero_shot_on_busi(medical_clip, busi16, data_root: Path) -> None:
    """The recipe's model classifies unseen BUSI test images zero-shot from captions.csv's
    sentences well above the majority rate (0.558) and chance (0.333).

    Measured: zero-shot 0.776 on the 156 test images (confusion [75 8 4], [14 27 1], [6 2 19]);
    an earlier, underfit recipe reached 0.596. Asserted, with margin for a CI retrain:
    >= majority rate + 0.08 (0.638), every class predicted right at least once. The recipe's
    pretraining pairs hold no BUSI test image.
    """
    from medsec.recipes.clip import MEDICAL_CLIP_RECIPE, recipe_data

    clip, meta = medical_clip
    print(json.dumps({k: meta[k] for k in ("zero_shot_accuracy", "zero_shot_confusion", "train_time_s")}))
    assert meta["zero_shot_majority_rate"] == pytest.approx(87 / 156)
    assert meta["zero_shot_accuracy"] >= 87 / 156 + 0.08
    confusion = torch.tensor(meta["zero_shot_confusion"])
    assert int(confusion.sum()) == 156 and bool((confusion.diagonal() > 0).all())  # every class is predicted right
    pairs, repeat, test = recipe_data(MEDICAL_CLIP_RECIPE, data_root)
    assert not {f"busi/{i}" for i in test.ids} & set(pairs.ids)
    assert int(repeat.sum()) == len(pairs) + 4 * 624 and pairs.group_counts()["kvasir/polyp"] == 300
    assert test.ids == busi16[1].ids
    assert any("colon polyp" in c for c in pairs.captions_of("kvasir/polyp"))


def test_prompt_backdoor_busi_config() -> None:
    from medsec.config.loader import validate_config

    cfg = validate_config({"kind": "prompt_backdoor", "data": {"name": "busi"}})
    assert cfg.model.recipe == "medical_clip"
    assert validate_config({"kind": "prompt_backdoor"}).model.recipe == "bloodmnist_clip"
    with pytest.raises(ConfigError, match="never seen busi"):
        validate_config({"kind": "prompt_backdoor", "model": {"recipe": "bloodmnist_clip"}, "data": {"name": "busi"}})
    with pytest.raises(ConfigError, match="not both"):
        validate_config({"kind": "prompt_backdoor", "model": {"recipe": "medical_clip", "name": "open_clip:ViT-B-32"}})
    with pytest.raises(ConfigError, match="kvasir|busi"):
        validate_config({"kind": "prompt_backdoor", "data": {"name": "kvasir"}})
    with pytest.raises(ConfigError, match="image_size"):
        validate_config({"kind": "prompt_backdoor", "data": {"name": "busi", "image_size": 4}})


@pytest.mark.effect
def test_prompt_backdoor_kind_runs_on_busi(medical_clip, busi_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A tiny BUSI run end to end: the medical CLIP, BUSI's classes and test split, the patch at 64 px."""
    from medsec.config.loader import validate_config
    from medsec.runs import run as run_experiment

    monkeypatch.setenv("MEDSEC_DATA", str(busi_dir.parent))
    cfg = validate_config({"kind": "prompt_backdoor", "name": "tiny_busi", "methods": ["baple"], "targets": [2],
                           "data": {"name": "busi", "test_size": 24}, "baple": {"shots": 4, "epochs": 2, "rate": 0.2}})
    res = run_experiment(cfg, tmp_path)
    assert res["status"] == "complete" and list(res["cells"]) == ["clean_pl", "baple-t2"]
    assert res["data"]["classes"] == ["benign", "malignant", "normal"] and res["data"]["image_shape"] == [3, 64, 64]
    assert res["data"]["n_test"] == 24 and res["data"]["n_fewshot"] == 12
    assert res["model"]["recipe"] == "medical_clip" and res["model"]["zero_shot_accuracy"] == medical_clip[1][
        "zero_shot_accuracy"]
    assert res["settings"]["patch_size_224"] == 24
    assert "BUSI test split" in (tmp_path / "report.html").read_text()


@pytest.mark.effect
def test_baple_backdoors_busi(medical_clip, busi_dir: Path) -> None:
    """BAPLe on BUSI with the medical CLIP (paper settings: 32 shots, 5% poison, eps 8/255,
    50 epochs), target 2 (normal), against BadNets-PL at the same rate.

    Measured in configs/busi_baple.yaml (the same cells; a harness cell does not depend on the
    cells run before it): Clean PL CA 0.769; BAPLe CA 0.750, BA 0.769; BadNets-PL BA 0.256.
    (Targets 1 and 2 together, measured in this test: BAPLe BA 0.718 against 0.292.) Target 0
    (benign, 56% of the test images) is not used: BA counts target-class images, so it starts
    near 0.56 for every method. Asserted, with margin: BA >= 0.60, at least 0.30 above
    BadNets-PL, and BAPLe's CA within 5 points of Clean PL (one test image = 0.64 points).
    """
    from medsec.backdoors.baple import BapleSettings
    from medsec.backdoors.prompt_harness import Harness, few_shot
    from medsec.data.captioned import busi_split

    clip, _ = medical_clip
    train, test = busi_split(busi_dir, size=64)
    fewshot = few_shot(train, 32, torch.Generator().manual_seed(0))
    h = Harness(clip, fewshot, test, list(train.classes), BapleSettings.paper(), seed=0)
    clean = h.run("clean_pl")
    bapl, badnets = h.run("baple", 2), h.run("badnets_pl", 2)
    print(json.dumps({"clean_pl": clean["clean_accuracy"], "baple": [bapl["clean_accuracy"], bapl["backdoor_accuracy"]],
                      "badnets_pl": badnets["backdoor_accuracy"]}))
    assert bapl["backdoor_accuracy"] >= 0.60
    assert bapl["backdoor_accuracy"] >= badnets["backdoor_accuracy"] + 0.30
    assert bapl["clean_accuracy"] >= clean["clean_accuracy"] - 0.05
