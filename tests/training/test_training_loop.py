"""The one epoch loop (medsec.training.fit) behind train_classifier and train_segmenter: seeded
determinism, targets flipped with their images, schedules, frozen parameters, bad input."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import medsec.models as M
from medsec.data.base import ImageDataset
from medsec.data.segmentation_folder import SegmentationDataset
from medsec.errors import ConfigError, DataError, InputError
from medsec.training import TrainTask, fit, train_classifier, train_segmenter
from medsec.training.classifier import classification_task, classifier_loss
from medsec.training.loop import make_schedule

pytestmark = pytest.mark.unit


def _blobs(n: int = 64, seed: int = 0) -> ImageDataset:
    """Two classes: bright or dark images (separable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.25 + 0.5 * y.float()[:, None, None, None] + 0.1 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return ImageDataset(x, y, ["dark", "bright"])


def _small() -> nn.Module:
    torch.manual_seed(0)
    return M.create("small_cnn", num_classes=2, width=4)


def test_the_loop_learns_and_is_deterministic_given_the_seed() -> None:
    ds = _blobs()
    runs = []
    for seed in (0, 0, 1):
        model = _small()
        res = train_classifier(model, ds, ds, epochs=3, lr=0.02, batch_size=16, seed=seed)
        runs.append(model.state_dict())
        assert res.history[-1]["loss"] < res.history[0]["loss"] and "val_accuracy" in res.history[-1]
        assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0]), "the seed draws the order and the flips"
    model = _small()  # fit with the classification hooks is train_classifier
    fit(model, ds, task=classification_task(), epochs=3, lr=0.02, batch_size=16, seed=1, schedule="one_cycle")
    assert all(torch.equal(model.state_dict()[k], runs[2][k]) for k in runs[2])


def test_spatial_targets_are_flipped_with_their_images() -> None:
    """The mask of each image is its bright left half; after the flips every (image, mask)
    pair seen by the loss still agrees, and flipped pairs were seen."""
    n = 32
    x = torch.zeros(n, 1, 6, 6)
    x[:, :, :, :3] = 1.0
    x[:, :, :2] *= 0.5  # break the vertical symmetry too
    masks = (x[:, 0] > 0).long()
    seen: list[bool] = []
    net = nn.Conv2d(1, 1, 1)

    def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        assert yb.shape == (xb.shape[0], 1, 6, 6)
        assert torch.equal((xb > 0).float(), yb)
        seen.extend((xb[:, 0, 0, 0] == 0).tolist())  # the bright half moved right
        return model(xb).mean()

    task = TrainTask(loss=loss, targets=lambda m: m[:, None].float(), spatial_targets=True)
    fit(net, SegmentationDataset(x, masks), task=task, epochs=2, batch_size=8, lr=0.01)
    assert any(seen) and not all(seen)


def test_schedules() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule("warmup_cosine", opt, 1.0, total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] >= 0.01
    assert lrs[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    with pytest.raises(ConfigError, match="one_cycle"):
        make_schedule("step", opt, 1.0, 10, 0)


def test_frozen_parameters_stay_and_bad_input() -> None:
    ds = _blobs(16)
    model = _small()
    for p in model.net.features.parameters():
        p.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.net.features.state_dict().items() if "running" not in k
              and "num_batches" not in k}
    train_classifier(model, ds, epochs=1, batch_size=8)
    now = model.net.features.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items())
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(InputError, match="no trainable parameters"):
        train_classifier(model, ds, epochs=1)
    with pytest.raises(InputError, match="epochs and batch_size"):
        train_classifier(_small(), ds, epochs=0)
    with pytest.raises(InputError, match="no adversarial-training loss"):
        from medsec.training.adversarial import AdversarialTraining

        fit(_small(), ds, task=TrainTask(loss=classifier_loss), adversarial=AdversarialTraining("pgd_at"))
    with pytest.raises(DataError, match="non-empty segmentation dataset"):
        train_segmenter(_small(), SimpleNamespace(images=torch.zeros(0, 3, 4, 4), labels=torch.zeros(0, 4, 4)))
    with pytest.raises(TypeError):
        train_classifier(_small(), ds, None, 1)  # hyper-parameters are keyword-only
