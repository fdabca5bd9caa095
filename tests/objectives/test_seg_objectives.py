"""Segmentation objectives, metrics, mask checks and attacks on small segmenters (no data needed).

The objectives and metrics are checked against MONAI on hand-made masks whose values are
also worked out by hand, so a wrong reduction, channel or threshold fails here.
"""

from __future__ import annotations

import pytest
import torch

import medsec
from medsec.errors import InputError
from medsec.metrics.segmentation import dice, hd95, iou, lesion_miss_rate, lesion_missed, segmentation_summary
from medsec.models import Segmenter
from medsec.objectives.dice_ce import DiceCE, predict_mask
from medsec.objectives.pixel_disagreement import PixelDisagreement
from medsec.types import InputSpec, ThreatModel

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    """gt: 4x4 square (16 px); pred: 4x2 half of it plus 4 extra pixels elsewhere (12 px)."""
    gt = torch.zeros(2, 8, 8, dtype=torch.long)
    pred = torch.zeros(2, 8, 8, dtype=torch.long)
    gt[0, 2:6, 2:6] = 1
    pred[0, 2:6, 2:4] = 1
    pred[0, 0, 4:8] = 1
    # image 1: empty ground truth, empty prediction
    return pred, gt


def test_dice_iou_by_hand_and_monai() -> None:
    from monai.metrics import compute_dice, compute_iou

    pred, gt = _masks()
    # image 0: |A & B| = 8, |A| = 12, |B| = 16 -> Dice 16/28, IoU 8/20; image 1: both empty -> 1
    d, j = dice(pred, gt), iou(pred, gt)
    assert d[0].item() == pytest.approx(16 / 28, abs=1e-6) and d[1].item() == 1.0
    assert j[0].item() == pytest.approx(8 / 20, abs=1e-6) and j[1].item() == 1.0
    oh = lambda m: torch.nn.functional.one_hot(m, 2).permute(0, 3, 1, 2).float()  # noqa: E731
    ref_d = compute_dice(oh(pred), oh(gt), include_background=False, ignore_empty=False)[:, 0]
    ref_j = compute_iou(oh(pred), oh(gt), include_background=False, ignore_empty=False)[:, 0]
    assert torch.allclose(d, ref_d) and torch.allclose(j, ref_j)


def test_empty_truth_nonempty_prediction_scores_zero() -> None:
    gt = torch.zeros(1, 8, 8, dtype=torch.long)
    pred = gt.clone()
    pred[0, 0, 0] = 1
    assert dice(pred, gt).item() == 0.0 and iou(pred, gt).item() == 0.0


def test_hd95_matches_monai_and_is_nan_for_empty() -> None:
    from monai.metrics import compute_hausdorff_distance

    pred, gt = _masks()
    h = hd95(pred, gt)
    oh = torch.nn.functional.one_hot(pred[:1], 2).permute(0, 3, 1, 2).float()
    og = torch.nn.functional.one_hot(gt[:1], 2).permute(0, 3, 1, 2).float()
    ref = compute_hausdorff_distance(oh, og, include_background=False, percentile=95)
    assert h[0].item() == pytest.approx(float(ref[0, 0]), abs=1e-5) and h[0].item() > 0
    assert torch.isnan(h[1])


def test_multiclass_dice_averages_foreground_classes() -> None:
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    gt[0, :2] = 1
    gt[0, 2:] = 2
    pred = gt.clone()
    pred[0, 2:] = 1  # class 1: |A|=16, |B|=8, inter 8 -> 2/3; class 2 missing -> 0
    assert dice(pred, gt, num_classes=3).item() == pytest.approx((2 / 3 + 0) / 2, abs=1e-6)


def test_lesion_miss() -> None:
    gt = torch.zeros(3, 6, 6, dtype=torch.long)
    gt[:2, 1:3, 1:3] = 1  # images 0 and 1 have a lesion; image 2 has none
    pred = torch.zeros_like(gt)
    pred[0, 2, 2] = 1  # touches the lesion
    pred[1, 5, 5] = 1  # only outside it: missed
    assert lesion_missed(pred, gt).tolist() == [False, True, False]
    assert lesion_miss_rate(pred, gt) == 0.5
    s = segmentation_summary(pred, gt)
    assert s["lesion_miss_rate"] == 0.5 and s["empty_prediction_rate"] == pytest.approx(1 / 3)


def test_dice_ce_matches_monai_per_image() -> None:
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 1, 8, 8, generator=g)
    y = (torch.rand(3, 8, 8, generator=g) > 0.6).long()
    obj = DiceCE("segmentation")
    ref = DiceCELoss(sigmoid=True, lambda_dice=1.5, lambda_ce=1.0)
    loss = obj.loss(z, y)
    assert loss.shape == (3,)
    for i in range(3):
        assert loss[i].item() == pytest.approx(ref(z[i : i + 1], y[i : i + 1, None].float()).item(), rel=1e-6)
    assert torch.allclose(obj.loss(z, y, targeted=True), -loss)
    # multi-class: softmax + one-hot targets
    zm = torch.randn(2, 3, 8, 8, generator=g)
    ym = torch.randint(0, 3, (2, 8, 8), generator=g)
    refm = DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=1.5, lambda_ce=1.0)
    assert obj.loss(zm, ym)[1].item() == pytest.approx(refm(zm[1:], ym[1:, None]).item(), rel=1e-6)


def test_dice_ce_success_by_dice_drop() -> None:
    pred, gt = _masks()
    z = (pred.float() * 2 - 1)[:, None] * 5  # logits whose prediction is `pred`
    assert torch.equal(predict_mask(z), pred)
    # image 0 Dice 0.571: broken with drop 0.4 (0.571 <= 0.6), not with drop 0.5 (> 0.5); image 1 (Dice 1) never
    assert DiceCE(drop=0.4).success(z, gt).tolist() == [True, False]
    assert DiceCE(drop=0.5).success(z, gt).tolist() == [False, False]
    # targeted vanish: success only where the prediction is empty
    empty = torch.zeros_like(gt)
    assert DiceCE().success(z, empty, targeted=True).tolist() == [False, True]


def test_pixel_disagreement() -> None:
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    z = torch.full((2, 1, 4, 4), -5.0)
    z[0, 0, :2] = 5.0  # half of image 0 flipped
    obj = PixelDisagreement(threshold=0.2)
    assert obj.disagreement(z, y).tolist() == [0.5, 0.0]
    assert obj.success(z, y).tolist() == [True, False]
    loss = obj.loss(z, y)
    assert loss[0] > 0.45 and loss[1] < 0.01
    with pytest.raises(InputError, match="untargeted"):
        obj.loss(z, y, targeted=True)


def test_auto_objective_for_segmentation_is_dice_ce() -> None:
    assert isinstance(medsec.objectives.resolve("auto", "segmentation"), DiceCE)
    with pytest.raises(InputError, match="does not support 'segmentation'"):
        medsec.objectives.resolve("ce", "segmentation")


# --------------------------------------------------------------------------- models + attacks
def tiny_segmenter(num_classes: int = 2, seed: int = 0) -> Segmenter:
    torch.manual_seed(seed)
    out = 1 if num_classes == 2 else num_classes
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, out, 3, padding=1))
    return Segmenter(net, InputSpec(channels=3, mean=(0.5,) * 3, std=(0.25,) * 3), num_classes).eval()


def _batch(n: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.zeros(n, size, size, dtype=torch.long)
    y[:, 4:12, 4:12] = 1
    return x, y


def test_segmenter_shapes_and_prompt_errors() -> None:
    x, _ = _batch()
    assert tiny_segmenter()(x).shape == (4, 1, 16, 16)
    assert tiny_segmenter(3)(x).shape == (4, 3, 16, 16)
    assert tiny_segmenter().predict(x).shape == (4, 16, 16)
    with pytest.raises(InputError, match="takes no text"):
        tiny_segmenter().set_prompt("polyp")
    with pytest.raises(InputError, match="prompt was given"):
        Segmenter(torch.nn.Conv2d(3, 1, 1), InputSpec(channels=3), prompt="polyp")
    with pytest.raises(InputError, match="channels"):
        Segmenter(torch.nn.Conv2d(3, 2, 1), InputSpec(channels=3), num_classes=2)(x)


def test_plain_module_with_dense_output_is_a_segmenter() -> None:
    from medsec.attacks.base import model_task

    x, _ = _batch()
    task, k, _ = model_task(torch.nn.Conv2d(3, 1, 3, padding=1), x)
    assert (task, k) == ("segmentation", 2)


SEG_ATTACKS = [("fgsm", {}), ("pgd", {"steps": 5}), ("mifgsm", {"steps": 5}), ("apgd", {"steps": 5}),
               ("square", {"queries": 30, "loss": "dice_ce"}), ("uap_sgd", {"epochs": 2}),
               ("uap_seg", {"max_epochs": 1, "deepfool_steps": 3})]


@pytest.mark.parametrize("name,params", SEG_ATTACKS, ids=[a for a, _ in SEG_ATTACKS])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_attack_contract_on_segmenter(name: str, params: dict, num_classes: int) -> None:
    """Input unchanged, bounds and eps kept, mode/BN/requires_grad restored, no parameter
    gradients, eps 0 is the identity, the same seed gives the same result."""
    model = tiny_segmenter(num_classes)
    x, y = _batch()
    if num_classes == 3:
        y[:, :4] = 2
    x0 = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    attack = medsec.attacks.create(name, **params)
    threat = ThreatModel("linf", 8 / 255)
    res = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x0) and res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert (res.x_adv - x).abs().max() <= 8 / 255 + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert res.loss.shape == (4,) and res.success.shape == (4,)
    again = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x_adv, again.x_adv)
    zero = attack(model, x, y, threat=ThreatModel("linf", 0.0))
    assert torch.equal(zero.x_adv, x)


def test_gradient_attacks_raise_the_dice_ce_loss() -> None:
    model = tiny_segmenter()
    x, y = _batch()
    clean = DiceCE().loss(model(x), y)
    for name, params in SEG_ATTACKS[:4]:
        res = medsec.attacks.create(name, **params)(model, x, y, threat=ThreatModel("linf", 8 / 255),
                                                     generator=torch.Generator().manual_seed(0))
        assert (res.loss > clean).all(), name


def test_targeted_vanish_with_integer_target() -> None:
    model = tiny_segmenter()
    x, y = _batch()
    res = medsec.attacks.create("pgd", steps=20)(model, x, y, threat=ThreatModel("linf", 64 / 255, targeted=True),
                                                 target=0, generator=torch.Generator().manual_seed(0))
    before = (model.predict(x) > 0).float().mean()
    after = (predict_mask(res.logits) > 0).float().mean()
    assert after < before


@pytest.mark.parametrize("name", ["cw", "deepfool", "autoattack", "uap"])
def test_class_boundary_attacks_refuse_segmenters(name: str) -> None:
    x, y = _batch()
    attack = medsec.attacks.create(name)
    norm = attack.norms[0]
    with pytest.raises(InputError, match="no segmentation variant"):
        if name == "uap":
            attack.fit(tiny_segmenter(), x, y, ThreatModel(norm, 0.1))
        else:
            attack(tiny_segmenter(), x, y, threat=ThreatModel(norm, 0.1))


@pytest.mark.parametrize(
    "mask,match",
    [
        (torch.zeros(4, 8, 8, dtype=torch.long), "spatial size"),
        (torch.zeros(3, 16, 16, dtype=torch.long), "shape"),
        (torch.full((4, 16, 16), 255), "divide by 255"),
        (torch.full((4, 16, 16), 0.5), "integer class indices"),
        (torch.full((4, 16, 16), float("nan")), "NaN"),
        (-torch.ones(4, 16, 16, dtype=torch.long), "values in"),
    ],
    ids=["size", "batch", "0-255", "soft", "nan", "negative"],
)
def test_bad_masks_one_clear_error(mask: torch.Tensor, match: str) -> None:
    x, _ = _batch()
    with pytest.raises(InputError, match=match):
        medsec.attacks.create("fgsm")(tiny_segmenter(), x, mask, threat=ThreatModel("linf", 4 / 255))


def test_nan_images_and_bad_targets_rejected() -> None:
    x, y = _batch()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        medsec.attacks.create("pgd")(tiny_segmenter(), bad, y)
    with pytest.raises(InputError, match="values in"):
        medsec.attacks.create("pgd")(tiny_segmenter(), x, y, threat=ThreatModel(targeted=True), target=2)
