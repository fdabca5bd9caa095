"""The self-contained HTML report: inline CSS, figures as base64 PNG data URIs, no scripts.

Every string taken from results, config or data goes through :func:`esc`; tables are built
from :class:`~medsec.report.tables.Column` specs by :func:`html_table`, so new sections
only need new column lists and a call to :func:`section`.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medsec.report import figures, patch_figures, robustness
from medsec.report.formatting import (
    dig,
    eps_axis_value,
    fmt_eps_short,
    fmt_list,
    fmt_pct,
    fmt_text,
    mode_text,
    provenance_line,
)
from medsec.report.loading import load_examples
from medsec.report.tables import (
    Badge,
    Column,
    attack_columns,
    history_columns,
    key_value_columns,
    key_value_rows,
    summary_columns,
)

log = logging.getLogger(__name__)

_ALIGN = {"right": "r", "center": "c"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1f2328;
  background:#f6f8fa;line-height:1.45}
main{max-width:1280px;margin:0 auto;padding:1.5rem 2rem 3rem;background:#fff;min-height:100vh}
h1{font-size:1.6rem;margin:.2rem 0 .4rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de;
  padding-bottom:.25rem}h3{font-size:1rem;margin:1.2rem 0 .4rem}
.status{display:inline-block;padding:.1rem .6rem;border-radius:1rem;font-size:.85rem;font-weight:600}
.status.ok{background:#dafbe1;color:#116329}.status.partial{background:#fff8c5;color:#7d4e00}
.muted{color:#656d76;font-size:.9rem}.note{color:#656d76;font-style:italic}
.big{font-size:1.5rem;font-weight:600}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.88rem;margin:.4rem 0}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;vertical-align:top}
th{background:#f0f3f6;text-align:left;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.c,th.c{text-align:center}
table.kv td:first-child{font-weight:600;background:#f6f8fa;white-space:nowrap}
tr.flagged td{background:#fff8c5}
.checks{list-style:none;padding:0}
.checks li{border-left:4px solid #bf8700;background:#fff8c5;padding:.45rem .8rem;margin:.4rem 0;border-radius:3px}
.checks li.error{border-color:#cf222e;background:#ffebe9}.checks li.info{border-color:#0969da;background:#ddf4ff}
.checks code,.muted code{font-size:.85em}
.ok-box{border-left:4px solid #1a7f37;background:#dafbe1;padding:.45rem .8rem;border-radius:3px}
figure{margin:.6rem 0 1.2rem}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#656d76;font-size:.85rem}
pre{background:#f6f8fa;padding:.8rem;overflow-x:auto;font-size:.8rem}
footer{margin-top:2.5rem;color:#656d76;font-size:.8rem}
.badge{display:inline-block;margin-left:.35rem;padding:0 .45rem;border-radius:.8rem;font-size:.72rem;font-weight:600;
  white-space:nowrap;border:1px solid transparent}
.badge[title]{cursor:help}
.badge.adaptive{background:#ddf4ff;color:#0550ae;border-color:#80ccff}
.badge.warn{background:#fff1e5;color:#953800;border-color:#ffb77c}
.badge.universal{background:#fbefff;color:#6639ba;border-color:#d8b9ff}
.badge.info{background:#eaeef2;color:#424a53}
.stages{display:flex;flex-wrap:wrap;gap:.2rem 2rem}.stages h3{font-size:.9rem;margin:.8rem 0 .2rem}
"""


# --------------------------------------------------------------------------- building blocks
def esc(value: Any) -> str:
    """HTML-escape the text of ``value`` (quotes included, safe in attributes)."""
    return html.escape(value if isinstance(value, str) else fmt_text(value), quote=True)


def badge_html(badge: Badge) -> str:
    """A badge as an escaped ``<span class="badge KIND" title="TOOLTIP">``."""
    tip = f' title="{esc(badge.tooltip)}"' if badge.tooltip else ""
    return f'<span class="badge {esc(badge.kind)}"{tip}>{esc(badge.text)}</span>'


def _align_attr(column: Column) -> str:
    cls = _ALIGN.get(column.align)
    return f' class="{cls}"' if cls else ""


def html_table(
    columns: Sequence[Column],
    rows: Iterable[Any],
    caption: str | None = None,
    css_class: str = "data",
    row_class: Callable[[Any], str | None] | None = None,
    row_attrs: Callable[[Any], Mapping[str, str]] | None = None,
) -> str:
    """An HTML table of ``rows`` from column specs; every cell text is escaped.

    Args:
        columns: the column specs.
        rows: the rows (usually dicts) the columns read.
        caption: optional caption (plain text).
        css_class: class of the ``<table>`` (a trusted constant, not escaped data).
        row_class: optional row -> CSS class (e.g. ``"flagged"``).
        row_attrs: optional row -> extra ``data-*`` attributes (values are escaped).

    Returns:
        The table HTML, wrapped in a horizontally scrolling ``div``.
    """
    head = "".join(
        f"<th{_align_attr(c)}" + (f' title="{esc(c.tooltip)}"' if c.tooltip else "") + f">{esc(c.header)}</th>"
        for c in columns
    )
    thead = f"<thead><tr>{head}</tr></thead>" if any(c.header for c in columns) else ""
    body = []
    for row in rows:
        attrs = ""
        cls = row_class(row) if row_class else None
        if cls:
            attrs += f' class="{esc(cls)}"'
        for k, v in (row_attrs(row) if row_attrs else {}).items():
            attrs += f' data-{esc(k)}="{esc(v)}"'
        cells = "".join(f"<td{_align_attr(c)}>{esc(c.text(row))}{''.join(map(badge_html, c.badge_list(row)))}</td>"
                        for c in columns)
        body.append(f"<tr{attrs}>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table class="{esc(css_class)}">{cap}{thead}'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def kv_table(pairs: Iterable[tuple[str, Any]], value_fmt: Callable[[Any], str] = fmt_text) -> str:
    """A two-column key/value table (keys bold, no header row)."""
    return html_table(key_value_columns(value_fmt), key_value_rows(pairs), css_class="kv")


def section(title: str, body: str, anchor: str | None = None) -> str:
    """A ``<section>`` with an escaped ``<h2>`` title around trusted ``body`` HTML."""
    aid = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{aid}><h2>{esc(title)}</h2>{body}</section>"


def note(text: str) -> str:
    """An escaped italic note paragraph."""
    return f'<p class="note">{esc(text)}</p>'


def figure_html(png: bytes, alt: str, caption: str | None = None) -> str:
    """An ``<img>`` embedding ``png`` as a data URI, with an optional caption."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{figures.data_uri(png)}" alt="{esc(alt)}">{cap}</figure>'


def safe_figure(draw: Callable[[], bytes], alt: str, caption: str | None = None) -> str:
    """:func:`figure_html` of ``draw()``, or a note when drawing fails (a report never dies on a plot)."""
    try:
        return figure_html(draw(), alt, caption)
    except Exception as exc:  # noqa: BLE001 - matplotlib can fail in many ways on odd data
        log.warning("could not draw figure %r: %s", alt, exc, exc_info=True)
        return note(f"figure '{alt}' could not be drawn: {exc}")


# --------------------------------------------------------------------------- sections
def _header(results: Mapping[str, Any]) -> str:
    status = results.get("status")
    cls = "ok" if status == "complete" else "partial"
    partial = "" if status == "complete" else note("the run has not finished; the results below are partial")
    line = provenance_line(results.get("provenance") or {})
    return (f"<header><h1>medsec report: {esc(results.get('name') or 'unnamed run')}</h1>"
            f'<span class="status {cls}">{esc(status or "unknown")}</span> '
            f'<span class="muted">{esc(line)}</span>{partial}</header>')


def _provenance(results: Mapping[str, Any]) -> str:
    prov = results.get("provenance") or {}
    pairs = [("run name", results.get("name")), ("status", results.get("status"))]
    pairs += [(k, prov.get(k)) for k in ("medsec", "python", "torch", "platform", "git", "device", "hostname",
                                         "started", "finished")]
    pairs += [(k, v) for k, v in prov.items() if k not in dict(pairs)]
    pairs.append(("global seed", dig(results, "seeds.global")))
    return section("Provenance", kv_table(pairs), "provenance")


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


def _checks(results: Mapping[str, Any]) -> str:
    checks = [c for c in results.get("checks") or [] if isinstance(c, Mapping)]
    if not checks:
        body = '<p class="ok-box">No warnings: the sanity checks found nothing suspicious.</p>'
        if results.get("status") != "complete":
            body = note("no warnings yet; the sanity checks run when the run completes")
        return section("Sanity checks", body, "checks")
    items = []
    for c in checks:
        level = str(c.get("level") or "warning")
        cls = level if level in ("error", "info") else "warning"
        cells = c.get("cells") or []
        where = f'<br><span class="muted">cells: {esc(", ".join(map(str, cells)))}</span>' if cells else ""
        if c.get("model") is not None:
            where += f'<br><span class="muted">model: {esc(c.get("model"))}</span>'
        items.append(f'<li class="{cls}"><strong>{esc(level)}</strong> <code>{esc(c.get("code") or "")}</code>: '
                     f"{esc(c.get('message') or '')}{where}</li>")
    n = len(checks)
    return section(f"Sanity checks ({n} warning{'s' if n != 1 else ''})", f'<ul class="checks">{"".join(items)}</ul>',
                   "checks")


def flagged_cells(results: Mapping[str, Any]) -> set[str]:
    """Ids of cells named by any sanity-check warning."""
    return {str(cell) for c in results.get("checks") or [] if isinstance(c, Mapping) for cell in c.get("cells") or []}


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
            parts.append(safe_figure(lambda a=arrays, ti=title: patch_figures.patch_grid(a, classes, ti),
                                     f"examples {ev.get('id')}",
                                     "Left: clean image (true label / clean prediction). Middle: the patch mask "
                                     "outlined on the clean image. Right: attacked image (prediction red when changed)."))
            continue
        parts.append(safe_figure(lambda a=arrays, ti=title: figures.example_grid(a, classes, ti),
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


def _config(results: Mapping[str, Any]) -> str:
    config = results.get("config")
    if not config:
        return ""
    text = json.dumps(config, indent=2, sort_keys=False, default=str, ensure_ascii=False)
    return section("Configuration", f"<details><summary>resolved configuration</summary><pre>{esc(text)}</pre></details>",
                   "config")


# --------------------------------------------------------------------------- page
def render_html(results: Mapping[str, Any], out_dir: Path) -> str:
    """Render a results dict as one self-contained HTML page.

    Args:
        results: a results.json dict (schema version 1).
        out_dir: the run folder; the cells' ``examples`` paths are relative to it.

    Returns:
        The HTML document (inline CSS, figures as data URIs, no scripts or external assets).
    """
    evaluations = [ev for ev in results.get("evaluations") or [] if isinstance(ev, Mapping)]
    infos = robustness.defense_infos(results, evaluations)
    version = dig(results, "provenance.medsec") or ""
    body = "".join([
        _header(results), _data_model(results), _clean(results), _checks(results),
        _summary(results, evaluations, infos), _worst_case(results, evaluations, infos),
        _defenses(results, evaluations, infos), _stages(evaluations), _patches(evaluations),
        _examples(results, evaluations, Path(out_dir)), _provenance(results), _config(results),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>medsec report: {esc(results.get('name') or 'unnamed run')}</title>"
        f"<style>{CSS}</style></head><body><main>{body}"
        f"<footer>Generated by medsec {esc(version)} from results.json (schema version "
        f"{esc(results.get('schema_version'))}).</footer></main></body></html>\n"
    )
