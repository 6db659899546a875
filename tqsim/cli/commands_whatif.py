"""`tqsim whatif`, `tqsim plan`: serving what-ifs and capacity planning (simulation only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tqsim.cli.common import (app, ClusterOpt, Debug, Home, Json, Seed, System, Workers, WorkloadOpt, check_plot_path,
                              console, durations, emit_json, fmt_seconds, numbers, split_list, steps)
from tqsim.units import parse_duration

ServiceOpt = Annotated[str, typer.Option(
    "--service", help="Forward times from: empirical (the calibration, no fit needed) or forecast (the fitted "
                      "Bayesian model: batch sizes and threads never calibrated).")]
Rates = Annotated[Optional[list[str]], typer.Option(
    "--rate", help="Arrival rate in requests/s; a comma list or repeated option sweeps, e.g. 100,200,400.")]


def _iv(d: dict, seconds: bool = False) -> str:
    """``median (lo–hi)`` compactly: milliseconds for latencies, three decimals for fractions."""
    from tqsim.whatif.simulator import central

    if seconds:
        return f"{central(d) * 1e3:.3g} ({d['lo'] * 1e3:.3g}–{d['hi'] * 1e3:.3g})"
    return f"{central(d):.3f} ({d['lo']:.3f}–{d['hi']:.3f})"


@app.command()
def whatif(
    rate: Rates = None,
    replicas: Annotated[Optional[list[str]], typer.Option("--replicas", help="Replicas; a list sweeps, e.g. 1,2.")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Threads per replica.")] = 1,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch the batcher forms.")] = 1,
    max_wait: Annotated[str, typer.Option("--max-wait", help="How long the oldest request may wait for a batch "
                                                             "to fill, e.g. 2ms (0: take what is queued).")] = "0",
    threshold: Annotated[Optional[list[str]], typer.Option(
        "--threshold", "-t", help="Deadline from arrival, e.g. 20ms; a list gives one table row each.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", help="Replica precision (default fp32 when calibrated, else the only one calibrated).")] = None,
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="torch or onnxruntime (default torch when calibrated, else the one calibrated).")] = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", help="cpu or cuda (default cpu when calibrated, else the only one calibrated).")] = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", help="Replay arrivals: one timestamp (s) a line.")] = None,
    draws: Annotated[int, typer.Option("--draws", help="Draws of the service model (each a whole run).")] = 40,
    windows: Annotated[int, typer.Option("--windows", help="Windows (passes of the evaluation set) per draw.")] = 100,
    tail_q: Annotated[float, typer.Option("--tail-q", help="Tail quality = this quantile of window Q@T.")] = 0.01,
    no_overheads: Annotated[bool, typer.Option("--no-overheads", help="Ignore the serving calibration "
                                                                      "(forward time only).")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write tail quality and p99 against load (PNG).")] = None,
    service: ServiceOpt = "empirical",
    stack: Annotated[str, typer.Option(
        "--stack", help="Whose serving overheads: tqsim (its own server, `calibrate --serving`) or a stack fitted "
                        "from its request logs (`calibrate --serving-log ... --setup '...,stack=NAME'` or "
                        "`--serving 'target=URL,...'`).")] = "tqsim",
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = None, debug: Debug = False, cluster: ClusterOpt = None, workers: Workers = None,
) -> None:
    """Simulate serving under load: end-to-end latency, deadline misses and tail quality, with 90% intervals."""
    from tqsim.parallel import pool
    from tqsim.whatif.inputs import whatif_sweep

    check_plot_path(plot)
    with steps("what-if", enabled=not json_out) as progress, pool(cluster, workers) as on:
        sweep = whatif_sweep(home=home, system=system, workload=workload, rates=numbers(rate or ["300"], "rate"),
                             replicas=numbers(replicas or ["1"], "replicas", int), threads=threads,
                             max_batch=max_batch, max_wait_s=parse_duration(max_wait, "max-wait"),
                             thresholds_s=durations(threshold, "threshold"), precision=precision, backend=backend,
                             device=device, trace=trace, draws=draws, windows=windows, tail_q=tail_q,
                             overheads=not no_overheads, service=service, seed=seed or 0, progress=progress, pool=on,
                             stack=stack)
    out = sweep.as_dict()
    if plot is not None:
        from tqsim.whatif.plot import plot_sweep

        plot_sweep(out, plot)
    if json_out:
        emit_json(out)
        return
    from rich.table import Table

    from tqsim.whatif.simulator import central

    several = len({r["threshold_s"] for r in out["results"]}) > 1
    cols = ["rate/s", "repl"] + (["deadline"] if several else []) + [
        "p50 ms", "p99 ms (90%)", "miss", "tail quality (90%)", "util"]
    table = Table(*cols, title=f"what-if: {out['workload']} on {out['system']}")
    for r in out["results"]:
        lat = r["latency_s"]
        row = [f"{r['rate_rps']:.0f}", str(r["replicas"])] + ([fmt_seconds(r["threshold_s"])] if several else [])
        table.add_row(*row, f"{central(lat['p50']) * 1e3:.3g}", _iv(lat["p99"], True),
                      f"{r['miss_rate']['mean']:.1%}", _iv(r["tail_quality"]),
                      " ".join(f"{u:.0%}" for u in r["utilisation"]))
    c = console()
    first = out["results"][0]
    c.print(f"threads {first['threads']}, batch ≤ {first['max_batch']}, max wait {fmt_seconds(first['max_wait_s'])}"
            f", {first['precision']} {first['backend']}/{first['device']}, deadline {fmt_seconds(first['threshold_s'])}"
            f"; tail quality = "
            f"{first['tail_q']:g}-quantile of Q@T over windows of the evaluation set; (lo–hi) = 90% interval.")
    c.print(table)
    for note in out["notes"]:
        c.print(f"note: {note}", style="yellow")
    if plot is not None:
        c.print(f"plot written to {plot}")


@app.command()
def plan(
    objective: Annotated[str, typer.Option("--objective", help="e.g. tail_quality>=0.95@20ms, p99<=15ms, "
                                                               "miss_rate<=0.01@20ms.")],
    rate: Annotated[float, typer.Option("--rate", help="Arrival rate to plan for (requests/s).")],
    cores: Annotated[int, typer.Option("--cores", help="Core budget: replicas × threads ≤ cores.")],
    confidence: Annotated[float, typer.Option("--confidence", help="Required probability of meeting it.")] = 0.9,
    max_batch: Annotated[Optional[list[str]], typer.Option(
        "--max-batch", help="Batch limits to try (default 1,2,4,8,16,32).")] = None,
    max_wait: Annotated[Optional[list[str]], typer.Option(
        "--max-wait", help="Waits to try (default 0,0.5ms,1ms,2ms,5ms).")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(
        "--precision", help="Precisions to try (default: calibrated).")] = None,
    backend: Annotated[Optional[list[str]], typer.Option(
        "--backend", help="Backends to try, e.g. torch,onnxruntime (default: calibrated).")] = None,
    device: Annotated[Optional[list[str]], typer.Option(
        "--device", help="Devices to try, e.g. cpu,cuda (default: calibrated).")] = None,
    draws: Annotated[int, typer.Option("--draws", help="Draws for the refined candidates.")] = 30,
    no_overheads: Annotated[bool, typer.Option("--no-overheads", help="Ignore the serving calibration.")] = False,
    service: ServiceOpt = "empirical",
    systems: Annotated[Optional[list[str]], typer.Option(
        "--systems", help="Plan across these systems (a list, or all), cheapest by --cost.")] = None,
    cost: Annotated[Optional[str], typer.Option(
        "--cost", help="What cheapest means: cores (default; replicas × threads), gpus (one per cuda replica, "
                       "then cores) or a prices file (TOML): [systems.NAME] replica_hour = 0.12 or machine_hour = "
                       "0.4.")] = None,
    stack: Annotated[Optional[str], typer.Option(
        "--stack", help="Plan for this serving stack: its imported serving overheads (--serving-log) and its "
                        "configuration printed (litserve); default: tqsim's own server.")] = None,
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = None, debug: Debug = False, cluster: ClusterOpt = None, workers: Workers = None,
) -> None:
    """The cheapest serving set-up (fewest cores, or GPUs with --cost gpus) that meets an objective with
    probability ≥ confidence; with --systems and --cost prices.toml, the cheapest system and set-up in money
    across machine types."""
    from tqsim.errors import UserError
    from tqsim.parallel import pool
    from tqsim.whatif.objective import parse_objective
    from tqsim.whatif.planner import parse_cost

    goal = parse_objective(objective)
    fleet = split_list(systems)
    kind, prices = parse_cost(cost)
    if fleet and prices is None:
        raise UserError("--systems compares machine types by price: give --cost prices.toml "
                        "([systems.NAME] replica_hour = 0.12, or machine_hour = 0.40, per system).")
    if fleet and system:
        raise UserError("give either --system (one system) or --systems (several, priced by --cost), not both.")
    options = dict(confidence=confidence, max_batches=numbers(max_batch, "max-batch", int),
                   max_waits_s=durations(max_wait, "max-wait"), precisions=split_list(precision),
                   backends=split_list(backend), devices=split_list(device), draws=draws,
                   overheads=not no_overheads, service=service, seed=seed or 0, stack=stack or "tqsim")
    if prices is not None:  # checked before any worker starts
        from tqsim.whatif.fleet import plan_fleet, priced_systems

        priced, workload = priced_systems(home, fleet or ([system] if system else ["all"]), workload, prices)
    with steps("plan", enabled=not json_out) as progress, pool(cluster, workers) as on:
        if prices is not None:
            result = plan_fleet(goal, rate, cores, priced, workload, home=home, progress=progress, pool=on,
                                source=str(prices), **options)
        else:
            from tqsim.whatif.inputs import plan_from_workspace

            result = plan_from_workspace(goal, rate, cores, home=home, system=system, workload=workload,
                                         progress=progress, pool=on, cost=kind, **options)
    config = _stack_config(result, stack, fleet=prices is not None)
    if json_out:
        emit_json({**result.as_dict(), **({"stack_config": config} if config else {})})
        return
    if prices is not None:
        _print_fleet(result)
    else:
        _print_plan(result, goal, kind, rate, cores, confidence)
    if config:
        _print_stack_config(config)


def _stack_config(result, stack: str | None, fleet: bool) -> dict | None:
    """The chosen set-up in the serving stack's own terms (None without a stack tqsim can configure, e.g. an
    imported one, or without a feasible plan), with the batching rule the plan simulated for it."""
    from tqsim.serve import STACKS, stack_config

    if stack not in STACKS or result.best is None:
        return None
    best = result.best.candidate if fleet else result.best
    timer = best.whatif.batch_timer if best.whatif is not None else None
    return stack_config(best.setup, stack, workload=result.workload or "WORKLOAD", batch_timer=timer)


def _print_stack_config(config: dict) -> None:
    c = console()
    c.print(f"[bold]apply with {config['stack']}:[/] {config['command']}", soft_wrap=True)
    c.print(f"  or in your own server: {config['code']}", soft_wrap=True, markup=False)
    for note in config["notes"]:
        c.print(f"note: {note}", style="yellow")


def _print_plan(result, goal, kind: str, rate: float, cores: int, confidence: float) -> None:
    """The single-system plan: the chosen set-up, the runners-up, the rejected candidates and the notes."""
    from tqsim.whatif.planner import cost_of

    notes = result.notes
    c = console()
    head = f"objective {goal.text} at {rate:g} requests/s on {cores} cores, cost {kind}, confidence {confidence:g}"
    if result.best:
        b = result.best
        c.print(f"[bold green]plan:[/] {b.setup.label()} — {_cost(b.setup, kind)}, P(met) = {b.probability:.2f}, "
                f"p99 {_iv(b.whatif.result()['latency_s']['p99'], True)} ms   ({head})")
        for r in result.runners_up:
            c.print(f"  runner-up: {r.setup.label()} — P(met) = {r.probability:.2f}")
    else:
        cl = result.closest
        c.print(f"[bold red]infeasible:[/] no set-up meets {head}.")
        if cl is not None:
            c.print(f"  closest: {cl.setup.label()} — {cl.reason}")
    from rich.table import Table

    table = Table("set-up", "GPUs, cores" if kind == "gpus" else "cores", "why rejected",
                  title=f"rejected candidates (cheapest by {kind} first)")
    for r in result.rejected[:15]:
        table.add_row(r.setup.label(), ", ".join(map(str, cost_of(r.setup, kind))), r.reason)
    if result.rejected:
        c.print(table)
        if len(result.rejected) > 15:
            c.print(f"… and {len(result.rejected) - 15} more (--json lists all).")
    for note in notes:
        c.print(f"note: {note}", style="yellow")


def _cost(setup, kind: str) -> str:
    """What a set-up costs by ``kind`` (cores, or GPUs then cores), in words."""
    return (f"{setup.gpus} GPU(s), " if kind == "gpus" else "") + f"{setup.cores} core(s)"


def _print_fleet(result) -> None:
    """The fleet plan: the chosen system and set-up with its hourly cost, the runners-up, every system's verdict."""
    from rich.table import Table

    c = console()
    head = (f"objective {result.objective.text} at {result.rate_rps:g} requests/s, confidence {result.confidence:g}, "
            f"workload {result.workload}, cost: prices of {result.source}")
    if result.best:
        b = result.best
        c.print(f"[bold green]plan:[/] {b.system}: {b.candidate.setup.label()} — {b.cost_per_hour:.4g}/h "
                f"({b.price.describe()}), {b.candidate.setup.cores} core(s), P(met) = {b.candidate.probability:.2f}"
                f"   ({head})")
        for r in result.runners_up:
            c.print(f"  runner-up: {r.system}: {r.candidate.setup.label()} — {r.cost_per_hour:.4g}/h, "
                    f"P(met) = {r.candidate.probability:.2f}")
    else:
        c.print(f"[bold red]infeasible:[/] no system meets {head}.")
    table = Table("system", "price", "cores", "verdict", title="systems")
    for s in result.systems:
        table.add_row(s.system, s.price.describe(), str(s.cores), s.reason or "chosen")
    c.print(table)
    for s in result.systems:
        for note in (s.plan.notes if s.plan is not None else []):
            c.print(f"note: {s.system}: {note}", style="yellow")
