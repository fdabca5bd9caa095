"""The ``kind: wsi`` experiment end to end on a tiny config: real BloodMNIST bags with the
suite's cached BloodMNIST CNN as the frozen encoder, one real .svs slide, the report with the
figures the issue names, resume, and refusal of bad configs before any output."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsec.config.loader import validate_config
from medsec.errors import ConfigError

pytestmark = pytest.mark.effect

CACHE = Path(__file__).resolve().parents[3] / ".medsec-cache"


def _cfg(data_root: Path) -> dict:
    return {
        "kind": "wsi", "name": "tiny-wsi", "seed": 0, "cache_dir": str(CACHE),
        "encoder": {"name": "medsec_bloodmnist"},
        "bags": {"root": str(data_root / "bloodmnist"), "tasks": [{"name": "lymphocyte", "positive": [4]}],
                 "n_train": 12, "n_test": 6, "size_min": 450, "size_max": 500, "key_min": 1, "key_max": 2,
                 "test_key_max": 1},
        "heads": [{"name": "abmil"}],
        "train": {"epochs": 3},
        "attack": {"names": ["pgd"], "rhos": [0.002], "eps": 8 / 255, "strategies": ["random", "attention"],
                   "params": {"pgd": {"steps": 3}}},
        # one bag defence, the registered embedding_outlier detector (the purifiers: tests/wsi/test_wsi_defenses.py)
        "defenses": {"enabled": True, "rho": 0.002, "outlier_k": 5, "jpeg_quality": None, "blur_sigma": None,
                     "finetune_epochs": None},
        "slides": {"paths": [str(data_root / "he-samples" / "cmu_small_region.svs")], "tile_size": 512,
                   "level": 0, "min_tissue": 0.5, "rho": 0.05},
    }


def test_wsi_kind_end_to_end_and_resume(tmp_path, data_root, bloodmnist_model) -> None:  # type: ignore[no-untyped-def]
    from medsec.runs import run as run_wsi

    cfg = validate_config(_cfg(data_root))
    res = run_wsi(cfg, tmp_path)
    assert res["status"] == "complete"
    assert res["tasks"]["lymphocyte"]["key_tiles_per_positive_test_bag"] == [1, 1]
    attacks = {k: v for k, v in res["cells"].items() if k.startswith("attack/")}
    assert {c["strategy"] for c in attacks.values()} == {"random", "attention"}
    for c in attacks.values():
        assert 0 <= c["clean"]["accuracy"] <= 1 and 0 <= c["attacked"]["accuracy"] <= 1
    # the bag mosaic always shows the attacked and the key tiles, even in bags of 450-500 tiles
    with np.load(tmp_path / "figures.npz") as z:
        assert len(z["mosaic_selected"]) >= 1 and len(z["mosaic_key"]) >= 1
        assert z["mosaic_tiles"].shape[0] == len(z["mosaic_attention"]) <= 400
    html = (tmp_path / "report.html").read_text()
    for title in ("Attacked tiles and attention", "Tile vulnerability vs content", "Real slides"):
        assert title in html, title
    assert html.count("data:image/png;base64,") >= 4
    outlier = res["cells"]["defense/lymphocyte/outlier"]  # the registered detector, through DETECTORS
    assert outlier["params"] == {"k": 5, "quantile": 0.99} and outlier["threshold"] > 0
    assert 0 <= outlier["clean_tile_fpr"] <= 0.2 and 0 <= outlier["tpr_random"] <= 1
    assert 0 <= outlier["attacked_attention"] <= 1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["cells"].keys() == res["cells"].keys()
    # a rerun into the same folder resumes: every finished cell is kept as it was
    again = run_wsi(cfg, tmp_path)
    assert {k: v for k, v in again["cells"].items() if k.startswith("attack/")} == attacks


@pytest.mark.unit
def test_wsi_kind_refuses_bad_configs(tmp_path, data_root) -> None:  # type: ignore[no-untyped-def]
    bad = _cfg(data_root)
    bad["attack"]["rhos"] = [1.5]
    with pytest.raises(ConfigError):
        validate_config(bad)
    bad = _cfg(data_root)
    bad["heads"] = [{"name": "abmil", "typo": 1}]
    bad["bags"]["n_tset"] = 3
    with pytest.raises(ConfigError, match="n_tset"):
        validate_config(bad)
    bad = _cfg(data_root)
    bad["bags"]["test_key_max"] = 451  # more key instances than the smallest bag holds
    with pytest.raises(ConfigError, match="test_key_max"):
        validate_config(bad)
    assert not any(tmp_path.iterdir())
