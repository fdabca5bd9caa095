"""Models: task wrappers, architecture builders, MIL heads and checkpoint loading.

Example:
    >>> import medsec
    >>> clf = medsec.models.create("small_cnn", num_classes=8)
    >>> medsec.models.resolve("timm:resnet18", {"num_classes": 8})
    ('timm', {'num_classes': 8, 'arch': 'resnet18'})
"""

from __future__ import annotations

import builtins
from typing import Any

from medsec.models import clip, clipseg, hub, medclip, mil, monai_unet, small_cnn  # noqa: F401  (registration)
from medsec.models.checkpoint import load_checkpoint, load_weights, read_metadata, save_checkpoint
from medsec.models.classifier import Classifier
from medsec.models.mil import create_head
from medsec.models.monai_unet import seg_module
from medsec.models.names import resolve
from medsec.models.segmenter import Segmenter
from medsec.registry import MODELS
from medsec.tasks import predict_from_logits


def create(name: str, **params: Any) -> Any:
    """Build a model by name (:func:`resolve`): a registered builder such as ``"small_cnn"``, or
    ``"timm:resnet18"``, short for ``create("timm", arch="resnet18")`` (likewise ``torchvision:``,
    ``open_clip:`` and ``hf:``)."""
    key, params = resolve(name, params)
    return MODELS.create(key, **params)


def list() -> builtins.list[str]:  # noqa: A001
    return MODELS.list()


__all__ = ["Classifier", "Segmenter", "seg_module", "predict_from_logits", "create", "list", "resolve", "create_head",
           "load_checkpoint", "save_checkpoint", "load_weights", "read_metadata"]
