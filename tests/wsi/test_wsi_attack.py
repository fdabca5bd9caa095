"""Whole-slide attack invariants: untouched tiles bit-identical, exactly max(1, ceil(rho N))
tiles change, each within eps, the random strategy reads no label, no head and only k tiles;
label-free feature attacks; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medsec.errors import InputError
from medsec.types import ThreatModel
from medsec.wsi import FEATURE_ATTACKS, TensorTiles, WSIBudget, attack_slide, feature_attack, from_classifier
from medsec.wsi.mil import create_head

pytestmark = pytest.mark.unit

EPS = 8 / 255


@pytest.fixture(scope="module")
def encoder(bloodmnist_model):
    return from_classifier(bloodmnist_model, "medsec_bloodmnist")


@pytest.fixture(scope="module")
def tiles(bloodmnist_test) -> torch.Tensor:
    return bloodmnist_test.images[:1500]


class _Counting(TensorTiles):
    """A tile source that records which tiles were read."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(x)
        self.read: list[int] = []

    def __getitem__(self, idx):  # type: ignore[no-untyped-def]
        ids = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        self.read.extend(ids.tolist())
        return super().__getitem__(ids)


class _Lazy:
    """A 100,000-tile slide whose tiles are generated on read (nothing held in memory)."""

    def __init__(self, base: torch.Tensor, n: int) -> None:
        self.base, self.n, self.read = base, n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx):  # type: ignore[no-untyped-def]
        ids = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        self.read += ids.size
        return self.base[torch.as_tensor(ids % self.base.shape[0])]


class _Forbidden(torch.nn.Module):
    """A MIL head that fails the test when anything reads it."""

    in_dim = 128

    def parameters(self, recurse: bool = True):  # type: ignore[no-untyped-def]
        raise AssertionError("the label-free random attack read the MIL head")

    def forward(self, x):  # type: ignore[no-untyped-def]
        raise AssertionError("the label-free random attack ran the MIL head")

    def attention(self, x):  # type: ignore[no-untyped-def]
        raise AssertionError("the label-free random attack read the attention")


def test_k_is_ceil_rho_n_at_least_one() -> None:
    b = WSIBudget(rho=0.001)
    assert [b.n_attacked(n) for n in (1, 10, 999, 1000, 1001, 2000, 2001, 100_000)] == [1, 1, 1, 1, 2, 2, 3, 100]
    assert WSIBudget(rho=0.01).n_attacked(150) == 2 and WSIBudget(rho=1.0).n_attacked(7) == 7
    for n in (5, 1234, 54321):
        assert WSIBudget(rho=0.005).n_attacked(n) == max(1, math.ceil(0.005 * n))


@pytest.mark.parametrize("rho", [0.001, 0.01])
def test_only_k_tiles_change_within_eps(encoder, tiles: torch.Tensor, rho: float) -> None:
    feats = encoder.encode(tiles)
    src = _Counting(tiles)
    res = attack_slide(encoder, src, feats, WSIBudget(rho, EPS), "pgd", "random", head=_Forbidden(),
                       generator=torch.Generator().manual_seed(1))
    k = max(1, math.ceil(rho * tiles.shape[0]))
    assert res.indices.numel() == k and len(set(res.indices.tolist())) == k
    assert sorted(src.read) == sorted(res.indices.tolist())  # only the attacked tiles were read
    bag_adv = tiles.clone()
    bag_adv[res.indices] = res.tiles_adv
    changed = (bag_adv != tiles).flatten(1).any(1)
    assert int(changed.sum()) == k and changed[res.indices].all()
    assert float((bag_adv - tiles).abs().max()) <= EPS + 1e-6
    assert 0 <= float(bag_adv.min()) and float(bag_adv.max()) <= 1
    untouched = torch.ones(tiles.shape[0], dtype=torch.bool)
    untouched[res.indices] = False
    assert torch.equal(res.features_adv[untouched], feats[untouched])  # cached features reused bit for bit
    assert (res.features_adv[res.indices] != feats[res.indices]).any(1).all()
    assert float(res.deviation.mean()) > 0.1  # a real attack, not a no-op


def test_random_selection_ignores_labels_head_and_features(encoder, tiles: torch.Tensor) -> None:
    feats = encoder.encode(tiles[:500])
    a = attack_slide(encoder, TensorTiles(tiles[:500]), feats, WSIBudget(0.01, EPS), "fgsm_rs", "random",
                     generator=torch.Generator().manual_seed(3))
    b = attack_slide(encoder, TensorTiles(tiles[:500]), torch.zeros_like(feats), WSIBudget(0.01, EPS), "fgsm_rs", "random",
                     head=_Forbidden(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.indices, b.indices)  # the choice depends on N and the generator only
    assert torch.equal(a.tiles_adv, b.tiles_adv)


def test_cost_in_proportion_to_attack(encoder, tiles: torch.Tensor) -> None:
    slide = _Lazy(tiles[:64], 100_000)
    feats = torch.zeros(100_000, encoder.dim)
    res = attack_slide(encoder, slide, feats, WSIBudget(0.0001, EPS), "pgd", "random",
                       generator=torch.Generator().manual_seed(0), steps=2)
    assert slide.read == 10 and res.indices.numel() == 10
    assert int((res.features_adv != 0).any(1).sum()) == 10


@pytest.mark.parametrize("name", FEATURE_ATTACKS)
@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 0.5)])
def test_feature_attacks_label_free(encoder, tiles: torch.Tensor, name: str, norm: str, eps: float) -> None:
    x = tiles[:8]
    params = {"steps": 10} if name in ("feature_cw", "feature_deepfool") else {}
    res = feature_attack(name, encoder, x, ThreatModel(norm, eps), generator=torch.Generator().manual_seed(0), **params)
    d = (res.x_adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    noise = (x + torch.empty_like(x).uniform_(-1, 1, generator=torch.Generator().manual_seed(0)) * EPS).clamp(0, 1)
    from medsec.wsi.attacks import deviation

    base = deviation(encoder.encode(noise), encoder.encode(x)).mean()
    assert res.loss.mean() > 2 * base  # far more feature deviation than random noise of the same size
    assert torch.allclose(res.loss, deviation(encoder.encode(res.x_adv), encoder.encode(x)), atol=1e-4)


def test_attention_selection_and_bad_input(encoder, tiles: torch.Tensor) -> None:
    feats = encoder.encode(tiles[:300])
    head = create_head("abmil", encoder.dim)
    res = attack_slide(encoder, TensorTiles(tiles[:300]), feats, WSIBudget(0.01, EPS), "fgsm_rs", "attention", head=head)
    assert set(res.indices.tolist()) == set(torch.topk(head.attention(feats), 3).indices.tolist())
    src = TensorTiles(tiles[:300])
    with pytest.raises(InputError, match="needs the MIL head"):
        attack_slide(encoder, src, feats, WSIBudget(0.01, EPS), strategy="attention")
    with pytest.raises(InputError, match="unknown tile-selection strategy 'randon'.*random"):
        attack_slide(encoder, src, feats, WSIBudget(0.01, EPS), strategy="randon")
    with pytest.raises(InputError, match="unknown feature attack 'pdg'.*pgd"):
        attack_slide(encoder, src, feats, WSIBudget(0.01, EPS), attack="pdg")
    with pytest.raises(InputError, match="feature rows"):
        attack_slide(encoder, src, feats[:10], WSIBudget(0.01, EPS))
    with pytest.raises(InputError, match="distinct tiles"):
        attack_slide(encoder, src, feats, WSIBudget(0.01, EPS), indices=torch.tensor([0, 0, 1]))
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="rho"):
            WSIBudget(rho=bad)
    with pytest.raises(InputError, match="eps"):
        WSIBudget(eps=-1)
    with pytest.raises(InputError, match="untargeted"):
        feature_attack("pgd", encoder, tiles[:2], ThreatModel("linf", EPS, targeted=True))
    with pytest.raises(InputError, match="outside the model.s bounds"):
        feature_attack("pgd", encoder, tiles[:2] * 3, ThreatModel("linf", EPS))
    nan = tiles[:2].clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        feature_attack("pgd", encoder, nan, ThreatModel("linf", EPS))


def test_feature_attacks_are_the_registered_label_free_attacks(encoder, tiles: torch.Tensor) -> None:
    """``feature_attack`` resolves its name through the attack registry and adds only the
    documented label-free defaults: PGD through it is the registered ``pgd`` with 10 steps of
    eps/4 from a random start, on the feature-deviation objective, bit for bit."""
    import medsec
    from medsec.objectives import EmbeddingAsLogits, FeatureDeviation
    from medsec.wsi.attacks import LABEL_FREE_DEFAULTS, label_free_params

    assert set(FEATURE_ATTACKS) == set(medsec.attacks.label_free())
    assert {"fgsm_rs", "pgd", "mifgsm", "feature_cw", "feature_deepfool"} <= set(FEATURE_ATTACKS)
    assert set(LABEL_FREE_DEFAULTS) <= set(FEATURE_ATTACKS)
    assert label_free_params("pgd", EPS) == {"steps": 10, "step_size": EPS / 4, "random_start": True}
    assert label_free_params("pgd", EPS, {"steps": 3}) == {"steps": 3, "step_size": EPS / 4, "random_start": True}
    assert label_free_params("mifgsm", EPS) == {"random_start": True}
    assert label_free_params("feature_cw", EPS, {"c": 1.0}) == {"c": 1.0}
    x = tiles[:6]
    threat = ThreatModel("linf", EPS)
    res = feature_attack("pgd", encoder, x, threat, generator=torch.Generator().manual_seed(5))
    ref = encoder.encode(x)
    unit = medsec.attacks.create("pgd", steps=10, step_size=EPS / 4, random_start=True,
                                 loss=FeatureDeviation(reference=ref))
    direct = unit(EmbeddingAsLogits(encoder, 6), x, torch.arange(6), threat=threat,
                  generator=torch.Generator().manual_seed(5))
    assert torch.equal(res.x_adv, direct.x_adv) and torch.equal(res.loss, direct.loss)


def test_feature_attack_refuses_attacks_that_need_labels(encoder, tiles: torch.Tensor) -> None:
    threat = ThreatModel("linf", EPS)
    for old, new in (("fgsm", "fgsm_rs"), ("cw", "feature_cw"), ("deepfool", "feature_deepfool")):
        with pytest.raises(InputError, match=f"not label-free.*'{new}'"):
            feature_attack(old, encoder, tiles[:2], threat)
    with pytest.raises(InputError, match="'apgd' needs class labels.*pgd"):
        feature_attack("apgd", encoder, tiles[:2], threat)


def _wsi_config(names: list[str], params: dict | None = None) -> dict:
    return {"kind": "wsi", "name": "cfg", "bags": {"tasks": [{"name": "t", "positive": [4]}]},
            "attack": {"names": names, "params": params or {}}}


def test_wsi_config_names_registered_label_free_attacks() -> None:
    from medsec.config.loader import validate_config
    from medsec.errors import ConfigError

    ok = validate_config(_wsi_config(["fgsm_rs", "pgd", "mifgsm", "feature_cw", "feature_deepfool"],
                                     {"pgd": {"steps": 3}, "feature_cw": {"c": 5.0}}))
    assert ok.attack.names[0] == "fgsm_rs"
    # the names the wsi kind used to give other meanings: one ConfigError naming the new name
    for old, new in (("fgsm", "fgsm_rs"), ("cw", "feature_cw"), ("deepfool", "feature_deepfool")):
        with pytest.raises(ConfigError, match=f"attack.names.*'{old}' is not label-free.*'{new}'"):
            validate_config(_wsi_config([old]))
    with pytest.raises(ConfigError, match="'uap' needs class labels and cannot run label-free"):
        validate_config(_wsi_config(["pgd", "uap"]))
    with pytest.raises(ConfigError, match="unknown feature attack 'pgdd'.*'pgd'"):
        validate_config(_wsi_config(["pgdd"]))
    with pytest.raises(ConfigError, match="'pgd' has no parameter 'stpes'.*steps"):
        validate_config(_wsi_config(["pgd"], {"pgd": {"stpes": 3}}))
