"""Commands that measure or list: workloads, systems, calibrate."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from tqsim.cli.common import app, ClusterOpt, Debug, Home, Json, LogSetup, Seed, System, WorkloadOpt, console, \
    emit_json, fmt_seconds, split_list


@app.command()
def workloads(json_out: Json = False, debug: Debug = False) -> None:
    """List the built-in workloads (name, task, instances, metric)."""
    from tqsim.workloads import list_workloads

    rows = list_workloads()
    if json_out:
        emit_json({"workloads": rows})
        return
    from rich.table import Table

    table = Table("name", "task", "instances", "metric", title="built-in workloads")
    for r in rows:
        table.add_row(r["name"], r["task"], str(r["instances"]), r["metric"])
    console().print(table)
    console().print("Your own: --workload model.onnx --data eval.npz, or path/to/file.py:factory (see README).")


@app.command()
def systems(home: Home = None, json_out: Json = False, debug: Debug = False) -> None:
    """What the workspace holds: systems, workloads, configurations, passes, fits."""
    from tqsim.measure.inventory import inventory

    inv = inventory(home)
    if json_out:
        emit_json(inv)
        return
    if not inv["systems"]:
        console().print(f"{inv['home']}: no calibration yet; run `tqsim calibrate`.")
        return
    from rich.table import Table

    from tqsim.measure.fingerprint import describe_machine

    table = Table("system", "machine", "workload", "configs", "passes", "fitted", title=f"workspace {inv['home']}")
    for s in inv["systems"]:
        machine = f"{s['fingerprint'].get('hostname', '?')}: {describe_machine(s['fingerprint'])}" \
            if s["fingerprint"] else "?"
        for k, w in enumerate(s["workloads"]):
            passes = w["passes_min"] if w["passes_min"] == w["passes_max"] else f"{w['passes_min']}–{w['passes_max']}"
            table.add_row(s["system"] if k == 0 else "", machine if k == 0 else "", w["workload"], str(len(w["configs"])),
                          str(passes), "yes" if w["fitted"] else "no")
    console().print(table)


@app.command()
def calibrate(
    plan: Annotated[Optional[str], typer.Argument(help="Plan TOML file (default: the shipped quick plan).")] = None,
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", help="FACTOR=V1,V2 (repeatable), e.g. --grid batch_size=1,8,32 --grid threads=1,2.")] = None,
    passes: Annotated[Optional[int], typer.Option("--passes", help="Timed passes per configuration.")] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Warm-up passes per configuration (kept apart).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over instead of resuming (deletes these configurations' files).")] = False,
    until_converged: Annotated[bool, typer.Option(
        "--until-converged", help="Stop each configuration once its Q@T estimate converged (rJSD < --rjsd).")] = False,
    rjsd: Annotated[float, typer.Option("--rjsd", help="Convergence threshold ε for --until-converged.")] = 0.05,
    max_passes: Annotated[Optional[int], typer.Option("--max-passes", help="Cap on passes with --until-converged.")] = None,
    sessions: Annotated[int, typer.Option(
        "--sessions", help="Spread the passes over N sessions (fresh processes), so the fit measures how much the "
                           "machine's speed moves between runs instead of assuming it.")] = 1,
    gap: Annotated[str, typer.Option("--gap", help="Wait between sessions, e.g. 5min, 30s.")] = "0",
    serving: Annotated[Optional[str], typer.Option(
        "--serving", help="Calibrate the serving stack's own costs for a set-up, e.g. "
                          "'replicas=1,threads=1,max_batch=8,max_wait=0.5ms' (also duration=8s, repeats=3: runs per "
                          "rate; needs the forward-time calibration first); with target=http://HOST:PORT/PATH, an "
                          "external server driven over HTTP (its replicas, max_batch and max_wait required; "
                          "stack=NAME, protocol=json|v2).")] = None,
    serving_log: Annotated[Optional[list[Path]], typer.Option(
        "--serving-log", help="Import a serving stack's request log (CSV, Parquet or JSON lines; one file per run, "
                              "repeatable; docs/schema.md) and fit its overheads; needs --setup.")] = None,
    setup: LogSetup = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Evaluation data of a model-file workload (--workload model.onnx or model.pt): an .npz or "
                       ".parquet holding `labels` and one array per model input, named as the input.")] = None,
    cluster: ClusterOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="With --cluster: measure on a worker even if its machine differs from the one its system "
                        "was calibrated on.")] = False,
    adaptive: Annotated[bool, typer.Option(
        "--adaptive", help="Measure only what the --target forecasts need: measure, fit, choose the next "
                           "configurations, until every target's p99 interval is narrower than --until-width or "
                           "--budget is spent (--passes: passes per step, default 5).")] = False,
    target: Annotated[Optional[str], typer.Option(
        "--target", help="With --adaptive: the configurations you care about, e.g. 'batch_size=1..256,threads=1,2'.")] = None,
    until_width: Annotated[str, typer.Option(
        "--until-width", help="With --adaptive: stop when the model's part of every target's p99 90% interval "
                              "is narrower than this (relative to its median).")] = "10%",
    budget: Annotated[Optional[int], typer.Option(
        "--budget", help="With --adaptive: inferences to spend in all (default: measuring every target with 20 "
                         "passes).")] = None,
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = None, debug: Debug = False,
) -> None:
    """Measure configurations of a workload on this system into the workspace (resumes by default); with
    --cluster, on every system a Dask cluster's workers declare (or the --system ones, a comma list)."""
    if serving_log or setup is not None:
        _serving_logs(serving_log, setup, serving, adaptive, grid, plan, cluster, home, system, workload, json_out,
                      seed)
        return
    if adaptive or target is not None:
        _adaptive(adaptive, plan, grid, target, until_width, budget, passes, warmup, fresh, until_converged, sessions, serving,
                  cluster, data, home, system, workload, json_out, seed)
        return
    if serving is not None and cluster is not None:
        from tqsim.errors import UserError

        raise UserError("--serving runs the serving stack on this machine; drop --cluster (or run it on each worker's "
                        "machine with --system).")
    if serving is not None:
        if data is not None:
            from tqsim.errors import UserError

            raise UserError("--serving measures built-in and factory workloads only; drop --data (a model file is "
                            "calibrated for forward times, without --serving).")
        if "target=" in serving:
            _serving_http(serving, home, system, workload, json_out, seed)
            return
        from tqsim.serving_calibration import calibrate_serving_setup

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = calibrate_serving_setup(serving, home=home, system=system, workload=workload, seed=seed,
                                           show_progress=not json_out)
        notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
        if json_out:
            emit_json({"serving_calibration": str(path), "warnings": notes})
            return
        _render_serving(path, notes)
        return
    from tqsim.measure.run import calibrate as run_calibration

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_calibration(plan, grid, home=home, workload=workload, passes=passes,
                                 warmup=warmup, fresh=fresh, seed=seed, until_converged=until_converged,
                                 rjsd=rjsd, max_passes=max_passes, sessions=sessions, gap=gap,
                                 show_progress=not json_out, data=data, cluster=cluster, force=force,
                                 system=split_list(system) if cluster is not None else system)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if json_out:
        emit_json({**result, "warnings": list(dict.fromkeys(notes))})
        return
    _render_calibration(result, notes)


def _serving_http(serving, home, system, workload, json_out, seed) -> None:
    """`tqsim calibrate --serving 'target=URL,...'`: drive an external server over HTTP and fit its overheads."""
    from tqsim.serving_calibration import calibrate_http

    path, fit = calibrate_http(serving, home=home, system=system, workload=workload, seed=seed,
                               show_progress=not json_out)
    _show_log_fit(path, fit, json_out)


def _show_log_fit(path, fit, json_out: bool) -> None:
    if json_out:
        emit_json({"serving_calibration": str(path), "overheads": fit.overheads.to_dict(), "runs": fit.runs,
                   "fitted_terms": fit.parameters, "notes": fit.notes})
        return
    from tqsim.cli.serving_logs import render_log_fit

    render_log_fit(path, fit, [])


def _serving_logs(paths, setup, serving, adaptive, grid, plan, cluster, home, system, workload, json_out, seed):
    """`tqsim calibrate --serving-log FILE ... --setup '...'`: fit a stack's overheads from its own request logs."""
    from tqsim.errors import UserError
    from tqsim.serving_calibration import calibrate_from_logs

    if not paths:
        raise UserError("--setup describes imported request logs; add --serving-log FILE (one file per run).")
    if setup is None:
        raise UserError("--serving-log needs --setup, the set-up the logs were served with, e.g. "
                        "--setup 'replicas=2,threads=1,max_batch=8,max_wait=2ms'.")
    clash = [name for name, given in (("--serving", serving), ("--adaptive", adaptive), ("--grid", grid),
                                       ("a plan file", plan), ("--cluster", cluster)) if given]
    if clash:
        raise UserError(f"--serving-log imports runs measured elsewhere; drop {', '.join(clash)}.")
    path, fit = calibrate_from_logs(paths, setup, home=home, system=system, workload=workload, seed=seed)
    _show_log_fit(path, fit, json_out)


def _adaptive(adaptive, plan, grid, target, until_width, budget, passes, warmup, fresh, until_converged, sessions, serving,
              cluster, data, home, system, workload, json_out, seed) -> None:
    """`tqsim calibrate --adaptive --target T`: refuse what does not combine with it, run the loop, say what it saved."""
    from tqsim.errors import UserError
    from tqsim.adaptive import adaptive_calibration, parse_width

    if target is None:
        raise UserError("--adaptive needs --target, the configurations you care about, e.g. --target "
                        "'batch_size=1..256,threads=1,2'.")
    if not target.strip():
        raise UserError("--target is empty; name the configurations you care about, e.g. "
                        "--target 'batch_size=1..256,threads=1,2'.")
    clash = [name for name, given in (("a plan file", plan), ("--grid", grid), ("--fresh", fresh),
                                       ("--until-converged", until_converged), ("--sessions", sessions != 1),
                                       ("--serving", serving), ("--cluster", cluster)) if given]
    if clash:
        raise UserError(f"--adaptive chooses the configurations itself; drop {', '.join(clash)} (--target names "
                        "the configurations you care about).")
    if not adaptive:
        raise UserError("--target is for --adaptive (or `tqsim suggest`); add --adaptive, or use --grid to measure "
                        "a grid.")
    say = (lambda m: None) if json_out else (lambda m: console(stderr=True).print(f"[dim]{m}[/dim]"))
    res = adaptive_calibration(target, workload=workload or "digits-cnn", home=home, system=system,
                               chunk=passes if passes is not None else 5, until_width=parse_width(until_width),
                               budget=budget, seed=seed or 0, warmup=warmup if warmup is not None else 2,
                               show_progress=not json_out, data=data, log=say)
    if json_out:
        emit_json(res.as_dict())
        return
    out = console()
    why = (f"the model's part of every target's p99 90 % interval is within {100 * res.until_width:g} %"
           if res.stop == "width" else f"the budget is spent (the widest model interval of p99 is "
                                       f"{100 * float(res.widths.max()):.0f} %, target {100 * res.until_width:g} %)")
    out.print(f"stopped: {why}.")
    out.print(f"spent {res.spent:,} inferences on {sum(1 for n in res.passes.values() if n)} configurations in "
              f"{len(res.rounds)} adaptive rounds; measuring all {len(res.targets)} targets with 20 passes would "
              f"take {res.full_grid:,} ({100 * res.spent / res.full_grid:.0f} %, saved "
              f"{100 * (1 - res.spent / res.full_grid):.0f} %).")
    out.print("the model is fitted and saved: `tqsim predict --set batch_size=...` forecasts any target.")


def _render_serving(path, notes: list[str]) -> None:
    """What the serving calibration measured, in the terms the what-if uses."""
    import json

    import numpy as np

    from tqsim.whatif.overheads import STALL_RATIO

    out = console()
    data = json.loads(path.read_text())
    entry = max(data["setups"].values(), key=lambda e: e.get("created_at", ""))
    phi = entry.get("stall_dispersion") or [0.0]
    out.print(f"{entry['source']}")
    out.print(f"service = {entry['scale']:.2f} × forward + {fmt_seconds(entry['per_batch_s'])} a batch + "
              f"{fmt_seconds(entry['per_request_s'])} a request; stalls (> {STALL_RATIO:g}× median) in "
              f"{100 * entry.get('stall_prob', 0):.2f} % of batches, their rate varying between runs with "
              f"CV ≈ {np.sqrt(np.median(phi)):.2f}; pauses in {100 * entry['pause_prob']:.2f} %")
    for o in entry["observed"]:
        out.print(f"  {o['rate_rps']:>9.0f} req/s: p99 {fmt_seconds(o['latency_s']['p99'])}, busy "
                  f"{100 * np.mean(o['utilisation']):.0f} %, mean batch {o['mean_batch_size']:.1f}")
    out.print(f"serving overheads stored in {path}")
    for note in notes:
        out.print(f"[yellow]warning: {note}[/yellow]")


def _render_calibration(result: dict, notes: list[str]) -> None:
    """The closing table (one per system on a fleet), then where the passes went."""
    import datetime as _dt

    out = console()
    for part in result.get("systems") or [result]:
        _print_table(out, f"{result['workload']} on {part['system']}", result["metric"], part["configs"])
    ids = result.get("sessions") or []
    started = [_dt.datetime.fromtimestamp(i / 1e6).strftime("%H:%M:%S") for i in ids]
    where = f" in {len(ids)} session{'s' if len(ids) > 1 else ''} (started {', '.join(started)})" if ids else ""
    folders = ", ".join(p["folder"] for p in result["systems"]) if "systems" in result else result["folder"]
    out.print(f"measured {result['measured_passes']} passes{where} in {result['elapsed_s']:.1f} s → {folders}")
    if any(r["outliers"] for part in result.get("systems") or [result] for r in part["configs"]):
        out.print("[yellow]some calls are statistical outliers (|x−median| > 10 MAD); they are kept. "
                  "Close other programs, or add passes, if they were not expected.[/yellow]")
    for note in dict.fromkeys(notes):
        out.print(f"[yellow]warning: {note}[/yellow]")


def _print_table(out, title: str, metric: str, configs: list[dict]) -> None:
    from rich.table import Table

    table = Table("config", "passes", "p50", "p99", metric, "outliers", title=title)
    for row in configs:
        flagged = f"{row['outliers']}/{row['calls']}" if row["outliers"] else "0"
        table.add_row(row["config_id"], str(row["passes"]), fmt_seconds(row["latency_s"]["p50"]),
                      fmt_seconds(row["latency_s"]["p99"]), f"{row['quality']:.4f}", flagged)
    out.print(table)
