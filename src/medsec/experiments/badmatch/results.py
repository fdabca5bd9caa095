"""The badmatch kind's ``results.json``; ``docs/schemas/badmatch.schema.json`` is generated
from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medsec.runs.schema import Record, Results


class BadMatchCell(Record):
    id: str
    backbone: str
    trigger: str
    rate: float
    method: Literal["badmatch", "baddist+badmatch"]
    n_poisoned: int
    poison_indices: list[int]
    metrics: dict[str, Any] = Field(description="zero-shot CA, ASR and BA, mean and std over prompt draws")


class BadMatchResults(Results):
    """``kind: badmatch`` results."""

    kind: Literal["badmatch"]
    cells: dict[str, BadMatchCell]  # type: ignore[assignment]
    data: dict[str, Any]
    models: dict[str, Any] = Field(description="per backbone: pre-training, clean fine-tune and BadDist facts")


__all__ = ["BadMatchResults"]
