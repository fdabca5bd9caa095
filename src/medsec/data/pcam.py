"""PatchCamelyon (PCam) and Kaggle Histopathologic Cancer Detection (HCD) lymph-node tiles,
the data of the SNAP paper (Kumar, Sharma & Narayan, AAAI 2024), for users who have them.

Two layouts are read (``layout="auto"`` picks the one present):

* ``h5`` — the torchvision / original PCam files (Veeling et al., "Rotation equivariant
  CNNs for digital pathology", MICCAI 2018): ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``
  in ``root`` or ``root/pcam``; ``x`` holds (N, 96, 96, 3) uint8 tiles, ``y`` (N, 1, 1, 1)
  labels. Splits ``train``, ``val`` (the ``valid`` files) and ``test``.
* ``kaggle`` — the Kaggle HCD folder (Cukierski, "Histopathologic Cancer Detection",
  Kaggle 2018; a de-duplicated PCam): ``root/train/<id>.tif`` and ``root/train_labels.csv``
  (columns ``id,label``). Only the training tiles are labelled, so ``split="train"`` is a
  seeded ``1 - holdout`` share of the ids and ``"val"``/``"test"`` the other ``holdout``
  share (the paper used 8,000 / 2,000).

Label 1: the central 32 x 32 region holds tumour tissue; classes ``["no metastasis",
"metastasis"]`` (the paper's targeted attack aims at class 0). Neither dataset is
downloaded by medsec (PCam: CC0, from the authors' page or torchvision; HCD: a Kaggle
login).

Example:
    >>> import medsec.data
    >>> ds = medsec.data.create("pcam", root="data/pcam", split="val", size=224, limit=2000)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from medsec.data.base import ImageDataset
from medsec.errors import DataError
from medsec.registry import DATASETS, suggest

log = logging.getLogger(__name__)

CLASSES = ["no metastasis", "metastasis"]
SPLITS = ("train", "val", "test")
LAYOUTS = ("auto", "h5", "kaggle")
_H5_SPLIT = {"train": "train", "val": "valid", "test": "test"}


def _h5_files(root: Path, split: str) -> tuple[Path, Path] | None:
    for folder in (root, root / "pcam"):
        x = folder / f"camelyonpatch_level_2_split_{_H5_SPLIT[split]}_x.h5"
        y = folder / f"camelyonpatch_level_2_split_{_H5_SPLIT[split]}_y.h5"
        if x.is_file() and y.is_file():
            return x, y
    return None


def _read_h5(xf: Path, yf: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise DataError("reading PCam h5 files needs h5py; install it with `pip install h5py`") from None
    try:
        with h5py.File(xf, "r") as fx, h5py.File(yf, "r") as fy:
            if "x" not in fx or "y" not in fy:
                raise DataError(f"{xf} / {yf} lack the 'x' / 'y' datasets of the PCam layout")
            n = fx["x"].shape[0] if limit is None else min(limit, fx["x"].shape[0])
            x = np.asarray(fx["x"][:n])
            y = np.asarray(fy["y"][:n]).reshape(-1)
    except DataError:
        raise
    except Exception as exc:  # OSError from a truncated or foreign file
        raise DataError(f"could not read PCam files {xf}, {yf} ({type(exc).__name__}: {exc})") from None
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise DataError(f"{xf}: expected uint8 tiles (N, H, W, 3), got {x.dtype} {x.shape}")
    if len(y) < len(x):
        raise DataError(f"{yf} holds {len(y)} labels for {len(x)} tiles")
    return x, y[: len(x)]


def _read_kaggle(root: Path, split: str, limit: int | None, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    labels_csv = root / "train_labels.csv"
    try:
        with labels_csv.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
                raise DataError(f"{labels_csv} must have the columns id,label (got {reader.fieldnames})")
            rows = sorted((r["id"], r["label"]) for r in reader)
    except OSError as exc:
        raise DataError(f"could not read {labels_csv} ({exc})") from None
    if not rows:
        raise DataError(f"{labels_csv} lists no tiles")
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    n_hold = int(round(holdout * len(rows)))
    chosen = perm[:n_hold] if split in ("val", "test") else perm[n_hold:]
    chosen = sorted(chosen)[: limit] if limit is not None else sorted(chosen)
    if not chosen:
        raise DataError(f"the {split!r} share of {labels_csv} is empty (holdout={holdout}); change holdout")
    images, ys, ids = [], [], []
    for i in chosen:
        tid, lab = rows[i]
        path = root / "train" / f"{tid}.tif"
        if not path.is_file():
            raise DataError(f"{labels_csv} lists {tid!r} but {path} is missing")
        try:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"could not read tile {path} ({exc})") from None
        try:
            ys.append(int(lab))
        except ValueError:
            raise DataError(f"{labels_csv}: label {lab!r} of {tid!r} is not 0 or 1") from None
        ids.append(f"train/{tid}.tif")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DataError(f"tiles in {root / 'train'} differ in size ({sorted(shapes)[:2]})")
    return np.stack(images), np.asarray(ys), ids


@DATASETS.register("pcam")
def pcam(
    root: str | Path,
    split: str = "train",
    layout: str = "auto",
    size: int | None = None,
    limit: int | None = None,
    holdout: float = 0.2,
    seed: int = 0,
) -> ImageDataset:
    """Load PCam (h5) or Kaggle HCD (folder + train_labels.csv) tiles as an :class:`ImageDataset`.

    Args:
        root: folder holding the h5 files (or ``pcam/`` with them), or the Kaggle folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        layout: ``"auto"``, ``"h5"`` or ``"kaggle"``.
        size: resize the 96 px tiles (e.g. 224, the paper's input).
        limit: read at most this many tiles (the first ones of the split).
        holdout: Kaggle layout: the share of labelled tiles held out for val/test.
        seed: Kaggle layout: the seed of the train/held-out split.

    Raises:
        DataError: unknown split or layout, missing files (the message lists the
            expected names of both layouts), unreadable files or labels not in {0, 1}.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}.{suggest(str(split), SPLITS)} Use one of {', '.join(SPLITS)}.")
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}.{suggest(str(layout), LAYOUTS)} Use one of {', '.join(LAYOUTS)}.")
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    if not 0 < float(holdout) < 1:
        raise DataError(f"holdout must lie in (0, 1), got {holdout!r}")
    top = Path(root).expanduser()
    if not top.is_dir():
        raise DataError(f"PCam folder not found: {top.absolute()}; set root to the folder holding the PCam h5 files "
                        "or the Kaggle train/ folder and train_labels.csv")
    h5 = _h5_files(top, split) if layout in ("auto", "h5") else None
    kaggle = (top / "train_labels.csv").is_file() and (top / "train").is_dir()
    if h5 is not None:
        x, y = _read_h5(*h5, limit)
        ids, source = None, str(h5[0])
    elif layout in ("auto", "kaggle") and kaggle:
        x, y, ids = _read_kaggle(top, split, limit, float(holdout), int(seed))
        source = str(top)
    else:
        name = _H5_SPLIT[split]
        raise DataError(
            f"no PCam data for split {split!r} in {top}: expected camelyonpatch_level_2_split_{name}_x.h5 and "
            f"..._{name}_y.h5 (in {top} or {top / 'pcam'}; layout h5) or train/<id>.tif with train_labels.csv "
            "(layout kaggle)"
        )
    if len(y) and not np.isin(y, (0, 1)).all():
        raise DataError(f"PCam labels must be 0 or 1, found {sorted(set(np.unique(y).tolist()))[:5]}")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    ds = ImageDataset(images, torch.from_numpy(y.astype(np.int64)), CLASSES, name="pcam",
                      meta={"source": source, "split": split, "layout": "h5" if h5 is not None else "kaggle"}, ids=ids)
    log.info("pcam %s: %d tiles %s", split, len(ds), ds.class_counts())
    return ds.resize(size) if size is not None else ds
