"""Input purifiers (JPEG, median filter, Gaussian blur) and randomized smoothing.

JPEG on the BloodMNIST model looks robust under plain PGD and falls under BPDA
(measured on 200 test images at 8/255: clean 0.93, plain PGD 0.915, BPDA-PGD 0.14).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
import torch.nn.functional as F

import medsec
from medsec.defenses import Defended, SmoothedClassifier, certified_accuracy_curve, create
from medsec.defenses.smoothing import certified_radius, lower_confidence_bound
from medsec.errors import InputError
from medsec.experiments.evasion.checks import model_checks
from medsec.training import predict

pytestmark = pytest.mark.unit


def _x(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_purifiers_keep_bounds_shape_and_declare_themselves() -> None:
    x = _x()
    for name, differentiable in (("jpeg", False), ("median_filter", True), ("gaussian_blur", True)):
        d = create(name)
        out = d(x)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        assert d.differentiable is differentiable and d.stochastic is False
        assert torch.equal(out, d(x)), "purifiers are deterministic"


def test_jpeg_quantises_and_has_zero_gradients() -> None:
    # a smooth image (JPEG's chroma subsampling makes pixel noise a worst case)
    x = F.interpolate(_x(size=4), size=32, mode="bilinear", align_corners=False)
    hi = create("jpeg", quality=100)(x)
    assert (hi - x).abs().max() < 0.1 and torch.equal((hi * 255).round(), hi * 255)
    assert (create("jpeg", quality=10)(x) - x).abs().mean() > (hi - x).abs().mean()
    xx = x.clone().requires_grad_(True)
    create("jpeg")(xx).sum().backward()
    assert xx.grad is not None and torch.count_nonzero(xx.grad) == 0
    with pytest.raises(InputError, match="quality"):
        create("jpeg", quality=0)
    with pytest.raises(InputError, match="channels"):
        create("jpeg")(torch.rand(1, 2, 8, 8))


def test_median_filter_matches_a_direct_median_and_removes_salt_noise() -> None:
    x = _x()
    out = create("median_filter", radius=1)(x)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect").reshape(6, 1, 18, 18)
    ref = F.unfold(padded, 3).median(dim=1).values.reshape(2, 3, 16, 16)
    assert torch.equal(out, ref)
    flat = torch.full((1, 1, 9, 9), 0.5)
    flat[0, 0, 4, 4] = 1.0
    assert torch.equal(create("median_filter")(flat.expand(1, 3, 9, 9)), torch.full((1, 3, 9, 9), 0.5))
    xx = x.clone().requires_grad_(True)
    create("median_filter")(xx).sum().backward()
    assert xx.grad is not None and xx.grad.abs().sum() > 0


def test_gaussian_blur_keeps_constants_and_smooths() -> None:
    c = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(create("gaussian_blur", sigma=1.5)(c), c, atol=1e-6)
    x = _x()
    out = create("gaussian_blur", sigma=1.0)(x)
    assert out.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()
    with pytest.raises(InputError, match="sigma"):
        create("gaussian_blur", sigma=0)


@pytest.mark.effect
def test_jpeg_looks_robust_to_plain_pgd_and_falls_to_bpda(bloodmnist_model, bloodmnist_test) -> None:  # type: ignore[no-untyped-def]
    x, y = bloodmnist_test.images[:200], bloodmnist_test.labels[:200]
    defended = Defended(bloodmnist_model, create("jpeg", quality=75)).eval()
    checks = model_checks(defended, x[:32], y[:32], label="jpeg")
    assert any(c["code"] == "gradient-zero" for c in checks)
    threat = medsec.ThreatModel("linf", 8 / 255)
    pgd = medsec.attacks.create("pgd", steps=10)
    plain = pgd(defended, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    bpda = pgd(defended.with_bpda(), x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    clean_acc = (predict(defended, x) == y).float().mean().item()
    plain_acc = (predict(defended, plain.x_adv) == y).float().mean().item()
    bpda_acc = (predict(defended, bpda.x_adv) == y).float().mean().item()
    assert clean_acc >= 0.85
    assert plain_acc >= 0.8, f"plain PGD through JPEG should see zero gradients: {plain_acc:.3f}"
    assert bpda_acc <= 0.3, f"BPDA-PGD should break JPEG: {bpda_acc:.3f}"


# --------------------------------------------------------------------------- smoothing


def test_clopper_pearson_and_radius_by_hand() -> None:
    # all n samples on the top class: the one-sided bound is alpha ** (1 / n)
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-9)
    p = 0.001 ** (1 / 100)
    assert certified_radius(p, 0.25) == pytest.approx(0.25 * NormalDist().inv_cdf(p), rel=1e-9)
    assert certified_radius(0.5, 0.25) == 0.0 and lower_confidence_bound(0, 10, 0.01) == 0.0
    # 90 of 100: the bound lies below the point estimate and above a normal approximation's crude floor
    b = lower_confidence_bound(90, 100, 0.05)
    assert 0.82 < b < 0.9
    with pytest.raises(InputError):
        lower_confidence_bound(11, 10, 0.05)


class _Constant(torch.nn.Module):
    def __init__(self, cls: int, k: int = 4) -> None:
        super().__init__()
        self.cls, self.k = cls, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.k)
        out[:, self.cls] = 1.0
        return out


def test_certify_a_constant_classifier_exactly() -> None:
    smooth = SmoothedClassifier(_Constant(2), sigma=0.5, batch_size=64)
    x = _x(3)
    pred, radius = smooth.certify(x, n0=10, n=200, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert pred.tolist() == [2, 2, 2]
    expect = 0.5 * NormalDist().inv_cdf(0.001 ** (1 / 200))
    assert torch.allclose(radius, torch.full((3,), expect, dtype=radius.dtype), atol=1e-9)
    assert smooth.predict(x, n=50).tolist() == [2, 2, 2]


def test_smoothing_abstains_on_a_coin_flip_and_curve_is_monotone() -> None:
    class Sign(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # class by the sign of the mean pixel offset
            s = (x - 0.5).mean(dim=(1, 2, 3))
            return torch.stack([-s, s], dim=1)

    x = torch.full((2, 1, 8, 8), 0.5)
    smooth = SmoothedClassifier(Sign(), sigma=0.5)
    pred, radius = smooth.certify(x, n0=20, n=200, alpha=0.001, generator=torch.Generator().manual_seed(1))
    assert pred.tolist() == [-1, -1] and radius.tolist() == [0.0, 0.0]
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 3, (200,), generator=g)
    labels = torch.randint(0, 3, (200,), generator=g)
    radii = torch.rand(200, generator=g)
    curve = certified_accuracy_curve(preds, radii, labels, [0.0, 0.1, 0.2, 0.5, 0.8, 1.1])
    assert all(a >= b for a, b in zip(curve, curve[1:])) and curve[-1] == 0.0
    assert curve[0] == pytest.approx((preds == labels).float().mean().item())
    with pytest.raises(InputError, match="sigma"):
        SmoothedClassifier(Sign(), sigma=0)
    with pytest.raises(InputError, match="alpha"):
        smooth.certify(x, alpha=0.7)
    with pytest.raises(InputError):
        smooth.counts(torch.full((1, 1, 4, 4), math.nan), 10)
