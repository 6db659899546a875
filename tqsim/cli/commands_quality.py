"""`tqsim quality`: measured latency and Q@T distributions, tail quality, MLPerf's bound."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tqsim.cli.common import (app, Debug, Home, Json, Seed, System, Thresholds, WorkloadOpt, check_plot_path, console,
                              emit_json, fmt_seconds, split_list, steps)
from tqsim.units import fmt_pct as pct


@app.command()
def quality(
    threshold: Thresholds = None,
    tail_q: Annotated[float, typer.Option("--tail-q", help="Tail quantile q of TQ_q (0 < q < 1).")] = 0.01,
    files: Annotated[Optional[list[Path]], typer.Option(
        "--files", help="Calibration files or folders to read instead of the workspace (repeatable).")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write the Q@T-versus-threshold bands to this file (.png, .svg or .pdf).")] = None,
    home: Home = None, system: System = None, workload: WorkloadOpt = None,
    json_out: Json = False, seed: Seed = 0, debug: Debug = False,
) -> None:
    """Q@T distribution over passes, tail quality TQ_q, mean and minimum with 90% intervals, per config.

    Thresholds default to p90 p95 p99 of each configuration's own latency. Also prints what MLPerf
    LoadGen's early stopping would certify from the same inferences.
    """
    from tqsim.data.io import workspace_campaign
    from tqsim.quality import check_tail_q, parse_thresholds, quality_curves, quality_report

    check_tail_q(tail_q)
    ths = parse_thresholds(split_list(threshold))
    check_plot_path(plot)
    with steps("quality", enabled=not json_out) as progress:
        if progress:
            progress("reading the calibration")
        campaign = workspace_campaign(home, system, workload, files)
        if progress:
            progress("Q@T, tail quality and bootstrap intervals")
        report = quality_report(campaign, ths, tail_q=tail_q, seed=seed)
    if plot is not None:
        from tqsim.report.quality_plot import plot_quality_bands

        marks = {c["config_id"]: [t["threshold_s"] for t in c["quality"]["thresholds"]] for c in report["configs"]}
        plot_quality_bands(quality_curves(campaign), plot, marks=marks,
                           title=f"{report['workload']} on {report['system']}")
    if json_out:
        emit_json(report)
        return
    _render(report, plot)


def _render(report: dict, plot: Path | None) -> None:
    from rich.table import Table

    out = console()
    for c in report["configs"]:
        q = c["quality"]
        lat = c["latency_s"]
        title = (f"{c['config_id']} · {c['passes']} passes · {q['metric']} without deadline {pct(q['no_deadline'])} · "
                 f"latency p50 {fmt_seconds(lat['p50'])}, p99 {fmt_seconds(lat['p99'])}, "
                 f"p99.9 {fmt_seconds(lat['p99.9'])}")
        tq = f"TQ_{q['thresholds'][0]['tail_q']:g}" if q["thresholds"] else "TQ"
        table = Table("τ", "seconds", "mean Q@T [90%]", f"{tq} [90%]", "min [next campaign 90%]", "std", "late",
                      title=title, title_justify="left")
        for t in q["thresholds"]:
            table.add_row(t["threshold"], fmt_seconds(t["threshold_s"]),
                          f"{pct(t['mean'])} [{pct(t['mean_lo'])}, {pct(t['mean_hi'])}]",
                          f"{pct(t['tail'])} [{pct(t['tail_lo'])}, {pct(t['tail_hi'])}]",
                          f"{pct(t['min'])} [{pct(t['min_lo'])}, {pct(t['min_hi'])}]",
                          f"{pct(t['std'])}", pct(t['late_fraction']))
        out.print(table)
        ml = c["mlperf"]
        parts = []
        for key in ("p90", "p99"):
            es = ml[key]
            if es["latency_s"] is None or es["latency_s"] != es["latency_s"]:
                parts.append(f"{key}: needs ≥ {es['min_queries']:,} queries")
            else:
                parts.append(f"{key} ≤ {fmt_seconds(es['latency_s'])} (discards {es['discarded']:,})")
        out.print(f"  MLPerf early stopping on {ml['queries']:,} inferences: " + "; ".join(parts))
    if report["configs"] and report["configs"][0]["passes"] < report["configs"][0]["quality"]["passes_for_tail_lo"]:
        need = report["configs"][0]["quality"]["passes_for_tail_lo"]
        out.print(f"[dim]Lower bounds of 0 mean the data cannot rule out worse: TQ's needs ≥ {need} passes; the next "
                  "campaign's minimum falls below every pass seen so far with probability 1/2.[/dim]")
    if plot is not None:
        out.print(f"plot: {plot}")
