"""The shipped checkpoints and the recipes that made them.

The effect tests load the checkpoints that ship in ``medsec/recipes/checkpoints`` instead of
training their models. These tests keep that honest:

* every shipped file is listed in the manifest with its hash, trained on the data found here
  (same SHA-256), and records its recipe, seed and metrics; every shipped recipe resolves to
  its shipped file without training;
* one test per recipe family retrains the family's smallest model from scratch and checks
  that it reaches the shipped model's metrics within a stated tolerance, so a recipe (or the
  training code under it) cannot rot unseen. The retrains run with one intra-op thread where
  the shipped model was trained with two (``"threads"`` in the recipe): a different float
  reduction order, so the check covers what another machine would train, not only a
  bit-identical replay (which a same-thread retrain on the same CPU is).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsec.recipes import builtin as recipes
from medsec.recipes.shipped import (
    SHIPPED_DIR,
    data_fingerprint,
    file_sha256,
    manifest,
    read_record,
    shipped_disabled,
)

pytestmark = pytest.mark.effect

CACHE = Path(__file__).resolve().parents[2] / ".medsec-cache"
CA_TOL = 0.02  # accuracy, absolute
ASR_TOL = 0.05  # attack success rate, absolute
DICE_TOL = 0.03  # mean Dice, absolute
ZERO_SHOT_TOL = 0.04  # zero-shot accuracy on 156 BUSI test images (one image is 0.0064)


def one_thread(recipe: dict) -> dict:
    """The recipe trained with one intra-op thread (the shipped models used two)."""
    return {**recipe, "threads": 1}


def _shipped_record(path: Path) -> dict:
    assert path.parent == SHIPPED_DIR, f"{path} is not a shipped checkpoint"
    return read_record(path)


@pytest.mark.unit
def test_every_shipped_file_is_listed_hashed_and_recorded(data_root: Path) -> None:
    files = manifest()
    on_disk = sorted(p.name for p in SHIPPED_DIR.glob("*.safetensors"))
    assert on_disk and sorted(files) == on_disk
    total = 0
    for name, entry in files.items():
        path = SHIPPED_DIR / name
        assert file_sha256(path) == entry["sha256"], name
        record = read_record(path)
        assert record["data_sha256"] == entry["data_sha256"] and record["metrics"] == entry["metrics"], name
        assert isinstance(record["recipe"], dict) and record["seed"] == record["recipe"]["seed"], name
        assert record["trained_with"]["torch_threads"] >= 1, name
        total += entry["bytes"]
    assert total < 16e6, f"the shipped checkpoints hold {total / 1e6:.1f} MB; keep them small"


@pytest.mark.unit
def test_every_shipped_recipe_loads_without_training(data_root: Path, tmp_path: Path) -> None:
    """The suite runs with shipped checkpoints required: a recipe that would train raises.
    Every recipe resolves to its shipped file (nothing lands in the empty cache folder)."""
    from medsec.registry import RECIPES

    for name in RECIPES.list():
        RECIPES.get(name)(data_root, tmp_path)
        assert not any(tmp_path.iterdir()), f"recipe {name} wrote {sorted(tmp_path.iterdir())}"


@pytest.mark.unit
def test_a_changed_recipe_or_other_data_is_never_served_a_stale_file(bloodmnist_root: Path, tmp_path: Path) -> None:
    from medsec.errors import DataError
    from medsec.recipes.shipped import locate, shipped

    name = next(n for n in manifest() if n.startswith("bloodmnist-"))
    assert shipped(name, [bloodmnist_root / "bloodmnist.npz"]) == SHIPPED_DIR / name
    changed = {**recipes.BLOODMNIST_RECIPE, "epochs": recipes.BLOODMNIST_RECIPE["epochs"] + 1}
    with pytest.raises(DataError, match="make checkpoints"):  # the suite requires shipped files
        recipes.bloodmnist_classifier(bloodmnist_root, tmp_path, changed)
    other = tmp_path / "bloodmnist.npz"
    other.write_bytes(b"not the data the model was trained on")
    assert shipped(name, [other]) is None
    with shipped_disabled():
        assert locate(name, tmp_path, [bloodmnist_root / "bloodmnist.npz"]) == tmp_path / name


def test_classifier_family_retrains_to_the_shipped_model(bloodmnist_root: Path, tmp_path: Path) -> None:
    """BadNets, the family's smallest recipe (width 16, 4,000 images, 4 epochs) and the one that
    also exercises poisoning: CA within 0.02 and ASR within 0.05 of the shipped model's."""
    (name,) = [n for n in manifest() if n.startswith("badnets-bloodmnist-")]
    want = _shipped_record(SHIPPED_DIR / name)["metrics"]
    with shipped_disabled():
        recipes.badnets_bloodmnist(bloodmnist_root, tmp_path, one_thread(recipes.BADNETS_BLOODMNIST_RECIPE))
    (path,) = tmp_path.glob("badnets-bloodmnist-*.safetensors")
    got = read_record(path)
    assert got["data_sha256"] == data_fingerprint([bloodmnist_root / "bloodmnist.npz"])
    assert abs(got["metrics"]["clean_accuracy"] - want["clean_accuracy"]) <= CA_TOL, (got["metrics"], want)
    assert abs(got["metrics"]["attack_success_rate"] - want["attack_success_rate"]) <= ASR_TOL, (got["metrics"], want)
    print(f"BadNets retrained {got['metrics']} vs shipped {want}")


def test_adversarial_training_retrains_to_the_shipped_model(bloodmnist_root: Path, tmp_path: Path) -> None:
    """PGD-AT, the smallest adversarially trained recipe: test accuracy within 0.02."""
    r = recipes.PGD_AT_BLOODMNIST_RECIPE
    want = _shipped_record(recipes.bloodmnist_checkpoint(bloodmnist_root, CACHE, r))["metrics"]
    with shipped_disabled():
        got = read_record(recipes.bloodmnist_checkpoint(bloodmnist_root, tmp_path, one_thread(r)))["metrics"]
    assert abs(got["test_accuracy"] - want["test_accuracy"]) <= CA_TOL, (got, want)


def test_segmenter_family_retrains_to_the_shipped_model(data_root: Path, tmp_path: Path) -> None:
    """The Kvasir-SEG UNet (trained with one thread, so this retrain is a replay): held-out Dice
    within 0.03 of the shipped model's."""
    root = data_root / "kvasir-seg-256"
    (name,) = [n for n in manifest() if n.startswith("kvasir-unet-")]
    want = _shipped_record(SHIPPED_DIR / name)["metrics"]
    with shipped_disabled():
        recipes.kvasir_unet(root, tmp_path)
    got = read_record(tmp_path / name)["metrics"]
    assert abs(got["test_dice"] - want["test_dice"]) <= DICE_TOL, (got, want)


def test_clip_family_retrains_to_the_shipped_model(data_root: Path, tmp_path: Path) -> None:
    """The medical CLIP (BUSI + Kvasir + BloodMNIST captions, 12 epochs at 64 px), the family's
    cheaper recipe: BUSI zero-shot accuracy within 0.04 of the shipped model's, and the same
    vocabulary rows kept."""
    from medsec.recipes.clip import MEDICAL_CLIP_RECIPE, medical_clip

    (name,) = [n for n in manifest() if n.startswith("medical-clip-")]
    want = _shipped_record(SHIPPED_DIR / name)
    with shipped_disabled():
        _, got = medical_clip(tmp_path, root=data_root, recipe=one_thread(MEDICAL_CLIP_RECIPE))
    assert got["vocabulary_rows"] == want["vocabulary_rows"]
    assert abs(got["zero_shot_accuracy"] - want["zero_shot_accuracy"]) <= ZERO_SHOT_TOL, (got["zero_shot_accuracy"],
                                                                                      want["zero_shot_accuracy"])


def test_medclip_family_retrains_the_backdoored_fine_tune(bloodmnist_root: Path) -> None:
    """BadDist-assisted BadMatch at 1%: the recipe's poisoned fine-tune (3,000 images, 4 epochs),
    the family's smallest training, redone from the shipped pre-trained and BadDist models:
    CA within 0.02 and ASR within 0.05 of the shipped backdoored model's (measured again on
    the recipe's 500 test images, 5 prompts x 3 draws)."""
    from medsec.experiments.badmatch.recipe import (
        badmatch_bloodmnist,
        evaluate_recipe_model,
        poisoned_finetune,
        poisoned_set,
    )

    models = badmatch_bloodmnist(bloodmnist_root, CACHE)
    record = _shipped_record(models["poisoned"])
    cell = record["cell"]
    poisoned, _, _ = poisoned_set(bloodmnist_root, record["data"]["target"], cell["rate"])
    assert poisoned.indices.tolist() == cell["poison_indices"]
    model = poisoned_finetune(bloodmnist_root, models, poisoned, cell["method"], threads=1)
    got = evaluate_recipe_model(bloodmnist_root, model)
    want = record["metrics"]
    assert abs(got["clean_accuracy"] - want["clean_accuracy"]) <= CA_TOL, (got, want)
    assert abs(got["attack_success_rate"] - want["attack_success_rate"]) <= ASR_TOL, (got, want)
    assert isinstance(model, torch.nn.Module)


@pytest.mark.unit
def test_zoo_refuses_an_unknown_recipe_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from medsec.zoo import main

    assert main(["--only", "bloodmnist_cn", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'bloodmnist_cn'" in err and "Did you mean 'bloodmnist_cnn'" in err
    assert len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())
