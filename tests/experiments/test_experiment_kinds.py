"""The experiment-kind extension point: a kind is a :class:`medsec.runs.kind.Kind` in the
``KINDS`` registry; configs with ``kind:`` are validated by its model and run through the one
dispatch (:func:`medsec.runs.run`) on the shared run services."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch

from medsec.config.loader import validate_config
from medsec.config.schema import RunConfig
from medsec.errors import ConfigError
from medsec.registry import KINDS
from medsec.runs import Kind, RunContext

pytestmark = pytest.mark.unit


class _ToyConfig(RunConfig):
    kind: Literal["toy"] = "toy"
    name: str = "toy"
    size: int = 3


def _run_toy(ctx: RunContext) -> None:
    for i in range(ctx.cfg.size):
        if ctx.store.done(f"cell{i}") is None:
            with ctx.cell(f"cell{i}") as gen:
                ctx.store.put(f"cell{i}", {"draw": float(torch.rand(1, generator=gen))})
    ctx.store.update(value=ctx.cfg.size * 2)


TOY = Kind(name="toy", config=_ToyConfig, run=_run_toy, plan=lambda cfg: [f"cell{i}" for i in range(cfg.size)],
           render=lambda results, out: ("<html></html>", "# toy\n"), summary=lambda results, out: ["toy"])


@pytest.fixture(autouse=True, scope="module")
def toy_kind() -> Iterator[None]:
    """The toy kind is registered while this module's tests run, and removed afterwards."""
    KINDS.register("toy")(TOY)  # type: ignore[arg-type]
    yield
    KINDS.unregister("toy")


def test_kind_config_validated_by_its_own_model() -> None:
    cfg = validate_config({"kind": "toy", "size": 5})
    assert isinstance(cfg, _ToyConfig) and cfg.size == 5


def test_unknown_key_in_kind_names_valid_keys() -> None:
    with pytest.raises(ConfigError, match="unknown key 'sise'.*Did you mean 'size'"):
        validate_config({"kind": "toy", "sise": 5})


def test_unknown_kind_suggests() -> None:
    with pytest.raises(ConfigError, match="unknown experiment kind 'tyo'.*'toy'"):
        validate_config({"kind": "tyo"})
    assert "evasion" in KINDS and "toy" in KINDS.list()


def test_a_registered_kind_cannot_be_replaced() -> None:
    with pytest.raises(ValueError, match="already registered"):
        KINDS.register("evasion")(TOY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="built in"):
        KINDS.unregister("evasion")
    with pytest.raises(ConfigError, match="not registered"):
        KINDS.unregister("no_such_kind")


def test_run_dispatches_through_the_registry_and_the_store(tmp_path: Path) -> None:
    from medsec.runs import run

    results = run(validate_config({"kind": "toy", "size": 4}), tmp_path)
    assert results["value"] == 8 and results["kind"] == "toy" and results["status"] == "complete"
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert list(on_disk["cells"]) == ["cell0", "cell1", "cell2", "cell3"]
    assert on_disk["seeds"]["global"] == 0 and set(on_disk["seeds"]["cells"]) == set(on_disk["cells"])
    assert (tmp_path / "report.html").is_file() and (tmp_path / "config.resolved.yaml").is_file()
    assert KINDS.get("toy") is TOY
