"""Effect tests on real data: a MONAI UNet trained by medsec on Kvasir-SEG (998 polyp images,
``$MEDSEC_DATA/kvasir-seg-256``), attacked through the Dice+CE objective.

The UNet is the shipped checkpoint of ``medsec.recipes.builtin.KVASIR_UNET_RECIPE``,
evaluated on the recipe's 48 held-out images. The stated
effects (docs/segmentation.md; measured: clean Dice 0.43, PGD 0.11, FGSM 0.17, vanish
empties 46%): PGD at 8/255 lowers the mean Dice by at least 0.2 (absolute), more than
FGSM does; the targeted "vanish" attack at 8/255 empties the prediction on at least 30%
of the images; a universal perturbation fitted on training images lowers the held-out
Dice by at least 0.05.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import medsec
from medsec.metrics.segmentation import dice, foreground_fraction, lesion_miss_rate
from medsec.objectives.dice_ce import predict_mask

pytestmark = pytest.mark.effect


CACHE = Path(__file__).resolve().parents[2] / ".medsec-cache"
EPS = 8 / 255


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads are slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def kvasir_root():
    from medsec.data import data_root

    root = data_root() / "kvasir-seg-256"
    if not (root / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found at {root} (set MEDSEC_DATA to the folder holding kvasir-seg-256/)")
    return root


@pytest.fixture(scope="session")
def kvasir(kvasir_root):
    """(train, test): the recipe's 600 training and 48 held-out images at 64 px."""
    from medsec.recipes.builtin import kvasir_split

    return kvasir_split(kvasir_root)


@pytest.fixture(scope="session")
def kvasir_unet(kvasir_root):
    """The UNet of medsec.recipes.builtin.KVASIR_UNET_RECIPE (shipped)."""
    from medsec.recipes.builtin import kvasir_unet as recipe

    return recipe(kvasir_root, CACHE).eval()


@pytest.fixture(scope="session")
def clean(kvasir, kvasir_unet):
    _, test = kvasir
    x, y = test.images, test.labels
    return x, y, kvasir_unet.predict(x)


def test_unet_learns_polyps(clean) -> None:
    x, y, pred = clean
    d = dice(pred, y).mean().item()
    assert d > 0.35, f"clean Dice {d:.3f}: the recipe no longer trains a usable UNet"


def test_pgd_8_255_drops_dice_more_than_fgsm(kvasir_unet, clean) -> None:
    x, y, pred = clean
    d_clean = dice(pred, y).mean().item()
    pgd = medsec.attacks.create("pgd", steps=10)(kvasir_unet, x, y, threat=medsec.ThreatModel("linf", EPS),
                                                 generator=torch.Generator().manual_seed(0))
    fgsm = medsec.attacks.create("fgsm")(kvasir_unet, x, y, threat=medsec.ThreatModel("linf", EPS))
    d_pgd = dice(predict_mask(pgd.logits), y).mean().item()
    d_fgsm = dice(predict_mask(fgsm.logits), y).mean().item()
    assert d_clean - d_pgd >= 0.2, (d_clean, d_pgd)
    assert d_pgd < d_fgsm < d_clean
    assert pgd.success.float().mean() >= 0.5  # Dice <= 0.5 on at least half of the images
    assert lesion_miss_rate(predict_mask(pgd.logits), y) > lesion_miss_rate(pred, y)


def test_targeted_vanish_empties_the_prediction(kvasir_unet, clean) -> None:
    x, y, pred = clean
    res = medsec.attacks.create("pgd", steps=20)(kvasir_unet, x, y,
                                                 threat=medsec.ThreatModel("linf", EPS, targeted=True), target=0,
                                                 generator=torch.Generator().manual_seed(0))
    empty = foreground_fraction(predict_mask(res.logits)) == 0
    assert (foreground_fraction(pred) == 0).float().mean() < 0.1
    assert empty.float().mean() >= 0.3, empty.float().mean()
    assert torch.equal(res.success, empty.to(res.success.device))  # targeted success = prediction emptied


def test_universal_perturbation_transfers(kvasir, kvasir_unet, clean) -> None:
    train, _ = kvasir
    x, y, pred = clean
    sgd = medsec.attacks.create("uap_sgd", epochs=2, batch_size=32)
    delta = sgd.fit(kvasir_unet, train.images[:192], train.labels[:192], medsec.ThreatModel("linf", EPS),
                    generator=torch.Generator().manual_seed(0))
    d_uap = dice(kvasir_unet.predict(sgd.apply(x, delta)), y).mean().item()
    assert d_uap < dice(pred, y).mean().item() - 0.05
