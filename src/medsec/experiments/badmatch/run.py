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
from typing import Any

import torch

from medsec.errors import ConfigError, DataError
from medsec.experiments.badmatch.config import Backbone, BadMatchConfig, TrainSection
from medsec.runs.context import RunContext

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


def run(ctx: RunContext) -> None:
    """Run the sweep into ``ctx.store``: per backbone the pre-training and the clean fine-tune,
    per trigger BadDist, per cell the poisoned fine-tune; every stage runs with the global RNGs
    seeded from its own id (:meth:`~medsec.runs.context.RunContext.cell`), so a resumed run
    trains what an uninterrupted one would."""
    from medsec.backdoors.baddist import baddist, embedding_shift
    from medsec.backdoors.badmatch import BadMatch, make_trigger
    from medsec.data.medclip_text import class_prompts, sentence_bank
    from medsec.models.medclip import load_medclip, save_medclip
    from medsec.training.medclip import one_hot

    cfg: BadMatchConfig = ctx.cfg
    store, out, device = ctx.store, ctx.out, str(ctx.device)
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
    store.update(data={"dataset": cfg.data.dataset, "classes": train.classes, "target": target,
                       "target_name": train.classes[target], "n_train": len(train), "n_finetune": len(ft_train),
                       "n_test": len(test), "n_shadow": len(shadow), "image_size": cfg.data.image_size,
                       "n_sentences": len(bank.sentences)},
                 models=store.results.get("models") or {})
    ids = plan(cfg)
    store.plan(ids)
    ev = cfg.eval
    models_dir = out / "models"
    x_train, y_train = train.images, one_hot(train.labels, k)
    x_ft, y_ft = ft_train.images, one_hot(ft_train.labels, k)
    trig_objs = {t.label: make_trigger({"name": t.name, **t.params}, cfg.data.image_size) for t in cfg.triggers}
    trig_params = {t.label: trig_objs[t.label].sample_params(train.image_shape, torch.Generator().manual_seed(cfg.seed))
                   for t in cfg.triggers}

    for bi, bb in enumerate(cfg.backbones):
        info = store.results["models"].setdefault(bb.label, {"vision": bb.vision})
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
                                                            cfg.seed, trig_objs[t.label], trig_params[t.label])
                                          for t in cfg.triggers}
            store.save()
        for tspec in cfg.triggers:
            trig, params = trig_objs[tspec.label], trig_params[tspec.label]
            bd_vision: Any = None
            if "baddist+badmatch" in cfg.methods:
                bd_path = models_dir / f"{bb.label}-{tspec.label}-baddist.safetensors"
                key = f"baddist_{tspec.label}"
                if bd_path.is_file() and key in info:
                    bd_vision = load_medclip(bd_path, device).vision
                else:
                    b = cfg.baddist
                    t0 = time.time()
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
            for rate in cfg.poison.rates:
                poisoned = None
                for method in cfg.methods:
                    cid = cell_id(bb.label, tspec.label, rate, method)
                    if store.done(cid) is not None:
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
                    with ctx.cell(cid):
                        hist = _train(m, poisoned.images, poisoned.image_labels, bank, cfg.finetune,
                                      cfg.seed + 100 + bi, device, **extra)
                        metrics = evaluate(m, prompts, test, target, ev.n_prompts, ev.n_samplings, cfg.seed, trig,
                                           params)
                    if ev.save_models:
                        save_medclip(m, models_dir / f"{cid}.safetensors")
                    rec = {k2: v for k2, v in poisoned.record.items() if k2 != "indices"}
                    log.info("%s: CA %.3f ASR %.3f (BA %.3f)", cid, metrics["clean_accuracy"],
                             metrics.get("attack_success_rate") or 0.0, metrics.get("backdoor_accuracy") or 0.0)
                    store.put(cid, {
                        "id": cid, "backbone": bb.label, "vision": bb.vision, "trigger": tspec.label,
                        "trigger_name": tspec.name, "rate": rate, "method": method, "n_poisoned": len(poisoned.indices),
                        "poison_indices": poisoned.indices.tolist(), "poison": rec, "train": hist,
                        "seconds": time.time() - t0, "metrics": metrics})


__all__ = ["cell_id", "evaluate", "load_data", "plan", "run", "target_index"]
