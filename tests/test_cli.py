"""The command line: subcommands work; errors are one readable line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medsec.cli import main

pytestmark = pytest.mark.unit

TINY = {
    "name": "cli-tiny",
    "data": {"name": "synthetic_he", "params": {"n": 120, "size": 16}},
    "model": {"name": "small_cnn", "params": {"width": 8}},
    "train": {"epochs": 1, "batch_size": 32},
    "threat": {"eps": ["4/255"]},
    "attacks": [{"name": "fgsm"}],
    "eval": {"sample_limit": 20},
}


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_ls_lists_registries(capsys):
    assert main(["ls", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "fgsm" in out and "pgd" in out and "linf" in out
    for kind in ("models", "datasets", "metrics", "objectives", "defenses", "triggers"):
        assert main(["ls", kind]) == 0
    assert "synthetic_he" in capsys.readouterr().out


def test_validate_run_report_train(tmp_path, capsys):
    cfg = _write(tmp_path, TINY)
    assert main(["validate", str(cfg)]) == 0
    assert "valid" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--set", "eval.sample_limit=16"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "fgsm" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["clean"]["n"] == 16
    (out / "report.html").unlink()
    assert main(["report", str(out / "results.json")]) == 0
    assert (out / "report.html").is_file()
    assert main(["train", str(cfg), "--out", str(tmp_path / "trained")]) == 0
    assert (tmp_path / "trained" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "missing.yaml"], "does not exist"),
        (["validate", "{cfg}", "--set", "attaks=[]"], "Did you mean 'attacks'"),
        (["validate", "{cfg}", "--set", "attacks.0.name=fgsn"], "Did you mean 'fgsm'"),
        (["report", "missing/results.json"], "missing"),
        (["run", "{cfg}", "--set", "data.params.n=0"], "n >= 2"),
        (["run", "{cfg}", "--set", "data.name=image_folder", "--set", "data.params={root: '{empty}'}"], "no images"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, args, fragment):
    cfg = _write(tmp_path, TINY)
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{cfg}", str(cfg)).replace("{empty}", str(tmp_path / "empty")) for a in args]
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsec: error:") and fragment in err, err
    assert "\n" not in err and "Traceback" not in err


def test_console_script_exits_nonzero_without_traceback(tmp_path):
    cfg = _write(tmp_path, {**TINY, "unknown_key": 1})
    proc = subprocess.run([sys.executable, "-m", "medsec.cli", "validate", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown key 'unknown_key'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
