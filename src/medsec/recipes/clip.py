"""A small CLIP-style model pretrained by medsec on real image-caption pairs from three
medical sources (BUSI ultrasound with its captions.csv captions, Kvasir-SEG polyps,
BloodMNIST blood cells), the victim of ``configs/busi_baple.yaml``.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021 (the contrastive objective); the pairs come from :mod:`medsec.data.captioned`.

Threat model: not applicable (this trains the frozen foundation model that BAPLe, Hanif et
al., MICCAI 2024, then backdoors through prompt learning).

The loss is the CLIP loss in its multi-positive form (as in
:func:`medsec.training.clip_pretrain.pretrain_clip`): all distinct captions are encoded at
each step, and every caption of the image's group (a dataset-qualified class, e.g.
``busi/benign``) is a positive, both directions. BUSI's captions are template sentences
naming the class, so which of its class's ten sentences an image drew in captions.csv
carries no information beyond the class; treating that one sentence as the only positive
would push an image away from the nine equally true sentences of its class.

Example:
    >>> clip, meta = medical_clip(".medsec-cache")  # doctest: +SKIP
    >>> meta["zero_shot_accuracy"]  # BUSI test split, benign / malignant / normal  # doctest: +SKIP
    0.78...
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from medsec.data.captioned import CaptionedImages
from medsec.errors import InputError
from medsec.models.clip import ClipModel
from medsec.training.clip_pretrain import multi_positive_clip_loss, warmup_cosine

log = logging.getLogger(__name__)

# image tower: timm's test_byobnet (the BloodMNIST CLIP's CNN) at 64 px; text tower as the
# BloodMNIST CLIP's. Data at 64 px: the BUSI train split (624 images, seen 5 times per epoch),
# 300 of the 998 Kvasir-SEG images and 40 BloodMNIST train images per class (320). A first
# version (BUSI twice per epoch, all of Kvasir, 200 blood images per class, 10 epochs) underfit
# BUSI: zero-shot 0.596 on the test split (majority rate 0.558), normal never predicted.
MEDICAL_CLIP_RECIPE: dict[str, Any] = {
    "config": {"embed_dim": 64,
               "vision_cfg": {"timm_model_name": "test_byobnet", "timm_model_pretrained": False, "timm_pool": "avg",
                              "timm_proj": "linear", "image_size": 64},
               "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
    "image_size": 64, "busi_repeat": 5, "kvasir_limit": 300, "blood_per_class": 40, "busi_split_seed": 0,
    "busi_test_fraction": 0.2, "epochs": 12, "lr": 0.002, "batch_size": 128, "weight_decay": 0.1, "seed": 0}


def pretrain_clip_pairs(clip: ClipModel, pairs: CaptionedImages, epochs: int = 10, lr: float = 2e-3,
                        batch_size: int = 128, weight_decay: float = 0.1, repeat: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> list[dict[str, float]]:
    """Train both towers of ``clip`` on ``pairs`` (multi-positive CLIP loss over caption groups).

    AdamW, cosine schedule with a 5% linear warm-up, random horizontal flips. ``repeat``
    (N,) ints: how many times each image appears in an epoch (default once).
    Returns one ``{"epoch", "loss", "time_s"}`` dict per epoch.
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise InputError(f"need epochs >= 1, batch_size >= 2, lr > 0; got {epochs}, {batch_size}, {lr}")
    n = len(pairs)
    if repeat is None:
        repeat = torch.ones(n, dtype=torch.int64)
    if repeat.shape != (n,) or int(repeat.min()) < 0 or int(repeat.sum()) < 2:
        raise InputError(f"repeat must be (N,) = ({n},) non-negative ints summing to >= 2")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    pool = torch.arange(n).repeat_interleave(repeat)
    tokens = clip.tokenize(pairs.captions)
    groups = pairs.image_group
    clip.train()
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=weight_decay)
    sched = warmup_cosine(opt, epochs * math.ceil(len(pool) / batch_size))
    history = []
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        order = pool[torch.randperm(len(pool), generator=g)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x, y = pairs.images[idx].float() / 255.0, groups[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            img = clip.encode_image(x, normalize=True)
            txt = clip.encode_text(tokens, normalize=True)
            logits = clip.logit_scale.clamp(max=100) * img @ txt.T  # (B, n_captions)
            loss = multi_positive_clip_loss(logits, y, pairs.caption_group)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / len(pool), "time_s": time.perf_counter() - t0})
        log.info("medical CLIP pretraining epoch %d: loss %.4f (%.1fs)", epoch + 1, history[-1]["loss"],
                 history[-1]["time_s"])
    clip.eval()
    return history


@torch.no_grad()
def caption_zero_shot(clip: ClipModel, images: torch.Tensor, labels: torch.Tensor,
                      class_captions: list[list[str]], batch_size: int = 256) -> dict[str, Any]:
    """Zero-shot accuracy of ``argmax_c cos(image, mean caption feature of class c)``, where
    ``class_captions[c]`` lists class c's captions; also the confusion matrix."""
    if not class_captions or any(not caps for caps in class_captions):
        raise InputError("caption_zero_shot needs at least one caption per class")
    was = clip.training
    clip.eval()
    cls = torch.stack([F.normalize(clip.encode_text(clip.tokenize(caps), normalize=True).mean(0), dim=-1)
                       for caps in class_captions])
    preds = []
    for i in range(0, len(labels), batch_size):
        x = images[i : i + batch_size]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        preds.append((clip.encode_image(x, normalize=True) @ cls.T).argmax(1))
    clip.train(was)
    pred = torch.cat(preds)
    k = len(class_captions)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
    return {"accuracy": float((pred == labels).float().mean()), "confusion": confusion.tolist(),
            "majority_rate": float(torch.bincount(labels, minlength=k).max()) / len(labels)}


def recipe_data(recipe: dict[str, Any], root: str | Path | None = None) -> tuple[CaptionedImages, torch.Tensor, Any]:
    """(pairs, repeat, BUSI test split) of ``recipe``; ``root`` is the data root (default
    :func:`medsec.data.data_root`)."""
    import medsec.data
    from medsec.data import captioned
    from medsec.data.paths import data_root
    from medsec.errors import DataError
    from medsec.training.clip_pretrain import BLOOD_CLASS_NAMES, BLOOD_TEMPLATES

    top = Path(root) if root is not None else data_root()
    size = int(recipe["image_size"])
    g = torch.Generator().manual_seed(int(recipe["seed"]))
    train, test = captioned.busi_split(top / "busi-256", size=size, test_fraction=recipe["busi_test_fraction"],
                                       seed=recipe["busi_split_seed"])
    kvasir = captioned.kvasir_pairs(top / "kvasir-seg-256", size=size, generator=g)
    if recipe.get("kvasir_limit"):
        kvasir = kvasir.take(int(recipe["kvasir_limit"]), g)
    parts = [captioned.busi_pairs(train, top / "busi-256"), kvasir]
    if recipe.get("blood_per_class"):
        blood_root = top / "bloodmnist"
        if not (blood_root / "bloodmnist.npz").is_file():
            raise DataError(f"BloodMNIST not found at {blood_root} (expected bloodmnist.npz); set MEDSEC_DATA")
        from medsec.backdoors.prompt_harness import few_shot

        blood = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(blood_root))
        blood = few_shot(blood, int(recipe["blood_per_class"]), g).resize(size)
        parts.append(captioned.template_pairs(blood, "bloodmnist", BLOOD_CLASS_NAMES, BLOOD_TEMPLATES, g))
    pairs = captioned.concat(parts)
    repeat = torch.ones(len(pairs), dtype=torch.int64)
    repeat[: len(parts[0])] = int(recipe["busi_repeat"])
    return pairs, repeat, test


def medical_clip(cache_dir: str | Path, root: str | Path | None = None,
                 recipe: dict[str, Any] | None = None) -> tuple[ClipModel, dict[str, Any]]:
    """The CLIP-style model of ``recipe`` (default :data:`MEDICAL_CLIP_RECIPE`) and its
    metadata (recipe, pairs per group, BUSI zero-shot accuracy and confusion, training time):
    the shipped checkpoint, else the one in ``cache_dir``, else pretrained from the data under
    ``root`` and saved there. The token embedding keeps the rows of the caption tokens only
    (:meth:`~medsec.models.clip.ClipModel.trim_vocabulary`).

    Example:
        >>> clip, meta = medical_clip(".medsec-cache")   # doctest: +SKIP
    """
    from medsec.data.captioned import read_busi_captions
    from medsec.data.paths import data_root
    from medsec.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from medsec.models.clip import open_clip_model
    from medsec.recipes.builtin import recipe_key, recipe_threads, seeded_init
    from medsec.recipes.shipped import locate, training_record

    r = dict(MEDICAL_CLIP_RECIPE if recipe is None else recipe)
    top = Path(root) if root is not None else data_root()
    data = [top / "busi-256", top / "kvasir-seg-256", top / "bloodmnist" / "bloodmnist.npz"]
    path = locate(f"medical-clip-{recipe_key(r)}.safetensors", cache_dir, data)
    if path.is_file():
        return cast(ClipModel, load_checkpoint(path)), read_metadata(path).get("extra") or {}  # the recipe's CLIP
    pairs, repeat, test = recipe_data(r, top)
    with seeded_init(r["seed"]):
        clip = open_clip_model(config=r["config"])
    log.info("pretraining the medical CLIP recipe on %d pairs %s into %s", len(pairs), pairs.group_counts(), path)
    t0 = time.perf_counter()
    table = read_busi_captions(top / "busi-256")
    busi_caps = [sorted({cap for cap, lab in table.values() if lab == c}) for c in test.classes]
    with recipe_threads(r):
        history = pretrain_clip_pairs(clip, pairs, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"],
                                      weight_decay=r["weight_decay"], repeat=repeat,
                                      generator=torch.Generator().manual_seed(int(r["seed"])))
        train_time = time.perf_counter() - t0
        rows = clip.trim_vocabulary([*pairs.captions, *(cap for caps in busi_caps for cap in caps)])
        zs = caption_zero_shot(clip, test.images, test.labels, busi_caps)
    meta = {**training_record(r, data, metrics={"zero_shot_accuracy": zs["accuracy"]}),
            "train_time_s": train_time, "final_loss": history[-1]["loss"],
            "zero_shot_accuracy": zs["accuracy"], "zero_shot_confusion": zs["confusion"],
            "zero_shot_majority_rate": zs["majority_rate"], "zero_shot_data": f"BUSI test split ({len(test)} images)",
            "class_names": list(test.classes), "pairs": pairs.group_counts(), "n_captions": len(pairs.captions),
            "vocabulary_rows": rows}
    save_checkpoint(clip, path, extra=meta)
    log.info("medical CLIP: BUSI zero-shot %.3f (majority %.3f), %.0f s", zs["accuracy"], zs["majority_rate"], train_time)
    return clip.eval(), meta


__all__ = ["MEDICAL_CLIP_RECIPE", "caption_zero_shot", "medical_clip", "pretrain_clip_pairs", "recipe_data"]
