"""The wsi kind's report in the report frame: slide accuracy vs rho per selection strategy,
a bag mosaic and slide thumbnails with the attacked tiles and the attention / vulnerability
heatmaps, vulnerability vs tile content, and example tiles.

Every string from the results goes through :func:`medsec.report.frame.esc`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medsec.report import figures as F
from medsec.report.frame import (
    esc,
    html_page,
    html_table,
    kv_table,
    markdown_page,
    md_escape,
    note,
    safe_figure,
    section,
)
from medsec.report.tables import Column

STRAT_COLORS = {"random": "#1565c0", "vulnerability": "#ef6c00", "attention": "#c62828"}


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{100 * float(v):.1f}%"


def _num(v: Any, d: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{float(v):.{d}f}"


def _cells(r: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [v for k, v in (r.get("cells") or {}).items() if k.startswith(prefix)]


ATTACK_COLUMNS = [
    Column("task", "task"), Column("head", "head"), Column("attack", "attack"), Column("strategy", "strategy"),
    Column("rho", "rho", lambda v: f"{100 * v:g}%", "right"), Column("k (mean)", "k_mean", lambda v: f"{v:.1f}", "right"),
    Column("clean acc", "clean.accuracy", _pct, "right"), Column("attacked acc", "attacked.accuracy", _pct, "right"),
    Column("drop", "delta_accuracy", lambda v: f"{100 * v:+.1f} pt", "right"),
    Column("bal. acc", "attacked.balanced_accuracy", _pct, "right"), Column("AUROC", "attacked.auroc", _num, "right"),
    Column("clean AUROC", "clean.auroc", _num, "right"), Column("flip rate", "flip_rate", _pct, "right"),
    Column("1-cos (mean)", "deviation_mean", _num, "right"), Column("PSNR dB", "psnr", lambda v: _num(v, 1), "right"),
    Column("SSIM", "ssim", _num, "right"), Column("key tiles hit", "bags_with_key_hit", str, "right",
                                                  tooltip="bags where an attacked tile is a positive (key) instance"),
]


def _fig_acc_vs_rho(r: Mapping[str, Any]) -> bytes:
    cells = _cells(r, "attack/")
    groups = sorted({(c["task"], c["head"]) for c in cells})
    cols = min(4, len(groups))
    rows = int(np.ceil(len(groups) / cols))
    fig = F.new_figure(3.2 * cols, 2.6 * rows)
    for i, (task, head) in enumerate(groups):
        ax = fig.add_subplot(rows, cols, i + 1)
        sub = [c for c in cells if c["task"] == task and c["head"] == head]
        clean = sub[0]["clean"]["accuracy"]
        ax.axhline(clean, color="black", lw=1, ls="--", label="clean")
        for s in ("random", "vulnerability", "attention"):
            pts = sorted((c["rho"], c["attacked"]["accuracy"]) for c in sub if c["strategy"] == s and c["attack"] == sub[0]["attack"])
            if pts:
                ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], "o-", color=STRAT_COLORS[s], label=s)
        ax.set_xscale("log")
        ax.set_title(F.mpl_text(f"{task} / {head}"), fontsize=9)
        ax.set_xlabel("rho (% of tiles)", fontsize=8)
        ax.set_ylabel("slide accuracy", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    return F.png_bytes(fig)


def _fig_mosaic(z: Mapping[str, np.ndarray]) -> bytes:
    tiles = z["mosaic_tiles"]
    n = tiles.shape[0]
    side = int(np.ceil(np.sqrt(n)))
    h, w = tiles.shape[2:]
    canvas = np.full((side * h, side * w, 3), 255, np.uint8)
    att = np.zeros((side, side)) * np.nan
    for i in range(n):
        r, c = divmod(i, side)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = tiles[i].transpose(1, 2, 0)
        att[r, c] = z["mosaic_attention"][i]
    fig = F.new_figure(9, 4.6)
    for j, title in enumerate(("bag mosaic: attacked (red), key tiles (green)", "attention (first head)")):
        ax = fig.add_subplot(1, 2, j + 1)
        if j == 0:
            ax.imshow(canvas)
        else:
            im = ax.imshow(att, cmap="magma", extent=(0, side * w, side * h, 0))
            fig.colorbar(im, ax=ax, fraction=0.046)
        from matplotlib.patches import Rectangle

        for idx, color in ((z["mosaic_key"], "#2e7d32"), (z["mosaic_selected"], "#c62828")):
            for i in np.atleast_1d(idx):
                r, c = divmod(int(i), side)
                ax.add_patch(Rectangle((c * w, r * h), w, h, fill=False, lw=2, ec=color))
        ax.set_title(F.mpl_text(title), fontsize=9)
        ax.axis("off")
    fig.suptitle(F.mpl_text(str(z["mosaic_tag"]), 90), fontsize=8)
    return F.png_bytes(fig)


def _fig_slide(z: Mapping[str, np.ndarray], i: int) -> bytes:
    from matplotlib.patches import Rectangle

    thumb, coords = z[f"slide{i}_thumb"], z[f"slide{i}_coords"]
    foot, ds = z[f"slide{i}_footprint"]
    maps = [("vulnerability (1-cos after FGSM-RS)", z[f"slide{i}_scores"])]
    if f"slide{i}_attention" in z:
        maps.append(("attention (ABMIL head of the first bag task)", z[f"slide{i}_attention"]))
    fig = F.new_figure(4.2 * (len(maps) + 1), 4.4)
    ax = fig.add_subplot(1, len(maps) + 1, 1)
    ax.imshow(thumb)
    for t in z[f"slide{i}_selected"]:
        x, y = coords[int(t)]
        ax.add_patch(Rectangle((x / ds, y / ds), foot / ds, foot / ds, fill=False, lw=2, ec="#c62828"))
    ax.set_title(F.mpl_text(f"{z[f'slide{i}_name']}: attacked tiles (red)"), fontsize=9)
    ax.axis("off")
    for j, (title, vals) in enumerate(maps):
        ax = fig.add_subplot(1, len(maps) + 1, j + 2)
        ax.imshow(thumb, alpha=0.5)
        heat = np.full(thumb.shape[:2], np.nan)
        s = int(round(foot / ds))
        for (x, y), v in zip(coords, vals):
            c0, r0 = int(x / ds), int(y / ds)
            heat[r0:r0 + s, c0:c0 + s] = v
        im = ax.imshow(heat, cmap="magma", alpha=0.75)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(F.mpl_text(title), fontsize=9)
        ax.axis("off")
    return F.png_bytes(fig)


def _fig_tile_deviation(slides: list[dict[str, Any]]) -> bytes:
    """Per-tile feature deviation (1 - cos) of the attacked tiles of each real slide: the
    vulnerability-selected and random tiles, and the vulnerability-selected ones after each
    input purification."""
    series = [("vulnerable", "deviation_vulnerability"), ("random", "deviation_random"), ("JPEG", "jpeg_deviation"),
              ("blur", "gaussian_blur_deviation"), ("Macenko", "macenko_deviation")]
    fig = F.new_figure(4.2 * len(slides), 3.0)
    for i, row in enumerate(slides):
        ax = fig.add_subplot(1, len(slides), i + 1)
        names = [(label, np.asarray(row[key], dtype=float)) for label, key in series if row.get(key)]
        for j, (_, vals) in enumerate(names):
            jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(1)
            ax.scatter(j + jitter, vals, s=14, alpha=0.8)
            ax.hlines(np.median(vals), j - 0.25, j + 0.25, color="black", lw=1)
        ax.set_xticks(range(len(names)), [n for n, _ in names], fontsize=7)
        ax.set_ylabel("1 - cos (per attacked tile)", fontsize=8)
        ax.set_title(F.mpl_text(f"{row['slide']} (k = {row['k']} of {row['n_tiles']})"), fontsize=8)
        ax.tick_params(labelsize=7)
    return F.png_bytes(fig)


def _fig_content(z: Mapping[str, np.ndarray]) -> bytes:
    keys = [k for k in ("nuclei", "stain", "tissue", "eosin") if f"content_{k}" in z]
    fig = F.new_figure(3 * len(keys), 2.6)
    for j, k in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), j + 1)
        ax.scatter(z[f"content_{k}"], z["content_vuln"], s=4, alpha=0.5)
        ax.set_xlabel(k, fontsize=8)
        ax.set_ylabel("vulnerability (1-cos)", fontsize=8)
        ax.tick_params(labelsize=7)
    return F.png_bytes(fig)


def _fig_examples(clean: np.ndarray, adv: np.ndarray, title: str) -> bytes:
    n = clean.shape[0]
    fig = F.new_figure(1.6 * n, 5)
    for i in range(n):
        d = adv[i] - clean[i]
        for row, img in enumerate((clean[i], adv[i], 0.5 + d / (2 * max(np.abs(d).max(), 1e-8)))):
            ax = fig.add_subplot(3, n, row * n + i + 1)
            ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1))
            ax.axis("off")
            if i == 0:
                ax.set_title(("clean", "attacked", "perturbation (scaled)")[row], fontsize=8)
    fig.suptitle(F.mpl_text(title, 90), fontsize=8)
    return F.png_bytes(fig)


def _load_figs(r: Mapping[str, Any], out_dir: Path) -> dict[str, np.ndarray]:
    path = Path(out_dir) / str(r.get("figures") or "figures.npz")
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


DEF_COLUMNS = [
    Column("task", "task"), Column("defence", "defense"), Column("params", lambda r: json.dumps(r.get("params"))),
    Column("rho", "rho", lambda v: f"{100 * v:g}%", "right"),
    Column("clean acc (defended)", "clean", _pct, "right"),
    Column("random: undefended", "undefended_random", _pct, "right"), Column("random: defended", "attacked_random", _pct, "right"),
    Column("attention: undefended", "undefended_attention", _pct, "right"),
    Column("attention: defended", "attacked_attention", _pct, "right"),
    Column("tile TPR (attention)", "tpr_attention", _pct, "right"), Column("clean tile FPR", "clean_tile_fpr", _pct, "right"),
]

SLIDE_COLUMNS = [
    Column("slide", "slide"), Column("level", "level", str, "right"), Column("tile", "tile_size", str, "right"),
    Column("tiles", "n_tiles", str, "right"), Column("k", "k", str, "right"),
    Column("1-cos (vulnerable)", lambda r: float(np.mean(r["deviation_vulnerability"])), _num, "right"),
    Column("1-cos (random)", lambda r: float(np.mean(r["deviation_random"])), _num, "right"),
    Column("after JPEG", lambda r: float(np.mean(r["jpeg_deviation"])) if "jpeg_deviation" in r else None, _num, "right"),
    Column("after blur", lambda r: float(np.mean(r["gaussian_blur_deviation"])) if "gaussian_blur_deviation" in r else None, _num, "right"),
    Column("after Macenko", lambda r: float(np.mean(r["macenko_deviation"])) if "macenko_deviation" in r else None, _num, "right"),
    Column("PSNR dB", "psnr", lambda v: _num(v, 1), "right"), Column("SSIM", "ssim", _num, "right"),
    Column("p(pos) clean -> attacked", lambda r: (f"{r['head_p_positive_clean']:.3f} -> {r['head_p_positive_attacked']:.3f}"
                                                  if "head_p_positive_clean" in r else "n/a")),
    Column("attack s", "attack_seconds", lambda v: _num(v, 2), "right"),
]


def render(r: Mapping[str, Any], out_dir: Path) -> tuple[str, str]:
    """(HTML, Markdown) of a wsi run."""
    z = _load_figs(r, out_dir)
    attacks = sorted(_cells(r, "attack/"), key=lambda c: (c["task"], c["head"], c["attack"], c["strategy"], c["rho"]))
    clean = _cells(r, "clean/")
    parts = [f"<p>encoder {esc((r.get('encoder') or {}).get('name'))} ({esc((r.get('encoder') or {}).get('dim'))}-d)</p>"
             + note("Label-free attack on the tile encoder (Liu et al., arXiv 2505.24141): a fraction rho of each bag's tiles "
                  "is perturbed to move its embedding away from the clean one; no label and no MIL head are used, except by "
                  "the grey-box 'attention' selection (an upper bound).")]
    if clean:
        cols = [Column("task", "task"), Column("head", "head"), Column("accuracy", "accuracy", _pct, "right"),
                Column("balanced acc", "balanced_accuracy", _pct, "right"), Column("AUROC", "auroc", _num, "right")]
        parts.append(section("Clean slide-level performance", html_table(cols, clean), "clean"))
    if attacks:
        worst = (r.get("summary") or {}).get("worst_drop", {})
        rows = [(k, f"{100 * v['delta_accuracy']:+.1f} pt ({v['task']}/{v['head']}/{v['attack']}), flips {_pct(v['flip_rate'])}")
                for k, v in sorted(worst.items())]
        body = kv_table(rows) + note("Paper's worst case: a 20-point accuracy drop at rho = 0.1%.")
        body += safe_figure(lambda: _fig_acc_vs_rho(r), "slide accuracy vs rho")
        body += html_table(ATTACK_COLUMNS, attacks)
        parts.append(section("Attacks: slide-level impact", body, "attacks"))
    if "mosaic_tiles" in z:
        parts.append(section("Attacked tiles and attention (one positive test bag)", safe_figure(lambda: _fig_mosaic(z), "bag mosaic"), "mosaic"))
    content = (r.get("cells") or {}).get("content")
    if content:
        rows = [(k, f"Spearman {v['spearman']:+.3f} (p={v['p']:.2g})") for k, v in content["spearman"].items()]
        rows += [(f"class {k}", f"mean vulnerability {v:.3f}") for k, v in content["vulnerability_by_class"].items()]
        body = kv_table(rows) + (safe_figure(lambda: _fig_content(z), "vulnerability vs content") if "content_vuln" in z else "")
        parts.append(section(f"Tile vulnerability vs content ({content['n_tiles']} test tiles)", body, "content"))
    if "example_clean" in z:
        parts.append(section("Perturbed tiles", safe_figure(lambda: _fig_examples(z["example_clean"], z["example_adv"], str(z["example_tag"])), "examples"), "examples"))
    defs = _cells(r, "defense/")
    if defs:
        parts.append(section("Defences (preliminary)", html_table(DEF_COLUMNS, defs), "defenses"))
    slides = _cells(r, "slide/")
    if slides:
        body = html_table(SLIDE_COLUMNS, slides)
        body += safe_figure(lambda: _fig_tile_deviation(slides), "per-tile deviation")
        corr = [(f"{row['slide']}: {k}", f"Spearman {v['spearman']:+.3f} (p={v['p']:.2g})")
                for row in slides for k, v in (row.get("content_spearman") or {}).items()]
        if corr:
            body += "<h3>Tile vulnerability vs content (every tissue tile)</h3>" + kv_table(corr)
        for i in range(len(slides)):
            if f"slide{i}_thumb" in z:
                body += safe_figure(functools.partial(_fig_slide, z, i), f"slide {i} heatmap")
                body += safe_figure(functools.partial(_fig_examples, z[f"slide{i}_clean"], z[f"slide{i}_adv"], str(z[f"slide{i}_name"])),
                                    f"slide {i} tiles")
        parts.append(section("Real slides: tiling, encoding, attack, heatmap", body, "slides"))
    return html_page(r, parts[1:], first=parts[:1]), markdown_page(r, markdown_lines(r))


def markdown_lines(r: Mapping[str, Any]) -> list[str]:
    """The wsi sections of the Markdown report."""
    lines = [f"encoder: {md_escape((r.get('encoder') or {}).get('name'))}", ""]
    attacks = sorted(_cells(r, "attack/"), key=lambda c: (c["task"], c["head"], c["attack"], c["strategy"], c["rho"]))
    if attacks:
        lines += ["| task | head | attack | strategy | rho | clean acc | attacked acc | drop | flip rate | AUROC clean -> attacked | 1-cos |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in attacks:
            lines.append(f"| {md_escape(c['task'])} | {md_escape(c['head'])} | {md_escape(c['attack'])} | {md_escape(c['strategy'])} | {100 * c['rho']:g}% | "
                         f"{_pct(c['clean']['accuracy'])} | {_pct(c['attacked']['accuracy'])} | {100 * c['delta_accuracy']:+.1f} pt | "
                         f"{_pct(c['flip_rate'])} | {_num(c['clean']['auroc'])} -> {_num(c['attacked']['auroc'])} | {_num(c['deviation_mean'])} |")
    defs = _cells(r, "defense/")
    if defs:
        lines += ["", "| task | defence | clean | random undef. -> def. | attention undef. -> def. |", "|---|---|---|---|---|"]
        for d in defs:
            lines.append(f"| {md_escape(d['task'])} | {md_escape(d['defense'])} | {_pct(d.get('clean'))} | {_pct(d.get('undefended_random'))} -> "
                         f"{_pct(d.get('attacked_random'))} | {_pct(d.get('undefended_attention'))} -> {_pct(d.get('attacked_attention'))} |")
    slides = _cells(r, "slide/")
    if slides:
        lines += ["", "| slide | tiles | k | 1-cos (vulnerable) | 1-cos (random) | PSNR | SSIM |", "|---|---|---|---|---|---|---|"]
        for s in slides:
            lines.append(f"| {md_escape(s['slide'])} | {s['n_tiles']} | {s['k']} | {np.mean(s['deviation_vulnerability']):.3f} | "
                         f"{np.mean(s['deviation_random']):.3f} | {_num(s['psnr'], 1)} | {_num(s['ssim'])} |")
    return [*lines, ""]


def summary(r: Mapping[str, Any], out_dir: Path) -> list[str]:
    """What ``medsec run`` prints: the worst drop per (strategy, rho) and each slide."""
    out = [f"wsi run {r.get('name')}: {r.get('status')}"]
    for k, v in sorted(((r.get("summary") or {}).get("worst_drop") or {}).items()):
        out.append(f"  worst drop {k}: {100 * v['delta_accuracy']:+.1f} pt ({v['task']}/{v['head']}), flips {_pct(v['flip_rate'])}")
    for s in _cells(r, "slide/"):
        out.append(f"  slide {s['slide']}: {s['n_tiles']} tiles, k={s['k']}, 1-cos {np.mean(s['deviation_vulnerability']):.3f}")
    return out


__all__ = ["markdown_lines", "render", "summary"]
