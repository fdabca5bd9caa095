"""CLIP-style image-text models behind one wrapper, loaded by name through open_clip or
transformers (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021; Ilharco et al., OpenCLIP, 2021).

Threat model: not applicable (a victim architecture). Attacks and backdoor triggers work on
images in [0, 1]; the model's mean/std normalisation (and a resize to its input size) is
applied inside :meth:`ClipModel.encode_image`, never by the attack.

Names (``medsec.models.create(name, ...)``):

* ``open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (BiomedCLIP),
  ``open_clip:hf-hub:wisdomik/QuiltNet-B-32`` (QuiltNet), ``open_clip:ViT-B-32`` with
  ``pretrained="openai"`` (OpenAI CLIP): :func:`open_clip_model`, through
  ``open_clip.create_model_and_transforms`` (weights need the hub);
* ``hf:vinid/plip`` (PLIP): :func:`hf_clip_model`, through ``transformers.CLIPModel``;
* offline, the same architectures with random weights from a small config:
  ``open_clip_model(config={...})`` builds ``open_clip.CLIP`` (or ``CustomTextCLIP`` when the
  text tower is a Hugging Face model, as in BiomedCLIP) from a model-config dict, and
  ``hf_clip_model(config={...})`` builds ``CLIPModel(CLIPConfig(**config))``; see
  :data:`SMALL_CONFIGS`.

Prompt learning needs the token-embedding path: :meth:`ClipModel.token_embedding` gives the
embeddings of token ids, and :meth:`ClipModel.encode_text_embeddings` runs the text tower on
(edited) embeddings. It works for every backend the same way: a forward hook on the token
embedding layer swaps in the given embeddings, so positions, masks and the end-of-text
pooling stay the backend's own.

Example:
    >>> clip = open_clip_model(config=SMALL_CONFIGS["ViT-B-32"], image_size=32)
    >>> clip.encode_image(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from medsec.errors import ConfigError, DataError, InputError
from medsec.models.checkpoint import load_checkpoint, pack_zero_rows, read_metadata, save_checkpoint, unpack_zero_rows
from medsec.models.classifier import register_normalization
from medsec.registry import MODELS
from medsec.types import InputSpec
from medsec.validation import check_images

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Small configs of the named architectures (same building blocks, fewer and narrower layers),
# for offline tests. "ViT-B-32" is OpenAI CLIP / QuiltNet-B-32 (quick_gelu for the OpenAI
# weights), "BiomedCLIP" a timm ViT image tower (timm's 0.4M-parameter test_vit, patch 16 like ViT-B/16) with a Hugging Face BERT text tower (the
# text config is a transformers BertConfig dict), "PLIP" a transformers CLIPConfig.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "ViT-B-32": {"embed_dim": 32, "quick_gelu": True,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                 "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
    "BiomedCLIP": {"embed_dim": 32,
                   "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                                  "timm_pool": "", "timm_proj": "linear", "image_size": 160},
                   "text_cfg": {"hf_model_name": "bert", "hf_proj_type": "mlp",
                                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32,
                                "hf_config": {"model_type": "bert", "vocab_size": 1000, "hidden_size": 32,
                                              "num_hidden_layers": 2, "num_attention_heads": 2,
                                              "intermediate_size": 64, "max_position_embeddings": 64,
                                              "pad_token_id": 0}}},
    "PLIP": {"projection_dim": 32,
             "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "max_position_embeddings": 32, "vocab_size": 49408,
                             "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0},
             "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "image_size": 32, "patch_size": 8}},
}


class ClipModel(nn.Module):
    """An image encoder and a text encoder with a shared embedding space.

    Args:
        model: the backend module (``open_clip.CLIP``/``CustomTextCLIP`` or ``transformers.CLIPModel``).
        backend: ``"open_clip"`` or ``"hf"``.
        spec: the image input contract (mean/std and input size); images come in [0, 1].
        tokenizer: callable ``list[str] -> LongTensor (N, context_length)``, or None (no
            offline vocabulary; token ids are then given directly).
        arch: ``{"name", "params"}`` that rebuilds the model (stored in checkpoints).

    Attributes:
        embed_dim: the width of the shared embedding space.
        context_length: the number of text tokens per prompt.
    """

    # the backend: open_clip's CLIP / CustomTextCLIP (untyped) or transformers' CLIPModel, whose
    # attributes differ; every access below is chosen by ``backend``
    model: Any
    _mean: torch.Tensor  # (1, C, 1, 1) buffers of register_normalization
    _std: torch.Tensor

    def __init__(self, model: nn.Module, backend: str, spec: InputSpec,
                 tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = None,
                 arch: dict[str, Any] | None = None) -> None:
        super().__init__()
        if backend not in ("open_clip", "hf"):
            raise ConfigError(f"backend must be 'open_clip' or 'hf', got {backend!r}")
        self.model, self.backend, self.spec = model, backend, spec
        self.tokenizer = tokenizer
        self.arch = arch or {}
        register_normalization(self, spec)

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        if self.backend == "hf":
            return int(self.model.config.projection_dim)
        if hasattr(self.model, "text"):
            return int(self.model.text.output_dim)
        proj = self.model.text_projection
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def context_length(self) -> int:
        if self.backend == "hf":
            return int(self.model.config.text_config.max_position_embeddings)
        text = getattr(self.model, "text", None)
        return int(getattr(text, "context_length", 0) or self.model.context_length)

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learnt log-scale), the temperature CLIP multiplies cosine similarities by (about 100)."""
        scale: torch.Tensor = self.model.logit_scale.exp()
        return scale

    @property
    def token_embedding_layer(self) -> nn.Embedding:
        """The text tower's token (word) embedding layer."""
        layer: nn.Embedding
        if self.backend == "hf":
            layer = self.model.text_model.embeddings.token_embedding
        elif hasattr(self.model, "token_embedding"):
            layer = self.model.token_embedding
        else:
            layer = self.model.text.transformer.get_input_embeddings()
        return layer

    def image_parameters(self) -> list[nn.Parameter]:
        """The parameters of the image tower (what full fine-tuning trains)."""
        if self.backend == "hf":
            return [*self.model.vision_model.parameters(), *self.model.visual_projection.parameters()]
        return list(self.model.visual.parameters())

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (N, context_length) of ``texts``."""
        if isinstance(texts, str):
            texts = [texts]
        if self.tokenizer is None:
            raise ConfigError("this CLIP model has no tokenizer; pass tokenizer= when building it")
        tokens: Any = self.tokenizer(list(texts))  # some tokenizers return a dict / BatchEncoding
        if isinstance(tokens, dict) or hasattr(tokens, "input_ids"):
            tokens = tokens["input_ids"]
        return torch.as_tensor(tokens, dtype=torch.long)

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            raise InputError("tokens must be an integer tensor (N, context_length); build it with clip.tokenize(texts)")
        vocab = self.token_embedding_layer.num_embeddings
        if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
            raise InputError(f"token ids must be in [0, {vocab}); these come from another tokenizer")
        return tokens.to(self._mean.device)

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        feats: torch.Tensor
        if self.backend == "hf":
            out = self.model.get_text_features(input_ids=tokens)
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            feats = self.model.encode_text(tokens)
        return feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features (N, embed_dim) of token ids (N, context_length)."""
        feats = self._text_features(self._check_tokens(tokens))
        return F.normalize(feats, dim=-1) if normalize else feats

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (N, L, width) of token ids, the input prompt learning edits."""
        embeddings: torch.Tensor = self.token_embedding_layer(self._check_tokens(tokens))
        return embeddings

    def encode_text_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor,
                               normalize: bool = False) -> torch.Tensor:
        """Text features from token embeddings (N, L, width) in place of the embeddings of ``tokens``.

        ``tokens`` (N, L) still decide the positions, the padding mask and where the
        end-of-text feature is pooled; ``embeddings`` replace what the embedding layer
        would return for them (CoOp's learnable context goes in there).
        """
        tokens = self._check_tokens(tokens)
        layer = self.token_embedding_layer
        want = (*tokens.shape, layer.embedding_dim)
        if tuple(embeddings.shape) != want:
            raise InputError(f"embeddings must have shape {want} (tokens' shape x width), got {tuple(embeddings.shape)}")

        def swap(_module: nn.Module, _inputs: Any, _output: torch.Tensor) -> torch.Tensor:
            return embeddings.to(_output.dtype)

        handle = layer.register_forward_hook(swap)
        try:
            feats = self._text_features(tokens)
        finally:
            handle.remove()
        return F.normalize(feats, dim=-1) if normalize else feats

    # ------------------------------------------------------------------ images
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to the model's input size (bilinear, differentiable) and normalise."""
        check_images(x.detach(), self.spec, name="images")
        if self.spec.size is not None and tuple(x.shape[-2:]) != tuple(self.spec.size):
            x = F.interpolate(x, size=tuple(self.spec.size), mode="bilinear", align_corners=False, antialias=False)
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features (B, embed_dim) of images (B, C, H, W) in [0, 1]."""
        x = self.preprocess(x)
        feats: torch.Tensor
        if self.backend == "hf":
            out = self.model.get_image_features(pixel_values=x)
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            feats = self.model.encode_image(x)
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP logits (B, N): logit_scale * cos(image, text)."""
        return self.logit_scale * self.encode_image(x, normalize=True) @ self.encode_text(tokens, normalize=True).T

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Weights and the config that rebuilds them, as one safetensors file (atomically):
        :func:`medsec.models.save_checkpoint`."""
        if not self.arch:
            raise DataError("this CLIP model has no `arch` to rebuild it from; build it with open_clip_model(config=...)")
        return save_checkpoint(self, path, extra=extra)

    def trim_vocabulary(self, texts: Sequence[str]) -> int:
        """Zero the rows of the token embedding that no token of ``texts`` uses; returns how many rows stay.

        After pretraining on a fixed caption set, the rows of tokens that never occurred hold only
        their random initialisation (shrunk by weight decay): they carry nothing learnt. Zeroing
        them leaves every output on texts made of the kept tokens bit for bit unchanged, and
        :meth:`save` then stores the embedding as its non-zero rows (a 49,408-token BPE table of a
        small model is most of its file). Tokens outside ``texts`` embed to zero afterwards.
        """
        keep = torch.unique(self.tokenize(list(texts)))
        weight = self.token_embedding_layer.weight
        with torch.no_grad():
            mask = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            mask[keep.to(weight.device)] = False
            weight[mask] = 0
        return int(keep.numel())


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> ClipModel:
    """Rebuild a :class:`ClipModel` from a checkpoint (:func:`medsec.models.load_checkpoint`,
    which also reads the files of earlier versions); a DataError for another family."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CLIP checkpoint {str(path)!r} does not exist; train it with its recipe or fix the path")
    family = read_metadata(path)["family"]
    if family != "clip":
        raise DataError(f"{str(path)!r} holds a {family} checkpoint, not a CLIP model; load it with "
                        "medsec.models.load_checkpoint")
    return cast(ClipModel, load_checkpoint(path, device))  # the family "clip" is built as a ClipModel


def read_clip_metadata(path: str | Path) -> dict[str, Any]:
    """The ``extra`` dict stored with a CLIP checkpoint (recipe, zero-shot accuracy)."""
    return dict(read_metadata(path).get("extra") or {})


def simple_tokenizer(context_length: int = 77) -> Callable[[Sequence[str]], torch.Tensor]:
    """open_clip's BPE :class:`~open_clip.tokenizer.SimpleTokenizer` (offline; the CLIP / PLIP vocabulary)."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer: Callable[[Sequence[str]], torch.Tensor] = SimpleTokenizer(context_length=int(context_length))
    return tokenizer


def _split_hf_text(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    cfg = copy.deepcopy(cfg)
    hf = cfg.get("text_cfg", {}).pop("hf_config", None)
    return cfg, hf


@MODELS.register("open_clip")
def open_clip_model(model_id: str | None = None, pretrained: str | None = None, config: dict[str, Any] | None = None,
                    image_size: int | None = None, cache_dir: str | None = None) -> ClipModel:
    """An open_clip model by name (hub weights) or from a model-config dict (random weights).

    Args:
        model_id: an open_clip model name or ``hf-hub:`` id, e.g.
            ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``,
            ``hf-hub:wisdomik/QuiltNet-B-32``, ``ViT-B-32`` (with ``pretrained="openai"``).
        pretrained: an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``...);
            hub ids carry their own weights.
        config: instead of ``model_id``, an open_clip model config (``embed_dim``, ``vision_cfg``,
            ``text_cfg``); a Hugging Face text tower is given as ``text_cfg.hf_config`` (a
            transformers config dict) so it builds offline.
        image_size: the input size (default: the config's ``vision_cfg.image_size``).
        cache_dir: open_clip's download cache.
    """
    import open_clip

    name = model_id
    if (name is None) == (config is None):
        raise ConfigError("give exactly one of model_id (an open_clip model or hf-hub id) or config (a model-config dict)")
    if name is not None:
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, cache_dir=cache_dir)
        except RuntimeError as exc:
            if "not found" in str(exc).lower() or "unknown" in str(exc).lower():
                from medsec.registry import suggest

                raise ConfigError(f"unknown open_clip model {name!r}.{suggest(name, open_clip.list_models())}") from exc
            raise
        tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = open_clip.get_tokenizer(name)
        pp = open_clip.get_model_preprocess_cfg(model) if hasattr(open_clip, "get_model_preprocess_cfg") else {}
        size = pp.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        spec = InputSpec(channels=3, mean=tuple(pp.get("mean", OPENAI_MEAN)), std=tuple(pp.get("std", OPENAI_STD)),
                         size=size)
        arch = {"name": "open_clip", "params": {"model_id": name, "pretrained": pretrained}}
        return ClipModel(model, "open_clip", spec, tokenizer, arch)

    cfg, hf = _split_hf_text(config or {})
    if not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise ConfigError("an open_clip config needs embed_dim, vision_cfg and text_cfg")
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = int(image_size)
    size = int(cfg["vision_cfg"].get("image_size", 224))
    ctx = int(cfg["text_cfg"].get("context_length", 77))
    if hf is not None:
        model = _custom_text_clip(cfg, hf)
        tokenizer = None
    else:
        model = open_clip.CLIP(**cfg)
        tokenizer = simple_tokenizer(ctx)
    spec = InputSpec(channels=3, mean=OPENAI_MEAN, std=OPENAI_STD, size=(size, size))
    arch = {"name": "open_clip", "params": {"config": config, "image_size": size}}
    return ClipModel(model.eval(), "open_clip", spec, tokenizer, arch)


def _custom_text_clip(cfg: dict[str, Any], hf: dict[str, Any]) -> nn.Module:
    """open_clip's CustomTextCLIP with an HF text tower built from a config dict (no hub)."""
    import open_clip
    from open_clip.hf_model import HFTextEncoder
    from transformers import AutoConfig

    hf = dict(hf)
    hf_cfg = AutoConfig.for_model(hf.pop("model_type"), **hf)
    text_cfg = dict(cfg["text_cfg"])
    # build the tower with a placeholder HF text config, then swap in the offline-built encoder
    model = open_clip.CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"],
                                     {"context_length": text_cfg.get("context_length", 77), "vocab_size": 8,
                                      "width": 8, "heads": 1, "layers": 1})
    model.text = HFTextEncoder(text_cfg.get("hf_model_name", hf_cfg.model_type), output_dim=cfg["embed_dim"],
                               config=hf_cfg, pooler_type=text_cfg.get("hf_pooler_type"),
                               proj_type=text_cfg.get("hf_proj_type"), pretrained=False)
    model.context_length = int(text_cfg.get("context_length", 77))
    model.text.context_length = model.context_length
    built: nn.Module = model
    return built


@MODELS.register("hf_clip")
def hf_clip_model(model_id: str | None = None, config: dict[str, Any] | None = None,
                  image_size: int | None = None) -> ClipModel:
    """A transformers ``CLIPModel`` by hub id (``vinid/plip``) or from a ``CLIPConfig`` dict (random weights).

    Offline builds tokenize with open_clip's BPE tokenizer, which is CLIP's (and PLIP's)
    vocabulary; hub models use their own ``AutoTokenizer``.
    """
    from transformers import CLIPConfig, CLIPModel

    name = model_id
    if (name is None) == (config is None):
        raise ConfigError("give exactly one of model_id (a Hugging Face CLIP id such as vinid/plip) or config")
    if name is not None:
        from transformers import AutoTokenizer

        model = CLIPModel.from_pretrained(name)
        hf_tok = AutoTokenizer.from_pretrained(name)
        ctx, size = _hf_clip_sizes(model.config)

        def hf_tokenize(texts: Sequence[str]) -> torch.Tensor:
            ids: torch.Tensor = hf_tok(list(texts), padding="max_length", truncation=True, max_length=ctx,
                                       return_tensors="pt")["input_ids"]
            return ids

        tokenizer: Callable[[Sequence[str]], torch.Tensor] = hf_tokenize
        arch = {"name": "hf_clip", "params": {"model_id": name}}
    else:
        cfg = copy.deepcopy(config or {})
        if image_size is not None:
            cfg.setdefault("vision_config", {})["image_size"] = int(image_size)
        model = CLIPModel(CLIPConfig(**cfg))
        ctx, size = _hf_clip_sizes(model.config)
        tokenizer = simple_tokenizer(ctx)
        arch = {"name": "hf_clip", "params": {"config": config, "image_size": size}}
    spec = InputSpec(channels=3, mean=OPENAI_MEAN, std=OPENAI_STD, size=(size, size))
    return ClipModel(model.eval(), "hf", spec, tokenizer, arch)


def _hf_clip_sizes(config: CLIPConfig) -> tuple[int, int]:
    """(context length, image size) of a transformers ``CLIPConfig``."""
    # CLIPConfig builds its sub-configs from dicts (its annotations also allow the dicts and None),
    # and a CLIP vision config's image_size is one int
    text, vision = cast("CLIPTextConfig", config.text_config), cast("CLIPVisionConfig", config.vision_config)
    return int(text.max_position_embeddings), int(cast(int, vision.image_size))


__all__ = ["ClipModel", "open_clip_model", "hf_clip_model", "load_clip", "read_clip_metadata", "simple_tokenizer",
           "pack_zero_rows", "unpack_zero_rows",
           "SMALL_CONFIGS", "OPENAI_MEAN", "OPENAI_STD"]
