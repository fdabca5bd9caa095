"""Named training recipes whose models medsec's tests, benchmarks and docs share.

A recipe is a plain dict; the model it trains is a safetensors checkpoint named after a hash
of the dict. A recipe function loads the checkpoint that shipped with medsec
(:mod:`medsec.recipes.shipped`, the file of this exact recipe trained on this exact data),
else the one in its cache folder, and trains only when neither exists, so a changed recipe
never reuses a stale model and an unchanged one is trained once, by whoever regenerates the
shipped files (``make checkpoints``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from medsec.errors import ConfigError, DataError
from medsec.models.classifier import Classifier
from medsec.recipes.shipped import RECIPE_THREADS, locate, training_record

log = logging.getLogger(__name__)

# small_cnn width 32, 6 epochs, AdamW one-cycle lr 5e-3: ~0.95 on the BloodMNIST test split.
BLOODMNIST_RECIPE: dict[str, Any] = {"model": "small_cnn", "width": 32, "epochs": 6, "lr": 0.005,
                                     "batch_size": 128, "seed": 0}


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build models inside this block to draw their initial weights from ``seed``.

    Without it the weights come from the global RNG (PyTorch's, timm's and open_clip's
    initialisers all use it), whose state depends on what ran before (which tests, in which
    order), so two cold trainings of one recipe differed and the effect tests built on them
    varied between CI runs. The caller's RNG state is restored on exit.
    """
    from medsec.seeding import seeded

    with seeded(seed):
        yield


@contextmanager
def recipe_threads(recipe: dict[str, Any]) -> Iterator[None]:
    """Run the block with the recipe's intra-op thread count, its ``threads`` key (default
    :data:`~medsec.recipes.shipped.RECIPE_THREADS`), restored on exit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(recipe.get("threads", RECIPE_THREADS)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seeded_create(seed: int, name: str, **params: Any) -> Any:
    """``medsec.models.create(name, **params)`` with its initial weights drawn from ``seed``
    (:func:`seeded_init`)."""
    from medsec.models import create

    with seeded_init(seed):
        return create(name, **params)


def recipe_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of a recipe (the cache file name)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _blood_npz(root: str | Path) -> Path:
    path = Path(root) / "bloodmnist.npz"
    if not path.is_file():
        raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set MEDSEC_DATA")
    return path


def _prefix(r: dict[str, Any]) -> str:
    adv = r.get("adversarial")
    size = f"{r['size']}" if r.get("size") else ""
    return f"bloodmnist{size}" if adv is None else f"bloodmnist{size}-{adv['method']}"


def bloodmnist_classifier(root: str | Path, cache_dir: str | Path,
                          recipe: dict[str, Any] | None = None) -> Classifier:
    """The BloodMNIST small CNN of ``recipe`` (default :data:`BLOODMNIST_RECIPE`), loaded from
    :func:`bloodmnist_checkpoint`.

    Example:
        >>> model = bloodmnist_classifier("../shared/data/bloodmnist", ".medsec-cache")  # doctest: +SKIP
    """
    from medsec.models import load_checkpoint

    return cast(Classifier, load_checkpoint(bloodmnist_checkpoint(root, cache_dir, recipe)))  # a classifier checkpoint


def bloodmnist_checkpoint(root: str | Path, cache_dir: str | Path, recipe: dict[str, Any] | None = None) -> Path:
    """The checkpoint of the BloodMNIST small CNN of ``recipe`` (default :data:`BLOODMNIST_RECIPE`):
    the shipped file, else the one in ``cache_dir``, else trained on ``root/bloodmnist.npz`` and
    saved in ``cache_dir``.

    Besides the model and optimiser keys a recipe may set ``train_subset`` (train on a seeded
    subset of this many images), ``stem_pool`` (the network average-pools its input), ``size``
    (images resized to this side, e.g. 64 for SNAP) and ``adversarial`` (PGD-AT or TRADES
    parameters, :class:`~medsec.training.adversarial.AdversarialTraining`).
    """
    import torch

    import medsec.data
    from medsec.models import save_checkpoint
    from medsec.training.adversarial import AdversarialTraining
    from medsec.training.classifier import evaluate, train_classifier

    r = dict(BLOODMNIST_RECIPE if recipe is None else recipe)
    adv = r.get("adversarial")
    data = [Path(root) / "bloodmnist.npz"]
    path = locate(f"{_prefix(r)}-{recipe_key(r)}.safetensors", cache_dir, data)
    if path.is_file():
        return path
    _blood_npz(root)
    size = {"size": r["size"]} if r.get("size") else {}
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root), **size)
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(root), **size)
    if r.get("train_subset"):
        train = train.take(r["train_subset"], torch.Generator().manual_seed(r["seed"]))
    model = seeded_create(r["seed"], r["model"], num_classes=8, width=r["width"], stem_pool=r.get("stem_pool", 1),
                          classes=train.classes)
    log.info("training the BloodMNIST recipe %s into %s", r, path)
    with recipe_threads(r):
        train_classifier(model, train, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], seed=r["seed"],
                         adversarial=None if adv is None else AdversarialTraining(**adv))
        acc = evaluate(model, test)
    return save_checkpoint(model, path, extra={**training_record(r, data, metrics={"test_accuracy": acc}),
                                               "test_accuracy": acc})


# A BadNets backdoor in a BloodMNIST classifier: 3x3 checkerboard bottom-right on 5% of a
# 4,000-image training subset, all-to-one to class 0 (the detectors' test bed).
BADNETS_BLOODMNIST_RECIPE: dict[str, Any] = {"model": "small_cnn", "width": 16, "epochs": 4, "lr": 0.005,
                                             "batch_size": 128, "seed": 0, "train_subset": 4000,
                                             "trigger": {"name": "badnets", "size": 3, "position": "bottom-right"},
                                             "target": 0, "rate": 0.05}


def badnets_bloodmnist(root: str | Path, cache_dir: str | Path,
                       recipe: dict[str, Any] | None = None) -> tuple[Classifier, Any]:
    """A BloodMNIST classifier trained on a BadNets-poisoned subset, and the
    :class:`~medsec.backdoors.PoisonedDataset` it was trained on (rebuilt exactly from
    the recipe's seed; the model is the shipped checkpoint, else cached in ``cache_dir``)."""
    import torch

    import medsec.data
    from medsec.backdoors import PoisonedDataset, triggers
    from medsec.models import load_checkpoint, save_checkpoint
    from medsec.training.classifier import train_classifier

    r = dict(BADNETS_BLOODMNIST_RECIPE if recipe is None else recipe)
    _blood_npz(root)
    data = [Path(root) / "bloodmnist.npz"]
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root))
    train = train.take(r["train_subset"], torch.Generator().manual_seed(r["seed"]))
    trig = dict(r["trigger"])
    poisoned = PoisonedDataset(train, triggers.create(trig.pop("name"), **trig), target=r["target"], rate=r["rate"],
                               seed=r["seed"])
    path = locate(f"badnets-bloodmnist-{recipe_key(r)}.safetensors", cache_dir, data)
    if path.is_file():
        return cast(Classifier, load_checkpoint(path)), poisoned  # the recipe's classifier
    model = seeded_create(r["seed"], r["model"], num_classes=8, width=r["width"], classes=train.classes)
    log.info("training the BadNets BloodMNIST recipe %s into %s", r, path)
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(root))
    with recipe_threads(r):
        train_classifier(model, poisoned.dataset, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"],
                         seed=r["seed"])
        metrics = badnets_metrics(model.eval(), poisoned, test)
    save_checkpoint(model, path, extra=training_record(r, data, metrics=metrics))
    return model.eval(), poisoned


def badnets_metrics(model: Classifier, poisoned: Any, test: Any) -> dict[str, Any]:
    """Clean accuracy and attack success rate (non-target test images) of a BadNets model on ``test``."""
    from medsec.backdoors.metrics import backdoor_metrics
    from medsec.training.classifier import predict

    x, y = test.images, test.labels
    pred = predict(model, x, 512, "cpu")
    pred_trig = predict(model, poisoned.triggered(x), 512, "cpu")
    m = backdoor_metrics(pred, pred_trig, y, poisoned.test_targets(y), model.num_classes)
    return {"clean_accuracy": m["clean_accuracy"], "attack_success_rate": m["attack_success_rate"]}


# Adversarially trained BloodMNIST small CNNs (PGD-AT, Madry et al. 2018; TRADES, Zhang et al.
# 2019). Budgeted for the test suite: a
# 3,000-image subset, width 16, the input average-pooled 2x inside the network (stem_pool),
# 3 epochs, and a 2-step PGD (step 2.5 * eps / 2) at eps 4/255 L-inf; TRADES at beta 3.
PGD_AT_BLOODMNIST_RECIPE: dict[str, Any] = {"model": "small_cnn", "width": 16, "stem_pool": 2, "epochs": 3, "lr": 0.005,
                                            "batch_size": 128, "seed": 0, "train_subset": 3000,
                                            "adversarial": {"method": "pgd_at", "eps": 4 / 255, "steps": 2}}
TRADES_BLOODMNIST_RECIPE: dict[str, Any] = {**PGD_AT_BLOODMNIST_RECIPE,
                                            "adversarial": {"method": "trades", "eps": 4 / 255, "steps": 2, "beta": 3.0}}


def adversarial_bloodmnist(root: str | Path, cache_dir: str | Path, recipe: dict[str, Any] | None = None) -> Classifier:
    """A BloodMNIST small CNN adversarially trained by ``recipe`` (default
    :data:`PGD_AT_BLOODMNIST_RECIPE`; :data:`TRADES_BLOODMNIST_RECIPE` for TRADES), loaded
    from ``cache_dir`` or trained and cached there (:func:`bloodmnist_classifier`).

    Example:
        >>> model = adversarial_bloodmnist("../shared/data/bloodmnist", ".medsec-cache")  # doctest: +SKIP
    """
    r = dict(PGD_AT_BLOODMNIST_RECIPE if recipe is None else recipe)
    if not isinstance(r.get("adversarial"), dict):
        raise ConfigError("an adversarial recipe needs an 'adversarial' dict (method, eps, steps ...)")
    return bloodmnist_classifier(root, cache_dir, r)


# A small CLIP-style model (image tower: timm's test_resnet, a 4-stage ResNet with 16-96
# channels, average-pooled and linearly projected by open_clip's TimmModel, at 28 px; text
# transformer 2 layers, width 64, 32 tokens, open_clip's BPE vocabulary) pretrained
# contrastively on the BloodMNIST train split with class captions
# (medsec.training.clip_pretrain); the victim of the BAPLe tests and of
# configs/bloodmnist_baple.yaml. The image tower was a 3-layer width-64 ViT (patch 7) until
# BAPLe's measurements showed it nearly immune to universal 8/255 perturbations (docs/baple.md).
BLOODMNIST_CLIP_RECIPE: dict[str, Any] = {
    "config": {"embed_dim": 64,
               "vision_cfg": {"timm_model_name": "test_byobnet", "timm_model_pretrained": False, "timm_pool": "avg",
                              "timm_proj": "linear", "image_size": 28},
               "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
    "epochs": 5, "lr": 0.002, "batch_size": 128, "weight_decay": 0.1, "seed": 0}


def bloodmnist_clip(root: str | Path, cache_dir: str | Path,
                    recipe: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The BloodMNIST CLIP-style model of ``recipe`` (default :data:`BLOODMNIST_CLIP_RECIPE`)
    and its metadata (recipe, zero-shot test accuracy, training time): the shipped checkpoint,
    else the one in ``cache_dir``, else pretrained on ``root/bloodmnist.npz`` and saved there.

    The token embedding keeps only the rows of the caption tokens
    (:meth:`~medsec.models.clip.ClipModel.trim_vocabulary`; the checkpoint stores the non-zero
    rows only): exact on every text built from the class names and templates, and a 1.4 MB file
    instead of 14 MB."""
    import time

    import medsec.data
    from medsec.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from medsec.models.clip import open_clip_model
    from medsec.training.clip_pretrain import (
        BLOOD_CLASS_NAMES,
        BLOOD_TEMPLATES,
        class_captions,
        pretrain_clip,
        zero_shot_accuracy,
    )

    r = dict(BLOODMNIST_CLIP_RECIPE if recipe is None else recipe)
    data = [Path(root) / "bloodmnist.npz"]
    path = locate(f"bloodmnist-clip-{recipe_key(r)}.safetensors", cache_dir, data)
    if path.is_file():
        return load_checkpoint(path), read_metadata(path).get("extra") or {}
    _blood_npz(root)
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root))
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(root))
    with seeded_init(r["seed"]):
        clip = open_clip_model(config=r["config"])
    log.info("pretraining the BloodMNIST CLIP recipe into %s", path)
    t0 = time.perf_counter()
    with recipe_threads(r):
        history = pretrain_clip(clip, train, BLOOD_CLASS_NAMES, BLOOD_TEMPLATES, epochs=r["epochs"], lr=r["lr"],
                                batch_size=r["batch_size"], weight_decay=r["weight_decay"], seed=r["seed"])
        rows = clip.trim_vocabulary(class_captions(BLOOD_CLASS_NAMES, BLOOD_TEMPLATES))
        zs = zero_shot_accuracy(clip, test, BLOOD_CLASS_NAMES, BLOOD_TEMPLATES)
    meta = {**training_record(r, data, metrics={"zero_shot_accuracy": zs}),
            "train_time_s": time.perf_counter() - t0, "final_loss": history[-1]["loss"],
            "zero_shot_accuracy": zs, "vocabulary_rows": rows,
            "templates": list(BLOOD_TEMPLATES), "class_names": list(BLOOD_CLASS_NAMES)}
    save_checkpoint(clip, path, extra=meta)
    return clip.eval(), meta


# The SNAP validation model (configs/bloodmnist_snap.yaml, tests of SNAP on real microscopy):
# BloodMNIST upsampled to 64 px, width 16, the input average-pooled 2x inside the network.
SNAP_BLOODMNIST_RECIPE: dict[str, Any] = {"model": "small_cnn", "width": 16, "stem_pool": 2, "size": 64, "epochs": 3,
                                          "lr": 0.005, "batch_size": 128, "seed": 0, "threads": 1}

# A MONAI UNet on Kvasir-SEG at 64 px: 600 training images (a seeded permutation's positions
# 200-799; positions 0-47 are the held-out test images), Dice+CE, 6 epochs, one intra-op thread.
KVASIR_UNET_RECIPE: dict[str, Any] = {"model": "monai_unet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
                                      "norm": "batch", "size": 64, "n_train": 600, "epochs": 6, "lr": 0.01,
                                      "batch_size": 16, "seed": 0, "threads": 1}
KVASIR_TEST_SIZE = 48


def kvasir_split(root: str | Path, recipe: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(train, test) Kvasir-SEG subsets of :data:`KVASIR_UNET_RECIPE` (``root``: the kvasir-seg-256 folder)."""
    import torch

    import medsec.data

    r = dict(KVASIR_UNET_RECIPE if recipe is None else recipe)
    if not (Path(root) / "images").is_dir():
        raise DataError(f"Kvasir-SEG not found at {root} (expected images/ and masks/); set MEDSEC_DATA")
    ds = medsec.data.create("kvasir_seg", root=str(root), size=r["size"])
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(r["seed"]))
    return ds.subset(perm[200 : 200 + r["n_train"]]), ds.subset(perm[:KVASIR_TEST_SIZE])


def kvasir_unet(root: str | Path, cache_dir: str | Path, recipe: dict[str, Any] | None = None) -> Any:
    """The Kvasir-SEG UNet of ``recipe`` (default :data:`KVASIR_UNET_RECIPE`; ``root``: the
    kvasir-seg-256 folder): shipped, cached, or trained and saved in ``cache_dir``."""

    from medsec.models import create, load_checkpoint, save_checkpoint
    from medsec.training.segmentation import evaluate_segmenter, train_segmenter

    r = dict(KVASIR_UNET_RECIPE if recipe is None else recipe)
    data = [Path(root)]
    path = locate(f"kvasir-unet-{recipe_key(r)}.safetensors", cache_dir, data)
    if path.is_file():
        return load_checkpoint(path)
    train, test = kvasir_split(root, r)
    with seeded_init(r["seed"]):
        seg = create(r["model"], channels=r["channels"], strides=r["strides"], norm=r["norm"])
    with recipe_threads(r):
        train_segmenter(seg, train, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], seed=r["seed"])
        dice = float(evaluate_segmenter(seg, test)["dice"])
    save_checkpoint(seg, path, extra=training_record(r, data, metrics={"test_dice": dice}))
    return seg.eval()


# The recipes whose checkpoints ship with medsec, as ``(data root, cache folder) -> model``;
# they are listed by name in ``medsec.registry.RECIPES``.
def shipped_bloodmnist_cnn(top: Path, cache: Path) -> Classifier:
    """The BloodMNIST CNN (:data:`BLOODMNIST_RECIPE`)."""
    return bloodmnist_classifier(top / "bloodmnist", cache, BLOODMNIST_RECIPE)


def shipped_bloodmnist_pgd_at(top: Path, cache: Path) -> Classifier:
    """The PGD adversarially trained BloodMNIST CNN (:data:`PGD_AT_BLOODMNIST_RECIPE`)."""
    return bloodmnist_classifier(top / "bloodmnist", cache, PGD_AT_BLOODMNIST_RECIPE)


def shipped_bloodmnist_trades(top: Path, cache: Path) -> Classifier:
    """The TRADES-trained BloodMNIST CNN (:data:`TRADES_BLOODMNIST_RECIPE`)."""
    return bloodmnist_classifier(top / "bloodmnist", cache, TRADES_BLOODMNIST_RECIPE)


def shipped_bloodmnist64_snap(top: Path, cache: Path) -> Classifier:
    """The 64-px BloodMNIST CNN of the SNAP tests (:data:`SNAP_BLOODMNIST_RECIPE`)."""
    return bloodmnist_classifier(top / "bloodmnist", cache, SNAP_BLOODMNIST_RECIPE)


def shipped_bloodmnist_badnets(top: Path, cache: Path) -> Any:
    """The BadNets-poisoned BloodMNIST CNN."""
    return badnets_bloodmnist(top / "bloodmnist", cache)


def shipped_kvasir_unet(top: Path, cache: Path) -> Any:
    """The Kvasir-SEG U-Net."""
    return kvasir_unet(top / "kvasir-seg-256", cache)


def shipped_bloodmnist_clip(top: Path, cache: Path) -> Any:
    """The BloodMNIST CLIP model."""
    return bloodmnist_clip(top / "bloodmnist", cache)


def shipped_medical_clip(top: Path, cache: Path) -> Any:
    """The medical CLIP model (BUSI, Kvasir-SEG and BloodMNIST captions)."""
    from medsec.recipes.clip import medical_clip

    return medical_clip(cache, root=top)
