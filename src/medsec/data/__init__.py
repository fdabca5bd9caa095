"""Datasets: real medical images from local files and an offline synthetic set.

Every loader returns an :class:`ImageDataset` (float32 (N, C, H, W) in [0, 1], int64
labels, class names) and is registered by name, so configs say
``data: {name: medmnist, params: {flag: bloodmnist}}``. Local data live under
:func:`data_root` (``$MEDSEC_DATA``, default ``../shared/data``).

Registered: ``medmnist`` (MedMNIST v2 npz files; Yang et al., Scientific Data 2023),
``image_folder`` (one sub-folder per class), ``pcam`` (PatchCamelyon h5 or Kaggle HCD), ``synthetic_he``
(offline H&E-like patches after Ruifrok & Johnston 2001 colour deconvolution), ``segmentation_folder``
(images/ + masks/) and ``kvasir_seg`` (Kvasir-SEG polyps; Jha et al., MMM 2020).

Example:
    >>> import medsec.data
    >>> ds = medsec.data.create("synthetic_he", n=8, size=16)
    >>> "medmnist" in medsec.data.list(), ds.image_shape
    (True, (3, 16, 16))
"""

from __future__ import annotations

import builtins
from typing import Any

from medsec.data import image_folder, medmnist, pcam, segmentation_folder, synthetic_he  # noqa: F401  (registration)
from medsec.data.base import ImageDataset
from medsec.data.paths import data_root
from medsec.data.segmentation_folder import SegmentationDataset
from medsec.registry import DATASETS


def create(name: str, **params: Any) -> ImageDataset:
    """Build the registered dataset ``name`` with ``params`` (unknown params are errors)."""
    dataset: ImageDataset = DATASETS.create(name, **params)
    return dataset


def list() -> builtins.list[str]:  # noqa: A001
    """Sorted names of the registered datasets."""
    return DATASETS.list()


__all__ = ["ImageDataset", "SegmentationDataset", "create", "data_root", "list"]
