"""Backdoor detectors on CLIP-style victims: the BAPLe prompt-learned CLIP
and the BadDist-assisted BadMatch MedCLIP-style model of the suite's recipes, run as
``attack: baple`` / ``attack: badmatch`` entries of the ``backdoor_defense`` kind.

Measured with configs/bloodmnist_backdoor_defense_clip.yaml (1,000 test images, 200 + 200
STRIP queries; docs/defenses.md): BadMatch (CA 0.48, ASR 0.99) is caught by STRIP with the
superimposition in optical density (AUROC 1.000) but missed by the paper's additive STRIP
(0.38), Spectral Signatures (0.58), Activation Clustering (0.55) and Neural Cleanse (target
index 1.53, not flagged); BAPLe at 28 px implants weakly (ASR 0.29) and every detector misses
it (AUROC 0.41 to 0.60; Neural Cleanse index 0.15). This test runs the kind on a smaller
evaluation (500 test images, 100 + 100 queries); asserted: the victims are rebuilt as their
attacks' recipes define them, and STRIP (optical density) catches BadMatch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.unit

CACHE = Path(__file__).resolve().parents[3] / ".medsec-cache"


def test_text_head_classifier_is_clips_zero_shot_head() -> None:
    from medsec.defenses.clip_classifier import TextHeadClassifier
    from medsec.errors import InputError
    from medsec.models.features import features

    g = torch.Generator().manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))
    text = torch.randn(5, 8, generator=g)
    clf = TextHeadClassifier(enc, text, logit_scale=20.0)
    x = torch.rand(6, 3, 4, 4, generator=g)
    emb = torch.nn.functional.normalize(enc(x), dim=1)
    expected = 20.0 * emb @ torch.nn.functional.normalize(text, dim=1).T
    assert torch.allclose(clf(x), expected, atol=1e-5)
    # the representation detectors read the normalised image embedding (input of the text head)
    assert torch.allclose(features(clf, x), emb.detach(), atol=1e-6)
    raw = TextHeadClassifier(enc, text, logit_scale=2.0, normalize_text=False)
    assert torch.allclose(raw(x), 2.0 * emb @ text.T, atol=1e-5)
    with pytest.raises(InputError, match="text_features"):
        TextHeadClassifier(enc, torch.full((2, 8), float("nan")))
    with pytest.raises(InputError, match="logit_scale"):
        TextHeadClassifier(enc, text, logit_scale=0.0)


def test_backdoor_entries_refuse_bad_params(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from medsec.config.loader import validate_config
    from medsec.errors import ConfigError
    from medsec.runs import run as run_backdoor_defense

    base = {"kind": "backdoor_defense", "data": {"name": "medmnist", "params": {"flag": "bloodmnist"}},
            "detectors": [{"name": "spectral"}]}
    for entry, msg in (({"attack": "baple", "params": {"epoch": 3}}, "BapleSettings"),
                       ({"attack": "badmatch", "params": {"method": "bad"}}, "method"),
                       ({"attack": "badmatch", "params": {"lr": 1}}, "unknown params"),
                       ({"attack": "baple", "target": None}, "target")):
        with pytest.raises(ConfigError, match=msg):
            run_backdoor_defense(validate_config({**base, "backdoors": [entry]}), tmp_path / "x")
    other = {**base, "data": {"name": "synthetic_he"}, "backdoors": [{"attack": "badmatch", "target": 1}]}
    with pytest.raises(ConfigError, match="bloodmnist"):
        run_backdoor_defense(validate_config(other), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.effect
def test_detectors_against_baple_and_badmatch(tmp_path, bloodmnist_root, bloodmnist_clip, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from medsec.config.loader import validate_config
    from medsec.experiments.badmatch.recipe import badmatch_bloodmnist
    from medsec.recipes.shipped import read_record
    from medsec.runs import run as run_backdoor_defense

    monkeypatch.setenv("MEDSEC_DATA", str(Path(bloodmnist_root).parent))
    cfg = validate_config({
        "kind": "backdoor_defense", "name": "clip-victims", "seed": 0,
        "data": {"name": "medmnist", "params": {"flag": "bloodmnist"}, "val_split": "val"},
        "backdoors": [{"label": "baple", "attack": "baple", "params": {"epochs": 20}, "target": 0, "rate": 0.05},
                      {"label": "badmatch", "attack": "badmatch", "target": 6, "rate": 0.01}],
        "detectors": [{"label": "strip_od", "name": "strip", "params": {"mode": "optical_density"}},
                      {"name": "spectral"}],
        "eval": {"test_limit": 500, "clean_size": 200, "detector_queries": 100}, "cache_dir": str(CACHE)})
    # the two small CLIP-style models run many tiny ops: on a loaded 2-core machine two intra-op
    # threads made this test take 815 s against 53 s with one, so it runs single-threaded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_backdoor_defense(cfg, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert res["status"] == "complete"
    bp, bm = res["backdoors"]["baple"], res["backdoors"]["badmatch"]
    assert bp["attack"] == "baple" and bp["n_adaptation"] == 256 and bp["n_poisoned"] == 13  # 5% of 32 shots x 8
    assert bp["metrics"]["clean_accuracy"] >= 0.8
    # the BadMatch victim is the recipe's backdoored model: the same poisoned images as the recipe's run
    cell = read_record(badmatch_bloodmnist(bloodmnist_root, CACHE)["poisoned"])["cell"]
    assert bm["attack_info"]["reused_recipe_model"]
    assert bm["attack_info"]["poison"]["count"] == len(cell["poison_indices"]) == bm["n_poisoned"] == 30
    assert bm["metrics"]["attack_success_rate"] >= 0.9
    cells = res["cells"]
    assert set(cells) == {f"{b}/detector/{d}" for b in ("baple", "badmatch") for d in ("strip_od", "spectral")}
    for c in cells.values():
        assert 0 <= c["metrics"]["auroc"] <= 1
    assert cells["baple/detector/spectral"]["metrics"]["n_poisoned"] == 13
    assert cells["badmatch/detector/spectral"]["metrics"]["n_poisoned"] == 30
    # measured 0.984 and 1.000 on two trainings of the BadMatch recipe and 0.741 on a CI retrain: how well
    # STRIP in optical density separates depends on how hard the retrained model follows the square
    assert cells["badmatch/detector/strip_od"]["metrics"]["auroc"] >= 0.65, cells["badmatch/detector/strip_od"]
    html = (tmp_path / "report.html").read_text()
    assert "prompt-learned" in html and "zero-shot" in html
    print(json.dumps({k: round(c["metrics"]["auroc"], 3) for k, c in cells.items()}))
