"""The prompt_backdoor kind's ``results.json``; ``docs/schemas/prompt_backdoor.schema.json`` is
generated from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medsec.runs.schema import Record, Results


class PromptCell(Record):
    id: str
    method: str
    target: int | None
    clean_accuracy: float | None
    backdoor_accuracy: float | None = Field(description="every test image triggered, target-class images included")
    attack_success_rate: float | None = Field(description="triggered images of other classes classified as the target")


class PromptBackdoorResults(Results):
    """``kind: prompt_backdoor`` results."""

    kind: Literal["prompt_backdoor"]
    cells: dict[str, PromptCell]  # type: ignore[assignment]
    model: dict[str, Any]
    settings: dict[str, Any] = Field(description="the BapleSettings the run used")
    data: dict[str, Any]
    table: dict[str, Any] = Field(description="per method: CA, BA, ASR and macro-F1 averaged over targets")
    runtime_s: float | None = None


__all__ = ["PromptBackdoorResults"]
