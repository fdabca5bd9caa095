"""The evasion kind's run: config -> data + model -> (train) -> attacks -> cells.

Protocol (RobustBench/AutoAttack style): clean accuracy first; every (attack, eps) cell
attacks only the points that are correct on clean input (untargeted) or whose label is not
the target (targeted), with the attack's evaluation-mode early stop switched on; robust
accuracy counts over all evaluated points. Jobs (one cell, or every eps of a minimum-norm
sweep) run through the run's executor; every finished cell is saved at once by the run
store, and a rerun resumes (reusing the model a previous run trained).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from medsec.errors import ConfigError, DataError
from medsec.experiments.evasion.checks import model_checks, run_checks
from medsec.experiments.evasion.config import EvasionConfig, ThreatConfig
from medsec.metrics.accuracy import accuracy, correct
from medsec.metrics.image_quality import psnr_per_sample, ssim
from medsec.metrics.perturbation import perturbation_norms
from medsec.models.checkpoint import load_checkpoint, save_checkpoint
from medsec.models.classifier import Classifier
from medsec.progress import task
from medsec.registry import ATTACKS
from medsec.runs.components import build_model, eval_subset, load_splits
from medsec.runs.context import CellContext, RunContext
from medsec.runs.executor import Job as WorkJob
from medsec.runs.grid import cell_seed, check_unique, safe_id, unique_labels
from medsec.training.classifier import evaluate, predict, train_classifier
from medsec.types import ThreatModel

log = logging.getLogger(__name__)


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


def fmt_eps(threat: ThreatConfig | ThreatModel, eps: float) -> str:
    """eps as it appears in a cell id: x 255 for pixel norms, as is for patch fractions."""
    return f"{eps:g}" if threat.norm == "patch" else f"{eps * 255:.4g}"


def defense_labels(cfg: Any) -> list[str | None]:
    """Labels of the evaluated models: None for the undefended one, then each defence (a
    config without a ``defenses`` section, e.g. segmentation, has the undefended one only)."""
    defenses = getattr(cfg, "defenses", [])
    labels: list[str | None] = [None] if getattr(cfg, "include_undefended", True) or not defenses else []
    labels += unique_labels([d.label or d.name for d in defenses])
    return labels


def plan_cells(cfg: Any, adaptive_for: set[str | None] | None = None) -> list[Cell]:
    """Expand an evasion (or segmentation) config into cells: defence x attack x eps (x
    plain/adaptive).

    ``adaptive_for`` holds the defence labels whose models need adaptive attacks (known
    once the defences are built); gradient attacks get an extra adaptive cell there.
    """
    names = unique_labels([a.label or a.name for a in cfg.attacks])
    cells = []
    for defense in defense_labels(cfg):
        for i, a in enumerate(cfg.attacks):
            threat = a.threat or cfg.threat
            prefix = safe_id(names[i])
            needs_grad = getattr(ATTACKS.get(a.name), "needs_gradients", True)
            modes = [False, True] if (adaptive_for and defense in adaptive_for and needs_grad) else [False]
            for adaptive in modes:
                for eps in threat.eps:
                    mode = "targeted" if threat.targeted else "untargeted"
                    parts = ([safe_id(defense)] if defense else []) + [prefix, threat.norm, fmt_eps(threat, eps), mode]
                    cid = "-".join(parts + (["adaptive"] if adaptive else []))
                    cells.append(Cell(
                        id=cid, attack_index=i, attack=a.name, label=a.label or a.name, params=dict(a.params),
                        threat=ThreatModel(threat.norm, eps, threat.targeted), target=threat.target,
                        seed=cell_seed(cfg.seed, cid), defense=defense, adaptive=adaptive,
                    ))
    check_unique([c.id for c in cells])
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


def plan(cfg: EvasionConfig) -> list[str]:
    """The cell ids of the config (adaptive cells of defended models are added at run time,
    once the defences are built)."""
    return [c.id for c in plan_cells(cfg)]


def check(cfg: EvasionConfig) -> None:
    """Refuse unknown components, parameters a component does not take, an attack's
    unsupported norm, bad attack parameters (e.g. an unknown mask) and a grid with repeated
    cells, before any work."""
    import medsec.attacks
    import medsec.data
    import medsec.defenses  # noqa: F401  (registration)
    from medsec.config.loader import check_component, check_model
    from medsec.registry import DATASETS, DEFENSES

    for i, a in enumerate(cfg.attacks):
        factory = check_component(ATTACKS, a.name, a.params, f"attacks.{i}")
        threat = a.threat or cfg.threat
        norms = getattr(factory, "norms", ())
        if norms and threat.norm not in norms:
            raise ConfigError(f"attacks.{i} ({a.name}) supports norms {', '.join(norms)}, not {threat.norm!r}")
    check_component(DATASETS, cfg.data.name, cfg.data.params, "data")
    for i, d in enumerate(cfg.defenses):
        check_component(DEFENSES, d.name, d.params, f"defenses.{i}")
    check_model(cfg.model)
    for a in cfg.attacks:
        ATTACKS.create(a.name, **a.params)
    plan_cells(cfg)


# --------------------------------------------------------------------------- data + model
def build_classifier(cfg: EvasionConfig, train_ds: Any) -> Classifier:
    """The config's classifier (built, or loaded from ``model.checkpoint``)."""
    model = build_model(cfg.model, train_ds)
    if not isinstance(model, Classifier):
        raise ConfigError(f"model {cfg.model.name!r} is not a classifier; the evasion kind needs one "
                          "(segmenters run with kind: segmentation)")
    return model


def prepare(cfg: EvasionConfig, ctx: CellContext) -> Prepared:
    """Load data, build or train or load the model, and compute clean predictions (a worker
    only loads: the driver trained the model into the run folder)."""
    device, out_dir = ctx.device, ctx.out
    train_ds, eval_ds, val_ds = load_splits(cfg.data, cfg.seed)
    if getattr(train_ds, "task", None) == "segmentation":
        raise ConfigError(f"dataset {cfg.data.name!r} is a segmentation dataset; set kind: segmentation")
    model = build_classifier(cfg, train_ds)
    ckpt = out_dir / "model.safetensors"
    train_info = None
    if cfg.train is not None:
        prior = (ctx.section("model") or {}).get("train")
        if prior and ckpt.is_file():
            log.info("resuming: reusing the model trained by the previous run (%s)", ckpt)
            model = cast(Classifier, load_checkpoint(ckpt))
            train_info = prior
        elif ctx.on_worker:
            raise DataError(f"{ckpt} (the model the driver trained) is missing on this worker; put the run folder "
                            "on storage every worker reads")
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
    x, y = eval_subset(eval_ds, cfg.eval.sample_limit, cfg.seed)
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
    cfg: EvasionConfig, model: Classifier, x: torch.Tensor, device: torch.device
) -> tuple[dict[str | None, nn.Module], dict[str | None, torch.Tensor], list[dict[str, Any]]]:
    """The model under each defence (None = undefended), its clean predictions and facts."""
    import medsec.defenses  # noqa: F401  (registration)
    from medsec.defenses.base import Defended
    from medsec.models.accelerate import accelerate
    from medsec.registry import DEFENSES

    models: dict[str | None, nn.Module] = {}
    preds: dict[str | None, torch.Tensor] = {}
    info = []
    e = cfg.eval
    labels = defense_labels(cfg)
    for label in labels:
        if label is None:
            m: nn.Module = model
        else:
            d = cfg.defenses[labels.index(label) - (1 if None in labels else 0)]
            m = Defended(model, DEFENSES.create(d.name, **d.params)).to(device).eval()
        models[label] = accelerate(m, e.precision, e.channels_last, e.compile)
        preds[label] = predict(models[label], x, e.batch_size, device)  # type: ignore[arg-type]
        if label is not None:
            info.append({"label": label, "name": d.name, "params": dict(d.params),
                         "differentiable": bool(getattr(m, "differentiable", True)),
                         "stochastic": bool(getattr(m, "stochastic", False))})
    return models, preds, info


# --------------------------------------------------------------------------- cells
def targets_of(cell: Cell, y: torch.Tensor, model: Classifier) -> torch.Tensor | None:
    """The target class of each image for a targeted cell (None when untargeted)."""
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


def attack_for(cell: Cell, cfg: EvasionConfig, model: nn.Module) -> tuple[Any, nn.Module]:
    """The cell's attack (early stop on), made adaptive (BPDA/EOT) for an adaptive cell."""
    from medsec.attacks.adaptive import adaptive

    attack = ATTACKS.create(cell.attack, **cell.params)
    if getattr(attack, "iterative", False) and cfg.eval.early_stop:
        attack.early_stop = True
    if cell.adaptive:
        attack, model = adaptive(attack, model, cfg.eval.eot_samples)
    return attack, model


def run_job(prep: Prepared, job: Job, cfg: EvasionConfig, ctx: CellContext) -> list[dict[str, Any]]:
    """Attack the evaluation set for every cell of a job; one results.json record per cell."""
    first = job.cells[0]
    model = prep.models[first.defense]
    pred_clean = prep.preds[first.defense]
    x, y = prep.x, prep.y
    attack, attacked_model = attack_for(first, cfg, model)
    target = targets_of(first, y, prep.model)
    attacked = ~correct(target, y) if target is not None else correct(pred_clean, y)
    idx_all = attacked.nonzero()[:, 0]
    threats = [c.threat for c in job.cells]
    x_adv = [x.clone() for _ in threats]
    losses: list[list[torch.Tensor]] = [[] for _ in threats]
    queries: list[list[torch.Tensor]] = [[] for _ in threats]
    broken_by: list[list[torch.Tensor]] = [[] for _ in threats]
    stages: list[str] | None = None
    fit_info: dict[int, Any] = {}
    start = time.perf_counter()
    bs = cfg.eval.batch_size
    with ctx.cell(first.id) as gen:
        if getattr(attack, "universal", False):
            transforms = fit_universal(prep, attack, attacked_model, first, threats, gen, cfg, fit_info)
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
        records.append(record_of(prep, cell, attack, model, pred_clean, target, idx_all, x_adv[k], losses[k],
                                 queries[k], broken_by[k], stages, runtime / len(job.cells), cfg, ctx, fit_info.get(k)))
        if len(job.cells) > 1:
            records[-1]["sweep"] = {"cells": len(job.cells), "runtime_s_total": runtime}
    return records


def fit_universal(prep: Prepared, attack: Any, model: nn.Module, cell: Cell, threats: list[ThreatModel],
                  gen: torch.Generator, cfg: EvasionConfig, info: dict[int, Any]) -> list[Any]:
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
        target = targets_of(cell, fy.cpu(), prep.model)
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


def record_of(prep: Prepared, cell: Cell, attack: Any, model: nn.Module, pred_clean: torch.Tensor,
              target: torch.Tensor | None, idx_all: torch.Tensor, x_adv: torch.Tensor, losses: list[torch.Tensor],
              queries: list[torch.Tensor], broken_by: list[torch.Tensor], stages: list[str] | None, runtime: float,
              cfg: EvasionConfig, ctx: CellContext, fit: dict[str, Any] | None) -> dict[str, Any]:
    """The results.json record of one finished cell (and its example images)."""
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
        record["examples"] = ctx.save_npz(
            f"examples/{cell.id}.npz", clean=x[ex].numpy().astype(np.float32), adv=x_adv[ex].numpy().astype(np.float32),
            label=y[ex].numpy(), pred_clean=pred_clean[ex].numpy(), pred_adv=pred_adv[ex].numpy())
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
def setup(ctx: CellContext) -> Prepared:
    """A worker's state: the data and models, loaded once (:mod:`medsec.runs.executor`)."""
    return prepare(ctx.cfg, ctx)


def work(prep: Prepared, job: Job, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """Run one job on a prepared state: ``(cell id, record)`` per cell."""
    records = run_job(prep, job, ctx.cfg, ctx)
    for record in records:
        log.info("%s: robust accuracy %.3f (%.1fs)", record["id"], record["metrics"]["robust_accuracy"],
                 record["runtime_s"])
    return [(r["id"], r) for r in records]


def run(ctx: RunContext) -> None:
    """Run the evasion grid into ``ctx.store`` (resuming a partial run of the same config)."""
    from medsec.attacks.adaptive import needs_adaptive
    from medsec.experiments.evasion.robustness import matrix_record

    cfg: EvasionConfig = ctx.cfg
    store = ctx.store
    prep = prepare(cfg, ctx)
    adaptive_for = {d for d, m in prep.models.items() if cfg.eval.adaptive and needs_adaptive(m)}
    cells = plan_cells(cfg, adaptive_for)
    jobs = plan_jobs(cells)
    pre_checks: list[dict[str, Any]] = []
    if cfg.eval.model_checks:
        k = min(64, len(prep.x))
        for label, m in prep.models.items():
            pre_checks += model_checks(m, prep.x[:k].to(prep.device), prep.y[:k].to(prep.device),
                                       label=label or "model")
    store.update(**prep.info)
    store.plan([c.id for c in cells])
    if store.cells:
        log.info("resuming: %d of %d cells already done", len(store.cells), len(cells))
    ctx.execute([WorkJob(j.id, tuple(c.id for c in j.cells), j) for j in jobs], setup=setup, work=work, state=prep)
    evaluations = list(store.cells.values())
    store.add_checks(pre_checks + run_checks(evaluations))
    store.update(worst_case=worst_case(evaluations, len(prep.x)))
    store.update(matrix=matrix_record(store.results))


__all__ = ["Cell", "Job", "Prepared", "build_classifier", "check", "defense_labels", "plan", "plan_cells",
           "plan_jobs", "prepare", "run", "run_job", "setup", "work", "worst_case"]
