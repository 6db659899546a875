"""`tqsim explain`: parse, call one library function, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tqsim.cli.common import (app, Debug, Home, Json, Seed, System, WorkloadOpt, check_plot_path, console, emit_json,
                              fmt_seconds, steps)


def _iv(iv) -> str:
    """A change in % or pp, ``+12 [+5, +20]``: one decimal below 10, none above (the interval says the rest)."""
    m, lo, hi = (100 * v for v in (iv.median, iv.lo, iv.hi))
    f = ".1f" if max(abs(m), abs(lo), abs(hi)) < 10 else ".0f"
    return f"{m:+{f}} [{lo:+{f}}, {hi:+{f}}]"


@app.command()
def explain(
    at: Annotated[Optional[list[str]], typer.Option(
        "--at", help="FACTOR=VALUE sets the base level of a factor; FACTOR=A,B names its contrast A → B "
                     "(repeatable, one per factor).")] = None,
    threshold: Annotated[Optional[str], typer.Option(
        "--threshold", "-t", help="Deadline of tail quality: 2ms, 0.002 (s) or p99 (of the base's forecast "
                                  "latency; the default).")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write the effects and the variance split to this file (.png, .svg or .pdf).")] = None,
    tail_q: Annotated[float, typer.Option("--tail-q", help="Quantile of Q@T over passes for tail quality.")] = 0.01,
    passes: Annotated[int, typer.Option("--passes", help="Passes per simulated run.")] = 100,
    draws: Annotated[int, typer.Option("--draws", help="Posterior draws used.")] = 200,
    force: Annotated[bool, typer.Option("--force", help="Explain from a fit whose diagnostics failed.")] = False,
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = 0, debug: Debug = False,
) -> None:
    """What each factor does to p50, p99 and tail quality around a base configuration (90% intervals), the
    batch size × threads interaction, and where a call's latency variance comes from."""
    from tqsim.explain import explain_workspace, parse_at
    from tqsim.quality import parse_threshold

    wanted = parse_at(at)
    deadline = parse_threshold(threshold) if threshold is not None else None
    check_plot_path(plot)
    with steps("explain", enabled=not json_out) as progress:
        if progress:
            progress(f"simulating {draws} posterior draws of {passes}-pass runs")
        ex = explain_workspace(home, system, workload, at=wanted, threshold=deadline, tail_q=tail_q,
                               n_draws=draws, n_passes=passes, seed=seed if seed is not None else 0, force=force)
    d = ex.as_dict()
    if plot is not None:
        from tqsim.report.explain_plot import plot_explanation

        plot_explanation(d, plot)
    if json_out:
        emit_json(d)
        return
    from rich import box
    from rich.table import Table

    err = console(stderr=True)
    for w in ex.warnings:
        err.print(f"[bold yellow]warning:[/bold yellow] {w}")
    c = console()
    p50, p99 = ex.base_latency["p50"], ex.base_latency["p99"]
    tq = f"TQ_{ex.tail_q:g}"
    c.print(f"{ex.workload} on {ex.system}, around {ex.base.id} (p50 {fmt_seconds(p50.median)}, p99 "
            f"{fmt_seconds(p99.median)}, {tq} {100 * ex.base_tail.median:.1f}%): runs of {ex.passes_per_run} passes "
            f"in a new session; deadline {ex.threshold} = {fmt_seconds(ex.threshold_s)}; changes: posterior "
            "medians [90% intervals]", markup=False)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("effect", "p50 %", "p99 %", f"{tq} pp"):
        t.add_column(name, no_wrap=name != "effect")
    for e in ex.effects:
        t.add_row(e.label, _iv(e.p50), _iv(e.p99), _iv(e.tq))
    c.print(t)
    if ex.interaction is not None:
        i = ex.interaction
        c.print(f"interaction, {i.label}: p99 ×{i.p99.median:.2f} [{i.p99.lo:.2f}, {i.p99.hi:.2f}], "
                f"p50 ×{i.p50.median:.2f} [{i.p50.lo:.2f}, {i.p50.hi:.2f}] (1 = independent)", markup=False)
    t = Table("source of a call's log-latency variance", "share % [90%]", box=box.SIMPLE_HEAD, pad_edge=False,
              title=f"at {ex.base.id}, a run in a new session", title_justify="left")
    for s in ex.variance:
        t.add_row(s.label, f"{100 * s.share.median:.1f} [{100 * s.share.lo:.1f}, {100 * s.share.hi:.1f}]")
    c.print(t)
    for n in ex.notes:
        c.print(f"note: {n}", markup=False)
    if plot is not None:
        c.print(f"wrote {plot}")
