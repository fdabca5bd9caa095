"""MedCLIP-style image-text model: a vision tower and a BERT text tower with projection
heads into one embedding space (Wang et al., "MedCLIP: Contrastive Learning from Unpaired
Medical Images and Text", EMNLP 2022; reference code RyanWangZf/MedCLIP).

Threat model: none by itself; this is the victim model of BadMatch / BadDist
(:mod:`medsec.backdoors.badmatch`, :mod:`medsec.backdoors.baddist`).

As in the reference code:

* the ResNet50 vision tower ends in ``fc = Linear(2048, 512, bias=False)``; the Swin-tiny
  tower (``microsoft/swin-tiny-patch4-window7-224``) has a ``Linear(768, 512, bias=False)``
  projection head; here every vision tower is a timm backbone (``num_classes=0``) followed by
  a bias-free projection, so ``resnet50`` and ``swin-tiny`` are the reference architectures
  and ``tiny-resnet`` / ``tiny-vit`` are small ones for offline runs;
* the text feature is the mean over hidden layers {1, 2, last} of the BERT output
  (``emilyalsentzer/Bio_ClinicalBERT``), averaged over tokens (medsec masks out padding,
  the reference averages over the padded length), then a ``Linear(768, 512, bias=False)``;
* ``logit_scale`` starts at ln(1 / 0.07) and is clamped to [0, ln 100].

Normalisation (mean/std) lives inside the model, so images are given in [0, 1]. Offline
(no model hub) the BERT vocabulary files are not available: :func:`word_tokenizer` builds a
word-level tokenizer with the ``tokenizers`` library from the sentences the model will see
(templates), wrapped as a ``transformers.PreTrainedTokenizerFast``.

Example:
    >>> import torch
    >>> m = medclip(vision="tiny-resnet", text="tiny-bert", sentences=["a neutrophil", "a platelet"], image_size=28)
    >>> m.encode_image(torch.rand(2, 3, 28, 28)).shape, m.encode_text(["a platelet"]).shape
    (torch.Size([2, 64]), torch.Size([1, 64]))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from medsec.errors import ConfigError, DataError, InputError
from medsec.registry import MODELS
from medsec.types import InputSpec
from medsec.validation import check_images

if TYPE_CHECKING:
    from transformers import BertModel

log = logging.getLogger(__name__)

# Hub names of the reference towers (used with pretrained=True).
BIO_CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"
VISION_PRESETS: dict[str, str] = {"resnet50": "resnet50", "swin-tiny": "swin_tiny_patch4_window7_224"}
MEDCLIP_MEAN, MEDCLIP_STD = (0.5862785803043838,), (0.27950088968644304,)  # the reference's grayscale stats
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
LOGIT_SCALE_MAX = math.log(100.0)


def word_tokenizer(sentences: Sequence[str], max_length: int = 32) -> Any:
    """A word-level BERT-style tokenizer ([CLS] words [SEP], lower case) fitted on ``sentences``.

    Built with the ``tokenizers`` library (WordLevel model, BERT normaliser and
    pre-tokeniser) and returned as a ``transformers.PreTrainedTokenizerFast``, the same
    interface as the hub's BERT tokenizer. Words outside ``sentences`` map to [UNK].
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = [str(s) for s in sentences]
    if not sentences:
        raise InputError("word_tokenizer needs at least one sentence to build its vocabulary")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=int(max_length))


def tokenizer_from_json(text: str, max_length: int) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(text), pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=int(max_length))


def vision_backbone(name: str, pretrained: bool, in_channels: int, image_size: int,
                    kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A timm backbone without classifier head (``num_features`` outputs).

    ``resnet50`` / ``swin-tiny`` are the reference towers; ``tiny-resnet`` (BasicBlock x
    (1, 1, 1, 1), widths 16-128) and ``tiny-vit`` (patch 4, width 64, depth 4, 4 heads) are
    the small ones; any other timm name is passed to ``timm.create_model``.
    """
    import timm

    kw = dict(kwargs or {})
    if name == "tiny-resnet":
        from timm.models.resnet import BasicBlock, ResNet

        args = {"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128), "stem_width": 16, **kw}
        return ResNet(block=BasicBlock,  # type: ignore[arg-type]  # timm annotates block as an instance; it takes the class
                      num_classes=0, in_chans=in_channels, layers=tuple(args.pop("layers")),
                      channels=tuple(args.pop("channels")), **args)
    if name == "tiny-vit":
        from timm.models.vision_transformer import VisionTransformer

        args = {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0, **kw}
        return VisionTransformer(img_size=image_size, num_classes=0, in_chans=in_channels, global_pool="avg", **args)
    arch = VISION_PRESETS.get(name, name)
    if "swin" in arch and "img_size" not in kw:
        kw["img_size"] = image_size
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=0, in_chans=in_channels, **kw)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            from medsec.registry import suggest

            raise ConfigError(f"unknown vision tower {name!r}.{suggest(arch, ['tiny-resnet', 'tiny-vit', *VISION_PRESETS])}"
                              " Use tiny-resnet, tiny-vit, resnet50, swin-tiny or a timm model name.") from exc
        raise


class MedCLIPVision(nn.Module):
    """Vision tower: normalisation, timm backbone, bias-free projection to ``embed_dim``.

    Args:
        backbone: a timm backbone without head (``num_features`` outputs).
        embed_dim: the shared embedding width.
        spec: the input contract (mean/std applied inside).
    """

    _mean: torch.Tensor  # (1, C, 1, 1) normalisation buffers
    _std: torch.Tensor

    def __init__(self, backbone: nn.Module, embed_dim: int, spec: InputSpec) -> None:
        super().__init__()
        self.backbone = backbone
        num_features = cast(int, backbone.num_features)  # every timm backbone has num_features
        self.projection = nn.Linear(int(num_features), int(embed_dim), bias=False)
        self.spec = spec
        c = spec.channels
        mean = torch.tensor(spec.mean if spec.mean is not None else (0.0,) * c).float().expand(c)
        std = torch.tensor(spec.std if spec.std is not None else (1.0,) * c).float().expand(c)
        self.register_buffer("_mean", mean.reshape(1, c, 1, 1).clone(), persistent=False)
        self.register_buffer("_std", std.reshape(1, c, 1, 1).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings (B, embed_dim) of images (B, C, H, W) in [0, 1]."""
        emb: torch.Tensor = self.projection(self.backbone((x - self._mean.to(x.dtype)) / self._std.to(x.dtype)))
        return emb


class MedCLIPText(nn.Module):
    """Text tower: BERT, mean of hidden layers {1, 2, last} over tokens, bias-free projection.

    Args:
        bert: a ``transformers.BertModel`` (>= 2 layers).
        embed_dim: the shared embedding width.
    """

    def __init__(self, bert: BertModel, embed_dim: int) -> None:
        super().__init__()
        self.bert = bert
        self.projection = nn.Linear(int(bert.config.hidden_size), int(embed_dim), bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hs = out.hidden_states
        h = torch.stack([hs[1], hs[2], hs[-1]]).mean(0)  # (B, L, H)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        emb: torch.Tensor = self.projection((h * m).sum(1) / m.sum(1).clamp_min(1.0))
        return emb


class MedCLIP(nn.Module):
    """Image and text towers in one embedding space with a learnable temperature.

    Args:
        vision: a :class:`MedCLIPVision`.
        text: a :class:`MedCLIPText`.
        tokenizer: a ``transformers`` tokenizer (hub BERT or :func:`word_tokenizer`).
        arch: the builder arguments of :func:`medclip` (stored in checkpoints to rebuild the model).
        max_length: token budget per sentence (reference: 77 for training).
        logit_scale_init: initial log temperature scale (reference ln(1/0.07)).
    """

    def __init__(self, vision: MedCLIPVision, text: MedCLIPText, tokenizer: Any, arch: dict[str, Any] | None = None, *,
                 max_length: int = 32, logit_scale_init: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        self.vision, self.text, self.tokenizer = vision, text, tokenizer
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.arch = dict(arch or {})
        self.max_length = int(max_length)
        self.tokenizer_json: str | None = None  # the offline tokenizer as built (set by :func:`medclip`)

    def serialized_tokenizer(self) -> str:
        """The tokenizer serialised by the ``tokenizers`` library (what a checkpoint stores)."""
        return self.tokenizer_json or self.tokenizer.backend_tokenizer.to_str()

    @property
    def spec(self) -> InputSpec:
        return self.vision.spec

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not len(texts):
            raise InputError("texts must be a non-empty list of strings")
        enc = self.tokenizer([str(t) for t in texts], padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        dev = self.logit_scale.device
        return {"input_ids": enc["input_ids"].to(dev), "attention_mask": enc["attention_mask"].to(dev)}

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of images in [0, 1]."""
        check_images(x, self.spec, name="images")
        return nn.functional.normalize(self.vision(x), dim=-1)

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.text(input_ids, attention_mask), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised sentence embeddings."""
        return self.encode_tokens(**self.tokenize(texts))

    def clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def logits(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """exp(logit_scale) * cosine similarities, images x texts."""
        return self.logit_scale.clamp(0.0, LOGIT_SCALE_MAX).exp() * img_emb @ txt_emb.t()

    def forward(self, x: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self.logits(self.encode_image(x), self.encode_text(texts))


@MODELS.register("medclip")
def medclip(vision: str = "resnet50", text: str = "bert", pretrained: bool = False, embed_dim: int | None = None,
            sentences: Sequence[str] | None = None, image_size: int = 224, in_channels: int = 3,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None, max_length: int = 32,
            vision_kwargs: dict[str, Any] | None = None, text_config: dict[str, Any] | None = None,
            text_model_id: str = BIO_CLINICAL_BERT, tokenizer_json: str | None = None,
            logit_scale_init: float = math.log(1 / 0.07)) -> MedCLIP:
    """Build a MedCLIP-style model.

    Args:
        vision: ``resnet50`` or ``swin-tiny`` (the reference towers), ``tiny-resnet``,
            ``tiny-vit`` or any timm model name.
        text: ``bert`` (Bio_ClinicalBERT architecture; hub weights and vocabulary with
            ``pretrained=True``) or ``tiny-bert`` (2 layers, width 64).
        pretrained: load the hub weights of both towers (needs network access).
        embed_dim: shared embedding size (default 512, 64 for ``tiny-*`` text towers).
        sentences: the sentences that fit the offline word-level tokenizer (needed unless
            ``pretrained`` or ``tokenizer_json``).
        image_size: model input size (the ViT's patch grid and Swin's windows depend on it).
        mean, std: normalisation inside the vision tower (default: MedCLIP's grayscale stats).
        text_config: ``transformers.BertConfig`` overrides for a random-weight text tower.
        tokenizer_json: a serialised tokenizer (from a checkpoint).
        logit_scale_init: initial log temperature scale (reference ln(1/0.07) for
            pretrained towers; with random-weight towers 0.0 avoids the collapse of all
            embeddings to one point in the first steps, see docs/badmatch.md).
    """
    from transformers import BertConfig, BertModel

    if int(image_size) < 8:
        raise InputError(f"image_size must be >= 8 pixels, got {image_size}")
    if text not in ("bert", "tiny-bert"):
        raise ConfigError(f"unknown text tower {text!r}; use 'bert' (Bio_ClinicalBERT) or 'tiny-bert'")
    if text == "tiny-bert" and pretrained:
        raise ConfigError("tiny-bert has no pretrained weights; use text: bert with pretrained: true")
    embed_dim = int(embed_dim or (64 if text == "tiny-bert" else 512))
    c = int(in_channels)
    m = tuple(mean) if mean is not None else MEDCLIP_MEAN * c
    s = tuple(std) if std is not None else MEDCLIP_STD * c
    spec = InputSpec(channels=c, mean=m, std=s, size=(int(image_size), int(image_size)))
    vis = MedCLIPVision(vision_backbone(vision, pretrained, c, int(image_size), vision_kwargs), embed_dim, spec)
    if pretrained:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(text_model_id)
            bert = BertModel.from_pretrained(text_model_id, add_pooling_layer=False)
        except OSError as exc:
            raise ConfigError(f"cannot load {text_model_id!r} from the model hub ({exc}); use pretrained: false with "
                              "sentences for an offline tokenizer") from exc
        tok_json = None
    else:
        if tokenizer_json is not None:
            tokenizer = tokenizer_from_json(tokenizer_json, max_length)
        elif sentences:
            tokenizer = word_tokenizer(sentences, max_length)
        else:
            raise InputError("an offline text tower needs `sentences` to build its word-level tokenizer "
                             "(BERT vocabulary files are not available offline)")
        tok_json = tokenizer.backend_tokenizer.to_str()
        base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128} \
            if text == "tiny-bert" else {}
        cfg = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=max(64, int(max_length)),
                         **{**base, **(text_config or {})})
        if cfg.num_hidden_layers < 2:
            raise ConfigError("the MedCLIP text feature averages hidden layers 1, 2 and last: use >= 2 layers")
        bert = BertModel(cfg, add_pooling_layer=False)
    arch = {"vision": vision, "text": text, "embed_dim": embed_dim, "image_size": int(image_size), "in_channels": c,
            "mean": list(m), "std": list(s), "max_length": int(max_length), "vision_kwargs": dict(vision_kwargs or {}),
            "text_config": dict(text_config or {}), "text_model_id": text_model_id, "pretrained": bool(pretrained),
            "logit_scale_init": float(logit_scale_init)}
    model = MedCLIP(vis, MedCLIPText(bert, embed_dim), tokenizer, arch=arch, max_length=max_length,
                    logit_scale_init=logit_scale_init)
    model.tokenizer_json = tok_json
    return model


def save_medclip(model: MedCLIP, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save weights, architecture and tokenizer to one safetensors file (atomically):
    :func:`medsec.models.save_checkpoint`."""
    from medsec.models.checkpoint import save_checkpoint

    return save_checkpoint(model, path, extra=extra)


def read_medclip_metadata(path: str | Path) -> dict[str, Any]:
    """The ``extra`` dict stored with a MedCLIP checkpoint."""
    from medsec.models.checkpoint import read_metadata

    return dict(read_metadata(path).get("extra") or {})


def load_medclip(path: str | Path, device: str | torch.device = "cpu") -> MedCLIP:
    """Rebuild a MedCLIP model from a checkpoint (:func:`medsec.models.load_checkpoint`, which
    also reads the files :func:`save_medclip` wrote before); a DataError for another family."""
    from medsec.models.checkpoint import load_checkpoint, read_metadata

    path = Path(path)
    if not path.is_file():
        raise DataError(f"MedCLIP checkpoint not found: {path}")
    family = read_metadata(path)["family"]
    if family != "medclip":
        raise DataError(f"{path} holds a {family} checkpoint, not a MedCLIP model (saved by save_medclip); load it "
                        "with medsec.models.load_checkpoint")
    return cast(MedCLIP, load_checkpoint(path, device))  # the family "medclip" is built as a MedCLIP
