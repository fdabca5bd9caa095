"""The Markdown report: the summary tables and warnings as plain GitHub Markdown."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medsec.report import robustness
from medsec.report.formatting import dig, fmt_list, fmt_pct, provenance_line
from medsec.report.tables import Column, cell_texts, summary_columns

_MD_SPECIAL = str.maketrans({"\\": "\\\\", "|": "\\|", "<": "\\<", ">": "\\>", "`": "\\`"})
_ALIGN_RULE = {"right": "---:", "center": ":---:"}


def md_escape(text: Any) -> str:
    """``text`` safe inside a Markdown table cell or line: one line, pipes and HTML brackets escaped."""
    return " ".join(str(text).split()).translate(_MD_SPECIAL)


def md_table(columns: Sequence[Column], rows: Iterable[Any]) -> str:
    """A GitHub Markdown table of ``rows`` from column specs (cells escaped)."""
    lines = [
        "| " + " | ".join(md_escape(c.header) for c in columns) + " |",
        "|" + "|".join(_ALIGN_RULE.get(c.align, "---") for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(md_escape(t) for t in texts) + " |" for texts in cell_texts(list(columns), rows)]
    return "\n".join(lines)


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


def _checks(results: Mapping[str, Any]) -> str:
    checks = [c for c in results.get("checks") or [] if isinstance(c, Mapping)]
    if not checks:
        return "No warnings."
    return "\n".join(
        f"- **{md_escape(c.get('level') or 'warning')}** ({md_escape(c.get('code') or 'unnamed check')}): "
        f"{md_escape(c.get('message') or '')}"
        + (f" (model: {md_escape(c.get('model'))})" if c.get("model") is not None else "")
        for c in checks
    )


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
    """Render the summary of a results dict as GitHub Markdown.

    Args:
        results: a results.json dict (schema version 1).

    Returns:
        Markdown text: title, provenance line, data/model line, clean accuracy, the summary
        table (one row per cell), the worst-case, defence x attack matrix and cascade-stage
        tables (when the results hold them) and the sanity-check warnings.
    """
    evaluations = [ev for ev in results.get("evaluations") or [] if isinstance(ev, Mapping)]
    infos = robustness.defense_infos(results, evaluations)
    defended = any(label is not None for label in infos)
    columns = summary_columns(lambda ev: robustness.evaluation_badges(ev, infos), defense=defended)
    clean = results.get("clean") or {}
    lines = [
        f"# medsec report: {md_escape(results.get('name') or 'unnamed run')}",
        "",
        f"Status: **{md_escape(results.get('status') or 'unknown')}** · {md_escape(provenance_line(results.get('provenance') or {}))}",
        "",
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
        "## Sanity checks",
        "",
        _checks(results),
        "",
    ]
    return "\n".join(lines)
