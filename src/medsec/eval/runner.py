"""The experiment runner: config -> data + model -> (train) -> attacks -> results -> report.

Protocol (RobustBench/AutoAttack style): clean accuracy first; every (attack, eps) cell
attacks only the points that are correct on clean input (untargeted) or whose label is
not the target (targeted), with the attack's evaluation-mode early stop switched on;
robust accuracy counts over all evaluated points. Cells run through an
:class:`~medsec.eval.executor.Executor`; ``results.json`` is rewritten atomically after
every finished cell, and a rerun into the same folder with the same config resumes
where the last run stopped.

Randomness: the runner is the only place that seeds. Each cell gets its own
``torch.Generator`` seeded from (seed, cell id); the seeds go into results.json.
"""

from __future__ import annotations

import inspect
import logging
import platform
import socket
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medsec
from medsec.config.loader import dump_config
from medsec.config.schema import ExperimentConfig, ThreatConfig
from medsec.errors import ConfigError, DataError
from medsec.eval.checks import run_checks
from medsec.eval.executor import Executor, get_executor
from medsec.experiments.finish import finish_run
from medsec.io import atomic_save_npz, atomic_write_json, atomic_write_text
from medsec.metrics.accuracy import accuracy, correct
from medsec.metrics.image_quality import psnr_per_sample, ssim
from medsec.metrics.perturbation import perturbation_norms
from medsec.models.checkpoint import load_checkpoint, save_checkpoint
from medsec.models.classifier import Classifier
from medsec.progress import task
from medsec.registries import ATTACKS, DATASETS, MODELS
from medsec.training.classifier import evaluate, predict, train_classifier
from medsec.types import ThreatModel

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass
class Cell:
    """One (defence, attack, threat, plain/adaptive) evaluation of the grid."""

    id: str
    attack_index: int
    attack: str
    label: str
    params: dict[str, Any]
    threat: ThreatModel
    target: int | str | None
    seed: int
    defense: str | None = None
    adaptive: bool = False


@dataclass
class Job:
    """Cells run by one attack call: one cell, or every eps of a minimum-norm sweep."""

    cells: list[Cell]

    @property
    def id(self) -> str:
        return self.cells[0].id


@dataclass
class Prepared:
    """What every cell needs: the models (per defence) and the evaluation set."""

    model: Classifier
    x: torch.Tensor
    y: torch.Tensor
    pred_clean: torch.Tensor
    device: torch.device
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    models: dict[str | None, nn.Module] = field(default_factory=dict)
    preds: dict[str | None, torch.Tensor] = field(default_factory=dict)
    train_ds: Any = None


def _fmt_eps(threat: ThreatConfig | ThreatModel, eps: float) -> str:
    return f"{eps:g}" if threat.norm == "patch" else f"{eps * 255:.4g}"


def defense_labels(cfg: ExperimentConfig) -> list[str | None]:
    """Labels of the evaluated models: None for the undefended one, then each defence."""
    labels: list[str | None] = [None] if cfg.include_undefended or not cfg.defenses else []
    names = [d.label or d.name for d in cfg.defenses]
    for i, n in enumerate(names):
        labels.append(n if names.count(n) == 1 else f"{n}{i}")
    return labels


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in text)


def plan_cells(cfg: ExperimentConfig, adaptive_for: set[str | None] | None = None) -> list[Cell]:
    """Expand the config into cells: defence x attack x eps (x plain/adaptive).

    ``adaptive_for`` holds the defence labels whose models need adaptive attacks (known
    once the defences are built); gradient attacks get an extra adaptive cell there.
    """
    names = [a.label or a.name for a in cfg.attacks]
    cells = []
    for defense in defense_labels(cfg):
        for i, a in enumerate(cfg.attacks):
            threat = a.threat or cfg.threat
            prefix = _safe(names[i] if names.count(names[i]) == 1 else f"{names[i]}{i}")
            needs_grad = getattr(ATTACKS.get(a.name), "needs_gradients", True)
            modes = [False, True] if (adaptive_for and defense in adaptive_for and needs_grad) else [False]
            for adaptive in modes:
                for eps in threat.eps:
                    mode = "targeted" if threat.targeted else "untargeted"
                    parts = ([_safe(defense)] if defense else []) + [prefix, threat.norm, _fmt_eps(threat, eps), mode]
                    cid = "-".join(parts + (["adaptive"] if adaptive else []))
                    cells.append(Cell(
                        id=cid, attack_index=i, attack=a.name, label=a.label or a.name, params=dict(a.params),
                        threat=ThreatModel(threat.norm, eps, threat.targeted), target=threat.target,
                        seed=zlib.crc32(f"{cfg.seed}:{cid}".encode()) & 0x7FFFFFFF, defense=defense, adaptive=adaptive,
                    ))
    ids = [c.id for c in cells]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"the config gives the same cell twice: {sorted(dup)}; remove repeated eps values or add a label")
    return cells


def plan_jobs(cells: list[Cell]) -> list[Job]:
    """Group cells: minimum-norm attacks sweep all their eps in one job."""
    jobs: list[Job] = []
    groups: dict[tuple[Any, ...], Job] = {}
    for c in cells:
        if getattr(ATTACKS.get(c.attack), "minimum_norm", False):
            key = (c.defense, c.attack_index, c.adaptive)
            if key in groups:
                groups[key].cells.append(c)
                continue
            groups[key] = Job([c])
            jobs.append(groups[key])
        else:
            jobs.append(Job([c]))
    return jobs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device: cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {name!r}; use cpu, cuda, cuda:N or auto") from exc


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device) -> dict[str, Any]:
    return {
        "medsec": medsec.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "git": _git_hash(), "device": str(device), "hostname": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished": None,
    }


# --------------------------------------------------------------------------- data + model
def _takes(factory: Any, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def load_splits(cfg: ExperimentConfig) -> tuple[Any, Any, Any]:
    """(train, eval, val) datasets; val is None when not configured."""
    import medsec.data  # noqa: F401  (registration)

    factory = DATASETS.get(cfg.data.name)
    params = dict(cfg.data.params)
    if _takes(factory, "split"):
        if "split" in params:
            raise ConfigError("set data.train_split / data.eval_split instead of data.params.split")
        train = DATASETS.create(cfg.data.name, **params, split=cfg.data.train_split)
        ev = DATASETS.create(cfg.data.name, **params, split=cfg.data.eval_split)
        val = DATASETS.create(cfg.data.name, **params, split=cfg.data.val_split) if cfg.data.val_split else None
        return train, ev, val
    full = DATASETS.create(cfg.data.name, **params)
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed))
    n_eval = max(1, int(round(cfg.data.eval_fraction * len(full))))
    if n_eval >= len(full):
        raise DataError(f"dataset {cfg.data.name!r} has only {len(full)} images, too few to split")
    return full.subset(perm[n_eval:]), full.subset(perm[:n_eval]), None


def build_model(cfg: ExperimentConfig, train_ds: Any) -> Classifier:
    if cfg.model.checkpoint is not None:
        return load_checkpoint(cfg.model.checkpoint)
    name = cfg.model.name
    key = name.split(":", 1)[0] if ":" in name and name.split(":", 1)[0] in ("timm", "torchvision") else name
    factory = MODELS.get(key)
    params = dict(cfg.model.params)
    defaults = {"num_classes": getattr(train_ds, "num_classes", None), "in_channels": train_ds.image_shape[0],
                "task": getattr(train_ds, "task", "multiclass"), "classes": list(getattr(train_ds, "classes", []))}
    for k, v in defaults.items():
        if v is not None and k not in params and _takes(factory, k):
            params[k] = v
    if key != name:
        params["arch"] = name.split(":", 1)[1]
    model = MODELS.create(key, **params)
    if not isinstance(model, Classifier):
        raise ConfigError(f"model {name!r} is not a classifier; the classification runner needs one")
    return model


def _eval_subset(ds: Any, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(ds)
    if n == 0:
        raise DataError("the evaluation set is empty")
    if limit is not None and limit < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        return ds.images[idx], ds.labels[idx]
    return ds.images, ds.labels


def prepare(cfg: ExperimentConfig, out_dir: Path, results: dict[str, Any]) -> Prepared:
    """Load data, build or train or load the model, and compute clean predictions."""
    device = resolve_device(cfg.device)
    train_ds, eval_ds, val_ds = load_splits(cfg)
    model = build_model(cfg, train_ds)
    ckpt = out_dir / "model.safetensors"
    train_info = None
    if cfg.train is not None:
        prior = (results.get("model") or {}).get("train")
        if prior and ckpt.is_file():
            log.info("resuming: reusing the model trained by the previous run (%s)", ckpt)
            model = load_checkpoint(ckpt)
            train_info = prior
        else:
            t = cfg.train
            tr = train_ds
            if t.limit is not None and t.limit < len(tr):
                tr = tr.subset(torch.randperm(len(tr), generator=torch.Generator().manual_seed(cfg.seed))[: t.limit])
            log.info("training %s on %d images for %d epochs", cfg.model.name, len(tr), t.epochs)
            from medsec.training.adversarial import from_config

            with task("training", t.epochs) as bar:
                res = train_classifier(model, tr, val_ds, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
                                       weight_decay=t.weight_decay, augment=t.augment, seed=cfg.seed, device=device,
                                       on_epoch=lambda r: bar.advance(), adversarial=from_config(t.adversarial))
            test_acc = evaluate(model, eval_ds, device=device)
            train_info = {**t.model_dump(), "n_train": len(tr), "history": res.history,
                          "test_accuracy": test_acc, "runtime_s": res.runtime_s}
            save_checkpoint(model, ckpt, extra={"config": cfg.name, "test_accuracy": test_acc})
    model = model.to(device).eval()
    x, y = _eval_subset(eval_ds, cfg.eval.sample_limit, cfg.seed)
    from medsec.validation import check_images, check_labels

    check_images(x, model.spec, name="evaluation images")
    y = check_labels(y, len(x), model.task, model.num_classes, name="evaluation labels")
    models, preds, defenses_info = build_defended(cfg, model, x, device)
    base = None if None in models else next(iter(models))
    pred = preds[base]
    classes = list(getattr(eval_ds, "classes", None) or model.classes)
    info = {
        "data": {"name": cfg.data.name, "split": cfg.data.eval_split, "classes": classes, "n_eval": len(x),
                 "image_shape": list(x.shape[1:])},
        "model": {"name": cfg.model.name, "task": model.task, "num_classes": model.num_classes,
                  "checkpoint": ckpt.name if cfg.train is not None else cfg.model.checkpoint, "train": train_info},
        "clean": {"accuracy": accuracy(pred, y), "n": len(x)},
        "defenses": defenses_info,
    }
    return Prepared(model, x, y, pred, device, classes, info, models, preds, train_ds)


def build_defended(
    cfg: ExperimentConfig, model: Classifier, x: torch.Tensor, device: torch.device
) -> tuple[dict[str | None, nn.Module], dict[str | None, torch.Tensor], list[dict[str, Any]]]:
    """The model under each defence (None = undefended), its clean predictions and facts."""
    import medsec.defenses  # noqa: F401  (registration)
    from medsec.defenses.base import Defended
    from medsec.models.accelerate import accelerate
    from medsec.registries import DEFENSES

    models: dict[str | None, nn.Module] = {}
    preds: dict[str | None, torch.Tensor] = {}
    info = []
    e = cfg.eval
    for label in defense_labels(cfg):
        if label is None:
            m: nn.Module = model
        else:
            idx = defense_labels(cfg).index(label) - (1 if None in defense_labels(cfg) else 0)
            d = cfg.defenses[idx]
            m = Defended(model, DEFENSES.create(d.name, **d.params)).to(device).eval()
        models[label] = accelerate(m, e.precision, e.channels_last, e.compile)
        preds[label] = predict(models[label], x, e.batch_size, device)  # type: ignore[arg-type]
        if label is not None:
            info.append({"label": label, "name": d.name, "params": dict(d.params),
                         "differentiable": bool(getattr(m, "differentiable", True)),
                         "stochastic": bool(getattr(m, "stochastic", False))})
    return models, preds, info


# --------------------------------------------------------------------------- cells
def _targets(cell: Cell, y: torch.Tensor, model: Classifier) -> torch.Tensor | None:
    if not cell.threat.targeted:
        return None
    if model.task == "multilabel":
        raise ConfigError("targeted attacks on multi-label heads need explicit target vectors; use the Python API")
    if cell.target == "next":
        return (y + 1) % model.num_classes
    t = int(cell.target)  # type: ignore[arg-type]
    if not 0 <= t < model.num_classes:
        raise ConfigError(f"target class {t} is out of range for a model with {model.num_classes} classes")
    return torch.full_like(y, t)


def _attack_for(cell: Cell, cfg: ExperimentConfig, model: nn.Module) -> tuple[Any, nn.Module]:
    from medsec.attacks.adaptive import adaptive

    attack = ATTACKS.create(cell.attack, **cell.params)
    if getattr(attack, "iterative", False) and cfg.eval.early_stop:
        attack.early_stop = True
    if cell.adaptive:
        attack, model = adaptive(attack, model, cfg.eval.eot_samples)
    return attack, model


def run_job(prep: Prepared, job: Job, cfg: ExperimentConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Attack the evaluation set for every cell of a job; one results.json record per cell."""
    first = job.cells[0]
    model = prep.models[first.defense]
    pred_clean = prep.preds[first.defense]
    x, y = prep.x, prep.y
    attack, attacked_model = _attack_for(first, cfg, model)
    target = _targets(first, y, prep.model)
    attacked = ~correct(target, y) if target is not None else correct(pred_clean, y)
    idx_all = attacked.nonzero()[:, 0]
    threats = [c.threat for c in job.cells]
    x_adv = [x.clone() for _ in threats]
    gen = torch.Generator(device=prep.device).manual_seed(first.seed)
    losses: list[list[torch.Tensor]] = [[] for _ in threats]
    queries: list[list[torch.Tensor]] = [[] for _ in threats]
    broken_by: list[list[torch.Tensor]] = [[] for _ in threats]
    stages: list[str] | None = None
    fit_info: dict[str, Any] = {}
    start = time.perf_counter()
    bs = cfg.eval.batch_size
    if getattr(attack, "universal", False):
        transforms = _fit_universal(prep, attack, attacked_model, first, threats, gen, cfg, fit_info)
        for k, transform in enumerate(transforms):
            for i in range(0, len(idx_all), bs):
                idx = idx_all[i : i + bs]
                x_adv[k][idx] = transform(x[idx].to(prep.device)).detach().cpu()
    else:
        with task(first.id, len(idx_all)) as bar:
            for i in range(0, len(idx_all), bs):
                idx = idx_all[i : i + bs]
                xb, yb = x[idx].to(prep.device), y[idx].to(prep.device)
                tb = target[idx].to(prep.device) if target is not None else None
                results = attack.sweep(attacked_model, xb, yb, threats, target=tb, generator=gen)
                for k, res in enumerate(results):
                    x_adv[k][idx] = res.x_adv.detach().cpu()
                    losses[k].append(res.loss.cpu())
                    if res.queries is not None:
                        queries[k].append(res.queries.cpu().float())
                    if "broken_by" in res.extras:
                        broken_by[k].append(res.extras["broken_by"].cpu())
                        stages = list(res.extras["stages"])
                bar.advance(len(idx))
    runtime = time.perf_counter() - start
    records = []
    for k, cell in enumerate(job.cells):
        records.append(_record(prep, cell, attack, model, pred_clean, target, idx_all, x_adv[k], losses[k], queries[k],
                               broken_by[k], stages, runtime / len(job.cells), cfg, out_dir, fit_info.get(k)))
        if len(job.cells) > 1:
            records[-1]["sweep"] = {"cells": len(job.cells), "runtime_s_total": runtime}
    return records


def _fit_universal(prep: Prepared, attack: Any, model: nn.Module, cell: Cell, threats: list[ThreatModel],
                   gen: torch.Generator, cfg: ExperimentConfig, info: dict[int, Any]) -> list[Any]:
    """Fit one universal attack per eps on (a seeded subset of) the training split.

    Returns one function x -> attacked x per eps: the attack's ``fitted_transform()``
    when it has one (e.g. SNAP's replacement patch), else the additive clamp(x + delta).
    A targeted cell fits towards the cell's target (all-to-one or "next").
    """
    ds = prep.train_ds
    n = min(cfg.eval.universal_fit_size, len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed))[:n].sort().values
    fx, fy = ds.images[idx].to(prep.device), ds.labels[idx].to(prep.device)
    bounds = prep.model.spec.bounds
    transforms = []
    for k, threat in enumerate(threats):
        target = _targets(cell, fy.cpu(), prep.model)
        kwargs = {"target": target.to(prep.device)} if target is not None else {}
        delta = attack.fit(model, fx, fy, threat, generator=gen, **kwargs)
        info[k] = {"fit_size": n, "fit_fooling_rate": getattr(attack, "fooling_rate_", None)}
        make = getattr(attack, "fitted_transform", None)
        if callable(make):
            transforms.append(make())
        else:
            d = delta.detach().reshape(1, *fx.shape[1:])
            transforms.append(lambda xb, d=d: (xb + d.to(xb.device)).clamp(*bounds))
    return transforms


def _record(prep: Prepared, cell: Cell, attack: Any, model: nn.Module, pred_clean: torch.Tensor,
            target: torch.Tensor | None, idx_all: torch.Tensor, x_adv: torch.Tensor, losses: list[torch.Tensor],
            queries: list[torch.Tensor], broken_by: list[torch.Tensor], stages: list[str] | None, runtime: float,
            cfg: ExperimentConfig, out_dir: Path, fit: dict[str, Any] | None) -> dict[str, Any]:
    x, y = prep.x, prep.y
    bs = cfg.eval.batch_size
    pred_adv = predict(model, x_adv, bs, prep.device)  # type: ignore[arg-type]
    xa, xc = x_adv[idx_all], x[idx_all]
    n_att = len(idx_all)
    norms = perturbation_norms(xc, xa) if n_att else {}
    if target is None:
        asr = float((~correct(pred_adv[idx_all], y[idx_all])).float().mean()) if n_att else None
    else:
        asr = float(correct(pred_adv[idx_all], target[idx_all]).float().mean()) if n_att else None
    loss = torch.cat(losses) if losses else torch.zeros(0)
    psnr = psnr_per_sample(xc, xa) if n_att else torch.zeros(0)
    finite_psnr = psnr[torch.isfinite(psnr)]
    lo, hi = prep.model.spec.bounds
    robust = correct(pred_adv, y)
    metrics: dict[str, Any] = {
        "robust_accuracy": float(robust.float().mean()),
        "attack_success_rate": asr,
        "clean_accuracy": accuracy(pred_clean, y),
        "n_attacked": n_att,
        **{k: float(v.mean()) for k, v in norms.items()},
        "psnr": (float(finite_psnr.mean()) if len(finite_psnr) else float("inf")) if n_att else None,
        "ssim": ssim(xc, xa, data_range=hi - lo) if n_att else None,
        "queries_mean": float(torch.cat(queries).mean()) if queries else None,
        "non_finite": int((~torch.isfinite(loss)).sum()),
    }
    if fit:
        metrics.update(fit)
    if cell.threat.norm == "patch" and n_att:
        from medsec.metrics.naturalness import naturalness

        metrics.update(naturalness(xc, xa))
    record: dict[str, Any] = {
        "id": cell.id, "attack": cell.attack, "label": cell.label, "params": attack.params(),
        "threat": cell.threat.to_dict(), "target": cell.target, "defense": cell.defense, "adaptive": cell.adaptive,
        "gradient_free": not getattr(attack, "needs_gradients", True),
        "minimum_norm": bool(getattr(attack, "minimum_norm", False)),
        "universal": bool(getattr(attack, "universal", False)),
        "eot_samples": int(getattr(attack, "eot_samples", 1)),
        "metrics": metrics, "runtime_s": runtime, "seed": cell.seed, "examples": None,
        "robust_bits": np.packbits(robust.numpy().astype(np.uint8)).tobytes().hex(),
    }
    if stages and broken_by:
        bb = torch.full((len(x),), -1, dtype=torch.long)
        bb[idx_all] = torch.cat(broken_by)
        clean_ok = correct(pred_clean, y) if target is None else torch.ones(len(x), dtype=torch.bool)
        record["stages"] = [
            {"attack": name, "robust_accuracy_after": float((clean_ok & ((bb < 0) | (bb > s))).float().mean()),
             "broken": int((bb == s).sum())}
            for s, name in enumerate(stages)
        ]
    k = min(cfg.eval.examples, n_att)
    if k:
        ex = idx_all[:k]
        rel = f"examples/{cell.id}.npz"
        atomic_save_npz(out_dir / rel, clean=x[ex].numpy().astype(np.float32), adv=x_adv[ex].numpy().astype(np.float32),
                        label=y[ex].numpy(), pred_clean=pred_clean[ex].numpy(), pred_adv=pred_adv[ex].numpy())
        record["examples"] = rel
    return record


def worst_case(evaluations: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Per (defence, norm, eps, mode): a point is robust only if every attack failed on it."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for ev in evaluations:
        t = ev["threat"]
        groups.setdefault((ev.get("defense"), t["norm"], t["eps"], t["targeted"]), []).append(ev)
    out = []
    for (defense, norm, eps, targeted), evs in groups.items():
        mask = np.ones(n, dtype=bool)
        for ev in evs:
            bits = np.unpackbits(np.frombuffer(bytes.fromhex(ev["robust_bits"]), dtype=np.uint8))[:n].astype(bool)
            mask &= bits
        out.append({"defense": defense, "norm": norm, "eps": eps, "eps_255": eps * 255, "targeted": targeted,
                    "robust_accuracy": float(mask.mean()), "attacks": [ev["id"] for ev in evs],
                    "best_attack": min(evs, key=lambda e: e["metrics"]["robust_accuracy"])["id"]})
    return out


# --------------------------------------------------------------------------- driver
def _load_previous(path: Path, config_dump: dict[str, Any]) -> dict[str, Any]:
    import json

    if not path.is_file():
        return {}
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s", path)
        return {}
    if prev.get("config") != config_dump:
        raise ConfigError(
            f"{path.parent} holds results of a different config; choose another --out folder or delete it"
        )
    return prev


def run_experiment(
    cfg: ExperimentConfig, out_dir: str | Path, executor: Executor | None = None, report: bool = True
) -> dict[str, Any]:
    """Run an experiment into ``out_dir`` (resuming it if it holds a partial run of the same config)."""
    from medsec.attacks.adaptive import needs_adaptive
    from medsec.eval.checks import model_checks
    from medsec.eval.segmentation import is_segmentation, run_segmentation

    if not isinstance(cfg, ExperimentConfig):  # another experiment kind (medsec.experiments)
        from medsec.experiments import get_kind

        return get_kind(cfg.kind).run(cfg, out_dir, report=report)
    if is_segmentation(cfg):
        return run_segmentation(cfg, out_dir, report=report)
    if any(a.mode != "pixel" for a in cfg.attacks):
        raise ConfigError("attack mode 'paper' is for segmentation experiments only; remove mode or use mode: pixel")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_dump = cfg.model_dump(mode="json")
    results_path = out_dir / "results.json"
    prev = _load_previous(results_path, config_dump)
    for a in cfg.attacks:  # refuse bad attack parameters (e.g. an unknown mask) before any output
        ATTACKS.create(a.name, **a.params)
    atomic_write_text(out_dir / "config.resolved.yaml", dump_config(cfg))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    plan_cells(cfg)  # refuse a bad grid before any work
    prep = prepare(cfg, out_dir, prev)
    adaptive_for = {d for d, m in prep.models.items() if cfg.eval.adaptive and needs_adaptive(m)}
    cells = plan_cells(cfg, adaptive_for)
    jobs = plan_jobs(cells)
    pre_checks: list[dict[str, Any]] = []
    if cfg.eval.model_checks:
        k = min(64, len(prep.x))
        for label, m in prep.models.items():
            pre_checks += model_checks(m, prep.x[:k].to(prep.device), prep.y[:k].to(prep.device),
                                       label=label or "model")
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": cfg.name, "status": "running", "config": config_dump,
        "provenance": provenance(prep.device),
        "seeds": {"global": cfg.seed, "cells": {c.id: c.seed for c in cells}},
        **prep.info, "evaluations": [], "worst_case": [], "checks": pre_checks,
    }
    done = {ev["id"]: ev for ev in prev.get("evaluations", [])}
    results["evaluations"] = [done[c.id] for c in cells if c.id in done]
    if done:
        log.info("resuming: %d of %d cells already done", len(results["evaluations"]), len(cells))
    atomic_write_json(results_path, results)
    pending = [j for j in jobs if any(c.id not in done for c in j.cells)]
    executor = executor or get_executor(cfg.executor)
    order = {c.id: i for i, c in enumerate(cells)}
    for _job, records in executor.map(lambda j: run_job(prep, j, cfg, out_dir), pending):
        for record in records:
            log.info("%s: robust accuracy %.3f (%.1fs)", record["id"], record["metrics"]["robust_accuracy"],
                     record["runtime_s"])
            done[record["id"]] = record
        results["evaluations"] = sorted((done[c.id] for c in cells if c.id in done), key=lambda ev: order[ev["id"]])
        atomic_write_json(results_path, results)
    results["worst_case"] = worst_case(results["evaluations"], len(prep.x))
    results["checks"] = pre_checks + run_checks(results["evaluations"])
    from medsec.report.robustness import matrix_record

    results["matrix"] = matrix_record(results)  # the defence x attack matrix of the report (issue 9)
    return finish_run(results, results_path, report)
