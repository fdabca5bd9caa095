"""The segmentation kind's run: config -> data + segmenter -> (train) -> attacks -> Dice/IoU.

Protocol: clean masks and metrics first; every (attack, eps) cell attacks the
whole evaluation set (no early stop: the measured quantity is the Dice damage, not a
success rate) with the objective ``dice_ce`` against the true mask (or the configured
loss), in ``pixel`` mode (eps in [0, 1] units, clamped; optional 8-bit quantisation) or
``paper`` mode (:mod:`medsec.eval.paper_mode`). Targeted cells use a target mask filled
with ``threat.target`` (0 = make the lesion vanish). Universal attacks (``uap_sgd``,
``uap_seg``) are fitted on a seeded subset of the training split and applied to the
evaluation set (transfer). Per cell: mean Dice, IoU, HD95, lesion-miss rate,
empty-prediction rate, their drops from clean, the objective's success rate and the
relative-drop success rate (clean Dice - adversarial Dice >= ``segmentation.drop``).

Driver and workers (:mod:`medsec.runs.executor`): the driver (:func:`run`) loads the data
and trains the segmenter once, into ``model.safetensors`` in the run folder (a rerun reuses
it), records the clean masks' metrics, and hands one job per cell to the run's executor; a
worker's :func:`setup` loads the data and that checkpoint (it never trains) and :func:`work`
attacks for one cell, its randomness seeded from the cell id alone. Every finished cell is
saved at once and a rerun of the same config resumes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from medsec.errors import ConfigError, DataError
from medsec.experiments.evasion.run import Cell, plan_cells
from medsec.experiments.segmentation.config import SegmentationConfig, SegmentationSection
from medsec.metrics.image_quality import psnr_per_sample
from medsec.metrics.perturbation import perturbation_norms
from medsec.metrics.segmentation import dice, segmentation_summary
from medsec.progress import task
from medsec.registry import ATTACKS
from medsec.runs.components import build_model, eval_subset, load_splits, takes
from medsec.runs.context import CellContext, RunContext
from medsec.runs.executor import Job
from medsec.types import ThreatModel

log = logging.getLogger(__name__)

# the paper's fine-tuning recipe, used where the config's train section leaves a value unset
SEG_TRAIN_DEFAULTS = {"lr": 1e-3, "weight_decay": 1e-3, "batch_size": 16}


def build_segmenter(cfg: SegmentationConfig, train_ds: Any) -> Any:
    """The config's segmenter (built, or loaded from ``model.checkpoint``), with its prompt set."""

    seg_cfg = cfg.segmentation
    from medsec.models.segmenter import Segmenter

    model = build_model(cfg.model, train_ds, **({"prompt": seg_cfg.prompt} if seg_cfg.prompt is not None else {}))
    if not isinstance(model, Segmenter):
        raise ConfigError(f"model {cfg.model.name!r} is not a segmenter; use monai_unet, clipseg or another Segmenter "
                          "(classifiers run with kind: evasion)")
    if model.prompted and model.prompt is None:
        if seg_cfg.prompt is None:
            raise ConfigError("this segmenter needs a text prompt: set segmentation.prompt (e.g. 'polyp')")
        model.set_prompt(seg_cfg.prompt)
    return model


def _predict(model: Any, x: torch.Tensor, bs: int, device: torch.device) -> torch.Tensor:
    from medsec.training.segmentation import predict_masks

    return predict_masks(model, x, bs, device)


def prepare(cfg: SegmentationConfig, ctx: CellContext) -> dict[str, Any]:
    """Load data, build or train or load the segmenter, and compute the clean masks (a worker
    only loads: the driver trained the segmenter into the run folder)."""
    from medsec.models.checkpoint import load_checkpoint, save_checkpoint
    from medsec.training.segmentation import evaluate_segmenter, train_segmenter
    from medsec.validation import check_images, check_masks

    device, seg_cfg = ctx.device, cfg.segmentation
    train_ds, eval_ds, val_ds = load_splits(cfg.data, cfg.seed)
    model = build_segmenter(cfg, train_ds)
    ckpt = ctx.out / "model.safetensors"
    train_info = None
    if cfg.train is not None:
        prior = (ctx.section("model") or {}).get("train")
        if prior and ckpt.is_file():
            log.info("resuming: reusing the model trained by the previous run (%s)", ckpt)
            model = load_checkpoint(ckpt)
            if model.prompted and model.prompt is None and seg_cfg.prompt:
                model.set_prompt(seg_cfg.prompt)
            train_info = prior
        elif ctx.on_worker:
            raise DataError(f"{ckpt} (the segmenter the driver trained) is missing on this worker; put the run folder "
                            "on storage every worker reads")
        else:
            t = cfg.train
            hp: dict[str, Any] = {k: (getattr(t, k) if k in t.model_fields_set else v) for k, v in SEG_TRAIN_DEFAULTS.items()}
            tr = train_ds
            if t.limit is not None and t.limit < len(tr):
                tr = tr.subset(torch.randperm(len(tr), generator=torch.Generator().manual_seed(cfg.seed))[: t.limit])
            log.info("training %s on %d images for %d epochs (%s)", cfg.model.name, len(tr), t.epochs, hp)
            from medsec.training.adversarial import from_config

            adv = from_config(t.adversarial)  # PGD-AT on Dice+CE, or TRADES with the per-pixel KL
            with task("training", t.epochs) as bar:
                res = train_segmenter(model, tr, val_ds, epochs=t.epochs, augment=t.augment, seed=cfg.seed,
                                      device=device, on_epoch=lambda r: bar.advance(), adversarial=adv, **hp)
            test = evaluate_segmenter(model, eval_ds, device=device)
            train_info = {**t.model_dump(), **hp, "optimizer": "AdamW", "loss": "DiceCE(lambda_dice=1.5, lambda_ce=1.0)",
                          "n_train": len(tr), "history": res.history, "test": test, "runtime_s": res.runtime_s}
            save_checkpoint(model, ckpt, extra={"config": cfg.name, "test_dice": test["dice"]})
    model = model.to(device).eval()
    x, y = eval_subset(eval_ds, cfg.eval.sample_limit, cfg.seed)
    check_images(x, model.spec, name="evaluation images")
    y = check_masks(y, len(x), model.num_classes, name="evaluation masks", spatial=tuple(x.shape[-2:]))
    pred = _predict(model, x, cfg.eval.batch_size, device)
    clean = segmentation_summary(pred, y, model.num_classes)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = {
        "data": {"name": cfg.data.name, "n_eval": len(x), "image_shape": list(x.shape[1:]),
                 "foreground_fraction": float((y > 0).float().mean()), "n_train": len(train_ds)},
        "model": {"name": cfg.model.name, "task": "segmentation", "num_classes": model.num_classes,
                  "prompt": getattr(model, "prompt", None), "parameters": sum(p.numel() for p in model.parameters()),
                  "trainable_parameters": trainable,
                  "checkpoint": ckpt.name if cfg.train is not None else cfg.model.checkpoint, "train": train_info},
        "clean": clean,
    }
    return {"model": model, "x": x, "y": y, "pred": pred, "device": device, "info": info, "train_ds": train_ds}


def _target_masks(threat: ThreatModel, target: Any, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    if not threat.targeted:
        return None
    if target == "next" or target is None:
        raise ConfigError("targeted segmentation attacks need threat.target = a class index (0 = make the lesion vanish)")
    t = int(target)
    if not 0 <= t < max(2, num_classes):
        raise ConfigError(f"target class {t} is out of range for a segmenter with {num_classes} classes")
    return torch.full_like(y, t)


def _attack(cell: Any, attack: Any, prep: dict[str, Any], cfg: SegmentationConfig, seg_cfg: SegmentationSection,
            mode: str, target: torch.Tensor | None, gen: torch.Generator, fit: dict[str, Any]) -> torch.Tensor:
    from medsec.experiments.segmentation.paper_mode import NormalizedInput, paper_attack, quantize_8bit

    model, x, y, device = prep["model"], prep["x"], prep["y"], prep["device"]
    bs = cfg.eval.batch_size
    if getattr(attack, "universal", False):
        ds = prep["train_ds"]
        n = min(cfg.eval.universal_fit_size, len(ds))
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed))[:n].sort().values
        fx, fy = ds.images[idx].to(device), ds.labels[idx].to(device)
        if getattr(attack, "name", "") == "uap_seg":
            fy = _predict(model, fx, bs, device).long().to(device)  # fooling = change of the clean prediction
        victim, fit_x = model, fx
        if mode == "paper":
            victim = NormalizedInput(model)
            fit_x = victim.to_input(fx)
        tt = None if target is None else torch.full_like(fy, int(cell.target))
        delta = attack.fit(victim, fit_x, fy, cell.threat, generator=gen, target=tt).detach().cpu()
        fit.update({"fit_size": n, "fit_fooling_rate": attack.fooling_rate_,
                    "delta_linf": float(delta.abs().max())})
        if mode == "paper":
            dev = next(model.parameters()).device
            return quantize_8bit(model.denormalize(model.normalize(x.to(dev)) + delta.to(dev)).cpu())
        x_adv = (x + delta).clamp(*model.spec.bounds)
        return quantize_8bit(x_adv) if seg_cfg.quantize else x_adv
    out = torch.empty_like(x)
    with task(cell.id, len(x)) as bar:
        for i in range(0, len(x), bs):
            xb, yb = x[i : i + bs].to(device), y[i : i + bs].to(device)
            tb = None if target is None else target[i : i + bs].to(device)
            if mode == "paper":
                xa = paper_attack(attack, model, xb, yb, cell.threat.eps, quantize=True, target=tb, generator=gen)
            else:
                xa = attack(model, xb, yb, threat=cell.threat, target=tb, generator=gen).x_adv
                if seg_cfg.quantize:
                    xa = quantize_8bit(xa)
            out[i : i + bs] = xa.detach().cpu()
            bar.advance(len(xb))
    return out


def run_cell(prep: dict[str, Any], cell: Cell, cfg: SegmentationConfig, ctx: CellContext) -> dict[str, Any]:
    """Attack the evaluation set for one cell and return its results.json record."""
    seg_cfg = cfg.segmentation
    model, x, y, pred_clean = prep["model"], prep["x"], prep["y"], prep["pred"]
    mode = cfg.attacks[cell.attack_index].mode
    params = dict(cell.params)
    if "loss" not in params and cell.attack == "uap_seg":
        params["loss"] = {"name": "pixel_disagreement", "threshold": seg_cfg.fooling_threshold}
    loss = params.get("loss")
    if not takes(ATTACKS.get(cell.attack), "loss"):
        pass
    elif isinstance(loss, dict):  # {name, ...params} of an objective
        from medsec.objectives import create as create_objective

        lp = dict(loss)
        params["loss"] = create_objective(lp.pop("name"), task="segmentation", **lp)
    elif loss in (None, "auto", "dice_ce"):
        from medsec.objectives.dice_ce import DiceCE

        params["loss"] = DiceCE("segmentation", drop=seg_cfg.drop)
    attack = ATTACKS.create(cell.attack, **params)
    target = _target_masks(cell.threat, cell.target, y, model.num_classes)
    fit: dict[str, Any] = {}
    start = time.perf_counter()
    with ctx.cell(cell.id) as gen:
        x_adv = _attack(cell, attack, prep, cfg, seg_cfg, mode, target, gen, fit)
    runtime = time.perf_counter() - start
    pred_adv = _predict(model, x_adv.clamp(*model.spec.bounds) if mode == "paper" else x_adv, cfg.eval.batch_size,
                        prep["device"])
    k = model.num_classes
    adv = segmentation_summary(pred_adv, y, k)
    clean = prep["info"]["clean"]
    d_clean, d_adv = dice(pred_clean, y, k), dice(pred_adv, y, k)
    norms = perturbation_norms(x, x_adv)
    psnr = psnr_per_sample(x, x_adv.clamp(0, 1))
    finite = psnr[torch.isfinite(psnr)]
    metrics: dict[str, Any] = {
        **adv,
        "clean_dice": clean["dice"], "clean_iou": clean["iou"],
        "dice_drop": clean["dice"] - adv["dice"], "iou_drop": clean["iou"] - adv["iou"],
        "drop_success_rate": float(((d_clean - d_adv) >= seg_cfg.drop - 1e-6).float().mean()),
        "pixel_change_rate": float((pred_adv != pred_clean).float().mean()),
        **{k2: float(v.mean()) for k2, v in norms.items()},
        "psnr": float(finite.mean()) if finite.numel() else float("inf"),
        "mode": mode, "quantized": mode == "paper" or seg_cfg.quantize,
    }
    if target is not None:
        metrics["target_dice"] = float(dice(pred_adv, target, k).mean())
        metrics["attack_success_rate"] = float((dice(pred_adv, target, k) >= 1 - seg_cfg.drop - 1e-6).float().mean())
    else:
        metrics["attack_success_rate"] = float((d_adv <= 1 - seg_cfg.drop + 1e-6).float().mean())
    if fit:
        metrics.update(fit)
        fooled = (pred_adv != pred_clean).flatten(1).float().mean(1) > seg_cfg.fooling_threshold
        metrics["test_fooling_rate"] = float(fooled.float().mean())
    eps_pixels = cell.threat.eps * float(np.mean(model.spec.std or (1.0,))) if mode == "paper" else cell.threat.eps
    record: dict[str, Any] = {
        "id": cell.id, "attack": cell.attack, "label": cell.label, "params": attack.params(),
        "threat": cell.threat.to_dict(), "target": cell.target, "mode": mode,
        "eps_units": "normalised (std units)" if mode == "paper" else "pixels [0, 1]",
        "eps_pixels_approx": eps_pixels, "universal": bool(getattr(attack, "universal", False)),
        "metrics": metrics, "runtime_s": runtime, "seed": cell.seed, "examples": None,
    }
    n_ex = min(seg_cfg.overlays, len(x))
    if n_ex:
        record["examples"] = ctx.save_npz(
            f"examples/{cell.id}.npz", clean=x[:n_ex].numpy().astype(np.float32),
            adv=x_adv[:n_ex].clamp(0, 1).numpy().astype(np.float32), mask=y[:n_ex].numpy().astype(np.uint8),
            pred_clean=pred_clean[:n_ex].numpy().astype(np.uint8), pred_adv=pred_adv[:n_ex].numpy().astype(np.uint8))
    return record


def check(cfg: SegmentationConfig) -> None:
    """Refuse unknown components, bad parameters, attacks that have no segmentation variant and
    a grid with repeated cells, before any work."""
    import medsec.attacks
    import medsec.data  # noqa: F401  (registration)
    from medsec.config.loader import check_component, check_model
    from medsec.registry import DATASETS

    for i, a in enumerate(cfg.attacks):
        factory = check_component(ATTACKS, a.name, a.params, f"attacks.{i}")
        if not getattr(factory, "segmentation", True):
            raise ConfigError(
                f"attack {a.name!r} works on class decision boundaries and has no segmentation variant; "
                "for segmenters use fgsm, pgd, mifgsm, apgd, square (loss: dice_ce), uap_sgd or uap_seg"
            )
    check_component(DATASETS, cfg.data.name, cfg.data.params, "data")
    check_model(cfg.model)
    plan_cells(cfg)


def plan(cfg: SegmentationConfig) -> list[str]:
    """The cell ids of the config."""
    return [c.id for c in plan_cells(cfg)]


def setup(ctx: CellContext) -> dict[str, Any]:
    """A worker's state: the data, the driver's segmenter and the clean masks, loaded once."""
    return prepare(ctx.cfg, ctx)


def work(prep: dict[str, Any], cell: Cell, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """Run one job (one cell) on a prepared state: ``[(cell id, record)]``."""
    record = run_cell(prep, cell, ctx.cfg, ctx)
    log.info("%s: Dice %.3f (clean %.3f) in %.1fs", cell.id, record["metrics"]["dice"],
             record["metrics"]["clean_dice"], record["runtime_s"])
    return [(cell.id, record)]


def run(ctx: RunContext) -> None:
    """Run the segmentation grid into ``ctx.store`` (resuming a partial run of the same config)."""
    cfg: SegmentationConfig = ctx.cfg
    store = ctx.store
    cells = plan_cells(cfg)
    prep = prepare(cfg, ctx)
    store.update(**prep["info"])
    store.plan([c.id for c in cells])
    ctx.execute([Job(c.id, (c.id,), c) for c in cells], setup=setup, work=work, state=prep)
    store.add_checks(segmentation_checks(list(store.cells.values())))


def segmentation_checks(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sanity flags: Dice rising with eps for one attack and mode (a sign of gradient
    masking or of noise, e.g. the paper's PGD at eps 0.03), non-finite metrics."""
    checks = []
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for ev in evaluations:
        groups.setdefault((ev["label"], ev["mode"], ev["threat"]["targeted"]), []).append(ev)
    for (label, mode, _), evs in groups.items():
        evs = sorted(evs, key=lambda e: e["threat"]["eps"])
        for a, b in zip(evs, evs[1:]):
            if b["metrics"]["dice"] > a["metrics"]["dice"] + 0.01 and not b["threat"]["targeted"]:
                checks.append({"level": "warning", "code": "dice-rises-with-eps", "cells": [a["id"], b["id"]],
                               "message": f"{label} ({mode}): Dice rises from {a['metrics']['dice']:.3f} to "
                                          f"{b['metrics']['dice']:.3f} as eps grows"})
    for ev in evaluations:
        if not np.isfinite(ev["metrics"]["dice"]):
            checks.append({"level": "error", "code": "non-finite-dice", "cells": [ev["id"]], "message": "Dice is not finite"})
    return checks
