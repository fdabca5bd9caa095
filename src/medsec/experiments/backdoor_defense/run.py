"""The ``backdoor_defense`` experiment kind: backdoored classifiers x detectors and repairs.

For every backdoor of the config (a registered trigger, BadNets by default, with a
target, rate and label policy) the runner trains (or loads from its cache) a classifier
on the poisoned training set, measures clean accuracy (CA) and attack success (ASR), and
then runs every detector and every repair against it:

* detectors that inspect the **training set** (Spectral Signatures, Activation
  Clustering) are fitted on the poisoned training set and scored on it; the ground
  truth is the recorded poisoned indices (AUROC and TPR at 5% FPR over the whole set,
  and inside the target class);
* detectors that inspect **inputs** (STRIP) are fitted on the clean held-out set and
  score ``eval.detector_queries`` clean test images against as many triggered test
  images of non-target classes;
* detectors that inspect the **model** (Neural Cleanse) are fitted on the clean held-out
  set and report the anomaly index of every class, the flagged classes and whether the
  target is among them;
* repairs (Fine-Pruning) get the clean held-out set and are scored by CA and ASR before
  and after.

The detector x backdoor matrix has a row per configured detector and a column per
configured backdoor, so a newly registered trigger or detector extends it by being
listed in the config.

Driver and workers: the driver (:func:`run`) builds every backdoored victim once, before the
cells (trained, or loaded from the cache folder ``cache_dir``, default ``<out>/models``, where
trained models are cached as safetensors keyed by a hash of what they depend on; the BAPLe and
BadMatch victims too, ``victims.py``), and records its CA / ASR in the ``backdoors`` section.
Each (backdoor, detector|repair) cell is a job (:class:`CellJob`) that a worker runs with
:func:`work` on the state :func:`setup` loads from that cache (a worker never trains; a repair
cell reads its victim's CA / ASR from the ``backdoors`` section). Every finished cell is
written to ``results.json`` at once and skipped by a rerun of the same config into the same
folder.

Threat model: a data-poisoning attacker who controls ``rate`` of the training set (BadNets
line: all-to-one by default) against a defender who holds the trained model, the
(poisoned) training set for data inspection, and a small clean held-out set.

Example YAML::

    kind: backdoor_defense
    name: bloodmnist-backdoor-defense
    data: {name: medmnist, params: {flag: bloodmnist}, val_split: val}
    model: {name: small_cnn, params: {width: 16}}
    train: {epochs: 4, lr: 0.005, limit: 4000}
    backdoors: [{name: badnets, params: {size: 3, position: bottom-right}, target: 0, rate: 0.05}]
    detectors: [{name: strip}, {name: spectral}, {name: activation_clustering}, {name: neural_cleanse}]
    repairs: [{name: fine_pruning}]
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsec.errors import DataError
from medsec.experiments.backdoor_defense.config import BackdoorDefenseConfig
from medsec.runs.components import build_model, load_splits
from medsec.runs.context import CellContext, RunContext
from medsec.runs.executor import Job
from medsec.runs.grid import safe_id

log = logging.getLogger(__name__)


def _labels(items: list[Any]) -> list[str]:
    return [i.label or i.name for i in items]


# --------------------------------------------------------------------------- validation of names
def check(cfg: BackdoorDefenseConfig) -> None:
    """Refuse unknown triggers, detectors and repairs (and bad parameters) before any work."""
    import medsec.defenses  # noqa: F401  (registration)
    from medsec.backdoors import triggers
    from medsec.config.loader import check_model
    from medsec.experiments.backdoor_defense.victims import bloodmnist_root, check_params
    from medsec.registry import DETECTORS, REPAIRS

    check_model(cfg.model)
    for b in cfg.backdoors:
        if b.attack == "poisoning":
            triggers.create(b.name, **b.params)
        else:
            check_params(b)
            bloodmnist_root(cfg)
    for d in cfg.detectors:
        DETECTORS.create(d.name, **d.params)
    for r in cfg.repairs:
        REPAIRS.create(r.name, **r.params)


# --------------------------------------------------------------------------- data, model
def _splits(cfg: BackdoorDefenseConfig) -> tuple[Any, Any, Any]:
    """(train, test, clean): clean is the val split if configured, else a held-out part of test."""
    train, test, val = load_splits(cfg.data, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.train.limit is not None and cfg.train.limit < len(train):
        train = train.subset(torch.randperm(len(train), generator=g)[: cfg.train.limit].sort().values)
    if val is not None:
        clean = val.subset(torch.randperm(len(val), generator=g)[: cfg.eval.clean_size].sort().values)
    else:
        if len(test) < cfg.eval.clean_size + 2:
            raise DataError(f"the evaluation split has {len(test)} images, too few to hold out eval.clean_size="
                            f"{cfg.eval.clean_size} clean images; set data.val_split or lower eval.clean_size")
        perm = torch.randperm(len(test), generator=g)
        clean, test = test.subset(perm[: cfg.eval.clean_size].sort().values), test.subset(perm[cfg.eval.clean_size:].sort().values)
    if cfg.eval.test_limit is not None and cfg.eval.test_limit < len(test):
        test = test.subset(torch.randperm(len(test), generator=g)[: cfg.eval.test_limit].sort().values)
    if getattr(train, "task", "multiclass") != "multiclass":
        raise DataError("backdoor_defense needs a multiclass dataset")
    return train, test, clean


def _model_key(cfg: BackdoorDefenseConfig, b: Any) -> str:
    blob = {"data": cfg.data.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
            "train": cfg.train.model_dump(mode="json"), "backdoor": b.model_dump(mode="json", exclude={"label"}),
            "seed": cfg.seed}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _backdoored_model(cfg: BackdoorDefenseConfig, b: Any, train: Any, cache: Path, device: torch.device,
                      allow_train: bool = True) -> tuple[Any, Any, str]:
    """The classifier trained on ``train`` poisoned by ``b`` (cached as safetensors keyed by a
    hash of what it depends on) and the poisoned set; with ``allow_train`` False (a worker) a
    missing model is a DataError."""
    from medsec.backdoors import PoisonedDataset, triggers
    from medsec.models import load_checkpoint, save_checkpoint
    from medsec.training.classifier import train_classifier

    poisoned = PoisonedDataset(train, triggers.create(b.name, **b.params), target=b.target, rate=b.rate,
                               policy=b.policy, seed=cfg.seed)
    path = cache / f"backdoor-{safe_id(b.label or b.name)}-{_model_key(cfg, b)}.safetensors"
    if path.is_file():
        log.info("loading the cached backdoored model %s", path)
        return load_checkpoint(path).to(device).eval(), poisoned, "cached"
    if not allow_train:
        raise DataError(f"{path} (the backdoored model the driver trains) is missing on this worker; put the cache "
                        "folder (cache_dir, default <out>/models) on storage every worker reads")
    model = build_model(cfg.model, train)
    t = cfg.train
    log.info("training a %s-backdoored %s on %d images", b.name, cfg.model.name, len(train))
    train_classifier(model, poisoned.dataset, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
                     weight_decay=t.weight_decay, augment=t.augment, seed=cfg.seed, device=device)
    save_checkpoint(model.cpu(), path, extra={"config": cfg.name, "backdoor": b.name})
    return model.to(device).eval(), poisoned, "trained"


def _bd_metrics(model: Any, poisoned: Any, test: Any) -> dict[str, Any]:
    from medsec.backdoors import backdoor_metrics
    from medsec.training.classifier import predict

    x, y = test.images, test.labels
    dev = next(model.parameters()).device
    return backdoor_metrics(predict(model, x, device=dev), predict(model, poisoned.triggered(x), device=dev), y,
                            poisoned.test_targets(y), model.num_classes)


# --------------------------------------------------------------------------- cells
def _run_detector(d: Any, model: Any, poisoned: Any, test: Any, clean: Any, cfg: BackdoorDefenseConfig) -> dict[str, Any]:
    from medsec.defenses.detection import detection_metrics
    from medsec.registry import DETECTORS

    det = DETECTORS.create(d.name, **d.params)
    inspects = getattr(det, "inspects", "training_set")
    model = model.cpu()
    rec: dict[str, Any] = {"detector": d.name, "label": d.label or d.name, "inspects": inspects, "params": dict(d.params)}
    target = poisoned.target
    if inspects == "model":
        det.fit(model, clean.images, clean.labels)
        summ = det.summary() if hasattr(det, "summary") else {"anomaly_index": det.score().tolist()}
        flagged = list(summ.get("flagged_classes", det.detect().nonzero().flatten().tolist()))
        ai = summ.get("anomaly_index") or []
        rec["metrics"] = {**summ, "target": target, "target_flagged": target in flagged if target is not None else None,
                          "target_anomaly_index": ai[target] if target is not None and target < len(ai) else None,
                          "false_flags": [c for c in flagged if c != target]}
        return rec
    if inspects == "inputs":
        det.fit(model, clean.images, clean.labels)
        g = torch.Generator().manual_seed(cfg.seed)
        n = cfg.eval.detector_queries
        non_target = (test.labels != target).nonzero().flatten() if target is not None else torch.arange(len(test))
        ci = torch.randperm(len(test), generator=g)[:n]
        ti = non_target[torch.randperm(len(non_target), generator=g)[:n]]
        xq = torch.cat([test.images[ci], poisoned.triggered(test.images[ti])])
        truth = torch.cat([torch.zeros(len(ci)), torch.ones(len(ti))]).bool()
        scores = det.score(xq)
        rec["metrics"] = detection_metrics(scores, truth)
        rec["metrics"]["flag_rate_triggered"] = float(det.detect(xq[len(ci):]).float().mean())
        rec["metrics"]["flag_rate_clean"] = float(det.detect(xq[: len(ci)]).float().mean())
        return rec
    x, y = poisoned.dataset.images, poisoned.dataset.labels
    truth = torch.zeros(len(x), dtype=torch.bool)
    truth[poisoned.poison_indices] = True
    det.fit(model, x, y)
    scores = det.score(x, y)
    m: dict[str, Any] = dict(detection_metrics(scores, truth))
    if target is not None:
        sel = y == target
        if truth[sel].any() and (~truth[sel]).any():
            inside = detection_metrics(scores[sel], truth[sel])
            m.update({f"{k}_target_class": v for k, v in inside.items()})
    flags = det.detect(x, y)
    m["flagged"] = int(flags.sum())
    m["flagged_poisoned"] = int((flags & truth).sum())
    if hasattr(det, "poisoned_classes_"):
        m["flagged_classes"] = list(det.poisoned_classes_)
    rec["metrics"] = m
    return rec


def _run_repair(r: Any, model: Any, poisoned: Any, test: Any, clean: Any, before: dict[str, Any]) -> dict[str, Any]:
    from medsec.defenses.clip_classifier import TextHeadClassifier
    from medsec.registry import REPAIRS

    if isinstance(model, TextHeadClassifier):
        return {"repair": r.name, "label": r.label or r.name, "params": dict(r.params), "before": before,
                "skipped": "repairs retrain the classifier; not run on CLIP-style victims (BAPLe, BadMatch)",
                "metrics": {"ca_before": before["clean_accuracy"], "asr_before": before["attack_success_rate"]}}

    rep = REPAIRS.create(r.name, **r.params)
    repaired = rep.repair(model.cpu(), clean)
    after = _bd_metrics(repaired, poisoned, test)
    facts = {k: v for k, v in vars(rep).items() if k.endswith("_") and isinstance(v, (int, float))}
    return {"repair": r.name, "label": r.label or r.name, "params": dict(r.params), "before": before, "after": after,
            "facts": facts,
            "metrics": {"ca_before": before["clean_accuracy"], "ca_after": after["clean_accuracy"],
                        "asr_before": before["attack_success_rate"], "asr_after": after["attack_success_rate"]}}


# --------------------------------------------------------------------------- driver
def labels_of(cfg: BackdoorDefenseConfig) -> tuple[list[str], list[str], list[str]]:
    """(backdoor, detector, repair) labels."""
    return _labels(cfg.backdoors), _labels(cfg.detectors), _labels(cfg.repairs)


def plan(cfg: BackdoorDefenseConfig) -> list[str]:
    """The cell ids: ``<backdoor>/detector/<label>`` and ``<backdoor>/repair/<label>``."""
    backdoors, detectors, repairs = labels_of(cfg)
    return [f"{b}/{kind}/{label}" for b in backdoors
            for kind, labels in (("detector", detectors), ("repair", repairs)) for label in labels]


@dataclass(frozen=True)
class CellJob:
    """A job's payload: one detector or repair against one backdoor (plain data, picklable)."""

    cell: str
    backdoor: int
    kind: str  # "detector" or "repair"
    index: int


@dataclass
class Victim:
    """A backdoored model and the data it was poisoned with (PoisonedDataset or VictimData)."""

    model: Any
    poisoned: Any
    how: str = "cached"
    attack: dict[str, Any] = field(default_factory=dict)


@dataclass
class State:
    """What every cell needs: the splits and the backdoored victim of each backdoor."""

    train: Any
    test: Any
    clean: Any
    victims: dict[str, Victim] = field(default_factory=dict)


def cache_dir(cfg: BackdoorDefenseConfig, out: Path) -> Path:
    """Where the backdoored models are cached: ``cache_dir``, else ``<out>/models``."""
    return Path(cfg.cache_dir) if cfg.cache_dir else out / "models"


def victim(cfg: BackdoorDefenseConfig, b: Any, state: State, cache: Path, device: torch.device,
           allow_train: bool = True) -> Victim:
    """The backdoored victim of ``b``: trained (driver) or loaded from the cache."""
    if b.attack == "baple":
        from medsec.experiments.backdoor_defense.victims import baple_victim

        model, poisoned, attack = baple_victim(cfg, b, state.train, state.test, cache, allow_train=allow_train)
        return Victim(model, poisoned, "trained", attack)
    if b.attack == "badmatch":
        from medsec.experiments.backdoor_defense.victims import badmatch_victim

        model, poisoned, attack = badmatch_victim(cfg, b, cache, allow_train=allow_train)
        return Victim(model, poisoned, "trained", attack)
    model, poisoned, how = _backdoored_model(cfg, b, state.train, cache, device, allow_train=allow_train)
    return Victim(model, poisoned, how)


def setup(ctx: CellContext) -> State:
    """A worker's state: the splits and every victim, loaded from the cache the driver filled."""
    cfg: BackdoorDefenseConfig = ctx.cfg
    state = State(*_splits(cfg))
    cache = cache_dir(cfg, ctx.out)
    for b, label in zip(cfg.backdoors, _labels(cfg.backdoors)):
        state.victims[label] = victim(cfg, b, state, cache, ctx.device, allow_train=False)
    return state


def work(state: State, job: CellJob, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """Run one detector or repair against one victim: ``[(cell id, record)]``."""
    cfg: BackdoorDefenseConfig = ctx.cfg
    blabel = _labels(cfg.backdoors)[job.backdoor]
    v = state.victims[blabel]
    log.info("running %s", job.cell)
    with ctx.cell(job.cell):
        if job.kind == "detector":
            rec = _run_detector(cfg.detectors[job.index], v.model, v.poisoned, state.test, state.clean, cfg)
        else:
            before = copy.deepcopy((ctx.section("backdoors") or {})[blabel]["metrics"])
            rec = _run_repair(cfg.repairs[job.index], v.model, v.poisoned, state.test, state.clean, before)
    return [(job.cell, {"backdoor": blabel, "kind": job.kind, **rec})]


def run(ctx: RunContext) -> None:
    """Run the backdoor x (detector, repair) grid into ``ctx.store`` (resuming a partial run):
    the driver trains (or loads) every victim and measures its CA / ASR, then every
    (backdoor, detector|repair) cell runs as a job through the run's executor."""
    cfg: BackdoorDefenseConfig = ctx.cfg
    store, device = ctx.store, ctx.device
    state = State(*_splits(cfg))
    train, test, clean = state.train, state.test, state.clean
    cache = cache_dir(cfg, ctx.out)
    cache.mkdir(parents=True, exist_ok=True)
    backdoors, detectors, repairs = labels_of(cfg)
    store.update(data={"name": cfg.data.name, "n_train": len(train), "n_test": len(test), "n_clean": len(clean),
                       "classes": list(getattr(train, "classes", []) or [])},
                 backdoors=store.results.get("backdoors") or {}, detectors=detectors, repairs=repairs)
    ids = plan(cfg)
    store.plan(ids)
    for b, blabel in zip(cfg.backdoors, backdoors):
        v = state.victims[blabel] = victim(cfg, b, state, cache, device)
        before = _bd_metrics(v.model, v.poisoned, test)
        store.results["backdoors"][blabel] = {
            "trigger": b.name if b.attack == "poisoning" else b.attack, "attack": b.attack, "params": dict(b.params),
            "target": b.target, "rate": b.rate, "policy": b.policy, "n_poisoned": len(v.poisoned.poison_indices),
            "model": v.how, "n_adaptation": len(v.poisoned.dataset.labels), "victim": v.attack.get("victim"),
            "attack_info": v.attack, "metrics": before}
        log.info("backdoor %s: CA %.3f, ASR %s", blabel, before["clean_accuracy"], before["attack_success_rate"])
        store.save()
    jobs = [Job(id=f"{blabel}/{kind}/{label}", cells=(f"{blabel}/{kind}/{label}",),
                payload=CellJob(f"{blabel}/{kind}/{label}", bi, kind, i))
            for bi, blabel in enumerate(backdoors)
            for kind, labels in (("detector", detectors), ("repair", repairs)) for i, label in enumerate(labels)]
    ctx.execute(jobs, setup=setup, work=work, state=state)


__all__ = ["CellJob", "State", "Victim", "check", "plan", "run", "setup", "victim", "work"]
