"""Metrics: hand-checked values and agreement with independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medsec import metrics

pytestmark = pytest.mark.unit


def test_accuracy_and_attack_success():
    y = torch.tensor([0, 1, 2, 3])
    clean = torch.tensor([0, 1, 2, 0])  # 3 correct
    adv = torch.tensor([1, 1, 0, 0])  # 1 correct
    assert metrics.accuracy(clean, y) == 0.75
    assert metrics.robust_accuracy(adv, y) == 0.25
    assert metrics.attack_success_rate(clean, adv, y) == pytest.approx(2 / 3)
    target = torch.tensor([1, 1, 1, 1])  # eligible: 0, 2, 3; hits: index 0
    assert metrics.attack_success_rate(clean, adv, y, target) == pytest.approx(1 / 3)
    assert math.isnan(metrics.attack_success_rate(torch.tensor([1]), torch.tensor([1]), torch.tensor([0])))


def test_multilabel_exact_match():
    y = torch.tensor([[1, 0, 1], [0, 0, 1]])
    assert metrics.accuracy(torch.tensor([[1, 0, 1], [0, 1, 1]]), y) == 0.5


def test_perturbation_norms_by_hand():
    x = torch.zeros(2, 3, 4, 4)
    xa = x.clone()
    xa[0, 0, 0, 0] = 0.3
    xa[0, 1, 0, 0] = -0.4
    xa[0, 2, 1, 1] = 0.1
    n = metrics.perturbation_norms(x, xa)
    assert n["linf"].tolist() == pytest.approx([0.4, 0.0])
    assert n["l2"].tolist() == pytest.approx([math.sqrt(0.09 + 0.16 + 0.01), 0.0])
    assert n["l0"].tolist() == [2.0, 0.0]  # two pixels changed


def test_psnr_and_ssim_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 28, 28, generator=g)
    xa = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref_psnr = peak_signal_noise_ratio(x[0].numpy(), xa[0].numpy(), data_range=1.0)
    assert metrics.psnr(x, xa) == pytest.approx(ref_psnr, rel=1e-4)
    ref_ssim = structural_similarity(
        np.moveaxis(x[0].numpy(), 0, -1), np.moveaxis(xa[0].numpy(), 0, -1), data_range=1.0, channel_axis=-1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )
    assert metrics.ssim(x, xa) == pytest.approx(ref_ssim, abs=0.02)
    assert metrics.psnr(x, x) == float("inf")
    assert metrics.ssim(x, x) == pytest.approx(1.0)
