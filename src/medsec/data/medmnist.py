"""MedMNIST 2D datasets (BloodMNIST, PathMNIST, ChestMNIST, ...) from the official ``.npz`` files.

Reads ``<root>/<flag>.npz`` (keys ``{split}_images``, ``{split}_labels``) with
``np.load(allow_pickle=False)``; class names and task come from ``medmnist.INFO``.
Grayscale sets become 1-channel images; ``"multi-label, binary-class"`` (ChestMNIST)
becomes a ``"multilabel"`` dataset; ``"binary-class"`` and ``"ordinal-regression"``
sets are treated as multiclass (2 and 5 classes). Nothing is downloaded unless asked
(``download=True``); the default folder is ``$MEDSEC_DATA/<flag>``
(see :func:`medsec.data.data_root`).

Reference: Jiancheng Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark
for 2D and 3D biomedical image classification", Scientific Data 10, 41 (2023).
Licence CC BY 4.0.

Example:
    >>> import medsec.data
    >>> ds = medsec.data.create("medmnist", flag="bloodmnist", split="test")
    >>> len(ds), ds.image_shape, ds.num_classes
    (3421, (3, 28, 28), 8)
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsec.data.base import ImageDataset
from medsec.data.paths import ENV_VAR, data_root
from medsec.errors import DataError
from medsec.registry import DATASETS, suggest

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=1)
def _info() -> dict[str, dict[str, Any]]:
    """``medmnist.INFO`` (imported lazily: the package pulls in scikit-learn)."""
    try:
        from medmnist.info import INFO
    except ImportError:  # pragma: no cover - medmnist is a dependency
        raise DataError("the medmnist package is not installed; install it with `pip install medmnist`") from None
    info: dict[str, dict[str, Any]] = INFO
    return info


def flags() -> list[str]:
    """The 2D MedMNIST flags this loader reads (3D volumes are not supported)."""
    return sorted(k for k in _info() if not k.endswith("3d"))


@functools.lru_cache(maxsize=16)
def _load_split(path: str, mtime_ns: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split's arrays from an npz (cached per file, version and split)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = (f"{split}_images", f"{split}_labels")
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(
                    f"{path} has no {', '.join(missing)} (it holds {', '.join(z.files)}); "
                    "is it an official MedMNIST file?"
                )
            images, labels = z[keys[0]], z[keys[1]]
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError (pickled arrays)
        raise DataError(f"could not read {path} ({type(exc).__name__}: {exc}); re-download the file") from None
    images.flags.writeable = False  # cached: shared between callers
    labels.flags.writeable = False
    return images, labels


def _resolve_root(flag: str, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    return data_root() / flag


def _download(flag: str, split: str, folder: Path) -> None:
    info = _info()[flag]
    log.info("downloading MedMNIST %s to %s", flag, folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        import medmnist as medmnist_pkg

        getattr(medmnist_pkg, info["python_class"])(split=split, download=True, root=str(folder))
    except Exception as exc:
        raise DataError(
            f"downloading MedMNIST {flag!r} into {folder} failed ({type(exc).__name__}: {exc}); "
            f"download {info.get('url', 'the file')} by hand into that folder, or set root= to a folder holding {flag}.npz"
        ) from None


@DATASETS.register("medmnist")
def medmnist_dataset(
    flag: str = "bloodmnist",
    split: str = "train",
    root: str | Path | None = None,
    size: int | None = None,
    download: bool = False,
) -> ImageDataset:
    """Load one split of a 2D MedMNIST dataset as an :class:`ImageDataset`.

    Args:
        flag: MedMNIST name, e.g. ``"bloodmnist"``, ``"pathmnist"``, ``"chestmnist"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: folder holding ``<flag>.npz``; default ``$MEDSEC_DATA/<flag>``.
        size: resize the 28 px images to ``size`` x ``size`` (bilinear), e.g. 64 or 224.
        download: download the file with the ``medmnist`` package when it is absent.

    Returns:
        Images float32 (N, C, 28, 28) in [0, 1] (``uint8`` storage), int64 labels
        (N,), or (N, 14) 0/1 for ChestMNIST; ``classes`` from ``medmnist.INFO``.

    Raises:
        DataError: unknown flag or split, or the file is absent (the message names
            the expected path and how to fix it) or unreadable.

    Example:
        >>> ds = medmnist_dataset("bloodmnist", "val", size=64)
        >>> ds.image_shape
        (3, 64, 64)
    """
    info_all = _info()
    if not isinstance(flag, str) or flag not in info_all:
        raise DataError(
            f"unknown MedMNIST flag {flag!r}.{suggest(str(flag), flags())} Available: {', '.join(flags())}."
        )
    if flag.endswith("3d"):
        raise DataError(f"{flag!r} is a 3D MedMNIST volume set; the medmnist loader reads 2D sets only ({', '.join(flags())})")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}.{suggest(str(split), SPLITS)} Use one of {', '.join(SPLITS)}.")
    info = info_all[flag]
    folder = _resolve_root(flag, root)
    path = folder / f"{flag}.npz"
    if not path.is_file():
        if download:
            _download(flag, split, folder)
        if not path.is_file():
            where = "root=" + repr(str(root)) if root is not None else f"${ENV_VAR} (now {data_root()})"
            raise DataError(
                f"MedMNIST file not found: {path} (from {where}). Fix: put {flag}.npz there, set root= to the "
                f"folder holding it (or {ENV_VAR} to the folder holding {flag}/), or pass download=true to fetch it"
            )
    images, labels = _load_split(str(path), path.stat().st_mtime_ns, split)

    if images.dtype != np.uint8:
        raise DataError(f"{path}: {split}_images has dtype {images.dtype}, expected uint8; re-download the file")
    if images.ndim == 3:  # grayscale (N, H, W)
        x = torch.from_numpy(np.array(images[:, None], order="C"))  # np.array copies: the cache stays read-only
    elif images.ndim == 4 and images.shape[-1] in (1, 3):  # (N, H, W, C)
        x = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2), order="C"))
    else:
        raise DataError(f"{path}: {split}_images has unexpected shape {images.shape}; expected (N, H, W) or (N, H, W, C)")

    label_names = info["label"]
    classes = [label_names[str(i)] for i in range(len(label_names))]
    task = "multilabel" if info["task"].startswith("multi-label") else "multiclass"
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    meta = {"source": str(path), "flag": flag, "split": split, "medmnist_task": info["task"]}
    ds = ImageDataset(x, y, classes, name=flag, task=task, meta=meta)
    log.debug("loaded %s %s: %d images %s", flag, split, len(ds), ds.image_shape)
    if size is not None:
        ds = ds.resize(size)
    return ds
