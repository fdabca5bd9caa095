"""The ``kind: prompt_backdoor`` config: the BAPLe comparison on one CLIP-style model and one
dataset (methods x targets)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medsec.backdoors.prompt_harness import METHODS
from medsec.config.schema import RunConfig, StrictModel

DATASETS = ("bloodmnist", "busi")
RECIPES = ("bloodmnist_clip", "medical_clip")
# the recipe a dataset uses when the config names no model
DEFAULT_RECIPE = {"bloodmnist": "bloodmnist_clip", "busi": "medical_clip"}


class ModelSection(StrictModel):
    """The CLIP-style model: a medsec recipe (offline) or a hub name."""

    recipe: Literal["bloodmnist_clip", "medical_clip"] | None = None  # default: the dataset's (DEFAULT_RECIPE)
    name: str | None = None
    pretrained: str | None = None
    cache_dir: str | None = None  # where the recipe's model is cached (default: .medsec-cache/ in the repo)

    @model_validator(mode="after")
    def _one(self) -> ModelSection:
        if self.name is not None and self.recipe is not None:
            raise ValueError(f"give model.recipe ({' or '.join(RECIPES)}) or model.name (e.g. open_clip:ViT-B-32), "
                             "not both")
        return self


class DataSection(StrictModel):
    name: Literal["bloodmnist", "busi"] = "bloodmnist"
    root: str | None = None  # the dataset's folder (default: $MEDSEC_DATA/bloodmnist or busi-256)
    test_size: int | None = Field(default=None, ge=8)
    image_size: int | None = Field(default=None, ge=8, le=1024)  # default: bloodmnist 28 (native), busi 64
    class_names: list[str] | None = None


class BapleSection(StrictModel):
    """Overrides of :class:`~medsec.backdoors.baple.BapleSettings` (paper defaults otherwise)."""

    shots: int = Field(default=32, ge=1)
    rate: float = Field(default=0.05, gt=0, le=1)
    eps: float = Field(default=8 / 255, ge=0, le=1)
    noise_step: float = Field(default=0.01, gt=0)
    patch_size_224: int = Field(default=24, ge=1)
    patch_margin_224: int = Field(default=15, ge=0)
    position: str = "bottom-left"
    patch_pattern: Literal["random", "white", "checkerboard"] = "random"
    order: Literal["noise_then_patch", "patch_then_noise"] = "noise_then_patch"
    noise_grad: Literal["accumulate", "batch"] = "accumulate"
    ctx_init: Literal["clean", "random"] = "clean"
    n_ctx: int = Field(default=16, ge=1)
    epochs: int = Field(default=50, ge=2)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=0.02, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)
    warmup_lr: float = Field(default=1e-5, gt=0)

    @field_validator("eps", mode="before")
    @classmethod
    def _fraction(cls, v: Any) -> Any:
        if isinstance(v, str) and "/" in v:
            a, b = v.split("/", 1)
            return float(a) / float(b)
        return v


class FinetuneSection(StrictModel):
    lr: float = Field(default=5e-5, gt=0)
    epochs: int | None = Field(default=None, ge=1)
    weight_decay: float = Field(default=0.01, ge=0)


class PromptBackdoorConfig(RunConfig):
    """``kind: prompt_backdoor``: the BAPLe comparison on one model and dataset."""

    kind: Literal["prompt_backdoor"] = "prompt_backdoor"
    name: str = "prompt_backdoor"
    device: Literal["cpu"] = "cpu"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    targets: Literal["all"] | list[int] = "all"
    baple: BapleSection = BapleSection()
    finetune: FinetuneSection = FinetuneSection()
    cache_features: bool = True

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from medsec.registry import suggest

        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}.{suggest(m, METHODS)} Methods: {', '.join(METHODS)}")
        if not v:
            raise ValueError("methods must name at least one method")
        return v

    @model_validator(mode="after")
    def _model_fits_data(self) -> PromptBackdoorConfig:
        if self.model.name is None and self.model.recipe is None:
            self.model.recipe = DEFAULT_RECIPE[self.data.name]  # type: ignore[assignment]
        if self.model.recipe == "bloodmnist_clip" and self.data.name != "bloodmnist":
            raise ValueError(f"model.recipe bloodmnist_clip was pretrained on BloodMNIST captions only and has never "
                             f"seen {self.data.name} images or words; use model.recipe: medical_clip (BUSI, Kvasir-SEG "
                             f"and BloodMNIST captions) or a model.name")
        return self


# the class count of each dataset (the targets "all" stand for)
NUM_CLASSES = {"bloodmnist": 8, "busi": 3}

__all__ = ["DATASETS", "DEFAULT_RECIPE", "NUM_CLASSES", "PromptBackdoorConfig", "RECIPES"]
