"""Safe checkpoints: safetensors weights plus the architecture and InputSpec as metadata.

Loading never unpickles: ``.safetensors`` files are read with safetensors, and plain
``.pt``/``.pth`` state dicts only through ``torch.load(weights_only=True)``.

Example:
    >>> clf = medsec.models.create("small_cnn", num_classes=8)  # doctest: +SKIP
    >>> save_checkpoint(clf, "model.safetensors")                  # doctest: +SKIP
    >>> clf2 = load_checkpoint("model.safetensors")                # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from medsec.errors import DataError
from medsec.io import atomic_write_bytes
from medsec.models.classifier import Classifier
from medsec.registries import MODELS
from medsec.types import InputSpec

META_KEY = "medsec"


def save_checkpoint(model: Classifier, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and metadata to a safetensors file (atomically)."""
    if not model.arch:
        raise DataError("this Classifier has no `arch` to rebuild it from; build it through medsec.models.create")
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    meta = {
        "arch": model.arch,
        "spec": model.spec.to_dict(),
        "task": model.task,
        "num_classes": model.num_classes,
        "classes": model.classes,
        "extra": extra or {},
    }
    return atomic_write_bytes(path, st_save(state, metadata={META_KEY: json.dumps(meta)}))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The medsec metadata stored in a safetensors checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {str(path)!r} does not exist; train one with `medsec train CONFIG` or fix the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"{str(path)!r} is not a readable safetensors file ({exc})") from exc
    if META_KEY not in meta:
        raise DataError(f"{str(path)!r} has no medsec metadata; load plain weights with model.net.load_state_dict")
    return json.loads(meta[META_KEY])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Rebuild the Classifier stored in ``path`` (safetensors written by :func:`save_checkpoint`)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    arch = meta["arch"]
    model = MODELS.create(arch["name"], **arch.get("params", {}))
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(
            f"checkpoint {str(path)!r} does not match architecture {arch['name']!r}: "
            f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
    model.spec = InputSpec.from_dict(meta["spec"])
    model.classes = list(meta.get("classes", model.classes))
    return model.to(device).eval()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict (.safetensors or .pt/.pth) without unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{str(path)!r} could not be loaded with weights_only=True ({exc}); "
            "medsec never unpickles arbitrary objects: convert it to a state dict or safetensors"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise DataError(f"{str(path)!r} does not hold a state dict")
    return obj
