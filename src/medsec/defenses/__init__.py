"""Defences: input transformations (declaring differentiability and randomness).

Example:
    >>> import medsec
    >>> medsec.defenses.list()
    ['bit_depth', 'gaussian_blur', 'jpeg', 'median_filter', 'random_noise', 'stain_normalization']
"""

from __future__ import annotations

import builtins
from typing import Any

from medsec.defenses import (  # noqa: F401  (registration)
    activation_clustering,
    bit_depth,
    embedding_outlier,
    gaussian_blur,
    jpeg,
    median_filter,
    neural_cleanse,
    random_noise,
    spectral,
    stain_normalization,
    strip,
)
from medsec.defenses.activation_clustering import ActivationClustering
from medsec.defenses.base import Defended, InputDefense
from medsec.defenses.detection import Detector, detection_metrics
from medsec.defenses.embedding_outlier import EmbeddingOutlierDetector
from medsec.defenses.fine_pruning import FinePruning
from medsec.defenses.neural_cleanse import NeuralCleanse
from medsec.defenses.smoothing import SmoothedClassifier, certified_accuracy_curve
from medsec.defenses.spectral import SpectralSignatures
from medsec.defenses.stain_normalization import StainNormalization
from medsec.defenses.strip import STRIP
from medsec.registry import DEFENSES


def create(name: str, **params: Any) -> InputDefense:
    """Build a registered defence."""
    defense: InputDefense = DEFENSES.create(name, **params)
    return defense


def list() -> builtins.list[str]:  # noqa: A001
    return DEFENSES.list()


def create_detector(name: str, **params: Any) -> Detector:
    """Build a registered detector: the backdoor detectors (``strip``, ``spectral``,
    ``activation_clustering``, ``neural_cleanse``) and the embedding outlier detector of the
    whole-slide defences (``embedding_outlier``)."""
    from medsec.registry import DETECTORS

    detector: Detector = DETECTORS.create(name, **params)
    return detector


__all__ = ["ActivationClustering", "Defended", "Detector", "EmbeddingOutlierDetector", "FinePruning", "InputDefense", "NeuralCleanse", "STRIP",
           "SmoothedClassifier", "SpectralSignatures", "StainNormalization", "certified_accuracy_curve", "create", "create_detector", "detection_metrics", "list"]
