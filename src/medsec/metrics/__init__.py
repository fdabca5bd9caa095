"""Metrics: accuracy, robust accuracy, attack success, perturbation norms, PSNR/SSIM.

Example:
    >>> from medsec import metrics
    >>> "ssim" in metrics.list()
    True
"""

from __future__ import annotations

import builtins
from typing import Any

from medsec.metrics.accuracy import accuracy, attack_success_rate, correct, robust_accuracy
from medsec.metrics.image_quality import psnr, psnr_per_sample, ssim
from medsec.metrics.perturbation import perturbation_norms
from medsec.metrics.segmentation import dice, hd95, iou, lesion_miss_rate, segmentation_summary
from medsec.registry import METRICS


def get(name: str) -> Any:
    """The metric function registered under ``name``."""
    return METRICS.get(name)


def list() -> builtins.list[str]:  # noqa: A001
    return METRICS.list()


__all__ = [
    "accuracy", "attack_success_rate", "correct", "robust_accuracy", "psnr", "psnr_per_sample",
    "ssim", "perturbation_norms", "get", "list", "dice", "iou", "hd95", "lesion_miss_rate", "segmentation_summary",
]
