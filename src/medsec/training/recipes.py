"""Named training recipes whose models medsec's tests and benchmarks share.

A recipe is a plain dict; the model it trains is cached as a safetensors checkpoint
named after a hash of the dict, so tests, benchmarks and docs that use the same recipe
train it once per machine (and a changed recipe never reuses a stale model).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsec.errors import ConfigError, DataError
from medsec.models.classifier import Classifier

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
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def seeded_create(seed: int, name: str, **params: Any) -> Any:
    """``medsec.models.create(name, **params)`` with its initial weights drawn from ``seed``
    (:func:`seeded_init`)."""
    from medsec.models import create

    with seeded_init(seed):
        return create(name, **params)


def recipe_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of a recipe (the cache file name)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def bloodmnist_classifier(root: str | Path, cache_dir: str | Path,
                          recipe: dict[str, Any] | None = None) -> Classifier:
    """The BloodMNIST small CNN of ``recipe`` (default :data:`BLOODMNIST_RECIPE`),
    loaded from ``cache_dir`` or trained on ``root/bloodmnist.npz`` and cached there.

    Besides the model and optimiser keys a recipe may set ``train_subset`` (train on a seeded
    subset of this many images), ``stem_pool`` (the network average-pools its input) and
    ``adversarial`` (PGD-AT or TRADES parameters, :class:`~medsec.training.adversarial.AdversarialTraining`).

    Example:
        >>> model = bloodmnist_classifier("../shared/data/bloodmnist", ".medsec-cache")  # doctest: +SKIP
    """
    import torch

    import medsec.data
    from medsec.models import load_checkpoint, save_checkpoint
    from medsec.training.adversarial import AdversarialTraining
    from medsec.training.classifier import evaluate, train_classifier

    r = dict(BLOODMNIST_RECIPE if recipe is None else recipe)
    adv = r.get("adversarial")
    prefix = "bloodmnist" if adv is None else f"bloodmnist-{adv['method']}"
    path = Path(cache_dir) / f"{prefix}-{recipe_key(r)}.safetensors"
    if path.is_file():
        return load_checkpoint(path)
    if not (Path(root) / "bloodmnist.npz").is_file():
        raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set MEDSEC_DATA")
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root))
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(root))
    if r.get("train_subset"):
        train = train.take(r["train_subset"], torch.Generator().manual_seed(r["seed"]))
    model = seeded_create(r["seed"], r["model"], num_classes=8, width=r["width"], stem_pool=r.get("stem_pool", 1),
                          classes=train.classes)
    log.info("training the BloodMNIST recipe %s into %s", r, path)
    train_classifier(model, train, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], seed=r["seed"],
                     adversarial=None if adv is None else AdversarialTraining(**adv))
    save_checkpoint(model, path, extra={"recipe": r, "test_accuracy": evaluate(model, test)})
    return model.eval()


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
    the recipe's seed; the model is cached in ``cache_dir``)."""
    import torch

    import medsec.data
    from medsec.backdoors import PoisonedDataset, triggers
    from medsec.models import load_checkpoint, save_checkpoint
    from medsec.training.classifier import train_classifier

    r = dict(BADNETS_BLOODMNIST_RECIPE if recipe is None else recipe)
    if not (Path(root) / "bloodmnist.npz").is_file():
        raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set MEDSEC_DATA")
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root))
    train = train.take(r["train_subset"], torch.Generator().manual_seed(r["seed"]))
    trig = dict(r["trigger"])
    poisoned = PoisonedDataset(train, triggers.create(trig.pop("name"), **trig), target=r["target"], rate=r["rate"],
                               seed=r["seed"])
    path = Path(cache_dir) / f"badnets-bloodmnist-{recipe_key(r)}.safetensors"
    if path.is_file():
        return load_checkpoint(path), poisoned
    model = seeded_create(r["seed"], r["model"], num_classes=8, width=r["width"], classes=train.classes)
    log.info("training the BadNets BloodMNIST recipe %s into %s", r, path)
    train_classifier(model, poisoned.dataset, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], seed=r["seed"])
    save_checkpoint(model, path, extra={"recipe": {k: str(v) for k, v in r.items()}})
    return model.eval(), poisoned


# Adversarially trained BloodMNIST small CNNs (issue 9). Budgeted for the test suite: a
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
    and its metadata (recipe, zero-shot test accuracy, training time), loaded from
    ``cache_dir`` or pretrained on ``root/bloodmnist.npz`` and cached there."""
    import time

    import medsec.data
    from medsec.models.clip import load_clip, open_clip_model, read_clip_metadata
    from medsec.training.clip_pretrain import BLOOD_CLASS_NAMES, BLOOD_TEMPLATES, pretrain_clip, zero_shot_accuracy

    r = dict(BLOODMNIST_CLIP_RECIPE if recipe is None else recipe)
    path = Path(cache_dir) / f"bloodmnist-clip-{recipe_key(r)}.safetensors"
    if path.is_file():
        return load_clip(path), read_clip_metadata(path)
    if not (Path(root) / "bloodmnist.npz").is_file():
        raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set MEDSEC_DATA")
    train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root))
    test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(root))
    with seeded_init(r["seed"]):
        clip = open_clip_model(config=r["config"])
    log.info("pretraining the BloodMNIST CLIP recipe into %s", path)
    t0 = time.perf_counter()
    history = pretrain_clip(clip, train, BLOOD_CLASS_NAMES, BLOOD_TEMPLATES, epochs=r["epochs"], lr=r["lr"],
                            batch_size=r["batch_size"], weight_decay=r["weight_decay"], seed=r["seed"])
    meta = {"recipe": r, "train_time_s": time.perf_counter() - t0, "final_loss": history[-1]["loss"],
            "zero_shot_accuracy": zero_shot_accuracy(clip, test, BLOOD_CLASS_NAMES, BLOOD_TEMPLATES),
            "templates": list(BLOOD_TEMPLATES), "class_names": list(BLOOD_CLASS_NAMES)}
    clip.save(path, extra=meta)
    return clip.eval(), meta
