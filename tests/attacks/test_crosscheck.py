"""medsec FGSM, FGSM-RS and PGD against torchattacks 3.5 on the same model and batch.

Both libraries receive the same :class:`medsec.models.Classifier` (normalisation inside
the model, images in [0, 1]) in eval mode. The update rules are the same, with one
difference that matters for exactness: torchattacks maximises the batch-mean CE,
medsec the per-sample CE summed over the batch, so torchattacks' input gradient is
medsec's divided by the batch size. With a power-of-two batch that division is exact in
floating point, so L-inf results (which use only sign(grad)) must agree to float
rounding of the projection (< 1e-6).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchattacks

import medsec

pytestmark = pytest.mark.crosscheck

NUM_CLASSES = 8
SIZE = 28
BATCH = 32  # power of two: torchattacks' mean-CE gradient is exactly medsec's / BATCH


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is 5-50x faster than
    two threads that spin against other processes. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images in [0, 1] and labels of an 8-class task: the colour octant (which
    of the three channel offsets exceed 0.3)."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 0.6
    x = colour + 0.4 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    bits = (colour.flatten(1) > 0.3).long()
    return x, bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    """A short training run (~0.5 s) so that predictions and gradients depend on the
    input (a random small CNN predicts one class everywhere)."""
    torch.manual_seed(0)
    model = medsec.models.create("small_cnn", num_classes=NUM_CLASSES, width=16)
    x, y = _data(5, 256)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, 256, (32,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = medsec.models.create("small_cnn", num_classes=NUM_CLASSES, width=16)
    model.load_state_dict(_trained_state())
    model.eval()
    x, _ = _data(1, BATCH)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # clean accuracy 1: robust accuracy is 1 - success
    target = (y + 1 + torch.arange(BATCH) % (NUM_CLASSES - 1)) % NUM_CLASSES
    assert (target != y).all()
    assert y.unique().numel() >= 3, "the model should not predict a single class everywhere"
    return model, x, y, target


def _check_model_untouched(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    assert not model.training, "eval mode was not kept"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert all(p.grad is None for p in model.parameters())


@torch.no_grad()
def _pred(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("eps_255", [2, 8])
def test_fgsm_matches_torchattacks(setup, eps_255: int, targeted: bool) -> None:  # type: ignore[no-untyped-def]
    model, x, y, target = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eps = eps_255 / 255
    ta = torchattacks.FGSM(model, eps=eps)
    if targeted:
        ta.set_mode_targeted_by_label(quiet=True)
        ref = ta(x, target)
    else:
        ref = ta(x, y)
    _check_model_untouched(model, state)
    res = medsec.attacks.create("fgsm")(
        model, x, y, threat=medsec.ThreatModel("linf", eps, targeted), target=target if targeted else None
    )
    _check_model_untouched(model, state)

    diff = (res.x_adv - ref).abs().max().item()
    assert diff < 1e-6, f"max |medsec - torchattacks| = {diff:.3g}"
    assert (res.x_adv - x).abs().max() > 0.9 * eps, "FGSM should move by eps"
    pred = _pred(model, ref)
    expected = (pred == target) if targeted else (pred != y)
    assert torch.equal(res.success, expected)
    if not targeted and eps_255 == 8:
        assert res.success.any(), "8/255 FGSM should break some samples"


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_pgd_linf_matches_torchattacks(setup, targeted: bool) -> None:  # type: ignore[no-untyped-def]
    model, x, y, target = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eps, alpha, steps = 8 / 255, 2 / 255, 10
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    if targeted:
        ta.set_mode_targeted_by_label(quiet=True)
        ref = ta(x, target)
    else:
        ref = ta(x, y)
    _check_model_untouched(model, state)
    pgd = medsec.attacks.create("pgd", steps=steps, step_size=alpha, random_start=False)
    res = pgd(model, x, y, threat=medsec.ThreatModel("linf", eps, targeted), target=target if targeted else None)
    _check_model_untouched(model, state)

    diff = (res.x_adv - ref).abs().max().item()
    assert diff < 1e-6, f"max |medsec - torchattacks| = {diff:.3g}"
    assert res.steps == steps
    pred = _pred(model, ref)
    expected = (pred == target) if targeted else (pred != y)
    assert torch.equal(res.success, expected)
    assert 0 < res.success.sum() < BATCH or targeted, "the budget should break some but not all samples"
    if targeted:
        assert res.success.any(), "targeted PGD should reach some targets at 8/255"


def _pgd_l2_pair(setup, targeted: bool, eps_for_division: float):  # type: ignore[no-untyped-def]
    model, x, y, target = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eps, alpha, steps = 0.5, 0.1, 10
    ta = torchattacks.PGDL2(
        model, eps=eps, alpha=alpha, steps=steps, random_start=False, eps_for_division=eps_for_division
    )
    if targeted:
        ta.set_mode_targeted_by_label(quiet=True)
        ref = ta(x, target)
    else:
        ref = ta(x, y)
    _check_model_untouched(model, state)
    pgd = medsec.attacks.create("pgd", steps=steps, step_size=alpha, random_start=False)
    res = pgd(model, x, y, threat=medsec.ThreatModel("l2", eps, targeted), target=target if targeted else None)
    _check_model_untouched(model, state)
    assert ((res.x_adv - x).flatten(1).norm(dim=1) <= eps + 1e-6).all()
    assert ((ref - x).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    pred_ref = _pred(model, ref)
    expected = (pred_ref == target) if targeted else (pred_ref != y)
    assert res.success.any(), "an L2 budget of 0.5 should break some samples or reach some targets"
    return res, ref, expected


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_pgd_l2_update_rule_matches_torchattacks(setup, targeted: bool) -> None:  # type: ignore[no-untyped-def]
    """With torchattacks' ``eps_for_division=0`` both normalise the gradient by its exact
    norm; the power-of-two batch makes the 1/BATCH scaling of torchattacks' gradient
    exact, so the step, projection (delta * min(1, eps / ||delta||)) and clamp must
    give the same images."""
    res, ref, expected = _pgd_l2_pair(setup, targeted, eps_for_division=0.0)
    diff = (res.x_adv - ref).abs().max().item()
    assert diff < 1e-6, f"max |medsec - torchattacks| = {diff:.3g}"
    assert torch.equal(res.success, expected)


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_pgd_l2_matches_torchattacks_default(setup, targeted: bool) -> None:  # type: ignore[no-untyped-def]
    """torchattacks' default divides the batch-mean gradient by (||g|| + 1e-10). That
    mean gradient is medsec's summed one / 32, and on confidently classified samples
    ||g_sum|| gets down to ~1e-5, so the 1e-10 tilts the unit step by up to
    1e-10 * 32 / 1e-5 = 3e-4 relative per step; over 10 steps of size 0.1 (with ReLU
    kinks able to amplify it) that moves a few pixels of such samples by up to ~1e-3.
    Samples with ordinary gradient norms must still agree to 1e-5, and robust accuracy
    (or the target hit rate) must agree within one sample."""
    res, ref, expected = _pgd_l2_pair(setup, targeted, eps_for_division=1e-10)
    per_sample = (res.x_adv - ref).flatten(1).abs().amax(dim=1)
    assert per_sample.max() < 2e-3, f"max |medsec - torchattacks| = {per_sample.max().item():.3g}"
    assert (per_sample < 1e-5).float().mean() >= 0.9, f"per-sample differences {per_sample.tolist()}"
    assert abs(res.success.float().mean().item() - expected.float().mean().item()) <= 1 / BATCH
    assert (res.success == expected).float().mean() >= 1 - 1 / BATCH


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("eps_255", [2, 8])
def test_fgsm_rs_matches_torchattacks_ffgsm(setup, eps_255: int, targeted: bool) -> None:  # type: ignore[no-untyped-def]
    """FGSM with a random start (Wong, Rice & Kolter 2020) against torchattacks' ``FFGSM``
    at the paper's alpha = 1.25 eps. torchattacks draws its start from the global RNG with
    ``torch.randn_like(x).uniform_(-eps, eps)``; medsec draws it from the generator with
    ``torch.rand``, so the generator replays the same stream after the same normal draws,
    and the start (up to one rounding of 2u - 1 times eps), the step and the projection
    must then give the same images."""
    model, x, y, target = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eps = eps_255 / 255
    ta = torchattacks.FFGSM(model, eps=eps, alpha=1.25 * eps)
    if targeted:
        ta.set_mode_targeted_by_label(quiet=True)
    torch.manual_seed(123)
    ref = ta(x, target if targeted else y)
    _check_model_untouched(model, state)
    gen = torch.Generator().manual_seed(123)
    torch.randn(x.shape, generator=gen)  # the normal draws randn_like makes before uniform_ overwrites them
    attack = medsec.attacks.create("fgsm_rs")
    res = attack(model, x, y, threat=medsec.ThreatModel("linf", eps, targeted), target=target if targeted else None,
                 generator=gen)
    _check_model_untouched(model, state)
    diff = (res.x_adv - ref).abs().max().item()
    assert diff < 1e-6, f"max |medsec - torchattacks| = {diff:.3g}"
    pred = _pred(model, ref)
    assert torch.equal(res.success, (pred == target) if targeted else (pred != y))
    assert res.success.any() or eps_255 == 2, "8/255 FGSM-RS should break some samples"
    # the random start matters: a different generator gives another result
    other = attack(model, x, y, threat=medsec.ThreatModel("linf", eps, targeted), target=target if targeted else None,
                   generator=torch.Generator().manual_seed(124))
    assert not torch.equal(other.x_adv, res.x_adv)
