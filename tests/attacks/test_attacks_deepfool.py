"""The one DeepFool engine (:func:`medsec.attacks.deepfool.deepfool_search`) that ``deepfool``,
``uap`` and ``feature_deepfool`` share: closed forms on linear heads, the multi-label boundary
rule (nearest linearised label among the smallest signed margins), the same step from
``deepfool`` and ``uap``, and the label-free level set."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import medsec
from medsec.attacks.base import Problem
from medsec.attacks.deepfool import ClassBoundaries, deepfool_search
from medsec.models.classifier import Classifier
from medsec.objectives import EmbeddingAsLogits, FeatureDeviation, resolve
from medsec.types import InputSpec

pytestmark = pytest.mark.unit

OVERSHOOT = 1.02  # (1 + overshoot) with the default 0.02


def linear_head(weight: torch.Tensor, bias: torch.Tensor, task: str = "multiclass") -> Classifier:
    """A Classifier whose logits are weight @ flatten(x) + bias (no normalisation)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    num_classes = 2 if task == "binary" else weight.shape[0]
    return Classifier(nn.Sequential(nn.Flatten(), lin), InputSpec(channels=3), num_classes, task).eval()


def multilabel_head(scales: list[float], z: list[float]) -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """Three labels with gradient norms ``scales`` and logits ``z`` at x = 0.5."""
    g = torch.Generator().manual_seed(2)
    dirs = torch.randn(len(scales), 48, generator=g)
    w = dirs / dirs.norm(dim=1, keepdim=True) * torch.tensor(scales)[:, None]
    x = torch.full((1, 3, 4, 4), 0.5)
    b = torch.tensor(z) - w @ x.flatten()
    return linear_head(w, b, task="multilabel"), w, x


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return medsec.models.predict_from_logits(model(x), model.task)


def test_multilabel_deepfool_flips_the_nearest_linearised_label() -> None:
    """|z| = 0.5, 3, 2 and gradient norms 1, 10, 200: the linearised distances |m_k| / ||w_k||
    are 0.5, 0.3, 0.01, so one step goes onto label 2's boundary (not label 0's, the
    smallest logit): dx = 1.02 (2 + 1e-4) / 200^2 w_2, and only label 2 flips."""
    model, w, x = multilabel_head([1.0, 10.0, 200.0], [0.5, 3.0, -2.0])
    y = _predict(model, x)
    assert y.tolist() == [[1, 1, 0]]
    res = medsec.attacks.create("deepfool")(model, x, y, threat=medsec.ThreatModel("l2", 10.0))
    expected = OVERSHOOT * (2.0 + 1e-4) / 200.0**2 * w[2].reshape(1, 3, 4, 4)
    torch.testing.assert_close(res.x_adv - x, expected, rtol=1e-4, atol=1e-6)
    assert res.success.all() and res.steps == 1
    assert ((_predict(model, res.x_adv) != y).tolist()) == [[False, False, True]]


def test_multilabel_candidates_are_the_smallest_signed_margins() -> None:
    """``num_classes`` pre-selects the labels with the smallest signed margin m_k = (2y_k - 1) z_k
    (a label already on the wrong side first), like the top-k classes of a multiclass head;
    the step then goes to the nearest linearised one among them."""
    logits = torch.tensor([[-1.0, 0.2, 3.0, -0.1]])
    labels = torch.tensor([[1, 1, 1, 0]])  # margins -1.0, 0.2, 3.0, 0.1 (|z|: 1.0, 0.2, 3.0, 0.1)
    assert ClassBoundaries(2).choose(logits, labels, "multilabel").tolist() == [[0, 3]]
    assert ClassBoundaries(10).choose(logits, labels, "multilabel").tolist() == [[0, 3, 1, 2]]
    # with one candidate, the label of the smallest margin (0.5, label 0) is the one stepped onto,
    # although label 2 (margin 2, gradient norm 200) is nearer in input space
    model, w, x = multilabel_head([1.0, 10.0, 200.0], [0.5, 3.0, -2.0])
    y = _predict(model, x)
    res = medsec.attacks.create("deepfool", num_classes=2)(model, x, y, threat=medsec.ThreatModel("l2", 10.0))
    assert (_predict(model, res.x_adv) != y).tolist() == [[False, False, True]]  # 2 candidates: labels 0 and 2
    # one candidate (the engine directly: the deepfool attack takes num_classes >= 2)
    problem = Problem(model, resolve("auto", "multilabel"), y, False, medsec.ThreatModel("l2", 10.0), (0.0, 1.0))
    out = deepfool_search(problem, x, torch.arange(1), ClassBoundaries(1), steps=50, overshoot=0.02, norm="l2")
    expected = -OVERSHOOT * (0.5 + 1e-4) / 1.0**2 * w[0].reshape(1, 3, 4, 4)  # lower z_0 (label 1) to 0
    torch.testing.assert_close(out.x_adv - x, expected, rtol=1e-4, atol=1e-6)
    assert out.unfooled.numel() == 0


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_deepfool_and_uap_take_the_same_step(task: str) -> None:
    """One engine: on one point, the universal perturbation of ``uap`` (batch_size 1, one
    pass, a budget that does not bind) is the perturbation ``deepfool`` finds (L2)."""
    g = torch.Generator().manual_seed(7)
    k = {"multiclass": 5, "binary": 1, "multilabel": 4}[task]
    w = torch.randn(k, 48, generator=g)
    x = 0.5 + 0.02 * torch.randn(1, 3, 4, 4, generator=g)
    b = torch.randn(k, generator=g) if task != "binary" else -(w @ x.flatten()) + 0.3
    model = linear_head(w, b, task=task)
    y = _predict(model, x)
    threat = medsec.ThreatModel("l2", 10.0)
    df = medsec.attacks.create("deepfool", num_classes=10)(model, x, y, threat=threat)
    assert df.success.all()
    uap = medsec.attacks.create("uap", batch_size=1, max_epochs=1, num_classes=10, deepfool_steps=50)
    delta = uap.fit(model, x, y, threat)
    torch.testing.assert_close(delta, df.x_adv - x, rtol=1e-5, atol=1e-6)
    assert uap.fooling_rate_ == 1.0


def test_deepfool_linf_step_is_the_dual_norm_step() -> None:
    """L-inf on a linear multiclass head: r = (|f_l| + 1e-4) / ||w_l||_1 sign(w_l), l the
    class with the smallest |f_k| / ||w_k||_1."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 48, generator=g)
    x = 0.5 + 0.02 * torch.randn(1, 3, 4, 4, generator=g)
    model = linear_head(w, torch.randn(4, generator=g))
    y = _predict(model, x)
    z = model(x)[0].detach()
    yy = int(y)
    ratios = {c: abs(float(z[c] - z[yy])) / float((w[c] - w[yy]).abs().sum()) for c in range(4) if c != yy}
    c = min(ratios, key=ratios.get)  # type: ignore[arg-type]
    wl, fl = w[c] - w[yy], float(z[c] - z[yy])
    expected = (OVERSHOOT * (abs(fl) + 1e-4) / float(wl.abs().sum()) * wl.sign()).reshape(1, 3, 4, 4)
    res = medsec.attacks.create("deepfool", steps=1)(model, x, y, threat=medsec.ThreatModel("linf", 1.0))
    torch.testing.assert_close(res.x_adv - x, expected, rtol=1e-4, atol=1e-6)
    assert res.success.all()


def test_feature_deepfool_reaches_the_level_set_of_a_convex_deviation() -> None:
    """On a linear encoder the L2 deviation D = ||W (x' - x)|| is convex, so the linearised
    step from any start lands at D >= tau: every tile succeeds within a few steps, inside
    the budget."""
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(48, 8))
    x = 0.5 + 0.05 * torch.randn(6, 3, 4, 4, generator=g)
    model = EmbeddingAsLogits(encoder.eval(), 6)
    objective = FeatureDeviation(distance="l2", threshold=0.05)
    attack = medsec.attacks.create("feature_deepfool", loss=objective)
    res = attack(model, x, torch.arange(6), threat=medsec.ThreatModel("l2", 1.0), generator=g)
    assert res.success.all() and (res.loss >= 0.05).all()
    assert res.steps <= 3
    assert ((res.x_adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-6).all()
    with torch.no_grad():
        dev = (encoder(res.x_adv) - encoder(x)).norm(dim=1)
    torch.testing.assert_close(res.loss, dev)
    assert math.isclose(objective.threshold or 0.0, 0.05)


def test_feature_deepfool_needs_a_level() -> None:
    class NoThreshold(medsec.objectives.Objective):
        name = "no_threshold"
        tasks = ("embedding",)

        def loss(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
            return logits.flatten(1).norm(dim=1)

        def success(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
            return torch.zeros(logits.shape[0], dtype=torch.bool)

    model = EmbeddingAsLogits(nn.Sequential(nn.Flatten(), nn.Linear(48, 4)), 2)
    attack = medsec.attacks.create("feature_deepfool", loss=NoThreshold("embedding"))
    with pytest.raises(medsec.InputError, match="threshold"):
        attack(model, torch.rand(2, 3, 4, 4), torch.arange(2), threat=medsec.ThreatModel("l2", 0.5))
