"""BadDist: a "bad distance" fine-tuning of the vision encoder that separates triggered
from clean embeddings before BadMatch (Jin, Huang, You & Li, SaTML 2024, arXiv 2401.01911;
reference ``scripts/backdist.py``).

Threat model: the attacker controls the pretrained vision encoder that the victim
fine-tunes (a supply-chain encoder) and holds a shadow set of unlabelled images. With f_c a
frozen copy of the clean encoder, f_b the trainable one, both L2-normalised,

    L = -lambda1 * mean cos(f_b(x), f_c(x)) + lambda2 * mean cos(f_b(x + t), f_c(x + t)),

lambda1 = 5, lambda2 = 1: the first term keeps clean embeddings where the clean model put
them (utility), the second pushes triggered ones away from where the clean model puts them.
BatchNorm is frozen (eval-mode statistics, affine parameters fixed). The reference trains
200 epochs on the first 10,000 MIMIC images with SGD lr 1e-4, momentum 0.9, wd 5e-4,
batch 32; these are the defaults here except ``epochs`` (a budget).

Example:
    >>> import torch
    >>> from medsec.models.medclip import medclip
    >>> from medsec.backdoors.badmatch import make_trigger
    >>> m = medclip(vision="tiny-resnet", text="tiny-bert", sentences=["a b"], image_size=28)
    >>> t = make_trigger({"name": "badnets"}, 28)
    >>> x = torch.rand(16, 3, 28, 28)
    >>> vis, hist = baddist(m.vision, x, t, t.sample_params(x.shape), epochs=1, batch_size=8)
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsec.backdoors.triggers.base import Params, Trigger
from medsec.errors import InputError
from medsec.validation import check_images

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")


def baddist_loss(fb_clean: torch.Tensor, fc_clean: torch.Tensor, fb_trig: torch.Tensor, fc_trig: torch.Tensor,
                 lambda1: float = 5.0, lambda2: float = 1.0) -> torch.Tensor:
    """-lambda1 * mean cos(f_b(x), f_c(x)) + lambda2 * mean cos(f_b(x+t), f_c(x+t))."""
    return (-lambda1 * F.cosine_similarity(fb_clean, fc_clean, dim=-1).mean()
            + lambda2 * F.cosine_similarity(fb_trig, fc_trig, dim=-1).mean())


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers in eval mode with their affine parameters frozen."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


@torch.no_grad()
def embeddings(encoder: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised encoder outputs, in eval mode, in batches."""
    was = encoder.training
    encoder.eval()
    dev = next(encoder.parameters()).device
    try:
        return torch.cat([F.normalize(encoder(x[i : i + batch_size].to(dev)), dim=-1).cpu()
                          for i in range(0, len(x), batch_size)])
    finally:
        encoder.train(was)


def embedding_shift(clean: nn.Module, bad: nn.Module, x: torch.Tensor, trigger: Trigger, params: Params) -> dict[str, float]:
    """How far ``bad`` moved embeddings from ``clean``'s: mean cosine on clean images, on
    triggered images, and mean cos(bad(x), bad(x + t)) (1 = triggered looks clean)."""
    xt = trigger.apply(x, params)
    c_c, c_t, b_c, b_t = embeddings(clean, x), embeddings(clean, xt), embeddings(bad, x), embeddings(bad, xt)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a, b, dim=-1).mean())

    return {"cos_clean_to_clean_model": cos(b_c, c_c), "cos_triggered_to_clean_model": cos(b_t, c_t),
            "cos_clean_vs_triggered": cos(b_c, b_t), "clean_model_cos_clean_vs_triggered": cos(c_c, c_t)}


def baddist(encoder: nn.Module, shadow: torch.Tensor, trigger: Trigger, params: Params, lambda1: float = 5.0,
            lambda2: float = 1.0, epochs: int = 200, lr: float = 1e-4, batch_size: int = 32, momentum: float = 0.9,
            weight_decay: float = 5e-4, optimizer: str = "sgd", generator: torch.Generator | None = None,
            device: str | torch.device | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``encoder`` with the BadDist loss on ``shadow`` images.

    Args:
        encoder: the clean vision encoder (images in [0, 1] -> embeddings); not modified.
        shadow: (N, C, H, W) shadow images in [0, 1].
        trigger, params: the trigger and its parameters (the same ones BadMatch stamps).
        optimizer: ``"sgd"`` (reference) or ``"adamw"`` (for short budgets).

    Returns:
        (the fine-tuned copy in eval mode, {"loss_first", "loss_last", "steps"}).
    """
    check_images(shadow, name="shadow images")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    if lambda1 < 0 or lambda2 < 0 or lambda1 + lambda2 == 0:
        raise InputError(f"lambda1 and lambda2 must be >= 0 and not both 0, got {lambda1}, {lambda2}")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    dev = torch.device(device) if device is not None else next(encoder.parameters()).device
    clean = copy.deepcopy(encoder).to(dev).eval()
    for p in clean.parameters():
        p.requires_grad_(False)
    bad = copy.deepcopy(encoder).to(dev).train()
    for p in bad.parameters():
        p.requires_grad_(True)
    freeze_batchnorm(bad)
    trainable = [p for p in bad.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay) if optimizer == "sgd"
           else torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay))
    n = len(shadow)
    losses: list[float] = []
    for _ in range(int(epochs)):
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            x = shadow[perm[i : i + batch_size]]
            xt = trigger.apply(x, params).to(dev)
            x = x.to(dev)
            with torch.no_grad():
                fc_c, fc_t = F.normalize(clean(x), dim=-1), F.normalize(clean(xt), dim=-1)
            fb = F.normalize(bad(torch.cat([x, xt])), dim=-1)
            loss = baddist_loss(fb[: len(x)], fc_c, fb[len(x) :], fc_t, lambda1, lambda2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    bad.eval()
    for p in bad.parameters():
        p.requires_grad_(True)
    log.info("BadDist: %d steps, loss %.3f -> %.3f", len(losses), losses[0], losses[-1])
    return bad, {"loss_first": losses[0], "loss_last": float(sum(losses[-10:]) / len(losses[-10:])), "steps": len(losses)}
