"""The segmentation kind's ``results.json``; ``docs/schemas/segmentation.schema.json`` is
generated from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medsec.experiments.evasion.results import Threat
from medsec.runs.schema import Record, Results


class SegmentationMetrics(Record):
    dice: float
    iou: float
    clean_dice: float
    dice_drop: float = Field(description="clean mean Dice minus adversarial mean Dice")
    attack_success_rate: float = Field(description="untargeted: Dice <= 1 - drop; targeted: Dice to the target mask >= 1 - drop")
    drop_success_rate: float = Field(description="share of images whose Dice fell by at least segmentation.drop")
    mode: Literal["pixel", "paper"]


class SegmentationCell(Record):
    id: str
    attack: str
    label: str
    params: dict[str, Any]
    threat: Threat
    target: int | str | None
    mode: Literal["pixel", "paper"]
    eps_units: str
    universal: bool
    metrics: SegmentationMetrics
    runtime_s: float
    seed: int
    examples: str | None


class SegmentationData(Record):
    name: str
    n_eval: int
    image_shape: list[int]
    foreground_fraction: float


class SegmentationModel(Record):
    name: str
    task: Literal["segmentation"]
    num_classes: int
    prompt: str | None
    checkpoint: str | None
    train: dict[str, Any] | None


class SegmentationResults(Results):
    """``kind: segmentation`` results."""

    kind: Literal["segmentation"]
    cells: dict[str, SegmentationCell]  # type: ignore[assignment]
    data: SegmentationData
    model: SegmentationModel
    clean: dict[str, Any] = Field(description="clean Dice, IoU, HD95, lesion-miss and empty-prediction rates")


__all__ = ["SegmentationResults"]
