"""Tests of medsec.data: ImageDataset checks, MedMNIST, image folders, synthetic H&E.

Tests that read real data find it through ``medsec.data.data_root()`` (``$MEDSEC_DATA``,
default ``../shared/data``) and skip with the reason when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medsec.data as data
from medsec.data import ImageDataset, data_root
from medsec.data import medmnist as mm
from medsec.errors import ConfigError, DataError, InputError
from medsec.registry import DATASETS

pytestmark = pytest.mark.unit

BLOOD = data_root() / "bloodmnist" / "bloodmnist.npz"
BUSI = data_root() / "busi-256"
needs_blood = pytest.mark.skipif(
    not BLOOD.is_file(), reason=f"BloodMNIST not found at {BLOOD} (set MEDSEC_DATA to the folder holding bloodmnist/)"
)
needs_busi = pytest.mark.skipif(
    not (BUSI / "benign").is_dir(), reason=f"BUSI not found at {BUSI} (set MEDSEC_DATA to the folder holding busi-256/)"
)


def _toy(n: int = 6, **kw) -> ImageDataset:
    x = torch.linspace(0, 1, n * 3 * 4 * 4).reshape(n, 3, 4, 4)
    return ImageDataset(x, torch.arange(n) % 2, ["a", "b"], name="toy", **kw)


# ----------------------------------------------------------------------------- ImageDataset
def test_image_dataset_basics() -> None:
    ds = _toy(ids=[f"f{i}" for i in range(6)])
    assert len(ds) == 6 and ds.image_shape == (3, 4, 4) and ds.num_classes == 2
    x, y = ds[3]
    assert x.shape == (3, 4, 4) and x.dtype == torch.float32 and int(y) == 1
    assert ds.labels.dtype == torch.int64
    assert ds.class_counts() == {"a": 3, "b": 3}
    sub = ds.subset([5, 0])
    assert sub.labels.tolist() == [1, 0] and sub.ids == ["f5", "f0"] and sub.classes == ds.classes
    assert torch.equal(sub.images[0], ds.images[5])
    mask = torch.tensor([True, False, True, False, False, False])
    assert ds.subset(mask).ids == ["f0", "f2"]


def test_uint8_storage_comes_out_as_float() -> None:
    raw = torch.tensor([0, 51, 255], dtype=torch.uint8).repeat(2, 1, 1, 1).expand(2, 1, 3, 3).contiguous()
    ds = ImageDataset(raw, [0, 1], ["a", "b"])
    assert ds.storage_dtype == torch.uint8
    assert ds.images.dtype == torch.float32 and ds[0][0].dtype == torch.float32
    assert float(ds.images.max()) == 1.0 and float(ds.images.min()) == 0.0
    assert torch.allclose(ds.images[0, 0, 0], torch.tensor([0.0, 0.2, 1.0]))


def test_take_first_and_random() -> None:
    ds = _toy(10)
    assert torch.equal(ds.take(3).images, ds.images[:3])
    a = ds.take(4, torch.Generator().manual_seed(1))
    b = ds.take(4, torch.Generator().manual_seed(1))
    assert len(a) == 4 and torch.equal(a.images, b.images)
    assert len(ds.take(100)) == 10
    with pytest.raises(InputError):
        ds.take(0)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (torch.full((2, 1, 4, 4), float("nan")), [0, 1], "NaN"),
        (torch.full((2, 1, 4, 4), 1.5), [0, 1], r"outside \[0, 1\]"),
        (-torch.ones(2, 1, 4, 4) / 255, [0, 1], r"outside \[0, 1\]"),
        (torch.rand(2, 1, 4, 4), [0, 2], "labels lie in"),
        (torch.rand(2, 1, 4, 4), [-1, 0], "labels lie in"),
        (torch.rand(2, 1, 4, 4), [0, 1, 0], "shape"),
        (torch.rand(0, 1, 4, 4), [], "empty"),
        (torch.rand(2, 4, 4), [0, 1], r"\(N, C, H, W\)"),
        (torch.rand(2, 1, 4, 4), [0.5, 1.0], "integers"),
    ],
)
def test_image_dataset_rejects_bad_input(images: torch.Tensor, labels: list, match: str) -> None:
    with pytest.raises(DataError, match=match):
        ImageDataset(images, labels, ["a", "b"], name="bad")


def test_image_dataset_error_names_dataset() -> None:
    with pytest.raises(DataError, match="dataset 'mine' is empty"):
        ImageDataset(torch.rand(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), ["a"], name="mine")


def test_multilabel_and_binary_labels() -> None:
    y = torch.tensor([[1, 0, 1], [0, 0, 0]])
    ds = ImageDataset(torch.rand(2, 1, 4, 4), y, ["x", "y", "z"], task="multilabel")
    assert ds.labels.shape == (2, 3) and ds.class_counts() == {"x": 1, "y": 0, "z": 1}
    with pytest.raises(DataError, match="only 0 and 1"):
        ImageDataset(torch.rand(2, 1, 4, 4), y * 2, ["x", "y", "z"], task="multilabel")
    with pytest.raises(DataError, match=r"shape \(2, 3\)"):
        ImageDataset(torch.rand(2, 1, 4, 4), y[:, :2], ["x", "y", "z"], task="multilabel")
    with pytest.raises(DataError, match="exactly 2 classes"):
        ImageDataset(torch.rand(2, 1, 4, 4), [0, 1], ["x", "y", "z"], task="binary")
    with pytest.raises(DataError, match="Did you mean 'multilabel'"):
        ImageDataset(torch.rand(2, 1, 4, 4), [0, 1], ["x", "y"], task="multilabels")


def test_subset_rejects_bad_indices() -> None:
    ds = _toy()
    with pytest.raises(InputError, match="valid 0..5"):
        ds.subset([6])
    with pytest.raises(DataError, match="empty"):
        ds.subset([])


@pytest.mark.parametrize("size, expected", [(9, (9, 9)), ((12, 6), (12, 6)), (2, (2, 2)), (4, (4, 4))])
def test_resize_gives_the_asked_size(size, expected) -> None:
    ds = _toy(ids=list("abcdef"))
    out = ds.resize(size)
    assert out.image_shape == (3, *expected) and len(out) == len(ds)
    assert torch.equal(out.labels, ds.labels) and out.ids == ds.ids
    assert out.images.dtype == torch.float32
    assert 0.0 <= float(out.images.min()) and float(out.images.max()) <= 1.0
    assert ds.image_shape == (3, 4, 4)  # the source is unchanged


def test_resize_keeps_constant_images_and_uint8_storage() -> None:
    raw = torch.full((3, 3, 28, 28), 128, dtype=torch.uint8)
    ds = ImageDataset(raw, [0, 1, 0], ["a", "b"]).resize(64)
    assert ds.storage_dtype == torch.uint8 and ds.image_shape == (3, 64, 64)
    assert torch.allclose(ds.images, torch.full_like(ds.images, 128 / 255))
    down = _toy().resize(2)  # downsizing a linear ramp keeps a ramp
    assert torch.all(down.images[..., 1] >= down.images[..., 0])
    # downsizing is antialiased: a 9x9 checkerboard at 3x3 is grey, not sampled black/white
    board = ((torch.arange(9)[:, None] + torch.arange(9)[None, :]) % 2).float().expand(1, 1, 9, 9)
    grey = ImageDataset(board, [0], ["a"]).resize(3).images
    assert float(grey.min()) > 0.3 and float(grey.max()) < 0.7
    with pytest.raises(InputError):
        _toy().resize(0)
    with pytest.raises(InputError):
        _toy().resize((3, "x"))


# ----------------------------------------------------------------------------- paths
def test_data_root_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDSEC_DATA", str(tmp_path / "d"))
    assert data_root() == tmp_path / "d"
    monkeypatch.delenv("MEDSEC_DATA")
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    assert data_root() == tmp_path / "shared" / "data"


def test_registry_lists_and_checks_params() -> None:
    assert {"medmnist", "image_folder", "synthetic_he"} <= set(data.list())
    assert data.list() == DATASETS.list()
    with pytest.raises(ConfigError, match="Did you mean 'seed'"):
        data.create("synthetic_he", sed=1)


# ----------------------------------------------------------------------------- medmnist
@needs_blood
@pytest.mark.parametrize("split, n", [("train", 11959), ("val", 1712), ("test", 3421)])
def test_bloodmnist_real_splits(split: str, n: int) -> None:
    ds = data.create("medmnist", flag="bloodmnist", split=split)
    assert len(ds) == n and ds.image_shape == (3, 28, 28) and ds.num_classes == 8
    assert ds.classes[0] == "basophil" and ds.classes[7] == "platelet"
    assert ds.task == "multiclass" and ds.name == "bloodmnist"
    x = ds.images
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.max()) > 0.9 and float(x.std()) > 0.05  # really images, not a constant
    assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert set(ds.labels.unique().tolist()) == set(range(8))
    assert ds.meta["split"] == split and ds.meta["source"] == str(BLOOD)


@needs_blood
def test_bloodmnist_resize_and_cache() -> None:
    hits = mm._load_split.cache_info().hits
    ds = data.create("medmnist", flag="bloodmnist", split="val", size=64, root=str(BLOOD.parent))
    again = data.create("medmnist", flag="bloodmnist", split="val", root=BLOOD.parent)
    assert mm._load_split.cache_info().hits > hits
    assert ds.image_shape == (3, 64, 64) and len(ds) == len(again) == 1712
    assert torch.equal(ds.labels, again.labels)
    small = again.resize(28)
    assert torch.equal(small.images, again.images)


def test_medmnist_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        data.create("medmnist", flag="bloodmnist", split="test", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "bloodmnist.npz") in msg and "MEDSEC_DATA" in msg and "download=true" in msg


def test_medmnist_default_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDSEC_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path / "pathmnist" / "pathmnist.npz")):
        data.create("medmnist", flag="pathmnist")


def test_medmnist_unknown_flag_and_split_suggest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Did you mean 'bloodmnist'"):
        data.create("medmnist", flag="bloodmnst", root=tmp_path)
    with pytest.raises(DataError, match="Did you mean 'test'"):
        data.create("medmnist", flag="bloodmnist", split="tst", root=tmp_path)
    with pytest.raises(DataError, match="3D"):
        data.create("medmnist", flag="organmnist3d", root=tmp_path)


def _fake_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"], arrays[f"{s}_labels"] = images, labels
    np.savez(path, **arrays)


def test_medmnist_grayscale_multilabel_and_binary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _fake_npz(tmp_path / "chestmnist.npz", gray, rng.integers(0, 2, (5, 14), dtype=np.uint8))
    chest = data.create("medmnist", flag="chestmnist", split="val", root=tmp_path)
    assert chest.task == "multilabel" and chest.labels.shape == (5, 14) and chest.num_classes == 14
    assert chest.image_shape == (1, 28, 28)
    assert torch.allclose(chest.images[:, 0], torch.from_numpy(gray).float() / 255)
    _fake_npz(tmp_path / "pneumoniamnist.npz", gray, np.array([[0], [1], [1], [0], [1]], dtype=np.uint8))
    pneu = data.create("medmnist", flag="pneumoniamnist", split="test", root=tmp_path, size=32)
    assert pneu.task == "multiclass" and pneu.num_classes == 2 and pneu.labels.tolist() == [0, 1, 1, 0, 1]
    assert pneu.image_shape == (1, 32, 32)


def test_medmnist_bad_files(tmp_path: Path) -> None:
    (tmp_path / "dermamnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="could not read"):
        data.create("medmnist", flag="dermamnist", root=tmp_path)
    np.savez(tmp_path / "octmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="train_labels"):
        data.create("medmnist", flag="octmnist", root=tmp_path)


def test_medmnist_download_only_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import medmnist as medmnist_pkg

    calls = []

    class FakeBlood:
        def __init__(self, split: str, download: bool, root: str) -> None:
            calls.append((split, download, root))
            images = np.full((3, 28, 28, 3), 200, np.uint8)
            _fake_npz(Path(root) / "bloodmnist.npz", images, np.array([[0], [7], [3]], np.uint8))

    monkeypatch.setattr(medmnist_pkg, "BloodMNIST", FakeBlood)
    root = tmp_path / "new" / "bloodmnist"
    with pytest.raises(DataError):
        data.create("medmnist", flag="bloodmnist", root=root)
    assert calls == []
    ds = data.create("medmnist", flag="bloodmnist", root=root, download=True, split="test")
    assert calls == [("test", True, str(root))] and ds.labels.tolist() == [0, 7, 3]


# ----------------------------------------------------------------------------- image_folder
@needs_busi
def test_image_folder_busi() -> None:
    ds = data.create("image_folder", root=BUSI, size=32)
    assert ds.classes == ["benign", "malignant", "normal"]
    assert ds.class_counts() == {"benign": 437, "malignant": 210, "normal": 133}
    assert len(ds) == 780 and ds.image_shape == (3, 32, 32) and ds.name == "busi-256"
    assert not any(i.endswith(".csv") for i in ds.ids) and (BUSI / "captions.csv").is_file()
    x = ds.images
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.std()) > 0.05


def _png(path: Path, size: tuple[int, int] = (20, 10), value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_image_folder_layout_rules(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png", value=0)
    _png(tmp_path / "cat" / "deep" / "b.PNG", (7, 9), value=255)
    _png(tmp_path / "cat" / ".hidden.png")
    (tmp_path / "cat" / "notes.txt").write_text("x")
    _png(tmp_path / "dog" / "c.jpg")
    _png(tmp_path / "top.png")  # files directly in root are ignored
    (tmp_path / "captions.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()  # a class folder with no images is skipped
    ds = data.create("image_folder", root=tmp_path, size=(8, 6), channels=1)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.ids == ["cat/a.png", "cat/deep/b.PNG", "dog/c.jpg"]
    assert ds.image_shape == (1, 8, 6)
    assert float(ds.images[0].max()) == 0.0 and float(ds.images[1].min()) == 1.0
    only_png = data.create("image_folder", root=tmp_path, size=8, extensions=["png"])
    assert only_png.classes == ["cat"] and only_png.image_shape == (3, 8, 8)
    with pytest.raises(DataError, match="different sizes"):
        data.create("image_folder", root=tmp_path, size=None)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        data.create("image_folder", root=tmp_path / "nope")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    (tmp_path / "list.csv").write_text("x")
    with pytest.raises(DataError, match="no images"):
        data.create("image_folder", root=tmp_path)
    with pytest.raises(DataError, match="is a file"):
        data.create("image_folder", root=tmp_path / "list.csv")
    (tmp_path / "a" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="broken.png"):
        data.create("image_folder", root=tmp_path)
    with pytest.raises(DataError, match="channels"):
        data.create("image_folder", root=tmp_path, channels=4)


# ----------------------------------------------------------------------------- synthetic_he
def test_synthetic_he_deterministic_and_split_differs() -> None:
    a = data.create("synthetic_he", n=200, size=32, seed=3)
    b = data.create("synthetic_he", n=200, size=32, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    test = data.create("synthetic_he", n=200, size=32, seed=3, split="test")
    other = data.create("synthetic_he", n=200, size=32, seed=4)
    assert not torch.equal(a.images, test.images) and not torch.equal(a.images, other.images)
    assert a.classes == ["benign", "tumour"] and a.image_shape == (3, 32, 32)
    assert a.images.dtype == torch.float32 and a.labels.dtype == torch.int64
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
    assert a.meta["seed"] == 3 and a.meta["split"] == "train"


@pytest.mark.parametrize("n, size", [(200, 32), (51, 16), (20, 64)])
def test_synthetic_he_balanced_and_sized(n: int, size: int) -> None:
    ds = data.create("synthetic_he", n=n, size=size)
    counts = ds.class_counts()
    assert counts["benign"] == (n + 1) // 2 and counts["tumour"] == n // 2
    assert ds.image_shape == (3, size, size)
    assert torch.isfinite(ds.images).all() and float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1


def test_synthetic_he_mean_colour_is_not_a_trivial_cue() -> None:
    ds = data.create("synthetic_he", n=600, size=32, seed=0)
    y = ds.labels.numpy().astype(bool)
    feats = [ds.images.mean((1, 2, 3))] + [ds.images[:, c].mean((1, 2)) for c in range(3)]
    for f in feats:
        order = np.argsort(f.numpy())
        ys = y[order]
        # best single-threshold accuracy over all cut points, either direction
        pos_below = np.concatenate([[0], np.cumsum(ys)])
        k = np.arange(len(ys) + 1)
        acc = ((k - pos_below) + (ys.sum() - pos_below)) / len(ys)
        best = float(np.max(np.maximum(acc, 1 - acc)))
        assert best < 0.9, f"one colour channel separates the classes ({best:.3f})"
    # ... but tumour patches do hold more haematoxylin (they are darker on average)
    gray = ds.images.mean((1, 2, 3))
    assert float(gray[ds.labels == 1].mean()) < float(gray[ds.labels == 0].mean())


def test_synthetic_he_rejects_bad_params() -> None:
    with pytest.raises(DataError, match="Did you mean 'test'"):
        data.create("synthetic_he", n=10, split="tset")
    with pytest.raises(DataError, match="n >= 2"):
        data.create("synthetic_he", n=1)
    with pytest.raises(DataError, match="size >= 8"):
        data.create("synthetic_he", n=10, size=4)
