"""The serving calibration (``tqsim calibrate --serving``): measure, fit, store.

The real server runs at light and moderate load (:mod:`tqsim.measure.server`,
:mod:`tqsim.measure.load_drivers`), the serving stack's overheads are fitted from those runs
(:mod:`tqsim.whatif.overheads`) and stored in ``serving.json`` (:mod:`tqsim.data.serving_store`).
It sits above measure and whatif so that neither imports the other.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tqsim.errors import UserError

PROBE_LOAD = 0.05  # the probe's rate, as a fraction of the forward-time-only capacity
SATURATED = 0.9  # a serving run whose replicas were busier than this measured a queue, not overheads

SERVING_KEYS = {"replicas": int, "threads": int, "max_batch": int, "max_wait": str, "precision": str,
                "duration": str, "repeats": int, "target": str, "stack": str, "protocol": str}
HTTP_KNOBS = ("replicas", "max_batch", "max_wait")  # an external server's knobs: tqsim cannot know them
RAMP_S = 2.0        # each step of the HTTP probe ramp
RAMP_REFINE = 1.25  # the ramp's step once a step queued without being overloaded
RAMP_OVERLOADED = 2  # steps at the first overloaded rate, averaged: one 2 s step's capacity moves 10-25 % here
DRIVER_SHORT = 0.9   # a step that offered less than this share of the asked rate met the driver's limit
HTTP_LOADS = (0.2, 0.5)  # the HTTP calibration's loads, as fractions of the throughput the ramp reached


def parse_serving_setup(text: str) -> tuple:
    """``'replicas=1,threads=1,max_batch=8,max_wait=0.5ms'`` → (ServingSetup, duration_s, repeats); any
    other input raises a UserError that names the accepted keys (fuzzed in tests/test_fuzz.py)."""
    from tqsim.factors import parse_level
    from tqsim.units import parse_duration, parse_key_values
    from tqsim.whatif.simulator import ServingSetup

    values: dict = {}
    for key, value in parse_key_values(text, SERVING_KEYS, "--serving").items():
        try:
            values[key] = SERVING_KEYS[key](value)
        except ValueError:
            raise UserError(f"--serving {key}={value}: expected a whole number.") from None
    extra = [k for k in ("target", "stack", "protocol") if k in values]
    if extra:
        raise UserError(f"--serving {', '.join(extra)}= describe an external server: give target=http://HOST:PORT/"
                        "PATH with its replicas, max_batch and max_wait.")
    setup = ServingSetup(values.get("replicas", 1), values.get("threads", 1), values.get("max_batch", 8),
                         parse_duration(values.get("max_wait", "0.5ms"), "max_wait"),
                         parse_level("precision", values.get("precision", "fp32")))  # before anything runs
    duration = parse_duration(values.get("duration", "8s"), "duration")
    repeats = values.get("repeats", 3)
    if not duration > 0 or duration > 3600:
        raise UserError(f"--serving duration={values.get('duration')}: give a run length between 1s and 1h.")
    if not 1 <= repeats <= 100:
        raise UserError(f"--serving repeats={repeats}: give 1 to 100 runs per rate.")
    return setup, duration, repeats


def calibrate_serving_setup(setup: str, *, home=None, system: str | None = None, workload: str | None = None,
                            seed: int | None = None, show_progress: bool = True):
    """``tqsim calibrate --serving 'replicas=1,threads=1,max_batch=8,max_wait=0.5ms'``: short real serving
    runs at light and moderate load whose overheads the what-if simulator adds to forward time."""
    from tqsim.data.workspace import Workspace
    from tqsim.measure.run import progress_bar

    setup, duration_s, repeats = parse_serving_setup(setup)
    ws = Workspace.at(home)
    system = ws.resolve_system(system)
    with progress_bar(show_progress) as progress:
        return calibrate_serving(
            workload or ws.resolve_workload(system, None), ws.home, system, replicas=setup.replicas,
            threads=setup.threads, max_batch=setup.max_batch, max_wait_s=setup.max_wait_s,
            precision=setup.precision, duration_s=duration_s, repeats=repeats, seed=seed or 0, progress=progress)


def _rates_from_probe(server, forward, setup, loads: Sequence[float], duration_s: float,
                      seed: int, use_loadgen: bool | None) -> list[float]:
    """``loads`` × the capacity predicted with the overheads of one light probe run.

    Forward time alone overstates what a server sustains (rates set from it ran calibrations at
    saturation). The probe starts at ``PROBE_LOAD`` of the forward-only capacity and is repeated 4×
    slower while its replicas are saturated.
    """
    from tqsim.measure.load_drivers import run_load
    from tqsim.whatif.overheads import fit_overheads
    from tqsim.whatif.service import WithOverheads
    from tqsim.whatif.simulator import capacity_rps, saturation_rps

    rate = PROBE_LOAD * capacity_rps(forward, setup)
    for _ in range(4):
        probe = run_load(server, round(rate, 1), duration_s, seed=seed + 999, use_loadgen=use_loadgen)
        if np.mean(probe.utilisation) < SATURATED:
            break
        rate /= 4
    served = saturation_rps(WithOverheads(forward, fit_overheads([probe], forward)), setup)
    return [round(f * served, 1) for f in loads]


def calibrate_serving(workload_spec: str, home=None, system: str | None = None, *, replicas: int = 1,
                      threads: int = 1, max_batch: int = 8, max_wait_s: float = 0.5e-3, precision: str = "fp32",
                      rates_rps: Sequence[float] | None = None, loads: Sequence[float] = (0.2, 0.5),
                      duration_s: float = 8.0, repeats: int = 3, seed: int = 0, use_loadgen: bool | None = None,
                      workload: Any = None, progress: Any = None) -> Path:
    """Measure the serving stack's overheads for one set-up and store them; return the file's path.

    Needs the forward-time calibration of ``threads``/``precision`` in the workspace (``tqsim
    calibrate``). Runs the real :class:`~tqsim.measure.server.BatchingServer` at ``rates_rps``
    (default: ``loads`` times the capacity a probe run predicts, i.e. light and moderate load) for
    ``duration_s`` each, ``repeats`` times (how much a whole run's level moves from one run to the
    next), fits :class:`~tqsim.whatif.overheads.ServingOverheads` and merges them into
    ``calibration/<system>/<workload>/serving.json`` under ``r<replicas>-th<threads>``.
    ``progress`` (a :class:`~tqsim.measure.campaign.Progress`) is told of every run.
    """
    from tqsim.data.serving_store import save_setup
    from tqsim.data.workspace import Workspace, default_system_name, safe_name, workload_name_of
    from tqsim.measure.campaign import Progress
    from tqsim.measure.load_drivers import run_load
    from tqsim.measure.server import BatchingServer
    from tqsim.whatif.overheads import fit_overheads
    from tqsim.whatif.service import EmpiricalService
    from tqsim.whatif.simulator import ServingSetup

    ws = Workspace.at(home)
    system = system or (ws.systems()[0] if len(ws.systems()) == 1 else default_system_name())
    name = safe_name(workload_name_of(workload_spec))
    folder = ws.calibration_dir(system, name)
    forward = EmpiricalService.from_calibration_dir(folder, threads, precision)
    if workload is None:
        from tqsim.workloads.registry import get_workload

        workload = get_workload(workload_spec)
    setup = ServingSetup(replicas, threads, max_batch, max_wait_s, precision)
    server = BatchingServer(workload, replicas, threads, max_batch, max_wait_s, precision)
    repeats = max(int(repeats), 1)
    progress = progress or Progress()
    progress.start(repeats * len(rates_rps) if rates_rps is not None else repeats * len(loads) + 1)
    if rates_rps is None:
        rates_rps = _rates_from_probe(server, forward, setup, loads, min(duration_s, 4.0), seed, use_loadgen)
        progress.advance("probe")
    # repeats interleaved over the rates, so that a slow minute does not pass for a rate effect
    runs = []
    for j in range(repeats):
        for i, r in enumerate(rates_rps):
            runs.append(run_load(server, r, duration_s, seed=seed + i + 100 * j, use_loadgen=use_loadgen))
            progress.advance(f"{r:g} req/s")
    saturated = sorted({r.rate_rps for r in runs if np.mean(r.utilisation) > SATURATED})
    if saturated:
        warnings.warn(f"the serving runs at {', '.join(f'{r:g}' for r in saturated)} req/s saturated the replicas "
                      f"(> {SATURATED:.0%} busy), so their overheads include queueing; calibrate again with lower "
                      "rates (omit rates to let a probe run choose them).", stacklevel=2)
    oh = fit_overheads(runs, forward, window=workload.n_instances)
    oh.source = (f"{len(runs)} serving runs ({runs[0].driver}) at {', '.join(f'{r:g}' for r in rates_rps)} req/s "
                 f"× {repeats}, {duration_s:g} s each, batch ≤ {max_batch}, wait {max_wait_s * 1e3:g} ms")
    entry = oh.to_dict()
    entry.update(created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 max_batch=max_batch, max_wait_s=max_wait_s, precision=precision, rates_rps=list(rates_rps),
                 observed=[r.summary(0.02, workload.n_instances) for r in runs])
    return save_setup(folder, replicas, threads, entry, workload=name, system=system)


def _simulated_setup(setup: dict):
    """The simulator's :class:`~tqsim.whatif.simulator.ServingSetup` of a parsed ``--setup`` (its variant too)."""
    from tqsim.whatif.simulator import ServingSetup

    return ServingSetup(setup["replicas"], setup["threads"], setup["max_batch"], setup["max_wait_s"],
                        setup["precision"], setup["backend"], setup["device"])


def _forward(src, sim):
    """The calibrated forward-time model of ``sim``'s threads and variant (a UserError naming the fix if none)."""
    return src.service(sim.threads, sim.precision, 1, sim.backend, sim.device)


def read_logs(paths: Sequence, max_error_rate: float = 0.01) -> tuple[list, list[str]]:
    """Every request log of ``paths``, read and checked before anything is written; (logs, notes)."""
    from tqsim.data.request_log import check_errors, read_request_log

    logs, notes = [], []
    for p in paths:
        log, more = read_request_log(p)
        check_errors(log, max_error_rate)
        logs.append(log)
        notes += more  # each already names its file
    return logs, notes


def file_digest(path) -> str:
    """A log file's content hash: validation refuses to score a run the fit has seen."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def store_log_fit(logs: list, setup: dict, *, home=None, system=None, workload=None, sources: Sequence[str] = (),
                  digests: Sequence[str] = (), notes: Sequence[str] = (), seed: int = 0) -> tuple[Path, Any]:
    """Fit the overheads of ``setup`` from ``logs`` (:func:`tqsim.whatif.log_fit.fit_log_overheads`) and store them
    in ``serving.json`` under the set-up's stack; returns (path, fit)."""
    from tqsim.data.serving_store import save_setup
    from tqsim.data.request_log import summarise
    from tqsim.whatif.inputs import WorkspaceInputs
    from tqsim.whatif.log_fit import fit_log_overheads

    src = WorkspaceInputs.open(home, system, workload, overheads=False)
    sim = _simulated_setup(setup)
    scores = src.scores(*sim.variant)
    fit = fit_log_overheads(logs, _forward(src, sim), sim, window=scores.size, seed=seed,
                            capacity_rps=setup.get("capacity_rps"))
    fit.notes[:0] = list(notes)
    oh = fit.overheads
    rates = ", ".join(f"{lg.rate_rps:.0f}" for lg in logs)
    oh.source = f"{len(logs)} request logs ({logs[0].driver or 'file'}) at {rates} req/s, stack {setup['stack']}"
    entry = oh.to_dict()
    entry.update(created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 max_batch=setup["max_batch"], max_wait_s=setup["max_wait_s"], precision=setup["precision"],
                 backend=setup["backend"], device=setup["device"], stack=setup["stack"],
                 rates_rps=[float(lg.rate_rps) for lg in logs], logs=list(sources), log_digests=list(digests),
                 fitted_terms=fit.parameters, replay=fit.runs, notes=fit.notes,
                 observed=[summarise(lg, 0.02, scores) for lg in logs])
    path = save_setup(src.folder, setup["replicas"], setup["threads"], entry, workload=src.workload,
                      system=src.system, stack=setup["stack"])
    return path, fit


def calibrate_from_logs(paths: Sequence, setup_text: str, *, home=None, system=None, workload=None,
                        seed: int | None = None) -> tuple[Path, Any]:
    """``tqsim calibrate --serving-log FILE ... --setup 'replicas=R,threads=T,max_batch=B,max_wait=W'``."""
    from tqsim.data.request_log import parse_log_setup

    if not paths:
        raise UserError("give at least one --serving-log FILE (one file per run; two loads or more fit best).")
    setup = parse_log_setup(setup_text)
    logs, notes = read_logs(paths)
    return store_log_fit(logs, setup, home=home, system=system, workload=workload, sources=[str(p) for p in paths],
                         digests=[file_digest(p) for p in paths], notes=notes, seed=seed or 0)


def parse_http_setup(text: str) -> dict:
    """``'target=http://127.0.0.1:8000/predict,replicas=2,max_batch=8,max_wait=2ms[,threads=1,stack=litserve,
    protocol=json,duration=8s,repeats=2]'`` → a set-up dict (as :func:`~tqsim.data.request_log.parse_log_setup`)
    plus ``target``, ``protocol``, ``duration_s`` and ``repeats``; the server's knobs are required."""
    from tqsim.data.request_log import parse_log_setup
    from tqsim.units import parse_duration, parse_key_values

    values = parse_key_values(text, SERVING_KEYS, "--serving")
    missing = [k for k in HTTP_KNOBS if k not in values]
    if missing:
        raise UserError(f"--serving target=...: give the server's {', '.join(missing)} too (tqsim cannot see them), "
                        "e.g. 'target=http://127.0.0.1:8000/predict,replicas=2,max_batch=8,max_wait=2ms'.")
    setup = parse_log_setup(",".join(f"{k}={values[k]}" for k in ("replicas", "max_batch", "max_wait", "precision",
                                                                    "stack") if k in values)
                            + f",threads={values.get('threads', '1')}")
    if "stack" not in values:
        setup["stack"] = "http"
    duration = parse_duration(values.get("duration", "8s"), "duration")
    try:
        repeats = int(values.get("repeats", "2"))
    except ValueError:
        raise UserError(f"--serving repeats={values['repeats']}: expected a whole number.") from None
    if not 1 <= duration <= 3600 or not 1 <= repeats <= 100:
        raise UserError("--serving: give duration between 1s and 1h and repeats between 1 and 100.")
    protocol = values.get("protocol", "auto")
    if protocol not in ("auto", "json", "v2"):
        raise UserError(f"--serving protocol={protocol}: choose json, v2 (Open Inference Protocol) or auto.")
    return dict(setup, target=values["target"], protocol=protocol, duration_s=duration, repeats=repeats)


def ramp_throughput(drive, start_rps: float = 20.0, steps: int = 14) -> tuple[float, list]:
    """The throughput an external server sustains: offered rates doubling from ``start_rps`` (``RAMP_S`` each)
    until it is overloaded (:func:`~tqsim.whatif.log_fit.overloaded`) or its median latency trebles. A step that
    only queued (it still served what was offered) bounds the capacity from below, so the ramp then climbs by
    ``RAMP_REFINE`` until a step is overloaded: a stack that served 9,800 of 10,240 req/s and 12,100 of 12,800
    has a capacity near 12,100, not 9,800. The overloaded rate is then driven ``RAMP_OVERLOADED`` times and their
    sustained throughputs (:attr:`~tqsim.data.request_log.RequestLog.sustained_rps`) averaged: one 2 s step read
    8,300 req/s where three 6 s runs a minute later completed 8,200-10,500. A step whose driver offered less than
    ``DRIVER_SHORT`` of the asked rate ends the ramp: the load driver shares the machine (LitServe's HTTP driver on
    2 cores, asked for 1,050 req/s, offered 480-670), so asking more measures nothing new. Returns (the capacity:
    that average, or the best throughput sustained when no step was overloaded; the ramp's logs, the last ones the
    overloaded steps)."""
    from tqsim.whatif.log_fit import overloaded

    logs, best, light_p50, rate, factor = [], 0.0, None, start_rps, 2.0
    for _ in range(steps):
        log = drive(rate, RAMP_S)
        logs.append(log)
        p50 = float(np.median(log.latency_s[log.ok])) if log.ok.any() else np.inf
        light_p50 = p50 if light_p50 is None else light_p50
        if overloaded(log):
            more = [drive(rate, RAMP_S) for _ in range(RAMP_OVERLOADED - 1)]
            logs += more
            return max(best, float(np.mean([lg.sustained_rps for lg in [log] + more]))), logs
        best = max(best, log.sustained_rps)
        # the driver, not the stack, set the pace: asking more gains nothing (3 sd of a Poisson count of slack)
        if log.rate_rps < rate * (DRIVER_SHORT - 3.0 / np.sqrt(max(log.n, 1))):
            break
        if p50 > 3 * light_p50:  # queueing, not yet overloaded: finer steps from here
            factor = RAMP_REFINE
        rate *= factor
    return best, logs


def calibrate_http(text: str, *, home=None, system: str | None = None, workload: str | None = None,
                   seed: int | None = None, show_progress: bool = True) -> tuple[Path, Any]:
    """``tqsim calibrate --serving 'target=http://127.0.0.1:8000/predict,replicas=2,max_batch=8,max_wait=2ms'``:
    drive an external server over HTTP (MLPerf LoadGen's Server scenario when installed) at light and moderate
    load, fit its overheads from the request logs (:mod:`tqsim.whatif.log_fit`) and store them under its stack.

    A ramp of short runs finds the throughput it sustains; the calibration runs are ``HTTP_LOADS`` of it,
    ``repeats`` times each, interleaved; the ramp's throughput is the capacity the fit must reproduce. The runs'
    logs are kept in ``serving-logs/`` once the fit succeeded.
    """
    import shutil
    import tempfile

    from tqsim.data.request_log import check_errors, write_request_log
    from tqsim.measure.http_driver import drive_http
    from tqsim.measure.run import progress_bar
    from tqsim.whatif.inputs import WorkspaceInputs
    from tqsim.workloads.registry import get_workload

    setup = parse_http_setup(text)
    src = WorkspaceInputs.open(home, system, workload, overheads=False)
    _forward(src, _simulated_setup(setup))  # a missing forward calibration is refused before anything runs
    folder = src.folder
    wl = get_workload(workload or src.workload)
    seed = seed or 0

    def drive(rate: float, duration: float, k: int = 0):  # each run probes the target first: 5 s if unreachable
        log = drive_http(setup["target"], wl, round(rate, 1), duration, seed=seed + k, protocol=setup["protocol"])
        check_errors(log)
        return log

    with progress_bar(show_progress) as progress:
        progress.start(1 + setup["repeats"] * len(HTTP_LOADS))
        best, ramp = ramp_throughput(drive)
        progress.advance(f"ramp: {best:.0f} req/s sustained")
        rates = [f * best for f in HTTP_LOADS]
        logs = []
        for j in range(setup["repeats"]):
            for i, r in enumerate(rates):
                logs.append(drive(r, setup["duration_s"], 1 + i + 100 * j))
                progress.advance(f"{r:.0f} req/s")
    setup["capacity_rps"] = best
    names = [f"{setup['stack']}-r{setup['replicas']}-th{setup['threads']}-{lg.rate_rps:.0f}rps-{j}.csv"
             for j, lg in enumerate(logs)]
    keep = folder / "serving-logs"
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # the logs are kept only once the fit is stored
        for lg, n in zip(logs, names):
            write_request_log(lg, Path(tmp) / n)
        path, fit = store_log_fit(logs, setup, home=home, system=src.system, workload=src.workload, sources=[
            str(keep / n) for n in names], digests=[file_digest(Path(tmp) / n) for n in names], notes=[
            f"the ramp sustained {best:.0f} req/s; runs at {', '.join(f'{r:.0f}' for r in rates)} req/s"], seed=seed)
        keep.mkdir(exist_ok=True)
        for n in names:
            shutil.move(str(Path(tmp) / n), keep / n)
    return path, fit
