"""The prompt_backdoor kind's run: one training run per (method, target) cell on the run
services; the kind, its threat model and an example config are described in
:mod:`medsec.experiments.prompt_backdoor`.

Driver and workers (:mod:`medsec.runs.executor`): the driver (:func:`run`) loads the CLIP
recipe (training it into the cache folder only when no checkpoint exists) and, when prompt
methods start from Clean PL's learnt context, trains Clean PL once before the other cells and
saves its context and record in ``clean_ctx.npz`` beside ``results.json`` (a rerun reuses the
file). Each job is one (method, target) cell: a worker's :func:`setup` loads the model, the
data and that file (it never trains), and :func:`work` trains and scores the cell, seeded from
its id alone; the Clean PL cell hands back the driver's record.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsec.backdoors.prompt_harness import METHODS
from medsec.errors import ConfigError, DataError
from medsec.experiments.prompt_backdoor.config import NUM_CLASSES, PromptBackdoorConfig
from medsec.runs.context import CellContext, RunContext
from medsec.runs.executor import Job

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


def _recipe_checkpoint(cfg: PromptBackdoorConfig, root: Path, cache: Path) -> Path:
    """Where the config's CLIP recipe keeps its model (shipped, or in ``cache``); the recipe
    trains into it when it does not exist."""
    from medsec.recipes.builtin import recipe_key
    from medsec.recipes.shipped import locate

    if cfg.model.recipe == "medical_clip":
        from medsec.data import data_root
        from medsec.recipes.clip import MEDICAL_CLIP_RECIPE

        top = data_root()
        return locate(f"medical-clip-{recipe_key(MEDICAL_CLIP_RECIPE)}.safetensors", cache,
                      [top / "busi-256", top / "kvasir-seg-256", top / "bloodmnist" / "bloodmnist.npz"])
    from medsec.recipes.builtin import BLOODMNIST_CLIP_RECIPE

    return locate(f"bloodmnist-clip-{recipe_key(BLOODMNIST_CLIP_RECIPE)}.safetensors", cache,
                  [root / "bloodmnist.npz"])


def _load(cfg: PromptBackdoorConfig, on_worker: bool = False) -> tuple[Any, Any, Any, list[str], dict[str, Any]]:
    train, test, root = _load_data(cfg)
    cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else Path(__file__).resolve().parents[4] / ".medsec-cache"
    model_info: dict[str, Any]
    if on_worker and cfg.model.recipe is not None:
        path = _recipe_checkpoint(cfg, root, cache)
        if not path.is_file():
            raise DataError(f"{path} (the {cfg.model.recipe} model the driver loaded) is missing on this worker; put "
                            "model.cache_dir on storage every worker reads")
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


@dataclass(frozen=True)
class CellSpec:
    """One cell: a method and its target (None for the clean methods)."""

    method: str
    target: int | None

    @property
    def id(self) -> str:
        return _cell_id(self.method, self.target)


@dataclass
class State:
    """What every cell needs: the harness (model, few-shot and test sets) and, when prompt
    methods start from it, Clean PL's context and record (prepared by the driver)."""

    harness: Any
    targets: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    clean_record: dict[str, Any] | None = None


CLEAN_CTX = "clean_ctx.npz"
# config keys Clean PL's training does not depend on (a grid widened by methods or targets keeps it)
NOT_CLEAN_KEYS = ("executor", "name", "methods", "targets", "finetune")


def _clean_key(cfg: PromptBackdoorConfig) -> str:
    """The config of Clean PL's training as text, stored with its context (a file from another
    config is not reused)."""
    data = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NOT_CLEAN_KEYS}
    return json.dumps(data, sort_keys=True)


def _needs_clean(cfg: PromptBackdoorConfig) -> bool:
    """Whether prompt methods start from Clean PL's context (so it is prepared before the cells)."""
    return cfg.baple.ctx_init == "clean" and any((m.endswith("_pl") and m != "clean_pl") or m == "baple"
                                                 for m in cfg.methods)


def _prepare(cfg: PromptBackdoorConfig, ctx: CellContext) -> State:
    """Load the model and the data and build the harness (no training)."""
    from medsec.backdoors.baple import BapleSettings
    from medsec.backdoors.prompt_harness import Harness, few_shot

    clip, train_full, test, names, model_info = _load(cfg, on_worker=ctx.on_worker)
    settings = BapleSettings(**cfg.baple.model_dump())
    fewshot = few_shot(train_full, settings.shots, torch.Generator().manual_seed(cfg.seed))
    targets = _targets(cfg, train_full.num_classes)
    harness = Harness(clip, fewshot, test, names, settings, ft_lr=cfg.finetune.lr, ft_epochs=cfg.finetune.epochs,
                      ft_weight_decay=cfg.finetune.weight_decay, seed=cfg.seed, cache=cfg.cache_features)
    info = {"model": model_info, "settings": settings.to_dict(),
            "data": {"name": cfg.data.name, "classes": names, "n_fewshot": len(fewshot), "n_test": len(test),
                     "image_shape": list(fewshot.image_shape), "shots": settings.shots, "targets": targets}}
    return State(harness, targets, info)


def _load_clean(state: State, path: Path, cfg: PromptBackdoorConfig) -> bool:
    """Read Clean PL's context and record from ``path`` into ``state``; False when absent or
    written for another config."""
    if not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as z:
        if "record" not in z.files or "config" not in z.files or str(z["config"]) != _clean_key(cfg):
            return False
        state.harness.clean_ctx = torch.from_numpy(z["ctx"])
        state.clean_record = json.loads(str(z["record"]))
    return True


def _prepare_clean(state: State, ctx: RunContext) -> None:
    """The driver's step before the cells: Clean PL's context, from ``clean_ctx.npz`` or
    trained once (seeded like the ``clean_pl`` cell) and saved there."""
    from medsec.io import atomic_save_npz

    path = ctx.out / CLEAN_CTX
    if _load_clean(state, path, ctx.cfg):
        log.info("resuming: reusing Clean PL's context (%s)", path)
        return
    with ctx.cell("clean_pl"):
        record = {**state.harness.run("clean_pl"), "id": "clean_pl"}
    state.clean_record = record
    atomic_save_npz(path, ctx=state.harness.clean_ctx.numpy(), record=np.array(json.dumps(record)),
                    config=np.array(_clean_key(ctx.cfg)))


def setup(ctx: CellContext) -> State:
    """A worker's state: the model, the data and the driver's Clean PL context, loaded once."""
    state = _prepare(ctx.cfg, ctx)
    if _needs_clean(ctx.cfg) and not _load_clean(state, ctx.out / CLEAN_CTX, ctx.cfg):
        raise DataError(f"{ctx.out / CLEAN_CTX} (Clean PL's context, which the driver prepares) is missing on this "
                        "worker (or was written for another config); put the run folder on storage every worker reads")
    return state


def work(state: State, cell: CellSpec, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """Run one job (one cell): ``[(cell id, record)]``. The Clean PL cell of a run whose
    prompt methods start from it is the driver's prepared record."""
    cid = cell.id
    if cell.method == "clean_pl" and state.clean_record is not None:
        return [(cid, dict(state.clean_record))]
    with ctx.cell(cid):
        record = {**state.harness.run(cell.method, cell.target), "id": cid}
    if cell.method == "baple" and cell.target == state.targets[0]:
        ctx.save_npz("examples.npz", **_examples(state.harness, cell.target))
    return [(cid, record)]


def run(ctx: RunContext) -> None:
    """Run every (method, target) cell into ``ctx.store`` (resuming a partial run)."""
    from medsec.backdoors.prompt_harness import average_over_targets

    cfg: PromptBackdoorConfig = ctx.cfg
    store = ctx.store
    t0 = time.perf_counter()
    state = _prepare(cfg, ctx)
    cells = [CellSpec(m, t) for m in _methods(cfg) for t in ([None] if m.startswith("clean") else state.targets)]
    ids = [c.id for c in cells]
    store.update(**state.info, table=store.results.get("table") or {})
    store.plan(ids)
    if _needs_clean(cfg) and any(store.done(i) is None for i in ids):
        _prepare_clean(state, ctx)
    ctx.execute([Job(c.id, (c.id,), c) for c in cells], setup=setup, work=work, state=state)
    store.update(table=average_over_targets(list(store.cells.values())), runtime_s=time.perf_counter() - t0)


def _examples(harness: Any, target: int) -> dict[str, Any]:
    """Clean, BadNets, WaNet, FIBA and BAPLe-triggered versions of a few test images (for the
    report), after the BAPLe run for ``target``."""
    k = min(4, len(harness.test))
    x = harness.test.images[:k]
    arrays = {"clean": x.numpy()}
    for name in ("badnets", "wanet", "fiba"):
        trig, params = harness.trigger(name)
        arrays[name] = trig.apply(x, params).numpy()
    out_b = harness.last
    arrays["baple"] = out_b["trigger"].apply(out_b["poisoned"].triggered(x)).numpy()
    arrays["delta"] = out_b["trigger"].delta.detach().numpy()
    return {**arrays, "target": np.array(target)}


__all__ = ["CellSpec", "State", "plan", "run", "setup", "work"]
