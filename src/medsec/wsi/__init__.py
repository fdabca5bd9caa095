"""Whole-slide images and label-free attacks on pathology foundation models.

Pipeline: :class:`Slide` (OpenSlide) -> :func:`tissue_mask` -> :func:`tile_grid` ->
:class:`TileEncoder` (:func:`create_encoder`) -> :func:`extract_features` (HDF5, CLAM
layout) -> MIL head (:mod:`medsec.wsi.mil`) -> :func:`attack_slide` under a
:class:`WSIBudget` (Liu et al., "The Butterfly Effect in Pathology", arXiv 2505.24141).
This package orchestrates slides; the attacks, the feature-deviation objective, the
purifiers and the embedding outlier detector are registered units (``medsec ls attacks``,
``objectives``, ``defenses``, ``detectors``). See docs/wsi.md.
"""

from __future__ import annotations

from medsec.wsi.attacks import FEATURE_ATTACKS, LABEL_FREE_DEFAULTS, FeatureDeviation, feature_attack
from medsec.wsi.bags import BagSet, make_bags
from medsec.wsi.budget import STRATEGIES, WSIBudget, select_tiles
from medsec.wsi.encoders import TileEncoder, create_encoder, from_classifier, list_encoders
from medsec.wsi.feature_cache import FeatureBag, TensorTiles, extract_features, load_features
from medsec.wsi.slide import Slide
from medsec.wsi.slide_attack import SlideAttack, attack_slide
from medsec.wsi.tiling import SlideTiles, TileGrid, tile_grid
from medsec.wsi.tissue import tissue_mask

__all__ = ["FEATURE_ATTACKS", "LABEL_FREE_DEFAULTS", "STRATEGIES", "BagSet", "FeatureBag", "FeatureDeviation", "Slide", "SlideAttack",
           "SlideTiles", "TensorTiles", "TileEncoder", "TileGrid", "WSIBudget", "attack_slide", "create_encoder",
           "extract_features", "feature_attack", "from_classifier", "list_encoders", "load_features", "make_bags",
           "select_tiles", "tile_grid", "tissue_mask"]
