"""Tiling a whole slide: a grid of tiles at a level (or a target microns per pixel),
kept where the tissue mask covers enough of the tile.

Threat model: not applicable (preprocessing). Conventions follow CLAM (Lu et al., Nature
BME 2021): non-overlapping ``tile_size`` x ``tile_size`` tiles at the read level (stride
= ``tile_size`` unless given), coordinates of the top-left corner in level-0 pixels,
a tile kept when at least ``min_tissue`` of its footprint is tissue in the thumbnail
mask (:func:`medsec.wsi.tissue.tissue_mask`). Only tiles that fit entirely inside the
level are produced: a level of width W gives ``(W - tile_size) // stride + 1`` columns.

Tiling by microns per pixel (``mpp=0.5`` is "20x"): medsec reads at the coarsest level
at least as fine as ``mpp`` a region of ``round(tile_size * mpp / level_mpp)`` pixels
and resizes it to ``tile_size`` (antialiased), so a tile always covers
``tile_size * mpp`` microns.

Example:
    >>> from medsec.data import data_root
    >>> from medsec.wsi import Slide
    >>> slide = Slide(data_root() / "he-samples" / "cmu_small_region.svs")
    >>> grid = tile_grid(slide, tile_size=224, level=0)
    >>> grid.coords.shape
    (41, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medsec.errors import InputError
from medsec.wsi.slide import Slide
from medsec.wsi.tissue import tissue_mask


@dataclass
class TileGrid:
    """The tiles of one slide.

    Attributes:
        coords: (N, 2) int64 level-0 (x, y) of each tile's top-left corner.
        level: the level read.
        read_size: side of the region read at ``level`` (level pixels).
        tile_size: side of the tile given to the encoder (pixels).
        tissue: (N,) tissue fraction of each tile's footprint.
        mask: the thumbnail tissue mask and ``downsample`` its level-0 px per mask px.
    """

    coords: np.ndarray
    level: int
    read_size: int
    tile_size: int
    tissue: np.ndarray
    mask: np.ndarray
    downsample: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def footprint(self) -> int:
        """Side of a tile in level-0 pixels (rounded)."""
        return int(round(self.read_size * float(self.meta.get("level_downsample", 1.0))))


def _fraction(mask: np.ndarray, x0: float, y0: float, side: float, downsample: float) -> float:
    """Mean of the mask over the level-0 square [x0, x0+side) x [y0, y0+side)."""
    h, w = mask.shape
    c0, r0 = int(np.floor(x0 / downsample)), int(np.floor(y0 / downsample))
    c1 = min(w, max(c0 + 1, int(np.ceil((x0 + side) / downsample))))
    r1 = min(h, max(r0 + 1, int(np.ceil((y0 + side) / downsample))))
    block = mask[r0:r1, c0:c1]
    return float(block.mean()) if block.size else 0.0


def tile_grid(
    slide: Slide,
    tile_size: int = 224,
    level: int | None = None,
    mpp: float | None = None,
    stride: int | None = None,
    min_tissue: float = 0.5,
    mask: np.ndarray | None = None,
    thumbnail_size: int = 1024,
) -> TileGrid:
    """The tissue tiles of ``slide``.

    Args:
        slide: an open :class:`Slide`.
        tile_size: output tile side in pixels.
        level: pyramid level to read (default 0); exclusive with ``mpp``.
        mpp: target microns per pixel (e.g. 0.5 for 20x, 0.25 for 40x).
        stride: grid step in read-level pixels (default: the read size, no overlap).
        min_tissue: smallest tissue fraction of a kept tile, in [0, 1]; 0 keeps every tile.
        mask: a precomputed boolean thumbnail mask (default: :func:`tissue_mask` of a
            ``thumbnail_size`` thumbnail).
    """
    if isinstance(tile_size, bool) or int(tile_size) != tile_size or int(tile_size) < 1:
        raise InputError(f"tile_size must be a positive integer, got {tile_size!r}")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise InputError(f"min_tissue is a fraction in [0, 1], got {min_tissue}")
    if level is not None and mpp is not None:
        raise InputError("give level or mpp, not both")
    tile_size = int(tile_size)
    if mpp is not None:
        level = slide.level_for_mpp(float(mpp))
        level_mpp = float(slide.mpp) * slide.level_downsamples[level]  # type: ignore[arg-type]
        read_size = max(1, int(round(tile_size * float(mpp) / level_mpp)))
    else:
        level = slide.check_level(0 if level is None else level)
        read_size = tile_size
    step = read_size if stride is None else int(stride)
    if step < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    ds = slide.level_downsamples[level]
    lw, lh = slide.level_dimensions[level]
    if read_size > lw or read_size > lh:
        raise InputError(f"tiles of {read_size} px do not fit level {level} of {slide.name} ({lw}x{lh}); use a smaller tile or a finer level")
    if mask is None:
        thumb, mask_ds = slide.thumbnail(thumbnail_size)
        mask = tissue_mask(thumb)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise InputError(f"mask must be a 2-D boolean array, got shape {mask.shape}")
        mask_ds = slide.dimensions[0] / mask.shape[1]
    cols = (lw - read_size) // step + 1
    rows = (lh - read_size) // step + 1
    side0 = read_size * ds
    coords, fracs = [], []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * step * ds, r * step * ds
            frac = _fraction(mask, x0, y0, side0, mask_ds) if min_tissue > 0 else 1.0
            if frac >= min_tissue:
                coords.append((int(round(x0)), int(round(y0))))
                fracs.append(frac)
    arr = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    meta = {"slide": slide.name, "level_downsample": ds, "grid": [rows, cols], "mpp": mpp, "stride": step,
            "min_tissue": float(min_tissue)}
    return TileGrid(arr, level, read_size, tile_size, np.asarray(fracs, dtype=np.float32), mask, float(mask_ds), meta)


class SlideTiles:
    """Random access to the tiles of a grid as float (3, S, S) tensors in [0, 1].

    ``tiles[idx]`` reads only the tiles asked for (an attack on k tiles reads k tiles).
    """

    def __init__(self, slide: Slide, grid: TileGrid) -> None:
        self.slide, self.grid = slide, grid

    def __len__(self) -> int:
        return len(self.grid)

    def read(self, i: int) -> torch.Tensor:
        x, y = self.grid.coords[int(i)]
        rgb = self.slide.read_region(int(x), int(y), self.grid.level, (self.grid.read_size, self.grid.read_size))
        t = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
        if self.grid.read_size != self.grid.tile_size:
            t = torch.nn.functional.interpolate(t[None], size=(self.grid.tile_size,) * 2, mode="bilinear",
                                                antialias=True, align_corners=False)[0].clamp(0, 1)
        return t

    def __getitem__(self, idx: Any) -> torch.Tensor:
        ids = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise InputError(f"tile index out of range 0..{len(self) - 1}")
        return torch.stack([self.read(int(i)) for i in ids]) if ids.size else torch.empty(0, 3, self.grid.tile_size, self.grid.tile_size)
