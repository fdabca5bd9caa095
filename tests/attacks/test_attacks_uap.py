"""Universal adversarial perturbations: ``uap`` (Moosavi-Dezfooli et al., CVPR 2017,
iterated DeepFool) and ``uap_sgd`` (SGD on a shared delta, Shafahi et al., AAAI 2020).

* closed forms on linear heads: one DeepFool step per point (multiclass, binary single
  logit, multi-label weakest label), the exact sequential semantics of ``batch_size=1``
  and the documented mini-batch approximation, one signed / normalised SGD step;
* the universal contract: one delta inside the eps-ball (L-inf and L2) for every image,
  x_adv = clamp(x + delta), the model restored, the generator honoured;
* BloodMNIST (skipped without the data): transfer of a perturbation fitted on training
  images to held-out test images, targeted UAP-SGD, and a cross-check against ART's
  ``UniversalPerturbation`` (DeepFool attacker) at matched settings.
"""

from __future__ import annotations

import functools
import math
import random
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medsec
from medsec.attacks import uap, uap_sgd  # noqa: F401  (registration)
from medsec.attacks.base import attack_mode
from medsec.attacks.uap import UAP, UniversalAttack
from medsec.attacks.uap_sgd import UAPSGD
from medsec.models.classifier import Classifier
from medsec.types import InputSpec

pytestmark = pytest.mark.unit

NAMES = ["uap", "uap_sgd"]
EPS = {"linf": 8 / 255, "l2": 0.5}
OVERSHOOT = 1.02  # DeepFool's (1 + overshoot) with the default 0.02


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models on a shared 2-core machine: one intra-op thread (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_head(weight: torch.Tensor, bias: torch.Tensor, task: str = "multiclass") -> Classifier:
    """A Classifier whose logits are weight @ flatten(x) + bias (no normalisation)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    num_classes = 2 if task == "binary" else weight.shape[0]
    return Classifier(nn.Sequential(nn.Flatten(), lin), InputSpec(channels=3), num_classes, task).eval()


def linear_problem(seed: int, k: int = 4, shape: tuple[int, int, int] = (3, 4, 4), n: int = 1):
    g = gen(seed)
    d = math.prod(shape)
    w = torch.randn(k, d, generator=g)
    b = torch.randn(k, generator=g)
    x = 0.5 + 0.02 * torch.randn(n, *shape, generator=g)
    return w, b, x


def deepfool_linear(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: int) -> torch.Tensor:
    """One DeepFool step on a linear multiclass head, times (1 + overshoot): for a linear
    model this crosses the nearest boundary (the reference of the paper's algorithm)."""
    z = w @ x.flatten() + b
    best, best_ratio = None, float("inf")
    for k in range(w.shape[0]):
        if k == y:
            continue
        wk, fk = w[k] - w[y], z[k] - z[y]
        ratio = fk.abs() / wk.norm()
        if ratio < best_ratio:
            best, best_ratio = (fk, wk), ratio
    assert best is not None
    fk, wk = best
    return (OVERSHOOT * (fk.abs() + 1e-4) / wk.norm() ** 2 * wk).reshape(x.shape)


def project(v: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "linf":
        return v.clamp(-eps, eps)
    return v * min(1.0, eps / float(v.norm()))


def _colour_data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] (a per-image colour plus pixel noise) of a 4-class colour task."""
    g = gen(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 0.6
    x = colour + 0.4 * torch.rand(n, 3, 16, 16, generator=g)
    mix = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
    return x, (colour.flatten(1) @ mix.T).argmax(dim=1)


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    """60 Adam steps on the colour task (about 0.5 s): an untrained small CNN predicts one
    class everywhere and DeepFool finds nothing to do."""
    torch.manual_seed(0)
    model = medsec.models.create("small_cnn", num_classes=4, width=8)
    x, y = _colour_data(5, 256)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = gen(0)
    model.train()
    for _ in range(60):
        idx = torch.randint(0, 256, (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def small_cnn_batch(seed: int = 0, n: int = 24) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The trained small CNN in TRAIN mode, seeded images and its eval-mode predictions."""
    model = medsec.models.create("small_cnn", num_classes=4, width=8)
    model.load_state_dict(_trained_state())
    x = _colour_data(100 + seed, n)[0]
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    return model.train(), x, y


# --------------------------------------------------------------------------- DeepFool closed forms


@pytest.mark.parametrize("norm, eps", [("l2", 10.0), ("linf", 0.004)])
def test_uap_one_point_is_one_deepfool_step_then_projection(norm: str, eps: float) -> None:
    """On one point of a linear head the paper's algorithm is one L2 DeepFool step
    dv = 1.02 (|f_l| + 1e-4) / ||w_l||^2 w_l onto the nearest boundary, then the
    projection onto the threat's ball (L-inf: clipping the L2 step)."""
    w, b, x = linear_problem(0, k=5)
    model = linear_head(w, b)
    y = model(x).argmax(1)
    expected = project(deepfool_linear(w, b, x[0], int(y)), norm, eps)[None]
    attack = medsec.attacks.create("uap", batch_size=1, max_epochs=1 if norm == "linf" else 10)
    delta = attack.fit(model, x, y, medsec.ThreatModel(norm, eps))
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)
    assert delta.shape == (1, 3, 4, 4)
    assert attack.steps_ == 1
    if norm == "l2":  # fooled after one pass, so the fit stops (fooling target 0.8)
        assert attack.fooling_rate_ == 1.0
        assert model(x + delta).argmax(1) != y
    else:  # the clipped step is too small to cross the boundary
        assert attack.fooling_rate_ == 0.0
        assert float(delta.abs().max()) == pytest.approx(eps)


def test_uap_binary_single_logit_closed_form() -> None:
    """Binary single-logit head: dv = -1.02 (m + 1e-4) / ||w||^2 * (2y - 1) w with the
    signed logit m = (2y - 1) z, for both labels."""
    g = gen(1)
    w = torch.randn(1, 48, generator=g)
    x = 0.5 + 0.02 * torch.randn(2, 3, 4, 4, generator=g)
    z0 = (w @ x.flatten(1).T)[0]
    b = torch.tensor([-(float(z0[0]) + float(z0[1])) / 2])  # one point on each side of z = 0
    model = linear_head(w, b, task="binary")
    z = model(x)
    assert z.shape == (2,)
    y = (z > 0).long()
    assert y.tolist() in ([0, 1], [1, 0])
    for i in range(2):
        m = (2 * y[i] - 1) * z[i]
        expected = -OVERSHOOT * (m + 1e-4) / w.norm() ** 2 * (2 * y[i] - 1) * w.reshape(1, 3, 4, 4)
        attack = medsec.attacks.create("uap", batch_size=1)
        delta = attack.fit(model, x[i : i + 1], y[i : i + 1], medsec.ThreatModel("l2", 10.0))
        torch.testing.assert_close(delta, expected.detach(), rtol=1e-4, atol=1e-6)
        assert (model(x[i : i + 1] + delta) > 0).long() != y[i]


def test_uap_multilabel_flips_the_nearest_label_not_the_smallest_logit() -> None:
    """Multi-label head: the step goes to the label with the smallest linearised distance
    |m_k| / ||w_k|| (label 2 here), not the one with the smallest |logit| (label 0)."""
    d = 48
    g = gen(2)
    dirs = torch.randn(3, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    w = dirs * torch.tensor([[0.1], [1.0], [20.0]])  # gradient norms 0.1, 1, 20
    x = torch.full((1, 3, 4, 4), 0.5)
    z_target = torch.tensor([0.5, 3.0, -2.0])  # |z|: 0.5, 3, 2 -> distances 5, 3, 0.1
    b = z_target - w @ x.flatten()
    model = linear_head(w, b, task="multilabel")
    y = (model(x) > 0).long()
    assert y.tolist() == [[1, 1, 0]]
    delta = medsec.attacks.create("uap", batch_size=1).fit(model, x, y, medsec.ThreatModel("l2", 10.0))
    expected = OVERSHOOT * (2.0 + 1e-4) / 20.0**2 * w[2].reshape(1, 3, 4, 4)  # raise z_2 over 0
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)
    flipped = (model(x + delta) > 0).long() != y
    assert flipped.tolist() == [[False, False, True]]


def test_uap_sequential_semantics_and_documented_batching() -> None:
    """batch_size=1 is the paper's sequential algorithm (each DeepFool step at the v left
    by the previous point; fooled points skipped); a larger batch computes the steps of a
    mini-batch at its starting v and applies them one after another."""
    w, b, x = linear_problem(3, k=4, n=6)
    model = linear_head(w, b)
    y = model(x).argmax(1)
    eps = 10.0  # L2, no projection: the updates are visible exactly

    def reference(batch: int) -> torch.Tensor:
        v = torch.zeros(1, 3, 4, 4)
        for s in range(0, len(x), batch):
            todo = [i for i in range(s, min(s + batch, len(x))) if model((x[i : i + 1] + v).clamp(0, 1)).argmax() == y[i]]
            steps = [deepfool_linear(w, b, (x[i] + v[0]).clamp(0, 1), int(y[i])) for i in todo]
            for dv in steps:
                v = project(v + dv[None], "l2", eps)
        return v

    with torch.no_grad():
        ref1, ref3 = reference(1), reference(3)
    assert not torch.allclose(ref1, ref3, atol=1e-4), "the data should tell the two semantics apart"
    for batch, ref in ((1, ref1), (3, ref3)):
        attack = medsec.attacks.create("uap", batch_size=batch, max_epochs=1, shuffle=False)
        delta = attack.fit(model, x, y, medsec.ThreatModel("l2", eps))
        torch.testing.assert_close(delta, ref, rtol=1e-4, atol=1e-5)


def test_uap_stops_at_fooling_target_or_max_epochs() -> None:
    model, x, y = small_cnn_batch(0, n=12)
    t = medsec.ThreatModel("linf", 2 / 255)
    full = medsec.attacks.create("uap", fooling_target=1.0, max_epochs=2, batch_size=8)
    full.fit(model, x, y, t, generator=gen(0))
    assert full.steps_ == 2 and full.fooling_rate_ < 1.0, "a 2/255 perturbation cannot fool every point"
    once = medsec.attacks.create("uap", fooling_target=0.0, max_epochs=3, batch_size=8)
    once.fit(model, x, y, t, generator=gen(0))
    assert once.steps_ == 1


# --------------------------------------------------------------------------- UAP-SGD closed forms


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_uap_sgd_one_step_is_signed_or_normalised_mean_gradient(norm: str) -> None:
    """One epoch with one batch from zeros: delta = (eps / 10) * dir(mean_i grad CE_i)
    with dir = sign (L-inf) or g / ||g|| (L2); for a linear head grad_x CE =
    W^T (softmax(z) - onehot(y))."""
    w, b, x = linear_problem(4, k=4, n=8)
    model = linear_head(w, b)
    y = torch.arange(8) % 4  # some right, some wrong
    z = model(x).detach()
    g = ((F.softmax(z, dim=1) - F.one_hot(y, 4).float()) @ w).mean(0).reshape(1, 3, 4, 4)
    eps = EPS[norm]
    step = g.sign() if norm == "linf" else g / g.norm()
    attack = medsec.attacks.create("uap_sgd", epochs=1, batch_size=8, shuffle=False)
    delta = attack.fit(model, x, y, medsec.ThreatModel(norm, eps))
    torch.testing.assert_close(delta, eps / 10 * step, rtol=1e-4, atol=1e-7)
    assert attack.steps_ == 1


def test_uap_sgd_loss_clamp_removes_points_above_the_clamp() -> None:
    """A clamp below every point's loss leaves no gradient (delta stays 0); a clamp
    between the losses gives the step of the points below it only."""
    w, b, x = linear_problem(5, k=4, n=8)
    model = linear_head(w, b)
    y = torch.arange(8) % 4
    t = medsec.ThreatModel("linf", EPS["linf"])
    zero = medsec.attacks.create("uap_sgd", epochs=2, batch_size=4, loss_clamp=-1.0, shuffle=False)
    assert torch.equal(zero.fit(model, x, y, t), torch.zeros(1, 3, 4, 4))
    assert zero.steps_ == 4

    ce = F.cross_entropy(model(x), y, reduction="none").detach()
    clamp = float(ce.median())
    low = ce <= clamp
    z = model(x[low]).detach()
    g = ((F.softmax(z, dim=1) - F.one_hot(y[low], 4).float()) @ w).sum(0).reshape(1, 3, 4, 4)
    clamped = medsec.attacks.create("uap_sgd", epochs=1, batch_size=8, loss_clamp=clamp, shuffle=False)
    torch.testing.assert_close(clamped.fit(model, x, y, t), EPS["linf"] / 10 * g.sign(), rtol=0, atol=1e-7)
    plain = medsec.attacks.create("uap_sgd", epochs=1, batch_size=8, shuffle=False).fit(model, x, y, t)
    assert not torch.equal(plain, clamped.delta_)


# --------------------------------------------------------------------------- the universal contract


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", NAMES)
def test_fit_is_universal_inside_the_ball_and_restores_the_model(name: str, norm: str) -> None:
    model, x, y = small_cnn_batch(1)
    x_copy = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    params[0].requires_grad_(False)
    flags = [p.requires_grad for p in params]
    eps = EPS[norm] * 2
    attack = medsec.attacks.create(name, **({"max_epochs": 3} if name == "uap" else {}))
    assert attack.universal is True and type(attack).universal is True
    delta = attack.fit(model, x, y, medsec.ThreatModel(norm, eps), generator=gen(0))

    assert delta.shape == (1, 3, 16, 16) and delta.dtype == x.dtype
    size = delta.abs().max() if norm == "linf" else delta.norm()
    assert float(size) <= eps + 1e-6
    assert float(size) > 0.5 * eps, "the fit barely used its budget"
    assert torch.equal(attack.delta_, delta)
    assert 0.0 <= attack.fooling_rate_ <= 1.0
    with torch.no_grad():
        was = model.training
        fooled = model.eval()(UniversalAttack.apply(x, delta)).argmax(1) != y
        model.train(was)
    assert attack.fooling_rate_ == pytest.approx(float(fooled.float().mean()))
    # the model and the input are untouched
    assert torch.equal(x, x_copy)
    assert model.training and [p.requires_grad for p in params] == flags
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert all(p.grad is None for p in params)

    # the normal call is "universal over this batch": the same delta for every image
    res = attack(model, x, y, threat=medsec.ThreatModel(norm, eps), generator=gen(0))
    torch.testing.assert_close(attack.delta_, delta, rtol=0, atol=0)
    torch.testing.assert_close(res.x_adv, (x + delta).clamp(0, 1), rtol=0, atol=1e-6)  # the base re-projects
    diff = res.x_adv - x
    inside = ((x + delta) > 0) & ((x + delta) < 1)
    torch.testing.assert_close(diff[inside], delta.expand_as(x)[inside], rtol=0, atol=1e-6)
    assert ((x + delta)[~inside] <= 0).logical_or((x + delta)[~inside] >= 1).all()


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_same_delta_and_shuffle_uses_it(name: str) -> None:
    model, x, y = small_cnn_batch(2, n=16)
    t = medsec.ThreatModel("linf", 8 / 255)
    kw = {"batch_size": 4, "max_epochs": 1} if name == "uap" else {"batch_size": 4, "epochs": 2}
    a = medsec.attacks.create(name, **kw).fit(model, x, y, t, generator=gen(3))
    b = medsec.attacks.create(name, **kw).fit(model, x, y, t, generator=gen(3))
    c = medsec.attacks.create(name, **kw).fit(model, x, y, t, generator=gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c), "a different visit order should give a different perturbation"
    fixed = medsec.attacks.create(name, shuffle=False, **kw)
    assert fixed.stochastic is False and medsec.attacks.create(name).stochastic is True
    assert torch.equal(fixed.fit(model, x, y, t, generator=gen(3)), fixed.fit(model, x, y, t, generator=gen(4)))


def test_uap_sgd_random_init_draws_from_the_generator() -> None:
    model, x, y = small_cnn_batch(3)
    t = medsec.ThreatModel("l2", 0.5)
    attack = medsec.attacks.create("uap_sgd", epochs=1, random_init=True, shuffle=False, loss_clamp=-1.0)
    assert attack.stochastic is True
    d1 = attack.fit(model, x, y, t, generator=gen(0))  # clamp -1: no gradient, delta = the init
    d2 = attack.fit(model, x, y, t, generator=gen(0))
    assert torch.equal(d1, d2) and 0 < float(d1.norm()) <= 0.5 + 1e-6
    assert not torch.equal(d1, attack.fit(model, x, y, t, generator=gen(1)))


def test_apply_params_and_validation() -> None:
    model, x, y = small_cnn_batch(4, n=8)
    delta = torch.full((3, 16, 16), 0.9)
    out = UniversalAttack.apply(x, delta)
    assert out.shape == x.shape and out.max() <= 1 and torch.equal(out, (x + 0.9).clamp(0, 1))
    assert UAP.apply is UniversalAttack.apply and UAPSGD.universal

    attack = medsec.attacks.create("uap")
    with pytest.raises(AttributeError, match="not fitted"):
        _ = attack.delta_
    attack.fit(model, x, y, medsec.ThreatModel("linf", 4 / 255), generator=gen(0))
    params = attack.params()
    assert "_fitted" not in params and params["fooling_target"] == 0.8 and params["batch_size"] == 32
    assert "tensor" not in repr(attack)

    with pytest.raises(medsec.InputError, match="no targeted variant"):
        attack.fit(model, x, y, medsec.ThreatModel("linf", 4 / 255, targeted=True), target=0)
    with pytest.raises(medsec.InputError, match="medsec.ThreatModel"):
        attack.fit(model, x, y, ("linf", 0.03))  # type: ignore[arg-type]
    with pytest.raises(medsec.InputError, match="supports norms"):
        attack.fit(model, x, y, medsec.ThreatModel("patch", 0.05))
    with pytest.raises(medsec.InputError, match="outside the model's bounds"):
        attack.fit(model, (x - 0.5) / 0.5, y, medsec.ThreatModel("linf", 4 / 255))
    with pytest.raises(medsec.InputError, match=r"labels in \[4, 4\]"):
        attack.fit(model, x, torch.full((8,), 4), medsec.ThreatModel("linf", 4 / 255))
    with pytest.raises(medsec.InputError, match="targeted threat model needs target"):
        medsec.attacks.create("uap_sgd").fit(model, x, y, medsec.ThreatModel("linf", 4 / 255, targeted=True))
    assert model.training, "a fit that raised left the model in eval mode"
    with pytest.raises(medsec.InputError, match="fooling_target"):
        medsec.attacks.create("uap", fooling_target=1.5)
    with pytest.raises(medsec.InputError, match="batch_size"):
        medsec.attacks.create("uap_sgd", batch_size=0)
    with pytest.raises(medsec.InputError, match="step_size"):
        medsec.attacks.create("uap_sgd", step_size=0.0)
    assert torch.equal(attack.fit(model, x, y, medsec.ThreatModel("linf", 0.0)), torch.zeros(1, 3, 16, 16))


# --------------------------------------------------------------------------- BloodMNIST


@pytest.fixture(scope="module")
def blood(bloodmnist_model, bloodmnist_root, bloodmnist_test):
    """1000 seeded training images to fit on and 500 held-out test images."""
    import medsec.data

    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(bloodmnist_root))
    fit = train.take(1000, gen(0))
    test = bloodmnist_test.take(500, gen(1))
    model = bloodmnist_model.eval()
    return model, fit.images, fit.labels, test.images, test.labels


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.effect
def test_uap_sgd_transfers_to_held_out_bloodmnist(blood) -> None:
    """Fitted on 1000 training images (2 epochs, 16 signed steps), one 8/255 perturbation
    drops the accuracy on 500 test images from 95.4% to 42.2% (measured; seeds 1 and 2:
    45.8%, 61.2%); asserted: a drop of >= 25 points."""
    model, xf, yf, xt, yt = blood
    t0 = time.perf_counter()
    attack = medsec.attacks.create("uap_sgd", epochs=2)
    delta = attack.fit(model, xf, yf, medsec.ThreatModel("linf", 8 / 255), generator=gen(0))
    runtime = time.perf_counter() - t0
    clean = float((_predict(model, xt) == yt).float().mean())
    robust = float((_predict(model, attack.apply(xt, delta)) == yt).float().mean())
    assert clean > 0.9
    assert robust <= clean - 0.25, f"clean {clean:.3f}, robust {robust:.3f} ({runtime:.1f}s)"
    assert attack.fooling_rate_ >= 0.4
    assert float(delta.abs().max()) <= 8 / 255 + 1e-6


@pytest.mark.effect
def test_uap_sgd_targeted_pushes_held_out_images_to_one_class(blood) -> None:
    """Targeted UAP-SGD towards class 0 (6.4% of the clean test predictions), fitted on
    500 images (2 epochs): measured 29.4% of the held-out images predicted as class 0
    (seeds 1, 2: 28.8%, 29.2%); asserted >= 18%."""
    model, xf, yf, xt, _ = blood
    attack = medsec.attacks.create("uap_sgd", epochs=2)
    threat = medsec.ThreatModel("linf", 8 / 255, targeted=True)
    delta = attack.fit(model, xf[:500], yf[:500], threat, generator=gen(0), target=0)
    before = float((_predict(model, xt) == 0).float().mean())
    after = float((_predict(model, attack.apply(xt, delta)) == 0).float().mean())
    assert before < 0.1
    assert after >= 0.18, f"class 0 share {before:.3f} -> {after:.3f}"
    assert attack.fooling_rate_ >= 0.18  # targeted: success = predicted as the target


@pytest.mark.effect
def test_uap_transfers_to_held_out_bloodmnist(blood) -> None:
    """DeepFool-UAP costs far more per image: fitted on 300 training images (one pass,
    mini-batches of 32, the 3 most likely classes), it drops the accuracy on 500 test
    images from 94.8% to 79.6% (measured on the shipped model with the shared DeepFool
    engine; seeds 1, 2: 62.0%, 66.8%); asserted: a drop of >= 8 points."""
    model, xf, yf, xt, yt = blood
    attack = medsec.attacks.create("uap", num_classes=3, max_epochs=1)
    delta = attack.fit(model, xf[:300], yf[:300], medsec.ThreatModel("linf", 8 / 255), generator=gen(0))
    clean = float((_predict(model, xt) == yt).float().mean())
    robust = float((_predict(model, attack.apply(xt, delta)) == yt).float().mean())
    assert robust <= clean - 0.08, f"clean {clean:.3f}, robust {robust:.3f}"
    assert float(delta.abs().max()) == pytest.approx(8 / 255)


@pytest.mark.crosscheck
def test_uap_matches_art_universal_perturbation(blood) -> None:
    """Cross-check against ART 1.20's ``UniversalPerturbation(attacker="deepfool")``.

    Matched settings: L-inf 8/255, delta = 0.2, one pass, DeepFool with 10 iterations,
    overshoot 0.02 and every class (``nb_grads=10``; ART's DeepFool picks the wrong
    reference logit when nb_grads < nb_classes), sequential updates (``batch_size=1``)
    and ART's visit order (ART draws it with Python's ``random.sample``; we seed it and
    pass the fit set to medsec in that order with ``shuffle=False``).

    The images are mapped into [0.1, 0.9] (labels: the model's predictions there, i.e.
    the paper's fooling rate), so that x + v + dv stays inside [0, 1]: ART updates
    v <- P(clip(x_i + v + dv) - x_i), which differs from the paper's P(v + dv) at pixels
    where x_i + v + dv leaves the bounds (10% of raw BloodMNIST pixels lie within 8/255
    of 1). What remains are DeepFool details (ART: no 1e-4 in the step, overshoot once
    at the end, clipping per iteration). Measured on 48 fit / 500 test images, test
    fooling rates ART vs medsec: 41.4 vs 41.2% (seed 0), 41.2 vs 41.2%, 42.8 vs 42.4%.
    On raw images (100 fit images) the trajectories drift apart: 24.4 vs 21.8% and
    14.8 vs 16.4%, so the tolerance is asserted on the matched setting only. On a model
    retrained from the same recipe one order gave ART 38.4 vs medsec 27.2%, and on another
    ART 38.8 vs medsec 14.2% (the other two orders within 0.4 points), so the test asks for
    agreement (4 points fooling, 8 points fit) on at least two of three visit orders.
    """
    pytest.importorskip("art")
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    model, xf, _, xt, _ = blood
    n, eps = 48, 8 / 255
    squash = lambda t: 0.1 + 0.8 * t  # noqa: E731
    x, x_test = squash(xf[:n]), squash(xt)
    y, y_test = _predict(model, x), _predict(model, x_test)
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 28, 28), nb_classes=8,
                            clip_values=(0.0, 1.0))

    def fooling(d: torch.Tensor) -> float:
        return float((_predict(model, (x_test + d).clamp(0, 1)) != y_test).float().mean())

    # The sequential algorithm is chaotic in the visit order (one different early update
    # changes every later one), and on some retrained models a single order puts the two
    # libraries 10 points apart; the cross-check is on the mean over three visit orders.
    rows = []
    for seed in (0, 1, 2):
        random.seed(seed)
        order = random.sample(range(n), n)  # ART's first (and only) pass
        random.seed(seed)
        np.random.seed(seed)
        art = UniversalPerturbation(clf, attacker="deepfool", attacker_params={"max_iter": 10, "epsilon": 0.02,
                                    "nb_grads": 10, "verbose": False}, delta=0.2, max_iter=1, eps=eps, norm=np.inf,
                                    verbose=False)
        t0 = time.perf_counter()
        with attack_mode(model):  # frozen parameters: ART's backward passes leave no gradients on the shared model
            art.generate(x.numpy(), y=np.eye(8, dtype=np.float32)[y.numpy()])
        t_art = time.perf_counter() - t0
        ours = medsec.attacks.create("uap", batch_size=1, max_epochs=1, shuffle=False)
        t0 = time.perf_counter()
        delta = ours.fit(model, x[order], y[order], medsec.ThreatModel("linf", eps))
        t_ours = time.perf_counter() - t0
        rows.append((fooling(torch.from_numpy(art.noise).float()), fooling(delta), art.fooling_rate,
                     ours.fooling_rate_, t_art, t_ours))
    f_art, f_ours, fit_art, fit_ours = (sum(r[i] for r in rows) / len(rows) for i in range(4))
    msg = f"mean over 3 orders: ART {f_art:.3f} vs medsec {f_ours:.3f}; fit {fit_art:.3f} vs {fit_ours:.3f}; {rows}"
    assert f_art > 0.1, msg  # a non-trivial comparison
    # On one CI retrain two orders agreed within 0.4 points (0.462 vs 0.466, 0.482 vs 0.484)
    # and the third diverged (ART 0.388 vs medsec 0.142; fit 0.604 vs 0.125): asserted, the
    # libraries agree on at least two of the three orders.
    agree = [abs(r[0] - r[1]) <= 0.04 and abs(r[2] - r[3]) <= 0.08 for r in rows]
    assert sum(agree) >= 2, msg
