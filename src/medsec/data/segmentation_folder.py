"""Segmentation folders: ``root/images/<id>.<ext>`` with ``root/masks/<id>.<ext>`` (the
Kvasir-SEG layout; Jha et al., "Kvasir-SEG: A Segmented Polyp Dataset", MMM 2020).

Images are read with Pillow as RGB (or grayscale), resized bilinearly (antialiased) and
held as ``uint8``; masks are read as grayscale, resized bilinearly to the same size and
then thresholded (binary: value > ``threshold``, default 127, which also undoes JPEG
ringing in the Kvasir masks), or taken as class indices with nearest-neighbour resizing
(``threshold=None``, multi-class masks stored as PNG). Pairs are matched by file stem; an
image without a mask (or the reverse) is an error, not silently dropped.

:class:`SegmentationDataset` holds images (N, C, H, W) and masks (N, H, W) and offers
what the runner needs: ``images`` (float [0, 1]), ``labels`` (= ``masks``, int64),
``subset``, ``image_shape``, ``num_classes`` and ``task = "segmentation"``.

Example:
    >>> import medsec.data
    >>> ds = medsec.data.create("kvasir_seg", size=96, limit=100)  # the first 100 of 998 pairs
    >>> ds.images.shape, ds.masks.shape
    (torch.Size([100, 3, 96, 96]), torch.Size([100, 96, 96]))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsec.data.base import as_size
from medsec.data.image_folder import EXTENSIONS, normalise_extensions
from medsec.data.paths import data_root
from medsec.errors import DataError, InputError
from medsec.registry import DATASETS

log = logging.getLogger(__name__)


class SegmentationDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images (N, C, H, W) uint8 or float [0, 1] with masks (N, H, W) of class indices.

    Raises:
        DataError: empty data, NaN/Inf or out-of-range images, masks whose shape or
            values do not match the images and ``num_classes``.
    """

    task = "segmentation"

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, num_classes: int = 2, name: str = "segmentation",
                 classes: Sequence[str] | None = None, ids: Sequence[str] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.name = str(name)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
            raise DataError(f"dataset {self.name!r}: images must be a non-empty (N, C, H, W) tensor")
        if images.dtype != torch.uint8:
            if not images.is_floating_point() or not torch.isfinite(images).all():
                raise DataError(f"dataset {self.name!r}: images must be uint8 or finite floats in [0, 1]")
            if float(images.min()) < 0 or float(images.max()) > 1:
                raise DataError(f"dataset {self.name!r}: float images must lie in [0, 1]")
        if not isinstance(masks, torch.Tensor) or masks.shape != (images.shape[0], *images.shape[2:]):
            shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise DataError(f"dataset {self.name!r}: masks must have shape {(images.shape[0], *images.shape[2:])}, got {shape}")
        if masks.is_floating_point() and not torch.equal(masks, masks.round()):
            raise DataError(f"dataset {self.name!r}: masks must hold integer class indices")
        self.num_classes = max(2, int(num_classes))
        if int(masks.min()) < 0 or int(masks.max()) >= self.num_classes:
            raise DataError(
                f"dataset {self.name!r}: mask values lie in [{int(masks.min())}, {int(masks.max())}] but there are "
                f"{self.num_classes} classes; threshold binary masks or set num_classes"
            )
        self._images = images
        self.masks = masks.to(torch.uint8 if self.num_classes <= 256 else torch.int64)
        self.classes = list(classes) if classes is not None else (
            ["background", "foreground"] if self.num_classes == 2 else [str(i) for i in range(self.num_classes)])
        self.ids = None if ids is None else [str(i) for i in ids]
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._images[i]
        return (x.float() / 255 if x.dtype == torch.uint8 else x), self.masks[i].long()

    @property
    def images(self) -> torch.Tensor:
        """All images as float32 in [0, 1] (N, C, H, W)."""
        x = self._images
        return x.float() / 255 if x.dtype == torch.uint8 else x

    @property
    def labels(self) -> torch.Tensor:
        """The masks as int64 (N, H, W) (the runner's labels)."""
        return self.masks.long()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self._images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> SegmentationDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise InputError(f"subset indices out of range for a dataset of {len(self)} images")
        ids = None if self.ids is None else [self.ids[int(i)] for i in idx]
        return SegmentationDataset(self._images[idx], self.masks[idx], self.num_classes, self.name, self.classes, ids,
                                   self.meta)

    def foreground_fraction(self) -> float:
        return float((self.masks > 0).float().mean())


def _files(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts}


def _read_image(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as src:
            im = src.convert(mode)
            if size is not None and (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"could not read {path} ({type(exc).__name__}: {exc}); remove or replace the file") from None


@DATASETS.register("segmentation_folder")
def segmentation_folder(
    root: str | Path,
    size: int | Sequence[int] | None = 128,
    channels: int = 3,
    threshold: int | None = 127,
    num_classes: int = 2,
    limit: int | None = None,
    images_dir: str = "images",
    masks_dir: str = "masks",
    extensions: Sequence[str] | str | None = None,
    name: str | None = None,
) -> SegmentationDataset:
    """Load ``root/images`` + ``root/masks`` pairs (matched by file stem).

    Args:
        root: the dataset folder.
        size: output size (int or (H, W)); None keeps the native size.
        channels: 3 (RGB) or 1 (grayscale) images.
        threshold: binary masks: foreground where the (resized) grey value > threshold;
            None: mask values are class indices (resized nearest-neighbour).
        num_classes: 2 for binary masks, else the class count of index masks.
        limit: read only the first ``limit`` pairs (sorted by id).
        images_dir, masks_dir: sub-folder names.

    Raises:
        DataError: a missing folder, no pairs, unmatched files, unreadable files.
    """
    if channels not in (1, 3):
        raise DataError(f"segmentation_folder channels must be 1 or 3, got {channels!r}")
    if limit is not None and int(limit) < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    hw = None if size is None else as_size(size)
    exts = normalise_extensions(extensions) if extensions is not None else EXTENSIONS
    top = Path(root).expanduser()
    img_dir, mask_dir = top / images_dir, top / masks_dir
    for d, what in ((top, "dataset folder"), (img_dir, "images folder"), (mask_dir, "masks folder")):
        if not d.is_dir():
            raise DataError(f"{what} not found: {d.absolute()}; expected {top}/{images_dir}/ and {top}/{masks_dir}/")
    imgs, masks = _files(img_dir, exts), _files(mask_dir, exts)
    if not imgs:
        raise DataError(f"no images in {img_dir} (extensions {', '.join(exts)})")
    only_img, only_mask = sorted(set(imgs) - set(masks)), sorted(set(masks) - set(imgs))
    if only_img or only_mask:
        raise DataError(
            f"{top}: {len(only_img)} images without a mask (e.g. {only_img[:2]}) and {len(only_mask)} masks without "
            f"an image (e.g. {only_mask[:2]}); every image needs a mask with the same file stem"
        )
    ids = sorted(imgs)[: int(limit)] if limit is not None else sorted(imgs)
    mode = "RGB" if channels == 3 else "L"
    x = np.stack([_read_image(imgs[i], mode, hw) for i in ids])
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    if threshold is None:
        from PIL import Image

        def read_mask(p: Path) -> np.ndarray:
            with Image.open(p) as src:
                im = src.convert("L")
                if hw is not None and (im.height, im.width) != hw:
                    im = im.resize((hw[1], hw[0]), Image.Resampling.NEAREST)
                return np.asarray(im, dtype=np.int64)

        m = np.stack([read_mask(masks[i]) for i in ids])
    else:
        m = (np.stack([_read_image(masks[i], "L", hw) for i in ids]) > int(threshold)).astype(np.uint8)
    shapes = {a.shape[1:] for a in x} | {a.shape for a in m}
    if len(shapes) > 1:
        raise DataError(f"{top}: images and masks differ in size; pass size= to resize them")
    ds = SegmentationDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(m), num_classes,
                             name or top.name, ids=ids, meta={"source": str(top.absolute())})
    log.info("segmentation_folder %s: %d pairs, foreground %.3f", top, len(ds), ds.foreground_fraction())
    return ds


segmentation_folder.task = "segmentation"  # type: ignore[attr-defined]


@DATASETS.register("kvasir_seg")
def kvasir_seg(root: str | Path | None = None, size: int | Sequence[int] | None = 128, limit: int | None = None) -> SegmentationDataset:
    """Kvasir-SEG polyps (998 pairs at 256 px in ``$MEDSEC_DATA/kvasir-seg-256``), binary masks thresholded at 127."""
    root = Path(root) if root is not None else data_root() / "kvasir-seg-256"
    ds: SegmentationDataset = segmentation_folder(root, size=size, limit=limit, name="kvasir-seg")
    return ds


kvasir_seg.task = "segmentation"  # type: ignore[attr-defined]
