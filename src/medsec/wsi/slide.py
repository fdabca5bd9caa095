"""Whole-slide images through OpenSlide: levels, microns per pixel, regions, thumbnails.

Reads every format OpenSlide reads (Aperio .svs, generic tiled .tif, Hamamatsu .ndpi,
MIRAX .mrxs, ...). Coordinates are always level-0 pixels (x, y), as in OpenSlide and
CLAM (Lu et al., "Data-efficient and weakly supervised computational pathology on
whole-slide images", Nature BME 2021).

Threat model: not applicable (data access).

Example:
    >>> from medsec.data import data_root
    >>> slide = Slide(data_root() / "he-samples" / "cmu_small_region.svs")
    >>> slide.dimensions, slide.mpp
    ((2220, 2967), 0.499)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsec.errors import DataError, InputError


class Slide:
    """An open whole-slide image.

    Args:
        path: the slide file.
        mpp: microns per pixel at level 0, when the file does not state it (e.g. some
            TCGA frozen sections); tiling by ``mpp`` needs one of the two.
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import openslide

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"slide file not found: {self.path}; check the path (slides are read with OpenSlide)")
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
            raise DataError(f"OpenSlide cannot read {self.path} ({exc}); use .svs, .tif, .ndpi, .mrxs, ...") from exc
        stated = self._osr.properties.get("openslide.mpp-x")
        if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
            raise InputError(f"mpp must be a positive number of microns per pixel, got {mpp}")
        self._mpp = float(mpp) if mpp is not None else (float(stated) if stated else None)

    # -- geometry ----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return tuple(self._osr.dimensions)  # type: ignore[return-value]

    @property
    def level_count(self) -> int:
        return int(self._osr.level_count)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(d) for d in self._osr.level_dimensions]  # type: ignore[misc]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self._osr.level_downsamples]

    @property
    def mpp(self) -> float | None:
        """Microns per pixel at level 0 (None when unknown)."""
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        p = self._osr.properties.get("openslide.objective-power")
        return float(p) if p else None

    def check_level(self, level: int) -> int:
        if isinstance(level, bool) or int(level) != level or not 0 <= int(level) < self.level_count:
            raise InputError(f"level must be an integer in 0..{self.level_count - 1} for {self.name}, got {level!r}")
        return int(level)

    def level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``mpp``."""
        if self._mpp is None:
            raise InputError(f"{self.name} does not state its microns per pixel; pass Slide(path, mpp=...) or tile by level")
        if not (np.isfinite(mpp) and mpp > 0):
            raise InputError(f"mpp must be a positive number of microns per pixel, got {mpp}")
        best = 0
        for lvl, ds in enumerate(self.level_downsamples):
            if self._mpp * ds <= mpp * (1 + 1e-6):
                best = lvl
        return best

    # -- pixels ------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) uint8 RGB of ``size`` = (w, h) level pixels whose top-left corner is
        level-0 pixel (x, y); transparent (outside-slide) pixels are white."""
        level = self.check_level(level)
        img = np.asarray(self._osr.read_region((int(x), int(y)), level, (int(size[0]), int(size[1]))))
        rgb, alpha = img[..., :3].astype(np.float32), img[..., 3:4].astype(np.float32) / 255.0
        out: np.ndarray = (rgb * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
        return out

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """(H, W, 3) uint8 thumbnail no larger than ``max_size`` and its downsample
        factor from level 0 (level-0 px per thumbnail px, the same along x and y up to rounding)."""
        if int(max_size) < 8:
            raise InputError(f"max_size must be >= 8 pixels, got {max_size}")
        w, h = self.dimensions
        scale = max(w, h) / float(max_size)
        size = (max(1, int(round(w / scale))), max(1, int(round(h / scale)))) if scale > 1 else (w, h)
        img = np.asarray(self._osr.get_thumbnail(size).convert("RGB"))
        return img, w / img.shape[1]

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({self.path.name!r}, dims={self.dimensions}, levels={self.level_count}, mpp={self.mpp})"
