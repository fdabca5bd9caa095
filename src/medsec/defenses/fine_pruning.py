"""Fine-Pruning: prune the channels that clean data leaves dormant, then fine-tune
(Liu, Dolan-Gavitt & Garg, RAID 2018, "Fine-Pruning: Defending Against Backdooring
Attacks on Deep Neural Networks").

Threat model of the defence: a defender who received a possibly backdoored model and
holds a small clean set, but not the trigger. Backdoor behaviour tends to live in
channels that clean inputs hardly activate. medsec prunes the *penultimate feature
channels* (the input of the last ``nn.Linear``; for CNNs with global pooling these are
the last convolution's channels, the layer the paper prunes) in increasing order of
their mean activation on the clean set, a ``step`` fraction at a time, for as long as
clean accuracy stays within ``max_accuracy_drop`` of the original (the paper's stopping
rule, 4% by default), and then fine-tunes the whole network on the clean set for
``epochs`` epochs at a small learning rate (1e-4: at 1e-3 the fine-tuning re-learnt a
third of the backdoor on one BloodMNIST model) with the channels kept pruned
(``torch.nn.utils.prune`` masks). The
model passed in is not modified; :meth:`repair` returns a repaired copy.

Example:
    >>> import medsec, torch
    >>> from medsec.data import ImageDataset
    >>> model = medsec.models.create("small_cnn", num_classes=4, width=8)  # the possibly backdoored model
    >>> clean_dataset = ImageDataset(torch.rand(32, 3, 28, 28), torch.arange(32) % 4, ["a", "b", "c", "d"])
    >>> fp = FinePruning(max_accuracy_drop=0.04, step=0.25, epochs=1)  # prune a quarter of the channels at a time
    >>> repaired = fp.repair(model, clean_dataset)  # a pruned, fine-tuned copy
    >>> 0.0 <= fp.pruned_fraction_ <= fp.max_fraction
    True
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.nn.utils import prune

from medsec.errors import InputError
from medsec.models.features import features, last_linear
from medsec.registry import REPAIRS

if TYPE_CHECKING:
    from medsec.models import Classifier

log = logging.getLogger(__name__)


@REPAIRS.register("fine_pruning")
class FinePruning:
    """Prune dormant penultimate channels under an accuracy budget, then fine-tune.

    Args:
        max_accuracy_drop: the clean-accuracy loss that pruning may cost, in [0, 1)
            (default 0.04, the paper's).
        step: the fraction of the channels pruned at a time, in (0, 0.5] (default 0.05).
        max_fraction: the largest fraction of the channels pruned, in (0, 1) (default 0.95).
        epochs: fine-tuning epochs on the clean set (default 3; 0: prune only).
        lr: fine-tuning learning rate (default 1e-4).
        batch_size: fine-tuning batch size (default 64).
        seed: seeds the fine-tuning.
    """

    name = "fine_pruning"

    def __init__(self, *, max_accuracy_drop: float = 0.04, step: float = 0.05, max_fraction: float = 0.95,
                 epochs: int = 3, lr: float = 1e-4, batch_size: int = 64, seed: int = 0) -> None:
        if not 0 <= float(max_accuracy_drop) < 1:
            raise InputError(f"max_accuracy_drop must be in [0, 1), got {max_accuracy_drop}")
        if not 0 < float(step) <= 0.5:
            raise InputError(f"step must be in (0, 0.5], got {step}")
        if not 0 < float(max_fraction) < 1:
            raise InputError(f"max_fraction must be in (0, 1), got {max_fraction}")
        if int(epochs) < 0:
            raise InputError(f"epochs must be >= 0, got {epochs}")
        self.max_accuracy_drop, self.step, self.max_fraction = float(max_accuracy_drop), float(step), float(max_fraction)
        self.epochs, self.lr, self.batch_size, self.seed = int(epochs), float(lr), int(batch_size), int(seed)

    def repair(self, model: nn.Module, clean: Any) -> nn.Module:
        """A pruned and fine-tuned copy of ``model``, using the clean dataset ``clean``."""
        from medsec.training.classifier import evaluate, train_classifier

        if len(clean) < 2:
            raise InputError("Fine-Pruning needs a clean dataset of at least 2 images")
        # the training loop takes any module with a classifier's task and logits (a Classifier,
        # a TextHeadClassifier, ...), whatever its class
        repaired = cast("Classifier", copy.deepcopy(model).eval())
        head: nn.Linear = dict(repaired.named_modules())[last_linear(repaired)]
        x = clean.images
        act = features(repaired, x).mean(0)
        order = act.argsort()  # dormant first
        d = act.numel()
        base = evaluate(repaired, clean)
        mask = torch.ones_like(head.weight)
        prune.custom_from_mask(head, "weight", mask)
        weight_mask = cast(torch.Tensor, head.weight_mask)  # the buffer custom_from_mask registered
        pruned = 0
        k = 0
        while True:
            k = min(int(round((pruned / d + self.step) * d)), int(self.max_fraction * d))
            if k <= pruned:
                break
            trial = torch.ones_like(mask)
            trial[:, order[:k]] = 0
            weight_mask.copy_(trial)
            acc = evaluate(repaired, clean)
            if acc < base - self.max_accuracy_drop:
                break
            pruned = k
        final = torch.ones_like(mask)
        final[:, order[:pruned]] = 0
        weight_mask.copy_(final)
        self.pruned_fraction_ = pruned / d
        self.pruned_channels_ = order[:pruned].tolist()
        self.accuracy_before_ = base
        self.accuracy_pruned_ = evaluate(repaired, clean)
        log.info("fine-pruning: pruned %d of %d channels (clean accuracy %.3f -> %.3f)", pruned, d, base,
                 self.accuracy_pruned_)
        if self.epochs:
            train_classifier(repaired, clean, epochs=self.epochs, lr=self.lr, batch_size=min(self.batch_size, len(clean)),
                             seed=self.seed)
        prune.remove(head, "weight")
        return repaired.eval()
