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

import medsec
from medsec.config.loader import dump_config
from medsec.config.schema import ExperimentConfig, ThreatConfig
from medsec.errors import ConfigError, DataError
from medsec.eval.checks import run_checks
from medsec.eval.executor import Executor, get_executor
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
    """One (attack, threat) evaluation of the grid."""

    id: str
    attack_index: int
    attack: str
    label: str
    params: dict[str, Any]
    threat: ThreatModel
    target: int | str | None
    seed: int


@dataclass
class Prepared:
    """What every cell needs: the model and the evaluation set with clean predictions."""

    model: Classifier
    x: torch.Tensor
    y: torch.Tensor
    pred_clean: torch.Tensor
    device: torch.device
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def _fmt_eps(threat: ThreatConfig | ThreatModel, eps: float) -> str:
    return f"{eps:g}" if threat.norm == "patch" else f"{eps * 255:.4g}"


def plan_cells(cfg: ExperimentConfig) -> list[Cell]:
    """Expand the config into cells: one per attack and eps."""
    names = [a.label or a.name for a in cfg.attacks]
    cells = []
    for i, a in enumerate(cfg.attacks):
        threat = a.threat or cfg.threat
        prefix = names[i] if names.count(names[i]) == 1 else f"{names[i]}{i}"
        prefix = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in prefix)
        for eps in threat.eps:
            mode = "targeted" if threat.targeted else "untargeted"
            cid = f"{prefix}-{threat.norm}-{_fmt_eps(threat, eps)}-{mode}"
            cells.append(Cell(
                id=cid, attack_index=i, attack=a.name, label=a.label or a.name, params=dict(a.params),
                threat=ThreatModel(threat.norm, eps, threat.targeted), target=threat.target,
                seed=zlib.crc32(f"{cfg.seed}:{cid}".encode()) & 0x7FFFFFFF,
            ))
    ids = [c.id for c in cells]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"the config gives the same cell twice: {sorted(dup)}; remove repeated eps values or add a label")
    return cells


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
            with task("training", t.epochs) as bar:
                res = train_classifier(model, tr, val_ds, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
                                       weight_decay=t.weight_decay, augment=t.augment, seed=cfg.seed, device=device,
                                       on_epoch=lambda r: bar.advance())
            test_acc = evaluate(model, eval_ds, device=device)
            train_info = {**t.model_dump(), "n_train": len(tr), "history": res.history,
                          "test_accuracy": test_acc, "runtime_s": res.runtime_s}
            save_checkpoint(model, ckpt, extra={"config": cfg.name, "test_accuracy": test_acc})
    model = model.to(device).eval()
    x, y = _eval_subset(eval_ds, cfg.eval.sample_limit, cfg.seed)
    from medsec.validation import check_images, check_labels

    check_images(x, model.spec, name="evaluation images")
    y = check_labels(y, len(x), model.task, model.num_classes, name="evaluation labels")
    pred = predict(model, x, cfg.eval.batch_size, device)
    classes = list(getattr(eval_ds, "classes", None) or model.classes)
    info = {
        "data": {"name": cfg.data.name, "split": cfg.data.eval_split, "classes": classes, "n_eval": len(x),
                 "image_shape": list(x.shape[1:])},
        "model": {"name": cfg.model.name, "task": model.task, "num_classes": model.num_classes,
                  "checkpoint": ckpt.name if cfg.train is not None else cfg.model.checkpoint, "train": train_info},
        "clean": {"accuracy": accuracy(pred, y), "n": len(x)},
    }
    return Prepared(model, x, y, pred, device, classes, info)


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


def run_cell(prep: Prepared, cell: Cell, cfg: ExperimentConfig, out_dir: Path) -> dict[str, Any]:
    """Attack the evaluation set for one cell and return its results.json record."""
    attack = ATTACKS.create(cell.attack, **cell.params)
    if getattr(attack, "iterative", False) and cfg.eval.early_stop:
        attack.early_stop = True
    x, y, model = prep.x, prep.y, prep.model
    target = _targets(cell, y, model)
    attacked = ~correct(target, y) if target is not None else correct(prep.pred_clean, y)
    idx_all = attacked.nonzero()[:, 0]
    x_adv = x.clone()
    gen = torch.Generator(device=prep.device).manual_seed(cell.seed)
    losses: list[torch.Tensor] = []
    queries: list[torch.Tensor] = []
    start = time.perf_counter()
    bs = cfg.eval.batch_size
    with task(f"{cell.id}", len(idx_all)) as bar:
        for i in range(0, len(idx_all), bs):
            idx = idx_all[i : i + bs]
            xb, yb = x[idx].to(prep.device), y[idx].to(prep.device)
            tb = target[idx].to(prep.device) if target is not None else None
            res = attack(model, xb, yb, threat=cell.threat, target=tb, generator=gen)
            x_adv[idx] = res.x_adv.detach().cpu()
            losses.append(res.loss.cpu())
            if res.queries is not None:
                queries.append(res.queries.cpu().float())
            bar.advance(len(idx))
    runtime = time.perf_counter() - start
    pred_adv = predict(model, x_adv, bs, prep.device)
    xa, xc = x_adv[idx_all], x[idx_all]
    norms = perturbation_norms(xc, xa) if len(idx_all) else {}
    if target is None:
        asr = float((~correct(pred_adv[idx_all], y[idx_all])).float().mean()) if len(idx_all) else None
    else:
        asr = float(correct(pred_adv[idx_all], target[idx_all]).float().mean()) if len(idx_all) else None
    loss = torch.cat(losses) if losses else torch.zeros(0)
    psnr = psnr_per_sample(xc, xa) if len(idx_all) else torch.zeros(0)
    finite_psnr = psnr[torch.isfinite(psnr)]
    lo, hi = model.spec.bounds
    metrics = {
        "robust_accuracy": accuracy(pred_adv, y),
        "attack_success_rate": asr,
        "clean_accuracy": accuracy(prep.pred_clean, y),
        "n_attacked": len(idx_all),
        **{k: float(v.mean()) for k, v in norms.items()},
        "psnr": (float(finite_psnr.mean()) if len(finite_psnr) else float("inf")) if len(idx_all) else None,
        "ssim": ssim(xc, xa, data_range=hi - lo) if len(idx_all) else None,
        "queries_mean": float(torch.cat(queries).mean()) if queries else None,
        "non_finite": int((~torch.isfinite(loss)).sum()),
    }
    record: dict[str, Any] = {
        "id": cell.id, "attack": cell.attack, "label": cell.label, "params": attack.params(),
        "threat": cell.threat.to_dict(), "target": cell.target, "metrics": metrics, "runtime_s": runtime,
        "seed": cell.seed, "examples": None,
    }
    k = min(cfg.eval.examples, len(idx_all))
    if k:
        ex = idx_all[:k]
        rel = f"examples/{cell.id}.npz"
        atomic_save_npz(out_dir / rel, clean=x[ex].numpy().astype(np.float32), adv=x_adv[ex].numpy().astype(np.float32),
                        label=y[ex].numpy(), pred_clean=prep.pred_clean[ex].numpy(), pred_adv=pred_adv[ex].numpy())
        record["examples"] = rel
    return record


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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_dump = cfg.model_dump(mode="json")
    results_path = out_dir / "results.json"
    prev = _load_previous(results_path, config_dump)
    atomic_write_text(out_dir / "config.resolved.yaml", dump_config(cfg))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    cells = plan_cells(cfg)
    prep = prepare(cfg, out_dir, prev)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": cfg.name, "status": "running", "config": config_dump,
        "provenance": provenance(prep.device),
        "seeds": {"global": cfg.seed, "cells": {c.id: c.seed for c in cells}},
        **prep.info, "evaluations": [], "checks": [],
    }
    done = {ev["id"]: ev for ev in prev.get("evaluations", [])}
    results["evaluations"] = [done[c.id] for c in cells if c.id in done]
    if done:
        log.info("resuming: %d of %d cells already done", len(results["evaluations"]), len(cells))
    atomic_write_json(results_path, results)
    pending = [c for c in cells if c.id not in done]
    executor = executor or get_executor(cfg.executor)
    order = {c.id: i for i, c in enumerate(cells)}
    for cell, record in executor.map(lambda c: run_cell(prep, c, cfg, out_dir), pending):
        log.info("%s: robust accuracy %.3f (%.1fs)", cell.id, record["metrics"]["robust_accuracy"], record["runtime_s"])
        results["evaluations"].append(record)
        results["evaluations"].sort(key=lambda ev: order[ev["id"]])
        atomic_write_json(results_path, results)
    results["checks"] = run_checks(results["evaluations"])
    results["status"] = "complete"
    results["provenance"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(results_path, results)
    if report:
        from medsec.report import write_report

        write_report(results, out_dir)
    return results

