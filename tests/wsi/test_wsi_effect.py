"""Effect on real images: BloodMNIST MIL bags (MNIST-bags protocol, Ilse et al. 2018) with
medsec's BloodMNIST CNN as the frozen foundation model, gated-attention MIL head, label-free
PGD on rho = 0.1% of the tiles (Liu et al., arXiv 2505.24141: up to a 20-point drop).

The bag task is platelet-positive: a bag is positive when it holds a platelet. Platelets are the
encoder's most precisely recognised class (test split: precision 0.998, recall 1.000), so the
clean head is near perfect and the measured drop is the attack's, not a weak head's. With the
lymphocyte task (precision 0.95, about one look-alike per 300-tile negative bag) the clean head
reached only 0.58-0.75 and the drop ranged from -22.5 to +7.5 points with the head's seed.
Measured numbers are in the test below and in docs/wsi.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsec.wsi import TensorTiles, WSIBudget, attack_slide, from_classifier, make_bags
from medsec.wsi.mil import create_head, evaluate_mil, train_mil

pytestmark = pytest.mark.effect

PLATELET = 7


@pytest.fixture(scope="module")
def setup(bloodmnist_model, bloodmnist_root):
    import medsec.data

    enc = from_classifier(bloodmnist_model, "medsec_bloodmnist")
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(bloodmnist_root))
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(bloodmnist_root))
    xtr, ytr = train.images[:5000], train.labels[:5000].numpy()
    ftr, fte = enc.encode(xtr), enc.encode(test.images)
    g = torch.Generator().manual_seed(0)
    btr = make_bags(ytr, [PLATELET], 80, 100, 500, 1, 3, generator=g)  # bags of 100-500 tiles, 1-3 positives
    # positive test bags hold exactly one positive tile (a single small focus, the paper's worst case):
    # rho = 0.1% of 100-500 tiles is one attacked tile, which can then carry the whole bag
    bte = make_bags(test.labels.numpy(), [PLATELET], 40, 100, 500, 1, 1, generator=g)
    # three head seeds, and the accuracies averaged over them: how far one attacked tile moves a head depends
    # on the head (on three encoder seeds, single heads dropped by 12.5-45 points, their mean by 25-32)
    bags_tr = [ftr[i] for i in btr.indices]
    heads = []
    for seed in range(3):
        torch.manual_seed(seed)
        h = create_head("abmil", enc.dim)
        heads.append(train_mil(h, bags_tr, btr.labels, generator=torch.Generator().manual_seed(seed)))
    return enc, test, bte, [fte[i] for i in bte.indices], heads


def _attack(setup, strategy: str, rho: float, head) -> tuple[list[torch.Tensor], int]:
    """The attacked bags (cached features with the k attacked rows replaced) and the number of
    bags in which an attacked tile is the positive one."""
    enc, test, bte, feats, _ = setup
    adv, hits = [], 0
    g = torch.Generator().manual_seed(1)
    for b, idx in enumerate(bte.indices):
        res = attack_slide(enc, TensorTiles(test.images[idx]), feats[b], WSIBudget(rho, 8 / 255), "pgd", strategy,
                           head=head, generator=g)
        assert res.indices.numel() == max(1, int(np.ceil(rho * len(idx) - 1e-9)))
        hits += int(bte.key_mask(b, test.labels.numpy())[res.indices.numpy()].any())
        adv.append(res.features_adv)
    return adv, hits


@pytest.fixture(scope="module")
def measured(setup):
    """Mean over the three heads of clean, attention-guided and random accuracy at rho = 0.1%, and the
    fewest bags in which the attention-guided attack hit the positive tile."""
    _, _, bte, feats, heads = setup
    rnd_bags, rnd_hits = _attack(setup, "random", 0.001, None)  # label-free and head-free: one attack for all heads
    clean, att, rnd, hits = [], [], [], []
    for head in heads:
        adv, h = _attack(setup, "attention", 0.001, head)
        clean.append(evaluate_mil(head, feats, bte.labels)["accuracy"])
        att.append(evaluate_mil(head, adv, bte.labels)["accuracy"])
        rnd.append(evaluate_mil(head, rnd_bags, bte.labels)["accuracy"])
        hits.append(h)
    print(f"per head: clean {clean} attention-guided {att} (platelet hit in {hits} of 20 positive bags) "
          f"random {rnd} (hit in {rnd_hits})")
    return float(np.mean(clean)), float(np.mean(att)), min(hits), float(np.mean(rnd))


def test_rho_0p1_percent_attention_guided_attack_drops_slide_accuracy(measured) -> None:
    # measured (mean of three heads) on the recipe's encoder and on two other encoder seeds: clean 1.000 / 0.933 /
    # 0.950 -> attention-guided 0.700 / 0.617 / 0.700, i.e. -30.0 / -31.7 / -25.0 pt; the platelet tile is
    # attacked in 20 of 20 positive bags for every head
    clean, att, hits, _ = measured
    assert clean >= 0.9
    assert hits >= 18
    assert att <= clean - 0.15  # asserted: a 15-point drop from one attacked tile per bag


def test_attention_guided_selection_beats_random_selection(measured) -> None:
    # measured (mean of three heads, three encoder seeds): random 0.975 / 0.908 / 0.933 (-2.5 / -2.5 / -1.7 pt: it
    # hits the platelet in one bag of 20), attention-guided 0.700 / 0.617 / 0.700
    clean, att, _, rnd = measured
    assert rnd >= clean - 0.1
    assert att <= rnd - 0.15
