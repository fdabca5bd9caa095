"""Macenko stain normalisation (torchstain) as an input purifier: it re-stains real H&E
towards the target, keeps shape and bounds, declares itself non-differentiable (so the
runner uses BPDA), passes blank tiles through, and refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medsec
from medsec.defenses import Defended, StainNormalization
from medsec.errors import DataError, InputError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def he(data_root):  # type: ignore[no-untyped-def]
    from PIL import Image

    folder = data_root / "he-samples"
    if not (folder / "torchstain_target.png").is_file():
        pytest.skip(f"H&E samples not found at {folder} (set MEDSEC_DATA)")
    with Image.open(folder / "torchstain_source.png") as im:
        src = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    return folder, src


def _tiles(src: torch.Tensor, n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.stack([src[:, 100 + 40 * i : 100 + 40 * i + size, 100 : 100 + size] for i in range(n)])


@pytest.mark.effect
def test_restains_towards_the_target(he) -> None:  # type: ignore[no-untyped-def]
    folder, src = he
    sn = medsec.defenses.create("stain_normalization", target=str(folder / "torchstain_target.png"))
    assert isinstance(sn, StainNormalization) and not sn.differentiable and not sn.stochastic
    x = _tiles(src)
    out = sn(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x, atol=0.02), "normalisation changes the colours"
    assert torch.equal(sn(x), out), "deterministic"
    assert sn.passthrough_ == 0
    # normalising the target itself is (nearly) the identity: its stain matrix is the reference
    from PIL import Image

    with Image.open(folder / "torchstain_target.png") as im:
        tgt = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    t = tgt[None, :, 100:228, 100:228]
    tn = sn(t)
    src_shift = (x.mean(dim=(0, 2, 3)) - tgt.mean(dim=(1, 2))).abs().sum()
    out_shift = (out.mean(dim=(0, 2, 3)) - tgt.mean(dim=(1, 2))).abs().sum()
    assert out_shift < src_shift, (float(src_shift), float(out_shift))  # mean colour moves towards the target's
    assert (tn - t).abs().mean() < 0.1


def test_zero_gradient_and_bpda_straight_through(he) -> None:  # type: ignore[no-untyped-def]
    folder, src = he
    sn = StainNormalization(target=str(folder / "torchstain_target.png"))
    x = _tiles(src, 2).requires_grad_(True)
    sn(x).sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0, "plain gradients are exactly zero"
    model = Defended(torch.nn.Identity(), sn)
    assert not model.differentiable and model.with_bpda().differentiable
    xb = x.detach().clone().requires_grad_(True)
    model.with_bpda()(xb).sum().backward()
    assert torch.equal(xb.grad, torch.ones_like(xb)), "BPDA is straight-through"
    from medsec.attacks.adaptive import needs_adaptive

    assert needs_adaptive(model)


def test_blank_tiles_pass_through_and_bad_input(he) -> None:  # type: ignore[no-untyped-def]
    folder, _ = he
    sn = StainNormalization(target=str(folder / "torchstain_target.png"))
    blank = torch.ones(1, 3, 16, 16)
    assert torch.allclose(sn(blank), blank) and sn.passthrough_ == 1
    with pytest.raises(InputError, match="RGB"):
        sn(torch.rand(1, 1, 16, 16))
    with pytest.raises(DataError, match="not found"):
        StainNormalization(target=str(folder / "missing.png"))
    with pytest.raises(InputError, match="alpha"):
        StainNormalization(target=torch.rand(3, 8, 8), alpha=60)
    with pytest.raises(InputError, match="Macenko|target"):
        StainNormalization(target=torch.ones(3, 16, 16))
