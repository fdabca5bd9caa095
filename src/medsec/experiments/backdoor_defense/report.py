"""Report of a ``backdoor_defense`` run: the detector x backdoor matrix, Neural Cleanse's
anomaly indices, and the repairs' CA/ASR before and after (HTML and Markdown).

Rows and columns come from the results (the configured detectors and backdoors), so a
newly registered trigger or detector shows up by being listed in the config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsec.report.formatting import fmt_pct
from medsec.report.frame import esc, figure_html, html_page, markdown_page, note, section

MISSING = "–"


def _f(v: Any, spec: str = ".3f") -> str:
    return MISSING if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) else format(float(v), spec)


def _cells(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {k: v for k, v in (results.get("cells") or {}).items() if isinstance(v, Mapping)}


def detector_cell_text(cell: Mapping[str, Any] | None) -> str:
    """One matrix cell as plain text: AUROC and TPR@5%FPR, or Neural Cleanse's verdict."""
    if cell is None:
        return MISSING
    m = cell.get("metrics") or {}
    if cell.get("inspects") == "model":
        flagged = m.get("flagged_classes") or []
        verdict = "target flagged" if m.get("target_flagged") else ("missed" if m.get("target") is not None else "")
        return (f"anomaly index of target {_f(m.get('target_anomaly_index'), '.2f')}; flagged {flagged or 'none'}"
                + (f" ({verdict})" if verdict else ""))
    text = f"AUROC {_f(m.get('auroc'))}, TPR@5%FPR {_f(m.get('tpr_at_5pct_fpr'))}"
    if m.get("auroc_target_class") is not None:
        text += f" (target class: AUROC {_f(m.get('auroc_target_class'))})"
    return text


def _matrix(results: Mapping[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], Mapping[str, Any]]]:
    backdoors = list((results.get("backdoors") or {}).keys())
    detectors = [str(d) for d in results.get("detectors") or []]
    by = {}
    for c in _cells(results).values():
        if c.get("kind") == "detector":
            by[(str(c.get("label")), str(c.get("backdoor")))] = c
    for d, _ in by:
        if d not in detectors:
            detectors.append(d)
    return detectors, backdoors, by


def matrix_lines(results: Mapping[str, Any]) -> list[str]:
    """Plain-text lines of the backdoors, the detector matrix and the repairs (console summary)."""
    lines = [f"{results.get('name')}: {results.get('status')}"]
    for label, b in (results.get("backdoors") or {}).items():
        m = b.get("metrics") or {}
        lines.append(f"backdoor {label} ({b.get('trigger')}, target {b.get('target')}, rate {b.get('rate')}): "
                     f"CA {fmt_pct(m.get('clean_accuracy'))}, ASR {fmt_pct(m.get('attack_success_rate'))}")
    detectors, backdoors, by = _matrix(results)
    for d in detectors:
        for b in backdoors:
            lines.append(f"  {d} vs {b}: {detector_cell_text(by.get((d, b)))}")
    for c in _cells(results).values():
        if c.get("kind") == "repair" and not c.get("skipped"):
            m = c.get("metrics") or {}
            lines.append(f"  repair {c.get('label')} on {c.get('backdoor')}: CA {fmt_pct(m.get('ca_before'))} -> "
                         f"{fmt_pct(m.get('ca_after'))}, ASR {fmt_pct(m.get('asr_before'))} -> {fmt_pct(m.get('asr_after'))}")
    return lines


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def _sections(results: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, legend) of each table, shared by HTML and Markdown."""
    out = []
    brows = []
    for label, b in (results.get("backdoors") or {}).items():
        m = b.get("metrics") or {}
        brows.append([label, str(b.get("trigger")), str(b.get("victim") or "classifier trained on the poisoned set"),
                      json.dumps(b.get("params") or {}), str(b.get("target")),
                      str(b.get("policy")), f"{b.get('n_poisoned')} ({_f(b.get('rate'), '.3g')})",
                      fmt_pct(m.get("clean_accuracy")), fmt_pct(m.get("attack_success_rate")),
                      fmt_pct(m.get("backdoor_accuracy"))])
    out.append(("Backdoored models", ["backdoor", "trigger / attack", "victim", "params", "target", "policy", "poisoned (rate)", "CA",
                                      "ASR (non-target)", "backdoor acc. (all)"], brows,
                "CA: clean accuracy; ASR: triggered test images of non-target classes classified as the target; "
                "backdoor accuracy: all triggered test images, target class included."))
    detectors, backdoors, by = _matrix(results)
    if detectors:
        inspects = {d: next((str(c.get("inspects")) for (dd, _), c in by.items() if dd == d), "?") for d in detectors}
        rows = [[d, inspects[d]] + [detector_cell_text(by.get((d, b))) for b in backdoors] for d in detectors]
        out.append(("Detector × backdoor matrix", ["detector", "inspects"] + backdoors, rows,
                    "training_set detectors score every sample of the poisoned training set (ground truth: the "
                    "recorded poisoned indices; target class: inside the target class only); inputs detectors score "
                    "clean test images against triggered test images of non-target classes; model detectors "
                    "(Neural Cleanse) flag classes whose reverse-engineered trigger is abnormally small (MAD anomaly "
                    "index above the threshold, 2 by default). – : not run."))
        nc = [(d, b, by[(d, b)]) for d in detectors for b in backdoors
              if (d, b) in by and by[(d, b)].get("inspects") == "model"]
        if nc:
            rows = []
            for d, b, c in nc:
                m = c.get("metrics") or {}
                ai = m.get("anomaly_index") or []
                l1 = m.get("mask_l1") or []
                rows.append([d, b, str(m.get("target")), ", ".join(_f(v, ".2f") for v in ai),
                             ", ".join(_f(v, ".1f") for v in l1), str(m.get("flagged_classes"))])
            out.append(("Neural Cleanse per class", ["detector", "backdoor", "target", "anomaly index per class",
                                                     "mask L1 per class", "flagged"], rows,
                        "Anomaly index = |L1 - median| / (1.4826 MAD) of the reverse-engineered mask norms; a class "
                        "is flagged when its norm is below the median and its index above the threshold."))
    reps = [c for c in _cells(results).values() if c.get("kind") == "repair" and not c.get("skipped")]
    if reps:
        rows = [[str(c.get("label")), str(c.get("backdoor")),
                 f"{fmt_pct((c.get('metrics') or {}).get('ca_before'))} → {fmt_pct((c.get('metrics') or {}).get('ca_after'))}",
                 f"{fmt_pct((c.get('metrics') or {}).get('asr_before'))} → {fmt_pct((c.get('metrics') or {}).get('asr_after'))}",
                 ", ".join(f"{k}={_f(v, '.3g')}" for k, v in (c.get("facts") or {}).items())] for c in reps]
        out.append(("Repairs", ["repair", "backdoor", "CA before → after", "ASR before → after", "facts"], rows,
                    "CA and ASR on the same test images before and after the repair (the defender's clean set is "
                    "the held-out clean images)."))
    return out


def _nc_figure(results: Mapping[str, Any]) -> str:
    cells = [c for c in _cells(results).values() if c.get("inspects") == "model"]
    if not cells:
        return ""
    try:
        from medsec.report.figures import new_figure, png_bytes

        fig = new_figure(2.6 * len(cells) + 1.0, 2.6)
        for i, c in enumerate(cells):
            ax = fig.add_subplot(1, len(cells), i + 1)
            m = c.get("metrics") or {}
            ai = [float(v) for v in m.get("anomaly_index") or []]
            colors = ["#cf222e" if k in (m.get("flagged_classes") or []) else "#57606a" for k in range(len(ai))]
            ax.bar(range(len(ai)), ai, color=colors)
            ax.axhline(float(m.get("threshold") or 2.0), color="#0550ae", linestyle="--", linewidth=1)
            ax.set_title(f"{c.get('backdoor')} (target {m.get('target')})", fontsize=8)
            ax.set_xlabel("class", fontsize=8)
            ax.set_ylabel("anomaly index", fontsize=8)
            ax.tick_params(labelsize=7)
        return figure_html(png_bytes(fig), "Neural Cleanse anomaly index",
                           "Neural Cleanse anomaly index per class (red: flagged; dashed: threshold).")
    except Exception as exc:  # noqa: BLE001 - a report never dies on a plot
        return note(f"figure could not be drawn: {exc}")


def render(results: Mapping[str, Any], out_dir: Path) -> tuple[str, str]:
    """(HTML, Markdown) of a backdoor_defense results dict."""
    data = results.get("data") or {}
    facts = (f"data {data.get('name')}: {data.get('n_train')} training, {data.get('n_test')} test, "
             f"{data.get('n_clean')} clean held-out images")
    parts = [f'<p class="muted">{esc(facts)}</p>']
    md = [facts, ""]
    for title, head, rows, legend in _sections(results):
        body = _table(head, rows) + f'<p class="muted">{esc(legend)}</p>'
        if title == "Neural Cleanse per class":
            body += _nc_figure(results)
        parts.append(section(title, body, title.lower().replace(" ", "-").replace("×", "x")))
        md += [f"## {title}", "", _md_table(head, rows), "", legend, ""]
    return html_page(results, parts), markdown_page(results, md)


def summary(results: dict[str, Any], out_dir: Path) -> list[str]:
    """What ``medsec run`` prints: the detector x backdoor matrix and the repairs."""
    return matrix_lines(results)
