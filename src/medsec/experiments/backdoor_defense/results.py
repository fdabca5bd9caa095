"""The backdoor_defense kind's ``results.json``; ``docs/schemas/backdoor_defense.schema.json``
is generated from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medsec.runs.schema import Record, Results


class Backdoor(Record):
    trigger: str
    attack: Literal["poisoning", "baple", "badmatch"]
    params: dict[str, Any]
    target: int | None
    rate: float
    policy: str
    n_poisoned: int
    model: str = Field(description="trained, or cached (reused from the cache folder)")
    metrics: dict[str, Any] = Field(description="CA and ASR of the backdoored model (backdoors.backdoor_metrics)")


class DefenceCell(Record):
    backdoor: str
    kind: Literal["detector", "repair"]
    label: str
    params: dict[str, Any]
    metrics: dict[str, Any] = Field(description="detectors: AUROC, TPR@5%FPR (or Neural Cleanse's anomaly indices); "
                                                "repairs: CA and ASR before and after")


class BackdoorDefenseResults(Results):
    """``kind: backdoor_defense`` results."""

    kind: Literal["backdoor_defense"]
    cells: dict[str, DefenceCell]  # type: ignore[assignment]
    data: dict[str, Any]
    backdoors: dict[str, Backdoor]
    detectors: list[str]
    repairs: list[str]


__all__ = ["BackdoorDefenseResults"]
