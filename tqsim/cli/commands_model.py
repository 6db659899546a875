"""`tqsim fit`, `tqsim predict`, `tqsim validate`: parse, call one library function, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tqsim.cli.common import (app, ClusterOpt, Debug, Home, Json, LogSetup, Seed, System, Thresholds, Workers, WorkloadOpt,
                              console, emit_json, fmt_seconds, shared_levels, split_list, steps)
from tqsim.errors import UserError
from tqsim.units import fmt_iv, fmt_pct


@app.command()
def fit(
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = 0, debug: Debug = False,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="nutpie (default when installed), nuts, or "
                                                   "advi (quick, biased scales).")] = None,
    draws: Annotated[int, typer.Option("--draws", help="Posterior draws per chain.")] = 1000,
    tune: Annotated[int, typer.Option("--tune", help="Tuning steps per chain.")] = 1000,
    chains: Annotated[int, typer.Option("--chains", help="Chains.")] = 2,
    family: Annotated[str, typer.Option("--family", help="Kept for old scripts: auto (the only model: each "
                                                       "configuration's own quantile functions).")] = "auto",
    cluster: ClusterOpt = None, workers: Workers = None,
) -> None:
    """Fit the Bayesian latency model to the calibration; writes models/<system>/<workload>.nc. With --cluster,
    every system × workload of the workspace (or those named) at once on the Dask workers."""
    from tqsim.models.fit import fit_each, fit_summary, fit_workspace

    err = console(stderr=True)
    say = (lambda m: None) if json_out else (lambda m: err.print(f"[dim]{m}[/dim]"))
    options = dict(family=family, sampler=sampler, draws=draws, tune=tune, chains=chains,
                   seed=seed if seed is not None else 0, log=say)
    if cluster:
        fits = fit_each(home, system, workload, cluster=cluster, workers=workers, **options)
    elif workers is not None:
        raise UserError("--workers sizes a cluster: `tqsim fit --cluster local --workers N` fits every system × "
                        "workload at once; a plain `tqsim fit` fits one model here.")
    else:
        fits = [fit_workspace(home, system, workload, progress=not json_out, **options)]
    out = [{"system": fm.system, "workload": fm.workload, "model": str(path), "family": fm.diagnostics["family"],
            "diagnostics": fm.diagnostics} for fm, path in fits]
    if json_out:
        emit_json({"fits": out} if cluster else out[0])
        return
    c = console()
    for (fm, path) in fits:
        if cluster:
            c.print(f"{fm.system}/{fm.workload}:", style="bold")
        for text, style in fit_summary(fm.diagnostics):
            c.print(text, style=style, markup=False)
        c.print(f"wrote {path}")


def _load(home, system, workload):
    from tqsim.models.store import load_from_workspace

    return load_from_workspace(home, system, workload)


@app.command()
def predict(
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = 0, debug: Debug = False, thresholds: Thresholds = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="FACTOR=VALUE; repeatable.")] = None,
    tail_q: Annotated[float, typer.Option("--tail-q", help="Quantile of Q@T over passes for tail quality.")] = 0.01,
    passes: Annotated[int, typer.Option("--passes", help="Passes per simulated run.")] = 100,
    draws: Annotated[int, typer.Option("--draws", help="Posterior draws used.")] = 200,
    force: Annotated[bool, typer.Option("--force", help="Forecast from a fit whose diagnostics failed.")] = False,
    now: Annotated[bool, typer.Option("--now", help="Condition on the machine's state measured by the last "
                                                    "`tqsim check` (instead of drawing a new session).")] = False,
) -> None:
    """Forecast latency, Q@T and tail quality of a configuration (run or not), with 90% intervals."""
    seed = seed if seed is not None else 0
    with steps("predict", enabled=not json_out) as progress:
        if progress:
            progress("loading the model")
        from tqsim.factors import parse_assignment
        from tqsim.forecast import predict as run_predict

        fm = _load(home, system, workload)
        values = {}
        for text in set_ or []:
            factor, levels = parse_assignment(text)
            if len(levels) != 1 or factor in values:
                raise UserError(f"--set {text}: give one value per factor, once (e.g. --set batch_size=8).")
            values[factor] = levels[0]
        last = None
        if now:
            from tqsim.data.workspace import Workspace
            from tqsim.measure.check import load_checks

            last = load_checks(Workspace.at(home), fm.system, fm.workload)[-1]
        if progress:
            progress(f"simulating {draws} posterior draws of {passes}-pass runs")
        fc = run_predict(fm, values, split_list(thresholds), check=last, n_passes=passes, n_draws=draws,
                         tail_q=tail_q, seed=seed, force=force)
    if json_out:
        emit_json(fc.as_dict())
        return
    from rich.table import Table

    err = console(stderr=True)
    for w in fc.warnings:
        err.print(f"[bold yellow]warning:[/bold yellow] {w}")
    c = console()
    c.print(f"{fc.workload} on {fc.system}: {fc.config.id} ({'calibrated' if fc.calibrated else 'never run'}); "
            f"runs of {passes} passes in {fc.session}; posterior medians with 90% intervals")
    t = Table("latency", "forecast", "90% interval")
    for k, v in fc.latency.items():
        t.add_row(k, fmt_seconds(v.median), f"{fmt_seconds(v.lo)} – {fmt_seconds(v.hi)}")
    c.print(t)
    t = Table("threshold", "mean Q@T", f"tail (q={tail_q:g})", "min Q@T")
    for q in fc.quality:
        t.add_row(f"{q.threshold} = {fmt_seconds(q.threshold_s)}", fmt_iv(q.mean.median, q.mean.lo, q.mean.hi),
                  fmt_iv(q.tail.median, q.tail.lo, q.tail.hi), fmt_iv(q.minimum.median, q.minimum.lo, q.minimum.hi))
    c.print(t)
    c.print(f"{fc.metric} without a deadline: {fmt_pct(fc.no_deadline)}")


@app.command()
def validate(
    heldout: Annotated[Optional[Path], typer.Option("--heldout", help="Workspace the held-out runs were calibrated in (its --home), or a folder of their files.")] = None,
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = 0, debug: Debug = False,
    draws: Annotated[Optional[int], typer.Option("--draws", help="Posterior draws used (what-if draws with --serving-log).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Validate a fit whose diagnostics failed.")] = False,
    serving_log: Annotated[Optional[list[Path]], typer.Option(
        "--serving-log", help="Score what-if forecasts against these request logs (runs the serving fit did not "
                              "see; one file per run); needs --setup.")] = None,
    setup: LogSetup = None,
    threshold: Annotated[str, typer.Option("--threshold", "-t", help="With --serving-log: the deadline.")] = "20ms",
    allow_fitted: Annotated[bool, typer.Option(
        "--allow-fitted", help="With --serving-log: also score runs the fit used (its own residuals).")] = False,
) -> None:
    """Score forecasts against held-out real runs (errors, interval coverage, rJSD, W1, CRPS); with
    --serving-log, score what-if forecasts against a serving stack's own runs."""
    from tqsim.validate import validate as run_validate

    if serving_log or setup is not None:
        _validate_serving(serving_log, setup, heldout, threshold, allow_fitted, draws, home, system, workload,
                          json_out, seed)
        return
    if heldout is None:
        raise UserError("give --heldout (a workspace of held-out configurations) or --serving-log FILE --setup '...' "
                        "(a serving stack's runs).")
    draws = 200 if draws is None else draws

    fm = _load(home, system, workload)
    with steps("validate", enabled=not json_out) as progress:
        res = run_validate(fm, heldout, n_draws=draws, seed=seed if seed is not None else 0, force=force,
                           progress=progress)
    if json_out:
        emit_json(res.as_dict())
        return
    from rich.table import Table

    c = console()
    from rich import box

    short, common = shared_levels([row["config_id"] for row in res.configs])
    t = Table(title=(f"all {common}; " if common else "") + "relative errors; in 90%: p50 p90 p99 inside "
                    "the interval; W1, CRPS per median latency; TQ err: pp at T90/T95/T99", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    for name in ("config", "p50", "p90", "p99", "in 90%", "cond. p99", "rJSD/floor", "W1", "TQ err"):
        t.add_column(name, no_wrap=True)
    for row, name in zip(res.configs, short):
        lat = row["latency_s"]
        inside = "".join("✓" if lat[k]["inside"] else "✗" for k in ("p50", "p90", "p99"))
        cond = row.get("conditioned")
        t.add_row(name,
                  *[f"{100 * lat[k]['rel_error']:+.0f}%" for k in ("p50", "p90", "p99")], inside,
                  f"{100 * cond['latency_s']['p99']['rel_error']:+.0f}%" if cond else "–",
                  f"{row['rjsd']:.2f}/{row['rjsd_floor']:.2f}", f"{row['w1_rel']:.2f}",
                  "/".join(f"{100 * tq['abs_error']:.0f}" for tq in row["tail_quality"]))
    c.print(t)
    for label, s in (("as a new session", res.summary), ("conditioned on the machine state",
                                                               res.summary_conditioned)):
        if s:
            c.print(f"{label}: median |rel error| p99 {100 * s['median_rel_error_p99']:.1f}%, worst "
                    f"{100 * s['max_rel_error_p99']:.1f}%; 90% interval coverage {100 * s['coverage']:.0f}%; "
                    f"median tail-quality error {100 * s['median_abs_error_tail_quality']:.2f} pp")
    if res.anchors:
        c.print(f"anchors (calibrated configurations in the held-out runs): {', '.join(res.anchors)}")


def _validate_serving(paths, setup, heldout, threshold, allow_fitted, draws, home, system, workload, json_out, seed):
    from tqsim.errors import UserError
    from tqsim.serving_validation import save_validation, validate_logs
    from tqsim.units import parse_duration

    if not paths or setup is None:
        raise UserError("what-if validation needs both --serving-log FILE (runs the fit did not see) and --setup "
                        "'replicas=R,threads=T,max_batch=B,max_wait=W' (their set-up).")
    if heldout is not None:
        raise UserError("give either --heldout (forecasts of configurations) or --serving-log (what-ifs), not both.")
    with steps("what-if validation", enabled=not json_out):
        res = validate_logs(paths, setup, home=home, system=system, workload=workload,
                            threshold_s=parse_duration(threshold, "threshold"), draws=draws or 40,
                            seed=seed or 0, allow_fitted=allow_fitted)
    from tqsim.data.workspace import Workspace

    save_validation(Workspace.at(home).calibration_dir(res.system, res.workload), res)
    if json_out:
        emit_json(res.as_dict())
        return
    from tqsim.cli.serving_logs import render_validation

    render_validation(res)
