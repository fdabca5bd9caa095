"""Effect tests on real data: a MONAI UNet trained by medsec on Kvasir-SEG (998 polyp images,
``$MEDSEC_DATA/kvasir-seg-256``), attacked through the Dice+CE objective.

The UNet is trained once per test run by :data:`KVASIR_RECIPE` (cached under
``.medsec-cache/`` keyed by the recipe) and evaluated on 48 held-out images. The stated
effects (docs/segmentation.md; measured: clean Dice 0.43, PGD 0.11, FGSM 0.17, vanish
empties 46%): PGD at 8/255 lowers the mean Dice by at least 0.2 (absolute), more than
FGSM does; the targeted "vanish" attack at 8/255 empties the prediction on at least 30%
of the images; a universal perturbation fitted on training images lowers the held-out
Dice by at least 0.05.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import medsec
from medsec.metrics.segmentation import dice, foreground_fraction, lesion_miss_rate
from medsec.objectives.dice_ce import predict_mask

pytestmark = pytest.mark.slow

CACHE = Path(__file__).resolve().parent.parent / ".medsec-cache"
KVASIR_RECIPE = {"model": "monai_unet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "norm": "batch", "size": 64,
                 "n_train": 600, "epochs": 6, "lr": 0.01, "batch_size": 16, "seed": 0}
N_TEST = 48
EPS = 8 / 255


def _key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads are slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def kvasir():
    from medsec.data import data_root

    root = data_root() / "kvasir-seg-256"
    if not (root / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found at {root} (set MEDSEC_DATA to the folder holding kvasir-seg-256/)")
    ds = medsec.data.create("kvasir_seg", root=str(root), size=KVASIR_RECIPE["size"])
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    return ds.subset(perm[200 : 200 + KVASIR_RECIPE["n_train"]]), ds.subset(perm[:N_TEST])


@pytest.fixture(scope="session")
def kvasir_unet(kvasir):
    from medsec.training import train_segmenter

    r = KVASIR_RECIPE
    path = CACHE / f"kvasir-unet-{_key(r)}.safetensors"
    if path.is_file():
        return medsec.models.load_checkpoint(path)
    train, test = kvasir
    torch.manual_seed(r["seed"])
    seg = medsec.models.create("monai_unet", channels=r["channels"], strides=r["strides"], norm=r["norm"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the module's thread fixture
    try:
        train_segmenter(seg, train, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], seed=r["seed"])
    finally:
        torch.set_num_threads(before)
    medsec.models.save_checkpoint(seg, path, extra={"recipe": r})
    return seg.eval()


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
