"""Markdown exporter: ``index.md`` beside the page, figures linked from ``figures/``."""

from __future__ import annotations

from pathlib import Path

from tqsim.data.io import write_text_atomic
from tqsim.report.types import Report, Table


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> list[str]:
    lines = [f"**{t.title}**", ""] if t.title else []
    lines.append("| " + " | ".join(_cell(c) for c in t.columns) + " |")
    lines.append("|" + "---|" * len(t.columns))
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return lines + [""]


def render_markdown(report: Report) -> str:
    s = report.settings
    lines = [f"# tqsim report: {report.workload} on {report.system}", "",
             f"home {report.home} · generated {report.created_at} by tqsim {report.tqsim_version} · thresholds "
             f"{', '.join(s['thresholds'])} · tail quantile q = {s['tail_q']:g} · intervals "
             f"{int(100 * s['interval'])}%", ""]
    lines += [f"> **Warning:** {w}" for w in report.warnings] + ([""] if report.warnings else [])
    for sec in report.sections:
        lines += [f"## {sec.title}", ""]
        if not sec.available:
            lines += [f"*Not shown:* {sec.missing}", ""]
            continue
        if sec.intro:
            lines += [sec.intro, ""]
        if sec.missing:
            lines += [f"*Partly missing:* {sec.missing}", ""]
        lines += [f"- {n}" for n in sec.notes] + ([""] if sec.notes else [])
        for f in sec.figures:
            lines += [f"![{f.title}]({f.file})", "", f"*{f.caption}*", ""]
        for t in sec.tables:
            lines += _table(t)
    return "\n".join(lines) + "\n"


def to_markdown(report: Report, out: Path) -> Path:
    path = Path(out) / "index.md"
    write_text_atomic(path, render_markdown(report))
    return path
