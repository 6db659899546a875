"""What `tqsim calibrate --serving-log` and `tqsim validate --serving-log` print: the fitted stack, the scored runs."""

from __future__ import annotations

from pathlib import Path

from tqsim.cli.common import console, fmt_seconds


def render_log_fit(path, fit, notes: list[str]) -> None:
    """The fitted overheads in the what-if's terms, and how well the replay reproduces each run it was fitted on."""
    from rich.table import Table

    oh = fit.overheads
    out = console()
    out.print(oh.source)
    out.print(f"service = {oh.scale:.2f} × forward + {fmt_seconds(oh.per_batch_s)} a batch"
              f"{_rate_effect(oh)}; "
              f"{'' if oh.frontend_s == 0 else f'front end {fmt_seconds(oh.frontend_s)} a request; '}"
              f"response path {fmt_seconds(oh.response_s)} a request; pauses in {100 * oh.pause_prob:.2f} % of "
              f"batches (mean {fmt_seconds(sum(oh.pause_s) / max(len(oh.pause_s), 1))}); fitted by replaying the "
              f"runs' own arrivals: {', '.join(fit.parameters)}")
    table = Table("run", "req/s", "level", "p50 obs / replay", "p90 obs / replay", "p99 obs / replay",
                  title="each run against its replay at its own level (the fit's own residuals; * not fitted)")
    for r in fit.runs:
        o, s = r["observed_s"], r["replayed_s"]
        name = Path(r["source"]).name if "://" not in r["source"] else r["source"]
        table.add_row(name + ("" if r["fitted"] else " *"), f"{r['rate_rps']:.0f}", f"{r['level']:.2f}",
                      *[f"{fmt_seconds(o[k])} / {fmt_seconds(s[k])}" for k in ("p50", "p90", "p99")])
    out.print(table)
    out.print(f"serving overheads stored in {path}")
    for note in dict.fromkeys(list(notes) + list(fit.notes)):
        out.print(f"[yellow]note: {note}[/yellow]")


def _rate_effect(oh) -> str:
    """The arrival rate's effect on the service, as the fit found it: a slowdown, or a speed-up up to a rate."""
    g = oh.inflation_s
    if g == 0:
        return ""
    until = f", up to {oh.inflation_until_rps:.0f} req/s" if g < 0 and oh.inflation_until_rps else ""
    return f", × (1 {'+' if g > 0 else '−'} {abs(g) * 1e3:.3g} per 1000 req/s{until})"


def _cell(obs, fc, inside, seconds: bool) -> str:
    from tqsim.whatif.simulator import central

    if obs is None:
        return f"– / {fmt_seconds(central(fc)) if seconds else format(central(fc), '.3f')}"
    if seconds:
        text = f"{fmt_seconds(obs)} / {fmt_seconds(central(fc))} [{fmt_seconds(fc['lo'])}, {fmt_seconds(fc['hi'])}]"
    elif fc["lo"] is None:
        text = f"{obs:.2f} / {fc['mean']:.2f}"
    else:
        text = f"{obs:.3f} / {central(fc):.3f} [{fc['lo']:.3f}, {fc['hi']:.3f}]"
    return text + ("" if inside is None else (" ✓" if inside else " ✗"))


def render_validation(res) -> None:
    from rich.table import Table

    out = console()
    s = res.setup
    table = Table("run", "req/s", "p50", "p99", "util", "miss", "tail quality",
                  title=(f"what-if validation: {res.workload} on {res.system}, stack {res.stack}, {s['replicas']} "
                         f"replica(s) × {s['threads']} thread(s), batch ≤ {s['max_batch']}, wait "
                         f"{fmt_seconds(s['max_wait_s'])}; observed / forecast [90%], deadline "
                         f"{fmt_seconds(res.threshold_s)}"))
    for r in res.runs:
        o, f, i = r["observed"], r["forecast"], r["inside"]
        table.add_row(Path(r["source"]).name, f"{r['rate_rps']:.0f}", _cell(o["p50"], f["p50"], i["p50"], True),
                      _cell(o["p99"], f["p99"], i["p99"], True), _cell(o["utilisation"], f["utilisation"], None, False),
                      _cell(o["miss_rate"], f["miss_rate"], i["miss_rate"], False),
                      _cell(o["tail_quality"], f["tail_quality"], i["tail_quality"], False))
    out.print(table)
    cov = res.coverage()
    out.print("inside the 90% interval: " + ", ".join(f"{m} {c['inside']}/{c['runs']}" for m, c in cov.items()
                                                        if c["runs"]))
    errs = [abs(r["relative_error"]["p99"]) for r in res.runs if r["relative_error"]["p99"] is not None]
    if errs:
        import numpy as np

        out.print(f"median |p99 error| {100 * float(np.median(errs)):.0f} % over {len(errs)} run(s)")
    for note in dict.fromkeys(res.notes):
        out.print(f"[yellow]note: {note}[/yellow]")
