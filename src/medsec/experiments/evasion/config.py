"""The ``kind: evasion`` config: data + model (+ training) -> attacks x threats x defences.

See ``docs/config.md`` for the reference and ``configs/bloodmnist_fgsm_pgd.yaml`` for an
example.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medsec.config.schema import Component, DataConfig, ModelConfig, RunConfig, StrictModel, TrainConfig, parse_number


class ThreatConfig(StrictModel):
    norm: Literal["linf", "l2", "patch"] = "linf"
    eps: list[float] = Field(default_factory=lambda: [8 / 255])
    targeted: bool = False
    target: int | Literal["next"] | None = Field(
        None, description="targeted attacks: a class index (all-to-one) or 'next' ((y + 1) mod C)"
    )

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> list[float]:
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ValueError("eps needs at least one value")
        out = [parse_number(v) for v in values]
        for v in out:
            if v < 0:
                raise ValueError(f"eps must be >= 0, got {v}")
        return out

    @model_validator(mode="after")
    def _target(self) -> ThreatConfig:
        if self.targeted and self.target is None:
            raise ValueError("targeted: true needs `target` (a class index or 'next')")
        if self.norm == "patch" and any(e > 1 for e in self.eps):
            raise ValueError("patch eps is a pixel fraction and must be <= 1")
        return self


class AttackConfig(Component):
    """One attack; ``threat`` overrides the experiment's default threat model."""

    label: str | None = None
    threat: ThreatConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mode" in data and cls is AttackConfig:
            raise ValueError("attack mode (pixel or paper) is for segmentation experiments only; "
                             "use kind: segmentation, or remove mode")
        return data


class EvalConfig(StrictModel):
    sample_limit: int | None = Field(1000, ge=1)
    batch_size: int = Field(256, ge=1)
    early_stop: bool = Field(True, description="stop attacking points already broken (robust-accuracy mode)")
    examples: int = Field(8, ge=0, le=64)
    adaptive: bool = Field(True, description="also attack defences adaptively (BPDA / EOT) when they need it")
    eot_samples: int = Field(10, ge=1)
    universal_fit_size: int = Field(1000, ge=1, description="training images a universal attack is fitted on")
    model_checks: bool = Field(True, description="gradient / randomness / probability sanity checks")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False


class DefenseConfig(Component):
    """An input defence; the runner evaluates every attack against each defence."""

    label: str | None = None


class EvasionConfig(RunConfig):
    """The ``kind: evasion`` experiment (the default kind when a config names none)."""

    kind: Literal["evasion"] = Field("evasion", description="experiment family (medsec ls kinds)")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig | None = None
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    attacks: list[AttackConfig] = Field(min_length=1)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    defenses: list[DefenseConfig] = Field(default_factory=list)
    include_undefended: bool = True

    @model_validator(mode="after")
    def _model_source(self) -> EvasionConfig:
        if self.model.checkpoint is not None and self.train is not None:
            raise ValueError("give either model.checkpoint or a train section, not both")
        return self
