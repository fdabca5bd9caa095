"""Tile content descriptors for the vulnerability-vs-content analysis (Liu et al.,
arXiv 2505.24141, analyse "the link between patch-level vulnerability and semantic
content").

Threat model: not applicable (analysis). Per tile (float (C, H, W) in [0, 1]):

* ``tissue``: fraction of tissue pixels (HSV saturation above Otsu's threshold of the tile
  or 0.05, :func:`medsec.wsi.tissue.tissue_mask` without morphology);
* ``nuclei``: nuclei density, the fraction of pixels whose haematoxylin channel of the
  Ruifrok & Johnston colour deconvolution (``skimage.color.rgb2hed``) exceeds 0.05
  (nuclei are haematoxylin-dense);
* ``stain``: stain intensity, the mean optical density -log10(I) over the RGB channels;
* ``hematoxylin``, ``eosin``: mean H and E concentrations.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from medsec.wsi.tissue import tissue_mask

DESCRIPTORS = ("tissue", "nuclei", "stain", "hematoxylin", "eosin")


def tile_content(tiles: torch.Tensor) -> dict[str, np.ndarray]:
    """The descriptors above for each tile of a (N, 3, H, W) batch."""
    from skimage.color import rgb2hed

    out: dict[str, list[float]] = {k: [] for k in DESCRIPTORS}
    for t in tiles:
        rgb = t.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy().astype(np.float64)
        hed = rgb2hed(rgb)
        out["tissue"].append(float(tissue_mask(rgb, min_size=0).mean()))
        out["nuclei"].append(float((hed[..., 0] > 0.05).mean()))
        out["stain"].append(float((-np.log10(np.clip(rgb, 1 / 255, 1))).mean()))
        out["hematoxylin"].append(float(hed[..., 0].mean()))
        out["eosin"].append(float(hed[..., 1].mean()))
    return {k: np.asarray(v) for k, v in out.items()}


def content_correlations(vulnerability: np.ndarray, content: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Spearman rho (and p) between per-tile vulnerability and each descriptor."""
    v = np.asarray(vulnerability, dtype=np.float64)
    res = {}
    for k, c in content.items():
        if np.std(c) == 0 or np.std(v) == 0:
            res[k] = {"spearman": float("nan"), "p": float("nan")}
            continue
        r = spearmanr(v, c)
        res[k] = {"spearman": float(r.statistic), "p": float(r.pvalue)}
    return res
