"""WSI pipeline: real .svs tiling counts, tissue mask, encoders by name, HDF5 cache round-trip and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsec.errors import ConfigError, DataError, InputError
from medsec.wsi import Slide, TensorTiles, create_encoder, extract_features, load_features, tile_grid, tissue_mask
from medsec.wsi.tiling import SlideTiles

pytestmark = pytest.mark.unit

SLIDES = ("cmu_small_region.svs", "tcga-cr-7395-01a-01-ts1.svs")


@pytest.fixture(scope="module")
def he_root(data_root: Path) -> Path:
    path = data_root / "he-samples"
    if not all((path / s).is_file() for s in SLIDES):
        pytest.skip(f"the he-samples slides are not at {path} (set MEDSEC_DATA)")
    return path


def _expected_count(slide: Slide, mask: np.ndarray, size: int, level: int, min_tissue: float) -> int:
    """Tile count computed independently: explicit level-0 boxes mapped onto the mask by
    nearest-pixel sampling of the mask's own coordinate grid."""
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    mds = slide.dimensions[0] / mask.shape[1]
    count = 0
    for y in range(0, lh - size + 1, size):
        for x in range(0, lw - size + 1, size):
            x0, y0, side = x * ds, y * ds, size * ds
            cols = np.arange(int(np.floor(x0 / mds)), min(mask.shape[1], max(int(np.floor(x0 / mds)) + 1, int(np.ceil((x0 + side) / mds)))))
            rows = np.arange(int(np.floor(y0 / mds)), min(mask.shape[0], max(int(np.floor(y0 / mds)) + 1, int(np.ceil((y0 + side) / mds)))))
            frac = mask[np.ix_(rows, cols)].mean() if rows.size and cols.size else 0.0
            count += frac >= min_tissue
    return count


@pytest.mark.parametrize("name", SLIDES)
def test_real_svs_tile_count(he_root: Path, name: str) -> None:
    slide = Slide(he_root / name)
    for level in range(slide.level_count):
        lw, lh = slide.level_dimensions[level]
        every = tile_grid(slide, 224, level=level, min_tissue=0.0)
        assert len(every) == (lw // 224) * (lh // 224)  # the full grid from the dimensions alone
        grid = tile_grid(slide, 224, level=level, min_tissue=0.5)
        assert len(grid) == _expected_count(slide, grid.mask, 224, level, 0.5)
        assert 0 < len(grid) < len(every)  # tissue detection removes background tiles
        assert (grid.coords[:, 0] + grid.footprint <= slide.dimensions[0] + 1).all()
    tiles = SlideTiles(slide, grid)
    t = tiles[[0, len(grid) - 1]]
    assert t.shape == (2, 3, 224, 224) and 0 <= float(t.min()) and float(t.max()) <= 1


def test_cmu_slide_numbers(he_root: Path) -> None:
    slide = Slide(he_root / "cmu_small_region.svs")
    assert slide.dimensions == (2220, 2967) and slide.mpp == pytest.approx(0.499)
    assert len(tile_grid(slide, 224, level=0, min_tissue=0.0)) == 9 * 13
    grid = tile_grid(slide, 224, mpp=1.0, min_tissue=0.0)  # ~10x: 449 px regions resized to 224
    assert grid.read_size == 449 and len(grid) == (2220 // 449) * (2967 // 449)
    assert SlideTiles(slide, grid)[[0]].shape == (1, 3, 224, 224)


def test_tissue_mask_and_bad_slide_input(tmp_path: Path, he_root: Path) -> None:
    rgb = np.full((64, 64, 3), 245, np.uint8)
    rgb[16:48, 16:48] = (170, 60, 140)
    assert tissue_mask(rgb).mean() == pytest.approx(0.25)
    assert not tissue_mask(np.full((32, 32, 3), 250, np.uint8)).any()
    with pytest.raises(DataError, match="not found"):
        Slide(tmp_path / "missing.svs")
    (tmp_path / "bad.svs").write_bytes(b"not a slide")
    with pytest.raises(DataError, match="OpenSlide cannot read"):
        Slide(tmp_path / "bad.svs")
    slide = Slide(he_root / "tcga-cr-7395-01a-01-ts1.svs")
    with pytest.raises(InputError, match="level must be"):
        tile_grid(slide, 224, level=5)
    with pytest.raises(InputError, match="microns per pixel"):
        tile_grid(slide, 224, mpp=0.5)  # this frozen section states no mpp
    with pytest.raises(InputError, match="do not fit"):
        tile_grid(slide, 5000, level=0)
    with pytest.raises(InputError, match="min_tissue"):
        tile_grid(slide, 224, min_tissue=1.5)


def test_encoders_by_name_offline() -> None:
    # UNI: patch 16; Virchow, Prov-GigaPath: patch 14; virchow's embedding is [CLS, mean patch] = 2 x 96
    for name, dim, size in (("uni", 96, 32), ("virchow", 192, 28), ("prov-gigapath", 96, 28)):
        enc = create_encoder(name, pretrained=False, overrides={"depth": 1, "embed_dim": 96, "num_heads": 2, "img_size": size})
        assert enc.dim == dim and enc(torch.rand(2, 3, size, size)).shape == (2, dim)
        assert enc.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    vit = create_encoder("timm:vit_tiny_patch16_224", model_kwargs={"depth": 1, "img_size": 32})
    assert vit(torch.rand(1, 3, 32, 32)).shape == (1, 192)
    clip = create_encoder("open_clip:ViT-B-32", model_kwargs={
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}, "embed_dim": 16})
    assert clip.dim == 16 and clip.spec.mean[0] == pytest.approx(0.48145466)  # CLIP normalisation inside
    res = create_encoder("resnet50_trunc")
    assert res.dim == 1024 and res(torch.rand(1, 3, 64, 64)).shape == (1, 1024)
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_encoder("timm:vit_tinny_patch16_224")
    with pytest.raises(ConfigError):
        create_encoder("unii")
    with pytest.raises(InputError, match="tiles must have shape"):
        vit(torch.rand(1, 1, 32, 32))


def test_normalisation_lives_inside_encoder() -> None:
    enc = create_encoder("timm:vit_tiny_patch16_224", model_kwargs={"depth": 1, "img_size": 32})
    x = torch.rand(2, 3, 32, 32)
    manual = enc.net((x - torch.tensor(enc.spec.mean)[:, None, None]) / torch.tensor(enc.spec.std)[:, None, None])
    assert torch.allclose(enc(x), manual, atol=1e-5)


class _Crash(TensorTiles):
    """Raises after ``limit`` reads (a run killed mid-extraction) and counts the tiles read."""

    def __init__(self, x: torch.Tensor, limit: int | None) -> None:
        super().__init__(x)
        self.limit, self.reads = limit, 0

    def __getitem__(self, idx):  # type: ignore[no-untyped-def]
        if self.limit is not None and self.reads >= self.limit:
            raise KeyboardInterrupt("simulated interruption")
        out = super().__getitem__(idx)
        self.reads += out.shape[0]
        return out


def test_feature_cache_round_trip_and_resume(tmp_path: Path) -> None:
    import h5py

    torch.manual_seed(0)
    enc = create_encoder("timm:vit_tiny_patch16_224", model_kwargs={"depth": 1, "img_size": 32})
    x = torch.rand(50, 3, 32, 32)
    coords = np.stack([np.arange(50) * 32, np.arange(50) * 7], 1)
    ref = extract_features(enc, TensorTiles(x), coords, tmp_path / "ref.h5", batch_size=8)
    with h5py.File(tmp_path / "ref.h5", "r") as f:  # the CLAM layout
        assert f["features"].shape == (50, 192) and f["coords"].shape == (50, 2)
    back = load_features(tmp_path / "ref.h5")
    assert torch.equal(back.features, ref.features) and np.array_equal(back.coords, coords)
    assert torch.allclose(ref.features, enc.encode(x), atol=1e-5)
    crash = _Crash(x, limit=24)
    with pytest.raises(KeyboardInterrupt):
        extract_features(enc, crash, coords, tmp_path / "slide.h5", batch_size=8)
    assert not (tmp_path / "slide.h5").exists() and (tmp_path / "slide.h5.partial").exists()
    with pytest.raises(DataError, match="resume"):
        load_features(tmp_path / "slide.h5")
    again = _Crash(x, limit=None)
    bag = extract_features(enc, again, coords, tmp_path / "slide.h5", batch_size=8)
    assert again.reads == 50 - 24  # resumed where it stopped: finished batches are not recomputed
    assert torch.allclose(bag.features, ref.features, atol=1e-6)
    assert not (tmp_path / "slide.h5.partial").exists()
    third = _Crash(x, limit=0)
    assert torch.equal(extract_features(enc, third, coords, tmp_path / "slide.h5").features, bag.features)  # cached
    with pytest.raises(InputError, match="coords"):
        extract_features(enc, TensorTiles(x), coords[:10], tmp_path / "x.h5")
