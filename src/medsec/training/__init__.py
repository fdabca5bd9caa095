"""Training recipes for the small models medsec validates its attacks on."""

from __future__ import annotations

from medsec.training.classifier import TrainResult, evaluate, predict, train_classifier

__all__ = ["TrainResult", "evaluate", "predict", "train_classifier"]
