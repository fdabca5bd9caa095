"""The evasion kind's report: clean accuracy, the summary table with its robust-accuracy
curve, the worst case over attacks, defences and their matrix, cascade stages, patch
naturalness and example grids, in the report frame (:mod:`medsec.report.frame`), and the
table ``medsec run`` prints.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medsec.experiments.evasion import figures, patch_figures, robustness
from medsec.experiments.evasion.robustness import evaluations_of
from medsec.report.formatting import dig, eps_axis_value, fmt_eps_short, fmt_list, fmt_pct, fmt_text, mode_text
from medsec.report.frame import (
    esc,
    flagged_cells,
    html_page,
    html_table,
    kv_table,
    markdown_page,
    md_escape,
    md_table,
    note,
    safe_figure,
    section,
)
from medsec.report.loading import load_examples
from medsec.report.tables import attack_columns, history_columns, summary_columns


def _data_model(results: Mapping[str, Any]) -> str:
    data = results.get("data") or {}
    model = results.get("model") or {}
    shape = data.get("image_shape")
    data_pairs = [
        ("dataset", data.get("name")), ("split", data.get("split")), ("evaluated images", data.get("n_eval")),
        ("image shape", " × ".join(map(str, shape)) if isinstance(shape, list) else shape),
        ("classes", fmt_list(data.get("classes") or [])),
    ]
    model_pairs = [("model", model.get("name")), ("task", model.get("task")),
                   ("classes", model.get("num_classes")), ("checkpoint", model.get("checkpoint"))]
    body = "<h3>Data</h3>" + kv_table(data_pairs) + "<h3>Model</h3>" + kv_table(model_pairs)
    train = model.get("train")
    if isinstance(train, Mapping):
        tpairs = [("epochs", train.get("epochs")), ("training images", train.get("n_train")),
                  ("learning rate", train.get("lr")), ("batch size", train.get("batch_size")),
                  ("test accuracy", fmt_pct(train.get("test_accuracy"))),
                  ("training time", None if train.get("runtime_s") is None else f"{fmt_text(train.get('runtime_s'))} s")]
        body += "<h3>Training</h3>" + kv_table([(k, v) for k, v in tpairs if v is not None])
        history = [h for h in train.get("history") or [] if isinstance(h, Mapping)]
        if history:
            body += html_table(history_columns(history), history, caption="training history")
    else:
        body += note("the model was not trained in this run (loaded or untrained)")
    return section("Data and model", body, "data-model")


def _clean(results: Mapping[str, Any]) -> str:
    clean = results.get("clean") or {}
    n = clean.get("n")
    return section("Clean accuracy", f'<p><span class="big">{esc(fmt_pct(clean.get("accuracy")))}</span>'
                   + (f' <span class="muted">on {esc(n)} images</span>' if n is not None else "") + "</p>", "clean")


def _summary(results: Mapping[str, Any], evaluations: list[Mapping[str, Any]],
             infos: Mapping[str | None, Mapping[str, Any]]) -> str:
    if not evaluations:
        return section("Summary", note("no evaluation has finished yet"), "summary")
    flagged = flagged_cells(results)
    defended = any(label is not None for label in infos)
    columns = summary_columns(lambda ev: robustness.evaluation_badges(ev, infos), defense=defended)
    table = html_table(columns, evaluations,
                       row_class=lambda ev: "flagged" if str(ev.get("id")) in flagged else None,
                       row_attrs=lambda ev: {"cell": str(ev.get("id", ""))})
    legend = ('<p class="muted">Robust accuracy counts over all evaluated images; ASR over the attacked '
              "(clean-correct) ones; perturbation norms, PSNR and SSIM are means over attacked images. "
              "Highlighted rows are named by a sanity-check warning."
              + (" <em>adaptive</em>: attacked through the defence with BPDA/EOT; <em>non-adaptive</em>: a plain "
                 "gradient attack on a defence that needs BPDA/EOT, whose robust accuracy may overstate robustness."
                 if defended else "") + "</p>")
    caption = ("Robust accuracy against the perturbation budget, one panel per threat model"
               + (" and defence" if defended else "") + "; dash-dotted: adaptive attacks, dotted: targeted, "
               "thick grey dashed: worst case over all attacks, grey dotted: clean accuracy.")
    curve = safe_figure(lambda: figures.robust_accuracy_vs_eps(results), "robust accuracy vs eps", caption)
    attacks = "<details><summary>Attack parameters</summary>" + html_table(attack_columns(), evaluations) + "</details>"
    return section("Summary", table + legend + "<h3>Robust accuracy vs eps</h3>" + curve + attacks, "summary")


def _worst_case(results: Mapping[str, Any], evaluations: list[Mapping[str, Any]],
                infos: Mapping[str | None, Mapping[str, Any]]) -> str:
    rows = robustness.worst_case_rows(results, evaluations, infos)
    if not rows:
        return ""
    legend = ('<p class="muted">Per defence and budget, a point counts as robust only if every attack run at that '
              "budget failed on it, so the worst case is at most the best single attack's robust accuracy.</p>")
    return section("Worst case over attacks", html_table(robustness.worst_case_columns(infos), rows) + legend,
                   "worst-case")


def _defenses(results: Mapping[str, Any], evaluations: list[Mapping[str, Any]],
              infos: Mapping[str | None, Mapping[str, Any]]) -> str:
    if not any(label is not None for label in infos):
        return ""
    declared = [d for d in results.get("defenses") or [] if isinstance(d, Mapping)]
    body = html_table(robustness.defense_columns(), declared) if declared else ""
    cols = robustness.matrix_spec(evaluations)
    if cols:
        rows = robustness.matrix_rows(evaluations, infos, cols)
        body += "<h3>Defence × attack matrix</h3>" + html_table(robustness.matrix_columns(cols, infos), rows)
        body += ('<p class="muted">Robust accuracy of each defended model at the largest budget of each attack '
                 "(stated in the column header). <em>(adaptive)</em> columns attack through the defence with BPDA/EOT; "
                 "⚠ marks a plain gradient attack on a defence that is not differentiable or is stochastic, "
                 "whose number may overstate robustness. – : not run.</p>")
    return section("Defences", body, "defenses")


def _stages(evaluations: list[Mapping[str, Any]]) -> str:
    cells = robustness.cascade_cells(evaluations)
    if not cells:
        return ""
    parts = [f"<div><h3>{esc(robustness.stage_title(ev))}</h3>"
             + html_table(robustness.stage_columns(), robustness.stage_rows(ev)) + "</div>" for ev in cells]
    legend = ('<p class="muted">Cascades (AutoAttack style) run their attacks in turn on the points still robust; '
              "robust accuracy after each stage.</p>")
    return section("Cascade stages", legend + f'<div class="stages">{"".join(parts)}</div>', "stages")


def largest_eps_cells(evaluations: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """For each (label, norm, targeted, defence), the cell with the largest eps, in first-seen order.

    At equal eps an adaptive cell is preferred over the plain one (it is the stronger attack).
    """
    best: dict[tuple[str, str, bool, str | None], Mapping[str, Any]] = {}
    for ev in evaluations:
        t = ev.get("threat") or {}
        key = (str(ev.get("label") or ev.get("attack")), str(t.get("norm")), bool(t.get("targeted")),
               robustness.defense_of(ev))
        x = eps_axis_value(t)
        cur = best.get(key)
        cur_x = eps_axis_value(cur.get("threat") or {}) if cur is not None else None
        if (cur is None or (x is not None and (cur_x is None or x > cur_x))
                or (x == cur_x and robustness.is_adaptive(ev) and not robustness.is_adaptive(cur))):
            best[key] = ev
    return list(best.values())


def _examples(results: Mapping[str, Any], evaluations: list[Mapping[str, Any]], out_dir: Path) -> str:
    if not evaluations:
        return ""
    classes = dig(results, "data.classes") or []
    parts = []
    for ev in largest_eps_cells(evaluations):
        t = ev.get("threat") or {}
        d = robustness.defense_of(ev)
        title = (f"{robustness.cell_name(ev)}, {t.get('norm')} eps {fmt_eps_short(t)}, {mode_text(t.get('targeted'))}"
                 + (f", defence {d}" if d is not None else ""))
        parts.append(f"<h3>{esc(title)}</h3>")
        arrays, why = load_examples(out_dir, ev.get("examples"))
        if arrays is None:
            parts.append(note(why or "no examples"))
            continue
        if t.get("norm") == "patch":
            parts.append(safe_figure(functools.partial(patch_figures.patch_grid, arrays, classes, title),
                                     f"examples {ev.get('id')}",
                                     "Left: clean image (true label / clean prediction). Middle: the patch mask "
                                     "outlined on the clean image. Right: attacked image (prediction red when changed)."))
            continue
        parts.append(safe_figure(functools.partial(figures.example_grid, arrays, classes, title),
                                 f"examples {ev.get('id')}",
                                 "Left: clean image (true label / clean prediction). Middle: adversarial image "
                                 "(prediction red when changed). Right: perturbation, amplified to full range."))
    return section("Examples at the largest eps", "".join(parts), "examples")


def _patches(evaluations: list[Mapping[str, Any]]) -> str:
    cells = [ev for ev in evaluations if (ev.get("threat") or {}).get("norm") == "patch"
             and dig(ev, "metrics.coverage") is not None]
    if not cells:
        return ""
    legend = ('<p class="muted">Patch attacks replace the pixels inside a mask. Coverage: measured fraction of '
              "replaced pixels (the budget is the threat's eps). Colour W1: 1-D Wasserstein distance between the "
              "patch pixels and the untouched (tissue) pixels of the same image, per channel summed, in CIE Lab "
              "and optical density; ΔE: CIE76 distance of their mean Lab colours. Lower = closer to the tissue "
              "colours. Means over attacked images.</p>")
    body = html_table(patch_figures.naturalness_columns(), cells) + legend
    body += "<h3>Patch-area histogram</h3>" + safe_figure(
        lambda: patch_figures.area_histograms(cells), "patch-area histogram",
        "Share of connected patch blobs per area bin (pixels), per patch cell.")
    return section("Patch naturalness", body, "patches")


def render_html(results: Mapping[str, Any], out_dir: Path) -> str:
    """Render an evasion results dict as one self-contained HTML page.

    Args:
        results: a results.json dict of ``kind: evasion``.
        out_dir: the run folder; the cells' ``examples`` paths are relative to it.
    """
    evaluations = evaluations_of(results)
    infos = robustness.defense_infos(results, evaluations)
    return html_page(results, [
        _data_model(results), _summary(results, evaluations, infos), _worst_case(results, evaluations, infos),
        _defenses(results, evaluations, infos), _stages(evaluations), _patches(evaluations),
        _examples(results, evaluations, Path(out_dir))], first=[_clean(results)])


def _data_model_line(results: Mapping[str, Any]) -> str:
    data = results.get("data") or {}
    model = results.get("model") or {}
    parts = [f"data: {data.get('name', '?')} ({data.get('split', '?')}, {data.get('n_eval', '?')} images, "
             f"{len(data.get('classes') or [])} classes)",
             f"model: {model.get('name', '?')} ({model.get('task', '?')})"]
    train = model.get("train")
    if isinstance(train, Mapping):
        parts.append(f"trained {train.get('epochs', '?')} epochs, test accuracy {fmt_pct(train.get('test_accuracy'))}")
    return " · ".join(parts)


def _robustness(results: Mapping[str, Any], evaluations: list[Mapping[str, Any]],
                infos: Mapping[str | None, Mapping[str, Any]]) -> list[str]:
    """Lines of the worst-case, defence x attack matrix and cascade-stage sections (none when empty)."""
    lines: list[str] = []
    rows = robustness.worst_case_rows(results, evaluations, infos)
    if rows:
        lines += ["## Worst case over attacks", "", md_table(robustness.worst_case_columns(infos), rows), "",
                  "A point counts as robust only if every attack at that budget failed on it.", ""]
    if any(label is not None for label in infos):
        declared = [d for d in results.get("defenses") or [] if isinstance(d, Mapping)]
        lines += ["## Defences", ""]
        if declared:
            lines += [md_table(robustness.defense_columns(), declared), ""]
        cols = robustness.matrix_spec(evaluations)
        if cols:
            matrix = md_table(robustness.matrix_columns(cols, infos), robustness.matrix_rows(evaluations, infos, cols))
            lines += ["### Defence × attack matrix", "", matrix, "",
                      "Robust accuracy at the largest budget of each attack (in the header). (adaptive): attacked "
                      "through the defence with BPDA/EOT; ⚠: plain gradient attack on a defence that is not "
                      "differentiable or is stochastic, which may overstate robustness; –: not run.", ""]
    cascades = robustness.cascade_cells(evaluations)
    if cascades:
        lines += ["## Cascade stages", "", "Robust accuracy after each stage (AutoAttack style).", ""]
        for ev in cascades:
            lines += [f"**{md_escape(robustness.stage_title(ev))}**", "",
                      md_table(robustness.stage_columns(), robustness.stage_rows(ev)), ""]
    return lines


def render_markdown(results: Mapping[str, Any]) -> str:
    """Render the summary of an evasion results dict as GitHub Markdown: the data/model line,
    clean accuracy, the summary table (one row per cell), the worst-case, defence x attack
    matrix and cascade-stage tables (when the results hold them) and the sanity checks."""
    evaluations = evaluations_of(results)
    infos = robustness.defense_infos(results, evaluations)
    defended = any(label is not None for label in infos)
    columns = summary_columns(lambda ev: robustness.evaluation_badges(ev, infos), defense=defended)
    clean = results.get("clean") or {}
    return markdown_page(results, [
        md_escape(_data_model_line(results)),
        "",
        f"Classes: {md_escape(fmt_list(dig(results, 'data.classes') or []))}",
        "",
        f"**Clean accuracy: {md_escape(fmt_pct(clean.get('accuracy')))}**"
        + (f" on {md_escape(clean.get('n'))} images" if clean.get("n") is not None else ""),
        "",
        "## Summary",
        "",
        md_table(columns, evaluations) if evaluations else "No evaluation has finished yet.",
        "",
        "Robust accuracy counts over all evaluated images; ASR over the attacked (clean-correct) ones; "
        "norms, PSNR and SSIM are means over attacked images. Figures and examples: see report.html."
        + (" [adaptive …]: attacked through the defence with BPDA/EOT; [non-adaptive]: plain gradient attack on a "
           "defence that needs BPDA/EOT, which may overstate robustness." if defended else ""),
        "",
        *_robustness(results, evaluations, infos),
    ])


def render(results: dict[str, Any], out_dir: Path) -> tuple[str, str]:
    """(report.html, report.md) of an evasion run."""
    return render_html(results, out_dir), render_markdown(results)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def summary(results: dict[str, Any], out_dir: Path) -> list[str]:
    """What ``medsec run`` prints: training, clean accuracy, one line per cell, the warnings."""
    clean = results.get("clean", {})
    lines = []
    train = (results.get("model") or {}).get("train")
    if train:
        lines.append(f"trained {results['model']['name']}: test accuracy {_pct(train.get('test_accuracy'))} "
                     f"in {train.get('runtime_s', 0):.0f}s")
    lines.append(f"clean accuracy {_pct(clean.get('accuracy'))} on {clean.get('n')} images")
    lines.append(f"{'attack':<28} {'norm':<5} {'eps':>9} {'robust acc.':>12} {'success':>8} {'time':>8}")
    for ev in evaluations_of(results):
        t, m = ev["threat"], ev["metrics"]
        eps = f"{t['eps_255']:.3g}/255" if t["norm"] == "linf" else f"{t['eps']:g}"
        lines.append(f"{ev['label'] + (' (T)' if t['targeted'] else ''):<28} {t['norm']:<5} {eps:>9} "
                     f"{_pct(m.get('robust_accuracy')):>12} {_pct(m.get('attack_success_rate')):>8} "
                     f"{ev['runtime_s']:>7.1f}s")
    return lines


__all__ = ["evaluations_of", "render", "render_html", "render_markdown", "summary"]
