"""Training recipes for the small models medsec validates its attacks on.

One supervised epoch loop (:func:`~medsec.training.loop.fit`) serves classifiers
(:func:`train_classifier`) and segmenters (:func:`train_segmenter`) through task hooks.
"""

from __future__ import annotations

from medsec.training.classifier import classification_task, evaluate, predict, train_classifier
from medsec.training.loop import TrainResult, TrainTask, fit
from medsec.training.segmentation import evaluate_segmenter, predict_masks, segmentation_task, train_segmenter

__all__ = ["TrainResult", "TrainTask", "fit", "evaluate", "predict", "train_classifier", "classification_task",
           "evaluate_segmenter", "predict_masks", "train_segmenter", "segmentation_task"]
