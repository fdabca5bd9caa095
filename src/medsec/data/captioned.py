"""Image-caption pairs for contrastive (CLIP-style) pretraining, and BUSI's fixed split.

Three real sources in ``$MEDSEC_DATA``:

* **BUSI** (Al-Dhabyani et al., "Dataset of breast ultrasound images", Data in Brief 28,
  104863, 2020), ``busi-256/``: 780 breast ultrasound images (benign / malignant / normal),
  each with its caption from ``captions.csv`` (template sentences written by the source
  repository's author, e.g. "An ultrasound image of breast with benign findings.").
* **Kvasir-SEG** (Jha et al., "Kvasir-SEG: A Segmented Polyp Dataset", MMM 2020),
  ``kvasir-seg-256/images/``: 998 colonoscopy images, all with a polyp, captioned from a
  few polyp sentences ("an endoscopy image of a colon polyp", ...).
* **BloodMNIST** (Yang et al., "MedMNIST v2", Scientific Data 2023): blood-cell images
  captioned from their class names and templates.

BUSI has no official split: :func:`busi_split` makes one stratified, seeded split (20% of
each class held out, seed :data:`BUSI_SPLIT_SEED`) that every medsec user of BUSI
captions shares, so a model pretrained on the BUSI train part never saw a test image.

Each pair set is a :class:`CaptionedImages`: images, the distinct caption texts, each
image's caption index, and each caption's *group* (a dataset-qualified class such as
``busi/benign``): captions of one group describe the same kind of image, which the
multi-positive CLIP loss of :mod:`medsec.recipes.clip` uses.

Threat model: none (data).

Example:
    >>> train, test = busi_split(size=64)
    >>> pairs = busi_pairs(train)  # concat([pairs, kvasir_pairs(size=64), ...]) joins sources
    >>> pairs.captions[int(pairs.caption_index[0])]
    'An ultrasound image of breast with benign findings.'
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from medsec.data.base import ImageDataset
from medsec.data.paths import data_root
from medsec.errors import DataError, InputError

log = logging.getLogger(__name__)

BUSI_CLASSES = ("benign", "malignant", "normal")
BUSI_SPLIT_SEED = 0
BUSI_TEST_FRACTION = 0.2
KVASIR_CAPTIONS = ("an endoscopy image of a colon polyp", "a colonoscopy image showing a polyp",
                   "an endoscopic view of a colorectal polyp", "a polyp seen at colonoscopy")


@dataclass
class CaptionedImages:
    """Images paired with captions.

    Attributes:
        images: (N, 3, H, W) ``uint8`` images.
        captions: the distinct caption texts.
        caption_index: (N,) int64, image i's caption is ``captions[caption_index[i]]``.
        groups: group names (dataset-qualified classes, e.g. ``busi/benign``).
        caption_group: (len(captions),) int64, the group of each caption.
        image_group: (N,) int64, the group of each image (that of its caption).
        ids: per-image identifiers (``busi/benign/benign (1).png``, ``kvasir/<id>.jpg``, ...).
    """

    images: torch.Tensor
    captions: list[str]
    caption_index: torch.Tensor
    groups: list[str]
    caption_group: torch.Tensor
    ids: list[str]

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataError(f"captioned images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.caption_index.shape != (n,) or len(self.ids) != n:
            raise DataError(f"captioned images: {n} images, {tuple(self.caption_index.shape)} caption indices, "
                            f"{len(self.ids)} ids; give one caption and one id per image")
        if self.caption_group.shape != (len(self.captions),):
            raise DataError(f"{len(self.captions)} captions but {tuple(self.caption_group.shape)} caption groups")
        if n and (int(self.caption_index.min()) < 0 or int(self.caption_index.max()) >= len(self.captions)):
            raise DataError("a caption index lies outside the caption list")
        if len(self.captions) and (int(self.caption_group.min()) < 0 or int(self.caption_group.max()) >= len(self.groups)):
            raise DataError("a caption group lies outside the group list")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_group(self) -> torch.Tensor:
        return self.caption_group[self.caption_index]

    def group_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.image_group, minlength=len(self.groups))
        return {g: int(c) for g, c in zip(self.groups, counts)}

    def take(self, n: int, generator: torch.Generator | None = None) -> CaptionedImages:
        """``n`` random pairs (kept in order; all captions kept), or all if ``n >= len(self)``."""
        if n < 1:
            raise InputError(f"take(n) needs n >= 1, got {n}")
        idx = torch.randperm(len(self), generator=generator)[: min(n, len(self))].sort().values
        return CaptionedImages(self.images[idx], list(self.captions), self.caption_index[idx], list(self.groups),
                               self.caption_group.clone(), [self.ids[i] for i in idx.tolist()])

    def captions_of(self, group: str) -> list[str]:
        """The captions of ``group`` (e.g. ``busi/benign``), in caption order."""
        if group not in self.groups:
            raise InputError(f"no caption group {group!r}; groups: {', '.join(self.groups)}")
        g = self.groups.index(group)
        return [c for c, cg in zip(self.captions, self.caption_group.tolist()) if cg == g]


def _uint8(ds: ImageDataset) -> torch.Tensor:
    x = ds.images
    x = x if x.dtype == torch.uint8 else (x * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x


def busi_root(root: str | Path | None = None) -> Path:
    top = Path(root) if root is not None else data_root() / "busi-256"
    if not all((top / c).is_dir() for c in BUSI_CLASSES):
        raise DataError(f"BUSI not found at {top} (expected benign/, malignant/, normal/ and captions.csv); "
                        "set the root or MEDSEC_DATA")
    return top


def busi_split(root: str | Path | None = None, size: int = 64, test_fraction: float = BUSI_TEST_FRACTION,
               seed: int = BUSI_SPLIT_SEED) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) BUSI at ``size`` px: ``round(test_fraction * n_c)`` random images of each
    class c held out (seeded by ``seed``), both parts in file order, ids relative to the root."""
    from medsec.data.image_folder import image_folder

    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    top = busi_root(root)
    full = image_folder(top, size=size, name="busi")
    if tuple(full.classes) != BUSI_CLASSES:
        raise DataError(f"BUSI at {top} has classes {full.classes}, expected {list(BUSI_CLASSES)}")
    g = torch.Generator().manual_seed(int(seed))
    test_mask = torch.zeros(len(full), dtype=torch.bool)
    for c in range(full.num_classes):
        idx = (full.labels == c).nonzero().flatten()
        k = max(1, round(test_fraction * len(idx)))
        test_mask[idx[torch.randperm(len(idx), generator=g)[:k]]] = True
    train, test = full.subset(~test_mask), full.subset(test_mask)
    train.meta.update(split="train", split_seed=int(seed), test_fraction=test_fraction)
    test.meta.update(split="test", split_seed=int(seed), test_fraction=test_fraction)
    return train, test


def read_busi_captions(root: str | Path | None = None) -> dict[str, tuple[str, str]]:
    """``{image_path: (caption, label)}`` from BUSI's ``captions.csv`` (paths relative to the root).

    Raises:
        DataError: the file is missing, lacks a column, a row's label is not its folder's,
            or a caption is empty.
    """
    top = busi_root(root)
    path = top / "captions.csv"
    if not path.is_file():
        raise DataError(f"BUSI captions not found: {path}; the folder needs captions.csv (image_path,text_caption,label)")
    out: dict[str, tuple[str, str]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image_path", "text_caption", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path} lacks the column(s) {sorted(missing)}; expected image_path,text_caption,label")
        for i, row in enumerate(reader, start=2):
            rel, cap, label = row["image_path"].strip(), (row["text_caption"] or "").strip(), row["label"].strip()
            if not cap:
                raise DataError(f"{path} line {i}: empty caption for {rel}")
            if rel.split("/", 1)[0] != label:
                raise DataError(f"{path} line {i}: label {label!r} but the image is in {rel.split('/', 1)[0]}/")
            out[rel] = (cap, label)
    return out


def busi_pairs(dataset: ImageDataset, root: str | Path | None = None) -> CaptionedImages:
    """BUSI images of ``dataset`` (from :func:`busi_split`) with their ``captions.csv`` captions."""
    table = read_busi_captions(root)
    if dataset.ids is None:
        raise DataError("busi_pairs needs a dataset with ids (the image paths); build it with busi_split")
    missing = [i for i in dataset.ids if i not in table]
    if missing:
        raise DataError(f"{len(missing)} BUSI images have no row in captions.csv (e.g. {missing[0]!r})")
    groups = [f"busi/{c}" for c in dataset.classes]
    captions = sorted({table[i][0] for i in dataset.ids}, key=lambda c: (groups.index("busi/" + _label_of(table, c)), c))
    index = {c: k for k, c in enumerate(captions)}
    cap_group = torch.tensor([groups.index("busi/" + _label_of(table, c)) for c in captions], dtype=torch.int64)
    cap_index = torch.tensor([index[table[i][0]] for i in dataset.ids], dtype=torch.int64)
    if not torch.equal(cap_group[cap_index], dataset.labels):
        raise DataError("a BUSI caption is used for images of two classes; captions.csv is inconsistent")
    return CaptionedImages(_uint8(dataset), captions, cap_index, groups, cap_group, [f"busi/{i}" for i in dataset.ids])


def _label_of(table: dict[str, tuple[str, str]], caption: str) -> str:
    labels = {lab for cap, lab in table.values() if cap == caption}
    if len(labels) != 1:
        raise DataError(f"BUSI caption {caption!r} is used for the classes {sorted(labels)}; each caption must name one class")
    return labels.pop()


def class_captions(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """The C x T captions, class-major: caption ``c * T + t`` is template t of class c."""
    if not class_names or not templates:
        raise InputError("captions need at least one class name and one template")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise InputError(f"each template needs exactly one '{{}}' for the class name, got {bad[0]!r}")
    return [t.format(c) for c in class_names for t in templates]


def template_pairs(dataset: ImageDataset, prefix: str, class_names: Sequence[str], templates: Sequence[str],
                   generator: torch.Generator | None = None) -> CaptionedImages:
    """Each image of ``dataset`` captioned by one random template (``"... {} ..."``) filled
    with its class name; groups are ``prefix/<class name>``."""
    if len(class_names) != dataset.num_classes:
        raise DataError(f"{len(class_names)} class names for a dataset of {dataset.num_classes} classes")
    captions = class_captions(class_names, templates)
    t = len(templates)
    pick = torch.randint(t, (len(dataset),), generator=generator)
    cap_index = dataset.labels * t + pick
    cap_group = torch.arange(len(class_names)).repeat_interleave(t)
    ids = dataset.ids or [str(i) for i in range(len(dataset))]
    return CaptionedImages(_uint8(dataset), captions, cap_index, [f"{prefix}/{c}" for c in class_names], cap_group,
                           [f"{prefix}/{i}" for i in ids])


def kvasir_pairs(root: str | Path | None = None, size: int = 64, captions: Sequence[str] = KVASIR_CAPTIONS,
                 generator: torch.Generator | None = None) -> CaptionedImages:
    """Kvasir-SEG's images (masks unused), each captioned by one random polyp sentence."""
    from medsec.data.segmentation_folder import kvasir_seg

    top = Path(root) if root is not None else data_root() / "kvasir-seg-256"
    if not (top / "images").is_dir():
        raise DataError(f"Kvasir-SEG not found at {top} (expected images/ and masks/); set the root or MEDSEC_DATA")
    if not captions:
        raise InputError("kvasir_pairs needs at least one caption")
    seg = kvasir_seg(root=top, size=size)
    images = seg.images
    images = images if images.dtype == torch.uint8 else (images * 255).round().to(torch.uint8)
    ids = getattr(seg, "ids", None) or [str(i) for i in range(len(images))]
    cap_index = torch.randint(len(captions), (len(images),), generator=generator)
    return CaptionedImages(images, list(captions), cap_index, ["kvasir/polyp"],
                           torch.zeros(len(captions), dtype=torch.int64), [f"kvasir/{i}" for i in ids])


def concat(parts: Sequence[CaptionedImages]) -> CaptionedImages:
    """One pair set from several (images must share their size; groups must not repeat)."""
    if not parts:
        raise InputError("concat needs at least one caption set")
    shapes = {tuple(p.images.shape[1:]) for p in parts}
    if len(shapes) != 1:
        raise DataError(f"caption sets have different image sizes {sorted(shapes)}; build them at one size")
    groups = [g for p in parts for g in p.groups]
    if len(set(groups)) != len(groups):
        raise DataError(f"caption groups repeat across sets: {groups}")
    cap_off, grp_off = 0, 0
    idx, cgrp = [], []
    for p in parts:
        idx.append(p.caption_index + cap_off)
        cgrp.append(p.caption_group + grp_off)
        cap_off += len(p.captions)
        grp_off += len(p.groups)
    return CaptionedImages(torch.cat([p.images for p in parts]), [c for p in parts for c in p.captions], torch.cat(idx),
                           groups, torch.cat(cgrp), [i for p in parts for i in p.ids])


__all__ = ["BUSI_CLASSES", "BUSI_SPLIT_SEED", "KVASIR_CAPTIONS", "CaptionedImages", "busi_pairs", "busi_split",
           "concat", "kvasir_pairs", "read_busi_captions", "template_pairs"]
