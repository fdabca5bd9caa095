"""Backdoor metrics: clean accuracy (CA) and attack success (ASR), counted both ways.

Papers disagree on whether triggered test images whose true class is already the
target count towards attack success: BAPLe's "backdoor accuracy" and MedCLIP's ASR
include them, the BadNets line of work excludes them. medsec reports both, always
(GUIDE section 3), plus macro-F1 on clean images.
"""

from __future__ import annotations

import torch

from medsec.errors import InputError


def backdoor_metrics(pred_clean: torch.Tensor, pred_triggered: torch.Tensor, labels: torch.Tensor,
                     targets: torch.Tensor, num_classes: int) -> dict[str, float | int | None]:
    """CA, ASR with and without target-class images, and clean macro-F1.

    Args:
        pred_clean: predicted classes on clean test images (N,).
        pred_triggered: predicted classes on the same images with the trigger (N,).
        labels: true classes (N,).
        targets: the backdoor's target class per image (N,).
        num_classes: number of classes (for macro-F1).
    """
    n = labels.shape[0]
    for name, t in (("pred_clean", pred_clean), ("pred_triggered", pred_triggered), ("targets", targets)):
        if t.shape != (n,):
            raise InputError(f"{name} must have shape ({n},) like labels, got {tuple(t.shape)}")
    if n == 0:
        raise InputError("backdoor metrics need at least one test image")
    from torchmetrics.functional.classification import multiclass_f1_score

    hit = pred_triggered == targets
    non_target = labels != targets
    return {
        "clean_accuracy": float((pred_clean == labels).float().mean()),
        "backdoor_accuracy": float(hit.float().mean()),  # every image triggered, target-class images included
        "attack_success_rate": float(hit[non_target].float().mean()) if non_target.any() else None,
        "triggered_accuracy": float((pred_triggered == labels).float().mean()),
        "clean_macro_f1": float(multiclass_f1_score(pred_clean, labels, num_classes=num_classes, average="macro")),
        "n": n, "n_non_target": int(non_target.sum()),
    }
