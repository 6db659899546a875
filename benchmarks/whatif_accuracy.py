"""`tqsim whatif` forecasts against real loaded runs driven by MLPerf LoadGen's Server scenario.

For each serving set-up: (1) the forward-time calibration is taken from the workspace (made with
`tqsim calibrate --grid batch_size=1,2,4,8,16 --passes 20`, run here first if missing); (2) a short
serving calibration at light and moderate load (`calibrate_serving`); (3) load levels are set as
fractions of the capacity *predicted* from (1)+(2); at each level ``--repeats`` real runs (default 3)
are measured and a forecast is made from (1)+(2) only -- the measured runs are used for nothing but
their length (the number of windows, so the forecast's tail-quality quantile is over as many windows
as observed). The run with the median p99 is scored for the error; every run is checked against the
90 % interval, since one 8 s run on a shared VM is one draw of a noisy system.

Prints a Markdown table (paste into benchmarks/RESULTS.md) and writes the raw figures to JSON.
Measured latency is the SUT's own (LoadGen's callback → completion); LoadGen's p99, which adds its
issue delay, is printed beside it.

    python benchmarks/whatif_accuracy.py --home /tmp/wsd [--workload digits-cnn] [--duration 8]

``--protocol logs`` (issue 15) scores the request-log path for each stack of ``--stacks`` (tqsim: tqsim's own
server, in process; litserve: ``tqsim serve --stack litserve`` driven over HTTP on loopback): a ramp finds the
throughput the stack sustains, real runs at ``LOG_LOADS`` of it are logged (``--repeats`` each, interleaved), the
logs of the loads 0.2 and 0.5 are imported (``tqsim calibrate --serving-log``) and every other run is scored by
``tqsim validate --serving-log`` (the ramp's throughput, 2 s steps, is given as ``capacity=`` in ``--setup``, as
``calibrate --serving target=...`` does; the runs at 0.85 and 1.3 then check it). Targets: below 0.75 utilisation (offered rate over the measured saturation
throughput) p99 inside the 90 % interval for >= 80 % of runs and median |p99 error| <= 25 %; the forecast
saturation rate within 10 % of the measured one (the most any overloaded run completed per second).

    python benchmarks/whatif_accuracy.py --protocol logs --stacks tqsim,litserve --home /tmp/wsl
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETUPS = [  # (label, replicas, threads, max_batch, max_wait_s)
    ("A: 1 replica, batch≤8, wait 0.5 ms", 1, 1, 8, 0.5e-3),
    ("B: 2 replicas, batch≤4, wait 0", 2, 1, 4, 0.0),
]
LOADS = (0.3, 0.5, 0.7, 0.85, 1.0, 1.25)  # fractions of the predicted saturation rate (replicas 95% busy)
LOG_LOADS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.3)  # --protocol logs: fractions of the ramp's throughput
LOG_SETUPS = {"tqsim": (1, 1, 8, 0.5e-3), "litserve": (1, 1, 8, 2e-3)}  # replicas, threads, max_batch, max_wait


def _inside(interval: dict, values) -> int:
    return int(sum(interval["lo"] - 1e-9 <= v <= interval["hi"] + 1e-9 for v in values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/tqsim-whatif-accuracy")
    ap.add_argument("--workload", default="digits-cnn")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    ap.add_argument("--threshold", default="10ms")
    ap.add_argument("--repeats", type=int, default=3, help="real runs per load level (the median run is scored)")
    ap.add_argument("--out", default="/tmp/tqsim-whatif-accuracy.json")
    ap.add_argument("--protocol", choices=["serving", "logs"], default="serving",
                    help="serving: tqsim's white-box serving calibration; logs: request logs of each --stacks")
    ap.add_argument("--stacks", default="tqsim,litserve")
    ap.add_argument("--fit-loads", default="0.2,0.5", help="--protocol logs: the loads whose logs are fitted")
    ap.add_argument("--keep-fit", action="store_true",
                    help="with --rescore: score against the fit already in the workspace (the fit code is unchanged)")
    ap.add_argument("--rescore", action="store_true",
                    help="with --protocol logs: refit and rescore the logs of an earlier run (its --out JSON), "
                         "measuring nothing")
    args = ap.parse_args()
    if args.protocol == "logs":
        _ensure_forward(args)
        earlier = json.loads(Path(args.out).read_text()) if args.rescore else {}
        results = {stack: logs_protocol(args, stack, earlier.get(stack)) for stack in args.stacks.split(",")}
        Path(args.out).write_text(json.dumps({**earlier, **results}, indent=1, default=float))
        for stack, res in results.items():
            _print_logs_table(stack, res)
        return

    from tqsim.data.workspace import Workspace
    from tqsim.measure.load_drivers import run_load
    from tqsim.measure.server import BatchingServer
    from tqsim.serving_calibration import calibrate_serving
    from tqsim.units import parse_duration
    from tqsim.whatif.inputs import WorkspaceInputs
    from tqsim.whatif.service import WithOverheads
    from tqsim.whatif.simulator import ServingSetup, saturation_rps, simulate
    from tqsim.workloads.registry import get_workload

    thr = parse_duration(args.threshold)
    _ensure_forward(args)
    workload = get_workload(args.workload)
    n_inst = workload.n_instances
    rows, t_start = [], time.perf_counter()
    for label, reps, th, mb, mw in SETUPS:
        calibrate_serving(args.workload, home=args.home, replicas=reps, threads=th, max_batch=mb, max_wait_s=mw,
                          duration_s=6.0, workload=workload)
        src = WorkspaceInputs.open(args.home, None, args.workload)
        svc = src.service(th, "fp32", reps)
        setup = ServingSetup(reps, th, mb, mw)
        cap = saturation_rps(svc, setup)
        # the same calibration with every run stalling at the pooled rate: what the stall dispersion adds
        fixed = WithOverheads(svc.base, dataclasses.replace(svc.oh, stall_dispersion=[]))
        print(f"{label}: stall prob {svc.oh.stall_prob:.4f} ({len(svc.oh.stall_shape)} stalls), stall-rate φ "
              f"median {np.median(svc.oh.stall_dispersion or [0]):.2f}, pause prob {svc.oh.pause_prob:.4f}, "
              f"run_log_sd {svc.oh.run_log_sd}", file=sys.stderr)
        server = BatchingServer(workload, reps, th, mb, mw)
        for i, frac in enumerate(LOADS):
            rate = round(frac * cap, 1)
            # one 8 s run is one draw of a noisy system: repeat it, score the forecast against the
            # median run, and count how many single runs its interval holds
            runs = [run_load(server, rate, args.duration, seed=100 + i + 1000 * j) for j in range(args.repeats)]
            summaries = [r.summary(thr, n_inst) for r in runs]
            p99_runs = [o["latency_s"]["p99"] for o in summaries]
            tq_runs = [o["tail_quality"] for o in summaries]
            mid = int(np.argsort(p99_runs)[len(runs) // 2])
            obs, run = summaries[mid], runs[mid]
            # LoadGen draws each query's sample at random: score windows the same way
            wi = simulate(svc, setup, thresholds_s=[thr], rate_rps=rate, score=src.scores("fp32"),
                          n_windows=max(obs["windows"], 5), draws=30, seed=i, samples="random")
            pred = wi.result()
            pred_fixed = simulate(fixed, setup, thresholds_s=[thr], rate_rps=rate, score=src.scores("fp32"),
                                  n_windows=max(obs["windows"], 5), draws=30, seed=i, samples="random").result()
            # Diagnostic only (not a forecast): the same service model fed the arrivals the SUT saw,
            # to tell service-model error from arrival-process error.
            replay = simulate(svc, setup, thresholds_s=[thr], arrivals_s=run.arrival_s - run.arrival_s[0],
                              score=src.scores("fp32"), draws=10, seed=i).result()
            p99 = pred["latency_s"]["p99"]
            tq = pred["tail_quality"]
            rows.append({"setup": label, "load": frac, "rate_rps": rate, "capacity_pred_rps": cap,
                         "observed": obs, "observed_p99_runs": p99_runs, "observed_tq_runs": tq_runs,
                         "predicted": pred, "replayed_arrivals": replay,
                         "p99_rel_error": (p99["mean"] - obs["latency_s"]["p99"]) / obs["latency_s"]["p99"],
                         "p99_inside": p99["lo"] <= obs["latency_s"]["p99"] <= p99["hi"],
                         "p99_runs_inside": _inside(p99, p99_runs),
                         "tq_abs_error": tq["mean"] - obs["tail_quality"],
                         "tq_inside": tq["lo"] - 1e-9 <= obs["tail_quality"] <= tq["hi"] + 1e-9,
                         "tq_runs_inside": _inside(tq, tq_runs),
                         "fixed_stall_rate": pred_fixed,
                         "fixed_p99_runs_inside": _inside(pred_fixed["latency_s"]["p99"], p99_runs),
                         "fixed_tq_runs_inside": _inside(pred_fixed["tail_quality"], tq_runs)})
            r = rows[-1]
            print(f"{label} load {frac:.2f} ({rate:.0f}/s): p99 obs {obs['latency_s']['p99'] * 1e3:.2f} ms "
                  f"(runs {', '.join(f'{v * 1e3:.2f}' for v in p99_runs)}) "
                  f"pred {p99['mean'] * 1e3:.2f} [{p99['lo'] * 1e3:.2f}, {p99['hi'] * 1e3:.2f}]  "
                  f"TQ obs {obs['tail_quality']:.3f} pred {tq['mean']:.3f} [{tq['lo']:.3f}, {tq['hi']:.3f}]",
                  file=sys.stderr)
    Path(args.out).write_text(json.dumps({"threshold_s": thr, "workload": args.workload, "rows": rows,
                                          "elapsed_s": time.perf_counter() - t_start}, indent=1, default=float))
    print(f"| set-up | load (pred. capacity) | rate/s | util obs / pred | p99 obs, median run (LoadGen) | p99 of the "
          f"{args.repeats} runs | p99 pred [90%] | err | runs in | TQ@{args.threshold} obs | TQ pred [90%] | runs in | "
          "p99 / batch, SUT arrivals replayed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, p = r["observed"], r["predicted"]
        p99 = p["latency_s"]["p99"]
        tq = p["tail_quality"]
        print(f"| {r['setup']} | {r['load']:.2f} | {r['rate_rps']:.0f} | {np.mean(o['utilisation']):.2f} / "
              f"{np.mean(p['utilisation']):.2f} | {o['latency_s']['p99'] * 1e3:.2f} "
              f"({o['loadgen'].get('p99', float('nan')) * 1e3:.2f}) ms | "
              f"{min(r['observed_p99_runs']) * 1e3:.2f}–{max(r['observed_p99_runs']) * 1e3:.2f} ms | {p99['mean'] * 1e3:.2f} "
              f"[{p99['lo'] * 1e3:.2f}, {p99['hi'] * 1e3:.2f}] ms | {r['p99_rel_error']:+.0%} | "
              f"{r['p99_runs_inside']}/{args.repeats} | {o['tail_quality']:.3f} | {tq['mean']:.3f} "
              f"[{tq['lo']:.3f}, {tq['hi']:.3f}] | {r['tq_runs_inside']}/{args.repeats} | "
              f"{r['replayed_arrivals']['latency_s']['p99']['mean'] * 1e3:.2f} ms / "
              f"{r['replayed_arrivals']['mean_batch_size']:.2f} (obs {o['mean_batch_size']:.2f}) |")
    below = [r for r in rows if np.mean(r["observed"]["utilisation"]) < 0.7]
    n_runs = len(rows) * args.repeats
    spread = [max(r["observed_p99_runs"]) / min(r["observed_p99_runs"]) - 1 for r in below]
    print(f"\np99 within 15% of the median run below 70% utilisation: "
          f"{sum(abs(r['p99_rel_error']) <= 0.15 for r in below)}/{len(below)} (repeat runs there differ by "
          f"{', '.join(f'{100 * v:.0f}%' for v in spread)} max/min); single runs' p99 inside the 90% interval: "
          f"{sum(r['p99_runs_inside'] for r in rows)}/{n_runs}; tail quality inside: "
          f"{sum(r['tq_runs_inside'] for r in rows)}/{n_runs}")
    print(f"the same forecasts with every simulated run at the pooled stall rate: p99 inside "
          f"{sum(r['fixed_p99_runs_inside'] for r in rows)}/{n_runs}, tail quality inside "
          f"{sum(r['fixed_tq_runs_inside'] for r in rows)}/{n_runs}")
    for label, *_ in SETUPS:
        mine = [r for r in rows if r["setup"] == label]
        light = mine[0]["observed"]["latency_s"]["p99"]
        obs_sat = next((r["load"] for r in mine if r["observed"]["latency_s"]["p99"] > 10 * light), None)
        light_p = mine[0]["predicted"]["latency_s"]["p99"]["mean"]
        pred_sat = next((r["load"] for r in mine if r["predicted"]["latency_s"]["p99"]["mean"] > 10 * light_p), None)
        print(f"{label}: saturation (p99 > 10× the lightest level's) observed at load {obs_sat}, predicted at "
              f"{pred_sat}")
    print(f"elapsed {time.perf_counter() - t_start:.0f} s; load average at the end {os.getloadavg()} on "
          f"{os.cpu_count()} cores (other work on the machine shows up in every measured figure)")


def _ensure_forward(args) -> None:
    from tqsim.data.workspace import Workspace

    if not Workspace.at(args.home).systems():
        print("forward-time calibration missing: running tqsim calibrate (~2 min)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "tqsim", "calibrate", "--grid", "batch_size=1,2,4,8,16", "--passes", "20",
                        "--home", args.home, "--workload", args.workload], check=True, stdout=subprocess.DEVNULL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _driver(stack: str, args, setup):
    """``(drive(rate, duration, seed) -> RequestLog, stop())`` for one stack."""
    from tqsim.workloads.registry import get_workload

    reps, th, mb, mw = setup
    workload = get_workload(args.workload)
    if stack == "tqsim":
        from tqsim.data.request_log import from_serving_run
        from tqsim.measure.load_drivers import run_load
        from tqsim.measure.server import BatchingServer

        server = BatchingServer(workload, reps, th, mb, mw)
        return (lambda rate, dur, seed=0: from_serving_run(run_load(server, rate, dur, seed=seed))), (lambda: None)
    from tqsim.measure.http_driver import drive_http, probe_endpoint

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tqsim", "serve", "--stack", stack, "--workload", args.workload,
                             "--max-batch", str(mb), "--max-wait", f"{mw * 1e3:g}ms", "--replicas", str(reps),
                             "--threads", str(th), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/predict"
    for line in proc.stdout:  # wait for "serving at URL"
        if "serving at" in line:
            break
    probe_endpoint(url)

    def stop():
        import signal

        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    return (lambda rate, dur, seed=0: drive_http(url, workload, round(rate, 1), dur, seed=seed)), stop


def logs_protocol(args, stack: str, earlier: dict | None = None) -> dict:
    """Log real runs of one stack over a range of loads, fit on two loads, validate on the rest (module docstring);
    with ``earlier`` (this function's result of a previous run), refit and rescore its logs instead."""
    from tqsim.data.request_log import write_request_log
    from tqsim.serving_calibration import ramp_throughput

    setup = LOG_SETUPS[stack]
    reps, th, mb, mw = setup
    text = f"replicas={reps},threads={th},max_batch={mb},max_wait={mw * 1e3:g}ms,stack={stack}-logs"
    folder = Path(args.home) / "logs" / stack
    folder.mkdir(parents=True, exist_ok=True)
    if earlier is not None:  # the ramp's capacity is re-read from its last (overloaded) step, as the ramp reads it
        from tqsim.data.request_log import read_request_log
        from tqsim.whatif.log_fit import overloaded

        last = [read_request_log(f)[0] for f in sorted(folder.glob("ramp-last*.csv"))]  # the overloaded steps
        last = [lg for lg in last if overloaded(lg)] or last
        best = float(np.mean([lg.sustained_rps for lg in last])) if last else earlier["ramp_rps"]
        return _score_logs(args, stack, text, setup, best, [
            {k: r[k] for k in ("load", "repeat", "path", "offered_rps", "throughput_rps")} for r in
            earlier["all_runs"]], earlier["measured_s"])
    drive, stop = _driver(stack, args, setup)
    t0 = time.perf_counter()
    try:
        best, ramp = ramp_throughput(drive)
        print(f"{stack}: the ramp sustained {best:.0f} req/s", file=sys.stderr)
        for j, step in enumerate(s for s in ramp if s.rate_rps >= ramp[-1].rate_rps * 0.98):  # the overloaded steps
            write_request_log(step, folder / ("ramp-last.csv" if j == 0 else f"ramp-last-{j + 1}.csv"))
        runs = []
        for j in range(args.repeats):
            for i, frac in enumerate(LOG_LOADS):
                log = drive(frac * best, args.duration, 100 * j + i)
                path = folder / f"load{frac:.2f}-{j}.csv"
                write_request_log(log, path)
                done = log.throughput_rps
                runs.append({"load": frac, "repeat": j, "path": str(path), "offered_rps": float(log.rate_rps),
                             "throughput_rps": done})
                print(f"{stack} load {frac:.2f} #{j}: offered {log.rate_rps:.0f}/s, done {done:.0f}/s, p99 "
                      f"{np.quantile(log.latency_s[log.ok], 0.99) * 1e3:.2f} ms", file=sys.stderr)
    finally:
        stop()
    return _score_logs(args, stack, text, setup, best, runs, time.perf_counter() - t0)


def _score_logs(args, stack: str, text: str, setup, best: float, runs: list, measured: float) -> dict:
    """Fit the runs at ``--fit-loads`` (with the ramp's capacity), validate on the others, against the targets."""
    from tqsim.serving_calibration import calibrate_from_logs
    from tqsim.serving_validation import validate_logs
    from tqsim.whatif.inputs import WorkspaceInputs
    from tqsim.whatif.simulator import ServingSetup, capacity_rps, saturation_rps

    reps, th, mb, mw = setup
    all_runs = [dict(r) for r in runs]
    fit_loads = [float(x) for x in args.fit_loads.split(",")]
    train = [r["path"] for r in runs if r["load"] in fit_loads]
    test = [r for r in runs if r["load"] not in fit_loads]
    if not getattr(args, "keep_fit", False):
        calibrate_from_logs(train, f"{text},capacity={best:.0f}", home=args.home, workload=args.workload)
    val = validate_logs([r["path"] for r in test], text, home=args.home, workload=args.workload,
                        threshold_s=parse_duration_s(args.threshold)).as_dict()
    src = WorkspaceInputs.open(args.home, None, args.workload, stack=f"{stack}-logs")
    # An overloaded run forms full batches, so what it completes is the model's capacity (full batching, the front
    # end, at the overloaded rate's slowdown), not the knee where the batches a load forms keep replicas 95 % busy
    # (saturation_rps): with 96 us a batch, tqsim's server had its knee at 5,650 req/s and its capacity at 8,500.
    svc, sim = src.service(th, "fp32", reps), ServingSetup(reps, th, mb, mw)
    knee = saturation_rps(svc, sim)
    pred_sat = capacity_rps(svc.at_rate(best), sim)  # at the ramp's rate: the fit's own knowledge
    # its 90 % interval: one run's capacity, drawn as the what-if draws a run (its level, its forward draw)
    rng = np.random.default_rng(0)
    sat_draws = [capacity_rps(svc.at_rate(best).draw(rng), sim, n=500) for _ in range(400)]
    obs_sat, sat_runs = _measured_saturation(runs)
    for r, v in zip(test, val["runs"]):
        r.update(v, utilisation=r["offered_rps"] / obs_sat)
    below = [r for r in test if r["utilisation"] < 0.75]
    errs = [abs(r["relative_error"]["p99"]) for r in below]
    return {"setup": text, "ramp_rps": best, "runs": test, "all_runs": all_runs, "observed_saturation_rps": obs_sat,
            "overloaded_runs_rps": sat_runs,
            "forecast_saturation_rps": pred_sat, "saturation_error": pred_sat / obs_sat - 1, "forecast_knee_rps": knee,
            "forecast_saturation_interval_rps": np.quantile(sat_draws, [0.05, 0.95]).tolist(),
            "saturation_floor": _saturation_floor(sat_runs),
            "below_075": {"runs": len(below), "p99_inside": int(sum(r["inside"]["p99"] for r in below)),
                          "median_abs_p99_error": float(np.median(errs)) if errs else None,
                          "floor_abs_p99_error": _floor(below, test)},
            "measured_s": measured, "notes": val["notes"]}


def _measured_saturation(runs: list) -> tuple[float, list]:
    """The stack's measured saturation rate: the median of what the runs at the highest load (1.3 of the ramp's
    capacity, meant to overload it) sustained (``RequestLog.sustained_rps``), and each of theirs. On this VM the
    capacity moves 10-25 % from one 6 s run to the next (tqsim's server: 8,300, 9,900 and 12,100 req/s a minute
    apart), so the most any run completed (used before 3 December's session 17) sits above a typical run by that
    spread. LitServe's HTTP driver sometimes offers no more than the stack completes; its queue grows all the same."""
    from tqsim.data.request_log import read_request_log

    top = max(r["load"] for r in runs)
    sustained = sorted(float(read_request_log(r["path"])[0].sustained_rps) for r in runs if r["load"] == top)
    return float(np.median(sustained)), sustained


def _floor(scored: list, runs: list) -> float | None:
    """The reproducibility floor of the p99 error: each scored run's p99 forecast by another repeat at its load (the
    median of |other − own| / own over the other repeats), the median over the scored runs. No model can be expected
    to forecast one run closer than a repeat of it does."""
    errs = []
    for r in scored:
        others = [s["observed"]["p99"] for s in runs if s["load"] == r["load"] and s is not r]
        if others:
            errs.append(_repeat_error(r["observed"]["p99"], others))
    return float(np.median(errs)) if errs else None


def _repeat_error(own: float, others: list) -> float:
    """How far other repeats forecast one run's figure: the median of |other − own| / own."""
    return float(np.median([abs(o - own) / own for o in others]))


def _saturation_floor(sustained: list) -> float | None:
    """The floor of the saturation error: each overloaded run's throughput forecast by another's (the median of
    |other − own| / own), the median over the runs. The runs a minute apart are what "measured" means here."""
    errs = [_repeat_error(own, sustained[:i] + sustained[i + 1:]) for i, own in enumerate(sustained)]
    return float(np.median(errs)) if len(sustained) > 1 else None


def parse_duration_s(text: str) -> float:
    from tqsim.units import parse_duration

    return parse_duration(text)


def _print_logs_table(stack: str, res: dict) -> None:
    from tqsim.whatif.simulator import central

    print(f"\n### {stack} ({res['setup']}; the ramp sustained {res['ramp_rps']:.0f} req/s)\n")
    print("| load | offered/s | ρ | p99 obs | p99 forecast [90%] | err | in | p50 obs / fc | TQ obs / fc [90%] |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(res["runs"], key=lambda r: (r["load"], r["repeat"])):
        o, f = r["observed"], r["forecast"]
        tq = f["tail_quality"]
        print(f"| {r['load']:.2f} | {r['offered_rps']:.0f} | {r['utilisation']:.2f} | {o['p99'] * 1e3:.2f} ms | "
              f"{central(f['p99']) * 1e3:.2f} [{f['p99']['lo'] * 1e3:.2f}, {f['p99']['hi'] * 1e3:.2f}] ms | "
              f"{r['relative_error']['p99']:+.0%} | {'✓' if r['inside']['p99'] else '✗'} | "
              f"{o['p50'] * 1e3:.2f} / {central(f['p50']) * 1e3:.2f} ms | "
              + (f"{o['tail_quality']:.3f} / {central(tq):.3f} [{tq['lo']:.3f}, {tq['hi']:.3f}] |"
                 if o["tail_quality"] is not None else "– |"))
    b = res["below_075"]
    floor = b.get("floor_abs_p99_error") or float("nan")
    print(f"\nbelow ρ = 0.75: p99 inside the 90 % interval {b['p99_inside']}/{b['runs']}, median |p99 error| "
          f"{100 * (b['median_abs_p99_error'] or float('nan')):.0f} % (floor: a repeat forecasting another, "
          f"{100 * floor:.0f} %; ratio {(b['median_abs_p99_error'] or float('nan')) / floor:.2f}); saturation: forecast "
          f"{res['forecast_saturation_rps']:.0f} req/s{_interval(res.get('forecast_saturation_interval_rps'))} (knee "
          f"{res.get('forecast_knee_rps', float('nan')):.0f}), measured {res['observed_saturation_rps']:.0f} req/s "
          f"(overloaded runs: {', '.join(f'{x:.0f}' for x in res.get('overloaded_runs_rps', []))}) "
          f"({100 * res['saturation_error']:+.0f} %; floor: a repeat forecasting another, "
          f"{100 * (res.get('saturation_floor') or float('nan')):.0f} %); measured in {res['measured_s']:.0f} s")


def _interval(lo_hi) -> str:
    return f" [{lo_hi[0]:.0f}, {lo_hi[1]:.0f}]" if lo_hi else ""


if __name__ == "__main__":
    main()
