"""A labelled image folder: one sub-folder per class (the torchvision ``ImageFolder`` layout).

``root/<class>/**/<image>`` with class names from the sorted sub-folder names. Files
directly in ``root`` (captions, CSVs, READMEs) and files with other extensions are
ignored, as are hidden files and folders. Images are read with Pillow, converted to RGB
or grayscale, resized with bilinear filtering (antialiased when downsizing) and held
as ``uint8``; they come out as float32 [0, 1].

Reference: the layout of ``torchvision.datasets.ImageFolder`` (Marcel & Rodriguez,
"Torchvision the machine-vision package of torch", ACM MM 2010). Used in medsec with
e.g. BUSI (Al-Dhabyani et al., "Dataset of breast ultrasound images", Data in Brief
28, 104863, 2020).

Example:
    >>> import medsec.data
    >>> ds = medsec.data.create("image_folder", root=medsec.data.data_root() / "busi-256", size=32)
    >>> ds.classes
    ['benign', 'malignant', 'normal']
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medsec.data.base import ImageDataset, as_size
from medsec.errors import DataError
from medsec.registry import DATASETS

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def normalise_extensions(extensions: Sequence[str] | str | None) -> tuple[str, ...]:
    """File suffixes as lower-case ``.ext`` strings (default :data:`EXTENSIONS`)."""
    if extensions is None:
        return EXTENSIONS
    if isinstance(extensions, str):
        extensions = [extensions]
    exts = tuple(("." + e.lower().lstrip(".")) for e in extensions if e.strip(". "))
    if not exts:
        raise DataError(f"extensions must name at least one file type, e.g. ['.png'], got {extensions!r}")
    return exts


def _visible(path: Path, top: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(top).parts)


def _scan(root: Path, exts: tuple[str, ...]) -> tuple[list[str], list[tuple[Path, int]]]:
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    classes: list[str] = []
    files: list[tuple[Path, int]] = []
    for d in class_dirs:
        found = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in exts and _visible(p, d))
        if not found:
            log.warning("image_folder: skipping %s (no %s files)", d, "/".join(exts))
            continue
        files.extend((p, len(classes)) for p in found)
        classes.append(d.name)
    return classes, files


def _read(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as src:
            im = src.convert(mode)
            if size is not None and (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"could not read image {path} ({type(exc).__name__}: {exc}); remove or replace the file") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@DATASETS.register("image_folder")
def image_folder(
    root: str | Path,
    size: int | Sequence[int] | None = 64,
    channels: int = 3,
    extensions: Sequence[str] | str | None = None,
    name: str | None = None,
) -> ImageDataset:
    """Load ``root/<class>/...`` images into an :class:`ImageDataset`.

    Args:
        root: folder with one sub-folder per class; class names are the sorted
            sub-folder names (sub-folders without images are skipped with a warning).
        size: output size, an int or (H, W); ``None`` keeps the native size (all
            images must then share it).
        channels: 3 (RGB) or 1 (grayscale).
        extensions: file suffixes to read (case-insensitive); default
            png, jpg, jpeg, bmp, tif, tiff, webp.
        name: dataset name; default the folder name.

    Raises:
        DataError: root missing or not a folder, no class folder holds an image,
            an image cannot be read, or (``size=None``) images differ in size.

    Example:
        >>> from medsec.data import data_root
        >>> ds = image_folder(data_root() / "busi-256", size=32, channels=1)
        >>> ds.image_shape
        (1, 32, 32)
    """
    if channels not in (1, 3):
        raise DataError(f"image_folder channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    hw = None if size is None else as_size(size)
    exts = normalise_extensions(extensions)
    top = Path(root).expanduser()
    if not top.exists():
        raise DataError(f"image folder not found: {top.absolute()}; set root to a folder with one sub-folder per class")
    if not top.is_dir():
        raise DataError(f"image folder root {top} is a file, not a folder; point root at the folder holding the class folders")
    classes, files = _scan(top, exts)
    if not files:
        raise DataError(
            f"no images in {top}: expected {top}/<class>/<image> with extensions {', '.join(exts)} "
            "(files directly in root are ignored); check root and extensions"
        )
    mode = "RGB" if channels == 3 else "L"
    arrays = [_read(p, mode, hw) for p, _ in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(
            f"images in {top} have different sizes ({len(shapes)} distinct, e.g. {sorted(shapes)[:2]}); pass size= to resize them"
        )
    x = torch.from_numpy(np.stack(arrays))
    y = torch.tensor([c for _, c in files], dtype=torch.int64)
    ids = [p.relative_to(top).as_posix() for p, _ in files]
    ds = ImageDataset(x, y, classes, name=name or top.name, meta={"source": str(top.absolute())}, ids=ids)
    log.info("image_folder %s: %d images, classes %s", top, len(ds), ds.class_counts())
    return ds
