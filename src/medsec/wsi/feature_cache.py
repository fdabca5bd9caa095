"""Batched tile-feature extraction cached to HDF5 (the CLAM layout), resumable.

One file per slide holds ``features`` (N, D) float32 and ``coords`` (N, 2) int64 (level-0
top-left corners), as CLAM's ``extract_features_fp.py`` writes them (Lu et al., Nature
BME 2021), plus attributes: ``encoder``, ``dim``, ``n_tiles``, ``n_done`` and
``complete``. Extraction writes ``<name>.h5.partial`` and flushes after every batch with
``n_done`` updated last, so a run killed at any point resumes at the first unfinished
batch (rows past ``n_done`` are rewritten); the finished file is renamed into place, so
a reader never sees a half-written ``.h5``.

Threat model: not applicable (caching).

Example:
    >>> import tempfile
    >>> from medsec.data import data_root
    >>> from medsec.types import InputSpec
    >>> from medsec.wsi import Slide, SlideTiles, TileEncoder, tile_grid
    >>> slide = Slide(data_root() / "he-samples" / "cmu_small_region.svs")
    >>> grid = tile_grid(slide, tile_size=224, level=0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 16, stride=16), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> encoder = TileEncoder(net, InputSpec(channels=3), 16)  # a toy encoder (a foundation model in practice)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     bag = extract_features(encoder, SlideTiles(slide, grid), grid.coords, Path(tmp) / "slide.h5")
    >>> bag.features.shape
    torch.Size([41, 16])
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medsec.errors import DataError, InputError

log = logging.getLogger(__name__)


class TileSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, idx: Any) -> torch.Tensor: ...


class TensorTiles:
    """Tiles held in memory (an (N, C, H, W) tensor in [0, 1]) with the TileSource interface."""

    def __init__(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise InputError("tiles must be a float tensor (N, C, H, W) in [0, 1]")
        self.x = x

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, idx: Any) -> torch.Tensor:
        ids = torch.as_tensor(np.atleast_1d(np.asarray(idx, dtype=np.int64)))
        return self.x[ids]


@dataclass
class FeatureBag:
    """The cached features of one slide (a MIL bag)."""

    features: torch.Tensor
    coords: np.ndarray
    encoder: str
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _final(path: Path) -> Path:
    return path if path.suffix == ".h5" else path.with_suffix(path.suffix + ".h5")


def load_features(path: str | Path) -> FeatureBag:
    """Read a finished feature file (raises DataError for a missing or partial one)."""
    import h5py

    p = Path(path)
    if not p.is_file():
        partial = Path(str(p) + ".partial")
        hint = " (an interrupted extraction: rerun extract_features to resume it)" if partial.exists() else ""
        raise DataError(f"feature file not found: {p}{hint}")
    with h5py.File(p, "r") as f:
        if not bool(f.attrs.get("complete", False)) or "features" not in f:
            raise DataError(f"{p} is not a complete medsec/CLAM feature file (no 'features' or not complete)")
        feats = torch.from_numpy(f["features"][...].astype(np.float32))
        coords = f["coords"][...].astype(np.int64)
        enc = str(f.attrs.get("encoder", ""))
    return FeatureBag(feats, coords, enc, p)


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module,
    tiles: TileSource,
    coords: np.ndarray,
    path: str | Path,
    batch_size: int = 64,
    overwrite: bool = False,
) -> FeatureBag:
    """Encode every tile of ``tiles`` into ``path`` (resuming a partial file).

    Args:
        encoder: a :class:`~medsec.wsi.encoders.TileEncoder` (or any module (B,C,H,W)->(B,D)).
        tiles: random access to tiles in [0, 1] (``SlideTiles``, ``TensorTiles``).
        coords: (N, 2) tile coordinates stored beside the features.
        path: the output ``.h5`` file.
        batch_size: tiles per forward pass.
        overwrite: recompute even when a finished file exists.
    """
    import h5py

    final = _final(Path(path))
    coords = np.asarray(coords, dtype=np.int64)
    n = len(tiles)
    if coords.shape != (n, 2):
        raise InputError(f"coords must have shape ({n}, 2) for {n} tiles, got {coords.shape}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    name = str(getattr(encoder, "name", type(encoder).__name__))
    if final.is_file() and not overwrite:
        bag = load_features(final)
        if bag.encoder == name and len(bag) == n and np.array_equal(bag.coords, coords):
            return bag
        log.info("%s holds other features (encoder %r, %d tiles); recomputing", final, bag.encoder, len(bag))
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(str(final) + ".partial")
    was_training = encoder.training
    encoder.eval()
    dev = next(encoder.parameters()).device
    try:
        f = h5py.File(partial, "a")
        try:
            same = ("features" in f and f.attrs.get("encoder") == name and int(f.attrs.get("n_tiles", -1)) == n
                    and np.array_equal(f["coords"][...], coords))
            if not same:
                for key in list(f.keys()):
                    del f[key]
                f.attrs.update({"encoder": name, "n_tiles": n, "n_done": 0, "complete": False})
                f.create_dataset("coords", data=coords)
                dim = int(getattr(encoder, "dim", 0)) or int(encoder(tiles[[0]].to(dev)).shape[1])
                f.attrs["dim"] = dim
                f.create_dataset("features", shape=(n, dim), dtype="float32", chunks=(min(max(n, 1), 1024), dim))
            start = int(f.attrs["n_done"])
            if start:
                log.info("resuming %s at tile %d of %d", final, start, n)
            for i in range(start, n, int(batch_size)):
                j = min(n, i + int(batch_size))
                z = encoder(tiles[np.arange(i, j)].to(dev)).float().cpu().numpy()
                if not np.isfinite(z).all():
                    raise InputError(f"the encoder returned NaN/Inf features for tiles {i}..{j - 1}")
                f["features"][i:j] = z
                f.flush()
                f.attrs["n_done"] = j
                f.flush()
            f.attrs["complete"] = True
        finally:
            f.close()
    finally:
        encoder.train(was_training)
    os.replace(partial, final)
    return load_features(final)
