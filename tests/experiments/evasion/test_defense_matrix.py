"""Issue 9, item 4: `medsec run` with a list of defences holds the defence x attack matrix in
results.json (``matrix``) and in the HTML report, marks adaptive (BPDA/EOT) and plain cells,
and a newly registered attack extends the matrix by being listed in the config (here an
attack registered by the test itself)."""

from __future__ import annotations

import pytest
import torch

from medsec.attacks.base import Attack, Problem
from medsec.attacks.projection import project, steepest_step
from medsec.config import validate_config
from medsec.registry import ATTACKS
from medsec.runs import run as run_experiment

pytestmark = pytest.mark.unit


class _TwoHalfSteps(Attack):
    """Two signed gradient steps of eps / 2 (a stand-in for an attack registered later)."""

    name = "two_half_steps"

    def _run(self, problem: Problem, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        eps, norm = problem.threat.eps, problem.threat.norm
        x_adv = x
        for _ in range(2):
            _, grad, _ = problem.loss_and_grad(x_adv)
            x_adv = problem.clamp(x + project(x_adv + eps / 2 * steepest_step(grad, norm) - x, norm, eps))
        return x_adv, 2


def test_defence_by_attack_matrix_in_results_and_report(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(ATTACKS._items, "two_half_steps", _TwoHalfSteps)
    cfg = validate_config({
        "name": "matrix", "seed": 0, "data": {"name": "synthetic_he", "params": {"n": 160, "size": 16}},
        "model": {"name": "small_cnn", "params": {"width": 8}}, "train": {"epochs": 1, "lr": 0.01, "batch_size": 32},
        "threat": {"eps": ["8/255"]},
        "attacks": [{"name": "fgsm"}, {"name": "two_half_steps"}],
        "defenses": [{"name": "jpeg"}, {"name": "gaussian_blur"}],
        "eval": {"sample_limit": 24, "examples": 0},
    })
    res = run_experiment(cfg, tmp_path)
    matrix = res["matrix"]
    heads = [c["header"] for c in matrix["columns"]]
    assert heads == ["fgsm @ linf 8/255", "fgsm (adaptive) @ linf 8/255", "two_half_steps @ linf 8/255",
                     "two_half_steps (adaptive) @ linf 8/255"]
    rows = {r["defense"]: r for r in matrix["rows"]}
    assert set(rows) == {None, "jpeg", "gaussian_blur"}
    by_id = {ev["id"]: ev for ev in list(res["cells"].values())}
    jpeg = rows["jpeg"]
    assert jpeg["differentiable"] is False and jpeg["needs_adaptive"] is True
    for attack in ("fgsm", "two_half_steps"):
        plain, ad = jpeg["cells"][f"{attack} @ linf 8/255"], jpeg["cells"][f"{attack} (adaptive) @ linf 8/255"]
        assert plain["non_adaptive_warning"] and not plain["adaptive"]
        assert ad["adaptive"] and not ad["non_adaptive_warning"]
        assert plain["robust_accuracy"] == by_id[plain["id"]]["metrics"]["robust_accuracy"]
        # JPEG's plain gradients are zero: only BPDA moves the images
        assert ad["robust_accuracy"] <= plain["robust_accuracy"] + 1e-9
    for label in (None, "gaussian_blur"):  # differentiable: plain cells only, no warning
        assert set(rows[label]["cells"]) == {"fgsm @ linf 8/255", "two_half_steps @ linf 8/255"}
        assert not any(c["non_adaptive_warning"] or c["adaptive"] for c in rows[label]["cells"].values())
    html = (tmp_path / "report.html").read_text()
    table = html.split("Defence × attack matrix")[1].split("</table>")[0]
    assert "two_half_steps (adaptive)" in table and "fgsm (adaptive)" in table
    assert 'class="badge warn"' in table
    on_disk = (tmp_path / "results.json").read_text()
    assert '"matrix"' in on_disk and "two_half_steps (adaptive) @ linf 8/255" in on_disk
