"""The prompt_backdoor kind's run: one training run per (method, target) cell on the run
services; the kind, its threat model and an example config are described in
:mod:`medsec.experiments.prompt_backdoor`.

Clean PL's learnt context, which the prompt methods start from, is saved beside
``results.json`` in ``clean_ctx.npz``; a resumed run reloads it (or learns it again when the
file is gone), so every finished cell is kept.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsec.backdoors.prompt_harness import METHODS
from medsec.errors import ConfigError, DataError
from medsec.experiments.prompt_backdoor.config import NUM_CLASSES, PromptBackdoorConfig
from medsec.runs.context import RunContext

log = logging.getLogger(__name__)

def _targets(cfg: PromptBackdoorConfig, num_classes: int) -> list[int]:
    if cfg.targets == "all":
        return list(range(num_classes))
    bad = [t for t in cfg.targets if not 0 <= t < num_classes]
    if bad or not cfg.targets:
        raise ConfigError(f"targets must be class indices in 0..{num_classes - 1} (or 'all'), got {cfg.targets}")
    return list(dict.fromkeys(cfg.targets))


def _load_data(cfg: PromptBackdoorConfig) -> tuple[Any, Any, Path]:
    import medsec.data
    from medsec.data import data_root

    if cfg.data.name == "busi":
        from medsec.data.captioned import busi_root, busi_split

        root = busi_root(cfg.data.root)
        train, test = busi_split(root, size=cfg.data.image_size or 64)
    else:
        root = Path(cfg.data.root) if cfg.data.root else data_root() / "bloodmnist"
        if not (root / "bloodmnist.npz").is_file():
            raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set data.root or MEDSEC_DATA")
        train = medsec.data.create("medmnist", flag="bloodmnist", split="train", root=str(root))
        test = medsec.data.create("medmnist", flag="bloodmnist", split="test", root=str(root))
        if cfg.data.image_size is not None and cfg.data.image_size != train.image_shape[-1]:
            train, test = train.resize(cfg.data.image_size), test.resize(cfg.data.image_size)
    if cfg.data.test_size is not None and cfg.data.test_size < len(test):
        test = test.take(cfg.data.test_size, torch.Generator().manual_seed(cfg.seed))
    return train, test, root


def _load(cfg: PromptBackdoorConfig) -> tuple[Any, Any, Any, list[str], dict[str, Any]]:
    train, test, root = _load_data(cfg)
    cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else Path(__file__).resolve().parents[4] / ".medsec-cache"
    model_info: dict[str, Any]
    if cfg.model.recipe == "medical_clip":
        from medsec.recipes.clip import MEDICAL_CLIP_RECIPE, medical_clip

        clip, meta = medical_clip(cache)
        names = list(train.classes) if cfg.data.name == "busi" else _blood_names()
        model_info = {**meta, "recipe": "medical_clip", "recipe_params": MEDICAL_CLIP_RECIPE}
    elif cfg.model.recipe == "bloodmnist_clip":
        from medsec.recipes.builtin import BLOODMNIST_CLIP_RECIPE, bloodmnist_clip

        clip, meta = bloodmnist_clip(root, cache)
        names = _blood_names()
        model_info = {**meta, "recipe": "bloodmnist_clip", "recipe_params": BLOODMNIST_CLIP_RECIPE}
    else:
        from medsec.models import create

        kwargs = {"pretrained": cfg.model.pretrained} if cfg.model.name.startswith("open_clip:") else {}  # type: ignore[union-attr]
        clip = create(cfg.model.name, **kwargs)  # type: ignore[arg-type]
        names = list(train.classes)
        model_info = {"name": cfg.model.name, "pretrained": cfg.model.pretrained}
    if cfg.data.class_names is not None:
        if len(cfg.data.class_names) != train.num_classes:
            raise ConfigError(f"data.class_names has {len(cfg.data.class_names)} names for {train.num_classes} classes")
        names = list(cfg.data.class_names)
    return clip, train, test, names, model_info


def _blood_names() -> list[str]:
    from medsec.training.clip_pretrain import BLOOD_CLASS_NAMES

    return list(BLOOD_CLASS_NAMES)


def _cell_id(method: str, target: int | None) -> str:
    return method if target is None else f"{method}-t{target}"


def _methods(cfg: PromptBackdoorConfig) -> list[str]:
    """The methods run, Clean PL first when prompt methods start from its context."""
    methods = list(cfg.methods)
    needs_clean = cfg.baple.ctx_init == "clean" and any(m.endswith("_pl") or m == "baple" for m in methods)
    if needs_clean and "clean_pl" not in methods:
        methods.insert(0, "clean_pl")
    return sorted(methods, key=lambda m: (m != "clean_pl", METHODS.index(m)))


def plan(cfg: PromptBackdoorConfig, num_classes: int | None = None) -> list[str]:
    """The cell ids: one per (method, target); the clean methods have no target."""
    targets = _targets(cfg, num_classes or NUM_CLASSES[cfg.data.name])
    return [_cell_id(m, t) for m in _methods(cfg) for t in ([None] if m.startswith("clean") else targets)]


def run(ctx: RunContext) -> None:
    """Run every (method, target) cell into ``ctx.store`` (resuming a partial run)."""
    from medsec.backdoors.baple import BapleSettings
    from medsec.backdoors.prompt_harness import Harness, average_over_targets, few_shot
    from medsec.io import atomic_save_npz

    cfg: PromptBackdoorConfig = ctx.cfg
    store, out = ctx.store, ctx.out
    clip, train_full, test, names, model_info = _load(cfg)
    settings = BapleSettings(**cfg.baple.model_dump())
    fewshot = few_shot(train_full, settings.shots, torch.Generator().manual_seed(cfg.seed))
    targets = _targets(cfg, train_full.num_classes)
    harness = Harness(clip, fewshot, test, names, settings, ft_lr=cfg.finetune.lr, ft_epochs=cfg.finetune.epochs,
                      ft_weight_decay=cfg.finetune.weight_decay, seed=cfg.seed, cache=cfg.cache_features)
    ctx_path = out / "clean_ctx.npz"
    ids = plan(cfg, train_full.num_classes)
    if store.done("clean_pl") is not None and ctx_path.is_file():
        with np.load(ctx_path, allow_pickle=False) as z:
            harness.clean_ctx = torch.from_numpy(z["ctx"])
    elif store.done("clean_pl") is not None:  # its context is lost: learn it again
        store.cells.pop("clean_pl")
    store.update(model=model_info, settings=settings.to_dict(),
                 data={"name": cfg.data.name, "classes": names, "n_fewshot": len(fewshot), "n_test": len(test),
                       "image_shape": list(fewshot.image_shape), "shots": settings.shots, "targets": targets},
                 table=store.results.get("table") or {})
    store.plan(ids)
    t0 = time.perf_counter()
    for method in _methods(cfg):
        for target in ([None] if method.startswith("clean") else targets):
            cid = _cell_id(method, target)
            if store.done(cid) is not None:
                continue
            rec = harness.run(method, target)
            if method == "clean_pl":
                atomic_save_npz(ctx_path, ctx=harness.clean_ctx.numpy())  # type: ignore[union-attr]
            if method == "baple" and target == targets[0]:
                _save_examples(harness, out, target)
            store.results["table"] = average_over_targets([*store.cells.values(), {**rec, "id": cid}])
            store.put(cid, {**rec, "id": cid})
    store.update(runtime_s=time.perf_counter() - t0)


def _save_examples(harness: Any, out: Path, target: int) -> None:
    """Clean, BadNets, WaNet, FIBA and BAPLe-triggered versions of a few test images (for the report)."""
    from medsec.io import atomic_save_npz

    k = min(4, len(harness.test))
    x = harness.test.images[:k]
    arrays = {"clean": x.numpy()}
    for name in ("badnets", "wanet", "fiba"):
        trig, params = harness.trigger(name)
        arrays[name] = trig.apply(x, params).numpy()
    out_b = harness.last
    arrays["baple"] = out_b["trigger"].apply(out_b["poisoned"].triggered(x)).numpy()
    arrays["delta"] = out_b["trigger"].delta.detach().numpy()
    atomic_save_npz(out / "examples.npz", **arrays, target=np.array(target))


__all__ = ["plan", "run"]
