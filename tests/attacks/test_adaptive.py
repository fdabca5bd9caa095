"""Gradient masking is detected and beaten: BPDA for a quantiser, EOT for a random defence."""

from __future__ import annotations

import pytest
import torch

import medsec
from medsec.defenses import Defended
from medsec.experiments.evasion.checks import black_box_beats_white_box, model_checks, robust_accuracy_rises_with_eps
from medsec.experiments.evasion.run import worst_case

pytestmark = pytest.mark.unit


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def batch(bloodmnist_test):
    images = bloodmnist_test.images
    return images[:160], bloodmnist_test.labels[:160]


@pytest.mark.effect
def test_quantiser_masks_gradients_and_bpda_breaks_it(bloodmnist_model, batch):
    x, y = batch
    defended = Defended(bloodmnist_model, medsec.defenses.create("bit_depth", bits=3)).eval()
    codes = [c["code"] for c in model_checks(defended, x[:64], y[:64])]
    assert "gradient-zero" in codes
    pgd = medsec.attacks.create("pgd", steps=10)
    threat = medsec.ThreatModel("linf", 8 / 255)
    clean = _acc(defended, x, y)
    plain = _acc(defended, pgd(defended, x, y, threat=threat, generator=torch.Generator().manual_seed(0)).x_adv, y)
    attack, bpda_model = medsec.attacks.adaptive(pgd, defended)
    assert bpda_model.bpda and not defended.bpda
    adaptive = _acc(defended, attack(bpda_model, x, y, threat=threat, generator=torch.Generator().manual_seed(0)).x_adv, y)
    # measured on this model: clean ~0.91, plain PGD ~0.90 (looks robust), BPDA-PGD ~0.22
    assert plain >= clean - 0.05
    assert adaptive <= 0.4 and adaptive <= plain - 0.4


@pytest.mark.effect
def test_random_defence_is_flagged_and_eot_beats_plain(bloodmnist_model, batch):
    x, y = batch
    torch.manual_seed(0)
    defended = Defended(bloodmnist_model, medsec.defenses.create("random_noise", sigma=0.05)).eval()
    assert "randomised-outputs" in [c["code"] for c in model_checks(defended, x[:32], y[:32])]
    pgd = medsec.attacks.create("pgd", steps=10)
    threat = medsec.ThreatModel("linf", 2 / 255)
    eot, _ = medsec.attacks.adaptive(pgd, defended, eot_samples=8)
    assert eot.eot_samples == 8 and pgd.eot_samples == 1

    def robust(attack):
        torch.manual_seed(1)
        adv = attack(defended, x, y, threat=threat, generator=torch.Generator().manual_seed(0)).x_adv
        # the defence is random: score by the majority over several draws
        with torch.no_grad():
            votes = torch.stack([defended(adv).argmax(1) for _ in range(9)])
        return (votes.mode(0).values == y).float().mean().item()

    plain, adaptive = robust(pgd), robust(eot)
    # measured: clean 0.91, plain PGD 0.66-0.68, EOT-PGD 0.63-0.65 (160 images, sigma 0.05, eps 2/255)
    assert adaptive <= plain + 0.01, (plain, adaptive)

    # EOT's gradient estimates the expected gradient much better than one draw does
    from medsec.attacks.base import Problem, attack_mode
    from medsec.objectives import resolve

    def grad(samples):
        with attack_mode(defended):
            prob = Problem(defended, resolve("auto", "multiclass"), y, False, threat, (0.0, 1.0), eot_samples=samples)
            return prob.loss_and_grad(x)[1].flatten(1)

    torch.manual_seed(2)
    reference = grad(64)
    cos = torch.nn.functional.cosine_similarity
    single, averaged = cos(grad(1), reference).mean().item(), cos(grad(8), reference).mean().item()
    assert averaged >= single + 0.1, (single, averaged)


def test_bpda_straight_through_gradient_is_identity():
    q = Defended(torch.nn.Identity(), medsec.defenses.create("bit_depth", bits=2), bpda=True)
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    plain = Defended(torch.nn.Identity(), medsec.defenses.create("bit_depth", bits=2))
    x.grad = None
    plain(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_bpda_model_keeps_the_mode_and_the_attack_restores_it():
    """with_bpda() builds a new wrapper: it must start in the defended model's mode, or the
    attack's mode restore would put the shared classifier into training mode."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 4 * 4, 3))
    defended = Defended(net, medsec.defenses.create("bit_depth", bits=3)).eval()
    attack, bpda_model = medsec.attacks.adaptive(medsec.attacks.create("pgd", steps=2), defended)
    assert bpda_model.bpda and not bpda_model.training
    attack(bpda_model, torch.rand(2, 3, 6, 6), torch.tensor([0, 1]), threat=medsec.ThreatModel("linf", 4 / 255))
    assert not net.training and not defended.training
    assert defended.train().with_bpda().training


def test_probability_outputs_and_nan_gradients_are_flagged():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3), torch.nn.Softmax(dim=1))
    x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    assert "outputs-look-like-probabilities" in [c["code"] for c in model_checks(net, x, y)]

    class NaNGrad(torch.nn.Module):
        def forward(self, x):
            return torch.sqrt(x.flatten(1)[:, :3] - 2).nan_to_num(0.0) + torch.tensor([5.0, 0.0, 0.0])

    assert "gradient-nan" in [c["code"] for c in model_checks(NaNGrad(), x, y)]
    ok = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    assert model_checks(ok, x, y) == []


def _ev(id_, label, eps, ra, gradient_free=False, bits="ff"):
    return {"id": id_, "label": label, "defense": None, "adaptive": False, "gradient_free": gradient_free,
            "threat": {"norm": "linf", "eps": eps, "eps_255": eps * 255, "targeted": False},
            "metrics": {"robust_accuracy": ra}, "robust_bits": bits}


def test_structured_warnings_from_evaluations():
    evs = [_ev("pgd-2", "pgd", 2 / 255, 0.5), _ev("pgd-8", "pgd", 8 / 255, 0.6), _ev("sq-8", "square", 8 / 255, 0.3, True)]
    rises = robust_accuracy_rises_with_eps(evs)
    assert [w["code"] for w in rises] == ["robust-accuracy-rises-with-eps"] and rises[0]["cells"] == ["pgd-2", "pgd-8"]
    bb = black_box_beats_white_box(evs)
    assert [w["code"] for w in bb] == ["black-box-beats-white-box"]
    assert robust_accuracy_rises_with_eps(evs[:1]) == [] and black_box_beats_white_box(evs[:2]) == []


def test_black_box_check_ignores_adaptive_cells_but_names_them():
    """Square beating plain PGD is the masking signal even when BPDA-PGD then beats Square."""
    bpda = {**_ev("pgd-8-adaptive", "pgd (BPDA)", 8 / 255, 0.1), "adaptive": True}
    evs = [_ev("pgd-8", "pgd", 8 / 255, 0.9), _ev("sq-8", "square", 8 / 255, 0.4, True), bpda]
    (warn,) = black_box_beats_white_box(evs)
    assert warn["cells"] == ["sq-8", "pgd-8", "pgd-8-adaptive"]
    assert "plain gradient attack pgd (90.0%)" in warn["message"] and "adaptive (BPDA/EOT) run of pgd (BPDA) reaches 10.0%" in warn["message"]
    assert black_box_beats_white_box([evs[1], bpda]) == []  # only adaptive white-box cells: nothing to compare


def test_worst_case_is_the_intersection_of_robust_points():
    # 8 points; attack A leaves points 0-3 robust (0xf0), attack B leaves 2-5 (0x3c): both -> 2, 3
    evs = [_ev("a", "a", 0.1, 0.5, bits="f0"), _ev("b", "b", 0.1, 0.5, bits="3c")]
    (wc,) = worst_case(evs, 8)
    assert wc["robust_accuracy"] == pytest.approx(2 / 8) and set(wc["attacks"]) == {"a", "b"}
