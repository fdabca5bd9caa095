"""MIL heads (gated attention, TransMIL, mean/max), training and metrics on bags; MNIST-bags construction; defences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsec.errors import InputError
from medsec.wsi import make_bags
from medsec.wsi.mil import bag_metrics, create_head, evaluate_mil, train_mil

pytestmark = pytest.mark.unit


def _toy_bags(n: int, g: torch.Generator) -> tuple[list[torch.Tensor], np.ndarray]:
    """Bags of 16-d Gaussian noise; positive bags hold 1-3 tiles shifted along one direction."""
    bags, labels = [], []
    for i in range(n):
        x = torch.randn(int(torch.randint(10, 30, (1,), generator=g)), 16, generator=g)
        if i % 2:
            k = int(torch.randint(1, 4, (1,), generator=g))
            x[:k, 0] += 8.0
        bags.append(x)
        labels.append(i % 2)
    return bags, np.asarray(labels)


@pytest.mark.parametrize("name", ["abmil", "transmil", "mean", "max"])
def test_heads_learn_witness_bags(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    train, ytr = _toy_bags(24, g)
    test, yte = _toy_bags(20, g)
    params = {"dim": 32, "heads": 2} if name == "transmil" else {}
    head = create_head(name, 16, **params)
    # the pre-recipe settings (plain shuffled steps, raw features): these toy bags need none of the recipe
    train_mil(head, train, ytr, epochs=8, lr=5e-3, weight_decay=1e-5, clip_norm=None, standardize=False, balanced=False,
              val_fraction=0.0, generator=g)
    m = evaluate_mil(head, test, yte)
    floor = 0.7 if name == "mean" else 0.8  # mean pooling dilutes 1-3 witnesses among ~20 tiles
    assert m["accuracy"] >= floor and m["auroc"] >= floor
    a = head.attention(test[1])
    assert a.shape == (test[1].shape[0],) and float(a.sum()) == pytest.approx(1.0, abs=1e-4)
    assert head(test[0][None]).shape == (2,)  # (1, N, D) accepted


def test_bag_metrics_match_sklearn_definitions() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    y = [0, 1, 1, 1, 0]
    m = bag_metrics(probs, y)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["auroc"] == pytest.approx(1.0)
    assert np.isnan(bag_metrics(probs[:2], [1, 1])["auroc"])


def test_mil_bad_input() -> None:
    head = create_head("abmil", 16)
    with pytest.raises(InputError, match=r"shape \(N, 16\)"):
        head(torch.rand(10, 8))
    with pytest.raises(InputError, match="empty"):
        head(torch.rand(0, 16))
    with pytest.raises(InputError, match="NaN"):
        head(torch.full((3, 16), float("nan")))
    with pytest.raises(InputError, match="one entry per bag"):
        train_mil(head, [torch.rand(3, 16)], [0, 1])
    with pytest.raises(InputError, match="0..1"):
        train_mil(head, [torch.rand(3, 16)], [3])
    from medsec.errors import ConfigError

    with pytest.raises(ConfigError):
        create_head("abmill", 16)
    from medsec.wsi.mil import GatedAttentionMIL

    with pytest.raises(TypeError):
        GatedAttentionMIL(16, 2, 64)  # hyper-parameters are keyword-only
    assert create_head("abmil", 16, hidden=64).arch == {
        "name": "abmil", "params": {"in_dim": 16, "num_classes": 2, "hidden": 64, "attn_dim": 64, "dropout": 0.0}}


def test_mnist_bags_protocol() -> None:
    y = np.repeat(np.arange(8), 500)
    bags = make_bags(y, [4], 30, size_min=100, size_max=2000, key_min=1, key_max=3, generator=torch.Generator().manual_seed(0))
    sizes = np.array([len(b) for b in bags.indices])
    assert sizes.min() >= 100 and sizes.max() <= 2000 and sizes.std() > 0
    for b in range(len(bags)):
        n_pos = int(bags.key_mask(b, y).sum())
        assert (n_pos > 0) == bool(bags.labels[b]) and n_pos == bags.n_key[b]
        assert n_pos <= 3 and len(set(bags.indices[b].tolist())) == len(bags.indices[b])
    assert bags.labels.sum() == 15
    with pytest.raises(InputError, match="size_min"):
        make_bags(y, [4], 4, size_min=50, size_max=10)
    with pytest.raises(InputError, match="pool"):
        make_bags(y, [4], 4, size_min=100, size_max=4000)


def test_outlier_detector_flags_attacked_embeddings() -> None:
    from medsec.wsi.defenses import EmbeddingOutlierDetector, drop_flagged

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(600, 8, generator=g) + 5.0
    det = EmbeddingOutlierDetector(k=5, quantile=0.99).fit(clean[:500])
    assert det.detect(clean[500:]).mean() < 0.1
    far = -clean[:20]
    assert det.detect(far).all()
    assert drop_flagged(torch.cat([clean[500:510], far[:2]]), det.detect(torch.cat([clean[500:510], far[:2]]))).shape[0] <= 11
    with pytest.raises(InputError, match="fit"):
        EmbeddingOutlierDetector().score(clean)


def test_train_mil_standardises_inside_the_head() -> None:
    """The recipe's standardisation lives in the head: training on an affine transform of the
    features (per-dimension scale and offset) gives the same head outputs on the transformed bags."""
    g = torch.Generator().manual_seed(0)
    bags, y = _toy_bags(12, g)
    scale, shift = torch.rand(16, generator=g) * 50 + 0.1, torch.randn(16, generator=g) * 100
    outs = []
    for bs in (bags, [b * scale + shift for b in bags]):
        torch.manual_seed(0)
        head = create_head("abmil", 16)
        train_mil(head, bs, y, epochs=2, generator=torch.Generator().manual_seed(1))
        outs.append(torch.stack([head(b) for b in bs]).detach())
        assert head.feat_std.min() > 0 and "feat_mean" in head.state_dict()
    assert torch.allclose(outs[0], outs[1], atol=1e-3)
    with pytest.raises(InputError, match="val_fraction"):
        train_mil(head, bags, y, val_fraction=1.0)
    with pytest.raises(InputError, match="shape"):
        head.set_feature_stats(torch.zeros(3), torch.ones(3))
