"""The wsi kind's ``results.json``; ``docs/schemas/wsi.schema.json`` is generated from it.

Cell ids name the stage: ``content``, ``clean/<task>/<head>``,
``attack/<task>/<head>/<attack>/<rho>/<strategy>``, ``defense/<task>/<defence>`` and
``slide/<slide name>``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medsec.runs.schema import Record, Results


class BagMetrics(Record):
    accuracy: float
    balanced_accuracy: float
    auroc: float | None = Field(description="None when the test bags hold one class only")


class ContentCell(Record):
    """Tile vulnerability against tile content on a sample of the test pool."""

    n_tiles: int
    spearman: dict[str, Any] = Field(description="per content measure: Spearman rho and p against vulnerability")
    vulnerability_by_class: dict[str, float]
    vulnerability_mean: float


class CleanCell(BagMetrics):
    """A head's clean slide-level performance on the test bags of a task."""

    task: str
    head: str
    pred: list[int]
    p_pos: list[float]


class AttackCell(Record):
    """One (task, head, attack, rho, strategy) cell."""

    task: str
    head: str
    attack: str
    rho: float = Field(description="fraction of each bag's tiles attacked")
    strategy: Literal["random", "vulnerability", "attention"]
    eps: float
    norm: Literal["linf", "l2"]
    clean: BagMetrics
    attacked: BagMetrics
    delta_accuracy: float = Field(description="clean minus attacked slide accuracy")
    flip_rate: float
    k_mean: float = Field(description="tiles attacked per bag, mean")
    deviation_mean: float = Field(description="1 - cos between clean and attacked tile embeddings, mean")
    psnr: float
    ssim: float
    selected: list[list[int]]


class DefenseCell(Record):
    """A bag defence (purifier, outlier detector or adversarial fine-tuning) at one rho."""

    task: str
    head: str
    attack: str
    rho: float
    defense: str
    params: dict[str, Any]
    clean: float = Field(description="clean slide accuracy with the defence")


class SlideCell(Record):
    """A real slide: tiling, encoding, vulnerability, attack."""

    slide: str
    n_tiles: int
    k: int
    rho: float
    attack: str
    deviation_vulnerability: list[float]
    deviation_random: list[float]
    psnr: float
    ssim: float


class WSIResults(Results):
    """``kind: wsi`` results."""

    kind: Literal["wsi"]
    cells: dict[str, ContentCell | CleanCell | AttackCell | DefenseCell | SlideCell]  # type: ignore[assignment]
    encoder: dict[str, Any] = Field(description="name, embedding dimension and input spec of the tile encoder")
    figures: str = Field(description="the file beside results.json with the report's figure data")
    tasks: dict[str, Any] = Field(default_factory=dict, description="per bag task: its bags")
    summary: dict[str, Any] = Field(default_factory=dict, description="worst accuracy drop per (strategy, rho)")


__all__ = ["WSIResults"]
