"""The evasion kind's ``results.json`` (the envelope of :mod:`medsec.runs.schema` plus these
sections); ``docs/schemas/evasion.schema.json`` is generated from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from medsec.runs.schema import Record, Results


class Threat(Record):
    norm: Literal["linf", "l2", "patch"]
    eps: float = Field(description="in input units ([0, 1] pixels); a pixel fraction for patch")
    targeted: bool


class CellMetrics(Record):
    robust_accuracy: float = Field(description="share of all evaluated images still classified right")
    attack_success_rate: float | None = Field(description="share of attacked (clean-correct) images broken")
    clean_accuracy: float
    n_attacked: int


class EvasionCell(Record):
    """One (defence, attack, threat, plain/adaptive) cell."""

    id: str
    attack: str = Field(description="the registered attack name")
    label: str
    params: dict[str, Any] = Field(description="the attack's resolved parameters")
    threat: Threat
    target: int | str | None
    defense: str | None = Field(description="the defence label (null: the undefended model)")
    adaptive: bool = Field(description="attacked through the defence with BPDA/EOT")
    metrics: CellMetrics
    runtime_s: float
    seed: int
    examples: str | None = Field(description="the .npz of example images, relative to the run folder")
    robust_bits: str = Field(description="hex of the packed per-image robust flags (for worst cases)")


class Data(Record):
    name: str
    classes: list[str]
    n_eval: int
    image_shape: list[int]


class Model(Record):
    name: str
    task: str
    num_classes: int
    checkpoint: str | None
    train: dict[str, Any] | None = Field(description="training facts and history when the run trained the model")


class Clean(BaseModel):
    accuracy: float
    n: int


class WorstCase(Record):
    defense: str | None
    norm: str
    eps: float
    targeted: bool
    robust_accuracy: float = Field(description="an image counts as robust only if every attack at this budget failed")
    attacks: list[str]
    best_attack: str


class EvasionResults(Results):
    """``kind: evasion`` results."""

    kind: Literal["evasion"]
    cells: dict[str, EvasionCell]  # type: ignore[assignment]
    data: Data
    model: Model
    clean: Clean
    defenses: list[dict[str, Any]] = Field(description="each defence's label, name, params, differentiable, stochastic")
    worst_case: list[WorstCase] | None = Field(None, description="set when the run completes")
    matrix: dict[str, Any] | None = Field(None, description="the defence x attack matrix of the report")


__all__ = ["EvasionCell", "EvasionResults"]
