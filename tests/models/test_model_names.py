"""The one model-name parser (medsec.models.resolve) and its users (models.create, create_encoder)."""

from __future__ import annotations

import pytest

import medsec.models as M
from medsec.errors import ConfigError, RegistryError
from medsec.registry import ENCODERS
from medsec.wsi.encoders import create_encoder

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("name", "params", "want"), [
    ("small_cnn", {"width": 8}, ("small_cnn", {"width": 8})),
    ("timm:resnet18", {"num_classes": 3}, ("timm", {"num_classes": 3, "arch": "resnet18"})),
    ("torchvision:resnet50", None, ("torchvision", {"arch": "resnet50"})),
    ("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", None,
     ("open_clip", {"model_id": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"})),
    ("open_clip:ViT-B-32", {"pretrained": "openai"}, ("open_clip", {"pretrained": "openai", "model_id": "ViT-B-32"})),
    ("hf:vinid/plip", None, ("hf_clip", {"model_id": "vinid/plip"})),
    ("hf:CIDAS/clipseg-rd64-refined", {"prompt": "polyp"},
     ("clipseg", {"prompt": "polyp", "model_id": "CIDAS/clipseg-rd64-refined"})),
])
def test_resolve_model_names(name: str, params: dict | None, want: tuple) -> None:
    before = dict(params or {})
    assert M.resolve(name, params) == want
    assert (params or {}) == before, "the caller's params are not modified"


def test_resolve_encoder_names_with_the_same_rule() -> None:
    assert M.resolve("timm:hf-hub:MahmoodLab/UNI", {"pretrained": False}, registry=ENCODERS) == (
        "timm", {"pretrained": False, "arch": "hf-hub:MahmoodLab/UNI"})
    assert M.resolve("open_clip:ViT-B-32", registry=ENCODERS) == ("open_clip", {"arch": "ViT-B-32"})
    assert M.resolve("uni", {"pretrained": False}, registry=ENCODERS) == ("uni", {"pretrained": False})
    with pytest.raises(ConfigError, match="loader of timm, open_clip"):
        M.resolve("hf:vinid/plip", registry=ENCODERS)


def test_resolve_bad_names() -> None:
    with pytest.raises(ConfigError, match="non-empty string"):
        M.resolve("")
    with pytest.raises(ConfigError, match="names no architecture"):
        M.resolve("timm:")
    with pytest.raises(ConfigError, match="Did you mean 'timm'"):
        M.resolve("tim:resnet18")
    with pytest.raises(ConfigError, match="give it once"):
        M.resolve("timm:resnet18", {"arch": "resnet50"})
    with pytest.raises(RegistryError, match="small_cnn"):
        M.resolve("small_cn")


def test_create_and_create_encoder_go_through_resolve() -> None:
    clf = M.create("timm:resnet18", num_classes=4)
    assert clf.arch["name"] == "timm" and clf.arch["params"]["arch"] == "resnet18"
    with pytest.raises(ConfigError, match="names no architecture"):
        create_encoder("open_clip:")
    with pytest.raises(ConfigError, match="give it once"):
        create_encoder("timm:vit_tiny_patch16_224", arch="resnet18")
