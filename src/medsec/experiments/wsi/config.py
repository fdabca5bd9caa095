"""The ``kind: wsi`` experiment config (strict pydantic; unknown keys are errors).

Example (configs/bloodmnist_bags_wsi.yaml)::

    kind: wsi
    name: bloodmnist_bags_wsi
    encoder: {name: medsec_bloodmnist}
    bags:
      tasks: [{name: lymphocyte, positive: [4]}, {name: basophil, positive: [0]}]
    heads: [{name: abmil}, {name: mean}, {name: transmil}]
    attack: {names: [pgd], rhos: [0.001, 0.005, 0.01], eps: 8/255, strategies: [random, vulnerability, attention]}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medsec.config.schema import Component, ExecutorConfig, StrictModel, parse_number

Strategy = Literal["random", "vulnerability", "attention"]
STRATEGIES: tuple[Strategy, ...] = ("random", "vulnerability", "attention")


class BagTask(StrictModel):
    """A bag task: positive when a bag holds an instance of one of ``positive``."""

    name: str
    positive: list[int] = Field(min_length=1)

    @field_validator("positive")
    @classmethod
    def _classes(cls, v: list[int]) -> list[int]:
        if any(c < 0 or c > 7 for c in v):
            raise ValueError(f"BloodMNIST classes are 0..7, got {v}")
        return v


class BagsConfig(StrictModel):
    """MNIST-bags on BloodMNIST (Ilse et al. 2018): train bags from the train split, test bags from the test split."""

    root: str | None = None
    tasks: list[BagTask] = Field(min_length=1)
    n_train: int = Field(160, ge=2)
    n_test: int = Field(80, ge=2)
    size_min: int = Field(100, ge=1)
    size_max: int = Field(2000, ge=1)
    key_min: int = Field(1, ge=1)
    key_max: int = Field(3, ge=1)
    test_key_max: int | None = Field(None, ge=1, description="key instances per positive test bag at most "
                                     "(default key_max); 1 = a single small focus, the paper's worst case")

    @model_validator(mode="after")
    def _sizes(self) -> BagsConfig:
        if self.size_min > self.size_max:
            raise ValueError(f"size_min ({self.size_min}) must be <= size_max ({self.size_max})")
        if not self.key_min <= self.key_max <= self.size_min:
            raise ValueError("key instances need key_min <= key_max <= size_min")
        if self.test_key_max is not None and not self.key_min <= self.test_key_max <= self.size_min:
            raise ValueError("test_key_max needs key_min <= test_key_max <= size_min")
        return self


class SlidesConfig(StrictModel):
    """Real slides: tile, encode, attack, heatmap (no labels)."""

    paths: list[str] = Field(min_length=1)
    tile_size: int = Field(224, ge=8)
    level: int | None = None
    mpp: float | None = None
    min_tissue: float = Field(0.5, ge=0, le=1)
    rho: float = Field(0.01, gt=0, le=1)
    macenko_target: str | None = None

    @model_validator(mode="after")
    def _level(self) -> SlidesConfig:
        if self.level is not None and self.mpp is not None:
            raise ValueError("give level or mpp, not both")
        return self


class TrainConfig(StrictModel):
    """MIL head training (:func:`medsec.wsi.mil.train_mil`; defaults measured in docs/wsi.md)."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    clip_norm: float | None = Field(1.0, gt=0)
    standardize: bool = True
    balanced: bool = True
    val_fraction: float = Field(0.25, ge=0, lt=1)


class AttackConfig(StrictModel):
    """The label-free attack grid. ``names`` are registered attacks that run label-free
    (``medsec.attacks.label_free()``: ``fgsm_rs``, ``pgd``, ``mifgsm``, ``feature_cw``,
    ``feature_deepfool``); ``params`` per name override the label-free defaults
    (:data:`medsec.wsi.attacks.LABEL_FREE_DEFAULTS`: PGD 10 steps of eps/4 with a random
    start, MI-FGSM with a random start) and the units' own defaults."""

    names: list[str] = Field(default_factory=lambda: ["pgd"], min_length=1)
    rhos: list[float] = Field(default_factory=lambda: [0.001], min_length=1)
    eps: float = 8 / 255
    norm: Literal["linf", "l2"] = "linf"
    strategies: list[Strategy] = Field(default_factory=lambda: list(STRATEGIES), min_length=1)
    distance: Literal["cosine", "l2"] = "cosine"
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per attack name: its parameters")

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> float:
        out = parse_number(v)
        if out <= 0:
            raise ValueError(f"eps must be > 0, got {out}")
        return out

    @field_validator("names")
    @classmethod
    def _label_free(cls, v: list[str]) -> list[str]:
        from medsec.wsi.attacks.feature_attack import check_label_free

        for name in v:
            check_label_free(name)  # an InputError (a ValueError): the loader reports it as a ConfigError
        return v

    @field_validator("rhos")
    @classmethod
    def _rhos(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 < r <= 1:
                raise ValueError(f"rho is the fraction of tiles attacked, in (0, 1]; got {r}")
        return v

    @model_validator(mode="after")
    def _params(self) -> AttackConfig:
        unknown = set(self.params) - set(self.names)
        if unknown:
            raise ValueError(f"params given for attacks not in names: {sorted(unknown)}")
        import medsec.attacks
        from medsec.registry import check_params

        for name, params in self.params.items():
            check_params(medsec.attacks.get(name), params, f"attack {name!r}")
        return self


class DefensesConfig(StrictModel):
    """Preliminary defences, evaluated at ``rho`` with the first attack."""

    enabled: bool = True
    rho: float = Field(0.01, gt=0, le=1)
    jpeg_quality: int | None = Field(75, ge=1, le=100)
    blur_sigma: float | None = Field(1.0, gt=0)
    outlier_k: int | None = Field(10, ge=1)
    outlier_quantile: float = Field(0.99, gt=0, lt=1)
    finetune_epochs: int | None = Field(3, ge=1)


class WSIConfig(StrictModel):
    """The whole ``kind: wsi`` experiment."""

    kind: Literal["wsi"] = "wsi"
    name: str = "wsi"
    seed: int = 0
    device: str = "cpu"
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig,
                                     description="where the cells run: sequential, process:N or ray (docs/scale.md)")
    encoder: Component = Field(default_factory=lambda: Component(name="medsec_bloodmnist"))
    bags: BagsConfig | None = None
    slides: SlidesConfig | None = None
    heads: list[Component] = Field(default_factory=lambda: [Component(name="abmil")], min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    defenses: DefensesConfig = Field(default_factory=DefensesConfig)
    cache_dir: str = ".medsec-cache"

    @model_validator(mode="after")
    def _some_data(self) -> WSIConfig:
        if self.bags is None and self.slides is None:
            raise ValueError("a wsi experiment needs bags: (BloodMNIST MIL bags) and/or slides: (real slides)")
        return self
