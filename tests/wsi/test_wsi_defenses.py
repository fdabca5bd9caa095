"""The whole-slide defences are registered units: the ``embedding_outlier`` detector
(scores cross-checked against a brute-force kNN, the clean false-positive rate its
quantile promises, bad input) and the ``kind: wsi`` experiment running the registered
purifiers (Macenko ``stain_normalization``, ``jpeg``, ``gaussian_blur``) and detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import medsec
from medsec.defenses import EmbeddingOutlierDetector
from medsec.errors import InputError
from medsec.registry import DETECTORS

pytestmark = pytest.mark.unit

CACHE = Path(__file__).resolve().parents[2] / ".medsec-cache"


def _clusters(n: int, seed: int, d: int = 16) -> torch.Tensor:
    """n embeddings around 4 cluster centres (non-negative, like ReLU features)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(4, d, generator=torch.Generator().manual_seed(99)) * 3
    which = torch.randint(0, 4, (n,), generator=g)
    return (centres[which] + 0.3 * torch.randn(n, d, generator=g)).clamp_min(0)


def _knn_cosine(query: torch.Tensor, ref: torch.Tensor, k: int, skip_self: bool = False) -> torch.Tensor:
    """Brute force: mean of the k smallest cosine distances from each query row to ``ref``."""
    q = torch.nn.functional.normalize(query.double(), dim=1)
    r = torch.nn.functional.normalize(ref.double(), dim=1)
    dist = (1 - q @ r.T).clamp_min(0)
    near = dist.topk(k + int(skip_self), dim=1, largest=False).values
    return near[:, int(skip_self):].mean(1)


def test_embedding_outlier_is_the_registered_detector() -> None:
    import medsec.wsi.defenses

    det = DETECTORS.create("embedding_outlier", k=5, quantile=0.95)
    assert isinstance(det, EmbeddingOutlierDetector) and det.inspects == "embeddings"
    assert medsec.wsi.defenses.EmbeddingOutlierDetector is EmbeddingOutlierDetector  # no second implementation
    assert isinstance(medsec.defenses.create_detector("embedding_outlier"), EmbeddingOutlierDetector)
    assert det.params() == {"k": 5, "quantile": 0.95}


def test_scores_and_threshold_match_a_brute_force_knn() -> None:
    fit, query = _clusters(400, 0), _clusters(50, 1)
    det = EmbeddingOutlierDetector(k=7, quantile=0.9).fit(fit)
    np.testing.assert_allclose(det.score(query), _knn_cosine(query, fit, 7).numpy(), atol=1e-6)
    loo = _knn_cosine(fit, fit, 7, skip_self=True).numpy()  # leave-one-out on the fit set
    assert det.threshold_ == pytest.approx(float(np.quantile(loo, 0.9)), abs=1e-6)
    np.testing.assert_array_equal(det.detect(query), det.score(query) > det.threshold_)
    assert isinstance(det.score(query.numpy()), np.ndarray)  # arrays in, arrays out, as scikit-learn


def test_flags_the_quantile_of_clean_embeddings_and_far_ones() -> None:
    det = EmbeddingOutlierDetector(k=10, quantile=0.95).fit(_clusters(2000, 2))
    clean_rate = float(det.detect(_clusters(2000, 3)).mean())
    assert 0.01 <= clean_rate <= 0.10, clean_rate  # about 1 - quantile = 5%
    far = torch.rand(50, 16, generator=torch.Generator().manual_seed(4)) * 3  # uniform, off the clusters
    far_rate = float(det.detect(far).mean())
    assert far_rate >= 0.9, far_rate


def test_embedding_outlier_bad_input() -> None:
    with pytest.raises(InputError, match="fit"):
        EmbeddingOutlierDetector().score(_clusters(20, 0))
    with pytest.raises(InputError, match="k must be"):
        EmbeddingOutlierDetector(k=0)
    with pytest.raises(InputError, match="quantile"):
        EmbeddingOutlierDetector(quantile=1.0)
    with pytest.raises(TypeError):
        EmbeddingOutlierDetector(10)  # type: ignore[misc]  (hyper-parameters are keyword-only)
    with pytest.raises(InputError, match="not a model"):
        EmbeddingOutlierDetector().fit(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="more than k"):
        EmbeddingOutlierDetector(k=10).fit(_clusters(11, 0))
    bad = _clusters(40, 0)
    bad[3, 2] = float("nan")
    with pytest.raises(InputError, match="finite"):
        EmbeddingOutlierDetector(k=3).fit(bad)


@pytest.mark.effect
def test_wsi_slides_run_the_registered_purifiers(tmp_path, data_root, bloodmnist_model) -> None:  # type: ignore[no-untyped-def]
    """The ``kind: wsi`` slide defences on the real CMU slide: the per-tile deviations after
    Macenko, JPEG and blur are those of the registered purifiers (``stain_normalization``
    with its default H&E target, ``jpeg``, ``gaussian_blur``) applied to the attacked tiles.
    (The bag defences' ``embedding_outlier`` runs in tests/experiments/wsi/test_wsi_kind.py.)"""
    from medsec.config.loader import validate_config
    from medsec.objectives import deviation
    from medsec.runs import run as run_wsi
    from medsec.wsi.encoders import create_encoder

    cfg = validate_config({
        "kind": "wsi", "name": "wsi-defences", "seed": 0, "cache_dir": str(CACHE),
        "encoder": {"name": "medsec_bloodmnist"},
        "attack": {"names": ["pgd"], "params": {"pgd": {"steps": 2}}},
        "slides": {"paths": [str(data_root / "he-samples" / "cmu_small_region.svs")], "tile_size": 512,
                   "level": 0, "min_tissue": 0.5, "rho": 0.05},
    })
    res = run_wsi(cfg, tmp_path, report=False)
    assert res["status"] == "complete"
    slide = res["cells"]["slide/cmu_small_region"]
    encoder = create_encoder("medsec_bloodmnist", cache_dir=str(CACHE))
    with np.load(tmp_path / "figures.npz") as z:
        clean, adv = torch.from_numpy(z["slide0_clean"]), torch.from_numpy(z["slide0_adv"])
    assert clean.shape[0] == slide["k"] <= 2  # every attacked tile is in the figure data
    for name, key, params in (("stain_normalization", "macenko_deviation", {}), ("jpeg", "jpeg_deviation", {"quality": 75}),
                              ("gaussian_blur", "gaussian_blur_deviation", {"sigma": 1.0})):
        pur = medsec.defenses.create(name, **params)
        expected = deviation(encoder.encode(pur(adv)), encoder.encode(pur(clean)))
        np.testing.assert_allclose(slide[key], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert slide["macenko_failures"] == 0
