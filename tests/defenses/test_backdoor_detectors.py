"""Backdoor detectors (STRIP, Spectral Signatures, Activation Clustering): behaviour on
planted toy cases where the answer is known, bad input, and Spectral Signatures on the
BadNets-poisoned BloodMNIST classifier.

Measured on that classifier (CA 0.87, ASR 0.998; docs/defenses.md): Spectral Signatures
AUROC 0.71 inside the target class; STRIP AUROC 0.35 with the paper's additive
superimposition (the bright images saturate and fill in the trigger's dark squares), 0.17
with an intensity blend at w 0.5, 0.996 with the blend in optical density (asserted);
Activation Clustering flags 5 of 8 classes (AUROC 0.48, not asserted).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsec.defenses import STRIP, ActivationClustering, SpectralSignatures, create_detector, detection_metrics
from medsec.errors import InputError, RegistryError

pytestmark = pytest.mark.unit


class _PatchModel(nn.Module):
    """Class 0 when the top-left 4x4 patch is bright (the 'trigger'); otherwise a class
    from the mean brightness of the rest of the image (so clean blends scatter)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 4)  # a linear head for feature extraction; not used for logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = x[:, :, :4, :4].mean(dim=(1, 2, 3))
        rest = x[:, :, 8:, 8:].mean(dim=(1, 2, 3))
        centres = torch.tensor([0.3, 0.45, 0.6, 0.75])
        logits = -((rest[:, None] - centres[None]) ** 2) * 400
        logits[:, 0] = torch.where(patch > 0.6, torch.full_like(patch, 100.0), logits[:, 0])
        return logits


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 1, 1, generator=g) * 0.6 + 0.2
    return (base + 0.05 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1) * torch.ones(1, 3, 16, 16)


def test_strip_catches_a_dominant_trigger() -> None:
    model = _PatchModel()
    clean = _images(64, 0)
    clean[:, :, :4, :4] = 0.2
    trig = _images(64, 1)
    trig[:, :, :4, :4] = 1.0
    strip = STRIP(n_overlays=16, mode="blend", blend=0.3).fit(model, clean[:32])
    scores = strip.score(torch.cat([clean[32:], trig]))
    m = detection_metrics(scores, torch.cat([torch.zeros(32), torch.ones(64)]))
    assert m["auroc"] >= 0.95, m
    flags = strip.detect(trig)
    assert flags.float().mean() >= 0.9
    assert strip.detect(clean[32:]).float().mean() <= 0.25


def test_strip_superimposition_modes_by_hand() -> None:
    from medsec.defenses.strip import superimpose

    x = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 2, 2)
    c = torch.tensor([0.5, 0.5, 0.75, 1.0]).view(1, 1, 2, 2)
    # the paper's cv2.addWeighted(x, 1, c, 1, 0), saturating at the top of the range
    assert torch.allclose(superimpose(x, c, "superimpose"), torch.tensor([0.5, 0.75, 1.0, 1.0]).view(1, 1, 2, 2))
    assert torch.allclose(superimpose(x, c, "blend", 0.25), 0.75 * x + 0.25 * c)
    # optical density: x^(1-w) c^w with intensities floored at 1/255 (a black pixel stays dark)
    od = superimpose(x, c, "optical_density", 0.5)
    assert torch.allclose(od, (x.clamp_min(1 / 255) * c).sqrt())
    assert od.flatten()[0] < 0.07 and od.flatten()[3] == 1.0
    with pytest.raises(InputError, match="mode"):
        STRIP(mode="add")


def test_spectral_finds_a_planted_direction() -> None:
    class Feat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.flatten(1)[:, :16])

    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 4, 4, generator=g) * 0.2 + 0.4
    poisoned = torch.zeros(200, dtype=torch.bool)
    poisoned[:10] = True
    x[:10, 0, 0, :] += 0.5  # a shared shift of 10 of the 100 class-0 samples
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    spec = SpectralSignatures(expected_rate=0.1).fit(Feat(), x.clamp(0, 1), y)
    s = spec.score(x.clamp(0, 1), y)
    assert detection_metrics(s[y == 0], poisoned[y == 0])["auroc"] == 1.0
    flags = spec.detect(x.clamp(0, 1), y)
    assert flags[:10].all() and int(flags.sum()) == 30  # 1.5 x 10% of each class


def test_activation_clustering_flags_a_small_separate_cluster() -> None:
    class Feat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.flatten(1))

    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 4, 4, generator=g) * 0.1 + 0.45
    x[:15] += torch.rand(1, 1, 4, 4, generator=g) * 0.4 - 0.2  # 15 class-0 samples form their own cluster
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    ac = ActivationClustering(n_components=3).fit(Feat(), x.clamp(0, 1), y)
    assert ac.poisoned_classes_ == [0]
    assert ac.detect(x, y)[:15].all() and not ac.detect(x, y)[100:].any()


def test_detectors_refuse_bad_input() -> None:
    model = _PatchModel()
    with pytest.raises(InputError, match="fit"):
        STRIP().score(torch.rand(2, 3, 16, 16))
    with pytest.raises(InputError, match="n_overlays"):
        STRIP(n_overlays=16).fit(model, torch.rand(4, 3, 16, 16))
    with pytest.raises(InputError, match="NaN"):
        STRIP(n_overlays=2).fit(model, torch.full((4, 3, 16, 16), float("nan")))
    with pytest.raises(InputError, match="labels"):
        SpectralSignatures().fit(model, torch.rand(4, 3, 16, 16))
    with pytest.raises(InputError, match="expected_rate"):
        SpectralSignatures(expected_rate=0.7)
    with pytest.raises(InputError, match="both"):
        detection_metrics(torch.rand(4), torch.zeros(4))
    with pytest.raises(RegistryError, match="strip"):
        create_detector("stripp")


@pytest.mark.effect
def test_spectral_signatures_on_the_badnets_bloodmnist_model(bloodmnist_badnets) -> None:  # type: ignore[no-untyped-def]
    model, poisoned = bloodmnist_badnets
    x, y = poisoned.dataset.images, poisoned.dataset.labels
    truth = torch.zeros(len(x), dtype=torch.bool)
    truth[poisoned.poison_indices] = True
    spec = SpectralSignatures(expected_rate=0.05).fit(model, x, y)
    scores = spec.score(x, y)
    target = y == poisoned.target
    m = detection_metrics(scores[target], truth[target])
    assert m["auroc"] >= 0.6, m  # measured 0.71 and 0.64 on two retrains of the same recipe (CPU training varies)


@pytest.mark.effect
def test_strip_detects_the_badnets_bloodmnist_backdoor(bloodmnist_badnets, bloodmnist_test, bloodmnist_root) -> None:  # type: ignore[no-untyped-def]
    """STRIP with the superimposition in optical density on 200 clean vs 200 triggered
    non-target test images (200 clean validation images as overlays and threshold): measured AUROC
    0.996, TPR@5%FPR 0.98 (mean entropy 1.14 clean vs 0.49 triggered). The paper's additive
    superimposition measured 0.35 on the same queries and the intensity blend (w 0.5) 0.14: both
    below chance, asserted as the documented failure."""
    import medsec

    model, poisoned = bloodmnist_badnets
    val = medsec.data.create("medmnist", flag="bloodmnist", split="val", root=str(bloodmnist_root))
    g = torch.Generator().manual_seed(0)
    pool = val.images[torch.randperm(len(val), generator=g)[:200]]
    xc = bloodmnist_test.images[torch.randperm(len(bloodmnist_test), generator=g)[:200]]
    non_target = (bloodmnist_test.labels != poisoned.target).nonzero().flatten()
    xt = poisoned.triggered(bloodmnist_test.images[non_target[torch.randperm(len(non_target), generator=g)[:200]]])
    truth = torch.cat([torch.zeros(200), torch.ones(200)])
    res = {}
    for mode in ("optical_density", "superimpose"):
        strip = STRIP(mode=mode).fit(model, pool)
        res[mode] = detection_metrics(strip.score(torch.cat([xc, xt])), truth)
    assert res["optical_density"]["auroc"] >= 0.85, res
    assert res["optical_density"]["tpr_at_5pct_fpr"] >= 0.6, res
    assert res["superimpose"]["auroc"] <= 0.6, res


@pytest.mark.effect
def test_fine_pruning_removes_the_badnets_backdoor(bloodmnist_badnets, bloodmnist_test, bloodmnist_root) -> None:  # type: ignore[no-untyped-def]
    """Measured (1,000 test images) on the recipe's model (seeded, so every CI run trains the same one):
    CA 0.853, ASR 0.969 before. At the paper's 4-point clean-accuracy budget 19% of the 64 penultimate
    channels are pruned and ASR only falls to 0.630 (CA 0.841); at an 8-point budget 66% are pruned and
    ASR falls to 0.000 (CA 0.787). Earlier unseeded retrains pruned 28% at 4 points and reached ASR
    0.02-0.10, so how much the backdoor hides in dormant channels depends on the training run.
    Then 3 fine-tuning epochs at lr 1e-4 on 500 clean validation images."""
    import medsec
    from medsec.backdoors import backdoor_metrics
    from medsec.defenses import FinePruning
    from medsec.training import predict

    model, poisoned = bloodmnist_badnets
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    val = medsec.data.create("medmnist", flag="bloodmnist", split="val", root=str(bloodmnist_root))
    clean = val.take(500, torch.Generator().manual_seed(0))
    x, y = bloodmnist_test.images[:1000], bloodmnist_test.labels[:1000]

    def metrics(m: torch.nn.Module) -> dict:
        return backdoor_metrics(predict(m, x), predict(m, poisoned.triggered(x)), y, poisoned.test_targets(y), 8)

    before = metrics(model)
    paper = FinePruning(max_accuracy_drop=0.04, epochs=3)
    at4 = metrics(paper.repair(model, clean))
    assert 0 < paper.pruned_fraction_ < 0.95
    assert paper.accuracy_pruned_ >= paper.accuracy_before_ - 0.04 - 1e-9
    assert at4["attack_success_rate"] <= before["attack_success_rate"] - 0.15, (before, at4)
    wider = FinePruning(max_accuracy_drop=0.08, epochs=3)
    at8 = metrics(wider.repair(model, clean))
    assert wider.pruned_fraction_ > paper.pruned_fraction_  # a wider budget prunes more channels
    assert before["attack_success_rate"] - at8["attack_success_rate"] >= 0.7, (before, at8)
    assert at8["clean_accuracy"] >= before["clean_accuracy"] - 0.12, (before, at8)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_state.items()), "the input model is untouched"
    with pytest.raises(InputError, match="max_accuracy_drop"):
        FinePruning(max_accuracy_drop=1.5)
