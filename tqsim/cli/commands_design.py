"""`tqsim suggest`: what to measure next for the configurations a user cares about."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tqsim.cli.common import app, Debug, Home, Json, Seed, System, WorkloadOpt, console, emit_json, fmt_seconds, \
    shared_levels

Target = Annotated[str, typer.Option("--target", help="The configurations you care about, e.g. "
                                                      "'batch_size=1..256,threads=1,2' (a..b: a, 2a, 4a, ... b).")]
Budget = Annotated[Optional[int], typer.Option("--budget", help="Inferences to spend (instances × passes, warm-up "
                                                                "included).")]


@app.command()
def suggest(
    target: Target, budget: Budget = None,
    passes: Annotated[int, typer.Option("--passes", help="Passes per measuring step.")] = 5,
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = 0, debug: Debug = False,
) -> None:
    """Rank the target configurations by how much measuring them would narrow the targets' p99 forecasts, with
    what each costs, and print the next measurements to run (needs a fit)."""
    from tqsim.models.design import suggest as run_suggest
    from tqsim.models.store import load_from_workspace

    fm = load_from_workspace(home, system, workload)
    s = run_suggest(fm, target, budget=budget, chunk=passes, seed=seed if seed is not None else 0)
    if json_out:
        emit_json(s.as_dict())
        return
    from rich.table import Table
    import numpy as np

    c = console()
    short, common = shared_levels([t.id for t in s.targets])
    t = Table("config", "passes", "p99 90% interval: run", "model", f"+{passes} passes remove", "compute",
              title=f"{fm.workload} on {fm.system}{', all ' + common if common else ''}: targets ranked by the "
                    "share of the targets' integrated p99 variance one step removes")
    for i in np.argsort(-s.gains, kind="stable"):
        t.add_row(short[i], str(s.passes[i]) if s.passes[i] else "–",
                  f"{100 * s.run_widths[i]:.0f} %",
                  f"{100 * s.widths[i]:.0f} %",
                  f"{100 * s.gains[i]:.1f} %", fmt_seconds(s.seconds[i]))
    c.print(t)
    c.print("interval widths are (hi − lo)/median: of a 100-pass run's p99 in the calibration's machine state, and "
            "the part the model's uncertainty makes (what measuring can shrink); compute: the forecast time of the "
            "passes and warm-up, without the harness's file writes.", style="dim")
    d = s.as_dict()
    c.print(f"next plan ({d['plan_inferences']:,} of {s.budget:,} inferences):")
    for p in s.plan:
        c.print(f"  {p.config.id}: +{p.passes} passes (has {p.passes_before}), removes {100 * p.reduction:.1f} % "
                f"of what is left, ~{fmt_seconds(p.seconds)} of compute")
    for cmd in s.commands():
        c.print(f"  {cmd}", markup=False, style="bold", soft_wrap=True)
    c.print("then `tqsim fit`; or let `tqsim calibrate --adaptive --target ...` loop measure → fit → choose.")
