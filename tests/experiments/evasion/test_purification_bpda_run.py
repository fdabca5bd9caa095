"""`medsec run` with a non-differentiable purifier (bit-depth reduction) on the BloodMNIST
model of the suite: the plain PGD cell looks robust, the runner's BPDA cell breaks it, and
results.json and the report mark the plain number as non-adaptive.

Measured (100 test images, PGD-10 at 8/255, 4 bits): see the test's docstring.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.effect

CACHE = Path(__file__).resolve().parents[3] / ".medsec-cache"


def test_bit_depth_looks_robust_plainly_and_falls_to_bpda(bloodmnist_model, bloodmnist_root, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Measured: see docs/defenses.md (plain and BPDA robust accuracy)."""
    from medsec.config.loader import validate_config
    from medsec.recipes.builtin import bloodmnist_checkpoint
    from medsec.runs import run as run_experiment

    ckpt = bloodmnist_checkpoint(bloodmnist_root, CACHE)
    cfg = validate_config({
        "name": "bpda-bit-depth", "data": {"name": "medmnist", "params": {"flag": "bloodmnist", "root": str(bloodmnist_root)}},
        "model": {"checkpoint": str(ckpt)}, "threat": {"norm": "linf", "eps": ["8/255"]},
        "attacks": [{"name": "pgd", "params": {"steps": 10}}], "defenses": [{"name": "bit_depth", "params": {"bits": 4}}],
        "include_undefended": False, "eval": {"sample_limit": 100, "examples": 0, "model_checks": True},
    })
    res = run_experiment(cfg, tmp_path)
    cells = {ev["adaptive"]: ev for ev in list(res["cells"].values())}
    assert set(cells) == {False, True} and all(ev["defense"] == "bit_depth" for ev in cells.values())
    plain, bpda = cells[False]["metrics"]["robust_accuracy"], cells[True]["metrics"]["robust_accuracy"]
    assert plain >= 0.7, plain
    assert bpda <= 0.3, bpda
    assert res["defenses"][0]["differentiable"] is False
    html = (tmp_path / "report.html").read_text()
    matrix = html.split("Defence × attack matrix")[1].split("</table>")[0]
    assert "pgd (adaptive)" in matrix and 'class="badge warn"' in matrix  # the plain column is marked
    assert "non-adaptive" in html and "may overstate robustness" in html
