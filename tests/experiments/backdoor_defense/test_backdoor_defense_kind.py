"""The ``backdoor_defense`` experiment kind end to end on a tiny real-data config (a BadNets
BloodMNIST model trained on 600 images), its resume, report and bad-input errors."""

from __future__ import annotations

import json

import pytest

from medsec.config.loader import validate_config
from medsec.errors import ConfigError, RegistryError

pytestmark = pytest.mark.unit


def _cfg(root, **over):  # type: ignore[no-untyped-def]
    cfg = {
        "kind": "backdoor_defense", "name": "tiny-backdoor-defense", "seed": 0,
        "data": {"name": "medmnist", "params": {"flag": "bloodmnist", "root": str(root)}, "val_split": "val"},
        "model": {"name": "small_cnn", "params": {"width": 8}},
        "train": {"epochs": 2, "limit": 600},
        "backdoors": [{"name": "badnets", "params": {"size": 3, "position": "bottom-right"}, "target": 0, "rate": 0.1}],
        "detectors": [{"name": "strip", "params": {"n_overlays": 4}}, {"name": "spectral"},
                      {"name": "activation_clustering", "params": {"n_components": 3}},
                      {"name": "neural_cleanse", "params": {"steps": 10, "batch_size": 4}}],
        "repairs": [{"name": "fine_pruning", "params": {"epochs": 1}}],
        "eval": {"test_limit": 100, "clean_size": 64, "detector_queries": 32},
    }
    cfg.update(over)
    return cfg


@pytest.mark.effect
def test_backdoor_defense_runs_end_to_end_and_resumes(bloodmnist_root, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from medsec.experiments.backdoor_defense import BackdoorDefenseConfig
    from medsec.runs import run

    cfg = validate_config(_cfg(bloodmnist_root))
    assert isinstance(cfg, BackdoorDefenseConfig)
    res = run(cfg, tmp_path)
    assert res["kind"] == "backdoor_defense" and res["status"] == "complete" and res["schema_version"] == 2
    assert set(res["cells"]) == {f"badnets/detector/{d}" for d in ("strip", "spectral", "activation_clustering",
                                                                    "neural_cleanse")} | {"badnets/repair/fine_pruning"}
    bd = res["backdoors"]["badnets"]
    assert bd["n_poisoned"] == 60 and bd["model"] == "trained" and 0 <= bd["metrics"]["clean_accuracy"] <= 1
    for d in ("strip", "spectral", "activation_clustering"):
        m = res["cells"][f"badnets/detector/{d}"]["metrics"]
        assert 0 <= m["auroc"] <= 1 and 0 <= m["tpr_at_5pct_fpr"] <= 1
    assert res["cells"]["badnets/detector/strip"]["inspects"] == "inputs"
    assert res["cells"]["badnets/detector/spectral"]["metrics"]["n_poisoned"] == 60
    nc = res["cells"]["badnets/detector/neural_cleanse"]["metrics"]
    assert len(nc["anomaly_index"]) == 8 and isinstance(nc["target_flagged"], bool)
    rep = res["cells"]["badnets/repair/fine_pruning"]["metrics"]
    assert {"ca_before", "ca_after", "asr_before", "asr_after"} <= set(rep)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["cells"].keys() == res["cells"].keys()
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    for text in (html, md):
        assert "Detector × backdoor matrix" in text and "Repairs" in text and "Neural Cleanse per class" in text
    assert "AUROC" in html and "anomaly index of target" in html
    # a rerun resumes: the model comes from the cache, finished cells are kept as they are
    on_disk["cells"]["badnets/detector/spectral"]["metrics"]["marker"] = 1
    (tmp_path / "results.json").write_text(json.dumps(on_disk))
    again = run(cfg, tmp_path, report=False)
    assert again["backdoors"]["badnets"]["model"] == "cached"
    assert again["cells"]["badnets/detector/spectral"]["metrics"]["marker"] == 1
    # the same folder with another config is refused
    other = validate_config(_cfg(bloodmnist_root, seed=1))
    with pytest.raises(ConfigError, match="another config .changed: seed"):
        run(other, tmp_path)


def test_backdoor_defense_refuses_bad_configs(bloodmnist_root, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="detectorz"):
        validate_config({**_cfg(bloodmnist_root), "detectorz": []})
    with pytest.raises(ConfigError, match="at least one detector or repair"):
        validate_config(_cfg(bloodmnist_root, detectors=[], repairs=[]))
    with pytest.raises(ConfigError, match="twice"):
        validate_config(_cfg(bloodmnist_root, detectors=[{"name": "spectral"}, {"name": "spectral"}]))
    with pytest.raises(ConfigError, match="rate"):
        validate_config(_cfg(bloodmnist_root, backdoors=[{"name": "badnets", "rate": 1.5}]))
    for over, match in (({"detectors": [{"name": "neural_clense"}]}, "neural_cleanse"),
                        ({"backdoors": [{"name": "badnet"}]}, "badnets"),
                        ({"repairs": [{"name": "fine_prune"}]}, "fine_pruning")):
        with pytest.raises(RegistryError, match=match):  # refused when the config is validated
            validate_config(_cfg(bloodmnist_root, **over))
        assert not (tmp_path / "bad" / "results.json").exists(), "nothing written before the names are checked"
