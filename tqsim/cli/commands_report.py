"""`tqsim report`: one self-contained HTML page (plus Markdown) of everything the workspace knows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tqsim.cli.common import (app, Debug, Home, Json, Seed, System, Thresholds, WorkloadOpt, console, emit_json, numbers,
                              split_list, steps)
from tqsim.units import parse_duration


@app.command()
def report(
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Output folder (default: <home>/reports/<system>/<workload>); index.html, index.md, "
                      "figures/.")] = None,
    threshold: Thresholds = None,
    tail_q: Annotated[float, typer.Option("--tail-q", help="Tail quantile q of TQ_q (0 < q < 1).")] = 0.01,
    heldout: Annotated[Optional[Path], typer.Option("--heldout", help="Workspace of held-out runs (or a folder of "
                                                    "their files): adds the validation section (needs a fit).")] = None,
    whatif_rate: Annotated[Optional[list[str]], typer.Option("--whatif-rate", help="Arrival rates for the what-if "
                                                       "curves, e.g. 100,200,400 (default: 20–90% of the estimated "
                                                       "capacity, when a serving calibration exists).")] = None,
    whatif_replicas: Annotated[Optional[list[str]], typer.Option(
        "--whatif-replicas", help="Replicas, e.g. 1 or 1,2.")] = None,
    whatif_max_batch: Annotated[int, typer.Option("--whatif-max-batch", help="Largest batch of the simulated "
                                                  "batcher.")] = 1,
    whatif_deadline: Annotated[Optional[str], typer.Option("--whatif-deadline", help="Deadline from arrival, e.g. "
                                                           "5ms (default: 10× the mean service time).")] = None,
    draws: Annotated[int, typer.Option("--draws", help="Posterior draws per forecast.")] = 100,
    force: Annotated[bool, typer.Option("--force", help="Show forecasts from a fit whose diagnostics failed "
                                        "(marked untrusted).")] = False,
    markdown: Annotated[bool, typer.Option("--markdown/--no-markdown", help="Also write index.md.")] = True,
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = 0, debug: Debug = False,
) -> None:
    """Write an HTML report: latency observed vs forecast, Q@T bands, a tail-quality heatmap, validation, what-ifs.

    Sections whose data do not exist say which command produces them. The first --threshold is the
    heatmap's deadline (default p99 of each configuration).
    """
    from tqsim.report.build import build_report, default_out, write_report

    with steps("report", enabled=not json_out) as progress:
        rep = build_report(home=home, system=system, workload=workload, thresholds=split_list(threshold),
                           tail_q=tail_q, heldout=heldout,
                           whatif_rates=numbers(whatif_rate, "whatif-rate") if whatif_rate else None,
                           whatif_replicas=numbers(whatif_replicas or ["1"], "whatif-replicas", int),
                           whatif_max_batch=whatif_max_batch,
                           whatif_deadline_s=parse_duration(whatif_deadline, "whatif-deadline")
                           if whatif_deadline is not None else None,
                           draws=draws, force=force, seed=seed or 0, progress=progress)
    path = write_report(rep, out if out is not None else default_out(home, rep.system, rep.workload),
                        markdown=markdown)
    if json_out:
        emit_json(rep.as_dict())
        return
    c = console()
    for w in rep.warnings:
        c.print(f"[bold yellow]warning:[/bold yellow] {w}")
    for sec in rep.sections:
        if not sec.available:
            c.print(f"[dim]{sec.title}: not shown — {sec.missing}[/dim]")
    c.print(f"wrote {path}")
