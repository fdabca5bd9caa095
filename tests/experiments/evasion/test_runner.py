"""The runner: results.json schema, examples, report files, resume after interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsec.config import validate_config
from medsec.errors import ConfigError
from medsec.experiments.evasion import run as runner_mod
from medsec.runs import SequentialExecutor
from medsec.runs import run as run_experiment

pytestmark = pytest.mark.unit

RAW = {
    "name": "tiny",
    "seed": 1,
    "data": {"name": "synthetic_he", "params": {"n": 240, "size": 16}},
    "model": {"name": "small_cnn", "params": {"width": 8}},
    "train": {"epochs": 2, "lr": 0.01, "batch_size": 32},
    "threat": {"eps": ["2/255", "8/255"]},
    "attacks": [{"name": "fgsm"}, {"name": "pgd", "params": {"steps": 3}}],
    "eval": {"sample_limit": 40, "examples": 4},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results = run_experiment(validate_config(RAW), out)
    return out, results


def test_results_schema(finished):
    out, results = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["schema_version"] == 2
    assert 0 <= on_disk["clean"]["accuracy"] <= 1
    assert on_disk["seeds"]["global"] == 1 and len(on_disk["seeds"]["cells"]) == 4
    assert on_disk["provenance"]["torch"] and on_disk["provenance"]["finished"]
    assert on_disk["model"]["train"]["history"][-1]["epoch"] == 2
    assert [e["id"] for e in list(on_disk["cells"].values())] == [
        "fgsm-linf-2-untargeted", "fgsm-linf-8-untargeted", "pgd-linf-2-untargeted", "pgd-linf-8-untargeted"]
    for ev in list(on_disk["cells"].values()):
        m = ev["metrics"]
        assert set(ev["threat"]) >= {"norm", "eps", "targeted"}
        assert 0 <= m["robust_accuracy"] <= on_disk["clean"]["accuracy"] + 1e-9
        assert ev["runtime_s"] >= 0
        assert m["linf"] <= ev["threat"]["eps"] + 1e-6
        ex = np.load(out / ev["examples"], allow_pickle=False)
        assert ex["clean"].shape == ex["adv"].shape and ex["clean"].shape[0] <= 4
        assert np.abs(ex["adv"] - ex["clean"]).max() <= ev["threat"]["eps"] + 1e-6
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert (out / "config.resolved.yaml").is_file() and (out / "model.safetensors").is_file()


def test_same_seed_same_numbers(finished, tmp_path):
    _, first = finished
    again = run_experiment(validate_config(RAW), tmp_path / "again", report=False)
    for a, b in zip(list(first["cells"].values()), list(again["cells"].values())):
        assert a["metrics"]["robust_accuracy"] == b["metrics"]["robust_accuracy"]


class _Interrupting(SequentialExecutor):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def run(self, work, jobs, local):
        for i, item in enumerate(super().run(work, jobs, local)):
            yield item
            if i + 1 >= self.after:
                raise KeyboardInterrupt


def test_resume_after_interruption(tmp_path, monkeypatch):
    cfg = validate_config(RAW)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path, executor=_Interrupting(after=1))
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["status"] == "running" and len(list(partial["cells"].values())) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written files left behind

    ran = []
    original = runner_mod.run_job
    monkeypatch.setattr(runner_mod, "run_job", lambda prep, job, *a: ran.append(job.id) or original(prep, job, *a))
    trained = []
    original_train = runner_mod.train_classifier
    monkeypatch.setattr(runner_mod, "train_classifier", lambda *a, **k: trained.append(1) or original_train(*a, **k))
    done = run_experiment(cfg, tmp_path, report=False)
    assert done["status"] == "complete" and len(list(done["cells"].values())) == 4
    assert list(partial["cells"].values())[0]["id"] not in ran and len(ran) == 3
    assert not trained  # the trained model was reused
    assert list(done["cells"].values())[0] == list(partial["cells"].values())[0]


def test_different_config_in_same_folder_is_refused(finished):
    out, _ = finished
    other = validate_config({**RAW, "seed": 2})
    with pytest.raises(ConfigError, match=r"another config \(changed: seed\)"):
        run_experiment(other, out)


def test_targeted_cell(tmp_path):
    raw = {**RAW, "train": {"epochs": 2, "lr": 0.01, "batch_size": 32},
           "threat": {"eps": ["8/255"], "targeted": True, "target": 0},
           "attacks": [{"name": "pgd", "params": {"steps": 5}}]}
    res = run_experiment(validate_config(raw), tmp_path, report=False)
    ev = list(res["cells"].values())[0]
    assert ev["id"] == "pgd-linf-8-targeted" and ev["threat"]["targeted"]
    assert ev["metrics"]["attack_success_rate"] is not None
