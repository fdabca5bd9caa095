"""The ``kind: segmentation`` config: data + segmenter (+ training) -> attacks x threats,
scored by Dice/IoU (see ``docs/segmentation.md`` and ``configs/kvasir_seg_unet.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medsec.config.schema import DataConfig, ModelConfig, RunConfig, StrictModel, TrainConfig
from medsec.experiments.evasion.config import AttackConfig, EvalConfig, ThreatConfig


class SegmentationAttackConfig(AttackConfig):
    """One attack on the segmenter.

    ``mode``: ``pixel`` (eps in [0, 1] pixel units, clamped to the image range; the default)
    or ``paper`` (Budathoki & Dhakal's protocol: eps in normalised-tensor units, no clamp
    during the attack, 8-bit PNG quantisation before scoring)."""

    mode: Literal["pixel", "paper"] = "pixel"


class SegmentationSection(StrictModel):
    """Segmentation evaluation settings."""

    drop: float = Field(0.5, gt=0, le=1, description="Dice drop from the clean prediction that counts as attack success")
    quantize: bool = Field(False, description="pixel mode: also quantise adversarial images to 8 bits before scoring")
    fooling_threshold: float = Field(0.2, ge=0, lt=1, description="universal 'uap_seg': fraction of changed pixels that fools")
    prompt: str | None = Field(None, description="text prompt for prompted segmenters (CLIPSeg), e.g. 'polyp'")
    overlays: int = Field(4, ge=0, le=16, description="images per cell shown as overlays in the report")


class SegmentationConfig(RunConfig):
    """The ``kind: segmentation`` experiment."""

    kind: Literal["segmentation"] = "segmentation"
    data: DataConfig
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="monai_unet"))
    train: TrainConfig | None = None
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    attacks: list[SegmentationAttackConfig] = Field(min_length=1)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    segmentation: SegmentationSection = Field(default_factory=SegmentationSection)

    @model_validator(mode="after")
    def _model_source(self) -> SegmentationConfig:
        if self.model.checkpoint is not None and self.train is not None:
            raise ValueError("give either model.checkpoint or a train section, not both")
        return self


__all__ = ["SegmentationAttackConfig", "SegmentationConfig", "SegmentationSection"]
