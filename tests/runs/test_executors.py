"""Executors, shards and merge, for real: the demo config gives the same numbers under
``sequential``, ``process:2`` and a local Ray cluster (the other kinds: test_executors_kinds.py);
a worker killed mid-run is replaced and its cell rerun; Ctrl-C keeps the finished cells;
``--shard`` + ``merge`` equals the unsharded run.

Every process here runs torch with one thread, so the numbers compared do not depend on the
machine's thread count (workers get ``num_cpus_per_cell: 1``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from executor_checks import same_numbers

from medsec.config import validate_config
from medsec.demo import demo_config
from medsec.errors import ConfigError
from medsec.runs import Shard, build_executor, run
from medsec.runs.merge import merge

pytestmark = pytest.mark.effect

# a smaller evasion grid than the demo for the fault, shard and Ctrl-C tests: 8 cells of PGD-40 and
# MI-FGSM-40 at four budgets on 200 synthetic H&E images
SMALL = {"name": "small", "seed": 0, "data": {"name": "synthetic_he", "params": {"n": 600, "size": 16}},
         "model": {"name": "small_cnn", "params": {"width": 8}}, "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
         "threat": {"eps": ["1/255", "2/255", "4/255", "8/255"]},
         "attacks": [{"name": "pgd", "params": {"steps": 40}}, {"name": "mifgsm", "params": {"steps": 40}}],
         "eval": {"sample_limit": 200, "examples": 2}}


@pytest.fixture(scope="module")
def demo(one_thread, tmp_path_factory):
    cfg = demo_config("synthetic")
    out = tmp_path_factory.mktemp("demo-seq")
    return cfg, run(cfg, out, executor=build_executor("sequential"), report=False)


@pytest.fixture(scope="module")
def small(one_thread, tmp_path_factory):
    cfg = validate_config(SMALL)
    out = tmp_path_factory.mktemp("small-seq")
    res = run(cfg, out, executor=build_executor("sequential"), report=False)
    # a model and attacks whose numbers can differ: accurate, and broken more at larger budgets
    robust = [c["metrics"]["robust_accuracy"] for c in res["cells"].values()]
    assert res["clean"]["accuracy"] > 0.8 and min(robust) < res["clean"]["accuracy"] - 0.2
    return cfg, res


def run_and_kill_one_worker(cfg: Any, out: Path, ex: Any, n_cells: int) -> tuple[dict[str, Any], int | None]:
    """Run in a thread; once a cell has finished (and at least two are left), SIGKILL a worker by pid."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(res=run(cfg, out, executor=ex, report=False)))
    thread.start()
    killed = None
    deadline = time.monotonic() + 1200
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            done = json.loads((out / "results.json").read_text())["cells"]
        except (OSError, ValueError, KeyError):
            continue
        live = [p for p in ex.pids if psutil.pid_exists(p)]
        if done and len(done) < n_cells - 2 and live:
            os.kill(live[0], signal.SIGKILL)
            killed = live[0]
    thread.join()
    return box["res"], killed


def test_worker_killed_mid_run_is_replaced_and_numbers_equal_sequential(small, tmp_path):
    """process:2; one worker is killed (SIGKILL, by pid) once a cell has finished."""
    cfg, seq = small
    ex = build_executor({"name": "process", "workers": 2, "num_cpus_per_cell": 1, "max_retries": 2})
    res, killed = run_and_kill_one_worker(cfg, tmp_path, ex, len(seq["cells"]))
    assert killed is not None, "no worker was running after the first cell"
    assert res["status"] == "complete" and not res["failed"]
    assert len(ex.pids) >= 3  # the killed worker was replaced
    assert res["provenance"]["executor"] == "process"
    same_numbers(seq, res)


def test_ray_actor_killed_mid_run_is_replaced(small, local_ray, tmp_path):
    cfg, seq = small
    ex = build_executor({"name": "ray", "workers": 2, "num_cpus_per_cell": 1, "max_retries": 2})
    res, killed = run_and_kill_one_worker(cfg, tmp_path, ex, len(seq["cells"]))
    assert killed is not None, "no actor was running after the first cell"
    assert res["status"] == "complete" and not res["failed"]
    assert len(ex.pids) >= 3  # a new actor took the killed one's place
    same_numbers(seq, res)


def test_demo_same_numbers_under_process_and_ray(demo, local_ray, tmp_path):
    cfg, seq = demo
    for spec in ("process:2", "ray:2"):
        res = run(cfg, tmp_path / spec.replace(":", "-"), executor=build_executor(spec), report=False)
        assert res["provenance"]["executor"] == spec.split(":")[0] and res["status"] == "complete"
        same_numbers(seq, res)


def test_shards_merge_to_the_unsharded_run(small, tmp_path):
    cfg, seq = small
    parts = []
    for i in range(2):
        part = run(cfg, tmp_path / f"s{i}", shard=Shard(i, 2), report=False)
        assert part["status"] == "incomplete" and part["shard"] == {"index": i, "count": 2}
        assert 0 < len(part["cells"]) < len(seq["cells"])
        parts.append(part)
    assert not set(parts[0]["cells"]) & set(parts[1]["cells"])
    merged = merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert merged["status"] == "complete" and merged["shard"] is None
    assert merged["provenance"]["merged_from"] == [str(tmp_path / "s0"), str(tmp_path / "s1")]
    same_numbers(seq, merged)
    assert (tmp_path / "merged" / "report.html").is_file()
    ex = [c["examples"] for c in merged["cells"].values() if c.get("examples")]
    assert ex and all((tmp_path / "merged" / e).is_file() for e in ex)

    # overlapping, repeated, mismatched and incomplete shards are refused
    import shutil

    shutil.copytree(tmp_path / "s0", tmp_path / "s0-copy")
    with pytest.raises(ConfigError, match="more than one shard"):
        merge([tmp_path / "s0", tmp_path / "s0-copy", tmp_path / "s1"], tmp_path / "m2")
    with pytest.raises(ConfigError, match="given twice"):
        merge([tmp_path / "s0", tmp_path / "s0"], tmp_path / "m3")
    shutil.copytree(tmp_path / "s1", tmp_path / "other")
    other = json.loads((tmp_path / "other" / "results.json").read_text())
    other["config"]["attacks"][1]["params"]["steps"] = 30
    (tmp_path / "other" / "results.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match=r"ran another config than .* \(changed: attacks\)"):
        merge([tmp_path / "s0", tmp_path / "other"], tmp_path / "m5")
    with pytest.raises(ConfigError, match="not an empty folder"):
        merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")


def test_merge_refuses_missing_cells(small, tmp_path):
    cfg, _ = small
    run(cfg, tmp_path / "a", shard=Shard(0, 3), report=False)
    run(cfg, tmp_path / "b", shard=Shard(2, 3), report=False)
    with pytest.raises(ConfigError, match=r"missing .*the shards say the run has 3 parts|3 parts"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")


def test_ctrl_c_keeps_finished_cells_and_rerun_finishes_the_rest(tmp_path):
    """SIGINT to `medsec run --executor process:2`: exit 130, the finished cells kept, no worker
    left; the same command again runs only the missing cells."""
    import yaml

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "run"
    env = {**os.environ, "MEDSEC_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medsec", "run", str(config), "--out", str(out), "--executor", "process:2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 1200
    children: list[psutil.Process] = []
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            cells = json.loads((out / "results.json").read_text())["cells"]
        except (OSError, ValueError, KeyError):
            continue
        if cells:
            children = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    partial = json.loads((out / "results.json").read_text())
    assert partial["status"] == "running" and 1 <= len(partial["cells"]) < 8
    psutil.wait_procs(children, timeout=30)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr
    done = json.loads((out / "results.json").read_text())
    assert done["status"] == "complete" and len(done["cells"]) == 8
    for cell, record in partial["cells"].items():
        assert done["cells"][cell] == record  # kept, not rerun


def test_a_failing_cell_is_retried_then_recorded_and_the_rest_finish(tmp_path, monkeypatch):
    import medsec.experiments.evasion.run as evasion

    raw = {"name": "tiny", "data": {"name": "synthetic_he", "params": {"n": 64, "size": 16}},
           "model": {"name": "small_cnn", "params": {"width": 4}}, "train": {"epochs": 1},
           "threat": {"eps": ["2/255", "8/255"]}, "attacks": [{"name": "fgsm"}],
           "eval": {"sample_limit": 8, "examples": 0}, "executor": {"max_retries": 1}}
    cfg = validate_config(raw)
    calls: list[str] = []
    original = evasion.run_job

    def flaky(prep, job, *args):
        calls.append(job.id)
        if job.id == "fgsm-linf-8-untargeted":
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(prep, job, *args)

    monkeypatch.setattr(evasion, "run_job", flaky)
    res = run(cfg, tmp_path, report=False)
    assert calls.count("fgsm-linf-8-untargeted") == 2  # 1 + max_retries
    assert res["status"] == "incomplete" and list(res["cells"]) == ["fgsm-linf-2-untargeted"]
    assert res["failed"]["fgsm-linf-8-untargeted"]["attempts"] == 2
    assert "CUDA out of memory" in res["failed"]["fgsm-linf-8-untargeted"]["error"]

    monkeypatch.setattr(evasion, "run_job", original)
    calls.clear()
    monkeypatch.setattr(evasion, "run_job", lambda prep, job, *a: calls.append(job.id) or original(prep, job, *a))
    done = run(cfg, tmp_path, report=False)
    assert calls == ["fgsm-linf-8-untargeted"] and done["status"] == "complete" and not done["failed"]


def test_a_medsec_error_in_a_cell_stops_the_run(tmp_path, monkeypatch):
    import medsec.experiments.evasion.run as evasion

    raw = {"name": "tiny", "data": {"name": "synthetic_he", "params": {"n": 64, "size": 16}},
           "model": {"name": "small_cnn", "params": {"width": 4}}, "train": {"epochs": 1},
           "threat": {"eps": ["8/255"]}, "attacks": [{"name": "fgsm"}], "eval": {"sample_limit": 8, "examples": 0}}

    def bad(*a):
        raise ConfigError("target class 9 is out of range")

    monkeypatch.setattr(evasion, "run_job", bad)
    with pytest.raises(ConfigError, match="out of range"):
        run(validate_config(raw), tmp_path, report=False)
