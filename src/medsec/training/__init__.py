"""Training recipes for the small models medsec validates its attacks on."""

from __future__ import annotations

from medsec.training.classifier import TrainResult, evaluate, predict, train_classifier
from medsec.training.segmentation import evaluate_segmenter, predict_masks, train_segmenter

__all__ = ["TrainResult", "evaluate", "predict", "train_classifier", "evaluate_segmenter", "predict_masks", "train_segmenter"]
