"""Paper-compatible mode (Budathoki & Dhakal 2025): normalised-unit eps, no clamp during
the attack, 8-bit PNG quantisation before scoring; each quirk is checked to be present."""

from __future__ import annotations

import io

import pytest
import torch

import medsec
from medsec.experiments.segmentation.paper_mode import NormalizedInput, paper_attack, quantize_8bit
from medsec.models import Segmenter
from medsec.types import InputSpec

pytestmark = pytest.mark.unit

STD = (0.229, 0.224, 0.225)
MEAN = (0.485, 0.456, 0.406)


def _seg() -> Segmenter:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1))
    return Segmenter(net, InputSpec(channels=3, mean=MEAN, std=STD), 2).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g)
    x[:, :, :2] = 1.0  # saturated rows: a clamp would be visible there
    y = torch.zeros(3, 16, 16, dtype=torch.long)
    y[:, 4:12, 4:12] = 1
    return x, y


def test_quantize_matches_a_real_png_round_trip(tmp_path) -> None:
    import numpy as np
    from PIL import Image
    from torchvision.utils import save_image

    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    buf = io.BytesIO()
    save_image(x, buf, format="png")
    back = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())))).permute(2, 0, 1).float() / 255
    assert torch.equal(quantize_8bit(x), back)


def test_eps_is_in_normalised_units_and_unclamped() -> None:
    seg, (x, y) = _seg(), _batch()
    fgsm = medsec.attacks.create("fgsm")
    raw = paper_attack(fgsm, seg, x, y, eps=0.5, quantize=False)
    delta = (raw - x).abs().amax(dim=(0, 2, 3))
    # (a) eps 0.5 in std units is 0.5 * std_c in pixels, per channel (not 0.5)
    assert torch.allclose(delta, 0.5 * torch.tensor(STD), atol=1e-5)
    # (b) no clamp during the attack: the saturated rows go above 1
    assert raw.max() > 1.0 + 0.05
    # the default pixel mode clamps and takes eps in pixel units
    pix = fgsm(seg, x, y, threat=medsec.ThreatModel("linf", 0.5)).x_adv
    assert pix.max() <= 1.0 and (pix - x).abs().max() > 0.4


def test_quantisation_before_scoring_changes_small_perturbations() -> None:
    seg, (x, y) = _seg(), _batch()
    x = quantize_8bit(x)  # clean images as read from 8-bit files
    fgsm = medsec.attacks.create("fgsm")
    q = paper_attack(fgsm, seg, x, y, eps=0.01, quantize=True)
    assert torch.equal(q, quantize_8bit(q)) and q.min() >= 0 and q.max() <= 1  # (c) 8-bit values in [0, 1]
    # eps 0.01 std = 0.57-0.58 levels: every moved pixel is rounded to exactly one 8-bit level
    levels = ((q - x).abs() * 255).round()
    moved = levels > 0
    assert moved.float().mean() > 0.9 and torch.all(levels[moved] == 1)
    # eps 0.004 std ~ 0.23 levels: rounding erases the perturbation entirely
    q_small = paper_attack(fgsm, seg, x, y, eps=0.004, quantize=True)
    assert torch.equal(q_small, x)
    assert not torch.equal(paper_attack(fgsm, seg, x, y, eps=0.004, quantize=False), x)


def test_paper_pgd_total_movement_capped_by_steps_times_alpha() -> None:
    seg, (x, y) = _seg(), _batch()
    pgd = medsec.attacks.create("pgd", steps=5, step_size=2 / 255, random_start=False)
    raw = paper_attack(pgd, seg, x, y, eps=0.5, quantize=False)
    z_move = ((raw - x) / torch.tensor(STD).reshape(1, 3, 1, 1)).abs().max()
    assert z_move <= 5 * 2 / 255 + 1e-5  # (d): alpha * T binds before eps = 0.5


def test_normalized_input_needs_a_segmenter() -> None:
    with pytest.raises(medsec.errors.InputError, match="Segmenter"):
        NormalizedInput(torch.nn.Conv2d(3, 1, 1))
