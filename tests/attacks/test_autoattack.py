"""The AutoAttack-style cascade: worst case over its stages, per-stage bookkeeping, runner records."""

from __future__ import annotations

import pytest
import torch

import medsec
from medsec.config import validate_config
from medsec.runs import run as run_experiment
from medsec.training import predict

pytestmark = pytest.mark.unit


@pytest.mark.effect
def test_cascade_is_at_least_as_strong_as_each_stage(bloodmnist_model, bloodmnist_test):
    x, y = bloodmnist_test.images[:64], bloodmnist_test.labels[:64]
    keep = predict(bloodmnist_model, x) == y
    x, y = x[keep], y[keep]
    threat = medsec.ThreatModel("linf", 2 / 255)
    aa = medsec.attacks.create("autoattack", steps=10, square_queries=100)
    res = aa(bloodmnist_model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    robust_aa = (predict(bloodmnist_model, res.x_adv) == y).float().mean().item()
    apgd = medsec.attacks.create("apgd", steps=10)(bloodmnist_model, x, y, threat=threat,
                                                    generator=torch.Generator().manual_seed(0))
    pgd = medsec.attacks.create("pgd", steps=10)(bloodmnist_model, x, y, threat=threat,
                                                  generator=torch.Generator().manual_seed(0))
    for other in (apgd, pgd):
        assert robust_aa <= (predict(bloodmnist_model, other.x_adv) == y).float().mean().item() + 1e-9
    bb = res.extras["broken_by"]
    assert res.extras["stages"] == ["apgd", "apgd_t", "deepfool", "square"]
    assert torch.equal(bb >= 0, res.success.cpu())  # broken exactly when the cascade succeeded
    assert (bb == 0).sum() > 0  # APGD-CE does most of the work
    assert float(res.norms["linf"].max()) <= 2 / 255 + 1e-6


def test_runner_records_stages_worst_case_and_sweep(tmp_path):
    raw = {
        "name": "aa", "seed": 0,
        "data": {"name": "synthetic_he", "params": {"n": 240, "size": 16}},
        "model": {"name": "small_cnn", "params": {"width": 8}},
        "train": {"epochs": 2, "lr": 0.01, "batch_size": 32},
        "threat": {"eps": ["2/255", "4/255"]},
        "attacks": [
            {"name": "autoattack", "params": {"steps": 5, "square_queries": 50}},
            {"name": "deepfool", "params": {"steps": 10}},
        ],
        "eval": {"sample_limit": 40},
    }
    res = run_experiment(validate_config(raw), tmp_path, report=False)
    aa = [e for e in list(res["cells"].values()) if e["attack"] == "autoattack"]
    assert [s["attack"] for s in aa[0]["stages"]] == ["apgd", "apgd_t", "deepfool", "square"]
    after = [s["robust_accuracy_after"] for s in aa[0]["stages"]]
    assert after == sorted(after, reverse=True) and after[-1] == aa[0]["metrics"]["robust_accuracy"]
    df = [e for e in list(res["cells"].values()) if e["attack"] == "deepfool"]
    assert len(df) == 2 and all(e["sweep"]["cells"] == 2 for e in df)  # one run, two eps
    assert len(res["worst_case"]) == 2
    for wc in res["worst_case"]:
        cells = [e for e in list(res["cells"].values()) if e["id"] in wc["attacks"]]
        assert wc["robust_accuracy"] <= min(e["metrics"]["robust_accuracy"] for e in cells) + 1e-6
