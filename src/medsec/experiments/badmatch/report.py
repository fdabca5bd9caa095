"""The badmatch kind's report: the table poison rate x trigger x backbone x method -> CA / ASR
and a figure of ASR and CA against the poison rate, in the report frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsec.report import figures
from medsec.report.frame import html_page, html_table, kv_table, markdown_page, md_table, note, safe_figure, section
from medsec.report.tables import Column


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (backbone, trigger, rate, method), clean fine-tunes first (rate 0)."""
    rows = []
    for bb, info in (results.get("models") or {}).items():
        for trig, m in (info.get("clean_finetune") or {}).items():
            rows.append({"backbone": bb, "trigger": trig, "rate": 0.0, "method": "clean", "n_poisoned": 0, **_m(m)})
    for c in (results.get("cells") or {}).values():
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
    body = [
        section("Data", kv_table([("dataset", d.get("dataset")), ("target", d.get("target_name")),
                                  ("train / fine-tune / test / shadow",
                                   f"{d.get('n_train')} / {d.get('n_finetune', d.get('n_train'))} / {d.get('n_test')} / "
                                   f"{d.get('n_shadow')}"),
                                  ("image size", d.get("image_size")), ("sentences", d.get("n_sentences"))])),
        section("Models", kv_table(minfo)),
        section("CA / ASR", html_table(cols, rows) + safe_figure(lambda: _figure(results), "ASR and CA vs poison rate",
                                                                    "ASR (non-target) and CA vs poison rate")),
        section("BadDist embedding shift (test images)", kv_table(bd) if bd else note("no BadDist run")),
    ]
    md = [f"Dataset {d.get('dataset')}, target {d.get('target_name')}, train/test/shadow "
          f"{d.get('n_train')}/{d.get('n_test')}/{d.get('n_shadow')}, {d.get('image_size')} px.", "",
          md_table(cols, rows), ""]
    return html_page(results, body), markdown_page(results, md)


def summary(results: dict[str, Any], out_dir: Path) -> list[str]:
    """What ``medsec run`` prints: CA / ASR per (backbone, trigger, method, rate)."""
    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = [f"{'backbone':<10} {'trigger':<10} {'method':<18} {'rate':>7} {'CA':>6} {'ASR':>6} {'ASR all':>8}"]
    for r in table_rows(results):
        lines.append(f"{r['backbone']:<10} {r['trigger']:<10} {r['method']:<18} {100 * r['rate']:>6g}% "
                     f"{f(r['clean_accuracy']):>6} {f(r['attack_success_rate']):>6} {f(r['backdoor_accuracy']):>8}")
    return lines


__all__ = ["render", "summary", "table_rows"]
