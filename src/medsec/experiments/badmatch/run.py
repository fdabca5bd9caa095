"""Experiment kind ``badmatch``: BadMatch and BadDist-assisted BadMatch against MedCLIP-style
unpaired contrastive training, swept over poison rate x trigger x vision tower (Jin et al.,
"Backdoor Attack on Unpaired Medical Image-Text Foundation Models: A Pilot Study on
MedCLIP", SaTML 2024, arXiv 2401.01911).

Threat model: data poisoning of the image side of the training corpus (BadMatch), optionally
with a supply-chain vision encoder fine-tuned by the attacker (BadDist).

Pipeline per vision tower: (1) clean label-based contrastive pre-training on the whole
training set (the stand-in for the released MedCLIP weights), or a saved model given as
``backbones[].checkpoint``; (2) a clean fine-tune on the fine-tune set (``data.finetune_limit``
images of the training set, all by default; the CA reference); (3) per trigger, BadDist on a shadow set (the val split, disjoint from training)
starting from the pre-trained vision tower; (4) per trigger x poison rate x method, the
same fine-tune on the BadMatch-poisoned fine-tune set, starting from the pre-trained model
(``badmatch``) or from it with the BadDist vision tower (``baddist+badmatch``); zero-shot
CA and ASR (both ways) over ``n_samplings`` prompt draws.

Driver and workers: the driver (:func:`run`) does (1)-(3) once, before the cells, and saves
the models under ``models/`` of the run folder (``<backbone>-pretrained.safetensors``,
``<backbone>-<trigger>-baddist.safetensors``); each (4) is a job (:class:`CellJob`) that a
worker runs with :func:`work` on the state :func:`setup` loads from the run folder (the data
and those models; a worker never trains them). A cell poisons its own fine-tune set, so its
numbers depend only on the config, its id and the prepared models. Every finished cell is
saved to results.json at once; a rerun with the same config skips finished cells and reuses
the saved models, and so does a rerun with a config that only widens the sweep (more rates or
methods, backbones appended).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsec.errors import ConfigError, DataError
from medsec.experiments.badmatch.config import Backbone, BadMatchConfig, TrainSection
from medsec.runs.context import CellContext, RunContext
from medsec.runs.executor import Job

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data
def load_data(cfg: BadMatchConfig) -> tuple[Any, Any, Any]:
    """(train, test, shadow) image datasets at the model input size."""
    import medsec.data
    from medsec.data import data_root

    d = cfg.data
    g = torch.Generator().manual_seed(cfg.seed)
    if d.dataset == "bloodmnist":
        root = Path(d.root) if d.root else data_root() / "bloodmnist"
        if not (root / "bloodmnist.npz").is_file():
            raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set data.root or MEDSEC_DATA")
        train, test, shadow = (medsec.data.create("medmnist", flag="bloodmnist", split=s, root=str(root))
                               for s in ("train", "test", "val"))
    else:
        root = Path(d.root) if d.root else data_root() / "busi-256"
        if not root.is_dir():
            raise DataError(f"BUSI not found at {root} (expected benign/, malignant/, normal/); set data.root")
        from medsec.data.image_folder import image_folder

        full = image_folder(root=str(root), size=d.image_size, name="busi")
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed))
        n_test, n_shadow = len(full) // 5, len(full) // 5
        test, shadow, train = (full.subset(perm[:n_test]), full.subset(perm[n_test : n_test + n_shadow]),
                               full.subset(perm[n_test + n_shadow :]))
    if train.image_shape[-1] != d.image_size:
        train, test, shadow = (ds.resize(d.image_size) for ds in (train, test, shadow))
    if d.train_limit:
        train = train.take(d.train_limit, g)
    if d.test_limit:
        test = test.take(d.test_limit, g)
    if d.shadow_limit:
        shadow = shadow.take(d.shadow_limit, g)
    return train, test, shadow


def target_index(cfg: BadMatchConfig, classes: list[str]) -> int:
    t = cfg.data.target
    if isinstance(t, int):
        if not 0 <= t < len(classes):
            raise ConfigError(f"data.target {t} is not a class index 0..{len(classes) - 1}")
        return t
    for i, c in enumerate(classes):
        if c == t:
            return i
    from medsec.registry import suggest

    raise ConfigError(f"data.target {t!r} is not a class of {cfg.data.dataset}.{suggest(t, classes)} "
                      f"Classes: {', '.join(classes)}")


# --------------------------------------------------------------------------- helpers
def _build(cfg: BadMatchConfig, backbone: Backbone) -> Any:
    from medsec.data.medclip_text import vocabulary_sentences
    from medsec.models.medclip import medclip

    m = cfg.model
    from medsec.recipes.builtin import seeded_init

    with seeded_init(cfg.seed):  # initial weights from the config's seed, not from the global RNG
        return medclip(vision=backbone.vision, text=m.text, pretrained=m.pretrained, embed_dim=m.embed_dim,
                       sentences=vocabulary_sentences(cfg.data.dataset), image_size=cfg.data.image_size,
                       mean=m.mean or (0.5,) * 3, std=m.std or (0.25,) * 3, max_length=m.max_length,
                       vision_kwargs=backbone.params, logit_scale_init=m.logit_scale_init)


def _train(model: Any, images: torch.Tensor, labels: torch.Tensor, bank: Any, t: TrainSection, seed: int,
           device: str, **kw: Any) -> dict[str, Any]:
    from medsec.training.medclip import train_medclip

    return train_medclip(model, images, labels, bank, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
                         weight_decay=t.weight_decay, text_batch_size=t.text_batch_size,
                         label_temperature=t.label_temperature, generator=torch.Generator().manual_seed(seed), device=device, **kw)


def evaluate(model: Any, prompts: dict[str, list[str]], test: Any, target: int, n_prompts: int, n_samplings: int,
             seed: int, trigger: Any = None, params: Any = None) -> dict[str, Any]:
    """Zero-shot CA (and ASR both ways when a trigger is given), mean and std over prompt draws."""
    from medsec.backdoors.metrics import backdoor_metrics
    from medsec.models.medclip_prompts import zero_shot_predictions

    x, y = test.images, test.labels
    sets = [x] if trigger is None else [x, trigger.apply(x, params)]
    preds = zero_shot_predictions(model, prompts, sets, n_prompts=n_prompts, n_samplings=n_samplings, seed=seed)
    runs: list[dict[str, Any]] = []
    for p in preds:
        if trigger is None:
            runs.append({"clean_accuracy": float((p[0] == y).float().mean())})
        else:
            runs.append(backdoor_metrics(p[0], p[1], y, torch.full_like(y, target), len(prompts)))
    out: dict[str, Any] = {"n": len(y), "runs": runs}
    for k in ("clean_accuracy", "backdoor_accuracy", "attack_success_rate"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            t = torch.tensor(vals)
            out[k] = float(t.mean())
            out[k + "_std"] = float(t.std()) if len(vals) > 1 else 0.0
    return out


def cell_id(backbone: str, trigger: str, rate: float, method: str) -> str:
    return f"{backbone}-{trigger}-{rate:g}-{method}"


# --------------------------------------------------------------------------- runner
def plan(cfg: BadMatchConfig) -> list[str]:
    """The cell ids: backbone x trigger x poison rate x method."""
    return [cell_id(bb.label, t.label, rate, m) for bb in cfg.backbones for t in cfg.triggers
            for rate in cfg.poison.rates for m in cfg.methods]


@dataclass(frozen=True)
class CellJob:
    """A job's payload: one poisoned fine-tune (plain data, picklable)."""

    cell: str
    backbone: int
    trigger: str
    rate: float
    method: str


@dataclass
class State:
    """What every cell needs: the data, the sentences, the triggers and the prepared models
    (per backbone the pre-trained model, per backbone x trigger the BadDist vision tower)."""

    train: Any
    test: Any
    shadow: Any
    ft_train: Any
    bank: Any
    prompts: dict[str, list[str]]
    target: int
    trig_objs: dict[str, Any]
    trig_params: dict[str, Any]
    pre: dict[str, Any] = field(default_factory=dict)
    baddist: dict[tuple[str, str], Any] = field(default_factory=dict)


def pretrained_path(out: Path, backbone: str) -> Path:
    return out / "models" / f"{backbone}-pretrained.safetensors"


def baddist_path(out: Path, backbone: str, trigger: str) -> Path:
    return out / "models" / f"{backbone}-{trigger}-baddist.safetensors"


def load_state(cfg: BadMatchConfig) -> State:
    """The data, sentences, prompts and triggers of ``cfg`` (no models yet)."""
    from medsec.backdoors.badmatch import make_trigger
    from medsec.data.medclip_text import class_prompts, sentence_bank

    train, test, shadow = load_data(cfg)
    k = train.num_classes
    target = target_index(cfg, train.classes)
    bank = sentence_bank(cfg.data.dataset, pairs=cfg.data.sentence_pairs, seed=cfg.seed,
                         synonyms=cfg.data.sentence_synonyms)
    prompts = class_prompts(cfg.data.dataset)
    if len(prompts) != k:
        raise DataError(f"{cfg.data.dataset} has {k} classes but {len(prompts)} prompt classes")
    ft_train = (train.take(cfg.data.finetune_limit, torch.Generator().manual_seed(cfg.seed + 1))
                if cfg.data.finetune_limit else train)
    trig_objs = {t.label: make_trigger({"name": t.name, **t.params}, cfg.data.image_size) for t in cfg.triggers}
    trig_params = {t.label: trig_objs[t.label].sample_params(train.image_shape, torch.Generator().manual_seed(cfg.seed))
                   for t in cfg.triggers}
    return State(train, test, shadow, ft_train, bank, prompts, target, trig_objs, trig_params)


def load_models(cfg: BadMatchConfig, state: State, out: Path, device: str) -> State:
    """Load the driver's models from the run folder into ``state`` (a missing one is a
    :class:`~medsec.errors.DataError` naming it)."""
    from medsec.models.medclip import load_medclip

    for bb in cfg.backbones:
        path = pretrained_path(out, bb.label)
        if not path.is_file():
            raise DataError(f"{path} (the pre-trained model the driver saves) is missing; put the run folder on "
                            "storage every worker reads")
        state.pre[bb.label] = load_medclip(path, device)
        if "baddist+badmatch" in cfg.methods:
            for t in cfg.triggers:
                bd = baddist_path(out, bb.label, t.label)
                if not bd.is_file():
                    raise DataError(f"{bd} (the BadDist encoder the driver saves) is missing; put the run folder on "
                                    "storage every worker reads")
                state.baddist[(bb.label, t.label)] = load_medclip(bd, device).vision
    return state


def prepare(ctx: RunContext) -> State:
    """The driver's preparation, before the cells: per backbone the pre-training (or the
    given checkpoint) and the clean fine-tune, per backbone x trigger BadDist; models saved
    under ``models/`` of the run folder, facts in the ``models`` section. A rerun reuses
    what a previous run saved."""
    from medsec.backdoors.baddist import baddist, embedding_shift
    from medsec.models.medclip import load_medclip, save_medclip
    from medsec.training.medclip import one_hot

    cfg: BadMatchConfig = ctx.cfg
    store, out, device = ctx.store, ctx.out, str(ctx.device)
    state = load_state(cfg)
    train, test, shadow, ft_train, bank, prompts, target = (state.train, state.test, state.shadow, state.ft_train,
                                                            state.bank, state.prompts, state.target)
    k = train.num_classes
    store.update(data={"dataset": cfg.data.dataset, "classes": train.classes, "target": target,
                       "target_name": train.classes[target], "n_train": len(train), "n_finetune": len(ft_train),
                       "n_test": len(test), "n_shadow": len(shadow), "image_size": cfg.data.image_size,
                       "n_sentences": len(bank.sentences)},
                 models=store.results.get("models") or {})
    ev = cfg.eval
    models_dir = out / "models"
    x_train, y_train = train.images, one_hot(train.labels, k)
    x_ft, y_ft = ft_train.images, one_hot(ft_train.labels, k)
    for bi, bb in enumerate(cfg.backbones):
        info = store.results["models"].setdefault(bb.label, {"vision": bb.vision})
        pre_path = pretrained_path(out, bb.label)
        if pre_path.is_file() and "pretrain" in info:
            pre = load_medclip(pre_path, device)
        elif bb.checkpoint:
            ck = Path(bb.checkpoint)
            if not ck.is_file():
                raise DataError(f"backbone {bb.label!r}: checkpoint {ck} not found (a file written by save_medclip, "
                                "e.g. a badmatch run's models/<label>-pretrained.safetensors)")
            pre = load_medclip(ck, device)
            if pre.arch.get("vision") != bb.vision or pre.arch.get("image_size") != cfg.data.image_size:
                raise ConfigError(f"backbone {bb.label!r}: checkpoint {ck} holds vision {pre.arch.get('vision')!r} at "
                                  f"{pre.arch.get('image_size')} px, the config asks for {bb.vision!r} at "
                                  f"{cfg.data.image_size} px")
            save_medclip(pre, pre_path)
            info["pretrain"] = {"checkpoint": str(ck), "vision_params": sum(p.numel() for p in pre.vision.parameters()),
                                "text_params": sum(p.numel() for p in pre.text.parameters())}
            with ctx.cell(f"{bb.label}/pretrained-eval"):
                info["pretrained_eval"] = evaluate(pre, prompts, test, target, ev.n_prompts, ev.n_samplings, cfg.seed)
            store.save()
        else:
            with ctx.cell(f"{bb.label}/pretrain"):
                pre = _build(cfg, bb).to(device)
                t0 = time.time()
                hist = _train(pre, x_train, y_train, bank, cfg.pretrain, cfg.seed + bi, device)
                save_medclip(pre, pre_path)
                info["pretrain"] = {**hist, "seconds": time.time() - t0,
                                    "vision_params": sum(p.numel() for p in pre.vision.parameters()),
                                    "text_params": sum(p.numel() for p in pre.text.parameters())}
                info["pretrained_eval"] = evaluate(pre, prompts, test, target, ev.n_prompts, ev.n_samplings, cfg.seed)
            store.save()
        if ev.clean_finetune and "clean_finetune" not in info:
            with ctx.cell(f"{bb.label}/clean-finetune"):
                m = copy.deepcopy(pre)
                _train(m, x_ft, y_ft, bank, cfg.finetune, cfg.seed + 100 + bi, device)
                if ev.save_models:
                    save_medclip(m, models_dir / f"{bb.label}-clean-finetune.safetensors")
                info["clean_finetune"] = {t.label: evaluate(m, prompts, test, target, ev.n_prompts, ev.n_samplings,
                                                            cfg.seed, state.trig_objs[t.label], state.trig_params[t.label])
                                          for t in cfg.triggers}
            store.save()
        if "baddist+badmatch" not in cfg.methods:
            continue
        for tspec in cfg.triggers:
            trig, params = state.trig_objs[tspec.label], state.trig_params[tspec.label]
            bd_path = baddist_path(out, bb.label, tspec.label)
            key = f"baddist_{tspec.label}"
            if bd_path.is_file() and key in info:
                continue
            b = cfg.baddist
            t0 = time.time()
            bd_vision: Any
            with ctx.cell(f"{bb.label}/{tspec.label}/baddist"):
                bd_vision, hist = baddist(pre.vision, shadow.images, trig, params, lambda1=b.lambda1,
                                          lambda2=b.lambda2, epochs=b.epochs, lr=b.lr, batch_size=b.batch_size,
                                          optimizer=b.optimizer, generator=torch.Generator().manual_seed(cfg.seed),
                                          device=device)
            tmp = copy.deepcopy(pre)
            tmp.vision = bd_vision
            save_medclip(tmp, bd_path)
            info[key] = {**hist, "seconds": time.time() - t0,
                         "shift_on_test": embedding_shift(pre.vision, bd_vision, test.images, trig, params)}
            store.save()
    # the cells start from the saved models, on the driver as on a worker
    return load_models(cfg, state, out, device)


def setup(ctx: CellContext) -> State:
    """A worker's state: the data and the driver's models, loaded from the run folder."""
    return load_models(ctx.cfg, load_state(ctx.cfg), ctx.out, str(ctx.device))


def work(state: State, job: CellJob, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """One poisoned fine-tune: poison the fine-tune set, fine-tune from the pre-trained model
    (or with the BadDist tower), evaluate; ``[(cell id, record)]``."""
    from medsec.backdoors.badmatch import BadMatch

    cfg: BadMatchConfig = ctx.cfg
    bi, bb = job.backbone, cfg.backbones[job.backbone]
    tspec = next(t for t in cfg.triggers if t.label == job.trigger)
    trig, params = state.trig_objs[tspec.label], state.trig_params[tspec.label]
    ev, cid, device = cfg.eval, job.cell, str(ctx.device)
    poisoned = BadMatch(trig, state.target, rate=job.rate, mode=cfg.poison.mode, seed=cfg.seed).poison(
        state.ft_train, params=params)
    m = copy.deepcopy(state.pre[bb.label])
    if job.method == "baddist+badmatch":
        m.vision = copy.deepcopy(state.baddist[(bb.label, tspec.label)])
    t0 = time.time()
    extra = ({"text_flip": poisoned.text_flip, "text_flip_to": poisoned.target_vector}
             if cfg.poison.mode == "text" else {})
    with ctx.cell(cid):
        hist = _train(m, poisoned.images, poisoned.image_labels, state.bank, cfg.finetune, cfg.seed + 100 + bi, device,
                      **extra)
        metrics = evaluate(m, state.prompts, state.test, state.target, ev.n_prompts, ev.n_samplings, cfg.seed, trig,
                           params)
    if ev.save_models:  # through the driver, which writes the run folder
        ctx.save_file(f"models/{cid}.safetensors", _medclip_bytes(m))
    rec = {k2: v for k2, v in poisoned.record.items() if k2 != "indices"}
    log.info("%s: CA %.3f ASR %.3f (BA %.3f)", cid, metrics["clean_accuracy"],
             metrics.get("attack_success_rate") or 0.0, metrics.get("backdoor_accuracy") or 0.0)
    return [(cid, {
        "id": cid, "backbone": bb.label, "vision": bb.vision, "trigger": tspec.label,
        "trigger_name": tspec.name, "rate": job.rate, "method": job.method, "n_poisoned": len(poisoned.indices),
        "poison_indices": poisoned.indices.tolist(), "poison": rec, "train": hist,
        "seconds": time.time() - t0, "metrics": metrics})]


def _medclip_bytes(model: Any) -> bytes:
    """A model as the bytes of its :func:`~medsec.models.medclip.save_medclip` file."""
    import tempfile

    from medsec.models.medclip import save_medclip

    with tempfile.TemporaryDirectory() as d:
        return save_medclip(model, Path(d) / "model.safetensors").read_bytes()


def run(ctx: RunContext) -> None:
    """Run the sweep into ``ctx.store``: the driver prepares the shared models (per backbone
    the pre-training and the clean fine-tune, per trigger BadDist), then every (backbone,
    trigger, rate, method) fine-tune runs as a job through the run's executor. Every stage
    runs with the global RNGs seeded from its own id (:meth:`~medsec.runs.context.CellContext.cell`),
    so a resumed or distributed run trains what an uninterrupted sequential one would."""
    cfg: BadMatchConfig = ctx.cfg
    ids = plan(cfg)
    ctx.store.plan(ids)
    state = prepare(ctx)
    ctx.store.plan(ids)
    jobs = [Job(id=cell_id(bb.label, t.label, rate, m), cells=(cell_id(bb.label, t.label, rate, m),),
                payload=CellJob(cell_id(bb.label, t.label, rate, m), bi, t.label, rate, m))
            for bi, bb in enumerate(cfg.backbones) for t in cfg.triggers for rate in cfg.poison.rates
            for m in cfg.methods]
    ctx.execute(jobs, setup=setup, work=work, state=state)


__all__ = ["CellJob", "State", "cell_id", "evaluate", "load_data", "plan", "prepare", "run", "setup", "target_index",
           "work"]
