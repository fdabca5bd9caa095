"""The in-memory image dataset that every medsec data source returns.

:class:`ImageDataset` holds a whole split as tensors, channel-first, in the [0, 1]
input space that attacks work in (GUIDE section 3: normalisation lives in the model
wrapper, never in the data). It validates what it is given once, at construction, so a
NaN pixel or a label outside the class list fails loudly here instead of producing
silently wrong robustness numbers later.

Errors: problems with the data themselves (empty, NaN, out of [0, 1], labels that do
not match the classes) raise :class:`~medsec.errors.DataError`; bad arguments to the
methods (indices out of range, a negative count, a bad size) raise
:class:`~medsec.errors.InputError`.

Reference: the dataset interface follows ``torch.utils.data.Dataset`` (Paszke et al.,
"PyTorch: An Imperative Style, High-Performance Deep Learning Library", NeurIPS 2019).

Example:
    >>> import torch
    >>> from medsec.data import ImageDataset
    >>> ds = ImageDataset(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), ["a", "b"], name="toy")
    >>> len(ds), ds.image_shape, ds.num_classes
    (4, (3, 8, 8), 2)
    >>> ds.resize(16).image_shape
    (3, 16, 16)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medsec.errors import DataError, InputError
from medsec.tasks import TASKS

log = logging.getLogger(__name__)


# images per chunk when resizing (bounds the float32 working memory)
_RESIZE_CHUNK = 512


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise ``size`` (an int or (H, W)) to a pair of positive ints."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise InputError(f"size must be an int or (height, width) of ints, got {size!r}") from None
        if any(isinstance(s, bool) or float(s) != int(s) for s in size):
            raise InputError(f"size must be an int or (height, width) of ints, got {size!r}")
    else:
        raise InputError(f"size must be an int or (height, width), got {size!r}")
    if h < 1 or w < 1:
        raise InputError(f"size must be positive, got {size!r}")
    return h, w


class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A labelled image set held in memory as tensors (N, C, H, W) in [0, 1].

    Args:
        images: (N, C, H, W) images. Floating point in [0, 1], or ``uint8`` in
            [0, 255] (kept as ``uint8`` to save 4x memory and converted to float32
            [0, 1] on access).
        labels: int class indices (N,) for ``"multiclass"``/``"binary"`` (an (N, 1)
            column is accepted and squeezed), or 0/1 targets (N, L) with
            L = ``len(classes)`` for ``"multilabel"``. Stored as int64.
        classes: class names; label ``i`` is ``classes[i]``.
        name: dataset name, used in messages and reports.
        task: ``"multiclass"`` (default), ``"binary"`` (two classes, labels 0/1)
            or ``"multilabel"``.
        meta: free-form provenance (source file, split, seed, ...).
        ids: optional per-image identifiers (e.g. file paths relative to the
            source folder), kept aligned by :meth:`subset`.

    Raises:
        DataError: empty data, NaN/Inf, values outside [0, 1], labels whose shape
            or values do not match the images and classes.

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0, 1], ["no", "yes"])
        >>> ds[1][0].dtype, int(ds[1][1])
        (torch.float32, 1)
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]],
        classes: Sequence[str],
        name: str = "dataset",
        task: str = "multiclass",
        meta: dict[str, Any] | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        self.name = str(name)
        self.classes = [str(c) for c in classes]
        self.task = task
        self.meta = dict(meta or {})
        self._data = self._check_images(images)
        self._labels = self._check_labels(labels, len(self._data))
        self.ids = None if ids is None else [str(i) for i in ids]
        if self.ids is not None and len(self.ids) != len(self._data):
            raise DataError(f"dataset {self.name!r}: {len(self.ids)} ids for {len(self._data)} images; pass one id per image")

    # ------------------------------------------------------------------ validation
    def _check_images(self, images: object) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise DataError(
                f"dataset {self.name!r}: images must be a torch.Tensor or numpy array (N, C, H, W), "
                f"got {type(images).__name__}"
            )
        if images.dim() != 4:
            raise DataError(
                f"dataset {self.name!r}: images must have shape (N, C, H, W), got {tuple(images.shape)}; "
                "add a channel axis for grayscale (images[:, None])"
            )
        if images.shape[0] == 0 or images.numel() == 0:
            raise DataError(
                f"dataset {self.name!r} is empty (images of shape {tuple(images.shape)}); "
                "check the data folder or file and the split"
            )
        if images.dtype == torch.uint8:
            return images.contiguous()
        if not images.is_floating_point():
            raise DataError(
                f"dataset {self.name!r}: images must be float in [0, 1] or uint8 in [0, 255], got dtype {images.dtype}"
            )
        images = images.detach().to(torch.float32).contiguous()
        finite = torch.isfinite(images)
        if not bool(finite.all()):
            bad = (~finite).flatten(1).any(1).nonzero().flatten()
            raise DataError(
                f"dataset {self.name!r}: {len(bad)} image(s) contain NaN/Inf values (first at index {int(bad[0])}); "
                "clean or drop them before building the dataset"
            )
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"dataset {self.name!r}: image values lie in [{lo:.4g}, {hi:.4g}], outside [0, 1]; "
                "pass un-normalised images scaled to [0, 1] (e.g. uint8 / 255); normalisation belongs in the model"
            )
        return images

    def _check_labels(self, labels: Any, n: int) -> torch.Tensor:
        if self.task not in TASKS:
            from medsec.registry import suggest

            raise DataError(
                f"dataset {self.name!r}: unknown task {self.task!r}.{suggest(str(self.task), TASKS)} "
                f"Use one of {', '.join(TASKS)}."
            )
        k = len(self.classes)
        if k == 0:
            raise DataError(f"dataset {self.name!r} has no classes; pass the list of class names")
        if self.task == "binary" and k != 2:
            raise DataError(f"dataset {self.name!r}: a binary task needs exactly 2 classes, got {k}")
        try:
            y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        except (TypeError, ValueError) as exc:
            raise DataError(f"dataset {self.name!r}: labels could not be read as a tensor ({exc})") from None
        if y.is_floating_point():
            if not bool(torch.isfinite(y).all()) or not torch.equal(y, y.round()):
                raise DataError(f"dataset {self.name!r}: labels must be integers, got non-integer or NaN floats")
        elif y.dtype == torch.bool:
            y = y.long()
        elif y.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            raise DataError(f"dataset {self.name!r}: labels must be integers, got dtype {y.dtype}")
        y = y.to(torch.int64)
        if self.task == "multilabel":
            if y.shape != (n, k):
                raise DataError(
                    f"dataset {self.name!r}: multi-label labels must have shape ({n}, {k}) "
                    f"(images x classes), got {tuple(y.shape)}"
                )
            if not bool(((y == 0) | (y == 1)).all()):
                raise DataError(f"dataset {self.name!r}: multi-label labels must contain only 0 and 1")
            return y.contiguous()
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (n,):
            raise DataError(
                f"dataset {self.name!r}: labels must have shape ({n},) to match {n} images, got {tuple(y.shape)}"
            )
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            raise DataError(
                f"dataset {self.name!r}: labels lie in [{lo}, {hi}] but there are {k} classes "
                f"(valid labels 0..{k - 1}); fix the labels or the class list"
            )
        return y.contiguous()

    # ------------------------------------------------------------------ access
    @property
    def images(self) -> torch.Tensor:
        """All images as float32 (N, C, H, W) in [0, 1].

        With ``uint8`` storage this converts on every access (a new tensor each
        time); index single items with ``ds[i]`` in loops.
        """
        if self._data.dtype == torch.uint8:
            return self._data.to(torch.float32).div_(255.0)
        return self._data

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels, (N,) or (N, L) for multi-label."""
        return self._labels

    @property
    def storage_dtype(self) -> torch.dtype:
        """How the pixels are held in memory (``torch.uint8`` or ``torch.float32``)."""
        return self._data.dtype

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self._data.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self._data.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._data[index]
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        return x, self._labels[index]

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"classes={self.num_classes}, task={self.task!r})"
        )

    def class_counts(self) -> dict[str, int]:
        """Number of images per class (for multi-label: positives per class)."""
        if self.task == "multilabel":
            counts = self._labels.sum(0)
        else:
            counts = torch.bincount(self._labels, minlength=self.num_classes)
        return {c: int(n) for c, n in zip(self.classes, counts)}

    # ------------------------------------------------------------------ derived datasets
    def derive(
        self, data: torch.Tensor, labels: torch.Tensor, ids: list[str] | None = None, **meta: Any
    ) -> ImageDataset:
        """A dataset of this one's name, classes, task and meta (updated with ``meta``) holding
        ``data`` and ``labels`` as given. They must already be valid (a subset, resize or
        poisoning of this dataset's images): they are not checked again."""
        out = ImageDataset.__new__(ImageDataset)
        out.name, out.classes, out.task, out.ids = self.name, list(self.classes), self.task, ids
        out.meta = {**self.meta, **meta}
        out._data, out._labels = data, labels  # already validated (subset / resize of valid data)
        if len(out) == 0:
            raise DataError(f"dataset {self.name!r} is empty after {', '.join(meta) or 'selection'}; select at least one image")
        return out

    def subset(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> ImageDataset:
        """A new dataset with the images at ``indices`` (ints, or a boolean mask of length N).

        Example:
            >>> import torch
            >>> ds = ImageDataset(torch.rand(5, 1, 4, 4), [0, 1, 0, 1, 0], ["a", "b"])
            >>> ds.subset([4, 0]).labels.tolist()
            [0, 0]
        """
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        n = len(self)
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise InputError(f"a boolean mask for {self.name!r} must have shape ({n},), got {tuple(idx.shape)}")
            idx = idx.nonzero().flatten()
        elif idx.numel() == 0:
            idx = idx.to(torch.int64).flatten()
        elif idx.is_floating_point() or idx.is_complex():
            raise InputError(f"subset indices must be integers, got dtype {idx.dtype}")
        idx = idx.to(torch.int64).flatten()
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise InputError(
                f"subset indices of {self.name!r} lie in [{int(idx.min())}, {int(idx.max())}] "
                f"but the dataset has {n} images (valid 0..{n - 1})"
            )
        ids = None if self.ids is None else [self.ids[i] for i in idx.tolist()]
        return self.derive(self._data[idx], self._labels[idx], ids, subset=int(idx.numel()))

    def take(self, n: int, generator: torch.Generator | None = None) -> ImageDataset:
        """The first ``n`` images, or ``n`` random ones (kept in dataset order) with ``generator``.

        ``n`` larger than the dataset gives the whole dataset.

        Example:
            >>> import torch
            >>> ds = ImageDataset(torch.rand(10, 1, 4, 4), [0, 1] * 5, ["a", "b"])
            >>> len(ds.take(3)), len(ds.take(3, torch.Generator().manual_seed(0)))
            (3, 3)
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"take(n) needs a positive integer n, got {n!r}")
        n = min(int(n), len(self))
        if generator is None:
            idx = torch.arange(n)
        else:
            idx = torch.randperm(len(self), generator=generator)[:n].sort().values
        return self.subset(idx)

    def resize(self, size: int | Sequence[int]) -> ImageDataset:
        """A new dataset with images resized to ``size`` (an int or (H, W)) by bilinear interpolation.

        Downsizing uses antialiasing (a triangle filter over the footprint), so a
        resized image is not aliased. ``uint8`` storage stays ``uint8`` (rounded).

        Example:
            >>> import torch
            >>> ds = ImageDataset(torch.rand(2, 3, 28, 28), [0, 1], ["a", "b"])
            >>> ds.resize((64, 32)).image_shape
            (3, 64, 32)
        """
        h, w = as_size(size)
        _, h0, w0 = self.image_shape
        if (h, w) == (h0, w0):
            return self.derive(self._data, self._labels, self.ids)
        antialias = h < h0 or w < w0
        out = torch.empty((len(self), self.image_shape[0], h, w), dtype=self._data.dtype)
        for i in range(0, len(self), _RESIZE_CHUNK):
            chunk = self._data[i : i + _RESIZE_CHUNK].to(torch.float32)
            if self._data.dtype == torch.uint8:
                chunk = chunk / 255.0
            r = F.interpolate(chunk, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
            r = r.clamp_(0.0, 1.0)
            out[i : i + _RESIZE_CHUNK] = r.mul_(255.0).round_().to(torch.uint8) if out.dtype == torch.uint8 else r
        log.debug("resized %s from %dx%d to %dx%d", self.name, h0, w0, h, w)
        return self.derive(out, self._labels, self.ids, size=[h, w])
