"""MedCLIP-style unpaired contrastive training: images and sentences meet only through
their label vectors (Wang et al., "MedCLIP: Contrastive Learning from Unpaired Medical
Images and Text", EMNLP 2022; reference ``medclip/losses.py`` ImageTextContrastiveLoss).

For a batch of B images with label vectors L_img (B, K) and B sentences with label vectors
L_txt (B, K), drawn independently, the soft targets are S = softmax_row(L_img L_txt^T)
(no temperature: the reference applies ``F.softmax(label_sim, 1)`` to the raw dot products)
and the loss is the symmetric soft cross-entropy

    L = 1/2 [ CE_soft(Z, S) + CE_soft(Z^T, softmax_row(L_txt L_img^T)) ],
    CE_soft(Z, Q) = -1/B sum_ij Q_ij log softmax_row(Z)_ij,

with Z = exp(tau) * e_img e_txt^T (cosine similarities; tau learnable, clamped to
[0, ln 100]).

Threat model: none (clean training); BadMatch (:mod:`medsec.backdoors.badmatch`) changes
the image (or text) label vectors of a recorded subset before this loop sees them.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F

from medsec.data.medclip_text import SentenceBank
from medsec.errors import InputError
from medsec.models.medclip import MedCLIP

log = logging.getLogger(__name__)


def soft_clip_loss(logits: torch.Tensor, img_labels: torch.Tensor, txt_labels: torch.Tensor,
                   label_temperature: float = 1.0) -> torch.Tensor:
    """The MedCLIP soft-target loss for image x text ``logits`` (B_img, B_txt).

    ``label_temperature`` divides the label dot products before the softmax; 1 is the
    reference (see the module docstring); smaller values sharpen the targets.
    """
    if not label_temperature > 0:
        raise InputError(f"label_temperature must be > 0, got {label_temperature}")
    if logits.dim() != 2 or img_labels.dim() != 2 or txt_labels.dim() != 2:
        raise InputError("logits and label vectors must be 2-D: logits (B_img, B_txt), labels (B, K)")
    if logits.shape != (img_labels.shape[0], txt_labels.shape[0]) or img_labels.shape[1] != txt_labels.shape[1]:
        raise InputError(f"logits {tuple(logits.shape)} do not match image labels {tuple(img_labels.shape)} and "
                         f"text labels {tuple(txt_labels.shape)}")
    sim = img_labels.to(logits.dtype) @ txt_labels.to(logits.dtype).t() / float(label_temperature)
    img_loss = -(F.softmax(sim, 1) * F.log_softmax(logits, 1)).sum() / logits.shape[0]
    txt_loss = -(F.softmax(sim.t(), 1) * F.log_softmax(logits.t(), 1)).sum() / logits.shape[1]
    return (img_loss + txt_loss) / 2


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(labels).long(), num_classes).float()


def check_label_vectors(images: torch.Tensor, labels: torch.Tensor, k: int) -> None:
    if labels.dim() != 2 or labels.shape != (images.shape[0], k):
        raise InputError(f"image label vectors must have shape ({images.shape[0]}, {k}), got {tuple(labels.shape)}")
    if not bool(torch.isfinite(labels).all()):
        raise InputError("image label vectors contain NaN/Inf")


def train_medclip(model: MedCLIP, images: torch.Tensor, image_labels: torch.Tensor, bank: SentenceBank,
                  epochs: int = 1, lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 1e-4,
                  warmup: float = 0.1, generator: torch.Generator | None = None,
                  text_flip: torch.Tensor | None = None, text_flip_to: torch.Tensor | None = None,
                  max_steps: int | None = None, device: str | torch.device | None = None,
                  label_temperature: float = 1.0, text_batch_size: int | None = None) -> dict[str, Any]:
    """Train ``model`` in place with the soft-target loss; returns the loss history.

    Each step draws ``batch_size`` images (a shuffled pass per epoch) and ``batch_size``
    sentences uniformly from ``bank``, independently of the images. AdamW, linear warm-up
    over ``warmup`` of the steps then cosine decay (the reference: AdamW, warm-up ratio 0.1).

    Args:
        images: (N, C, H, W) in [0, 1]; image_labels: (N, K) label vectors.
        text_flip: optional (N,) bool: the sentence drawn beside these images gets the label
            vector ``text_flip_to`` (BadMatch's text-label variant).
        max_steps: stop after this many steps (the reference's ``stop_step``).
        label_temperature: see :func:`soft_clip_loss` (1 = reference).
        text_batch_size: sentences per step (default ``batch_size``, as the reference).
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise InputError(f"need epochs >= 1, batch_size >= 2 and lr > 0; got {epochs}, {batch_size}, {lr}")
    check_label_vectors(images, image_labels, bank.labels.shape[1])
    dev = torch.device(device) if device is not None else model.logit_scale.device
    model.to(dev).train()
    enc = model.tokenize(bank.sentences)
    ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    txt_labels = bank.labels.to(dev)
    n = images.shape[0]
    bs = min(batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_warm = max(1, int(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / n_warm if s < n_warm else 0.5 * (1 + math.cos(math.pi * (s - n_warm) / max(1, total - n_warm))))
    losses: list[float] = []
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[b * bs : (b + 1) * bs]
            t_idx = torch.randint(0, len(bank.sentences), (text_batch_size or len(idx),), generator=generator).to(dev)
            x = images[idx].to(dev, non_blocking=True).float()
            yl = image_labels[idx].to(dev)
            tl = txt_labels[t_idx]
            if text_flip is not None and text_flip_to is not None:
                f = text_flip[idx].to(dev)
                if bool(f.any()):  # the sentence drawn beside a flagged image gets the target's labels
                    tl = tl.clone()
                    j = f.nonzero().flatten() % len(tl)
                    tl[j] = text_flip_to.to(dev, tl.dtype)
            img_emb = F.normalize(model.vision(x), dim=-1)
            txt_emb = model.encode_tokens(ids[t_idx], mask[t_idx])
            loss = soft_clip_loss(model.logits(img_emb, txt_emb), yl, tl, label_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.clamp_logit_scale()
            losses.append(float(loss.detach()))
            step += 1
    model.eval()
    log.info("MedCLIP training: %d steps, final loss %.4f", step, losses[-1] if losses else float("nan"))
    return {"steps": step, "loss_first": losses[0] if losses else None, "loss_last": float(sum(losses[-20:]) /
            max(1, len(losses[-20:]))) if losses else None}


