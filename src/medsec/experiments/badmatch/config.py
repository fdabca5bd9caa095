"""The ``kind: badmatch`` config (see docs/badmatch.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medsec.config.schema import RunConfig, StrictModel

Method = Literal["badmatch", "baddist+badmatch"]
METHODS: tuple[Method, ...] = ("badmatch", "baddist+badmatch")


class DataSection(StrictModel):
    dataset: Literal["bloodmnist", "busi"] = "bloodmnist"
    root: str | None = None
    image_size: int = Field(28, ge=8, le=512)
    train_limit: int | None = Field(None, ge=8)
    test_limit: int | None = Field(None, ge=8)
    shadow_limit: int | None = Field(None, ge=8)
    target: str | int = "neutrophil"
    sentence_pairs: int = Field(64, ge=0)
    # training sentences also name each class by its prompt synonyms (medclip_text.sentence_bank)
    sentence_synonyms: bool = False
    # the fine-tunes (clean and poisoned) use this many training images (a seeded subset of
    # the pre-training set; poison rates count against it); None = the whole training set
    finetune_limit: int | None = Field(None, ge=8)


class ModelSection(StrictModel):
    text: Literal["bert", "tiny-bert"] = "tiny-bert"
    embed_dim: int = Field(64, ge=2)
    pretrained: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    max_length: int = Field(32, ge=4)
    logit_scale_init: float = Field(0.0, ge=0.0, le=4.6052)


class Backbone(StrictModel):
    label: str
    vision: str
    params: dict[str, Any] = Field(default_factory=dict)
    # a medsec MedCLIP checkpoint (save_medclip) to start from instead of pre-training, as
    # the paper fine-tunes the released MedCLIP weights; e.g. another run's
    # models/<label>-pretrained.safetensors
    checkpoint: str | None = None


class TrainSection(StrictModel):
    epochs: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=2)
    weight_decay: float = Field(1e-4, ge=0)
    text_batch_size: int | None = Field(None, ge=2)
    label_temperature: float = Field(1.0, gt=0)


class BadDistSection(StrictModel):
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0)
    lambda1: float = Field(5.0, ge=0)
    lambda2: float = Field(1.0, ge=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"


class TriggerSpec(StrictModel):
    label: str
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PoisonSection(StrictModel):
    rates: list[float] = Field(default_factory=lambda: [0.05, 0.01, 0.001, 0.0005])
    mode: Literal["image", "text"] = "image"

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < r <= 1.0 for r in v):
            raise ValueError("poison rates must be a non-empty list of fractions in (0, 1]")
        if len(set(v)) != len(v):
            raise ValueError("poison rates repeat a value")
        return v


class EvalSection(StrictModel):
    n_prompts: int = Field(5, ge=1)
    n_samplings: int = Field(5, ge=1)
    clean_finetune: bool = True  # also fine-tune on the clean set (the CA reference rows)
    save_models: bool = Field(False, description="also save every fine-tuned model (the clean one and each cell's "
                                                 "backdoored one) under models/, about 1.7 MB each")


class BadMatchConfig(RunConfig):
    """The ``kind: badmatch`` config (see docs/badmatch.md)."""

    kind: Literal["badmatch"] = "badmatch"
    name: str = "badmatch"
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    backbones: list[Backbone] = Field(default_factory=lambda: [Backbone(label="resnet", vision="tiny-resnet")])
    pretrain: TrainSection = Field(default_factory=lambda: TrainSection(epochs=3, lr=2e-3))
    finetune: TrainSection = Field(default_factory=lambda: TrainSection(epochs=1, lr=5e-4))
    baddist: BadDistSection = Field(default_factory=BadDistSection)
    triggers: list[TriggerSpec] = Field(default_factory=lambda: [
        TriggerSpec(label="square", name="badnets", params={"size_fraction": 32 / 224, "color": 0.0}),
        TriggerSpec(label="fourier", name="fiba", params={"beta": 0.2, "alpha": 0.1})])
    poison: PoisonSection = Field(default_factory=PoisonSection)
    methods: list[Method] = Field(default_factory=lambda: list(METHODS))
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _unique(self) -> BadMatchConfig:
        for what, labels in (("backbone", [b.label for b in self.backbones]), ("trigger", [t.label for t in self.triggers])):
            if not labels:
                raise ValueError(f"give at least one {what}")
            if len(set(labels)) != len(labels):
                raise ValueError(f"{what} labels repeat: {labels}")
        if not self.methods:
            raise ValueError("give at least one method (badmatch, baddist+badmatch)")
        return self


__all__ = ["BadMatchConfig", "METHODS"]
