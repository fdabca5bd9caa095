"""The results envelope as pydantic models, from which the JSON Schema of every kind's
``results.json`` is generated (``docs/schemas/<kind>.schema.json``, ``docs/results-schema.md``).

Every kind's results model subclasses :class:`Results`: the envelope's fields are the same for
all kinds; a kind narrows ``kind``, types its ``cells`` and declares its own top-level sections
(no other top-level key is allowed). Records inside cells keep room for fields a kind adds later
(``additionalProperties`` is allowed there), but the fields declared here are required.

Regenerate the schema files after changing a results model::

    python -m medsec.runs.schema docs/schemas
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from medsec.runs.kind import Kind


class Record(BaseModel):
    """A record that may carry more fields than it declares."""

    model_config = ConfigDict(extra="allow")


class Check(Record):
    """A sanity check: one vocabulary for every kind."""

    level: Literal["info", "warning", "error"]
    code: str = Field(description="a stable kebab-case identifier, e.g. robust-accuracy-rises-with-eps")
    message: str
    cells: list[str] = Field(description="the ids of the cells the check names (may be empty)")


class Seeds(BaseModel):
    """The run's global seed and the seed of every planned cell (CRC32 of "<global>:<cell id>")."""

    model_config = ConfigDict(populate_by_name=True)

    global_: int = Field(alias="global")
    cells: dict[str, int]


class Provenance(Record):
    """Where, when and with what the run ran."""

    medsec: str
    python: str
    torch: str
    platform: str
    git: str | None
    device: str
    hostname: str
    started: str = Field(description="UTC ISO 8601, when the run (its first attempt) started")
    finished: str | None = Field(description="UTC ISO 8601, set when the run ends (complete or incomplete)")
    resumed: list[str] = Field(default_factory=list, description="when the run was resumed")
    executor: str = Field("sequential", description="the executor of the last attempt (sequential, process, ray)")
    retried: dict[str, int] = Field(default_factory=dict, description="cells that finished after more than one "
                                    "attempt: attempts by cell id")
    merged_from: list[str] = Field(default_factory=list, description="the shard run folders merged into this one")


class Failure(BaseModel):
    """A cell that failed after its retries (a rerun of the same config tries it again)."""

    error: str = Field(description="the exception and the end of its traceback, or how the worker died")
    attempts: int


class ShardInfo(BaseModel):
    """``medsec run --shard index/count``: the part of the grid this run folder holds."""

    index: int
    count: int


class Results(BaseModel):
    """The envelope every kind's results.json has."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[2]
    kind: str
    name: str
    status: Literal["running", "complete", "incomplete"] = Field(
        description="complete: every planned cell finished; incomplete: some failed or belong to another shard")
    config: dict[str, Any] = Field(description="the resolved config (config.resolved.yaml holds the same)")
    provenance: Provenance
    seeds: Seeds
    cells: dict[str, Record] = Field(description="the finished cells by id, in plan order")
    checks: list[Check]
    failed: dict[str, Failure] = Field(default_factory=dict, description="cells that failed after their retries")
    shard: ShardInfo | None = Field(None, description="set in a shard's run folder (medsec run --shard)")


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a results model."""
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def write_schemas(folder: str | Path) -> list[Path]:
    """Write ``<kind>.schema.json`` of every registered kind into ``folder``."""
    from medsec.registry import KINDS

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in KINDS.list():
        kind = cast("Kind", KINDS.get(name))
        if kind.results is None:
            continue
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(json_schema(kind.results), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover
    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(p)
