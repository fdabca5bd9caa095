"""The prompt_backdoor kind's report: the BAPLe-layout table (rows = method, cells = CA / BA
averaged over targets), a CA/BA bar chart and triggered example images, in the report frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsec.backdoors.prompt_harness import METHODS
from medsec.report import figures
from medsec.report.frame import html_page, html_table, markdown_page, note, safe_figure, section
from medsec.report.tables import Column


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [results["table"][m] for m in METHODS if m in results.get("table", {})]


def summary(results: dict[str, Any], out_dir: Path) -> list[str]:
    """What ``medsec run`` prints: CA, BA, ASR and macro-F1 per method."""
    lines = [f"{'method':<12} {'CA':>6} {'BA':>6} {'ASR':>6} {'F1':>6}"]
    for r in table_rows(results):
        lines.append(f"{r['label']:<12} {_fmt(r['clean_accuracy']):>6} {_fmt(r['backdoor_accuracy']):>6} "
                     f"{_fmt(r['attack_success_rate']):>6} {_fmt(r['clean_macro_f1']):>6}")
    return lines


def _bars(results: dict[str, Any]) -> bytes:
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
             f"order {s.get('order')}, ctx init {s.get('ctx_init')}; {d.get('n_test')} test images")
    body = [section("Setup", note(facts) + (note(f"zero-shot accuracy of the model: {model['zero_shot_accuracy']:.3f}"
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
    body.append(section("Every run", html_table(cells, list((results.get("cells") or {}).values())), "cells"))
    md = [facts, "", f"| Method | {col}: CA / BA | ASR (non-target) |", "|---|---|---|"]
    md += [f"| {r['label']} | {_fmt(r['clean_accuracy'])} / {_fmt(r['backdoor_accuracy'])} | "
           f"{_fmt(r['attack_success_rate'])} |" for r in rows]
    return html_page(results, body), markdown_page(results, [*md, ""])


__all__ = ["render", "summary", "table_rows"]
