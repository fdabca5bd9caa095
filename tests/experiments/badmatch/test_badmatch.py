"""BadMatch poisoning, BadDist fine-tuning, the badmatch experiment kind, and the BloodMNIST effect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsec.backdoors.baddist import baddist, baddist_loss, embedding_shift
from medsec.backdoors.badmatch import BadMatch, make_trigger
from medsec.data import ImageDataset
from medsec.errors import ConfigError, InputError

pytestmark = pytest.mark.unit

CACHE = Path(__file__).resolve().parents[3] / ".medsec-cache"
# Measured on the recipe's setting (docs/badmatch.md, "Measured numbers"); asserted with margin
# (CPU training is not bit-reproducible).
BADDIST_CLEAN_COS = 0.9  # cos(BadDist, clean encoder) on clean images: 0.946, 0.961, 0.965
BADDIST_SEPARATION = 0.5  # clean-vs-triggered cosine drop: 0.988 -> -0.06, 0.958 -> -0.195, 0.978 -> -0.126
PRETRAIN_CA_MIN = 0.8  # zero-shot CA of the pre-trained model: 0.875, 0.880, 0.883, 0.845
RATE = 0.01  # 30 of the 3,000 fine-tune images (each seen 4 times)
ASR_MIN = 0.9  # BadDist + BadMatch at 1%: 0.984, 1.00, 0.991 (BadMatch alone: 0.31, 0.94)
CA_MARGIN = 0.05  # CA minus the clean fine-tune's: +0.020, -0.013, 0.000


def _ds(n: int = 400, k: int = 4) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.rand(n, 3, 28, 28, generator=g) * 0.8 + 0.1, torch.arange(n) % k, list("abcd")[:k])


def test_trigger_size_is_relative_to_model_input() -> None:
    for size, px in ((28, 4), (64, 9), (224, 32)):
        t = make_trigger({"name": "badnets"}, size)
        assert t.size == px
        p = t.sample_params((3, size, size))
        x = torch.full((1, 3, size, size), 0.5)
        m = t.mask((3, size, size), p)
        xt = t.apply(x, p)
        assert int(m.sum()) == px * px and bool((xt[0][:, m] == 0).all()) and bool((xt[0][:, ~m] == 0.5).all())
        assert bool(m[size - 1 - px : size - 1, size - 1 - px : size - 1].all())  # bottom-right, 1 px margin
    f = make_trigger({"name": "fiba"}, 28)
    assert (f.beta, f.alpha) == (0.2, 0.1)
    with pytest.raises(InputError, match="size_fraction"):
        make_trigger({"name": "badnets", "size": 4}, 28)
    with pytest.raises(InputError, match="size_fraction"):
        make_trigger({"name": "badnets", "size_fraction": 0.9}, 28)
    with pytest.raises(InputError, match="color"):
        make_trigger({"name": "badnets", "color": 2}, 28)
    with pytest.raises(InputError, match="name"):
        make_trigger({}, 28)


def test_trigger_image_file(tmp_path: Path) -> None:
    from PIL import Image

    from medsec.backdoors.badmatch import load_trigger_image
    from medsec.errors import DataError

    arr = torch.zeros(40, 60, 3, dtype=torch.uint8)
    arr[:, 10:50, 0] = 255  # red square in the centre crop, the rest black
    Image.fromarray(arr.numpy()).save(tmp_path / "t.png")
    img = load_trigger_image(tmp_path / "t.png", 28)
    assert img.shape == (3, 28, 28) and float(img[0].mean()) > 0.95 and float(img[1:].abs().max()) < 0.05
    t = make_trigger({"name": "fiba", "image": str(tmp_path / "t.png")}, 28)
    noise = make_trigger({"name": "fiba"}, 28)
    p, q = t.sample_params((3, 28, 28)), noise.sample_params((3, 28, 28), torch.Generator().manual_seed(0))
    assert not torch.allclose(p["trigger_amplitude"], q["trigger_amplitude"])
    x = torch.rand(2, 3, 28, 28) * 0.5 + 0.25
    assert float((t.apply(x, p) - x).abs().mean()) > 1e-3
    with pytest.raises(DataError, match="trigger image not found"):
        make_trigger({"name": "fiba", "image": str(tmp_path / "missing.png")}, 28)
    with pytest.raises(InputError, match="not both"):
        make_trigger({"name": "fiba", "image": str(tmp_path / "t.png"), "pattern": img}, 28)


def test_sentence_bank_synonyms() -> None:
    from medsec.data.medclip_text import CLASS_PHRASES, PROMPT_PHRASES, sentence_bank

    base, syn = sentence_bank("bloodmnist"), sentence_bank("bloodmnist", synonyms=True)
    assert syn.sentences[: len(base.sentences)] == base.sentences and torch.equal(syn.labels[: len(base.labels)], base.labels)
    extra = list(zip(syn.sentences[len(base.sentences) :], syn.labels[len(base.labels) :]))
    assert extra and all(float(lab.sum()) == 1.0 for _, lab in extra)
    for sent, lab in extra:  # every added sentence names its own class by a synonym
        c = int(lab.argmax())
        assert any(s in sent for s in PROMPT_PHRASES["bloodmnist"][c] if s != CLASS_PHRASES["bloodmnist"][c])


def test_poisoned_subset_reproducible_and_recorded() -> None:
    ds = _ds()
    t = make_trigger({"name": "badnets"}, 28)
    a = BadMatch(t, target=0, rate=0.05, seed=3).poison(ds)
    b = BadMatch(t, target=0, rate=0.05, seed=3).poison(ds)
    c = BadMatch(t, target=0, rate=0.05, seed=4).poison(ds)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images) and not torch.equal(a.indices, c.indices)
    assert len(a.indices) == 20 and a.record["indices"] == a.indices.tolist() and a.record["count"] == 20
    assert len(BadMatch(t, target=0, rate=0.0005, seed=0).poison(ds).indices) == 1  # at least one image
    assert len(BadMatch(t, target=0, count=7, seed=0).poison(ds).indices) == 7


@pytest.mark.parametrize("trigger", ["badnets", "fiba"])
def test_exactly_the_poisoned_samples_change(trigger: str) -> None:
    ds = _ds()
    clean_lab = torch.nn.functional.one_hot(ds.labels, 4).float()
    p = BadMatch(make_trigger({"name": trigger}, 28), target=2, rate=0.05, seed=0).poison(ds)
    changed_lab = (p.image_labels != clean_lab).any(1).nonzero().flatten()
    changed_img = (p.images != ds.images).flatten(1).any(1).nonzero().flatten()
    assert torch.equal(changed_lab, p.indices) and torch.equal(changed_img, p.indices)
    assert bool((p.image_labels[p.indices].argmax(1) == 2).all()) and bool((ds.labels[p.indices] != 2).all())
    assert not p.text_flip.any()
    txt = BadMatch(make_trigger({"name": trigger}, 28), target=2, rate=0.05, seed=0, mode="text").poison(ds)
    assert torch.equal(txt.image_labels, clean_lab) and torch.equal(txt.text_flip.nonzero().flatten(), p.indices)
    assert torch.equal(txt.images, p.images) and torch.equal(txt.target_vector, torch.tensor([0.0, 0, 1, 0]))


def test_badmatch_bad_input() -> None:
    ds = _ds()
    t = make_trigger({"name": "badnets"}, 28)
    with pytest.raises(InputError, match="mode"):
        BadMatch(t, target=0, rate=0.1, mode="both")
    with pytest.raises(InputError, match="rate"):
        BadMatch(t, target=0, rate=0.0).poison(ds)
    with pytest.raises(InputError, match="exactly one"):
        BadMatch(t, target=0, rate=0.1, count=3).poison(ds)
    with pytest.raises(InputError, match="target"):
        BadMatch(t, target=9, rate=0.1).poison(ds)
    with pytest.raises(InputError, match="cannot poison"):
        BadMatch(t, target=0, count=350).poison(ds)


def test_baddist_loss_form() -> None:
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    want = -5 * (a * b).sum(1).mean() + 1 * (b * a).sum(1).mean()
    assert float(baddist_loss(a, b, b, a)) == pytest.approx(float(want), abs=1e-6)
    assert float(baddist_loss(a, a, a, a)) == pytest.approx(-4.0, abs=1e-6)


def test_baddist_bad_input() -> None:
    from medsec.models.medclip import medclip

    m = medclip(vision="tiny-resnet", text="tiny-bert", sentences=["a b"], image_size=28)
    t = make_trigger({"name": "badnets"}, 28)
    x = torch.rand(4, 3, 28, 28)
    p = t.sample_params(x.shape)
    with pytest.raises(InputError, match="lambda"):
        baddist(m.vision, x, t, p, lambda1=0, lambda2=0)
    with pytest.raises(InputError, match="optimizer"):
        baddist(m.vision, x, t, p, optimizer="lbfgs")
    with pytest.raises(InputError, match="epochs"):
        baddist(m.vision, x, t, p, epochs=0)
    with pytest.raises(InputError):
        baddist(m.vision, x * 3, t, p)


# ----------------------------------------------------------------------------- experiment kind
def _tiny_cfg(root: Path) -> dict:
    return {"kind": "badmatch", "name": "tiny", "seed": 0,
            "data": {"dataset": "bloodmnist", "root": str(root), "train_limit": 96, "test_limit": 48,
                     "shadow_limit": 32, "sentence_pairs": 8},
            "backbones": [{"label": "resnet", "vision": "tiny-resnet"}],
            "pretrain": {"epochs": 1, "lr": 2e-3, "batch_size": 32},
            "finetune": {"epochs": 1, "lr": 5e-4, "batch_size": 32},
            "baddist": {"epochs": 1, "batch_size": 32},
            "triggers": [{"label": "square", "name": "badnets", "params": {"size_fraction": 0.15}}],
            "poison": {"rates": [0.05]}, "eval": {"n_prompts": 2, "n_samplings": 2}}


def test_config_validation() -> None:
    from medsec.config.loader import validate_config

    cfg = validate_config({"kind": "badmatch"})
    assert cfg.baddist.lambda1 == 5.0 and cfg.baddist.lambda2 == 1.0 and cfg.poison.rates == [0.05, 0.01, 0.001, 0.0005]
    with pytest.raises(ConfigError, match="unknown key 'raets'"):
        validate_config({"kind": "badmatch", "poison": {"raets": [0.1]}})
    with pytest.raises(ConfigError, match="rates"):
        validate_config({"kind": "badmatch", "poison": {"rates": [0.0]}})
    with pytest.raises(ConfigError):
        validate_config({"kind": "badmatch", "methods": ["badnets"]})
    with pytest.raises(ConfigError, match="repeat"):
        validate_config({"kind": "badmatch", "backbones": [{"label": "a", "vision": "tiny-vit"}] * 2})


@pytest.mark.effect
def test_run_writes_results_report_and_resumes(tmp_path: Path, bloodmnist_root: Path) -> None:
    from medsec.config.loader import validate_config
    from medsec.runs import run as run_experiment

    cfg = validate_config(_tiny_cfg(bloodmnist_root))
    res = run_experiment(cfg, tmp_path)
    assert res["status"] == "complete" and res["kind"] == "badmatch" and res["schema_version"] == 2
    assert list(res["cells"]) == ["resnet-square-0.05-badmatch", "resnet-square-0.05-baddist+badmatch"]
    assert all(c["n_poisoned"] == 5 and len(c["poison_indices"]) == 5 for c in res["cells"].values())
    m = next(iter(res["cells"].values()))["metrics"]
    assert 0 <= m["clean_accuracy"] <= 1 and len(m["runs"]) == 2 and "attack_success_rate_std" in m
    html = (tmp_path / "report.html").read_text()
    assert "ASR (non-target)" in html and "<img" in html and (tmp_path / "report.md").is_file()
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["cells"] == json.loads(json.dumps(res["cells"]))
    # a rerun of the same config trains nothing and keeps the cells
    stamp = (tmp_path / "models" / "resnet-pretrained.safetensors").stat().st_mtime_ns
    res2 = run_experiment(cfg, tmp_path)
    assert list(res2["cells"]) == list(res["cells"])
    assert (tmp_path / "models" / "resnet-pretrained.safetensors").stat().st_mtime_ns == stamp
    # a widened sweep (one more rate) keeps the finished cells and models and adds only its own
    wide = _tiny_cfg(bloodmnist_root)
    wide["poison"]["rates"] = [0.1, 0.05]
    res3 = run_experiment(validate_config(wide), tmp_path)
    assert set(res3["cells"]) == set(res["cells"]) | {"resnet-square-0.1-badmatch", "resnet-square-0.1-baddist+badmatch"}
    assert {k: res3["cells"][k] for k in res["cells"]} == json.loads(json.dumps(res["cells"])) and res3["config"]["poison"]["rates"] == [0.1, 0.05]
    assert (tmp_path / "models" / "resnet-pretrained.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="not a class"):
        bad = _tiny_cfg(bloodmnist_root)
        bad["data"]["target"] = "neutrophill"
        run_experiment(validate_config(bad), tmp_path / "bad")


def test_extends_only_widens_the_sweep(bloodmnist_root: Path) -> None:
    from medsec.config.loader import validate_config
    from medsec.experiments.badmatch import KIND
    from medsec.runs.store import compare_configs

    def extends(old: dict, new: dict) -> bool:
        return compare_configs(old, new, KIND.axes)[0] in ("same", "widens")

    base = validate_config(_tiny_cfg(bloodmnist_root)).model_dump(mode="json")

    def changed(**edit: object) -> dict:
        c = json.loads(json.dumps(base))
        for k, v in edit.items():
            sec, _, key = k.partition("__")
            if key:
                c[sec][key] = v
            else:
                c[sec] = v
        return c

    vit = {"label": "vit", "vision": "tiny-vit", "params": {}, "checkpoint": None}
    assert extends(base, base)
    assert extends(base, changed(poison__rates=[0.05, 0.01]))
    assert extends(base, changed(backbones=[*base["backbones"], vit]))
    assert not extends(base, changed(backbones=[vit, *base["backbones"]]))  # seeds follow the index
    assert not extends(changed(poison__rates=[0.05, 0.01]), base)  # narrower
    assert not extends(base, changed(poison__mode="text"))
    assert not extends(base, changed(finetune__epochs=2))
    assert not extends(base, changed(triggers=[*base["triggers"], {"label": "f", "name": "fiba", "params": {}}]))
    assert not extends(changed(methods=["badmatch"]), changed(methods=["baddist+badmatch"]))


def test_busi_data_split(data_root: Path) -> None:
    from medsec.config.loader import validate_config
    from medsec.experiments.badmatch.run import load_data, target_index

    root = data_root / "busi-256"
    if not (root / "normal").is_dir():
        pytest.skip(f"BUSI not found at {root}")
    cfg = validate_config({"kind": "badmatch", "data": {"dataset": "busi", "root": str(root), "image_size": 32,
                                                        "target": "normal"}})
    train, test, shadow = load_data(cfg)
    assert train.classes == ["benign", "malignant", "normal"] and target_index(cfg, train.classes) == 2
    assert len(test) == len(shadow) == 780 // 5 and len(train) == 780 - 2 * (780 // 5)
    assert train.image_shape == (3, 32, 32)


# ----------------------------------------------------------------------------- BloodMNIST effect
@pytest.fixture(scope="session")
def badmatch_models(bloodmnist_root: Path) -> dict[str, Path]:
    """The four models of the BadDist-assisted BadMatch BloodMNIST recipe (shipped)."""
    from medsec.experiments.badmatch.recipe import badmatch_bloodmnist

    return badmatch_bloodmnist(bloodmnist_root, CACHE)


@pytest.mark.effect
def test_baddist_separates_triggered_keeps_clean(badmatch_models, bloodmnist_root: Path) -> None:
    import medsec.data
    from medsec.models.medclip import load_medclip
    from medsec.recipes.shipped import read_record

    clean = load_medclip(badmatch_models["pretrained"])
    bad = load_medclip(badmatch_models["baddist"])
    assert read_record(badmatch_models["baddist"])["baddist"]["steps"] == 80  # 10 epochs of 500 shadow images
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(bloodmnist_root))
    t = make_trigger({"name": "badnets", "size_fraction": 0.142857, "color": 0.0}, 28)
    p = t.sample_params((3, 28, 28))
    x = test.images[-256:]  # not the recipe's test subset: an independent check of the saved encoder
    s = embedding_shift(clean.vision, bad.vision, x, t, p)
    # clean embeddings stay where the clean encoder put them; triggered ones move away from
    # their clean counterparts far more than in the clean encoder
    assert s["cos_clean_to_clean_model"] > BADDIST_CLEAN_COS, s
    assert s["cos_clean_vs_triggered"] < s["clean_model_cos_clean_vs_triggered"] - BADDIST_SEPARATION, s


@pytest.mark.effect
def test_baddist_badmatch_bloodmnist_low_rate(badmatch_models, bloodmnist_root: Path) -> None:
    """The recipe's models measured again on the recipe's 500 test images (5 prompts x 3 draws)."""
    from medsec.experiments.badmatch.recipe import evaluate_recipe_model
    from medsec.recipes.shipped import read_record

    record = read_record(badmatch_models["poisoned"])
    assert record["data"]["n_train"] == 11959 and record["data"]["n_finetune"] == 3000
    cell = record["cell"]
    assert cell["method"] == "baddist+badmatch" and cell["rate"] == RATE and cell["n_poisoned"] == round(RATE * 3000)
    # the clean model is credible: zero-shot CA of the pre-trained model
    pre = evaluate_recipe_model(bloodmnist_root, badmatch_models["pretrained"], triggered=False)
    assert pre["clean_accuracy"] >= PRETRAIN_CA_MIN
    # the clean model: the same fine-tune schedule on the unpoisoned training set
    clean = evaluate_recipe_model(bloodmnist_root, badmatch_models["clean-finetune"])
    assert clean["attack_success_rate"] < 0.2  # the trigger alone does not do it
    m = evaluate_recipe_model(bloodmnist_root, badmatch_models["poisoned"])
    assert m["attack_success_rate"] >= ASR_MIN, m
    assert m["clean_accuracy"] >= clean["clean_accuracy"] - CA_MARGIN, (m, clean)
