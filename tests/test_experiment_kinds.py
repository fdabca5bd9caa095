"""The experiment-kind extension point: configs with ``kind:`` dispatch to their own model and runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from medsec.config.loader import validate_config
from medsec.errors import ConfigError
from medsec.experiments import ExperimentKind, get_kind, kind_names, register_kind

pytestmark = pytest.mark.unit


class _ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["toy"] = "toy"
    name: str = "toy"
    seed: int = 0
    device: str = "cpu"
    size: int = 3


def _run_toy(cfg: _ToyConfig, out_dir: Any, report: bool = True) -> dict[str, Any]:
    from medsec.io import atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"schema_version": 1, "task": "toy", "name": cfg.name, "status": "complete", "value": cfg.size * 2}
    atomic_write_json(out / "results.json", results)
    return results


register_kind(ExperimentKind("toy", _ToyConfig, _run_toy))


def test_kind_config_validated_by_its_own_model() -> None:
    cfg = validate_config({"kind": "toy", "size": 5})
    assert isinstance(cfg, _ToyConfig) and cfg.size == 5


def test_unknown_key_in_kind_names_valid_keys() -> None:
    with pytest.raises(ConfigError, match="unknown key 'sise'.*Did you mean 'size'"):
        validate_config({"kind": "toy", "sise": 5})


def test_unknown_kind_suggests() -> None:
    with pytest.raises(ConfigError, match="unknown experiment kind 'tyo'.*'toy'"):
        validate_config({"kind": "tyo"})
    assert "evasion" == kind_names()[0] and "toy" in kind_names()


def test_evasion_cannot_be_replaced() -> None:
    with pytest.raises(ConfigError, match="built-in"):
        register_kind(ExperimentKind("evasion", _ToyConfig, _run_toy))


def test_run_experiment_dispatches(tmp_path: Path) -> None:
    from medsec.eval.runner import run_experiment

    results = run_experiment(validate_config({"kind": "toy", "size": 4}), tmp_path)
    assert results["value"] == 8 and (tmp_path / "results.json").is_file()
    assert get_kind("toy").run is _run_toy
