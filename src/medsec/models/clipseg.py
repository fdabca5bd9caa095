"""CLIPSeg (Lüddecke & Ecker, "Image Segmentation Using Text and Image Prompts", CVPR 2022)
from Hugging Face transformers, with VLSM adapters (Dhakal et al., "VLSM-Adapter:
Finetuning Vision-Language Segmentation Efficiently with Lightweight Blocks", MICCAI 2024,
arXiv 2405.06196), as attacked by Budathoki & Dhakal (arXiv 2505.02971).

Threat model: not applicable (a victim architecture); attacks perturb the image only, the
text prompt is fixed by the :class:`~medsec.models.segmenter.Segmenter`.

``clipseg`` loads ``CIDAS/clipseg-rd64-refined`` (or any CLIPSeg id or local folder) by
name (``model_id``, or ``medsec.models.create("hf:CIDAS/clipseg-rd64-refined")``) with
``transformers.CLIPSegForImageSegmentation.from_pretrained`` and its tokenizer
with ``AutoTokenizer.from_pretrained``; ``pretrained=False`` builds the same architecture
from a :class:`transformers.CLIPSegConfig` (``config=`` overrides, e.g. a small one) with
random weights and an offline byte-level tokenizer, which is how medsec tests and trains
it without network access.

Adapters (``adapter``): ``h = ReLU(W2 ReLU(W1 x))``, output ``x + h``, bottleneck 64.
``"dense"``: on the attention and MLP outputs of the first max(extract_layers)+1 vision
layers and of every text layer (the paper's ``clipseg_dense_adapter_vl``; none in the
conditional projection); ``"shallow"``: one on each extracted skip feature fed to the
decoder; ``None``: no adapter (full model). With ``freeze_backbone=True`` (default when an
adapter is used) only the adapters train: the paper fine-tunes adapters on a frozen
CLIPSeg; whether its decoder also trains is not stated, medsec freezes it by default and
``train_decoder=True`` trains it too (used for the randomly initialised validation model,
whose decoder has learnt nothing).

Unlike ``CLIPSegForImageSegmentation.forward``, which runs the vision encoder under
``torch.no_grad()`` (no input gradient would reach the image), the forward here keeps
the vision graph, as VLSM-Adapter's own forward does, so gradient attacks work.

Example:
    >>> import medsec.models
    >>> seg = medsec.models.create("clipseg", pretrained=False, config=SMALL_CONFIG, adapter="dense", prompt="polyp")
    >>> seg(torch.rand(2, 3, 96, 96)).shape
    torch.Size([2, 1, 96, 96])
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from medsec.errors import ConfigError, InputError
from medsec.models.segmenter import Segmenter
from medsec.registry import MODELS
from medsec.types import InputSpec

if TYPE_CHECKING:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegTextConfig, CLIPSegVisionConfig

log = logging.getLogger(__name__)

DEFAULT_NAME = "CIDAS/clipseg-rd64-refined"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ADAPTERS = ("dense", "shallow")

# A small CLIPSeg for offline tests and the Kvasir validation (same architecture as
# rd64-refined, fewer and narrower layers).
SMALL_CONFIG: dict[str, Any] = {
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "max_position_embeddings": 32},
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
                      "image_size": 96, "patch_size": 8},
    "projection_dim": 64, "extract_layers": [1, 2, 3], "reduce_dim": 32, "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 64,
}


def _sub_configs(cfg: CLIPSegConfig) -> tuple[CLIPSegTextConfig, CLIPSegVisionConfig]:
    """The text and vision configs of a ``CLIPSegConfig``, which builds them from dicts (its
    annotations also allow the dicts and None)."""
    return cast("CLIPSegTextConfig", cfg.text_config), cast("CLIPSegVisionConfig", cfg.vision_config)


class Adapter(nn.Module):
    """VLSM adapter (Dhakal et al., "VLSM-Adapter", arXiv 2405.06196): x + ReLU(W2 ReLU(W1 x))
    with a ``bottleneck``-wide hidden layer.

    W2 starts at zero, so an untrained adapter is the identity (the backbone's behaviour
    is unchanged at the start of fine-tuning). Threat model: not applicable (part of a victim).

    Args:
        dim: the width of the features it adapts.
        bottleneck: the hidden width (the paper's 64).
    """

    def __init__(self, dim: int, *, bottleneck: int = 64) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.up(torch.relu(self.down(x))))


class _Adapted(nn.Module):
    """A sub-module followed by an adapter on its (first) output."""

    def __init__(self, inner: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


class ByteTokenizer:
    """Offline tokenizer for randomly initialised CLIPSeg text towers: UTF-8 bytes + 1,
    then BOS = 257 and EOS = 258 (the largest id, where CLIP pools), padding 0.

    Args:
        max_length: tokens per prompt, BOS and EOS included (longer texts are cut).
    """

    vocab_size = 259
    bos, eos, pad = 257, 258, 0

    def __init__(self, max_length: int = 32) -> None:
        self.max_length = int(max_length)

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        body = [b + 1 for b in text.encode("utf-8")][: self.max_length - 2]
        ids = [self.bos, *body, self.eos]
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


class _HFTokenizer:
    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        enc = self.tok([text], padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class CLIPSegNet(nn.Module):
    """CLIPSeg with optional VLSM adapters; ``forward(pixel_values, prompt)`` -> logits (B, H, W).

    The text embedding of a prompt is cached while the module is in eval mode with
    frozen text parameters (the attack setting: the text is never perturbed). Lüddecke &
    Ecker, "Image Segmentation Using Text and Image Prompts", CVPR 2022; adapters after
    VLSM-Adapter (arXiv 2405.06196). Threat model: not applicable (a victim network).

    Args:
        model: a ``transformers.CLIPSegForImageSegmentation``.
        tokenizer: ``text -> {"input_ids", "attention_mask"}``.
        adapter: ``"dense"`` (after attention and MLP of every layer used), ``"shallow"``
            (on the extracted activations) or None.
        bottleneck: the adapters' hidden width.
        freeze_backbone: freeze CLIP (default: True when an adapter is used).
        train_decoder: keep the decoder trainable when the backbone is frozen.
    """

    def __init__(self, model: CLIPSegForImageSegmentation, tokenizer: Any, *, adapter: str | None = None, bottleneck: int = 64,
                 freeze_backbone: bool | None = None, train_decoder: bool = False) -> None:
        super().__init__()
        if adapter is not None and adapter not in ADAPTERS:
            from medsec.registry import suggest

            raise ConfigError(f"unknown adapter {adapter!r}.{suggest(str(adapter), ADAPTERS)} Use dense, shallow or null.")
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
        cfg = model.config
        text_cfg, vision_cfg = _sub_configs(cfg)
        self.extract_layers = list(cfg.extract_layers)
        freeze = (adapter is not None) if freeze_backbone is None else bool(freeze_backbone)
        if freeze:
            for p in model.clip.parameters():
                p.requires_grad_(False)
            for p in model.decoder.parameters():
                p.requires_grad_(bool(train_decoder))
        self.shallow = nn.ModuleList()
        if adapter == "dense":
            n_vis = max(self.extract_layers) + 1
            for layer in model.clip.vision_model.encoder.layers[:n_vis]:
                self._adapt(layer, vision_cfg.hidden_size, bottleneck)
            for layer in model.clip.text_model.encoder.layers:
                self._adapt(layer, text_cfg.hidden_size, bottleneck)
        elif adapter == "shallow":
            self.shallow = nn.ModuleList(Adapter(vision_cfg.hidden_size, bottleneck=bottleneck)
                                         for _ in self.extract_layers)
        self._cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _adapt(layer: nn.Module, dim: int, bottleneck: int) -> None:
        layer.self_attn = _Adapted(layer.get_submodule("self_attn"), Adapter(dim, bottleneck=bottleneck))
        layer.mlp = _Adapted(layer.get_submodule("mlp"), Adapter(dim, bottleneck=bottleneck))

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".adapter." in n or n.startswith("shallow.")]

    def text_embedding(self, prompt: str, device: torch.device) -> torch.Tensor:
        text_frozen = not any(p.requires_grad for p in self.model.clip.text_model.parameters())
        cacheable = not self.training and text_frozen
        if cacheable and prompt in self._cache and self._cache[prompt].device == device:
            return self._cache[prompt]
        enc = {k: v.to(device) for k, v in self.tokenizer(prompt).items()}
        emb = self.model.get_conditional_embeddings(batch_size=1, input_ids=enc["input_ids"],
                                                    attention_mask=enc["attention_mask"])
        if cacheable:
            self._cache = {prompt: emb.detach()}
        return emb

    def train(self, mode: bool = True) -> CLIPSegNet:
        self._cache = {}
        return super().train(mode)

    def forward(self, pixel_values: torch.Tensor, prompt: str) -> torch.Tensor:
        vision = self.model.clip.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                              interpolate_pos_encoding=True)
        acts = [vision.hidden_states[i + 1] for i in self.extract_layers]
        if self.adapter == "shallow":
            acts = [a(h) for a, h in zip(self.shallow, acts)]
        cond = self.text_embedding(prompt, pixel_values.device).expand(pixel_values.shape[0], -1)
        logits: torch.Tensor = self.model.decoder(tuple(acts), cond).logits
        if logits.dim() == 2:  # some versions squeeze a batch of one
            logits = logits[None]
        return logits


@MODELS.register("clipseg")
def clipseg(
    model_id: str = DEFAULT_NAME,
    pretrained: bool = True,
    config: dict[str, Any] | None = None,
    adapter: str | None = "dense",
    bottleneck: int = 64,
    freeze_backbone: bool | None = None,
    train_decoder: bool = False,
    prompt: str | None = None,
    in_channels: int = 3,
    num_classes: int = 2,
    classes: list[str] | None = None,
) -> Segmenter:
    """CLIPSeg (by name, or built from a config with random weights) with VLSM adapters, as a
    prompted binary :class:`Segmenter` (ImageNet mean/std inside, as the paper's pipeline).

    Args:
        model_id: a Hugging Face id or local folder (``pretrained=True``).
        pretrained: load weights and tokenizer by name (needs the hub or a local copy);
            False builds ``CLIPSegConfig(**config)`` with random weights and the offline
            :class:`ByteTokenizer`.
        config: CLIPSegConfig overrides (``pretrained=False``; default: rd64-refined's shape).
        adapter: ``"dense"`` (default), ``"shallow"`` or None.
        bottleneck: adapter width (64, the paper's).
        freeze_backbone: freeze CLIP (default: True when an adapter is used).
        train_decoder: keep the decoder trainable when the backbone is frozen (default
            False: only the adapters train).
        prompt: the text prompt, e.g. ``"polyp"``.
    """
    if in_channels != 3:
        raise ConfigError(f"CLIPSeg takes RGB images (in_channels=3), got {in_channels}")
    if num_classes != 2:
        raise ConfigError("CLIPSeg predicts one binary mask per prompt (num_classes=2)")
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConfigError("clipseg needs the transformers package: pip install transformers") from exc
    if pretrained:
        if config:
            raise ConfigError("config= builds a randomly initialised CLIPSeg; drop it or set pretrained: false")
        try:
            model = transformers.CLIPSegForImageSegmentation.from_pretrained(model_id)
            tokenizer: Any = _HFTokenizer(transformers.AutoTokenizer.from_pretrained(model_id))
        except OSError as exc:
            raise ConfigError(
                f"could not load CLIPSeg {model_id!r} ({exc}); without network access use a local copy of the model "
                "folder as name, or pretrained: false with a config"
            ) from exc
    else:
        overrides = dict(config or {})
        text = {"vocab_size": ByteTokenizer.vocab_size, "bos_token_id": ByteTokenizer.bos,
                "eos_token_id": ByteTokenizer.eos, "pad_token_id": ByteTokenizer.pad, **overrides.pop("text_config", {})}
        if text["vocab_size"] < ByteTokenizer.vocab_size:
            raise ConfigError(f"text_config.vocab_size must be >= {ByteTokenizer.vocab_size} for the byte tokenizer")
        try:
            cfg = transformers.CLIPSegConfig(text_config=text, **overrides)
        except TypeError as exc:
            raise ConfigError(f"invalid CLIPSeg config: {exc}") from exc
        text_cfg, vision_cfg = _sub_configs(cfg)
        if max(cfg.extract_layers) >= vision_cfg.num_hidden_layers:
            raise ConfigError(
                f"extract_layers {list(cfg.extract_layers)} must be < vision num_hidden_layers "
                f"({vision_cfg.num_hidden_layers})"
            )
        model = transformers.CLIPSegForImageSegmentation(cfg)
        tokenizer = ByteTokenizer(text_cfg.max_position_embeddings)
    net = CLIPSegNet(model, tokenizer, adapter=adapter, bottleneck=bottleneck, freeze_backbone=freeze_backbone,
                     train_decoder=train_decoder)
    if prompt is not None and not str(prompt).strip():
        raise InputError("prompt must be a non-empty string")
    spec = InputSpec(channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    arch = {"name": "clipseg", "params": {"model_id": model_id, "pretrained": pretrained, "config": config, "adapter": adapter,
                                          "bottleneck": bottleneck, "freeze_backbone": freeze_backbone,
                                          "train_decoder": train_decoder, "prompt": prompt}}
    return Segmenter(net, spec, 2, prompt=prompt, prompted=True, classes=classes, arch=arch)
