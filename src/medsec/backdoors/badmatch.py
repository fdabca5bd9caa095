"""BadMatch: poisoning MedCLIP-style unpaired contrastive training by label mismatch
(Jin, Huang, You & Li, "Backdoor Attack on Unpaired Medical Image-Text Foundation Models:
A Pilot Study on MedCLIP", SaTML 2024, arXiv 2401.01911; reference code
ubc-tea/Backdoor_Multimodal_Foundation_Model, ``medclip/dataset.py``).

Threat model: data poisoning of the image side of an unpaired image-text corpus. The
attacker stamps a trigger on a small, fixed subset of training images and overwrites their
image label vectors with the one-hot target ("normal") class; no sentence is edited. Through
the soft targets softmax(L_img L_txt^T) the triggered images are then pulled toward the
target's sentences. At test time the same trigger on any image should make the zero-shot
classifier answer the target.

Differences from the reference code, on purpose:

* the poisoned subset is drawn once from ``seed`` and recorded (the code re-draws it per
  ``__getitem__`` with ``poison_prop = 0.8``, i.e. 20% dynamic poisoning); the rate counts
  against the whole training set (``rate * N`` images, at least one), or ``count`` is given;
  the subset is drawn from images whose class is not the target (the code's flip leaves a
  target image unchanged, wasting that poison);
* the trigger size is a fraction of the model input (the code pastes a 32 px square at the
  native resolution of each X-ray before the resize to 224, so its size on the model input
  varies with the source resolution; 32 / 224 = 1/7 is the default fraction here), and the
  same trigger (colour, position) is used for training and test.

``mode="text"`` is the reference's ``image_label=False`` variant: the triggered images keep
their label vectors and the sentence drawn beside each of them gets the target label instead.

Example:
    >>> import torch
    >>> from medsec.data import ImageDataset
    >>> ds = ImageDataset(torch.rand(200, 3, 28, 28), torch.arange(200) % 4, list("abcd"))
    >>> bm = BadMatch(make_trigger({"name": "badnets"}, 28), target=0, rate=0.05, seed=0)
    >>> p = bm.poison(ds)
    >>> len(p.indices), bool((p.image_labels[p.indices].argmax(1) == 0).all())
    (10, True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medsec.backdoors.poisoning import PoisonedDataset
from medsec.backdoors.triggers import create as create_trigger
from medsec.backdoors.triggers.base import Params, Trigger
from medsec.errors import DataError, InputError
from medsec.training.medclip import one_hot

log = logging.getLogger(__name__)

MODES = ("image", "text")
REFERENCE_PATCH_FRACTION = 32 / 224  # the reference's 32 px square on the 224 px input


def make_trigger(spec: dict[str, Any], image_size: int) -> Trigger:
    """A trigger from a spec whose sizes are relative to the model input.

    ``{"name": "badnets", "size_fraction": 1/7, "color": 0.0, "position": "bottom-right"}``
    is the reference's solid square (black, one pixel from the bottom-right corner);
    ``{"name": "fiba", "beta": 0.2, "alpha": 0.1}`` its Fourier trigger (amplitude of a
    trigger image blended into the low frequencies, phase kept); ``"image": path`` gives the
    trigger image as a file (resized to the input; default: uniform noise from the seed).
    Other trigger names take their own parameters (``image`` works for ``blended`` too).
    """
    s = dict(spec)
    name = s.pop("name", None)
    if not name:
        raise InputError("a trigger spec needs a name (badnets, fiba, blended, ...)")
    if name == "badnets":
        frac = float(s.pop("size_fraction", REFERENCE_PATCH_FRACTION))
        if "size" in s:
            raise InputError("give the square's size as size_fraction (of the model input), not size in pixels")
        if not 0.0 < frac <= 0.5:
            raise InputError(f"size_fraction must be in (0, 0.5], got {frac}")
        size = max(1, round(frac * int(image_size)))
        color = s.pop("color", 0.0)
        if "pattern" not in s:
            if not isinstance(color, (int, float)) or not 0.0 <= float(color) <= 1.0:
                raise InputError(f"color must be a grey level in [0, 1], got {color!r}")
            s["pattern"] = torch.full((3, size, size), float(color))
        s.setdefault("position", "bottom-right")
        s.setdefault("margin", 1)
        return create_trigger("badnets", size=size, **s)
    if "image" in s:  # a trigger image file (the paper's Fourier trigger uses a natural image)
        if "pattern" in s:
            raise InputError("give the trigger image as `image` (a file) or `pattern` (a tensor), not both")
        s["pattern"] = load_trigger_image(s.pop("image"), int(image_size))
    if name == "fiba":
        s.setdefault("beta", 0.2)
        s.setdefault("alpha", 0.1)
    return create_trigger(name, **s)


def load_trigger_image(path: str | Path, image_size: int) -> torch.Tensor:
    """An RGB image file as a (3, S, S) tensor in [0, 1], centre-cropped square and resized
    (antialiased) to the model input size. A relative path that does not exist from the
    working directory is looked up under the data root (``MEDSEC_DATA``)."""
    from PIL import Image

    from medsec.data import data_root

    p = Path(path)
    if not p.is_absolute() and not p.is_file():
        p = data_root() / p
    if not p.is_file():
        raise DataError(f"trigger image not found: {path} (looked in the working directory and under {data_root()})")
    try:
        with Image.open(p) as src:
            im = src.convert("RGB")
            w, h = im.size
            side = min(w, h)
            im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
            im = im.resize((int(image_size), int(image_size)), Image.Resampling.LANCZOS)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except OSError as exc:
        raise DataError(f"cannot read trigger image {p}: {exc}") from exc
    return data.reshape(int(image_size), int(image_size), 3).permute(2, 0, 1).float() / 255.0


@dataclass
class BadMatchSet:
    """A poisoned unpaired training set.

    Attributes:
        images: (N, C, H, W) in [0, 1], the trigger stamped on ``indices``.
        image_labels: (N, K) label vectors (the target one-hot on ``indices`` in image mode).
        indices: sorted int64 indices of the poisoned images.
        text_flip: (N,) bool, the images whose companion sentence gets ``target_vector``
            (text mode; all False in image mode).
        target_vector: (K,) the target's one-hot label vector.
        record: what results.json stores (enough to rebuild the set).
    """

    images: torch.Tensor
    image_labels: torch.Tensor
    indices: torch.Tensor
    text_flip: torch.Tensor
    target_vector: torch.Tensor
    params: Params
    record: dict[str, Any]


class BadMatch:
    """The BadMatch poisoning of an image dataset for MedCLIP-style training.

    Args:
        trigger: a :class:`~medsec.backdoors.triggers.Trigger` (see :func:`make_trigger`).
        target: the target ("normal") class index.
        rate: fraction of the training set to poison, in (0, 1]; or ``count``.
        count: number of images to poison.
        mode: ``"image"`` (overwrite the image label vector, the paper's attack) or
            ``"text"`` (flip the companion sentence's label).
        seed: draws the subset and the trigger parameters.
    """

    def __init__(self, trigger: Trigger, target: int, rate: float | None = None, count: int | None = None,
                 mode: str = "image", seed: int = 0) -> None:
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.trigger, self.target, self.rate, self.count, self.mode, self.seed = trigger, target, rate, count, mode, int(seed)

    def poison(self, dataset: Any, params: Params | None = None) -> BadMatchSet:
        """Poison ``dataset`` (an :class:`~medsec.data.ImageDataset` with class labels)."""
        pd = PoisonedDataset(dataset, self.trigger, target=self.target, rate=self.rate, count=self.count,
                             policy="all_to_one", seed=self.seed, params=params)
        k = dataset.num_classes
        idx = pd.poison_indices
        target_vec = one_hot(torch.tensor(self.target), k)
        images = pd.dataset.images
        if self.mode == "image":
            labels = one_hot(pd.dataset.labels, k)
            flip = torch.zeros(len(dataset), dtype=torch.bool)
        else:
            labels = one_hot(dataset.labels, k)
            flip = torch.zeros(len(dataset), dtype=torch.bool)
            flip[idx] = True
        rec = {**pd.record(), "mode": self.mode, "method": "badmatch"}
        log.info("BadMatch: %d of %d images poisoned (%s mode, target %d)", len(idx), len(dataset), self.mode, self.target)
        return BadMatchSet(images, labels, idx, flip, target_vec, pd.params, rec)
