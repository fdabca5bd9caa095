"""Objectives on hand-made logits, PGD options (early stop, restarts, L2), every
registered attack on binary single-logit and multi-label heads, and input checks."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import medsec
from medsec import objectives
from medsec.types import NORMS

pytestmark = pytest.mark.unit

SIZE = 16
NUM_CLASSES = 4
EPS = {"linf": 8 / 255, "l2": 0.5}
OTHER_EPS = 0.05

# Lighter settings for the expensive attacks (as in test_contract.py): these tests check
# validity of the results, not attack strength.
LIGHT: dict[str, dict[str, Any]] = {
    "autoattack": {"stages": [["apgd", {"steps": 5}], ["apgd_t", {"steps": 5}], ["cw", {"steps": 10, "binary_search_steps": 1}],
                              ["deepfool", {"steps": 5}], ["square", {"queries": 50}]]},
    "apgd": {"steps": 10},
    "apgd_t": {"steps": 5},
    "cw": {"steps": 20, "binary_search_steps": 2},
    "square": {"queries": 50},
    "deepfool": {"steps": 10},
    "uap": {"max_epochs": 1},
    "uap_sgd": {"epochs": 2},
}
GENERIC_BUDGET = {"steps": 10, "queries": 50, "epochs": 2, "max_epochs": 1, "binary_search_steps": 2}


def _accepts(name: str) -> set[str]:
    return set(inspect.signature(medsec.attacks.get(name)).parameters)


def make_attack(name: str, **overrides: Any) -> medsec.attacks.Attack:
    params = LIGHT.get(name, GENERIC_BUDGET) | overrides
    accepted = _accepts(name)
    return medsec.attacks.create(name, **{k: v for k, v in params.items() if k in accepted})


# every attack x norm, with the "auto" objective and, where the attack takes a loss,
# the margin objective too
# attacks for classifiers (segmentation-only ones such as uap_seg are tested in test_seg_*.py)
CLASSIFIER_ATTACKS = [n for n in medsec.attacks.list() if getattr(medsec.attacks.get(n), "classification", True)]
HEAD_CASES = [
    pytest.param(name, norm, loss, id=f"{name}-{norm}-{loss}")
    for name in CLASSIFIER_ATTACKS
    for norm in medsec.attacks.get(name).norms
    for loss in (("auto", "margin") if "loss" in _accepts(name) else ("default",))
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is 5-50x faster than
    two threads that spin against other processes. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def eps_for(norm: str) -> float:
    return EPS.get(norm, OTHER_EPS)


def threat(norm: str, eps: float | None = None, targeted: bool = False) -> medsec.ThreatModel:
    return medsec.ThreatModel(norm, eps_for(norm) if eps is None else eps, targeted)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- objectives


def test_objective_registry_and_auto_resolution() -> None:
    assert {"bce", "ce", "margin"} <= set(objectives.list())
    assert objectives.resolve("auto", "multiclass").name == "ce"
    assert objectives.resolve("auto", "binary").name == "bce"
    assert objectives.resolve("auto", "multilabel").name == "bce"
    with pytest.raises(medsec.InputError, match="does not support 'binary'"):
        objectives.create("ce", task="binary")
    with pytest.raises(medsec.InputError, match="does not support 'multiclass'"):
        objectives.create("bce", task="multiclass")


MC_LOGITS = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 4.0, 4.5]])
MC_Y = torch.tensor([0, 1, 1])


def test_cross_entropy_multiclass_by_hand() -> None:
    ce = objectives.create("ce", task="multiclass")
    by_hand = torch.tensor([torch.logsumexp(z, 0) - z[y] for z, y in zip(MC_LOGITS, MC_Y)])
    untargeted = ce.loss(MC_LOGITS, MC_Y)
    torch.testing.assert_close(untargeted, by_hand)
    assert (untargeted > 0).all()
    torch.testing.assert_close(ce.loss(MC_LOGITS, MC_Y, targeted=True), -by_hand)
    # a confidently correct sample has a smaller untargeted loss than a wrong one
    assert untargeted[0] < untargeted[1]
    # success: untargeted = prediction differs from y (predictions are 0, 2, 2)
    assert ce.success(MC_LOGITS, MC_Y).tolist() == [False, True, True]
    assert ce.success(MC_LOGITS, torch.tensor([0, 2, 1]), targeted=True).tolist() == [True, True, False]


def test_margin_multiclass_equals_zy_minus_max_other() -> None:
    margin = objectives.create("margin", task="multiclass")
    by_hand = torch.tensor([3.0 - 1.0, 2.0 - 5.0, 4.0 - 4.5])
    torch.testing.assert_close(objectives.signed_margins(MC_LOGITS, MC_Y, "multiclass"), by_hand)
    torch.testing.assert_close(margin.loss(MC_LOGITS, MC_Y), -by_hand)  # untargeted: max_other - z_y
    torch.testing.assert_close(margin.loss(MC_LOGITS, MC_Y, targeted=True), by_hand)
    # the loss is positive exactly where the untargeted attack has succeeded
    assert torch.equal(margin.loss(MC_LOGITS, MC_Y) > 0, margin.success(MC_LOGITS, MC_Y))
    capped = objectives.create("margin", task="multiclass", kappa=1.0)
    torch.testing.assert_close(capped.loss(MC_LOGITS, MC_Y), torch.tensor([-2.0, 1.0, 0.5]))
    # the input logits are not modified by the margin computation
    assert MC_LOGITS[1, 1] == 2.0


BIN_LOGITS = torch.tensor([2.0, -1.0, 0.5, -3.0])
BIN_Y = torch.tensor([1, 1, 0, 0])


def test_bce_binary_single_logit_by_hand() -> None:
    bce = objectives.create("bce", task="binary")
    # BCE(z, 1) = softplus(-z), BCE(z, 0) = softplus(z)
    by_hand = torch.tensor([math.log1p(math.exp(-2.0)), math.log1p(math.exp(1.0)),
                            math.log1p(math.exp(0.5)), math.log1p(math.exp(-3.0))])
    torch.testing.assert_close(bce.loss(BIN_LOGITS, BIN_Y), by_hand)
    torch.testing.assert_close(bce.loss(BIN_LOGITS, BIN_Y, targeted=True), -by_hand)
    # (B, 1) logits are the same head
    torch.testing.assert_close(bce.loss(BIN_LOGITS[:, None], BIN_Y), by_hand)
    # predictions are (z > 0) = 1, 0, 1, 0
    assert bce.success(BIN_LOGITS, BIN_Y).tolist() == [False, True, True, False]
    assert bce.success(BIN_LOGITS[:, None], BIN_Y).tolist() == [False, True, True, False]
    assert bce.success(BIN_LOGITS, torch.tensor([1, 0, 0, 1]), targeted=True).tolist() == [True, True, False, False]
    # correctly classified samples have the smaller loss
    assert by_hand[0] < by_hand[1] and by_hand[3] < by_hand[2]


def test_margin_binary_is_signed_logit() -> None:
    margin = objectives.create("margin", task="binary")
    by_hand = torch.tensor([2.0, -1.0, -0.5, 3.0])  # (2y - 1) z
    torch.testing.assert_close(objectives.signed_margins(BIN_LOGITS, BIN_Y, "binary"), by_hand)
    torch.testing.assert_close(margin.loss(BIN_LOGITS, BIN_Y), -by_hand)
    torch.testing.assert_close(margin.loss(BIN_LOGITS, BIN_Y, targeted=True), by_hand)
    assert torch.equal(margin.loss(BIN_LOGITS, BIN_Y) > 0, margin.success(BIN_LOGITS, BIN_Y))


ML_LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-2.0, -3.0, 1.0], [1.0, 1.0, -1.0]])
ML_Y = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0]])


def test_multilabel_objectives_by_hand() -> None:
    bce = objectives.create("bce", task="multilabel")
    by_hand = F.binary_cross_entropy_with_logits(ML_LOGITS, ML_Y.float(), reduction="none").mean(dim=1)
    manual = torch.stack([
        torch.stack([F.softplus(-z) if t == 1 else F.softplus(z) for z, t in zip(zs, ts)]).mean()
        for zs, ts in zip(ML_LOGITS, ML_Y)
    ])
    torch.testing.assert_close(by_hand, manual)
    torch.testing.assert_close(bce.loss(ML_LOGITS, ML_Y), by_hand)
    torch.testing.assert_close(bce.loss(ML_LOGITS, ML_Y, targeted=True), -by_hand)
    # predictions: [1,0,1], [0,0,1], [1,1,0]; untargeted success = any label flipped
    assert bce.success(ML_LOGITS, ML_Y).tolist() == [False, True, True]
    # targeted success = every label equals the target
    target = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    assert bce.success(ML_LOGITS, target, targeted=True).tolist() == [True, False, True]
    # margin: the weakest label's signed logit, min_k (2y_k - 1) z_k
    margin = objectives.create("margin", task="multilabel")
    by_hand_margin = torch.tensor([0.5, -1.0, -1.0])
    torch.testing.assert_close(objectives.signed_margins(ML_LOGITS, ML_Y, "multilabel"), by_hand_margin)
    torch.testing.assert_close(margin.loss(ML_LOGITS, ML_Y), -by_hand_margin)
    assert torch.equal(margin.loss(ML_LOGITS, ML_Y) > 0, margin.success(ML_LOGITS, ML_Y))


# ---------------------------------------------------------------- models and data


def _data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images in [0, 1] and labels of a 4-class task defined by their colour."""
    g = gen(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 0.6
    x = colour + 0.4 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    mix = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
    return x, (colour.flatten(1) @ mix.T).argmax(dim=1)


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    """60 Adam steps on the colour task (~0.5 s): a random small CNN predicts the same
    class for every input, which would make attack-strength checks vacuous."""
    torch.manual_seed(0)
    model = medsec.models.create("small_cnn", num_classes=NUM_CLASSES, width=8)
    x, y = _data(5, 256)
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


def trained_model() -> torch.nn.Module:
    model = medsec.models.create("small_cnn", num_classes=NUM_CLASSES, width=8)
    model.load_state_dict(_trained_state())
    return model.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return medsec.models.predict_from_logits(model(x), model.task)
    finally:
        model.train(was)


# ---------------------------------------------------------------- PGD options


def test_pgd_early_stop_skips_already_misclassified_samples() -> None:
    """Without a random start, a sample misclassified at the clean point is broken at
    step 0: early stop leaves it exactly at x and spends one gradient query on it
    instead of ``steps``; every sample it reports as a success is misclassified."""
    model = trained_model()
    x, _ = _data(1, 32)
    pred = predict(model, x)
    wrong = torch.arange(32) % 2 == 1
    y = torch.where(wrong, (pred + 1) % NUM_CLASSES, pred)  # odd samples misclassified
    steps = 8
    t = threat("linf", 8 / 255)
    full = medsec.attacks.create("pgd", steps=steps, random_start=False)(model, x, y, threat=t)
    es = medsec.attacks.create("pgd", steps=steps, random_start=False, early_stop=True)(model, x, y, threat=t)

    assert torch.equal(es.x_adv[wrong], x[wrong]), "early stop moved a sample that was already broken"
    assert es.success[wrong].all()
    assert (full.queries == full.queries[0]).all()
    torch.testing.assert_close(es.queries[wrong], full.queries[wrong] - (steps - 1), rtol=0, atol=0)
    assert (es.queries[~wrong] > es.queries[wrong]).all()
    assert (es.queries <= full.queries).all()
    assert es.steps <= steps
    # success flags are the truth on x_adv, for both modes
    assert torch.equal(es.success, predict(model, es.x_adv) != y)
    assert torch.equal(full.success, predict(model, full.x_adv) != y)
    # early stop keeps the first breaking point, so it is at least as strong (up to
    # float noise from evaluating shrinking sub-batches)
    robust_es = 1 - es.success_rate
    robust_full = 1 - full.success_rate
    assert robust_es <= robust_full + 0.05
    # every clean-correct sample the full run breaks is broken with early stop too
    assert not (full.success & ~es.success & ~wrong).any()
    assert (es.norms["linf"] <= 8 / 255 + 1e-6).all()


def test_pgd_restarts_never_lose_successes() -> None:
    model = trained_model()
    x = _data(2, 32)[0]
    y = predict(model, x)
    t = threat("linf", 6 / 255)
    one = medsec.attacks.create("pgd", steps=5, restarts=1)(model, x, y, threat=t, generator=gen(7))
    three = medsec.attacks.create("pgd", steps=5, restarts=3)(model, x, y, threat=t, generator=gen(7))
    assert 0 < one.success.sum() < 32, "the budget should break some but not all samples"
    assert not (one.success & ~three.success).any(), "restarts=3 lost a success that restarts=1 found"
    assert three.success_rate >= one.success_rate
    # the first restart is the same run, so with equal success the loss never drops
    same = one.success == three.success
    assert (three.loss[same] >= one.loss[same] - 1e-6).all()
    assert (three.norms["linf"] <= 6 / 255 + 1e-6).all()
    assert (three.queries > one.queries).all()


@pytest.mark.parametrize("step_size", [None, 1.0])
def test_pgd_l2_stays_in_ball(step_size: float | None) -> None:
    model = trained_model()
    x = _data(3, 16)[0]
    y = predict(model, x)
    eps = 0.5
    res = medsec.attacks.create("pgd", steps=5, step_size=step_size)(
        model, x, y, threat=threat("l2", eps), generator=gen(0)
    )
    l2 = (res.x_adv - x).flatten(1).norm(dim=1)
    assert (l2 <= eps + 1e-6).all(), f"l2 norm {l2.max().item()} exceeds eps {eps}"
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert l2.max() > 0.5 * eps, "the attack barely used its L2 budget"
    torch.testing.assert_close(res.norms["l2"], l2)


def test_pgd_rejects_bad_parameters() -> None:
    with pytest.raises(medsec.InputError, match="steps"):
        medsec.attacks.create("pgd", steps=0)
    with pytest.raises(medsec.InputError, match="restarts"):
        medsec.attacks.create("pgd", restarts=0)
    with pytest.raises(medsec.InputError, match="step_size"):
        medsec.attacks.create("pgd", step_size=-1.0)
    with pytest.raises(medsec.ConfigError, match="steps"):
        medsec.attacks.create("pgd", step=10)  # typo suggests the right key


# ---------------------------------------------------------------- binary and multi-label heads


def _head_model(task: str) -> torch.nn.Module:
    torch.manual_seed(3)
    classes = 2 if task == "binary" else 3
    return medsec.models.create("small_cnn", num_classes=classes, width=8, task=task).train()


@pytest.mark.parametrize("task", ["binary", "multilabel"])
@pytest.mark.parametrize("name, norm, loss", HEAD_CASES)
def test_every_attack_on_binary_and_multilabel_heads(name: str, norm: str, loss: str, task: str) -> None:
    model = _head_model(task)
    g = gen(11)
    x = torch.rand(6, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, 2, (6,) if task == "binary" else (6, 3), generator=g)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attack = make_attack(name) if loss == "default" else make_attack(name, loss=loss)
    res = attack(model, x, y, threat=threat(norm), generator=gen(0))

    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    if norm in ("linf", "l2"):
        assert (res.norms[norm] <= eps_for(norm) + 1e-6).all()
    assert res.success.shape == (6,) and res.success.dtype == torch.bool
    assert res.loss.shape == (6,) and torch.isfinite(res.loss).all()
    pred = predict(model, res.x_adv)
    wrong = (pred != y) if task == "binary" else (pred != y).any(dim=1)
    assert torch.equal(res.success, wrong)
    if task == "binary":
        assert res.logits is not None and res.logits.shape == (6,)
    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    if medsec.attacks.get(name).supports_targeted:
        target = 1 - y
        res_t = attack(model, x, y, threat=threat(norm, targeted=True), target=target, generator=gen(0))
        pred_t = predict(model, res_t.x_adv)
        hit = (pred_t == target) if task == "binary" else (pred_t == target).all(dim=1)
        assert torch.equal(res_t.success, hit)
        assert res_t.x_adv.min() >= 0 and res_t.x_adv.max() <= 1


# ---------------------------------------------------------------- input checks


def _setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = medsec.models.create("small_cnn", num_classes=NUM_CLASSES, width=8).eval()
    x = torch.rand(4, 3, SIZE, SIZE, generator=gen(0))
    return model, x, torch.tensor([0, 1, 2, 3])


def _nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[1, 0, 2, 3] = float("nan")
    return x


BAD_INPUTS = {
    # case: (x transform, y transform, threat, message pattern)
    "nan_image": (_nan, None, None, "NaN"),
    "normalised_image": (lambda x: (x - 0.5) / 0.5, None, None, r"outside the model's bounds.*un-normalised"),
    "wrong_channels": (lambda x: x[:, :1], None, None, "1 channels but the model expects 3"),
    "uint8_image": (lambda x: (x * 255).to(torch.uint8), None, None, "floating-point"),
    "no_batch_dim": (lambda x: x[0], None, None, r"shape \(B, C, H, W\)"),
    "labels_out_of_range": (None, lambda y: y + 1, None, r"labels in \[1, 4\].*4 classes"),
    "negative_labels": (None, lambda y: y - 1, None, r"labels in \[-1, 2\]"),
    "labels_wrong_shape": (None, lambda y: y[:3], None, r"y must have shape \(4,\), got \(3,\)"),
    "labels_2d": (None, lambda y: torch.stack([y, y], 1), None, r"shape \(4,\)"),
    "float_labels": (None, lambda y: y.float() + 0.5, None, "integer class indices"),
    "empty_batch": (lambda x: x[:0], lambda y: y[:0], None, "empty batch"),
    "non_tensor_image": (lambda x: x.numpy(), None, None, "torch.Tensor"),
    "non_tensor_labels": (None, lambda y: y.tolist(), None, "torch.Tensor"),
    "threat_not_threatmodel": (None, None, ("linf", 0.03), "medsec.ThreatModel"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("name", CLASSIFIER_ATTACKS)
def test_bad_input_raises_input_error(name: str, case: str) -> None:
    model, x, y = _setup()
    fx, fy, bad_threat, pattern = BAD_INPUTS[case]
    xb = fx(x) if fx else x
    yb = fy(y) if fy else y
    norm = medsec.attacks.get(name).norms[0]
    t = bad_threat if bad_threat is not None else threat(norm)
    with pytest.raises(medsec.InputError, match=pattern):
        medsec.attacks.create(name)(model, xb, yb, threat=t)
    assert not model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", CLASSIFIER_ATTACKS)
def test_plain_module_wrong_channels_raises_input_error(name: str) -> None:
    """A plain nn.Module has no InputSpec, so the channel count is only discovered when
    the attack probes the model; that failure must still be an InputError, not a raw
    RuntimeError from the first convolution."""
    net = _setup()[0].net  # bare SmallCNNNet expecting 3 channels
    x = torch.rand(2, 1, SIZE, SIZE, generator=gen(0))
    norm = medsec.attacks.get(name).norms[0]
    with pytest.raises(medsec.InputError, match="(?i)channel"):
        medsec.attacks.create(name)(net, x, torch.tensor([0, 1]), threat=threat(norm))


def test_threat_model_validation() -> None:
    with pytest.raises(medsec.InputError, match=r"unknown norm 'Linf'.*Did you mean 'linf'"):
        medsec.ThreatModel("Linf", 0.03)
    with pytest.raises(medsec.InputError, match="unknown norm 'l3'"):
        medsec.ThreatModel("l3", 0.03)
    with pytest.raises(medsec.InputError, match="eps must be a finite number >= 0"):
        medsec.ThreatModel("linf", -0.01)
    with pytest.raises(medsec.InputError, match="eps must be a finite number"):
        medsec.ThreatModel("l2", float("nan"))
    with pytest.raises(medsec.InputError, match="pixel fraction"):
        medsec.ThreatModel("patch", 1.5)
    assert medsec.ThreatModel("linf", 8 / 255).eps_255 == pytest.approx(8.0)


@pytest.mark.parametrize("name", CLASSIFIER_ATTACKS)
def test_unsupported_norm_raises(name: str) -> None:
    model, x, y = _setup()
    cls = medsec.attacks.get(name)
    missing = [n for n in NORMS if n not in cls.norms]
    # a subclass restricted to one norm exercises the check even for an attack that
    # supports every norm ThreatModel knows
    restricted = type(f"{cls.__name__}Only", (cls,), {"norms": (cls.norms[0],)})
    others = [n for n in NORMS if n != cls.norms[0]]
    cases = [(cls, n) for n in missing] + [(restricted, n) for n in others]
    for klass, norm in cases:
        with pytest.raises(medsec.InputError, match=rf"supports norms .* not '{norm}'"):
            klass()(model, x, y, threat=threat(norm))


@pytest.mark.parametrize("name", CLASSIFIER_ATTACKS)
def test_target_with_untargeted_threat_raises(name: str) -> None:
    model, x, y = _setup()
    norm = medsec.attacks.get(name).norms[0]
    with pytest.raises(medsec.InputError, match="untargeted"):
        medsec.attacks.create(name)(model, x, y, threat=threat(norm), target=(y + 1) % NUM_CLASSES)
    if medsec.attacks.get(name).supports_targeted:
        with pytest.raises(medsec.InputError, match=r"target has labels in \[4, 4\]"):
            medsec.attacks.create(name)(model, x, y, threat=threat(norm, targeted=True), target=torch.full((4,), 4))


def test_multilabel_and_binary_label_checks() -> None:
    ml = _head_model("multilabel")
    binary = _head_model("binary")
    x = torch.rand(4, 3, SIZE, SIZE, generator=gen(0))
    pgd = medsec.attacks.create("pgd", steps=2)
    with pytest.raises(medsec.InputError, match=r"multi-label y must have shape \(4, 3\)"):
        pgd(ml, x, torch.tensor([0, 1, 0, 1]), threat=threat("linf"))
    with pytest.raises(medsec.InputError, match="only 0 and 1"):
        pgd(ml, x, torch.full((4, 3), 2), threat=threat("linf"))
    with pytest.raises(medsec.InputError, match="valid: 0..1"):
        pgd(binary, x, torch.tensor([0, 1, 2, 0]), threat=threat("linf"))
