"""Models: task wrappers, architecture builders and checkpoint loading.

Example:
    >>> import medsec
    >>> clf = medsec.models.create("small_cnn", num_classes=8)
"""

from __future__ import annotations

from typing import Any

from medsec.models import clip, clipseg, hub, medclip, monai_unet, small_cnn  # noqa: F401  (registration)
from medsec.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from medsec.models.classifier import Classifier, predict_from_logits
from medsec.models.monai_unet import seg_module
from medsec.models.segmenter import Segmenter
from medsec.registries import MODELS


def create(name: str, **params: Any) -> Any:
    """Build a registered model; ``"timm:resnet18"`` is short for
    ``create("timm", arch="resnet18")`` (same for ``torchvision:``)."""
    if ":" in name:
        prefix, arch = name.split(":", 1)
        if prefix in ("timm", "torchvision"):
            return MODELS.create(prefix, arch=arch, **params)
        if prefix == "hf" and arch.lower().split("/")[-1].startswith("clipseg"):
            return MODELS.create("clipseg", model_id=arch, **params)
        if prefix == "open_clip":
            return MODELS.create("open_clip", model_id=arch, **params)
        if prefix == "hf":
            return MODELS.create("hf_clip", model_id=arch, **params)
    return MODELS.create(name, **params)


def list() -> list[str]:  # noqa: A001
    return MODELS.list()


__all__ = ["Classifier", "Segmenter", "seg_module", "predict_from_logits", "create", "list", "load_checkpoint", "save_checkpoint", "read_metadata"]
