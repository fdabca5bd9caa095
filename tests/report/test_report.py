"""Tests of medsec.report: HTML/Markdown reports from a fake results.json and example files."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medsec.errors import ConfigError, DataError
from medsec.experiments.evasion.figures import example_grid, robust_accuracy_vs_eps
from medsec.experiments.evasion.report import render_markdown
from medsec.io import atomic_save_npz, atomic_write_json, atomic_write_text
from medsec.report import load_results, write_report
from medsec.report.figures import data_uri
from medsec.report.formatting import fmt_float, fmt_pct
from medsec.report.frame import md_escape

pytestmark = pytest.mark.unit

XSS = "<script>alert(1)</script>"
CLASSES = ["basophil", XSS, "eosinophil", "lympho|cyte"]
EPS = [1, 2, 4, 8]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cell(attack: str, eps_255: int, ra: float, examples: bool = True) -> dict[str, Any]:
    cid = f"{attack}-linf-{eps_255:.1f}-untargeted"
    return {
        "id": cid, "attack": attack, "label": attack, "params": {"steps": 10, "note": "a|b <i>x</i>"},
        "threat": {"norm": "linf", "eps": eps_255 / 255, "eps_255": float(eps_255), "targeted": False},
        "target": None,
        "metrics": {"robust_accuracy": ra, "attack_success_rate": 1 - ra / 0.9, "clean_accuracy": 0.9,
                    "n_attacked": 90, "linf": eps_255 / 255, "l2": 0.2 * eps_255, "l0": 700.0,
                    "psnr": 50.0 - 3 * eps_255, "ssim": 0.99 - 0.01 * eps_255, "queries_mean": 1.0, "non_finite": 0},
        "runtime_s": 0.5 * eps_255, "seed": 1000 + eps_255,
        "examples": f"examples/{cid}.npz" if examples else None,
    }


def cell_list(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The cell records of a results dict, in order."""
    return list(results["cells"].values())


def fake_results() -> dict[str, Any]:
    evs = [_cell("fgsm", e, ra) for e, ra in zip(EPS, [0.7, 0.5, 0.3, 0.35])]
    evs += [_cell("pgd", e, ra) for e, ra in zip(EPS, [0.6, 0.3, 0.05, 0.0])]
    evs[0]["metrics"]["attack_success_rate"] = None
    evs[4]["metrics"]["psnr"] = "inf"
    return {
        "schema_version": 2, "kind": "evasion", "name": "fake-run", "status": "complete",
        "config": {"name": "fake-run", "data": {"name": "synthetic"}, "note": XSS},
        "provenance": {"medsec": "0.1.0", "python": "3.11.7", "torch": "2.5.0", "platform": "Linux",
                       "git": "abc123def4567890", "device": "cpu", "hostname": "host",
                       "started": "2026-11-22T03:00:00+00:00", "finished": "2026-11-22T03:05:00+00:00"},
        "seeds": {"global": 0, "cells": {ev["id"]: ev["seed"] for ev in evs}},
        "data": {"name": "synthetic", "split": "test", "classes": CLASSES, "n_eval": 100, "image_shape": [3, 16, 16]},
        "model": {"name": "small_cnn", "task": "multiclass", "num_classes": 4, "checkpoint": "model.safetensors",
                  "train": {"epochs": 2, "history": [{"epoch": 1, "loss": 0.9, "val_accuracy": 0.8},
                                                     {"epoch": 2, "loss": 0.5, "val_accuracy": 0.88}],
                            "test_accuracy": 0.9, "runtime_s": 12.0}},
        "clean": {"accuracy": 0.9, "n": 100},
        "cells": {ev["id"]: ev for ev in evs},
        "checks": [{"level": "warning", "code": "robust-accuracy-rises-with-eps",
                    "message": f"fgsm (linf): robust accuracy rises {XSS}",
                    "cells": ["fgsm-linf-4.0-untargeted", "fgsm-linf-8.0-untargeted"]}],
    }


def write_examples(out: Path, ev: dict[str, Any], channels: int = 3, k: int = 3) -> None:
    rng = np.random.default_rng(0)
    clean = rng.random((k, channels, 16, 16), dtype=np.float32)
    eps = ev["threat"]["eps"]
    adv = np.clip(clean + eps * np.sign(rng.standard_normal(clean.shape)), 0, 1).astype(np.float32)
    label = np.arange(k, dtype=np.int64) % len(CLASSES)
    atomic_save_npz(out / ev["examples"], clean=clean, adv=adv, label=label, pred_clean=label.copy(),
                    pred_adv=(label + np.arange(k)) % len(CLASSES))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    results = fake_results()
    for ev in cell_list(results):
        write_examples(tmp_path, ev)
    atomic_write_json(tmp_path / "results.json", results)
    return tmp_path


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_write_report_from_path(run_dir: Path) -> None:
    paths = write_report(run_dir / "results.json")
    assert paths["html"] == run_dir / "report.html" and paths["md"] == run_dir / "report.md"
    html_text = paths["html"].read_text(encoding="utf-8")
    md = paths["md"].read_text(encoding="utf-8")

    # one summary row per cell, with the right numbers and null/inf handling
    results = fake_results()
    for ev in cell_list(results):
        assert f'data-cell="{ev["id"]}"' in html_text
    rows = re.findall(r'<tr[^>]*data-cell="fgsm-linf-1.0-untargeted"[^>]*>(.*?)</tr>', html_text)
    assert len(rows) == 1
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0])
    assert cells[:6] == ["fgsm", "linf", "0.003922", "1", "untargeted", "70.0%"]
    assert cells[6] == "–"  # null ASR
    assert "∞" in html_text  # "inf" PSNR
    assert html_text.count('class="flagged"') == 2  # rows named by the warning

    # figures: the curve plus one example grid per attack (at eps 8/255), all valid PNGs
    images = _images(html_text)
    assert len(images) == 3 and all(img.startswith(PNG_MAGIC) for img in images)
    assert "8/255" in html_text

    # every untrusted string escaped, no raw script anywhere; no external assets or scripts
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<script" not in html_text.lower()
    assert "<i>x</i>" not in html_text
    assert not re.search(r'(src|href)="(?!data:)', html_text)
    assert "robust-accuracy-rises-with-eps" in html_text
    assert "abc123def4" in html_text and "2.5.0" in html_text and "90.0%" in html_text

    # markdown: header row, rule, one row per cell; pipes escaped
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table[0].startswith("| Attack | Norm |") and set(table[1]) <= set("|-:")
    assert len(table) == 2 + len(cell_list(results))
    assert all(ln.count("|") - ln.count("\\|") == table[0].count("|") for ln in table)
    assert "lympho\\|cyte" in md and "<script>" not in md
    assert "Clean accuracy: 90.0%" in md and "robust-accuracy-rises-with-eps" in md


def test_write_report_from_dict_and_missing_examples(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    results = fake_results()
    (run_dir / cell_list(results)[3]["examples"]).unlink()  # fgsm at 8/255
    cell_list(results)[7]["examples"] = "../../etc/passwd.npz"  # pgd: escapes the run folder
    results["checks"] = []
    results["status"] = "running"
    paths = write_report(results, run_dir)
    html_text = paths["html"].read_text(encoding="utf-8")
    assert "not found; skipped" in html_text and "outside the run folder" in html_text
    assert len(_images(html_text)) == 1  # the curve only
    assert "No warnings" in paths["md"].read_text(encoding="utf-8")

    empty = tmp_path_factory.mktemp("empty")
    results["cells"] = {}
    html_text = write_report(results, empty)["html"].read_text(encoding="utf-8")
    assert "no evaluation has finished yet" in html_text


def test_one_channel_and_multilabel_examples(tmp_path: Path) -> None:
    results = fake_results()
    results["data"]["image_shape"] = [1, 16, 16]
    for ev in cell_list(results):
        write_examples(tmp_path, ev, channels=1, k=10)
    html_text = write_report(results, tmp_path)["html"].read_text(encoding="utf-8")
    assert len(_images(html_text)) == 3

    rng = np.random.default_rng(1)
    clean = rng.random((2, 1, 8, 8), dtype=np.float32)
    ml = {"clean": clean, "adv": clean.copy(), "label": np.array([[1, 0, 1, 0], [0, 0, 0, 0]]),
          "pred_clean": np.array([[1, 0, 1, 0], [0, 0, 0, 0]]), "pred_adv": np.array([[0, 1, 1, 1], [0, 0, 0, 0]])}
    assert example_grid(ml, CLASSES, "multi-label $x$").startswith(PNG_MAGIC)
    assert example_grid(ml, None, "signed", perturbation="signed").startswith(PNG_MAGIC)


def test_curve_with_several_norms() -> None:
    results = fake_results()
    extra = copy.deepcopy(cell_list(results)[:2])
    for ev in extra:
        ev["threat"] = {**ev["threat"], "norm": "l2", "targeted": True}
        ev["id"] += "-l2-targeted"
    results["cells"].update({ev["id"]: ev for ev in extra})
    png = robust_accuracy_vs_eps(results)
    assert png.startswith(PNG_MAGIC)
    assert data_uri(png).startswith("data:image/png;base64,")
    assert robust_accuracy_vs_eps({"cells": {}}).startswith(PNG_MAGIC)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_results(tmp_path / "nope.json")
    with pytest.raises(DataError, match="not found"):
        write_report(tmp_path / "nope.json")
    atomic_write_text(tmp_path / "bad.json", '{"schema_version": 1,')
    with pytest.raises(DataError, match="not valid JSON"):
        write_report(tmp_path / "bad.json")
    atomic_write_text(tmp_path / "old.json", json.dumps({"name": "x"}))
    with pytest.raises(ConfigError, match="schema_version"):
        load_results(tmp_path / "old.json")
    atomic_write_text(tmp_path / "new.json", json.dumps({"schema_version": 99}))
    with pytest.raises(ConfigError, match="99"):
        load_results(tmp_path / "new.json")
    with pytest.raises(ConfigError, match="out_dir"):
        write_report(fake_results())


def test_formatting() -> None:
    assert fmt_pct(0.9123) == "91.2%" and fmt_pct(None) == "–" and fmt_pct(float("nan")) == "–"
    assert fmt_float(".1f", "dB")("inf") == "∞" and fmt_float(".1f", "dB")(31.04) == "31.0 dB"
    assert md_escape("a|b\nc") == "a\\|b c"
    assert render_markdown({"schema_version": 1}).startswith("# medsec report")


# --------------------------------------------------------------------------- defences, adaptive attacks, worst case
BITS = "bits<b>3|x</b>"  # a non-differentiable defence label that needs escaping (HTML and Markdown)
NOISE = "noise"  # a stochastic defence
STAGES = [{"attack": "apgd-ce", "robust_accuracy_after": 0.3, "broken": 60},
          {"attack": "apgd-dlr", "robust_accuracy_after": 0.2, "broken": 10},
          {"attack": "square", "robust_accuracy_after": 0.15, "broken": 5}]


def _dcell(attack: str, eps_255: int, ra: float, defense: str | None = None, adaptive: bool = False,
           clean: float = 0.9, **extra: Any) -> dict[str, Any]:
    ev = _cell(attack, eps_255, ra, examples=False)
    prefix = ["".join(ch if ch.isalnum() else "_" for ch in defense)] if defense else []
    ev["id"] = "-".join(prefix + [ev["id"]] + (["adaptive"] if adaptive else []))
    ev["metrics"]["clean_accuracy"] = clean
    ev.update({"defense": defense, "adaptive": adaptive, "gradient_free": False, "minimum_norm": False,
               "universal": False, "eot_samples": 1, "robust_bits": "ff00", **extra})
    return ev


def defended_results() -> dict[str, Any]:
    sweep = {"cells": 2, "runtime_s_total": 3.0}
    evs = [
        _dcell("pgd", 2, 0.4), _dcell("pgd", 8, 0.02),
        _dcell("autoattack", 8, 0.15, stages=STAGES),
        _dcell("uap", 8, 0.5, universal=True, metrics_extra={"fit_size": 500, "fit_fooling_rate": 0.62}),
        _dcell("square", 8, 0.1, gradient_free=True),
        _dcell("pgd", 2, 0.8, BITS, clean=0.85), _dcell("pgd", 8, 0.7, BITS, clean=0.85),
        _dcell("pgd", 2, 0.3, BITS, True, clean=0.85), _dcell("pgd", 8, 0.05, BITS, True, clean=0.85),
        _dcell("square", 8, 0.2, BITS, clean=0.85, gradient_free=True),
        _dcell("pgd", 8, 0.6, NOISE, clean=0.8), _dcell("pgd", 8, 0.1, NOISE, True, clean=0.8, eot_samples=10),
        _dcell("deepfool", 2, 0.5, NOISE, clean=0.8, minimum_norm=True, sweep=sweep),
        _dcell("deepfool", 8, 0.3, NOISE, clean=0.8, minimum_norm=True, sweep=sweep),
    ]
    for ev in evs:
        ev["metrics"].update(ev.pop("metrics_extra", {}))
    worst = []
    for d in (None, BITS, NOISE):
        for e in (2, 8):
            cells = [ev for ev in evs if ev["defense"] == d and ev["threat"]["eps_255"] == e]
            if cells:
                best = min(cells, key=lambda ev: ev["metrics"]["robust_accuracy"])
                worst.append({"defense": d, "norm": "linf", "eps": e / 255, "eps_255": float(e), "targeted": False,
                              "robust_accuracy": max(0.0, best["metrics"]["robust_accuracy"] - 0.01),
                              "attacks": [ev["id"] for ev in cells], "best_attack": best["id"]})
    results = fake_results()
    results.update({
        "cells": {ev["id"]: ev for ev in evs}, "worst_case": worst,
        "defenses": [{"label": BITS, "name": "bit_depth", "params": {"bits": 3}, "differentiable": False,
                      "stochastic": False},
                     {"label": NOISE, "name": "random_noise", "params": {"sigma": 0.05}, "differentiable": True,
                      "stochastic": True}],
        "checks": [{"level": "warning", "code": "gradient-zero", "message": f"{BITS}: input gradients are zero",
                    "cells": [], "model": BITS},
                   {"level": "warning", "code": "randomised-outputs", "message": "noise: outputs differ",
                    "cells": [], "model": NOISE},
                   {"level": "warning", "code": "black-box-beats-white-box", "message": "square beats pgd",
                    "cells": [evs[9]["id"], evs[6]["id"]]}],
    })
    return results


def _md_tables(md: str) -> list[list[str]]:
    tables: list[list[str]] = []
    prev = ""
    for ln in md.splitlines():
        if ln.startswith("|"):
            if not prev.startswith("|"):
                tables.append([])
            tables[-1].append(ln)
        prev = ln
    return tables


def _row(html_text: str, cell: str) -> str:
    rows = re.findall(rf'<tr[^>]*data-cell="{re.escape(cell)}"[^>]*>(.*?)</tr>', html_text)
    assert len(rows) == 1, cell
    return rows[0]


def test_defended_report(tmp_path: Path) -> None:
    results = defended_results()
    evs = cell_list(results)
    paths = write_report(results, tmp_path)
    html_text = paths["html"].read_text(encoding="utf-8")
    md = paths["md"].read_text(encoding="utf-8")

    # summary: defence column and badges
    assert "<th title=\"input defence in front of the model (– for none)\">Defence</th>" in html_text
    plain = _row(html_text, evs[6]["id"])
    assert "<td>bits&lt;b&gt;3|x&lt;/b&gt;</td>" in plain
    assert 'class="badge warn"' in plain and "non-adaptive" in plain and "may overstate robustness" in plain
    assert "adaptive (BPDA)" in _row(html_text, evs[8]["id"])
    assert "adaptive (EOT×10)" in _row(html_text, evs[11]["id"]) and "non-adaptive" in _row(html_text, evs[10]["id"])
    assert "non-adaptive" not in _row(html_text, evs[9]["id"])  # gradient-free attacks need no BPDA/EOT
    assert "non-adaptive" not in _row(html_text, evs[1]["id"])  # no defence
    assert re.findall(r"<td>(.*?)</td>", _row(html_text, evs[0]["id"]))[1] == "–"
    assert "universal (fit on 500, fooling rate 62.0%)" in _row(html_text, evs[3]["id"])
    assert "min-norm sweep" in _row(html_text, evs[13]["id"]) and "no gradients" in _row(html_text, evs[4]["id"])

    # worst case, matrix, stages
    assert 'id="worst-case"' in html_text and "Worst-case robust acc." in html_text
    worst = html_text.split('id="worst-case"')[1].split("</section>")[0]
    assert "pgd (adaptive)" in worst and "<td class=\"r\">9.0%</td>" in worst  # noise, 8/255: below the best 10%
    assert "Defence × attack matrix" in html_text and "pgd (adaptive) @ linf 8/255" in html_text
    matrix = html_text.split("Defence × attack matrix")[1].split("</table>")[0]
    assert "<td>none</td>" in matrix and "85.0%" in matrix and "80.0%" in matrix  # clean accuracy per defence
    assert matrix.count('class="badge warn"') == 3  # plain pgd on both defences, plain deepfool on noise
    assert "Cascade stages" in html_text and "apgd-dlr" in html_text and "15.0%" in html_text
    assert "model: bits&lt;b&gt;3|x&lt;/b&gt;" in html_text

    # escaped, one figure (no example files), nothing external
    assert "<b>" not in html_text and "<script" not in html_text.lower()
    images = _images(html_text)
    assert len(images) == 1 and images[0].startswith(PNG_MAGIC)

    # markdown: the same tables, well-formed and escaped
    for title in ("## Worst case over attacks", "## Defences", "### Defence × attack matrix", "## Cascade stages"):
        assert title in md
    assert "[non-adaptive]" in md and "[adaptive (BPDA)]" in md and "[adaptive (EOT×10)]" in md
    assert "universal (fit on 500, fooling rate 62.0%)" in md and "pgd (adaptive) @ linf 8/255" in md
    assert "bits\\<b\\>3\\|x\\</b\\>" in md and "<b>" not in md
    tables = _md_tables(md)
    assert len(tables) == 1 + 1 + 2 + 1  # summary, worst case, defences + matrix, one cascade
    for table in tables:
        n = table[0].count("|")
        assert all(ln.count("|") - ln.count("\\|") == n for ln in table)
    summary = tables[0]
    assert summary[0].startswith("| Attack | Defence | Norm |") and len(summary) == 2 + len(evs)
    assert len(tables[1]) == 2 + len(results["worst_case"])
    assert len(tables[3]) == 2 + 3 and "⚠" in tables[3][3]  # rows: none, bits, noise
    assert tables[4][2].startswith("| start | (clean) |") and len(tables[4]) == 2 + 1 + len(STAGES)


def test_old_results_with_worst_case(tmp_path: Path) -> None:
    """Older records lack defence fields: no defence column or matrix, the worst case still shows."""
    results = fake_results()
    results["worst_case"] = [{"defense": None, "norm": "linf", "eps": e / 255, "eps_255": float(e), "targeted": False,
                              "robust_accuracy": 0.0, "attacks": ["fgsm-linf-8.0-untargeted", "pgd-linf-8.0-untargeted"],
                              "best_attack": "pgd-linf-8.0-untargeted"} for e in (8,)]
    paths = write_report(results, tmp_path)
    html_text, md = paths["html"].read_text(encoding="utf-8"), paths["md"].read_text(encoding="utf-8")
    assert "Worst case over attacks" in html_text and "Defence × attack matrix" not in html_text
    assert ">Defence</th>" in html_text  # the worst-case table's own column
    assert "non-adaptive" not in html_text and "Cascade stages" not in html_text
    assert "| Attack | Norm |" in md and "## Worst case over attacks" in md and "Defence × attack matrix" not in md


def test_curve_with_defences(tmp_path: Path) -> None:
    png = robust_accuracy_vs_eps(defended_results())
    assert png.startswith(PNG_MAGIC)
    (tmp_path / "curve.png").write_bytes(png)
