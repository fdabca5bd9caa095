"""The ``kind: backdoor_defense`` config: backdoors (a registered trigger poisoning the
training set, or a BAPLe / BadMatch backdoored CLIP-style model) x detectors and repairs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medsec.config.schema import Component, DataConfig, ModelConfig, RunConfig, StrictModel


class BackdoorConfig(Component):
    """One backdoor: a trigger from the registry (``name``, ``params``) and how it poisons;
    or (``attack: baple`` / ``badmatch``) a backdoored CLIP-style model built by that
    attack (``params``: BapleSettings fields / ``method``; see
    :mod:`medsec.experiments.backdoor_defense.victims`)."""

    name: str = "badnets"
    attack: Literal["poisoning", "baple", "badmatch"] = "poisoning"
    label: str | None = None
    target: int | None = 0
    rate: float = Field(0.05, gt=0, le=1)
    policy: Literal["all_to_one", "all_to_all", "clean_label"] = "all_to_one"


class DetectorConfig(Component):
    label: str | None = None


class RepairConfig(Component):
    label: str | None = None


class BackdoorTrainConfig(StrictModel):
    epochs: int = Field(4, ge=1)
    lr: float = Field(5e-3, gt=0)
    batch_size: int = Field(128, ge=2)
    weight_decay: float = Field(5e-4, ge=0)
    augment: bool = True
    limit: int | None = Field(None, ge=2, description="train on a seeded subset of this many images")


class BackdoorEvalConfig(StrictModel):
    test_limit: int | None = Field(1000, ge=2, description="test images for CA/ASR")
    clean_size: int = Field(500, ge=2, description="clean held-out images the defender holds")
    detector_queries: int = Field(200, ge=2, description="STRIP-style detectors: clean and triggered queries each")


class BackdoorDefenseConfig(RunConfig):
    """The ``kind: backdoor_defense`` experiment."""

    kind: Literal["backdoor_defense"] = "backdoor_defense"
    name: str = "backdoor-defense"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: BackdoorTrainConfig = Field(default_factory=BackdoorTrainConfig)
    backdoors: list[BackdoorConfig] = Field(default_factory=lambda: [BackdoorConfig()], min_length=1)
    detectors: list[DetectorConfig] = Field(default_factory=list)
    repairs: list[RepairConfig] = Field(default_factory=list)
    eval: BackdoorEvalConfig = Field(default_factory=BackdoorEvalConfig)
    cache_dir: str | None = Field(None, description="where trained models are cached (default: <out>/models)")

    @model_validator(mode="after")
    def _check(self) -> BackdoorDefenseConfig:
        if not self.detectors and not self.repairs:
            raise ValueError("give at least one detector or repair (e.g. detectors: [{name: spectral}])")
        if self.model.checkpoint is not None:
            raise ValueError("backdoor_defense trains its own backdoored models; remove model.checkpoint")
        for what, items in (("backdoor", self.backdoors), ("detector", self.detectors), ("repair", self.repairs)):
            labels = [i.label or i.name for i in items]
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"{what} label(s) {dup} appear twice; give each a distinct label")
        return self


__all__ = ["BackdoorConfig", "BackdoorDefenseConfig", "DetectorConfig", "RepairConfig"]
