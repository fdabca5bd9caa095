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
CA and ASR (both ways) over ``n_samplings`` prompt draws. Every finished cell is saved to
results.json at once; a rerun with the same config skips finished cells and reuses the
saved models, and so does a rerun with a config that only widens the sweep (more rates or
methods, backbones appended; see :func:`extends`).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from medsec.config.schema import StrictModel
from medsec.errors import ConfigError, DataError
from medsec.experiments import ExperimentKind, register_kind
from medsec.experiments.finish import finish_run
from medsec.io import atomic_write_json

log = logging.getLogger(__name__)

METHODS = ("badmatch", "baddist+badmatch")
SCHEMA_VERSION = 1


class DataSection(StrictModel):
    dataset: Literal["bloodmnist", "busi"] = "bloodmnist"
    root: str | None = None
    image_size: int = Field(28, ge=8, le=512)
    train_limit: int | None = Field(None, ge=8)
    test_limit: int | None = Field(None, ge=8)
    shadow_limit: int | None = Field(None, ge=8)
    target: str | int = "neutrophil"
    sentence_pairs: int = Field(64, ge=0)
    # training sentences also name each class by its prompt synonyms (medclip_text.sentence_bank)
    sentence_synonyms: bool = False
    # the fine-tunes (clean and poisoned) use this many training images (a seeded subset of
    # the pre-training set; poison rates count against it); None = the whole training set
    finetune_limit: int | None = Field(None, ge=8)


class ModelSection(StrictModel):
    text: Literal["bert", "tiny-bert"] = "tiny-bert"
    embed_dim: int = Field(64, ge=2)
    pretrained: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    max_length: int = Field(32, ge=4)
    logit_scale_init: float = Field(0.0, ge=0.0, le=4.6052)


class Backbone(StrictModel):
    label: str
    vision: str
    params: dict[str, Any] = Field(default_factory=dict)
    # a medsec MedCLIP checkpoint (save_medclip) to start from instead of pre-training, as
    # the paper fine-tunes the released MedCLIP weights; e.g. another run's
    # models/<label>-pretrained.safetensors
    checkpoint: str | None = None


class TrainSection(StrictModel):
    epochs: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=2)
    weight_decay: float = Field(1e-4, ge=0)
    text_batch_size: int | None = Field(None, ge=2)
    label_temperature: float = Field(1.0, gt=0)


class BadDistSection(StrictModel):
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0)
    lambda1: float = Field(5.0, ge=0)
    lambda2: float = Field(1.0, ge=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"


class TriggerSpec(StrictModel):
    label: str
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PoisonSection(StrictModel):
    rates: list[float] = Field(default_factory=lambda: [0.05, 0.01, 0.001, 0.0005])
    mode: Literal["image", "text"] = "image"

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < r <= 1.0 for r in v):
            raise ValueError("poison rates must be a non-empty list of fractions in (0, 1]")
        if len(set(v)) != len(v):
            raise ValueError("poison rates repeat a value")
        return v


class EvalSection(StrictModel):
    n_prompts: int = Field(5, ge=1)
    n_samplings: int = Field(5, ge=1)
    clean_finetune: bool = True  # also fine-tune on the clean set (the CA reference rows)
    save_models: bool = Field(False, description="also save every fine-tuned model (the clean one and each cell's "
                                                 "backdoored one) under models/, about 1.7 MB each")


class BadMatchConfig(StrictModel):
    """The ``kind: badmatch`` config (see docs/badmatch.md)."""

    kind: Literal["badmatch"] = "badmatch"
    name: str = "badmatch"
    seed: int = 0
    device: str = "cpu"
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    backbones: list[Backbone] = Field(default_factory=lambda: [Backbone(label="resnet", vision="tiny-resnet")])
    pretrain: TrainSection = Field(default_factory=lambda: TrainSection(epochs=3, lr=2e-3))
    finetune: TrainSection = Field(default_factory=lambda: TrainSection(epochs=1, lr=5e-4))
    baddist: BadDistSection = Field(default_factory=BadDistSection)
    triggers: list[TriggerSpec] = Field(default_factory=lambda: [
        TriggerSpec(label="square", name="badnets", params={"size_fraction": 32 / 224, "color": 0.0}),
        TriggerSpec(label="fourier", name="fiba", params={"beta": 0.2, "alpha": 0.1})])
    poison: PoisonSection = Field(default_factory=PoisonSection)
    methods: list[Literal["badmatch", "baddist+badmatch"]] = Field(default_factory=lambda: list(METHODS))
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _unique(self) -> BadMatchConfig:
        for what, labels in (("backbone", [b.label for b in self.backbones]), ("trigger", [t.label for t in self.triggers])):
            if not labels:
                raise ValueError(f"give at least one {what}")
            if len(set(labels)) != len(labels):
                raise ValueError(f"{what} labels repeat: {labels}")
        if not self.methods:
            raise ValueError("give at least one method (badmatch, baddist+badmatch)")
        return self


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
def _provenance(device: str) -> dict[str, Any]:
    from medsec.eval.runner import provenance

    return provenance(torch.device(device))


def _build(cfg: BadMatchConfig, backbone: Backbone) -> Any:
    from medsec.data.medclip_text import vocabulary_sentences
    from medsec.models.medclip import medclip

    m = cfg.model
    from medsec.training.recipes import seeded_init

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
    runs = []
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


def _save(results: dict[str, Any], out: Path) -> None:
    atomic_write_json(out / "results.json", results)


def extends(prior: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether config ``new`` only widens the sweep of ``prior`` (so its finished cells stay valid).

    Allowed: more poison rates and methods, and backbones appended after the prior ones (a
    backbone's seeds depend on its position); everything else, the triggers included (the
    clean fine-tune evaluates every trigger), must be identical.
    """
    if not prior or not new:
        return False
    sweep = ("backbones", "poison", "methods")
    if {k: v for k, v in prior.items() if k not in sweep} != {k: v for k, v in new.items() if k not in sweep}:
        return False
    pp, np_ = prior.get("poison") or {}, new.get("poison") or {}
    if pp.get("mode") != np_.get("mode") or not set(pp.get("rates") or []) <= set(np_.get("rates") or []):
        return False
    if not set(prior.get("methods") or []) <= set(new.get("methods") or []):
        return False
    pb, nb = prior.get("backbones") or [], new.get("backbones") or []
    return len(pb) <= len(nb) and nb[: len(pb)] == pb


def cell_id(backbone: str, trigger: str, rate: float, method: str) -> str:
    return f"{backbone}-{trigger}-{rate:g}-{method}"


# --------------------------------------------------------------------------- runner
def run(cfg: BadMatchConfig, out_dir: str | Path, report: bool = True) -> dict[str, Any]:
    """Run the sweep; write results.json (after every cell), report.html and report.md."""
    from medsec.backdoors.baddist import baddist, embedding_shift
    from medsec.backdoors.badmatch import BadMatch, make_trigger
    from medsec.data.medclip_text import class_prompts, sentence_bank
    from medsec.eval.runner import resolve_device
    from medsec.models.medclip import load_medclip, save_medclip
    from medsec.training.medclip import one_hot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(cfg.device))
    cfg_dump = cfg.model_dump(mode="json")
    path = out / "results.json"
    results: dict[str, Any] = {}
    if path.is_file():
        import json

        try:
            prior = json.loads(path.read_text())
        except (OSError, ValueError):
            prior = {}
        if prior.get("task") == "badmatch" and prior.get("config") == cfg_dump:
            results = prior
            log.info("resuming %s: %d cells done", path, len(results.get("cells", [])))
        elif prior.get("task") == "badmatch" and extends(prior.get("config") or {}, cfg_dump):
            results = prior
            results["config"] = cfg_dump
            log.info("extending %s: %d cells of the smaller sweep kept", path, len(results.get("cells", [])))
        else:
            log.warning("%s holds another config's results; starting over", path)
    if not results:
        results = {"schema_version": SCHEMA_VERSION, "task": "badmatch", "name": cfg.name, "config": cfg_dump,
                   "provenance": _provenance(device), "status": "running", "models": {}, "cells": []}
    results["status"] = "running"
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
    results["data"] = {"dataset": cfg.data.dataset, "classes": train.classes, "target": target,
                       "target_name": train.classes[target], "n_train": len(train), "n_finetune": len(ft_train),
                       "n_test": len(test),
                       "n_shadow": len(shadow), "image_size": cfg.data.image_size, "n_sentences": len(bank.sentences)}
    ev = cfg.eval
    done = {c["id"] for c in results["cells"]}
    models_dir = out / "models"
    x_train, y_train = train.images, one_hot(train.labels, k)
    x_ft, y_ft = ft_train.images, one_hot(ft_train.labels, k)
    trig_objs = {t.label: make_trigger({"name": t.name, **t.params}, cfg.data.image_size) for t in cfg.triggers}
    trig_params = {t.label: trig_objs[t.label].sample_params(train.image_shape, torch.Generator().manual_seed(cfg.seed))
                   for t in cfg.triggers}

    for bi, bb in enumerate(cfg.backbones):
        info = results["models"].setdefault(bb.label, {"vision": bb.vision})
        pre_path = models_dir / f"{bb.label}-pretrained.safetensors"
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
            info["pretrained_eval"] = evaluate(pre, prompts, test, target, ev.n_prompts, ev.n_samplings, cfg.seed)
            _save(results, out)
        else:
            pre = _build(cfg, bb).to(device)
            t0 = time.time()
            hist = _train(pre, x_train, y_train, bank, cfg.pretrain, cfg.seed + bi, device)
            save_medclip(pre, pre_path)
            info["pretrain"] = {**hist, "seconds": time.time() - t0,
                                "vision_params": sum(p.numel() for p in pre.vision.parameters()),
                                "text_params": sum(p.numel() for p in pre.text.parameters())}
            info["pretrained_eval"] = evaluate(pre, prompts, test, target, ev.n_prompts, ev.n_samplings, cfg.seed)
            _save(results, out)
        if ev.clean_finetune and "clean_finetune" not in info:
            m = copy.deepcopy(pre)
            _train(m, x_ft, y_ft, bank, cfg.finetune, cfg.seed + 100 + bi, device)
            if ev.save_models:
                save_medclip(m, models_dir / f"{bb.label}-clean-finetune.safetensors")
            info["clean_finetune"] = {t.label: evaluate(m, prompts, test, target, ev.n_prompts, ev.n_samplings,
                                                        cfg.seed, trig_objs[t.label], trig_params[t.label])
                                      for t in cfg.triggers}
            _save(results, out)
        for tspec in cfg.triggers:
            trig, params = trig_objs[tspec.label], trig_params[tspec.label]
            bd_vision = None
            if "baddist+badmatch" in cfg.methods:
                bd_path = models_dir / f"{bb.label}-{tspec.label}-baddist.safetensors"
                key = f"baddist_{tspec.label}"
                if bd_path.is_file() and key in info:
                    bd_vision = load_medclip(bd_path, device).vision
                else:
                    b = cfg.baddist
                    t0 = time.time()
                    bd_vision, hist = baddist(pre.vision, shadow.images, trig, params, lambda1=b.lambda1,
                                              lambda2=b.lambda2, epochs=b.epochs, lr=b.lr, batch_size=b.batch_size,
                                              optimizer=b.optimizer, generator=torch.Generator().manual_seed(cfg.seed),
                                              device=device)
                    tmp = copy.deepcopy(pre)
                    tmp.vision = bd_vision
                    save_medclip(tmp, bd_path)
                    info[key] = {**hist, "seconds": time.time() - t0,
                                 "shift_on_test": embedding_shift(pre.vision, bd_vision, test.images, trig, params)}
                    _save(results, out)
            for rate in cfg.poison.rates:
                poisoned = None
                for method in cfg.methods:
                    cid = cell_id(bb.label, tspec.label, rate, method)
                    if cid in done:
                        continue
                    if poisoned is None:
                        poisoned = BadMatch(trig, target, rate=rate, mode=cfg.poison.mode, seed=cfg.seed).poison(
                            ft_train, params=params)
                    m = copy.deepcopy(pre)
                    if method == "baddist+badmatch":
                        m.vision = copy.deepcopy(bd_vision)
                    t0 = time.time()
                    extra = ({"text_flip": poisoned.text_flip, "text_flip_to": poisoned.target_vector}
                             if cfg.poison.mode == "text" else {})
                    hist = _train(m, poisoned.images, poisoned.image_labels, bank, cfg.finetune,
                                  cfg.seed + 100 + bi, device, **extra)
                    metrics = evaluate(m, prompts, test, target, ev.n_prompts, ev.n_samplings, cfg.seed, trig, params)
                    if ev.save_models:
                        save_medclip(m, models_dir / f"{cid}.safetensors")
                    rec = {k2: v for k2, v in poisoned.record.items() if k2 != "indices"}
                    results["cells"].append({
                        "id": cid, "backbone": bb.label, "vision": bb.vision, "trigger": tspec.label,
                        "trigger_name": tspec.name, "rate": rate, "method": method, "n_poisoned": len(poisoned.indices),
                        "poison_indices": poisoned.indices.tolist(), "poison": rec, "train": hist,
                        "seconds": time.time() - t0, "metrics": metrics})
                    done.add(cid)
                    log.info("%s: CA %.3f ASR %.3f (BA %.3f)", cid, metrics["clean_accuracy"],
                             metrics.get("attack_success_rate") or 0.0, metrics.get("backdoor_accuracy") or 0.0)
                    _save(results, out)
    return finish_run(results, out / "results.json", report)


# --------------------------------------------------------------------------- report
def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (backbone, trigger, rate, method), clean fine-tunes first (rate 0)."""
    rows = []
    for bb, info in (results.get("models") or {}).items():
        for trig, m in (info.get("clean_finetune") or {}).items():
            rows.append({"backbone": bb, "trigger": trig, "rate": 0.0, "method": "clean", "n_poisoned": 0, **_m(m)})
    for c in results.get("cells") or []:
        rows.append({"backbone": c["backbone"], "trigger": c["trigger"], "rate": c["rate"], "method": c["method"],
                     "n_poisoned": c["n_poisoned"], **_m(c["metrics"])})
    return rows


def _m(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("clean_accuracy", "clean_accuracy_std", "attack_success_rate",
                                  "attack_success_rate_std", "backdoor_accuracy", "backdoor_accuracy_std")}


def _pm(v: Any, s: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f} ± {s:.3f}" if s is not None else f"{v:.3f}"


def _figure(results: dict[str, Any]) -> bytes:
    from medsec.report import figures

    rows = [r for r in table_rows(results) if r["method"] != "clean"]
    bbs = sorted({r["backbone"] for r in rows})
    trigs = sorted({r["trigger"] for r in rows})
    fig = figures.new_figure(3.2 * max(1, len(trigs)), 2.6 * max(1, len(bbs)))
    axes = fig.subplots(len(bbs), len(trigs), squeeze=False)
    for i, bb in enumerate(bbs):
        for j, tr in enumerate(trigs):
            ax = axes[i][j]
            for method, style in (("badmatch", "o--"), ("baddist+badmatch", "s-")):
                pts = sorted((r["rate"], r["attack_success_rate"], r["clean_accuracy"]) for r in rows
                             if r["backbone"] == bb and r["trigger"] == tr and r["method"] == method)
                if pts:
                    ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], style, label=f"ASR {method}")
                    ax.plot([100 * p[0] for p in pts], [p[2] for p in pts], style, alpha=0.4, label=f"CA {method}")
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(figures.mpl_text(f"{bb} / {tr}"), fontsize=9)
            ax.set_xlabel("poison rate (%)", fontsize=8)
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
    return figures.png_bytes(fig)


def render(results: dict[str, Any], out_dir: Path) -> tuple[str, str]:
    """(report.html, report.md) of a badmatch results dict."""
    from medsec.report.html import CSS, esc, html_table, kv_table, note, safe_figure, section
    from medsec.report.markdown import md_table
    from medsec.report.tables import Column

    rows = table_rows(results)
    cols = [Column("backbone", "backbone"), Column("trigger", "trigger"),
            Column("method", "method"), Column("poison rate", lambda r: f"{100 * r['rate']:g}%", align="right"),
            Column("poisoned images", "n_poisoned", align="right"),
            Column("CA", lambda r: _pm(r["clean_accuracy"], r["clean_accuracy_std"]), align="right",
                   tooltip="clean zero-shot accuracy, mean ± std over prompt samplings"),
            Column("ASR (non-target)", lambda r: _pm(r["attack_success_rate"], r["attack_success_rate_std"]),
                   align="right", tooltip="triggered images of other classes classified as the target"),
            Column("ASR (all, paper)", lambda r: _pm(r["backdoor_accuracy"], r["backdoor_accuracy_std"]),
                   align="right", tooltip="every test image triggered, target-class images included")]
    d = results.get("data") or {}
    models = results.get("models") or {}
    minfo = [(bb, f"{m.get('vision')}: {m.get('pretrain', {}).get('vision_params', '?')} vision params, "
                  f"pretrained CA {(m.get('pretrained_eval') or {}).get('clean_accuracy', float('nan')):.3f}")
             for bb, m in models.items()]
    bd = [(f"{bb} / {k[8:]}", ", ".join(f"{kk} {vv:.3f}" for kk, vv in v["shift_on_test"].items()))
          for bb, m in models.items() for k, v in m.items() if k.startswith("baddist_")]
    body = "".join([
        f"<h1>BadMatch / BadDist: {esc(results.get('name'))}</h1>",
        note(f"status: {results.get('status')}"),
        section("Data", kv_table([("dataset", d.get("dataset")), ("target", d.get("target_name")),
                                  ("train / fine-tune / test / shadow",
                                   f"{d.get('n_train')} / {d.get('n_finetune', d.get('n_train'))} / {d.get('n_test')} / "
                                   f"{d.get('n_shadow')}"),
                                  ("image size", d.get("image_size")), ("sentences", d.get("n_sentences"))])),
        section("Models", kv_table(minfo)),
        section("CA / ASR", html_table(cols, rows) + safe_figure(lambda: _figure(results), "ASR and CA vs poison rate",
                                                                    "ASR (non-target) and CA vs poison rate")),
        section("BadDist embedding shift (test images)", kv_table(bd) if bd else note("no BadDist run")),
        section("Provenance", kv_table(list((results.get("provenance") or {}).items()))),
    ])
    html = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>medsec report: {esc(results.get('name'))}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
    md = (f"# BadMatch / BadDist: {results.get('name')}\n\nDataset {d.get('dataset')}, target {d.get('target_name')}, "
          f"train/test/shadow {d.get('n_train')}/{d.get('n_test')}/{d.get('n_shadow')}, {d.get('image_size')} px.\n\n"
          + md_table(cols, rows) + "\n")
    return html, md


def summary(results: dict[str, Any], out_dir: Path, console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"{results.get('name')}: CA / ASR")
    for h in ("backbone", "trigger", "method", "rate", "CA", "ASR", "ASR all"):
        t.add_column(h)
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for r in table_rows(results):
        t.add_row(r["backbone"], r["trigger"], r["method"], f"{100 * r['rate']:g}%", f(r["clean_accuracy"]),
                  f(r["attack_success_rate"]), f(r["backdoor_accuracy"]))
    console.print(t)
    console.print(f"report: {Path(out_dir) / 'report.html'}")


register_kind(ExperimentKind("badmatch", BadMatchConfig, run, summary=summary, render=render,
                             description="BadMatch / BadDist poisoning of MedCLIP-style unpaired training"))
