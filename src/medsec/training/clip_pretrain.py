"""Contrastive pretraining of a small CLIP-style model on images with class captions, and
its zero-shot accuracy (Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021).

Threat model: not applicable (this trains the victim foundation model that the
prompt-learning backdoors of :mod:`medsec.backdoors.baple` then attack).

Captions are built from class names and templates ("a microscopy image of a {} blood
cell", ...). With only a few distinct captions per batch, the plain CLIP loss would treat
two images of the same class as negatives of each other's caption; medsec's loss is the
multi-positive form: every caption of the image's class is a positive (soft targets
spread evenly over them), in both directions (image -> captions, caption -> images).
All (class, template) captions are encoded once per step, so the text tower costs
C x T prompts per step whatever the batch size.

Example:
    >>> import medsec.data
    >>> from medsec.models.clip import SMALL_CONFIGS, open_clip_model
    >>> clip = open_clip_model(config=SMALL_CONFIGS["ViT-B-32"], image_size=28)
    >>> train = medsec.data.create("medmnist", flag="bloodmnist", split="train").take(64, torch.Generator().manual_seed(0))
    >>> history = pretrain_clip(clip, train, BLOOD_CLASS_NAMES, BLOOD_TEMPLATES, epochs=1, batch_size=32)
    >>> 0.0 <= zero_shot_accuracy(clip, train, BLOOD_CLASS_NAMES, BLOOD_TEMPLATES) <= 1.0
    True
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medsec.data.captioned import class_captions
from medsec.errors import DataError, InputError
from medsec.models.clip import ClipModel

log = logging.getLogger(__name__)

BLOOD_TEMPLATES = ("a microscopy image of a {} blood cell", "a blood smear showing a {}",
                   "a peripheral blood cell, {}", "a stained microscopy photo of a {}")
# BloodMNIST's class names, short enough for prompts (the official one for class 3 is a sentence)
BLOOD_CLASS_NAMES = ("basophil", "eosinophil", "erythroblast", "immature granulocyte", "lymphocyte", "monocyte",
                     "neutrophil", "platelet")


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The pretraining schedule: a linear warm-up over the first 5% of ``steps``, then cosine to 0."""
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))


def multi_positive_clip_loss(logits: torch.Tensor, image_group: torch.Tensor, caption_group: torch.Tensor) -> torch.Tensor:
    """The symmetric CLIP loss when several captions are true of an image.

    ``logits`` (B, K): scaled image-caption similarities of a batch against all K captions;
    ``image_group`` (B,) and ``caption_group`` (K,): every caption of an image's group is a
    positive, weighted equally. Image->text averages over the batch; text->image over the
    captions that have a positive in the batch.
    """
    pos = (image_group[:, None] == caption_group[None, :]).float()
    loss_i = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    pos_t = pos.T
    has = pos_t.sum(1) > 0
    loss_t = -(pos_t[has] / pos_t[has].sum(1, keepdim=True) * logits.T[has].log_softmax(1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def pretrain_clip(clip: ClipModel, dataset: Any, class_names: Sequence[str], templates: Sequence[str],
                  epochs: int = 4, lr: float = 1e-3, batch_size: int = 128, weight_decay: float = 0.1,
                  flip: bool = True, seed: int = 0) -> list[dict[str, float]]:
    """Train both towers of ``clip`` on ``dataset`` images with its class captions.

    AdamW, cosine schedule with a 5% linear warm-up, random horizontal/vertical flips.
    Returns one ``{"epoch", "loss", "time_s"}`` dict per epoch.
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise InputError(f"need epochs >= 1, batch_size >= 2, lr > 0; got {epochs}, {batch_size}, {lr}")
    if len(class_names) != dataset.num_classes:
        raise DataError(f"{len(class_names)} class names for a dataset of {dataset.num_classes} classes")
    g = torch.Generator().manual_seed(int(seed))
    images, labels = dataset.images, dataset.labels
    n, c, t = len(labels), len(class_names), len(templates)
    tokens = clip.tokenize(class_captions(class_names, templates))
    caption_class = torch.arange(c).repeat_interleave(t)
    clip.train()
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=weight_decay)
    sched = warmup_cosine(opt, epochs * math.ceil(n / batch_size))
    history = []
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x, y = _float(images[idx]), labels[idx]
            if flip:
                fh = torch.rand(len(idx), generator=g) < 0.5
                fv = torch.rand(len(idx), generator=g) < 0.5
                x = torch.where(fh[:, None, None, None], x.flip(-1), x)
                x = torch.where(fv[:, None, None, None], x.flip(-2), x)
            img = clip.encode_image(x, normalize=True)
            txt = clip.encode_text(tokens, normalize=True)
            logits = clip.logit_scale.clamp(max=100) * img @ txt.T  # (B, C*T)
            loss = multi_positive_clip_loss(logits, y, caption_class)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / n, "time_s": time.perf_counter() - t0})
        log.info("CLIP pretraining epoch %d: loss %.4f (%.1fs)", epoch + 1, total / n, history[-1]["time_s"])
    clip.eval()
    return history


@torch.no_grad()
def zero_shot_accuracy(clip: ClipModel, dataset: Any, class_names: Sequence[str], templates: Sequence[str],
                       batch_size: int = 512) -> float:
    """Accuracy of ``argmax_c cos(image, mean caption feature of class c)`` on ``dataset``."""
    was = clip.training
    clip.eval()
    c, t = len(class_names), len(templates)
    txt = clip.encode_text(clip.tokenize(class_captions(class_names, templates)), normalize=True)
    cls = F.normalize(txt.reshape(c, t, -1).mean(1), dim=-1)
    right = 0
    images, labels = dataset.images, dataset.labels
    for i in range(0, len(labels), batch_size):
        x = _float(images[i : i + batch_size])
        pred = (clip.encode_image(x, normalize=True) @ cls.T).argmax(1)
        right += int((pred == labels[i : i + batch_size]).sum())
    clip.train(was)
    return right / len(labels)


__all__ = ["BLOOD_TEMPLATES", "BLOOD_CLASS_NAMES", "class_captions", "multi_positive_clip_loss", "pretrain_clip",
           "warmup_cosine", "zero_shot_accuracy"]
