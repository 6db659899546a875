"""HTML exporter: one self-contained page (figures embedded as base64 PNG data URIs) from the report object."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from tqsim.data.io import write_text_atomic
from tqsim.report.types import Report, Section, Table

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:2em auto;
     padding:0 1.2em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;
     margin-top:2em} h3{font-size:1.02em;margin:1.2em 0 .4em}
.meta{color:#666;font-size:.9em} .intro{color:#333}
.missing{background:#fff6e0;border-left:4px solid #e0a100;padding:.5em .8em;margin:.6em 0}
.warn{background:#fde8e8;border-left:4px solid #c62828;padding:.5em .8em;margin:.6em 0;font-weight:600}
.note{color:#555;font-size:.92em;margin:.25em 0}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.86em;margin:.5em 0 1em} th,td{border:1px solid #ddd;padding:.25em .55em;
     text-align:left;vertical-align:top} th{background:#f4f4f4} tr:nth-child(even) td{background:#fafafa}
code{background:#f2f2f2;padding:0 .25em;border-radius:3px;font-size:.92em}
nav ul{columns:2;font-size:.92em} .na{color:#999}
"""


def _text(s: str) -> str:
    """Escape, then render `backticks` as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(s)))


def _table(t: Table) -> str:
    head = "".join(f"<th>{_text(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    title = f"<h3>{_text(t.title)}</h3>" if t.title else ""
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(out: Path, file: str) -> str:
    data = base64.b64encode((out / file).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _section(sec: Section, out: Path) -> str:
    parts = [f'<section id="{sec.key}"><h2>{_text(sec.title)}</h2>']
    if not sec.available:
        parts.append(f'<p class="missing"><b>Not shown:</b> {_text(sec.missing)}</p>')
        return "".join(parts) + "</section>"
    if sec.intro:
        parts.append(f'<p class="intro">{_text(sec.intro)}</p>')
    if sec.missing:
        parts.append(f'<p class="missing"><b>Partly missing:</b> {_text(sec.missing)}</p>')
    for n in sec.notes:
        cls = "warn" if "FAILED ITS DIAGNOSTICS" in n else "note"
        parts.append(f'<p class="{cls}">{_text(n)}</p>')
    for f in sec.figures:
        parts.append(f'<figure><img src="{_img(out, f.file)}" alt="{html.escape(f.title)}" '
                     f'data-file="{html.escape(f.file)}"><figcaption>{_text(f.caption)} '
                     f'(<a href="{html.escape(f.file)}">PNG</a>)</figcaption></figure>')
    parts += [_table(t) for t in sec.tables]
    return "".join(parts) + "</section>"


def render_html(report: Report, out: Path) -> str:
    out = Path(out)
    toc = "".join(f'<li><a href="#{s.key}">{_text(s.title)}</a>'
                  + ("" if s.available else ' <span class="na">(not available)</span>') + "</li>"
                  for s in report.sections)
    warns = "".join(f'<p class="warn">{_text(w)}</p>' for w in report.warnings)
    s = report.settings
    meta = (f"home {_text(report.home)} · generated {_text(report.created_at)} by tqsim {_text(report.tqsim_version)}"
            f" · thresholds {_text(', '.join(s['thresholds']))} · tail quantile q = {s['tail_q']:g}"
            f" · intervals {int(100 * s['interval'])}%")
    body = "".join(_section(sec, out) for sec in report.sections)
    title = f"tqsim report: {report.workload} on {report.system}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_text(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>"
            f"<h1>{_text(title)}</h1><p class='meta'>{meta}</p>{warns}<nav><ul>{toc}</ul></nav>{body}</body></html>\n")


def to_html(report: Report, out: Path) -> Path:
    path = Path(out) / "index.html"
    write_text_atomic(path, render_html(report, Path(out)))
    return path
