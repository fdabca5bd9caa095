"""APGD, APGD-T, Square and the DLR objective.

Hand-checked DLR values and refusals, the APGD checkpoint schedule, the step-size
adaptation on a toy problem, cross-checks against torchattacks 3.5 on the cached
BloodMNIST model (robust accuracy within 2 percentage points), APGD vs PGD and APGD-T
vs APGD-CE, Square's query budget and gradient-free operation, and every new attack on
binary single-logit and multi-label heads.

The cross-checks run at a reduced size so that this file stays well under a minute on
a shared 2-core machine. torchattacks' APGD seeds the global generator and draws the
random start for the correctly classified images, so on a batch of correctly classified
images an APGD run with ``torch.Generator().manual_seed(seed)`` starts at exactly the
same points and the two implementations agree sample for sample (up to the paper's
checkpoint conditions, which torchattacks implements with small differences).
Square is a random search whose draws cannot be matched, so on few images its robust
accuracy differs by binomial noise; the small check uses a tolerance of a few samples
and ``MEDSEC_FULL_XCHECK=1`` runs the full-size check (500 images, 1000 queries, 2 pp).
"""

from __future__ import annotations

import functools
import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

import medsec
import medsec.attacks.apgd  # noqa: F401  (registration, until medsec.attacks imports them)
import medsec.attacks.square  # noqa: F401
import medsec.objectives.dlr  # noqa: F401
from medsec import objectives
from medsec.attacks.apgd import apgd_checkpoints, apgd_run
from medsec.attacks.base import Problem
from medsec.attacks.square import P_SCHEDULE, p_selection
from medsec.objectives.base import Objective

pytestmark = pytest.mark.unit

FULL = os.environ.get("MEDSEC_FULL_XCHECK", "") == "1"
SMALL = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models on a shared 2-core machine: one intra-op thread is fastest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return medsec.models.predict_from_logits(model(x), getattr(model, "task", "multiclass"))
    finally:
        model.train(was)


# ---------------------------------------------------------------- DLR


def test_dlr_untargeted_by_hand() -> None:
    dlr = objectives.create("dlr")
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0], [1.0, 5.0, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([0, 0, 3])
    # -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)
    expected = torch.tensor([-(4 - 3) / (4 - 1), -(1 - 5) / (5 - 1), 0.0])
    torch.testing.assert_close(dlr.loss(z, y), expected)
    # invariant to shifting and positive scaling of the logits
    torch.testing.assert_close(dlr.loss(2.5 * z + 7.0, y), expected)
    # success is the usual untargeted test
    assert dlr.success(z, y).tolist() == [False, True, True]


def test_dlr_targeted_by_hand() -> None:
    dlr = objectives.create("dlr")
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0], [1.0, 5.0, 2.0, -1.0]])
    y = torch.tensor([0, 0])
    t = torch.tensor([2, 1])
    # paper form with the true class: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    paper = torch.tensor([-(4 - 1) / (4 - (1 + 0) / 2), -(1 - 5) / (5 - (1 - 1) / 2)])
    torch.testing.assert_close(dlr.targeted_loss(z, y, t), paper)
    # loss(..., targeted=True) only sees the target: z_y is the largest non-target logit
    # (equal to the paper's value while the sample is classified as y, as sample 0 is)
    by_target = torch.tensor([-(4 - 1) / 3.5, -(2 - 5) / 5.0])
    torch.testing.assert_close(dlr.loss(z, t, targeted=True), by_target)
    assert dlr.loss(z, t, targeted=True)[0] == dlr.targeted_loss(z, y, t)[0]
    assert dlr.success(z, t, targeted=True).tolist() == [False, True]


def test_dlr_refuses_binary_multilabel_and_too_few_classes() -> None:
    for task in ("binary", "multilabel"):
        with pytest.raises(medsec.InputError, match="margin"):
            objectives.create("dlr", task=task)
    dlr = objectives.create("dlr")
    with pytest.raises(medsec.InputError, match=r"at least 3 classes.*margin"):
        dlr.loss(torch.tensor([[1.0, 2.0]]), torch.tensor([0]))
    with pytest.raises(medsec.InputError, match=r"at least 4 classes.*margin"):
        dlr.loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0]), targeted=True)
    # through an attack: a binary head and a 2-class softmax head
    x = torch.rand(2, 3, SMALL, SMALL, generator=gen(0))
    binary = medsec.models.create("small_cnn", num_classes=2, task="binary", width=8)
    two = medsec.models.create("small_cnn", num_classes=2, width=8)
    for model in (binary, two):
        with pytest.raises(medsec.InputError, match="margin"):
            medsec.attacks.create("apgd", loss="dlr", steps=2)(
                model, x, torch.tensor([0, 1]), threat=medsec.ThreatModel("linf", 8 / 255)
            )


# ---------------------------------------------------------------- APGD mechanics


def test_apgd_checkpoints_follow_the_paper() -> None:
    w = apgd_checkpoints(100)
    # by hand: p = 0, .22, .41, .57, .70, .80, .87, .93, .99, (1.05 > 1)
    assert w[:4] == [0, 22, 41, 57]
    assert w[4] == 70 and w[7] == 93
    assert w == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    # the recursion itself, in exact arithmetic
    p = [0.0, 0.22]
    while p[-1] <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert w == [math.ceil(round(q * 100, 9)) for q in p if q * 100 <= 100 + 1e-9]
    for n in (1, 5, 10, 37, 1000):
        ws = apgd_checkpoints(n)
        assert ws[0] == 0 and ws == sorted(set(ws)) and ws[-1] <= n
    assert apgd_checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(1000)[1:3] == [220, 410]


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class _Bowl(Objective):
    """-||z - c||^2: a concave loss whose maximiser c lies inside the ball."""

    name = "bowl"

    def __init__(self, centre: torch.Tensor) -> None:
        super().__init__("multiclass")
        self.centre = centre

    def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        return -((logits - self.centre.flatten(1)) ** 2).sum(dim=1)

    def success(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        return torch.zeros(logits.shape[0], dtype=torch.bool)


def test_apgd_step_size_halving_converges_where_fixed_steps_oscillate() -> None:
    """On a concave bowl a fixed sign step oscillates around the maximiser at the step
    size; APGD halves its step size at checkpoints where the loss stalls (condition 1)
    and ends far closer; it also queries once per iterate (N + 1 per run)."""
    eps, steps = 0.5, 100
    x = torch.full((3, 1, 2, 2), 0.5)
    centre = x + torch.tensor([0.2, -0.3, 0.05]).reshape(3, 1, 1, 1)
    threat = medsec.ThreatModel("linf", eps)
    problem = Problem(_Flatten(), _Bowl(centre), torch.zeros(3, dtype=torch.long), False, threat, (0.0, 1.0))
    res = apgd_run(problem, x, torch.arange(3), steps=steps, random=False)
    assert res.steps == steps
    assert problem.queries.tolist() == [steps + 1] * 3
    dist = (res.x - centre).abs().flatten(1).amax(dim=1)
    # eta starts at 2 eps = 1 and can halve at 8 checkpoints: 1 / 2^8 ~ 0.004
    assert (dist < 0.02).all(), dist
    assert torch.allclose(res.loss, problem.objective.loss(res.x.flatten(1), problem.labels))
    # PGD with the same first step size (never reduced) stays far from the maximiser
    problem2 = Problem(_Flatten(), _Bowl(centre), torch.zeros(3, dtype=torch.long), False, threat, (0.0, 1.0))
    pgd = medsec.attacks.create("pgd", steps=steps, step_size=0.3, random_start=False)
    x_pgd, _ = pgd._run(problem2, x, None)
    assert ((x_pgd - centre).abs().flatten(1).amax(dim=1) > 0.04).any()


# ---------------------------------------------------------------- BloodMNIST cross-checks

XCHECK_N = 48  # correctly classified test images for the fast checks
XCHECK_STEPS = 10


@pytest.fixture(scope="module")
def blood(bloodmnist_model, bloodmnist_test):  # type: ignore[no-untyped-def]
    """The cached BloodMNIST CNN and its first correctly classified test images."""
    model = bloodmnist_model.eval()
    images = bloodmnist_test.images  # builds a new tensor on every access: take it once
    labels = torch.as_tensor(bloodmnist_test.labels).long().reshape(-1)
    n = 500 if FULL else 160
    x, y = images[:n], labels[:n]
    ok = predict(model, x) == y
    return model, x[ok], y[ok]


def _ta_robust(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, adv) == y).float().mean().item()


@pytest.fixture(scope="module")
def apgd_runs(blood):  # type: ignore[no-untyped-def]
    """medsec APGD-CE (early stop) at 2/255 and 4/255 on the first XCHECK_N images."""
    model, x, y = blood
    x, y = x[:XCHECK_N], y[:XCHECK_N]
    out = {}
    for e in (2, 4):
        attack = medsec.attacks.create("apgd", steps=XCHECK_STEPS, loss="ce", early_stop=True)
        out[e] = attack(model, x, y, threat=medsec.ThreatModel("linf", e / 255), generator=gen(0))
    return out


@pytest.mark.crosscheck
@pytest.mark.parametrize("eps_255", [2, 4])
def test_apgd_ce_matches_torchattacks(blood, apgd_runs, eps_255: int) -> None:  # type: ignore[no-untyped-def]
    model, x, y = blood
    x, y = x[:XCHECK_N], y[:XCHECK_N]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = apgd_runs[eps_255]
    ta = torchattacks.APGD(model, norm="Linf", eps=eps_255 / 255, steps=XCHECK_STEPS, n_restarts=1, seed=0, loss="ce")
    ref = ta(x, y)
    robust_ta = _ta_robust(model, ref, y)
    robust_ms = 1.0 - res.success_rate
    assert abs(robust_ms - robust_ta) <= 0.02 + 1e-9, f"medsec {robust_ms:.3f} vs torchattacks {robust_ta:.3f}"
    # same random starts, same algorithm: the same images are broken (up to float noise)
    agree = (res.success == (predict(model, ref) != y)).float().mean().item()
    assert agree >= 0.95, f"medsec and torchattacks break different images ({agree:.0%} agree)"
    assert 0.0 < robust_ms < 1.0, "the budget should break some but not all images"
    assert torch.equal(res.success, predict(model, res.x_adv) != y)
    assert ((res.x_adv - x).abs().flatten(1).amax(dim=1) <= eps_255 / 255 + 1e-6).all()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.effect
def test_apgd_at_least_as_strong_as_pgd10(blood, apgd_runs) -> None:  # type: ignore[no-untyped-def]
    model, x, y = blood
    x, y = x[:XCHECK_N], y[:XCHECK_N]
    pgd = medsec.attacks.create("pgd", steps=10, loss="ce", early_stop=True)
    res_pgd = pgd(model, x, y, threat=medsec.ThreatModel("linf", 4 / 255), generator=gen(0))
    res_apgd = apgd_runs[4]
    assert res_apgd.success.sum() >= res_pgd.success.sum(), (
        f"APGD broke {int(res_apgd.success.sum())}, PGD-10 {int(res_pgd.success.sum())} of {XCHECK_N}"
    )
    # early stop: a broken sample stops querying
    assert res_apgd.queries[res_apgd.success].float().mean() < XCHECK_STEPS + 2


@pytest.mark.effect
def test_apgd_t_not_weaker_than_apgd_ce(blood, apgd_runs) -> None:  # type: ignore[no-untyped-def]
    """APGD-T (targeted DLR over the top 9 = all 7 other classes) on the first 32 images
    breaks at least as many as APGD-CE on the same images (minus 2 pp)."""
    model, x, y = blood
    n = 32
    x, y = x[:n], y[:n]
    attack = medsec.attacks.create("apgd_t", steps=XCHECK_STEPS, early_stop=True)
    res_t = attack(model, x, y, threat=medsec.ThreatModel("linf", 4 / 255), generator=gen(0))
    assert res_t.extras["target_loss"] == "dlr"
    assert torch.equal(res_t.success, predict(model, res_t.x_adv) != y)
    ce_rate = apgd_runs[4].success[:n].float().mean().item()
    assert res_t.success_rate >= ce_rate - 0.02, f"APGD-T {res_t.success_rate:.3f} vs APGD-CE {ce_rate:.3f}"
    # 7 targets x (steps + 1) queries at most, plus the target selection and the final check
    assert res_t.queries.max() <= 7 * (XCHECK_STEPS + 1) + 2
    assert res_t.queries.max() > 2 * (XCHECK_STEPS + 1), "robust images should be attacked for several targets"


def _square_pair(model: nn.Module, x: torch.Tensor, y: torch.Tensor, queries: int) -> tuple[float, float, torch.Tensor]:
    res = medsec.attacks.create("square", queries=queries)(
        model, x, y, threat=medsec.ThreatModel("linf", 4 / 255), generator=gen(0)
    )
    ref = torchattacks.Square(model, norm="Linf", eps=4 / 255, n_queries=queries, n_restarts=1, seed=0, loss="margin")(
        x, y
    )
    assert torch.equal(res.success, predict(model, res.x_adv) != y)
    assert res.queries.max() <= queries + 1
    return 1.0 - res.success_rate, _ta_robust(model, ref, y), res.queries


@pytest.mark.crosscheck
def test_square_matches_torchattacks_small(blood) -> None:  # type: ignore[no-untyped-def]
    """32 images, 60 queries (seconds instead of minutes). Two independent random
    searches differ here by binomial noise of about 3 samples (1 sigma), so this
    fast check allows 6 samples (19 pp) and mainly guards against a broken search;
    the full-size check (MEDSEC_FULL_XCHECK=1: 500 images, 1000 queries) asks for 2 pp.
    Both runs are seeded, so the outcome is reproducible."""
    model, x, y = blood
    x, y = x[:32], y[:32]
    robust_ms, robust_ta, queries = _square_pair(model, x, y, 60)
    assert abs(robust_ms - robust_ta) <= 6 / 32 + 1e-9, f"medsec {robust_ms:.3f} vs torchattacks {robust_ta:.3f}"
    assert robust_ms <= 0.9, "60 queries at 4/255 break some of these images"


@pytest.mark.crosscheck
@pytest.mark.skipif(not FULL, reason="full-size Square cross-check (minutes): set MEDSEC_FULL_XCHECK=1")
def test_square_matches_torchattacks_full(blood) -> None:  # type: ignore[no-untyped-def]
    model, x, y = blood
    robust_ms, robust_ta, _ = _square_pair(model, x, y, 1000)
    assert abs(robust_ms - robust_ta) <= 0.02, f"medsec {robust_ms:.3f} vs torchattacks {robust_ta:.3f}"


@pytest.mark.crosscheck
@pytest.mark.skipif(not FULL, reason="full-size APGD cross-check (minutes): set MEDSEC_FULL_XCHECK=1")
@pytest.mark.parametrize("eps_255", [2, 4])
def test_apgd_ce_matches_torchattacks_full(blood, eps_255: int) -> None:  # type: ignore[no-untyped-def]
    model, x, y = blood
    x, y = x[:200], y[:200]
    res = medsec.attacks.create("apgd", steps=100, loss="ce", early_stop=True)(
        model, x, y, threat=medsec.ThreatModel("linf", eps_255 / 255), generator=gen(0)
    )
    ref = torchattacks.APGD(model, norm="Linf", eps=eps_255 / 255, steps=100, n_restarts=1, seed=0, loss="ce")(x, y)
    assert abs((1.0 - res.success_rate) - _ta_robust(model, ref, y)) <= 0.02


# ---------------------------------------------------------------- Square: black box and budget


class _ScoresOnly(nn.Module):
    """A model that only returns scores: its forward runs under no_grad, so any attempt
    to differentiate through it fails."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.spec, self.task, self.num_classes = model.spec, model.task, model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.inner(x)


@functools.cache
def _small_state(num_classes: int, task: str) -> dict[str, torch.Tensor]:
    """A small CNN fitted for a few steps to a colour rule (so predictions vary)."""
    torch.manual_seed(0)
    model = medsec.models.create("small_cnn", num_classes=num_classes, width=8, task=task)
    g = gen(5)
    colour = torch.rand(64, 3, 1, 1, generator=g)
    x = (0.6 * colour + 0.4 * torch.rand(64, 3, SMALL, SMALL, generator=g)).clamp(0, 1)
    score = colour.flatten(1) @ torch.randn(3, num_classes, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(20):
        out = model(x)
        if task == "multiclass":
            loss = F.cross_entropy(out, score.argmax(dim=1))
        elif task == "binary":
            loss = F.binary_cross_entropy_with_logits(out, (score[:, 0] > score[:, 0].median()).float())
        else:
            loss = F.binary_cross_entropy_with_logits(out, (score > score.median(dim=0).values).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _small_batch(n: int, seed: int) -> torch.Tensor:
    """Images of the small models' colour task (a colour offset plus pixel noise)."""
    g = gen(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g)
    return (0.6 * colour + 0.4 * torch.rand(n, 3, SMALL, SMALL, generator=g)).clamp(0, 1)


def _trained_small(num_classes: int = 4, task: str = "multiclass") -> nn.Module:
    model = medsec.models.create("small_cnn", num_classes=num_classes, width=8, task=task)
    model.load_state_dict(_small_state(num_classes, task))
    return model.eval()


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_square_needs_no_gradients_and_keeps_its_budget(norm: str, eps: float) -> None:
    model = _trained_small()
    scores_only = _ScoresOnly(model)
    x = _small_batch(8, 1)
    y = predict(model, x)
    threat = medsec.ThreatModel(norm, eps)
    with pytest.raises(RuntimeError):  # the wrapper really blocks gradients
        medsec.attacks.create("pgd", steps=1)(scores_only, x, y, threat=threat)
    assert medsec.attacks.get("square").needs_gradients is False
    queries = 40
    res = medsec.attacks.create("square", queries=queries)(scores_only, x, y, threat=threat, generator=gen(0))
    assert res.queries.max() <= queries + 1  # the search budget plus the final evaluation
    # a sample never broken spends the whole budget; a broken one stops querying
    assert (res.queries[~res.success] == queries + 1).all()
    assert torch.equal(res.success, predict(model, res.x_adv) != y)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert (res.norms[norm] <= eps + 1e-6).all()
    if norm == "linf":
        # perturbations sit on the vertices of the ball (or at the image bounds)
        d = (res.x_adv - x).abs()
        at_vertex = (d - eps).abs() < 1e-6
        at_bound = (res.x_adv == 0) | (res.x_adv == 1)
        assert (at_vertex | at_bound)[~res.success.reshape(-1, 1, 1, 1).expand_as(d)].all()
    # the same generator seed gives the same result; another seed another one
    again = medsec.attacks.create("square", queries=queries)(scores_only, x, y, threat=threat, generator=gen(0))
    assert torch.equal(again.x_adv, res.x_adv)


def test_square_p_schedule() -> None:
    assert P_SCHEDULE == (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
    assert p_selection(0.8, 0, 10000) == 0.8
    assert p_selection(0.8, 10, 10000) == 0.8
    assert p_selection(0.8, 11, 10000) == 0.4
    assert p_selection(0.8, 9000, 10000) == 0.8 / 512
    # rescaled to 1000 queries: halving after iterations 1, 5, 20, 50, ...
    assert p_selection(0.8, 2, 1000) == 0.4 and p_selection(0.8, 21, 1000) == 0.1


def test_square_skips_samples_already_misclassified() -> None:
    model = _trained_small()
    x = _small_batch(8, 2)
    y = predict(model, x)
    y_wrong = y.clone()
    y_wrong[:3] = (y[:3] + 1) % 4  # already "broken" at the clean point
    res = medsec.attacks.create("square", queries=30)(
        model, x, y_wrong, threat=medsec.ThreatModel("linf", 4 / 255), generator=gen(0)
    )
    assert res.success[:3].all()
    assert torch.equal(res.x_adv[:3], x[:3])
    assert res.queries[:3].tolist() == [2, 2, 2]  # the clean query and the final evaluation


# ---------------------------------------------------------------- heads and APGD-T variants


HEAD_ATTACKS = [
    ("apgd", {"steps": 5, "loss": "auto"}),
    ("apgd", {"steps": 5, "loss": "margin"}),
    ("apgd_t", {"steps": 3}),
    ("square", {"queries": 20}),
    ("square", {"queries": 20, "loss": "bce"}),
]


@pytest.mark.parametrize("task, classes", [("binary", 2), ("multilabel", 5)])
@pytest.mark.parametrize("norm, eps", [("linf", 16 / 255), ("l2", 1.0)])
def test_binary_and_multilabel_heads(task: str, classes: int, norm: str, eps: float) -> None:
    """Every new attack on single-logit binary and multi-label heads (margin and BCE
    objectives, apgd's "auto" = BCE), untargeted and targeted at the flipped labels."""
    model = _trained_small(classes, task)
    x = _small_batch(6, 3)
    y = predict(model, x)
    target = 1 - y
    for name, params in HEAD_ATTACKS:
        attack = medsec.attacks.create(name, **params)
        res = attack(model, x, y, threat=medsec.ThreatModel(norm, eps), generator=gen(0))
        assert res.x_adv.shape == x.shape and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert (res.norms[norm] <= eps + 1e-6).all()
        pred = predict(model, res.x_adv)
        wrong = (pred != y) if task == "binary" else (pred != y).any(dim=1)
        assert torch.equal(res.success, wrong), (name, params)
        assert torch.isfinite(res.loss).all()
        res_t = attack(
            model, x, y, threat=medsec.ThreatModel(norm, eps, targeted=True), target=target, generator=gen(0)
        )
        pred_t = predict(model, res_t.x_adv)
        hit = (pred_t == target) if task == "binary" else (pred_t == target).all(dim=1)
        assert torch.equal(res_t.success, hit), (name, params)
        assert (res_t.norms[norm] <= eps + 1e-6).all()


def test_binary_head_is_broken_by_apgd_and_apgd_t() -> None:
    """A budget large enough to flip a single-logit head: both attacks flip most samples
    (APGD-T's only "target" is the other class)."""
    model = _trained_small(2, "binary")
    x = _small_batch(8, 3)
    y = predict(model, x)
    threat = medsec.ThreatModel("linf", 32 / 255)
    res = medsec.attacks.create("apgd", steps=20)(model, x, y, threat=threat, generator=gen(0))
    res_t = medsec.attacks.create("apgd_t", steps=20)(model, x, y, threat=threat, generator=gen(0))
    assert res.success.float().mean() >= 0.5
    assert res_t.success.float().mean() >= 0.5
    assert res_t.extras["target_loss"] == "margin"


def test_apgd_t_falls_back_to_margin_below_four_classes(caplog) -> None:  # type: ignore[no-untyped-def]
    model = _trained_small(3)
    x = _small_batch(8, 4)
    y = predict(model, x)
    threat = medsec.ThreatModel("linf", 64 / 255)
    with caplog.at_level(logging.INFO, logger="medsec.attacks.apgd"):
        res = medsec.attacks.create("apgd_t", steps=10, loss="dlr")(model, x, y, threat=threat, generator=gen(0))
    assert res.extras["target_loss"] == "margin"
    assert any("targeted margin" in r.getMessage() and "4 classes" in r.getMessage() for r in caplog.records)
    assert torch.equal(res.success, predict(model, res.x_adv) != y)
    assert res.success.any()


def test_apgd_t_targets_and_targeted_threat() -> None:
    model = _trained_small(4)
    x = _small_batch(10, 6)
    y = predict(model, x)
    attack = medsec.attacks.create("apgd_t", steps=10, n_target_classes=2)
    assert attack.stochastic and attack.iterative and attack.supports_targeted
    # the targets: the classes with the highest clean logits other than y
    with torch.no_grad():
        clean = model(x)
    targets = attack._targets(clean, y, "multiclass")
    assert len(targets) == 2
    order = clean.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    assert torch.equal(targets[0], order[:, 0]) and torch.equal(targets[1], order[:, 1])
    assert all((t != y).all() for t in targets)
    # a targeted threat runs with the given target
    target = (y + 1) % 4
    res = attack(
        model, x, y, threat=medsec.ThreatModel("linf", 32 / 255, targeted=True), target=target, generator=gen(0)
    )
    assert torch.equal(res.success, predict(model, res.x_adv) == target)
    assert res.success.any()


def test_apgd_restarts_and_parameters() -> None:
    model = _trained_small(4)
    x = _small_batch(8, 7)
    y = predict(model, x)
    threat = medsec.ThreatModel("l2", 0.5)
    one = medsec.attacks.create("apgd", steps=10)(model, x, y, threat=threat, generator=gen(0))
    two = medsec.attacks.create("apgd", steps=10, restarts=2)(model, x, y, threat=threat, generator=gen(0))
    assert (two.success >= one.success).all(), "a second restart must never lose a success"
    assert two.steps == 20
    det = medsec.attacks.create("apgd", steps=5, random_start=False)
    assert not det.stochastic
    a = det(model, x, y, threat=threat, generator=gen(1))
    b = det(model, x, y, threat=threat, generator=gen(2))
    assert torch.equal(a.x_adv, b.x_adv)
    for bad in ({"steps": 0}, {"restarts": 0}, {"rho": 0.0}, {"rho": 1.5}):
        with pytest.raises(medsec.InputError):
            medsec.attacks.create("apgd", **bad)
    with pytest.raises(medsec.InputError):
        medsec.attacks.create("apgd_t", n_target_classes=0)
    with pytest.raises(medsec.InputError):
        medsec.attacks.create("square", queries=0)
    with pytest.raises(medsec.InputError):
        medsec.attacks.create("square", p_init=0.0)
