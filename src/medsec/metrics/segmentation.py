"""Segmentation metrics per image: Dice, IoU, HD95 and the lesion-miss rate.

Dice and IoU are MONAI's ``compute_dice`` / ``compute_iou`` (Cardoso et al., "MONAI: An
open-source framework for deep learning in healthcare", arXiv 2211.02701) on one-hot
masks with ``include_background=False`` and ``ignore_empty=False``, as in Budathoki &
Dhakal (arXiv 2505.02971): an image whose ground truth and prediction are both empty
scores 1, an empty ground truth with a non-empty prediction scores 0. Multi-class masks
average over the foreground classes. HD95 is MONAI's ``compute_hausdorff_distance`` with
``percentile=95`` in pixels; it is undefined (NaN) when either mask of a class is empty.

The lesion-miss rate counts images whose ground truth has foreground but whose predicted
foreground does not touch it (intersection zero): the lesion was missed entirely.

Example:
    >>> pred = torch.zeros(1, 4, 4, dtype=torch.long); pred[0, :2, :2] = 1
    >>> gt = torch.zeros(1, 4, 4, dtype=torch.long); gt[0, :2, :] = 1
    >>> round(float(dice(pred, gt)[0]), 4)
    0.6667
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def _onehot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    return F.one_hot(mask.long(), max(2, num_classes)).permute(0, 3, 1, 2).float()


def dice(pred: torch.Tensor, mask: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Per-image Dice (B,) of predicted class masks against the ground truth (MONAI)."""
    from monai.metrics.meandice import compute_dice

    value = compute_dice(_onehot(pred, num_classes), _onehot(mask, num_classes), include_background=False,
                         ignore_empty=False)
    return value.nanmean(dim=1)


def iou(pred: torch.Tensor, mask: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Per-image IoU (B,) of predicted class masks against the ground truth (MONAI)."""
    from monai.metrics.meaniou import compute_iou

    value = compute_iou(_onehot(pred, num_classes), _onehot(mask, num_classes), include_background=False,
                        ignore_empty=False)
    return value.nanmean(dim=1)


def hd95(pred: torch.Tensor, mask: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Per-image 95th-percentile Hausdorff distance (B,) in pixels (MONAI); NaN where a mask is empty."""
    from monai.metrics.hausdorff_distance import compute_hausdorff_distance

    p, g = _onehot(pred, num_classes), _onehot(mask, num_classes)
    with warnings.catch_warnings():  # MONAI warns for every empty mask; NaN says it
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(p, g, include_background=False, percentile=95)
    value = value.float()
    value[~torch.isfinite(value)] = float("nan")
    empty = (p[:, 1:].flatten(2).sum(2) == 0) | (g[:, 1:].flatten(2).sum(2) == 0)
    value[empty.to(value.device)] = float("nan")
    return value.nanmean(dim=1)


def lesion_missed(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image bool: the ground truth has foreground and the prediction's foreground misses all of it."""
    if pred.dim() == 4:
        pred = pred[:, 0]
    if mask.dim() == 4:
        mask = mask[:, 0]
    fg_true, fg_pred = mask > 0, pred > 0
    has_lesion = fg_true.flatten(1).any(1)
    hit = (fg_true & fg_pred).flatten(1).any(1)
    return has_lesion & ~hit


def lesion_miss_rate(pred: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of images with a lesion whose lesion the prediction misses entirely."""
    if mask.dim() == 4:
        mask = mask[:, 0]
    has = (mask > 0).flatten(1).any(1)
    if not has.any():
        return float("nan")
    return float(lesion_missed(pred, mask)[has].float().mean())


def foreground_fraction(pred: torch.Tensor) -> torch.Tensor:
    """Per-image fraction of pixels predicted as foreground (B,)."""
    if pred.dim() == 4:
        pred = pred[:, 0]
    return (pred > 0).flatten(1).float().mean(1)


def segmentation_summary(pred: torch.Tensor, mask: torch.Tensor, num_classes: int = 2) -> dict[str, float]:
    """Mean Dice, IoU, HD95 (NaNs skipped; with their count), lesion-miss rate, empty predictions."""
    d, j, h = dice(pred, mask, num_classes), iou(pred, mask, num_classes), hd95(pred, mask, num_classes)
    finite = h[torch.isfinite(h)]
    return {
        "dice": float(d.mean()), "iou": float(j.mean()),
        "hd95": float(finite.mean()) if finite.numel() else float("nan"), "hd95_undefined": int((~torch.isfinite(h)).sum()),
        "lesion_miss_rate": lesion_miss_rate(pred, mask),
        "empty_prediction_rate": float((foreground_fraction(pred) == 0).float().mean()),
        "n": int(mask.shape[0]),
    }
