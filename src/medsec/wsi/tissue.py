"""Tissue detection on a slide thumbnail: Otsu's threshold on HSV saturation.

The standard first step of WSI pipelines (CLAM, Lu et al. 2021, segments tissue by
thresholding the saturation channel of a downsampled image; Otsu, IEEE TSMC 1979): H&E
tissue is coloured, glass and background are grey-white, so saturation separates
them. Small holes and specks are removed with scikit-image morphology.

Threat model: not applicable (preprocessing).

Example:
    >>> rgb = np.full((64, 64, 3), 240, np.uint8); rgb[16:48, 16:48] = (180, 60, 140)
    >>> float(tissue_mask(rgb).mean())
    0.25
"""

from __future__ import annotations

import numpy as np

from medsec.errors import InputError


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.05, min_size: int = 16) -> np.ndarray:
    """Boolean (H, W) tissue mask of an RGB uint8 (or [0, 1] float) image.

    Args:
        rgb: (H, W, 3) image (a slide thumbnail).
        min_saturation: saturation floor (in [0, 1]); pixels below are never tissue, which
            keeps an all-background image empty instead of thresholding noise.
        min_size: connected components and holes smaller than this (thumbnail pixels)
            are removed / filled.
    """
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"rgb must have shape (H, W, 3), got {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise InputError("a float rgb image must be finite and in [0, 1]")
    sat = rgb2hsv(arr)[..., 1]
    if float(sat.max() - sat.min()) < 1e-6:
        return np.zeros(sat.shape, dtype=bool) if sat.max() < min_saturation else np.ones(sat.shape, dtype=bool)
    thr = max(float(threshold_otsu(sat)), float(min_saturation))
    mask: np.ndarray = sat > thr
    if min_size > 0:
        mask = remove_small_objects(mask, max_size=min_size)
        mask = remove_small_holes(mask, max_size=min_size)
    return mask
