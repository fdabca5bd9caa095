"""SNAP on real microscopy: BloodMNIST upsampled to 64 px and a small CNN trained by
medsec (cached under .medsec-cache keyed by its recipe). The numbers asserted here are
the ones stated in docs/snap.md (measured on 64 held-out test images whose label is not
the target class 0)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import medsec
from medsec.metrics.naturalness import naturalness

pytestmark = pytest.mark.effect

log = logging.getLogger(__name__)


N_TEST = 64
CACHE = Path(__file__).resolve().parents[2] / ".medsec-cache"  # as in conftest.py
TARGET = 0


@pytest.fixture(scope="module")
def model64(bloodmnist_root):
    """The SNAP validation model (medsec.recipes.builtin.SNAP_BLOODMNIST_RECIPE, shipped)."""
    from medsec.recipes.builtin import SNAP_BLOODMNIST_RECIPE, bloodmnist_classifier

    return bloodmnist_classifier(bloodmnist_root, CACHE, SNAP_BLOODMNIST_RECIPE).eval()


@pytest.fixture(scope="module")
def test64(bloodmnist_root):
    import medsec.data

    ds = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(bloodmnist_root), size=64)
    keep = (ds.labels != TARGET).nonzero()[:, 0]
    return ds.images[keep], ds.labels[keep]


@pytest.fixture(scope="module")
def attacked(model64, test64):
    """Targeted SNAP at 5% coverage, with and without the colour constraint, on the
    first 64 test images whose label is not the target."""
    x, y = test64[0][:N_TEST], test64[1][:N_TEST]
    threat = medsec.ThreatModel("patch", 0.05, targeted=True)
    out = {}
    for colour in ("image", "none"):
        attack = medsec.attacks.create("snap", steps=100, colour=colour)
        out[colour] = attack(model64, x, y, threat=threat, target=TARGET, generator=torch.Generator().manual_seed(0))
    return x, y, out


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_targeted_snap_success_and_accuracy_drop(model64, attacked) -> None:
    x, y, out = attacked
    res = out["image"]
    clean = _acc(model64, x, y)
    adv = float((res.logits.argmax(1) == y).float().mean())
    asr = res.success_rate
    log.info("SNAP 5%%: clean %.3f adv %.3f asr %.3f", clean, adv, asr)
    print(f"SNAP 5%: clean {clean:.3f} adv {adv:.3f} asr {asr:.3f} cov {res.extras['mask'].float().mean():.4f}")
    assert (res.extras["mask"].flatten(1).float().mean(1) <= 0.05).all()
    # Models retrained from the same recipe differ (CPU training is not bit-reproducible):
    # measured targeted success 64.1% and 34.4%, accuracy 90.6% -> 32.8% and 85.9% -> 64.1%
    # on two of them (300 steps give the same as 100); the bounds leave room for that spread.
    assert asr >= 0.25, f"targeted success {asr:.2f} below the stated 25% (measured 64.1% and 34.4%)"
    assert clean - adv >= 0.15, f"accuracy drop {clean - adv:.2f} below 15 points (measured 57.8 and 21.8 points)"


def test_colour_constraint_is_closer_to_the_tissue(attacked) -> None:
    x, _, out = attacked
    nat = {c: naturalness(x, r.x_adv) for c, r in out.items()}
    print({c: (round(n["colour_w1_lab"], 2), round(n["delta_e_lab"], 2), round(n["colour_w1_od"], 3))
           for c, n in nat.items()})
    assert nat["image"]["colour_w1_lab"] < 0.85 * nat["none"]["colour_w1_lab"]
    assert nat["image"]["colour_w1_od"] < 0.6 * nat["none"]["colour_w1_od"]
    assert nat["image"]["delta_e_lab"] < nat["none"]["delta_e_lab"]


def test_universal_snap_transfers_to_held_out_images(model64, test64, bloodmnist_root) -> None:
    import medsec.data

    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(bloodmnist_root), size=64)
    fit = train.take(256, torch.Generator().manual_seed(0))
    attack = medsec.attacks.create("snap_universal", epochs=5, batch_size=64)
    threat = medsec.ThreatModel("patch", 0.05, targeted=True)
    attack.fit(model64, fit.images, fit.labels, threat, torch.Generator().manual_seed(0), target=TARGET)
    x = test64[0][-256:]  # held out: not in the fit set, not in the per-image runs
    with torch.no_grad():
        before = float((model64(x).argmax(1) == TARGET).float().mean())
        after = float((model64(attack.apply(x)).argmax(1) == TARGET).float().mean())
    print(f"universal SNAP 5%: fit success {attack.fooling_rate_:.3f}, held-out targeted success {before:.3f} -> {after:.3f}")
    assert after >= 0.04, f"held-out targeted success {after:.2f} below the stated 4% (measured 19.5%, 11%, 6.2%)"
    assert after >= before + 0.03  # measured 1.6% -> 19.5%; on two retrained models -> 11% and 1.2% -> 6.2%
