"""Input checks shared by attacks, metrics and the runner.

Every check raises :class:`medsec.errors.InputError` with a message that names the
problem and the fix, instead of letting bad input produce silently wrong numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from medsec.errors import InputError
from medsec.types import InputSpec

_TOL = 1e-6


def check_positive_int(name: str, value: Any) -> int:
    """Check that the parameter ``name`` is an integer >= 1 (not a bool); return it as an int."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_images(x: object, spec: InputSpec | None = None, name: str = "x") -> torch.Tensor:
    """Check an image batch: a float tensor (B, C, H, W), finite, inside the bounds."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(
            f"{name} must be a floating-point tensor in the model's bounds, got dtype {x.dtype}; "
            "convert uint8 images with x.float() / 255"
        )
    if x.dim() != 4:
        raise InputError(f"{name} must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{name} contains {n_bad} NaN/Inf values; clean or drop these images first")
    if spec is not None:
        if x.shape[1] != spec.channels:
            raise InputError(
                f"{name} has {x.shape[1]} channels but the model expects {spec.channels} "
                "(convert grayscale/RGB to match the model's InputSpec)"
            )
        lo, hi = spec.bounds
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - _TOL or xmax > hi + _TOL:
            raise InputError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}] outside the model's bounds [{lo:g}, {hi:g}]; "
                "pass un-normalised images (normalisation lives inside the model wrapper)"
            )
    return x


def check_labels(
    y: object, batch: int, task: str, num_classes: int, name: str = "y", spatial: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Check labels against the head type.

    multiclass: int (B,) in [0, num_classes); binary: (B,) in {0, 1};
    multilabel: (B, num_classes) in {0, 1}; segmentation: masks (B, H, W) or
    (B, 1, H, W) of class indices in [0, num_classes) (binary masks: {0, 1}), with
    (H, W) equal to ``spatial`` when it is given. Returns (B, H, W) int64 masks.
    """
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if task == "segmentation":
        return check_masks(y, batch, num_classes, name=name, spatial=spatial)
    if task == "multilabel":
        if y.shape != (batch, num_classes):
            raise InputError(f"multi-label {name} must have shape ({batch}, {num_classes}), got {tuple(y.shape)}")
        if not ((y == 0) | (y == 1)).all():
            raise InputError(f"multi-label {name} must contain only 0 and 1")
        return y
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (batch,):
        raise InputError(f"{name} must have shape ({batch},), got {tuple(y.shape)}")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise InputError(f"{name} must hold integer class indices, got non-integer floats")
        y = y.long()
    n = 2 if task == "binary" else num_classes
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
        raise InputError(
            f"{name} has labels in [{int(y.min())}, {int(y.max())}] but the model has {n} classes "
            f"(valid: 0..{n - 1})"
        )
    return y


def check_masks(
    y: torch.Tensor, batch: int, num_classes: int, name: str = "mask", spatial: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Check segmentation masks: (B, H, W) or (B, 1, H, W), finite, integer-valued class
    indices in [0, num_classes) (2 classes for a binary one-logit head). Returns (B, H, W) int64."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor mask of shape (B, H, W), got {type(y).__name__}")
    if y.dim() == 4 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 3 or y.shape[0] != batch:
        raise InputError(f"{name} must have shape ({batch}, H, W) or ({batch}, 1, H, W), got {tuple(y.shape)}")
    if spatial is not None and tuple(y.shape[-2:]) != tuple(spatial[-2:]):
        raise InputError(
            f"{name} has spatial size {tuple(y.shape[-2:])} but the images have {tuple(spatial[-2:])}; "
            "resize masks with nearest-neighbour interpolation to the image size"
        )
    if y.is_floating_point():
        if not torch.isfinite(y).all():
            raise InputError(f"{name} contains NaN/Inf values; masks hold class indices")
        if not torch.equal(y, y.round()):
            raise InputError(
                f"{name} must hold integer class indices (0/1 for a binary mask), got fractional values; "
                "threshold soft masks first, e.g. (mask > 0.5).long()"
            )
    y = y.long()
    n = max(2, int(num_classes))
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
        hint = " (a 0/255 mask? divide by 255)" if int(y.max()) == 255 else ""
        raise InputError(
            f"{name} has values in [{int(y.min())}, {int(y.max())}] but the segmenter has {n} classes "
            f"(valid: 0..{n - 1}){hint}"
        )
    return y
