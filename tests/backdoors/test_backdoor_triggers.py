"""Backdoor triggers and poisoning: invariants, exact formulas, bad input, and a
BadNets backdoor planted in a classifier trained on real BloodMNIST images."""

from __future__ import annotations

import math

import pytest
import torch

from medsec.backdoors import PoisonedDataset, backdoor_metrics, triggers
from medsec.data import ImageDataset
from medsec.errors import InputError, RegistryError

pytestmark = pytest.mark.unit

ALL = triggers.list()


def _x(seed: int = 0, n: int = 4, size: int = 28) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _params(t: triggers.Trigger, x: torch.Tensor, seed: int = 0) -> dict:
    return t.sample_params(x.shape, torch.Generator().manual_seed(seed))


def _strong(name: str) -> triggers.Trigger:
    """Each trigger at a setting where it visibly changes a random image."""
    kwargs = {"noise": {"init": "uniform"}}.get(name, {})
    return triggers.create(name, **kwargs)


def test_registry_has_the_issue_triggers() -> None:
    assert set(ALL) >= {"badnets", "blended", "wanet", "fiba", "noise", "text"}
    with pytest.raises(RegistryError, match="badnets"):
        triggers.create("badnet")


@pytest.mark.parametrize("name", ALL)
def test_trigger_contract(name: str) -> None:
    """Bounds kept, input untouched, shape and dtype kept, deterministic given params,
    params reproducible from the generator, and the trigger changes the image."""
    t = _strong(name)
    x = _x()
    before = x.clone()
    p = _params(t, x)
    out = t.apply(x, p)
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, t.apply(x, p))
    p2 = _params(t, x)
    assert torch.equal(out, t.apply(x, p2))
    assert (out - x).abs().max() > 1e-3
    # images at the bounds stay inside them
    for extreme in (torch.zeros_like(x), torch.ones_like(x)):
        o = t.apply(extreme, p)
        assert float(o.min()) >= 0.0 and float(o.max()) <= 1.0


@pytest.mark.parametrize("name", ALL)
def test_trigger_refuses_bad_images(name: str) -> None:
    t = _strong(name)
    x = _x()
    p = _params(t, x)
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(InputError, match="NaN"):
        t.apply(bad, p)
    with pytest.raises(InputError, match="bounds"):
        t.apply(x * 2.0, p)
    with pytest.raises(InputError, match="shape"):
        t.apply(x[0], p)
    with pytest.raises(InputError):
        t.apply(_x(size=32), p)  # params drawn for 28x28
    with pytest.raises(InputError, match="sample_params"):
        t.apply(x, {})


@pytest.mark.parametrize("position", ["top-left", "top", "top-right", "left", "center", "right", "bottom-left",
                                      "bottom", "bottom-right"])
def test_badnets_changes_only_its_patch(position: str) -> None:
    t = triggers.create("badnets", size=4, position=position, pattern="white", margin=1)
    x = _x() * 0.5
    p = _params(t, x)
    out = t.apply(x, p)
    mask = t.mask(x.shape, p)
    assert int(mask.sum()) == 16
    assert torch.equal(out[..., ~mask], x[..., ~mask])
    assert (out[..., mask] == 1.0).all()
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    expect_r = {"top": 1, "bottom": 28 - 4 - 1}.get(position.split("-")[0], 12)
    expect_c = {"left": 1, "right": 28 - 4 - 1}.get(position.split("-")[-1], 12)
    assert int(rows[0]) == expect_r and int(cols[0]) == expect_c


def test_badnets_checkerboard_random_image_and_errors() -> None:
    x = _x()
    cb = triggers.create("badnets", size=3, pattern="checkerboard")
    patch = cb.sample_params(x.shape)["patch"]
    assert set(patch.unique().tolist()) == {0.0, 1.0}
    img = torch.full((3, 3, 3), 0.25)
    out = triggers.create("badnets", size=3, pattern=img, position="center").apply(x, {"patch": img, "top": 12,
                                                                                     "left": 12})
    assert (out[:, :, 12:15, 12:15] == 0.25).all()
    r1 = triggers.create("badnets", position="random").sample_params(x.shape, torch.Generator().manual_seed(1))
    r2 = triggers.create("badnets", position="random").sample_params(x.shape, torch.Generator().manual_seed(1))
    assert (r1["top"], r1["left"]) == (r2["top"], r2["left"])
    with pytest.raises(InputError, match="does not fit"):
        triggers.create("badnets", size=30).sample_params(x.shape)
    with pytest.raises(InputError, match="position"):
        triggers.create("badnets", position="middle")
    with pytest.raises(InputError, match="pattern image"):
        triggers.create("badnets", size=3, pattern=torch.zeros(3, 4, 4)).sample_params(x.shape)


def test_blended_is_the_alpha_blend() -> None:
    t = triggers.create("blended", alpha=0.2)
    x = _x()
    p = _params(t, x)
    assert torch.allclose(t.apply(x, p), 0.8 * x + 0.2 * p["pattern"], atol=1e-6)
    img = torch.linspace(0, 1, 14 * 14).reshape(1, 14, 14)
    q = triggers.create("blended", alpha=0.5, pattern=img).sample_params(x.shape)
    assert q["pattern"].shape == (3, 28, 28)
    with pytest.raises(InputError, match="alpha"):
        triggers.create("blended", alpha=0.0)


def test_fiba_keeps_the_phase_and_blends_the_window_amplitude() -> None:
    t = triggers.create("fiba", beta=0.1, alpha=0.15)
    x = _x() * 0.6 + 0.2
    p = _params(t, x)
    raw = t.blend(x, p)
    assert raw.abs().max() < 2  # a real image (imaginary part dropped is ~0)
    spec_x = torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))
    spec_o = torch.fft.fftshift(torch.fft.fft2(raw), dim=(-2, -1))
    keep = spec_x.abs() > 1e-6
    dphi = torch.remainder(spec_o.angle() - spec_x.angle() + math.pi, 2 * math.pi) - math.pi
    assert dphi[keep].abs().max() < 1e-6, "FIBA must keep the phase spectrum"
    b, c = p["window"], 14
    assert b == 2
    win = (slice(None), slice(None), slice(c - b, c + b + 1), slice(c - b, c + b + 1))
    expect = 0.85 * spec_x.abs()[win] + 0.15 * p["trigger_amplitude"][None][win]
    assert torch.allclose(spec_o.abs()[win], expect, atol=1e-6)
    outside = torch.ones(28, 28, dtype=torch.bool)
    outside[c - b : c + b + 1, c - b : c + b + 1] = False
    assert torch.allclose(spec_o.abs()[..., outside], spec_x.abs()[..., outside], atol=1e-6)
    with pytest.raises(InputError, match="beta"):
        triggers.create("fiba", beta=0.9)


def test_wanet_warp_is_within_its_strength() -> None:
    x = _x(size=32)
    for s in (0.25, 0.5, 1.0):
        t = triggers.create("wanet", k=4, strength=s)
        p = _params(t, x)
        lin = torch.linspace(-1, 1, 32)
        xx, yy = torch.meshgrid(lin, lin, indexing="ij")
        identity = torch.stack((yy, xx), dim=2)
        shift = (t.grid(p, 32) - identity).abs().max()
        assert 0 < shift <= s * p["field"].abs().max() / 32 + 1e-6
    zero = triggers.create("wanet", strength=0.0)
    assert torch.allclose(zero.apply(x, _params(zero, x)), x, atol=1e-5)
    # noise mode: the trigger grid plus at most 1/H more, different per sample
    t = triggers.create("wanet", strength=0.5)
    p = _params(t, x)
    cross = t.cross(x, p, torch.Generator().manual_seed(3))
    assert not torch.allclose(cross, t.apply(x, p))
    assert float(cross.min()) >= 0 and float(cross.max()) <= 1
    with pytest.raises(InputError, match="square"):
        t.sample_params((3, 32, 28))


def test_noise_trigger_stays_in_its_eps_ball() -> None:
    t = triggers.create("noise", eps=4 / 255, init="uniform")
    x = _x() * 0.5 + 0.25
    p = _params(t, x)
    assert float((t.apply(x, p) - x).abs().max()) <= 4 / 255 + 1e-6
    big = {"delta": torch.full((3, 28, 28), 0.5)}
    assert float((t.apply(x, big) - x).abs().max()) <= 4 / 255 + 1e-6
    zeros = triggers.create("noise").sample_params(x.shape)
    assert torch.equal(triggers.create("noise").apply(x, zeros), x)
    delta = torch.zeros(3, 28, 28, requires_grad=True)
    t.add(x, delta).sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    with pytest.raises(InputError, match="eps"):
        triggers.create("noise", eps=-1)


def test_text_trigger_draws_inside_its_box() -> None:
    t = triggers.create("text", text="R", size=12, position="top-left", background=None)
    x = torch.zeros(2, 3, 64, 64)
    p = t.sample_params(x.shape)
    out = t.apply(x, p)
    h, w = p["alpha"].shape
    assert out[:, :, 1 : 1 + h, 1 : 1 + w].max() > 0.9  # anti-aliased glyph strokes
    outside = out.clone()
    outside[:, :, 1 : 1 + h, 1 : 1 + w] = 0
    assert outside.abs().max() == 0
    with pytest.raises(InputError, match="does not fit"):
        triggers.create("text", text="a long annotation", size=20).sample_params((3, 16, 16))


# --------------------------------------------------------------------------- poisoning


def _toy(n: int = 200, k: int = 4) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % k, [f"c{i}" for i in range(k)])


def test_poisoned_indices_match_the_rate_and_the_seed() -> None:
    ds = _toy()
    t = triggers.create("badnets", size=3)
    a = PoisonedDataset(ds, t, target=1, rate=0.05, seed=0)
    b = PoisonedDataset(ds, t, target=1, rate=0.05, seed=0)
    c = PoisonedDataset(ds, t, target=1, rate=0.05, seed=1)
    assert len(a.poison_indices) == 10
    assert torch.equal(a.poison_indices, b.poison_indices)
    assert not torch.equal(a.poison_indices, c.poison_indices)
    assert torch.equal(a.dataset.images, b.dataset.images)
    changed = (a.dataset.labels != ds.labels).nonzero().flatten()
    assert torch.equal(changed, a.poison_indices), "exactly the poisoned samples change label"
    assert (a.dataset.labels[a.poison_indices] == 1).all()
    untouched = torch.ones(len(ds), dtype=torch.bool)
    untouched[a.poison_indices] = False
    assert torch.equal(a.dataset.images[untouched], ds.images[untouched])
    assert not torch.equal(a.dataset.images[a.poison_indices], ds.images[a.poison_indices])
    assert a.record()["indices"] == a.poison_indices.tolist() and a.record()["count"] == 10
    assert len(PoisonedDataset(ds, t, target=1, rate=0.0005).poison_indices) == 1  # at least one


def test_label_policies() -> None:
    ds = _toy()
    t = triggers.create("blended", alpha=0.1)
    ata = PoisonedDataset(ds, t, target=None, count=20, policy="all_to_all", seed=2)
    idx = ata.poison_indices
    assert torch.equal(ata.dataset.labels[idx], (ds.labels[idx] + 1) % 4)
    cl = PoisonedDataset(ds, t, target=2, count=20, policy="clean_label", seed=2)
    assert (ds.labels[cl.poison_indices] == 2).all()
    assert torch.equal(cl.dataset.labels, ds.labels)
    assert torch.equal(ata.test_targets(ds.labels[:8]), (ds.labels[:8] + 1) % 4)
    with pytest.raises(InputError, match="candidates"):
        PoisonedDataset(ds, t, target=2, count=51, policy="clean_label")
    with pytest.raises(InputError, match="exactly one"):
        PoisonedDataset(ds, t, target=0, rate=0.1, count=3)
    with pytest.raises(InputError, match="rate"):
        PoisonedDataset(ds, t, target=0, rate=1.5)
    with pytest.raises(InputError, match="target"):
        PoisonedDataset(ds, t, target=4, rate=0.1)
    with pytest.raises(InputError, match="policy"):
        PoisonedDataset(ds, t, target=0, rate=0.1, policy="one_to_one")


def test_backdoor_metrics_on_a_hand_made_case() -> None:
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    clean = torch.tensor([0, 1, 2, 0, 0, 1])
    trig = torch.tensor([0, 0, 0, 3, 0, 0])
    m = backdoor_metrics(clean, trig, labels, torch.zeros(6, dtype=torch.long), num_classes=4)
    assert m["clean_accuracy"] == pytest.approx(5 / 6)
    assert m["backdoor_accuracy"] == pytest.approx(5 / 6)
    assert m["attack_success_rate"] == pytest.approx(3 / 4)  # the two class-0 images are excluded
    assert m["n_non_target"] == 4
    with pytest.raises(InputError, match="shape"):
        backdoor_metrics(clean[:3], trig, labels, torch.zeros(6, dtype=torch.long), num_classes=4)


@pytest.mark.effect
def test_badnets_backdoor_on_real_bloodmnist(bloodmnist_badnets, bloodmnist_test) -> None:  # type: ignore[no-untyped-def]
    """A 3x3 checkerboard on 5% of 4,000 real BloodMNIST training images, target class 0
    (``medsec.recipes.builtin.BADNETS_BLOODMNIST_RECIPE``): the trained CNN keeps a useful
    clean accuracy and follows the trigger on test images of the other classes."""
    from medsec.training import predict

    model, poisoned = bloodmnist_badnets
    assert len(poisoned.poison_indices) == 200
    x, y = bloodmnist_test.images[:1000], bloodmnist_test.labels[:1000]
    pred_clean = predict(model, x)
    pred_trig = predict(model, poisoned.triggered(x))
    m = backdoor_metrics(pred_clean, pred_trig, y, poisoned.test_targets(y), num_classes=8)
    assert m["clean_accuracy"] >= 0.75, m
    assert m["attack_success_rate"] >= 0.9, m
