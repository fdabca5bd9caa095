"""Tile encoders (pathology foundation models) by name, each with its InputSpec.

A :class:`TileEncoder` maps tiles in [0, 1] to (B, D) embeddings; the model's own
normalisation lives inside it (GUIDE: attacks work in input units), so a label-free
attack on the encoder works on pixels.

Names (``medsec.wsi.create_encoder(name, ...)``):

* ``timm:<arch>``: any timm model or hub id, e.g. ``timm:hf-hub:MahmoodLab/UNI``, with
  ``num_classes=0`` (pooled features, the model's own pooling);
* presets ``uni`` (Chen et al., Nature Medicine 2024: ViT-L/16, ``init_values=1e-5``,
  1024-d), ``virchow`` (Vorontsov et al., Nature Medicine 2024: ViT-H/14, SwiGLU-packed
  MLP, SiLU, embedding = [CLS, mean of patch tokens], 2560-d) and ``prov-gigapath``
  (Xu et al., Nature 2024: ViT-g/14 DINOv2, 1536-d). With ``pretrained=True`` they load
  the hub weights (gated, needs a token and network); with ``pretrained=False`` the same
  architecture is built with random weights, and ``overrides`` (e.g. ``depth=1``) shrink
  it for offline tests;
* ``open_clip:<arch>``: the image tower of an open_clip model (CONCH-style / QuiltNet /
  BiomedCLIP), e.g. ``open_clip:hf-hub:wisdomik/QuiltNet-B-32``, normalised with the
  model's preprocess config;
* ``resnet50_trunc``: the CLAM baseline, ImageNet ResNet50 truncated after layer3 with
  global average pooling (1024-d; Lu et al., Nature BME 2021);
* ``medsec_bloodmnist``: the penultimate features (128-d) of medsec's BloodMNIST small
  CNN recipe (:func:`medsec.recipes.builtin.bloodmnist_classifier`), the offline FM.

Threat model: not applicable (victim models).

Example:
    >>> enc = create_encoder("uni", pretrained=False, overrides={"depth": 1, "img_size": 32})
    >>> enc(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 1024])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from medsec.errors import ConfigError, InputError
from medsec.registry import ENCODERS
from medsec.types import InputSpec

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TileEncoder(nn.Module):
    """A frozen tile encoder: pixels in the spec's bounds -> (B, D) embeddings.

    Args:
        net: module taking normalised images and returning features (B, D) or tokens
            (B, T, D) when ``pool`` = ``"cls+mean"``.
        spec: the input contract (mean/std applied inside ``forward``).
        dim: embedding size.
        pool: ``"none"`` (``net`` returns (B, D)) or ``"cls+mean"`` (concatenate the CLS
            token and the mean of the patch tokens, Virchow's embedding).
        name: the name it was built from (for results.json).
        num_prefix_tokens: tokens before the patch tokens (CLS + registers).
    """

    _mean: torch.Tensor  # (1, C, 1, 1) normalisation buffers
    _std: torch.Tensor

    def __init__(self, net: nn.Module, spec: InputSpec, dim: int, *, pool: str = "none", name: str = "",
                 num_prefix_tokens: int = 1) -> None:
        super().__init__()
        if pool not in ("none", "cls+mean"):
            raise ConfigError(f"pool must be 'none' or 'cls+mean', got {pool!r}")
        self.net, self.spec, self.dim, self.pool, self.name = net, spec, int(dim), pool, name
        self.num_prefix_tokens = int(num_prefix_tokens)
        c = spec.channels
        mean = torch.tensor(spec.mean if spec.mean is not None else (0.0,) * c).float()
        std = torch.tensor(spec.std if spec.std is not None else (1.0,) * c).float()
        self.register_buffer("_mean", mean.expand(c).reshape(1, c, 1, 1).clone(), persistent=False)
        self.register_buffer("_std", std.expand(c).reshape(1, c, 1, 1).clone(), persistent=False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.spec.channels:
            raise InputError(f"tiles must have shape (B, {self.spec.channels}, H, W), got {tuple(x.shape)}")
        z: torch.Tensor = self.net((x - self._mean.to(x.dtype)) / self._std.to(x.dtype))
        if self.pool == "cls+mean":
            z = torch.cat([z[:, 0], z[:, self.num_prefix_tokens:].mean(1)], dim=1)
        return z.flatten(1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of ``x`` in batches, without gradients, on the encoder's device."""
        dev = next(self.parameters()).device
        out = [self(x[i:i + batch_size].to(dev)).float() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.dim)


def _infer_dim(net: nn.Module, spec: InputSpec, pool: str, prefix: int = 1) -> int:
    size = spec.size or (224, 224)
    probe = TileEncoder(net, spec, 1, pool=pool, num_prefix_tokens=prefix)
    with torch.no_grad():
        return int(probe(torch.rand(1, spec.channels, *size)).shape[1])


def _hw(size: Iterable[Any]) -> tuple[int, int]:
    """A timm image size, an (H, W) pair, as ints."""
    return cast("tuple[int, int]", tuple(int(s) for s in size))


def _timm_spec(net: nn.Module) -> InputSpec:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    size = cfg.get("input_size", (3, 224, 224))[1:]
    img = getattr(getattr(net, "patch_embed", None), "img_size", None)
    if img is not None:
        size = tuple(img)
    return InputSpec(channels=3, mean=tuple(mean), std=tuple(std), size=_hw(size))


def _timm(arch: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=0, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            from medsec.registry import suggest

            raise ConfigError(f"unknown timm model {arch!r}.{suggest(arch, timm.list_models())}") from exc
        raise
    except (AssertionError, TypeError) as exc:
        raise ConfigError(f"timm cannot build {arch!r} with {sorted(kwargs)} ({exc or type(exc).__name__}); "
                          "check the overrides (SwiGLU models need an embed_dim whose MLP width is even)") from exc


@ENCODERS.register("timm")
def timm_encoder(arch: str, pretrained: bool = False, model_kwargs: dict[str, Any] | None = None) -> TileEncoder:
    """Any timm model (or ``hf-hub:`` id) as a tile encoder with its pooled features."""
    net = _timm(arch, pretrained, dict(model_kwargs or {}))
    spec = _timm_spec(net)
    return TileEncoder(net, spec, int(getattr(net, "num_features", 0)) or _infer_dim(net, spec, "none"), name=f"timm:{arch}")


# preset: hub id, offline architecture, kwargs shared by both, pooling
PRESETS: dict[str, dict[str, Any]] = {
    "uni": {"hub": "hf-hub:MahmoodLab/UNI", "arch": "vit_large_patch16_224",
            "kwargs": {"init_values": 1e-5, "dynamic_img_size": True}, "pool": "none"},
    "virchow": {"hub": "hf-hub:paige-ai/Virchow", "arch": "vit_huge_patch14_224",
                "kwargs": {"mlp_ratio": 5.3375, "init_values": 1e-5, "global_pool": "", "dynamic_img_size": True,
                           "img_size": 224, "act_layer": "silu", "mlp_layer": "swiglu_packed"},
                "pool": "cls+mean"},
    "prov-gigapath": {"hub": "hf-hub:prov-gigapath/prov-gigapath", "arch": "vit_giant_patch14_dinov2",
                      "kwargs": {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True}, "pool": "none"},
}


def _resolve_layers(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if out.get("act_layer") == "silu":
        out["act_layer"] = nn.SiLU
    if out.get("mlp_layer") == "swiglu_packed":
        from timm.layers.mlp import SwiGLUPacked

        out["mlp_layer"] = SwiGLUPacked
    return out


def _preset(name: str) -> Any:
    def build(pretrained: bool = False, overrides: dict[str, Any] | None = None) -> TileEncoder:
        p = PRESETS[name]
        kwargs = _resolve_layers({**p["kwargs"], **(overrides or {})})
        net = _timm(p["hub"] if pretrained else p["arch"], pretrained, kwargs)
        vit = cast("VisionTransformer", net)  # every preset is a timm ViT
        spec = InputSpec(channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, size=_hw(vit.patch_embed.img_size))
        prefix = int(getattr(net, "num_prefix_tokens", 1))
        dim = _infer_dim(net, spec, p["pool"], prefix)
        return TileEncoder(net, spec, dim, pool=p["pool"], name=name, num_prefix_tokens=prefix)

    build.__doc__ = f"The {name} foundation model ({PRESETS[name]['hub']}); random weights unless pretrained."
    return build


for _name in PRESETS:
    ENCODERS.register(_name)(_preset(_name))


@ENCODERS.register("open_clip")
def open_clip_encoder(arch: str, pretrained: str | None = None, model_kwargs: dict[str, Any] | None = None) -> TileEncoder:
    """The image tower of an open_clip model (``arch`` may be an ``hf-hub:`` id),
    normalised with the model's preprocess mean/std."""
    import open_clip

    try:
        model = open_clip.create_model(arch, pretrained=pretrained, **(model_kwargs or {}))
    except RuntimeError as exc:
        raise ConfigError(f"open_clip cannot build {arch!r}: {exc}") from exc
    cfg = open_clip.get_model_preprocess_cfg(model)
    spec = InputSpec(channels=3, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), size=tuple(cfg["size"]))
    visual = model.visual
    return TileEncoder(visual, spec, _infer_dim(visual, spec, "none"), name=f"open_clip:{arch}")


class _ResNetTrunc(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(*(net.get_submodule(n) for n in ("conv1", "bn1", "act1", "maxpool")))
        self.layers = nn.Sequential(*(net.get_submodule(n) for n in ("layer1", "layer2", "layer3")))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.pool(self.layers(self.stem(x)))
        return pooled.flatten(1)


@ENCODERS.register("resnet50_trunc")
def resnet50_trunc(pretrained: bool = False) -> TileEncoder:
    """CLAM's baseline: ResNet50 (ImageNet) up to layer3, then global average pooling (1024-d)."""
    net = _ResNetTrunc(_timm("resnet50", pretrained, {}))
    return TileEncoder(net, InputSpec(channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, size=(224, 224)), 1024,
                       name="resnet50_trunc")


class _Penultimate(nn.Module):
    """A classifier's network without its last linear layer (differentiable)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not hasattr(net, "features") or not hasattr(net, "head"):
            raise InputError("the classifier network must have .features and .head (medsec small_cnn)")
        self.stem = getattr(net, "stem", nn.Identity())
        self.features = net.get_submodule("features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: torch.Tensor = self.features(self.stem(x))
        return feats


def from_classifier(clf: Any, name: str = "classifier") -> TileEncoder:
    """The penultimate features of a medsec :class:`~medsec.models.classifier.Classifier`
    (normalisation of the classifier kept inside)."""
    net = _Penultimate(clf.net)
    dim = int(clf.net.head.in_features)
    return TileEncoder(net, InputSpec(channels=clf.spec.channels, mean=clf.spec.mean, std=clf.spec.std,
                                      size=(28, 28)), dim, name=name)


@ENCODERS.register("medsec_bloodmnist")
def medsec_bloodmnist(root: str | None = None, cache_dir: str | None = None) -> TileEncoder:
    """medsec's BloodMNIST small CNN (cached recipe) without its head: the offline FM."""
    from medsec.data import data_root
    from medsec.recipes.builtin import bloodmnist_classifier

    root_p = Path(root) if root else data_root() / "bloodmnist"
    cache = Path(cache_dir) if cache_dir else Path(".medsec-cache")
    return from_classifier(bloodmnist_classifier(root_p, cache), name="medsec_bloodmnist")


def create_encoder(name: str, **params: Any) -> TileEncoder:
    """An encoder by name: a registered one, or ``timm:<arch>`` / ``open_clip:<arch>``, parsed by
    :func:`medsec.models.resolve` (the one model-name parser) against the encoder registry."""
    from medsec.models.names import resolve

    key, params = resolve(name, params, registry=ENCODERS)
    encoder: TileEncoder = ENCODERS.create(key, **params)
    return encoder


def list_encoders() -> list[str]:
    return ENCODERS.list()
