"""Experiment configuration: schema, YAML loading, overrides."""

from __future__ import annotations

from medsec.config.loader import apply_overrides, dump_config, load_config, read_yaml, validate_config
from medsec.config.schema import (
    AttackConfig,
    DataConfig,
    DefenseConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    ThreatConfig,
    TrainConfig,
    parse_number,
)

__all__ = [
    "AttackConfig", "DataConfig", "DefenseConfig", "EvalConfig", "ExperimentConfig", "ModelConfig", "ThreatConfig", "TrainConfig",
    "apply_overrides", "dump_config", "load_config", "read_yaml", "validate_config", "parse_number",
]
