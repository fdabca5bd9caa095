"""CoOp prompt learning on a frozen CLIP-style model (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022), with cached image features.

Threat model: not applicable by itself (a training mode); BAPLe (:mod:`medsec.backdoors.baple`)
is the attacker who controls this training and learns a trigger alongside the prompt.

The prompt of class c is ``[SOS] ctx_1 ... ctx_M <name_c> . [EOS]``: M (16) context vectors
in the token-embedding space, shared by all classes (CoOp's generic context, CSC = False),
with the class name at the end. Both encoders stay frozen; only ``ctx`` receives gradients.
Scores are ``logit_scale * cos(f_I(x), f_T(t_c))``.

Speed: with frozen encoders, the image feature of an unchanged training image never
changes, so :func:`train_coop` encodes every training image once (``cache=True``) and
re-encodes, at each step, only the samples whose pixels depend on a learnt parameter (the
poisoned samples of BAPLe, whose trigger delta is being learnt). ``cache=False`` is the
naive loop (every batch image encoded at every step), kept to measure the speedup and to
check that both give the same prompt. Augmentation is off in both (a cached feature is
that of the un-augmented image); BAPLe's code uses random resized crops and flips.

Example:
    >>> from medsec.models.clip import SMALL_CONFIGS, open_clip_model
    >>> clip = open_clip_model(config=SMALL_CONFIGS["ViT-B-32"], image_size=32)
    >>> prompt = PromptLearner(clip, ["basophil", "eosinophil"], generator=torch.Generator().manual_seed(0))
    >>> images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    >>> result = train_coop(clip, prompt, images, labels, epochs=2, batch_size=4)
    >>> predict_prompt(clip, prompt, images).shape
    torch.Size([8])
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from medsec.errors import ConfigError, InputError
from medsec.models.clip import ClipModel

log = logging.getLogger(__name__)


class PromptLearner(nn.Module):
    """M learnable context vectors shared by the classes, class name at the end (CoOp).

    Args:
        clip: the frozen CLIP-style model.
        class_names: one name per class (put at the end of each prompt).
        n_ctx: number of context vectors M (CoOp and BAPLe: 16).
        init: ``"random"`` (N(0, 0.02^2), CoOp's default) or a tensor (M, width) to start from
            (e.g. the context of a clean CoOp run, as BAPLe's code does).
        generator: draws the random initialisation.
    """

    tokens: torch.Tensor  # (C, L) token ids of the class prompts (buffer)
    prefix: torch.Tensor  # (C, 1, width) start-token embeddings (buffer)
    suffix: torch.Tensor  # (C, L - 1 - n_ctx, width) class-name and end embeddings (buffer)

    def __init__(self, clip: ClipModel, class_names: Sequence[str], n_ctx: int = 16,
                 init: str | torch.Tensor = "random", generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_ctx < 1:
            raise InputError(f"n_ctx must be >= 1, got {n_ctx}")
        if not class_names:
            raise InputError("prompt learning needs at least one class name")
        self.clip = [clip]  # not a submodule: its weights are not the prompt's parameters
        self.class_names, self.n_ctx = [str(c) for c in class_names], int(n_ctx)
        placeholder = " ".join(["X"] * self.n_ctx)
        tokens = clip.tokenize([f"{placeholder} {name}." for name in self.class_names])
        x_id = int(clip.tokenize(["X"])[0, 1])
        if not bool((tokens[:, 1 : 1 + self.n_ctx] == x_id).all()):
            raise ConfigError("the tokenizer does not give one token per context placeholder 'X'; "
                              "prompt learning needs a start token then one token per 'X'")
        ends = clip.tokenize([f"{placeholder} {name}." for name in self.class_names])
        if bool((ends[:, -1] != 0).any()):
            longest = max(self.class_names, key=len)
            raise ConfigError(f"{self.n_ctx} context tokens plus the class name {longest!r} do not fit the "
                              f"model's {tokens.shape[1]} text tokens; shorten the class names or use fewer n_ctx")
        with torch.no_grad():
            emb = clip.token_embedding(tokens)
        width = emb.shape[-1]
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", emb[:, 1 + self.n_ctx :].clone(), persistent=False)
        if isinstance(init, torch.Tensor):
            if tuple(init.shape) != (self.n_ctx, width):
                raise InputError(f"init context must have shape ({self.n_ctx}, {width}), got {tuple(init.shape)}")
            ctx = init.detach().clone().float()
        elif init == "random":
            ctx = torch.randn((self.n_ctx, width), generator=generator) * 0.02
        else:
            raise InputError(f"init must be 'random' or a context tensor, got {init!r}")
        self.ctx = nn.Parameter(ctx)

    def embeddings(self) -> torch.Tensor:
        """The prompt token embeddings (C, L, width) with the learnt context in place."""
        c = self.prefix.shape[0]
        return torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(c, -1, -1), self.suffix], dim=1)

    def text_features(self) -> torch.Tensor:
        """Normalised class text features (C, D)."""
        clip = self.clip[0]
        return clip.encode_text_embeddings(self.embeddings(), self.tokens, normalize=True)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * cos`` of normalised image features (B, D) with every class prompt."""
        return self.clip[0].logit_scale.detach() * image_features @ self.text_features().T


class LearnableTrigger(Protocol):
    """What :func:`train_coop` takes as the trigger of ``learnable``: images in, images out,
    and a ``step()`` that updates its parameters from their gradient (BAPLe's noise)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def step(self) -> None: ...


@dataclass
class CoopResult:
    """History (one dict per epoch), wall time and the count of image encodings."""

    history: list[dict[str, Any]] = field(default_factory=list)
    runtime_s: float = 0.0
    images_encoded: int = 0


def freeze(clip: ClipModel) -> None:
    """Freeze both encoders (eval mode, no parameter gradients)."""
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)


@torch.no_grad()
def encode_images(clip: ClipModel, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Normalised image features (N, D) of images (N, C, H, W) in [0, 1], without gradients."""
    out = [clip.encode_image(images[i : i + batch_size].float(), normalize=True) for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def _schedule(epochs: int, steps_per_epoch: int, lr: float, warmup_epochs: int,
              warmup_lr: float) -> Callable[[int], float]:
    warm = warmup_epochs * steps_per_epoch
    total = max(1, epochs * steps_per_epoch - warm)

    def factor(step: int) -> float:
        if step < warm:
            return warmup_lr / lr
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / total))

    return factor


def train_coop(clip: ClipModel, prompt: PromptLearner, images: torch.Tensor, labels: torch.Tensor, *,
               epochs: int = 50, batch_size: int = 16, lr: float = 0.02, momentum: float = 0.9,
               weight_decay: float = 5e-4, warmup_epochs: int = 1, warmup_lr: float = 1e-5,
               learnable: tuple[torch.Tensor, LearnableTrigger] | None = None, cache: bool = True,
               generator: torch.Generator | None = None) -> CoopResult:
    """Learn the prompt context by SGD on CE over ``images`` (N, C, H, W) and ``labels`` (N,).

    Args:
        learnable: optional ``(indices, trigger)``: the images at ``indices`` pass through
            ``trigger`` (an ``nn.Module`` with learnable parameters, e.g. BAPLe's noise) before
            encoding; after each batch that holds any of them, ``trigger.step()`` updates it
            from the gradient on its parameters (clearing it or not is the trigger's choice).
        cache: encode the other images once (True) or every step (False, the naive loop).

    The schedule is BAPLe's: ``warmup_epochs`` at constant ``warmup_lr``, then cosine from ``lr``.
    """
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise InputError(f"images (N, C, H, W) and labels (N,) must match, got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    n_cls = len(prompt.class_names)
    if int(labels.min()) < 0 or int(labels.max()) >= n_cls:
        raise InputError(f"labels must be class indices in 0..{n_cls - 1}")
    freeze(clip)
    n = len(labels)
    is_learnt = torch.zeros(n, dtype=torch.bool)
    trigger: LearnableTrigger | None = None
    if learnable is not None:
        idx, trigger = learnable
        is_learnt[idx] = True
    t0 = time.perf_counter()
    encoded = 0
    feats = None
    if cache:
        keep = (~is_learnt).nonzero().flatten()
        feats = torch.zeros(n, clip.embed_dim)
        if len(keep):
            feats[keep] = encode_images(clip, images[keep])
        encoded += len(keep)
    opt = torch.optim.SGD([prompt.ctx], lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(epochs, steps, lr, warmup_epochs, warmup_lr))
    result = CoopResult()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total, right = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            learnt = is_learnt[idx]
            if feats is not None:
                f = feats[idx]
                if trigger is not None and learnt.any():  # (images are learnt only with a trigger)
                    f = f.clone()
                    f[learnt] = clip.encode_image(trigger(images[idx[learnt]]), normalize=True)
                    encoded += int(learnt.sum())
            else:
                x = images[idx].float()
                if trigger is not None and learnt.any():
                    x = x.clone()
                    x[learnt] = trigger(x[learnt])
                f = clip.encode_image(x, normalize=True)
                encoded += len(idx)
            logits = prompt.logits(f)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)  # the trigger's gradient is its own to clear (step())
            loss.backward()
            opt.step()
            if trigger is not None and learnt.any():
                trigger.step()
            sched.step()
            total += loss.item() * len(idx)
            right += int((logits.argmax(1) == labels[idx]).sum())
        result.history.append({"epoch": epoch + 1, "loss": total / n, "train_accuracy": right / n})
    result.runtime_s = time.perf_counter() - t0
    result.images_encoded = encoded
    log.debug("CoOp: %d epochs in %.1fs, %d image encodings", epochs, result.runtime_s, encoded)
    return result


@torch.no_grad()
def predict_prompt(clip: ClipModel, prompt: PromptLearner, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes (N,) of images under the learnt prompt."""
    text = prompt.text_features()
    preds = [(encode_images(clip, images[i : i + batch_size]) @ text.T).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(preds)


__all__ = ["PromptLearner", "CoopResult", "train_coop", "predict_prompt", "encode_images", "freeze"]
