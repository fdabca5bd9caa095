"""The experiment config schema (pydantic), as read by ``medsec run`` and ``medsec validate``.

Every component is ``{name, params}`` resolved through a registry; unknown keys are
errors; eps may be written as ``8/255``. See ``configs/`` for examples and
``docs/config.md`` for the reference.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_FRACTION = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:/\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$")


def parse_number(value: Any) -> float:
    """A float from a number or a string such as ``"8/255"`` or ``"0.03"`` (never eval)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m:
            num = float(m.group(1))
            if m.group(2) is not None:
                den = float(m.group(2))
                if den == 0:
                    raise ValueError(f"division by zero in {value!r}")
                return num / den
            return num
    raise ValueError(f"expected a number or a fraction like 8/255, got {value!r}")


class StrictModel(BaseModel):
    """A config section that refuses unknown keys (every medsec config section is one)."""

    model_config = ConfigDict(extra="forbid")


def _fractions(value: Any) -> Any:
    """Parameter values written as fractions (``step_size: 2/255``) become floats; any
    other value, plain numeric strings included, is left as written."""
    if isinstance(value, str) and "/" in value and _FRACTION.match(value):
        return parse_number(value)
    if isinstance(value, dict):
        return {k: _fractions(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fractions(v) for v in value]
    return value


class Component(StrictModel):
    """A registry entry: ``{name: ..., params: {...}}``; fractions such as ``2/255`` in
    params are read as numbers."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        return _fractions(value) if isinstance(value, dict) else value


class DataConfig(Component):
    """Dataset; ``train_split``/``eval_split``/``val_split`` are passed as ``split`` when
    the dataset takes one; otherwise the data are split at random by ``eval_fraction``."""

    train_split: str = "train"
    eval_split: str = "test"
    val_split: str | None = None
    eval_fraction: float = Field(0.2, gt=0, lt=1)


class ModelConfig(Component):
    """Model from the registry (``small_cnn``, ``timm``, ``timm:resnet18``, ...) or a
    checkpoint written by medsec (``checkpoint: path/model.safetensors``)."""

    name: str = "small_cnn"
    checkpoint: str | None = None


class AdversarialTrainingConfig(StrictModel):
    """Adversarial training (medsec.training.adversarial): PGD-AT (Madry et al. 2018) or
    TRADES (Zhang et al. 2019); eps may be written as ``4/255``."""

    method: Literal["pgd_at", "trades"] = "pgd_at"
    norm: Literal["linf", "l2"] = "linf"
    eps: float = Field(4 / 255, gt=0, le=1)
    steps: int = Field(5, ge=1)
    step_size: float | None = Field(None, gt=0, description="default 2.5 * eps / steps")
    beta: float = Field(6.0, ge=0, description="TRADES only: weight of the KL term")

    @field_validator("eps", "step_size", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        return None if value is None else parse_number(value)


class TrainConfig(StrictModel):
    epochs: int = Field(5, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(128, ge=2)
    weight_decay: float = Field(5e-4, ge=0)
    augment: bool = True
    limit: int | None = Field(None, ge=1, description="use at most this many training images")
    adversarial: AdversarialTrainingConfig | None = Field(None, description="train with PGD-AT or TRADES")


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
    """One attack; ``threat`` overrides the experiment's default threat model.

    ``mode`` (segmentation only): ``pixel`` (eps in [0, 1] pixel units, clamped to the
    image range; the default) or ``paper`` (Budathoki & Dhakal's protocol: eps in
    normalised-tensor units, no clamp during the attack, 8-bit PNG quantisation before
    scoring)."""

    label: str | None = None
    threat: ThreatConfig | None = None
    mode: Literal["pixel", "paper"] = "pixel"


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


class SegmentationConfig(StrictModel):
    """Segmentation evaluation settings (the runner switches to segmentation for a
    segmentation dataset or when this section is present)."""

    drop: float = Field(0.5, gt=0, le=1, description="Dice drop from the clean prediction that counts as attack success")
    quantize: bool = Field(False, description="pixel mode: also quantise adversarial images to 8 bits before scoring")
    fooling_threshold: float = Field(0.2, ge=0, lt=1, description="universal 'uap_seg': fraction of changed pixels that fools")
    prompt: str | None = Field(None, description="text prompt for prompted segmenters (CLIPSeg), e.g. 'polyp'")
    overlays: int = Field(4, ge=0, le=16, description="images per cell shown as overlays in the report")


class DefenseConfig(Component):
    """An input defence; the runner evaluates every attack against each defence."""

    label: str | None = None


class ExperimentConfig(StrictModel):
    kind: Literal["evasion"] = Field("evasion", description="experiment family; other kinds: medsec.experiments")
    name: str = "experiment"
    seed: int = 0
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig | None = None
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    attacks: list[AttackConfig] = Field(min_length=1)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    defenses: list[DefenseConfig] = Field(default_factory=list)
    include_undefended: bool = True
    executor: Literal["sequential"] = "sequential"
    segmentation: SegmentationConfig | None = None

    @model_validator(mode="after")
    def _model_source(self) -> ExperimentConfig:
        if self.model.checkpoint is not None and self.train is not None:
            raise ValueError("give either model.checkpoint or a train section, not both")
        return self
