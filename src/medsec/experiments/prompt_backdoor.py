"""Experiment kind ``prompt_backdoor``: the BAPLe table (Hanif et al., "BAPLe: Backdoor Attacks
on Medical Foundational Models using Prompt Learning", MICCAI 2024, Tables 1-2) with ``medsec run``.

Threat model: data poisoning of few-shot adaptation (FT and PL rows) and BAPLe's
prompt-and-trigger learning on a frozen CLIP-style model; see
:mod:`medsec.backdoors.prompt_harness`.

A config names the CLIP-style model (a medsec-pretrained recipe: ``bloodmnist_clip``, or
``medical_clip`` from BUSI, Kvasir-SEG and BloodMNIST captions; or an open_clip /
transformers name), the dataset (``bloodmnist``, or ``busi`` with medsec's fixed stratified
split, :func:`medsec.data.captioned.busi_split`), the methods and the targets; each
(method, target) cell is one training run, written to ``results.json`` as soon as it
finishes, so a rerun of the same config resumes (Clean PL's context, which later prompt
runs start from, is saved beside it in ``clean_ctx.npz``). The report has the paper-layout
table (rows = method, cells = CA / BA averaged over targets), a CA/BA bar chart and
triggered example images.

Example YAML::

    kind: prompt_backdoor
    name: bloodmnist_baple
    model: {recipe: bloodmnist_clip}
    data: {name: bloodmnist}
    targets: all
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from medsec.backdoors.prompt_harness import LABELS, METHODS
from medsec.config.schema import StrictModel
from medsec.errors import ConfigError, DataError
from medsec.experiments import ExperimentKind, register_kind

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATASETS = ("bloodmnist", "busi")
RECIPES = ("bloodmnist_clip", "medical_clip")
# the recipe a dataset uses when the config names no model
DEFAULT_RECIPE = {"bloodmnist": "bloodmnist_clip", "busi": "medical_clip"}


class ModelSection(StrictModel):
    """The CLIP-style model: a medsec recipe (offline) or a hub name."""

    recipe: Literal["bloodmnist_clip", "medical_clip"] | None = None  # default: the dataset's (DEFAULT_RECIPE)
    name: str | None = None
    pretrained: str | None = None
    cache_dir: str | None = None  # where the recipe's model is cached (default: .medsec-cache/ in the repo)

    @model_validator(mode="after")
    def _one(self) -> ModelSection:
        if self.name is not None and self.recipe is not None:
            raise ValueError(f"give model.recipe ({' or '.join(RECIPES)}) or model.name (e.g. open_clip:ViT-B-32), "
                             "not both")
        return self


class DataSection(StrictModel):
    name: Literal["bloodmnist", "busi"] = "bloodmnist"
    root: str | None = None  # the dataset's folder (default: $MEDSEC_DATA/bloodmnist or busi-256)
    test_size: int | None = Field(default=None, ge=8)
    image_size: int | None = Field(default=None, ge=8, le=1024)  # default: bloodmnist 28 (native), busi 64
    class_names: list[str] | None = None


class BapleSection(StrictModel):
    """Overrides of :class:`~medsec.backdoors.baple.BapleSettings` (paper defaults otherwise)."""

    shots: int = Field(default=32, ge=1)
    rate: float = Field(default=0.05, gt=0, le=1)
    eps: float = Field(default=8 / 255, ge=0, le=1)
    noise_step: float = Field(default=0.01, gt=0)
    patch_size_224: int = Field(default=24, ge=1)
    patch_margin_224: int = Field(default=15, ge=0)
    position: str = "bottom-left"
    patch_pattern: Literal["random", "white", "checkerboard"] = "random"
    order: Literal["noise_then_patch", "patch_then_noise"] = "noise_then_patch"
    noise_grad: Literal["accumulate", "batch"] = "accumulate"
    ctx_init: Literal["clean", "random"] = "clean"
    n_ctx: int = Field(default=16, ge=1)
    epochs: int = Field(default=50, ge=2)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=0.02, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)
    warmup_lr: float = Field(default=1e-5, gt=0)

    @field_validator("eps", mode="before")
    @classmethod
    def _fraction(cls, v: Any) -> Any:
        if isinstance(v, str) and "/" in v:
            a, b = v.split("/", 1)
            return float(a) / float(b)
        return v


class FinetuneSection(StrictModel):
    lr: float = Field(default=5e-5, gt=0)
    epochs: int | None = Field(default=None, ge=1)
    weight_decay: float = Field(default=0.01, ge=0)


class PromptBackdoorConfig(StrictModel):
    """``kind: prompt_backdoor``: the BAPLe comparison on one model and dataset."""

    kind: Literal["prompt_backdoor"] = "prompt_backdoor"
    name: str = "prompt_backdoor"
    seed: int = 0
    device: Literal["cpu"] = "cpu"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    targets: Literal["all"] | list[int] = "all"
    baple: BapleSection = BapleSection()
    finetune: FinetuneSection = FinetuneSection()
    cache_features: bool = True

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from medsec.registry import suggest

        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}.{suggest(m, METHODS)} Methods: {', '.join(METHODS)}")
        if not v:
            raise ValueError("methods must name at least one method")
        return v

    @model_validator(mode="after")
    def _model_fits_data(self) -> PromptBackdoorConfig:
        if self.model.name is None and self.model.recipe is None:
            self.model.recipe = DEFAULT_RECIPE[self.data.name]  # type: ignore[assignment]
        if self.model.recipe == "bloodmnist_clip" and self.data.name != "bloodmnist":
            raise ValueError(f"model.recipe bloodmnist_clip was pretrained on BloodMNIST captions only and has never "
                             f"seen {self.data.name} images or words; use model.recipe: medical_clip (BUSI, Kvasir-SEG "
                             f"and BloodMNIST captions) or a model.name")
        return self


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
    cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else Path(__file__).resolve().parents[3] / ".medsec-cache"
    model_info: dict[str, Any]
    if cfg.model.recipe == "medical_clip":
        from medsec.training.clip_recipes import MEDICAL_CLIP_RECIPE, medical_clip

        clip, meta = medical_clip(cache)
        names = list(train.classes) if cfg.data.name == "busi" else _blood_names()
        model_info = {**meta, "recipe": "medical_clip", "recipe_params": MEDICAL_CLIP_RECIPE}
    elif cfg.model.recipe == "bloodmnist_clip":
        from medsec.training.recipes import BLOODMNIST_CLIP_RECIPE, bloodmnist_clip

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


def run(cfg: PromptBackdoorConfig, out_dir: str | Path, report: bool = True) -> dict[str, Any]:
    """Run every (method, target) cell of ``cfg`` into ``out_dir`` (resumes a partial run)."""
    from medsec.backdoors.baple import BapleSettings
    from medsec.backdoors.prompt_harness import Harness, average_over_targets, few_shot
    from medsec.eval.runner import provenance
    from medsec.io import atomic_save_npz, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = cfg.model_dump(mode="json")
    path = out / "results.json"
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("config") == config:
            done = {_cell_id(r["method"], r["target"]): r for r in old.get("cells", [])}
            log.info("resuming %s: %d cells already done", path, len(done))
    clip, train_full, test, names, model_info = _load(cfg)
    settings = BapleSettings(**cfg.baple.model_dump())
    fewshot = few_shot(train_full, settings.shots, torch.Generator().manual_seed(cfg.seed))
    targets = _targets(cfg, train_full.num_classes)
    harness = Harness(clip, fewshot, test, names, settings, ft_lr=cfg.finetune.lr, ft_epochs=cfg.finetune.epochs,
                      ft_weight_decay=cfg.finetune.weight_decay, seed=cfg.seed, cache=cfg.cache_features)
    ctx_path = out / "clean_ctx.npz"
    methods = list(cfg.methods)
    needs_clean = settings.ctx_init == "clean" and any(m.endswith("_pl") or m == "baple" for m in methods)
    if needs_clean and "clean_pl" not in methods:
        methods.insert(0, "clean_pl")
    methods.sort(key=lambda m: (m != "clean_pl", METHODS.index(m)))
    if "clean_pl" in done and ctx_path.is_file():
        with np.load(ctx_path, allow_pickle=False) as z:
            harness.clean_ctx = torch.from_numpy(z["ctx"])
    elif "clean_pl" in done:
        done.pop("clean_pl")
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "task": "prompt_backdoor", "name": cfg.name, "config": config,
        "provenance": provenance(torch.device(cfg.device)), "status": "running", "seed": cfg.seed,
        "model": model_info, "settings": settings.to_dict(),
        "data": {"name": cfg.data.name, "classes": names, "n_fewshot": len(fewshot), "n_test": len(test),
                 "image_shape": list(fewshot.image_shape), "shots": settings.shots, "targets": targets},
        "cells": [], "table": {},
    }
    t0 = time.perf_counter()
    for method in methods:
        for target in ([None] if method.startswith("clean") else targets):
            cid = _cell_id(method, target)
            if cid in done:
                rec = done[cid]
            else:
                rec = harness.run(method, target)
                if method == "clean_pl":
                    atomic_save_npz(ctx_path, ctx=harness.clean_ctx.numpy())  # type: ignore[union-attr]
                if method == "baple" and target == targets[0]:
                    _save_examples(harness, out, target)
            rec["id"] = cid
            results["cells"].append(rec)
            results["table"] = average_over_targets(results["cells"])
            atomic_write_json(path, results)
    results["runtime_s"] = time.perf_counter() - t0
    from medsec.experiments.finish import finish_run

    return finish_run(results, path, report)


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


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [results["table"][m] for m in METHODS if m in results.get("table", {})]


def summary(results: dict[str, Any], out_dir: Path, console: Any) -> None:
    lines = [f"{'method':<12} {'CA':>6} {'BA':>6} {'ASR':>6} {'F1':>6}"]
    for r in table_rows(results):
        lines.append(f"{r['label']:<12} {_fmt(r['clean_accuracy']):>6} {_fmt(r['backdoor_accuracy']):>6} "
                     f"{_fmt(r['attack_success_rate']):>6} {_fmt(r['clean_macro_f1']):>6}")
    text = "\n".join(lines)
    if console is not None and hasattr(console, "print"):
        console.print(text)
    else:
        log.info("\n%s", text)


def _bars(results: dict[str, Any]) -> bytes:
    from medsec.report import figures

    rows = table_rows(results)
    fig = figures.new_figure(7.0, 3.0)
    ax = fig.subplots()
    xs = np.arange(len(rows))
    ca = [r["clean_accuracy"] or 0 for r in rows]
    ba = [r["backdoor_accuracy"] if r["backdoor_accuracy"] is not None else 0 for r in rows]
    ax.bar(xs - 0.2, ca, 0.4, label="CA", color="#0969da")
    ax.bar(xs + 0.2, ba, 0.4, label="BA", color="#cf222e")
    ax.set_xticks(xs, [r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return figures.png_bytes(fig)


def _examples_figure(path: Path) -> bytes:
    from medsec.report import figures

    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    cols = ["clean", "badnets", "wanet", "fiba", "baple"]
    k = data["clean"].shape[0]
    fig = figures.new_figure(1.4 * (len(cols) + 1), 1.4 * k)
    axes = fig.subplots(k, len(cols) + 1, squeeze=False)
    delta = data["delta"]
    shown = 0.5 + delta / (2 * max(float(np.abs(delta).max()), 1e-12))
    for i in range(k):
        for j, name in enumerate(cols):
            figures.show_image(axes[i, j], data[name][i])
            if i == 0:
                axes[i, j].set_title(name if name != "baple" else "BAPLe", fontsize=8)
        figures.show_image(axes[i, -1], shown)
        if i == 0:
            axes[i, -1].set_title("delta (scaled)", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return figures.png_bytes(fig)


def render(results: dict[str, Any], out_dir: Path) -> tuple[str, str]:
    """(HTML, Markdown) of a prompt_backdoor run."""
    from medsec.report.html import CSS, esc, figure_html, html_table, note, safe_figure, section
    from medsec.report.tables import Column

    rows = table_rows(results)
    model = results.get("model", {})
    col = f"{model.get('recipe') or model.get('name')} / {results.get('data', {}).get('name')}"
    cols = [Column("Method", "label"),
            Column(f"{col}: CA / BA", lambda r: f"{_fmt(r['clean_accuracy'])} / {_fmt(r['backdoor_accuracy'])}",
                   align="right", tooltip="clean accuracy / backdoor accuracy (every test image triggered, "
                                          "target-class images included), mean over targets"),
            Column("ASR (non-target)", lambda r: _fmt(r["attack_success_rate"]), align="right"),
            Column("clean macro-F1", lambda r: _fmt(r["clean_macro_f1"]), align="right"),
            Column("targets", lambda r: ", ".join(map(str, r["targets"])) or "–")]
    s, d = results.get("settings", {}), results.get("data", {})
    facts = (f"{d.get('shots')} shots per class ({d.get('n_fewshot')} images), {s.get('rate', 0) * 100:g}% poisoned, "
             f"eps {s.get('eps', 0) * 255:.0f}/255, {s.get('epochs')} epochs, batch {s.get('batch_size')}, "
             f"SGD lr {s.get('lr')}, patch {s.get('patch_size_224')}px@224 scaled to {d.get('image_shape')}, "
             f"order {s.get('order')}, ctx init {s.get('ctx_init')}; {d.get('n_test')} test images; "
             f"status {results.get('status')}")
    body = [f"<h1>medsec prompt-learning backdoors: {esc(results.get('name'))}</h1>",
            section("Setup", note(facts) + (note(f"zero-shot accuracy of the model: {model['zero_shot_accuracy']:.3f}"
                                                 + (f" ({model['zero_shot_data']})" if model.get("zero_shot_data") else ""))
                                            if model.get("zero_shot_accuracy") is not None else "")),
            section("CA / BA per method (BAPLe Tables 1-2 layout)", html_table(cols, rows), "table"),
            section("CA and BA", safe_figure(lambda: _bars(results), "CA and BA per method"), "bars")]
    ex = Path(out_dir) / "examples.npz"
    if ex.is_file():
        body.append(section("Triggered test images", safe_figure(lambda: _examples_figure(ex), "triggered examples",
                                                                 "BAPLe's delta is shown scaled to its range"),
                            "examples"))
    cells = [Column("cell", "id"), Column("CA", lambda r: _fmt(r["clean_accuracy"]), align="right"),
             Column("BA", lambda r: _fmt(r["backdoor_accuracy"]), align="right"),
             Column("ASR", lambda r: _fmt(r["attack_success_rate"]), align="right"),
             Column("poisoned", lambda r: r.get("poison_count", "–"), align="right"),
             Column("time (s)", lambda r: f"{r.get('runtime_s', 0):.1f}", align="right")]
    body.append(section("Every run", html_table(cells, results.get("cells", [])), "cells"))
    body.append(section("Config", f"<pre>{esc(json.dumps(results.get('config'), indent=1))}</pre>", "config"))
    _ = figure_html
    html = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>medsec report: {esc(results.get('name'))}</title><style>{CSS}</style></head><body><main>"
            + "".join(body) + "</main></body></html>\n")
    md = [f"# {results.get('name')} (prompt_backdoor)", "", facts, "",
          f"| Method | {col}: CA / BA | ASR (non-target) |", "|---|---|---|"]
    md += [f"| {r['label']} | {_fmt(r['clean_accuracy'])} / {_fmt(r['backdoor_accuracy'])} | "
           f"{_fmt(r['attack_success_rate'])} |" for r in rows]
    return html, "\n".join(md) + "\n"


register_kind(ExperimentKind("prompt_backdoor", PromptBackdoorConfig, run, summary=summary, render=render,
                             description="BAPLe and FT/PL backdoor baselines on a CLIP-style model"))

__all__ = ["PromptBackdoorConfig", "run", "render", "summary", "LABELS"]
