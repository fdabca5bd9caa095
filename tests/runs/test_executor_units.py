"""The executor layer's contracts, without starting workers: config forms, refusals, retries
bookkeeping, shards, and the one error when Ray is missing."""

from __future__ import annotations

import sys
from collections import deque

import pytest

from medsec.cli import main
from medsec.config.schema import ExecutorConfig
from medsec.errors import ConfigError, MedsecError
from medsec.registry import EXECUTORS
from medsec.runs import Job, Shard, build_executor
from medsec.runs.executor import Attempts, JobResult
from medsec.runs.executors.process import death_text

pytestmark = pytest.mark.unit


def test_three_executors_are_registered_and_listed(capsys):
    assert EXECUTORS.list() == ["process", "ray", "sequential"]
    assert main(["ls", "executors"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("sequential", "process", "ray"))


@pytest.mark.parametrize(("spec", "name", "workers"), [
    ("sequential", "sequential", None), ("process:3", "process", 3), ("ray", "ray", None),
    ({"name": "ray", "address": "auto", "num_gpus_per_cell": 0.25, "max_retries": 2}, "ray", None),
])
def test_executor_config_forms(spec, name, workers):
    cfg = ExecutorConfig.model_validate(spec)
    assert cfg.name == name and cfg.workers == workers
    assert build_executor(cfg).name == name


def test_executor_params_are_checked():
    ex = build_executor({"name": "ray", "address": "auto", "num_cpus_per_cell": 2, "num_gpus_per_cell": 0.25})
    assert (ex.address, ex.num_cpus_per_cell, ex.num_gpus_per_cell) == ("auto", 2.0, 0.25)
    with pytest.raises(ConfigError, match="executor 'process' has no parameter 'address'"):
        build_executor({"name": "process", "address": "auto"})
    with pytest.raises(ConfigError, match="executor 'sequential' has no parameter 'workers'"):
        build_executor("sequential:2")
    with pytest.raises(ConfigError, match="unknown executor 'rayy'.*ray"):
        build_executor("rayy")
    with pytest.raises(ValueError, match="positive whole number"):
        ExecutorConfig.model_validate("process:0")
    with pytest.raises(ValueError, match="greater than 0"):
        ExecutorConfig.model_validate({"name": "ray", "num_cpus_per_cell": 0})


def test_every_kind_config_takes_an_executor_section():
    from medsec.registry import KINDS

    for name in KINDS.list():
        kind = KINDS.get(name)
        assert "executor" in kind.config.model_fields, name


def test_shard_parse_and_partition():
    assert Shard.parse("1/3") == Shard(1, 3)
    for bad in ("3/3", "-1/2", "a/2", "1", "1/0"):
        with pytest.raises(ConfigError, match="--shard takes I/N"):
            Shard.parse(bad)
    owned = [[p for p in range(10) if Shard(i, 3).owns(p)] for i in range(3)]
    assert sorted(sum(owned, [])) == list(range(10))  # disjoint and complete


def test_attempts_retry_then_fail():
    a = Attempts(max_retries=2)
    job = Job("j", ("j",))
    pending: deque[Job] = deque([Job("k", ("k",))])
    for _ in range(2):
        a.started(job)
        assert a.failed(job, "boom", pending) is None
        assert pending.popleft() == job  # retried next
    a.started(job)
    out = a.failed(job, "boom", pending)
    assert list(pending) == [Job("k", ("k",))]
    assert out is not None and out.error == "boom" and out.attempts == 3
    assert a.done(Job("k", ("k",)), JobResult([("k", {})])).records == [("k", {})]


def test_workers_that_cannot_start_stop_the_run():
    a = Attempts(max_retries=0, max_start_failures=2)
    a.start_failed("ImportError")
    with pytest.raises(MedsecError, match="2 workers in a row failed to start; the last error: ImportError"):
        a.start_failed("ImportError")


def test_death_text_names_the_signal():
    assert "SIGKILL (killed, or out of memory)" in death_text(-9)
    assert "exited with status 1" in death_text(1)


def test_ray_missing_is_one_error_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    from medsec.runs.executors.ray import import_ray

    with pytest.raises(ConfigError, match=r"pip install 'medsec\[ray\]'"):
        import_ray()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\ndata: {name: synthetic_he, params: {n: 32, size: 8}}\nmodel: {name: small_cnn, params: "
                   "{width: 4}}\ntrain: {epochs: 1}\nattacks: [{name: fgsm}]\neval: {sample_limit: 4, examples: 0}\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "medsec[ray]" in err


def test_bad_executor_and_shard_on_the_command_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\ndata: {name: synthetic_he, params: {n: 32, size: 8}}\nattacks: [{name: fgsm}]\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--executor", "process:x"]) == 2
    assert "positive whole number" in capsys.readouterr().err
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--shard", "2/2"]) == 2
    assert "--shard takes I/N" in capsys.readouterr().err


def test_executor_section_does_not_block_resume(tmp_path):
    from medsec.config import validate_config
    from medsec.runs import run

    raw = {"name": "tiny", "data": {"name": "synthetic_he", "params": {"n": 48, "size": 8}},
           "model": {"name": "small_cnn", "params": {"width": 4}}, "train": {"epochs": 1},
           "threat": {"eps": ["8/255"]}, "attacks": [{"name": "fgsm"}], "eval": {"sample_limit": 4, "examples": 0}}
    first = run(validate_config(raw), tmp_path, report=False)
    again = run(validate_config({**raw, "executor": "process:2"}), tmp_path, report=False)
    assert again["cells"] == first["cells"] and again["provenance"]["resumed"]


def test_cli_exit_status_names_failed_cells_and_shards(capsys):
    from medsec.cli import closing_status

    assert closing_status({"failed": {"a": {"error": "x", "attempts": 3}}, "cells": {}, "seeds": {"cells": {"a": 1}}}) == 1
    assert "1 cells failed after their retries (a)" in capsys.readouterr().err
    assert closing_status({"failed": {}, "shard": {"index": 0, "count": 2}, "cells": {"a": {}},
                     "seeds": {"cells": {"a": 1, "b": 2}}}) == 0
    assert "shard 0/2: 1 of 2 cells; join the shards with medsec merge" in capsys.readouterr().out

