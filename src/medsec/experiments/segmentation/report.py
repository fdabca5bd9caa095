"""The segmentation kind's report: Dice/IoU-vs-eps curves, a per-cell table and overlays
(image, ground truth, clean prediction, adversarial prediction), in the report frame
(:mod:`medsec.report.frame`), plus the table ``medsec run`` prints.

Usage::

    html, md = render(results, run_dir)   # what medsec.report.write_report calls for this kind
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medsec.experiments.evasion.robustness import evaluations_of
from medsec.report.figures import new_figure, png_bytes
from medsec.report.frame import esc, figure_html, html_page, markdown_page, note, section

log = logging.getLogger(__name__)

METRIC_COLUMNS = [("dice", "Dice"), ("iou", "IoU"), ("dice_drop", "Dice drop"), ("hd95", "HD95 px"),
                  ("lesion_miss_rate", "lesion miss"), ("empty_prediction_rate", "empty pred"),
                  ("attack_success_rate", "success"), ("drop_success_rate", "drop >= thr"), ("linf", "Linf px")]


def _eps_axis(ev: Mapping[str, Any]) -> float:
    eps = float(ev["threat"]["eps"])
    return eps if ev.get("mode") == "paper" else eps * 255


def _groups(evaluations: list[Mapping[str, Any]]) -> dict[str, dict[str, list[Mapping[str, Any]]]]:
    """mode -> curve name -> evaluations sorted by eps."""
    out: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for ev in evaluations:
        name = ev["label"] + (" (targeted)" if ev["threat"]["targeted"] else "")
        out.setdefault(ev.get("mode", "pixel"), {}).setdefault(name, []).append(ev)
    for curves in out.values():
        for evs in curves.values():
            evs.sort(key=lambda e: e["threat"]["eps"])
    return out


def dice_iou_vs_eps(results: Mapping[str, Any], mode: str) -> bytes:
    """Two panels (Dice, IoU) against eps for every attack of one mode, clean at eps 0."""
    curves = _groups(evaluations_of(results)).get(mode, {})
    clean = results.get("clean") or {}
    fig = new_figure(9.0, 3.4)
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "dice", "Dice"), (axes[1], "iou", "IoU")):
        for name, evs in curves.items():
            xs = [0.0] + [_eps_axis(e) for e in evs]
            ys = [float(clean.get(key, np.nan))] + [float(e["metrics"][key]) for e in evs]
            ax.plot(xs, ys, marker="o", label=name[:40])
        ax.set_xlabel("eps (normalised units)" if mode == "paper" else "eps (8-bit levels, x/255)")
        ax.set_ylabel(f"mean {title}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} vs eps ({mode} mode)")
    axes[1].legend(fontsize=7, loc="best")
    return png_bytes(fig)


def overlay_grid(npz_path: Path, title: str, rows: int = 4) -> bytes:
    """Rows of (image, ground truth, clean prediction, adversarial image, adversarial prediction)."""
    with np.load(npz_path) as data:
        clean, adv, mask = data["clean"], data["adv"], data["mask"]
        pc, pa = data["pred_clean"], data["pred_adv"]
    n = min(rows, len(clean))
    fig = new_figure(9.0, 1.9 * n + 0.4)
    axes = np.atleast_2d(fig.subplots(n, 5))
    heads = ["image", "ground truth", "clean prediction", "adversarial image", "adversarial prediction"]
    for i in range(n):
        img, aimg = clean[i].transpose(1, 2, 0), adv[i].transpose(1, 2, 0)
        cells = [(img, None), (mask[i], "gray"), (pc[i], "gray"), (aimg, None), (pa[i], "gray")]
        for j, (arr, cmap) in enumerate(cells):
            ax = axes[i, j]
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr, cmap = arr[:, :, 0], "gray"
            ax.imshow(np.clip(arr, 0, 1) if cmap is None else arr, cmap=cmap, vmin=0, vmax=1 if cmap is None else None,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=8)
    fig.suptitle(title[:90], fontsize=9)
    return png_bytes(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def _table(results: Mapping[str, Any]) -> str:
    heads = ["cell", "attack", "mode", "eps", "eps (px, approx)"] + [h for _, h in METRIC_COLUMNS] + ["runtime s"]
    clean = results.get("clean") or {}
    rows = [["clean", "-", "-", "0", "0"] + [_fmt(clean.get(k)) for k, _ in METRIC_COLUMNS] + ["-"]]
    for ev in evaluations_of(results):
        m = ev["metrics"]
        eps = ev["threat"]["eps"]
        eps_txt = f"{eps:g}" if ev.get("mode") == "paper" else f"{eps * 255:.3g}/255"
        rows.append([ev["id"], ev["label"], ev.get("mode", "pixel"), eps_txt,
                     f"{float(ev.get('eps_pixels_approx', eps)) * 255:.3g}/255"]
                    + [_fmt(m.get(k)) for k, _ in METRIC_COLUMNS] + [_fmt(float(ev.get("runtime_s", 0.0)))])
    head = "".join(f"<th>{esc(h)}</th>" for h in heads)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _universal(results: Mapping[str, Any]) -> str:
    evs = [ev for ev in evaluations_of(results) if ev.get("universal")]
    if not evs:
        return ""
    lines = []
    for ev in evs:
        m = ev["metrics"]
        found = "found" if m.get("dice_drop", 0) >= 0.1 else "not found (Dice drop < 0.1)"
        lines.append(f"<li>{esc(ev['id'])}: fit-set fooling rate {esc(_fmt(m.get('fit_fooling_rate')))} on "
                     f"{esc(m.get('fit_size'))} training images; on the evaluation images Dice "
                     f"{esc(_fmt(m.get('clean_dice')))} -> {esc(_fmt(m.get('dice')))}, fooling rate (pixels changed "
                     f"> threshold) {esc(_fmt(m.get('test_fooling_rate')))}: universal perturbation {esc(found)}</li>")
    return section("Universal perturbation", "<ul>" + "".join(lines) + "</ul>", "universal")


def render_html(results: Mapping[str, Any], out_dir: Path) -> str:
    """The HTML report of a segmentation run."""
    evaluations = evaluations_of(results)
    model, data, clean = results.get("model") or {}, results.get("data") or {}, results.get("clean") or {}
    train = model.get("train") or {}
    facts = [("model", model.get("name")), ("prompt", model.get("prompt")), ("parameters", model.get("parameters")),
             ("trainable parameters", model.get("trainable_parameters")), ("data", data.get("name")),
             ("evaluation images", data.get("n_eval")), ("image shape", data.get("image_shape")),
             ("training", f"{train.get('epochs')} epochs, {train.get('n_train')} images, {train.get('runtime_s', 0):.0f}s"
              if train else "not trained by this run"),
             ("clean Dice / IoU", f"{_fmt(clean.get('dice'))} / {_fmt(clean.get('iou'))}")]
    body = [section("Model and data", "<ul>" + "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in facts) + "</ul>")]
    figs = []
    for mode in sorted({ev.get("mode", "pixel") for ev in evaluations}):
        try:
            figs.append(figure_html(dice_iou_vs_eps(results, mode), f"Dice and IoU vs eps, {mode} mode",
                                    "pixel mode: eps in [0, 1] units, clamped; paper mode: eps in normalised units, "
                                    "no clamp, 8-bit quantisation before scoring" if mode == "paper" else None))
        except Exception as exc:  # noqa: BLE001 - a report never dies on a plot
            figs.append(note(f"figure could not be drawn: {exc}"))
    body.append(section("Dice and IoU vs eps", "".join(figs), "curves"))
    body.append(section("Results per cell", _table(results), "table"))
    body.append(_universal(results))
    overlays = []
    curves = _groups(evaluations)
    for named in curves.values():
        for evs in named.values():
            ev = evs[-1]  # the largest eps of each attack
            if not ev.get("examples"):
                continue
            path = Path(out_dir) / str(ev["examples"])
            if not path.is_file():
                overlays.append(note(f"examples of {ev['id']} missing ({path.name})"))
                continue
            try:
                overlays.append(figure_html(overlay_grid(path, f"{ev['id']}"), f"overlays {ev['id']}"))
            except Exception as exc:  # noqa: BLE001
                overlays.append(note(f"overlays of {ev['id']} could not be drawn: {exc}"))
    if overlays:
        body.append(section("Overlays (largest eps of each attack)", "".join(overlays), "overlays"))
    return html_page(results, body)


def render_markdown(results: Mapping[str, Any]) -> str:
    """A Markdown summary table of a segmentation run."""
    clean = results.get("clean") or {}
    lines = [f"Clean: Dice {_fmt(clean.get('dice'))}, IoU {_fmt(clean.get('iou'))}, HD95 {_fmt(clean.get('hd95'))}, "
             f"lesion miss {_fmt(clean.get('lesion_miss_rate'))} on {clean.get('n')} images.", "",
             "| cell | mode | eps | Dice | IoU | Dice drop | lesion miss | success |", "|---|---|---|---|---|---|---|---|"]
    for ev in evaluations_of(results):
        m = ev["metrics"]
        lines.append(f"| {ev['id']} | {ev.get('mode')} | {ev['threat']['eps']:.4g} | {_fmt(m['dice'])} | "
                     f"{_fmt(m['iou'])} | {_fmt(m['dice_drop'])} | {_fmt(m['lesion_miss_rate'])} | "
                     f"{_fmt(m['attack_success_rate'])} |")
    return markdown_page(results, [*lines, ""])


def render(results: dict[str, Any], out_dir: Path) -> tuple[str, str]:
    """(report.html, report.md) of a segmentation run."""
    return render_html(results, out_dir), render_markdown(results)


def summary(results: dict[str, Any], out_dir: Path) -> list[str]:
    """What ``medsec run`` prints: training, clean Dice/IoU, one line per cell."""
    clean = results.get("clean", {})
    lines = []
    train = (results.get("model") or {}).get("train")
    if train:
        lines.append(f"trained {results['model']['name']}: test Dice {train['test']['dice']:.3f} "
                     f"in {train.get('runtime_s', 0):.0f}s")
    lines.append(f"clean Dice {clean.get('dice', float('nan')):.3f}, IoU {clean.get('iou', float('nan')):.3f} "
                 f"on {clean.get('n')} images")
    lines.append(f"{'attack':<24} {'mode':<6} {'eps':>9} {'Dice':>6} {'IoU':>6} {'drop':>6} {'success':>8} {'time':>8}")
    for ev in evaluations_of(results):
        t, m = ev["threat"], ev["metrics"]
        eps = f"{t['eps']:g}" if ev.get("mode") == "paper" else f"{t['eps_255']:.3g}/255"
        success = "–" if m.get("attack_success_rate") is None else f"{100 * m['attack_success_rate']:.1f}%"
        lines.append(f"{ev['label'] + (' (T)' if t['targeted'] else ''):<24} {ev.get('mode', 'pixel'):<6} {eps:>9} "
                     f"{m['dice']:>6.3f} {m['iou']:>6.3f} {m['dice_drop']:>6.3f} {success:>8} {ev['runtime_s']:>7.1f}s")
    return lines
