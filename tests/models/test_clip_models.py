"""CLIP-style model wrapper: the named architectures built offline from small configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsec.errors import ConfigError, InputError
from medsec.models.clip import SMALL_CONFIGS, ClipModel, hf_clip_model, load_clip, open_clip_model

pytestmark = pytest.mark.unit


def _build(arch: str) -> ClipModel:
    torch.manual_seed(0)
    return hf_clip_model(config=SMALL_CONFIGS[arch]) if arch == "PLIP" else open_clip_model(config=SMALL_CONFIGS[arch])


@pytest.fixture(scope="module")
def vit_b32() -> ClipModel:
    return _build("ViT-B-32")


@pytest.mark.parametrize("arch", ["ViT-B-32", "BiomedCLIP", "PLIP"])
def test_named_architectures_encode_and_embedding_path(arch: str) -> None:
    clip = _build(arch)
    assert clip.backend == ("hf" if arch == "PLIP" else "open_clip")
    x = torch.rand(3, 3, 28, 28)  # resized to the model's input size inside
    img = clip.encode_image(x)
    assert img.shape == (3, clip.embed_dim) == (3, 32)
    assert torch.allclose(clip.encode_image(x, normalize=True).norm(dim=-1), torch.ones(3), atol=1e-5)
    if clip.tokenizer is not None:
        tokens = clip.tokenize(["a microscopy image of a basophil", "platelet"])
    else:  # the BERT text tower of BiomedCLIP has no offline vocabulary: ids from its own range
        tokens = torch.randint(1, 1000, (2, 32))
        tokens[:, 20:] = 0
    assert tokens.shape == (2, clip.context_length)
    txt = clip.encode_text(tokens)
    assert txt.shape == (2, 32)
    # the token-embedding path (what prompt learning edits) reproduces encode_text exactly
    emb = clip.token_embedding(tokens)
    assert torch.allclose(clip.encode_text_embeddings(emb, tokens), txt, atol=1e-5)
    # and really uses the embeddings it is given
    assert not torch.allclose(clip.encode_text_embeddings(emb + torch.randn(emb.shape), tokens), txt, atol=1e-3)
    assert float(clip.logit_scale) > 1


def test_normalisation_is_inside(vit_b32: ClipModel) -> None:
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(vit_b32.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(vit_b32.spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        raw = vit_b32.model.encode_image((x - mean) / std)
        assert torch.allclose(vit_b32.encode_image(x), raw, atol=1e-5)


def test_save_load_round_trip(vit_b32: ClipModel, tmp_path: Path) -> None:
    path = vit_b32.save(tmp_path / "clip.safetensors", extra={"note": "x"})
    again = load_clip(path)
    x, tokens = torch.rand(2, 3, 32, 32), vit_b32.tokenize(["a", "b"])
    with torch.no_grad():
        assert torch.equal(again.encode_image(x), vit_b32.encode_image(x))
        assert torch.equal(again.encode_text(tokens), vit_b32.encode_text(tokens))


def test_bad_inputs(vit_b32: ClipModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="outside the model's bounds"):
        vit_b32.encode_image(torch.rand(1, 3, 32, 32) * 3)
    with pytest.raises(InputError, match="NaN"):
        vit_b32.encode_image(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(InputError, match="channels"):
        vit_b32.encode_image(torch.rand(1, 1, 32, 32))
    with pytest.raises(InputError, match="integer tensor"):
        vit_b32.encode_text(torch.rand(2, 32))
    with pytest.raises(InputError, match="another tokenizer"):
        vit_b32.encode_text(torch.full((1, 32), 10**6))
    tokens = vit_b32.tokenize(["a"])
    with pytest.raises(InputError, match="embeddings must have shape"):
        vit_b32.encode_text_embeddings(torch.zeros(1, 5, 32), tokens)
    with pytest.raises(ConfigError, match="exactly one"):
        open_clip_model()
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-B-99'"):
        open_clip_model("ViT-B-99")
    with pytest.raises(ConfigError, match="embed_dim, vision_cfg and text_cfg"):
        open_clip_model(config={"embed_dim": 8})
    with pytest.raises(ConfigError, match="exactly one"):
        hf_clip_model()
    from medsec.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        load_clip(tmp_path / "missing.safetensors")


def test_names_route_through_models_create() -> None:
    import medsec.models

    with pytest.raises(ConfigError, match="unknown open_clip model"):
        medsec.models.create("open_clip:ViT-B-99")
    assert {"open_clip", "hf_clip"} <= set(medsec.models.list())
