"""The building blocks of every experiment kind's config schema (pydantic).

Every component is ``{name, params}`` resolved through a registry; unknown keys are
errors; eps may be written as ``8/255``. Each kind's full schema lives in its folder
(``medsec/experiments/<kind>/config.py``) and is built from these sections. See
``configs/`` for examples and ``docs/config.md`` for the reference.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_FRACTION = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:/\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$")


def parse_number(value: Any) -> float:
    """A float from a number or a string such as ``"8/255"`` or ``"0.03"`` (never eval)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m:
            num = float(m.group(1))
            if m.group(2) is not None:
                den = float(m.group(2))
                if den == 0:
                    raise ValueError(f"division by zero in {value!r}")
                return num / den
            return num
    raise ValueError(f"expected a number or a fraction like 8/255, got {value!r}")


class StrictModel(BaseModel):
    """A config section that refuses unknown keys (every medsec config section is one)."""

    model_config = ConfigDict(extra="forbid")


def _fractions(value: Any) -> Any:
    """Parameter values written as fractions (``step_size: 2/255``) become floats; any
    other value, plain numeric strings included, is left as written."""
    if isinstance(value, str) and "/" in value and _FRACTION.match(value):
        return parse_number(value)
    if isinstance(value, dict):
        return {k: _fractions(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fractions(v) for v in value]
    return value


class Component(StrictModel):
    """A registry entry: ``{name: ..., params: {...}}``; fractions such as ``2/255`` in
    params are read as numbers."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        return _fractions(value) if isinstance(value, dict) else value


class DataConfig(Component):
    """Dataset; ``train_split``/``eval_split``/``val_split`` are passed as ``split`` when
    the dataset takes one; otherwise the data are split at random by ``eval_fraction``."""

    train_split: str = "train"
    eval_split: str = "test"
    val_split: str | None = None
    eval_fraction: float = Field(0.2, gt=0, lt=1)


class ModelConfig(Component):
    """Model from the registry (``small_cnn``, ``timm``, ``timm:resnet18``, ...) or a
    checkpoint written by medsec (``checkpoint: path/model.safetensors``)."""

    name: str = "small_cnn"
    checkpoint: str | None = None


class AdversarialTrainingConfig(StrictModel):
    """Adversarial training (medsec.training.adversarial): PGD-AT (Madry et al. 2018) or
    TRADES (Zhang et al. 2019); eps may be written as ``4/255``."""

    method: Literal["pgd_at", "trades"] = "pgd_at"
    norm: Literal["linf", "l2"] = "linf"
    eps: float = Field(4 / 255, gt=0, le=1)
    steps: int = Field(5, ge=1)
    step_size: float | None = Field(None, gt=0, description="default 2.5 * eps / steps")
    beta: float = Field(6.0, ge=0, description="TRADES only: weight of the KL term")

    @field_validator("eps", "step_size", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        return None if value is None else parse_number(value)


class TrainConfig(StrictModel):
    epochs: int = Field(5, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(128, ge=2)
    weight_decay: float = Field(5e-4, ge=0)
    augment: bool = True
    limit: int | None = Field(None, ge=1, description="use at most this many training images")
    adversarial: AdversarialTrainingConfig | None = Field(None, description="train with PGD-AT or TRADES")


class ExecutorConfig(StrictModel):
    """Where a run's cells execute (``medsec ls executors``; ``docs/scale.md``).

    Written as a mapping (``executor: {name: ray, address: auto, num_gpus_per_cell: 0.25}``) or
    as a string (``executor: sequential``, ``executor: process:4``, ``executor: ray``). The
    executor never changes a cell's numbers (each cell has its own seed), so a rerun under
    another executor resumes the same run.
    """

    name: str = Field("sequential", description="sequential, process or ray (medsec ls executors)")
    workers: int | None = Field(None, ge=1, description="worker processes / Ray actors (default: what the CPUs or GPUs allow)")
    address: str | None = Field(None, description="ray only: the cluster (auto, ray://host:10001); default RAY_ADDRESS, "
                                "else a local Ray started for the run")
    num_cpus_per_cell: float = Field(1, gt=0, description="CPUs (and torch threads) each worker gets")
    num_gpus_per_cell: float = Field(0, ge=0, description="GPUs each worker gets (fractions share a GPU)")
    max_retries: int = Field(2, ge=0, description="reruns of a cell whose worker died or raised, before it is "
                             "recorded as failed")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return parse_executor(value) if isinstance(value, str) else value


def parse_executor(text: str) -> dict[str, Any]:
    """``"process:4"`` -> ``{"name": "process", "workers": 4}``; ``"ray"`` -> ``{"name": "ray"}``.

    Example:
        >>> parse_executor("process:2")
        {'name': 'process', 'workers': 2}
    """
    name, _, workers = str(text).strip().partition(":")
    if not name:
        raise ValueError(f"an executor is written NAME or NAME:WORKERS (sequential, process:2, ray), not {text!r}")
    if not workers:
        return {"name": name}
    if not workers.isdigit() or int(workers) < 1:
        raise ValueError(f"the worker count in {text!r} must be a positive whole number (e.g. process:2)")
    return {"name": name, "workers": int(workers)}


class RunConfig(StrictModel):
    """The keys every kind's config has: ``kind``, ``name``, ``seed``, ``device`` and
    ``executor``."""

    kind: str
    name: str = "experiment"
    seed: int = 0
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig,
                                     description="where the cells run: sequential, process:N or ray (docs/scale.md)")
