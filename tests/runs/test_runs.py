"""The run services every kind shares: one resume policy (same config resumes; a config that
only widens the grid keeps the finished cells; any other change is refused, naming the keys;
``--restart`` starts over), atomic saves after every cell, per-cell seeds independent of the
order, and one results envelope."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch

from medsec.config.loader import validate_config
from medsec.config.schema import RunConfig
from medsec.errors import ConfigError, DataError
from medsec.registry import KINDS
from medsec.runs import Kind, RunContext, run
from medsec.runs.grid import cell_seed
from medsec.runs.store import Axis, RunStore, compare_configs

pytestmark = pytest.mark.unit


class _GridConfig(RunConfig):
    kind: Literal["grid_toy"] = "grid_toy"
    name: str = "grid-toy"
    values: list[int] = [1, 2]
    scale: float = 1.0
    stop_after: int | None = None  # raise KeyboardInterrupt after this many cells (an interruption)


RAN: list[str] = []


def _plan(cfg: _GridConfig) -> list[str]:
    return [f"v{v}" for v in cfg.values]


def _run(ctx: RunContext) -> None:
    ids = _plan(ctx.cfg)
    ctx.store.plan(ids)
    for n, (cid, v) in enumerate(zip(ids, ctx.cfg.values)):
        if ctx.store.done(cid) is not None:
            continue
        if ctx.cfg.stop_after is not None and n >= ctx.cfg.stop_after:
            raise KeyboardInterrupt
        with ctx.cell(cid) as gen:
            RAN.append(cid)
            ctx.store.put(cid, {"value": v * ctx.cfg.scale, "draw": float(torch.rand(1, generator=gen)),
                                "global_draw": float(torch.rand(1))})


GRID = Kind(name="grid_toy", config=_GridConfig, run=_run, plan=_plan, axes=(Axis("values"),),
            render=lambda results, out: ("<html></html>", "# grid\n"), summary=lambda results, out: [])


@pytest.fixture(autouse=True, scope="module")
def grid_kind() -> Iterator[None]:
    """The toy grid kind is registered while this module's tests run, and removed afterwards."""
    KINDS.register("grid_toy")(GRID)  # type: ignore[arg-type]
    yield
    KINDS.unregister("grid_toy")


def _cfg(**over: object) -> _GridConfig:
    return validate_config({"kind": "grid_toy", **over})


def test_compare_configs() -> None:
    axes = [Axis("threat.eps"), Axis("backbones", ordered=True)]
    old = {"seed": 0, "threat": {"eps": [1, 2]}, "backbones": ["a", "b"], "eval": {"n": 5}}
    assert compare_configs(old, old, axes) == ("same", [])
    assert compare_configs(old, {**old, "threat": {"eps": [2, 4, 1]}}, axes)[0] == "widens"
    assert compare_configs(old, {**old, "backbones": ["a", "b", "c"]}, axes)[0] == "widens"
    assert compare_configs(old, {**old, "backbones": ["c", "a", "b"]}, axes) == ("differs", ["backbones"])
    assert compare_configs(old, {**old, "threat": {"eps": [1]}}, axes) == ("differs", ["threat.eps"])
    assert compare_configs(old, {**old, "eval": {"n": 6}, "seed": 1}, axes) == ("differs", ["seed", "eval.n"])


def test_run_resumes_widens_refuses_and_restarts(tmp_path: Path) -> None:
    RAN.clear()
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(values=[1, 2, 3], stop_after=2), tmp_path)
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["status"] == "running" and list(partial["cells"]) == ["v1", "v2"] and RAN == ["v1", "v2"]
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ConfigError, match=r"another config \(changed: stop_after\)"):
        run(_cfg(values=[1, 2, 3]), tmp_path)  # stop_after is part of the config
    # the same config (the interrupted run's, as if it had no stop): only the missing cell runs,
    # the finished ones are kept as they were
    RAN.clear()
    partial["config"]["stop_after"] = None
    (tmp_path / "results.json").write_text(json.dumps(partial))
    results = run(_cfg(values=[1, 2, 3]), tmp_path)
    assert RAN == ["v3"] and results["status"] == "complete" and list(results["cells"]) == ["v1", "v2", "v3"]
    assert results["cells"]["v1"] == partial["cells"]["v1"] and results["provenance"]["resumed"]
    # widening the grid axis keeps every finished cell and runs the new one only
    RAN.clear()
    wider = run(_cfg(values=[1, 2, 3, 4]), tmp_path)
    assert RAN == ["v4"] and list(wider["cells"]) == ["v1", "v2", "v3", "v4"]
    # any other change is refused with the changed key named; --restart starts over
    with pytest.raises(ConfigError, match=r"another config \(changed: scale\).*--restart"):
        run(_cfg(values=[1, 2, 3, 4], scale=2.0), tmp_path)
    RAN.clear()
    again = run(_cfg(values=[1, 2], scale=2.0), tmp_path, restart=True)
    assert RAN == ["v1", "v2"] and again["cells"]["v2"]["value"] == 4.0 and "resumed" not in again["provenance"]


def test_cell_numbers_do_not_depend_on_the_order_or_the_cells_before(tmp_path: Path) -> None:
    a = run(_cfg(values=[1, 2, 3]), tmp_path / "a", report=False)
    b = run(_cfg(values=[3], seed=0), tmp_path / "b", report=False)
    assert a["cells"]["v3"] == b["cells"]["v3"]  # the generator and the global RNG are seeded per cell
    assert a["seeds"]["cells"]["v3"] == cell_seed(0, "v3") == b["seeds"]["cells"]["v3"]
    c = run(_cfg(values=[3], seed=1), tmp_path / "c", report=False)
    assert c["cells"]["v3"]["draw"] != a["cells"]["v3"]["draw"]


def test_the_callers_rng_state_is_restored(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(_cfg(values=[1]), tmp_path, report=False)
    assert torch.equal(torch.rand(3), expected)


def test_store_refuses_other_kinds_unreadable_results_and_files(tmp_path: Path) -> None:
    store_args = {"kind": "grid_toy", "name": "x", "config": {"a": 1}, "seed": 0, "provenance": {}}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps({"schema_version": 2, "kind": "evasion"}))
    with pytest.raises(ConfigError, match="holds a evasion run.*--restart"):
        RunStore(tmp_path / "other", **store_args)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"schema_version": 2,')
    with pytest.raises(DataError, match="cannot be read.*--restart"):
        RunStore(tmp_path / "broken", **store_args)
    RunStore(tmp_path / "broken", **store_args, restart=True)  # starts over
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunStore(tmp_path / "file", **store_args)


def test_checks_use_one_vocabulary(tmp_path: Path) -> None:
    store = RunStore(tmp_path, kind="grid_toy", name="x", config={}, seed=0, provenance={})
    store.add_checks([{"level": "warning", "code": "c", "message": "m", "cells": ["v1"]},
                      {"code": "d", "message": "n"}])
    assert [c["level"] for c in store.results["checks"]] == ["warning", "warning"]
    assert store.results["checks"][1]["cells"] == []
    with pytest.raises(ValueError, match="level"):
        store.add_checks([{"level": "bad", "code": "c", "message": "m"}])
    with pytest.raises(ValueError, match="envelope"):
        store.update(cells={})
