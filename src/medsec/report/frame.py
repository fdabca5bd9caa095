"""The report frame every experiment kind fills: one self-contained HTML page (inline CSS,
figures as base64 PNG data URIs, no scripts) and one Markdown file.

:func:`html_page` and :func:`markdown_page` put the parts every run has around the kind's own
sections: the header (name, kind, status, provenance line), the sanity checks (the one check
vocabulary ``{level, code, message, cells}``), the provenance and the resolved config. Every
string taken from results, config or data goes through :func:`esc` (:func:`md_escape` in
Markdown); tables are built from :class:`~medsec.report.tables.Column` specs by
:func:`html_table` / :func:`md_table`, so a kind's sections only need column lists and calls
to :func:`section`.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from medsec.report import figures
from medsec.report.formatting import dig, fmt_text, provenance_line
from medsec.report.tables import Badge, Column, cell_texts, key_value_columns, key_value_rows

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


# --------------------------------------------------------------------------- the parts every run has
def header(results: Mapping[str, Any]) -> str:
    status = results.get("status")
    cls = "ok" if status == "complete" else "partial"
    partial = "" if status == "complete" else note("the run has not finished; the results below are partial")
    line = provenance_line(results.get("provenance") or {})
    kind = results.get("kind")
    return (f"<header><h1>medsec report: {esc(results.get('name') or 'unnamed run')}</h1>"
            + (f'<span class="muted">{esc(kind)} experiment</span> ' if kind else "")
            +
            f'<span class="status {cls}">{esc(status or "unknown")}</span> '
            f'<span class="muted">{esc(line)}</span>{partial}</header>')


def provenance_section(results: Mapping[str, Any]) -> str:
    prov = results.get("provenance") or {}
    pairs = [("run name", results.get("name")), ("status", results.get("status"))]
    pairs += [(k, prov.get(k)) for k in ("medsec", "python", "torch", "platform", "git", "device", "hostname",
                                         "started", "finished")]
    pairs += [(k, v) for k, v in prov.items() if k not in dict(pairs)]
    pairs.append(("global seed", dig(results, "seeds.global")))
    return section("Provenance", kv_table(pairs), "provenance")


def checks_section(results: Mapping[str, Any]) -> str:
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


def config_section(results: Mapping[str, Any]) -> str:
    config = results.get("config")
    if not config:
        return ""
    text = json.dumps(config, indent=2, sort_keys=False, default=str, ensure_ascii=False)
    return section("Configuration", f"<details><summary>resolved configuration</summary><pre>{esc(text)}</pre></details>",
                   "config")


# --------------------------------------------------------------------------- pages
def html_page(results: Mapping[str, Any], sections: Sequence[str], first: Sequence[str] = ()) -> str:
    """The whole HTML document of a run: the header, the ``first`` sections (the verdict),
    the sanity checks, the kind's ``sections``, provenance and config.

    Args:
        results: the run's results dict (any kind).
        sections: the kind's sections (trusted HTML built with this module's helpers).
        first: sections shown before the sanity checks.

    Returns:
        The HTML document (inline CSS, figures as data URIs, no scripts or external assets).
    """
    version = dig(results, "provenance.medsec") or ""
    body = "".join([header(results), *first, checks_section(results), *sections, provenance_section(results),
                    config_section(results)])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>medsec report: {esc(results.get('name') or 'unnamed run')}</title>"
        f"<style>{CSS}</style></head><body><main>{body}"
        f"<footer>Generated by medsec {esc(version)} from results.json (schema version "
        f"{esc(results.get('schema_version'))}).</footer></main></body></html>\n"
    )


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


def md_checks(results: Mapping[str, Any]) -> str:
    checks = [c for c in results.get("checks") or [] if isinstance(c, Mapping)]
    if not checks:
        return "No warnings."
    return "\n".join(
        f"- **{md_escape(c.get('level') or 'warning')}** ({md_escape(c.get('code') or 'unnamed check')}): "
        f"{md_escape(c.get('message') or '')}"
        + (f" (model: {md_escape(c.get('model'))})" if c.get("model") is not None else "")
        for c in checks
    )


def markdown_page(results: Mapping[str, Any], lines: Sequence[str]) -> str:
    """The Markdown report of a run: title, status and provenance line, the kind's ``lines``,
    then the sanity checks."""
    kind = results.get("kind")
    head = [f"# medsec report: {md_escape(results.get('name') or 'unnamed run')}", "",
            f"Status: **{md_escape(results.get('status') or 'unknown')}**"
            + (f" · {md_escape(kind)} experiment" if kind else "")
            + f" · {md_escape(provenance_line(results.get('provenance') or {}))}", ""]
    return "\n".join([*head, *lines, "## Sanity checks", "", md_checks(results), ""])


__all__ = ["CSS", "badge_html", "checks_section", "config_section", "esc", "figure_html", "flagged_cells", "header",
           "html_page", "html_table", "kv_table", "markdown_page", "md_checks", "md_escape", "md_table", "note",
           "provenance_section", "safe_figure", "section"]
