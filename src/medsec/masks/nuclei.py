"""Blobs where the image's nuclei are: a haematoxylin threshold of the image itself
(the "cell-shaped" mask of SNAP, Kumar, Sharma & Narayan, AAAI 2024), with the
haematoxylin channel from the colour deconvolution of Ruifrok & Johnston
("Quantification of histochemical staining by color deconvolution", Anal. Quant.
Cytol. Histol. 23, 2001; ``skimage.color.rgb2hed``).

Threat model: the patch attack may replace the most haematoxylin-stained pixels of the
image (nuclei), at most the coverage budget of them; the mask depends on the image.

Per image: the haematoxylin channel is smoothed with a Gaussian (``sigma`` px, so the
selection forms compact blobs rather than speckle), the ``coverage * H * W`` pixels with
the strongest stain are selected (ties broken by pixel order, deterministic), optionally
only those above an absolute ``threshold``, and connected blobs smaller than
``min_area`` pixels are dropped. The result never exceeds the budget and may fall short
of it when ``threshold`` or ``min_area`` removes pixels. RGB images only.

Example:
    >>> import torch, medsec.masks
    >>> m = medsec.masks.create("nuclei")(torch.rand(1, 3, 32, 32), 0.05)
    >>> int(m.sum()) <= 51
    True
"""

from __future__ import annotations

import numpy as np
import torch

from medsec.errors import InputError
from medsec.masks.base import MaskGenerator, budget_pixels
from medsec.registry import MASKS


def haematoxylin(x: torch.Tensor) -> np.ndarray:
    """The haematoxylin channel (B, H, W) of RGB images (B, 3, H, W) in [0, 1]."""
    from skimage.color import rgb2hed

    if x.shape[1] != 3:
        raise InputError(f"the nuclei mask needs RGB (3-channel) images, got {x.shape[1]} channels; use 'ellipses'")
    arr = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    return np.stack([rgb2hed(img)[..., 0] for img in arr])


@MASKS.register("nuclei")
class Nuclei(MaskGenerator):
    """The most haematoxylin-stained pixels of each image, up to the coverage budget.

    Args:
        sigma: Gaussian smoothing of the haematoxylin channel in pixels (0: none).
        threshold: keep only pixels whose smoothed haematoxylin exceeds this value
            (None: the budget alone decides).
        min_area: drop 8-connected blobs smaller than this many pixels (1: keep all).
    """

    name = "nuclei"
    image_dependent = True
    stochastic = False

    def __init__(self, *, sigma: float = 1.0, threshold: float | None = None, min_area: int = 1) -> None:
        if not float(sigma) >= 0:
            raise InputError(f"sigma must be >= 0, got {sigma!r}")
        if int(min_area) < 1:
            raise InputError(f"min_area must be >= 1, got {min_area!r}")
        self.sigma = float(sigma)
        self.threshold = None if threshold is None else float(threshold)
        self.min_area = int(min_area)

    def _generate(self, x: torch.Tensor, coverage: float, generator: torch.Generator | None) -> torch.Tensor:
        from scipy import ndimage

        b, _, h, w = x.shape
        k = budget_pixels(coverage, h, w)
        stain = haematoxylin(x)
        masks = np.zeros((b, h, w), dtype=bool)
        for i in range(b):
            s = ndimage.gaussian_filter(stain[i], self.sigma) if self.sigma > 0 else stain[i]
            flat = s.reshape(-1)
            top = np.argsort(-flat, kind="stable")[:k]
            if self.threshold is not None:
                top = top[flat[top] > self.threshold]
            m: np.ndarray = np.zeros(h * w, dtype=bool)
            m[top] = True
            m = m.reshape(h, w)
            if self.min_area > 1:
                labels, n = ndimage.label(m, structure=np.ones((3, 3)))
                sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
                m = m & (sizes[labels] >= self.min_area)
            masks[i] = m
        return torch.from_numpy(masks)[:, None]
