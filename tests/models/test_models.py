"""Models: normalisation inside the wrapper, loaders by name, safe checkpoints."""

from __future__ import annotations

import pytest
import torch

import medsec
from medsec.errors import ConfigError, DataError

pytestmark = pytest.mark.unit


def test_classifier_normalises_inside():
    clf = medsec.models.create("small_cnn", num_classes=3, mean=(0.2, 0.3, 0.4), std=(0.5, 0.5, 0.5)).eval()
    x = torch.rand(2, 3, 16, 16)
    direct = clf.net((x - torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)) / 0.5)
    assert torch.allclose(clf(x), direct, atol=1e-6)


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18", "timm:vit_tiny_patch16_224"])
def test_loaders_build_architectures_with_random_weights(name):
    size = 224 if "vit" in name else 32
    clf = medsec.models.create(name, num_classes=5).eval()
    assert clf(torch.rand(1, 3, size, size)).shape == (1, 5)
    assert clf.spec.mean is not None and clf.spec.bounds == (0.0, 1.0)


def test_binary_head_has_one_logit():
    clf = medsec.models.create("timm:resnet18", num_classes=2, task="binary").eval()
    assert clf(torch.rand(2, 3, 32, 32)).shape == (2,)


def test_unknown_architectures_suggest():
    with pytest.raises(ConfigError, match="resnet18"):
        medsec.models.create("timm:resnet1")
    with pytest.raises(ConfigError, match="Did you mean"):
        medsec.models.create("torchvision:resnet19")
    with pytest.raises(medsec.RegistryError, match="small_cnn"):
        medsec.models.create("small_cn")


def test_checkpoint_round_trip_is_exact(tmp_path):
    clf = medsec.models.create("small_cnn", num_classes=4, width=8, classes=["a", "b", "c", "d"]).eval()
    path = medsec.models.save_checkpoint(clf, tmp_path / "m.safetensors")
    again = medsec.models.load_checkpoint(path)
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(clf(x), again(x))
    assert again.classes == ["a", "b", "c", "d"] and again.spec == clf.spec and not again.training


def test_checkpoint_for_timm_model(tmp_path):
    clf = medsec.models.create("timm:resnet18", num_classes=3).eval()
    again = medsec.models.load_checkpoint(medsec.models.save_checkpoint(clf, tmp_path / "r.safetensors"))
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(clf(x), again(x))


def test_checkpoint_refuses_pickles_and_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        medsec.models.load_checkpoint(tmp_path / "none.safetensors")
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="safetensors"):
        medsec.models.load_checkpoint(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pkl = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, pkl)
    from medsec.models.checkpoint import load_state_dict

    with pytest.raises(DataError, match="weights_only"):
        load_state_dict(pkl)
