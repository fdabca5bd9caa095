"""The attack call contract (README, "Every attack obeys one contract"; docs/testing.md), generated from the attack registry.

Every registered attack is checked for every norm it declares in ``norms``, so an attack
added to the registry later is covered without touching this file:

* the input is never mutated; shape, dtype and device are kept;
* the model's train/eval mode, every ``requires_grad`` flag and every state-dict tensor
  (BatchNorm running statistics and ``num_batches_tracked`` included) are restored;
* only input gradients are computed (no parameter ends up with ``.grad``);
* the result lies inside the bounds and inside the eps-ball (+1e-6); eps = 0 is the identity;
* the same ``torch.Generator`` seed gives the same result;
* success flags agree with the model's predictions (untargeted and targeted), robust
  accuracy never exceeds clean accuracy, and a targeted threat needs a target.

Every attack is checked in each setting it declares: ``classification`` (a small CNN
classifier, also as a plain module), ``segmentation`` (a small segmenter) and
``label_free`` (an embedding model, :class:`medsec.objectives.EmbeddingAsLogits`, with the
feature-deviation objective and ``y = torch.arange(n)``); every attack declares one.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import medsec
from medsec.types import NORMS

pytestmark = pytest.mark.contract

NUM_CLASSES = 4
BATCH = 16
SIZE = 16
EPS = {"linf": 8 / 255, "l2": 0.5}
OTHER_EPS = 0.05  # any other norm, e.g. "patch" (a pixel fraction)

CASES = [
    pytest.param(name, norm, id=f"{name}-{norm}")
    for name in medsec.attacks.list()
    if getattr(medsec.attacks.get(name), "classification", True)
    for norm in medsec.attacks.get(name).norms
]
TARGETED_CASES = [
    pytest.param(name, norm, id=f"{name}-{norm}")
    for name in medsec.attacks.list()
    if medsec.attacks.get(name).supports_targeted and getattr(medsec.attacks.get(name), "classification", True)
    for norm in medsec.attacks.get(name).norms
]
CLASSIFICATION_ATTACKS = [n for n in medsec.attacks.list() if getattr(medsec.attacks.get(n), "classification", True)]
# segmentation is a task too: every attack that declares it runs on a small segmenter
SEG_CASES = [
    pytest.param(name, norm, id=f"{name}-{norm}")
    for name in medsec.attacks.list()
    if getattr(medsec.attacks.get(name), "segmentation", True)
    for norm in medsec.attacks.get(name).norms
]
# label-free: every attack that declares it runs on an embedding model with the feature deviation
LABEL_FREE_CASES = [
    pytest.param(name, norm, id=f"{name}-{norm}")
    for name in medsec.attacks.list()
    if getattr(medsec.attacks.get(name), "label_free", False)
    for norm in medsec.attacks.get(name).norms
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is 5-50x faster than
    two threads that spin against other processes. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Lighter settings for the expensive attacks: the contract does not depend on strength.
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
# An attack registered later and not listed above gets its iteration knobs capped, so
# the registry can grow without the suite's runtime growing with every default budget.
GENERIC_BUDGET = {"steps": 10, "queries": 50, "epochs": 2, "max_epochs": 1, "binary_search_steps": 2}


def make_attack(name: str, **overrides: Any) -> medsec.attacks.Attack:
    accepted = inspect.signature(medsec.attacks.get(name)).parameters
    params = LIGHT.get(name, GENERIC_BUDGET) | overrides
    return medsec.attacks.create(name, **{k: v for k, v in params.items() if k in accepted})


def eps_for(norm: str) -> float:
    return EPS.get(norm, OTHER_EPS)


def _data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images in [0, 1] (a per-image colour offset plus pixel noise) and labels
    of a 4-class task defined by the colour."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 0.6
    x = colour + 0.4 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    mix = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
    return x, (colour.flatten(1) @ mix.T).argmax(dim=1)


def make_batch(seed: int = 1, n: int = BATCH) -> torch.Tensor:
    return _data(seed, n)[0]


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    """A few Adam steps on the seeded colour task (about 0.5 s): a purely random small
    CNN predicts one class for every input, which would make the success and
    robust-accuracy checks vacuous."""
    torch.manual_seed(0)
    model = medsec.models.create("small_cnn", num_classes=NUM_CLASSES, width=8)
    x, y = _data(5, 256)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        idx = torch.randint(0, 256, (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_model() -> torch.nn.Module:
    """The trained small CNN in TRAIN mode with a mix of frozen and trainable
    parameters (so restoring the mode and the flags is observable); BatchNorm buffers
    hold trained statistics, not their initial values."""
    model = medsec.models.create("small_cnn", num_classes=NUM_CLASSES, width=8)
    model.load_state_dict(_trained_state())
    params = list(model.parameters())
    params[0].requires_grad_(False)  # first conv frozen, the rest trainable
    model.train()
    return model


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode predictions; the model's mode is put back afterwards."""
    was = model.training
    model.eval()
    try:
        return medsec.models.predict_from_logits(model(x), getattr(model, "task", "multiclass"))
    finally:
        model.train(was)


def run(
    name: str,
    norm: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | None = None,
    targeted: bool = False,
    target: torch.Tensor | None = None,
    seed: int = 0,
) -> medsec.AttackResult:
    attack = make_attack(name)
    threat = medsec.ThreatModel(norm, eps_for(norm) if eps is None else eps, targeted)
    return attack(model, x, y, threat=threat, target=target, generator=torch.Generator().manual_seed(seed))


def assert_within_budget(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float) -> None:
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        worst = delta.abs().amax(dim=1)
        assert (worst <= eps + 1e-6).all(), f"linf {worst.max().item():.3g} > eps {eps:.3g}"
    elif norm == "l2":
        worst = delta.norm(dim=1)
        assert (worst <= eps + 1e-6).all(), f"l2 {worst.max().item():.3g} > eps {eps:.3g}"
    elif norm == "patch":  # eps is the fraction of pixels that may change
        changed = ((x_adv - x).abs() > 0).any(dim=1).flatten(1).float().mean(dim=1)
        assert (changed <= eps + 1e-6).all(), f"patch covers {changed.max().item():.3g} > eps {eps:.3g}"
    else:  # a norm added to ThreatModel needs its budget check here
        pytest.fail(f"no budget check for norm {norm!r}; add one to assert_within_budget")


@pytest.mark.parametrize("name, norm", SEG_CASES)
def test_call_contract_segmenter(name: str, norm: str) -> None:
    """The call contract on a binary segmenter (mask labels, Dice+CE objective)."""
    from medsec.models import Segmenter
    from medsec.types import InputSpec

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 1, 3, padding=1))
    model = Segmenter(net, InputSpec(channels=3, mean=(0.5,) * 3, std=(0.5,) * 3), 2)
    x = make_batch(n=4)
    y = torch.zeros(4, SIZE, SIZE, dtype=torch.long)
    y[:, 4:12, 4:12] = 1
    x_copy = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    overrides = {"loss": "dice_ce"} if "loss" in inspect.signature(medsec.attacks.get(name)).parameters else {}
    if name == "uap_seg":
        overrides = {}
    attack = make_attack(name, **overrides)
    threat = medsec.ThreatModel(norm, eps_for(norm))
    res = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x_copy) and res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    assert_within_budget(x, res.x_adv, norm, eps_for(norm))
    assert res.success.shape == (4,) and res.loss.shape == (4,)
    again = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x_adv, again.x_adv)
    assert torch.equal(attack(model, x, y, threat=medsec.ThreatModel(norm, 0.0)).x_adv, x)


def test_registry_covers_every_declared_norm() -> None:
    names = medsec.attacks.list()
    assert "fgsm" in names and "pgd" in names
    for name in names:
        cls = medsec.attacks.get(name)
        assert cls.norms, f"{name} declares no norms"
        assert set(cls.norms) <= set(NORMS), f"{name} declares unknown norms {cls.norms}"
        for attr in ("supports_targeted", "needs_gradients", "stochastic", "iterative"):
            assert hasattr(cls, attr), f"{name} lacks capability attribute {attr}"


@pytest.mark.parametrize("name, norm", CASES)
def test_call_contract(name: str, norm: str) -> None:
    model = make_model()
    x = make_batch()
    y = predict(model, x)
    x_copy, y_copy = x.clone(), y.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    assert model.training and not all(flags) and any(flags)

    res = run(name, norm, model, x, y)

    # input untouched
    assert torch.equal(x, x_copy), "the attack mutated its input images"
    assert torch.equal(y, y_copy), "the attack mutated its labels"
    # shape, dtype, device kept
    assert res.x_adv.shape == x.shape
    assert res.x_adv.dtype == x.dtype
    assert res.x_adv.device == x.device
    assert not res.x_adv.requires_grad
    # model restored: mode, flags, buffers and weights
    assert model.training, "model.training was not restored"
    assert all(m.training for m in model.modules()), "a submodule was left in eval mode"
    assert [p.requires_grad for p in model.parameters()] == flags, "requires_grad flags not restored"
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), f"state_dict[{key!r}] changed"
    # only input gradients
    for pname, p in model.named_parameters():
        assert p.grad is None, f"parameter {pname} has .grad set after the attack"
    # bounds and budget
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    assert_within_budget(x, res.x_adv, norm, eps_for(norm))
    # result fields are per-sample
    assert res.success.shape == (BATCH,) and res.success.dtype == torch.bool
    assert res.loss.shape == (BATCH,)
    assert res.steps >= 1
    assert res.queries is not None and res.queries.shape == (BATCH,) and (res.queries >= 1).all()
    torch.testing.assert_close(res.norms["linf"], (res.x_adv - x).flatten(1).abs().amax(1))
    torch.testing.assert_close(res.norms["l2"], (res.x_adv - x).flatten(1).norm(dim=1))


@pytest.mark.parametrize("name, norm", CASES)
def test_call_contract_plain_module(name: str, norm: str) -> None:
    """A plain ``nn.Module`` (no ``spec``/``task``/``num_classes``: the attack infers a
    multiclass head with [0, 1] bounds) in TRAIN mode gets the same guarantees: its
    BatchNorm statistics and mode are untouched, no parameter gets a gradient."""
    net = make_model().net  # the bare SmallCNNNet, trained weights, train mode
    assert not hasattr(net, "spec") and net.training
    x = make_batch()
    was = net.training
    net.eval()
    with torch.no_grad():
        y = net(x).argmax(dim=1)
    net.train(was)
    x_copy = x.clone()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]

    res = run(name, norm, net, x, y)

    assert torch.equal(x, x_copy)
    assert net.training and all(m.training for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == flags
    for key, value in state.items():
        assert torch.equal(net.state_dict()[key], value), f"state_dict[{key!r}] changed (plain module in train mode)"
    assert all(p.grad is None for p in net.parameters())
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    assert_within_budget(x, res.x_adv, norm, eps_for(norm))


@pytest.mark.parametrize("name", CLASSIFICATION_ATTACKS)
def test_instance_capabilities_are_honest(name: str) -> None:
    """Capabilities read from an instance are plain values, and an attack that says it
    is not stochastic ignores the generator."""
    cls = medsec.attacks.get(name)
    for attr in ("supports_targeted", "needs_gradients", "iterative"):
        assert isinstance(getattr(cls, attr), bool), f"{name}.{attr} is not a bool class attribute"
    assert isinstance(cls.norms, tuple)
    attack = make_attack(name)
    assert isinstance(attack.stochastic, bool)
    if not attack.stochastic:
        model = make_model()
        x = make_batch()
        y = predict(model, x)
        norm = cls.norms[0]
        a = run(name, norm, model, x, y, seed=1)
        b = run(name, norm, model, x, y, seed=2)
        assert torch.equal(a.x_adv, b.x_adv), f"{name} says stochastic=False but depends on the generator"


@pytest.mark.parametrize("name, norm", CASES)
def test_sweep_matches_single_calls(name: str, norm: str) -> None:
    """``sweep`` over several eps keeps the contract at every eps; its first result
    equals a single call with the same generator seed (for a non-stochastic attack,
    every result does)."""
    model = make_model()
    x = make_batch()
    y = predict(model, x)
    x_copy = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = eps_for(norm)
    threats = [medsec.ThreatModel(norm, e) for e in (base / 2, 0.0, base)]
    attack = make_attack(name)
    results = attack.sweep(model, x, y, threats, generator=torch.Generator().manual_seed(5))
    assert len(results) == len(threats)
    assert torch.equal(x, x_copy) and model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    for t, res in zip(threats, results):
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert_within_budget(x, res.x_adv, norm, t.eps)
        assert torch.equal(res.success, predict(model, res.x_adv) != y)
    assert torch.equal(results[1].x_adv, x), "eps=0 inside a sweep must be the identity"
    for i, t in enumerate(threats):
        if i == 0 or not attack.stochastic:
            single = attack(model, x, y, threat=t, generator=torch.Generator().manual_seed(5))
            assert torch.equal(single.x_adv, results[i].x_adv), f"sweep result {i} differs from a single call"


@pytest.mark.parametrize("name, norm", CASES)
def test_eps_zero_is_identity(name: str, norm: str) -> None:
    model = make_model()
    x = make_batch()
    y = predict(model, x)
    res = run(name, norm, model, x, y, eps=0.0)
    assert torch.equal(res.x_adv, x)
    assert res.x_adv.data_ptr() != x.data_ptr(), "eps=0 must return a copy, not the input itself"
    assert not res.success.any(), "labels are the clean predictions, so nothing can succeed at eps=0"
    assert (res.norms["linf"] == 0).all()


@pytest.mark.parametrize("name, norm", CASES)
def test_same_generator_seed_same_result(name: str, norm: str) -> None:
    model = make_model()
    x = make_batch()
    y = predict(model, x)
    a = run(name, norm, model, x, y, seed=123)
    b = run(name, norm, model, x, y, seed=123)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success)
    assert torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("name, norm", CASES)
def test_untargeted_success_matches_predictions(name: str, norm: str) -> None:
    model = make_model()
    x = make_batch()
    y = predict(model, x)  # clean accuracy is 1 by construction
    clean_acc = (predict(model, x) == y).float().mean().item()
    assert clean_acc == 1.0
    res = run(name, norm, model, x, y)
    pred = predict(model, res.x_adv)
    assert torch.equal(res.success, pred != y), "success flags disagree with the model's predictions"
    robust_acc = (pred == y).float().mean().item()
    assert robust_acc <= clean_acc
    assert math.isclose(robust_acc, 1.0 - res.success_rate)
    assert torch.equal(res.logits.argmax(dim=1), pred)


def test_robust_accuracy_below_clean_for_gradient_attacks() -> None:
    """Attacks that use gradients must actually lower accuracy on a random model at a
    large budget (guards against an attack that returns the input unchanged)."""
    model = make_model()
    x = make_batch()
    y = predict(model, x)
    for name in medsec.attacks.list():
        cls = medsec.attacks.get(name)
        if not cls.needs_gradients or "linf" not in cls.norms or not getattr(cls, "classification", True):
            continue
        res = run(name, "linf", model, x, y, eps=32 / 255)
        robust_acc = (predict(model, res.x_adv) == y).float().mean().item()
        assert robust_acc < 1.0, f"{name} changed no prediction at eps=32/255"


@pytest.mark.parametrize("name, norm", TARGETED_CASES)
def test_targeted_success_matches_target(name: str, norm: str) -> None:
    model = make_model()
    x = make_batch()
    y = predict(model, x)
    target = (y + 1) % NUM_CLASSES
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = run(name, norm, model, x, y, targeted=True, target=target)
    pred = predict(model, res.x_adv)
    assert torch.equal(res.success, pred == target), "targeted success must mean prediction == target"
    assert_within_budget(x, res.x_adv, norm, eps_for(norm))
    assert model.training
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("name, norm", TARGETED_CASES)
def test_targeted_threat_without_target_raises(name: str, norm: str) -> None:
    model = make_model()
    x = make_batch()
    y = predict(model, x)
    with pytest.raises(medsec.InputError, match="target"):
        run(name, norm, model, x, y, targeted=True, target=None)
    assert model.training, "model mode changed by a call that raised"


@pytest.mark.parametrize("name", CLASSIFICATION_ATTACKS)
def test_targeted_threat_rejected_without_targeted_variant(name: str) -> None:
    """The base class refuses a targeted threat for a class without a targeted variant
    (checked on a subclass of every registered attack with the capability switched off)."""
    cls = medsec.attacks.get(name)
    no_targeted = type(f"{cls.__name__}NoTargeted", (cls,), {"supports_targeted": False})
    model = make_model()
    x = make_batch()
    y = predict(model, x)
    threat = medsec.ThreatModel(cls.norms[0], eps_for(cls.norms[0]), targeted=True)
    with pytest.raises(medsec.InputError, match="no targeted variant"):
        no_targeted()(model, x, y, threat=threat, target=(y + 1) % NUM_CLASSES)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_float64_input_keeps_dtype_pgd(norm: str) -> None:
    model = make_model().double()
    x = make_batch().double()
    y = predict(model, x)
    x_copy = x.clone()
    res = run("pgd", norm, model, x, y)
    assert res.x_adv.dtype == torch.float64
    assert torch.equal(x, x_copy)
    assert_within_budget(x, res.x_adv, norm, eps_for(norm))
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(res.success, predict(model, res.x_adv) != y)
    assert all(p.dtype == torch.float64 for p in model.parameters())


# --------------------------------------------------------------------------- label-free setting


class _Encoder(torch.nn.Module):
    """The trained small CNN without its head: (B, 32) penultimate embeddings, normalisation inside."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(self.net.stem((x - 0.5) / 0.5))


def make_embedding_model(n: int = BATCH) -> medsec.objectives.EmbeddingAsLogits:
    """The trained small CNN's features as an embedding model, in TRAIN mode with a mix of
    frozen and trainable parameters (BatchNorm buffers hold trained statistics)."""
    return medsec.objectives.EmbeddingAsLogits(_Encoder(make_model().net), n)


def label_free_attack(name: str, eps: float) -> medsec.attacks.Attack:
    """The attack with the label-free defaults of the WSI attacks (random starts) and the light budgets."""
    from medsec.wsi.attacks import label_free_params

    accepted = inspect.signature(medsec.attacks.get(name)).parameters
    params = label_free_params(name, eps, {k: v for k, v in GENERIC_BUDGET.items() if k in accepted})
    return medsec.attacks.create(name, **params)


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was)


def test_every_attack_declares_a_setting() -> None:
    for name in medsec.attacks.list():
        cls = medsec.attacks.get(name)
        flags = [getattr(cls, a, None) for a in ("classification", "segmentation", "label_free")]
        assert all(isinstance(f, bool) for f in flags), f"{name}: classification/segmentation/label_free must be bools"
        assert any(flags), f"{name} declares no setting it runs in"
    assert {"fgsm_rs", "pgd", "mifgsm", "feature_cw", "feature_deepfool"} <= set(medsec.attacks.label_free())


@pytest.mark.parametrize("name, norm", LABEL_FREE_CASES)
def test_call_contract_label_free(name: str, norm: str) -> None:
    """The call contract on an embedding model: the same guarantees, the loss is the
    deviation of the perturbed embedding from the clean one (computed independently) and
    success is a deviation above the objective's threshold."""
    from medsec.objectives import deviation

    model = make_embedding_model()
    x = make_batch()
    y = torch.arange(BATCH)
    x_copy = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    assert model.training and not all(flags) and any(flags)
    eps = eps_for(norm)
    attack = label_free_attack(name, eps)
    threat = medsec.ThreatModel(norm, eps)
    res = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))

    assert torch.equal(x, x_copy) and torch.equal(y, torch.arange(BATCH))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype and res.x_adv.device == x.device
    assert not res.x_adv.requires_grad
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), f"state_dict[{key!r}] changed"
    assert all(p.grad is None for p in model.parameters())
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    assert_within_budget(x, res.x_adv, norm, eps)
    assert res.steps >= 1 and res.queries is not None and (res.queries >= 1).all()
    dev = deviation(embed(model, res.x_adv), embed(model, x))
    torch.testing.assert_close(res.loss, dev, atol=1e-5, rtol=1e-4)
    assert torch.equal(res.success, res.loss > 0.5)  # the cosine objective's default threshold
    # far more deviation than random noise on the surface of the same ball (measured: 0.07-0.11 vs
    # 0.0003 mean 1 - cos for every label-free attack and norm on this model)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    noise = noise.sign() * eps if norm == "linf" else noise / noise.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * eps
    noise_dev = deviation(embed(model, (x + noise).clamp(0, 1)), embed(model, x))
    assert res.loss.mean() > 10 * noise_dev.mean(), f"{res.loss.mean():.3g} vs noise {noise_dev.mean():.3g}"
    # the same generator gives the same result; eps = 0 is the identity
    again = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x_adv, again.x_adv) and torch.equal(res.loss, again.loss)
    zero = attack(model, x, y, threat=medsec.ThreatModel(norm, 0.0))
    assert torch.equal(zero.x_adv, x) and not zero.success.any()


@pytest.mark.parametrize("name, norm", LABEL_FREE_CASES)
def test_label_free_sweep_matches_single_calls(name: str, norm: str) -> None:
    model = make_embedding_model()
    x = make_batch()
    y = torch.arange(BATCH)
    base = eps_for(norm)
    threats = [medsec.ThreatModel(norm, e) for e in (base / 2, 0.0, base)]
    attack = label_free_attack(name, base)
    results = attack.sweep(model, x, y, threats, generator=torch.Generator().manual_seed(5))
    for t, res in zip(threats, results):
        assert_within_budget(x, res.x_adv, norm, t.eps)
    assert torch.equal(results[1].x_adv, x), "eps=0 inside a sweep must be the identity"
    single = attack(model, x, y, threat=threats[0], generator=torch.Generator().manual_seed(5))
    assert torch.equal(single.x_adv, results[0].x_adv)


@pytest.mark.parametrize("name, norm", LABEL_FREE_CASES)
def test_label_free_attacks_refuse_labels_and_targets(name: str, norm: str) -> None:
    model = make_embedding_model()
    x = make_batch()
    attack = label_free_attack(name, eps_for(norm))
    with pytest.raises(medsec.InputError, match="arange"):
        attack(model, x, torch.arange(BATCH).flip(0), threat=medsec.ThreatModel(norm, eps_for(norm)))
    with pytest.raises(medsec.InputError, match="untargeted|no targeted variant"):
        attack(model, x, torch.arange(BATCH), threat=medsec.ThreatModel(norm, eps_for(norm), targeted=True),
               target=torch.zeros(BATCH, dtype=torch.long))
    assert model.training, "model mode changed by a call that raised"


@pytest.mark.parametrize("name", medsec.attacks.list())
def test_attacks_refuse_settings_they_do_not_declare(name: str) -> None:
    """An attack without the label_free capability refuses an embedding model, and a
    label-free-only attack refuses a classifier, each with one clear InputError."""
    cls = medsec.attacks.get(name)
    norm = cls.norms[0]
    threat = medsec.ThreatModel(norm, eps_for(norm))
    attack = make_attack(name)
    if not cls.label_free:
        with pytest.raises(medsec.InputError, match="label-free"):
            attack(make_embedding_model(), make_batch(), torch.arange(BATCH), threat=threat)
    if not cls.classification and not cls.segmentation:
        model = make_model()
        x = make_batch()
        with pytest.raises(medsec.InputError, match="label-free.*embedding"):
            attack(model, x, predict(model, x), threat=threat)
