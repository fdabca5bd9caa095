"""Experiment configuration: the schema building blocks, YAML loading, overrides, validation."""

from __future__ import annotations

from medsec.config.loader import apply_overrides, dump_config, load_config, read_yaml, validate_config
from medsec.config.schema import (
    AdversarialTrainingConfig,
    Component,
    DataConfig,
    ModelConfig,
    RunConfig,
    StrictModel,
    TrainConfig,
    parse_number,
)

__all__ = [
    "AdversarialTrainingConfig", "Component", "DataConfig", "ModelConfig", "RunConfig", "StrictModel", "TrainConfig",
    "apply_overrides", "dump_config", "load_config", "read_yaml", "validate_config", "parse_number",
]
