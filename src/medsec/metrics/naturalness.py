"""How visible a replacement patch is: coverage, colour-distribution distance between
patch and tissue pixels, blob count and the patch-area histogram (the naturalness
measures of SNAP, Kumar, Sharma & Narayan, AAAI 2024; SSIM/PSNR live in
:mod:`medsec.metrics.image_quality`).

Threat model: ``ThreatModel("patch", coverage)`` results; the patch of an image is
recovered from the images alone as the pixels where any channel differs from the clean
image (a patch pixel that happens to equal the clean pixel in every channel is not
counted, so coverage is a lower bound by at most those pixels).

Colour distance, per image: the 1-D Wasserstein (earth mover's) distance between the
patch pixels' and the remaining ("tissue") pixels' values, per channel, summed over the
channels, in CIE Lab (L in [0, 100], a/b in about [-128, 127]; D65, via
``skimage.color.rgb2lab``) and in optical density OD = -log10(max(x, 1/255)) (Beer-Lambert,
the space of stain deconvolution); plus the CIE76 colour difference (Delta E) between
the mean Lab colours of patch and tissue. Means over the images with a patch. Lower is
more natural. Grayscale images get the intensity distance only (``colour_w1_gray``).

Example:
    >>> import torch
    >>> x = torch.rand(2, 3, 16, 16); xa = x.clone(); xa[:, :, :4, :4] = 0.5
    >>> m = naturalness(x, xa)
    >>> round(m["coverage"], 4), m["blobs_mean"]
    (0.0625, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medsec.errors import InputError
from medsec.registry import METRICS

AREA_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)  # pixels; the last bin is open


def patch_mask(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Bool (B, H, W): pixels where any channel of ``x_adv`` differs from ``x``."""
    if x.shape != x_adv.shape or x.dim() != 4:
        raise InputError(f"x and x_adv must be image batches of one shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    return (x_adv != x).any(dim=1)


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a, b))


def blob_areas(mask: np.ndarray) -> list[int]:
    """Areas in pixels of the 8-connected blobs of a (H, W) bool mask."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    areas: list[int] = np.bincount(labels.reshape(-1), minlength=n + 1)[1:].astype(int).tolist()
    return areas


def area_histogram(areas: list[int]) -> dict[str, Any]:
    """Counts of blob areas in the log2 bins [1, 2), [2, 4), ..., [1024, 4096), [4096, inf)."""
    edges = list(AREA_EDGES)
    counts = np.histogram(np.asarray(areas, dtype=float), bins=[*edges, np.inf])[0] if areas else np.zeros(len(edges))
    return {"edges": edges, "counts": [int(c) for c in counts], "unit": "pixels",
            "note": "bin i holds areas in [edges[i], edges[i+1]); the last bin is open"}


@METRICS.register("patch_naturalness")
def naturalness(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, Any]:
    """Coverage, colour distances, blob count and area histogram of patched images.

    Args:
        x, x_adv: clean and patched images (B, C, H, W) in [0, 1].

    Returns:
        ``coverage`` (mean fraction of changed pixels), ``coverage_max``,
        ``colour_w1_lab``, ``colour_w1_od``, ``delta_e_lab`` (RGB only; None
        otherwise), ``colour_w1_gray`` (1 channel), ``blobs_mean``,
        ``blob_area_mean`` (pixels), ``patch_area_histogram`` and ``n_patched``.
    """
    from skimage.color import rgb2lab

    mask = patch_mask(x, x_adv).cpu().numpy()
    cov = mask.reshape(mask.shape[0], -1).mean(axis=1)
    xa = x_adv.detach().cpu().double().numpy()
    rgb = xa.shape[1] == 3
    w_lab, w_od, d_e, w_gray, areas, blobs = [], [], [], [], [], []
    for i in range(xa.shape[0]):
        m = mask[i]
        if not m.any():
            continue
        a = blob_areas(m)
        areas += a
        blobs.append(len(a))
        if m.all():
            continue  # no tissue left to compare with
        img = np.clip(xa[i].transpose(1, 2, 0), 0.0, 1.0)
        if rgb:
            lab = rgb2lab(img)
            p, t = lab[m], lab[~m]
            w_lab.append(sum(_w1(p[:, c], t[:, c]) for c in range(3)))
            d_e.append(float(np.linalg.norm(p.mean(0) - t.mean(0))))
        od = -np.log10(np.maximum(img, 1 / 255))
        w_od.append(sum(_w1(od[..., c][m], od[..., c][~m]) for c in range(img.shape[2])))
        if not rgb:
            w_gray.append(_w1(img[..., 0][m], img[..., 0][~m]))

    def mean(v: list[float]) -> float | None:
        return float(np.mean(v)) if v else None

    return {
        "coverage": float(cov.mean()), "coverage_max": float(cov.max()),
        "colour_w1_lab": mean(w_lab), "colour_w1_od": mean(w_od), "delta_e_lab": mean(d_e),
        "colour_w1_gray": mean(w_gray), "blobs_mean": mean([float(b) for b in blobs]),
        "blob_area_mean": mean([float(a) for a in areas]), "patch_area_histogram": area_histogram(areas),
        "n_patched": len(blobs),
    }
